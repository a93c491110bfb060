"""Actuators over a torch optimizer's param groups: lr, weight_decay, momentum or betas.

No torch import: an optimizer is anything with ``param_groups`` (a list of dicts).

A live lr change must survive the LR scheduler. Schedulers recompute lr from ``base_lrs``
(LambdaLR, CosineAnnealingLR's closed form, OneCycleLR's ``max_lr``/``initial_lr``), so a
change of group lr by a factor r also scales those by r: the schedule then continues from the
new value instead of snapping back.

``lr`` and ``weight_decay`` keep the ratios between groups (:class:`_Ratios`), also through 0,
and say which per-group values they move (``moves``), so a command that would put a group out
of bounds is refused and the ledger lists every group that moved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._base import ActuatorType, Env, HotcbActuator, _plain

_SCHEDULE_KEYS = ("initial_lr", "max_lr", "min_lr", "base_lr")


def _get(group: dict[str, Any], key: str) -> Any:
    return _plain(group[key])  # a tensor lr (capturable optimizers): its number


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
    while found:
        s = found.pop(0)
        s = getattr(s, "scheduler", s)  # Lightning's LRSchedulerConfig
        if id(s) not in seen:
            seen.add(id(s))
            out.append(s)
            # SequentialLR / ChainedScheduler: at a milestone SequentialLR restarts the next
            # one from its own base_lrs, which must hold the change too
            found.extend(getattr(s, "_schedulers", None) or ())
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


class _LiveGroups(Sequence[dict[str, Any]]):
    """``optimizer.param_groups`` as it is at each read, not the list it was when the
    actuators were made: ``optimizer.load_state_dict`` (a rollback to a snapshot, in a
    notebook say) puts new group dicts in a new list, and actuators holding the old list read
    and moved groups the optimizer no longer has."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    def __getitem__(self, index: Any) -> Any:
        return self.optimizer.param_groups[index]

    def __len__(self) -> int:
        return len(self.optimizer.param_groups)

    def __iter__(self) -> Any:
        return iter(self.optimizer.param_groups)


class _Ratios:
    """The ratios of ``key`` between each param group and group 0, as last seen while group
    0's value was not 0. Taken through 0 (``weight_decay=0``, then ``0.05``) each group gets
    its old share back, so a group without decay (the HF Trainer's biases and norms) keeps
    none. Until a non-zero group 0 was seen, every group gets the value, but for weight decay
    a later group that holds only biases and norms (no parameter of two dimensions or more)
    while group 0 holds weights: it keeps none (the HF Trainer's groups at its default
    ``weight_decay=0``)."""

    def __init__(self, groups: Sequence[dict[str, Any]], key: str) -> None:
        self.groups = groups
        self.key = key
        self.seen: list[float | None] | None = None
        self.observe()

    def observe(self) -> Any:
        """Remember the ratios now when group 0's value is not 0; returns that value."""
        groups, key = self.groups, self.key
        first = _get(groups[0], key)
        if first:
            self.seen = [_get(g, key) / first if key in g else None for g in groups]
        return first

    def targets(self, value: float) -> list[float | None]:
        """Each group's value when group 0's becomes ``value`` (None: the group has no
        ``key``)."""
        self.observe()
        seen = self.seen
        if seen is None or len(seen) != len(self.groups):  # a group added since: start over
            seen = [1.0 if self.key in g else None for g in self.groups]
            if self.key == "weight_decay" and not _vectors_only(self.groups[0]):
                seen = [0.0 if i and r is not None and _vectors_only(g) else r
                        for i, (g, r) in enumerate(zip(self.groups, seen, strict=True))]  # fmt: skip
        return [value * r if r is not None else None for r in seen]


def _vectors_only(group: dict[str, Any]) -> bool:
    """Whether a param group holds only biases and norms (no parameter of 2 dimensions or
    more): the group AdamW recipes keep without weight decay."""
    params = group.get("params") or ()
    return bool(params) and all(getattr(p, "ndim", 2) < 2 for p in params)


