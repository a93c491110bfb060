"""Two gloo ranks apply the tuner's mutations at the same step: rank 0 decides, the mutation
travels as a command like any other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hotcb import HotClient
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().split("\n")[:-1] if x.strip()]


def _train_two_ranks(tmp_path: Path, done: Any, what: str) -> tuple[Path, Path]:
    """``examples/ddp_bare.py`` on two gloo ranks until ``done(ledger's tune ops)``, then a
    stop; the run directory and the traces' folder (each rank's lr per step, its weights)."""
    run_dir, traces = tmp_path / "run", tmp_path / "traces"
    argv = [sys.executable, os.fspath(EXAMPLES / "ddp_bare.py"), "--nproc", "2"]
    argv += ["--run-dir", os.fspath(run_dir), "--steps", "100000", "--step-delay", "0.002"]
    argv += ["--trace-dir", os.fspath(traces), "--weights-dir", os.fspath(traces)]
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    env["PYTHONFAULTHANDLER"] = "1"  # a rank that aborts says where (seen once in CI, at exit)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:

        def tuned() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"ddp trainer exited:\n{proc.communicate()[1][-3000:]}")
            return bool(done([e for e in read_ledger(run_dir) if e.get("module") == "tune"]))

        wait_for(tuned, 300, what=what)
        stop = HotClient(run_dir).stop()
        HotClient(run_dir).wait(stop, 120)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{out[-1000:]}\n{err[-6000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return run_dir, traces


def _same_lr_on_both_ranks(run_dir: Path, traces: Path, ops: tuple[str, ...]) -> None:
    rank0, rank1 = _rows(traces / "trace_rank0.jsonl"), _rows(traces / "trace_rank1.jsonl")
    assert len(rank0) == len(rank1)
    assert [r["lr"] for r in rank0] == [r["lr"] for r in rank1]  # the same lr at every step
    by_step = {r["step"]: r["lr"] for r in rank1}
    entries = [e for e in read_ledger(run_dir) if e.get("module") == "tune"]
    changed = [e for e in entries if e["op"] in ops]
    assert changed and all(e["source"] == "tune" and e["decision"] == "applied" for e in changed)
    for e in changed:  # each landed on rank 1 at the step rank 0 ledgered
        assert by_step[e["step"]] == pytest.approx(e["changes"]["lr"]["new"], rel=1e-12)
        assert by_step[e["step"] - 1] == pytest.approx(e["changes"]["lr"]["old"], rel=1e-12)


def test_two_ranks_apply_the_same_tuner_mutation_at_the_same_step(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    HotClient(tmp_path / "run").tune_enable("active", objective="loss", segment_steps=15, seed=0)

    def tuned(entries: list[dict[str, Any]]) -> bool:
        ops = [e["op"] for e in entries]
        return ops.count("mutate") >= 3 and ops.count("rollback") + ops.count("keep") >= 2

    run_dir, traces = _train_two_ranks(tmp_path, tuned, "three tuner mutations on 2 ranks")
    _same_lr_on_both_ranks(run_dir, traces, ("mutate", "rollback"))


def test_two_ranks_train_a_start_brackets_arms_from_the_same_weights(tmp_path: Path) -> None:
    """``start: bracket`` under torch.distributed: each rank copies and restores its own
    weights at the same steps, so the replicas never diverge."""
    import torch

    (tmp_path / "run").mkdir()
    HotClient(tmp_path / "run").tune_enable("active", objective="loss", segment_steps=10,
                                            seed=0, start="bracket")  # fmt: skip

    def settled(entries: list[dict[str, Any]]) -> bool:
        return any(e["op"] == "bracket" and (e.get("params") or {}).get("settle") for e in entries)

    run_dir, traces = _train_two_ranks(tmp_path, settled, "a start bracket on 2 ranks")
    _same_lr_on_both_ranks(run_dir, traces, ("bracket",))
    ops = [e for e in read_ledger(run_dir) if e.get("op") == "bracket"]
    assert any(e["tune"]["restored"] == ["model", "optimizer"] for e in ops)
    w0 = torch.load(traces / "weights_rank0.pt")
    w1 = torch.load(traces / "weights_rank1.pt")
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)


def test_a_resume_inside_a_bracket_on_two_ranks_settles_it_once(tmp_path: Path) -> None:
    """`examples/ddp_bare.py` restores its checkpoint before its first `apply()`: the kernel
    learns its rank there, so rank 0 alone sends what the restored tuner decides (every rank
    sent the bracket's settle, and it was applied twice)."""
    run_dir = tmp_path / "run"
    client = HotClient(run_dir, create=True)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, start="bracket")
    client.send("control", "checkpoint", at_step=15)  # inside the bracket's second arm
    argv = [sys.executable, os.fspath(EXAMPLES / "ddp_bare.py"), "--nproc", "2",
            "--run-dir", os.fspath(run_dir)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    first = subprocess.run([*argv, "--steps", "20"], capture_output=True, text=True, env=env,
                           timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    (saved,) = [
        e
        for e in read_ledger(run_dir)
        if e.get("op") == "checkpoint" and e["decision"] == "applied"
    ]
    path = os.fspath(run_dir / saved["checkpoint"])
    assert os.path.exists(path), saved
    again = subprocess.run([*argv, "--steps", "30", "--resume", path], capture_output=True,
                           text=True, env=env, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    settles = [r for r in _rows(run_dir / "hotcb.commands.jsonl")
               if r.get("op") == "bracket" and (r.get("params") or {}).get("settle")]  # fmt: skip
    assert len(settles) == 1 and "restart" in settles[0]["params"]["reason"], settles
