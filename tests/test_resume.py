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

    def __init__(self, run_dir: str, freeze: FreezeState | None = None) -> None:
        x = torch.randn(256, 64, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(2))
        super().__init__(
            run_dir,
            model=TinyMLP(hidden=16, seed=0),
            optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
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
    run had another lr in force there (a person's 0.2, sent to the resumed run only). It is
    ×0.5 of the lr in force now, as in the uninterrupted run with the same commands."""
    actions = {30: lambda c: c.set_params("opt", {"lr": 0.025}, relative_to={"lr": 0.05})}
    later = {25: lambda c: c.opt(lr=0.2)}  # not in the life that died
    whole, resumed, run_dir = _resumed(tmp_path, actions, later=later)
    assert _equal(whole, resumed)
    (again,) = [e for e in read_ledger(run_dir)
                if e["source"] == "resume" and e["module"] == "opt"]  # fmt: skip
    assert again["changes"]["lr"] == {"old": 0.2, "new": pytest.approx(0.1)}


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
    first = start_trainer(run_dir, os.fspath(tmp_path / "t1.jsonl"), checkpoint_at=150, **opts)
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
    assert first.last_step() < 299, "the first run ended before it could be killed"

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
