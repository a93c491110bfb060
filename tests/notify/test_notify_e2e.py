"""End to end: a real trainer and ``hotcb notify`` as subprocesses, one threshold alert
delivered to a local HTTP receiver and a local SMTP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from hotcb import jsonl
from hotcb.notify import RECORDS

from .conftest import wait_until


@pytest.mark.slow
def test_trainer_and_hotcb_notify(tmp_path: Any, receiver: Any, smtp_server: Any) -> None:
    host, port, box = smtp_server
    run = str(tmp_path / "run")
    cfg = tmp_path / "notify.json"
    cfg.write_text(json.dumps({
        "alerts": [{"id": "loss_up", "kind": "threshold", "metric": "loss", "above": 0.0}],
        "deliveries": [{"type": "webhook", "url": f"{receiver.url}/hook"},
                       {"type": "email", "host": host, "port": port, "from": "hotcb@example.com",
                        "to": "me@example.com"}],
    }))  # fmt: skip
    trainer = subprocess.Popen([sys.executable, "-m", "hotcb.testing.trainer", "--run-dir", run,
                                "--steps", "60", "--step-delay", "0.01"])  # fmt: skip
    try:
        wait_until(lambda: os.path.exists(os.path.join(run, "hotcb.run.json")), 120)
        notify = subprocess.run(
            [sys.executable, "-m", "hotcb", "--dir", run, "notify", "--notify", str(cfg),
             "--interval", "0.05"], capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        assert trainer.wait(timeout=180) == 0
    assert notify.returncode == 0, notify.stderr
    hooks = receiver.wait_for("/hook", 1)
    assert len(hooks) == 1 and hooks[0]["alert"] == "loss_up" and hooks[0]["metric"] == "loss"
    wait_until(lambda: box.messages)
    assert box.messages[0]["Subject"].startswith("[hotcb] run: loss_up: loss=")
    recs = list(jsonl.iter_records(os.path.join(run, RECORDS)))
    assert sorted(r["target"] for r in recs if r["kind"] == "delivery" and r["status"] == "ok") == [
        f"{receiver.url}/hook", f"smtp://{host}:{port} to me@example.com"]  # fmt: skip


CRASHES = """
import sys, time
from hotcb import HotKernel
kernel = HotKernel()  # the run directory comes from hotcb launch
for step in range(100_000):
    kernel.apply({"step": step, "metrics": {"loss": 1.0 / (1 + step)}})
    if step == 30:
        raise RuntimeError("the training failed on purpose")
    time.sleep(0.01)
"""


#: Imported by every Python process started with its folder on PYTHONPATH: ``hotcb notify``
#: then takes seconds to start, as on a loaded machine.
SLOW_NOTIFY = """
import sys, time
if "notify" in sys.argv:
    time.sleep(5)
"""


@pytest.mark.slow
@pytest.mark.parametrize("slow_start", [False, True])
def test_hotcb_launch_notify_sends_the_crash_that_ends_it(
    tmp_path: Any, receiver: Any, slow_start: bool
) -> None:
    """`hotcb launch --notify-webhook`: the launcher stopped its notifier the moment the
    training died, before any round saw the crash, so the default `crash` alert never went.
    And a notifier still starting when the training crashed (a loaded machine) was ended by
    the launcher's SIGTERM before it ran at all: the launcher now waits for it to run."""
    script = tmp_path / "crashes.py"
    script.write_text(CRASHES)
    run = str(tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k not in ("HOTCB_DIR", "HOTCB_RUN_DIR")}
    if slow_start:
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_NOTIFY)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "site"),
                                                          env.get("PYTHONPATH")]))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "hotcb", "--dir", run, "launch",
         "--notify-webhook", f"{receiver.url}/hook", "--", sys.executable, str(script)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    (crash,) = [b for b in receiver.bodies("/hook") if b["alert"] == "crash"]
    assert crash["type"] == "crash" and "gone" in crash["message"]
    recs = list(jsonl.iter_records(os.path.join(run, RECORDS)))
    assert [r["status"] for r in recs if r["kind"] == "delivery"] == ["ok"]


@pytest.mark.slow
def test_hotcb_notify_started_before_the_run_waits_for_it(tmp_path: Any, receiver: Any) -> None:
    """`hotcb notify` on a run directory its trainer has not created yet exited 2 ("no run
    directory"), where `hotcb autopilot` waits; it now waits too, then watches the run."""
    run = str(tmp_path / "run")
    cfg = tmp_path / "notify.json"
    cfg.write_text(json.dumps({
        "alerts": [{"id": "loss_up", "kind": "threshold", "metric": "loss", "above": 0.0}],
        "deliveries": [{"type": "webhook", "url": f"{receiver.url}/hook"}],
    }))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("HOTCB_DIR", "HOTCB_RUN_DIR")}
    notify = subprocess.Popen(
        [sys.executable, "-m", "hotcb", "--dir", run, "notify", "--notify", str(cfg),
         "--interval", "0.05"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert notify.stdout is not None
        first = notify.stdout.readline()
        assert "no run at" in first and "waiting for it" in first, first
        trainer = subprocess.run([sys.executable, "-m", "hotcb.testing.trainer", "--run-dir", run,
                                  "--steps", "60", "--step-delay", "0.01"],
                                 timeout=180, env=env)  # fmt: skip
        assert trainer.returncode == 0
        _, err = notify.communicate(timeout=180)
    finally:
        notify.kill()
    assert notify.returncode == 0, err
    (hook,) = receiver.wait_for("/hook", 1)
    assert hook["alert"] == "loss_up"


TRAINS = """
import time
from hotcb import HotKernel
kernel = HotKernel()  # the run directory comes from hotcb launch
for step in range(1_000_000):
    kernel.apply({"step": step, "metrics": {"loss": 1.0 / (1 + step)}})
    time.sleep(0.01)
"""


@pytest.mark.slow
def test_ctrl_c_on_a_launched_training_is_no_crash_alert(tmp_path: Any, receiver: Any) -> None:
    """Ctrl-C on `hotcb launch --notify-webhook`: the notifier's last round saw the training's
    process gone before the launcher had recorded how it ended, and sent `crash: the training
    process is gone without closing the run (crashed or killed)` (`hotcb status` said
    `interrupted by SIGINT`)."""
    import signal

    script = tmp_path / "trains.py"
    script.write_text(TRAINS)
    run = str(tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k not in ("HOTCB_DIR", "HOTCB_RUN_DIR")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotcb", "--dir", run, "launch",
         "--notify-webhook", f"{receiver.url}/hook", "--", sys.executable, str(script)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        metrics = os.path.join(run, "hotcb.metrics.jsonl")
        wait_until(lambda: len(list(jsonl.iter_records(metrics))) >= 20, timeout=120)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    status = subprocess.run([sys.executable, "-m", "hotcb", "--dir", run, "status"],
                            capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert "interrupted by SIGINT" in status.stdout, status.stdout
    assert [b["alert"] for b in receiver.bodies("/hook")] == [], out  # no "crash"
