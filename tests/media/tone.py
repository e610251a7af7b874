"""A test audio track that speaks: a steady tone, so its audio level is high.

aiortc measures each frame it sends (RFC 6465 appendix A) and puts the level in
the ``ssrc-audio-level`` header extension; the dummy ``AudioStreamTrack`` reads
silence (-127 dBov), this one a 440 Hz sine at half scale (about -9 dBov).
"""

from __future__ import annotations

import math
import struct

from aiortc.mediastreams import AudioStreamTrack
from av import AudioFrame


class ToneTrack(AudioStreamTrack):
    def __init__(self, frequency: float = 440.0, amplitude: float = 0.5) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude

    async def recv(self) -> AudioFrame:  # type: ignore[override]
        frame = await super().recv()  # paced silence: 20 ms at 8 kHz
        assert isinstance(frame, AudioFrame)
        rate, start = frame.sample_rate, int(frame.pts or 0)
        peak = self.amplitude * 32767
        samples = [
            int(peak * math.sin(2 * math.pi * self.frequency * (start + i) / rate))
            for i in range(frame.samples)
        ]
        frame.planes[0].update(struct.pack(f"<{len(samples)}h", *samples))
        return frame
