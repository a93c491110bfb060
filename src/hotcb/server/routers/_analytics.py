"""Run analytics over REST: the key metric's forecast (with its backtest against two baselines),
the what-if of a proposed change, and the metric-space trajectory (docs/analytics.md).

- ``GET /api/runs/{run}/forecast?metric=val_loss&horizon=200``: the projection and its band,
  and a backtest of the same model on this run's own history against the last value and a
  linear trend; ``show`` is true only where the model beats both, else ``note`` says why.
- ``GET /api/runs/{run}/whatif?knob=lr&factor=0.5&metric=val_loss&horizon=200``: the band the
  similar past changes of ``knob`` imply, in this run, its parent chain and its branches.
- ``GET /api/runs/{run}/trajectory?names=a,b&max_points=500``: the 2-D trajectory (PCA).

The series come from the run's :class:`~hotcb.server.tailer.MetricsIndex` (copied under the run's
lock, then computed in a worker thread); results are cached per run until its metrics grow (by
0.5 % for the forecast and the trajectory of a long run: see :func:`coarse`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query

from ... import jsonl
from ...analytics import RunHistory, backtest, forecast, join_branch, past_changes, whatif
from ...analytics.forecast import Backend, nonfinite_tail, unit_bounds
from ...analytics.trajectory import trajectory, umap_available
from ...runfiles import RunPaths
from ..deps import Deps
from ..runs import RunState
from ..tailer import MetricsIndex
from ._runs import both, changes_of, impacts

Series = tuple[np.ndarray, np.ndarray]

#: Related runs (parent chain and branches) a what-if reads at most.
MAX_RELATED = 32
#: Cached results kept (forecasts, what-ifs, trajectories of every run together).
CACHE_SIZE = 128
NOT_BETTER = "forecast not better than the last value or a linear trend here"


_sklearn_loading = threading.Lock()
_sklearn_started = False


def _import_sklearn() -> None:
    with contextlib.suppress(ImportError):  # not installed: the numpy fit it is
        import sklearn.linear_model  # noqa: F401


def fit_backend() -> Backend:
    """scikit-learn's fit once it is imported, else the numpy fit (the same estimator). Its
    import takes seconds (more on a loaded machine), so the first request starts it in a
    background thread instead of waiting for it; the numpy fit answers until it is there."""
    global _sklearn_started
    if "sklearn.linear_model" in sys.modules:
        return "sklearn"
    with _sklearn_loading:
        if not _sklearn_started:
            _sklearn_started = True
            threading.Thread(target=_import_sklearn, name="hotcb-sklearn-import", daemon=True).start()  # fmt: skip
    return "numpy"


def coarse(lines: int) -> int:
    """``lines`` rounded down to a step of 0.5 % of it: a forecast or trajectory of a long live
    run is recomputed when its history grew by that much, not on every poll of the page."""
    step = max(1, lines // 200)
    return lines - lines % step


def _copy(index: MetricsIndex, names: list[str]) -> dict[str, Series]:
    """The named series as float arrays (runs under the run's lock, in a worker thread)."""
    out = {}
    for name in names:
        s = index.series.get(name)
        if s is not None and len(s):
            out[name] = (np.array(s.steps, dtype=float), np.array(s.values, dtype=float))
    return out


def _empty() -> Series:
    return np.zeros(0), np.zeros(0)


def _fmt_step(step: float) -> str:
    return str(int(step)) if float(step).is_integer() else f"{step:g}"


def whatif_doc(
    histories: list[RunHistory], knob: str, factor: float, horizon: int, metric: str
) -> dict[str, Any]:
    """What ``/whatif`` answers: the similar changes of ``knob`` in ``histories`` (this run
    first, then its family) and the band they imply for this run's forecast (as ``/forecast``
    draws it); none for a metric that is no longer finite, which ``/forecast`` refuses too."""
    base = histories[0]
    changes = [c for h in histories for c in past_changes(h, knob, horizon=horizon)]
    broken = nonfinite_tail(base.steps, base.values)
    if broken is not None:  # a band would continue the curve from before it broke
        w = whatif(knob, factor, changes, None)
        note = (f"{metric} is no longer finite ({broken[1]} since step "
                f"{_fmt_step(broken[0])}): no forecast to shift")  # fmt: skip
        return {**w.to_dict(), "note": note, "forecast": None}
    bounds = unit_bounds(metric, base.values)
    bt = backtest(base.steps, base.values, horizon, bounds=bounds)
    fc = forecast(base.steps, base.values, horizon, backend=fit_backend(), calibration=bt, bounds=bounds)  # fmt: skip
    w = whatif(knob, factor, changes, fc)
    return {**w.to_dict(), "forecast": fc.to_dict() if fc is not None else None}


def forecast_doc(
    x: np.ndarray, y: np.ndarray, horizon: int, metric: str | None = None
) -> dict[str, Any]:
    """What ``/forecast`` answers for one series (also the base of a what-if). ``show``: a
    forecast exists, its last logged value is finite, it beat both baselines on this run's
    past, and its band held enough of the past targets; ``note`` says which failed."""
    bounds = unit_bounds(metric, y) if metric else None
    bt = backtest(x, y, horizon, bounds=bounds)
    fc = forecast(x, y, horizon, backend=fit_backend(), calibration=bt, bounds=bounds)
    n = int(np.isfinite(y).sum())
    broken = nonfinite_tail(x, y)
    if broken is not None:
        since, kind = broken
        what = metric or "the metric"
        note = f"{what} is no longer finite ({kind} since step {_fmt_step(since)}): no forecast"
    elif fc is None:
        note = f"not enough points for a forecast yet ({n} of at least 8)"
    elif bt.origins == 0:
        note = f"not enough history yet to test a {horizon}-step forecast against the baselines"
    elif not bt.better:
        note = NOT_BETTER
    elif bt.coverage_poor(fc.calibrated > 0):
        inside, of = bt.band_record(fc.calibrated > 0)
        note = (f"forecast band held only {inside} of {of} past values on this run "
                f"(a {round(100 * bt.nominal)} % band): not shown")  # fmt: skip
    else:
        note = None
    return {
        "points": n,
        "forecast": fc.to_dict() if fc is not None else None,
        "backtest": bt.to_dict(),
        "show": note is None,
        "note": note,
    }


#: What a run most likely calls its key metric, when the configuration's is not logged: the
#: names the Lightning, HF and bare-loop conventions use, validation first.
_CONVENTIONAL = ("val_loss", "val/loss", "valid/loss", "eval_loss", "eval/loss", "loss",
                 "train/loss", "train_loss")  # fmt: skip


class _Runs:
    """What the analytics endpoints read of runs: metric series (a branch's joined with its
    parent's), related runs, and a small cache of results keyed by what they were made from."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.cache: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()

    def cached(self, key: tuple[Any, ...]) -> dict[str, Any] | None:
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
        return hit

    def remember(self, key: tuple[Any, ...], value: dict[str, Any]) -> dict[str, Any]:
        self.cache[key] = value
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return value

    def pick_metric(self, run: RunState, metric: str | None) -> str:
        """``metric`` (404 when the run does not log it), or the autopilot's key metric, or the
        chart's, or the first logged."""
        names = run.metrics.names()
        if metric:
            if metric not in names:
                logged = ", ".join(names) or "nothing yet"
                raise HTTPException(404, detail=f"run {run.run_id!r} has no metric {metric!r} (it logs: {logged})")  # fmt: skip
            return metric
        cfg = self.deps.config
        for m in (cfg.autopilot.key_metric, cfg.chart.key_metric, *_CONVENTIONAL):
            if m in names:
                return m
        losses = [n for n in names if "loss" in n.lower()]  # a validation loss first
        losses.sort(key=lambda n: not n.lower().startswith(("val", "eval")))
        if losses:
            return losses[0]
        # nothing logged yet: the key metric, whose forecast then says there are no points
        return names[0] if names else cfg.autopilot.key_metric

    async def series(self, run: RunState, metric: str) -> Series:
        got = await run.run_locked(_copy, run.metrics, [metric])
        return got.get(metric) or _empty()

    def parent_of(self, run: RunState) -> tuple[str | None, int | None]:
        info = self.deps.registry.branch_info(run.meta().get("branch"))
        if info is None:
            return None, None
        return info["parent"], info["step"]

    async def joined(self, run: RunState, metric: str, seen: set[str] | None = None) -> Series:
        """The run's series with its parent chain's points before each branch step."""
        seen = seen or {run.run_id}
        x, y = await self.series(run, metric)
        parent, step = self.parent_of(run)
        if parent is None or step is None or parent in seen or len(seen) >= MAX_RELATED:
            return x, y
        seen.add(parent)
        try:
            prun = self.deps.registry.get(parent)
        except LookupError:
            return x, y
        await prun.refresh()
        px, py = await self.joined(prun, metric, seen)
        return join_branch(px, py, step, x, y)

    def _children(self) -> dict[str, list[str]]:
        """Parent run id → the ids of the runs branched from it, under the served folder."""
        reg = self.deps.registry
        out: dict[str, list[str]] = {}
        for rid in reg.discover()[: MAX_RELATED * 8]:
            try:
                meta = jsonl.read_json(RunPaths(reg.resolve(rid)).run_meta, {})
            except LookupError:
                continue
            b = reg.branch_info(meta.get("branch") if isinstance(meta, dict) else None)
            if b is not None and b["parent"] is not None:
                out.setdefault(b["parent"], []).append(rid)
        return out

    def related(self, run: RunState) -> list[RunState]:
        """The run, its parent chain and the runs branched from any of them (breadth first),
        at most :data:`MAX_RELATED`."""
        found: dict[str, RunState] = {run.run_id: run}
        cur: RunState | None = run
        while cur is not None and len(found) < MAX_RELATED:
            parent, _ = self.parent_of(cur)
            cur = self._get(parent) if parent is not None and parent not in found else None
            if cur is not None:
                found[cur.run_id] = cur
        children = self._children()
        queue = list(found)
        while queue:
            for child in children.get(queue.pop(0), []):
                state = self._get(child) if child not in found else None
                if state is not None and len(found) < MAX_RELATED:
                    found[child] = state
                    queue.append(child)
        return list(found.values())

    def _get(self, run_id: str) -> RunState | None:
        try:
            return self.deps.registry.get(run_id)
        except LookupError:
            return None


def _known_knob(run: Any, knob: str) -> None:
    """404 for a knob the run does not have (it said "no similar change yet", as for a
    real knob never changed); nothing to check before the run publishes its knobs."""
    doc = run.actuators.doc or {}
    keys: dict[str, Any] = {str(a.get("param_key")): a.get("group")
                            for a in doc.get("actuators") or () if isinstance(a, dict)}  # fmt: skip
    if not keys or knob in keys:
        return
    group, _, bare = knob.partition(".")
    if bare in keys and (not group or keys[bare] == group):
        return
    raise HTTPException(
        404, detail=f"the run has no knob {knob!r} (its knobs: {', '.join(sorted(keys))})"
    )


def create_analytics_router(deps: Deps) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["analytics"])
    runs = _Runs(deps)

    @both(router, "forecast")
    async def get_forecast(
        run_id: str = ".",
        metric: str | None = Query(None, description="default: the autopilot's key metric"),
        horizon: int = Query(200, ge=1, le=10_000_000, description="steps ahead"),
    ) -> dict[str, Any]:
        """The metric's projection ``horizon`` steps ahead with a 10-90 % band, and the same
        model's backtest on this run's history against the last value and a linear trend."""
        run = deps.run(run_id)
        await run.refresh()
        name = runs.pick_metric(run, metric)
        key = ("forecast", run.run_id, name, horizon, coarse(run.metrics.lines), run.meta().get("branch") is not None)  # fmt: skip
        hit = runs.cached(key)
        if hit is not None:
            return hit
        x, y = await runs.joined(run, name)
        doc = await asyncio.to_thread(forecast_doc, x, y, horizon, name)
        return runs.remember(key, {"run": run.run_id, "metric": name, "horizon": horizon, **doc})

    @both(router, "impact")
    async def get_impact(
        run_id: str = ".",
        metric: str | None = None,
        window: int | None = Query(None, ge=1, le=100_000),
        limit: int | None = Query(None, ge=1, le=100_000),
        since: int | None = Query(None, ge=0),
    ) -> dict[str, Any]:
        """Before/after mean and slope of a metric around each applied change (``since``: from
        that seq on, the entries the page holds; ``limit``: the newest that many). A branch's
        series has its parent's points before its branch step: a change at its first step had
        a "before" of one point. The windows are measured in a worker thread: a long run's
        thousands of changes took seconds, which held up its live updates."""
        run = deps.run(run_id)
        await run.refresh()
        entries = changes_of(run.ledger.entries, limit, since)
        x, y = await runs.joined(run, metric or deps.config.chart.key_metric)
        window = window or deps.config.chart.impact_window
        return {"impacts": await asyncio.to_thread(impacts, x, y, entries, window)}

    @both(router, "whatif")
    async def get_whatif(
        run_id: str = ".",
        knob: str = Query(..., min_length=1, description="e.g. lr, weight_decay, opt.lr"),
        factor: float = Query(..., gt=0, description="the proposed new/old ratio, e.g. 0.5"),
        metric: str | None = None,
        horizon: int = Query(200, ge=1, le=10_000_000),
    ) -> dict[str, Any]:
        """The band that similar past changes of ``knob`` (same direction, a log-ratio within
        2× of ``log(factor)``) imply for this run's forecast; ``note`` when there are none."""
        if not math.isfinite(factor) or factor == 1:
            raise HTTPException(422, detail=f"factor must be a positive number other than 1, got {factor}")  # fmt: skip
        run = deps.run(run_id)
        await run.refresh()
        _known_knob(run, knob)
        name = runs.pick_metric(run, metric)
        family = runs.related(run)
        for r in family[1:]:
            await r.refresh()
        sig = tuple((r.run_id, r.metrics.lines, r.ledger.view.last_step) for r in family)
        key = ("whatif", run.run_id, name, knob, factor, horizon, sig)
        hit = runs.cached(key)
        if hit is not None:
            return hit
        histories = []
        for r in family:
            x, y = await runs.joined(r, name)
            histories.append(RunHistory(r.run_id, list(r.ledger.entries), x, y))
        doc = await asyncio.to_thread(whatif_doc, histories, knob, factor, horizon, name)
        out = {"run": run.run_id, "metric": name, "horizon": horizon, "runs": [r.run_id for r in family], **doc}  # fmt: skip
        return runs.remember(key, out)

    @both(router, "trajectory")
    async def get_trajectory(
        run_id: str = ".",
        names: str | None = Query(None, description="comma-separated; default every metric"),
        max_points: int = Query(500, ge=10, le=5000),
        method: str = Query(
            "pca",
            pattern="^(auto|pca|umap)$",
            description="pca (fast); umap when umap-learn is installed (seconds a request, "
            "and about 40 s the first time in a server: numba compiles it); auto: umap if "
            "installed",
        ),
    ) -> dict[str, Any]:
        """The run's metric vector over time projected to 2-D (PCA; UMAP on request)."""
        if method == "umap" and not umap_available():
            raise HTTPException(422, detail='method=umap needs umap-learn: pip install umap-learn')  # fmt: skip
        run = deps.run(run_id)
        await run.refresh()
        wanted = [n for n in (names or "").split(",") if n] or run.metrics.names()
        key = (
            "trajectory",
            run.run_id,
            tuple(wanted),
            max_points,
            method,
            coarse(run.metrics.lines),
        )
        hit = runs.cached(key)
        if hit is not None:
            return hit
        got = await run.run_locked(_copy, run.metrics, wanted)
        tr = await asyncio.to_thread(trajectory, got, max_points=max_points, method=method)  # type: ignore[arg-type]
        return runs.remember(key, {"run": run.run_id, **tr.to_dict()})

    return router
