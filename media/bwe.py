"""Bandwidth estimation: what a client can send us, and what we can send it.

Each ``WebRtcTransport`` runs two loops, both sans-I/O here (fed with ``now``,
the event loop's clock, they return decisions; the transport does the I/O):

Uplink, the client's producers -> us (``IncomingBitrateEstimator``)
    libwebrtc's receive-side, delay-based estimator, as mediasoup's REMB
    server runs it: packets carrying Google's abs-send-time extension are
    grouped by send time (5 ms groups); between consecutive groups the growth
    of arrival spacing over send spacing feeds a Kalman filter and an
    adaptive-threshold overuse detector (``DelayGradientDetector``, which
    decides exactly as aiortc's port of libwebrtc's, with plain floats), and
    aiortc's AIMD controller turns "normal / overusing / underusing" plus the
    measured incoming bitrate into an estimate (+8 %/s while normal, at most
    1.5 x incoming; 0.85 x incoming on overuse).  A timed packet costs a few
    integer operations, a group a few microseconds, and packets read in the
    same event loop iteration are counted but not timed
    (``TIMING_RESOLUTION``).  The estimate goes back to the client as REMB
    (draft-alvestrand-rmcat-remb-03) about once a second, and at once when it
    drops by 3 % or more (libwebrtc's rule).  Chrome trusts REMB during its
    first two seconds, so an initial estimate lets it start high instead of
    creeping up from 300 kbit/s at 8 %/s.

Downlink, our consumers -> the client (``OutgoingBitrateEstimator``)
    No transport-cc, so: the REMB the client sends about what it receives
    (its receive-side estimator times our abs-send-time, which every video
    packet carries: ``media.rtp_stream``), and, when it sends none,
    libwebrtc's send-side loss controller on its receiver reports (loss < 2 %:
    +8 %/s; 2-10 %: hold; > 10 %: x (1 - loss/2), at most every 300 ms), from
    an initial bitrate and never below a floor.  A receiver's first REMB is
    made of padding (``StartupProbe``, then ``PaddingBudget`` up to the
    estimate for up to ``WARMUP``), sent by the transport.

Sharing it (``allocate_bitrate``, ``BitrateDistributor``)
    mediasoup's ``Transport::DistributeAvailableOutgoingBitrate`` in a
    simplified form: weighted by priority, each consumer gets up to its desired
    bitrate (a consumer that does not know its desired bitrate takes an equal
    share of what is left) and then a share of what nobody wanted, re-done
    when the estimate moves and at most about once a second, and reported as
    mediasoup's ``trace`` event of type ``bwe``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .aiortc_bridge import AimdRateControl, BandwidthUsage

# -- abs-send-time arithmetic ------------------------------------------------------------

AST_UNITS_PER_SECOND = 1 << 18
"""abs-send-time is 24 bits of 6.18 fixed-point seconds: it wraps every 64 s."""
_AST_MS = 1000 / AST_UNITS_PER_SECOND

GROUP_SPAN = 1311  # round(0.005 * AST_UNITS_PER_SECOND), written out in on_packet
"""Packets sent within 5 ms of a group's first one belong to it (libwebrtc's
``kTimestampGroupLengthMs``): a frame's packets, paced out together."""
BURST_WINDOW = 0.005
"""A packet arriving within 5 ms of the previous one, faster than it was sent,
joins its group anyway: it queued behind it (libwebrtc ``BelongsToBurst``)."""
MAX_BURST = 0.1
TIMING_RESOLUTION = 0.0005
"""A packet arriving within 0.5 ms of the last timed one is counted (its bytes
reach ``on_packet`` through the next timed packet's byte total) but not timed:
its send time is not even read.  Packets read in one event loop iteration
share one arrival time (uvloop's clock is per iteration), so timing more
than one of them says nothing new: libwebrtc's burst rule puts them in the
same group whatever their send times.  Light traffic is timed packet by
packet; a saturated server reads packets in batches and times one per batch,
which keeps this estimator's cost at ~1 % of forwarding instead of ~15 %."""
RATE_WINDOW = 1.0
"""Seconds of arrivals the incoming bitrate is measured over."""
MIN_RATE_SPAN = 0.1
"""No incoming bitrate from less than this: a first group says nothing of a rate."""
RATE_SAMPLE = 0.1
"""How often a byte total is kept for the incoming bitrate."""
STREAM_TIMEOUT = 2.0
"""Silence after which timing starts afresh, and an SSRC leaves the REMB list."""
CLOCK_JUMP = 3.0
"""Arrival spacing exceeding send spacing by this much is a clock jump: start afresh."""
FEEDBACK_INTERVAL = 0.5
"""How often the AIMD controller is consulted while the path is not overused."""
REDUCE_INTERVAL = 0.2
"""While overused, at most one further reduction per interval (libwebrtc caps it
at 200 ms, or one round trip when shorter)."""

