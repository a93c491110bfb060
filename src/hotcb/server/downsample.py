"""Server-side downsampling of a metric series that keeps its spikes.

Min/max per bucket (the M4 family): the series is cut into equal-count buckets and each bucket
contributes its minimum and its maximum, in step order, plus the series' first and last points.
Unlike averaging or plain striding, a one-step loss spike always survives, which is what a person
watching a run needs to see. Works on ``array('q')``/``array('d')`` columns: with numpy (when
installed) one vectorised pass; without it C-level ``min``/``max`` over slices. Both pick the
same points; a million points take tens of milliseconds either way.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

__all__ = ["minmax_downsample"]


def _bucket_extremes(values: array, a: int, b: int) -> tuple[int, int]:
    """Indices (absolute) of the minimum and maximum of ``values[a:b]``, skipping NaN."""
    chunk = values[a:b]
    lo_v, hi_v = min(chunk), max(chunk)
    if lo_v != lo_v or hi_v != hi_v:  # a NaN came first: take the extremes of the rest
        finite = [v for v in chunk if not math.isnan(v)]
        if not finite:
            return a, a
        lo_v, hi_v = min(finite), max(finite)
    return a + chunk.index(lo_v), a + chunk.index(hi_v)


def _np() -> Any:
    try:
        import numpy
    except ImportError:  # numpy is optional: the pure-Python path gives the same points
        return None
    return numpy


def _picked_numpy(np: Any, values: array, lo: int, hi: int, buckets: int) -> list[int]:
    """Same picks as the pure-Python loop, vectorised: one pass of fmin/fmax.reduceat."""
    inner_lo, inner_hi = lo + 1, hi - 1
    size = (inner_hi - inner_lo) / buckets
    starts = np.array([inner_lo + int(k * size) for k in range(buckets)], dtype=np.int64)
    ends = np.append(starts[1:], inner_hi)
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    with memoryview(values) as mv:  # copy, so the array can keep growing afterwards
        v = np.array(mv[inner_lo:inner_hi], dtype=np.float64)
    rel = starts - inner_lo
    sizes = ends - starts
    picks = []
    for reduce in (np.fmin, np.fmax):
        ext = reduce.reduceat(v, rel)
        hit = np.flatnonzero(v == np.repeat(ext, sizes))
        pos = np.searchsorted(hit, rel)
        idx = hit[np.minimum(pos, len(hit) - 1)] if len(hit) else rel.copy()
        bad = (idx < rel) | (idx >= rel + sizes)  # an all-NaN bucket: take its first point
        idx[bad] = rel[bad]
        picks.append(idx + inner_lo)
    a, b = np.minimum(picks[0], picks[1]), np.maximum(picks[0], picks[1])
    inner = np.stack([a, b], axis=1).ravel()
    same = np.zeros(len(inner), dtype=bool)
    same[1::2] = a == b
    return [lo, *inner[~same].tolist(), hi - 1]


def minmax_downsample(
    steps: array, values: array, max_points: int, lo: int = 0, hi: int | None = None
) -> tuple[list[int], list[float]]:
    """At most ``max_points`` points of ``steps[lo:hi]``/``values[lo:hi]``: first, last, and
    the min and max of each bucket in between, in their original order."""
    hi = len(steps) if hi is None else hi
    n = hi - lo
    if n <= max_points:
        return list(steps[lo:hi]), list(values[lo:hi])
    max_points = max(4, max_points)
    buckets = (max_points - 2) // 2
    np = _np() if n > 20_000 else None
    if np is not None:
        picked = _picked_numpy(np, values, lo, hi, buckets)
    else:
        picked = _picked_python(values, lo, hi, buckets)
    return [steps[i] for i in picked], [values[i] for i in picked]


def _picked_python(values: array, lo: int, hi: int, buckets: int) -> list[int]:
    inner_lo, inner_hi = lo + 1, hi - 1
    size = (inner_hi - inner_lo) / buckets
    picked = [lo]
    for k in range(buckets):
        a = inner_lo + int(k * size)
        b = inner_lo + int((k + 1) * size) if k < buckets - 1 else inner_hi
        if b <= a:
            continue
        i, j = _bucket_extremes(values, a, b)
        if i == j:
            picked.append(i)
        else:
            picked.extend((i, j) if i < j else (j, i))
    picked.append(hi - 1)
    return picked
