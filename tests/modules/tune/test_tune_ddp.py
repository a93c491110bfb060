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


def test_two_ranks_apply_the_same_tuner_mutation_at_the_same_step(tmp_path: Path) -> None:
    run_dir, traces = tmp_path / "run", tmp_path / "traces"
    run_dir.mkdir()
    HotClient(run_dir).tune_enable("active", objective="loss", segment_steps=15, seed=0)
    argv = [sys.executable, os.fspath(EXAMPLES / "ddp_bare.py"), "--nproc", "2"]
    argv += ["--run-dir", os.fspath(run_dir), "--steps", "100000", "--step-delay", "0.002"]
    argv += ["--trace-dir", os.fspath(traces)]
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    env["PYTHONFAULTHANDLER"] = "1"  # a rank that aborts says where (seen once in CI, at exit)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:

        def tuned() -> int:
            if proc.poll() is not None:
                raise AssertionError(f"ddp trainer exited:\n{proc.communicate()[1][-3000:]}")
            ops = [e["op"] for e in read_ledger(run_dir) if e.get("module") == "tune"]
            return ops.count("mutate") >= 3 and ops.count("rollback") + ops.count("keep") >= 2

        wait_for(tuned, 300, what="three tuner mutations on 2 ranks")
        stop = HotClient(run_dir).stop()
        HotClient(run_dir).wait(stop, 120)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{out[-1000:]}\n{err[-6000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    rank0, rank1 = _rows(traces / "trace_rank0.jsonl"), _rows(traces / "trace_rank1.jsonl")
    assert len(rank0) == len(rank1)
    assert [r["lr"] for r in rank0] == [r["lr"] for r in rank1]  # the same lr at every step
    by_step = {r["step"]: r["lr"] for r in rank1}
    entries = [e for e in read_ledger(run_dir) if e.get("module") == "tune"]
    changed = [e for e in entries if e["op"] in ("mutate", "rollback")]
    assert changed and all(e["source"] == "tune" and e["decision"] == "applied" for e in changed)
    for e in changed:  # each landed on rank 1 at the step rank 0 ledgered
        assert by_step[e["step"]] == pytest.approx(e["changes"]["lr"]["new"], rel=1e-12)
        assert by_step[e["step"] - 1] == pytest.approx(e["changes"]["lr"]["old"], rel=1e-12)
