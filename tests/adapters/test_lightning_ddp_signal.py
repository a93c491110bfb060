"""SIGTERM under torch.distributed: every rank saves a checkpoint and stops at the same step, and
the ledger reads checkpoint, then stop (``source: "signal"``), as it does in one process.

Real 2-rank runs on CPU (gloo): Lightning ``strategy="ddp"`` (``examples/lightning_digits.py``;
Lightning starts rank 1 from rank 0's process) and a bare DDP loop under torchrun
(``examples/ddp_bare.py``, with ``checkpoint_on_signal``). The signal goes to rank 0's process
alone once the ranks train; waits are on conditions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from adapter_helpers import ENV, EXAMPLES, read_jsonl

from hotcb import HotKernel
from hotcb.ledger import checkpoint_path
from hotcb.testing import read_ledger, wait_for

torch = pytest.importorskip("torch")


def _start(argv: list[str]) -> subprocess.Popen[str]:
    # a session of its own: a failed test ends every rank (Lightning's rank 1 is rank 0's child)
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
    )


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _training(proc: subprocess.Popen[str], trace: Path, steps: int) -> bool:
    """Rank 0 has traced ``steps`` steps (raises when the trainer ended before)."""
    if proc.poll() is not None:
        raise AssertionError(f"the trainer exited early:\n{proc.communicate()[1][-3000:]}")
    rows = read_jsonl(trace)
    return bool(rows) and rows[-1]["step"] >= steps


def _signal_entries(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The signal's two ledger entries, in ledger order: a checkpoint, then a stop."""
    entries = [e for e in read_ledger(run_dir) if e.get("source") == "signal"]
    assert [(e["op"], e["decision"]) for e in entries] == [
        ("checkpoint", "applied"),
        ("stop", "applied"),
    ], entries
    ck, stop = entries
    assert ck["seq"] < stop["seq"] and ck["step"] == stop["step"]
    assert ck["reason"] == stop["reason"] == "SIGTERM received"
    assert {ck["rank"], stop["rank"]} == {0}
    return ck, stop


def _both_ranks_stopped_at(traces: Path, step: int) -> None:
    rows0 = read_jsonl(traces / "trace_rank0.jsonl")
    rows1 = read_jsonl(traces / "trace_rank1.jsonl")
    assert [r["step"] for r in rows0] == [r["step"] for r in rows1]
    for rows in (rows0, rows1):  # nothing trained after the checkpoint, on either rank
        assert rows[-1]["step"] == step and rows[-1]["stop"]
        assert not any(r["stop"] for r in rows[:-1])


