"""A Ctrl-C (a notebook's interrupt) that lands inside ``kernel.apply()``: in a callback, or in
a command being handled. What the safe point applied is in the ledger before the interrupt goes
on up, the commands of the batch it cut short are applied by the next poll, and a kernel made
again on the run (the cell run again) applies nothing a second time."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from hotcb import HotClient, HotKernel
from hotcb.testing import read_ledger

# a Ctrl-C while the callback runs (a slow eval): raised when the loop asks for it, so that it
# lands at a known safe point
INTERRUPTS = """
class Interrupts:
    def handle(self, event, env):
        if env.get("ctrl_c"):
            raise KeyboardInterrupt
"""

# a Ctrl-C while a callback is loaded (its import, its constructor), the first time only
INTERRUPTED_LOAD = """
import os

class Slow:
    def __init__(self, flag):
        if not os.path.exists(flag):
            open(flag, "w").close()
            raise KeyboardInterrupt

    def handle(self, event, env):
        pass
"""


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)


def _entries(run_dir: str, cmd_id: str) -> list[dict[str, Any]]:
    return [e for e in read_ledger(run_dir) if e.get("cmd_id") == cmd_id]


def test_a_ctrl_c_in_a_callback_leaves_the_change_it_followed_ledgered_once(
    run_dir: str, write_cb: Any
) -> None:
    opt = _optimizer()
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    client = HotClient(run_dir, source="test")
    loaded = client.cb_load("int", file=write_cb(INTERRUPTS), symbol="Interrupts")
    for step in range(3):
        kernel.apply({"step": step, "optimizer": opt})
    assert _entries(run_dir, loaded)[0]["decision"] == "applied"
    lr = client.set_params("opt", {"lr": 0.05})
    with pytest.raises(
        KeyboardInterrupt
    ):  # the change is applied at this safe point, then the callback is interrupted
        kernel.apply({"step": 3, "optimizer": opt, "ctrl_c": True})
    assert opt.param_groups[0]["lr"] == 0.05
    # in the ledger already: `hotcb status` and `--wait` see it, not "not read by the run"
    (entry,) = _entries(run_dir, lr)
    assert entry["decision"] == "applied" and entry["step"] == 3

    # the cell run again: a new kernel on the run, the same optimizer
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    for step in range(3):
        kernel.apply({"step": step, "optimizer": opt})
    kernel.close()
    assert len(_entries(run_dir, lr)) == 1  # not applied a second time
    assert opt.param_groups[0]["lr"] == 0.05


def test_a_ctrl_c_while_a_command_is_handled_loses_none_of_its_batch(
    run_dir: str, tmp_path: Any, write_cb: Any
) -> None:
    opt = _optimizer()
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    kernel.apply({"step": 0, "optimizer": opt})
    client = HotClient(run_dir, source="test")
    flag = os.fspath(tmp_path / "interrupted_once")
    slow = client.cb_load("slow", file=write_cb(INTERRUPTED_LOAD, "slow.py"), symbol="Slow",
                          init={"flag": flag})  # fmt: skip
    lr = client.set_params("opt", {"lr": 0.05})  # read in the same batch, after the load
    with pytest.raises(KeyboardInterrupt):  # it goes on up to the loop
        kernel.apply({"step": 1, "optimizer": opt})
    assert os.path.exists(flag) and opt.param_groups[0]["lr"] == 0.1
    assert not _entries(run_dir, slow) and not _entries(run_dir, lr)

    kernel.apply({"step": 2, "optimizer": opt})  # the loop run again, on the same kernel
    (load,) = _entries(run_dir, slow)
    assert load["decision"] == "applied", load  # its load cut short, it is loaded now
    (entry,) = _entries(run_dir, lr)
    assert entry["decision"] == "applied" and entry["step"] == 2
    assert opt.param_groups[0]["lr"] == 0.05
    kernel.close()


def test_a_ctrl_c_after_a_checkpoint_in_the_batch_fails_it_and_keeps_the_rest_ledgered(
    run_dir: str, tmp_path: Any, write_cb: Any
) -> None:
    """A checkpoint's entry holds the later entries back from the file until its save is
    done: an interrupt before the save left them all unwritten, and the cell's new kernel
    applied the relative changes after it a second time."""
    opt = _optimizer()
    saved: list[str] = []
    env = {"optimizer": opt, "save_checkpoint": lambda path=None: saved.append("x") or "ck.pt"}
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    kernel.apply({"step": 0, **env})
    client = HotClient(run_dir, source="test")
    first = client.set_params("opt", {"lr": 0.11}, relative_to={"lr": 0.1})
    ckpt = client.checkpoint()
    second = client.set_params("opt", {"lr": 0.121}, relative_to={"lr": 0.11})
    slow = client.cb_load("slow", file=write_cb(INTERRUPTED_LOAD, "slow.py"), symbol="Slow",
                          init={"flag": os.fspath(tmp_path / "once")})  # fmt: skip
    with pytest.raises(KeyboardInterrupt):  # it goes on up to the loop
        kernel.apply({"step": 1, **env})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.121) and not saved
    (failed,) = _entries(run_dir, ckpt)
    assert failed["decision"] == "failed" and "no checkpoint was saved" in failed["error"]
    assert [e["decision"] for c in (first, second) for e in _entries(run_dir, c)] == [
        "applied", "applied"
    ]  # fmt: skip

    kernel = HotKernel(run_dir, poll_interval_sec=0)  # the cell run again
    kernel.apply({"step": 0, **env})
    kernel.close()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.121)  # not x1.1 once more
    assert [len(_entries(run_dir, c)) for c in (first, ckpt, second, slow)] == [1, 1, 1, 1]


def test_a_ctrl_c_in_the_save_fails_the_checkpoint(run_dir: str) -> None:
    """Interrupted in the user's save, the checkpoint was ledgered `applied` with no file."""
    opt = _optimizer()

    def save(path: Any = None) -> str:
        raise KeyboardInterrupt

    kernel = HotKernel(run_dir, poll_interval_sec=0)
    kernel.apply({"step": 0, "optimizer": opt})
    client = HotClient(run_dir, source="test")
    before, ckpt, after = client.opt(lr=0.2), client.checkpoint(), client.opt(lr=0.3)
    with pytest.raises(KeyboardInterrupt):  # it goes on up to the loop
        kernel.apply({"step": 1, "optimizer": opt, "save_checkpoint": save})
    got = {c: [e["decision"] for e in _entries(run_dir, c)] for c in (before, ckpt, after)}
    assert got == {before: ["applied"], ckpt: ["failed"], after: ["applied"]}
    (failed,) = _entries(run_dir, ckpt)
    assert failed["error"] == (
        "KeyboardInterrupt during the save: its file may be missing or incomplete; send it again"
    )
    assert opt.param_groups[0]["lr"] == 0.3
    kernel.close()


