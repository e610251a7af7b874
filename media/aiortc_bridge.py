"""Every touch of aiortc's (and pylibsrtp's) private internals lives here, and only here.

aiortc gives us a production DTLS-SRTP handshake (``RTCDtlsTransport``) and an
SCTP association with data channels (``RTCSctpTransport``), but both assume
aiortc's own full-ICE transport and RTP receivers.  This module feeds them from
the ICE-lite UDP endpoint instead, takes the SRTP sessions out once the
handshake is done (so RTP is forwarded without ever being parsed by aiortc),
and closes them synchronously.

It also hardens aiortc's inbound edge, since anything that raises in its DTLS
task logs a traceback and closes the whole transport: DTLS datagrams are
checked for record framing before they are queued (and the queue is
bounded), and ``_HardenedSctpTransport`` counts malformed SCTP packets and
messages instead of raising, ignores DCEP, and stops reassembling a message
once it exceeds ``maxMessageSize``.  Errors are reported through an
``on_error(kind, detail)`` callback; see ``media.datagram_errors``.

``media.bwe`` borrows ``aiortc.rate``'s port of libwebrtc's AIMD rate control
(consulted a few times a second; the per-group overuse detector is
``media.bwe``'s own, checked against aiortc's in the tests).

``SrtpSession`` calls libsrtp through pylibsrtp's own cffi binding, on the
session's own buffer: no allocation per packet, and a consumer's SSRC and
sequence number are written straight into the bytes that get encrypted.

aiortc, aioice and pylibsrtp are pinned to exact versions in ``pyproject.toml``;
``check_internals()`` (run by the test suite) fails loudly when an upgrade
moves anything used here.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pylibsrtp
from aiortc.rate import AimdRateControl, BandwidthUsage
from aiortc.rtcdatachannel import RTCDataChannel, RTCDataChannelParameters
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from aiortc.rtcsctptransport import (
    SCTP_DATA_FIRST_FRAG,
    SCTP_DATA_LAST_FRAG,
    SCTP_DATA_UNORDERED,
    WEBRTC_DCEP,
    DataChunk,
    ForwardTsnChunk,
    InboundStream,
    RTCSctpCapabilities,
    RTCSctpTransport,
)
from aiortc.utils import uint16_add, uint16_gt
from OpenSSL import SSL
from pylibsrtp import SRTP_MAX_SRTCP_TRAILER_LEN, SRTP_MAX_TRAILER_LEN
from pylibsrtp._binding import ffi, lib

__all__ = [
    "AimdRateControl",
    "BandwidthUsage",
    "DtlsRole",
    "DtlsSession",
    "ErrorSink",
    "RTCCertificate",
    "RTCDataChannel",
    "SrtpSession",
    "check_internals",
    "dtls_records_well_formed",
]

ErrorSink = Callable[[str, "BaseException | str"], None]
"""``on_error(kind, detail)``: a malformed input was dropped (``media.datagram_errors``)."""

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class SrtpSession:
    """One direction of SRTP (RFC 3711) for the forwarding path.

    Errors (replay, authentication failure, oversize) return ``None``: the
    caller counts and drops, as a receiver must.
    """

    __slots__ = ("_capacity", "_cdata", "_ctx", "_len", "_session", "_view")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._session = session  # owns the context and the buffer
        self._ctx = session._srtp[0]
        self._cdata = session._cdata
        self._view = memoryview(session._buffer)
        self._capacity = len(self._view)
        self._len = ffi.new("int *")

    def unprotect(self, data: bytes) -> bytearray | None:
        """Decrypt SRTP into a fresh, mutable packet (one copy in, one out)."""
        size = len(data)
        if size > self._capacity:
            return None
        view = self._view
        view[0:size] = data
        self._len[0] = size
        if lib.srtp_unprotect(self._ctx, self._cdata, self._len):
            return None
        return bytearray(view[0 : self._len[0]])

    def unprotect_rtcp(self, data: bytes) -> bytes | None:
        return self._rtcp(lib.srtp_unprotect_rtcp, data, 0)

    def protect_rtcp(self, packet: bytes) -> bytes | None:
        return self._rtcp(lib.srtp_protect_rtcp, packet, SRTP_MAX_SRTCP_TRAILER_LEN)

    def _rtcp(self, function: Any, data: bytes, trailer: int) -> bytes | None:
        # RTCP is rare (a few packets a second per stream): no need to inline.
        size = len(data)
        if size > self._capacity - trailer:
            return None
        view = self._view
        view[0:size] = data
        self._len[0] = size
        if function(self._ctx, self._cdata, self._len):
            return None
        return bytes(view[0 : self._len[0]])

    def protect(self, packet: bytes | bytearray, seq: int = -1, ssrc: int = 0) -> bytes | None:
        """Encrypt an RTP packet; with ``seq``, write it and ``ssrc`` in first."""
        size = len(packet)
        if size > self._capacity - SRTP_MAX_TRAILER_LEN:
            return None
        view = self._view
        view[0:size] = packet
        if seq >= 0:
            _U16.pack_into(view, 2, seq)
            _U32.pack_into(view, 8, ssrc)
        self._len[0] = size
        if lib.srtp_protect(self._ctx, self._cdata, self._len):
            return None
        return bytes(view[0 : self._len[0]])


def dtls_records_well_formed(data: bytes) -> bool:
    """Whether a datagram in the DTLS range is a sequence of whole DTLS records.

    DTLS 1.0/1.2 records (RFC 6347 section 4.1) have a 13-byte header: content
    type 20-25, version 0xFEXX, epoch, sequence number and a length that must
    stay inside the datagram.  A DTLS 1.3 record with the unified header
    (RFC 9147 section 4, first byte 001xxxxx) may omit its length and is
    handed on unchecked; OpenSSL authenticates it anyway.
    """
    pos, size = 0, len(data)
    while pos < size:
        first = data[pos]
        if first & 0xE0 == 0x20:
            return True
        if size - pos < 13 or not 20 <= first <= 25 or data[pos + 1] != 0xFE:
            return False
        pos += 13 + ((data[pos + 11] << 8) | data[pos + 12])
    return pos == size


class DtlsRole(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class _IcePipe:
    """What ``RTCDtlsTransport`` needs of an ``RTCIceTransport``, and no more."""

    # The ICE-lite side is always controlled; aiortc only reads this for stats.
    role = "controlled"
    state = "connected"

    def __init__(self, send: Callable[[bytes], Awaitable[None]], max_queued: int = 0) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._send = send
        self._closed = False
        # 0: unbounded.  Bounded, a flood of records faster than OpenSSL reads
        # them (or before connect() starts the handshake) cannot grow memory.
        self._max_queued = max_queued

    async def _recv(self) -> bytes:
        data = await self._queue.get()
        if data is None:
            raise ConnectionError("transport closed")
        return data

    def feed(self, data: bytes) -> bool:
        """Queue a record for aiortc's DTLS task; False if the queue is full."""
        if self._closed:
            return True
        if self._max_queued and self._queue.qsize() >= self._max_queued:
            return False
        self._queue.put_nowait(data)
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.state = "closed"
            self._queue.put_nowait(None)


