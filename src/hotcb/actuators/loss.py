"""Actuators over a dict of loss weights and toggles, mutated in place.

Your loss reads the same dict every step, so a change shows up in the next forward pass::

    weights = {"ce": 1.0, "aux": 0.2, "terms": {"distill": True}}
    kernel = HotKernel(run_dir, mutable_state=mutable_state(loss_actuators(weights)))
    # hotcb set aux=0.5 terms.distill=false
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from ._base import ActuatorType, Env, HotcbActuator


def loss_actuators(
    weights: MutableMapping[str, Any],
    *,
    prefix: str = "",
    min_value: float = 0.0,
    max_value: float = 1e4,
) -> list[HotcbActuator]:
    """One actuator per number (FLOAT) or bool (BOOL) in ``weights``; nested dicts give dotted
    keys (``terms.distill``). Values are written back into the same dict objects. A weight
    that starts outside ``[min_value, max_value]`` (a gradient-reversal term at -0.1) widens
    its own bounds: one below ``min_value`` ranges over ``[-max_value, max_value]``."""
    acts: list[HotcbActuator] = []
    for name, value in weights.items():
        key = f"{prefix}{name}"
        if isinstance(value, MutableMapping):
            acts.extend(
                loss_actuators(value, prefix=key + ".", min_value=min_value, max_value=max_value)
            )
            continue
        if isinstance(value, bool):
            typ = ActuatorType.BOOL
            lo = hi = None
        elif isinstance(value, (int, float)):
            typ = ActuatorType.FLOAT
            hi = max(max_value, abs(float(value)))
            # a weight that starts below the floor (a gradient-reversal term at -0.1) moves
            # over the same span on the negative side
            lo = min_value if value >= min_value else -hi
        else:
            continue
        acts.append(
            HotcbActuator(
                param_key=key,
                type=typ,
                apply_fn=_setter(weights, name),
                read_fn=_getter(weights, name),
                min_value=lo,
                max_value=hi,
                group="loss",
                description=f"loss {'toggle' if typ is ActuatorType.BOOL else 'weight'} {key}",
            )
        )
    return acts


def _setter(d: MutableMapping[str, Any], name: str):  # type: ignore[no-untyped-def]
    def apply_fn(value: Any, env: Env) -> None:
        d[name] = value

    return apply_fn


def _getter(d: MutableMapping[str, Any], name: str):  # type: ignore[no-untyped-def]
    def read_fn(env: Env) -> Any:
        return d[name]

    return read_fn
