"""Read side of a run: list, status, metrics history, ledger, actuators, impact, recipe.

Run ids may contain ``/`` (runs nested in folders), so routes take ``{run_id:path}``. Browsers
drop a ``.`` path segment, so every route also answers without the run id segment
(``/api/runs/status``) for the run at the root, ``"."``.
"""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from ... import jsonl
from ...errors import HotcbError
from ...recipe import export_recipe
from ..deps import Deps
from ..downsample import minmax_downsample
from ..tailer import MetricsIndex


def both(router: APIRouter, suffix: str, **kw: Any) -> Callable[[Callable[..., Any]], Any]:
    """Register a GET handler at ``/runs/{run_id}/<suffix>`` and ``/runs/<suffix>`` (run ".")."""

    def deco(fn: Callable[..., Any]) -> Any:
        router.get(f"/runs/{{run_id:path}}/{suffix}", **kw)(fn)
        router.get(f"/runs/{suffix}", include_in_schema=False, **kw)(fn)
        return fn

    return deco


def _opt_number(text: str | None, what: str) -> float | None:
    """Query values such as ``step_min=`` may be empty: that means 'no bound'."""
    if text is None or text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise HTTPException(422, detail=f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):  # (math.ceil(nan) was a 500)
        raise HTTPException(422, detail=f"{what} must be a finite number, got {text!r}")
    return value


def _clean(values: list[float]) -> list[float | None]:
    return [None if v != v or v in (math.inf, -math.inf) else v for v in values]


def history(
    index: MetricsIndex,
    names: list[str],
    max_points: int,
    step_min: float | None,
    step_max: float | None,
) -> dict[str, Any]:
    """Downsampled series for ``names`` (runs in a worker thread under the run's lock)."""
    out: dict[str, Any] = {}
    total = 0
    downsampled = False
    for name in names:
        s = index.series.get(name)
        if s is None:
            out[name] = {"step": [], "value": []}
            continue
        steps, values = s.steps, s.values
        lo = 0 if step_min is None else bisect_left(steps, math.ceil(step_min))
        hi = len(steps) if step_max is None else bisect_right(steps, math.floor(step_max))
        hi = max(lo, hi)
        total += hi - lo
        downsampled |= hi - lo > max_points
        xs, ys = minmax_downsample(steps, values, max_points, lo, hi)
        out[name] = {"step": xs, "value": _clean(ys)}
    return {"series": out, "total_points": total, "downsampled": downsampled}


def _window_stats(steps: Any, values: Any, lo: int, hi: int) -> dict[str, Any]:
    pts = [(steps[i], values[i]) for i in range(lo, hi) if math.isfinite(values[i])]
    n = len(pts)
    if n == 0:
        return {"mean": None, "slope": None, "n": 0}
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else None
    return {"mean": my, "slope": slope, "n": n}


def changes_of(
    entries: Iterable[dict[str, Any]], limit: int | None, since: int | None
) -> list[dict[str, Any]]:
    """The applied changes among ``entries``: with ``since``, those from that seq on; with
    ``limit``, the newest that many."""
    found = [e for e in entries if e.get("decision") == "applied" and e.get("changes")
             and (since is None or (e.get("seq") or 0) >= since)]  # fmt: skip
    return found if limit is None else found[-limit:]


def impacts(
    steps: Any, values: Any, entries: list[dict[str, Any]], window: int
) -> list[dict[str, Any]]:
    """Mean and least-squares slope of a metric (``steps``, ``values``, in step order) over
    ``window`` steps before each applied change (steps ``S-window+1..S``, the change lands at
    the end of step S) and after it (``S+1..S+window``)."""
    out = []
    for e in entries:
        step = e.get("step")
        if e.get("decision") != "applied" or not e.get("changes") or not isinstance(step, int):
            continue
        b_lo, mid = bisect_right(steps, step - window), bisect_right(steps, step)
        a_hi = bisect_right(steps, step + window)
        out.append(
            {
                "seq": e.get("seq"),
                "cmd_id": e.get("cmd_id"),
                "step": step,
                "module": e.get("module"),
                "op": e.get("op"),
                "source": e.get("source"),
                "changes": e.get("changes"),
                "before": _window_stats(steps, values, b_lo, mid),
                "after": _window_stats(steps, values, mid, a_hi),
            }
        )
    return out


def _csv(text: str | None) -> set[str] | None:
    if not text:
        return None
    return {t.strip() for t in text.split(",") if t.strip()} or None


