"""Forwarding benchmark of the ``media`` SFU: packets/s and server CPU per packet.

What it measures
----------------
For each fan-out N (``--fanout``, default 1,4,10) one producer's video stream is
forwarded to N consumers, each on its own WebRtcTransport, with real ICE-lite,
DTLS and SRTP.  It prints, per scenario:

* offered packets/s (what the sending client pushed into its socket),
* received-by-server packets/s (``Producer.packet_count``),
* forwarded packets/s (sum of ``Consumer.packet_count`` over the N consumers),
* delivered packets/s (SRTP datagrams the receiving clients got),
* server CPU % of one core (user + system time of the server process),
* server CPU microseconds per forwarded packet and per inbound packet,
* the implied forwarded packets/s of one fully used core (1e6 / us-per-packet),

and finally how the 1->1 case compares with the target of 25,000 forwarded
packets/s per core.

Each fan-out also runs with a simulcast producer (``--layers``, default 1,3):
three encodings r0/r1/r2 (SSRCs signalled, VP8 L1T3 with PictureID,
TL0PICIDX and TID, a key frame every 60 frames) sending 1/2/10 packets per
frame (``--simulcast-mix``), what Chrome sends for a 720p camera; every
consumer is a ``SimulcastConsumer`` forwarding r2, so the server also
receives and parses the two lower layers and rewrites sequence numbers,
timestamps and PictureIDs per consumer.  A table at the end puts the single-encoding and the
simulcast figures side by side.  By default every fan-out runs flat out (the client offers
more than one server core can take, so the server's core is saturated), then
1->1 runs once more paced at the target rate (``--target-rate``) to show whether
25,000 packets/s actually get through without loss.

How it works
------------
The server is a separate process (multiprocessing "spawn") pinned to core 0 and
running uvloop: a ``media.Worker`` on 127.0.0.1, one router, one send transport
with a VP8 producer (the rtpParameters pymediasoup would send) and N receive
transports with one consumer each.  It answers commands over a Pipe and, when
asked, snapshots its CPU time and packet counters, so that the deltas cover
exactly the measuring window.

The clients all live in this process, pinned to core 1 (also uvloop).  They are
a minimal raw WebRTC client rather than aiortc's RTCPeerConnection: STUN
Binding requests with USE-CANDIDATE (repeated every 2 s as consent checks),
a DTLS handshake through ``media.aiortc_bridge.DtlsSession`` in the client role,
then pre-built RTP packets (PT 96, a one-byte MID header extension, 1000-byte
payload, incrementing sequence number and timestamp) protected with the
negotiated SRTP session and sent in bursts, either flat out (``--rate 0``, the
default) or paced at the given packets/s.  Receivers only count datagrams.

Run it from the repository root (about a minute with the defaults)::

    .venv/bin/python scripts/bench_sfu.py
    .venv/bin/python scripts/bench_sfu.py --fanout 1 --rate 20000,30000,40000   # rate sweep
    .venv/bin/python scripts/bench_sfu.py --repeat 3      # median of 3 runs per scenario
    .venv/bin/python scripts/bench_sfu.py --fanout 1 --layers 1 --target-rate 0 --repeat 5
    .venv/bin/python scripts/bench_sfu.py --fanout 1 --profile   # + cProfile of 1->1
    .venv/bin/python scripts/bench_sfu.py --fanout 1 --layers 3 --profile   # ... simulcast
    .venv/bin/python scripts/bench_sfu.py --repeat 5 --simulcast-mix 1,2,5   # the old mix

For the forwarding path's user-space cost alone, steady enough to compare two
trees on this VM, see ``scripts/bench_forwarding_path.py``.

Caveats: everything runs on loopback, so the kernel's delivery of each datagram
the server sends is charged to the server process (system time), which
overstates the per-packet cost a little compared with a NIC.  "cpu%" is the
server process's own user+system time; "core0%" is everything core 0 did: when
it is much higher, something else competed for the core (a note is printed).
On shared or virtual machines run-to-run spread can be large; use ``--repeat``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import multiprocessing
import os
import pstats
import secrets
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version as _version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop

if TYPE_CHECKING:
    from media.aiortc_bridge import DtlsSession

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # spawn passes sys.path on to the server

Json = dict[str, Any]

SERVER_CORE = 0
CLIENT_CORE = 1
TARGET_PPS = 25_000
LOCALHOST = "127.0.0.1"

PRODUCER_SSRC = 11111111
PRODUCER_PT = 96
MID_EXT_ID = 1
PAYLOAD_SIZE = 1000
PACKETS_PER_FRAME = 10
BURST = 32  # packets sent back to back before yielding to the event loop
CONSENT_INTERVAL = 2.0
CALL_TIMEOUT = 15.0
SETUP_TIMEOUT = 10.0

SIMULCAST_MIX = (1, 2, 10)
"""Packets per frame of r0, r1, r2 in the simulcast scenarios: Chrome's three
layers of a 1280x720 camera when its estimate allows them all.  libwebrtc
(``video/config/simulcast.cc``) gives the lower layers their target bitrate,
150 kbit/s at 320x180 and 500 kbit/s at 640x360, and the top one up to its
maximum, 2,500 kbit/s at 1280x720: at 30 frames/s and 1,000 payload bytes a
packet, 0.6, 2.1 and 10.4 packets a frame (r0 still takes one)."""
KEY_FRAME_EVERY = 60  # frames; where a simulcast consumer may start forwarding
SIMULCAST_COST_TARGET = 1.3
"""The most a forwarded simulcast packet may cost, in single-encoding packets."""

PRODUCER_RTP_PARAMETERS: Json = {
    "mid": "0",
    "codecs": [
        {
            "mimeType": "video/VP8",
            "payloadType": PRODUCER_PT,
            "clockRate": 90000,
            "parameters": {},
            "rtcpFeedback": [
                {"type": "nack", "parameter": ""},
                {"type": "nack", "parameter": "pli"},
            ],
        }
    ],
    "headerExtensions": [{"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": MID_EXT_ID}],
    "encodings": [{"ssrc": PRODUCER_SSRC}],
    "rtcp": {"cname": "bench"},
}


def producer_rtp_parameters(layers: int) -> Json:
    """One encoding, or ``layers`` simulcast encodings (SSRCs signalled, L1T3 each)."""
    if layers == 1:
        return PRODUCER_RTP_PARAMETERS
    encodings = [
        {"ssrc": PRODUCER_SSRC + i, "rid": f"r{i}", "scalabilityMode": "L1T3"}
        for i in range(layers)
    ]
    return {**PRODUCER_RTP_PARAMETERS, "encodings": encodings}


def receiver_rtp_capabilities(router_capabilities: Json) -> Json:
    """A receiving client's: the router's VP8, no header extensions."""
    vp8 = next(c for c in router_capabilities["codecs"] if c["mimeType"].lower() == "video/vp8")
    return {
        "codecs": [
            {
                "kind": "video",
                "mimeType": vp8["mimeType"],
                "clockRate": vp8["clockRate"],
                "preferredPayloadType": vp8["preferredPayloadType"],
                "parameters": {},
                "rtcpFeedback": vp8["rtcpFeedback"],
            }
        ],
        "headerExtensions": [],
    }


def _pin(core: int) -> int:
    """Pin this process to ``core`` (if the machine has it); return the core used."""
    available = sorted(os.sched_getaffinity(0))
    chosen = core if core in available else available[min(core, len(available) - 1)]
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {chosen})
    return min(os.sched_getaffinity(0))


def _core_ticks(core: int) -> tuple[int, int]:
    """(busy, total) clock ticks of one core so far, from /proc/stat (0, 0 if unknown)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{core} "):
                ticks = [int(v) for v in line.split()[1:]]
                idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
                return sum(ticks[:8]) - idle, sum(ticks[:8])
    return 0, 0