def _group_names(groups: Sequence[dict[str, Any]]) -> list[str]:
    """A group's ``name`` when it has one (a string), else ``group<i>``."""
    return [g["name"] if isinstance(g.get("name"), str) else f"group{i}"
            for i, g in enumerate(groups)]  # fmt: skip


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
    x / (group 0's lr); a value that would put a group out of ``lr_bounds`` is refused.
    Schedulers passed here (a list the caller may add to later: the kernel's holds every
    scheduler it has seen in env), or present in ``env["scheduler"]`` / ``env["schedulers"]``
    at apply time, are kept in step with the change.
    """
    groups = _LiveGroups(optimizer)
    lo, hi = lr_bounds
    names = [f"{prefix}lr@{name}" for name in _group_names(groups)]
    lr_ratios = _Ratios(groups, "lr")
    wd_ratios = _Ratios(groups, "weight_decay") if "weight_decay" in groups[0] else None
    several = bool(per_group or (per_group is None and len(groups) > 1))
    acts = [
        _opt_actuator(
            prefix + "lr",
            ActuatorType.LOG_FLOAT,
            _lr_setter(optimizer, schedulers, lr_ratios),
            lambda env: lr_ratios.observe(),
            min_value=lo,
            max_value=hi,
            description="learning rate (all groups, ratios kept)",
            scheduled=_has_schedule(schedulers, optimizer),
            moves=lambda value, env: dict(zip(names, lr_ratios.targets(value), strict=False)),
            covers=frozenset(names) if several else frozenset(),
            refuses=_from_frozen(lr_ratios, names),
        ),
        *_all_groups_actuators(groups, prefix, several, wd_ratios, _cycles(optimizer, schedulers)),
    ]
    if several:
        for i in range(len(groups)):
            acts.extend(
                _group_actuators(optimizer, i, schedulers, (lr_ratios, wd_ratios), lo, hi, prefix)
            )
    return acts


def _from_frozen(ratios: _Ratios, names: list[str]) -> Any:
    """``refuses`` of ``lr``: group 0 frozen at lr 0 while another group trains gives no
    factor to move the others by (setting every group to the value unfroze the backbone and
    flattened the groups' lrs; with ratios seen before the freeze, it unfroze it all the
    same). Every group at 0 (a warm-up from 0, a schedule's end) still gets the value."""

    def refuses(value: Any, env: Env) -> str | None:
        if ratios.observe() or not any(_get(g, "lr") for g in ratios.groups[1:]):
            return None
        shown = ", ".join(names[1:3]) + (", …" if len(names) > 3 else "")
        return (f"param group {names[0].split('@', 1)[-1]} is frozen at lr 0 while others "
                "train: lr moves every group by the factor group 0 moves, and from 0 there is "
                f"none; set the groups one by one ({shown}=…)")  # fmt: skip

    return refuses


def _opt_actuator(
    key: str, typ: ActuatorType, apply_fn: Any, read_fn: Any, **kw: Any
) -> HotcbActuator:
    return HotcbActuator(
        param_key=key, type=typ, apply_fn=apply_fn, read_fn=read_fn, group="opt", **kw
    )


def _lr_setter(optimizer: Any, schedulers: Sequence[Any], ratios: _Ratios) -> Any:
    """Apply function of ``lr``: every group scaled by value / (group 0's lr)."""

    def set_lr_all(value: float, env: Env) -> None:
        for i, target in enumerate(ratios.targets(value)):
            if target is not None:
                _set_group_lr(optimizer, i, target, env, schedulers)

    return set_lr_all


def _setter_of_all(groups: Sequence[dict[str, Any]], key: str) -> Any:
    """Apply function that sets ``key`` in every group that has it."""

    def apply_fn(value: Any, env: Env) -> None:
        for g in groups:
            if key in g:
                _put(g, key, value)

    return apply_fn


def _scaler_of_all(ratios: _Ratios) -> Any:
    """Apply function that moves ``ratios.key`` in every group by the factor group 0's value
    moves, as ``lr`` does: a group without decay keeps none, and a roll-back to group 0's old
    value puts every group back, also after going through 0 (:class:`_Ratios`)."""

    def apply_fn(value: Any, env: Env) -> None:
        for g, target in zip(ratios.groups, ratios.targets(value), strict=False):
            if target is not None:
                _put(g, ratios.key, target)

    return apply_fn


def _cycles(optimizer: Any, extra: Sequence[Any]) -> Any:
    """``cycles(env)``: the name of a scheduler of ``optimizer`` that sets its momentum (or
    beta1) every step (OneCycleLR, CyclicLR with ``cycle_momentum``), or None."""

    def cycles(env: Env) -> str | None:
        for s in _schedulers(env, extra):
            if getattr(s, "optimizer", None) is optimizer and getattr(s, "cycle_momentum", False):
                return type(s).__name__
        return None

    return cycles


def _all_groups_actuators(
    groups: Sequence[dict[str, Any]],
    prefix: str,
    several: bool,
    wd: _Ratios | None,
    cycles: Any,
) -> list[HotcbActuator]:
    """``weight_decay`` (ratios kept), ``momentum`` and ``betas`` over all groups, those group
    0 has. Momentum and beta1 are refused while a scheduler cycles them (``cycles``): it would
    put its own value back at its next step."""
    first = groups[0]
    acts: list[HotcbActuator] = []

    def set_betas(value: Any, env: Env) -> None:
        for g in groups:
            g["betas"] = tuple(value)

    def cycled(what: str, now: Any) -> Any:
        def refuses(value: Any, env: Env) -> str | None:
            first = value[0] if isinstance(value, tuple) else value
            if math.isclose(first, now()):
                return None
            name = cycles(env)
            alone = "; beta2 alone: set beta2=…" if what == "beta1" else ""
            return (f"{name} (cycle_momentum=True) sets {what} at every step; build it with "
                    f"cycle_momentum=False to change {what} live{alone}") if name else None  # fmt: skip

        return refuses

    if wd is not None:
        names = [f"{prefix}weight_decay@{name}" for name in _group_names(groups)]

        def wd_moves(value: Any, env: Env) -> dict[str, Any]:
            return {n: t for n, t in zip(names, wd.targets(value), strict=False) if t is not None}

        acts.append(
            _opt_actuator(
                prefix + "weight_decay",
                ActuatorType.FLOAT,
                _scaler_of_all(wd),
                lambda env: wd.observe(),
                min_value=0.0,
                max_value=10.0,
                description="weight decay (all groups, ratios kept)",
                moves=wd_moves,
                covers=frozenset(
                    n
                    for n, g in zip(names, groups, strict=False)
                    if several and "weight_decay" in g
                ),
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
                refuses=cycled("momentum", lambda: _get(groups[0], "momentum")),
            )
        )
    if "betas" in first:
        n = len(first["betas"])
        parts = [f"{prefix}beta{i + 1}" for i in range(n)]
        acts.append(
            _opt_actuator(
                prefix + "betas",
                ActuatorType.TUPLE,
                set_betas,
                lambda env: tuple(groups[0]["betas"]),
                min_value=0.0,
                max_value=0.999999,
                length=n,
                description="Adam betas (all groups)",
                refuses=cycled("beta1", lambda: _get(groups[0], "betas")[0]),
                moves=lambda value, env: dict(zip(parts, value, strict=True)),
                covers=frozenset(parts),
            )
        )
        # one of them alone: beta2 while a scheduler cycles beta1 (OneCycleLR)
        for i, key in enumerate(parts):
            acts.append(
                _opt_actuator(
                    key,
                    ActuatorType.FLOAT,
                    _set_beta(groups, i),
                    lambda env, i=i: _get(groups[0], "betas")[i],
                    min_value=0.0,
                    max_value=0.999999,
                    description=f"Adam beta{i + 1} (all groups)",
                    refuses=cycled("beta1", lambda: _get(groups[0], "betas")[0])
                    if i == 0
                    else None,
                    moves=lambda value, env, i=i: {
                        prefix + "betas": tuple(
                            value if j == i else b for j, b in enumerate(groups[0]["betas"])
                        )
                    },
                )
            )
    return acts


def _set_beta(groups: Sequence[dict[str, Any]], i: int) -> Any:
    """Apply function of ``beta<i+1>``: that one of every group's betas."""

    def apply_fn(value: Any, env: Env) -> None:
        for g in groups:
            betas = list(g["betas"])
            betas[i] = value
            g["betas"] = tuple(betas)

    return apply_fn


def _group_actuators(
    optimizer: Any,
    i: int,
    schedulers: Sequence[Any],
    ratios: tuple[_Ratios, _Ratios | None],
    lo: float,
    hi: float,
    prefix: str,
) -> list[HotcbActuator]:
    """``lr@<name>`` and ``weight_decay@<name>`` of param group ``i``. Group 0's also move
    ``lr`` / ``weight_decay``, which read group 0."""
    g = optimizer.param_groups[i]
    name = _group_names(optimizer.param_groups)[i]
    lr_ratios, wd_ratios = ratios

    def set_lr(value: float, env: Env) -> None:
        lr_ratios.observe()  # the shares before group 0's lr moves (to 0, say)
        _set_group_lr(optimizer, i, value, env, schedulers)

    def set_wd(value: float, env: Env) -> None:
        if wd_ratios is not None:
            wd_ratios.observe()
        _put(optimizer.param_groups[i], "weight_decay", value)

    out = [
        HotcbActuator(
            param_key=f"{prefix}lr@{name}",
            type=ActuatorType.LOG_FLOAT,
            apply_fn=set_lr,
            read_fn=lambda env: _get(optimizer.param_groups[i], "lr"),
            min_value=lo,
            max_value=hi,
            group="opt",
            description=f"learning rate of param group {name}",
            scheduled=_has_schedule(schedulers, optimizer),
            moves=(lambda value, env: {prefix + "lr": value}) if i == 0 else None,
        )
    ]
    if "weight_decay" in g:
        out.append(
            HotcbActuator(
                param_key=f"{prefix}weight_decay@{name}",
                type=ActuatorType.FLOAT,
                apply_fn=set_wd,
                read_fn=lambda env: _get(optimizer.param_groups[i], "weight_decay"),
                min_value=0.0,
                max_value=10.0,
                group="opt",
                description=f"weight decay of param group {name}",
                moves=(lambda value, env: {prefix + "weight_decay": value}) if i == 0 else None,
            )
        )
    return out
