"""Suggest mode as a user runs it: ``hotcb autopilot --mode suggest`` (the shipped rules) in its
own process beside a real trainer process whose loss goes NaN at step 40 (and every 50 steps
until the lr is cut: a proposal whose trouble is gone expires, which a loaded machine's slow
plateau detection came after), spikes at steps 60-70 and then stays flat. NaN, the spike and the plateau each proposed an lr cut, all three
waited on ``opt.lr``, and accepting them all cut the lr ×0.015. Now one proposal per knob
waits at a time: the later rules' detections are ``skipped`` with a reason naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hotcb import jsonl
from hotcb.autopilot.engine import RECORDS
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow

TRAINER = """\
import math, os, random, sys, time
import torch
from hotcb import HotKernel

run_dir, stop = sys.argv[1], sys.argv[2]
kernel = HotKernel(run_dir, poll_interval_sec=0.0, allow_code_load=False)
opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
rng = random.Random(0)
step = 0
while not os.path.exists(stop) and step < 20000:
    step += 1
    loss = 1.0 + 0.001 * rng.gauss(0, 1)
    if step >= 40 and step % 50 == 40 and opt.param_groups[0]["lr"] >= 0.01:
        loss = math.nan  # until the lr is cut: the NaN proposal's trouble stays
    elif 60 <= step <= 70:
        loss *= 20
    metrics = {"loss": loss, "lr": opt.param_groups[0]["lr"]}
    if step % 10 == 0:
        metrics["val_loss"] = 1.05 + 0.001 * rng.gauss(0, 1)
    kernel.apply({"step": step, "optimizer": opt, "metrics": metrics})
    time.sleep(0.02)
kernel.close()
"""


def _records(run_dir: str) -> list[dict[str, Any]]:
    return list(jsonl.iter_records(os.path.join(run_dir, RECORDS)))


def _pending_lr(cli: Any, run_dir: str) -> list[dict[str, Any]]:
    done = cli(run_dir, "autopilot", "proposals", "--json")
    assert done.returncode == 0, done.stderr
    return [p for p in json.loads(done.stdout) if p["action"]["name"] == "lr_mult"]


def test_one_lr_proposal_waits_at_a_time(tmp_path: Path, cli: Any) -> None:
    run_dir, stop = os.fspath(tmp_path / "run"), tmp_path / "stop"
    script = tmp_path / "train.py"
    script.write_text(TRAINER)
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    with open(tmp_path / "autopilot.out", "w") as said:
        pilot = subprocess.Popen(  # before the run: it waits for it, and reads it all
            [sys.executable, "-m", "hotcb", "--dir", run_dir, "autopilot", "--mode", "suggest",
             "--interval", "0.1"], stdout=said, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        trainer = subprocess.Popen([sys.executable, os.fspath(script), run_dir, os.fspath(stop)],
                                   stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        try:
            _check(run_dir, cli)
        finally:
            stop.touch()
            _, err = trainer.communicate(timeout=120)
            pilot.terminate()
            pilot.wait(timeout=60)
    assert trainer.returncode == 0, err[-2000:]


def _check(run_dir: str, cli: Any) -> None:
    def plateau_seen() -> bool:  # the last of the three rules on opt.lr
        return any(r.get("rule") == "plateau_cut_lr" and r["kind"] in ("skipped", "proposal")
                   for r in _records(run_dir))  # fmt: skip

    wait_for(plateau_seen, 180, what="the plateau rule's detection")
    (waiting,) = _pending_lr(cli, run_dir)  # were three: A1 x0.1, then x0.5 and x0.3
    assert waiting["rule"] == "nan_cut_lr" and waiting["action"]["params"] == {"factor": 0.1}
    skipped = [r for r in _records(run_dir) if r["kind"] == "skipped"]
    assert {r["rule"] for r in skipped} >= {"plateau_cut_lr"}, skipped
    for r in skipped:
        assert r["waiting"] == waiting["id"], r
        assert r["reason"].startswith(
            f"proposal {waiting['id']} (lr_mult(factor=0.1), rule nan_cut_lr) still waits on "
            "opt.lr: one proposal per knob waits at a time"
        ), r
    done = cli(run_dir, "autopilot", "accept", waiting["id"], "--wait", "--timeout", "120",
               timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (cut,) = [e for e in read_ledger(run_dir) if e.get("source") == "autopilot"]
    assert cut["decision"] == "applied"
    assert cut["changes"]["lr"]["new"] == pytest.approx(cut["changes"]["lr"]["old"] * 0.1)

    def next_one() -> list[dict[str, Any]]:  # the knob is free again: the plateau proposes
        return _pending_lr(cli, run_dir)

    (after,) = wait_for(next_one, 120, what="the plateau rule's proposal")
    assert after["rule"] == "plateau_cut_lr" and after["id"] != waiting["id"]
