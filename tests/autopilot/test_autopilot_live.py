"""The autopilot as a user runs it: ``hotcb autopilot --mode auto`` in its own process, next to
a real trainer process whose loss starts to diverge (its lr jumps 15x at step 300, outside
hotcb). The autopilot cuts lr, and the loss comes back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hotcb import HotClient, jsonl
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow

RULES = """\
rules:
  - id: divergence_cut_lr
    when: {detector: divergence, metric: train}
    then: {action: lr_mult, params: {factor: 0.1}}
    cooldown_steps: 60
    confidence: high
"""


def test_auto_mode_rescues_a_diverging_run(
    run_dir: str, tmp_path: Path, start_trainer: Any, cli: Any
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    trace = os.fspath(tmp_path / "trace.jsonl")
    trainer = start_trainer(run_dir, trace, steps=900, lr=0.01, lr_jump="300:15", step_delay=0.01)
    trainer.wait_step(1, 120)
    client = HotClient(run_dir, source="test")
    client.wait(client.pause(), 120)  # hold the run until the autopilot is up
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    argv = [sys.executable, "-m", "hotcb", "--dir", run_dir, "autopilot", "--mode", "auto",
            "--rules", os.fspath(rules), "--key-metric", "loss", "--interval", "0.2"]  # fmt: skip
    pilot = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env)  # fmt: skip
    try:
        first = pilot.stdout.readline() if pilot.stdout else ""
        assert "hotcb autopilot (auto) on" in first, first
        client.resume()

        def cut() -> dict[str, Any] | None:
            return next((e for e in read_ledger(run_dir) if e.get("source") == "autopilot"
                         and e.get("op") == "set_params"), None)  # fmt: skip

        entry = wait_for(cut, 300, what="the autopilot's lr cut")
        code, _out, err = trainer.finish(300)
        assert code == 0, err[-2000:]
    finally:
        pilot.kill()
        pilot.communicate()
    assert entry["decision"] == "applied" and entry["step"] > 300
    assert entry["reason"].startswith("autopilot rule divergence_cut_lr: divergence on loss")
    assert entry["changes"]["lr"]["new"] == pytest.approx(entry["changes"]["lr"]["old"] * 0.1)
    rows = [json.loads(x) for x in Path(trace).read_text().splitlines()]
    loss = {r["step"]: r["loss"] for r in rows}

    def mean(a: int, b: int) -> float:
        return sum(loss[s] for s in range(a, b)) / (b - a)

    assert mean(301, entry["step"] + 1) > 2 * mean(250, 300), (
        entry["step"],
        [loss[s] for s in range(295, entry["step"] + 1)],
    )  # it was diverging
    assert mean(entry["step"] + 100, entry["step"] + 150) < 0.35  # and came back
    records = [
        json.loads(x) for x in (Path(run_dir) / "hotcb.autopilot.jsonl").read_text().splitlines()
    ]
    assert any(r["kind"] == "detection" and r["detector"] == "divergence" for r in records)


def _auto_pilot(run_dir: str) -> subprocess.Popen[str]:
    """`hotcb autopilot --mode auto` on ``run_dir`` (key metric loss), its output piped."""
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    argv = [sys.executable, "-m", "hotcb", "--dir", run_dir, "autopilot", "--mode", "auto",
            "--key-metric", "loss", "--interval", "0.2"]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip


def test_the_autopilot_stops_when_the_trainer_is_killed(
    run_dir: str, tmp_path: Path, start_trainer: Any
) -> None:
    """kill -9 leaves no ``ended`` in hotcb.run.json: the autopilot tells the process is gone
    (same host) and exits, instead of watching a dead run forever."""
    trainer = start_trainer(run_dir, os.fspath(tmp_path / "trace.jsonl"), steps=100_000,
                            step_delay=0.01)  # fmt: skip
    trainer.wait_step(5, 120)
    pilot = _auto_pilot(run_dir)
    try:
        first = pilot.stdout.readline() if pilot.stdout else ""
        assert "hotcb autopilot (auto) on" in first, first
        assert pilot.poll() is None  # a live run: it keeps watching
        trainer.proc.kill()
        trainer.proc.wait(60)
        out, _ = pilot.communicate(timeout=120)
    finally:
        pilot.kill()
        pilot.communicate()  # reaped: a failed test leaves no process to the next one's GC
    assert pilot.returncode == 0
    assert "is gone without closing the run (crashed or killed)" in out, out


def test_a_second_autopilot_on_a_run_is_refused(
    run_dir: str, tmp_path: Path, start_trainer: Any
) -> None:
    """Two ``hotcb autopilot`` on one run would both act on every detection: the second one
    is refused with the first one's pid, and a stopped autopilot frees the run."""
    import signal

    trainer = start_trainer(run_dir, os.fspath(tmp_path / "trace.jsonl"), steps=100_000,
                            step_delay=0.01)  # fmt: skip
    trainer.wait_step(5, 120)
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    argv = [sys.executable, "-m", "hotcb", "--dir", run_dir, "autopilot", "--mode", "suggest",
            "--key-metric", "loss", "--interval", "0.2"]  # fmt: skip
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env)  # fmt: skip
    try:
        line = first.stdout.readline() if first.stdout else ""
        assert "hotcb autopilot (suggest) on" in line, line
        second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2
        assert f"another autopilot (pid {first.pid}, mode suggest) drives" in second.stderr
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
        assert first.returncode == 0
        assert not (Path(run_dir) / "hotcb.autopilot.owner.json").exists()
    finally:
        first.kill()


