"""What a proposed change would do, from what similar changes did before, in this run and its
branches.

A *past change* is an applied ledger entry whose ``changes`` hold the knob, ``{old, new}``, both
positive numbers, at step ``S`` (the change lands at the end of step ``S``). Its *impact* on the
metric: fit the forecast's trend (:func:`hotcb.analytics.forecast.fit_trend`) on the metric up to
``S`` (the window of ``before`` steps), project it over ``S+1 … S+horizon`` (cut at the next
applied change of any knob, so two changes are not credited to one), and take the mean gap
between what was logged there and the projection: in log space for a positive metric (``-0.1``
means the metric ran about 10 % below its own trend), in the metric's units otherwise. At least
``min_after`` logged points after the change are needed.

*Similar* to a proposal ``knob × factor``: the same knob, the same direction, and a log-ratio
``log(new/old)`` within a factor :data:`SIMILAR` of ``log(factor)`` (for ×0.5: ×0.25 to ×0.71).

The *what-if band* shifts the run's current forecast by the impacts' quantiles: the median
impact moves the median, the low and high impacts move the band's edges (with one or two
similar changes, their smallest and largest impact). No similar change yet: no band, and
:attr:`WhatIf.note` says so.

A branch's metrics before its branch step live in its parent: :func:`join_branch` puts the
parent's points up to the branch step in front of the child's, so a change at the child's first
step has a trend before it. Inherited ledger entries (copied from the parent by ``hotcb
branch``) are skipped: the parent's own ledger counts them once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ledger import live_entries
from .forecast import MIN_POINTS, Forecast, fit_trend

__all__ = [
    "SIMILAR",
    "PastChange",
    "RunHistory",
    "WhatIf",
    "join_branch",
    "past_changes",
    "similar",
    "whatif",
]

#: A past log-ratio is similar when it is within this factor of the proposal's.
SIMILAR = 2.0


@dataclass(frozen=True)
class RunHistory:
    """What :func:`past_changes` reads of one run: its ledger and the metric's series."""

    run: str
    entries: Iterable[Mapping[str, Any]]
    steps: Any
    values: Any


@dataclass(frozen=True)
class PastChange:
    run: str
    step: int
    knob: str
    old: float
    new: float
    source: str | None
    impact: float | None  # None: not measurable (too little before or after it)
    points_after: int
    log_space: bool = True

    @property
    def log_ratio(self) -> float:
        return math.log(self.new / self.old)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "step": self.step,
            "knob": self.knob,
            "old": self.old,
            "new": self.new,
            "factor": self.new / self.old,
            "source": self.source,
            "impact": self.impact,
            "points_after": self.points_after,
            "log_space": self.log_space,
        }


def _knob_matches(entry: Mapping[str, Any], key: str, knob: str) -> bool:
    """``lr`` matches the key ``lr`` of any module; ``opt.lr`` (the tuner's and autopilot's
    spelling) matches ``lr`` of module ``opt`` only."""
    if key == knob:
        return True
    mod, _, name = knob.partition(".")
    return bool(name) and name == key and entry.get("module") == mod


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _change_steps(entries: list[Mapping[str, Any]]) -> np.ndarray:
    return np.array(
        sorted(
            int(e["step"])
            for e in entries
            if e.get("decision") == "applied"
            and e.get("changes")
            and isinstance(e.get("step"), int)
        ),
        dtype=float,
    )