class DtlsSession:
    """One DTLS association (RFC 5764 DTLS-SRTP), optionally with SCTP on top.

    ``on_state(state)`` receives ``connected``, ``failed`` and ``closed``
    (the last one only when the peer sent close_notify).  ``on_error`` is told
    about every malformed DTLS datagram or SCTP packet that was dropped;
    ``max_queued_records`` bounds the records waiting for the DTLS task.
    """

    def __init__(
        self,
        certificate: RTCCertificate,
        send: Callable[[bytes], Awaitable[None]],
        send_now: Callable[[bytes], None],
        on_state: Callable[[str], None],
        *,
        on_error: ErrorSink = lambda kind, detail: None,
        max_queued_records: int = 0,
    ) -> None:
        self._pipe = _IcePipe(send, max_queued_records)
        self._send_now = send_now
        self._on_error = on_error
        self._dtls = RTCDtlsTransport(self._pipe, [certificate])  # type: ignore[arg-type]
        self._dtls.on("statechange", self._state_changed)
        self._on_state = on_state
        self._closing = False
        self._start_task: asyncio.Task[None] | None = None
        self.sctp: RTCSctpTransport | None = None
        self.rx_srtp: SrtpSession | None = None
        self.tx_srtp: SrtpSession | None = None

    @staticmethod
    def local_fingerprints(certificate: RTCCertificate) -> list[dict[str, str]]:
        return [{"algorithm": f.algorithm, "value": f.value} for f in certificate.getFingerprints()]

    @property
    def state(self) -> str:
        return self._dtls.state

    def feed(self, data: bytes) -> None:
        """A DTLS datagram arrived (first byte 20-63, RFC 7983)."""
        if not dtls_records_well_formed(data):
            self._on_error("dtls", "not a sequence of whole DTLS records")
        elif not self._pipe.feed(data):
            self._on_error("dtls", "DTLS queue full")

    def start(self, role: DtlsRole, fingerprints: list[dict[str, str]]) -> None:
        """Start the handshake in ``role``; the remote fingerprints are verified."""
        self._dtls._set_role(role.value)
        remote = RTCDtlsParameters(
            fingerprints=[
                RTCDtlsFingerprint(algorithm=f["algorithm"], value=f["value"]) for f in fingerprints
            ]
        )
        self._start_task = asyncio.ensure_future(self._dtls.start(remote))

    def _state_changed(self) -> None:
        state = self._dtls.state
        if state == "connected":
            self.rx_srtp = SrtpSession(self._dtls._rx_srtp)
            self.tx_srtp = SrtpSession(self._dtls._tx_srtp)
        if self._closing:
            return
        if state in ("connected", "failed", "closed"):
            self._on_state(state)

    # -- SCTP -----------------------------------------------------------------

    def start_sctp(self, *, port: int, remote_port: int, max_message_size: int) -> RTCSctpTransport:
        """Start the SCTP association once DTLS is connected (RFC 8841)."""
        sctp = self.sctp
        if sctp is None:
            sctp = self.sctp = _HardenedSctpTransport(
                self._dtls, port=port, max_message_size=max_message_size, on_error=self._on_error
            )
            self._sctp_task = asyncio.ensure_future(
                sctp.start(RTCSctpCapabilities(maxMessageSize=max_message_size), remote_port)
            )
        return sctp

    def sctp_state(self) -> str:
        return "new" if self.sctp is None else self.sctp.state

    @staticmethod
    def open_negotiated_channel(
        sctp: RTCSctpTransport, sctp_stream_parameters: dict[str, Any], label: str, protocol: str
    ) -> RTCDataChannel:
        """A data channel both sides agreed on out of band (``negotiated: true``),
        from mediasoup's ``sctpStreamParameters``."""
        params = sctp_stream_parameters
        return RTCDataChannel(
            sctp,
            RTCDataChannelParameters(
                label=label,
                protocol=protocol,
                ordered=params["ordered"],
                maxPacketLifeTime=params.get("maxPacketLifeTime"),
                maxRetransmits=params.get("maxRetransmits"),
                negotiated=True,
                id=params["streamId"],
            ),
        )

    @staticmethod
    def buffered_amount(sctp: RTCSctpTransport) -> int:
        """Bytes the association holds towards the peer (mediasoup's ``bufferedAmount``).

        What every data channel has queued but not yet handed to SCTP
        (``RTCDataChannel.bufferedAmount``), plus what SCTP has sent and the
        peer has not acknowledged (its flight size).  Chunks marked for
        retransmission after a timeout leave the flight size; they are at most
        one congestion window.  O(channels), so it can run per message.
        """
        queued = 0
        for channel in sctp._data_channels.values():
            queued += channel.bufferedAmount
        return queued + int(sctp._flight_size)

    @staticmethod
    def oversize_messages(sctp: RTCSctpTransport) -> int:
        """Inbound messages dropped for exceeding ``maxMessageSize``."""
        return sctp.oversize_messages if isinstance(sctp, _HardenedSctpTransport) else 0

    @staticmethod
    def close_channel(sctp: RTCSctpTransport, channel: RTCDataChannel) -> None:
        """Forget a channel at once, without an SCTP stream reset round trip."""
        if channel.id is not None:
            sctp._data_channels.pop(channel.id, None)
        channel._setReadyState("closed")
        channel.remove_all_listeners()

    # -- close ------------------------------------------------------------------

    def close(self) -> None:
        """Send close_notify (RFC 6347 section 4.2.7) and stop every task, now."""
        if self._closing:
            return
        self._closing = True
        dtls = self._dtls
        if self.sctp is not None:
            if isinstance(self.sctp, _HardenedSctpTransport):
                self.sctp.stop_reporting()
            self.sctp._set_state(RTCSctpTransport.State.CLOSED)
            dtls._unregister_data_receiver(self.sctp)
            self.sctp = None
        if dtls._ssl is not None and dtls.state in ("connecting", "connected"):
            try:
                dtls._ssl.shutdown()
                record = dtls._ssl.bio_read(1500)
            except SSL.Error:
                record = b""
            if record:
                self._send_now(record)
        for task in (self._start_task, dtls._task, getattr(self, "_sctp_task", None)):
            if task is not None and not task.done():
                task.cancel()
        dtls._task = None
        self._pipe.close()
        dtls.remove_all_listeners()
        self.rx_srtp = self.tx_srtp = None
        # Drop the callbacks into the owning transport: no reference cycle survives.
        self._pipe._send = _discard
        self._send_now = _discard_now
        self._on_state = _discard_now_state
        self._on_error = _discard_error


