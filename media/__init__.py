"""ghostless media: a mediasoup-compatible SFU on aiortc/aioice primitives.

The object model is mediasoup's (Worker -> Router -> WebRtcTransport ->
Producer/Consumer/DataProducer/DataConsumer), so that the signalling layer
could sit on a real mediasoup worker through the same calls.
"""

from .consumer import Consumer
from .data_consumer import DataConsumer
from .data_producer import DataProducer
from .datagram_errors import ERROR_KINDS
from .errors import InvalidParametersError, InvalidStateError, MediaError, UnsupportedError
from .events import EventEmitter
from .link import LinkMonitor, LinkSample
from .ports import NoFreePortError, PortRange
from .producer import Producer
from .router import Router
from .webrtc_transport import TransportEndReason, TransportSettings, WebRtcTransport
from .worker import Worker, WorkerSettings

__all__ = [
    "ERROR_KINDS",
    "Consumer",
    "DataConsumer",
    "DataProducer",
    "EventEmitter",
    "InvalidParametersError",
    "InvalidStateError",
    "LinkMonitor",
    "LinkSample",
    "MediaError",
    "NoFreePortError",
    "PortRange",
    "Producer",
    "Router",
    "TransportEndReason",
    "TransportSettings",
    "UnsupportedError",
    "WebRtcTransport",
    "Worker",
    "WorkerSettings",
]