REMB_INTERVAL = 1.0
REMB_DROP = 0.03

NORMAL = BandwidthUsage.NORMAL
OVERUSING = BandwidthUsage.OVERUSING
UNDERUSING = BandwidthUsage.UNDERUSING


class DelayGradientDetector:
    """libwebrtc's overuse estimator and detector, one timestamp group at a time.

    A Kalman filter tracks how much later each group arrives than the
    previous one, beyond how much later it was sent (the "offset", in ms,
    growing while a queue builds), separating it from the part explained by
    the groups' size difference (the "slope").  The detector compares the
    offset, scaled by the number of deltas seen (up to 60), with a threshold
    that adapts to it (slowly up, faster down, 6..600), and declares overuse
    only when it stays above for more than 10 ms of send time and keeps
    rising.  The same algorithm as aiortc's ``OveruseEstimator`` and
    ``OveruseDetector``, written with plain floats: it runs for every group,
    and their list-of-lists arithmetic was most of a group's cost.
    """

    __slots__ = (
        "_avg_noise",
        "_beta",
        "_beta_alpha",
        "_beta_period",
        "_e00",
        "_e01",
        "_e10",
        "_e11",
        "_history",
        "_last_threshold_update",
        "_min_frame_period",
        "_overuse_count",
        "_overuse_time",
        "_previous_offset",
        "_slope",
        "_var_noise",
        "deltas",
        "offset",
        "threshold",
        "usage",
    )

    def __init__(self) -> None:
        self._e00, self._e01, self._e10, self._e11 = 100.0, 0.0, 0.0, 0.1
        self._slope = 1 / 64
        self.offset = 0.0
        self._previous_offset = 0.0
        self._avg_noise = 0.0
        self._var_noise = 50.0
        self._history: deque[float] = deque(maxlen=60)
        self._min_frame_period = math.inf
        self._beta = self._beta_period = self._beta_alpha = 0.0
        self.deltas = 0
        self.usage = NORMAL
        self.threshold = 12.5
        self._overuse_time = -1.0
        self._overuse_count = 0
        self._last_threshold_update = -1

    def update(self, arrival_ms: float, send_ms: float, size_delta: int, now_ms: int) -> None:
        """Two consecutive groups: arrival and send spacing (ms), size difference (bytes)."""
        # -- the Kalman filter ---------------------------------------------------------
        # The shortest send spacing of the last 60 groups, kept without a scan.
        history = self._history
        evicted = history[0] if len(history) == 60 else math.inf
        history.append(send_ms)
        min_frame_period = self._min_frame_period
        if send_ms <= min_frame_period:
            min_frame_period = self._min_frame_period = send_ms
        elif evicted <= min_frame_period:
            min_frame_period = self._min_frame_period = min(history)
        deltas = self.deltas
        if deltas < 1000:
            deltas = self.deltas = deltas + 1
        usage = self.usage
        offset = self.offset
        e00 = self._e00 + 1e-13  # process noise
        e01, e10 = self._e01, self._e10
        e11 = self._e11 + 1e-3
        if (usage is OVERUSING and offset < self._previous_offset) or (
            usage is UNDERUSING and offset > self._previous_offset
        ):
            e11 += 1e-2  # the state is moving against the hypothesis: trust it less
        h0 = float(size_delta)
        eh0 = e00 * h0 + e01
        eh1 = e10 * h0 + e11
        residual = arrival_ms - send_ms - self._slope * h0 - offset
        if usage is NORMAL:
            clipped = residual
            if residual * residual >= 9.0 * self._var_noise:  # beyond 3 sigma
                clipped = math.copysign(3.0 * math.sqrt(self._var_noise), residual)
            alpha = 0.002 if deltas > 300 else 0.01
            if min_frame_period != self._beta_period or alpha != self._beta_alpha:
                self._beta = (1 - alpha) ** (min_frame_period * 0.03)
                self._beta_period, self._beta_alpha = min_frame_period, alpha
            beta = self._beta
            self._avg_noise = avg = beta * self._avg_noise + (1 - beta) * clipped
            var = beta * self._var_noise + (1 - beta) * (avg - clipped) ** 2
            self._var_noise = var if var > 1.0 else 1.0
        denominator = self._var_noise + h0 * eh0 + eh1
        k0, k1 = eh0 / denominator, eh1 / denominator
        self._e00 = e00 * (1 - k0 * h0) - e10 * k0
        self._e01 = e01 * (1 - k0 * h0) - e11 * k0
        self._e10 = e10 * (1 - k1) - e00 * k1 * h0
        self._e11 = e11 * (1 - k1) - e01 * k1 * h0
        self._slope += k0 * residual
        self._previous_offset = offset
        self.offset = offset = offset + k1 * residual
        # -- the detector --------------------------------------------------------------
        if deltas < 2:
            return
        trend = (deltas if deltas < 60 else 60) * offset
        threshold = self.threshold
        if trend > threshold:
            if self._overuse_time < 0:
                self._overuse_time = send_ms / 2
            else:
                self._overuse_time += send_ms
            self._overuse_count += 1
            if (
                self._overuse_time > 10.0
                and self._overuse_count > 1
                and offset >= self._previous_offset
            ):
                self._overuse_time = 0.0
                self._overuse_count = 0
                self.usage = OVERUSING
        else:
            self._overuse_time = -1.0
            self._overuse_count = 0
            self.usage = UNDERUSING if trend < -threshold else NORMAL
        # The threshold follows |trend| (up slowly, down faster), except for outliers.
        size = trend if trend >= 0 else -trend
        last = self._last_threshold_update
        self._last_threshold_update = now_ms
        if last < 0 or size > threshold + 15.0:
            return
        k = 0.039 if size < threshold else 0.0087
        elapsed = now_ms - last
        threshold += k * (size - threshold) * (elapsed if elapsed < 100 else 100)
        self.threshold = 6.0 if threshold < 6.0 else 600.0 if threshold > 600.0 else threshold


