"""Every touch of aiortc's (and pylibsrtp's) private internals lives here, and only here.

aiortc gives us a production DTLS-SRTP handshake (``RTCDtlsTransport``) and an
SCTP association with data channels (``RTCSctpTransport``), but both assume
aiortc's own full-ICE transport and RTP receivers.  This module feeds them from
the ICE-lite UDP endpoint instead, takes the SRTP sessions out once the
handshake is done (so RTP is forwarded without ever being parsed by aiortc),
and closes them synchronously.

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
from aiortc.rtcdatachannel import RTCDataChannel, RTCDataChannelParameters
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from aiortc.rtcsctptransport import RTCSctpCapabilities, RTCSctpTransport
from OpenSSL import SSL
from pylibsrtp import SRTP_MAX_SRTCP_TRAILER_LEN, SRTP_MAX_TRAILER_LEN
from pylibsrtp._binding import ffi, lib

__all__ = [
    "DtlsRole",
    "DtlsSession",
    "RTCCertificate",
    "RTCDataChannel",
    "SrtpSession",
    "check_internals",
]

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


class DtlsRole(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class _IcePipe:
    """What ``RTCDtlsTransport`` needs of an ``RTCIceTransport``, and no more."""

    # The ICE-lite side is always controlled; aiortc only reads this for stats.
    role = "controlled"
    state = "connected"

    def __init__(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._send = send
        self._closed = False

    async def _recv(self) -> bytes:
        data = await self._queue.get()
        if data is None:
            raise ConnectionError("transport closed")
        return data

    def feed(self, data: bytes) -> None:
        if not self._closed:
            self._queue.put_nowait(data)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.state = "closed"
            self._queue.put_nowait(None)


class DtlsSession:
    """One DTLS association (RFC 5764 DTLS-SRTP), optionally with SCTP on top.

    ``on_state(state)`` receives ``connected``, ``failed`` and ``closed``
    (the last one only when the peer sent close_notify).
    """

    def __init__(
        self,
        certificate: RTCCertificate,
        send: Callable[[bytes], Awaitable[None]],
        send_now: Callable[[bytes], None],
        on_state: Callable[[str], None],
    ) -> None:
        self._pipe = _IcePipe(send)
        self._send_now = send_now
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
        """A DTLS record arrived (first byte 20-63, RFC 7983)."""
        self._pipe.feed(data)

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
            sctp = self.sctp = RTCSctpTransport(self._dtls, port=port)
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


async def _discard(data: bytes) -> None:
    return None


def _discard_now(data: bytes) -> None:
    return None


def _discard_now_state(state: str) -> None:
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
    for name in ("_set_state", "_data_channels", "State"):
        if not hasattr(sctp, name):
            missing.append(f"RTCSctpTransport.{name}")
    if not hasattr(RTCDataChannel, "_setReadyState"):
        missing.append("RTCDataChannel._setReadyState")
    session = pylibsrtp.Session()
    for name in ("_srtp", "_cdata", "_buffer"):
        if not hasattr(session, name):
            missing.append(f"pylibsrtp.Session.{name}")
    for name in ("srtp_protect", "srtp_unprotect", "srtp_protect_rtcp", "srtp_unprotect_rtcp"):
        if not hasattr(lib, name):
            missing.append(f"pylibsrtp._binding.lib.{name}")
    if missing:
        raise RuntimeError("aiortc internals changed: " + ", ".join(missing))
