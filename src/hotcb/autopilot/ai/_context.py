"""What the model is shown: a compact, pure summary of the run, under a token limit.

:func:`build_context` takes plain data (metric points, detections, changes, actuators, budget,
the tuner's state, learnings from earlier runs) and returns a JSON-ready dict; the same input
always gives the same output (tests/autopilot/test_ai_context.py keeps a golden copy).
:func:`messages` turns it into the chat messages sent. Standard library only.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from ..rules import ACTIONS

__all__ = [
    "REPLY_SCHEMA",
    "SYSTEM_PROMPT",
    "build_context",
    "estimate_tokens",
    "impact",
    "messages",
    "trend",
]

_RECENT = 64  # points the slope and volatility are measured on
_SHAPE = 8  # points kept to show a curve's shape
_MOVED = 0.1  # a curve whose fitted line moves less than 10 % of its level is flat
_HEAD, _TAIL = "Run state (JSON):\n", "\nReply with the JSON object."
_NEAR = 4  # a spike is judged against this many neighbours on each side

REPLY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "actions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "action": {"type": "string", "enum": list(ACTIONS)},
                    "params": {"type": "object"},
                },
                "required": ["action", "params"],
            },
        },
        "next_check": {"type": ["integer", "null"]},
        "learning": {"type": ["string", "null"]},
    },
    "required": ["reasoning", "actions", "next_check"],
}


def _bounds() -> str:
    rows = []
    for name, spec in ACTIONS.items():
        params = ", ".join(
            f"{k}: {kind}" + (f" in [{lo:g}, {hi:g}]" if lo is not None and hi is not None else "")
            for k, (kind, lo, hi) in spec.items()
        )
        rows.append(f"- {name}" + (f" ({params})" if params else ""))
    return "\n".join(rows)


SYSTEM_PROMPT = f"""You steer a PyTorch training run while it trains. You see a summary of its \
metrics, what detectors noticed, the recent changes with their measured effect, the knobs with \
their bounds, and your budget. Decide whether to change something now.

