"""``NotifierHost`` (what ``hotcb serve --notify`` runs): which runs of a folder get a notifier,
and when they are let go. Rounds are called here one by one, on real run folders, with a real
HTTP receiver."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hotcb import jsonl
from hotcb.notify import RECORDS, Alert, NotifierHost, NotifyConfig, Webhook
from hotcb.runfiles import RunPaths, update_run_meta, write_run_meta


def _warn(key: str, message: str) -> None:
    raise AssertionError(message)


def _run(root: Path, name: str, *, pid: int | None = None, ended: bool = False) -> RunPaths:
    paths = RunPaths(str(root / name))
    os.makedirs(paths.root)
    write_run_meta(paths, {} if pid is None else {"pid": pid}, _warn)
    if ended:
        update_run_meta(paths, {"ended": {"wall_time": time.time()}}, _warn)
    return paths


def _metric(paths: RunPaths, step: int, loss: float) -> None:
    jsonl.append(paths.metrics, {"step": step, "wall_time": time.time(), "metrics": {"loss": loss}})


def test_only_live_runs_are_watched_until_they_end(tmp_path: Path, receiver: Any) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    root = tmp_path / "runs"
    live = _run(root, "live")
    old = _run(root, "old", ended=True)  # ended before the server looked
    dead = _run(root, "dead", pid=int(gone.stdout))  # crashed before the server looked
    for paths in (live, old, dead):
        _metric(paths, 1, 9.0)
    config = NotifyConfig(
        alerts=(Alert("loss_high", "threshold", metric="loss", above=5.0, cooldown=0.0),),
        deliveries=(Webhook(f"{receiver.url}/hook"),),
        retries=0,
    )
    host = NotifierHost(config, lambda: sorted(str(p) for p in root.iterdir()))
    try:
        fired = host.round()
        assert list(host.notifiers) == [live.root]
        assert [(e["run"], e["step"]) for e in fired] == [(live.root, 1)]
        assert not os.path.exists(os.path.join(old.root, RECORDS))
        assert not os.path.exists(os.path.join(dead.root, RECORDS))

        # the run ends: what it wrote with its end is read, then it is let go
        _metric(live, 2, 1.0)
        _metric(live, 3, 9.0)
        update_run_meta(live, {"ended": {"wall_time": time.time()}}, _warn)
        assert [e["step"] for e in host.round()] == [3]
        assert host.notifiers == {}
        _metric(live, 4, 1.0)
        _metric(live, 5, 9.0)
        assert host.round() == []  # nobody watches an ended run

        # started again in the same folder (a resume): watched again, from where it was
        write_run_meta(live, {}, _warn)
        assert [e["step"] for e in host.round()] == [5]
        assert list(host.notifiers) == [live.root]
    finally:
        host.stop()
    assert host.notifiers == {}
    hooks = receiver.wait_for("/hook", 3)
    assert [h["step"] for h in hooks] == [1, 3, 5]


def test_started_in_a_thread_and_stopped(tmp_path: Path, receiver: Any) -> None:
    root = tmp_path / "runs"
    run = _run(root, "a")
    config = NotifyConfig(
        alerts=(Alert("loss_high", "threshold", metric="loss", above=5.0),),
        deliveries=(Webhook(f"{receiver.url}/hook"),),
    )
    host = NotifierHost(config, lambda: [run.root], interval=0.05)
    host.start()
    try:
        _metric(run, 1, 9.0)
        (hook,) = receiver.wait_for("/hook", 1)
        assert hook["alert"] == "loss_high"
    finally:
        host.stop()
    assert host.notifiers == {} and host._thread is None