def _status(run_dir: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "hotcb", "--dir", os.fspath(run_dir), "status"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("world_size", [1, 2])
def test_under_ddp_the_callback_sets_lightnings_sigterm_handler_aside(
    tmp_path: Path, world_size: int
) -> None:
    """Lightning registers its SIGTERM handler (chaining hotcb's) after ``setup``; under DDP
    the callback puts hotcb's back alone when training starts, and teardown restores the one
    from before ``fit``. In one process Lightning's stays."""
    pytest.importorskip("lightning.pytorch")
    from hotcb.adapters.lightning import HotCBLightning

    before = signal.getsignal(signal.SIGTERM)
    kernel = HotKernel(tmp_path / "run")
    callback = HotCBLightning(kernel)
    trainer = SimpleNamespace(world_size=world_size, global_step=0)
    lightnings: list[int] = []
    try:
        callback.setup(trainer, None, "fit")
        ours = signal.getsignal(signal.SIGTERM)
        assert callable(ours) and ours != before

        def lightning_handler(signum: int, frame: Any) -> None:
            lightnings.append(signum)
            ours(signum, frame)

        signal.signal(signal.SIGTERM, lightning_handler)
        callback.on_sanity_check_start(trainer, None)
        callback.on_train_start(trainer, None)
        installed = signal.getsignal(signal.SIGTERM)
        assert installed == (ours if world_size > 1 else lightning_handler)
        installed(signal.SIGTERM, None)  # what the signal would do
        assert kernel.signal_pending
        assert lightnings == ([] if world_size > 1 else [signal.SIGTERM])
        signal.signal(signal.SIGTERM, ours)  # as Lightning's teardown leaves it
        callback.teardown(trainer, None, "fit")
        assert signal.getsignal(signal.SIGTERM) == before
    finally:
        signal.signal(signal.SIGTERM, before)
        kernel.close()


@pytest.mark.slow
def test_lightning_ddp_saves_and_stops_every_rank_at_one_step_on_sigterm(tmp_path: Path) -> None:
    """Lightning's own SIGTERM handling raises on every rank right after the batch the signal
    came in (before the ranks agree on the commands): under DDP hotcb's handler is the only one
    while fit trains, so the checkpoint and the stop land on every rank and fit ends normally."""
    pytest.importorskip("lightning.pytorch")
    run_dir, traces = tmp_path / "run", tmp_path / "traces"
    argv = [sys.executable, os.fspath(EXAMPLES / "lightning_digits.py"), "--devices", "2"]
    argv += ["--strategy", "ddp", "--run-dir", os.fspath(run_dir), "--steps", "3000"]
    argv += ["--step-delay", "0.02", "--val-every", "1000", "--trace-dir", os.fspath(traces)]
    proc = _start(argv)
    try:
        trace0 = traces / "trace_rank0.jsonl"
        wait_for(lambda: _training(proc, trace0, 5), 180, what="DDP training steps")
        proc.send_signal(signal.SIGTERM)  # rank 0 only (Lightning's main process)
        out, err = proc.communicate(timeout=180)
    finally:
        _end(proc)
    assert proc.returncode == 0, err[-3000:]
    ck, _ = _signal_entries(run_dir)
    path = checkpoint_path(ck, run_dir)
    assert ck["checkpoint"] == os.path.join("checkpoints", f"hotcb-step{ck['step']}.ckpt")
    assert path is not None and os.path.isfile(path)
    assert torch.load(path, weights_only=False)["global_step"] == ck["step"]
    _both_ranks_stopped_at(traces, ck["step"])
    # fit() ended normally: no SIGTERMException under DDP
    assert "SIGTERM: stopped" not in out and f"done at step {ck['step']}" in out, out
    status = _status(run_dir)
    assert f"stopped at step {ck['step']}" in status and "crashed" not in status, status


WRAPPER = r"""
import functools, os, sys
examples, pids = sys.argv.pop(1), sys.argv.pop(1)
sys.path.insert(0, examples)
import ddp_bare
from hotcb import HotKernel
ddp_bare.HotKernel = functools.partial(HotKernel, checkpoint_on_signal=True)
with open(os.path.join(pids, "pid_rank" + os.environ["RANK"]), "w") as f:
    f.write(str(os.getpid()))
ddp_bare.main()
"""


def _ddp_bare(tmp_path: Path, run_dir: Path, traces: Path, pids: Path) -> list[str]:
    """torchrun's argv for ``ddp_bare.py`` on two ranks with ``checkpoint_on_signal``; each
    rank writes its pid to ``pids/pid_rank<N>``."""
    pids.mkdir()
    wrapper = tmp_path / "ddp_bare_on_signal.py"
    wrapper.write_text(WRAPPER)
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    argv += [os.fspath(wrapper), os.fspath(EXAMPLES), os.fspath(pids)]
    argv += ["--run-dir", os.fspath(run_dir), "--steps", "100000", "--step-delay", "0.01"]
    return [*argv, "--debounce", "3", "--trace-dir", os.fspath(traces)]


@pytest.mark.slow
def test_bare_ddp_loop_under_torchrun_ledgers_checkpoint_then_stop_on_sigterm(
    tmp_path: Path,
) -> None:
    """Under DDP the signal's commands reach every rank in one batch; the checkpoint is saved
    before the stop is applied, so the ledger reads as in one process."""
    run_dir, traces, pids = tmp_path / "run", tmp_path / "traces", tmp_path / "pids"
    argv = _ddp_bare(tmp_path, run_dir, traces, pids)
    proc = _start(argv)
    try:
        wait_for(lambda: _training(proc, traces / "trace_rank0.jsonl", 5), 180, what="steps")
        os.kill(int((pids / "pid_rank0").read_text()), signal.SIGTERM)
        out, err = proc.communicate(timeout=180)
    finally:
        _end(proc)
    assert proc.returncode == 0, err[-3000:]
    ck, _stop = _signal_entries(run_dir)
    # at a poll step rank 0 chose for both ranks: not a multiple of --debounce 3 (an idle run
    # spaces its polls by the poll interval in steps: 0, 5, 8, 11 in a loaded CI run), but one
    # both ranks stopped at (below)
    path = checkpoint_path(ck, run_dir)
    assert ck["checkpoint"] == f"checkpoint_{ck['step']}.pt"
    assert path is not None and os.path.isfile(path)
    _both_ranks_stopped_at(traces, ck["step"])
    assert f"done at step {ck['step']}" in out


@pytest.mark.slow
def test_a_sigterm_that_reached_rank_1_alone_does_not_make_a_later_ctrl_c_kill_it(
    tmp_path: Path,
) -> None:
    """Rank 1 left a SIGTERM of its own to rank 0, as the docs say; the Ctrl-C that later
    reached every rank counted on rank 1 as the second signal and killed it at once, so rank 0's
    checkpoint met a closed connection and the run read ``crashed`` with no checkpoint."""
    run_dir, traces, pids = tmp_path / "run", tmp_path / "traces", tmp_path / "pids"
    argv = _ddp_bare(tmp_path, run_dir, traces, pids)
    proc = subprocess.Popen(  # Ctrl-C as in a terminal, whatever the shell running the tests does
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        wait_for(lambda: _training(proc, traces / "trace_rank0.jsonl", 5), 180, what="steps")
        os.kill(int((pids / "pid_rank1").read_text()), signal.SIGTERM)
        at = read_jsonl(traces / "trace_rank0.jsonl")[-1]["step"]
        # well past the safe point where rank 1 left it to rank 0
        wait_for(lambda: _training(proc, traces / "trace_rank1.jsonl", at + 20), 180, what="steps")
        for rank in (0, 1):  # the person's Ctrl-C: every rank gets it
            os.kill(int((pids / f"pid_rank{rank}").read_text()), signal.SIGINT)
        _out, err = proc.communicate(timeout=180)
    finally:
        _end(proc)
    assert proc.returncode == 0, err[-3000:]
    entries = [e for e in read_ledger(run_dir) if e.get("source") == "signal"]
    assert [(e["op"], e["decision"], e["reason"]) for e in entries] == [
        ("checkpoint", "applied", "SIGINT received"),
        ("stop", "applied", "SIGINT received"),
    ], entries
    path = checkpoint_path(entries[0], run_dir)
    assert path is not None and os.path.isfile(path)
    _both_ranks_stopped_at(traces, entries[0]["step"])
    assert "SIGTERM on rank 1: left to rank 0" in err
    assert f"stopped at step {entries[0]['step']}" in _status(run_dir)