class RembPolicy:
    """When to send REMB: about every ``interval``, and at once on a drop.

    libwebrtc's receiver sends a new REMB right away when the estimate falls
    by ``drop`` (3 %) or more below the last value sent, and otherwise
    regularly; increases wait for the next regular one.
    """

    __slots__ = ("drop", "floor", "interval", "last_bitrate", "last_sent")

    def __init__(self, interval: float = REMB_INTERVAL, drop: float = REMB_DROP) -> None:
        self.interval = interval
        self.drop = drop
        self.last_bitrate: int | None = None
        self.last_sent = -math.inf
        self.floor = math.inf
        """A bitrate at or below this goes out at once (``drop`` below the last sent)."""

    def should_send(self, now: float, bitrate: int) -> bool:
        """Whether to send ``bitrate`` now; if so it counts as sent."""
        if now - self.last_sent >= self.interval or bitrate <= self.floor:
            self.last_bitrate = bitrate
            self.last_sent = now
            self.floor = bitrate * (1 - self.drop)
            return True
        return False


class IncomingBitrateEstimator:
    """What one client can send us, from the abs-send-time of what it sends.

    ``on_packet`` is on the forwarding path: it runs for each timed packet
    (see ``TIMING_RESOLUTION``) and costs a few integer operations unless the
    packet closes a 5 ms group (a few hundred times a second at most).  It
    returns the bitrate to send as REMB now, or None.
    """

    __slots__ = (
        "_aimd",
        "_detector",
        "_g_arrival",
        "_g_first",
        "_g_first_arrival",
        "_g_last",
        "_g_size",
        "_initial",
        "_last_update",
        "_mark",
        "_next_sample",
        "_p_arrival",
        "_p_last",
        "_p_size",
        "_policy",
        "_reordered",
        "_samples",
        "_ssrcs",
        "estimate",
        "max_bitrate",
        "timed_at",
    )

    def __init__(
        self,
        *,
        initial_bitrate: int = 0,
        max_bitrate: int = 0,
        remb_interval: float = REMB_INTERVAL,
        remb_drop: float = REMB_DROP,
    ) -> None:
        self._initial = initial_bitrate
        self.max_bitrate = max_bitrate
        """Cap on what REMB announces (mediasoup's ``maxIncomingBitrate``); 0: none."""
        self.estimate: int | None = None
        """The controller's estimate, bits/s (None until it has one)."""
        self._policy = RembPolicy(remb_interval, remb_drop)
        self._ssrcs: dict[int, float] = {}
        # The group being filled (first/last send time, first/latest arrival,
        # bytes) and the previous complete one; _g_first < 0: no group yet.
        self._g_first = -1
        self._g_last = 0
        self._g_arrival = 0.0
        self._g_first_arrival = 0.0
        self._g_size = 0
        self._p_last = 0
        self._p_arrival = -1.0
        self._p_size = 0
        self._reordered = 0
        self._mark = 0
        self.timed_at = -math.inf
        """Arrival of the last packet passed to ``on_packet``."""
        # (time, byte total) about every RATE_SAMPLE: the incoming bitrate is
        # the difference of totals, so nothing is added up per packet or group.
        self._samples: deque[tuple[float, int]] = deque()
        self._next_sample = -math.inf
        self._last_update = -math.inf
        self._detector = DelayGradientDetector()
        self._aimd = AimdRateControl()

    @property
    def bitrate(self) -> int | None:
        """What REMB announces: the estimate, capped by ``max_bitrate``."""
        estimate = self.estimate
        if estimate is None or not self.max_bitrate:
            return estimate
        return min(estimate, self.max_bitrate)

    @property
    def overusing(self) -> bool:
        return self._detector.usage is OVERUSING

    def on_packet(self, now: float, send_time: int, total_bytes: int, ssrc: int) -> int | None:
        """One timed packet: arrival ``now`` (s), its abs-send-time, and the bytes
        received so far, this packet included (the packets that were not timed
        count through it: see ``TIMING_RESOLUTION``)."""
        size = total_bytes - self._mark
        self._mark = total_bytes
        self.timed_at = now
        self._ssrcs[ssrc] = now
        first = self._g_first
        # Literals, not the module constants: this runs per packet.  1311 is
        # GROUP_SPAN (5 ms of send time); 24-bit differences, half range 0x800000.
        if (send_time - first) & 0xFFFFFF <= 1311 and first >= 0:
            if (send_time - self._g_last) & 0xFFFFFF < 0x800000:
                self._g_last = send_time
            self._g_arrival = now
            self._g_size += size
            return None
        return self._off_group(now, send_time, size)

    def _off_group(self, now: float, send_time: int, size: int) -> int | None:
        """A packet outside the current group: reordered, a burst, or a new group.

        Per group rather than per packet, but still often (every 5 ms of a
        stream): written with locals, the filter inlined in one call.
        """
        first, last, arrival = self._g_first, self._g_last, self._g_arrival
        if first < 0 or now - arrival > STREAM_TIMEOUT:
            self._restart(now, send_time, size)
            return self._maybe_update(now)
        if (send_time - first) & 0xFFFFFF >= 0x800000:
            return None  # sent before the group began: its bytes count (totals), not its timing
        arrival_delta = now - arrival
        if (
            arrival_delta <= BURST_WINDOW
            and arrival_delta * AST_UNITS_PER_SECOND < (send_time - last) & 0xFFFFFF
            and now - self._g_first_arrival < MAX_BURST
        ):
            self._g_last = send_time  # queued behind the group: part of it
            self._g_arrival = now
            self._g_size += size
            return None
        # The group is complete: measure it against the previous one.
        group_size = self._g_size
        p_arrival = self._p_arrival
        if p_arrival >= 0:
            send_ms = ((last - self._p_last) & 0xFFFFFF) * _AST_MS
            arrival_ms = (arrival - p_arrival) * 1000
            if arrival_ms < 0:
                # Arrived before the previous group: reordered in the network.
                self._reordered += 1
                if self._reordered >= 3:
                    self._p_arrival = -1.0
                group_size = -1
            elif arrival_ms - send_ms >= CLOCK_JUMP * 1000:
                self._reordered = 0
                self._p_arrival = -1.0
                group_size = -1
            else:
                self._reordered = 0
                self._detector.update(
                    arrival_ms, send_ms, group_size - self._p_size, int(now * 1000)
                )
        if group_size >= 0:
            self._p_last, self._p_arrival, self._p_size = last, arrival, group_size
        self._g_first = self._g_last = send_time
        self._g_arrival = self._g_first_arrival = now
        self._g_size = size
        if now >= self._next_sample:
            self._next_sample = now + RATE_SAMPLE
            self._samples.append((now, self._mark))
        return self._maybe_update(now)

    def _restart(self, now: float, send_time: int, size: int) -> None:
        """First packet, or the first after a silence: timing starts afresh."""
        if not self._samples:
            size = 0  # what came before the first packet is not this stream
            self._samples.append((now, self._mark))
            self._next_sample = now + RATE_SAMPLE
            if self._initial > 0:
                self._aimd.set_estimate(self._initial, int(now * 1000))
                self.estimate = self._initial
        elif self._g_first >= 0:
            self._detector = DelayGradientDetector()
        self._p_arrival = -1.0
        self._g_first = self._g_last = send_time
        self._g_arrival = self._g_first_arrival = now
        self._g_size = size

    def _maybe_update(self, now: float) -> int | None:
        since = now - self._last_update
        usage = self._detector.usage
        overusing = usage is OVERUSING
        if since > FEEDBACK_INTERVAL or (overusing and since >= REDUCE_INTERVAL):
            incoming = self.incoming_bitrate(now)
            if incoming is not None:
                self._last_update = now
                result = self._aimd.update(usage, incoming, int(now * 1000))
                if result is not None:
                    previous = self.estimate
                    if overusing and previous is not None and result > previous:
                        # 0.85 x incoming can exceed an estimate the sender
                        # stayed below: an overuse must never raise it.
                        result = self._aimd.current_bitrate = previous
                    self.estimate = int(result)
        estimate = self.estimate
        if estimate is None:
            return None
        cap = self.max_bitrate
        bitrate = cap if cap and estimate > cap else estimate
        policy = self._policy
        if now - policy.last_sent < policy.interval and bitrate > policy.floor:
            return None  # the common case, without a call
        return bitrate if policy.should_send(now, bitrate) else None

    def incoming_bitrate(self, now: float) -> int | None:
        """Bits/s received over about the last second (None before a tenth of one).

        From the byte totals of the timed packets: ``now`` should be the
        arrival of the latest one (the next ones are not counted yet).
        """
        samples = self._samples
        horizon = now - RATE_WINDOW
        while len(samples) > 1 and samples[1][0] <= horizon:
            samples.popleft()
        if not samples:
            return None
        since, total = samples[0]
        span = now - since
        if span < MIN_RATE_SPAN:
            return None
        return int((self._mark - total) * 8 / span)

    def set_max_bitrate(self, now: float, max_bitrate: int) -> int | None:
        """Change the cap; return a REMB bitrate to send at once when it lowers it."""
        self.max_bitrate = max_bitrate
        bitrate = self.bitrate
        if bitrate is None or not self._policy.should_send(now, bitrate):
            return None
        return bitrate

    def remb_ssrcs(self, now: float) -> list[int]:
        """The SSRCs heard from recently: what a REMB is about."""
        ssrcs = self._ssrcs
        for ssrc, seen in list(ssrcs.items()):
            if now - seen > STREAM_TIMEOUT:
                del ssrcs[ssrc]
        return list(ssrcs)[:255]


