"""HotKernel in-process, driving a real torch training loop (TinyMLP on digits).

Commands are written the way every writer writes them (HotClient / raw appends to the commands
file); what happened is read back from the ledger and the actuators file, as a user would.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hotcb import HotcbActuator, HotClient, HotKernel, jsonl, loss_actuators, mutable_state
from hotcb.actuators import ActuatorType
from hotcb.errors import CommandError
from hotcb.ledger import checkpoint_path, pending_scheduled
from hotcb.runfiles import RunPaths
from hotcb.testing import StepDriver, TorchStepDriver, digits, read_ledger

DATA: tuple[Any, Any] | None = None


def data() -> tuple[Any, Any]:
    global DATA
    if DATA is None:
        DATA = digits()
    return DATA


def make_scheduler(kind: str | None, opt: Any) -> Any:
    sched = torch.optim.lr_scheduler
    if kind == "step":
        return sched.StepLR(opt, step_size=5, gamma=0.5)
    if kind == "cosine":
        return sched.CosineAnnealingLR(opt, T_max=30)
    if kind == "lambda":
        return sched.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.1 * s))
    return None


class Loop(TorchStepDriver):
    """A real training loop (TinyMLP on digits, AdamW, an optional scheduler): forward on a
    fixed slice per step, loss ``ce * CE + aux * mean(logits**2)``, backward, step,
    ``kernel.apply``; ``lr[step]`` is the lr each step ended at."""

    def __init__(self, run_dir: str, sched: str | None = None, **kernel_kw: Any) -> None:
        super().__init__(
            run_dir,
            optimizer=lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.0),
            scheduler=lambda opt: make_scheduler(sched, opt),
            data=data(),
            weights={"ce": 1.0, "aux": 0.0},
            **kernel_kw,
        )

    def batch(self, step: int) -> tuple[Any, Any]:
        x, y = self.data
        i = (step * 32) % (len(x) - 32)
        return x[i : i + 32], y[i : i + 32]

    def loss_terms(self, logits: Any, y: Any) -> dict[str, Any]:
        return {"ce": nn.functional.cross_entropy(logits, y), "aux": logits.pow(2).mean()}


@pytest.fixture
def loop(run_dir: str) -> Any:
    lp = Loop(run_dir)
    yield lp
    lp.kernel.close()


def test_optimizer_actuators_are_registered_from_env_and_published(loop: Loop) -> None:
    loop.steps(1)
    acts = loop.actuators()
    assert set(acts) == {"ce", "aux", "lr", "weight_decay", "betas", "beta1", "beta2"}
    assert acts["lr"]["current"] == 0.01 and acts["lr"]["group"] == "opt"
    assert acts["aux"]["state"] == "untouched"
    assert jsonl.read_json(loop.paths.actuators)["v"] == 1


def test_lr_change_lands_at_the_step_it_is_read_and_is_ledgered_with_old_and_new(
    loop: Loop,
) -> None:
    loop.steps(3)
    cid = loop.client.opt(lr=0.002)
    loop.steps(3)
    e = loop.only(cid)
    assert e["decision"] == "applied" and e["step"] == 3 and e["error"] is None
    assert e["changes"] == {"lr": {"old": 0.01, "new": 0.002}}
    assert e["cursor"] == os.path.getsize(loop.paths.commands)
    assert e["source"] == "test" and e["seq"] == 1 and e["v"] == 1
    assert [loop.lr[s] for s in range(6)] == [0.01] * 3 + [0.002] * 3
    assert loop.actuators()["lr"]["current"] == 0.002
    assert loop.actuators()["lr"]["state"] == "verified"


def test_loss_weight_change_reaches_the_users_dict(loop: Loop) -> None:
    loop.steps(1)
    cid = loop.client.loss(aux=0.25)
    loop.steps(1)
    assert loop.only(cid)["changes"] == {"aux": {"old": 0.0, "new": 0.25}}
    assert loop.weights["aux"] == 0.25


def test_bad_input_becomes_rejected_entries_with_reasons_and_training_goes_on(loop: Loop) -> None:
    loop.steps(1)
    loop.raw("this is not json\n")
    loop.raw('{"cmd_id":"m","module":"warp","op":"set_params","params":{"x":1}}\n')
    loop.raw('{"cmd_id":"o","module":"opt","op":"explode","params":{"lr":1}}\n')
    loop.raw('{"cmd_id":"n","module":"opt","op":"set_params","params":{"lr":NaN}}\n')
    loop.raw('{"cmd_id":"b","module":"opt","op":"set_params","params":{"lr":50}}\n')
    loop.raw('{"cmd_id":"u","module":"loss","op":"set_params","params":{"nope":1}}\n')
    loop.raw('{"cmd_id":"t","module":"opt","op":"set_params","params":{"lr":"fast"}}\n')
    loop.raw('{"cmd_id":"g","module":"custom","op":"set_params","params":{"ce":0.5}}\n')
    loop.raw('{"module":"loss","op":"set_params","params":{"aux":0.5}}\n')  # hand-written, no id
    loop.steps(2)
    by_id = {e["cmd_id"]: e for e in loop.ledger()}
    assert by_id["@0"]["decision"] == "rejected"
    assert by_id["@0"]["error"].startswith("line is not valid JSON")
    reasons = {
        "m": "unknown module 'warp'",
        "o": "unknown op 'explode' for module 'opt'",
        "n": "params.lr is nan; send a finite number",
        "b": "lr=50 is above the maximum 10",
        "u": "unknown actuator 'nope' in group 'loss'; known: ce, aux",
        "t": "lr must be a number",
        "g": "'ce' is a loss actuator, not custom: send it as 'hotcb loss set_params ce=...'",
    }
    for cid, reason in reasons.items():
        assert by_id[cid]["decision"] == "rejected", by_id[cid]
        assert reason in by_id[cid]["error"]
    hand = [e for e in loop.ledger() if e["cmd_id"].startswith("@") and e["cmd_id"] != "@0"]
    assert [(e["decision"], e["changes"]) for e in hand] == [
        ("applied", {"aux": {"old": 0.0, "new": 0.5}})
    ]
    assert loop.lr[2] == 0.01 and loop.step == 2


def test_a_lone_surrogate_is_refused_and_every_reader_of_the_ledger_goes_on(
    loop: Loop, cli: Any
) -> None:
    """``"\\ud800"`` is valid JSON but no UTF-8 text: a command carrying one was applied, and
    the ledger entry that kept it broke `hotcb log` and the dashboard's ledger for good. It is
    rejected now, and what the rejected entry copies from the command holds none."""
    loop.steps(1)
    loop.raw('{"cmd_id":"r","module":"opt","op":"set_params","params":{"lr":0.001},'
             '"reason":"\\ud800"}\n')  # fmt: skip
    loop.raw('{"cmd_id":"s","module":"opt","op":"set_params","params":{"lr":0.001},'
             '"source":"\\udfffevil"}\n')  # fmt: skip
    loop.raw('{"cmd_id":"k","module":"loss","op":"set_params","params":{"\\ud83d":1}}\n')
    loop.raw('{"cmd_id":"\\ud800","module":"opt","op":"set_params","params":{"lr":0.001}}\n')
    loop.raw('{"cmd_id":"e","module":"opt","op":"set_params","params":{"lr":0.002},'
             '"reason":"\\ud83d\\ude00 a pair is fine"}\n')  # fmt: skip
    loop.steps(2)
    entries = loop.ledger()
    rejected = [e for e in entries if e["decision"] == "rejected"]
    assert [e["cmd_id"] for e in rejected[:3]] == ["r", "s", "k"] and len(rejected) == 4
    assert all("lone surrogate" in e["error"] for e in rejected)
    assert rejected[1]["source"] is None and rejected[2]["params"] is None
    assert loop.only("e")["decision"] == "applied" and loop.lr[2] == 0.002
    shown = cli(loop.run_dir, "log")
    assert shown.returncode == 0 and "lone surrogate" in shown.stdout, shown.stderr
    with pytest.raises(ValueError, match="lone surrogate"):  # refused when it is sent
        loop.client.opt(lr=0.003, reason="\ud800")


def test_a_metric_named_with_a_lone_surrogate_leaves_status_working(run_dir: str, cli: Any) -> None:
    """A metric named from a file name that is not UTF-8 (``os.fsdecode``) held a lone
    surrogate: `hotcb status` ended in a UnicodeEncodeError, and the dashboard's status and
    metric names answered 500. The name is written with the surrogate escaped."""
    with HotKernel(run_dir, checkpoint_on_signal=False) as kernel:
        for step in range(3):
            kernel.apply({"step": step, "metrics": {"loss": 1.0, "acc_caf\udce9": 0.5}})
    shown = cli(run_dir, "status")
    assert shown.returncode == 0, shown.stderr
    assert "acc_caf\\udce9" in shown.stdout
    (last,) = jsonl.read_last(RunPaths(run_dir).metrics, 1)
    assert last["metrics"] == {"loss": 1.0, "acc_caf\\udce9": 0.5}


def test_torn_line_is_applied_once_when_completed(loop: Loop) -> None:
    loop.steps(1)
    line = '{"cmd_id":"torn","module":"opt","op":"set_params","params":{"lr":0.005}}\n'
    loop.raw(line[:30])
    loop.steps(3)
    assert loop.entries("torn") == [] and loop.lr[3] == 0.01
    loop.raw(line[30:])
    loop.steps(3)
    assert loop.only("torn")["step"] == 4
    assert loop.lr[4] == 0.005


def test_duplicate_cmd_id_is_a_noop(loop: Loop) -> None:
    loop.steps(1)
    rec = {"cmd_id": "dup", "module": "loss", "op": "set_params", "params": {"aux": 0.5}}
    jsonl.append(loop.paths.commands, rec)
    loop.steps(1)
    jsonl.append(loop.paths.commands, {**rec, "params": {"aux": 0.9}})
    loop.steps(1)
    assert [e["decision"] for e in loop.entries("dup")] == ["applied", "noop"]
    assert "duplicate cmd_id 'dup'" in loop.entries("dup")[1]["error"]
    assert loop.weights["aux"] == 0.5


def test_a_fresh_kernel_on_the_run_directory_applies_nothing_twice(run_dir: str) -> None:
    first = Loop(run_dir)
    first.steps(2)
    ids = [first.client.loss(aux=0.1 * (i + 1)) for i in range(3)]
    first.steps(2)
    first.kernel.close()
    n_entries = len(first.ledger())
    second = Loop(run_dir)  # a restart without a checkpoint
    late = second.client.loss(ce=2.0)
    second.steps(3)
    second.kernel.close()
    entries = second.ledger()
    assert [e["cmd_id"] for e in entries] == [*ids, late]
    assert len(entries) == n_entries + 1
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert second.weights == {"ce": 2.0, "aux": 0.0}  # the old aux commands were not re-applied


def test_state_dict_restores_actuator_values_and_cursor_in_a_fresh_kernel(
    run_dir: str, tmp_path: Any
) -> None:
    first = Loop(run_dir)
    first.steps(2)
    a = first.client.opt(lr=0.003)
    b = first.client.loss(aux=0.4)
    first.steps(2)
    state = json.loads(json.dumps(first.kernel.state_dict()))  # it must survive serialisation
    first.kernel.close()
    assert state["actuators"]["lr"] == 0.003 and state["actuators"]["aux"] == 0.4
    assert state["cursor"] == os.path.getsize(first.paths.commands)

    fresh = Loop(run_dir)  # new model, optimizer and weights dict at their defaults
    assert fresh.opt.param_groups[0]["lr"] == 0.01 and fresh.weights["aux"] == 0.0
    fresh.step = 3
    fresh.kernel.load_state_dict(state)
    fresh.steps(3)
    assert fresh.opt.param_groups[0]["lr"] == 0.003 and fresh.weights["aux"] == 0.4
    assert [e["cmd_id"] for e in fresh.ledger()] == [a, b]  # nothing re-applied
    fresh.kernel.close()

    # the cursor alone (no ledger to read it from) also keeps old commands from re-applying
    other = os.fspath(tmp_path / "copy")
    os.makedirs(other)
    shutil.copy(first.paths.commands, other)
    copy = Loop(other)
    copy.kernel.load_state_dict(state)
    copy.steps(2)
    assert copy.ledger() == []
    assert copy.weights["aux"] == 0.4
    copy.kernel.close()


def test_failing_apply_fn_is_a_failed_entry_rolled_back_and_then_disabled(run_dir: str) -> None:
    box = {"gain": 1.0}

    def apply_gain(value: float, env: Any) -> None:
        box["gain"] = value
        if value > 2:
            raise RuntimeError("gain too hot for this hardware")

    act = HotcbActuator(
        "gain", ActuatorType.FLOAT, apply_gain, lambda env: box["gain"], max_failures=3
    )
    loop = Loop(run_dir, mutable_state=[act])
    loop.steps(1)
    bad = [loop.client.custom(gain=3.0 + i) for i in range(3)]
    loop.steps(1)
    for cid in bad:
        e = loop.only(cid)
        assert e["decision"] == "failed"
        assert "RuntimeError: gain too hot for this hardware" in e["error"]
        assert "rolled back to 1.0" in e["error"]
    assert box["gain"] == 1.0
    gain = loop.actuators()["gain"]
    assert gain["state"] == "disabled" and gain["failures"] == 3
    later = loop.client.custom(gain=1.5)
    loop.steps(1)
    e = loop.only(later)
    assert e["decision"] == "rejected" and "'gain' is disabled after 3 failed applies" in e["error"]
    assert box["gain"] == 1.0 and loop.step == 2
    loop.kernel.close()


@pytest.mark.parametrize("kind", ["step", "cosine", "lambda"])
def test_lr_change_survives_the_scheduler(run_dir: str, tmp_path: Any, kind: str) -> None:
    ref = Loop(os.fspath(tmp_path / "ref"), sched=kind)
    ref.steps(25)
    steered = Loop(run_dir, sched=kind)
    steered.steps(7)
    steered.client.opt(lr=0.004)
    steered.steps(18)
    ratio = 0.004 / ref.lr[7]
    assert steered.lr[7] == 0.004
    for s in range(7):
        assert steered.lr[s] == ref.lr[s]
    for s in range(7, 25):  # the schedule continues from the new value, scaled, never snaps back
        assert steered.lr[s] == pytest.approx(ratio * ref.lr[s], rel=1e-9), s
    assert steered.lr[24] != pytest.approx(ref.lr[24])
    ref.kernel.close()
    steered.kernel.close()


@pytest.mark.parametrize("kind", ["step", "cosine", "lambda"])
def test_lr_change_at_an_apply_without_the_scheduler_survives_it(
    run_dir: str, tmp_path: Any, kind: str
) -> None:
    """A loop passes its scheduler to apply() after the training step, not at validation
    (examples/bare_loop.py): an lr change read at validation was not kept in step with the
    scheduler, which snapped it back (LambdaLR, from its base lrs) at the next step; the
    tuner's roll-backs there put the lr off its schedule. The kernel keeps the schedulers it
    has seen."""
    ref = Loop(os.fspath(tmp_path / "ref"), sched=kind)
    ref.steps(25)
    steered = Loop(run_dir, sched=kind)
    steered.steps(7)
    cid = steered.client.opt(lr=0.004)
    steered.kernel.apply({"step": steered.step, "optimizer": steered.opt},
                         events=("val_epoch_end",))  # fmt: skip
    assert steered.only(cid)["decision"] == "applied"
    steered.steps(10)
    ratio = 0.004 / ref.lr[6]  # set after step 6, at its validation
    for s in range(7, 17):  # as when the scheduler is in env: scaled, never snapped back
        assert steered.lr[s] == pytest.approx(ratio * ref.lr[s], rel=1e-9), s
    # an undo (or a tuner's roll-back) there too: back on the schedule, not to the old number
    undo = steered.client.undo(cid)
    steered.kernel.apply({"step": steered.step, "optimizer": steered.opt},
                         events=("val_epoch_end",))  # fmt: skip
    assert steered.only(undo)["on_schedule"]["lr"] == pytest.approx(1 / ratio)
    steered.steps(8)
    for s in range(17, 25):
        assert steered.lr[s] == pytest.approx(ref.lr[s], rel=1e-9), s
    ref.kernel.close()
    steered.kernel.close()


@pytest.mark.parametrize("kind", ["cosine", "lambda"])
def test_undo_under_a_scheduler_puts_the_run_back_on_the_schedule(
    run_dir: str, tmp_path: Any, kind: str
) -> None:
    """An lr change undone many steps later: the run goes back to the lr the schedule gives it
    now, not to the number it had when the change was made (which the schedule left behind)."""
    ref = Loop(os.fspath(tmp_path / "ref"), sched=kind)
    ref.steps(25)
    steered = Loop(run_dir, sched=kind)
    steered.steps(3)
    change = steered.client.opt(lr=0.002)
    steered.steps(12)
    undo = steered.client.undo(change)
    steered.steps(10)
    for s in range(15, 25):
        assert steered.lr[s] == pytest.approx(ref.lr[s], rel=1e-9), s
    e = steered.only(undo)
    assert e["changes"]["lr"]["new"] == pytest.approx(ref.lr[15], rel=1e-9)
    assert e["on_schedule"]["lr"] == pytest.approx(ref.lr[3] / 0.002)
    ref.kernel.close()
    steered.kernel.close()


def test_undo_after_the_schedule_reached_zero_leaves_the_lr_there_and_undoes_the_rest(
    run_dir: str,
) -> None:
    """A cosine schedule at its end has the lr at zero: no value takes the change's ratio back
    (0 is below the lr's minimum, and the whole undo was rejected, weight decay too, as was a
    tuner's roll-back at the last step). The lr stays on its schedule; the rest is undone."""
    loop = Loop(run_dir, sched="cosine")  # T_max=30: lr 0 at the end of step 29
    loop.steps(3)
    change = loop.client.set_params("opt", {"lr": 0.002, "weight_decay": 0.05})
    loop.steps(26)
    undo = loop.client.undo(change)
    loop.steps(1)  # step 29, read with the lr at 0
    e = loop.only(undo)
    assert e["decision"] == "applied" and e["step"] == 29, e
    assert e["changes"] == {"weight_decay": {"old": 0.05, "new": 0.0}}
    assert loop.opt.param_groups[0]["weight_decay"] == 0.0 and loop.lr[29] == 0.0
    assert e["at_zero"] == ["lr"]  # said: `hotcb log` names it
    from hotcb.cli._common import fmt_entry

    assert "[lr left at zero on the schedule]" in fmt_entry(e, run_dir)
    loop.kernel.close()


def test_at_step_schedules_land_on_their_step_and_cancel_removes_them(loop: Loop) -> None:
    loop.steps(2)
    keep = loop.client.send("opt", "set_params", params={"lr": 0.002}, at_step=6)
    drop = loop.client.send("loss", "set_params", params={"aux": 0.3}, at_step=8)
    late = loop.client.send("loss", "set_params", params={"aux": 0.1}, at_step=1)  # past: now
    loop.steps(2)
    assert [e["decision"] for e in loop.entries(keep)] == ["scheduled"]
    assert loop.only(late)["step"] == 2 and loop.only(late)["decision"] == "applied"
    assert [e["cmd_id"] for e in pending_scheduled(loop.paths.ledger)] == [keep, drop]
    cancel = loop.client.cancel(drop)
    # the kernel's own answer to an unknown id (the client refuses one before sending it)
    missing = loop.client.send("control", "cancel", params={"cmd_id": "no-such-id"})
    loop.steps(6)
    assert pending_scheduled(loop.paths.ledger) == []
    assert [(e["decision"], e["step"]) for e in loop.entries(keep)] == [
        ("scheduled", 2),
        ("applied", 6),
    ]
    assert loop.lr[5] == 0.01 and loop.lr[6] == 0.002
    assert [e["decision"] for e in loop.entries(drop)] == ["scheduled", "noop"]
    assert f"cancelled by {cancel}" in loop.entries(drop)[1]["error"]
    assert loop.only(cancel)["decision"] == "applied"
    # what `cancel --wait` prints: which command will not be applied, not only that one won't
    assert loop.only(cancel)["error"] == (
        'loss set_params {"aux": 0.3} (scheduled for step 8, sent by test) will not be applied'
    )
    assert "no scheduled command 'no-such-id'" in loop.only(missing)["error"]
    assert loop.weights["aux"] == 0.1  # the cancelled 0.3 never landed
    # a second cancel, or one of a command that applied: what became of it (it said only
    # "no scheduled command is pending")
    again, done = loop.client.cancel(drop), loop.client.cancel(keep)
    loop.steps(1)
    assert (loop.only(again)["decision"], loop.only(again)["error"]) == (
        "noop",
        f"command {drop!r} is cancelled already (cancelled by {cancel})",
    )
    assert (loop.only(done)["decision"], loop.only(done)["error"]) == (
        "rejected", f"command {keep!r} applied already, at step 6: nothing to cancel "
        f"('hotcb undo {keep}' takes it back)")  # fmt: skip
    with pytest.raises(CommandError, match="no command"):  # a cut id: refused, not sent
        loop.client.cancel(keep[:10])


def test_at_step_with_a_bad_value_is_rejected_when_sent_not_when_due(loop: Loop) -> None:
    loop.steps(1)
    cid = loop.client.send("opt", "set_params", params={"lr": 99.0}, at_step=50)
    loop.steps(1)
    e = loop.only(cid)
    assert e["decision"] == "rejected" and "above the maximum" in e["error"]


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_transition_ramps_land_exactly_on_target_after_n_steps(loop: Loop, shape: str) -> None:
    loop.steps(2)
    cid = loop.client.send(
        "loss", "set_params", params={"aux": 0.7}, transition={"steps": 4, "shape": shape}
    )
    seen = {}
    for _ in range(7):
        loop.steps(1)
        seen[loop.step] = loop.weights["aux"]
    start = loop.entries(cid)[0]["step"]
    assert start == 2
    assert seen[start] == 0.0
    expected = {
        "linear": [0.175, 0.35, 0.525],
        "cosine": [0.7 * (1 - math.cos(math.pi * k / 4)) / 2 for k in (1, 2, 3)],
    }[shape]
    assert [seen[start + k] for k in (1, 2, 3)] == pytest.approx(expected)
    assert seen[start + 4] == 0.7 and seen[start + 6] == 0.7  # exactly, and it stays
    decisions = [(e["decision"], e["step"], e["source"]) for e in loop.entries(cid)]
    assert decisions == [("applied", start, "test"), ("applied", start + 4, "ramp")]


def test_control_stop_and_checkpoint_call_the_env_callables(loop: Loop) -> None:
    saved: list[Any] = []
    stopped: list[bool] = []
    loop.env_extra = {
        "save_checkpoint": lambda path=None: saved.append(path) or (path or "/tmp/auto.pt"),
        "request_stop": lambda: stopped.append(True),
    }
    loop.steps(1)
    wanted = os.path.join(os.path.realpath(loop.paths.root), "ckpt", "wanted.pt")
    ck = loop.client.checkpoint("ckpt/wanted.pt")  # relative to the run directory
    loop.steps(1)
    assert saved == [wanted]
    assert loop.only(ck)["checkpoint"] == os.path.join("ckpt", "wanted.pt")
    assert checkpoint_path(loop.only(ck), os.path.realpath(loop.paths.root)) == wanted
    stop = loop.client.stop()
    loop.steps(1)
    assert loop.kernel.stop_requested and stopped == [True]
    assert loop.only(stop)["decision"] == "applied"


def test_checkpoint_without_a_callable_sets_the_flag(loop: Loop) -> None:
    loop.steps(1)
    assert not loop.kernel.checkpoint_requested
    ck = loop.client.checkpoint()
    loop.steps(1)
    assert loop.kernel.checkpoint_requested
    assert loop.only(ck)["checkpoint"] == "requested"
    assert checkpoint_path(loop.only(ck), loop.run_dir) is None
    assert loop.kernel.checkpoint_path_requested is None  # save where the loop always does


def test_checkpoint_path_without_a_callable_reaches_the_loop(loop: Loop) -> None:
    """`hotcb checkpoint --path P` on a loop that saves on the flag: the loop reads the path
    (it used to be dropped); a path outside the run is refused as for a save function."""
    loop.steps(1)
    ck = loop.client.checkpoint("ckpt/wanted.pt")
    loop.steps(1)
    wanted = os.path.join(os.path.realpath(loop.paths.root), "ckpt", "wanted.pt")
    assert loop.kernel.checkpoint_requested
    assert loop.kernel.checkpoint_path_requested == wanted
    assert loop.only(ck)["checkpoint"] == "requested"
    assert loop.only(ck)["path"] == os.path.join("ckpt", "wanted.pt")
    # its folder is made: the loop's torch.save does not make it (the training died of it)
    torch = pytest.importorskip("torch")
    torch.save({"step": 2}, loop.kernel.checkpoint_path_requested)
    assert os.path.isfile(wanted)
    loop.kernel.checkpoint_requested = False  # saved: the loop resets the flag, and the path
    assert loop.kernel.checkpoint_path_requested is None
    bad = loop.client.checkpoint("/etc/elsewhere.pt")
    loop.steps(1)
    assert loop.only(bad)["decision"] == "rejected" and "path" in loop.only(bad)["error"]
    assert not loop.kernel.checkpoint_requested
    # a folder is no file to save to (torch.save raised "Is a directory" in the training)
    for folder in (".", "ckpt", "deep/"):
        bad = loop.client.checkpoint(folder)
        loop.steps(1)
        assert loop.only(bad)["decision"] == "rejected", folder
        assert "names a folder" in loop.only(bad)["error"]
        assert not loop.kernel.checkpoint_requested
    assert not os.path.exists(os.path.join(loop.paths.root, "deep"))


def test_a_checkpoint_is_ledgered_relative_to_the_run_dir_and_absolute_outside_it(
    tmp_path: Any,
) -> None:
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()

    def save(path: str | None = None) -> str:
        path = path or os.path.join(run_dir, "out", f"ckpt_{drv.step}.pt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("weights")
        return path

    drv = StepDriver(run_dir, allowed_roots=[elsewhere], env_extra={"save_checkpoint": save})
    drv.steps(1)
    sent = [
        drv.client.checkpoint(),  # the loop's own name
        drv.client.checkpoint("ckpt/wanted.pt"),
        drv.client.checkpoint("requested"),  # a file so named is not "no file"
        drv.client.checkpoint(os.fspath(elsewhere / "b.pt")),  # an allowed root elsewhere
    ]
    drv.steps(1)
    drv.close()
    entries = [drv.only(cid) for cid in sent]
    assert [e["checkpoint"] for e in entries] == [
        os.path.join("out", "ckpt_1.pt"),
        os.path.join("ckpt", "wanted.pt"),
        os.path.join(os.curdir, "requested"),
        os.path.realpath(elsewhere / "b.pt"),
    ]
    moved = os.fspath(tmp_path / "moved")  # the run directory moves: its files still resolve
    shutil.move(run_dir, moved)
    for e in entries:
        assert os.path.isfile(checkpoint_path(e, moved) or ""), e["checkpoint"]


def test_undo_last_and_by_cmd_id(loop: Loop) -> None:
    loop.steps(1)
    a = loop.client.opt(lr=0.005)
    loop.steps(1)
    b = loop.client.loss(aux=0.5)
    loop.steps(1)
    u1 = loop.client.undo()  # the last change: aux
    loop.steps(1)
    assert loop.weights["aux"] == 0.0 and loop.lr[3] == 0.005
    e = loop.only(u1)
    assert e["undo_of"] == b and e["changes"] == {"aux": {"old": 0.5, "new": 0.0}}
    u2 = loop.client.undo(a)
    loop.steps(1)
    assert loop.lr[4] == 0.01
    assert loop.only(u2)["undo_of"] == a
    u3 = loop.client.send("control", "undo", params={"cmd_id": "never-sent"})  # as a file could
    loop.steps(1)
    assert loop.only(u3)["decision"] == "rejected"
    assert "no applied command 'never-sent'" in loop.only(u3)["error"]


def test_undo_reaches_past_a_pause_and_resume(loop: Loop) -> None:
    """``undo`` without an id reverts the newest change that can be undone: a pause and its
    resume (which cannot) do not stand in front of the changes made before them."""
    loop.steps(1)
    a = loop.client.loss(aux=0.5)
    loop.steps(1)
    loop.client.pause()
    loop.client.resume()
    loop.steps(1)
    u = loop.client.undo()
    loop.steps(1)
    assert loop.only(u)["decision"] == "applied", loop.only(u)
    assert loop.only(u)["undo_of"] == a and loop.weights["aux"] == 0.0


def test_non_finite_metrics_are_recorded_as_null(run_dir: str) -> None:
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    kernel.apply({"step": 0, "metrics": {"loss": float("nan"), "acc": torch.tensor(0.5)}})
    kernel.apply({"step": 1, "metrics": {"loss": float("inf"), "acc": 1}, "epoch": 0})
    kernel.close()
    rows = list(jsonl.iter_records(RunPaths(run_dir).metrics))
    assert [r["metrics"] for r in rows] == [
        {"loss": None, "acc": 0.5},
        {"loss": None, "acc": 1.0},
    ]
    assert rows[1]["epoch"] == 0 and rows[0]["step"] == 0


def test_idle_apply_makes_no_system_call(run_dir: str, monkeypatch: Any) -> None:
    kernel = HotKernel(run_dir, poll_interval_sec=3600)
    kernel.apply({"step": 0})
    calls: list[str] = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append("stat") or real_stat(*a, **k))
    for s in range(1, 1000):
        kernel.apply({"step": s})
    assert calls == []
    kernel.close()


def test_apply_without_step_is_ignored_not_raised(loop: Loop) -> None:
    cid = loop.client.loss(aux=0.5)  # waiting in the commands file
    loop.kernel.apply({"no_step": 1, "metrics": {"loss": 1.0}})
    loop.kernel.apply(None)  # type: ignore[arg-type]
    # ignored: nothing read or applied, no metrics recorded, no actuators published
    assert loop.ledger() == [] and loop.weights["aux"] == 0.0
    assert not os.path.exists(loop.paths.metrics)
    assert not os.path.exists(loop.paths.actuators)
    loop.steps(1)  # the next call with a step works as if nothing had happened
    assert loop.only(cid)["decision"] == "applied" and loop.only(cid)["step"] == 0
    assert loop.weights["aux"] == 0.5
    assert [r["step"] for r in jsonl.iter_records(loop.paths.metrics)] == [0]


def test_undo_during_a_ramp_stops_the_ramp(loop: Loop) -> None:
    loop.steps(1)
    cid = loop.client.send("loss", "set_params", params={"aux": 1.0}, transition={"steps": 10})
    loop.steps(3)
    assert 0.0 < loop.weights["aux"] < 1.0
    undo = loop.client.undo()
    loop.steps(12)
    assert loop.weights["aux"] == 0.0
    assert loop.only(undo)["undo_of"] == cid
    # the ramp's end is recorded as superseded (by the undo), never as complete
    assert [(e["source"], e.get("ramp")) for e in loop.entries(cid)] == [
        ("test", None),
        ("ramp", "superseded"),
    ]


def test_undecodable_and_absurdly_nested_lines_are_rejected_not_raised(loop: Loop) -> None:
    loop.steps(1)
    with open(loop.paths.commands, "ab") as f:
        f.write(b'{"cmd_id":"x","module":"opt","op":"set_params","params":{"lr":"\xff"}}\n')
        f.write(b"[" * 30_000 + b"]" * 30_000 + b"\n")
    cid = loop.client.loss(aux=0.5)  # after the bad lines: still applied
    loop.steps(2)
    bad = [e for e in loop.ledger() if e["cmd_id"].startswith("@")]
    assert [e["decision"] for e in bad] == ["rejected", "rejected"]
    assert "UnicodeDecodeError" in bad[0]["error"] and "RecursionError" in bad[1]["error"]
    assert loop.only(cid)["decision"] == "applied" and loop.weights["aux"] == 0.5


def test_a_scheduled_command_survives_a_restart_without_checkpoint(run_dir: str) -> None:
    first = Loop(run_dir)
    first.steps(2)
    cid = first.client.send("loss", "set_params", params={"aux": 0.3}, at_step=8)
    first.steps(2)
    first.kernel.close()  # (or kill -9): the cursor is already past the command's line
    second = Loop(run_dir)
    second.step = 3
    second.steps(7)
    assert [(e["decision"], e["step"]) for e in second.entries(cid)] == [
        ("scheduled", 2),
        ("applied", 8),
    ]
    assert second.weights["aux"] == 0.3
    second.kernel.close()


def test_a_command_scheduled_after_the_checkpoint_survives_the_resume(run_dir: str) -> None:
    first = Loop(run_dir)
    first.steps(3)
    state = first.kernel.state_dict()  # the checkpoint: nothing scheduled yet
    before = first.client.send("loss", "set_params", params={"aux": 0.2}, at_step=20)
    first.steps(1)
    first.kernel.close()
    resumed = Loop(run_dir)
    resumed.kernel.load_state_dict(state)
    resumed.step = 2
    resumed.steps(20)
    assert [e["decision"] for e in resumed.entries(before)] == ["scheduled", "applied"]
    assert resumed.weights["aux"] == 0.2
    resumed.kernel.close()


def test_a_command_resent_after_a_restart_is_still_a_noop(run_dir: str) -> None:
    first = Loop(run_dir)
    first.steps(1)
    record = {"cmd_id": "retry-1", "module": "loss", "op": "set_params", "params": {"aux": 0.5}}
    jsonl.append(first.paths.commands, record)
    first.steps(1)
    first.kernel.close()
    second = Loop(run_dir)
    jsonl.append(second.paths.commands, record)  # e.g. a client retrying after a timeout
    second.steps(2)
    assert [e["decision"] for e in second.entries("retry-1")] == ["applied", "noop"]
    assert second.weights["aux"] == 0.0
    second.kernel.close()


def test_no_change_lands_between_micro_batches(run_dir: str) -> None:
    weights = {"aux": 0.0}
    kernel = HotKernel(
        run_dir, poll_interval_sec=0, mutable_state=mutable_state(loss_actuators(weights))
    )
    client = HotClient(run_dir)
    kernel.apply({"step": 0})
    now = client.loss(aux=0.5)
    later = client.send("loss", "set_params", params={"aux": 0.7}, at_step=2)
    for micro in range(4):  # step 1's micro-batches: nothing may change there
        kernel.apply({"step": 1, "is_accumulation_step": micro < 3})
        if micro < 3:
            assert weights["aux"] == 0.0
    for micro in range(4):
        kernel.apply({"step": 2, "is_accumulation_step": micro < 3})
        if micro < 3:
            assert weights["aux"] == 0.5
    kernel.close()
    by_id = {e["cmd_id"]: e for e in read_ledger(run_dir) if e["decision"] == "applied"}
    assert by_id[now]["step"] == 1 and by_id[later]["step"] == 2
    assert weights["aux"] == 0.7


def test_a_kernel_without_a_run_dir_takes_hotcb_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hotcb launch`` passes the run directory in ``HOTCB_RUN_DIR``: the script needs no flag."""
    monkeypatch.setenv("HOTCB_RUN_DIR", str(tmp_path / "launched"))
    kernel = HotKernel()
    try:
        assert kernel.run_dir == str(tmp_path / "launched")
        assert (tmp_path / "launched" / "hotcb.run.json").exists()
    finally:
        kernel.close()
    monkeypatch.delenv("HOTCB_RUN_DIR")
    with pytest.raises(TypeError, match="HOTCB_RUN_DIR"):
        HotKernel()


def test_observe_records_metrics_between_safe_points_and_applies_nothing(tmp_path: Path) -> None:
    """``observe`` (the HF Trainer's logs, after its step's safe point): the metrics are
    recorded at their step; a command waiting in the file stays for the next safe point."""
    run = str(tmp_path / "run")
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    kernel = HotKernel(run, poll_interval_sec=0)
    kernel.observe({"step": 0, "metrics": {"loss": 9.0}})  # before the first safe point: nothing
    kernel.apply({"step": 1, "optimizer": opt})
    cmd = HotClient(run).opt(lr=0.5)
    kernel.observe({"step": 1, "epoch": 0, "metrics": {"loss": 1.5}})
    assert opt.param_groups[0]["lr"] == 0.1
    kernel.apply({"step": 2, "optimizer": opt})
    kernel.close()
    assert opt.param_groups[0]["lr"] == 0.5
    (entry,) = [e for e in read_ledger(run) if e.get("cmd_id") == cmd]
    assert entry["step"] == 2
    with open(os.path.join(run, "hotcb.metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [(r["step"], r["metrics"]["loss"]) for r in rows if "loss" in r["metrics"]] == [(1, 1.5)]


def test_a_paused_run_publishes_the_lr_its_scheduler_left(run_dir: str) -> None:
    """The actuators file (``hotcb status``, the page's controls) is refreshed once a second
    at most, and not by the poll that brought the pause: the whole pause showed the lr of a
    step or more before it to the person deciding what to set."""
    import threading

    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    client = HotClient(run_dir)
    stepped = threading.Event()

    def loop() -> None:
        for step in range(100_000):
            opt.step()
            sched.step()
            kernel.apply({"step": step, "optimizer": opt, "scheduler": sched})
            if step == 50:
                stepped.set()
            if kernel.stop_requested:
                break
        kernel.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        assert stepped.wait(60)
        pause = client.pause()
        client.wait(pause, timeout=60)

        def published() -> float:
            doc = jsonl.read_json(RunPaths(run_dir).actuators, {}) or {}
            return next(a["current"] for a in doc.get("actuators", []) if a["param_key"] == "lr")

        held = opt.param_groups[0]["lr"]  # the loop waits in apply(): this is the lr in force
        assert published() == pytest.approx(held, rel=1e-12)
    finally:
        client.stop()
        client.resume()
        t.join(60)


def test_close_from_another_thread_while_paused_ends_the_loop(run_dir: str) -> None:
    """An app that trains in a thread and closes the kernel from its own (a stop button)
    while the run is paused: the pause let go and training went on, unpaused and unclosed."""
    import threading

    kernel = HotKernel(run_dir, poll_interval_sec=0)
    client = HotClient(run_dir)
    steps: list[int] = []

    def loop() -> None:
        for step in range(100_000):
            kernel.apply({"step": step})
            steps.append(step)
            if kernel.stop_requested:
                break

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    client.wait(client.pause(), timeout=60)
    kernel.close()
    t.join(60)
    assert not t.is_alive(), "the loop went on after close()"
    entries = read_ledger(run_dir)
    assert [e["op"] for e in entries] == ["pause"]  # no reopen: the loop ended
    assert steps[-1] == entries[0]["step"]
