"""H.264 key frame detection from RTP payloads (RFC 6184).

A simulcast consumer may only switch to another encoding where a decoder can
start: an IDR picture preceded by its parameter sets.  Browsers send SPS and
PPS right before every IDR (often aggregated in one STAP-A), so the packet
carrying the SPS is the first packet of a key frame, as mediasoup's H264
codec treats it.  Starting at the IDR slice instead would leave the decoder
without the SPS/PPS of a new resolution.

Only called where a consumer waits for a key frame (a switch or a resume),
never for every packet.
"""

from __future__ import annotations

NAL_SPS = 7
STAP_A = 24
FU_A = 28


def is_key_frame(buf: bytes | bytearray, pos: int, end: int) -> bool:
    """Whether the payload at ``buf[pos:end]`` starts a key frame (carries an SPS)."""
    if pos >= end:
        return False
    nal = buf[pos] & 0x1F
    if nal == NAL_SPS:
        return True
    if nal == STAP_A:
        pos += 1
        while pos + 2 < end:
            size = (buf[pos] << 8) | buf[pos + 1]
            if size == 0 or pos + 2 + size > end:
                return False
            if buf[pos + 2] & 0x1F == NAL_SPS:
                return True
            pos += 2 + size
        return False
    if nal == FU_A and pos + 1 < end:
        header = buf[pos + 1]
        return bool(header & 0x80) and header & 0x1F == NAL_SPS
    return False


__all__ = ["is_key_frame"]
