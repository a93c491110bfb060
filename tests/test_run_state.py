"""A run that ended says so (issue #11, item 6): finished at step N, or crashed; `stop` on a
finished run answers at once and queues nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from typing import Any

import pytest

from hotcb.testing import wait_for


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
    # another command with --wait says it is queued for the next run instead of timing out,
    # and exits 1: nothing applied it
    done = cli(run_dir, "set", "l2=0.001", "--wait")
    assert done.returncode == 1 and "waits in the commands file" in done.stderr
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

    def zombie() -> bool:  # dead, not reaped yet: what an unwaited Popen leaves
        with open(f"/proc/{tr.proc.pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"

    wait_for(zombie, 30, what="the killed trainer as a zombie")
    assert _status(cli, run_dir)["state"].startswith("crashed")  # it read "running"
    tr.proc.wait(timeout=30)
    assert _status(cli, run_dir)["state"].startswith("crashed")
    # its last sign of life, not "alive"
    text = cli(run_dir, "status").stdout
    assert "last beat step " in text and "alive" not in text, text


@pytest.mark.slow
def test_a_run_paused_then_killed_and_started_again_is_running(
    run_dir: str, tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    """The state came from the ledger's last pause/resume/stop whatever life of the run
    applied it: a run paused, killed, and started again in its directory read ``paused``
    while it trained (and a stopped one ``stopped``). A new kernel starts neither."""
    tr = start_trainer(run_dir, os.fspath(tmp_path / "t.jsonl"), steps=100_000)
    tr.wait_step(2)
    done = cli(run_dir, "tune", "enable", "--mode", "observe", "--objective", "loss", "--wait")
    assert done.returncode == 0, done.stderr
    done = cli(run_dir, "pause", "--wait")
    assert done.returncode == 0 and "control pause -> applied" in done.stdout, done.stdout
    assert _status(cli, run_dir)["state"] == "paused"
    assert "run: paused" in cli(run_dir, "tune", "status").stdout  # the tuner waits with it
    tr.proc.send_signal(signal.SIGKILL)

    def zombie() -> bool:  # dead, not reaped yet: what an unwaited Popen leaves
        with open(f"/proc/{tr.proc.pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"

    wait_for(zombie, 30, what="the killed trainer as a zombie")
    assert _status(cli, run_dir)["state"].startswith("crashed")  # it read "running"
    tr.proc.wait(timeout=30)
    assert _status(cli, run_dir)["state"].startswith("crashed")
    again = start_trainer(run_dir, os.fspath(tmp_path / "t2.jsonl"), steps=100_000)
    again.wait_step(2)
    assert _status(cli, run_dir)["state"] == "running"
    assert cli(run_dir, "status").stdout.splitlines()[0].endswith("[running]")
    assert "run: paused" not in cli(run_dir, "tune", "status").stdout
    done = cli(run_dir, "stop", "--wait")
    assert done.returncode == 0, done.stderr
    assert again.finish()[0] == 0
    assert _status(cli, run_dir)["state"].startswith("stopped at step")
    # and started once more after that stop: running, not stopped
    third = start_trainer(run_dir, os.fspath(tmp_path / "t3.jsonl"), steps=100_000)
    third.wait_step(2)
    assert _status(cli, run_dir)["state"] == "running"
    cli(run_dir, "stop")
    assert third.finish()[0] == 0


TRAINS_UNTIL_KILLED = """
import itertools, sys
from hotcb import HotKernel
kernel = HotKernel(sys.argv[1])
for step in itertools.count():
    kernel.apply({"step": step, "metrics": {"loss": 1.0 / (1 + step)}})
