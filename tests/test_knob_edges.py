"""Knobs where a run's own set-up used to defeat them: a warm-up then cosine schedule
(``SequentialLR``), a param group
frozen at lr 0, a loss weight that starts below 0, a scheduler that cycles momentum, and a
custom knob read as a 0-d tensor. Real torch optimizers and schedulers, a real
:class:`HotKernel` in a bare loop (a real HF Trainer for its groups), commands from
:class:`HotClient`; checked where a user looks: the optimizer, the ledger."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from hotcb import (
    ActuatorType,
    HotcbActuator,
    HotClient,
    HotKernel,
    loss_actuators,
    mutable_state,
)

S = torch.optim.lr_scheduler


def run_loop(
    run_dir: str,
    opt: torch.optim.Optimizer,
    steps: int,
    send: Callable[[int, HotClient], None],
    *,
    scheduler: Any = None,
    knobs: list[HotcbActuator] | None = None,
) -> list[dict[str, Any]]:
    """Train ``steps`` steps of a bare loop; ``send(step, client)`` before each step's
    ``apply()`` (a command sent there lands at it). Returns each step's param groups."""
    params = [p for g in opt.param_groups for p in g["params"]]
    state = mutable_state(knobs) if knobs else None
    kernel = HotKernel(run_dir, poll_interval_sec=0, mutable_state=state)
    client = HotClient(run_dir)
    seen = []
    torch.manual_seed(0)
    try:
        for step in range(steps):
            opt.zero_grad()
            sum(p.sum() for p in params).backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            send(step, client)
            env: dict[str, Any] = {"step": step, "optimizer": opt}
            if scheduler is not None:
                env["scheduler"] = scheduler
            kernel.apply(env)
            seen.append([dict(g, params=None) for g in opt.param_groups])
    finally:
        kernel.close()
    return seen


def ledger(run_dir: str) -> list[dict[str, Any]]:
    with open(os.path.join(run_dir, "hotcb.applied.jsonl"), "rb") as f:
        return [json.loads(line) for line in f if line.strip()]


def warmup_cosine(lr: float) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.SGD(nn.Linear(4, 1).parameters(), lr=lr)
    warm = S.LinearLR(opt, start_factor=0.1, total_iters=3)
    sched = S.SequentialLR(opt, [warm, S.CosineAnnealingLR(opt, T_max=10)], milestones=[3])
    return opt, sched


def test_an_lr_set_during_warm_up_holds_after_the_milestone_of_a_sequential_lr(
    run_dir: str,
) -> None:
    """Warm-up then cosine through ``SequentialLR``: at its milestone it starts the cosine
    from the cosine's own ``base_lrs``. Those held the old lr, so the change was gone from
    the milestone on while the ledger said applied."""
    opt, sched = warmup_cosine(0.1)
    base = [g[0]["lr"] for g in run_loop(os.path.join(run_dir, "base"), opt, 8,
                                         lambda s, c: None, scheduler=sched)]  # fmt: skip
    opt, sched = warmup_cosine(0.1)
    moved = [g[0]["lr"] for g in run_loop(os.path.join(run_dir, "set"), opt, 8,
                                          lambda s, c: s == 0 and c.opt(lr=0.3),
                                          scheduler=sched)]  # fmt: skip
    ratios = [m / b for m, b in zip(moved, base, strict=True)]
    assert ratios == pytest.approx([7.5] * 8), ratios  # 0.3 / 0.04, past the milestone (3)


def two_groups(frozen_lr: float = 0.0) -> torch.optim.Optimizer:
    body, head = nn.Linear(4, 8), nn.Linear(8, 1)
    return torch.optim.AdamW([{"params": body.parameters(), "lr": 0.01},
                              {"params": head.parameters(), "lr": frozen_lr}])  # fmt: skip