class _HardenedSctpTransport(RTCSctpTransport):
    """aiortc's SCTP association (RFC 8831), with its inbound edge contained.

    - A packet or chunk that does not parse, or a message that cannot be
      decoded (a string that is not UTF-8), is counted as ``sctp`` instead of
      raising into the DTLS task, which would close the whole transport.
    - DCEP (RFC 8832) is ignored, as mediasoup does: mediasoup-client opens
      every channel out of band, and each DCEP OPEN would otherwise allocate a
      channel the server never uses.
    - An inbound message is refused once its fragments exceed
      ``max_message_size``, without waiting for the rest (mediasoup drops
      oversized messages too): on an ordered stream its fragments are dropped
      and its stream sequence number skipped, so the messages after it are
      delivered as usual; on an unordered stream the stream's incomplete data
      is dropped.  The rest of the message is acknowledged and discarded as it
      arrives.  Complete messages waiting behind a lost fragment are not a
      reason to drop anything.  Incomplete data of all streams together is
      bounded too, by the receive window (a sender that ignores it, as aiortc
      does, has its largest stream's partial data dropped).
    """

    def __init__(
        self,
        transport: RTCDtlsTransport,
        *,
        port: int,
        max_message_size: int,
        on_error: ErrorSink,
    ) -> None:
        super().__init__(transport, port=port)
        self._max_inbound_message = max_message_size
        self._max_inbound_partial = max(max_message_size, self._advertised_rwnd)
        self._report_error = on_error
        # stream id -> (its InboundStream, bytes of incomplete messages in it)
        self._partial: dict[int, tuple[InboundStream, int]] = {}
        self._partial_total = 0
        # Unordered streams discarding the rest of an oversized message.
        self._discarding: set[int] = set()
        # Ordered streams: sequence numbers of refused messages not yet reached.
        self._skipped: dict[int, set[int]] = {}
        self.oversize_messages = 0

    def stop_reporting(self) -> None:
        self._report_error = _discard_error

    async def _handle_data(self, data: bytes) -> None:
        try:
            await super()._handle_data(data)
        except ConnectionError:
            raise  # the DTLS transport is closed: aiortc's own way of stopping
        except (ValueError, struct.error, AssertionError, IndexError, KeyError) as exc:
            # aiortc parses chunks with struct and asserts on their shape.
            self._report_error("sctp", exc)
        except Exception as exc:
            self._report_error("internal", exc)

    async def _receive(self, stream_id: int, pp_id: int, data: bytes) -> None:
        if pp_id == WEBRTC_DCEP:
            self._report_error("sctp", "DCEP message on a negotiated-only association")
            return
        try:
            await super()._receive(stream_id, pp_id, data)
        except ConnectionError:
            raise
        except ValueError as exc:  # UnicodeDecodeError: a string message that is not UTF-8
            self._report_error("sctp", exc)
        except Exception as exc:
            self._report_error("internal", exc)

    # -- inbound message size --------------------------------------------------

    async def _receive_data_chunk(self, chunk: DataChunk) -> None:
        stream_id = chunk.stream_id
        stream = self._inbound_streams.get(stream_id)
        if self._discard(chunk, stream) or (
            stream is not None
            and self._pending(stream_id, stream) + len(chunk.user_data) > self._max_inbound_message
            and await self._refuse(stream_id, stream, chunk)
        ):
            # Acknowledge it (the sender must not retransmit it) and drop it.
            self._sack_needed = True
            self._mark_received(chunk.tsn)
            return
        before = len(stream.reassembly) if stream is not None else 0
        await super()._receive_data_chunk(chunk)
        stream = self._inbound_streams.get(stream_id)
        if stream is None:
            return
        if stream_id in self._skipped:
            await self._resume(stream_id, stream)
            before = -1  # count again
        self._pending_after(stream_id, stream, chunk, before)
        if self._partial_total > self._max_inbound_partial:
            largest = max(self._partial, key=lambda sid: self._partial[sid][1])
            self._drop_partial(largest, self._partial[largest][0])

    async def _refuse(self, stream_id: int, stream: InboundStream, chunk: DataChunk) -> bool:
        """Whether ``chunk`` takes its message over the limit; if so, drop the message.

        Checked before the chunk is stored, so a message is never delivered,
        nor held, beyond ``max_message_size``.
        """
        if chunk.flags & SCTP_DATA_UNORDERED:
            # Unordered messages are delivered as soon as they are complete, so
            # what waits on the stream is incomplete: drop it all.
            self._drop_partial(stream_id, stream)
            if chunk.flags & SCTP_DATA_LAST_FRAG:
                self._discarding.discard(stream_id)
            else:
                self._discarding.add(stream_id)
            return True
        ssn = chunk.stream_seq
        size = len(chunk.user_data) + sum(
            len(c.user_data)
            for c in stream.reassembly
            if c.stream_seq == ssn and not c.flags & SCTP_DATA_UNORDERED
        )
        if size <= self._max_inbound_message:
            return False  # complete messages queued behind a lost fragment: legitimate
        stream.reassembly = [
            c for c in stream.reassembly if c.stream_seq != ssn or c.flags & SCTP_DATA_UNORDERED
        ]
        self._advertised_rwnd += size - len(chunk.user_data)
        self._skipped.setdefault(stream_id, set()).add(ssn)
        self._refused(stream_id, size)
        await self._resume(stream_id, stream)
        self._set_pending(stream_id, stream, sum(len(c.user_data) for c in stream.reassembly))
        return True

    async def _resume(self, stream_id: int, stream: InboundStream) -> None:
        """Step over refused messages the stream has reached; deliver what follows."""
        skipped = self._skipped[stream_id]
        if stream.sequence_number not in skipped:
            return
        while stream.sequence_number in skipped:
            skipped.discard(stream.sequence_number)
            stream.sequence_number = uint16_add(stream.sequence_number, 1)
        if not skipped:
            del self._skipped[stream_id]
        for message in stream.pop_messages():
            self._advertised_rwnd += len(message[2])
            await self._receive(*message)

    async def _receive_forward_tsn_chunk(self, chunk: ForwardTsnChunk) -> None:
        await super()._receive_forward_tsn_chunk(chunk)
        # Pruning moved reassembly data behind our back: count again (rare).
        for stream_id, (stream, _) in list(self._partial.items()):
            self._set_pending(stream_id, stream, sum(len(c.user_data) for c in stream.reassembly))

    def _discard(self, chunk: DataChunk, stream: InboundStream | None) -> bool:
        if chunk.flags & SCTP_DATA_UNORDERED:
            if chunk.stream_id not in self._discarding:
                return False
            if chunk.flags & SCTP_DATA_FIRST_FRAG:
                self._discarding.discard(chunk.stream_id)  # a new message starts
                return False
            if chunk.flags & SCTP_DATA_LAST_FRAG:
                self._discarding.discard(chunk.stream_id)
            return True
        # Ordered: a chunk of a refused message, or of one before the message
        # the stream waits for (already delivered or dropped).
        if stream is None:
            return False
        skipped = self._skipped.get(chunk.stream_id)
        return uint16_gt(stream.sequence_number, chunk.stream_seq) or (
            skipped is not None and chunk.stream_seq in skipped
        )

    def _pending(self, stream_id: int, stream: InboundStream) -> int:
        """Bytes waiting in ``stream``'s reassembly, as last counted."""
        known = self._partial.get(stream_id)
        return known[1] if known is not None and known[0] is stream else 0

    def _pending_after(
        self, stream_id: int, stream: InboundStream, chunk: DataChunk, before: int
    ) -> int:
        """Bytes of incomplete messages in ``stream`` now; O(1) for in-order fragments."""
        reassembly = stream.reassembly
        old = self._pending(stream_id, stream)
        if not reassembly:
            pending = 0
        elif reassembly[-1] is chunk and len(reassembly) == before + 1:
            pending = old + len(chunk.user_data)
        else:
            pending = sum(len(c.user_data) for c in reassembly)
        self._set_pending(stream_id, stream, pending)
        return pending

    def _set_pending(self, stream_id: int, stream: InboundStream, pending: int) -> None:
        known = self._partial.pop(stream_id, None)
        if known is not None:
            self._partial_total -= known[1]
        if pending:
            self._partial[stream_id] = (stream, pending)
            self._partial_total += pending

    def _drop_partial(self, stream_id: int, stream: InboundStream) -> None:
        chunks = stream.reassembly
        if not chunks:
            return
        dropped = sum(len(c.user_data) for c in chunks)
        last = chunks[-1]
        stream.reassembly = []
        self._advertised_rwnd += dropped
        self._set_pending(stream_id, stream, 0)
        if last.flags & SCTP_DATA_UNORDERED:
            if not last.flags & SCTP_DATA_LAST_FRAG:
                self._discarding.add(stream_id)
        else:
            # Skip to the message after the newest one dropped: later
            # fragments of dropped messages are now "before" and discarded.
            following = uint16_add(last.stream_seq, 1)
            if uint16_gt(following, stream.sequence_number):
                stream.sequence_number = following
        self._refused(stream_id, dropped)

    def _refused(self, stream_id: int, dropped: int) -> None:
        self.oversize_messages += 1
        self._report_error(
            "sctp",
            f"inbound message on stream {stream_id} over maxMessageSize "
            f"({self._max_inbound_message} bytes): {dropped} bytes dropped",
        )