def create_runs_router(deps: Deps) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["runs"])
    cfg = deps.config

    @router.get("/runs")
    def runs() -> dict[str, Any]:
        """Runs under the served folder (re-scanned on every call)."""
        out = []
        for rid in deps.registry.discover():
            try:
                out.append(deps.registry.summary(rid))
            except LookupError:  # vanished between the scan and the read
                continue
        return {"runs": out}

    @both(router, "status")
    async def status(run_id: str = ".") -> dict[str, Any]:
        """run.json, freeze state, actuators, pending schedules, last metrics, stale, paused."""
        run = deps.run(run_id)
        await run.refresh()
        return run.status()

    @both(router, "metrics/names")
    async def metric_names(run_id: str = ".") -> dict[str, Any]:
        run = deps.run(run_id)
        await run.refresh()
        return {"names": run.metrics.names()}

    @both(router, "metrics")
    async def metrics(
        run_id: str = ".",
        names: str | None = Query(None, description="comma-separated; empty: every metric"),
        max_points: int | None = Query(None, ge=4, description="per series; capped by config"),
        step_min: str | None = None,
        step_max: str | None = None,
    ) -> dict[str, Any]:
        """History, downsampled server-side (min/max per bucket keeps spikes)."""
        run = deps.run(run_id)
        await run.refresh()
        cap = cfg.history_max_points
        mp = min(max_points or cap, cap)
        wanted = [n for n in (names or "").split(",") if n] or run.metrics.names()
        smin, smax = _opt_number(step_min, "step_min"), _opt_number(step_max, "step_max")
        return await run.run_locked(history, run.metrics, wanted, mp, smin, smax)

    @both(router, "ledger")
    async def ledger(
        run_id: str = ".",
        limit: int | None = Query(None, ge=1),
        decision: str | None = Query(None, description="comma-separated decisions"),
        module: str | None = None,
        source: str | None = None,
        since_seq: int | None = None,
    ) -> dict[str, Any]:
        """Ledger entries, newest last, filtered; at most ``limit`` (the newest ones)."""
        run = deps.run(run_id)
        await run.refresh()
        dec, mod, src = _csv(decision), _csv(module), _csv(source)
        picked = [
            e
            for e in run.ledger.entries
            if (dec is None or e.get("decision") in dec)
            and (mod is None or e.get("module") in mod)
            and (src is None or e.get("source") in src)
            and (since_seq is None or (e.get("seq") or 0) > since_seq)
        ]
        n = min(limit or cfg.ledger_limit, cfg.ledger_max_entries)
        return {"entries": picked[-n:]}

    @both(router, "actuators")
    async def actuators(run_id: str = ".") -> dict[str, Any]:
        """The run's ``hotcb.actuators.json`` (what the page can control)."""
        run = deps.run(run_id)
        await run.refresh()
        return run.actuators.doc

    @both(router, "recipe")
    async def recipe(run_id: str = ".") -> Response:
        """The run's applied changes as a portable recipe (JSON lines download)."""
        run = deps.run(run_id)
        try:
            entries = await asyncio.to_thread(_export, run.path)
        except HotcbError as exc:  # e.g. no ledger yet: the reason says what to do
            raise HTTPException(409, detail=str(exc)) from None
        body = "".join(jsonl.dumps(e) + "\n" for e in entries)
        name = run.run_id.replace("/", "_") if run.run_id != "." else "run"
        return Response(
            body,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": _attachment(f"{name}.recipe.jsonl")},
        )

    _knobs_route(router, deps)
    _markers_route(router, deps)
    return router


def _markers_route(router: APIRouter, deps: Deps) -> None:
    @both(router, "markers")
    async def markers(run_id: str = ".", limit: int | None = Query(None, ge=1)) -> dict[str, Any]:
        """The chart markers: every entry that applied a change at a step, newest last, with
        only the fields a marker shows; at most ``limit`` (the newest ones), and at most the
        newest :data:`~hotcb.server.tailer.MARKERS_MAX` of the whole ledger. The ledger page
        (``…/ledger?limit=``) holds only the newest entries; the charts mark every change."""
        run = deps.run(run_id)
        await run.refresh()
        marks = run.markers()
        return {"markers": marks[-limit:] if limit else marks}


def _knobs_route(router: APIRouter, deps: Deps) -> None:
    @both(router, "knobs")
    async def knobs(run_id: str = ".") -> dict[str, Any]:
        """Each knob's value over the run (a step function) and its applied changes, from the
        ledger and the actuators file: charted even when the run logs none of them."""
        run = deps.run(run_id)
        await run.refresh()
        return await _with_parents_knobs(deps, run, run.knobs(), {run.run_id})


#: How many parents up a branch's knob lines are followed.
MAX_PARENTS = 8


async def _with_parents_knobs(
    deps: Deps, run: Any, doc: dict[str, Any], seen: set[str]
) -> dict[str, Any]:
    """A branch's knob lines with its parent chain's before the branch step: the branch's own
    record starts at its checkpoint, and its line held its root's first value flat out to
    there, where the parent's LR schedule had moved it (a cosine drawn as a constant)."""
    info = deps.registry.branch_info(run.meta().get("branch"))
    parent_id, at = (info or {}).get("parent"), (info or {}).get("step")
    if parent_id is None or at is None or parent_id in seen or len(seen) > MAX_PARENTS:
        return doc
    try:
        parent = deps.registry.get(parent_id)
    except LookupError:
        return doc
    seen.add(parent_id)
    await parent.refresh()
    pdoc = await _with_parents_knobs(deps, parent, parent.knobs(), seen)
    theirs = {k["key"]: k["points"] for k in pdoc.get("knobs") or ()}
    for k in doc.get("knobs") or ():
        p = theirs.get(k["key"])
        if not p:
            continue
        before = [(st, v) for st, v in zip(p["step"], p["value"], strict=True) if st < at]
        mine = [(st, v) for st, v in zip(k["points"]["step"], k["points"]["value"],
                                         strict=True) if st >= at]  # fmt: skip
        if before:
            k["points"] = {"step": [st for st, _ in before + mine],
                           "value": [v for _, v in before + mine]}  # fmt: skip
    doc["first_step"] = min(doc.get("first_step", 0), pdoc.get("first_step", 0))
    return doc


def _export(run_dir: str) -> list[dict[str, Any]]:
    """The run's recipe records, without writing into the run directory."""
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = export_recipe(run_dir, os.path.join(tmp, "recipe.jsonl"))
        return list(jsonl.iter_records(path))  # the header line, then the entries


def _attachment(filename: str) -> str:
    """A ``Content-Disposition`` for ``filename`` whatever it holds: an ASCII fallback (quotes,
    backslashes and non-ASCII characters replaced) and the name itself, UTF-8 and
    percent-encoded (RFC 6266). A run named ``exp λ`` made the download a 500 (a header must
    be latin-1)."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