def past_changes(
    history: RunHistory,
    knob: str,
    *,
    horizon: int = 200,
    before: int = 300,
    min_after: int = 3,
) -> list[PastChange]:
    """Every applied change of ``knob`` in ``history``, with its measured impact; a change a
    resume replaced counts once (its re-applied copy), as in a recipe, and so does one a
    restarted life made again (the same knob, values and step). A ramp counts at its start:
    its end's entry (``source: ramp``) repeats its values, and was a second change, credited
    with the whole ramp's factor where the value moved least."""
    entries = [e for e in live_entries(history.entries) if not e.get("inherited")]
    x = np.asarray(history.steps, dtype=float)
    y = np.asarray(history.values, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    # a sparse metric (val_loss every 100 steps) gets windows wide enough for its points
    gap = float(np.median(np.diff(x))) if x.size > 1 else 1.0
    before = max(before, int(2 * MIN_POINTS * gap))
    horizon = max(horizon, int(min_after * gap))
    all_changes = _change_steps(entries)
    out: dict[tuple[int, str, float, float], PastChange] = {}
    for e in entries:
        step = e.get("step")
        changes = e.get("changes")
        if e.get("decision") != "applied" or not isinstance(changes, dict):
            continue
        if not isinstance(step, int) or isinstance(step, bool) or e.get("source") == "ramp":
            continue
        for key, ch in changes.items():
            if not _knob_matches(e, str(key), knob) or not isinstance(ch, Mapping):
                continue
            old, new = _number(ch.get("old")), _number(ch.get("new"))
            if old is None or new is None or old <= 0 or new <= 0 or old == new:
                continue
            impact, n_after, log_space = _impact(
                x, y, step, all_changes, horizon, before, min_after
            )
            same = (step, str(key), old, new)
            out.pop(same, None)  # a restarted life made it again: one change, the newer
            out[same] = PastChange(
                run=history.run,
                step=step,
                knob=str(key),
                old=old,
                new=new,
                source=e.get("source"),
                impact=impact,
                points_after=n_after,
                log_space=log_space,
            )
    return list(out.values())


def _impact(
    x: np.ndarray,
    y: np.ndarray,
    step: int,
    change_steps: np.ndarray,
    horizon: int,
    before: int,
    min_after: int,
) -> tuple[float | None, int, bool]:
    later = change_steps[change_steps > step]
    end = min(step + horizon, float(later[0]) if later.size else math.inf)
    pre = (x > step - before) & (x <= step)
    post = (x > step) & (x <= end)
    n_after = int(post.sum())
    trend = fit_trend(x[pre], y[pre], backend="numpy")
    if trend is None or n_after < min_after:
        return None, n_after, True
    log_space = trend.log_space and bool(np.all(y[post] > 0))
    proj = trend.predict(x[post])
    gap = np.log(y[post]) - np.log(proj) if log_space else y[post] - proj
    return float(np.mean(gap)), n_after, log_space


def similar(
    changes: Iterable[PastChange], factor: float, *, measurable: bool = True
) -> list[PastChange]:
    """The changes in the direction of ``factor`` whose log-ratio is within a factor
    :data:`SIMILAR` of ``log(factor)`` (only those with a measured impact, unless
    ``measurable=False``)."""
    if factor <= 0 or factor == 1:
        raise ValueError(f"factor must be a positive number other than 1, got {factor}")
    target = math.log(factor)
    out = []
    for c in changes:
        if measurable and c.impact is None:
            continue
        r = c.log_ratio / target  # > 0: same direction
        if 1 / SIMILAR <= r <= SIMILAR:
            out.append(c)
    return out


@dataclass(frozen=True)
class WhatIf:
    knob: str
    factor: float
    similar: list[PastChange]
    considered: int  # changes of the knob found (similar or not, measurable or not)
    forecast: Forecast | None
    unmeasured: int = 0  # similar changes without enough points around them to measure
    impact: dict[str, Any] | None = None  # lo, median, hi, log_space
    band: dict[str, Any] | None = field(default=None)

    @property
    def note(self) -> str | None:
        if not self.similar and self.unmeasured:
            n = self.unmeasured
            return f"{n} similar change{'s' if n > 1 else ''}, not measurable yet (too few points around {'them' if n > 1 else 'it'})"  # fmt: skip
        if not self.similar:
            return "no similar change yet"
        if self.forecast is None:
            return "not enough history for a forecast to shift"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "knob": self.knob,
            "factor": self.factor,
            "considered": self.considered,
            "similar": [c.to_dict() for c in self.similar],
            "impact": self.impact,
            "band": self.band,
            "unmeasured": self.unmeasured,
            "note": self.note,
        }


def _shift(
    values: np.ndarray, d: float, log_space: bool, bounds: tuple[float, float] | None
) -> list[float | None]:
    out = values * math.exp(d) if log_space else values + d
    if bounds is not None:  # a share stays a share (the forecast's own bounds)
        out = np.clip(out, *bounds)
    return [float(v) if math.isfinite(v) else None for v in out.tolist()]


def whatif(
    knob: str,
    factor: float,
    changes: Iterable[PastChange],
    current: Forecast | None,
    quantiles: tuple[float, float] = (0.1, 0.9),
) -> WhatIf:
    """The what-if of ``knob × factor``: the similar changes among ``changes`` and, when there
    are any and ``current`` (the run's forecast) exists, the band they imply."""
    changes = list(changes)
    sim = similar(changes, factor)
    unmeasured = len(similar(changes, factor, measurable=False)) - len(sim)
    if not sim or current is None:
        return WhatIf(knob, factor, sim, len(changes), current, unmeasured=unmeasured)
    # an impact is a log-ratio (log_space) or a difference in the metric's units: the two do
    # not mix, and the kind is the changes' own, not the forecast's (log-ratios of 1-2 % were
    # added to a loss near 0 as units, a 300 % drop). Mixed: those of the forecast's kind.
    used = sim
    if len({c.log_space for c in sim}) > 1:
        used = [c for c in sim if c.log_space == current.trend.log_space]
    imp = np.array([c.impact for c in used], dtype=float)
    if imp.size >= 3:
        lo, med, hi = np.quantile(imp, [quantiles[0], 0.5, quantiles[1]])
    else:
        lo, med, hi = float(imp.min()), float(np.median(imp)), float(imp.max())
    log_space = used[0].log_space
    band = {
        "steps": [int(s) for s in current.steps],
        "median": _shift(current.median, float(med), log_space, current.bounds),
        "lo": _shift(current.lo, float(lo), log_space, current.bounds),
        "hi": _shift(current.hi, float(hi), log_space, current.bounds),
    }
    impact = {"lo": float(lo), "median": float(med), "hi": float(hi), "log_space": log_space}
    return WhatIf(knob, factor, sim, len(changes), current, unmeasured, impact, band)


def join_branch(
    parent_steps: Any, parent_values: Any, branch_step: int, steps: Any, values: Any
) -> tuple[np.ndarray, np.ndarray]:
    """A branch's series with its parent's points up to ``branch_step`` in front (the child's
    own points win from the first step it logged)."""
    ps, pv = np.asarray(parent_steps, dtype=float), np.asarray(parent_values, dtype=float)
    cs, cv = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    first = float(cs[0]) if cs.size else math.inf
    keep = (ps <= branch_step) & (ps < first)
    return np.concatenate([ps[keep], cs]), np.concatenate([pv[keep], cv])
