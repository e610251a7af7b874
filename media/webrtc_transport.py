"""WebRtcTransport: ICE-lite on UDP and TCP, DTLS-SRTP, SCTP, and what rides on it.

One UDP socket per transport, demultiplexed by the first byte (RFC 7983):
0-3 STUN (answered by the ICE-lite agent), 20-63 DTLS (handed to aiortc's DTLS
and SCTP stack), 128-191 SRTP/SRTCP (decrypted and forwarded right inside
``datagram_received``, with no task switch or queue per packet).

And, for clients whose network drops UDP, a passive ICE-TCP candidate
(RFC 6544): a TCP listener per transport whose connections carry the same
packets framed (``media.ice_tcp``, ``media.tcp_listener``).  Each frame goes
through the same demultiplexer, with the connection in place of the source
address; the client nominates a TCP path as it would a UDP one, and sends go
to whichever path is selected.  Candidates and their priorities follow
mediasoup's ``enableUdp``/``enableTcp``/``preferUdp``/``preferTcp``.

The transport closes itself, and says why in ``end_reason``, when the client
is gone: ``dtls_closed`` (close_notify, or RTCP BYE for everything it sent),
``ice_consent_expired`` (no consent check for ``consent_timeout``, RFC 7675),
``dtls_failed``.  Otherwise it is ``closed_by_app`` or ``router_closed``.

No datagram makes it raise: parse errors are caught where parsing happens and
counted by kind (``media.datagram_errors``), and ``_datagram_received`` has one
backstop for anything else, so nothing reaches the event loop's exception
handler.  A consent timer that fires late because the server stalled gives
the client a resync window instead of expiring it (``ConsentWatch``).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import rtp_packet
from .aiortc_bridge import DtlsRole, DtlsSession, RTCCertificate, SrtpSession
from .bwe import (
    PADDING_INTERVAL,
    PADDING_PACKET,
    PROBE_PADDING,
    TIMING_RESOLUTION,
    WARMUP,
    BitrateDistributor,
    Demand,
    IncomingBitrateEstimator,
    OutgoingBitrateEstimator,
    PaddingBudget,
    StartupProbe,
)
from .codecs import SIMULCAST_MIME_TYPES
from .consumer import Consumer
from .data_consumer import DataConsumer
from .data_producer import DataProducer
from .datagram_errors import DatagramErrors, new_error_counts
from .errors import InvalidParametersError, InvalidStateError, UnsupportedError
from .events import EventEmitter
from .ice_lite import Address, ConsentWatch, IceChange, IceLiteServer, IceState
from .link import LinkMonitor, LinkSample
from .ports import PortAllocator, open_endpoint
from .producer import Producer
from .rtp_parameters import (
    ABS_SEND_TIME_URI,
    TRANSPORT_CC_URI,
    Json,
    can_consume,
    get_consumable_rtp_parameters,
    get_consumer_rtp_parameters,
    get_producer_mapping,
    random_ssrc,
    validate_producer_rtp_parameters,
)
from .rtp_stream import RecvStream
from .simulcast_consumer import SimulcastConsumer
from .tcp_listener import TcpConnection, TcpListener
from .transport_cc import TransportCcFeedback

if TYPE_CHECKING:
    from .router import Router

logger = logging.getLogger(__name__)

# RFC 7675 section 5.1: consent expires 30 s after the last successful check;
# clients check every 5 s +/- 20 %, so anything under 10 s risks false alarms.
MIN_CONSENT_TIMEOUT = 10.0
SCTP_PORT = 5000

# mediasoup's candidate priorities (RFC 8445 section 5.1.2.1): host type
# preference 64, component 1, local preference 10000 for the first candidate
# and 100 less for each next one; preferUdp/preferTcp decide the order.
_TYPE_PREFERENCE = 64
_LOCAL_PREFERENCE = 10000
_LOCAL_PREFERENCE_STEP = 100


def candidate_priority(index: int) -> int:
    """The priority of the ``index``-th candidate (0: UDP's 1076302079 by default)."""
    local = _LOCAL_PREFERENCE - _LOCAL_PREFERENCE_STEP * index
    return (_TYPE_PREFERENCE << 24) + (local << 8) + (256 - 1)


def candidate_protocols(
    *, enable_udp: bool, enable_tcp: bool, prefer_udp: bool, prefer_tcp: bool
) -> tuple[str, ...]:
    """The protocols of a transport's candidates, best first (mediasoup's rule:
    UDP first unless TCP is preferred and UDP is not)."""
    if not enable_udp and not enable_tcp:
        raise InvalidParametersError("at least one of enable_udp and enable_tcp must be true")
    if not enable_tcp:
        return ("udp",)
    if not enable_udp:
        return ("tcp",)
    if prefer_tcp and not prefer_udp:
        return ("tcp", "udp")
    return ("udp", "tcp")


class TransportEndReason(enum.StrEnum):
    """How a transport ended: the liveness signal the signalling layer reads.

    (Sessions have their own vocabulary, ``signalling.liveness.EndReason``; the
    one mapping between the two is ``signalling.lifecycle.SESSION_END_FOR_TRANSPORT``.)
    """

    DTLS_CLOSED = "dtls_closed"
    DTLS_FAILED = "dtls_failed"
    CONSENT_EXPIRED = "ice_consent_expired"
    CLOSED_BY_APP = "closed_by_app"
    ROUTER_CLOSED = "router_closed"


Path = Address | TcpConnection
"""Where a packet came from and where answers go: a UDP address or an ICE-TCP
connection (a tuple never equals a connection)."""

# Exceptions that mean "these bytes do not parse" on the RTP/RTCP paths.
_PARSE_ERRORS = (ValueError, IndexError, struct.error)


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """Per-transport knobs; the defaults follow mediasoup's."""

    consent_timeout: float = 30.0
    enable_sctp: bool = False
    num_sctp_streams: tuple[int, int] = (1024, 1024)  # OS, MIS
    max_sctp_message_size: int = 262144
    """Largest SCTP message accepted from the client (``maxMessageSize``) or sent to it."""
    sctp_send_buffer_size: int = 262144
    """mediasoup's ``sctpSendBufferSize``: bytes the association may hold towards
    the client; a data consumer's message that does not fit is dropped."""
    key_frame_request_interval: float = 0.2
    error_log_interval: float = 60.0
    """At most one log line per interval about malformed datagrams (0: every one)."""
    stall_tolerance: float | None = 1.0
    """A consent timer this late means the server stalled (None: never assume so)."""
    consent_resync_window: float = 6.0
    """After a stall, how long the client has to be heard from again (5 s + 20 %)."""
    max_queued_dtls_records: int = 1024
    """DTLS datagrams waiting for the DTLS task; more are dropped (0: unbounded)."""
    stream_inactivity_timeout: float = 0.5
    """A video encoding with no packet for this long is inactive: simulcast
    consumers fall back to another one (its health is checked 4 times as often).
    Chrome sends every active encoding at 10 frames/s or more; one it stops
    (``active: false``, or its bandwidth estimate dropped) is left within about
    0.6 s plus a key frame of the next one."""
    encoding_stop_timeout: float = 0.25
    """A simulcast encoding silent this long while a lower one keeps sending is
    inactive at once (the sender turned it off): consumers fall back without
    waiting out ``stream_inactivity_timeout``.  Chrome's top encoding sends a
    frame every 33-133 ms even when it is CPU-limited; 0: off."""
    audio_stream_inactivity_timeout: float = 2.0
    """The same for audio, longer: with Opus DTX a silent speaker sends a packet
    every 400 ms (RFC 7587), which is not a stream stopping."""
    initial_incoming_bitrate: int = 1_000_000
    """The uplink estimate (REMB) before anything is measured: browsers trust REMB
    in their first 2 s, so they start there (0: wait for a measurement, ~3 s)."""
    max_incoming_bitrate: int = 0
    """Cap on the REMB sent to the client (mediasoup's ``setMaxIncomingBitrate``; 0: none)."""
    initial_outgoing_bitrate: int = 600_000
    """mediasoup's ``initialAvailableOutgoingBitrate``: the downlink estimate until
    the client's REMB or receiver reports say otherwise."""
    min_outgoing_bitrate: int = 30_000
    """The downlink estimate never goes below this (mediasoup's floor)."""
    max_outgoing_bitrate: int = 0
    """Cap on the downlink estimate (mediasoup's ``setMaxOutgoingBitrate``; 0: none)."""
    transport_cc_interval: float = 0.1
    """How often arrivals are reported to a client that negotiated transport-cc
    (mediasoup and libwebrtc's receivers: every 100 ms)."""
    early_arrivals: int = 256
    """Packet headers kept from before the first ``produce`` names the extension
    ids, to report Chrome's start-up probes (a few dozen packets; 0: none)."""
    early_arrival_max_age: float = 2.0
    """Kept arrivals older than this are not reported: Google Congestion Control
    keeps probe results for 1 s, plus a round trip."""
    max_tcp_connections: int = 8
    """ICE-TCP connections open at a time on one transport; more are closed on
    arrival (a browser opens one per remote TCP candidate and network interface)."""
    tcp_stun_timeout: float = 5.0
    """An ICE-TCP connection must send an authenticated STUN binding request
    within this many seconds (browsers send one at once), or it is closed."""
    tcp_write_limit: int = 262144
    """Bytes an ICE-TCP connection may have waiting to be sent before media to
    it is dropped (twice this for STUN, DTLS and RTCP): the client's TCP does
    not take more, and queueing it would only add delay."""

    def __post_init__(self) -> None:
        if self.consent_timeout < MIN_CONSENT_TIMEOUT:
            raise ValueError(f"consent_timeout must be at least {MIN_CONSENT_TIMEOUT} s")
        if self.max_sctp_message_size <= 0 or self.sctp_send_buffer_size <= 0:
            raise ValueError("max_sctp_message_size and sctp_send_buffer_size must be positive")
        if self.error_log_interval < 0 or self.max_queued_dtls_records < 0:
            raise ValueError("error_log_interval and max_queued_dtls_records must not be negative")
        if self.stall_tolerance is not None and self.stall_tolerance < 0:
            raise ValueError("stall_tolerance must not be negative")
        if self.consent_resync_window <= 0:
            raise ValueError("consent_resync_window must be positive")
        if min(self.stream_inactivity_timeout, self.audio_stream_inactivity_timeout) <= 0:
            raise ValueError("the stream inactivity timeouts must be positive")
        if self.encoding_stop_timeout < 0:
            raise ValueError("encoding_stop_timeout must not be negative")
        if min(self.initial_incoming_bitrate, self.max_incoming_bitrate) < 0:
            raise ValueError("incoming bitrates must not be negative")
        if self.min_outgoing_bitrate <= 0 or self.initial_outgoing_bitrate <= 0:
            raise ValueError("min_outgoing_bitrate and initial_outgoing_bitrate must be positive")
        if self.max_outgoing_bitrate < 0:
            raise ValueError("max_outgoing_bitrate must not be negative")
        if self.transport_cc_interval <= 0 or self.early_arrival_max_age <= 0:
            raise ValueError("transport_cc_interval and early_arrival_max_age must be positive")
        if self.early_arrivals < 0:
            raise ValueError("early_arrivals must not be negative")
        if self.max_tcp_connections < 1 or self.tcp_write_limit < 65536:
            raise ValueError(
                "max_tcp_connections must be at least 1, tcp_write_limit at least 65536"
            )
        if self.tcp_stun_timeout <= 0:
            raise ValueError("tcp_stun_timeout must be positive")


class _Endpoint(asyncio.DatagramProtocol):
    """The UDP socket's protocol: hands every datagram to its transport."""

    __slots__ = ("on_datagram",)

    def __init__(self) -> None:
        self.on_datagram: Callable[[bytes, Address], None] = lambda data, addr: None

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable after the client went away: consent handles it.
        logger.debug("UDP error: %s", exc)


class WebRtcTransport(EventEmitter):
    """mediasoup ``WebRtcTransport``.

    Events: ``icestatechange``, ``dtlsstatechange``, ``sctpstatechange``,
    ``routerclose``, ``ended`` (reason; the client went away), ``trace``
    (mediasoup's ``bwe`` trace of the downlink estimate, see ``media.bwe``).
    Observer: ``close``, ``newproducer``, ``newconsumer``, ``newdataproducer``,
    ``newdataconsumer``.
    """

    def __init__(
        self,
        *,
        router: Router,
        udp: asyncio.DatagramTransport | None,
        endpoint: _Endpoint | None,
        port: int,
        listen_ip: str,
        announced_address: str | None,
        certificate: RTCCertificate,
        settings: TransportSettings,
        app_data: dict[str, Any] | None,
        worker_errors: dict[str, int] | None = None,
        tcp: TcpListener | None = None,
        protocols: tuple[str, ...] = ("udp",),
    ) -> None:
        """``udp``/``endpoint``/``port``: the UDP socket (None, and port 0, when UDP
        is off); ``tcp``: the ICE-TCP listener (None when TCP is off);
        ``protocols``: the candidates' order, best first."""
        super().__init__()
        self.id = str(uuid.uuid4())
        self.app_data = app_data if app_data is not None else {}
        self.observer = EventEmitter()
        self.closed = False
        self.end_reason: TransportEndReason | None = None
        self.settings = settings
        self.rtcp_ssrc = random_ssrc()
        self._cname = uuid.uuid4().hex[:16]  # until the client names one
        self._router = router
        self._udp = udp
        self._loop = asyncio.get_running_loop()
        self._port = port
        self._listen_ip = listen_ip
        self._announced = announced_address
        self._certificate = certificate
        self._ice = IceLiteServer(settings.consent_timeout)
        self._consent = ConsentWatch(
            self._ice,
            stall_tolerance=settings.stall_tolerance,
            resync_window=settings.consent_resync_window,
        )
        self._tcp = tcp
        self._protocols = protocols
        # The selected path (a UDP address or an ICE-TCP connection), and how
        # to send on it: media, and everything else (which TCP drops later).
        self._tuple: Path | None = None
        self._send_media: Callable[[bytes], object] | None = None
        self._send_control: Callable[[bytes], object] | None = None
        self._tuple_ready = asyncio.Event()
        self._consent_timer: asyncio.TimerHandle | None = None
        self._errors = DatagramErrors(
            owner=f"transport {self.id}",
            worker_counts=worker_errors if worker_errors is not None else new_error_counts(),
            interval=settings.error_log_interval,
            clock=self._loop.time,
        )
        self._dtls = DtlsSession(
            certificate,
            self._send_dtls,
            self._send_now,
            self._dtls_state_changed,
            on_error=self._errors.record,
            max_queued_records=settings.max_queued_dtls_records,
        )
        self._dtls_state = "new"
        self._connected = False
        self._rx_srtp: SrtpSession | None = None
        self._tx_srtp: SrtpSession | None = None
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self.data_producers: dict[str, DataProducer] = {}
        self.data_consumers: dict[str, DataConsumer] = {}
        # Forwarding tables: SSRC -> bound receive method of a producer's stream
        # (None: known, dropped); media SSRC -> that stream (sender reports);
        # consumer SSRC -> consumer.
        self._rtp_table: dict[int, Callable[[bytearray], None] | None] = {}
        self._recv_streams: dict[int, RecvStream] = {}
        self._consumers_by_ssrc: dict[int, Consumer] = {}
        self._next_mid = 0
        self._sctp_stream_ids: set[int] = set()
        self._next_sctp_stream_id = 0
        self._byed_ssrcs: set[int] = set()
        self.last_activity = self._loop.time()
        self.created_at = time.time()
        self.bytes_received = 0
        self.bytes_sent = 0
        self.srtp_errors = 0
        self._link_monitor: LinkMonitor | None = None
        self.last_link_sample: LinkSample | None = None
        # Bandwidth estimation (media.bwe): the uplink from abs-send-time,
        # answered with REMB; the downlink from the client's REMB and reports,
        # shared among our consumers.
        self._abs_send_time_id = 0  # learned from the producers (0: none negotiated)
        # With transport-cc negotiated the client estimates itself from the
        # arrivals we report (media.transport_cc), and gets no REMB.
        self._transport_cc_id = 0
        self._transport_cc = TransportCcFeedback()
        self._transport_cc_timer: asyncio.Handle | None = None
        # Browsers send (and probe their bandwidth) as soon as DTLS is up, a
        # round trip before ``produce`` names the extension ids: the headers of
        # those first packets are kept (bounded), and reported once it does,
        # so the client's start-up probes are answered (media.transport_cc).
        self._early_arrivals: list[tuple[int, bytes]] | None = []
        self._audio_payload_types: set[int] = set()
        self._uplink = IncomingBitrateEstimator(
            initial_bitrate=settings.initial_incoming_bitrate,
            max_bitrate=settings.max_incoming_bitrate,
        )
        self._downlink = OutgoingBitrateEstimator(
            initial_bitrate=settings.initial_outgoing_bitrate,
            min_bitrate=settings.min_outgoing_bitrate,
            max_bitrate=settings.max_outgoing_bitrate,
        )
        self._distributor = BitrateDistributor()
        self.rembs_sent = 0
        self.rembs_received = 0
        # Padding with the first video, for the receiver's first estimate.
        self._startup_probe: StartupProbe | None = StartupProbe()
        self._warmup_until = 0.0  # (0: not started)
        self._padding = PaddingBudget()
        self._padding_timer: asyncio.TimerHandle | None = None
        self.padding_packets_sent = 0
        # produce() announces every producer here; it is where the extension
        # ids of this client's streams become known (one per URI in a BUNDLE).
        self.observer.on("newproducer", self._learn_extension_ids)
        self._endpoint = endpoint
        if endpoint is not None:
            endpoint.on_datagram = self._datagram_received
        if tcp is not None:
            tcp.on_frame = self._tcp_frame_received
            tcp.set_callbacks(on_lost=self._tcp_connection_lost, on_error=self._tcp_error)

    def __repr__(self) -> str:
        return f"<WebRtcTransport {self.id}{' closed' if self.closed else ''}>"

    # -- parameters -----------------------------------------------------------

    @property
    def ice_role(self) -> str:
        return "controlled"

    @property
    def ice_parameters(self) -> Json:
        return self._ice.parameters

    @property
    def ice_candidates(self) -> list[Json]:
        """mediasoup's candidates: host ones, UDP and/or passive TCP, best first."""
        address = self._announced or self._listen_ip
        candidates: list[Json] = []
        for index, protocol in enumerate(self._protocols):
            candidate: Json = {
                "foundation": f"{protocol}candidate",
                "priority": candidate_priority(index),
                "ip": address,
                "address": address,
                "protocol": protocol,
                "port": self._port if protocol == "udp" else self.tcp_port,
                "type": "host",
            }
            if protocol == "tcp":
                candidate["tcpType"] = "passive"
            candidates.append(candidate)
        return candidates

    @property
    def dtls_parameters(self) -> Json:
        return {"role": "auto", "fingerprints": DtlsSession.local_fingerprints(self._certificate)}

    @property
    def sctp_parameters(self) -> Json | None:
        if not self.settings.enable_sctp:
            return None
        os_, mis = self.settings.num_sctp_streams
        return {
            "port": SCTP_PORT,
            "OS": os_,
            "MIS": mis,
            "mctp": False,
            "maxMessageSize": self.settings.max_sctp_message_size,
        }

    @property
    def ice_state(self) -> str:
        return self._ice.state.value

    @property
    def ice_selected_tuple(self) -> Json | None:
        path = self._tuple
        if path is None:
            return None
        if isinstance(path, tuple):
            (remote_ip, remote_port), protocol = path, "udp"
            local_port: int | None = self._port
        else:
            (remote_ip, remote_port), protocol = path.remote_address, "tcp"
            local_port = self.tcp_port
        return {
            "localIp": self._listen_ip,
            "localPort": local_port,
            "remoteIp": remote_ip,
            "remotePort": remote_port,
            "protocol": protocol,
        }

    @property
    def dtls_state(self) -> str:
        return self._dtls_state

    @property
    def sctp_state(self) -> str | None:
        return self._dtls.sctp_state() if self.settings.enable_sctp else None

    @property
    def port(self) -> int:
        """The UDP port (the TCP one when UDP is off)."""
        return self._port or self.tcp_port or 0

    @property
    def tcp_port(self) -> int | None:
        """The ICE-TCP listener's port (None when TCP is off)."""
        return self._tcp.port if self._tcp is not None else None

    @property
    def tcp_connections(self) -> int:
        """ICE-TCP connections open now."""
        return len(self._tcp.connections) if self._tcp is not None else 0

    @property
    def router(self) -> Router:
        return self._router

    # -- datagrams (RFC 7983 demultiplexing) ------------------------------------

    def _datagram_received(self, data: bytes, addr: Path) -> None:
        # Zero-cost try blocks (CPython 3.11): the forwarding path pays nothing
        # until something raises.  Parse errors are caught where the parsing
        # happens; the outer handler is the backstop that keeps anything else
        # out of the event loop's exception handler (a traceback per packet).
        try:
            if not data:
                return
            first = data[0]
            self.bytes_received += len(data)
            if 127 < first < 192:
                rx = self._rx_srtp
                if rx is None or addr != self._tuple:
                    return
                if len(data) < 12:
                    self._errors.record("srtp", "shorter than an RTP header")
                    return
                if 191 < data[1] < 224:
                    rtcp = rx.unprotect_rtcp(data)
                    if rtcp is None:
                        self.srtp_errors += 1
                        self._errors.record("srtp", "SRTCP authentication or replay check failed")
                    else:
                        self.last_activity = self._loop.time()
                        self._receive_rtcp(rtcp)
                    return
                packet = rx.unprotect(data)
                if packet is None:
                    self.srtp_errors += 1
                    self._errors.record("srtp", "SRTP authentication or replay check failed")
                    return
                # Only authenticated media proves the client is there (a
                # spoofed source address must not keep a session alive).
                self.last_activity = self._loop.time()
                ssrc = (packet[8] << 24) | (packet[9] << 16) | (packet[10] << 8) | packet[11]
                if packet[0] & 0x10:  # before extension ids are rewritten
                    if self._transport_cc_id:
                        self._record_arrival(packet, ssrc)
                    elif self._abs_send_time_id:
                        self._feed_uplink_estimate(packet, ssrc)
                    elif self._early_arrivals is not None:
                        self._keep_early_arrival(packet)
                try:
                    try:
                        handler = self._rtp_table[ssrc]
                    except KeyError:
                        handler = self._learn_ssrc(ssrc, packet)
                    if handler is not None:
                        handler(packet)
                except _PARSE_ERRORS as exc:
                    self._errors.record("rtp", exc)
            elif first < 4:
                self._receive_stun(data, addr)
            elif 19 < first < 64 and addr == self._tuple:
                self.last_activity = self._loop.time()
                self._dtls.feed(data)
        except Exception as exc:
            self._errors.record("internal", exc)

    def _receive_stun(self, data: bytes, addr: Path) -> None:
        now = self._loop.time()
        result = self._ice.handle_binding(data, addr, now)
        if result.error is not None:
            self._errors.record("stun", result.error)
            return
        if isinstance(addr, tuple):
            if result.response is not None and self._udp is not None:
                self._udp.sendto(result.response, addr)
        else:
            if result.response is not None:
                addr.send(result.response)
            if result.authenticated:
                addr.validate()
        if self._ice.last_consent == now:
            self.last_activity = now
        if result.change is IceChange.TUPLE_SELECTED:
            self._select_path(addr)
            self._tuple_ready.set()
            if self._consent_timer is None:
                self._arm_consent_timer(self._consent.start())
            self.emit("icestatechange", self._ice.state.value)
            self.emit("iceselectedtuplechange", self.ice_selected_tuple)

    def _select_path(self, path: Path | None) -> None:
        previous, self._tuple = self._tuple, path
        if path is None:
            self._send_media = self._send_control = None
            return
        if not isinstance(path, tuple):
            self._send_media = path.send_media
            self._send_control = path.send
        elif self._udp is not None:
            send = functools.partial(self._udp.sendto, addr=path)
            self._send_media = self._send_control = send
        if path != previous:
            # A new path (an address change, a lost TCP connection replaced):
            # what the client sent into the old one is not reported as lost on
            # this one (TransportCcFeedback.new_path says why).
            for packet in self._transport_cc.new_path(self.rtcp_ssrc):
                self.send_rtcp(packet)

    # -- ICE-TCP (media.tcp_listener) ---------------------------------------------

    def _tcp_frame_received(self, data: bytes, connection: TcpConnection) -> None:
        if not connection.validated:
            # Until it proves itself, a connection may only ask for a binding.
            if data[0] > 3:
                self._tcp_error(connection, "not STUN before an authenticated binding request")
                connection.close()
                return
            self._datagram_received(data, connection)
            if not connection.validated:  # garbage, or the wrong credentials
                connection.close()
            return
        self._datagram_received(data, connection)

    def _tcp_error(self, connection: TcpConnection, detail: str) -> None:
        self._errors.record("tcp", detail)

    def _tcp_connection_lost(self, connection: TcpConnection) -> None:
        """A TCP connection closed; if it was the selected path, the client can
        only come back with a check on another path (a new connection, or UDP):
        until one arrives the agent is ``disconnected``, and if none does before
        consent runs out, the transport ends (``ice_consent_expired``)."""
        if self.closed or not self._ice.path_lost(connection):
            return
        self._select_path(None)
        self.emit("icestatechange", self._ice.state.value)

    def _arm_consent_timer(self, when: float | None) -> None:
        if when is not None and not self.closed:
            self._consent_timer = self._loop.call_at(when, self._check_consent)

    def _check_consent(self) -> None:
        # Re-armed lazily: checks only move ``last_consent``, never the timer.
        self._consent_timer = None
        if self.closed:
            return
        stalls, due, now = self._consent.stalls, self._consent.due, self._loop.time()
        when = self._consent.fired(now)
        if self._consent.stalls != stalls and due is not None:
            logger.warning(
                "transport %s: consent timer ran %.1f s late (the server stalled); "
                "judging consent again in %.1f s, on the checks received by then",
                self.id,
                now - due,
                self._consent.resync_window,
            )
        if when is not None:
            self._arm_consent_timer(when)
        elif self._ice.state is IceState.DISCONNECTED:
            self.emit("icestatechange", self._ice.state.value)
            self._end(TransportEndReason.CONSENT_EXPIRED)

    # -- DTLS ------------------------------------------------------------------

    async def _send_dtls(self, data: bytes) -> None:
        # The DTLS client speaks first; it has to wait for ICE to pick a tuple.
        if self._tuple is None:
            await self._tuple_ready.wait()
        self._send_now(data)

    def _send_now(self, data: bytes) -> None:
        send = self._send_control
        if send is not None:
            self.bytes_sent += len(data)
            send(data)

    def _dtls_state_changed(self, state: str) -> None:
        self._dtls_state = state
        if state == "connected":
            self._rx_srtp = self._dtls.rx_srtp
            self._tx_srtp = self._dtls.tx_srtp
            self._connected = True
            if self.settings.enable_sctp:
                self._start_sctp()
            self.emit("dtlsstatechange", state)
            for consumer in self.consumers.values():
                consumer.receive_key_frame_request()
            self._maybe_probe()
        elif state == "closed":
            self.emit("dtlsstatechange", state)
            self._end(TransportEndReason.DTLS_CLOSED)
        elif state == "failed":
            self.emit("dtlsstatechange", state)
            self._end(TransportEndReason.DTLS_FAILED)

    def _start_sctp(self) -> None:
        _os, _mis = self.settings.num_sctp_streams
        sctp = self._dtls.start_sctp(
            port=SCTP_PORT,
            remote_port=SCTP_PORT,
            max_message_size=self.settings.max_sctp_message_size,
        )
        sctp.on("statechange", lambda: self.emit("sctpstatechange", sctp.state))
        for data_producer in self.data_producers.values():
            data_producer.attach(sctp)
        for data_consumer in self.data_consumers.values():
            data_consumer.attach(sctp)

    async def connect(self, dtls_parameters: Any) -> None:
        """Start DTLS with the client's role and fingerprints (``connectWebRtcTransport``)."""
        self._check_open()
        if self._dtls_state != "new" or self._dtls.state != "new":
            raise InvalidStateError("connect() already called")
        if not isinstance(dtls_parameters, dict):
            raise InvalidParametersError("dtlsParameters must be an object")
        fingerprints = dtls_parameters.get("fingerprints")
        if (
            not isinstance(fingerprints, list)
            or not fingerprints
            or not all(
                isinstance(f, dict)
                and isinstance(f.get("algorithm"), str)
                and isinstance(f.get("value"), str)
                for f in fingerprints
            )
        ):
            raise InvalidParametersError("dtlsParameters.fingerprints must be a non-empty array")
        remote_role = dtls_parameters.get("role", "auto")
        # mediasoup: the remote role decides ours; "auto" makes us the client.
        if remote_role == "client":
            role = DtlsRole.SERVER
        elif remote_role in ("server", "auto", None):
            role = DtlsRole.CLIENT
        else:
            raise InvalidParametersError("dtlsParameters.role must be auto, client or server")
        self._dtls_state = "connecting"
        self.emit("dtlsstatechange", "connecting")
        self._dtls.start(role, fingerprints)

    async def restart_ice(self) -> Json:
        """New ICE credentials; the media keeps flowing on the current tuple."""
        self._check_open()
        self._ice.restart()
        return self._ice.parameters

    # -- RTP / RTCP out --------------------------------------------------------

    def send_rtp(self, packet: bytearray | bytes, seq: int = -1, ssrc: int = 0) -> None:
        """Encrypt and send; with ``seq``, the packet goes out with that seq and SSRC."""
        tx = self._tx_srtp
        send = self._send_media
        if tx is None or send is None:
            return
        data = tx.protect(packet, seq, ssrc)
        if data is None:
            self.srtp_errors += 1
            return
        self.bytes_sent += len(data)
        send(data)

    def send_rtcp(self, packet: bytes) -> None:
        tx = self._tx_srtp
        send = self._send_control
        if tx is None or send is None:
            return
        data = tx.protect_rtcp(packet)
        if data is None:
            self.srtp_errors += 1
            return
        self.bytes_sent += len(data)
        send(data)

    # -- RTP / RTCP in (slow paths) --------------------------------------------

    def _learn_ssrc(self, ssrc: int, packet: bytearray) -> Callable[[bytearray], None] | None:
        """An SSRC the client never signalled: find its producer and encoding.

        The producer decides by MID, RID and repaired-RID (``Producer.match_ssrc``):
        an RTX stream carries the repaired-RID of the encoding it repairs, so
        r0's and r1's RTX streams are told apart from r2's.
        """
        handler: Callable[[bytearray], None] | None = None
        for producer in self.producers.values():
            match = producer.match_ssrc(ssrc, packet)
            if match is False:
                continue
            if isinstance(match, tuple):
                stream, is_rtx = match
                if is_rtx:
                    handler = stream.receive_rtx
                else:
                    handler = stream.receive_rtp
                    self._recv_streams[ssrc] = stream
            break
        else:
            return None  # unknown and unclaimed: maybe its producer comes later
        if len(self._rtp_table) < 4096:
            self._rtp_table[ssrc] = handler
        return handler

    def _receive_rtcp(self, data: bytes) -> None:
        consumed = 0
        for pt, count, packet in rtp_packet.iter_rtcp(data):
            consumed += len(packet)
            try:
                self._receive_rtcp_packet(pt, count, packet)
            except _PARSE_ERRORS as exc:
                # Truncated: skip it and go on with the compound, as RFC 3550 receivers do.
                self._errors.record("rtcp", exc)
        if consumed != len(data):
            self._errors.record("rtcp", "compound packet framing does not add up")
        # Receivers send RTCP about every second while they receive video: the
        # downlink estimate is shared out from here, no timer of our own.
        if self.consumers and not self.closed:
            self._share_outgoing_bitrate(self.last_activity)

    def _receive_rtcp_packet(self, pt: int, count: int, packet: bytes) -> None:
        if pt == rtp_packet.RTCP_SR:
            sender_ssrc, ntp, rtp_ts = struct.unpack_from("!IQI", packet, 4)
            stream = self._recv_streams.get(sender_ssrc)  # one per encoding
            if stream is not None and stream.producer is not None:
                block = stream.producer.receive_sender_report(ntp, rtp_ts, time.monotonic(), stream)
                self.send_rtcp(rtp_packet.build_receiver_report(self.rtcp_ssrc, [block]))
            self._receive_report_blocks(packet, count, 28)
        elif pt == rtp_packet.RTCP_RR:
            self._receive_report_blocks(packet, count, 8)
        elif pt == rtp_packet.RTCP_PSFB and count in (1, 4):  # PLI, FIR
            if count == 1:
                targets = [struct.unpack_from("!I", packet, 8)[0]]
            else:
                targets = [
                    struct.unpack_from("!I", packet, pos)[0]
                    for pos in range(12, len(packet) - 7, 8)
                ]
            for ssrc in targets:
                consumer = self._consumers_by_ssrc.get(ssrc)
                if consumer is not None:
                    consumer.receive_key_frame_request()
        elif pt == rtp_packet.RTCP_PSFB and count == rtp_packet.PSFB_AFB:
            remb = rtp_packet.parse_remb(packet)
            if remb is not None:  # the client's estimate of what it can receive
                self.rembs_received += 1
                self._downlink.on_remb(self.last_activity, remb[0])
        elif pt == rtp_packet.RTCP_RTPFB and count == 1:  # generic NACK
            media_ssrc, seqs = rtp_packet.parse_nack(packet)
            consumer = self._consumers_by_ssrc.get(media_ssrc)
            if consumer is not None and consumer.ssrc == media_ssrc:
                consumer.receive_nack(seqs)
        elif pt == rtp_packet.RTCP_BYE:
            self._receive_bye(rtp_packet.parse_bye(packet, count))

    def _receive_report_blocks(self, packet: bytes, count: int, offset: int) -> None:
        reported = False
        for block in rtp_packet.parse_report_blocks(packet, count, offset):
            consumer = self._consumers_by_ssrc.get(block.ssrc)
            if consumer is not None and consumer.ssrc == block.ssrc:
                consumer.receive_report(block)
                self._downlink.on_report_block(block.ssrc, block.highest_seq, block.cumulative_lost)
                reported = True
        if reported:  # the loss-based downlink estimate moves once per report
            self._downlink.on_reports(self.last_activity)

    def _receive_bye(self, ssrcs: list[int]) -> None:
        """RTCP BYE (RFC 3550 section 6.6) for every stream sent: the client left."""
        producing = {p.ssrc for p in self.producers.values() if p.ssrc is not None}
        self._byed_ssrcs.update(s for s in ssrcs if s in producing)
        if producing and producing <= self._byed_ssrcs:
            self._end(TransportEndReason.DTLS_CLOSED)

    # -- producers and consumers ---------------------------------------------------

    async def produce(
        self,
        *,
        kind: str,
        rtp_parameters: Any,
        paused: bool = False,
        app_data: dict[str, Any] | None = None,
    ) -> Producer:
        self._check_open()
        if kind not in ("audio", "video"):
            raise InvalidParametersError("kind must be audio or video")
        params = validate_producer_rtp_parameters(kind, rtp_parameters)
        params.setdefault("encodings", [{}])
        # Chrome's simulcast offers carry rids and no a=ssrc lines, so
        # mediasoup-client sends an empty CNAME; receivers build the track's
        # stream id (msid) from it.  Give the stream this transport's CNAME,
        # shared by the client's other producers (lip sync groups by it).
        rtcp = params.setdefault("rtcp", {})
        if not rtcp.get("cname"):
            rtcp["cname"] = self._cname
        else:
            self._cname = str(rtcp["cname"])
        caps = self._router.rtp_capabilities
        mapping = get_producer_mapping(kind, params, caps)
        ssrcs = {
            s
            for e in params["encodings"]
            for s in (e.get("ssrc"), (e.get("rtx") or {}).get("ssrc"))
            if s is not None
        }
        if ssrcs & self._rtp_table.keys() - {None}:
            for ssrc in ssrcs:
                if self._rtp_table.get(ssrc) is not None:
                    raise InvalidParametersError(f"ssrc {ssrc} is already in use")
        mid = params.get("mid")
        if mid is not None and any(
            p.rtp_parameters.get("mid") == mid for p in self.producers.values()
        ):
            # mediasoup: "MID already exists" (packets are routed by MID first).
            raise InvalidParametersError(f"mid {str(mid)[:16]!r} is already in use")
        if len(params["encodings"]) > 1:
            mimes = [str(c["mimeType"]).lower() for c in params["codecs"]]
            mime = next(m for m in mimes if not m.endswith("/rtx"))
            if mime not in SIMULCAST_MIME_TYPES:
                # Switching encodings needs their key frames recognised.
                raise UnsupportedError(f"simulcast is not supported with {mime}")
        producer = Producer(
            transport=self,
            kind=kind,
            rtp_parameters=params,
            mapping=mapping,
            consumable_rtp_parameters=get_consumable_rtp_parameters(kind, params, caps, mapping),
            paused=paused,
            key_frame_request_interval=self.settings.key_frame_request_interval,
            app_data=app_data,
            inactivity_timeout=(
                self.settings.audio_stream_inactivity_timeout
                if kind == "audio"
                else self.settings.stream_inactivity_timeout
            ),
            stop_timeout=self.settings.encoding_stop_timeout,
        )
        self.producers[producer.id] = producer
        # Every encoding is a stream of its own; signalled SSRCs are bound now,
        # the others when their first packet names them (``_learn_ssrc``).
        for stream in producer.streams:
            # Our abs-send-time on the way out (video: what receivers estimate on).
            stream.send_time = kind == "video"
            if stream.ssrc is not None:
                self._rtp_table[stream.ssrc] = stream.receive_rtp
                self._recv_streams[stream.ssrc] = stream
            if stream.rtx_ssrc is not None:
                self._rtp_table[stream.rtx_ssrc] = stream.receive_rtx
        # Packets that arrived before produce() may have cached "unknown".
        for ssrc, handler in list(self._rtp_table.items()):
            if handler is None and ssrc not in ssrcs:
                del self._rtp_table[ssrc]
        producer.start(self._loop)
        self._router.add_producer(producer)
        self.observer.emit("newproducer", producer)
        return producer

    async def consume(
        self,
        *,
        producer_id: str,
        rtp_capabilities: Any,
        paused: bool = False,
        preferred_layers: Any = None,
        app_data: dict[str, Any] | None = None,
    ) -> Consumer:
        """Consume a producer of the same router (mediasoup-demo creates these paused).

        A producer with several encodings gets a ``SimulcastConsumer``
        (``preferred_layers``: mediasoup's ``{spatialLayer, temporalLayer?}``,
        the highest by default); otherwise a simple ``Consumer``.
        """
        self._check_open()
        producer = self._router.get_producer(producer_id)
        if producer is None:
            raise InvalidParametersError(f"producer {producer_id} not found")
        if not isinstance(rtp_capabilities, dict) or not can_consume(
            producer.consumable_rtp_parameters, rtp_capabilities
        ):
            raise UnsupportedError("cannot consume this producer with these rtpCapabilities")
        ssrc = self._unique_ssrc()
        rtp_parameters = get_consumer_rtp_parameters(
            producer.consumable_rtp_parameters,
            rtp_capabilities,
            ssrc=ssrc,
            rtx_ssrc=self._unique_ssrc(exclude=ssrc),
        )
        # A MID unique within this transport, as mediasoup assigns them.
        rtp_parameters["mid"] = str(self._next_mid)
        self._next_mid += 1
        consumer: Consumer
        if producer.type == "simulcast":
            consumer = SimulcastConsumer(
                transport=self,
                producer=producer,
                rtp_parameters=rtp_parameters,
                paused=paused,
                app_data=app_data,
                preferred_layers=preferred_layers,
            )
        else:
            consumer = Consumer(
                transport=self,
                producer=producer,
                rtp_parameters=rtp_parameters,
                paused=paused,
                app_data=app_data,
            )
        self.consumers[consumer.id] = consumer
        self._consumers_by_ssrc[consumer.ssrc] = consumer
        if consumer.rtx_ssrc is not None:
            self._consumers_by_ssrc[consumer.rtx_ssrc] = consumer
        producer.add_consumer(consumer)
        self.observer.emit("newconsumer", consumer)
        if not paused and not producer.paused and consumer.type == "simple":
            producer.request_key_frame()  # a simulcast one asks for its target's
        return consumer

    def _unique_ssrc(self, exclude: int | None = None) -> int:
        while True:
            ssrc = random_ssrc()
            if ssrc != exclude and ssrc not in self._consumers_by_ssrc:
                return ssrc

    async def produce_data(
        self,
        *,
        sctp_stream_parameters: Any,
        label: str = "",
        protocol: str = "",
        app_data: dict[str, Any] | None = None,
    ) -> DataProducer:
        self._check_open()
        if not self.settings.enable_sctp:
            raise UnsupportedError("SCTP is not enabled on this transport")
        if not isinstance(sctp_stream_parameters, dict):
            raise InvalidParametersError("sctpStreamParameters must be an object")
        stream_id = sctp_stream_parameters.get("streamId")
        _os, mis = self.settings.num_sctp_streams
        if (
            not isinstance(stream_id, int)
            or isinstance(stream_id, bool)
            or not 0 <= stream_id < mis
        ):
            raise InvalidParametersError(f"sctpStreamParameters.streamId must be 0..{mis - 1}")
        if stream_id in self._sctp_stream_ids:
            raise InvalidParametersError(f"streamId {stream_id} is already in use")
        if not isinstance(label, str) or not isinstance(protocol, str):
            raise InvalidParametersError("label and protocol must be strings")
        data_producer = DataProducer(
            transport=self,
            sctp_stream_parameters=_stream_parameters(sctp_stream_parameters, stream_id),
            label=label,
            protocol=protocol,
            app_data=app_data,
        )
        self._sctp_stream_ids.add(stream_id)
        self.data_producers[data_producer.id] = data_producer
        if self._dtls.sctp is not None:
            data_producer.attach(self._dtls.sctp)
        self._router.add_data_producer(data_producer)
        self.observer.emit("newdataproducer", data_producer)
        return data_producer

    async def consume_data(
        self, *, data_producer_id: str, app_data: dict[str, Any] | None = None
    ) -> DataConsumer:
        self._check_open()
        if not self.settings.enable_sctp:
            raise UnsupportedError("SCTP is not enabled on this transport")
        data_producer = self._router.get_data_producer(data_producer_id)
        if data_producer is None:
            raise InvalidParametersError(f"dataProducer {data_producer_id} not found")
        stream_id = self._take_sctp_stream_id()
        params = dict(data_producer.sctp_stream_parameters, streamId=stream_id)
        data_consumer = DataConsumer(
            transport=self,
            data_producer=data_producer,
            sctp_stream_parameters=params,
            app_data=app_data,
        )
        self.data_consumers[data_consumer.id] = data_consumer
        data_producer.add_consumer(data_consumer)
        if self._dtls.sctp is not None:
            data_consumer.attach(self._dtls.sctp)
        self.observer.emit("newdataconsumer", data_consumer)
        return data_consumer

    def _take_sctp_stream_id(self) -> int:
        """The next free stream id after the last one given, wrapping round.

        mediasoup's round robin (``Transport.getNextSctpStreamId``): an id
        freed by a closed data consumer is not handed out again until every
        other id has had its turn.  The client cannot know at once that the
        channel on it closed (no SCTP stream reset is sent; it hears
        ``dataConsumerClosed``, if it listens), and a client that still holds
        it refuses a new channel with the same id (pymediasoup: "Data channel
        with ID 0 already registered").
        """
        _os, mis = self.settings.num_sctp_streams
        for step in range(mis):
            stream_id = (self._next_sctp_stream_id + step) % mis
            if stream_id not in self._sctp_stream_ids:
                self._next_sctp_stream_id = stream_id + 1
                self._sctp_stream_ids.add(stream_id)
                return stream_id
        raise UnsupportedError("no free SCTP stream on this transport")

    # -- child close paths (called by the children) --------------------------------

    def producer_closed(self, producer: Producer) -> None:
        self.producers.pop(producer.id, None)
        self._forget_ssrcs(producer)
        self._router.remove_producer(producer)

    def _forget_ssrcs(self, producer: Producer) -> None:
        ssrcs: set[int | None] = set()
        for encoding in producer.rtp_parameters["encodings"]:
            ssrcs.update((encoding.get("ssrc"), (encoding.get("rtx") or {}).get("ssrc")))
        for stream in producer.streams:  # learned ones too
            ssrcs.update((stream.ssrc, stream.rtx_ssrc))
        for ssrc in ssrcs:
            if ssrc is not None:
                self._rtp_table.pop(ssrc, None)
                self._recv_streams.pop(ssrc, None)

    def consumer_closed(self, consumer: Consumer) -> None:
        self.consumers.pop(consumer.id, None)
        self._consumers_by_ssrc.pop(consumer.ssrc, None)
        if consumer.rtx_ssrc is not None:
            self._consumers_by_ssrc.pop(consumer.rtx_ssrc, None)

    def data_producer_closed(self, data_producer: DataProducer) -> None:
        self.data_producers.pop(data_producer.id, None)
        self._sctp_stream_ids.discard(data_producer.stream_id)
        self._router.remove_data_producer(data_producer)

    def data_consumer_closed(self, data_consumer: DataConsumer) -> None:
        self.data_consumers.pop(data_consumer.id, None)
        self._sctp_stream_ids.discard(data_consumer.stream_id)

    # -- bandwidth estimation (media.bwe) ---------------------------------------------

    @property
    def available_outgoing_bitrate(self) -> int:
        """Bits/s we estimate this client can receive (mediasoup's
        ``availableOutgoingBitrate``): its REMB, else a loss-based estimate
        from its receiver reports, from ``initial_outgoing_bitrate`` on."""
        return self._downlink.bitrate

    @property
    def available_incoming_bitrate(self) -> int | None:
        """Bits/s we tell the client it can send (the REMB value; None before
        any packet carrying abs-send-time)."""
        return self._uplink.bitrate

    @property
    def max_incoming_bitrate(self) -> int:
        return self._uplink.max_bitrate

    async def set_max_incoming_bitrate(self, bitrate: int) -> None:
        """mediasoup ``setMaxIncomingBitrate``: cap the REMB sent to the client (0: none).

        A cap below what the client was last told goes out at once; a higher
        one with the next regular REMB.
        """
        self._check_open()
        _check_bitrate("bitrate", bitrate)
        now = self._loop.time()
        remb = self._uplink.set_max_bitrate(now, bitrate)
        if remb is not None:
            self._send_remb(now, remb)

    async def set_max_outgoing_bitrate(self, bitrate: int) -> None:
        """mediasoup ``setMaxOutgoingBitrate``: cap the downlink estimate (0: none)."""
        self._check_open()
        _check_bitrate("bitrate", bitrate)
        if bitrate and bitrate < self._downlink.min_bitrate:
            raise InvalidParametersError("bitrate must not be below the minimum outgoing bitrate")
        if self._downlink.set_limits(max_bitrate=bitrate):
            self.distribute_available_bitrate()

    async def set_min_outgoing_bitrate(self, bitrate: int) -> None:
        """mediasoup ``setMinOutgoingBitrate``: the floor of the downlink estimate."""
        self._check_open()
        _check_bitrate("bitrate", bitrate)
        ceiling = self._downlink.max_bitrate
        if bitrate <= 0 or (ceiling and bitrate > ceiling):
            raise InvalidParametersError("bitrate must be positive and not above the maximum")
        if self._downlink.set_limits(min_bitrate=bitrate):
            self.distribute_available_bitrate()

    def distribute_available_bitrate(self) -> None:
        """Share the downlink estimate among the consumers now.

        It is otherwise shared when the client's RTCP moves it, and at least
        about once a second while the client sends RTCP; call this when a
        consumer appears, resumes or changes priority to act at once.
        """
        if self.consumers and not self.closed:
            self._share_outgoing_bitrate(self._loop.time(), force=True)
            self._maybe_probe()

    def _maybe_probe(self) -> None:
        """Once video can go out: the startup probe, then padding up to the estimate
        until the receiver's first REMB (``media.bwe.StartupProbe``, ``WARMUP``)."""
        if self._warmup_until or not self._connected or self._padding_consumer() is None:
            return
        self._warmup_until = self._loop.time() + WARMUP
        self._send_probe()

    def _padding_consumer(self) -> Consumer | None:
        """The consumer whose RTX stream carries padding: a simulcast one (only
        layers follow the estimate: nothing to learn it for otherwise) that
        forwards and has RTX."""
        for consumer in self.consumers.values():
            if consumer.type == "simulcast" and consumer.can_pad:
                return consumer
        return None

    def _send_probe(self) -> None:
        self._padding_timer = None
        probe = self._startup_probe
        consumer = self._padding_consumer()
        if probe is None or consumer is None or self.closed:
            self._startup_probe = None
            return
        packet = consumer.padding_packet(PROBE_PADDING, time.monotonic())
        if packet is not None:
            self.send_rtp(packet)
            self.padding_packets_sent += 1
        delay = probe.next_delay()
        if delay is None:
            self._startup_probe = None
            self._padding_timer = self._loop.call_later(PADDING_INTERVAL, self._pad)
        else:
            self._padding_timer = self._loop.call_later(delay, self._send_probe)

    def _pad(self) -> None:
        """Top the video up with padding to the downlink estimate, every
        ``PADDING_INTERVAL``, until the receiver's first REMB or ``WARMUP``."""
        self._padding_timer = None
        now = self._loop.time()
        consumer = self._padding_consumer()
        if (
            self.closed
            or consumer is None
            or self._downlink.remb is not None
            or now >= self._warmup_until
        ):
            return
        media = sum(c.byte_count for c in self.consumers.values() if c.kind == "video")
        count = self._padding.packets(now, self._downlink.bitrate, media, PADDING_PACKET)
        for _ in range(count):
            packet = consumer.padding_packet(PROBE_PADDING, time.monotonic())
            if packet is None:
                break
            self.send_rtp(packet)
            self.padding_packets_sent += 1
        self._padding_timer = self._loop.call_later(PADDING_INTERVAL, self._pad)

    def _learn_extension_ids(self, producer: Producer) -> None:
        # RFC 8843 (BUNDLE): one id per extension, and per payload type, on the
        # whole transport.
        for ext in producer.rtp_parameters.get("headerExtensions") or []:
            if ext.get("uri") == ABS_SEND_TIME_URI:
                self._abs_send_time_id = int(ext["id"])
            elif ext.get("uri") == TRANSPORT_CC_URI and not self._transport_cc_id:
                self._transport_cc_id = int(ext["id"])
                self._report_early_arrivals()
        self._early_arrivals = None  # the ids are known from now on
        if producer.kind == "audio":
            self._audio_payload_types.update(
                codec["payloadType"] for codec in producer.rtp_parameters["codecs"]
            )

    def _feed_uplink_estimate(self, packet: bytearray, ssrc: int) -> None:
        """Per packet with an extension block: what it costs is in docs/media.md."""
        now = self.last_activity
        uplink = self._uplink
        if now - uplink.timed_at < TIMING_RESOLUTION:
            return  # read in the same loop iteration: counted (bytes_received), not timed
        if packet[1] & 0x7F in self._audio_payload_types:
            # Counted, not timed: a packet every 20 ms would each be a group of
            # its own (the per-group filter is the costly part), and the video
            # carries the same delay signal.  An audio-only client gets no REMB
            # (nothing there acts on one).
            return
        send_time = rtp_packet.abs_send_time(packet, self._abs_send_time_id)
        if send_time >= 0:
            remb = uplink.on_packet(now, send_time, self.bytes_received, ssrc)
            if remb is not None:
                self._send_remb(now, remb)

    def _record_arrival(self, packet: bytearray, ssrc: int) -> None:
        """Per packet with an extension block, when the client negotiated transport-cc."""
        seq = rtp_packet.transport_wide_sequence_number(packet, self._transport_cc_id)
        if seq < 0:
            return
        self._transport_cc.on_packet(seq, int(self.last_activity * 1_000_000), ssrc)
        if self._transport_cc_timer is None:
            self._transport_cc_timer = self._loop.call_later(
                self.settings.transport_cc_interval, self._send_transport_cc
            )

    def _keep_early_arrival(self, packet: bytearray) -> None:
        early = self._early_arrivals
        assert early is not None
        if len(early) >= self.settings.early_arrivals:
            return
        # The header up to the end of its extension block is all that is read later.
        end = 12 + ((packet[0] & 0x0F) << 2) + 4
        if len(packet) >= end:
            end += ((packet[end - 2] << 8) | packet[end - 1]) << 2
        early.append((int(self.last_activity * 1_000_000), bytes(packet[: min(end, 256)])))

    def _report_early_arrivals(self) -> None:
        early, self._early_arrivals = self._early_arrivals, None
        if not early:
            return
        oldest = int((self.last_activity - self.settings.early_arrival_max_age) * 1_000_000)
        for arrival_us, header in early:
            if arrival_us < oldest:
                continue
            seq = rtp_packet.transport_wide_sequence_number(header, self._transport_cc_id)
            if seq >= 0:
                self._transport_cc.on_packet(seq, arrival_us, rtp_packet.rtp_ssrc(header))
        if self._transport_cc.pending and self._transport_cc_timer is None:
            self._transport_cc_timer = self._loop.call_soon(self._send_transport_cc)

    def _send_transport_cc(self) -> None:
        # Armed by the first packet after a feedback, so an idle client costs no timer.
        self._transport_cc_timer = None
        if self.closed:
            return
        for packet in self._transport_cc.build(self.rtcp_ssrc):
            self.send_rtcp(packet)

    def _send_remb(self, now: float, bitrate: int) -> None:
        self.rembs_sent += 1
        ssrcs = self._uplink.remb_ssrcs(now)
        self.send_rtcp(rtp_packet.build_remb(self.rtcp_ssrc, bitrate, ssrcs))

    def _share_outgoing_bitrate(self, now: float, *, force: bool = False) -> None:
        """mediasoup's ``DistributeAvailableOutgoingBitrate``, simplified.

        Audio consumers keep what they use; the rest is shared among the
        video consumers that forward, by priority and up to each one's desired
        bitrate (``media.bwe.allocate_bitrate``), and written to their
        ``available_bitrate``.  Paused ones keep their last share.
        """
        available = self._downlink.bitrate
        distributor = self._distributor
        if not force and not distributor.due(now, available):
            return
        video: list[Consumer] = []
        audio_bitrate = 0
        for consumer in self.consumers.values():
            if consumer.closed or consumer.paused or consumer.producer_paused_state:
                continue
            if consumer.kind == "video":
                video.append(consumer)
            else:
                audio_bitrate += consumer.desired_bitrate
        demands = [
            # A desired bitrate of 0 means "not measured yet": unknown, an equal share.
            Demand(priority=consumer.priority, desired=consumer.desired_bitrate or None)
            for consumer in video
        ]
        # A browser's REMB is what its video can take: libwebrtc's receive-side
        # estimator counts only packets with our abs-send-time (video), never audio.
        # A loss-based estimate is about everything sent.
        for_video = available if self._downlink.remb_fresh(now) else available - audio_bitrate
        allocations, info = distributor.distribute(now, max(0, for_video), demands)
        for consumer, bitrate in zip(video, allocations, strict=True):
            consumer.available_bitrate = bitrate
        self._downlink.forget_streams(set(self._consumers_by_ssrc))
        if info is not None:
            info["desiredBitrate"] += audio_bitrate
            info["effectiveDesiredBitrate"] += audio_bitrate
            info["availableBitrate"] = available
            self.emit(
                "trace",
                {
                    "type": "bwe",
                    "timestamp": int(now * 1000),
                    "direction": "out",
                    "info": {
                        "type": "remb",
                        **info,
                        "minBitrate": self._downlink.min_bitrate,
                        "maxBitrate": self._downlink.max_bitrate,
                        "startBitrate": self._downlink.initial_bitrate,
                    },
                },
            )

    # -- link quality ---------------------------------------------------------------

    def consent_gap(self, now: float) -> float | None:
        """Seconds since the client's last authenticated consent check (RFC 7675).

        Clients check every 5 s +/- 20 % (section 5.1), so a gap above about
        8 s means checks are being lost.  None before ICE connects or once
        closed.  ``now`` is the event loop's clock.
        """
        last = self._ice.last_consent
        if last is None or self.closed:
            return None
        return max(0.0, now - last)

    def link_sample(self, now: float) -> LinkSample:
        """What the server saw of this client's link since the previous call.

        Uplink: loss and jitter of the client's producers as they reach us;
        downlink: loss and jitter the client's receiver reports give for our
        consumers, and the round trip they imply; and the consent gap.
        Unknown parts are None.  Each call starts the next interval, so call
        it from one place at a steady pace (other readers: their own
        ``media.link.LinkMonitor``).  Cheap: one pass over this transport's
        producers and consumers; nothing runs per packet.
        """
        if self._link_monitor is None:
            self._link_monitor = LinkMonitor(self)
        self.last_link_sample = self._link_monitor.sample(now)
        return self.last_link_sample

    # -- stats ----------------------------------------------------------------------

    async def get_stats(self) -> list[Json]:
        self._check_open()
        last = self.last_link_sample
        return [
            {
                "type": "webrtc-transport",
                "transportId": self.id,
                "timestamp": time.time() * 1000,
                "iceRole": "controlled",
                "iceState": self.ice_state,
                "iceSelectedTuple": self.ice_selected_tuple,
                "dtlsState": self.dtls_state,
                "sctpState": self.sctp_state,
                "bytesReceived": self.bytes_received,
                "bytesSent": self.bytes_sent,
                "rtpPacketsReceived": sum(p.packet_count for p in self.producers.values()),
                "rtpPacketsSent": sum(c.packet_count for c in self.consumers.values()),
                "srtpErrors": self.srtp_errors,
                "datagramErrors": dict(self._errors.counts),
                "sctpMessagesTooBig": (
                    DtlsSession.oversize_messages(self._dtls.sctp) if self._dtls.sctp else 0
                ),
                "iceConsentStalls": self._consent.stalls,
                "iceConsentGap": self.consent_gap(self._loop.time()),
                # The latest link_sample() taken (None until the first).
                "linkSample": last.to_json() if last is not None else None,
                # mediasoup's names; the incoming one is what our REMB says.
                "availableOutgoingBitrate": self.available_outgoing_bitrate,
                "availableIncomingBitrate": self.available_incoming_bitrate,
                "maxIncomingBitrate": self.max_incoming_bitrate or None,
                "rembsSent": self.rembs_sent,
                "rembsReceived": self.rembs_received,
                "paddingPacketsSent": self.padding_packets_sent,
                "iceTcp": self._tcp_stats(),
            }
        ]

    def _tcp_stats(self) -> Json | None:
        listener = self._tcp
        if listener is None:
            return None
        return {
            "port": listener.port,
            "connections": len(listener.connections),
            "refused": listener.refused,
            "framesDropped": listener.frames_dropped,
        }

    @property
    def datagram_errors(self) -> dict[str, int]:
        """This transport's share of ``Worker.datagram_errors`` (same keys)."""
        return self._errors.counts

    # -- close ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidStateError(f"transport {self.id} is closed")

    def close(self) -> None:
        """Close it (app-initiated): everything on it closes, the port is freed."""
        if self.closed:
            return
        self._close(TransportEndReason.CLOSED_BY_APP)
        self._router.transport_closed(self)
        self.release_listeners()

    def router_closed(self) -> None:
        """Its router closed: emit ``routerclose``."""
        if self.closed:
            return
        self._close(TransportEndReason.ROUTER_CLOSED)
        self.emit("routerclose")
        self.release_listeners()

    def _end(self, reason: TransportEndReason) -> None:
        """The client went away: close, then tell the app why."""
        if self.closed:
            return
        logger.info("transport %s ended: %s", self.id, reason.value)
        self._close(reason)
        self._router.transport_closed(self)
        self.emit("ended", reason)
        self.release_listeners()

    def _close(self, reason: TransportEndReason) -> None:
        self.closed = True
        self.end_reason = reason
        if self._consent_timer is not None:
            self._consent_timer.cancel()
            self._consent_timer = None
        if self._transport_cc_timer is not None:
            self._transport_cc_timer.cancel()
            self._transport_cc_timer = None
        if self._padding_timer is not None:
            self._padding_timer.cancel()
            self._padding_timer = None
        self._startup_probe = None
        for producer in list(self.producers.values()):
            producer.transport_closed()
            self._router.remove_producer(producer)
        for consumer in list(self.consumers.values()):
            consumer.transport_closed()
        for data_producer in list(self.data_producers.values()):
            data_producer.transport_closed()
            self._router.remove_data_producer(data_producer)
        for data_consumer in list(self.data_consumers.values()):
            data_consumer.transport_closed()
        self.producers.clear()
        self.consumers.clear()
        self.data_producers.clear()
        self.data_consumers.clear()
        self._early_arrivals = None
        self._rtp_table.clear()
        self._recv_streams.clear()
        self._consumers_by_ssrc.clear()
        self._link_monitor = None  # it refers back to us: no cycle left behind
        # close_notify goes out before the socket closes (RFC 6347 section 4.2.7).
        self._dtls.close()
        self._rx_srtp = self._tx_srtp = None
        self._ice.close()
        if self._udp is not None:
            self._udp.close()
        if self._endpoint is not None:
            self._endpoint.on_datagram = _ignore_datagram
        if self._tcp is not None:
            self._tcp.close()  # the listener and every connection
        self._select_path(None)
        self._errors.flush()
        self._tuple_ready.set()
        self.observer.emit("close")


def _ignore_datagram(data: bytes, addr: Address) -> None:
    return None


def _check_bitrate(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise InvalidParametersError(f"{name} must be a non-negative integer (bits/s)")


def _stream_parameters(params: Json, stream_id: int) -> Json:
    ordered = params.get("ordered", True)
    life = params.get("maxPacketLifeTime")
    retransmits = params.get("maxRetransmits")
    if not isinstance(ordered, bool):
        raise InvalidParametersError("sctpStreamParameters.ordered must be a boolean")
    for name, value in (("maxPacketLifeTime", life), ("maxRetransmits", retransmits)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            raise InvalidParametersError(
                f"sctpStreamParameters.{name} must be a non-negative integer"
            )
    if life is not None and retransmits is not None:
        raise InvalidParametersError("maxPacketLifeTime and maxRetransmits are exclusive")
    clean: Json = {
        "streamId": stream_id,
        "ordered": ordered if life is None and retransmits is None else False,
    }
    # Absent, not null: browsers refuse a channel with both limits present.
    if life is not None:
        clean["maxPacketLifeTime"] = life
    if retransmits is not None:
        clean["maxRetransmits"] = retransmits
    return clean


async def create_webrtc_transport(
    *,
    router: Router,
    allocator: PortAllocator,
    announced_address: str | None,
    certificate: RTCCertificate,
    settings: TransportSettings,
    app_data: dict[str, Any] | None,
    worker_errors: dict[str, int] | None = None,
    enable_udp: bool = True,
    enable_tcp: bool = False,
    prefer_udp: bool = False,
    prefer_tcp: bool = False,
) -> WebRtcTransport:
    protocols = candidate_protocols(
        enable_udp=enable_udp, enable_tcp=enable_tcp, prefer_udp=prefer_udp, prefer_tcp=prefer_tcp
    )
    udp: asyncio.DatagramTransport | None = None
    endpoint: _Endpoint | None = None
    listener: TcpListener | None = None
    port = 0
    try:
        if enable_udp:
            endpoint = _Endpoint()
            udp, port = await open_endpoint(allocator, endpoint)
        if enable_tcp:
            # The UDP socket's port number when it is free in TCP's space.
            sock = allocator.bind_tcp(preferred_port=port or None)
            listener = TcpListener(
                max_connections=settings.max_tcp_connections,
                stun_timeout=settings.tcp_stun_timeout,
                write_limit=settings.tcp_write_limit,
            )
            await listener.start(sock)
    except BaseException:
        if udp is not None:
            udp.close()
        if listener is not None:
            listener.close()
        raise
    return WebRtcTransport(
        router=router,
        udp=udp,
        endpoint=endpoint,
        port=port,
        listen_ip=allocator.listen_ip,
        announced_address=announced_address,
        certificate=certificate,
        settings=settings,
        app_data=app_data,
        worker_errors=worker_errors,
        tcp=listener,
        protocols=protocols,
    )


__all__ = [
    "TransportEndReason",
    "TransportSettings",
    "WebRtcTransport",
    "candidate_priority",
    "candidate_protocols",
]
