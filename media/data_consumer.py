"""DataConsumer: a DataProducer's messages, on a stream of another transport."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from aiortc.rtcsctptransport import RTCSctpTransport

from .aiortc_bridge import DtlsSession, RTCDataChannel
from .events import EventEmitter
from .rtp_parameters import Json

if TYPE_CHECKING:
    from .data_producer import DataProducer
    from .webrtc_transport import WebRtcTransport


class DataConsumer(EventEmitter):
    """mediasoup ``DataConsumer`` (type ``sctp``): events ``transportclose``,
    ``dataproducerclose``; observer ``close``."""

    def __init__(
        self,
        *,
        transport: WebRtcTransport,
        data_producer: DataProducer,
        sctp_stream_parameters: Json,
        app_data: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        self.id = str(uuid.uuid4())
        self.type = "sctp"
        self.data_producer_id = data_producer.id
        self.sctp_stream_parameters = sctp_stream_parameters
        self.label = data_producer.label
        self.protocol = data_producer.protocol
        self.app_data = app_data if app_data is not None else {}
        self.observer = EventEmitter()
        self.closed = False
        self.messages_sent = 0
        self.bytes_sent = 0
        self._transport = transport
        self._data_producer = data_producer
        self._channel: RTCDataChannel | None = None
        self._sctp: RTCSctpTransport | None = None

    @property
    def stream_id(self) -> int:
        return int(self.sctp_stream_parameters["streamId"])

    @property
    def transport_id(self) -> str:
        return self._transport.id

    def attach(self, sctp: RTCSctpTransport) -> None:
        if self._channel is not None or self.closed:
            return
        self._sctp = sctp
        self._channel = DtlsSession.open_negotiated_channel(
            sctp, self.sctp_stream_parameters, self.label, self.protocol
        )

    def send(self, message: str | bytes) -> None:
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return
        channel.send(message)
        self.messages_sent += 1
        self.bytes_sent += len(message)

    async def get_stats(self) -> list[Json]:
        return [
            {
                "type": "data-consumer",
                "label": self.label,
                "protocol": self.protocol,
                "messagesSent": self.messages_sent,
                "bytesSent": self.bytes_sent,
            }
        ]

    def close(self) -> None:
        if self.closed:
            return
        self._close()
        self._data_producer.remove_consumer(self)
        self._transport.data_consumer_closed(self)
        self.release_listeners()

    def data_producer_closed(self) -> None:
        if self.closed:
            return
        self._close()
        self._transport.data_consumer_closed(self)
        self.emit("dataproducerclose")
        self.release_listeners()

    def transport_closed(self) -> None:
        if self.closed:
            return
        self._close()
        self._data_producer.remove_consumer(self)
        self.emit("transportclose")
        self.release_listeners()

    def _close(self) -> None:
        self.closed = True
        if self._channel is not None and self._sctp is not None:
            DtlsSession.close_channel(self._sctp, self._channel)
        self._channel = self._sctp = None
        self.observer.emit("close")