"""


@pytest.mark.slow
def test_a_launched_run_ended_by_ctrl_c_says_interrupted_not_crashed(
    run_dir: str, tmp_path: Any, cli: Any
) -> None:
    """`hotcb launch` records the training's exit code: a loop that Ctrl-C ended without
    closing its kernel (exit 130) was shown as crashed."""
    import subprocess
    import sys

    from hotcb.testing import wait_for

    script = tmp_path / "loop.py"
    script.write_text(TRAINS_UNTIL_KILLED)
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "hotcb", "--dir", run_dir, "launch", "--",
         sys.executable, os.fspath(script), run_dir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        metrics = os.path.join(run_dir, "hotcb.metrics.jsonl")
        wait_for(lambda: os.path.exists(metrics), 120, what="the training's first metrics")
        wait_for(lambda: _status(cli, run_dir)["state"] == "running", 120, what="the training")
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=120) == 130
    finally:
        launcher.kill()
    state = _status(cli, run_dir)["state"]
    assert state == "interrupted by SIGINT (its process is gone and did not close the run)"
    assert cli(run_dir, "tune", "status", "--json").returncode == 0  # a run that is over
    assert json.loads(cli(run_dir, "tune", "status", "--json").stdout)["run_over"] == state


def test_a_launched_training_that_answered_the_forwarded_sigint_with_1_says_interrupted() -> None:
    """torchrun answers a Ctrl-C that ``hotcb launch`` forwarded with exit code 1; ranks that
    did not close the run (no ``checkpoint_on_signal``) were gone without closing it: the run
    reads interrupted by the signal the launch sent, with that exit code, not crashed."""
    import socket
    import subprocess
    import sys

    from hotcb.ledger import LedgerView

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid of this host that no longer runs
    now = time.time()
    meta = {"started": now - 60, "pid": gone.pid, "host": socket.gethostname(),
            "launch": {"exit_code": 1, "signal_sent": "SIGINT", "ended": now - 1}}  # fmt: skip
    assert LedgerView().run_state(None, now, meta=meta) == (
        "interrupted by SIGINT (exit code 1; its process is gone and did not close the run)"
    )
    meta["launch"] = {"exit_code": 1, "ended": now - 1}  # no signal sent: a failure
    assert LedgerView().run_state(None, now, meta=meta).startswith("crashed (exit code 1;")
    # killed from outside the launch (the OOM killer): a crash, which the crash alert tells;
    # it read "interrupted by SIGKILL", and no alert came
    meta["launch"] = {"exit_code": -9, "ended": now - 1}
    assert LedgerView().run_state(None, now, meta=meta) == (
        "crashed (killed by SIGKILL; its process is gone and did not close the run)"
    )
    meta["launch"] = {"exit_code": -9, "signal_sent": "SIGKILL", "ended": now - 1}  # the 3rd ^C
    assert LedgerView().run_state(None, now, meta=meta).startswith("interrupted by SIGKILL (")


def test_a_loop_that_ctrl_c_unwound_through_close_says_interrupted(run_dir: str, cli: Any) -> None:
    """`hotcb demo`'s trainer (and any loop with `finally: kernel.close()`) stopped with Ctrl-C
    said `finished at step 728`, as if it had run its course."""
    from hotcb import HotKernel

    kernel = HotKernel(run_dir)

    def train() -> None:
        try:
            for step in range(3):
                kernel.apply({"step": step, "metrics": {"loss": 1.0}})
            raise KeyboardInterrupt  # Ctrl-C in the middle of the loop
        finally:
            kernel.close()

    with pytest.raises(KeyboardInterrupt):
        train()
    assert _status(cli, run_dir)["state"] == "interrupted at step 2"
    done = cli(run_dir, "stop")
    assert "interrupted at step 2: nothing to stop" in done.stdout


@pytest.mark.slow
def test_a_loop_that_an_error_unwound_through_close_says_crashed(
    run_dir: str, tmp_path: Any, cli: Any
) -> None:
    """The loops the docs show (`try: ... finally: kernel.close()`, `with HotKernel(...)`)
    said `finished at step 10` when the user's code raised: the crash alert and the autopilot
    never heard of the crash. A `sys.exit(0)` on the way out is a clean end."""
    from hotcb import HotKernel

    def train(path: str, error: BaseException) -> None:
        with HotKernel(path) as kernel:
            for step in range(11):
                kernel.apply({"step": step, "metrics": {"loss": 1.0}})
            raise error

    with pytest.raises(ValueError, match="do not match"):
        train(run_dir, ValueError("shapes (3,) and (4,) do not match"))
    state = "crashed at step 10 (ValueError: shapes (3,) and (4,) do not match)"
    assert _status(cli, run_dir)["state"] == state
    assert f"the run {state}" in cli(run_dir, "stop").stdout
    exited = os.fspath(tmp_path / "exited")
    with pytest.raises(SystemExit):
        train(exited, SystemExit(0))
    assert _status(cli, exited)["state"] == "finished at step 10"
    with pytest.raises(SystemExit):
        train(exited, SystemExit("no data in /data/train"))
    assert (
        _status(cli, exited)["state"] == "crashed at step 10 (sys.exit('no data in /data/train'))"
    )
    # the dashboard serves this file: an error that quotes a URL keeps no secret, on one line
    leaky = ConnectionError("GET https://bob:hunter2@hf.co/x?token=hf_S3CRET failed\n  retry")
    with pytest.raises(ConnectionError):
        train(exited, leaky)
    assert _status(cli, exited)["state"] == (
        "crashed at step 10 (ConnectionError: GET https://bob:***@hf.co/x?token=*** failed retry)"
    )
    with open(os.path.join(exited, "hotcb.run.json")) as f:
        assert "hunter2" not in f.read()


def test_a_close_after_an_end_by_design_or_a_framework_s_ctrl_c_is_no_crash(
    run_dir: str, cli: Any
) -> None:
    """`close()` in the `except StopIteration` that ended a loop said `crashed (StopIteration)`;
    Lightning answers a Ctrl-C with `sys.exit(1)`, which said `crashed (sys.exit(1))`."""
    from hotcb import HotKernel

    kernel = HotKernel(run_dir)
    batches = iter(range(3))
    try:
        while True:
            kernel.apply({"step": next(batches), "metrics": {"loss": 1.0}})
    except StopIteration:
        kernel.close()
    assert _status(cli, run_dir)["state"] == "finished at step 2"

    def fit() -> None:
        kernel = HotKernel(run_dir)
        try:
            try:
                kernel.apply({"step": 0, "metrics": {"loss": 1.0}})
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                sys.exit(1)  # what Lightning does after its graceful shutdown
        finally:
            kernel.close()

    with pytest.raises(SystemExit):
        fit()
    assert _status(cli, run_dir)["state"] == "interrupted at step 0"


@pytest.mark.slow
def test_a_copy_of_a_live_run_says_nothing_trains_there(
    run_dir: str, tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    """``cp -a`` of a live run's directory names the original's process in its hotcb.run.json:
    the copy says where that trainer runs instead of showing it as its own, and a command sent
    to the copy says it waits for a run started there (with --wait: exit 1, nothing applies)."""
    tr = start_trainer(run_dir, os.fspath(tmp_path / "t.jsonl"), steps=100_000)
    tr.wait_step(2)
    copy = os.fspath(tmp_path / "copy")
    shutil.copytree(run_dir, copy)
    state = _status(cli, copy)["state"]
    assert state.startswith(f"copied or moved here from {run_dir} ") and "nothing trains" in state
    assert "last beat" in cli(copy, "status").stdout  # its beat is the original's, not alive
    done = cli(copy, "set", "l2=0.001", "--wait")
    assert done.returncode == 1 and "waits in the commands file" in done.stderr
    assert _status(cli, run_dir)["state"] == "running"  # the original is untouched
    cli(run_dir, "stop")
    assert tr.finish()[0] == 0


def test_the_python_api_says_when_a_command_waits_for_the_next_run(
    run_dir: str, caplog: Any
) -> None:
    """A pause sent from Python to a finished run was queued in silence (the CLI says it), and
    held the next run started in the folder at its first step."""
    import logging

    from hotcb import HotClient, HotKernel

    with HotKernel(run_dir, checkpoint_on_signal=False) as kernel:
        kernel.apply({"step": 0, "metrics": {"loss": 1.0}})
    client = HotClient(run_dir)
    with caplog.at_level(logging.WARNING, logger="hotcb"):
        client.pause()
    assert [r.getMessage() for r in caplog.records] == [
        "hotcb: the run finished at step 0; control pause waits in the commands file for the next "
        "run started in this directory (or the next loop of the same process) (and holds it at "
        "its first step)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hotcb"):
        HotClient(run_dir, warn_over=False).resume()
    assert not caplog.records
    client.opt(lr=0.02, cmd_id="mine1")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hotcb"):
        client.opt(lr=0.02, cmd_id="mine1")  # a retry writes nothing: it said nothing is queued
    assert not caplog.records