Actions you may take (anything else, or a value outside its bounds, is rejected):
{_bounds()}
lr_mult and wd_mult multiply the current value; loss_weight_* act on a loss weight by its key; \
undo reverts the last change if it was an automatic one (a person's change is never undone); \
pause holds the run until a person resumes it: use it only when a person must look.

Every automatic change is watched: if the key metric gets clearly worse after it, it is undone. \
Prefer no action to a guess. Reply with one JSON object and nothing else:
{{"reasoning": "what you see and why you act (or not), in two or three sentences", \
"actions": [{{"action": "lr_mult", "params": {{"factor": 0.5}}}}], \
"next_check": steps from now until you want to look again (or null), \
"learning": "one sentence worth remembering for the next run (or null)"}}"""


# ---------------------------------------------------------------------------------- trends
def _r(x: float) -> float | None:
    """A number rounded to 4 significant digits (None for NaN/inf)."""
    if not math.isfinite(x):
        return None
    return float(f"{x:.4g}")


def trend(points: Sequence[tuple[int, float]], direction: str = "minimize") -> dict[str, Any]:
    """A metric's curve in a few numbers: ``last``, ``best`` (with its step), ``slope_per_100``
    (least squares over the recent points, relative to their level), ``volatility`` (the
    residuals' spread relative to the level), a ``label`` (falling, rising, flat, noisy,
    diverging, non-finite), ``notable`` points (best, spikes, non-finite) and its ``shape``."""
    if not points:
        return {"n": 0, "label": "no data"}
    finite = [(s, v) for s, v in points if math.isfinite(v)]
    bad = [s for s, v in points if not math.isfinite(v)]
    out: dict[str, Any] = {"n": len(points), "last_step": points[-1][0], "last": _r(points[-1][1])}
    if not finite:
        return {
            **out,
            "label": "non-finite",
            "notable": [{"step": s, "what": "nan/inf"} for s in bad[-3:]],
        }
    pick = min if direction == "minimize" else max
    best_step, best = pick(finite, key=lambda p: p[1])
    out["best"], out["best_step"] = _r(best), best_step
    recent = finite[-_RECENT:]
    level = statistics.fmean(v for _, v in recent)
    scale = max(abs(level), 1e-12)
    slope, resid = _fit(recent)
    out["slope_per_100"] = _r(slope * 100 / scale)
    out["volatility"] = _r(resid / scale)
    # the change across the fitted points, relative to their level: the same curve gets the
    # same label whether it is logged every step or every 1000 steps
    change = slope * (recent[-1][0] - recent[0][0]) / scale
    out["label"] = _label(points, finite, change, resid / scale, best, direction)
    notable: list[dict[str, Any]] = [{"step": best_step, "what": "best", "value": _r(best)}]
    notable += [{"step": s, "what": "nan/inf"} for s in bad[-3:]]
    notable += _spikes(finite)
    out["notable"] = notable
    out["shape"] = [[s, _r(v)] for s, v in _downsample(finite, _SHAPE)]
    return out


def _fit(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares slope per step and the residuals' standard deviation."""
    if len(points) < 3:
        return 0.0, 0.0
    xs = [float(s) for s, _ in points]
    ys = [v for _, v in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 else 0.0
    resid = [y - (my + slope * (x - mx)) for x, y in zip(xs, ys, strict=True)]
    return slope, statistics.pstdev(resid)


def _label(
    points: Sequence[tuple[int, float]], finite: Sequence[tuple[int, float]], change: float,
    volatility: float, best: float, direction: str,
) -> str:  # fmt: skip
    """``change``: the fitted line's change across the recent points, relative to their level.
    Diverging: getting worse on the trend and now twice as far from 0 as the best (half of
    it when maximizing)."""
    if not math.isfinite(points[-1][1]):
        return "non-finite"
    sign = 1.0 if direction == "minimize" else -1.0
    last = finite[-1][1]
    away = last > 2 * best if direction == "minimize" else last < best / 2
    if sign * change > _MOVED and away and best > 0:
        return "diverging"
    if volatility > 0.15 and abs(change) < 5 * volatility:
        return "noisy"
    if change < -_MOVED:
        return "falling"
    if change > _MOVED:
        return "rising"
    return "flat"


def _spikes(finite: Sequence[tuple[int, float]], z: float = 6.0) -> list[dict[str, Any]]:
    """Points far from their neighbours: a robust z-score above ``z`` against the
    :data:`_NEAR` points on each side, and at least half the local level away (a step change
    or the fast start of a curve is not a spike)."""
    values = [v for _, v in finite]
    if len(values) < 8:
        return []
    found = []
    for i, (s, v) in enumerate(finite):
        near = values[max(0, i - _NEAR) : i] + values[i + 1 : i + 1 + _NEAR]
        med = statistics.median(near)
        mad = statistics.median(abs(x - med) for x in near)
        jump = abs(v - med)
        if jump > 0.5 * abs(med) and jump > z * 1.4826 * mad:
            found.append((s, v))
    return [{"step": s, "what": "spike", "value": _r(v)} for s, v in found[-3:]]


def _downsample(points: Sequence[tuple[int, float]], n: int) -> list[tuple[int, float]]:
    if len(points) <= n:
        return list(points)
    idx = sorted({round(i * (len(points) - 1) / (n - 1)) for i in range(n)})
    return [points[i] for i in idx]


# ---------------------------------------------------------------------------------- impact
def impact(
    points: Sequence[tuple[int, float]], step: int, *, window: int = 5, settle: int = 0,
    direction: str = "minimize",
) -> dict[str, Any] | None:  # fmt: skip
    """The key metric around a change at ``step``: the median of the ``window`` values before
    it and of the first ``window`` values ``settle`` steps after it, and the relative change
    (negative is better when minimizing). None until enough values came after it."""
    before = [v for s, v in points if s <= step and math.isfinite(v)][-window:]
    after = [v for s, v in points if s > step + settle and math.isfinite(v)][:window]
    if not before or len(after) < window:
        return None
    b, a = statistics.median(before), statistics.median(after)
    sign = 1.0 if direction == "minimize" else -1.0
    rel = (a - b) / max(abs(b), 1e-12)
    return {"before": _r(b), "after": _r(a), "change": _r(rel),
            "verdict": "better" if sign * rel < -0.02 else "worse" if sign * rel > 0.02 else "same"}  # fmt: skip


# ---------------------------------------------------------------------------------- context
def build_context(
    *,
    key_metric: str,
    direction: str,
    series: Mapping[str, Sequence[tuple[int, float]]],
    step: int,
    total_steps: int | None = None,
    detections: Sequence[Mapping[str, Any]] = (),
    changes: Sequence[Mapping[str, Any]] = (),
    actuators: Mapping[str, Mapping[str, Any]] | None = None,
    budget: Mapping[str, Any] | None = None,
    tune: Mapping[str, Any] | None = None,
    memory: Sequence[str] = (),
    pending: Sequence[Mapping[str, Any]] = (),
    max_tokens: int = 3000,
) -> dict[str, Any]:
    """The run as the model sees it, under ``max_tokens`` (estimated): detail is dropped in
    a fixed order (curve shapes, notable points, old changes and detections, memory, the
    tuner) until it fits."""
    key_points = series.get(key_metric) or ()
    ctx: dict[str, Any] = {
        "key_metric": key_metric,
        "direction": direction,
        "steps": {
            "done": step,
            "total": total_steps,
            "left": None if total_steps is None else max(0, total_steps - step),
        },
        "metrics": {
            name: trend(points, direction if name == key_metric else "minimize")
            for name, points in sorted(series.items())
            if points
        },
        "detections": [
            {k: d.get(k) for k in ("step", "rule", "detector", "metric", "describe")}
            for d in detections[-5:]
        ],
        "changes": [_change(c, key_points, direction) for c in changes[-6:]],
        "actuators": _actuators(actuators or {}),
        "budget": dict(budget or {}),
    }
    if pending:
        ctx["pending_proposals"] = [
            {k: p.get(k) for k in ("id", "step", "action")} for p in pending[-3:]
        ]
    if tune:
        ctx["tuner"] = _tune(tune)
    if memory:
        ctx["memory"] = list(memory)
    return _fit_tokens(ctx, max_tokens)


def _change(
    c: Mapping[str, Any], key_points: Sequence[tuple[int, float]], direction: str
) -> dict[str, Any]:
    step = int(c.get("step") or 0)
    out = {
        k: c.get(k) for k in ("step", "source", "module", "op", "changes") if c.get(k) is not None
    }
    if c.get("reason"):
        out["reason"] = str(c["reason"])[:160]
    measured = impact(key_points, step, settle=int(c.get("settle") or 0), direction=direction)
    out["impact"] = measured if measured is not None else "not measured yet"
    return out


def _actuators(acts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, a in sorted(acts.items()):
        if not name.startswith(("opt.", "loss.")) or a.get("type") == "bool":
            continue
        out[name] = {
            k: a.get(k) for k in ("current", "initial", "min", "max") if a.get(k) is not None
        }
    return out


def _tune(t: Mapping[str, Any]) -> dict[str, Any]:
    trials = [r for r in t.get("trials") or () if isinstance(r, Mapping)]
    return {
        "mode": t.get("mode"), "objective": t.get("objective_used") or t.get("objective"),
        "phase": t.get("phase"), "trial": t.get("trial"), "best": t.get("best"),
        "last_trials": [{k: r.get(k) for k in ("trial", "step", "changes", "score", "decision")}
                        for r in trials[-5:]],
    }  # fmt: skip


def estimate_tokens(obj: Any) -> int:
    """About 4 characters a token (no tokenizer in the standard library)."""
    text = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"), sort_keys=True)
    return (len(text) + 3) // 4


def _fit_tokens(ctx: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    budget = max_tokens - estimate_tokens(SYSTEM_PROMPT) - estimate_tokens(_HEAD + _TAIL)
    metrics: dict[str, dict[str, Any]] = ctx["metrics"]
    ctx["truncated"] = False  # counted in the fit
    for cut in _CUTS:
        if estimate_tokens(ctx) <= budget:
            break
        cut(ctx, metrics)
    ctx["truncated"] = estimate_tokens(ctx) > budget
    return ctx


def _drop(key: str) -> Any:
    def cut(ctx: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
        for m in metrics.values():
            m.pop(key, None)

    return cut


def _keep_last(key: str, n: int) -> Any:
    def cut(ctx: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
        ctx[key] = ctx[key][-n:]

    return cut


def _pop(key: str) -> Any:
    def cut(ctx: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
        ctx.pop(key, None)

    return cut


def _only_main_metrics(ctx: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
    for name in [k for k in metrics if k not in (ctx["key_metric"], "loss", "lr")]:
        del metrics[name]


#: What goes first when the context is over its limit, in order.
_CUTS = (
    _drop("shape"), _drop("notable"), _keep_last("changes", 3), _keep_last("detections", 2),
    _pop("memory"), _pop("tuner"), _keep_last("changes", 1), _only_main_metrics,
)  # fmt: skip


def messages(ctx: Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat messages for ``ctx``: the fixed system prompt, then the run's state."""
    state = json.dumps(ctx, separators=(",", ":"), sort_keys=True)
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": _HEAD + state + _TAIL},
    ]
