"""DataConsumer: a DataProducer's messages, on a stream of another transport.

Its sends are bounded as mediasoup bounds them: when what the transport's SCTP
association already holds towards the client (``bufferedAmount``) plus the
message would exceed ``sctpSendBufferSize``, the message is dropped and
counted, and ``sctpsendbufferfull`` is emitted once per episode.  A client that
stops reading (a frozen tab, a stuck SCTP stack) therefore costs the server at
most that many bytes, where it used to queue without limit (98 MB seen).
Messages larger than the transport's ``maxMessageSize`` are dropped too.
"""

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
    ``dataproducerclose``, ``sctpsendbufferfull``; observer ``close``."""

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
        self.messages_dropped = 0
        self.bytes_dropped = 0
        self._send_buffer_full = False
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

    @property
    def buffered_amount(self) -> int:
        """Bytes the transport's SCTP association holds towards the client."""
        sctp = self._sctp
        return 0 if sctp is None else DtlsSession.buffered_amount(sctp)

    def send(self, message: str | bytes) -> bool:
        """Queue one message to the client; False if it was dropped.

        Never raises: it runs inside the sending client's SCTP receive path.
        """
        channel, sctp = self._channel, self._sctp
        if channel is None or sctp is None or channel.readyState != "open":
            return False
        size = len(message.encode()) if isinstance(message, str) else len(message)
        settings = self._transport.settings
        if size > settings.max_sctp_message_size:
            return self._drop(size)  # mediasoup: "exceeds maxMessageSize"
        if DtlsSession.buffered_amount(sctp) + size > settings.sctp_send_buffer_size:
            if not self._send_buffer_full:
                self._send_buffer_full = True
                self.emit("sctpsendbufferfull")
            return self._drop(size)
        self._send_buffer_full = False
        channel.send(message)
        self.messages_sent += 1
        self.bytes_sent += size
        return True

    def _drop(self, size: int) -> bool:
        self.messages_dropped += 1
        self.bytes_dropped += size
        return False

    async def get_stats(self) -> list[Json]:
        return [
            {
                "type": "data-consumer",
                "label": self.label,
                "protocol": self.protocol,
                "messagesSent": self.messages_sent,
                "bytesSent": self.bytes_sent,
                "bufferedAmount": self.buffered_amount,
                "sctpSendBufferSize": self._transport.settings.sctp_send_buffer_size,
                "messagesDropped": self.messages_dropped,
                "bytesDropped": self.bytes_dropped,
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