def test_lr_leaves_a_group_frozen_at_zero_and_undo_freezes_it_again(run_dir: str) -> None:
    """A head frozen at lr 0: ``set lr`` was refused whole ("would set lr@group1 to 0, below
    the minimum"), and an undo of ``lr@group1`` could never put the 0 back."""
    opt = two_groups()
    sends = {0: lambda c: c.opt(lr=0.02), 1: lambda c: c.opt(**{"lr@group1": 0.001}),
             2: lambda c: c.undo()}  # fmt: skip
    seen = run_loop(run_dir, opt, 4, lambda s, c: s in sends and sends[s](c))
    assert [[g["lr"] for g in groups] for groups in seen] == [
        [0.02, 0.0], [0.02, 0.001], [0.02, 0.0], [0.02, 0.0]
    ]  # fmt: skip
    entries = ledger(run_dir)
    assert [e["decision"] for e in entries] == ["applied"] * 3, entries
    assert set(entries[0]["changes"]) == {"lr", "lr@group0"}  # group 1 did not move
    states = {a["param_key"]: a["state"] for a in HotClient(run_dir).actuators()}
    assert states["lr@group0"] == "verified"  # moved by lr: not "untouched" in hotcb status
    assert entries[2]["changes"] == {"lr@group1": {"old": 0.001, "new": 0.0}}


def test_a_loss_weight_that_starts_below_zero_can_be_set_back_and_undone(run_dir: str) -> None:
    """A gradient-reversal term at -0.1: its start was below the default minimum 0, so
    ``set adv=-0.05`` was refused and an undo of ``adv=0`` failed."""
    weights = {"task": 1.0, "adv": -0.1}
    opt = torch.optim.SGD(nn.Linear(4, 1).parameters(), lr=0.01)
    sends = {0: lambda c: c.loss(adv=0.0), 1: lambda c: c.undo(), 2: lambda c: c.loss(adv=-0.05)}
    values = []
    knobs = loss_actuators(weights)

    def send(step: int, client: HotClient) -> None:
        values.append(weights["adv"])
        if step in sends:
            sends[step](client)

    run_loop(run_dir, opt, 4, send, knobs=knobs)
    assert values[1:] == [0.0, -0.1, -0.05], values
    assert [e["decision"] for e in ledger(run_dir)] == ["applied"] * 3
    # below the default floor 0 from the start: it ranges as far below 0 as above
    assert [a["min"] for a in HotClient(run_dir).actuators() if a["param_key"] == "adv"] == [-1e4]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_scheduler_that_cycles_momentum_refuses_a_change_it_would_undo(
    run_dir: str, optimizer: str
) -> None:
    """OneCycleLR (``cycle_momentum=True``) sets beta1 (or SGD's momentum) at every step: a
    change lasted one step while the ledger said applied. It is refused, saying why."""
    model = nn.Linear(4, 1)
    if optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        change: dict[str, Any] = {"betas": [0.5, 0.999]}
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        change = {"momentum": 0.5}
    sched = S.OneCycleLR(opt, max_lr=0.1, total_steps=20)
    seen = run_loop(run_dir, opt, 3, lambda s, c: s == 0 and c.opt(**change), scheduler=sched)
    (entry,) = ledger(run_dir)
    assert entry["decision"] == "rejected", entry
    what = "beta1" if optimizer == "adamw" else "momentum"
    assert f"OneCycleLR (cycle_momentum=True) sets {what} at every step" in entry["error"]
    assert "cycle_momentum=False" in entry["error"] and "nothing changed" in entry["error"]
    first = [g[0]["betas"][0] if optimizer == "adamw" else g[0]["momentum"] for g in seen]
    assert 0.5 not in first and len(set(first)) == 3, first  # the schedule's, every step


def test_a_custom_knob_read_as_a_tensor_is_ledgered_by_value_and_undone(run_dir: str) -> None:
    """A knob over a model's 0-d buffer: its read value was the tensor the change then
    filled, so the ledger said ``old 3.0 -> new 3.0`` and the undo failed (``got Tensor``)."""
    temp = torch.tensor(2.0)
    knob = HotcbActuator("temperature", ActuatorType.FLOAT, apply_fn=lambda v, env: temp.fill_(v),
                         read_fn=lambda env: temp, min_value=0.1, max_value=10.0)  # fmt: skip
    opt = torch.optim.SGD(nn.Linear(4, 1).parameters(), lr=0.01)
    sends = {0: lambda c: c.custom(temperature=3.0), 1: lambda c: c.undo()}
    run_loop(run_dir, opt, 3, lambda s, c: s in sends and sends[s](c), knobs=[knob])
    entries = ledger(run_dir)
    assert [e["decision"] for e in entries] == ["applied", "applied"], entries
    assert entries[0]["changes"] == {"temperature": {"old": 2.0, "new": 3.0}}
    assert entries[1]["changes"] == {"temperature": {"old": 3.0, "new": 2.0}}
    assert float(temp) == 2.0