# -- downlink ---------------------------------------------------------------------------

LOSS_LOW = 0.02
LOSS_HIGH = 0.10
INCREASE_PER_SECOND = 1.08
INCREASE_STEP = 1000
"""libwebrtc adds 1 kbit/s to each increase, so a tiny estimate still climbs."""
DECREASE_INTERVAL = 0.3
MIN_REPORTED_PACKETS = 20
"""Loss is acted on once receiver reports cover this many packets (libwebrtc's
``kLimitNumPackets``): one lost packet of three is no signal."""
REMB_TIMEOUT = 3.0
"""A client's REMB counts for this long; browsers send one at least every second."""


class OutgoingBitrateEstimator:
    """What we can send one client: its REMB, else a loss-based estimate.

    ``bitrate`` starts at ``initial_bitrate`` and stays within
    [``min_bitrate``, ``max_bitrate`` (0: no cap)].  A REMB is trusted both
    ways unless the client reports heavy loss (> 10 %); then it can only
    lower the estimate.  Receiver reports drive libwebrtc's send-side
    loss controller: +8 %/s (capped by a recent REMB) under 2 % loss, hold up
    to 10 %, and above that multiply by (1 - loss / 2) at most every 300 ms.
    """

    __slots__ = (
        "_expected",
        "_last_decrease",
        "_last_loss_update",
        "_lost",
        "_remb_at",
        "_reports",
        "bitrate",
        "initial_bitrate",
        "loss",
        "max_bitrate",
        "min_bitrate",
        "remb",
    )

    def __init__(
        self, *, initial_bitrate: int = 600_000, min_bitrate: int = 30_000, max_bitrate: int = 0
    ) -> None:
        self.initial_bitrate = initial_bitrate
        self.min_bitrate = min_bitrate
        self.max_bitrate = max_bitrate
        self.bitrate = self._clamp(initial_bitrate)
        self.remb: int | None = None
        """The latest REMB the client sent (bits/s)."""
        self.loss: float | None = None
        """The latest loss fraction acted on (None before enough reports)."""
        self._remb_at = -math.inf
        self._reports: dict[int, tuple[int, int]] = {}
        self._lost = 0
        self._expected = 0
        self._last_loss_update: float | None = None
        self._last_decrease = -math.inf

    def _clamp(self, bitrate: float) -> int:
        if self.max_bitrate:
            bitrate = min(bitrate, self.max_bitrate)
        return int(max(bitrate, self.min_bitrate))

    def remb_fresh(self, now: float) -> bool:
        return self.remb is not None and now - self._remb_at <= REMB_TIMEOUT

    def on_remb(self, now: float, bitrate: int) -> bool:
        """The client's REMB; return whether the estimate changed.

        Trusted both ways unless its reports show heavy loss (> 10 %): moderate
        loss is no congestion signal here.  A receiver's reports count our
        packets missing when the report is written, and through an SFU that
        includes what the sender's own uplink lost and has not repaired yet;
        and a REMB going up means the receiver measured no queue building.
        """
        self.remb, self._remb_at = bitrate, now
        lossy = self.loss is not None and self.loss > LOSS_HIGH
        return self._set(min(self.bitrate, bitrate) if lossy else bitrate)

    def on_report_block(self, ssrc: int, highest_seq: int, cumulative_lost: int) -> None:
        """One report block about one of our streams (RFC 3550 section 6.4.1).

        Loss over the interval is the difference of cumulative lost and of
        extended highest sequence numbers between two reports (section 6.4.4);
        the first report of a stream is the baseline.
        """
        previous = self._reports.get(ssrc)
        self._reports[ssrc] = (highest_seq, cumulative_lost)
        if previous is None:
            return
        expected = (highest_seq - previous[0]) & 0xFFFFFFFF
        if expected == 0 or expected >= 0x80000000:
            return  # nothing new, or an older report arriving late
        self._expected += expected
        self._lost += max(0, min(expected, cumulative_lost - previous[1]))

    def on_reports(self, now: float) -> bool:
        """The report blocks of one RTCP packet are in; return whether the estimate changed."""
        if self._last_loss_update is None:
            self._last_loss_update = now  # increases are timed from the first report
        if self._expected < MIN_REPORTED_PACKETS:
            return False
        loss = self._lost / self._expected
        self._lost = self._expected = 0
        self.loss = loss
        elapsed = now - self._last_loss_update
        self._last_loss_update = now
        bitrate: float = self.bitrate
        if loss < LOSS_LOW:
            elapsed = min(max(elapsed, 0.0), 1.0)
            bitrate = bitrate * INCREASE_PER_SECOND**elapsed + INCREASE_STEP * elapsed
            if self.remb_fresh(now) and self.remb is not None:
                bitrate = min(bitrate, max(self.remb, self.bitrate))
        elif loss > LOSS_HIGH and now - self._last_decrease >= DECREASE_INTERVAL:
            self._last_decrease = now
            bitrate = bitrate * (1 - 0.5 * loss)
        return self._set(bitrate)

    def _set(self, bitrate: float) -> bool:
        new = self._clamp(bitrate)
        changed = new != self.bitrate
        self.bitrate = new
        return changed

    def set_limits(self, *, min_bitrate: int | None = None, max_bitrate: int | None = None) -> bool:
        if min_bitrate is not None:
            self.min_bitrate = min_bitrate
        if max_bitrate is not None:
            self.max_bitrate = max_bitrate
        return self._set(self.bitrate)

    def forget_streams(self, keep: set[int]) -> None:
        """Drop the report baselines of streams no longer sent."""
        for ssrc in [s for s in self._reports if s not in keep]:
            del self._reports[ssrc]


