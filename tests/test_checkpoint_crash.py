"""A kill -9 while the loop saves a checkpoint that a command asked for loses no command.

The save calls ``kernel.state_dict()`` (as documented), which writes the ledger's queued
entries. A ``set`` sent right after ``checkpoint`` (one poll) had its entry written then, with a
cursor past the checkpoint's line, while the checkpoint's entry waited for the save to
return: killed during the save, a restart read on from that cursor and the checkpoint command
was never applied or ledgered (``HotClient.wait`` never returned). Two checkpoints in one poll
gave the first the second's cursor, and a restart called the commands file replaced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hotcb import HotClient
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow

TRAINER = """\
import json, os, sys, time
from hotcb import HotKernel, loss_actuators, mutable_state

run, gate, resume = sys.argv[1], sys.argv[2], sys.argv[3:]
weights = {"w": 1.0}
kernel = HotKernel(run, mutable_state=mutable_state(loss_actuators(weights)),
                   poll_interval_sec=0.0)
step = 0
if resume:
    with open(resume[0]) as f:
        saved = json.load(f)
    kernel.load_state_dict(saved["hotcb"])
    step = saved["step"]

def save(path=None):
    state = {"step": step, "hotcb": kernel.state_dict()}
    out = os.path.join(run, f"ck_{step}.json")
    with open(out + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(out + ".tmp", out)
    open(os.path.join(run, f"saving_{step}"), "w").close()
    while not os.path.exists(gate):  # a big checkpoint still being written: killed here
        time.sleep(0.01)
    return out

while not kernel.stop_requested and step < 100000:
    if os.path.exists(os.path.join(run, "go")) or resume or step == 0:
        step += 1
        kernel.apply({"step": step, "save_checkpoint": save, "metrics": {"w": weights["w"]}})
        if step == 1:  # step 1's poll is over: what is sent now is read by a later one
            open(os.path.join(run, "stepped"), "w").close()
    time.sleep(0.01)
kernel.close()
"""


def _start(tmp: Path, run: str, *resume: str) -> subprocess.Popen[str]:
    script = tmp / "train.py"
    script.write_text(TRAINER)
    gate = os.fspath(tmp / "gate")
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    return subprocess.Popen([sys.executable, os.fspath(script), run, gate, *resume],
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def _kill_while_saving(tmp: Path, run: str, send: Any) -> tuple[list[str], str]:
    """Start the trainer, let it take step 1, send the commands (one poll reads them all),
    kill -9 it while it saves the first checkpoint; the ids sent and the saved state file."""
    proc = _start(tmp, run)
    try:
        wait_for(lambda: os.path.exists(os.path.join(run, "stepped")), 120,
                 what="the trainer's first step")  # fmt: skip
        ids = send(HotClient(run))
        Path(run, "go").touch()
        saving = wait_for(lambda: sorted(Path(run).glob("saving_*")), 120, what="the save")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    step = saving[0].name.split("_")[1]
    return ids, os.path.join(run, f"ck_{step}.json")


def _entries(run: str, cmd_id: str) -> list[dict[str, Any]]:
    return [e for e in read_ledger(run) if e.get("cmd_id") == cmd_id]


def _finish(proc: subprocess.Popen[str], run: str) -> None:
    HotClient(run).stop()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]


def test_a_restart_applies_a_checkpoint_killed_during_its_save(tmp_path: Path) -> None:
    run = os.fspath(tmp_path / "run")
    ids, _ = _kill_while_saving(tmp_path, run, lambda c: [c.checkpoint(), c.loss(w=2.0)])
    check, weight = ids
    assert not _entries(run, weight)  # nothing after the checkpoint reached the file
    Path(tmp_path, "gate").touch()  # the next life's saves finish at once
    proc = _start(tmp_path, run)  # no checkpoint to resume from: a restart
    try:
        wait_for(lambda: _entries(run, check) and _entries(run, weight), 120,
                 what="both commands in the ledger")  # fmt: skip
        assert HotClient(run).wait(check, timeout=60)["decision"] == "applied"
        (c,), (w,) = _entries(run, check), _entries(run, weight)
        assert c["seq"] < w["seq"] and c["cursor"] < w["cursor"]  # in the order sent
        assert c["checkpoint"] and os.path.isfile(os.path.join(run, c["checkpoint"]))
        assert not [e for e in read_ledger(run) if e["op"] == "cursor_reset"]
    finally:
        _finish(proc, run)


def test_two_checkpoints_in_one_poll_each_keep_their_own_cursor(tmp_path: Path) -> None:
    run = os.fspath(tmp_path / "run")
    ids, _ = _kill_while_saving(tmp_path, run, lambda c: [c.checkpoint(), c.checkpoint()])
    Path(tmp_path, "gate").touch()
    proc = _start(tmp_path, run)
    try:
        wait_for(lambda: all(_entries(run, i) for i in ids), 120, what="both checkpoints")
        first, second = (_entries(run, i) for i in ids)
        assert len(first) == 1 and len(second) == 1
        assert first[0]["cursor"] < second[0]["cursor"]
        # a restart read on after what the ledger held: no "commands file replaced", no
        # re-read of the whole file
        assert not [e for e in read_ledger(run) if e["op"] == "cursor_reset"]
    finally:
        _finish(proc, run)


def test_a_resume_from_the_checkpoint_being_saved_ledgers_its_command(tmp_path: Path) -> None:
    """The state file was complete when the process died: the run resumed from it writes the
    checkpoint command's entry (the save that made the state) and the set sent after it, once."""
    run = os.fspath(tmp_path / "run")
    ids, state = _kill_while_saving(tmp_path, run, lambda c: [c.checkpoint(), c.loss(w=2.0)])
    check, weight = ids
    Path(tmp_path, "gate").touch()
    proc = _start(tmp_path, run, state)
    try:
        assert HotClient(run).wait(check, timeout=120)["decision"] == "applied"
        wait_for(lambda: _entries(run, weight), 120, what="the set's entry")
        (c,), (w,) = _entries(run, check), _entries(run, weight)
        assert c["checkpoint_note"].startswith("saved; the run that resumed from it")
        assert w["changes"] == {"w": {"old": 1.0, "new": 2.0}}
        assert json.loads(Path(state).read_text())["hotcb"]["seq"] == w["seq"]
        # `hotcb log` says the save happened (it read "the loop was asked to save one")
        log = subprocess.run([sys.executable, "-m", "hotcb", "--dir", run, "log"],
                             capture_output=True, text=True, timeout=60).stdout  # fmt: skip
        (line,) = [ln for ln in log.splitlines() if "checkpoint" in ln]
        assert line.endswith("applied (saved; the run that resumed from it wrote this entry)")
    finally:
        _finish(proc, run)


def test_a_resume_from_the_first_of_several_checkpoints_at_one_step_adds_no_copies(
    tmp_path: Path,
) -> None:
    """Three checkpoints asked for at one safe point, the run resumed from the first: its
    state holds the later two as "not saved in that life", and the resume wrote them again
    as `noop` beside the outcomes their process had written."""
    from hotcb import HotKernel

    run = os.fspath(tmp_path / "run")
    states: list[dict[str, Any]] = []
    kernel = HotKernel(run, poll_interval_sec=0)

    def save(path: Any = None) -> str:
        states.append(kernel.state_dict())
        return f"ck{len(states)}.pt"

    kernel.apply({"step": 0, "save_checkpoint": save})
    client = HotClient(run, source="test")
    ckpts = [client.checkpoint() for _ in range(3)]
    kernel.apply({"step": 1, "save_checkpoint": save})
    assert len(states) == 3  # (that process dies here, without close())

    again = HotKernel(run, poll_interval_sec=0)
    again.load_state_dict(states[0])
    again.apply({"step": 2})
    again.close()
    for cmd_id in ckpts:
        assert [e["decision"] for e in read_ledger(run) if e["cmd_id"] == cmd_id] == ["applied"]