def test_an_autopilot_started_before_its_run_waits_for_it(
    tmp_path: Path, start_trainer: Any
) -> None:
    """Started in another terminal before the trainer: it says it waits, then drives the run
    once the trainer's kernel has created it (``--once`` still refuses a missing folder)."""
    run_dir = os.fspath(tmp_path / "later")
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    argv = [sys.executable, "-m", "hotcb", "--dir", run_dir, "autopilot", "--mode", "suggest",
            "--key-metric", "loss", "--interval", "0.2"]  # fmt: skip
    once = subprocess.run([*argv, "--once"], capture_output=True, text=True, env=env, timeout=120)
    assert once.returncode == 2 and f"no run directory at {run_dir}" in once.stderr
    pilot = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env)  # fmt: skip
    try:
        first = pilot.stdout.readline() if pilot.stdout else ""
        assert f"no run under {run_dir} yet; waiting for one" in first, first
        assert not os.path.exists(run_dir)  # waiting creates nothing
        trainer = start_trainer(run_dir, os.fspath(tmp_path / "trace.jsonl"), steps=100_000,
                                step_delay=0.01)  # fmt: skip
        line = pilot.stdout.readline() if pilot.stdout else ""
        assert f"hotcb autopilot (suggest) on {run_dir}; key metric loss, minimize" in line, line
        trainer.proc.kill()
        trainer.proc.wait(60)
        out, _ = pilot.communicate(timeout=120)
    finally:
        pilot.kill()
        pilot.communicate()  # reaped: a failed test leaves no process to the next one's GC
    assert pilot.returncode == 0, out


def test_an_autopilot_started_on_a_crashed_run_waits_for_its_restart(
    run_dir: str, tmp_path: Path, start_trainer: Any
) -> None:
    """Started right after a kill -9, while the restarted trainer still imported torch (the
    dead one's pid in hotcb.run.json), the autopilot said the process was gone and exited: the
    new run went unwatched. It now waits for the restart, and watches it."""
    first = start_trainer(run_dir, os.fspath(tmp_path / "t1.jsonl"), steps=100_000,
                          step_delay=0.01)  # fmt: skip
    first.wait_step(3, 120)
    first.proc.kill()
    first.proc.wait(60)
    pilot = _auto_pilot(run_dir)
    try:
        assert pilot.stdout is not None
        lines = [pilot.stdout.readline(), pilot.stdout.readline()]
        assert "waiting for it to start again" in lines[1], lines
        assert pilot.poll() is None
        again = start_trainer(run_dir, os.fspath(tmp_path / "t2.jsonl"), steps=100_000,
                              step_delay=0.01)  # fmt: skip
        again.wait_step(3, 120)
        state = os.path.join(run_dir, "hotcb.autopilot.state.json")
        wait_for(lambda: (jsonl.read_json(state, {}) or {}).get("step", 0) >= 30, 120,
                 what="the autopilot reading the new life's steps")  # fmt: skip
        assert pilot.poll() is None  # watching the new life
        again.proc.kill()
        again.proc.wait(60)
        out, _ = pilot.communicate(timeout=120)
    finally:
        pilot.kill()
        pilot.communicate()  # reaped: a failed test leaves no process to the next one's GC
    assert pilot.returncode == 0
    assert out.count("is gone without closing the run (crashed or killed)") == 1, out