# =====================================================================================
# Server process
# =====================================================================================


def server_main(conn: Connection, core: int, rcvbuf: int = 0) -> None:
    """Entry point of the spawned server process."""
    _pin(core)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_Server(conn, rcvbuf).serve())


class _Server:
    """The SFU under test, driven by commands arriving on the Pipe."""

    def __init__(self, conn: Connection, rcvbuf: int = 0) -> None:
        from media import Worker, WorkerSettings

        self._conn = conn
        self._rcvbuf = rcvbuf
        self._worker = Worker(WorkerSettings(listen_ip=LOCALHOST))
        self._router: Any = None
        self._transports: list[Any] = []
        self._producer: Any = None
        self._consumers: list[Any] = []
        self._profiler: cProfile.Profile | None = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[Json | None] = asyncio.Queue()

        def readable() -> None:
            try:
                commands.put_nowait(self._conn.recv())
            except (EOFError, OSError):
                loop.remove_reader(self._conn.fileno())
                commands.put_nowait(None)

        loop.add_reader(self._conn.fileno(), readable)
        try:
            while True:
                command = await commands.get()
                if command is None:
                    break
                try:
                    reply = await self._handle(command)
                except Exception as exc:
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                self._conn.send(reply)
                if command.get("op") == "quit":
                    break
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._conn.fileno())
            self._teardown()
            self._worker.close()

    async def _handle(self, command: Json) -> Json:
        op = command.get("op")
        if op == "setup":
            return await self._setup(int(command["fanout"]), int(command.get("layers", 1)))
        if op == "connect":
            for transport in self._transports:
                await transport.connect({"role": "client", "fingerprints": command["fingerprints"]})
            return {"ok": True}
        if op == "status":
            return {
                "ice": [t.ice_state for t in self._transports],
                "dtls": [t.dtls_state for t in self._transports],
            }
        if op == "mark":
            return self._mark()
        if op == "profile_start":
            self._profiler = cProfile.Profile()
            self._profiler.enable()
            return {"ok": True}
        if op == "profile_stop":
            return {"text": self._profile_stop(int(command.get("top", 10)))}
        if op == "teardown":
            self._teardown()
            await asyncio.sleep(0)  # let close callbacks run before counting
            return {"left": {k: v for k, v in self._worker.resource_counts().items() if v}}
        if op == "quit":
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}

    async def _setup(self, fanout: int, layers: int = 1) -> Json:
        self._teardown()
        router = self._router = await self._worker.create_router()
        send = await router.create_webrtc_transport()
        recvs = [await router.create_webrtc_transport() for _ in range(fanout)]
        self._transports = [send, *recvs]
        if self._rcvbuf > 0:
            # An experiment knob, not something media/ offers: reaches into the transport.
            sock = send._udp.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
        self._producer = await send.produce(
            kind="video", rtp_parameters=producer_rtp_parameters(layers), paused=False
        )
        client_caps = receiver_rtp_capabilities(router.rtp_capabilities)
        for transport in recvs:
            # The receivers send no RTCP, so the downlink estimate would stay at its
            # initial value and cap every simulcast consumer at its lowest layer:
            # this measures forwarding, so the estimate is floored out of the way.
            floor = getattr(transport, "set_min_outgoing_bitrate", None)
            if floor is not None:
                await floor(100_000_000_000)
        self._consumers = [
            await t.consume(
                producer_id=self._producer.id, rtp_capabilities=client_caps, paused=False
            )
            for t in recvs
        ]

        def info(transport: Any) -> Json:
            ice = transport.ice_parameters
            return {
                "port": transport.port,
                "ufrag": ice["usernameFragment"],
                "pwd": ice["password"],
                "fingerprints": transport.dtls_parameters["fingerprints"],
            }

        receivers = []
        for transport, consumer in zip(recvs, self._consumers, strict=True):
            receivers.append(
                {
                    **info(transport),
                    "ssrc": consumer.ssrc,
                    "pt": consumer.rtp_parameters["codecs"][0]["payloadType"],
                    "simulcast": layers > 1,
                }
            )
        return {"send": info(send), "recv": receivers}

    def _mark(self) -> Json:
        times = os.times()
        return {
            "wall": time.monotonic(),
            "user": times.user,
            "system": times.system,
            "received": self._producer.packet_count if self._producer is not None else 0,
            "forwarded": sum(c.packet_count for c in self._consumers),
            "srtp_errors": sum(t.srtp_errors for t in self._transports),
        }

    def _profile_stop(self, top: int) -> str:
        profiler, self._profiler = self._profiler, None
        if profiler is None:
            return ""
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
        return out.getvalue()

    def _teardown(self) -> None:
        if self._router is not None:
            self._router.close()
        self._router = self._producer = None
        self._transports = []
        self._consumers = []