def decaying() -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.SGD(nn.Linear(4, 1).parameters(), lr=0.1)
    return opt, S.LambdaLR(opt, lambda s: 1 / (1 + s))


@pytest.mark.parametrize("undo_at", [7, 3], ids=["after-it-ended", "mid-ramp"])
def test_undo_of_a_ramped_lr_puts_the_run_back_on_its_schedule(run_dir: str, undo_at: int) -> None:
    """An lr ramped under a decaying schedule, then undone: the undo set the lr the ramp
    started from, a number the schedule had long left (4.5 × the schedule's value here). It
    takes the ramp's ratio back from the value in force, as an undo of a change made at once
    does, and says so (``on_schedule``)."""
    opt, sched = decaying()
    base = [g[0]["lr"] for g in run_loop(os.path.join(run_dir, "base"), opt, 12,
                                         lambda s, c: None, scheduler=sched)]  # fmt: skip

    def send(step: int, client: HotClient) -> None:
        if step == 0:
            client.send("opt", "set_params", params={"lr": 0.5}, transition={"steps": 4})
        elif step == undo_at:
            client.undo()

    opt, sched = decaying()
    got = [g[0]["lr"] for g in run_loop(run_dir, opt, 12, send, scheduler=sched)]
    ratios = [g / b for g, b in zip(got, base, strict=True)]
    assert ratios[undo_at:] == pytest.approx([1.0] * (12 - undo_at)), ratios
    (undo,) = [e for e in ledger(run_dir) if e["op"] == "undo"]
    assert undo["decision"] == "applied" and "lr" in undo["on_schedule"], undo


def test_a_change_undone_already_is_not_undone_again_by_its_id(run_dir: str) -> None:
    """``undo --cmd-id`` of a change a plain undo had taken back took its ratio off the
    schedule a second time: the run sat at 0.18 × its schedule for good."""
    opt, sched = decaying()
    base = [g[0]["lr"] for g in run_loop(os.path.join(run_dir, "base"), opt, 8,
                                         lambda s, c: None, scheduler=sched)]  # fmt: skip
    sent: list[str] = []

    def send(step: int, client: HotClient) -> None:
        if step == 1:
            sent.append(client.opt(lr=0.5))
        elif step == 3:
            client.undo()
        elif step == 5:
            client.undo(sent[0])

    opt, sched = decaying()
    got = [g[0]["lr"] for g in run_loop(run_dir, opt, 8, send, scheduler=sched)]
    assert [g / b for g, b in zip(got, base, strict=True)][3:] == pytest.approx([1.0] * 5)
    undos = [e for e in ledger(run_dir) if e["op"] == "undo"]
    assert [e["decision"] for e in undos] == ["applied", "noop"], undos
    assert "is undone already" in undos[1]["error"]


def test_beta2_alone_changes_under_a_scheduler_that_cycles_beta1(run_dir: str) -> None:
    """Under OneCycleLR every ``betas`` was refused (its beta1 never matched the cycled one
    of that step): beta2, which the schedule leaves alone, could not change at all."""
    opt = torch.optim.AdamW(nn.Linear(4, 1).parameters(), lr=0.01)
    sched = S.OneCycleLR(opt, max_lr=0.1, total_steps=20)
    sends = {0: lambda c: c.opt(beta2=0.99), 1: lambda c: c.opt(beta1=0.5)}
    seen = run_loop(run_dir, opt, 3, lambda s, c: s in sends and sends[s](c), scheduler=sched)
    two, one = ledger(run_dir)
    assert two["decision"] == "applied" and two["changes"]["beta2"]["new"] == 0.99, two
    assert set(two["changes"]) == {"beta2", "betas"}  # the tuple moved with it: undo has both
    assert seen[-1][0]["betas"][1] == pytest.approx(0.99)
    assert one["decision"] == "rejected" and "beta2 alone: set beta2=" in one["error"], one


