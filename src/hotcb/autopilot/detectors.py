"""Detectors: pure functions that read the tail of a metric series and say what is wrong with it.

Each detector takes a metric's recorded points, ``steps`` and ``values`` (aligned, oldest first:
a validation metric has one point per evaluation, a train metric one per logged step), looks at
the last ``window`` points only, and returns a :class:`Detection` or ``None``. ``window`` counts
points, not steps. Detectors keep no state, never raise on odd input and cost O(window) (a
median sorts its window), so the rules engine can run all of them on every new record.

How to read them:

- **Not enough data is silence.** Fewer than ``window`` points, steps and values of different
  lengths, or an invalid parameter (``window`` too small, ``eps <= 0``, an unknown
  ``direction``) give ``None``. Rules files are checked against :data:`PARAMS` before they run.
- **Only** :func:`nonfinite` **reports NaN and inf.** The others drop non-finite points from
  their window and answer ``None`` when fewer than half of the window's points (or fewer than
  three) are left. ``None`` in ``values`` counts as non-finite: it is how
  ``hotcb.metrics.jsonl`` records a NaN or an inf.
- **Thresholds are relative to the metric's own level or noise**, so one default fits a loss
  of 2.3 or of 0.02: plateau's ``eps`` is a fraction of the smoothed level, divergence's
  ``min_rise`` a fraction of the window's best value, overfitting's ``min_gap_rise`` a fraction
  of the validation level, spike's ``z`` counts robust standard deviations of the window.
- **direction**: ``"minimize"`` (the default) for losses, ``"maximize"`` for accuracy, F1 …
  (plateau and divergence). Overfitting reads losses; give it ``1 - accuracy`` if that is what
  you have. Spike is two-sided (``evidence["side"]`` says ``"up"`` or ``"down"``); grad-norm
  explosion looks up only.
- **Severity** is 1.0 when the measured value sits exactly at the threshold and grows the
  further past it; the engine uses it to rank detections of one kind.
- **Which series.** The defaults were tuned on real curves (tiny MLPs on scikit-learn's digits,
  recorded in ``tests/autopilot/series/``; each docstring says what they showed):
  plateau (8 points) and overfitting (6) on a validation loss evaluated every 10-20 steps;
  divergence (64 points), spike (50) and grad-norm explosion (20) on a series logged every
  step. On a validation metric, give divergence ``window=8, k=2``. A per-step train loss is
  too noisy for plateau's 1 % over 8 points: give it a window and a ``smooth`` of hundreds of
  steps, or watch the validation loss instead.
- :func:`nonfinite` reads the latest point only (it has no window): a caller that asks once
  per batch of new points misses a NaN in the middle of the batch unless it asks per point.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "CHOICES",
    "DETECTORS",
    "DIRECTIONS",
    "PARAMS",
    "Detection",
    "divergence",
    "grad_explosion",
    "nonfinite",
    "overfitting",
    "plateau",
    "spike",
]

#: Values of the ``direction`` parameter: which way is better for the metric.
DIRECTIONS = ("minimize", "maximize")

#: A rising trend counts only when its least-squares slope is this many standard errors above
#: zero: noise in a per-step loss fits slopes of any sign, a real climb stands out of it.
_MIN_T = 3.0
#: Overfitting needs the train line's slope this many standard errors below zero (train
#: still clearly learns) and the validation line's this many above: with 6 noisy evaluations
#: a flat validation loss tilts up by chance in half of its windows, and a flat train loss
#: tilts down; both at once, past these bars, happened in none of 40 simulated flat runs.
_TRAIN_FALL_T = 3.0
_VAL_RISE_T = 1.5
#: Spike's scale never drops below this fraction of the median, so a metric that sat exactly
#: constant (MAD 0) is not a "spike" at its first change in the sixth digit.
_SPIKE_REL_FLOOR = 0.01
#: MAD × this estimates a standard deviation for normal noise.
_MAD_TO_SD = 1.4826
#: Overfitting averages at most this many train points per evaluation interval (O(window)).
_TRAIN_POINTS_PER_EVAL = 50
#: nonfinite counts a streak of non-finite points back at most this far.
_MAX_STREAK = 1000
#: Relative quantities divide by at least this, so a level of 0 does not divide by zero, and
#: ratios stop at _CAP (a loss that leaves exactly 0 is infinitely worse; JSON wants finite).
_TINY = 1e-12
_CAP = 1e6

Evidence = dict[str, float | int | str]


@dataclass(frozen=True)
class Detection:
    """One finding of one detector on one metric.

    ``step`` is the step of the latest value the detector looked at; ``severity`` (>= 0) is
    1.0 exactly at the threshold and larger the further past it; ``evidence`` is a compact,
    JSON-ready summary of the window (``n``, ``first_step``, ``last_step`` and each detector's
    own statistics, floats rounded to 6 significant digits).
    """

    detector: str
    metric: str
    step: int
    severity: float
    evidence: Evidence

    def describe(self) -> str:
        """One human line, e.g. ``plateau on val_loss: 0.3% better over the last 8 values
        (steps 400-750), below 1%``."""
        head = f"{self.detector} on {self.metric or 'metric'}"
        line = _DESCRIBE.get(self.detector)
        if line is not None:
            try:
                return f"{head}: {line(self.evidence)}"
            except (KeyError, TypeError, ValueError):
                pass  # evidence not written by this module: the generic line below says enough
        return f"{head} at step {self.step} (severity {self.severity:.3g})"


# ----------------------------------------------------------------------------- helpers


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None (NaN, inf, None, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _round(x: float) -> float:
    """6 significant digits, and finite (evidence goes into JSON files)."""
    if math.isnan(x):
        return 0.0
    x = max(-1e300, min(1e300, x))
    return float(f"{x:.6g}")


def _tail(
    steps: Sequence[int], values: Sequence[float | None], window: int
) -> tuple[list[int], list[float]] | None:
    """The finite points among the last ``window``, or None when there are not enough.

    None when the series are shorter than ``window``, of different lengths, or when fewer than
    half of the window's points (or fewer than 3) are finite.
    """
    n = len(values)
    if window < 1 or len(steps) != n or n < window:
        return None
    xs: list[int] = []
    ys: list[float] = []
    for i in range(n - window, n):
        y = _finite(values[i])
        if y is not None:
            xs.append(steps[i])
            ys.append(y)
    if len(ys) < 3 or 2 * len(ys) < window:
        return None
    return xs, ys


def _fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares line through ``(xs, ys)``: ``(slope, t)``, ``t`` being the slope over its
    standard error (±inf for points exactly on a sloped line, 0 with fewer than 3 points).
    When every x is the same, the point index stands in for x. Computed on x and y rescaled
    to [-1, 1], so values near the float limits do not overflow."""
    n = len(ys)
    if n < 2:
        return 0.0, 0.0
    lo, hi = min(xs), max(xs)
    if lo == hi:
        lo, hi, xs = 0, n - 1, range(n)
    sx = float(hi - lo)
    sy = max(abs(y) for y in ys) or 1.0
    u = [float(x - lo) / sx for x in xs]
    v = [y / sy for y in ys]
    mu = sum(u) / n
    mv = sum(v) / n
    suu = sum((a - mu) ** 2 for a in u)
    suv = sum((a - mu) * (b - mv) for a, b in zip(u, v, strict=True))
    slope = suv / suu
    scaled = slope * (sy / sx)
    if n < 3:
        return scaled, 0.0
    ssr = sum((b - mv - slope * (a - mu)) ** 2 for a, b in zip(u, v, strict=True))
    if ssr <= 1e-30 * n:
        return scaled, math.copysign(math.inf, slope) if slope else 0.0
    return scaled, slope / math.sqrt(ssr / (n - 2) / suu)


