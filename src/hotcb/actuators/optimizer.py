"""Actuators over a torch optimizer's param groups: lr, weight_decay, momentum or betas.

No torch import: an optimizer is anything with ``param_groups`` (a list of dicts).

A live lr change must survive the LR scheduler. Schedulers recompute lr from ``base_lrs``
(LambdaLR, CosineAnnealingLR's closed form, OneCycleLR's ``max_lr``/``initial_lr``), so a
change of group lr by a factor r also scales those by r: the schedule then continues from the
new value instead of snapping back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._base import ActuatorType, Env, HotcbActuator

_SCHEDULE_KEYS = ("initial_lr", "max_lr", "min_lr", "base_lr")


def _get(group: dict[str, Any], key: str) -> Any:
    value = group[key]
    item = getattr(value, "item", None)  # a tensor lr (capturable optimizers)
    return float(item()) if callable(item) and getattr(value, "ndim", 1) == 0 else value


def _put(group: dict[str, Any], key: str, value: Any) -> None:
    current = group.get(key)
    fill = getattr(current, "fill_", None)
    if callable(fill) and getattr(current, "ndim", 1) == 0:
        fill(value)
    else:
        group[key] = value


def _schedulers(env: Env, extra: Sequence[Any]) -> list[Any]:
    found: list[Any] = list(extra)
    one = env.get("scheduler")
    if one is not None:
        found.append(one)
    many = env.get("schedulers")
    if many:
        found.extend(many)
    out, seen = [], set()
    for s in found:
        s = getattr(s, "scheduler", s)  # Lightning's LRSchedulerConfig
        if id(s) not in seen:
            seen.add(id(s))
            out.append(s)
    return out


def _has_schedule(extra: Sequence[Any], optimizer: Any) -> Any:
    """``scheduled`` of an lr actuator: an LR scheduler of ``optimizer`` (given here, seen in
    env before, or in env now) moves it."""
    return lambda env: any(
        getattr(s, "optimizer", optimizer) is optimizer for s in _schedulers(env, extra)
    )


def _set_group_lr(
    optimizer: Any, index: int, new: float, env: Env, schedulers: Sequence[Any]
) -> None:
    group = optimizer.param_groups[index]
    old = _get(group, "lr")
    ratio = new / old if old else None
    _put(group, "lr", new)
    for key in _SCHEDULE_KEYS:
        if key in group and isinstance(group[key], (int, float)):
            group[key] = group[key] * ratio if ratio is not None else new
    for sched in _schedulers(env, schedulers):
        if getattr(sched, "optimizer", optimizer) is not optimizer:
            continue
        base = getattr(sched, "base_lrs", None)
        if isinstance(base, list) and index < len(base):
            base[index] = base[index] * ratio if ratio is not None else new
        last = getattr(sched, "_last_lr", None)
        if isinstance(last, list) and index < len(last):
            last[index] = new
        max_lrs = getattr(sched, "max_lrs", None)  # CyclicLR
        if isinstance(max_lrs, list) and index < len(max_lrs) and ratio is not None:
            max_lrs[index] *= ratio


def optimizer_actuators(
    optimizer: Any,
    *,
    schedulers: Sequence[Any] = (),
    lr_bounds: tuple[float, float] = (1e-10, 10.0),
    per_group: bool | None = None,
    prefix: str = "",
) -> list[HotcbActuator]:
    """Actuators for ``optimizer``: ``lr``, ``weight_decay``, ``momentum`` (SGD/RMSprop) or
    ``betas`` (Adam family), plus ``lr@group1``-style keys per param group when there are
    several groups (or ``per_group=True``).

    ``lr`` keeps the ratios between groups: setting it to x scales every group by
    x / (group 0's lr). Schedulers passed here (a list the caller may add to later: the
    kernel's holds every scheduler it has seen in env), or present in ``env["scheduler"]`` /
    ``env["schedulers"]`` at apply time, are kept in step with the change.
    """
    groups = optimizer.param_groups
    lo, hi = lr_bounds
    acts = [
        _opt_actuator(
            prefix + "lr",
            ActuatorType.LOG_FLOAT,
            _lr_setter(optimizer, schedulers),
            lambda env: _get(groups[0], "lr"),
            min_value=lo,
            max_value=hi,
            description="learning rate (all groups, ratios kept)",
            scheduled=_has_schedule(schedulers, optimizer),
        ),
        *_all_groups_actuators(groups, prefix),
    ]
    if per_group or (per_group is None and len(groups) > 1):
        for i, g in enumerate(groups):
            acts.extend(_group_actuators(optimizer, i, g, schedulers, lo, hi, prefix))
    return acts


def _opt_actuator(
    key: str, typ: ActuatorType, apply_fn: Any, read_fn: Any, **kw: Any
) -> HotcbActuator:
    return HotcbActuator(
        param_key=key, type=typ, apply_fn=apply_fn, read_fn=read_fn, group="opt", **kw
    )


def _lr_setter(optimizer: Any, schedulers: Sequence[Any]) -> Any:
    """Apply function of ``lr``: every group scaled by value / (group 0's lr)."""
    groups = optimizer.param_groups

    def set_lr_all(value: float, env: Env) -> None:
        lr0 = _get(groups[0], "lr")
        for i, g in enumerate(groups):
            target = value * (_get(g, "lr") / lr0) if lr0 else value
            _set_group_lr(optimizer, i, target, env, schedulers)

    return set_lr_all


def _setter_of_all(groups: list[dict[str, Any]], key: str) -> Any:
    """Apply function that sets ``key`` in every group that has it."""

    def apply_fn(value: Any, env: Env) -> None:
        for g in groups:
            if key in g:
                _put(g, key, value)

    return apply_fn


def _scaler_of_all(groups: list[dict[str, Any]], key: str) -> Any:
    """Apply function that moves ``key`` in every group by the factor group 0's value moves,
    as ``lr`` does: a group without decay (0, the HF Trainer's biases and norms) keeps none,
    and a roll-back to group 0's old value puts every group back. When group 0's value is 0
    there is no factor: every group gets the value."""

    def apply_fn(value: Any, env: Env) -> None:
        first = _get(groups[0], key)
        for g in groups:
            if key in g:
                _put(g, key, value * (_get(g, key) / first) if first else value)

    return apply_fn


def _all_groups_actuators(groups: list[dict[str, Any]], prefix: str) -> list[HotcbActuator]:
    """``weight_decay`` (ratios kept), ``momentum`` and ``betas`` over all groups, those group
    0 has."""
    first = groups[0]
    acts: list[HotcbActuator] = []

    def set_betas(value: Any, env: Env) -> None:
        for g in groups:
            g["betas"] = tuple(value)

    if "weight_decay" in first:
        acts.append(
            _opt_actuator(
                prefix + "weight_decay",
                ActuatorType.FLOAT,
                _scaler_of_all(groups, "weight_decay"),
                lambda env: _get(groups[0], "weight_decay"),
                min_value=0.0,
                max_value=10.0,
                description="weight decay (all groups, ratios kept)",
            )
        )
    if "momentum" in first:
        acts.append(
            _opt_actuator(
                prefix + "momentum",
                ActuatorType.FLOAT,
                _setter_of_all(groups, "momentum"),
                lambda env: _get(groups[0], "momentum"),
                min_value=0.0,
                max_value=1.0,
                description="momentum (all groups)",
            )
        )
    if "betas" in first:
        acts.append(
            _opt_actuator(
                prefix + "betas",
                ActuatorType.TUPLE,
                set_betas,
                lambda env: tuple(groups[0]["betas"]),
                min_value=0.0,
                max_value=0.999999,
                length=len(first["betas"]),
                description="Adam betas (all groups)",
            )
        )
    return acts


def _group_actuators(
    optimizer: Any,
    i: int,
    g: dict[str, Any],
    schedulers: Sequence[Any],
    lo: float,
    hi: float,
    prefix: str,
) -> list[HotcbActuator]:
    name = g.get("name") if isinstance(g.get("name"), str) else f"group{i}"
    out = [
        HotcbActuator(
            param_key=f"{prefix}lr@{name}",
            type=ActuatorType.LOG_FLOAT,
            apply_fn=lambda value, env: _set_group_lr(optimizer, i, value, env, schedulers),
            read_fn=lambda env: _get(optimizer.param_groups[i], "lr"),
            min_value=lo,
            max_value=hi,
            group="opt",
            description=f"learning rate of param group {name}",
            scheduled=_has_schedule(schedulers, optimizer),
        )
    ]
    if "weight_decay" in g:
        out.append(
            HotcbActuator(
                param_key=f"{prefix}weight_decay@{name}",
                type=ActuatorType.FLOAT,
                apply_fn=lambda value, env: _put(optimizer.param_groups[i], "weight_decay", value),
                read_fn=lambda env: _get(optimizer.param_groups[i], "weight_decay"),
                min_value=0.0,
                max_value=10.0,
                group="opt",
                description=f"weight decay of param group {name}",
            )
        )
    return out
