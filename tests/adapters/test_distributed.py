"""torch.distributed: 2 ranks on CPU (gloo), every rank applies the same change at the same step.

The trainer is ``examples/ddp_bare.py`` (DDP over TinyMLP on digits) in a real subprocess that
spawns two ranks; this test is the controller in another process, sending commands while the
ranks train. Each rank traces its live lr, loss weights, module state and schedule per step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import ENV, EXAMPLES, read_jsonl

from hotcb import HotClient
from hotcb.ledger import checkpoint_path
from hotcb.testing import read_ledger, wait_for

torch = pytest.importorskip("torch")

FINAL = ("applied", "rejected", "failed", "noop", "ignored_freeze")


def _commands(client: HotClient, step: int, i: int) -> list[str]:
    """A batch of five varied commands (the i-th batch, the ranks at ``step``)."""
    ids = [
        client.opt(lr=10 ** -(2 + (i % 3))),
        client.loss(l2=round(1e-4 * (i + 1), 6)),
        client.set_params("opt", {"weight_decay": 0.01 * (i % 4)}, at_step=step + 8),
    ]
    if i == 0:  # a bundled callback, loaded on every rank
        ids.append(
            client.cb_load(
                "hb",
                path="hotcb.modules.cb.callbacks",
                symbol="HeartbeatCallback",
                init={"every_steps": 5},
            )
        )
    kind = i % 5
    if kind == 0:
        ids.append(client.set_params("opt", {"lr": 5e-3}, transition={"steps": 4}))
    elif kind == 1:
        ids.append(client.opt(lr=-1.0))  # rejected, on rank 0's ledger only, once
    elif kind == 2:
        sched = client.set_params("loss", {"ce": 0.5}, at_step=step + 10_000)
        ids += [sched]
        ids.append(client.cancel(sched))
        return ids
    elif kind == 3:
        ids.append(client.undo())
    else:
        ids.append(client.loss(nope=1.0))  # unknown actuator: rejected
        ids.append(client.cb("set_params", "hb", every_steps=3 + i))
        ids.append(client.cb("disable" if i % 2 else "enable", "hb"))
    ids.append(client.loss(ce=1.0 - 0.05 * i))
    return ids


@pytest.mark.slow
def test_ddp_ranks_apply_the_same_ops_at_the_same_steps(tmp_path: Path) -> None:
    run_dir, traces, weights = tmp_path / "run", tmp_path / "traces", tmp_path / "weights"
    argv = [sys.executable, os.fspath(EXAMPLES / "ddp_bare.py"), "--nproc", "2"]
    argv += [
        "--run-dir",
        os.fspath(run_dir),
        "--steps",
        "5000",
        "--step-delay",
        "0.002",
        "--debounce",
        "3",
    ]
    argv += ["--trace-dir", os.fspath(traces), "--weights-dir", os.fspath(weights), "--sched"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    try:
        trace0 = traces / "trace_rank0.jsonl"

        def last_step() -> int:
            if proc.poll() is not None:
                raise AssertionError(f"ddp trainer exited:\n{proc.communicate()[1][-3000:]}")
            rows = read_jsonl(trace0)
            return rows[-1]["step"] if rows else -1

        wait_for(lambda: last_step() >= 0, 120, what="first DDP step")
        client = HotClient(run_dir, source="test", validate=False)  # the kernel rejects on DDP
        sent: list[str] = []
        i = 0
        while len(sent) < 50:
            step = last_step()
            sent += _commands(client, step, i)
            i += 1
            wait_for(lambda s=step: last_step() >= s + 2, 60, what="DDP progress")
        # a pause holds both ranks in the pause loop (broadcast each turn) until resume
        pause = client.pause()
        assert client.wait(pause, 60)["decision"] == "applied"
        paused_at = last_step()
        resume = client.resume()
        assert client.wait(resume, 60)["decision"] == "applied"
        wait_for(lambda: last_step() > paused_at + 2, 60, what="steps after resume")
        sent += [pause, resume]
        for cid in sent:
            client.wait(cid, 60)
        stop = client.stop()
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    rows0 = read_jsonl(traces / "trace_rank0.jsonl")
    rows1 = read_jsonl(traces / "trace_rank1.jsonl")
    assert len(rows0) == len(rows1) and rows0[-1]["stop"]
    (hb,) = rows0[-1]["modules"]["cb"]["callbacks"]  # module state: the same on both ranks
    assert hb["id"] == "hb" and hb["params"]["every_steps"] > 5
    for a, b in zip(rows0, rows1, strict=True):
        assert a == b, f"ranks diverged at step {a['step']}"

    ledger = read_ledger(run_dir)
    assert {e["rank"] for e in ledger} == {0}
    for cid in [*sent, stop]:
        final = [e for e in ledger if e.get("cmd_id") == cid and e["decision"] in FINAL]
        final = [e for e in final if e.get("source") != "ramp"]
        assert len(final) == 1, (cid, final)
    _changes_landed_at_their_steps(ledger, rows0)
    scheduled = [e for e in ledger if e["decision"] == "applied" and e.get("at_step") is not None]
    assert scheduled and all(e["step"] == e["at_step"] for e in scheduled)
    _same_weights(weights / "weights_rank0.pt", weights / "weights_rank1.pt")


def _changes_landed_at_their_steps(
    ledger: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> None:
    """Every change took effect at its ledgered step (the last change of a key in that step
    wins; a ramp's start changes nothing yet, its end entry lands the value)."""
    by_step = {r["step"]: r for r in rows}
    landed: dict[tuple[int, str], Any] = {}
    for e in ledger:
        actuators = e["module"] in ("opt", "loss") or e.get("undo_of")
        if e["decision"] != "applied" or not actuators or "transition" in e:
            continue
        for key, change in (e["changes"] or {}).items():
            landed[(e["step"], key)] = change["new"]
    assert sum(1 for _, key in landed if key == "lr") >= 5
    assert sum(1 for _, key in landed if key in ("l2", "ce")) >= 5
    for (step, key), value in landed.items():
        row = by_step[step]
        live = row["weights"][key] if key in row["weights"] else row[key]
        assert live == pytest.approx(value), (step, key)


def _same_traces(folder: Path) -> list[dict[str, Any]]:
    rows0 = read_jsonl(folder / "trace_rank0.jsonl")
    rows1 = read_jsonl(folder / "trace_rank1.jsonl")
    assert rows0 and len(rows0) == len(rows1)
    for a, b in zip(rows0, rows1, strict=True):
        assert a == b, f"ranks diverged at step {a['step']}"
    return rows0


def _same_weights(a: Path, b: Path) -> None:
    w0, w1 = torch.load(a), torch.load(b)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k


@pytest.mark.slow
def test_lightning_ddp_two_ranks_apply_commands_in_lockstep(
    tmp_path: Path, controller: Any
) -> None:
    """Lightning ``strategy="ddp"`` with 2 CPU processes (gloo): commands from another process
    land on both ranks at the same step; checkpoint and stop work under DDP; resuming from the
    checkpoint under DDP restores hotcb's state and re-applies later commands on both ranks."""
    run_dir, traces = tmp_path / "run", tmp_path / "traces"
    argv = [sys.executable, os.fspath(EXAMPLES / "lightning_digits.py"), "--devices", "2"]
    argv += ["--strategy", "ddp", "--run-dir", os.fspath(run_dir), "--steps", "400"]
    argv += ["--step-delay", "0.02", "--trace-dir", os.fspath(traces), "--val-every", "3"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    plan = [
        {"module": "opt", "op": "set_params", "fields": {"params": {"lr": 0.003}}, "after_step": 4},
        {"module": "loss", "op": "set_params", "fields": {"params": {"l2": 0.001}}},
        {"module": "control", "op": "checkpoint"},
        {"module": "loss", "op": "set_params", "fields": {"params": {"ce": 0.5}}},
        {"module": "control", "op": "stop"},
    ]
    try:
        ctl = controller(os.fspath(run_dir), plan)
        lr_e, l2_e, ck_e, ce_e, stop_e = (r["entry"] for r in ctl.results(timeout=240))
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    sent = (lr_e, l2_e, ck_e, ce_e, stop_e)
    assert all(e["decision"] == "applied" for e in sent)
    # one trainer, not two: Lightning starts rank 1 with LOCAL_RANK only, before the group
    assert "another trainer" not in err
    with open(run_dir / "hotcb.run.json") as f:
        assert json.load(f)["ended"]["stopped"] is True  # `hotcb status`: finished, not crashed
    rows = _same_traces(traces)
    by_step = {r["step"]: r for r in rows}
    assert by_step[lr_e["step"]]["lr"] == pytest.approx(0.003)
    assert by_step[l2_e["step"]]["weights"]["l2"] == 0.001
    assert rows[-1]["step"] == stop_e["step"] < 400 and rows[-1]["stop"]
    ckpt = checkpoint_path(ck_e, run_dir)
    assert ckpt is not None and os.path.isfile(ckpt)
    # validation (a safe point on every rank too) ran, and rank 0 recorded its metrics
    metrics = read_jsonl(run_dir / "hotcb.metrics.jsonl")
    assert any("val_loss" in m["metrics"] for m in metrics)
    ledger = read_ledger(run_dir)
    assert {e["rank"] for e in ledger} == {0}
    commands = [e for e in ledger if e["module"] != "kernel"]  # run_end: the run closed
    assert sorted(e["cmd_id"] for e in commands) == sorted(e["cmd_id"] for e in sent)
    _same_weights(traces / "weights_rank0.pt", traces / "weights_rank1.pt")

    # resume under DDP: fresh modules (l2=0, ce=1) on both ranks get hotcb's l2 back, and ce is
    # re-applied at its original step on both
    traces2 = tmp_path / "traces2"
    argv = [sys.executable, os.fspath(EXAMPLES / "lightning_digits.py"), "--devices", "2"]
    argv += ["--strategy", "ddp", "--run-dir", os.fspath(run_dir), "--step-delay", "0"]
    argv += ["--steps", str(stop_e["step"] + 2), "--resume", ckpt]
    argv += ["--trace-dir", os.fspath(traces2), "--val-every", "3"]
    done = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows2 = _same_traces(traces2)
    assert rows2[0]["step"] == ck_e["step"] + 1 and rows2[0]["weights"]["l2"] == 0.001
    assert {r["step"]: r for r in rows2}[ce_e["step"]]["weights"]["ce"] == 0.5
    assert rows2[-1]["step"] == stop_e["step"] + 2  # the old stop is not applied again
    replayed = [e for e in read_ledger(run_dir) if e.get("source") == "resume"]
    assert [(e["cmd_id"], e["step"], e["rank"]) for e in replayed] == [
        (ce_e["cmd_id"], ce_e["step"], 0)
    ]


@pytest.mark.slow
def test_hf_trainer_under_torchrun_two_ranks_apply_commands_in_lockstep(
    tmp_path: Path, controller: Any
) -> None:
    """The HF Trainer under torchrun (2 CPU processes, gloo), with evaluation every 3 steps
    (on_evaluate is a safe point on every rank too)."""
    run_dir, traces = tmp_path / "run", tmp_path / "traces"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    argv += [os.fspath(EXAMPLES / "hf_tiny.py"), "--run-dir", os.fspath(run_dir)]
    argv += ["--steps", "400", "--step-delay", "0.02", "--eval-steps", "3"]
    argv += ["--trace-dir", os.fspath(traces)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    plan = [
        {"module": "opt", "op": "set_params", "fields": {"params": {"lr": 1e-3}}, "after_step": 2},
        {"module": "custom", "op": "set_params", "fields": {"params": {"max_grad_norm": 0.5}}},
        {"module": "control", "op": "stop"},
    ]
    try:
        ctl = controller(os.fspath(run_dir), plan)
        lr_e, mgn_e, stop_e = (r["entry"] for r in ctl.results(timeout=240))
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert all(e["decision"] == "applied" for e in (lr_e, mgn_e, stop_e))
    rows = _same_traces(traces)
    by_step = {r["step"]: r for r in rows}
    assert by_step[lr_e["step"]]["lr"] == pytest.approx(1e-3)
    assert by_step[mgn_e["step"]]["max_grad_norm"] == 0.5
    assert rows[-1]["step"] == stop_e["step"] < 400 and rows[-1]["stop"]
    ledger = read_ledger(run_dir)
    assert {e["rank"] for e in ledger} == {0}
    commands = [e for e in ledger if e["module"] != "kernel"]  # run_end: the run closed
    assert sorted(e["cmd_id"] for e in commands) == sorted(
        e["cmd_id"] for e in (lr_e, mgn_e, stop_e)
    )
    _same_weights(traces / "weights_rank0.pt", traces / "weights_rank1.pt")
