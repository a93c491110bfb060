"""Resuming into a new run directory from another run's checkpoint (``hotcb --dir NEW launch
--resume-from OLD/ckpt …``): the checkpoint's cursor counts bytes of OLD's commands file, which
NEW's file does not hold, so the first read starts NEW's file over and ledgers ``kernel
cursor_reset``. Its note said "the commands file was truncated or replaced", though nothing
was; it now says what happened. (The cursor itself is kept: a directory given a copy of OLD's
commands file resumes from it, tests/test_branch.py.)"""

from __future__ import annotations

import os
from typing import Any

from hotcb.testing import StepDriver

#: What the note says when a checkpoint's cursor is not a point of the run's commands file.
NOTE = "does not hold the cursor of the checkpoint this run resumed from"


def _old_checkpoint(tmp_path: Any) -> dict[str, Any]:
    """The kernel state of a run (OLD) that applied six commands, at step 9."""
    with StepDriver(os.fspath(tmp_path / "old"), weights={"aux": 0.0}) as old:
        for i in range(6):
            old.steps(actions={old.step + 1: lambda c, i=i: c.loss(aux=0.1 * (i + 1))})
        old.steps(9 - old.step)
        state = old.kernel.state_dict()
    assert state["cursor"] > 0 and state["seq"] > 0
    return state


def _resets(drv: StepDriver) -> list[dict[str, Any]]:
    return [e for e in drv.ledger() if e["module"] == "kernel" and e["op"] == "cursor_reset"]


def test_a_new_directory_s_reset_note_says_the_checkpoint_came_from_elsewhere(
    tmp_path: Any, cli: Any
) -> None:
    """NEW's commands file (one command, shorter than OLD's cursor) is read from its start; the
    note names the checkpoint's cursor, not a truncation, and the command applies once."""
    state = _old_checkpoint(tmp_path)
    with StepDriver(os.fspath(tmp_path / "new"), weights={"aux": 0.0}) as new:
        new.kernel.load_state_dict(state)
        new.step = state["step"]
        cid = new.client.loss(aux=0.5)
        new.steps(2)
        assert new.only(cid)["decision"] == "applied" and new.weights["aux"] == 0.5
        (reset,) = _resets(new)
        said = reset["error"]
        assert NOTE in said and f"(byte {state['cursor']})" in said, said
        assert "another run directory" in said and "truncated" not in said, said
    log = cli(os.fspath(tmp_path / "new"), "log").stdout
    assert NOTE in log, log


def test_a_run_that_ledgered_already_says_the_same(tmp_path: Any) -> None:
    """A run with a life of its own, resumed from OLD's checkpoint: the same note."""
    state = _old_checkpoint(tmp_path)
    with StepDriver(os.fspath(tmp_path / "new"), weights={"aux": 0.0}) as first:
        first.steps(actions={0: lambda c: c.loss(aux=0.2)})  # NEW's own life: one entry
    with StepDriver(os.fspath(tmp_path / "new"), weights={"aux": 0.0}) as new:
        new.kernel.load_state_dict(state)
        new.step = state["step"]
        cid = new.client.loss(aux=0.5)
        new.steps(2)
        assert new.only(cid)["decision"] == "applied"
        (reset,) = _resets(new)
        assert NOTE in reset["error"], reset


def test_a_file_truncated_in_a_running_life_keeps_its_note(tmp_path: Any) -> None:
    """The note of a truncation with no checkpoint involved is unchanged."""
    with StepDriver(os.fspath(tmp_path / "run"), weights={"aux": 0.0}) as drv:
        drv.steps(2, actions={0: lambda c: c.loss(aux=0.2), 1: lambda c: c.loss(aux=0.3)})
        open(drv.paths.commands, "wb").close()  # truncated: one line now, where two were read
        cid = drv.client.loss(aux=0.5)
        drv.steps()
        assert drv.only(cid)["decision"] == "applied"
        (reset,) = _resets(drv)
        assert reset["error"] == (
            "the commands file was truncated or replaced; reading it from the start"
        )
