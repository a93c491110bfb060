"""``SystemExit`` from a callback's code (``sys.exit()``, argparse's ``parse_args()`` at import,
as in a training script) is the callback's error, not the end of the training: a ``failed``
ledger entry saying what happened, and a restart does not apply the command again."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from hotcb import HotClient
from hotcb.testing import read_ledger, wait_for

SCRIPT = """
import argparse
ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=1)
args = ap.parse_args()  # module level, as in a training script: parses the trainer's argv

class P:
    def handle(self, event, env):
        pass
"""

EXITS_IN_HANDLE = """
import sys

class Quits:
    def handle(self, event, env):
        sys.exit(3)
"""


@pytest.mark.slow
def test_sys_exit_in_a_callback_does_not_end_a_live_run_nor_its_restart(
    start_trainer, run_dir, tmp_path, write_cb
):
    script = write_cb(SCRIPT, "script_cb.py")
    quits = write_cb(EXITS_IN_HANDLE, "quits.py")
    trace = os.fspath(tmp_path / "trace.jsonl")
    trainer = start_trainer(run_dir, trace, steps=100_000, step_delay=0.01, no_code_load=False)
    trainer.wait_step(2)
    client = HotClient(run_dir, source="test")

    load = client.wait(client.cb_load("script", file=script, symbol="P"), timeout=30)
    assert load["decision"] == "failed", load
    err = load["error"]
    assert "SystemExit" in err and "sys.exit(2)" in err and "while it was imported" in err
    assert "unrecognized arguments" in err and "parse_args()" in err  # what argparse printed
    trainer.wait_step(load["step"] + 5)  # the loop goes on

    bad = client.wait(client.cb_load("quits", file=quits, symbol="Quits"), timeout=30)
    assert bad["decision"] == "applied", bad
    error = wait_for(
        lambda: [e for e in read_ledger(run_dir) if e.get("op") == "callback_error"],
        30,
        what="the callback_error of quits",
    )[0]
    assert error["id"] == "quits" and error["auto_disabled"] is True
    assert "SystemExit" in error["error"] and "sys.exit(3)" in error["error"], error
    trainer.wait_step(error["step"] + 5)

    client.wait(client.stop(), timeout=30)
    rc, _, stderr = trainer.finish()
    assert rc == 0, stderr[-3000:]
    assert "hotcb" in stderr and "SystemExit" in stderr  # the output says who exited

    # a trainer started again in this directory applies nothing of it again and trains
    again = start_trainer(run_dir, trace, steps=5, no_code_load=False)
    rc, _, stderr = again.finish()
    assert rc == 0, stderr[-3000:]
    loads = [e for e in read_ledger(run_dir) if e.get("cmd_id") == load["cmd_id"]]
    assert len(loads) == 1


FILE_EXIT = """
import sys
sys.exit("no GPU here")

class P:
    def handle(self, event, env):
        pass
"""

HOOKS = """
import sys

class Hooks:
    def __init__(self, where=""):
        if where == "init":
            raise SystemExit(4)
        self.where = where

    def on_load(self, env):
        if self.where == "on_load":
            sys.exit(5)

    def on_unload(self, env):
        if self.where == "on_unload":
            sys.exit(6)

    def set_params(self, **params):
        sys.exit(7)

    def handle(self, event, env):
        pass
"""


def _do(kernel: Any, client: HotClient, cid: str, step: int) -> dict[str, Any]:
    kernel.apply({"step": step})
    return client.wait(cid, timeout=5)


def test_sys_exit_anywhere_in_a_callbacks_code_is_a_ledgered_failure(kernel_factory, write_cb):
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    path = write_cb(FILE_EXIT, "exits.py")
    entry = _do(kernel, client, client.cb_load("f", file=path, symbol="P"), 0)
    assert entry["decision"] == "failed"
    assert "sys.exit('no GPU here') while it was imported" in entry["error"], entry

    hooks = write_cb(HOOKS, "hooks.py")
    said = {"init": "sys.exit(4) while it was constructed", "on_load": "sys.exit(5) in on_load()"}
    for step, (where, text) in enumerate(said.items(), start=1):
        load = client.cb_load(where, file=hooks, symbol="Hooks", init={"where": where})
        entry = _do(kernel, client, load, step)
        assert entry["decision"] == "failed" and text in entry["error"], entry
        assert "SystemExit" in entry["error"]

    entry = _do(kernel, client, client.cb_load("h", file=hooks, symbol="Hooks"), 5)
    assert entry["decision"] == "applied", entry
    entry = _do(kernel, client, client.cb("set_params", "h", every=2), 6)
    assert entry["decision"] == "failed" and "sys.exit(7) in set_params()" in entry["error"]
    load = client.cb_load("u", file=hooks, symbol="Hooks", init={"where": "on_unload"})
    assert _do(kernel, client, load, 7)["decision"] == "applied"
    entry = _do(kernel, client, client.cb("unload", "u"), 8)
    assert entry["decision"] == "applied" and "sys.exit(6) in on_unload()" in entry["error"]
    assert kernel.module("cb").get("u") is None


SIGNALLED = """
import os
import signal

class Signalled:
    def handle(self, event, env):
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(1000):  # the handler runs between bytecodes, in here
            pass

class CtrlC:
    def handle(self, event, env):
        raise KeyboardInterrupt
"""


def test_a_signal_handlers_exit_and_ctrl_c_still_end_the_run(kernel_factory, write_cb):
    """Only the callback's own ``sys.exit`` is caught: a handler that exits on a signal that
    arrives while a callback runs (a SIGTERM handler, say), and a Ctrl-C, still end the loop."""
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    path = write_cb(SIGNALLED, "signalled.py")

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGUSR1, on_signal)
    try:
        client.cb_load("sig", file=path, symbol="Signalled")
        with pytest.raises(SystemExit) as info:
            kernel.apply({"step": 0})
        assert info.value.code == 143
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not [e for e in read_ledger(kernel.run_dir) if e.get("op") == "callback_error"]
    client.cb("unload", "sig")
    client.cb_load("ctrl_c", file=path, symbol="CtrlC")
    with pytest.raises(KeyboardInterrupt):
        kernel.apply({"step": 1})
