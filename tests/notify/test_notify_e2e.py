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
