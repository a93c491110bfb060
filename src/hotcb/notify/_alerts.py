"""Alert rules as pure functions: what a round of new records says about each alert.

:func:`samples` turns one round's :class:`Observation` into the alert's condition, sampled in
order (a threshold or NaN alert samples every new point, so a NaN in the middle of a batch is not
missed); :func:`onsets` reduces the samples to the alerts that fire: once per onset (the
condition turning true), and not again within ``cooldown`` seconds of the last one.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..autopilot.detectors import plateau
from ..autopilot.rules import action_text

__all__ = ["KINDS", "Alert", "Observation", "Sample", "onsets", "samples"]

#: The alert kinds.
KINDS = ("threshold", "nonfinite", "plateau", "stale", "crash", "autopilot")
#: Autopilot record kinds an ``autopilot`` alert reports by default.
AUTOPILOT_KINDS = ("action", "proposal", "fallback")


@dataclass(frozen=True)
class Alert:
    """One alert rule. ``metric`` is None for "any metric" (nonfinite) or no metric (stale,
    crash, autopilot). ``params`` holds the plateau detector's parameters."""

    id: str
    kind: str
    metric: str | None = None
    above: float | None = None
    below: float | None = None
    seconds: float = 300.0
    cooldown: float = 300.0
    records: tuple[str, ...] = AUTOPILOT_KINDS
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """What a notifier saw in one round: the new metric records and autopilot records, the
    recent points of each metric (oldest first, for plateau), and the run's state.
    ``resumed_at``: when the run's last applied ``resume`` was (its ledger time), if the run
    is resumed; the quiet time of a ``stale`` alert counts from it when it is later than the
    last metric (a long pause is no silence)."""

    now: float
    metrics: Sequence[Mapping[str, Any]] = ()
    autopilot: Sequence[Mapping[str, Any]] = ()
    series: Mapping[str, Sequence[tuple[int, float | None]]] = field(default_factory=dict)
    last_metric_time: float | None = None
    #: when the life of the run that goes on began (``hotcb.run.json``): a run started again
    #: in its directory a day after its last metric is not quiet for a day
    started_at: float | None = None
    resumed_at: float | None = None
    ended: bool = False
    paused: bool = False
    crashed: bool = False
    run_dir: str | None = None  # (an alert's `hotcb --dir RUN …` line works from anywhere)
    #: with ``crashed``: how, as ``hotcb status`` says it (``crashed (exit code 3; …)``), and
    #: the last step the run recorded
    crash: str | None = None
    last_step: int | None = None


@dataclass(frozen=True)
class Sample:
    """The condition at one point: ``active``, and when it is, what to say."""

    active: bool
    message: str = ""
    step: int | None = None
    metric: str | None = None
    value: Any = None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _points(alert: Alert, obs: Observation) -> list[tuple[int | None, str, Any]]:
    out: list[tuple[int | None, str, Any]] = []
    for rec in obs.metrics:
        step = rec.get("step") if isinstance(rec.get("step"), int) else None
        values = rec.get("metrics") or {}
        names = [alert.metric] if alert.metric else sorted(values)
        out.extend((step, n, values[n]) for n in names if n in values)
    return out


def _threshold(alert: Alert, obs: Observation) -> list[Sample]:
    out = []
    for step, name, value in _points(alert, obs):
        if not _finite(value):
            continue  # NaN is the nonfinite alert's
        if alert.above is not None and value > alert.above:
            out.append(Sample(True, f"{name}={value:.6g} at step {step} is above "
                                    f"{alert.above:g}", step, name, value))  # fmt: skip
        elif alert.below is not None and value < alert.below:
            out.append(Sample(True, f"{name}={value:.6g} at step {step} is below "
                                    f"{alert.below:g}", step, name, value))  # fmt: skip
        else:
            out.append(Sample(False, step=step, metric=name, value=value))
    return out


def _nonfinite(alert: Alert, obs: Observation) -> list[Sample]:
    out = []
    for rec in obs.metrics:
        step = rec.get("step") if isinstance(rec.get("step"), int) else None
        values = rec.get("metrics") or {}
        names = [alert.metric] if alert.metric else sorted(values)
        bad = [n for n in names if n in values and not _finite(values[n])]
        if bad:
            shown = ", ".join(f"{n}={values[n]!r}" for n in bad).replace("None", "NaN/inf")
            out.append(Sample(True, f"non-finite {shown} at step {step}", step, bad[0], None))
        elif any(n in values for n in names):
            out.append(Sample(False, step=step))
    return out


def _plateau(alert: Alert, obs: Observation) -> list[Sample]:
    if not obs.metrics or alert.metric is None:
        return []
    points = obs.series.get(alert.metric) or ()
    found = plateau([s for s, _ in points], [v for _, v in points], metric=alert.metric,
                    **dict(alert.params))  # fmt: skip
    if found is None:
        return [Sample(False)]
    return [Sample(True, found.describe(), found.step, alert.metric, found.evidence.get("last"))]


def _stale(alert: Alert, obs: Observation) -> list[Sample]:
    if obs.ended or obs.paused or obs.crashed or obs.last_metric_time is None:
        return [Sample(False)]
    since, what = obs.last_metric_time, ""
    if obs.started_at is not None and obs.started_at > since:
        since, what = obs.started_at, " since it started"
    if obs.resumed_at is not None and obs.resumed_at > since:  # quiet while paused: no silence
        since, what = obs.resumed_at, " since the resume"
    quiet = obs.now - since
    if quiet < alert.seconds:
        return [Sample(False)]
    return [Sample(True, f"no new metric for {quiet:.0f} s{what} (limit {alert.seconds:g} s); "
                         "the run is neither ended nor paused", obs.last_step)]  # fmt: skip


