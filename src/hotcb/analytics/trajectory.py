"""The run's path through metric space: every logged metric at once, reduced to two dimensions.

The metrics are put on one grid of steps (at most ``max_points`` steps, spread evenly over the
run; each metric takes its mean over the steps since the previous grid step, or its last value
when it logged nothing there, so a metric logged every 10 steps and one logged every step line
up, and minibatch noise averages out), each standardised (mean 0, standard deviation 1 over
the run; a constant metric is left out), and projected on their first two principal components
(numpy's SVD), so a run that changes course (a drop of the learning rate, divergence,
overfitting) shows as a bend. With ``umap-learn`` installed, ``method="umap"`` (or ``"auto"``)
uses UMAP instead, which keeps local neighbourhoods rather than global variance. UMAP is slow
to start: with umap-learn 0.5.12 on 2 cores, importing it took 9 s and the first fit in a
process 33 s (numba compiles it), later fits of 500 points 1.1 to 1.5 s; PCA takes 8 ms. The
dashboard therefore draws PCA unless UMAP is asked for.

Metrics logged at fewer than ``min_points`` steps, and grid steps before every metric has a
value, are left out. A trajectory needs two metrics that vary, on at least three common grid
steps; without them it is empty and its ``note`` says which condition failed (a run that logs
only ``loss`` has no trajectory).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .forecast import nonfinite_tail

__all__ = ["Trajectory", "trajectory", "umap_available"]

Method = Literal["auto", "pca", "umap"]


def umap_available() -> bool:
    """Whether umap-learn is installed, without importing it (its import compiles code with
    numba: seconds, where this is asked on a request)."""
    spec = importlib.util.find_spec("umap")
    return spec is not None and spec.loader is not None  # not a leftover, empty folder


@dataclass(frozen=True)
class Trajectory:
    steps: np.ndarray
    points: np.ndarray  # (n, 2)
    metrics: list[str]
    method: str
    explained: list[float] | None  # PCA: variance ratio of the two components
    loadings: dict[str, list[float]] | None  # PCA: each metric's weight in the two components
    note: str | None = None  # why it is empty, or why it ends early (None: neither)

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [int(s) for s in self.steps],
            "x": [float(v) for v in self.points[:, 0]] if self.points.size else [],
            "y": [float(v) for v in self.points[:, 1]] if self.points.size else [],
            "metrics": self.metrics,
            "method": self.method,
            "explained": self.explained,
            "loadings": self.loadings,
            "note": self.note,
        }


def _grid(series: Mapping[str, tuple[np.ndarray, np.ndarray]], max_points: int) -> np.ndarray:
    if sum(s.size for s, _ in series.values()) > 8 * max_points:  # long runs: no sort of all
        lo = min(float(s[0]) for s, _ in series.values())
        hi = max(float(s[-1]) for s, _ in series.values())
        return np.unique(np.round(np.linspace(lo, hi, max_points)))
    steps = np.unique(np.concatenate([s for s, _ in series.values()]))
    if steps.size > max_points:
        steps = steps[np.unique(np.linspace(0, steps.size - 1, max_points).round().astype(int))]
    return steps


def _bucket_means(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The mean of ``y`` over each grid interval ``(grid[i-1], grid[i]]`` (the first: every
    point up to ``grid[0]``); an interval without a point carries the last value before it;
    NaN before the metric's first point."""
    idx = np.searchsorted(x, grid, side="right")  # points at or before each grid step
    cs = np.concatenate([[0.0], np.cumsum(y)])
    start = np.concatenate([[0], idx[:-1]])
    count = idx - start
    last = np.where(idx > 0, y[np.maximum(idx - 1, 0)], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (cs[idx] - cs[start]) / count
    return np.where(count > 0, mean, last)


def _empty(names: list[str], method: str, note: str) -> Trajectory:
    return Trajectory(np.zeros(0), np.zeros((0, 2)), names, method, None, None, note)


def _step(step: float) -> str:
    return str(int(step)) if float(step).is_integer() else f"{step:g}"


def _ended(broken: Mapping[str, tuple[float, str]], grid: np.ndarray) -> str | None:
    """The note of a trajectory cut short by metrics that went NaN or infinite, or None."""
    if not broken:
        return None
    what = ", ".join(f"{n} is no longer finite ({kind} since step {_step(since)})"
                     for n, (since, kind) in sorted(broken.items()))  # fmt: skip
    if not grid.size:
        return what
    return f"{what}: the trajectory ends at step {_step(float(grid[-1]))}"


def _too_few(names: list[str], logged: int, min_points: int, where: str = "") -> str:
    usable = ", ".join(names) if names else "none"
    return (f"a trajectory needs two or more metrics with at least {min_points} finite values "
            f"that vary{where}; usable here: {usable} (of {logged} logged)")  # fmt: skip


def _usable(
    series: Mapping[str, tuple[Any, Any]], min_points: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, tuple[float, str]]]:
    """The metrics with ``min_points`` finite values that vary (their finite points, by step),
    and of those the ones whose last values are not finite: name → (step it broke, kind)."""
    clean: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    broken: dict[str, tuple[float, str]] = {}
    for name, (s, v) in series.items():
        x, y = np.asarray(s, dtype=float), np.asarray(v, dtype=float)
        tail = nonfinite_tail(x, y)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if x.size >= min_points and float(np.ptp(y)) > 0:
            order = np.argsort(x, kind="stable")
            clean[name] = (x[order], y[order])
            if tail is not None:
                broken[name] = tail
    return clean, broken


