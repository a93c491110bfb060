"""Autopilot rules: ``when`` a detector fires on a metric, ``then`` one bounded action.

A rules file (YAML or JSON) is declarative: nothing in it is evaluated as code. A broken file
is refused with every problem and its line. The default rules ship with hotcb
(``default_rules.yaml`` beside this file; docs/autopilot.md explains each one).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._checks import Checker, CheckError, as_text_hint, parse_document

__all__ = [
    "ACTIONS",
    "CONFIDENCES",
    "DEFAULT_RULES",
    "Action",
    "Rule",
    "RulesError",
    "Ruleset",
    "action_text",
    "check_action",
    "load_rules",
]

DEFAULT_RULES = os.path.join(os.path.dirname(__file__), "default_rules.yaml")
CONFIDENCES = ("high", "medium", "low")

#: The bounded action set: name -> {param: (kind, min, max)}. ``knob`` is what the action
#: changes (a person's change of it puts the autopilot on a cooldown for it).
ACTIONS: dict[str, dict[str, tuple[str, float | None, float | None]]] = {
    "lr_mult": {"factor": ("number", 0.1, 2.0)},
    "wd_mult": {"factor": ("number", 0.1, 10.0)},
    "loss_weight_set": {"key": ("string", None, None), "value": ("number", 0.0, 1e3)},
    "loss_weight_mult": {"key": ("string", None, None), "factor": ("number", 0.1, 10.0)},
    "pause": {},
    "checkpoint": {},
    "undo": {},
    "stop": {},
}


class RulesError(CheckError):
    """A rules file with problems; ``problems`` lists every one, with its line."""


@dataclass(frozen=True)
class Action:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def knob(self) -> str | None:
        """The actuator it changes (``opt.lr``), or None for run control."""
        if self.name == "lr_mult":
            return "opt.lr"
        if self.name == "wd_mult":
            return "opt.weight_decay"
        if self.name.startswith("loss_weight"):
            return f"loss.{self.params.get('key')}"
        return None

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args})"


def action_text(action: Any) -> str:
    """``lr_mult(factor=0.5)`` from a record's ``{"name", "params"}`` (or a model's
    ``{"action", "params"}``; anything else as is)."""
    if not isinstance(action, Mapping):
        return str(action or "")
    params = action.get("params")
    name = action.get("name", action.get("action"))
    return Action(str(name), dict(params) if isinstance(params, Mapping) else {}).describe()


@dataclass(frozen=True)
class Rule:
    """``when`` detector ``detector`` fires on ``metric`` (with ``params``), ``then`` ``action``;
    not again for ``cooldown_steps`` steps. ``metric`` may be ``key`` (the key metric) or
    ``train`` (the training loss, whatever its name in this run)."""

    id: str
    detector: str
    action: Action
    metric: str = "key"
    params: dict[str, Any] = field(default_factory=dict)
    train_metric: str = "train"
    cooldown_steps: int = 200
    confidence: str = "medium"
    enabled: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "when": {"detector": self.detector, "metric": self.metric, "params": self.params},
            "then": {"action": self.action.name, "params": self.action.params},
            "cooldown_steps": self.cooldown_steps,
            "confidence": self.confidence,
            "enabled": self.enabled,
        }


@dataclass(frozen=True)
class Ruleset:
    rules: tuple[Rule, ...]
    path: str | None = None
    guard_window: int = 5  # key-metric values watched after an automatic change
    guard_tolerance: float = 0.1  # "clearly worse": this much (relative) above the level before


def check_action(name: str, params: Mapping[str, Any]) -> list[str]:
    """What is wrong with an action and its params (empty: fine), bounds included."""
    spec = ACTIONS.get(name)
    if spec is None:
        return [f"unknown action {name!r}; expected one of {', '.join(ACTIONS)}"]
    problems = [f"unknown param {k!r} for {name}" for k in params if k not in spec]
    for key, (kind, lo, hi) in spec.items():
        value = params.get(key)
        if value is None:
            problems.append(f"{name} needs {key}")
        elif kind == "string":
            if not isinstance(value, str) or not value:
                problems.append(f"{key} must be a non-empty string, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key} must be a number, got {value!r}{as_text_hint(value)}")
        elif not math.isfinite(value):
            problems.append(f"{key} must be a finite number, got {value!r}")
        elif (lo is not None and value < lo) or (hi is not None and value > hi):
            problems.append(f"{name} {key}={value!r} is outside its bounds [{lo:g}, {hi:g}]")
    return problems


_RULE_KEYS = {"id", "when", "then", "cooldown_steps", "confidence", "enabled"}
_TOP_KEYS = {"rules", "guard"}
_GUARD_KEYS = {"window", "tolerance"}
_WHEN_KEYS = {"detector", "metric", "params"}
_THEN_KEYS = {"action", "params"}


def load_rules(path: str | os.PathLike[str] | None = None) -> Ruleset:
    """The rules of ``path`` (default: the shipped rules), checked; :class:`RulesError` lists
    every problem with its line."""
    path = os.fspath(path) if path is not None else DEFAULT_RULES
    with open(path, encoding="utf-8") as f:
        doc, lines = parse_document(f.read(), path, RulesError)
    ck = Checker(lines)
    if not isinstance(doc, Mapping):
        raise RulesError(path, ["expected a mapping with 'rules: [...]'"])
    _unknown_keys(doc, _TOP_KEYS, ck, "")
    guard = _mapping(doc.get("guard"), ck, "guard", "{window, tolerance}")
    _unknown_keys(guard, _GUARD_KEYS, ck, "guard")
    window = ck.number(guard, "window", "guard.window", integer=True, minimum=1)
    tolerance = ck.number(guard, "tolerance", "guard.tolerance", minimum=0)
    window = 5 if window is None else window
    tolerance = 0.1 if tolerance is None else tolerance  # 0 is a choice: undo anything worse
    rules: list[Rule] = []
    raw = doc.get("rules")
    if not isinstance(raw, list) or not raw:
        ck.add("rules", "expected a non-empty list of rules")
        raw = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        rule = _check_rule(item, ck, f"rules[{i}]")
        ident = item.get("id") if isinstance(item, Mapping) else None
        if isinstance(ident, str) and ident:  # (a rule with other problems has its id too)
            if ident in seen:
                ck.add(f"rules[{i}].id", f"{ident!r} is used twice")
            seen.add(ident)
        if rule is not None:
            rules.append(rule)
    if ck.problems:
        raise RulesError(path, ck.problems)
    return Ruleset(tuple(rules), path, int(window), float(tolerance))


def _check_rule(item: Any, ck: Checker, at: str) -> Rule | None:
    if not isinstance(item, Mapping):
        ck.add(at, "expected a mapping {id, when, then, cooldown_steps, confidence, enabled}")
        return None
    before = len(ck.problems)
    _unknown_keys(item, _RULE_KEYS, ck, at)
    ident = ck.string(item, "id", f"{at}.id")
    if "id" not in item:
        ck.add(f"{at}.id", "missing: a name for the rule")
    detector, metric, params = _check_when(item.get("when"), ck, f"{at}.when")
    action = _check_then(item.get("then"), ck, f"{at}.then")
    cooldown = ck.number(item, "cooldown_steps", f"{at}.cooldown_steps", integer=True, minimum=0)
    confidence = ck.choice(item, "confidence", f"{at}.confidence", CONFIDENCES) or "medium"
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        ck.add(f"{at}.enabled", f"expected true or false, got {enabled!r}")
    if len(ck.problems) > before or ident is None or detector is None or action is None:
        return None
    return Rule(
        id=ident, detector=detector, action=action, metric=metric or "key",
        params={k: v for k, v in params.items() if k != "train_metric"},
        train_metric=str(params.get("train_metric") or "train"),
        cooldown_steps=int(cooldown if cooldown is not None else 200),
        confidence=confidence, enabled=bool(enabled),
    )  # fmt: skip


def _unknown_keys(doc: Mapping[Any, Any], known: set[str], ck: Checker, at: str) -> None:
    for key in sorted(set(doc) - known, key=str):
        ck.add(f"{at}.{key}" if at else str(key),
               f"unknown key; expected one of {', '.join(sorted(known))}")  # fmt: skip


def _mapping(value: Any, ck: Checker, at: str, shape: str) -> Mapping[Any, Any]:
    """``value`` when it is a mapping (absent: an empty one); anything else is a problem."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        ck.add(at, f"expected a mapping {shape}, got {value!r}")
        return {}
    return value


