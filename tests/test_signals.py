"""Checkpoint-and-stop on SIGTERM / SIGINT (issue #15, ``checkpoint_on_signal``).

In-process tests use SIGUSR1/SIGUSR2 (``kernel.catch_signals((sig,))``), so a mistake cannot
take pytest down; the real SIGTERM and Ctrl-C go to real trainer processes. Every wait is on a
condition with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hotcb import HotKernel, jsonl
from hotcb._signals import REPEAT_WINDOW
from hotcb.ledger import checkpoint_path
from hotcb.runfiles import RunPaths
from hotcb.testing import StepDriver, read_ledger, trainer_command, wait_for

SUBPROCESS_ENV = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}


def _default_sigint() -> None:
    # a child of a shell that ignores SIGINT (a background job, CI) would ignore it too, and
    # hotcb leaves an ignored signal alone: give the child Python's default, as in a terminal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=SUBPROCESS_ENV,
        preexec_fn=_default_sigint,
    )


@contextlib.contextmanager
def _running(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """``popen(argv)``, killed on the way out if the test left it running."""
    proc = popen(argv)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def usr1() -> Iterator[list[int]]:
    """A handler of the user's for SIGUSR1 (the calls it got), restored after the test."""
    calls: list[int] = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGUSR1, before)


def _signal_entries(run_dir: str) -> list[dict[str, Any]]:
    return [e for e in read_ledger(run_dir) if e.get("source") == "signal"]


def test_a_signal_saves_then_stops_at_the_next_safe_point_and_chains_the_users_handler(
    run_dir: str, usr1: list[int]
) -> None:
    saved: list[int] = []

    def save(path: str | None = None) -> str:
        saved.append(drv.step)
        return os.path.join(run_dir, f"ckpt_{drv.step}.pt")

    drv = StepDriver(run_dir, env_extra={"save_checkpoint": save})
    try:
        assert drv.kernel.catch_signals((signal.SIGUSR1,)) == (signal.SIGUSR1,)
        drv.steps(3)
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_for(lambda: drv.kernel.signal_pending, 10, what="the handler to note the signal")
        assert usr1 == [signal.SIGUSR1]  # the user's handler ran too
        assert saved == [] and not drv.kernel.stop_requested  # nothing in the handler itself
        drv.steps(1)
        assert saved == [3] and drv.kernel.stop_requested and not drv.kernel.signal_pending
        ck, stop = _signal_entries(run_dir)
        assert (ck["op"], stop["op"]) == ("checkpoint", "stop")
        assert ck["step"] == stop["step"] == 3
        assert ck["decision"] == stop["decision"] == "applied"
        assert ck["checkpoint"] == "ckpt_3.pt" and ck["reason"] == "SIGUSR1 received"

        # a second signal does what it did before hotcb: here, the user's handler alone
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_for(lambda: len(usr1) == 2, 10, what="the user's handler")
        assert not drv.kernel.signal_pending
    finally:
        drv.close()
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
    os.kill(os.getpid(), signal.SIGUSR1)  # close() gave the signal back to the user's handler
    wait_for(lambda: len(usr1) == 3, 10, what="the user's handler after close")
    meta = jsonl.read_json(RunPaths(run_dir).run_meta)
    assert meta["ended"]["stopped"] is True and meta["ended"]["signal"] == "SIGUSR1"


def test_without_a_saver_the_loop_is_asked_to_checkpoint_before_it_stops(
    run_dir: str, usr1: list[int]
) -> None:
    with StepDriver(run_dir) as drv:
        drv.kernel.catch_signals((signal.SIGUSR1,))
        drv.steps(1)
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_for(lambda: drv.kernel.signal_pending, 10, what="the signal")
        drv.steps(1)
        assert drv.kernel.checkpoint_requested and drv.kernel.stop_requested
        ck, stop = _signal_entries(run_dir)
        assert ck["checkpoint"] == "requested" and stop["op"] == "stop"


def test_a_paused_run_leaves_the_pause_to_checkpoint_and_stop(
    run_dir: str, usr1: list[int]
) -> None:
    """The signal comes while ``apply()`` holds the loop in a pause."""
    with StepDriver(run_dir, pause_poll_sec=0.01) as drv:
        drv.kernel.catch_signals((signal.SIGUSR1,))
        drv.steps(1)
        paused = drv.client.pause()
        # the signal arrives from another thread once the pause is ledgered (the main thread
        # is inside apply() then)
        sender = threading.Thread(
            target=lambda: (
                wait_for(lambda: drv.entries(paused), 30, what="the pause"),
                os.kill(os.getpid(), signal.SIGUSR1),
            )
        )
        sender.start()
        drv.steps(1)  # returns once the signal ended the pause
        sender.join(30)
        assert drv.kernel.stop_requested and drv.kernel.checkpoint_requested
        assert [e["op"] for e in _signal_entries(run_dir)] == ["checkpoint", "stop"]


