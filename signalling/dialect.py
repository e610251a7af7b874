"""The two protoo dialects of mediasoup-demo, translated at the edge.

mediasoup-demo's server was rewritten in TypeScript in 2025
(``server/src/signaling/protooMessages.ts``).  The method names stayed, the
shapes did not: responses name their ids (``{producerId}`` instead of
``{id}``) and wrap bare values (``{routerRtpCapabilities}``, ``{stats}``),
``newPeer`` wraps ``{peer}``, server requests carry ``transportId``, and the
calls that need no answer (pause, resume, close, preferred layers...) became
notifications.  ghostless serves both, from one set of handlers
(``signalling.rooms.Room``).

The handlers speak the *canonical* shapes: the 2024 dialect (``lib/Room.js``,
docs/protocol.md), plus a few fields and events only the 2025 dialect shows
(``transportId`` and ``consumerScore`` in ``newConsumer``, ``speakingPeers``,
``dominantSpeaker``).  A ``Dialect`` turns what the client sent into canonical
data and canonical output into what the client expects; it is pure (no I/O,
no state), so one instance serves every connection of its dialect.

Which dialect a connection speaks is decided once, from its URL (``select``):

1. ``dialect=2024`` or ``dialect=2025`` (a ghostless parameter) decides;
2. otherwise a ``usePipeTransports`` parameter means 2025: the 2025 app builds
   its URL from ``{roomId, peerId, consumerReplicas, usePipeTransports}`` and
   always sends that boolean, the 2024 app never does;
3. otherwise 2024.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import Any

Json = dict[str, Any]

# Canonical events that not every dialect shows.
SPEAKING_PEERS = "speakingPeers"
"""``{peerVolumes: [{peerId, volume}]}``, every interval while someone speaks (2025 only)."""
DOMINANT_SPEAKER = "dominantSpeaker"
"""``{peerId}`` when the loudest speaker changes: the 2025 ``activeSpeaker``."""
MEDIASOUP_VERSION = "mediasoupVersion"
"""``{version}``, sent once when a 2025 connection opens."""
DOWNLINK_BWE = "downlinkBwe"
"""The 2024 server's bandwidth estimate notification; the 2025 server has none."""


def _server_version() -> str:
    try:
        return f"ghostless {importlib.metadata.version('ghostless')}"
    except importlib.metadata.PackageNotFoundError:
        return "ghostless"


class Dialect:
    """The 2024 dialect: the canonical shapes, minus what only 2025 clients get."""

    name = "2024"
    commands: frozenset[str] = frozenset()
    """Notifications from the client that run a handler (and get no answer)."""

    _HIDDEN_EVENTS = frozenset({SPEAKING_PEERS, DOMINANT_SPEAKER, MEDIASOUP_VERSION})
    _EXTRA_KEYS = frozenset({"transportId", "consumerScore"})

    def __repr__(self) -> str:
        return f"<Dialect {self.name}>"

    def greetings(self) -> list[tuple[str, Json]]:
        """Notifications sent when a connection opens."""
        return []

    def request(self, method: str, data: Json) -> Json:
        """A client request's data, in canonical shape.

        Raises ValueError (a 400 answer, its text the reason) for data that
        cannot be translated.
        """
        return data

    def response(self, method: str, result: Any) -> Any:
        """A handler's result, as this dialect answers ``method``."""
        return {} if result is None else result

    def notification(self, method: str, data: Any) -> tuple[str, Any] | None:
        """A canonical notification as this dialect sends it (None: not sent)."""
        if method in self._HIDDEN_EVENTS:
            return None
        return method, data

    def server_request(self, method: str, data: Json) -> Json:
        """A canonical server request (``newConsumer``...) as this dialect sends it."""
        return {key: value for key, value in data.items() if key not in self._EXTRA_KEYS}


# -- the 2025 dialect (protooMessages.ts) ------------------------------------------------

# Responses whose one id field is named after what it identifies.
_ID_RENAMES = {
    "createWebRtcTransport": "transportId",
    "produce": "producerId",
    "produceData": "dataProducerId",
}
# Responses that wrap the canonical value in an object.
_WRAPPED = {
    "getRouterRtpCapabilities": "routerRtpCapabilities",
    "restartIce": "iceParameters",
    "getTransportStats": "stats",
    "getProducerStats": "stats",
    "getConsumerStats": "stats",
    "getDataProducerStats": "stats",
    "getDataConsumerStats": "stats",
}
_DIRECTIONS = {"producer": (True, False), "consumer": (False, True)}


def _serialized_peer(info: Json) -> Json:
    """``{id, ...}`` -> the 2025 ``SerializedPeer`` ``{peerId, ...}``.

    (mediasoup-demo also sends the peer's ``remoteAddress``; ghostless does not
    disclose one peer's IP address to the others.)
    """
    return {"peerId": info.get("id"), **{k: v for k, v in info.items() if k != "id"}}


