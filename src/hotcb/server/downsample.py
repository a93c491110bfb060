"""Server-side downsampling of a metric series that keeps its spikes.

Min/max per bucket (the M4 family): the series is cut into equal-count buckets and each bucket
contributes its minimum and its maximum, in step order, plus the series' first and last points.
Unlike averaging or plain striding, a one-step loss spike always survives, which is what a person
watching a run needs to see. Works on ``array('q')``/``array('d')`` columns with C-level
``min``/``max`` over slices, so a million points take tens of milliseconds without numpy.
"""

from __future__ import annotations

import math
from array import array

__all__ = ["minmax_downsample"]


def _bucket_extremes(values: array, a: int, b: int) -> tuple[int, int]:
    """Indices (absolute) of the minimum and maximum of ``values[a:b]``, skipping NaN."""
    chunk = values[a:b]
    lo_v, hi_v = min(chunk), max(chunk)
    if lo_v != lo_v or hi_v != hi_v:  # a NaN came first: scan the finite values instead
        finite = [(v, i) for i, v in enumerate(chunk) if not math.isnan(v)]
        if not finite:
            return a, a
        lo_i = min(finite)[1]
        hi_i = max(finite)[1]
        return a + lo_i, a + hi_i
    return a + chunk.index(lo_v), a + chunk.index(hi_v)


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
    return [steps[i] for i in picked], [values[i] for i in picked]
