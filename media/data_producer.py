"""DataProducer: an SCTP stream a client sends messages on (RFC 8831)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from aiortc.rtcsctptransport import RTCSctpTransport

from .aiortc_bridge import DtlsSession, RTCDataChannel
from .events import EventEmitter
from .rtp_parameters import Json

if TYPE_CHECKING:
    from .data_consumer import DataConsumer
    from .webrtc_transport import WebRtcTransport


class DataProducer(EventEmitter):
    """mediasoup ``DataProducer`` (type ``sctp``): events ``transportclose``;
    observer ``close``.  Every message is relayed to its data consumers."""

    def __init__(
        self,
        *,
        transport: WebRtcTransport,
        sctp_stream_parameters: Json,
        label: str,
        protocol: str,
        app_data: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        self.id = str(uuid.uuid4())
        self.type = "sctp"
        self.sctp_stream_parameters = sctp_stream_parameters
        self.label = label
        self.protocol = protocol
        self.app_data = app_data if app_data is not None else {}
        self.observer = EventEmitter()
        self.closed = False
        self.messages_received = 0
        self.bytes_received = 0
        self._transport = transport
        self._consumers: dict[str, DataConsumer] = {}
        self._channel: RTCDataChannel | None = None
        self._sctp: RTCSctpTransport | None = None

    @property
    def stream_id(self) -> int:
        return int(self.sctp_stream_parameters["streamId"])

    @property
    def transport_id(self) -> str:
        return self._transport.id

    def attach(self, sctp: RTCSctpTransport) -> None:
        """Register the negotiated stream, so its messages are not dropped."""
        if self._channel is not None or self.closed:
            return
        self._sctp = sctp
        self._channel = DtlsSession.open_negotiated_channel(
            sctp, self.sctp_stream_parameters, self.label, self.protocol
        )
        self._channel.on("message", self._relay)

    def _relay(self, message: str | bytes) -> None:
        self.messages_received += 1
        self.bytes_received += len(message)
        for consumer in tuple(self._consumers.values()):
            consumer.send(message)

    def add_consumer(self, consumer: DataConsumer) -> None:
        self._consumers[consumer.id] = consumer

    def remove_consumer(self, consumer: DataConsumer) -> None:
        self._consumers.pop(consumer.id, None)

    async def get_stats(self) -> list[Json]:
        return [
            {
                "type": "data-producer",
                "label": self.label,
                "protocol": self.protocol,
                "messagesReceived": self.messages_received,
                "bytesReceived": self.bytes_received,
            }
        ]

    def close(self) -> None:
        if self.closed:
            return
        self._close()
        self._transport.data_producer_closed(self)
        self.release_listeners()

    def transport_closed(self) -> None:
        if self.closed:
            return
        self._close()
        self.emit("transportclose")
        self.release_listeners()

    def _close(self) -> None:
        self.closed = True
        if self._channel is not None and self._sctp is not None:
            DtlsSession.close_channel(self._sctp, self._channel)
        self._channel = self._sctp = None
        consumers, self._consumers = self._consumers, {}
        for consumer in list(consumers.values()):
            consumer.data_producer_closed()
        self.observer.emit("close")