class Dialect2025(Dialect):
    """The 2025 TypeScript rewrite's dialect."""

    name = "2025"
    commands = frozenset(
        {
            "closeProducer",
            "pauseProducer",
            "resumeProducer",
            "pauseConsumer",
            "resumeConsumer",
            "setConsumerPreferredLayers",
            "setConsumerPriority",
            "requestConsumerKeyFrame",
            "changeDisplayName",
        }
    )

    def __init__(self, version: str | None = None) -> None:
        self.version = version or _server_version()

    def greetings(self) -> list[tuple[str, Json]]:
        return [(MEDIASOUP_VERSION, {"version": self.version})]

    def request(self, method: str, data: Json) -> Json:
        if method != "createWebRtcTransport" or "appData" not in data:
            return data
        # {appData: {direction}} says what {producing, consuming} said.
        app_data = data.get("appData")
        direction = app_data.get("direction") if isinstance(app_data, dict) else None
        flags = _DIRECTIONS.get(direction) if isinstance(direction, str) else None
        if flags is None:
            raise ValueError("appData.direction must be producer or consumer")
        producing, consuming = flags
        return {**data, "producing": producing, "consuming": consuming}

    def response(self, method: str, result: Any) -> Any:
        wrapper = _WRAPPED.get(method)
        if wrapper is not None:
            return {wrapper: result}
        renamed = _ID_RENAMES.get(method)
        if renamed is not None and isinstance(result, dict):
            return {renamed: result.get("id"), **{k: v for k, v in result.items() if k != "id"}}
        if method == "join" and isinstance(result, dict):
            return {**result, "peers": [_serialized_peer(p) for p in result.get("peers", [])]}
        return {} if result is None else result

    def notification(self, method: str, data: Any) -> tuple[str, Any] | None:
        if method == "newPeer":
            return method, {"peer": _serialized_peer(data)}
        if method == "activeSpeaker":
            # The 2025 activeSpeaker is the dominant speaker; on silence it
            # carries no peerId (``{peerId: undefined}`` in JSON).
            return (method, {}) if data.get("peerId") is None else None
        if method == DOMINANT_SPEAKER:
            return "activeSpeaker", {"peerId": data.get("peerId")}
        if method == "consumerLayersChanged":
            return method, _layers_2025(data)
        if method == DOWNLINK_BWE:
            return None
        return method, data

    def server_request(self, method: str, data: Json) -> Json:
        # ``id`` becomes ``consumerId`` / ``dataConsumerId``.
        renamed = {"newConsumer": "consumerId", "newDataConsumer": "dataConsumerId"}.get(method)
        if renamed is None:
            return data
        return {renamed: data.get("id"), **{k: v for k, v in data.items() if k != "id"}}


def _layers_2025(data: Json) -> Json:
    """``{consumerId, spatialLayer, temporalLayer}`` -> ``{consumerId, layers?}``."""
    spatial, temporal = data.get("spatialLayer"), data.get("temporalLayer")
    out: Json = {"consumerId": data.get("consumerId")}
    if spatial is not None:
        out["layers"] = (
            {"spatialLayer": spatial}
            if temporal is None
            else {"spatialLayer": spatial, "temporalLayer": temporal}
        )
    return out


DIALECT_2024 = Dialect()
DIALECT_2025 = Dialect2025()
DIALECTS: dict[str, Dialect] = {d.name: d for d in (DIALECT_2024, DIALECT_2025)}

SELECTOR = "dialect"
"""The URL parameter that names a dialect explicitly."""
PIPE_TRANSPORTS = "usePipeTransports"
"""Sent by the 2025 app on every connection, never by the 2024 one."""


def select(query: Mapping[str, Sequence[str]]) -> Dialect:
    """The dialect a connection speaks, from its URL query (``parse_qs`` shape).

    Raises ValueError for an explicit ``dialect`` that names no dialect.
    """
    explicit = query.get(SELECTOR)
    if explicit:
        dialect = DIALECTS.get(explicit[0])
        if dialect is None:
            raise ValueError(f"unknown dialect {explicit[0][:16]!r}")
        return dialect
    if PIPE_TRANSPORTS in query:
        return DIALECT_2025
    return DIALECT_2024


__all__ = [
    "DIALECTS",
    "DIALECT_2024",
    "DIALECT_2025",
    "DOMINANT_SPEAKER",
    "DOWNLINK_BWE",
    "MEDIASOUP_VERSION",
    "SPEAKING_PEERS",
    "Dialect",
    "Dialect2025",
    "select",
]
