"""torch.distributed: a callback that fails on one rank only changes the callbacks of every rank,
at one step, and the ledger says on which rank and why.

The trainer is ``examples/ddp_bare.py`` under torchrun (2 CPU ranks, gloo) in a real
subprocess; this test is the controller in another process. Each rank traces its loaded
callbacks (and whether each is enabled) per step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import ENV, EXAMPLES, read_jsonl

from hotcb import HotClient
from hotcb.ledger import LedgerView
from hotcb.testing import read_ledger, wait_for

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

CALLBACKS = '''
import torch
import torch.distributed as dist


class FailsOnRank1:
    """Raises in handle() on rank 1 only (a rank-local OOM, a file missing on one host)."""

    def handle(self, event, env):
        if dist.get_rank() == 1:
            raise RuntimeError("rank-1-only failure")


class InitFailsOnRank1:
    def __init__(self):
        if dist.get_rank() == 1:
            raise ValueError("cannot construct on rank 1")

    def handle(self, event, env):
        pass


class MeanLoss:
    """Averages the loss over the ranks at every step (a collective); on rank 1 its fifth
    call raises once, after the collective (a flaky write of the result)."""

    def __init__(self):
        self.n = 0

    def handle(self, event, env):
        self.n += 1
        t = torch.tensor([float(env["metrics"]["loss"])])
        dist.all_reduce(t)
        if dist.get_rank() == 1 and self.n == 5:
            raise RuntimeError("transient error on rank 1")
'''


class Trainer:
    """``ddp_bare.py`` under torchrun with two ranks, tracing each step per rank."""

    def __init__(self, tmp_path: Path) -> None:
        self.run_dir, self.traces = tmp_path / "run", tmp_path / "traces"
        self.callbacks = tmp_path / "rankcb.py"
        self.callbacks.write_text(CALLBACKS)
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        argv += ["--nproc-per-node", "2", os.fspath(EXAMPLES / "ddp_bare.py")]
        argv += ["--run-dir", os.fspath(self.run_dir), "--steps", "6000"]
        argv += ["--step-delay", "0.01", "--trace-dir", os.fspath(self.traces)]
        self.proc = subprocess.Popen(  # its own process group: kill() ends the ranks too
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
            start_new_session=True,
        )  # fmt: skip
        self.client = HotClient(self.run_dir, source="test", validate=False)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"ddp trainer exited:\n{self.proc.communicate()[1][-3000:]}")

    def last_step(self, rank: int = 0) -> int:
        self.alive()
        rows = read_jsonl(self.traces / f"trace_rank{rank}.jsonl")
        return rows[-1]["step"] if rows else -1

    def entry(self, match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The first ledger entry that ``match``es, once the trainer has written it."""

        def found() -> dict[str, Any] | None:
            self.alive()
            return next((e for e in read_ledger(self.run_dir) if match(e)), None)

        result: dict[str, Any] = wait_for(found, 60, what=what)
        return result

    def past(self, step: int) -> None:
        """Both ranks have traced ``step`` and a few more."""
        for rank in (0, 1):
            wait_for(lambda r=rank: self.last_step(r) >= step + 3, 60, what=f"step {step + 3}")

    def stop(self) -> tuple[list[dict[str, Any]], str]:
        """Stop the run; rank 0's trace (the same as rank 1's, step by step) and stderr."""
        self.client.stop()
        _out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err[-3000:]
        rows0 = read_jsonl(self.traces / "trace_rank0.jsonl")
        rows1 = read_jsonl(self.traces / "trace_rank1.jsonl")
        assert rows0 and len(rows0) == len(rows1)
        for a, b in zip(rows0, rows1, strict=True):
            assert a == b, f"ranks diverged at step {a['step']}"
        return rows0, err

    def kill(self) -> None:
        """End torchrun and the ranks it started (a rank that torchrun left behind trains
        on)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.returncode is None:
            self.proc.communicate()


@pytest.fixture
def trainer(tmp_path: Path) -> Iterator[Trainer]:
    t = Trainer(tmp_path)
    try:
        wait_for(lambda: t.last_step() >= 0, 120, what="first DDP step")
        yield t
    finally:
        t.kill()


def _callbacks(row: dict[str, Any]) -> dict[str, bool]:
    """The callbacks loaded at a traced step: id -> enabled."""
    cbs = row["modules"].get("cb", {}).get("callbacks", [])
    return {c["id"]: c["enabled"] for c in cbs}


def _disabled_at_one_step(rows: list[dict[str, Any]], ident: str, step: int) -> None:
    by_step = {r["step"]: r for r in rows}
    assert _callbacks(by_step[step - 1])[ident] is True
    assert _callbacks(by_step[step])[ident] is False
    assert all(_callbacks(r)[ident] is False for r in rows if r["step"] >= step)


def _error_of(ident: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("op") == "callback_error" and e.get("id") == ident


def test_a_callback_that_raises_on_one_rank_is_disabled_on_every_rank(trainer: Trainer) -> None:
    cid = trainer.client.cb_load("a", file=os.fspath(trainer.callbacks), symbol="FailsOnRank1")
    loaded = trainer.client.wait(cid, 60)
    assert loaded["decision"] == "applied"
    err = trainer.entry(_error_of("a"), "the callback_error of a")
    trainer.past(err["step"])
    rows, _ = trainer.stop()

    assert err["ranks"] == [1] and err["auto_disabled"] is True
    assert "RuntimeError: rank-1-only failure on rank 1" in err["error"]
    assert err["changes"] == {"enabled": {"old": True, "new": False}}
    assert err["step"] > loaded["step"] and err["error_step"] >= loaded["step"]
    _disabled_at_one_step(rows, "a", err["step"])  # on both ranks: the traces are equal
    (listed,) = LedgerView.read(trainer.run_dir / "hotcb.applied.jsonl").callback_list()
    assert listed["state"] == "disabled" and "on rank 1" in listed["last_error"]


def test_a_callback_whose_constructor_raises_on_one_rank_is_loaded_on_none(
    trainer: Trainer,
) -> None:
    argv = [sys.executable, "-m", "hotcb", "--dir", os.fspath(trainer.run_dir), "cb", "load",
            "c", "--file", os.fspath(trainer.callbacks), "--symbol", "InitFailsOnRank1",
            "--wait", "--timeout", "60"]  # fmt: skip
    said = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=120)
    gone = trainer.entry(lambda e: e.get("id") == "c" and e.get("ranks"), "c's settlement")
    cid = gone["load_cmd_id"]
    (loaded,) = [e for e in read_ledger(trainer.run_dir) if e.get("cmd_id") == cid]
    trainer.past(gone["step"])
    rows, _ = trainer.stop()

    # --wait printed rank 0's "applied", exit 0: the load that was undone on every rank
    assert said.returncode == 1, said.stdout + said.stderr
    applied, unloaded = said.stdout.splitlines()
    assert "cb load c -> applied" in applied
    assert "cb unload c -> applied" in unloaded and "the load failed on rank 1" in unloaded

    assert loaded["decision"] == "applied"
    assert gone["op"] == "unload" and gone["decision"] == "applied"
    assert gone["step"] == loaded["step"]  # settled at the poll that loaded it
    assert gone["ranks"] == [1] and gone["load_cmd_id"] == cid
    assert "the load failed on rank 1" in gone["error"]
    assert "ValueError: cannot construct on rank 1" in gone["error"]
    assert all("c" not in _callbacks(r) for r in rows)  # never active, on any rank
    assert LedgerView.read(trainer.run_dir / "hotcb.applied.jsonl").callback_list() == []


def test_a_collective_callback_that_raises_once_on_one_rank_does_not_kill_training(
    trainer: Trainer,
) -> None:
    cid = trainer.client.cb_load("m", file=os.fspath(trainer.callbacks), symbol="MeanLoss")
    loaded = trainer.client.wait(cid, 60)
    assert loaded["decision"] == "applied"
    err = trainer.entry(_error_of("m"), "the callback_error of m")
    trainer.past(err["step"] + 20)  # the ranks train on together, no collective mismatch
    rows, stderr = trainer.stop()

    assert "mismatch" not in stderr
    assert err["ranks"] == [1] and err["auto_disabled"] is True
    assert "transient error on rank 1" in err["error"]
    _disabled_at_one_step(rows, "m", err["step"])
