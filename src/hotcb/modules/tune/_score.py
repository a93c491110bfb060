"""Scoring a segment, as pure functions over the objective's values.

A segment's *level* is the median of its last half (robust to noise and to the transient right
after a change). A trial segment is scored against the level the run was expected to reach
without the change: the power-law trend (a straight line in log-step/log-value) through the
levels of the segments before the mutation, or the last level when there is only one. The score
is the relative improvement over that expectation (positive: better than the trend), minus
penalties for non-finite values, spikes and divergence inside the segment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Segment", "expected_level", "level", "noise", "score_segment"]

#: Score of a segment with NaN/inf in its objective: the worst the tuner reports.
NONFINITE_SCORE = -1.0
SPIKE_FACTOR = 3.0  # a value this many times worse than the expected level is a spike
SPIKE_PENALTY = 0.25
DIVERGE_RATIO = 1.5  # the last quarter's median this much worse than the first quarter's
DIVERGE_PENALTY = 0.25


@dataclass
class Segment:
    """The objective's observations between two boundaries."""

    start: int
    steps: list[int]
    values: list[float]

    @property
    def mid(self) -> float:
        if not self.steps:
            return float(self.start)
        return (self.steps[0] + self.steps[-1]) / 2

    def level(self) -> float:
        return level(self.values)


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def level(values: Sequence[float]) -> float:
    """The median of the last half of ``values`` (NaN when there are none or one is not
    finite)."""
    if not values or not all(math.isfinite(v) for v in values):
        return math.nan
    return _median(values[len(values) // 2 :])


def expected_level(history: Sequence[tuple[float, float]], at: float, sign: float) -> float:
    """Where the objective would be at step ``at`` without the change, from ``(mid_step,
    level)`` of the segments before it (oldest first). ``sign`` is +1 when minimising.

    Two or more points: a power law through the last two (when both are positive), bounded so
    that the expectation neither improves by more than half nor worsens by more than 10 % over
    the last level; otherwise the last level."""
    if not history:
        return math.nan
    (s1, y1) = history[-1]
    if len(history) < 2:
        return y1
    (s0, y0) = history[-2]
    if y0 <= 0 or y1 <= 0 or s0 <= 0 or s1 <= s0 or at <= s1:
        return y1
    slope = (math.log(y1) - math.log(y0)) / (math.log(s1) - math.log(s0))
    guess = y1 * math.exp(slope * (math.log(at) - math.log(s1)))
    if sign > 0:
        return min(max(guess, 0.5 * y1), 1.1 * y1)
    return max(min(guess, 2.0 * y1), 0.9 * y1)


def score_segment(
    segment: Segment, history: Sequence[tuple[float, float]], direction: str
) -> tuple[float, dict[str, float | str]]:
    """The score of a trial segment and what it was made of (for the ledger and status)."""
    sign = 1.0 if direction == "minimize" else -1.0
    values = segment.values
    if not values:
        return NONFINITE_SCORE, {"reason": "no values of the objective in the segment"}
    if not all(math.isfinite(v) for v in values):
        return NONFINITE_SCORE, {"reason": "NaN or inf in the objective"}
    actual = level(values)
    expected = expected_level(history, segment.mid, sign)
    if not math.isfinite(expected):
        return 0.0, {"level": actual, "reason": "no baseline yet"}
    scale = max(abs(expected), 1e-12)
    score = sign * (expected - actual) / scale
    detail: dict[str, float | str] = {"level": actual, "expected": expected, "raw": score}
    # minimising: a value over 3x the expectation; maximising (an accuracy): one under a third
    worst = max(values) if sign > 0 else min(values)
    spiked = worst > SPIKE_FACTOR * expected if sign > 0 else worst < expected / SPIKE_FACTOR
    if spiked and expected > 0:
        score -= SPIKE_PENALTY
        detail["spike"] = worst
    quarter = max(1, len(values) // 4)
    first, last = _median(values[:quarter]), _median(values[-quarter:])
    if len(values) >= 4 and first > 0 and last > 0:
        ratio = (last / first) if sign > 0 else (first / last)
        if ratio > DIVERGE_RATIO:
            score -= DIVERGE_PENALTY
            detail["diverging"] = ratio
    # -1 is the worst score, a blow-up's: a segment twice as far off the trend scores no
    # lower (a level near zero makes relative scores of -3 out of noise)
    score = max(score, NONFINITE_SCORE)
    detail["score"] = score
    detail["noise"] = noise(values, actual)
    return score, detail


def noise(values: Sequence[float], at: float) -> float:
    """The relative standard error of a segment's level: the spread of its last half (a
    median absolute deviation, scaled to a standard deviation) over the level and the square
    root of the count. A score inside it is indistinguishable from no change. A last half of
    one value (a segment of two or three evaluations) has no spread: the whole segment's is
    taken, which counts its trend too (so the bar errs high); one value alone has none (0)."""
    half = values[len(values) // 2 :]
    if len(half) < 2:
        half = values
    if len(half) < 2 or at == 0:
        return 0.0
    centre = _median(half)
    mad = _median([abs(v - centre) for v in half]) * 1.4826
    return mad / abs(at) / math.sqrt(len(half))
