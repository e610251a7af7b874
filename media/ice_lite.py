"""ICE-lite responder (RFC 8445 section 2.5) with consent tracking (RFC 7675).

Sans-I/O: ``handle_binding`` takes the raw STUN datagram, the path it came
by and ``now``, and returns the bytes to send back and what changed.  A path
is a UDP source address, or an ICE-TCP connection (RFC 6544; any object with
a ``remote_address``, compared by identity): the agent selects either kind the
same way, and never takes one for the other.  The server
never sends checks of its own: as in mediasoup, the full-ICE client nominates a
pair with USE-CANDIDATE and keeps consent alive by repeating its checks
(RFC 7675 section 5.1: every 5 s +/- 20 %).  A consent deadline that passes
with no authenticated check means the client is gone -- unless the server
itself was not running when it passed (``ConsentWatch``).
"""

from __future__ import annotations

import enum
import secrets
import struct
from dataclasses import dataclass
from typing import Protocol

from aioice import stun

Address = tuple[str, int]
"""A UDP path: the client's (ip, port)."""


class StreamPath(Protocol):
    """A connection-oriented path (an ICE-TCP connection): equal only to itself."""

    @property
    def remote_address(self) -> Address: ...


Path = Address | StreamPath


class IceState(enum.Enum):
    NEW = "new"
    CONNECTED = "connected"  # a valid check arrived; a tuple is usable
    COMPLETED = "completed"  # the client nominated a tuple (USE-CANDIDATE)
    DISCONNECTED = "disconnected"  # consent expired
    CLOSED = "closed"


class IceChange(enum.Enum):
    NONE = 0
    TUPLE_SELECTED = 1  # state moved, or the selected tuple moved


@dataclass(frozen=True, slots=True)
class BindingResult:
    response: bytes | None
    change: IceChange
    error: Exception | None = None
    """Why the datagram was not a STUN message at all (the caller counts it)."""
    authenticated: bool = False
    """A binding request with valid credentials: the path is a proven one."""


def _random_token(length: int) -> str:
    # ice-char is ALPHA / DIGIT / "+" / "/" (RFC 8839 section 5.4); hex is a subset.
    return secrets.token_hex(length)[:length]


class IceLiteServer:
    """The ICE agent of one WebRtcTransport."""

    __slots__ = (
        "_password_key",
        "_previous",
        "consent_timeout",
        "last_consent",
        "password",
        "selected_tuple",
        "state",
        "username_fragment",
    )

    def __init__(self, consent_timeout: float) -> None:
        self.consent_timeout = consent_timeout
        self.state = IceState.NEW
        self.selected_tuple: Path | None = None
        self.last_consent: float | None = None
        self.username_fragment = ""
        self.password = ""
        self._password_key = b""
        self._previous: tuple[str, bytes] | None = None
        self.restart()

    def restart(self) -> None:
        """New credentials (``restartIce``).

        As mediasoup does, the previous credentials stay valid until the
        client's first check with the new ones: checks already in flight, or
        from a client that has not applied the restart yet, keep consent.
        """
        if self.username_fragment:
            self._previous = (self.username_fragment, self._password_key)
        self.username_fragment = _random_token(16)
        self.password = _random_token(32)
        self._password_key = self.password.encode()

    @property
    def parameters(self) -> dict[str, object]:
        return {
            "usernameFragment": self.username_fragment,
            "password": self.password,
            "iceLite": True,
        }

    def consent_deadline(self) -> float | None:
        """When consent expires unless another check arrives (None: not started)."""
        if self.last_consent is None or self.state in (IceState.DISCONNECTED, IceState.CLOSED):
            return None
        return self.last_consent + self.consent_timeout

    def consent_expired(self, now: float) -> bool:
        deadline = self.consent_deadline()
        if deadline is None or now < deadline:
            return False
        self.state = IceState.DISCONNECTED
        return True

    def close(self) -> None:
        self.state = IceState.CLOSED

    def path_lost(self, path: Path) -> bool:
        """A connection-oriented path went away: if it was the selected one,
        nothing is selected any more (``disconnected``, as when consent expires:
        the next authenticated check, on any path, selects its path).
        Returns whether the selected path was lost."""
        if self.selected_tuple is None or self.selected_tuple != path:
            return False
        self.selected_tuple = None
        if self.state is not IceState.CLOSED:
            self.state = IceState.DISCONNECTED
        return True

    def handle_binding(self, data: bytes, addr: Path, now: float) -> BindingResult:
        """Answer one inbound STUN message (already known to start with 0-3).

        ``addr`` is the path it came by: a UDP address, or an ICE-TCP connection
        (whose ``remote_address`` goes in XOR-MAPPED-ADDRESS).
        """
        if self.state is IceState.CLOSED:
            return BindingResult(None, IceChange.NONE)
        try:
            message = stun.parse_message(data)
        except (ValueError, struct.error) as exc:
            # aioice raises ValueError for framing and struct.error for an
            # attribute of the wrong size (a 2-byte PRIORITY): both are garbage
            # from the network, never a reason to raise out of the UDP callback.
            return BindingResult(None, IceChange.NONE, exc)
        if message.message_class is not stun.Class.REQUEST:
            # Indications and responses: a lite agent sends no requests to answer.
            return BindingResult(None, IceChange.NONE)
        if message.message_method is not stun.Method.BINDING:
            return BindingResult(self._error(message, 400, "Bad Request"), IceChange.NONE)
        username = message.attributes.get("USERNAME")
        if username is None or "MESSAGE-INTEGRITY" not in message.attributes:
            return BindingResult(self._error(message, 400, "Bad Request"), IceChange.NONE)
        local_ufrag, _, _ = str(username).partition(":")
        if local_ufrag == self.username_fragment:
            key = self._password_key
        elif self._previous is not None and local_ufrag == self._previous[0]:
            key = self._previous[1]
        else:
            return BindingResult(self._error(message, 401, "Unauthenticated"), IceChange.NONE)
        if not message.check_message_integrity(key):
            return BindingResult(self._error(message, 401, "Unauthenticated"), IceChange.NONE)
        if key is self._password_key:
            self._previous = None  # the client has moved to the new credentials
        if "ICE-CONTROLLED" in message.attributes:
            # A lite agent is always controlled (RFC 8445 section 6.1.1): the
            # peer must take the controlling role, whatever its tie-breaker.
            return BindingResult(
                self._error(message, 487, "Role Conflict", key=key), IceChange.NONE
            )

        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=message.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = (
            addr if isinstance(addr, tuple) else addr.remote_address
        )
        response.add_message_integrity(key)

        # Every authenticated check is a consent refresh (RFC 7675 section 5.1).
        self.last_consent = now
        change = IceChange.NONE
        nominated = "USE-CANDIDATE" in message.attributes
        if self.state is IceState.NEW or self.state is IceState.DISCONNECTED:
            self.state = IceState.COMPLETED if nominated else IceState.CONNECTED
            self.selected_tuple = addr
            change = IceChange.TUPLE_SELECTED
        elif nominated and (self.state is IceState.CONNECTED or addr != self.selected_tuple):
            self.state = IceState.COMPLETED
            self.selected_tuple = addr
            change = IceChange.TUPLE_SELECTED
        return BindingResult(bytes(response), change, authenticated=True)

    @staticmethod
    def _error(request: stun.Message, code: int, reason: str, key: bytes | None = None) -> bytes:
        response = stun.Message(
            message_method=request.message_method,
            message_class=stun.Class.ERROR,
            transaction_id=request.transaction_id,
        )
        response.attributes["ERROR-CODE"] = (code, reason)
        if key is not None:
            # RFC 8489 section 9.1.3: responses to an authenticated request are signed
            # (add_message_integrity also adds FINGERPRINT).
            response.add_message_integrity(key)
        else:
            response.add_fingerprint()
        return bytes(response)


