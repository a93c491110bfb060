"""Resume keeps the trajectory: a run restarted from a checkpoint at step S re-applies the
ledger's changes after S at their original steps, then continues live (DESIGN.md §4).

Each scenario trains a tiny model in this process twice: once without interruption, once
killed after a checkpoint and resumed from it. The final weights must be equal bit for bit.
The last test does the same with the real trainer process and a real SIGKILL.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable
from typing import Any

import pytest

from hotcb import HotClient, jsonl
from hotcb.freeze import FreezeMode, FreezeState
from hotcb.ops import make_command
from hotcb.recipe import export_recipe
from hotcb.testing import TinyMLP, TorchStepDriver, read_ledger, wait_for

torch = pytest.importorskip("torch")

Action = Callable[[HotClient], Any]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """A tiny model trains faster on one thread, and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Loop(TorchStepDriver):
    """A deterministic training loop with a kernel (TinyMLP, SGD, random data, loss
    ``ce * CE + l2 * sum(p**2)``); ``checkpoints[step]`` holds what a training checkpoint would
    (model, optimizer, loss weights, RNG, ``kernel.state_dict()``)."""

    def __init__(
        self, run_dir: str, freeze: FreezeState | None = None, lrs: tuple[float, ...] = (0.05,)
    ) -> None:
        x = torch.randn(256, 64, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(2))
        super().__init__(
            run_dir,
            model=TinyMLP(hidden=16, seed=0),
            optimizer=lambda params: torch.optim.SGD(_groups(params, lrs), momentum=0.9),
            data=(x, y),
            batch_size=16,
            weights={"ce": 1.0, "l2": 0.0},
            env_extra={"save_checkpoint": lambda path=None: self.save(self.step)},
            metrics_collector=False,
            fsync_ledger=False,
            freeze=freeze,
        )
        self.checkpoints: dict[int, dict[str, Any]] = {}

    def loss_terms(self, logits: Any, y: Any) -> dict[str, Any]:
        ce = torch.nn.functional.cross_entropy(logits, y)
        return {"ce": ce, "l2": sum(p.pow(2).sum() for p in self.model.parameters())}

    def resume(self, ck: dict[str, Any]) -> None:
        ck = copy.deepcopy(ck)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.weights.update(ck["weights"])
        self.gen.set_state(ck["generator"])
        self.kernel.load_state_dict(ck["hotcb"])
        self.step = ck["step"]

    def run(
        self,
        end: int,
        actions: dict[int, Action] | None = None,
        checkpoint_at: tuple[int, ...] = (),
        kill_after: int | None = None,
    ) -> dict[str, Any]:
        """Train up to step ``end - 1``; ``actions[step](client)`` is sent during ``step``."""
        while self.step + 1 < end:
            self.steps(actions=actions)
            if self.step in checkpoint_at:
                self.save(self.step)
            if self.step == kill_after:
                return self.state()  # no close(): the process dies here
        self.kernel.close()
        return self.state()

    def save(self, step: int) -> str:
        self.checkpoints[step] = copy.deepcopy(
            {
                "step": step,
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "weights": dict(self.weights),
                "generator": self.gen.get_state(),
                "hotcb": self.kernel.state_dict(),
            }
        )
        return f"ckpt_{step}"

    def state(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def _groups(params: Any, lrs: tuple[float, ...]) -> list[dict[str, Any]]:
    """One param group per lr: the first tensors one each, the last group the rest."""
    params, n = list(params), len(lrs) - 1
    chunks = [params[i : i + 1] for i in range(n)] + [params[n:]]
    return [{"params": p, "lr": lr} for p, lr in zip(chunks, lrs, strict=True)]


def _equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _resumed(
    tmp_path: Any,
    actions: dict[int, Action],
    *,
    end: int = 60,
    ckpt: int = 20,
    kill: int = 45,
    freeze: FreezeState | None = None,
    later: dict[int, Action] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Final weights of an uninterrupted run and of a run killed after ``kill`` and resumed from
    its checkpoint at ``ckpt``; ``later`` actions are sent live to the resumed run only (and to
    the uninterrupted one at the same steps)."""
    later = later or {}
    whole = Loop(os.fspath(tmp_path / "whole"), freeze).run(end, {**actions, **later})
    run_dir = os.fspath(tmp_path / "killed")
    first = Loop(run_dir, freeze)
    first.run(end, {s: a for s, a in actions.items() if s <= kill}, (ckpt,), kill_after=kill)
    second = Loop(run_dir, freeze)
    second.resume(first.checkpoints[ckpt])
    resumed = second.run(end, later)
    return whole, resumed, run_dir


def _resume_entries(run_dir: str) -> list[tuple[int, str, str]]:
    return [
        (e["step"], e["module"], e["op"])
        for e in read_ledger(run_dir)
        if e["source"] == "resume" and e["decision"] == "applied"
    ]


def test_live_changes_after_the_checkpoint_are_reapplied_at_their_steps(tmp_path: Any) -> None:
    actions = {
        10: lambda c: c.opt(lr=0.02),
        30: lambda c: c.opt(lr=0.01),
        35: lambda c: c.loss(l2=1e-3),
    }
    later = {50: lambda c: c.opt(momentum=0.5)}
    whole, resumed, run_dir = _resumed(tmp_path, actions, later=later)
    assert _equal(whole, resumed)
    assert _resume_entries(run_dir) == [(30, "opt", "set_params"), (35, "loss", "set_params")]
    applied = [e for e in read_ledger(run_dir) if e["decision"] == "applied"]
    assert [e["step"] for e in applied if e["source"] == "test"] == [10, 30, 35, 50]


def test_an_undo_after_the_checkpoint_is_reapplied_before_a_later_set_of_its_knob(
    tmp_path: Any,
) -> None:
    """l2 set at 10, checkpoint at 20, the set undone at 30 and l2 set again at 40. The resume
    re-applied the undo as ``noop`` ("l2 was set again after it (the resume re-applies that
    change at step 40)"): a set at a later step of the same life counted as newer than the
    undo, and the resumed run trained steps 30..39 at the undone value."""
    actions = {
        10: lambda c: c.loss(l2=1e-3),
        30: lambda c: c.undo(),
        40: lambda c: c.loss(l2=5e-3),
    }
    whole, resumed, run_dir = _resumed(tmp_path, actions)
    assert _equal(whole, resumed)
    undo = [e for e in read_ledger(run_dir) if (e["source"], e["op"]) == ("resume", "undo")]
    assert [(e["step"], e["decision"], e["changes"]) for e in undo] == [
        (30, "applied", {"l2": {"old": 1e-3, "new": 0.0}})
    ]


def test_scheduled_commands_pending_at_the_checkpoint_apply_once(tmp_path: Any) -> None:
    actions = {
        0: lambda c: (c.send("opt", "set_params", params={"lr": 0.02}, at_step=40),
                      c.send("loss", "set_params", params={"l2": 1e-3}, at_step=52)),
    }  # fmt: skip
    whole, resumed, run_dir = _resumed(tmp_path, actions)
    assert _equal(whole, resumed)
    applied = [(e["step"], e["source"]) for e in read_ledger(run_dir) if e["decision"] == "applied"]
    # 40: applied before the kill, re-applied by the resume; 52: only after the resume
    assert applied == [(40, "test"), (40, "resume"), (52, "test")]


def test_cancel_and_undo_after_the_checkpoint_are_replayed(tmp_path: Any) -> None:
    ids: dict[str, str] = {}

    def schedule(c: HotClient) -> None:
        ids["late"] = c.send("opt", "set_params", params={"lr": 0.5}, at_step=55)

    def cancel(c: HotClient) -> None:
        c.cancel(ids["late"])

    actions = {
        5: schedule,
        12: lambda c: c.opt(lr=0.02),
        25: lambda c: c.undo(),  # reverts lr 0.02 -> 0.05, a change made before the checkpoint
        30: cancel,
    }
    whole, resumed, run_dir = _resumed(tmp_path, actions)
    assert _equal(whole, resumed)
    assert not [e for e in read_ledger(run_dir) if e["step"] == 55 and e["decision"] == "applied"]


def test_a_relative_change_after_the_checkpoint_is_replayed_as_a_factor(tmp_path: Any) -> None:
    """The autopilot's lr × 0.5 (sent `relative_to` the lr it read) after the checkpoint: the
    resume re-applied the number it reached in the life that died (0.025), though the resumed
    run had another lr in force there (0.2, set by the loop itself in the resumed run only, as
    a tuner's trial or the loop's own schedule would). It is ×0.5 of the lr in force now, as
    in the uninterrupted run with the same changes."""
    relative = {30: lambda c: c.set_params("opt", {"lr": 0.025}, relative_to={"lr": 0.05})}

    def own_lr(loop: Loop) -> dict[int, Action]:  # no command: nothing newer to win
        return {25: lambda c: loop.opt.param_groups[0].update(lr=0.2)}

    whole = Loop(os.fspath(tmp_path / "whole"))
    whole_w = whole.run(60, {**relative, **own_lr(whole)})
    run_dir = os.fspath(tmp_path / "killed")
    first = Loop(run_dir)
    first.run(60, relative, (20,), kill_after=45)
    second = Loop(run_dir)
    second.resume(first.checkpoints[20])
    assert _equal(whole_w, second.run(60, own_lr(second)))
    (again,) = [e for e in read_ledger(run_dir)
                if e["source"] == "resume" and e["module"] == "opt"]  # fmt: skip
    assert again["changes"]["lr"] == {"old": 0.2, "new": pytest.approx(0.1)}


def test_a_command_sent_while_the_trainer_was_down_wins_over_a_reapplied_one(
    tmp_path: Any,
) -> None:
    """lr set at 30 and 33 after the checkpoint at 20, the trainer killed, ``lr=0.01`` sent
    while it is down: the resumed run applies it at its first step and does not put the dead
    life's lr back at 30 or 33; the other keys of those commands (momentum, the autopilot's
    factor of wd) and other knobs (a loss weight) are re-applied as ever. The run then trains
    as an uninterrupted one given the commands in the order they were written; a second
    resume from the same checkpoint keeps the same decisions."""
    dead = {
        30: lambda c: c.opt(lr=0.02, momentum=0.5),
        33: lambda c: c.set_params("opt", {"lr": 0.015}, relative_to={"lr": 0.02}),
        35: lambda c: c.loss(l2=1e-3),
    }
    whole = Loop(os.fspath(tmp_path / "whole")).run(60, {
        21: lambda c: c.opt(lr=0.01), 30: lambda c: c.opt(momentum=0.5), 35: dead[35],
    })  # fmt: skip
    run_dir = os.fspath(tmp_path / "killed")
    first = Loop(run_dir)
    first.run(60, dead, (20,), kill_after=40)
    newer = HotClient(run_dir, source="cli").opt(lr=0.01)  # the trainer is down
    second = Loop(run_dir)
    second.resume(first.checkpoints[20])
    assert _equal(whole, second.run(60))
    assert second.opt.param_groups[0]["lr"] == pytest.approx(0.01)
    ledger = read_ledger(run_dir)
    (sent,) = [e for e in ledger if e["cmd_id"] == newer]
    assert (sent["step"], sent["decision"]) == (21, "applied")
    again = {e["step"]: e for e in ledger if e["source"] == "resume"}
    assert sorted(again) == [30, 33, 35]
    note = f"lr was set by a newer command (#{sent['seq']}): not re-applied"
    assert again[30]["decision"] == "applied" and again[30]["params"] == {"momentum": 0.5}
    assert again[30]["changes"] == {"momentum": {"old": 0.9, "new": 0.5}}
    assert again[30]["error"] == note and again[30]["newer"] == {"lr": sent["seq"]}
    assert (again[33]["decision"], again[33]["error"]) == ("noop", note)
    assert again[33]["changes"] is None
    assert again[35]["decision"] == "applied" and again[35]["error"] is None

    second.checkpoints.clear()  # a third life, from the same checkpoint
    third = Loop(run_dir)
    third.resume(first.checkpoints[20])
    assert _equal(whole, third.run(60))
    last = [e for e in read_ledger(run_dir) if e["seq"] > ledger[-1]["seq"]]
    assert [(e["step"], e["decision"], e["params"]) for e in last if e["source"] == "resume"] == [
        (21, "applied", {"lr": 0.01}),
        (30, "applied", {"momentum": 0.5}),
        (33, "noop", {"lr": 0.015}),
        (35, "applied", {"l2": 1e-3}),
    ]


def test_only_a_newer_command_on_the_same_knob_wins_over_a_reapplied_one() -> None:
    """Which keys of a re-applied command a newer one took over: the same actuator (a newer
    ``lr`` moves every param group, so ``lr@group1`` too; a newer ``lr@group1`` takes ``lr``
    over, which would move group 1), the same callback's same parameter; never a command of
    the same life (an ``at_step`` written early that landed late), whatever its step."""
    from hotcb._resume import NewerCommands
    from hotcb.ops import HotOp

    def op(module: str, params: dict[str, Any], cmd_id: str, *, source: str = "resume",
           op: str = "set_params", id: str | None = None) -> HotOp:  # fmt: skip
        return HotOp(module, op, cmd_id, dict(params), source=source, id=id)

    # the ledger's lives: a0, a1 first ledgered in life 0, b1 in life 1; this is life 2
    ages = {"a0": 0, "a1": 0, "b1": 1}
    newer = NewerCommands(ages, 2, lambda key: not key.startswith("cb."))
    newer.note(op("opt", {"lr": 1e-3}, "new1", source="cli"), {"lr": {}}, seq=13)
    newer.note(op("cb", {"k": 2}, "new2", source="cli", id="probe"), None, seq=14)
    newer.note(op("loss", {"aux": 0.1}, "a1"), {"aux": {}}, seq=15)  # a re-applied one
    kept, left = newer.screen(op("opt", {"lr@group1": 0.1, "momentum": 0.5}, "b1"))
    assert left is not None and left.newer == {"lr@group1": 13}
    assert left.why == "lr@group1 was set by a newer command (#13): not re-applied"
    assert kept is not None and kept.params == {"momentum": 0.5}
    kept, left = newer.screen(op("opt", {"lr": 0.1}, "a0"))
    assert kept is None and left is not None and left.newer == {"lr": 13}
    assert newer.left_out["a0"] is left
    assert newer.screen(op("cb", {"k": 1, "j": 1}, "b1", id="probe"))[1].newer == {"k": 14}
    assert newer.screen(op("cb", {"k": 1}, "b1", id="other"))[1] is None
    assert newer.screen(op("loss", {"aux": 0.2}, "a0"))[1] is None  # the same life: steps decide
    newer.note(op("opt", {"lr@group1": 0.2}, "new3", source="cli"), {"lr@group1": {}}, seq=16)
    kept, left = newer.screen(op("opt", {"lr": 0.1}, "b1"))
    assert kept is None and left is not None and left.newer == {"lr": 16}
    assert left.why == ("lr@group1 was set by a newer command (#16) and lr moves every group: "
                        "not re-applied")  # fmt: skip
    # a newer plain lr on two groups ledgers lr@group1 too: said as the lr it was (it read
    # "lr@group1 was set by a newer command (#17) and lr moves every group")
    newer.note(op("opt", {"lr": 4e-3}, "new4", source="cli"), {"lr": {}, "lr@group1": {}}, seq=17)
    kept, left = newer.screen(op("opt", {"lr": 0.1}, "b1"))
    assert left is not None and left.why == "lr was set by a newer command (#17): not re-applied"


def _down_and_resumed(
    run_dir: str, dead: dict[int, Action], newer: Action, lrs: tuple[float, ...] = (0.05,)
) -> tuple[Loop, Any]:
    """A run checkpointed at 20 and killed after 40 with ``dead`` sent, ``newer`` sent while
    it is down (its return value), resumed from the checkpoint and trained to step 59."""
    first = Loop(run_dir, lrs=lrs)
    first.run(60, dead, (20,), kill_after=40)
    sent = newer(HotClient(run_dir, source="cli"))
    second = Loop(run_dir, lrs=lrs)
    second.resume(first.checkpoints[20])
    second.run(60)
    return second, sent


def test_a_reapplied_undo_does_not_take_back_what_a_newer_command_set(tmp_path: Any) -> None:
    """An undo the dead life applied after the checkpoint, ``lr=0.3`` sent while the trainer
    was down. (a) Its target, ``lr=0.1`` at 30, was left out: nothing to undo (it set lr back
    to 0.05 over the newer 0.3). (b) Its target predates the checkpoint: it would take lr back
    too, so it is left out, whole (an undo is not taken back in part: momentum stays 0.5).
    (c) Its target was re-applied without lr: the undo takes back what that re-applied
    (momentum), as in write order. Each ends as an uninterrupted run with the same result."""
    newer = lambda c: c.opt(lr=0.3)  # noqa: E731
    cases = {
        "a": ({30: lambda c: c.opt(lr=0.1), 35: lambda c: c.undo()},
              {21: newer}),
        "b": ({10: lambda c: c.opt(lr=0.1, momentum=0.5), 30: lambda c: c.undo()},
              {10: lambda c: c.opt(lr=0.1, momentum=0.5), 21: newer}),
        "c": ({30: lambda c: c.opt(lr=0.1, momentum=0.5), 35: lambda c: c.undo()},
              {21: newer, 30: lambda c: c.opt(momentum=0.5), 35: lambda c: c.opt(momentum=0.9)}),
    }  # fmt: skip
    for name, (dead, same) in cases.items():
        whole = Loop(os.fspath(tmp_path / f"whole_{name}")).run(60, same)
        run_dir = os.fspath(tmp_path / name)
        loop, sent = _down_and_resumed(run_dir, dead, newer)
        assert _equal(whole, loop.state()), name
        assert loop.opt.param_groups[0]["lr"] == pytest.approx(0.3), name
        ledger = read_ledger(run_dir)
        seq = next(e["seq"] for e in ledger if e["cmd_id"] == sent)
        (undo,) = [e for e in ledger if e["source"] == "resume" and e["op"] == "undo"]
        target = undo["params"]["cmd_id"]
        if name == "c":
            assert undo["decision"] == "applied" and undo["error"] is None
            assert undo["changes"] == {"momentum": {"old": 0.5, "new": 0.9}}
            continue
        assert (undo["decision"], undo["newer"]) == ("noop", {"lr": seq}), name
        assert undo["error"] == {
            "a": f"nothing to undo: its target {target} was left out (lr was set by a newer "
                 f"command (#{seq}): not re-applied)",
            "b": f"lr was set by a newer command (#{seq}): not re-applied; an undo is not "
                 "re-applied in part (1 other key(s))",
        }[name]  # fmt: skip


def test_a_reapplied_lr_leaves_the_groups_to_a_newer_per_group_lr(tmp_path: Any) -> None:
    """Two param groups (lr 0.01, 0.02), ``lr=0.1`` at 30 (it moves every group, ratios
    kept), ``lr@group1=0.5`` sent while the trainer was down: the re-applied ``lr`` would set
    group 1 to ten times the newer command's 0.5. It is left out whole (it cannot move group 0
    alone), so group 1 keeps 0.5 and group 0 its lr, as in an uninterrupted run given
    ``lr@group1=0.5`` only."""
    lrs = (0.01, 0.02)
    newer = lambda c: c.opt(**{"lr@group1": 0.5})  # noqa: E731
    whole = Loop(os.fspath(tmp_path / "whole"), lrs=lrs).run(60, {21: newer})
    run_dir = os.fspath(tmp_path / "killed")
    loop, sent = _down_and_resumed(run_dir, {30: lambda c: c.opt(lr=0.1)}, newer, lrs)
    assert _equal(whole, loop.state())
    assert [g["lr"] for g in loop.opt.param_groups] == pytest.approx([0.01, 0.5])
    ledger = read_ledger(run_dir)
    seq = next(e["seq"] for e in ledger if e["cmd_id"] == sent)
    (again,) = [e for e in ledger if e["source"] == "resume"]
    assert (again["decision"], again["newer"]) == ("noop", {"lr": seq})
    assert again["error"] == (f"lr@group1 was set by a newer command (#{seq}) and lr moves "
                              "every group: not re-applied")  # fmt: skip


def test_a_command_sent_into_a_new_commands_file_is_newer(tmp_path: Any) -> None:
    """The commands file replaced while the trainer was down (``mv``, then ``hotcb set``),
    and once in the dead life too: a command's age is the life that ledgered it first, not
    its offset (a new file's start again at 0). ``lr=0.01`` sent into the new file wins over
    the dead life's ``lr=0.02`` at 30; the dead life's ``momentum=0.5``, sent at 34 into the
    file it replaced at 32, is re-applied."""
    commands = os.path.join(os.fspath(tmp_path / "killed"), "hotcb.commands.jsonl")

    def replace(c: HotClient) -> None:
        os.replace(commands, commands + ".old")

    dead = {25: lambda c: c.loss(l2=0.0), 30: lambda c: c.opt(lr=0.02), 32: replace,
            34: lambda c: c.opt(momentum=0.5)}  # fmt: skip

    def newer(c: HotClient) -> str:
        replace(c)
        return c.opt(lr=0.01)

    whole = Loop(os.fspath(tmp_path / "whole")).run(60, {
        21: lambda c: c.opt(lr=0.01), 25: dead[25], 34: dead[34],
    })  # fmt: skip
    loop, sent = _down_and_resumed(os.path.dirname(commands), dead, newer)
    assert _equal(whole, loop.state())
    assert loop.opt.param_groups[0]["lr"] == pytest.approx(0.01)
    ledger = read_ledger(os.path.dirname(commands))
    assert [e["step"] for e in ledger if e["op"] == "cursor_reset"] == [34, 21]
    seq = next(e["seq"] for e in ledger if e["cmd_id"] == sent)
    again = {e["step"]: e for e in ledger if e["source"] == "resume"}
    assert [(s, e["decision"]) for s, e in sorted(again.items())] == [
        (25, "applied"), (30, "noop"), (34, "applied"),
    ]  # fmt: skip
    assert again[30]["error"] == f"lr was set by a newer command (#{seq}): not re-applied"


def test_a_cancel_of_a_command_scheduled_after_the_checkpoint_is_not_reapplied(
    tmp_path: Any,
) -> None:
    """Scheduled and cancelled after the checkpoint: the resume does not put the command back
    on the schedule, so it does not re-apply the cancel either (it found nothing pending and
    left a false rejection in the ledger)."""
    ids: dict[str, str] = {}

    def schedule(c: HotClient) -> None:
        ids["late"] = c.send("opt", "set_params", params={"lr": 0.0088}, at_step=55)

    actions = {15: schedule, 18: lambda c: c.cancel(ids["late"])}
    whole, resumed, run_dir = _resumed(tmp_path, actions, ckpt=13, kill=25)
    assert _equal(whole, resumed)
    ledger = read_ledger(run_dir)
    assert not [e for e in ledger if e["decision"] in ("rejected", "failed")], ledger
    assert not [e for e in ledger if e["cmd_id"] == ids["late"] and e["decision"] == "applied"]
    assert not [e for e in ledger if e["source"] == "resume"]


def test_status_does_not_call_a_command_the_resume_kept_waiting_replaced(
    tmp_path: Any, cli: Any
) -> None:
    """An ``at_step`` command scheduled after the checkpoint and still waiting at the kill: the
    resume puts it back on the schedule. ``hotcb status`` lists it under ``scheduled``, and
    its ``scheduled`` entry is not marked replaced (the other entries of that life are)."""
    actions = {
        15: lambda c: c.send("opt", "set_params", params={"lr": 0.0088}, at_step=213),
        16: lambda c: c.opt(lr=0.02),
    }
    run_dir = os.fspath(tmp_path / "run")
    first = Loop(run_dir)
    first.run(300, actions, (13,), kill_after=20)
    second = Loop(run_dir)
    second.resume(first.checkpoints[13])
    second.run(300, kill_after=25)
    second.kernel.flush()
    ledger = read_ledger(run_dir)
    (sched,) = [e for e in ledger if e["decision"] == "scheduled"]
    (live,) = [e for e in ledger if e["source"] == "test" and e["decision"] == "applied"]
    (marker,) = [e for e in ledger if e["module"] == "kernel" and e["op"] == "resume"]
    out = cli(run_dir, "status", "-n", str(len(ledger)))
    assert out.returncode == 0, out.stderr
    assert "at step 213: opt set_params" in out.stdout
    lines = {int(m.group(1)): line for line in out.stdout.splitlines()
             if (m := re.match(r"\s+#(\d+) ", line))}  # fmt: skip
    mark = f"(replaced: the run resumed at #{marker['seq']})"
    assert not lines[sched["seq"]].endswith(mark), lines[sched["seq"]]
    assert lines[live["seq"]].endswith(mark), lines[live["seq"]]
    out = cli(run_dir, "status", "--json")
    assert json.loads(out.stdout)["replaced"] == [live["seq"]]


def test_an_undo_of_a_tuner_change_of_the_replaced_life_is_not_replayed() -> None:
    """A `control undo` of a tuner mutation made after the checkpoint: the resumed tuner makes
    its own trials there, so the undo set the replaced life's numbers over another trial's."""
    from hotcb._resume import resume_plan

    def entry(seq: int, cmd_id: str, module: str, op: str, **extra: Any) -> dict[str, Any]:
        return {"seq": seq, "step": seq, "cmd_id": cmd_id, "module": module, "op": op,
                "source": "tune" if module == "tune" else "cli", "decision": "applied",
                "params": extra.pop("params", {}), **extra}  # fmt: skip

    ledger = [
        entry(1, "before", "opt", "set_params", params={"lr": 0.1}),
        entry(2, "mutate", "tune", "mutate", params={"trial": 3, "values": {}}),
        entry(3, "u-tuner", "control", "undo", params={}, undo_of="mutate"),
        entry(4, "person", "opt", "set_params", params={"lr": 0.2}),
        entry(5, "u-person", "control", "undo", params={}, undo_of="person"),
        entry(6, "u-before", "control", "undo", params={}, undo_of="before"),
    ]
    plan = [op.cmd_id for _, op in resume_plan(ledger, after_seq=1)]
    assert plan == ["person", "u-person", "u-before"]


def test_a_ramp_in_progress_at_the_checkpoint_continues(tmp_path: Any) -> None:
    actions = {
        10: lambda c: c.send("opt", "set_params", params={"lr": 0.01}, transition={"steps": 20})
    }
    whole, resumed, run_dir = _resumed(tmp_path, actions, ckpt=20, kill=25)
    assert _equal(whole, resumed)
    done = [e for e in read_ledger(run_dir) if e["source"] == "ramp"]
    assert done and all(e["step"] == 30 for e in done)


def test_a_checkpoint_command_saves_after_the_other_changes_of_its_step(tmp_path: Any) -> None:
    def together(c: HotClient) -> None:
        c.checkpoint()
        c.opt(lr=0.02)  # read in the same poll, after the checkpoint command

    whole = Loop(os.fspath(tmp_path / "whole")).run(40, {20: together})
    run_dir = os.fspath(tmp_path / "killed")
    first = Loop(run_dir)
    first.run(40, {20: together}, kill_after=30)
    second = Loop(run_dir)
    second.resume(first.checkpoints[20])
    assert _equal(whole, second.run(40))


def test_a_freeze_change_after_the_checkpoint_is_replayed(tmp_path: Any) -> None:
    actions = {
        25: lambda c: c.freeze("prod"),
        30: lambda c: c.opt(lr=0.5),  # ignored_freeze: must stay ignored after the resume
    }
    whole, resumed, run_dir = _resumed(tmp_path, actions)
    assert _equal(whole, resumed)
    assert not [e for e in read_ledger(run_dir) if e["params"] == {"lr": 0.5} and
                e["decision"] == "applied"]  # fmt: skip


def test_resuming_twice_from_the_same_checkpoint(tmp_path: Any) -> None:
    actions = {10: lambda c: c.opt(lr=0.02), 30: lambda c: c.loss(l2=1e-3)}
    whole = Loop(os.fspath(tmp_path / "whole")).run(60, actions)
    run_dir = os.fspath(tmp_path / "killed")
    first = Loop(run_dir)
    first.run(60, actions, (20,), kill_after=40)
    second = Loop(run_dir)
    second.resume(first.checkpoints[20])
    second.run(60, kill_after=50)
    third = Loop(run_dir)
    third.resume(first.checkpoints[20])
    assert _equal(whole, third.run(60))


def test_an_lr_the_loop_set_by_hand_just_before_the_checkpoint_survives_the_resume(
    tmp_path: Any,
) -> None:
    """The loop lowered its lr by hand (no scheduler object) at step 15 and saved at step 20,
    within the kernel's once-a-second look at the knobs: the checkpoint held the older lr, and
    the resume put it back over the optimizer's own, so the resumed run went another way."""

    def by_hand(loop: Loop) -> dict[int, Action]:
        return {15: lambda _c: loop.opt.param_groups[0].update(lr=0.02)}

    whole_loop = Loop(os.fspath(tmp_path / "whole"))
    whole = whole_loop.run(60, by_hand(whole_loop))
    run_dir = os.fspath(tmp_path / "killed")
    first = Loop(run_dir)
    first.run(60, by_hand(first), (20,), kill_after=45)
    assert first.checkpoints[20]["hotcb"]["actuators"]["lr"] == 0.02
    second = Loop(run_dir)
    second.resume(first.checkpoints[20])
    assert _equal(whole, second.run(60))
    assert second.opt.param_groups[0]["lr"] == 0.02


def test_a_replay_resumed_from_a_checkpoint_fires_each_entry_once(tmp_path: Any) -> None:
    source = os.fspath(tmp_path / "source")
    Loop(source).run(
        60,
        {
            8: lambda c: c.opt(lr=0.02),
            15: lambda c: c.loss(l2=1e-3),
            33: lambda c: c.opt(lr=0.01),
            47: lambda c: c.send("opt", "set_params", params={"lr": 0.03}, transition={"steps": 6}),
        },
    )
    recipe, _ = export_recipe(source)
    freeze = FreezeState(FreezeMode.REPLAY, recipe)
    whole, resumed, run_dir = _resumed(tmp_path, {}, freeze=freeze)
    assert _equal(whole, resumed)
    fired = [e["step"] for e in read_ledger(run_dir) if e["source"] == "recipe"]
    # 8 and 15 before the checkpoint; 33 before the kill (at 45) and again after the resume
    assert fired == [8, 15, 33, 33, 47]
    assert _resume_entries(run_dir) == []  # the restored player replays them, not the resume


@pytest.mark.slow
def test_resume_of_a_killed_trainer_matches_an_uninterrupted_run(
    tmp_path: Any, start_trainer: Any
) -> None:
    """Changes at 100 (scheduled), ~200 (live, after the checkpoint) and 250 (scheduled),
    checkpoint at 150, SIGKILL after 250, resume from the checkpoint: same final weights."""
    run_dir = os.fspath(tmp_path / "run")
    c = HotClient(run_dir, source="test")
    c.send("opt", "set_params", params={"lr": 0.004}, at_step=100)
    c.send("loss", "set_params", params={"l2": 1e-4}, at_step=250)
    opts = {"steps": 300, "step_delay": 0.005}
    # the first life would train on for ever (no schedule depends on --steps): it is killed,
    # never finished first (45 steps of 5 ms after 255 were a race a loaded machine lost)
    first = start_trainer(run_dir, os.fspath(tmp_path / "t1.jsonl"), checkpoint_at=150,
                          **{**opts, "steps": 1_000_000})  # fmt: skip
    first.wait_step(170)
    live = c.wait(c.opt(lr=0.002), 30)
    assert live["decision"] == "applied" and 150 < live["step"] < 250, live
    wait_for(
        lambda: any(e["step"] == 250 and e["decision"] == "applied" for e in read_ledger(run_dir)),
        30,
        what="the change at 250",
    )
    first.wait_step(255)
    first.kill()

    resumed_w, whole_w = os.fspath(tmp_path / "resumed.pt"), os.fspath(tmp_path / "whole.pt")
    second = start_trainer(
        run_dir,
        os.fspath(tmp_path / "t2.jsonl"),
        resume=os.path.join(run_dir, "ckpt_150.pt"),
        save_weights=resumed_w,
        **opts,
    )
    whole_dir = os.fspath(tmp_path / "whole")
    w = HotClient(whole_dir, source="test")
    w.send("opt", "set_params", params={"lr": 0.004}, at_step=100)
    w.send("opt", "set_params", params={"lr": 0.002}, at_step=live["step"])
    w.send("loss", "set_params", params={"l2": 1e-4}, at_step=250)
    whole = start_trainer(whole_dir, os.fspath(tmp_path / "t3.jsonl"), save_weights=whole_w, **opts)
    for t in (second, whole):
        rc, _, err = t.finish()
        assert rc == 0, err

    assert _resume_entries(run_dir) == [
        (live["step"], "opt", "set_params"),
        (250, "loss", "set_params"),
    ]
    resumed_trace = [json.loads(line) for line in (tmp_path / "t2.jsonl").read_text().splitlines()]
    assert resumed_trace[0]["step"] == 151 and resumed_trace[-1]["step"] == 299
    a, b = torch.load(resumed_w), torch.load(whole_w)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_taken_at_an_idle_step_records_that_step(tmp_path: Any) -> None:
    """The kernel's state names the step the loop saved it at, not the last step that applied
    something: the resume's ledger entry says "from the checkpoint at step S" with it."""
    from hotcb import HotKernel

    run_dir = os.fspath(tmp_path / "run")
    kernel = HotKernel(run_dir, poll_interval_sec=3600)  # no poll after the first: idle steps
    for step in range(41):
        kernel.apply({"step": step, "metrics": {"loss": 1.0}})
    assert kernel.state_dict()["step"] == 40
    kernel.close()


def test_commands_a_killed_process_wrote_for_itself_are_not_applied_after_it(
    tmp_path: Any,
) -> None:
    """kill -9 between the tuner writing its trial (or a signal handler its stop) and the
    step that applies it: the resumed process decides again, so the dead one's commands are
    ledgered ``noop`` with the reason; a person's command written meanwhile applies, in order."""
    run_dir = os.fspath(tmp_path / "run")
    first = Loop(run_dir)
    first.run(60, checkpoint_at=(20,), kill_after=30)
    for source, module, op, params in (
        ("tune", "tune", "mutate", {"trial": 4, "values": {"opt": {"lr": 0.5}}}),
        ("cli", "opt", "set_params", {"lr": 0.02}),  # sent while the trainer was down
        ("signal", "control", "stop", {}),  # the dead process's SIGTERM, under DDP
    ):
        jsonl.append(os.path.join(run_dir, "hotcb.commands.jsonl"),
                     make_command(module, op, source=source, params=params))  # fmt: skip
    second = Loop(run_dir)
    second.resume(first.checkpoints[20])
    # this process's own stop (sent at step 35) is applied as ever
    own_stop = {35: lambda c: HotClient(run_dir, source="signal").send("control", "stop")}
    second.run(60, own_stop)
    assert second.opt.param_groups[0]["lr"] == pytest.approx(0.02)
    entries = [e for e in read_ledger(run_dir) if e["source"] in ("tune", "cli", "signal")]
    assert [(e["source"], e["decision"]) for e in entries] == [
        ("tune", "noop"), ("cli", "applied"), ("signal", "noop"), ("signal", "applied")
    ]  # fmt: skip
    for e in entries[0], entries[2]:
        assert e["error"].startswith(f"written by this run's {e['source']} in an earlier process")
    assert [e["cursor"] for e in entries] == sorted(e["cursor"] for e in entries)
    assert entries[0]["step"] == 21 and entries[3]["step"] >= 35  # the stop that applies


def test_a_replaced_commands_file_holds_this_processs_own_commands(tmp_path: Any) -> None:
    """The commands file replaced while the run goes on (rotated, cleared by hand): a line the
    kernel wrote for itself there is this process's, even where its offset is below the old
    file's length at start."""
    run_dir = os.fspath(tmp_path / "run")
    commands = os.path.join(run_dir, "hotcb.commands.jsonl")
    Loop(run_dir).run(10, {2: lambda c: c.opt(lr=0.02), 4: lambda c: c.opt(lr=0.03)})
    second = Loop(run_dir)  # the file's length at its start: two commands
    second.run(15, kill_after=12)
    os.replace(commands, commands + ".old")
    stop = make_command("control", "stop", source="signal")
    jsonl.append(commands, stop)
    second.run(20, kill_after=17)
    (entry,) = [e for e in read_ledger(run_dir) if e.get("cmd_id") == stop["cmd_id"]]
    assert entry["decision"] == "applied", entry


def test_a_plain_undo_after_a_resume_takes_back_a_change_made_before_the_checkpoint(
    tmp_path: Any,
) -> None:
    """`hotcb undo` (no --cmd-id) in a resumed life, of the lr set before the checkpoint: it
    was refused ("no applied change with changes to undo": only this life's changes were
    looked at), so what the user meant to take back stayed in force."""
    actions = {12: lambda c: c.opt(lr=0.02)}
    whole, resumed, run_dir = _resumed(tmp_path, actions, later={50: lambda c: c.undo()})
    (undo,) = [e for e in read_ledger(run_dir) if e["op"] == "undo"]
    assert undo["decision"] == "applied", undo
    assert undo["changes"]["lr"] == {"old": 0.02, "new": 0.05}
    assert _equal(whole, resumed)


def test_a_plain_undo_after_a_restart_without_a_checkpoint_finds_the_earlier_life(
    tmp_path: Any,
) -> None:
    """A restart without a checkpoint continues the life before it (docs/core.md): a plain
    undo there takes back that life's last change, not "nothing to undo"."""
    run_dir = os.fspath(tmp_path / "run")
    first = Loop(run_dir)
    first.run(60, {12: lambda c: c.opt(lr=0.02), 14: lambda c: c.opt(momentum=0.5)},
              kill_after=30)  # fmt: skip
    second = Loop(run_dir)  # from step 0 again, no load_state_dict
    second.run(20, {5: lambda c: c.undo()})
    ledger = read_ledger(run_dir)
    momentum = next(e for e in ledger if e["op"] == "set_params" and "momentum" in e["params"])
    (undo,) = [e for e in ledger if e["op"] == "undo"]
    assert undo["decision"] == "applied" and undo["undo_of"] == momentum["cmd_id"], undo


@pytest.mark.slow
def test_an_undo_in_a_new_process_started_without_a_checkpoint_takes_nothing_back(
    run_dir: str, tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    """A trainer killed and started again without a checkpoint: the new process's optimizer has
    the script's lr, not the one set in the life before. A plain undo took that change back
    all the same (under a schedule it scaled the lr in force by the change's ratio: an lr
    nobody set). In the same process (a notebook's cell run again) it is still in force: the
    test above."""
    first = start_trainer(run_dir, os.fspath(tmp_path / "a.jsonl"), steps=100_000,
                          step_delay=0.005)  # fmt: skip
    first.wait_step(2)
    assert cli(run_dir, "set", "lr=5e-3", "--wait").returncode == 0
    first.kill()
    first.proc.communicate(timeout=60)
    second = start_trainer(run_dir, os.fspath(tmp_path / "b.jsonl"), steps=100_000,
                           step_delay=0.005)  # fmt: skip
    second.wait_step(2)
    undo = cli(run_dir, "undo", "--wait")
    assert undo.returncode == 1, (undo.stdout, undo.stderr)
    said = undo.stdout + undo.stderr
    assert "rejected" in said and "the changes of the lives before it are not in force" in said
    now = second.last_step()
    second.wait_step(now + 2)
    assert second.steps()[-1]["lr"] == 0.01  # the script's, untouched


def test_the_resume_entry_names_only_the_dead_lifes_entries_as_replaced(tmp_path: Any) -> None:
    """A resume with a loaded callback writes its own ``cb restore`` entry before the
    ``kernel resume`` one, and ``hotcb log`` counted it as the replaced life's."""
    from hotcb.cli._common import fmt_entry

    probe = tmp_path / "probe.py"
    probe.write_text("class Probe:\n    def handle(self, event, env):\n        pass\n")
    actions = {5: lambda c: c.cb_load("probe", file=os.fspath(probe), symbol="Probe"),
               25: lambda c: c.opt(lr=0.02)}  # fmt: skip
    run_dir = os.fspath(tmp_path / "run")
    first = Loop(run_dir)
    first.run(40, actions, (20,), kill_after=30)
    last_old = read_ledger(run_dir)[-1]["seq"]
    second = Loop(run_dir)
    second.resume(first.checkpoints[20])
    second.run(35)
    ledger = read_ledger(run_dir)
    (restore,) = [e for e in ledger if (e["module"], e["op"]) == ("cb", "restore")]
    (resume,) = [e for e in ledger if (e["module"], e["op"]) == ("kernel", "resume")]
    assert last_old < restore["seq"] < resume["seq"]
    at = resume["resumed_from"]["seq"]
    assert f"#{at + 1}..#{last_old} ran in the life it replaced" in fmt_entry(resume, run_dir)


def test_an_autopilot_change_in_the_resumed_life_does_not_drop_a_persons_reapplied_one(
    tmp_path: Any,
) -> None:
    """A person's ``lr=0.02`` at 30 after the checkpoint at 20, the trainer killed; the
    restarted autopilot cuts the lr at 25 in the resumed life. The person's change was left out
    ("lr was set by a newer command"): the run trained on at the autopilot's lr. An automatic
    controller reacts to the run; the person's change lands at its step, as it did live."""
    person = {30: lambda c: c.opt(lr=0.02)}
    autopilot = {25: lambda c: c.opt(lr=0.01, source="autopilot")}
    whole = Loop(os.fspath(tmp_path / "whole")).run(60, {**autopilot, **person})
    run_dir = os.fspath(tmp_path / "killed")
    first = Loop(run_dir)
    first.run(60, person, (20,), kill_after=40)
    second = Loop(run_dir)
    second.resume(first.checkpoints[20])
    assert _equal(whole, second.run(60, autopilot))
    assert second.opt.param_groups[0]["lr"] == pytest.approx(0.02)
    (again,) = [e for e in read_ledger(run_dir) if e["source"] == "resume"]
    assert (again["step"], again["decision"], again["error"]) == (30, "applied", None)


def _down_and_undo(tmp_path: Any, name: str, which: int) -> tuple[Loop, str, list[str]]:
    """lr and momentum set at 15 (A), lr at 30 (B), checkpoint at 20, the trainer killed at 40,
    then ``undo --cmd-id`` of A (``which`` 0) or B (1) sent while it is down, and the run
    resumed from the checkpoint to its end. The resumed loop, the undo's id, [A, B]."""
    dead = {15: lambda c: c.opt(lr=0.02, momentum=0.5), 30: lambda c: c.opt(lr=0.03)}
    run_dir = os.fspath(tmp_path / name)
    first = Loop(run_dir)
    first.run(60, dead, (20,), kill_after=40)
    ab = [e["cmd_id"] for e in read_ledger(run_dir) if e["step"] in (15, 30)]
    undo = HotClient(run_dir, source="cli").undo(ab[which])  # the trainer is down
    second = Loop(run_dir)
    second.resume(first.checkpoints[20])
    second.run(60)
    return second, undo, ab


def test_an_undo_sent_while_the_trainer_was_down_acts_on_the_state_the_person_saw(
    tmp_path: Any,
) -> None:
    """An `undo --cmd-id A` sent while the trainer is down landed at the first step after the
    checkpoint, before the resume put B back: it took A's lr back too, and B was then dropped
    as "set by a newer command", so the run had neither. An `undo --cmd-id B` took B's ratio
    off an lr B had not set in this life. Now A's undo leaves the lr (B set it again after A)
    and takes its momentum back, and B's undo keeps the resume from putting B back."""
    loop, undo_a, (_, b) = _down_and_undo(tmp_path, "a", 0)
    ledger = read_ledger(loop.run_dir)
    (took,) = [e for e in ledger if e["cmd_id"] == undo_a]
    assert took["step"] == 21 and took["decision"] == "applied"
    assert took["changes"] == {"momentum": {"old": 0.5, "new": 0.9}}, took
    assert (
        "lr was set again after it (the resume re-applies that change at step 30)" in took["error"]
    )
    again = [e for e in ledger if e["source"] == "resume" and e["cmd_id"].startswith(b)]
    assert [(e["step"], e["decision"]) for e in again] == [(30, "applied")]
    assert loop.opt.param_groups[0]["lr"] == pytest.approx(0.03)  # B's, as the person saw it

    loop, undo_b, (_, b) = _down_and_undo(tmp_path, "b", 1)
    ledger = read_ledger(loop.run_dir)
    (took,) = [e for e in ledger if e["cmd_id"] == undo_b]
    assert took["step"] == 21 and took["decision"] == "applied" and not took.get("changes")
    assert took["error"] == (f"command {b!r} had not come back in this life (the resume "
                             "re-applies it at step 30): it will not be")  # fmt: skip
    assert not [e for e in ledger if e["source"] == "resume" and e["cmd_id"].startswith(b)]
    assert loop.opt.param_groups[0]["lr"] == pytest.approx(0.02)  # A's, as before B
    # its recipe replays: that undo named a change the recipe does not hold
    _, entries = export_recipe(loop.run_dir)
    assert [(e.step, e.op) for e in entries] == [(15, "set_params")]


def test_an_undo_sent_while_down_leaves_every_group_a_reapplied_lr_sets(tmp_path: Any) -> None:
    """Two param groups: lr set at 15 (A), checkpoint at 20, lr at 30 (B), killed at 40, then
    `undo --cmd-id A` while down. The undo left `lr` but took A back from each group's key,
    and B was then dropped as overridden by it (`lr` moves every group)."""
    dead = {15: lambda c: c.opt(lr=0.1), 30: lambda c: c.opt(lr=0.2)}
    run_dir = os.fspath(tmp_path / "killed")
    first = Loop(run_dir, lrs=(0.05, 0.02))
    first.run(60, dead, (20,), kill_after=40)
    a, b = [e["cmd_id"] for e in read_ledger(run_dir) if e["step"] in (15, 30)]
    undo = HotClient(run_dir, source="cli").undo(a)
    second = Loop(run_dir, lrs=(0.05, 0.02))
    second.resume(first.checkpoints[20])
    second.run(60)
    ledger = read_ledger(run_dir)
    (took,) = [e for e in ledger if e["cmd_id"] == undo]
    assert took["decision"] == "noop" and not took.get("changes"), took
    again = [e for e in ledger if e["source"] == "resume" and e["cmd_id"] == b]
    assert [(e["step"], e["decision"]) for e in again] == [(30, "applied")], again
    assert [g["lr"] for g in second.opt.param_groups] == pytest.approx([0.2, 0.08])


def test_an_undo_in_a_run_s_first_life_does_not_speak_of_lives_before(tmp_path: Any) -> None:
    """``hotcb undo`` on a brand-new run with nothing to undo said "this life started again
    without a checkpoint, in a new process": it had not. An undo of an evaluate said there was
    no such command; it changed no value, and that is what is said now."""
    from hotcb import HotClient, HotKernel

    run_dir = os.fspath(tmp_path / "run")
    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    client = HotClient(run_dir)
    plain = client.undo()
    kernel.apply({"step": 0, "metrics": {"loss": 1.0}})
    evaluate = client.evaluate()
    kernel.apply({"step": 1, "metrics": {"loss": 1.0}, "request_evaluate": lambda: None})
    named = client.undo(cmd_id=evaluate)
    kernel.apply({"step": 2, "metrics": {"loss": 1.0}})
    kernel.close()
    undos = {e["cmd_id"]: e for e in read_ledger(run_dir) if e["op"] == "undo"}
    assert undos[plain]["error"] == "no applied change with changes to undo", undos[plain]
    assert undos[named]["error"].startswith("control evaluate (#2) changed no value"), undos[named]
