"""Read side of activation capture: ``RUN/hotcb.features.jsonl`` (written by
:class:`hotcb.features.FeatureCapture`) as one matrix per statistic, layers × capture steps,
for the dashboard's heat strips (static/features.js).

The file is read incrementally: each run keeps the byte offset it has parsed up to and the
columns so far, so a request reads only what was appended since the last one.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from fastapi import APIRouter, HTTPException, Query

from ...features import STATS, read_features
from ...runfiles import FEATURES
from ..deps import Deps
from ._runs import both

__all__ = ["FeatureColumns", "create_features_router"]

#: Columns sent at most (capture steps); more are thinned evenly, the newest always kept.
MAX_POINTS = 2000


class FeatureColumns:
    """The parsed records of one features file: steps and, per layer and stat, one value (or
    None) per step. ``update()`` parses what was appended since the last call."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.ident: tuple[int, int] | None = None  # (device, inode): a replaced file restarts
        self.steps: list[int] = []
        self.layers: dict[str, dict[str, list[float | None]]] = {}
        self.lock = threading.Lock()

    def _reset(self) -> None:
        self.offset = 0
        self.steps = []
        self.layers = {}

    def update(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._reset()
            self.ident = None
            return
        ident = (st.st_dev, st.st_ino)
        if ident != self.ident or st.st_size < self.offset:
            self._reset()
            self.ident = ident
        if st.st_size == self.offset:
            return
        records, self.offset = read_features(os.path.dirname(self.path), self.offset)
        for rec in records:
            self._add(rec)

    def _add(self, rec: dict[str, Any]) -> None:
        step = rec.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            return
        n = len(self.steps)
        self.steps.append(step)
        for name, stats in rec["layers"].items():
            if not isinstance(stats, dict):
                continue
            cols = self.layers.get(name)
            if cols is None:
                cols = self.layers[name] = {s: [None] * n for s in STATS}
            for s in STATS:
                v = stats.get(s)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    cols[s].append(float(v))
                else:
                    cols[s].append(None)
        for cols in self.layers.values():  # layers absent from this record
            for s in STATS:
                if len(cols[s]) == n:
                    cols[s].append(None)

    def matrix(
        self, stat: str, max_points: int, step_min: int | None, step_max: int | None
    ) -> dict[str, Any]:
        idx = [
            i
            for i, s in enumerate(self.steps)
            if (step_min is None or s >= step_min) and (step_max is None or s <= step_max)
        ]
        if len(idx) > max_points:
            stride = len(idx) / max_points
            picked = [idx[int(k * stride)] for k in range(max_points - 1)] + [idx[-1]]
            idx = sorted(set(picked))
        names = list(self.layers)
        return {
            "stat": stat,
            "stats": list(STATS),
            "layers": names,
            "steps": [self.steps[i] for i in idx],
            "values": [[self.layers[n][stat][i] for i in idx] for n in names],
            "captures": len(self.steps),
        }


def create_features_router(deps: Deps) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["runs"])
    cache: dict[str, FeatureColumns] = {}
    cache_lock = threading.Lock()

    def columns(run_dir: str) -> FeatureColumns:
        path = os.path.join(run_dir, FEATURES)
        with cache_lock:
            col = cache.get(path)
            if col is None:
                if len(cache) >= 64:  # a long-lived server over many runs
                    cache.pop(next(iter(cache)))
                col = cache[path] = FeatureColumns(path)
            return col

    @both(router, "features")
    def features(
        run_id: str = ".",
        stat: str = Query("mean", description=f"one of {', '.join(STATS)}"),
        max_points: int = Query(500, ge=2, le=MAX_POINTS, description="capture steps at most"),
        step_min: int | None = None,
        step_max: int | None = None,
    ) -> dict[str, Any]:
        """Activation summaries of the run (``hotcb.features.jsonl``): ``layers`` (names, in
        first-seen order), ``steps`` (capture steps, thinned evenly to ``max_points``) and
        ``values[layer][column]`` of ``stat`` (null where a layer was not captured or the
        figure was not finite). No file yet: empty lists."""
        if stat not in STATS:
            raise HTTPException(422, detail=f"stat must be one of {', '.join(STATS)}, got {stat!r}")
        col = columns(deps.path(run_id))
        with col.lock:
            col.update()
            return col.matrix(stat, max_points, step_min, step_max)

    return router
