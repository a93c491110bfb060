"""A run that ended says so (issue #11, item 6): finished at step N, or crashed; `stop` on a
finished run answers at once and queues nothing."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest


def _status(cli: Any, run_dir: str) -> dict[str, Any]:
    done = cli(run_dir, "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_a_finished_run_says_finished_and_stop_answers_at_once(
    run_dir: str, tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    tr = start_trainer(run_dir, os.fspath(tmp_path / "t.jsonl"), steps=25)
    assert tr.finish()[0] == 0
    with open(os.path.join(run_dir, "hotcb.run.json")) as f:
        assert json.load(f)["ended"]["step"] == 24  # kernel.close() recorded the end
    assert _status(cli, run_dir)["state"] == "finished at step 24"
    assert cli(run_dir, "status").stdout.splitlines()[0].endswith("[finished at step 24]")
    commands = os.path.join(run_dir, "hotcb.commands.jsonl")
    before = os.path.getsize(commands)
    t0 = time.monotonic()
    done = cli(run_dir, "stop", "--wait")
    assert done.returncode == 0 and "finished at step 24: nothing to stop" in done.stdout
    assert time.monotonic() - t0 < 20  # at once, not after the 30 s wait
    assert os.path.getsize(commands) == before  # no stop waits for the next run
    # another command with --wait says it is queued for the next run instead of timing out
    done = cli(run_dir, "set", "l2=0.001", "--wait")
    assert done.returncode == 0 and "waits in the commands file" in done.stderr
    # a new run in the same directory is running again, not finished
    again = start_trainer(run_dir, os.fspath(tmp_path / "t2.jsonl"), steps=100_000)
    again.wait_step(1)
    assert _status(cli, run_dir)["state"] == "running"
    cli(run_dir, "stop")
    assert again.finish()[0] == 0


@pytest.mark.slow
def test_a_run_whose_process_died_says_crashed(
    run_dir: str, tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    tr = start_trainer(run_dir, os.fspath(tmp_path / "t.jsonl"), steps=100_000)
    tr.wait_step(2)
    assert _status(cli, run_dir)["state"] == "running"
    tr.proc.send_signal(signal.SIGKILL)
    tr.proc.wait(timeout=30)
    assert _status(cli, run_dir)["state"].startswith("crashed")
