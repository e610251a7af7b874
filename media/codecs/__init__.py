"""Per-codec payload knowledge the forwarder needs: key frames, VP8 numbering.

Only what switching between simulcast encodings requires; payloads are never
decoded.
"""

from __future__ import annotations

SIMULCAST_MIME_TYPES = frozenset({"video/vp8", "video/h264"})
"""Codecs whose key frames (switch points) the forwarder can recognise."""