async def _discard(data: bytes) -> None:
    return None


def _discard_now(data: bytes) -> None:
    return None


def _discard_now_state(state: str) -> None:
    return None


def _discard_error(kind: str, detail: BaseException | str) -> None:
    return None


def check_internals() -> None:
    """Raise if the aiortc internals this module relies on have moved.

    Call it inside a running event loop (aiortc's SCTP transport asks for one).
    """
    missing: list[str] = []

    async def noop(_: bytes) -> None:
        return None

    dtls = RTCDtlsTransport(_IcePipe(noop), [RTCCertificate.generateCertificate()])  # type: ignore[arg-type]
    for name in (
        "_set_role",
        "_rx_srtp",
        "_tx_srtp",
        "_ssl",
        "_task",
        "_unregister_data_receiver",
        "_register_data_receiver",
        "_send_data",
    ):
        if not hasattr(dtls, name):
            missing.append(f"RTCDtlsTransport.{name}")
    sctp = RTCSctpTransport(dtls)
    for name in (
        "_set_state",
        "_data_channels",
        "State",
        "_handle_data",
        "_receive",
        "_receive_data_chunk",
        "_receive_forward_tsn_chunk",
        "_inbound_streams",
        "_mark_received",
        "_sack_needed",
        "_advertised_rwnd",
        "_flight_size",
    ):
        if not hasattr(sctp, name):
            missing.append(f"RTCSctpTransport.{name}")
    stream = InboundStream()
    for name in ("reassembly", "sequence_number", "pop_messages"):
        if not hasattr(stream, name):
            missing.append(f"InboundStream.{name}")
    chunk = DataChunk()
    for name in ("flags", "tsn", "stream_id", "stream_seq", "user_data"):
        if not hasattr(chunk, name):
            missing.append(f"DataChunk.{name}")
    if not hasattr(RTCDataChannel, "_setReadyState"):
        missing.append("RTCDataChannel._setReadyState")
    session = pylibsrtp.Session()
    for name in ("_srtp", "_cdata", "_buffer"):
        if not hasattr(session, name):
            missing.append(f"pylibsrtp.Session.{name}")
    for name in ("srtp_protect", "srtp_unprotect", "srtp_protect_rtcp", "srtp_unprotect_rtcp"):
        if not hasattr(lib, name):
            missing.append(f"pylibsrtp._binding.lib.{name}")
    # media.bwe drives aiortc's port of libwebrtc's AIMD rate control (aiortc.rate,
    # not part of aiortc's public API).
    for name in ("update", "set_estimate"):
        if not callable(getattr(AimdRateControl, name, None)):
            missing.append(f"aiortc.rate.AimdRateControl.{name}")
    if not hasattr(AimdRateControl(), "current_bitrate"):
        missing.append("aiortc.rate.AimdRateControl.current_bitrate")
    if not {"NORMAL", "OVERUSING", "UNDERUSING"} <= set(BandwidthUsage.__members__):
        missing.append("aiortc.rate.BandwidthUsage")
    if missing:
        raise RuntimeError("aiortc internals changed: " + ", ".join(missing))