class ConsentWatch:
    """Decides, each time the consent timer fires, whether the client is gone.

    RFC 7675 section 5.1 expires consent when no check arrived for the
    timeout.  That presumes the server was listening all along: after a
    stall of its own (SIGSTOP, swap, a blocked event loop) the timer fires
    late, and with uvloop timers run before the socket is read, so the checks
    the client kept sending are still queued, unread.  A timer that fires
    more than ``stall_tolerance`` seconds late therefore means the server lost
    that time: instead of expiring, look again after ``resync_window``
    seconds (one client check interval, 5 s + 20 %), judging on what arrived
    by then.  ``stall_tolerance=None`` switches this off.

    Sans-I/O, like ``IceLiteServer``: the transport arms a timer for ``due``
    and calls ``fired(now)`` when it runs.
    """

    __slots__ = ("_ice", "due", "resync_window", "stall_tolerance", "stalls")

    def __init__(
        self, ice: IceLiteServer, *, stall_tolerance: float | None, resync_window: float
    ) -> None:
        if stall_tolerance is not None and stall_tolerance < 0:
            raise ValueError("stall_tolerance must not be negative")
        if resync_window <= 0:
            raise ValueError("resync_window must be positive")
        self._ice = ice
        self.stall_tolerance = stall_tolerance
        self.resync_window = resync_window
        self.due: float | None = None
        self.stalls = 0

    def start(self) -> float | None:
        """When to fire first: the consent deadline (None: no consent yet)."""
        self.due = self._ice.consent_deadline()
        return self.due

    def fired(self, now: float) -> float | None:
        """The timer set for ``due`` ran at ``now``: when to run next.

        None means stop: consent expired (the agent is now ``disconnected``)
        or there is nothing left to watch (closed).
        """
        due, self.due = self.due, None
        deadline = self._ice.consent_deadline()
        if deadline is None:
            return None
        if now < deadline:
            # A check arrived since the timer was armed (re-armed lazily).
            self.due = deadline
            return deadline
        tolerance = self.stall_tolerance
        if tolerance is not None and due is not None and now - due > tolerance:
            self.stalls += 1
            self.due = now + self.resync_window
            return self.due
        self._ice.consent_expired(now)
        return None