@pytest.mark.parametrize("where", ["after the write", "part way"])
def test_a_ctrl_c_in_the_ledger_write_leaves_each_entry_once(
    run_dir: str, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """An interrupt once the batch's bytes were in the file (releasing the lock) had the batch
    written again by the flush on the way out; one part way left half a line and the batch
    again after it."""
    import fcntl

    from hotcb import jsonl

    opt = _optimizer()
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    kernel.apply({"step": 0, "optimizer": opt})
    sent = [HotClient(run_dir, source="test").opt(lr=lr) for lr in (0.2, 0.3)]
    real_flock, real_write = fcntl.flock, os.write
    armed = [True]

    def flock(fd: int, how: int) -> None:
        real_flock(fd, how)
        if how == fcntl.LOCK_UN and armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    def write(fd: int, data: Any) -> int:
        if armed[0] and len(data) > 20:
            armed[0] = False
            real_write(fd, bytes(data[: len(data) // 2]))
            raise KeyboardInterrupt
        return real_write(fd, data)

    if where == "after the write":
        monkeypatch.setattr(jsonl.fcntl, "flock", flock)
    else:
        monkeypatch.setattr(jsonl.os, "write", write)
    with pytest.raises(KeyboardInterrupt):  # it goes on up to the loop
        kernel.apply({"step": 1, "optimizer": opt})
    monkeypatch.undo()
    assert not armed[0]
    kernel.apply({"step": 2, "optimizer": opt})
    kernel.close()
    with open(os.path.join(run_dir, "hotcb.applied.jsonl")) as f:
        lines = f.read().splitlines()
    assert all(line.startswith("{") and line.endswith("}") for line in lines), lines
    assert [len(_entries(run_dir, c)) for c in sent] == [1, 1]
    seqs = [e["seq"] for e in read_ledger(run_dir)]
    assert seqs == sorted(set(seqs))