def trajectory(
    series: Mapping[str, tuple[Any, Any]],
    *,
    max_points: int = 500,
    min_points: int = 3,
    method: Method = "pca",
) -> Trajectory:
    """``series``: metric name → ``(steps, values)``. Two or more usable metrics are needed;
    with fewer, the trajectory is empty (``metrics`` names what was usable)."""
    if method == "umap" and not umap_available():
        raise ImportError('method="umap" needs umap-learn: pip install umap-learn')
    use_umap = method == "umap" or (method == "auto" and umap_available())
    clean, broken = _usable(series, min_points)
    names = sorted(clean)
    how = "umap" if use_umap else "pca"
    if len(names) < 2:
        return _empty(names, how, _too_few(names, len(series), min_points))
    grid = _grid(clean, max_points)
    cols = [_bucket_means(*clean[name], grid) for name in names]
    for i, name in enumerate(names):
        if name in broken:  # nothing past its last finite value, not that value carried on
            cols[i] = np.where(grid <= clean[name][0][-1], cols[i], np.nan)
    m = np.column_stack(cols)
    rows = np.all(np.isfinite(m), axis=1)
    m, grid = m[rows], grid[rows]
    ended = _ended(broken, grid)
    if m.shape[0] < 3:
        note = (f"{', '.join(names)} have values together at {m.shape[0]} step"
                f"{'' if m.shape[0] == 1 else 's'}; a trajectory needs at least 3")  # fmt: skip
        return _empty(names, how, f"{ended}; {note}" if ended else note)
    sd = m.std(axis=0)
    keep = sd > 0
    m, names = m[:, keep], [n for n, k in zip(names, keep, strict=True) if k]
    if len(names) < 2:
        where = " over the steps they share"
        return _empty(names, how, _too_few(names, len(series), min_points, where))
    z = (m - m.mean(axis=0)) / m.std(axis=0)
    if use_umap:
        import umap  # type: ignore[import-not-found,unused-ignore]

        # one job: with a seed, UMAP runs single-threaded anyway (and warns unless told so)
        pts = umap.UMAP(n_components=2, random_state=0, n_jobs=1).fit_transform(z)
        return Trajectory(grid, np.asarray(pts, dtype=float), names, "umap", None, None, ended)
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    pts = u[:, :2] * s[:2]
    # a fixed sign per component (largest loading positive), so the picture does not flip
    # between two requests on a growing run
    for k in range(2):
        if vt[k, np.argmax(np.abs(vt[k]))] < 0:
            pts[:, k] *= -1
            vt[k] *= -1
    var = s**2
    explained = [float(v) for v in (var[:2] / var.sum())]
    loadings = {n: [float(vt[0, i]), float(vt[1, i])] for i, n in enumerate(names)}
    return Trajectory(grid, pts, names, "pca", explained, loadings, ended)