@dataclass(frozen=True, slots=True)
class Demand:
    """One consumer's claim on the outgoing bitrate."""

    priority: int = 1
    """mediasoup's consumer priority (1..255); 0 or less: it gets nothing."""
    desired: int | None = None
    """The bitrate of its preferred layer, bits/s; None: unknown."""


def allocate_bitrate(available: int, demands: Sequence[Demand]) -> list[int]:
    """Share ``available`` bits/s: weighted by priority, each up to its desire first.

    Water filling: every consumer still wanting more gets a share of what is
    left in proportion to its priority; a consumer whose desired bitrate fits
    within its share takes just that and the rest is shared again.  One whose
    desire is unknown is never satisfied, so it takes its weighted share of
    whatever the others leave.  What is left once every desire is met is
    shared too, by priority, as headroom: a consumer's allocation is a cap,
    and one equal to its desire (a peak measured up to a second ago) would
    cap it as soon as its layers grow a little.
    """
    allocations = [0] * len(demands)
    takers = [i for i, d in enumerate(demands) if d.priority > 0]
    wanting = takers
    remaining = float(max(0, available))
    while wanting and remaining > 0:
        per_weight = remaining / sum(demands[i].priority for i in wanting)
        satisfied = [
            i
            for i in wanting
            if (desired := demands[i].desired) is not None
            and desired <= per_weight * demands[i].priority
        ]
        if not satisfied:
            for i in wanting:
                allocations[i] = int(per_weight * demands[i].priority)
            return allocations
        for i in satisfied:
            desired = demands[i].desired
            assert desired is not None
            allocations[i] = max(0, desired)
            remaining -= allocations[i]
        wanting = [i for i in wanting if i not in satisfied]
    if takers and remaining > 0:
        per_weight = remaining / sum(demands[i].priority for i in takers)
        for i in takers:
            allocations[i] += int(per_weight * demands[i].priority)
    return allocations


