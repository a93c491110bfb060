"""``lr`` / ``weight_decay`` and their per-group keys (``lr@group1``) together: a real AdamW with
param groups, a real :class:`HotKernel` in a bare loop, commands from :class:`HotClient` and the
CLI, checked where a user looks (the optimizer's param groups, the ledger, ``hotcb status``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from hotcb import HotClient, HotKernel
from hotcb.testing import TinyMLP


@dataclass
class Loop:
    """A bare loop: one ``kernel.apply`` per call of :meth:`send`, after an optimizer step."""

    kernel: HotKernel
    client: HotClient
    opt: torch.optim.Optimizer
    scheduler: Any = None
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def tick(self) -> None:
        self.step += 1
        env: dict[str, Any] = {"step": self.step, "optimizer": self.opt}
        if self.scheduler is not None:
            env["scheduler"] = self.scheduler
        self.kernel.apply(env)

    def send(self, cmd_id: str) -> dict[str, Any]:
        self.tick()
        return self.client.wait(cmd_id, timeout=5)

    def lrs(self) -> list[float]:
        return [g["lr"] for g in self.opt.param_groups]

    def wds(self) -> list[float]:
        return [g["weight_decay"] for g in self.opt.param_groups]


def _loop(run_dir: str, groups: list[dict[str, Any]]) -> Iterator[Loop]:
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=1e-2)
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    loop = Loop(kernel, HotClient(run_dir), opt)
    loop.tick()  # the kernel registers the optimizer's actuators
    yield loop
    kernel.close()


@pytest.fixture
def loop(run_dir: str) -> Iterator[Loop]:
    """AdamW, group 0 the weights (lr 1e-3, decay 0.01), group 1 the biases (lr 5e-3, no
    decay, as the HF Trainer makes them)."""
    model = TinyMLP()
    yield from _loop(
        run_dir,
        [
            {"params": [model[0].weight, model[2].weight]},
            {"params": [model[0].bias, model[2].bias], "lr": 5e-3, "weight_decay": 0.0},
        ],
    )


def status(cli: Any, run_dir: str) -> dict[str, Any]:
    """``hotcb status --json``'s actuators, ``{key: (current, state)}``."""
    proc = cli(run_dir, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return {a["param_key"]: a["current"] for a in json.loads(proc.stdout)["actuators"]}


@pytest.mark.parametrize("group_first", [True, False], ids=["group-first", "lr-first"])
def test_a_groups_lr_given_with_lr_wins_for_that_group_in_either_order(
    loop: Loop, run_dir: str, cli: Any, group_first: bool
) -> None:
    pairs = [("lr@group1", 1e-2), ("lr", 2e-3)]
    params = dict(pairs if group_first else pairs[::-1])
    entry = loop.send(loop.client.opt(**params))

    assert entry["decision"] == "applied"
    assert loop.lrs() == pytest.approx([2e-3, 1e-2])  # not 1e-2 x 2 (lr moved it after)
    assert entry["changes"]["lr@group1"] == {"old": 5e-3, "new": pytest.approx(1e-2)}
    assert entry["changes"]["lr"] == {"old": 1e-3, "new": 2e-3}
    assert entry["changes"]["lr@group0"] == {"old": 1e-3, "new": pytest.approx(2e-3)}
    shown = status(cli, run_dir)
    assert shown["lr@group1"] == pytest.approx(1e-2)
    assert shown["lr@group0"] == pytest.approx(2e-3)

    undone = loop.send(loop.client.undo(entry["cmd_id"]))
    assert undone["decision"] == "applied"
    assert loop.lrs() == pytest.approx([1e-3, 5e-3], rel=1e-12)


def test_a_groups_weight_decay_given_with_weight_decay_wins_for_that_group(
    loop: Loop, cli: Any, run_dir: str
) -> None:
    """The CLI's ``set`` with both keys, the group's first."""
    proc = cli(run_dir, "set", "weight_decay@group1=0.03", "weight_decay=0.02")
    assert proc.returncode == 0, proc.stderr
    entry = loop.send(proc.stdout.split()[-1])

    assert entry["decision"] == "applied"
    assert loop.wds() == pytest.approx([0.02, 0.03])
    assert entry["changes"]["weight_decay@group1"] == {"old": 0.0, "new": 0.03}
    assert status(cli, run_dir)["weight_decay@group1"] == pytest.approx(0.03)


def test_lr_that_would_put_a_group_out_of_bounds_is_refused_whole(
    loop: Loop, cli: Any, run_dir: str
) -> None:
    assert loop.send(loop.client.opt(**{"lr@group1": 9.0}))["decision"] == "applied"

    # (the CLI and a checking client refuse it before writing: the run's own check here)
    unchecked = HotClient(loop.client.run_dir, validate=False)
    entry = loop.send(unchecked.opt(weight_decay=0.02, lr=1.0))

    assert entry["decision"] == "rejected"
    assert "lr@group1 to 9000" in entry["error"]
    assert "above the maximum 10" in entry["error"]
    assert loop.lrs() == [1e-3, 9.0]  # nothing half-applied
    assert loop.wds() == [1e-2, 0.0]
    assert status(cli, run_dir)["lr@group1"] == 9.0
    # the same lr with group 1 given its own value is fine
    entry = loop.send(loop.client.opt(lr=1.0, **{"lr@group1": 2.0}))
    assert entry["decision"] == "applied"
    assert loop.lrs() == pytest.approx([1.0, 2.0])


def test_lr_lists_every_group_it_moved_and_undo_puts_each_back(
    loop: Loop, cli: Any, run_dir: str
) -> None:
    entry = loop.send(loop.client.opt(lr=1e-2))

    assert loop.lrs() == pytest.approx([1e-2, 5e-2])
    assert entry["changes"]["lr@group1"] == {"old": 5e-3, "new": pytest.approx(5e-2)}
    assert status(cli, run_dir)["lr@group1"] == pytest.approx(5e-2)

    assert loop.send(loop.client.undo(entry["cmd_id"]))["decision"] == "applied"
    assert loop.lrs() == pytest.approx([1e-3, 5e-3], rel=1e-12)
    assert status(cli, run_dir)["lr@group1"] == pytest.approx(5e-3)


def test_weight_decay_through_zero_keeps_each_groups_share(run_dir: str) -> None:
    """A group without decay keeps none, and a third group keeps 3x group 0's, after
    ``weight_decay=0`` and back: the ledger lists the groups that moved."""
    model = TinyMLP()
    groups = [
        {"params": [model[0].weight]},
        {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0},
        {"params": [model[2].weight], "weight_decay": 3e-2},
    ]
    for loop in _loop(run_dir, groups):
        down = loop.send(loop.client.opt(weight_decay=0.0))
        assert loop.wds() == [0.0, 0.0, 0.0]
        assert down["changes"]["weight_decay@group2"] == {"old": 3e-2, "new": 0.0}
        assert "weight_decay@group1" not in down["changes"]  # it did not move

        up = loop.send(loop.client.opt(weight_decay=0.05))
        assert loop.wds() == pytest.approx([0.05, 0.0, 0.15])
        assert up["changes"]["weight_decay@group2"] == {"old": 0.0, "new": pytest.approx(0.15)}

        loop.send(loop.client.undo(up["cmd_id"]))  # newest first: then down is in force
        assert loop.wds() == [0.0, 0.0, 0.0]
        loop.send(loop.client.undo(down["cmd_id"]))
        assert loop.wds() == pytest.approx([1e-2, 0.0, 3e-2])


def test_lr_set_after_a_schedule_took_it_to_zero_keeps_the_groups_ratio(loop: Loop) -> None:
    """A cosine schedule ending at 0 (both groups at 0): a new lr gives group 1 its share
    again, not the same lr as group 0."""
    loop.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(loop.opt, T_max=1, eta_min=0.0)
    loop.opt.step()
    loop.scheduler.step()
    assert loop.lrs() == [0.0, 0.0]

    entry = loop.send(loop.client.opt(lr=2e-3))

    assert entry["decision"] == "applied"
    assert loop.lrs() == pytest.approx([2e-3, 1e-2])


def _ledger(loop: Loop, cmd_id: str) -> list[dict[str, Any]]:
    from hotcb.testing import read_ledger

    return [e for e in read_ledger(loop.client.run_dir) if e.get("cmd_id") == cmd_id]


@pytest.mark.parametrize(
    ("ramped", "then", "key"),
    [
        ({"lr@group1": 0.02}, {"lr": 5e-3}, "lr@group1"),  # lr moves lr@group1
        ({"lr": 1e-2}, {"lr@group1": 1e-4}, "lr@group1"),  # lr covers lr@group1
        ({"betas": [0.5, 0.9]}, {"beta2": 0.95}, "beta2"),  # beta2 moves betas
        ({"beta1": 0.5}, {"betas": [0.7, 0.99]}, "beta1"),  # betas covers beta1
    ],
    ids=["lr-over-a-group-ramp", "group-over-an-lr-ramp", "beta2-over-betas", "betas-over-beta1"],
)
def test_a_command_on_a_key_a_ramp_moves_ends_the_ramp(
    loop: Loop, ramped: dict[str, Any], then: dict[str, Any], key: str
) -> None:
    """The ramp was left running: it put its own value back at the next step over a command
    ledgered applied, and later ledgered its "complete"."""

    def value() -> float:
        g = loop.opt.param_groups
        return {"lr@group1": g[1]["lr"], "beta1": g[0]["betas"][0], "beta2": g[0]["betas"][1]}[key]

    ramp = loop.client.opt(**ramped, transition={"steps": 4})
    loop.tick()
    loop.tick()  # one move
    jump = loop.send(loop.client.opt(**then))
    assert jump["decision"] == "applied"
    held = value()
    assert held == pytest.approx(jump["changes"][key]["new"])
    for _ in range(6):
        loop.tick()
    assert value() == held  # what the command set holds
    ends = [e.get("ramp") for e in _ledger(loop, ramp) if e.get("ramp")]
    assert ends == ["superseded"], ends
    assert _ledger(loop, ramp)[-1]["superseded_by"] == jump["cmd_id"]


def test_a_ramped_lr_lists_the_groups_it_moves_so_an_older_group_change_is_set_since(
    loop: Loop,
) -> None:
    """As a change made at once does: an undo of an older lr@group1 change after a ramp of lr
    is a noop, not a take-back of the ramp's scaling of group 1."""
    older = loop.send(loop.client.opt(**{"lr@group1": 5e-2}))
    ramp = loop.client.opt(lr=2e-3, transition={"steps": 2})
    for _ in range(4):
        loop.tick()
    start, end = _ledger(loop, ramp)
    assert start["changes"]["lr@group1"] == {"old": 5e-2, "new": pytest.approx(0.1)}
    assert end["ramp"] == "complete" and end["changes"]["lr@group1"]["new"] == pytest.approx(0.1)
    assert loop.lrs() == pytest.approx([2e-3, 0.1])

    undo = loop.send(loop.client.undo(older["cmd_id"]))
    assert undo["decision"] == "noop" and "lr@group1" in undo["error"]
    assert loop.lrs() == pytest.approx([2e-3, 0.1])
    # the ramp's own undo still puts lr (and with it each group) back
    assert loop.send(loop.client.undo(ramp))["decision"] == "applied"
    assert loop.lrs() == pytest.approx([1e-3, 5e-2])


def test_lr_with_group_0_frozen_at_zero_is_refused_not_unfrozen(run_dir: str) -> None:
    """A frozen backbone as group 0: ``lr`` has no factor to move the others by. Setting every
    group to the value unfroze it and flattened the heads' lrs."""
    model = TinyMLP()
    groups = [
        {"params": [model[0].weight, model[0].bias], "lr": 0.0},
        {"params": [model[2].weight], "lr": 1e-2},
        {"params": [model[2].bias], "lr": 1e-4},
    ]
    for loop in _loop(run_dir, groups):
        entry = loop.send(loop.client.opt(lr=2e-3))
        assert entry["decision"] == "rejected"
        assert "group0 is frozen at lr 0" in entry["error"] and "lr@group1" in entry["error"]
        assert loop.lrs() == [0.0, 1e-2, 1e-4]
        assert loop.send(loop.client.opt(**{"lr@group1": 2e-3}))["decision"] == "applied"
        assert loop.lrs() == [0.0, 2e-3, 1e-4]


def test_lr_with_group_0_frozen_mid_run_is_refused_too(loop: Loop) -> None:
    """Frozen by the user's code after the ratios were seen: ``lr`` gave group 0 the value
    (unfroze it) and the others their old share."""
    loop.opt.param_groups[0]["lr"] = 0.0  # the backbone frozen mid-run
    loop.tick()
    entry = loop.send(loop.client.opt(lr=0.3))
    assert entry["decision"] == "rejected" and "frozen at lr 0" in entry["error"]
    assert loop.lrs() == [0.0, 5e-3]


def test_lr_with_group_0_frozen_is_taken_when_the_command_sets_every_group(run_dir: str) -> None:
    model = TinyMLP()
    groups = [{"params": [model[0].weight], "lr": 0.0}, {"params": [model[2].weight], "lr": 1e-2}]
    for loop in _loop(run_dir, groups):
        cmd = {"lr": 0.1, "lr@group0": 0.01, "lr@group1": 0.2}
        assert loop.send(loop.client.opt(**cmd))["decision"] == "applied"
        assert loop.lrs() == pytest.approx([0.01, 0.2])


def test_lr_from_a_warm_up_at_zero_in_every_group_still_sets_them(run_dir: str) -> None:
    model = TinyMLP()
    groups = [{"params": [model[0].weight], "lr": 0.0}, {"params": [model[2].weight], "lr": 0.0}]
    for loop in _loop(run_dir, groups):
        assert loop.send(loop.client.opt(lr=2e-3))["decision"] == "applied"
        assert loop.lrs() == [2e-3, 2e-3]


def test_the_cli_refuses_an_lr_that_would_put_a_group_out_of_bounds_before_writing(
    loop: Loop, cli: Any, run_dir: str
) -> None:
    """Group 1 at 5x group 0's lr: ``set lr=5`` would give it 25, over lr's maximum 10. The CLI
    printed a cmd_id and exited 0; the run then rejected it."""
    done = cli(run_dir, "set", "lr=5")
    assert done.returncode == 2, done.stdout
    assert "lr=5 would set lr@group1 to 25, above the maximum 10" in done.stderr
    with open(loop.client.paths.commands) as f:
        assert not f.read().strip()  # nothing written
    assert cli(run_dir, "set", "lr=5", "lr@group1=6").returncode == 0  # it sets that group


def test_the_cli_refuses_a_knob_the_run_disabled(run_dir: str, cli: Any) -> None:
    from hotcb import HotcbActuator, mutable_state
    from hotcb.actuators import ActuatorType
    from hotcb.testing import StepDriver

    def broken(value: Any, env: Any) -> None:
        raise RuntimeError("the sampler is gone")

    temp = HotcbActuator(param_key="temperature", type=ActuatorType.FLOAT, apply_fn=broken)
    with StepDriver(run_dir, mutable_state=mutable_state([temp])) as drv:
        drv.steps()
        for t in (2.0, 3.0, 4.0):  # three failed applies disable it
            drv.client.send("custom", "set_params", params={"temperature": t})
            drv.steps()
        done = cli(run_dir, "custom", "set_params", "temperature=3")
    assert done.returncode == 2, done.stdout
    assert "'temperature' is disabled after 3 failed applies" in done.stderr
    assert "the sampler is gone" in done.stderr


def test_a_multiplier_sent_on_a_stale_value_is_left_to_the_kernel_to_rebase(loop: Loop) -> None:
    """The autopilot's lr × 2 computed from an lr a tuner roll-back has since taken back: the
    client checked the value sent (group 1 would be 20, over 10) and refused what the kernel,
    which applies the factor to the value in force, accepts."""
    cid = loop.client.set_params("opt", {"lr": 4.0}, relative_to={"lr": 2.0})
    assert loop.send(cid)["decision"] == "applied"
    assert loop.lrs() == pytest.approx([2e-3, 1e-2])


def test_a_recipe_of_the_runs_own_changes_validates_on_a_twin_run(
    loop: Loop, cli: Any, run_dir: str, tmp_path: Any
) -> None:
    """Entries in bounds only after an earlier entry moved the groups' ratio (or that set the
    group themselves) were refused by ``recipe validate`` and ``freeze --mode replay`` once the
    client checked group bounds against the values published now."""
    for cmd in ({"lr@group1": 2e-3}, {"lr": 4.0}, {"lr": 5.0, "lr@group1": 9.0}):
        assert loop.send(loop.client.opt(**cmd))["decision"] == "applied"
    recipe = os.fspath(tmp_path / "rec.jsonl")
    assert cli(run_dir, "recipe", "export", "--out", recipe).returncode == 0
    model = TinyMLP()
    twin = os.fspath(tmp_path / "twin")
    for other in _loop(twin, [
        {"params": [model[0].weight, model[2].weight]},
        {"params": [model[0].bias, model[2].bias], "lr": 5e-3, "weight_decay": 0.0},
    ]):  # fmt: skip
        done = cli(twin, "recipe", "validate", "--recipe", recipe)
        assert done.returncode == 0, done.stdout + done.stderr
        assert cli(twin, "freeze", "--mode", "replay", "--recipe", recipe).returncode == 0
        for _ in range(3):
            other.tick()
        assert other.lrs() == pytest.approx([5.0, 9.0])


def test_a_multiplier_from_the_value_in_force_is_still_checked_before_writing(loop: Loop) -> None:
    from hotcb.errors import ActuatorError

    with pytest.raises(ActuatorError, match="would set lr@group1 to 25"):
        loop.client.set_params("opt", {"lr": 5.0}, relative_to={"lr": 1e-3})
    with open(loop.client.paths.commands) as f:
        assert not f.read().strip()


def test_an_optimizer_rolled_back_with_load_state_dict_is_the_one_changed(loop: Loop) -> None:
    """``optimizer.load_state_dict`` (a notebook's roll-back to a snapshot) puts new group
    dicts in place: the actuators read and moved the old ones, so a change recorded the
    rolled-back value as its "old" one, and its undo put that back over the snapshot's."""
    snapshot = loop.opt.state_dict()  # lr 1e-3 and 5e-3
    assert loop.send(loop.client.opt(lr=2e-3))["decision"] == "applied"
    loop.opt.load_state_dict(snapshot)
    assert loop.lrs() == pytest.approx([1e-3, 5e-3])
    entry = loop.send(loop.client.opt(lr=4e-3, betas=(0.8, 0.99), weight_decay=0.02))
    assert entry["changes"]["lr"] == {"old": 1e-3, "new": 4e-3}
    assert entry["changes"]["betas"]["old"] == pytest.approx((0.9, 0.999))
    assert loop.lrs() == pytest.approx([4e-3, 2e-2])  # group 1 keeps its share: x5
    assert loop.wds() == pytest.approx([0.02, 0.0])
    assert loop.opt.param_groups[1]["betas"] == (0.8, 0.99)
    assert loop.send(loop.client.undo(entry["cmd_id"]))["decision"] == "applied"
    assert loop.lrs() == pytest.approx([1e-3, 5e-3])
    assert loop.opt.param_groups[0]["betas"] == (0.9, 0.999)
