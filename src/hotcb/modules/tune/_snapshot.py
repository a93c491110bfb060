"""``restore: state``: a copy of the model's weights and the optimizer's state taken when a
trial starts, put back when it is rolled back, so a harmful trial costs its steps and nothing
else (what PBT's exploit step does across a population).

Works with whatever ``env`` carries as ``model`` and ``optimizer`` (objects with
``state_dict()``/``load_state_dict()``); it imports nothing. The copy lives in memory, weights on
the CPU: one model's worth, at most one at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["restore", "take"]


def _cpu(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "to"):
        return value.detach().to("cpu", copy=True)
    return copy.deepcopy(value)


def take(env: Mapping[str, Any]) -> dict[str, Any] | None:
    """The model's and optimizer's state now, or None when ``env`` has no model."""
    model = env.get("model")
    if model is None or not hasattr(model, "state_dict"):
        return None
    snap: dict[str, Any] = {"model": {k: _cpu(v) for k, v in model.state_dict().items()}}
    opt = env.get("optimizer")
    if opt is not None and hasattr(opt, "state_dict"):
        snap["optimizer"] = copy.deepcopy(opt.state_dict())
    return snap


def restore(snap: Mapping[str, Any], env: Mapping[str, Any]) -> list[str]:
    """Put ``snap`` back into ``env``'s model and optimizer; what was restored."""
    done = []
    model = env.get("model")
    if model is not None and "model" in snap:
        model.load_state_dict(snap["model"])
        done.append("model")
    opt = env.get("optimizer")
    if opt is not None and "optimizer" in snap:
        _restore_optimizer(opt, snap["optimizer"])
        done.append("optimizer")
    return done


def _restore_optimizer(opt: Any, saved: Mapping[str, Any]) -> None:
    """Put a ``state_dict()``'s per-parameter state (moments, step counts) back *in place*:
    ``load_state_dict`` would replace the param group dicts that the lr / weight-decay
    actuators hold, and their next change would go nowhere. The groups' hyperparameters are
    left as they are: the roll-back has just set the trial's knobs back (on an LR scheduler's
    schedule where one moves the lr), and a change of another knob since is not the trial's."""
    params = [p for group in opt.param_groups for p in group["params"]]
    opt.state.clear()
    for index, state in saved["state"].items():
        # a copy: the optimizer updates its moments in place, and a copy restored twice (a
        # start bracket's round start) must give the same state the second time
        opt.state[params[int(index)]] = copy.deepcopy(state)