def _crash(alert: Alert, obs: Observation) -> list[Sample]:
    if not obs.crashed:
        return [Sample(False)]
    if obs.ended:  # its loop ended on an error, through close()
        return [Sample(True, f"the training {obs.crash}", obs.last_step)]  # crashed at step N (…)
    how = f": {obs.crash}" if obs.crash else " (crashed or killed)"
    after = f", after step {obs.last_step}" if obs.last_step is not None else ""
    return [Sample(True, f"the training process is gone without closing the run{after}{how}",
                   obs.last_step)]  # fmt: skip


#: ``action`` states of a change the autopilot did not make: the same refusal again alerts
#: once.
_REFUSED = ("rejected", "refused")


def _autopilot(alert: Alert, obs: Observation, memory: dict[str, Any]) -> list[Sample]:
    """Each record its own onset; a refused action said again (a model that asked for the
    same change at every call while its proposal waited sent an e-mail every 40 steps) not,
    until the autopilot records something other than a refusal or a model's reply.
    ``memory`` (the alert's state, kept across rounds) holds the last refusal said."""
    out = []
    for rec in obs.autopilot:
        refused = rec.get("kind") == "action" and rec.get("state") in _REFUSED
        if not refused and rec.get("kind") != "ai_reply":
            memory["refused"] = None  # something happened: the same refusal is news again
        if rec.get("kind") not in alert.records:
            continue
        text = autopilot_text(rec, obs.run_dir)
        if refused:
            if text == memory.get("refused"):
                continue
            memory["refused"] = text
        step = rec.get("step") if isinstance(rec.get("step"), int) else None
        out += [Sample(True, text, step), Sample(False)]  # each its own onset
    return out


def autopilot_text(rec: Mapping[str, Any], run_dir: str | None = None) -> str:
    """An autopilot record as one line for a person: a proposal with its id and how to accept
    it (``autopilot proposal A3 (rule plateau_cut_lr): lr_mult(factor=0.3) because … —
    accept: hotcb autopilot accept A3``), an action with what it did (``autopilot action
    divergence_cut_lr applied: lr_mult(factor=0.5): divergence on loss …``), a fallback with
    its reason, a guard's verdict with how the key metric moved (``autopilot guard nan: kept,
    val_loss 0.5348 -> 0.4333 (-19%)``; an undo with its reason)."""
    kind, rule = rec.get("kind"), rec.get("rule")
    if kind == "proposal":
        ident = rec.get("id")
        head = f"autopilot proposal {ident}" + (f" (rule {rule})" if rule else "")
        what = rec.get("describe") or action_text(rec.get("action"))
        where = f"--dir {shlex.quote(run_dir)} " if run_dir else ""
        tail = f"; accept: hotcb {where}autopilot accept {ident}" if ident else ""
        return f"{head}: {what}{tail}"
    if kind == "action":
        state = rec.get("state")
        head = " ".join(str(p) for p in ("autopilot action", rule, state) if p)
        what = action_text(rec.get("action") or rec.get("asked"))
        why = str(rec.get("reasoning") or rec.get("reason") or "")
        why = why.removeprefix(f"autopilot rule {rule}: ")
        return head + "".join(f": {p}" for p in (what, why) if p)
    if kind == "guard" and not rec.get("undo_cmd_id"):
        return f"autopilot guard {rule}: {_kept(rec)}"
    what = rec.get("describe") or rec.get("reason") or ""
    return " ".join(str(p) for p in ("autopilot", kind, rule) if p) + (f": {what}" if what else "")


def _kept(rec: Mapping[str, Any]) -> str:
    """A guard's verdict on a change it kept: ``kept, val_loss 0.5348 -> 0.4333 (-19%)`` (how
    the key metric moved; the metric's name in records since it is written)."""
    before, after = rec.get("before"), rec.get("after")
    if not (_finite(before) and _finite(after)):
        return "kept"
    moved = f" ({(after - before) / abs(before):+.0%})" if before else ""
    metric = f"{rec['metric']} " if rec.get("metric") else ""
    return f"kept, {metric}{before:.4g} -> {after:.4g}{moved}"


_SAMPLERS = {
    "threshold": _threshold,
    "nonfinite": _nonfinite,
    "plateau": _plateau,
    "stale": _stale,
    "crash": _crash,
}


def samples(alert: Alert, obs: Observation, memory: dict[str, Any] | None = None) -> list[Sample]:
    """The alert's condition over this round, in order (empty: nothing to say this round);
    ``memory``: the alert's state, kept across rounds (an autopilot alert's last refusal)."""
    if alert.kind == "autopilot":
        return _autopilot(alert, obs, {} if memory is None else memory)
    return _SAMPLERS[alert.kind](alert, obs)


def onsets(
    found: Sequence[Sample], active: bool, last_fired: float | None, cooldown: float, now: float
) -> tuple[list[Sample], bool, float | None]:
    """``(fired, active, last_fired)`` after ``found``: a sample fires when the condition
    turns true (it was not active before) and ``cooldown`` seconds have passed since the last
    firing. An onset inside the cooldown is dropped, not delayed."""
    fired: list[Sample] = []
    for s in found:
        if s.active and not active and (last_fired is None or now - last_fired >= cooldown):
            fired.append(s)
            last_fired = now
        active = s.active
    return fired, active, last_fired