def _check_when(when: Any, ck: Checker, at: str) -> tuple[str | None, str | None, dict[str, Any]]:
    from .detectors import DETECTORS

    if not isinstance(when, Mapping):
        ck.add(at, "expected {detector, metric, params}")
        return None, None, {}
    _unknown_keys(when, _WHEN_KEYS, ck, at)
    detector = ck.choice(when, "detector", f"{at}.detector", tuple(DETECTORS))
    if "detector" not in when:
        ck.add(f"{at}.detector", f"missing; one of {', '.join(DETECTORS)}")
    metric = ck.string(when, "metric", f"{at}.metric")
    params = dict(_mapping(when.get("params"), ck, f"{at}.params", "{name: value}"))
    _check_params(detector, params, ck, f"{at}.params")
    return detector, metric, params


def _check_params(detector: str | None, params: Mapping[Any, Any], ck: Checker, at: str) -> None:
    """Each param of ``detector`` known, of its type, in its bounds or among its choices (a
    value outside them makes the detector silent for good, so it is refused here)."""
    from .detectors import CHOICES, PARAMS

    for key, value in params.items():
        if key == "train_metric" and detector == "overfitting":
            if not isinstance(value, str) or not value:
                ck.add(f"{at}.{key}", f"expected a metric name, got {value!r}")
            continue
        spec = PARAMS.get(detector or "", {}).get(key)
        if detector and spec is None:
            known = ", ".join(PARAMS.get(detector, {})) or "none"
            ck.add(f"{at}.{key}", f"{detector} has no param {key!r} ({known})")
        elif spec is not None and spec[0] is str:
            choices = CHOICES[key]
            if value not in choices:
                ck.add(f"{at}.{key}", f"{value!r} is not one of {', '.join(choices)}")
        elif spec is not None and not _fits(value, spec):
            kind, lo, hi = spec
            ck.add(f"{at}.{key}",
                   f"must be {getattr(kind, '__name__', kind)} in [{lo}, {hi}], got {value!r}"
                   + as_text_hint(value))  # fmt: skip
    if detector == "plateau":  # plateau(...) needs window > smooth
        window, smooth = params.get("window", 8), params.get("smooth", 3)
        fit = PARAMS["plateau"]
        if _fits(window, fit["window"]) and _fits(smooth, fit["smooth"]) and window <= smooth:
            ck.add(at, f"plateau needs window > smooth, got window={window}, smooth={smooth}: "
                       "it would never fire")  # fmt: skip


def _check_then(then: Any, ck: Checker, at: str) -> Action | None:
    if not isinstance(then, Mapping):
        ck.add(at, "expected {action, params}")
        return None
    _unknown_keys(then, _THEN_KEYS, ck, at)
    raw = then.get("params")
    if raw is not None and not isinstance(raw, Mapping):
        ck.add(f"{at}.params", f"expected a mapping {{name: value}} (e.g. {{factor: 0.5}}), "
                               f"got {raw!r}")  # fmt: skip
        return None
    name = then.get("action")
    params = dict(raw or {})
    problems = check_action(str(name), params) if name else ["missing: action"]
    for problem in problems:
        ck.add(at, problem)
    return None if problems else Action(str(name), params)


def _fits(value: Any, spec: tuple[Any, Any, Any]) -> bool:
    kind, lo, hi = spec
    if kind is str:
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if kind is int and not isinstance(value, int):
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)
