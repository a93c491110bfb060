"""``hotcb serve --notify``: the server process runs a notifier on every live run it serves.

A real ``hotcb serve`` subprocess on a folder of runs, a real HTTP receiver and a real SMTP
server (aiosmtpd); the runs are directories this test writes the way a kernel does
(``hotcb.run.json`` naming this live process, metrics lines appended to
``hotcb.metrics.jsonl``), so the steps and values are known.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hotcb import jsonl
from hotcb.notify import RECORDS, STATE
from hotcb.runfiles import RunPaths, write_run_meta
from hotcb.testing import wait_for

pytestmark = pytest.mark.slow

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hotcb.server.testing import ServeProcess  # noqa: E402


def _warn(key: str, message: str) -> None:
    raise AssertionError(message)


def _start_run(path: Path) -> RunPaths:
    """A run started the way a kernel starts one: ``hotcb.run.json`` names this process."""
    paths = RunPaths(str(path))
    os.makedirs(paths.root, exist_ok=True)
    write_run_meta(paths, {}, _warn)
    return paths


def _metric(paths: RunPaths, step: int, loss: float) -> None:
    jsonl.append(paths.metrics, {"step": step, "wall_time": time.time(), "metrics": {"loss": loss}})


def test_hotcb_serve_notify_delivers_each_runs_alerts(
    tmp_path: Path, receiver: Any, smtp_server: Any
) -> None:
    host, port, box = smtp_server
    root = tmp_path / "runs"
    a = _start_run(root / "a")
    _metric(a, 1, 1.0)
    cfg = tmp_path / "notify.json"
    cfg.write_text(json.dumps({
        "alerts": [{"id": "loss_high", "kind": "threshold", "metric": "loss", "above": 5.0}],
        "deliveries": [{"type": "webhook", "url": f"{receiver.url}/hook"},
                       {"type": "email", "host": host, "port": port, "from": "hotcb@example.com",
                        "to": "me@example.com"}],
        "retries": 0,
    }))  # fmt: skip
    serve = ServeProcess(str(root), args=["--notify", str(cfg)])
    serve.start(timeout=60)
    try:
        assert "hotcb notify on every live run served: 1 alerts (loss_high)" in serve.stdout()
        assert f"to {receiver.url}/hook, smtp://{host}:{port} to me@example.com" in serve.stdout()
        _metric(a, 2, 2.0)
        _metric(a, 3, 9.5)  # crosses the threshold
        (hook,) = receiver.wait_for("/hook", 1, timeout=60)
        assert hook["alert"] == "loss_high" and hook["run"] == a.root
        assert (hook["step"], hook["metric"], hook["value"]) == (3, "loss", 9.5)

        # a run that starts while the server runs gets its notifier too
        b = _start_run(root / "b")
        _metric(b, 1, 7.0)
        hooks = receiver.wait_for("/hook", 2, timeout=60)
        assert hooks[1]["run"] == b.root and hooks[1]["step"] == 1
        mails = wait_for(lambda: len(box.messages) >= 2 and box.messages, 60, what="2 e-mails")
        assert sorted(m["Subject"] for m in mails) == [
            "[hotcb] a: loss_high: loss=9.5 at step 3 is above 5",
            "[hotcb] b: loss_high: loss=7 at step 1 is above 5",
        ]

    finally:
        proc = serve.proc
        serve.stop(signal.SIGINT, timeout=30)
    # Ctrl-C: stopped with its notifiers, cleanly (130: as any `hotcb serve` stopped by Ctrl-C;
    # uvicorn passes the signal on once it has shut down)
    assert proc is not None and proc.returncode == 130, serve.output()
    assert "Traceback" not in serve.stderr()

    # every delivery recorded in its run's folder; the cursors kept for a restart
    for paths, steps in ((a, [3]), (b, [1])):
        recs = list(jsonl.iter_records(os.path.join(paths.root, RECORDS)))
        assert [r["step"] for r in recs if r["kind"] == "alert"] == steps
        ok = [r for r in recs if r["kind"] == "delivery" and r["status"] == "ok"]
        assert sorted(r["target"] for r in ok) == sorted(
            [f"{receiver.url}/hook", f"smtp://{host}:{port} to me@example.com"] * len(steps)
        )
        state = jsonl.read_json(os.path.join(paths.root, STATE), {})
        assert state["cursors"]["metrics"] == os.path.getsize(paths.metrics)


def test_hotcb_serve_refuses_a_bad_notify_file(tmp_path: Path, cli: Any) -> None:
    cfg = tmp_path / "notify.json"
    cfg.write_text(json.dumps({"alerts": [{"kind": "threshold"}]}))
    (tmp_path / "run").mkdir()
    done = cli(str(tmp_path / "run"), "serve", "--port", "0", "--notify", str(cfg), timeout=60)
    assert done.returncode == 2
    assert "alerts[0].metric: missing" in done.stderr