def test_undo_of_a_ramp_after_a_restart_takes_back_what_the_ramp_did(run_dir: str) -> None:
    """A ramp of the lr under a decaying schedule ends, the run is checkpointed and restarted,
    then the ramp is undone. The ratio the ramp scaled the schedule by lived in the process:
    the restarted run took back its endpoints' ratio instead (×3 where it was ×2.5, 20 % off
    the schedule from there on). It is in the checkpoint now."""

    def train(where: str, steps: range, send: Callable[[int, HotClient], None],
              ck: dict[str, Any] | None = None) -> tuple[list[float], dict[str, Any]]:  # fmt: skip
        opt, sched = decaying()
        kernel = HotKernel(where, poll_interval_sec=0)
        if ck is not None:
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            kernel.load_state_dict(ck["hotcb"])
        client, lrs, saved = HotClient(where), [], {}
        try:
            for step in steps:
                opt.step()
                sched.step()
                send(step, client)
                kernel.apply({"step": step, "optimizer": opt, "scheduler": sched})
                lrs.append(opt.param_groups[0]["lr"])
                if step == 6:
                    saved = {"opt": opt.state_dict(), "sched": sched.state_dict(),
                             "hotcb": kernel.state_dict()}  # fmt: skip
        finally:
            kernel.close()
        return lrs, saved

    def send(step: int, client: HotClient) -> None:
        if step == 0:
            client.send("opt", "set_params", params={"lr": 0.5}, transition={"steps": 4})
        elif step == 8:
            client.undo()

    base, _ = train(os.path.join(run_dir, "base"), range(12), lambda s, c: None)
    whole, _ = train(os.path.join(run_dir, "whole"), range(12), send)
    restarted = os.path.join(run_dir, "restarted")
    _, ck = train(restarted, range(7), send)
    resumed, _ = train(restarted, range(7, 12), send, ck)
    assert whole[8:] == pytest.approx(base[8:])  # back on the schedule
    assert resumed[1:] == pytest.approx(whole[8:]), (resumed, whole[7:])


def test_undo_of_a_change_set_again_since_leaves_the_later_value(run_dir: str) -> None:
    """``undo --cmd-id`` of an lr change that later sets had overridden took its ratio off the
    lr in force: 1e-3 became 1e-2 (× 1e-3 / 1e-4), an lr no one had set. A loss weight was
    put back to the old change's old value, wiping the later one. Nothing of the old change
    is in force on a key set again since: the undo leaves that key, and says who set it."""
    opt, sched = decaying()
    knobs = loss_actuators({"ce": 1.0, "aux": 0.2})
    sent: dict[str, str] = {}

    def send(step: int, client: HotClient) -> None:
        if step == 1:
            sent["lr"] = client.opt(lr=0.05)
            sent["aux"] = client.loss(aux=0.5)
        elif step == 2:
            client.set({"lr": 0.2, "aux": 0.1})
        elif step == 3:
            client.opt(lr=0.07)
        elif step == 4:
            client.undo(sent["lr"])
            client.undo(sent["aux"])
        elif step == 6:  # the later ones taken back, newest first: the old change is in force
            client.undo()  # lr=0.07
            client.undo()  # aux=0.1 (`set` sent one command per module)
        elif step == 7:
            client.undo(sent["aux"])

    got = run_loop(run_dir, opt, 9, send, scheduler=sched, knobs=knobs)
    assert got[4][0]["lr"] == pytest.approx(got[3][0]["lr"] * 5 / 6)  # the schedule's step only
    undos = [e for e in ledger(run_dir) if e["op"] == "undo"]
    first, second = undos[:2]
    assert first["decision"] == "noop" and not first.get("changes"), first
    assert first["set_since"]["lr"]["seq"] > 0 and first["set_since"]["lr"]["source"] == "python"
    assert "lr was set again since (#" in first["error"]
    assert "the undo leaves it (undo that change, or set the value you want)" in first["error"]
    assert second["decision"] == "noop" and "aux was set again since" in second["error"]
    assert [e["decision"] for e in undos[2:]] == ["applied"] * 3
    # aux=0.1 undone, aux=0.5 is in force again: its undo puts aux's old value back
    assert undos[4]["changes"] == {"aux": {"old": 0.5, "new": 0.2}}, undos[4]