def test_an_ignored_signal_stays_ignored_and_other_threads_install_nothing(
    run_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    kernel = HotKernel(run_dir)
    try:
        assert kernel.catch_signals((signal.SIGUSR2,)) == ()
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
        got: list[tuple[int, ...]] = []
        t = threading.Thread(target=lambda: got.append(kernel.catch_signals()))
        t.start()
        t.join(30)
        assert got == [()] and kernel.signals_caught == ()
        assert "needs the main thread" in caplog.text
    finally:
        kernel.close()
        signal.signal(signal.SIGUSR2, before)


def test_checkpoint_on_signal_installs_for_sigterm_and_sigint_and_close_restores(
    run_dir: str,
) -> None:
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    kernel = HotKernel(run_dir, checkpoint_on_signal=True)
    try:
        assert set(kernel.signals_caught) == {signal.SIGTERM, signal.SIGINT}
        assert signal.getsignal(signal.SIGTERM) not in before
    finally:
        kernel.close()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert HotKernel(run_dir).signals_caught == ()  # off unless asked for


# ------------------------------------------------------------------------------ real processes
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_real_trainer_saves_a_checkpoint_and_exits_cleanly_on_a_signal(
    tmp_path: Any, start_trainer: Any, sig: int
) -> None:
    run_dir = os.fspath(tmp_path / "run")
    trace = os.fspath(tmp_path / "trace.jsonl")
    ready = os.fspath(tmp_path / "ready")
    argv = trainer_command(
        run_dir, trace=trace, steps=100_000, step_delay=0.01, checkpoint_on_signal=True,
        ready_file=ready,
    )  # fmt: skip
    with _running(argv) as proc:
        wait_for(lambda: os.path.exists(ready) or proc.poll() is not None, 120, what="step 0")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    name = signal.Signals(sig).name
    assert f"hotcb: {name}: saving a checkpoint and stopping" in err
    ck, stop = _signal_entries(run_dir)
    assert ck["op"] == "checkpoint" and ck["decision"] == "applied"
    assert stop["op"] == "stop" and stop["step"] == ck["step"]
    assert f"stopped at step {ck['step']}" in out
    path = checkpoint_path(ck, run_dir)
    assert path is not None and os.path.isfile(path)
    assert read_jsonl_rows(trace)[-1]["step"] == ck["step"]  # nothing trained after it
    meta = jsonl.read_json(RunPaths(run_dir).run_meta)
    assert meta["ended"] == {**meta["ended"], "stopped": True, "signal": name}

    # the checkpoint resumes: the next run continues at the step after it
    t2 = start_trainer(run_dir, trace, steps=ck["step"] + 4, resume=path)
    code, _, err = t2.finish(timeout=120)
    assert code == 0, err[-3000:]
    steps = [r["step"] for r in t2.steps()]
    assert steps[-4:] == [ck["step"], ck["step"] + 1, ck["step"] + 2, ck["step"] + 3]


def read_jsonl_rows(path: str) -> list[dict[str, Any]]:
    return list(jsonl.iter_records(path))


HANGS = r"""
import signal, sys, time
from hotcb import HotKernel
kernel = HotKernel(sys.argv[1], checkpoint_on_signal=True)
kernel.apply({"step": 0})
print("ready", flush=True)
while True:  # a loop stuck before its next safe point (a hung data loader, a long step)
    if kernel.signal_pending:
        print("noted", flush=True)
        while True:
            time.sleep(0.01)
    time.sleep(0.01)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_ends_a_run_stuck_before_its_next_safe_point(
    tmp_path: Any, sig: int
) -> None:
    with _running([sys.executable, "-c", HANGS, os.fspath(tmp_path / "run")]) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        noted = time.monotonic()
        assert proc.stdout.readline() == "noted\n"  # the first one only asked
        if sig == signal.SIGTERM:  # a repeat within the window is the same request (below)
            wait_for(lambda: time.monotonic() > noted + REPEAT_WINDOW, 60, what="the window")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    # what Python does without hotcb: KeyboardInterrupt (the interpreter then ends by SIGINT),
    # or the default action of SIGTERM
    assert proc.returncode == -sig
    assert ("KeyboardInterrupt" in err) == (sig == signal.SIGINT)


# stuck before its next safe point until the file argv[2] exists
STUCK_UNTIL = r"""
import os, sys, time
from hotcb import HotKernel
kernel = HotKernel(sys.argv[1], checkpoint_on_signal=True)
kernel.apply({"step": 0})
print("ready", flush=True)
while not kernel.signal_pending:
    time.sleep(0.01)
print("noted", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
kernel.apply({"step": 1})
print("stopped" if kernel.stop_requested else "went on", flush=True)
kernel.close()
"""


@pytest.mark.slow
def test_a_sigterm_repeated_at_once_is_the_same_request(tmp_path: Any) -> None:
    """A `hotcb launch` killed with kill -9 (or by a closed terminal) sends its training one
    SIGTERM per thread of its own (PR_SET_PDEATHSIG fires as each exits): the second one
    killed the run before the checkpoint the first had asked for."""
    go = tmp_path / "go"
    with _running(
        [sys.executable, "-c", STUCK_UNTIL, os.fspath(tmp_path / "run"), os.fspath(go)]
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == "noted\n"
        proc.send_signal(signal.SIGTERM)  # the launcher's next thread
        go.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert out.endswith("stopped\n")
    ck, stop = _signal_entries(os.fspath(tmp_path / "run"))
    assert (ck["op"], ck["decision"], stop["op"]) == ("checkpoint", "applied", "stop")


# the kernel made in one cell, the loop run in the next: a Jupyter kernel puts Python's
# default_int_handler in place around every cell (ipykernel's pre_handler_hook)
NEXT_CELL = r"""
import signal, sys, time
from hotcb import HotKernel
kernel = HotKernel(sys.argv[1], checkpoint_on_signal=True, poll_interval_sec=0.0)
signal.signal(signal.SIGINT, signal.default_int_handler)  # the next cell begins
for step in range(100_000):
    kernel.apply({"step": step, "save_checkpoint": lambda path=None: "ckpt"})
    if step == 2:
        print("ready", flush=True)
    if kernel.stop_requested:
        print("stopped", flush=True)
        break
    time.sleep(0.01)
kernel.close()
"""


@pytest.mark.slow
def test_ctrl_c_in_a_later_notebook_cell_still_checkpoints_and_stops(tmp_path: Any) -> None:
    """checkpoint_on_signal=True on a kernel made in an earlier cell than its loop: Ctrl-C
    raised KeyboardInterrupt mid-step, with no checkpoint and no ledger entry, while
    ``signals_caught`` still listed SIGINT."""
    run = os.fspath(tmp_path / "run")
    with _running([sys.executable, "-c", NEXT_CELL, run]) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert out.endswith("stopped\n") and "KeyboardInterrupt" not in err
    ck, stop = _signal_entries(run)
    assert (ck["op"], ck["decision"], stop["op"]) == ("checkpoint", "applied", "stop")


DATALOADER_LOOP = """
import sys
import time
import torch
from torch.utils.data import DataLoader, TensorDataset
from hotcb import HotKernel

kernel = HotKernel(sys.argv[1], checkpoint_on_signal=True)
loader = DataLoader(TensorDataset(torch.randn(1_000_000, 4)), batch_size=8, num_workers=2)
try:
    for step, (x,) in enumerate(loader):
        kernel.apply({"step": step, "metrics": {"loss": float(x.sum())},
                      "save_checkpoint": lambda path=None: None})
        if kernel.stop_requested:
            break
        open(sys.argv[1] + "/stepped", "w").close()  # the test signals once this step's apply is over
        time.sleep(5)  # a long step: the workers' death interrupts it, no safe point comes first
finally:
    kernel.close()
"""


@pytest.mark.slow
def test_a_sigterm_to_the_group_that_kills_the_loaders_workers_says_so(tmp_path: Any) -> None:
    """SIGTERM to the whole process group (`kill -TERM -PGID`, a batch scheduler) kills a
    DataLoader's workers (torch's own handler) and the loader raises before a safe point
    takes the signal: no checkpoint. `hotcb status` said `finished at step N`; it now says
    that the signal interrupted the run before its checkpoint, and the log says why."""
    run_dir = os.fspath(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", DATALOADER_LOOP, run_dir], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=SUBPROCESS_ENV,
                            start_new_session=True)  # fmt: skip
    try:
        # after the first step's apply (the metrics file is written during it: a signal then
        # met the safe point, which checkpointed and stopped; it failed so under load)
        stepped = os.path.join(run_dir, "stepped")
        wait_for(lambda: os.path.exists(stepped), 120, what="the loop's first step")
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    meta = jsonl.read_json(RunPaths(run_dir).run_meta)
    ended = meta["ended"]
    assert ended["signal_pending"] == "SIGTERM" and "DataLoader worker" in ended["error"], ended
    from hotcb.ledger import LedgerView

    state = LedgerView().run_state(None, time.time(), meta=meta)
    assert state.startswith(f"interrupted by SIGTERM at step {ended['step']} (before its "
                            "checkpoint; RuntimeError: DataLoader worker"), state  # fmt: skip
    assert "reached the DataLoader's workers too" in err, err[-3000:]