# =====================================================================================
# Client side (this process)
# =====================================================================================


class _Control:
    """Request/reply over the Pipe without blocking the client's event loop."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def call(self, op: str, timeout: float = CALL_TIMEOUT, **args: Any) -> Json:
        loop = asyncio.get_running_loop()
        try:
            self._conn.send({"op": op, **args})
        except OSError as exc:
            raise RuntimeError(f"server process gone ({exc})") from None
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self._conn.fileno(), readable)
        try:
            await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            raise RuntimeError(f"server did not answer {op!r} within {timeout} s") from None
        finally:
            loop.remove_reader(self._conn.fileno())
        try:
            reply: Json = self._conn.recv()
        except (EOFError, OSError):
            raise RuntimeError("server process gone") from None
        if "error" in reply:
            raise RuntimeError(f"server failed {op!r}: {reply['error']}")
        return reply


class _Peer(asyncio.DatagramProtocol):
    """One raw WebRTC client transport: ICE controlling agent, DTLS client, UDP."""

    def __init__(self, info: Json, certificate: Any) -> None:
        from media.aiortc_bridge import DtlsSession

        self.server: tuple[str, int] = (LOCALHOST, int(info["port"]))
        self._remote_ufrag: str = info["ufrag"]
        self._remote_key: bytes = str(info["pwd"]).encode()
        self.server_fingerprints: list[dict[str, str]] = info["fingerprints"]
        self._local_ufrag = secrets.token_hex(4)
        self._tie_breaker = secrets.randbits(64)
        self._pending: set[bytes] = set()
        self.ice_ok = asyncio.Event()
        self.ice_error: str | None = None
        self.dtls_state = "new"
        self.dtls_done = asyncio.Event()
        self.rtp_received = 0
        self.rtcp_received = 0
        # What a consumer's packets must look like (receivers check their first few).
        self.expected_ssrc: int | None = info.get("ssrc")
        self.expected_pt: int | None = info.get("pt")
        self.simulcast = bool(info.get("simulcast"))
        self.to_verify = 3 if self.expected_ssrc is not None else 0
        self.verified = 0
        self.verify_error: str | None = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((LOCALHOST, 0))
        self.udp: asyncio.DatagramTransport | None = None
        self.dtls: DtlsSession = DtlsSession(
            certificate, self._send_async, self.send_now, self._dtls_state_changed
        )

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.udp, _ = await loop.create_datagram_endpoint(lambda: self, sock=self.sock)

    # -- I/O ----------------------------------------------------------------------

    def send_now(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(data, self.server)

    async def _send_async(self, data: bytes) -> None:
        self.send_now(data)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not data:
            return
        first = data[0]
        if 127 < first < 192:
            if len(data) > 1 and 191 < data[1] < 224:
                self.rtcp_received += 1
            else:
                self.rtp_received += 1
                if self.to_verify:
                    self._verify(data)
        elif first < 4:
            self._stun_received(data)
        elif 19 < first < 64:
            self.dtls.feed(data)

    def error_received(self, exc: Exception) -> None:
        pass

    def _verify(self, data: bytes) -> None:
        """Decrypt a forwarded packet and check what the SFU rewrote (and kept)."""
        rx = self.dtls.rx_srtp
        if rx is None:
            return
        self.to_verify -= 1
        packet = rx.unprotect(data)
        if packet is None:
            self.verify_error = "SRTP unprotect failed"
            return
        _, pt, _, _, ssrc = struct.unpack_from("!BBHII", packet)
        # The consumer gets no MID extension: the element is padded out, and
        # our abs-send-time may take its place (media.rtp_stream).  A simulcast
        # consumer rewrites the VP8 descriptor (PictureID, TL0PICIDX) and may
        # get a key frame's payload header: the rest must be intact.
        size = len(_EXPECTED_FORWARDED_EXTENSION)
        extension = packet[12 : 12 + size]
        if extension[4] == _SEND_TIME_HEAD:
            extension = extension[:4] + bytes(4)  # (its value is our clock's)
        if self.simulcast:
            head = size + len(_SIM_DESCRIPTOR) + 1
            intact = (
                extension == _EXPECTED_FORWARDED_EXTENSION and packet[12 + head :] == _SIM_FILLER
            )
        else:
            intact = extension == _EXPECTED_FORWARDED_EXTENSION and packet[12 + size :] == _PAYLOAD
        problems = []
        if ssrc != self.expected_ssrc:
            problems.append(f"SSRC {ssrc} != consumer SSRC {self.expected_ssrc}")
        if pt & 0x7F != self.expected_pt:
            problems.append(f"PT {pt & 0x7F} != consumer PT {self.expected_pt}")
        if not intact:
            problems.append(f"extension/payload changed: {packet[12:24].hex()}...")
        if problems:
            self.verify_error = "; ".join(problems)
        else:
            self.verified += 1

    # -- ICE ----------------------------------------------------------------------

    def send_check(self) -> None:
        """A Binding request nominating this pair: ICE check and consent refresh."""
        from aioice import stun

        message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        message.attributes["USERNAME"] = f"{self._remote_ufrag}:{self._local_ufrag}"
        message.attributes["PRIORITY"] = 1853824767
        message.attributes["ICE-CONTROLLING"] = self._tie_breaker
        message.attributes["USE-CANDIDATE"] = None
        message.add_message_integrity(self._remote_key)  # also adds FINGERPRINT
        if len(self._pending) > 16:
            self._pending.clear()
        self._pending.add(message.transaction_id)
        self.send_now(bytes(message))

    def _stun_received(self, data: bytes) -> None:
        from aioice import stun

        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        if message.transaction_id not in self._pending:
            return
        self._pending.discard(message.transaction_id)
        if message.message_class is stun.Class.RESPONSE:
            if message.check_message_integrity(self._remote_key):
                self.ice_ok.set()
            else:
                self.ice_error = "response failed MESSAGE-INTEGRITY"
        elif message.message_class is stun.Class.ERROR:
            self.ice_error = f"STUN error {message.attributes.get('ERROR-CODE')}"

    # -- DTLS ---------------------------------------------------------------------

    def start_dtls(self) -> None:
        from media.aiortc_bridge import DtlsRole

        self.dtls.start(DtlsRole.CLIENT, self.server_fingerprints)

    def _dtls_state_changed(self, state: str) -> None:
        self.dtls_state = state
        if state in ("connected", "failed", "closed"):
            self.dtls_done.set()

    @property
    def srtp_profile(self) -> str:
        ssl = getattr(getattr(self.dtls, "_dtls", None), "_ssl", None)
        with contextlib.suppress(Exception):
            profile = ssl.get_selected_srtp_profile() if ssl is not None else b""
            return bytes(profile).decode() or "?"
        return "?"

    def close(self) -> None:
        self.dtls.close()
        if self.udp is not None:
            self.udp.close()
        else:
            self.sock.close()


@dataclass
class _SenderStats:
    sent: int = 0
    send_errors: int = 0


@dataclass
class Result:
    fanout: int
    rate: int
    layers: int
    seconds: float
    offered: float
    received: float
    forwarded: float
    delivered: float
    cpu_percent: float
    user_percent: float
    system_percent: float
    us_per_forwarded: float
    us_per_inbound: float
    per_core: float
    core_busy_percent: float
    """Everything core 0 did (any process, interrupts): shows competing load."""
    srtp_errors: int
    send_errors: int
    srtp_profile: str = ""
    verified: int = 0
    """Forwarded packets the receivers decrypted and checked (SSRC, PT, MID padded)."""
    verify_errors: list[str] = field(default_factory=list)


# RFC 8285 one-byte extension block: MID (id 1, one byte "0") + two padding bytes.
_EXTENSION = struct.pack("!HH", 0xBEDE, 1) + bytes([(MID_EXT_ID << 4) | 0]) + b"0\x00\x00"
_EXPECTED_FORWARDED_EXTENSION = struct.pack("!HH", 0xBEDE, 1) + bytes(4)
# Our abs-send-time element where the MID was: id 4 (media.rtp_parameters
# ABS_SEND_TIME_ID), 3 bytes.
_SEND_TIME_HEAD = 0x42
# VP8 payload descriptor (S bit, partition 0) followed by filler.
_PAYLOAD = b"\x10" + bytes(PAYLOAD_SIZE - 1)
# Simulcast: the descriptor browsers send (X, I with a 15-bit PictureID, L, T),
# then the VP8 payload header (P bit: key frame or not) and filler.
_SIM_DESCRIPTOR = b"\x90\xe0\x80\x00\x00\x00"
_SIM_FILLER = bytes(PAYLOAD_SIZE - len(_SIM_DESCRIPTOR) - 1)
_L1T3 = (0, 2, 1, 2)


def _single_frames() -> Callable[[], list[bytes]]:
    """Each call: the next frame of a plain track, ``PACKETS_PER_FRAME`` packets
    with consecutive sequence numbers, the marker on the last."""
    header = struct.Struct("!BBHII")
    tail = _EXTENSION + _PAYLOAD
    seq = secrets.randbelow(0x10000)
    timestamp = secrets.randbelow(1 << 32)

    def next_frame() -> list[bytes]:
        nonlocal seq, timestamp
        packets = []
        for i in range(PACKETS_PER_FRAME):
            marker = 0x80 if i == PACKETS_PER_FRAME - 1 else 0
            packets.append(
                header.pack(0x90, marker | PRODUCER_PT, seq, timestamp, PRODUCER_SSRC) + tail
            )
            seq = (seq + 1) & 0xFFFF
        timestamp = (timestamp + 3000) & 0xFFFFFFFF
        return packets

    return next_frame


def _simulcast_frames(mix: tuple[int, ...]) -> Callable[[], list[bytes]]:
    """Each call: the next frame of every encoding (``mix``: packets of each),
    with the numbering a VP8 encoder in L1T3 gives them."""
    header = struct.Struct("!BBHII")
    seqs = [secrets.randbelow(0x10000) for _ in mix]
    timestamps = [secrets.randbelow(1 << 32) for _ in mix]
    pictures = [secrets.randbelow(0x8000) for _ in mix]
    tl0s = [0 for _ in mix]
    frame = 0

    def next_frame() -> list[bytes]:
        nonlocal frame
        tid = _L1T3[frame % 4]
        key = frame % KEY_FRAME_EVERY == 0
        packets = []
        for layer, count in enumerate(mix):
            if tid == 0:
                tl0s[layer] = (tl0s[layer] + 1) & 0xFF
            for i in range(count):
                descriptor = bytes(
                    (
                        0x90 if i == 0 else 0x80,
                        0xE0,
                        0x80 | (pictures[layer] >> 8),
                        pictures[layer] & 0xFF,
                        tl0s[layer],
                        (tid << 6) | (0x20 if tid == 0 else 0),
                    )
                )
                first = b"\x00" if key and i == 0 else b"\x01"
                seqs[layer] = (seqs[layer] + 1) & 0xFFFF
                # One join (one copy of the payload), as cheap per packet as the
                # single-encoding builder: the client shares the machine with the server.
                packets.append(
                    b"".join(
                        (
                            header.pack(
                                0x90,
                                (0x80 if i == count - 1 else 0) | PRODUCER_PT,
                                seqs[layer],
                                timestamps[layer],
                                PRODUCER_SSRC + layer,
                            ),
                            _EXTENSION,
                            descriptor,
                            first,
                            _SIM_FILLER,
                        )
                    )
                )
            timestamps[layer] = (timestamps[layer] + 3000) & 0xFFFFFFFF
            pictures[layer] = (pictures[layer] + 1) & 0x7FFF
        frame += 1
        return packets

    return next_frame


async def _pump(
    peer: _Peer,
    rate: int,
    stop: asyncio.Event,
    stats: _SenderStats,
    layers: int = 1,
    mix: tuple[int, ...] = SIMULCAST_MIX,
    idle: float = 0.0005,
) -> None:
    """Send SRTP-protected RTP to the server, flat out (rate 0) or paced, until ``stop``;
    paced, it sleeps ``idle`` seconds when nothing is due (uvloop's timers have a
    millisecond's resolution: shorter sleeps spin).  A plain track, or a
    simulcast webcam whose ``layers`` encodings send ``mix`` packets a frame
    (the frames of every encoding interleaved)."""
    next_frame = _single_frames() if layers == 1 else _simulcast_frames(mix[:layers])
    tx = peer.dtls.tx_srtp
    assert tx is not None
    protect = tx.protect
    sendto = peer.sock.sendto
    server = peer.server
    queued: list[bytes] = []
    started = time.monotonic()
    sent = 0
    errors = 0
    while not stop.is_set():
        if rate > 0:
            count = min(int((time.monotonic() - started) * rate) - sent, 2 * BURST)
            if count <= 0:
                stats.sent, stats.send_errors = sent, errors
                await asyncio.sleep(idle)
                continue
        else:
            count = BURST
        for _ in range(count):
            if not queued:
                queued = next_frame()
                queued.reverse()
            try:
                protected = protect(queued.pop())
                if protected is not None:
                    sendto(protected, server)
            except OSError:  # full socket buffer, or ICMP unreachable from a dead server
                errors += 1
        sent += count
        stats.sent, stats.send_errors = sent, errors
        await asyncio.sleep(0)
    stats.sent, stats.send_errors = sent, errors


async def _consent(peers: list[_Peer], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CONSENT_INTERVAL)
        if not stop.is_set():
            for peer in peers:
                peer.send_check()


async def _wait_all(
    peers: list[_Peer], event: Callable[[_Peer], asyncio.Event], what: str, timeout: float
) -> None:
    try:
        await asyncio.wait_for(asyncio.gather(*(event(p).wait() for p in peers)), timeout)
    except TimeoutError:
        raise RuntimeError(f"{what} did not complete within {timeout} s") from None


async def _connect(
    control: _Control, fanout: int, certificate: Any, peers: list[_Peer], layers: int = 1
) -> None:
    """Create the server side, then ICE + DTLS for the sender and every receiver.

    ``peers`` is filled as they are created, so the caller can close them on failure.
    """
    from media.aiortc_bridge import DtlsSession

    setup = await control.call("setup", fanout=fanout, layers=layers)
    for info in [setup["send"], *setup["recv"]]:
        peers.append(_Peer(info, certificate))
    for peer in peers:
        await peer.open()
    # ICE: nominate with USE-CANDIDATE, retrying every 100 ms until answered.
    deadline = time.monotonic() + SETUP_TIMEOUT
    while not all(p.ice_ok.is_set() for p in peers):
        errors = [p.ice_error for p in peers if p.ice_error]
        if errors:
            raise RuntimeError(f"ICE failed: {errors[0]}")
        if time.monotonic() > deadline:
            raise RuntimeError("ICE did not complete")
        for peer in peers:
            if not peer.ice_ok.is_set():
                peer.send_check()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.ice_ok.wait() for p in peers)), 0.1)
    # DTLS: the server is the DTLS server (we told it our role is "client").
    await control.call("connect", fingerprints=DtlsSession.local_fingerprints(certificate))
    for peer in peers:
        peer.start_dtls()
    await _wait_all(peers, lambda p: p.dtls_done, "DTLS", SETUP_TIMEOUT)
    failed = [p.dtls_state for p in peers if p.dtls_state != "connected"]
    if failed:
        raise RuntimeError(f"DTLS failed on {len(failed)} transport(s): {failed[0]}")
    deadline = time.monotonic() + SETUP_TIMEOUT
    while True:
        status = await control.call("status")
        if all(s == "connected" for s in status["dtls"]):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"server DTLS states: {status['dtls']}")
        await asyncio.sleep(0.02)


async def _run_scenario(
    control: _Control,
    certificate: Any,
    *,
    fanout: int,
    rate: int,
    warmup: float,
    duration: float,
    layers: int = 1,
    mix: tuple[int, ...] = SIMULCAST_MIX,
    profile: bool = False,
    profile_top: int = 10,
) -> tuple[Result, str]:
    peers: list[_Peer] = []
    stop = asyncio.Event()
    stats = _SenderStats()
    tasks: list[asyncio.Task[None]] = []
    profile_text = ""
    try:
        await _connect(control, fanout, certificate, peers, layers)
        sender, receivers = peers[0], peers[1:]
        tasks.append(asyncio.create_task(_pump(sender, rate, stop, stats, layers, mix)))
        tasks.append(asyncio.create_task(_consent(peers, stop)))
        await asyncio.sleep(warmup)
        if profile:
            await control.call("profile_start")
        first = await control.call("mark")
        c0 = (time.monotonic(), stats.sent, sum(p.rtp_received for p in receivers))
        e0, k0 = stats.send_errors, _core_ticks(SERVER_CORE)
        await asyncio.sleep(duration)
        last = await control.call("mark")
        c1 = (time.monotonic(), stats.sent, sum(p.rtp_received for p in receivers))
        e1, k1 = stats.send_errors, _core_ticks(SERVER_CORE)
        if profile:
            profile_text = (await control.call("profile_stop", top=profile_top))["text"]
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise RuntimeError(f"client task failed: {task.exception()!r}")
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2.0)
        with contextlib.suppress(RuntimeError):
            left = (await control.call("teardown"))["left"]
            if left:
                print(f"warning: server objects left after router.close(): {left}", flush=True)
        for peer in peers:
            peer.close()
        await asyncio.sleep(0.05)  # let the transports' close callbacks run

    wall = last["wall"] - first["wall"]
    client_wall = c1[0] - c0[0]
    user = last["user"] - first["user"]
    system = last["system"] - first["system"]
    cpu = user + system
    received = last["received"] - first["received"]
    forwarded = last["forwarded"] - first["forwarded"]
    us_fwd = cpu * 1e6 / forwarded if forwarded else float("inf")
    us_in = cpu * 1e6 / received if received else float("inf")
    result = Result(
        fanout=fanout,
        rate=rate,
        layers=layers,
        seconds=wall,
        offered=(c1[1] - c0[1]) / client_wall,
        received=received / wall,
        forwarded=forwarded / wall,
        delivered=(c1[2] - c0[2]) / client_wall,
        cpu_percent=100 * cpu / wall,
        user_percent=100 * user / wall,
        system_percent=100 * system / wall,
        us_per_forwarded=us_fwd,
        us_per_inbound=us_in,
        per_core=1e6 / us_fwd if forwarded else 0.0,
        core_busy_percent=100 * (k1[0] - k0[0]) / (k1[1] - k0[1]) if k1[1] > k0[1] else -1.0,
        srtp_errors=last["srtp_errors"] - first["srtp_errors"],
        send_errors=e1 - e0,
        srtp_profile=sender.srtp_profile,
        verified=sum(p.verified for p in receivers),
        verify_errors=[p.verify_error for p in receivers if p.verify_error],
    )
    return result, profile_text


# =====================================================================================
# Report
# =====================================================================================


def _label(result: Result) -> str:
    rate = "max" if result.rate <= 0 else f"{result.rate:,}"
    layers = f" sim{result.layers}" if result.layers > 1 else ""
    return f"1->{result.fanout}{layers} @{rate}"


def _contended(r: Result) -> bool:
    """Whether core 0 did noticeably more than the server process (other load)."""
    return r.core_busy_percent >= 0 and r.core_busy_percent - r.cpu_percent > 10


def _loss(r: Result) -> float:
    return max(0.0, 100 * (1 - r.received / r.offered)) if r.offered else 0.0


def _print_header() -> None:
    print(
        f"{'scenario':<15}{'offered/s':>10}{'srv-in/s':>10}{'loss%':>7}{'fwd/s':>10}"
        f"{'deliv/s':>10}{'cpu%':>7}{'core0%':>7}{'us/fwd':>8}{'us/in':>8}{'fwd/s/core':>11}"
    )


def _print_row(r: Result) -> None:
    core = f"{r.core_busy_percent:>7.1f}" if r.core_busy_percent >= 0 else f"{'?':>7}"
    print(
        f"{_label(r):<15}{r.offered:>10,.0f}{r.received:>10,.0f}{_loss(r):>7.1f}"
        f"{r.forwarded:>10,.0f}{r.delivered:>10,.0f}{r.cpu_percent:>7.1f}{core}"
        f"{r.us_per_forwarded:>8.2f}{r.us_per_inbound:>8.2f}{r.per_core:>11,.0f}",
        flush=True,
    )
    extra = []
    if r.srtp_errors:
        extra.append(f"server SRTP errors {r.srtp_errors}")
    if r.send_errors:
        extra.append(f"client send errors {r.send_errors}")
    if r.verify_errors:
        extra.append(f"BAD FORWARDED PACKETS: {r.verify_errors[0]}")
    elif r.verified < r.fanout:
        extra.append(f"only {r.verified} forwarded packets could be checked")
    if _contended(r):
        other = r.core_busy_percent - r.cpu_percent
        extra.append(
            f"core {SERVER_CORE} also {other:.0f}% busy outside the server: competing load, "
            "so pkt/s understated and us/pkt inflated"
        )
    if extra:
        print(f"{'':<15}({', '.join(extra)})", flush=True)


def _median(runs: list[Result]) -> Result:
    """The run with the median CPU cost per forwarded packet.

    Runs in which the server refused SRTP are left out while there are others:
    after the server fell behind by 2^15 packets of one SSRC (a stall on a
    shared core), libsrtp guesses the wrong rollover counter and fails every
    later packet, so such a run measures failed decryption, not forwarding.
    """
    clean = [r for r in runs if not r.srtp_errors] or runs
    ordered = sorted(clean, key=lambda r: r.us_per_forwarded)
    return ordered[(len(ordered) - 1) // 2]


def _summary_line(r: Result, runs: list[Result]) -> str:
    spread = ""
    clean = [x for x in runs if not x.srtp_errors] or runs
    if len(runs) > 1:
        low = min(x.per_core for x in clean)
        high = max(x.per_core for x in clean)
        spread = f" [median of {len(clean)} runs; {low:,.0f}..{high:,.0f}]"
        if len(clean) < len(runs):
            spread += f" ({len(runs) - len(clean)} left out: server SRTP errors)"
    return (
        f"{_label(r)}: offered {r.offered:,.0f}/s, server received {r.received:,.0f}/s, "
        f"forwarded {r.forwarded:,.0f}/s; server CPU {r.cpu_percent:.0f}% of core "
        f"{SERVER_CORE} (user {r.user_percent:.0f}%, sys {r.system_percent:.0f}%); "
        f"{r.us_per_forwarded:.2f} us/forwarded pkt, {r.us_per_inbound:.2f} us/inbound pkt "
        f"=> {r.per_core:,.0f} forwarded pkt/s per fully used core{spread}"
    )


def _verdict(results: list[Result]) -> str:
    one = [r for r in results if r.fanout == 1]
    if not one:
        return f"TARGET 1->1: not run (target {TARGET_PPS:,} forwarded pkt/s per core)"
    flat = [r for r in one if r.rate <= 0] or one
    best = max(flat, key=lambda r: r.per_core)
    parts = [
        f"TARGET 1->1 ({TARGET_PPS:,} forwarded pkt/s per core): "
        f"{'MET' if best.per_core >= TARGET_PPS else 'NOT MET'} -- "
        f"{best.per_core:,.0f} pkt/s per core from {best.us_per_forwarded:.2f} us/packet "
        f"(flat out: {best.forwarded:,.0f} pkt/s measured at {best.cpu_percent:.0f}% CPU"
    ]
    if _contended(best):
        parts.append(
            f"; core {SERVER_CORE} was {best.core_busy_percent:.0f}% busy, "
            "the rest went to other processes/interrupts"
        )
    parts.append(")")
    for paced in (r for r in one if r.rate > 0):
        if paced.forwarded >= 0.99 * paced.rate:
            outcome = "sustained"
        elif _contended(paced):
            outcome = "not sustained, but core 0 was shared with other load: inconclusive"
        else:
            outcome = "not sustained"
        parts.append(
            f"; paced at {paced.rate:,}/s: forwarded {paced.forwarded:,.0f}/s "
            f"({_loss(paced):.1f}% lost) at {paced.cpu_percent:.0f}% CPU -> {outcome}"
        )
    return "".join(parts)


# =====================================================================================
# Main
# =====================================================================================


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text}"
        ) from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"need non-negative integers: {text}")
    return values


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--fanout", type=_int_list, default=[1, 4, 10], help="consumers per run (default 1,4,10)"
    )
    parser.add_argument(
        "--rate",
        type=_int_list,
        default=[0],
        help="offered packets/s, comma-separated; 0 = flat out (default 0)",
    )
    parser.add_argument(
        "--layers",
        type=_int_list,
        default=[1, 3],
        help="encodings per producer: 1 (a plain track) and/or 3 (simulcast); default 1,3",
    )
    parser.add_argument(
        "--simulcast-mix",
        type=_int_list,
        default=list(SIMULCAST_MIX),
        help="packets per frame of r0,r1,r2 (default "
        + ",".join(str(n) for n in SIMULCAST_MIX)
        + ": Chrome's 720p layers; 1,2,5 was this script's mix before 2026-11-30)",
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="measuring window per scenario, s"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="sending before measuring, s")
    parser.add_argument(
        "--target-rate",
        type=int,
        default=TARGET_PPS,
        help=f"then run 1->1 paced at this rate (default {TARGET_PPS:,}; 0 = skip)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per scenario; summaries use the median"
    )
    parser.add_argument(
        "--server-rcvbuf",
        type=int,
        default=0,
        help="experiment: SO_RCVBUF bytes for the server's producer socket (0 = OS default)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, run 1->1 flat out once more per --layers value under cProfile and "
        "print the top functions",
    )
    parser.add_argument("--profile-top", type=int, default=10, help="functions to list")
    args = parser.parse_args(argv)
    if not 0.5 <= args.duration <= 30 or not 0 <= args.warmup <= 10:
        parser.error("--duration must be 0.5..30 s and --warmup 0..10 s")
    if not 1 <= args.repeat <= 10:
        parser.error("--repeat must be 1..10")
    if any(f < 1 or f > 50 for f in args.fanout):
        parser.error("--fanout values must be 1..50")
    if any(n not in (1, 2, 3) for n in args.layers):
        parser.error("--layers values must be 1, 2 or 3")
    if len(args.simulcast_mix) != 3 or any(not 1 <= n <= 40 for n in args.simulcast_mix):
        parser.error("--simulcast-mix must be three packet counts, each 1..40")
    args.simulcast_mix = tuple(args.simulcast_mix)
    return args


async def _client_main(conn: Connection, args: argparse.Namespace) -> int:
    from media.aiortc_bridge import RTCCertificate

    control = _Control(conn)
    certificate = RTCCertificate.generateCertificate()
    scenarios = [
        (fanout, rate, layers)
        for layers in args.layers
        for fanout in args.fanout
        for rate in args.rate
    ]
    if args.target_rate > 0 and (1, args.target_rate, 1) not in scenarios:
        scenarios.append((1, args.target_rate, 1))
    results: list[Result] = []
    failures = 0
    try:
        _print_header()
        # Repeats run round-robin, so slow drifts of a shared machine hit every scenario alike.
        for fanout, rate, layers in [sc for _ in range(args.repeat) for sc in scenarios]:
            try:
                result, _ = await _run_scenario(
                    control,
                    certificate,
                    fanout=fanout,
                    rate=rate,
                    layers=layers,
                    mix=args.simulcast_mix,
                    warmup=args.warmup,
                    duration=args.duration,
                )
            except RuntimeError as exc:
                failures += 1
                print(f"1->{fanout} x{layers} @{rate or 'max'}: FAILED: {exc}", flush=True)
                continue
            results.append(result)
            _print_row(result)
        print()
        if results:
            print(
                f"SRTP profile {results[0].srtp_profile}; RTP packets of {PAYLOAD_SIZE} payload "
                "bytes + 20-byte header with a one-byte MID extension; 'cpu%' is the server "
                f"process, 'core0%' everything core {SERVER_CORE} did"
            )
            bad = [e for r in results for e in r.verify_errors]
            checked = sum(r.verified for r in results)
            print(
                f"Receivers decrypted and checked {checked} forwarded packets (consumer SSRC "
                f"and PT, MID padded out, payload intact): {'OK' if not bad else bad[0]}"
            )
        medians: list[Result] = []
        for fanout, rate, layers in scenarios:
            runs = [r for r in results if (r.fanout, r.rate, r.layers) == (fanout, rate, layers)]
            if runs:
                median = _median(runs)
                medians.append(median)
                print(_summary_line(median, runs))
        print(_verdict([r for r in medians if r.layers == 1]), flush=True)
        _print_simulcast_comparison(medians, results, args.simulcast_mix)
        for layers in args.layers if args.profile else []:
            result, text = await _run_scenario(
                control,
                certificate,
                fanout=1,
                rate=0,
                layers=layers,
                mix=args.simulcast_mix,
                warmup=args.warmup,
                duration=args.duration,
                profile=True,
                profile_top=args.profile_top,
            )
            what = f"{layers}-layer simulcast" if layers > 1 else "1 encoding"
            print(
                f"\ncProfile of the server process, 1->1 {what} flat out, top {args.profile_top} "
                "functions by tottime (profiling slows it down; the run under cProfile: "
                f"{result.forwarded:,.0f} fwd/s, {result.us_per_forwarded:.2f} us/fwd)"
            )
            print(_trim_profile(text), flush=True)
    finally:
        with contextlib.suppress(Exception):
            await control.call("quit", timeout=5.0)
    return 1 if failures else 0


def _print_simulcast_comparison(
    medians: list[Result], results: list[Result], mix: tuple[int, ...]
) -> None:
    """Single-encoding and simulcast figures side by side, per fan-out (flat out).

    Besides the ratio of the medians, the median of each repeat's own ratio: the
    repeats run round-robin, so a repeat's two runs are seconds apart and this
    VM's drift (its speed varies by tens of percent within minutes) cancels out.
    """
    flat = [r for r in medians if r.rate <= 0]
    pairs = [
        (one, sim)
        for one in flat
        if one.layers == 1
        for sim in flat
        if sim.layers > 1 and sim.fanout == one.fanout
    ]
    if not pairs:
        return
    shown = "/".join(str(n) for n in mix)
    print(
        f"\nSimulcast (r0/r1/r2 packets per frame {shown}; every consumer forwards r2, so "
        "the lower layers are received and parsed but not forwarded):"
    )
    print(
        f"{'fan-out':<9}{'1 enc fwd/s/core':>18}{'us/fwd':>8}{'us/in':>8}"
        f"{'sim fwd/s/core':>16}{'us/fwd':>8}{'us/in':>8}{'sim/1 enc':>11}{'paired':>14}"
    )
    for one, sim in pairs:
        ratio = sim.us_per_forwarded / one.us_per_forwarded
        runs = [
            [r for r in results if r.rate <= 0 and r.fanout == one.fanout and r.layers == n]
            for n in (one.layers, sim.layers)
        ]
        paired = statistics.median(
            s.us_per_forwarded / o.us_per_forwarded for o, s in zip(*runs, strict=False)
        )
        verdict = "ok" if paired <= SIMULCAST_COST_TARGET else "over"
        print(
            f"{'1->' + str(one.fanout):<9}{one.per_core:>18,.0f}{one.us_per_forwarded:>8.2f}"
            f"{one.us_per_inbound:>8.2f}{sim.per_core:>16,.0f}{sim.us_per_forwarded:>8.2f}"
            f"{sim.us_per_inbound:>8.2f}{ratio:>10.2f}x{paired:>8.2f}x {verdict}",
            flush=True,
        )
    print(
        f"(target: a forwarded simulcast packet costs at most {SIMULCAST_COST_TARGET}x a "
        "single-encoding one, judged on 'paired', the median of each repeat's ratio; us/in "
        "is per packet the server received)",
        flush=True,
    )


def _trim_profile(text: str) -> str:
    """pstats output without its preamble of blank and 'Ordered by' lines."""
    lines = [line.rstrip() for line in text.splitlines()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    summary = next((line.strip() for line in lines if "function calls" in line), "")
    return "\n".join([summary, *[line for line in lines[start:] if line]])


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    context = multiprocessing.get_context("spawn")
    parent_conn, child_conn = context.Pipe()
    server = context.Process(
        target=server_main,
        args=(child_conn, SERVER_CORE, args.server_rcvbuf),
        name="bench-sfu-server",
        daemon=True,
    )
    server.start()
    child_conn.close()
    client_core = _pin(CLIENT_CORE)
    print(
        f"bench_sfu: server pid {server.pid} on core {SERVER_CORE}, clients on core "
        f"{client_core} (cores available: {cores}); uvloop {_version('uvloop')}, "
        f"Python {sys.version.split()[0]}; {args.duration:g} s per scenario after "
        f"{args.warmup:g} s warm-up",
        flush=True,
    )
    if client_core == SERVER_CORE:
        print("warning: only one core available; server and clients share it", flush=True)
    code = 1
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            code = runner.run(_client_main(parent_conn, args))
    finally:
        server.join(5.0)
        if server.is_alive():
            server.terminate()
            server.join(5.0)
        if server.is_alive():
            server.kill()
            server.join()
    return code


if __name__ == "__main__":
    sys.exit(main())
