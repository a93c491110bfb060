"""Actuators: validation, the state machine, rollback/disable, optimizer and loss helpers."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hotcb import (
    ActuatorState,
    ActuatorType,
    HotcbActuator,
    MutableState,
    attr_actuator,
    loss_actuators,
    mutable_state,
    optimizer_actuators,
)
from hotcb.errors import ActuatorApplyError, ActuatorError
from hotcb.testing import TinyMLP


def keys(acts: list[HotcbActuator]) -> list[str]:
    return [a.param_key for a in acts]


def test_optimizer_actuators_for_adamw_and_sgd() -> None:
    model = TinyMLP()
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    assert keys(optimizer_actuators(adamw)) == ["lr", "weight_decay", "betas", "beta1", "beta2"]
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert keys(optimizer_actuators(sgd)) == ["lr", "weight_decay", "momentum"]


def test_lr_on_several_param_groups_keeps_their_ratio_and_each_group_has_its_own_key() -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.1},
            {"params": model[2].parameters(), "lr": 0.01, "name": "head"},
        ],
        momentum=0.9,
    )
    ms = mutable_state(optimizer_actuators(opt))
    assert {"lr@group0", "lr@head", "weight_decay@head"} <= set(ms.keys())
    ms.initialize({})
    old, new = ms.apply("lr", 0.5, {})
    assert (old, new) == (0.1, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])
    ms.apply("lr@head", 0.2, {})
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.2])
    ms.apply("momentum", 0.5, {})
    assert [g["momentum"] for g in opt.param_groups] == [0.5, 0.5]


def test_weight_decay_keeps_a_group_without_decay_at_none() -> None:
    """The HF Trainer's groups: decayed weights, then biases and norms at 0. Setting
    ``weight_decay`` (a person, a tuner trial) moves the decayed group only, and setting it back
    restores both exactly (it used to give the no-decay group the value, for good)."""
    model = TinyMLP()
    opt = torch.optim.AdamW(
        [
            {"params": [model[0].weight, model[2].weight], "weight_decay": 0.01},
            {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0},
        ],
        lr=1e-3,
    )
    ms = mutable_state(optimizer_actuators(opt))
    ms.initialize({})
    assert ms.apply("weight_decay", 0.0177, {}) == (0.01, 0.0177)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0177, 0.0]
    ms.apply("weight_decay", 0.01, {})
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    # through 0 the ratios seen before hold: the no-decay group still gets none
    ms.apply("weight_decay@group0", 0.0, {})
    ms.apply("weight_decay", 0.05, {})
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lr", float("nan"), "lr=nan is not finite"),
        ("lr", float("inf"), "lr=inf is not finite"),
        ("lr", 50.0, "lr=50 is above the maximum 10"),
        ("lr", 0.0, "lr=0 is below the minimum 1e-10"),
        ("lr", "fast", "lr must be a number for actuator 'lr' (log_float), got str 'fast'"),
        ("lr", True, "must be a number"),
        ("betas", [0.9], "betas needs 2 values, got 1"),
        ("betas", 0.9, "betas must be a list of numbers (e.g. betas=[0.9,0.999]), got 0.9"),
        ("betas", [0.9, 1.5], "betas[1]=1.5 is above the maximum"),
        ("weight_decay", -1, "weight_decay=-1 is below the minimum 0"),
    ],
)
def test_bad_values_are_refused_with_the_reason_and_nothing_changes(
    key: str, value: Any, message: str
) -> None:
    opt = torch.optim.AdamW(TinyMLP().parameters(), lr=1e-3, weight_decay=0.01)
    ms = mutable_state(optimizer_actuators(opt))
    ms.initialize({})
    before = dict(opt.param_groups[0])
    with pytest.raises(ActuatorError) as info:
        ms.apply(key, value, {})
    assert message in str(info.value)
    after = opt.param_groups[0]
    assert all(after[k] == before[k] for k in ("lr", "weight_decay", "betas"))


def test_types_bool_int_choice() -> None:
    class Knobs:
        flag = False
        layers = 2
        mode = "a"

    k = Knobs()
    ms = MutableState(
        [
            attr_actuator(k, "flag", ActuatorType.BOOL),
            attr_actuator(k, "layers", ActuatorType.INT, min_value=1, max_value=8),
            attr_actuator(k, "mode", ActuatorType.CHOICE, choices=("a", "b")),
        ]
    )
    ms.initialize({})
    ms.apply("flag", True, {})
    ms.apply("layers", 4.0, {})
    ms.apply("mode", "b", {})
    assert (k.flag, k.layers, k.mode) == (True, 4, "b")
    assert isinstance(k.layers, int)
    for key, value, message in (
        ("flag", "yes", "flag must be true or false"),
        ("layers", 2.5, "layers must be an integer"),
        ("layers", 9, "layers=9 is above the maximum 8"),
        ("mode", "c", "mode='c' is not one of 'a', 'b'"),
    ):
        with pytest.raises(ActuatorError) as info:
            ms.apply(key, value, {})
        assert message in str(info.value)
    with pytest.raises(ActuatorError, match="unknown actuator 'depth'; known: flag, layers, mode"):
        ms.apply("depth", 1, {})


def test_state_machine_init_untouched_verified_or_unverified() -> None:
    box = {"x": 1.0}
    read = HotcbActuator(
        "x", ActuatorType.FLOAT, lambda v, e: box.__setitem__("x", v), lambda e: box["x"]
    )
    blind = HotcbActuator("y", ActuatorType.FLOAT, lambda v, e: None)
    ms = MutableState([read, blind])
    assert read.state is ActuatorState.INIT
    ms.initialize({})
    assert read.state is ActuatorState.UNTOUCHED and read.initial_value == 1.0
    ms.apply("x", 2.0, {})
    assert read.state is ActuatorState.VERIFIED and read.current_value == 2.0
    ms.apply("y", 3.0, {})
    assert blind.state is ActuatorState.UNVERIFIED  # no read_fn: cannot be verified
    box["x"] = 9.0  # moved behind our back
    assert ms.verify({}) == {"x": False}
    assert read.state is ActuatorState.UNVERIFIED


def test_apply_fn_that_raises_rolls_back_and_repeated_failures_disable() -> None:
    box = {"x": 1.0}

    def flaky(value: float, env: Any) -> None:
        box["x"] = value  # half-applied before it blows up
        if value > 5:
            raise RuntimeError("device rejected it")

    act = HotcbActuator("x", ActuatorType.FLOAT, flaky, lambda e: box["x"], max_failures=3)
    ms = MutableState([act])
    ms.initialize({})
    for attempt in range(1, 4):
        with pytest.raises(ActuatorApplyError) as info:
            ms.apply("x", 10.0, {})
        assert "RuntimeError: device rejected it" in str(info.value)
        assert "rolled back to 1.0" in str(info.value)
        assert box["x"] == 1.0
        assert act.failures == attempt
    assert act.state is ActuatorState.DISABLED
    with pytest.raises(ActuatorError, match="'x' is disabled after 3 failed applies"):
        ms.apply("x", 2.0, {})
    assert box["x"] == 1.0


def test_read_back_mismatch_counts_as_a_failure() -> None:
    box = {"x": 1.0}
    act = HotcbActuator(
        "x", ActuatorType.FLOAT, lambda v, e: box.__setitem__("x", round(v)), lambda e: box["x"]
    )
    ms = MutableState([act])
    ms.initialize({})
    with pytest.raises(ActuatorApplyError, match=r"read back 2 after setting 2\.4"):
        ms.apply("x", 2.4, {})
    assert box["x"] == 1.0


def test_loss_actuators_mutate_the_users_dict_in_place_with_dotted_keys() -> None:
    weights: dict[str, Any] = {
        "ce": 1.0,
        "aux": 0.2,
        "terms": {"distill": True, "kd": 0.5},
        "n": "x",
    }
    terms = weights["terms"]
    ms = mutable_state(loss_actuators(weights))
    assert ms.keys() == ["ce", "aux", "terms.distill", "terms.kd"]
    assert {a.group for a in ms} == {"loss"}
    ms.initialize({})
    ms.apply("aux", 0.7, {})
    ms.apply("terms.distill", False, {})
    ms.apply("terms.kd", 2, {})
    assert weights["aux"] == 0.7 and terms is weights["terms"]
    assert terms == {"distill": False, "kd": 2.0}
    with pytest.raises(ActuatorError, match="below the minimum 0"):
        ms.apply("ce", -1.0, {})


def test_describe_all_lists_what_the_ui_can_control() -> None:
    ms = mutable_state(loss_actuators({"aux": 0.5}))
    ms.initialize({})
    (d,) = ms.describe_all()
    assert d == {
        "param_key": "aux",
        "type": "float",
        "group": "loss",
        "label": "aux",
        "description": "loss weight aux",
        "min": 0.0,
        "max": 10000.0,
        "choices": None,
        "length": None,
        "current": 0.5,
        "initial": 0.5,
        "state": "untouched",
        "failures": 0,
        "last_error": None,
    }


def test_duplicate_registration_is_an_error_unless_replace() -> None:
    ms = mutable_state(loss_actuators({"aux": 0.5}))
    with pytest.raises(ValueError, match="already registered"):
        ms.register(loss_actuators({"aux": 1.0})[0])
    ms.register(loss_actuators({"aux": 1.0})[0], replace=True)
    with pytest.raises(ValueError, match="LOG_FLOAT actuator 'bad' needs min_value > 0"):
        HotcbActuator("bad", ActuatorType.LOG_FLOAT, lambda v, e: None)


def test_a_loss_weight_named_like_an_optimizer_knob_is_said(tmp_path: Any, caplog: Any) -> None:
    """`mutable_state(loss_actuators({"lr": 1.0}))` beside an optimizer: the optimizer's lr was
    left out without a word, and `hotcb set lr=…` then said "unknown actuator 'lr' in opt"."""
    from hotcb import HotKernel, loss_actuators, mutable_state

    weights = {"lr": 1.0}
    kernel = HotKernel(str(tmp_path / "run"), mutable_state=mutable_state(loss_actuators(weights)))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with caplog.at_level("WARNING", logger="hotcb"):
        kernel.apply({"step": 0, "optimizer": opt})
    kernel.close()
    said = "the optimizer's opt actuator 'lr' is not registered: a loss actuator of that name"
    assert said in caplog.text