# -- probing the downlink ---------------------------------------------------------------

PROBE_PADDING = 255
"""Padding bytes in a probe packet: the most one RTP packet's padding can be
(RFC 3550 section 5.1: the last byte counts them)."""
PROBE_PACKETS = 10
PROBE_INTERVAL = 0.001
"""A millisecond apart: libwebrtc's receiver counts a spacing as a probe's only
from 1 ms (``kMinClusterDelta``), and a padding packet carries 2,040 bits, so a
cluster says up to about 2 Mbit/s."""
PROBE_CLUSTERS = 3
PROBE_CLUSTER_GAP = 0.2


class StartupProbe:
    """The padding a receiver's first downlink estimate is made of.

    A browser that gets our abs-send-time estimates what reaches it with
    libwebrtc's receive-side estimator, which says nothing for its first
    5 s and then starts from what it received then, growing 8 %/s at most
    and never beyond 1.5 x what it receives.  It has one shortcut: in its
    first 2 s (``kInitialProbingInterval``), a cluster of at least five
    packets over 200 bytes, evenly spaced by a millisecond or more, that
    arrived as fast as it was sent, is a probe, and the rate it was sent at
    becomes the estimate at once.  So a transport's first video is
    preceded (or soon followed) by ``clusters`` such clusters of padding-only
    RTX packets, ``packets`` each, ``interval`` apart, the clusters ``gap``
    apart: a few kilobytes that make the receiver's REMB say megabits within
    a second instead of the media's own rate after five.

    Sans-I/O: ``next_delay()`` after each packet sent gives the seconds until
    the next one, None once finished.
    """

    __slots__ = ("_gap", "_interval", "_left", "_packets", "clusters_left")

    def __init__(
        self,
        *,
        clusters: int = PROBE_CLUSTERS,
        packets: int = PROBE_PACKETS,
        interval: float = PROBE_INTERVAL,
        gap: float = PROBE_CLUSTER_GAP,
    ) -> None:
        self.clusters_left = clusters
        self._packets = packets
        self._left = packets
        self._interval = interval
        self._gap = gap

    def next_delay(self) -> float | None:
        """One packet was sent: seconds until the next one, None when the probe is over."""
        self._left -= 1
        if self._left > 0:
            return self._interval
        self.clusters_left -= 1
        if self.clusters_left <= 0:
            return None
        self._left = self._packets
        return self._gap