def _window_evidence(xs: Sequence[int], ys: Sequence[float]) -> Evidence:
    return {
        "n": len(ys),
        "first_step": xs[0],
        "last_step": xs[-1],
        "first": _round(ys[0]),
        "last": _round(ys[-1]),
        "min": _round(min(ys)),
        "median": _round(statistics.median(ys)),
    }


def _pct(x: float | int | str, other: float | int | str | None = None) -> str:
    """``x`` as a percentage; with ``other`` (a threshold it is compared with), to as many
    decimals as it takes not to read equal to it (``0.97%``, not ``1.0%``, below ``1.0%``)."""
    for digits in range(1, 5):
        text = f"{float(x):.{digits}%}"
        if other is None or float(x) == float(other) or text != f"{float(other):.{digits}%}":
            return text
    return text


def _num(x: float | int | str) -> str:
    return f"{float(x):.4g}"


# ----------------------------------------------------------------------------- detectors


def plateau(
    steps: Sequence[int],
    values: Sequence[float | None],
    *,
    metric: str = "",
    window: int = 8,
    eps: float = 0.01,
    smooth: int = 3,
    direction: str = "minimize",
) -> Detection | None:
    """The metric stopped improving: over the last ``window`` points, its smoothed level got
    less than ``eps`` (relative) better than where the window started.

    Definition. Take the finite values among the last ``window`` points and smooth them with a
    trailing moving average of ``smooth`` points: ``m_j = mean(v_j … v_{j+smooth-1})``. The
    window *starts* at ``m_0``; its *best* is the lowest of ``m_1 … m_last`` (highest for
    ``direction="maximize"``). The relative improvement is ``(m_0 - best) / |m_0|`` (mirrored
    for maximize). It fires when the improvement is below ``eps``; a metric that got worse has a
    negative improvement and fires too. Severity ``2 - improvement/eps``: 1.0 at ``eps``, 2.0 for
    no change at all, more for a metric getting worse.

    Because the best of several smoothed values is compared with one, noise reads as
    improvement: on a noisy series plateau errs towards silence. Defaults: 8 evaluations of a
    validation loss and 1 %: a run whose validation loss still falls 1 % every 8 evaluations is
    still learning; a smoothing of 3 evaluations keeps one lucky evaluation from hiding a
    plateau. Needs ``window > smooth``.
    """
    if eps <= 0 or smooth < 1 or window <= smooth or direction not in DIRECTIONS:
        return None
    tail = _tail(steps, values, window)
    if tail is None or len(tail[1]) <= smooth:
        return None
    xs, ys = tail
    running = sum(ys[:smooth])
    smoothed = [running / smooth]
    for i in range(smooth, len(ys)):
        running += ys[i] - ys[i - smooth]
        smoothed.append(running / smooth)
    start = smoothed[0]
    later = smoothed[1:]
    best = min(later) if direction == "minimize" else max(later)
    gain = start - best if direction == "minimize" else best - start
    improvement = gain / max(abs(start), _TINY)
    if improvement >= eps:
        return None
    evidence = _window_evidence(xs, ys)
    evidence.update(
        {
            "start": _round(start),
            "best": _round(best),
            "improvement": _round(improvement),
            "eps": eps,
            "smooth": smooth,
            "direction": direction,
        }
    )
    return Detection("plateau", metric, xs[-1], _round(2.0 - improvement / eps), evidence)


