"""A checkpoint saved at a safe point holds everything of that step: the values its commands
set, and the state of the callbacks that handled its events (a real kernel, a callback loaded
from a file, the checkpoint asked for with ``hotcb checkpoint --at-step``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hotcb import HotClient, HotKernel

COUNTER = """\
class Count:
    def __init__(self):
        self.seen = []

    def handle(self, event, env):
        self.seen.append(env["step"])

    def state_dict(self):
        return {"seen": list(self.seen)}

    def load_state_dict(self, state):
        self.seen = list(state["seen"])
"""


def test_a_checkpoint_holds_the_callbacks_state_after_that_steps_events(tmp_path: Path) -> None:
    """The checkpoint was saved before the step's events reached the callbacks: a callback
    that had handled step 10 came back from it without step 10, and the resumed run (from
    step 11) never gave it that event again."""
    run = os.fspath(tmp_path / "run")
    (tmp_path / "count.py").write_text(COUNTER)
    client = HotClient(run, create=True)
    client.cb_load("count", file=os.fspath(tmp_path / "count.py"), symbol="Count")
    client.checkpoint(at_step=10)
    kernel = HotKernel(run, poll_interval_sec=0.0)
    saved: dict[int, Any] = {}

    def save(step: int) -> Any:
        return lambda path=None: saved.setdefault(step, kernel.state_dict()) and None

    for step in range(15):
        kernel.apply({"step": step, "save_checkpoint": save(step)})
    kernel.close()
    (state,) = [c["state"] for c in saved[10]["modules"]["cb"]["callbacks"] if c["id"] == "count"]
    assert state["seen"][-1] == 10, state