PADDING_INTERVAL = 0.02
"""How often padding is topped up, while there is padding to send."""
PADDING_PACKET = PROBE_PADDING + 20
"""Bytes of a padding packet before SRTP: the header, our abs-send-time, the padding."""
WARMUP = 6.0
"""How long a transport pads its video up to the downlink estimate while it waits
for the receiver's first REMB (libwebrtc's receiver starts from what it received
in its first 5 s, unless a probe told it more)."""


class PaddingBudget:
    """How many padding packets top the media up to a target rate: a token bucket.

    Every call adds the target's worth of bytes for the time since the last
    one and takes off the media sent meanwhile; whole packets of what is left
    go out.  Neither credit nor debt is kept beyond two intervals, so a
    burst of media (a key frame) is not paid for with seconds of silence and a
    pause in calls (a busy loop) is not made up for with a burst.
    """

    __slots__ = ("_at", "_credit", "_interval", "_media")

    def __init__(self, interval: float = PADDING_INTERVAL) -> None:
        self._interval = interval
        self._at = -1.0
        self._credit = 0.0
        self._media = 0

    def packets(self, now: float, target: int, media_bytes: int, packet_bytes: int) -> int:
        """Padding packets of ``packet_bytes`` to send now so that what goes out
        reaches ``target`` bits/s; ``media_bytes``: the media sent so far (a total)."""
        if self._at < 0:
            elapsed, self._media = self._interval, media_bytes
        else:
            elapsed = min(max(0.0, now - self._at), 2 * self._interval)
        limit = target / 8 * 2 * self._interval
        credit = self._credit + target / 8 * elapsed - (media_bytes - self._media)
        credit = max(-limit, min(limit, credit))
        self._at, self._media = now, media_bytes
        count = int(credit // packet_bytes) if credit > 0 else 0
        self._credit = credit - count * packet_bytes
        return count


DISTRIBUTE_INTERVAL = 1.0
BIG_DROP = 0.75
BIG_RISE = 1.5
TRACE_INTERVAL = 3.0
TRACE_CHANGE = 0.05
DESIRED_DECAY_PER_SECOND = 0.05
"""The effective desired bitrate follows rises at once and falls 5 %/s (mediasoup's
trend keeps short dips in what consumers want from shrinking the budget)."""


class BitrateDistributor:
    """When to share the outgoing estimate, and when to say so (``trace``).

    Like mediasoup's ``TransportCongestionControlClient``: a new estimate is
    distributed at most every ``interval``, unless it fell below 75 % or rose
    above 150 % of the last one distributed; and at least every ``interval``
    when asked (``due``), so new, resumed or re-prioritised consumers get
    their share.  A trace is due when the estimate moved by 5 % since the
    last trace, or every ``trace_interval``.
    """

    __slots__ = (
        "_effective",
        "_effective_at",
        "_last_distributed",
        "_last_time",
        "_last_trace",
        "_last_traced",
        "interval",
        "trace_interval",
    )

    def __init__(
        self, *, interval: float = DISTRIBUTE_INTERVAL, trace_interval: float = TRACE_INTERVAL
    ) -> None:
        self.interval = interval
        self.trace_interval = trace_interval
        self._last_distributed: int | None = None
        self._last_time = -math.inf
        self._last_traced: int | None = None
        self._last_trace = -math.inf
        self._effective = 0.0
        self._effective_at = 0.0

    def due(self, now: float, available: int) -> bool:
        last = self._last_distributed
        return (
            last is None
            or now - self._last_time >= self.interval
            or available < last * BIG_DROP
            or available > last * BIG_RISE
        )

    def distribute(
        self, now: float, available: int, demands: Sequence[Demand]
    ) -> tuple[list[int], dict[str, Any] | None]:
        """The allocations, and the ``info`` of a bwe trace if one is due."""
        self._last_distributed, self._last_time = available, now
        allocations = allocate_bitrate(available, demands)
        desired = sum(d.desired or 0 for d in demands if d.priority > 0)
        decayed = self._effective * (
            1 - DESIRED_DECAY_PER_SECOND * max(0.0, now - self._effective_at)
        )
        self._effective, self._effective_at = max(float(desired), decayed), now
        last = self._last_traced
        if (
            last is not None
            and now - self._last_trace < self.trace_interval
            and abs(available - last) < last * TRACE_CHANGE
        ):
            return allocations, None
        self._last_traced, self._last_trace = available, now
        return allocations, {
            "desiredBitrate": desired,
            "effectiveDesiredBitrate": int(self._effective),
            "availableBitrate": available,
        }


__all__ = [
    "TIMING_RESOLUTION",
    "BitrateDistributor",
    "DelayGradientDetector",
    "Demand",
    "IncomingBitrateEstimator",
    "OutgoingBitrateEstimator",
    "PaddingBudget",
    "RembPolicy",
    "StartupProbe",
    "allocate_bitrate",
]