def _describe_plateau(e: Evidence) -> str:
    improvement = float(e["improvement"])
    where = f"over the last {e['n']} values (steps {e['first_step']}-{e['last_step']})"
    if improvement >= 0:
        return f"{_pct(improvement, e['eps'])} better {where}, below {_pct(e['eps'])}"
    return f"{_pct(-improvement)} worse {where}, not the {_pct(e['eps'])} better of a run still learning"


def divergence(
    steps: Sequence[int],
    values: Sequence[float | None],
    *,
    metric: str = "",
    window: int = 64,
    k: float = 5.0,
    min_rise: float = 0.1,
    floor: float | None = None,
    direction: str = "minimize",
) -> Detection | None:
    """The metric is running away: its level stands ``k`` times above its best level in the
    window, or it climbs on a clear trend.

    Definition, over the ``n`` finite values among the last ``window`` points (for
    ``"maximize"`` read "above" as "below", "rise" as "fall", and the ratio upside down):

    - *Levels* are the medians of consecutive blocks of ``b = max(1, n // 8)`` values (the
      oldest ``n mod b`` values are left out): with 64 points, the medians of 8 steps; with 8
      evaluations, the values themselves. *best* is the lowest level (the window's running
      minimum, robust to one lucky batch); *now* is the median of the last ``max(3, b)``
      values, so one spike (that is :func:`spike`'s) is not a divergence.
      **Blow-up** when ``best > 0`` and ``now > k × best``.
    - **Rising trend** when the least-squares line of value on step rises by at least
      ``min_rise × |best|`` across the window and its slope is at least 3 standard errors
      above zero (noise in a per-step loss fits slopes of either sign; a climb stands out).

    **Floor**: while *now* is at or below ``floor`` (minimising; at or above it when
    maximising) nothing is a divergence: a training loss that climbs from 0.001 to 0.003 late
    in a run is three times its best, and noise. ``floor`` is in the metric's own units
    (default None: off); for a cross-entropy over C classes, a few percent of ``ln C`` fits.

    Severity: the larger of ``now / (k × best)`` and ``rise / (min_rise × |best|)`` among the
    conditions that hold.

    Defaults fit a train loss logged every step: 64 steps; 5× (per-batch losses near zero are
    heavy-tailed: in the recorded healthy runs an 8-step median reaches 4× the lowest one of
    the 64 steps before it, a diverging run 20×); a significant climb of 10 % of the best level
    (no recorded healthy run shows one over 64 steps). For a validation metric evaluated every
    10-20 steps, pass ``window=8`` (and ``k=2``: evaluations are much smoother than batches).
    On a validation loss it also fires when overfitting makes it climb; :func:`overfitting`
    tells the two apart.
    """
    if k <= 1 or min_rise <= 0 or window < 3 or direction not in DIRECTIONS:
        return None
    tail = _tail(steps, values, window)
    if tail is None:
        return None
    xs, ys = tail
    n = len(ys)
    minimize = direction == "minimize"
    b = max(1, n // 8)
    levels = [statistics.median(ys[i : i + b]) for i in range(n % b, n, b)]
    best = min(levels) if minimize else max(levels)
    now = statistics.median(ys[-max(3, b) :])
    if floor is not None and (now <= floor if minimize else now >= floor):
        return None
    ratio = 0.0
    if best > 0:
        ratio = min(_CAP, now / best if minimize else best / max(now, _TINY))
    base = max(abs(best), _TINY)
    slope, t = _fit(xs, ys)
    if not minimize:
        slope, t = -slope, -t
    span = xs[-1] - xs[0] if xs[-1] != xs[0] else n - 1
    rise = min(_CAP, slope * span / base)
    blowup = ratio > k
    trend = rise >= min_rise and t >= _MIN_T
    if not (blowup or trend):
        return None
    severity = max(ratio / k if blowup else 0.0, rise / min_rise if trend else 0.0)
    evidence = _window_evidence(xs, ys)
    evidence.update(
        {
            "cause": "blow-up" if blowup else "trend",
            "best": _round(best),
            "now": _round(now),
            "ratio": _round(ratio),
            "slope": _round(slope if minimize else -slope),
            "rise": _round(rise),
            "t": _round(max(-999.0, min(999.0, t))),
            "k": k,
            "min_rise": min_rise,
            "direction": direction,
        }
    )
    if floor is not None:
        evidence["floor"] = floor
    return Detection("divergence", metric, xs[-1], _round(severity), evidence)


def _describe_divergence(e: Evidence) -> str:
    where = f"over the last {e['n']} values (steps {e['first_step']}-{e['last_step']})"
    if e["cause"] == "blow-up":
        side = "above" if e["direction"] == "minimize" else "below"
        return (
            f"{_num(e['now'])} is {_num(e['ratio'])}× {side} its best level {_num(e['best'])} "
            f"{where}, beyond {_num(e['k'])}×"
        )
    way = "rising" if e["direction"] == "minimize" else "falling"
    return f"{way} {_pct(e['rise'])} of its best {where}, above {_pct(e['min_rise'])}"


def spike(
    steps: Sequence[int],
    values: Sequence[float | None],
    *,
    metric: str = "",
    window: int = 50,
    z: float = 10.0,
    floor: float | None = None,
) -> Detection | None:
    """The latest value is an outlier against the points just before it.

    Definition: the baseline is the finite values among the ``window - 1`` points before the
    latest one; its centre is their median and its scale ``1.4826 × MAD`` (median absolute
    deviation; the standard deviation for normal noise), but never less than 1 % of
    ``|median|``. The robust z-score is ``(latest - median) / scale``; it fires when
    ``|z| >= z``, in either direction (``evidence["side"]``). A non-finite latest value gives
    ``None`` (that is :func:`nonfinite`'s). Severity ``|z| / z``.

    Defaults fit a series logged every step: 50 points, because the MAD of 20 heavy-tailed
    per-batch losses is itself noisy; 10 robust standard deviations, because per-batch losses
    have heavy upper tails (on 50 points the recorded healthy runs reach 6, a healthy SGD run
    near zero loss 9) while the spikes worth acting on are far larger (over 50 in the
    diverging run).

    **Floor**: while both the latest value and the median lie within ``floor`` of zero,
    nothing is a spike: a loss that has converged to float noise (0, then 1e-8) is 10000
    robust SDs off a median of 0, and nothing to act on (default None: off).
    """
    if z <= 0 or window < 4:
        return None
    n = len(values)
    if len(steps) != n or n < window:
        return None
    latest = _finite(values[-1])
    tail = _tail(steps, values, window)
    if latest is None or tail is None:
        return None
    xs, ys = tail[0][:-1], tail[1][:-1]
    centre = statistics.median(ys)
    if floor is not None and abs(latest) <= floor and abs(centre) <= floor:
        return None
    mad = statistics.median(abs(y - centre) for y in ys)
    scale = max(_MAD_TO_SD * mad, _SPIKE_REL_FLOOR * abs(centre), _TINY)
    score = (latest - centre) / scale
    if abs(score) < z:
        return None
    evidence = _window_evidence(xs, ys)
    evidence.update(
        {
            "value": _round(latest),
            "step": steps[-1],
            "scale": _round(scale),
            "z": _round(score),
            "side": "up" if score > 0 else "down",
            "threshold": z,
        }
    )
    return Detection("spike", metric, steps[-1], _round(abs(score) / z), evidence)


def _describe_spike(e: Evidence) -> str:
    side = "above" if e["side"] == "up" else "below"
    return (
        f"{_num(e['value'])} at step {e['step']} is {abs(float(e['z'])):.1f} robust SDs {side} "
        f"the median {_num(e['median'])} of the previous {e['n']} values, beyond {_num(e['threshold'])}"
    )


def nonfinite(
    steps: Sequence[int], values: Sequence[float | None], *, metric: str = ""
) -> Detection | None:
    """The latest value is NaN, inf or missing (``None``, how the metrics file records NaN/inf).

    Definition: fires when the latest point is not a finite number. The evidence counts how
    many points in a row, ending at the latest, are non-finite (``streak``, counted back at
    most 1000 points) and the step where that streak began. Severity: the streak length, so a
    loss that stays NaN ranks above one bad step. It reads only the latest point: a caller that
    asks once for several new points misses a NaN among the earlier ones.
    """
    n = len(values)
    if n == 0 or len(steps) != n or _finite(values[-1]) is not None:
        return None
    streak = 1
    while streak < min(n, _MAX_STREAK) and _finite(values[n - 1 - streak]) is None:
        streak += 1
    raw = values[-1]
    shown = repr(raw) if isinstance(raw, float) else "null" if raw is None else type(raw).__name__
    evidence: Evidence = {
        "value": shown,
        "streak": streak,
        "since_step": steps[n - streak],
        "last_step": steps[-1],
    }
    return Detection("nonfinite", metric, steps[-1], float(streak), evidence)


def _describe_nonfinite(e: Evidence) -> str:
    if int(e["streak"]) == 1:
        return f"{e['value']} at step {e['last_step']}"
    return f"{e['value']} at step {e['last_step']} ({e['streak']} in a row since step {e['since_step']})"


def _train_levels(
    train_steps: Sequence[int], train_values: Sequence[float | None], eval_steps: Sequence[int]
) -> list[float | None]:
    """Per evaluation step, the mean of the finite train values logged since the previous
    evaluation (the last 50 of them at most); when there are none, the latest train value
    logged before it; None when that is not finite either."""
    n = len(train_values)
    levels: list[float | None] = []
    for i, s in enumerate(eval_steps):
        if i > 0:
            since = eval_steps[i - 1]
        else:  # the first evaluation: an interval as long as the next one
            since = s - (eval_steps[1] - s) if len(eval_steps) > 1 else s - 1
        hi = bisect.bisect_right(train_steps, s, 0, n)
        lo = max(bisect.bisect_right(train_steps, since, 0, hi), hi - _TRAIN_POINTS_PER_EVAL)
        found = [y for y in map(_finite, (train_values[j] for j in range(lo, hi))) if y is not None]
        if not found and hi > 0:
            latest = _finite(train_values[hi - 1])
            found = [latest] if latest is not None else []
        levels.append(sum(found) / len(found) if found else None)
    return levels


def overfitting(
    train_steps: Sequence[int],
    train_values: Sequence[float | None],
    val_steps: Sequence[int],
    val_values: Sequence[float | None],
    *,
    metric: str = "",
    window: int = 6,
    min_gap_rise: float = 0.05,
) -> Detection | None:
    """The validation loss climbs away from a train loss that still falls.

    Definition, for losses (lower is better; give it ``1 - accuracy`` for accuracies):

    - Take the finite values among the last ``window`` validation points. At each of their
      steps, the *train level* is the mean of the finite train values logged since the
      previous evaluation (the last 50 at most; the first evaluation uses an interval as long
      as the next one), or, when none was logged there, the latest train value before it.
    - The *gap* is validation minus train level. Fit least-squares lines of gap, train level
      and validation loss on step across the window.
    - It fires when the gap's line rises by at least ``min_gap_rise`` times the window's median
      validation loss, **and** the train line falls, its slope at least 3 standard errors
      below zero (train still learns), **and** the validation line rises, its slope at least
      1.5 standard errors above zero. The last condition is what tells overfitting from
      health: in every healthy run the gap widens a little, because train falls faster than
      validation; and a flat, noisy validation loss tilts up by chance in half of its windows.

    A validation loss that rises together with the train loss is not overfitting (see
    :func:`divergence`). Severity ``gap rise / (min_gap_rise × median val)``. Defaults: 6
    evaluations and 5 % of the validation loss: on the recorded overfitting run (validation
    loss lowest at step 60, then noisy and rising) it fires from step 220 on, and never on the
    healthy runs. Cost O(window) (at most 50 train
    points per evaluation; steps must be sorted).
    """
    if window < 3 or min_gap_rise <= 0:
        return None
    tail = _tail(val_steps, val_values, window)
    if tail is None or len(train_steps) != len(train_values):
        return None
    xs_all, vs_all = tail
    levels = _train_levels(train_steps, train_values, xs_all)
    xs = [x for x, t in zip(xs_all, levels, strict=True) if t is not None]
    vs = [v for v, t in zip(vs_all, levels, strict=True) if t is not None]
    ts = [t for t in levels if t is not None]
    if len(ts) < 3 or 2 * len(ts) < window:
        return None
    gaps = [v - t for v, t in zip(vs, ts, strict=True)]
    span = xs[-1] - xs[0] if xs[-1] != xs[0] else len(xs) - 1
    gap_slope = _fit(xs, gaps)[0]
    train_slope, train_t = _fit(xs, ts)
    val_slope, val_t = _fit(xs, vs)
    base = max(abs(statistics.median(vs)), _TINY)
    gap_rise = min(_CAP, gap_slope * span / base)
    if not (gap_rise >= min_gap_rise and train_t <= -_TRAIN_FALL_T and val_t >= _VAL_RISE_T):
        return None
    evidence = _window_evidence(xs, vs)
    evidence.update(
        {
            "gap_first": _round(gaps[0]),
            "gap_last": _round(gaps[-1]),
            "gap_rise": _round(gap_rise),
            "train_first": _round(ts[0]),
            "train_last": _round(ts[-1]),
            "train_change": _round(train_slope * span / max(abs(ts[0]), _TINY)),
            "val_change": _round(val_slope * span / base),
            "train_t": _round(max(-999.0, min(999.0, train_t))),
            "val_t": _round(max(-999.0, min(999.0, val_t))),
            "min_gap_rise": min_gap_rise,
        }
    )
    return Detection("overfitting", metric, xs[-1], _round(gap_rise / min_gap_rise), evidence)


def _describe_overfitting(e: Evidence) -> str:
    return (
        f"validation-train gap grew {_pct(e['gap_rise'])} of the validation level over the last "
        f"{e['n']} evaluations (steps {e['first_step']}-{e['last_step']}) while train changed "
        f"{_pct(e['train_change'])}, above {_pct(e['min_gap_rise'])}"
    )


def grad_explosion(
    steps: Sequence[int],
    values: Sequence[float | None],
    *,
    metric: str = "",
    window: int = 20,
    factor: float = 10.0,
) -> Detection | None:
    """The latest gradient norm is ``factor`` times the typical one just before it.

    Definition: the baseline is the median of the finite values among the ``window - 1``
    points before the latest; it fires when the latest value is at least ``factor ×`` that
    median (a baseline of 0 never fires). Upward only; a non-finite latest value gives ``None``
    (that is :func:`nonfinite`'s). Severity ``(latest / median) / factor``.

    Defaults: 20 logged steps; 10×, an order of magnitude: the recorded healthy runs' largest
    ratio is 4.3× (at 10x a sound learning rate), the diverging run's reaches 27×.
    """
    if factor <= 1 or window < 4:
        return None
    n = len(values)
    if len(steps) != n or n < window:
        return None
    latest = _finite(values[-1])
    tail = _tail(steps, values, window)
    if latest is None or tail is None:
        return None
    xs, ys = tail[0][:-1], tail[1][:-1]
    centre = statistics.median(ys)
    if centre <= 0:
        return None
    ratio = latest / centre
    if ratio < factor:
        return None
    evidence = _window_evidence(xs, ys)
    evidence.update(
        {"value": _round(latest), "step": steps[-1], "ratio": _round(ratio), "factor": factor}
    )
    return Detection("grad_explosion", metric, steps[-1], _round(ratio / factor), evidence)


def _describe_grad_explosion(e: Evidence) -> str:
    return (
        f"{_num(e['value'])} at step {e['step']} is {_num(e['ratio'])}× the median "
        f"{_num(e['median'])} of the previous {e['n']} values, beyond {_num(e['factor'])}×"
    )


_DESCRIBE: dict[str, Callable[[Evidence], str]] = {
    "plateau": _describe_plateau,
    "divergence": _describe_divergence,
    "spike": _describe_spike,
    "nonfinite": _describe_nonfinite,
    "overfitting": _describe_overfitting,
    "grad_explosion": _describe_grad_explosion,
}

#: Detector name → function, for the rules engine. ``overfitting`` takes two series
#: (train, then validation); the others one.
DETECTORS: dict[str, Callable[..., Detection | None]] = {
    "plateau": plateau,
    "divergence": divergence,
    "spike": spike,
    "nonfinite": nonfinite,
    "overfitting": overfitting,
    "grad_explosion": grad_explosion,
}

_WINDOW = (int, 3, 1000)
#: Per detector, its tunable parameters as ``(type, minimum, maximum)`` (``None``: no bound),
#: so a rules file can be checked before it runs ("window must be an integer in [3, 1000]").
#: A ``str`` parameter takes one of its :data:`CHOICES`.
PARAMS: dict[str, dict[str, tuple[type, float | None, float | None]]] = {
    "plateau": {
        "window": _WINDOW,
        "eps": (float, 1e-6, 1.0),
        "smooth": (int, 1, 500),
        "direction": (str, None, None),
    },
    "divergence": {
        "window": _WINDOW,
        "k": (float, 1.01, 1e6),
        "min_rise": (float, 1e-6, 1e6),
        "floor": (float, -1e12, 1e12),
        "direction": (str, None, None),
    },
    "spike": {"window": (int, 4, 1000), "z": (float, 1.0, 1e6), "floor": (float, 0.0, 1e12)},
    "nonfinite": {},
    "overfitting": {"window": _WINDOW, "min_gap_rise": (float, 1e-6, 1e6)},
    "grad_explosion": {"window": (int, 4, 1000), "factor": (float, 1.01, 1e6)},
}

#: The values a ``str`` parameter of :data:`PARAMS` may take (any other makes its detector
#: silent for good: ``plateau(..., direction="maxmize")`` is always ``None``).
CHOICES: dict[str, tuple[str, ...]] = {"direction": DIRECTIONS}