def test_a_change_undone_in_part_can_have_the_rest_undone_once_in_force_again(
    run_dir: str,
) -> None:
    """`undo --cmd-id` of {lr, weight_decay} after a later lr set took back the weight decay
    only, and marked the whole command undone: once the later lr was undone, the first one's
    lr was in force again and nothing could take it back ("undone already")."""
    opt = torch.optim.AdamW(nn.Linear(4, 1).parameters(), lr=0.1, weight_decay=0.0)
    first: list[str] = []

    def send(step: int, client: HotClient) -> None:
        if step == 1:
            first.append(client.opt(lr=0.03, weight_decay=0.01))
        elif step == 2:
            client.opt(lr=0.04)
        elif step == 3:
            client.undo(first[0])  # weight decay back; the lr is the later set's
        elif step == 4:
            client.undo()  # lr=0.04: the first's lr is in force again
        elif step == 5:
            client.undo()  # the rest of the first: its lr
        elif step == 6:
            client.undo(first[0])

    got = run_loop(run_dir, opt, 8, send)
    assert [(g[0]["lr"], g[0]["weight_decay"]) for g in got[1:7]] == [
        (0.03, 0.01), (0.04, 0.01), (0.04, 0.0), (0.03, 0.0), (0.1, 0.0), (0.1, 0.0)
    ]  # fmt: skip
    undos = [e for e in ledger(run_dir) if e["op"] == "undo"]
    assert [(e["decision"], e.get("changes")) for e in undos] == [
        ("applied", {"weight_decay": {"old": 0.01, "new": 0.0}}),
        ("applied", {"lr": {"old": 0.04, "new": 0.03}}),
        ("applied", {"lr": {"old": 0.03, "new": 0.1}}),
        ("noop", None),
    ], undos
    assert undos[0]["set_since"]["lr"]["seq"] == 2 and undos[2]["undo_of"] == first[0]
    assert "is undone already" in undos[3]["error"]


def test_undo_of_an_lr_leaves_a_group_set_again_since(run_dir: str) -> None:
    """`lr=0.2` (both groups doubled), then `lr@group1=0.07`, then `undo --cmd-id` of the lr:
    the undo said it left group 1, yet its `lr` moved every group, halving 0.07. It takes
    group 0 back alone; once group 1's change is undone, the rest of the lr comes back."""
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    opt = torch.optim.SGD([{"params": net[0].parameters(), "lr": 0.1},
                           {"params": net[1].parameters(), "lr": 0.05}])  # fmt: skip
    first: list[str] = []

    def send(step: int, client: HotClient) -> None:
        if step == 1:
            first.append(client.opt(lr=0.2))
        elif step == 2:
            client.send("opt", "set_params", params={"lr@group1": 0.07})
        elif step == 3:
            client.undo(first[0])
        elif step in (4, 5):
            client.undo()  # group 1's 0.07, then the rest of the lr: group 1's move

    got = run_loop(run_dir, opt, 7, send)
    lrs = [[g["lr"] for g in groups] for groups in got]
    assert lrs[1:6] == [[0.2, 0.1], [0.2, 0.07], [0.1, 0.07], [0.1, 0.1], [0.1, 0.05]], lrs
    undos = [e for e in ledger(run_dir) if e["op"] == "undo"]
    assert [e["decision"] for e in undos] == ["applied"] * 3
    assert "lr@group1" not in undos[0]["changes"], undos[0]  # (`lr` reads group 0)
    assert undos[0]["error"].startswith("lr@group1 was set again since (#2 at step 2")
    assert "lr@group0" not in undos[2]["changes"] and undos[2]["undo_of"] == first[0]
