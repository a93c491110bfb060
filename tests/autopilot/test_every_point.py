"""Each autopilot round judges every point read since the round before, not only the newest:
a one-step loss spike between two rounds (a round every second, hundreds of steps apart) was
never the newest point, so ``spike_checkpoint`` practically never fired on a real run, and a
plateau the run left between two rounds was never seen. What the autopilot detects follows the
metrics, not how often it happened to look."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from hotcb import HotKernel
from hotcb.autopilot.engine import Autopilot


def detections(run: str, metrics: Any, steps: int, every: int) -> list[tuple[str, int]]:
    """Train ``steps`` steps logging ``metrics(step)``, an autopilot round every ``every``."""
    kernel = HotKernel(run)
    pilot = Autopilot(run, mode="suggest")
    found: list[tuple[str, int]] = []
    for step in range(steps):
        kernel.apply({"step": step, "metrics": metrics(step)})
        if step % every == 0:
            found += [(r["rule"], r["step"]) for r in pilot.step() if r["kind"] == "detection"]
    kernel.close()
    return found


@pytest.mark.parametrize("every", [1, 10, 100])
def test_a_one_step_spike_between_two_rounds_is_detected(tmp_path: Path, every: int) -> None:
    noise = random.Random(0)
    loss = lambda step: {"loss": 50.0 if step == 305 else 1.0 + 0.01 * noise.random()}  # noqa: E731
    found = detections(os.fspath(tmp_path / "r"), loss, 600, every)
    assert ("spike_checkpoint", 305) in found, found


@pytest.mark.parametrize("every", [20, 150, 300])
def test_a_plateau_the_run_left_between_two_rounds_is_detected(tmp_path: Path, every: int) -> None:
    """val_loss flat until step 200, then falling: a round at step 300 saw only the fall."""

    def metrics(step: int) -> dict[str, float]:
        if step % 10:
            return {"loss": 1.0}
        return {"loss": 1.0, "val_loss": 1.0 if step <= 200 else 1.0 - 0.001 * (step - 200)}

    found = detections(os.fspath(tmp_path / "r"), metrics, 600, every)
    assert found and found[0] == ("plateau_cut_lr", 70), found


def test_the_first_round_over_a_long_history_judges_its_latest_point_alone(tmp_path: Path) -> None:
    """An autopilot started on a run that has trained for a while does not act on a spike
    long gone: its first round judges the newest point, the rounds after it what is new."""
    run = os.fspath(tmp_path / "r")
    kernel = HotKernel(run)
    for step in range(400):
        kernel.apply({"step": step, "metrics": {"loss": 50.0 if step == 100 else 1.0}})
    pilot = Autopilot(run, mode="suggest")
    first = [r for r in pilot.step() if r["kind"] == "detection"]
    for step in range(400, 500):
        kernel.apply({"step": step, "metrics": {"loss": 50.0 if step == 450 else 1.0}})
    then = [(r["rule"], r["step"]) for r in pilot.step() if r["kind"] == "detection"]
    kernel.close()
    assert first == [], first
    assert then == [("spike_checkpoint", 450)], then
