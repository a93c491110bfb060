"""Each autopilot round judges every point read since the round before, not only the newest,
for the detectors of one point's event (spike, grad_explosion): a one-step loss spike between
two rounds (a round every second, hundreds of steps apart) was never the newest point, so
``spike_checkpoint`` practically never fired on a real run. What they detect follows the
metrics, not how often the autopilot happened to look."""

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


@pytest.mark.parametrize("every", [1, 10, 100])
def test_a_one_step_gradient_norm_jump_between_two_rounds_is_detected(
    tmp_path: Path, every: int
) -> None:
    noise = random.Random(0)

    def metrics(step: int) -> dict[str, float]:
        return {"loss": 1.0, "grad_norm": 40.0 if step == 305 else 1.0 + 0.1 * noise.random()}

    found = detections(os.fspath(tmp_path / "r"), metrics, 600, every)
    assert ("grad_explosion_cut_lr", 305) in found, found


def test_a_trend_detector_judges_the_newest_window_alone(tmp_path: Path) -> None:
    """A noisy per-batch loss judged at every point would trip the trend detectors (divergence
    on the training loss) far more often than at one point a round: they judge the newest
    window. A plateau the run left before the round is not acted on (its trouble is gone)."""

    def metrics(step: int) -> dict[str, float]:
        if step % 10:
            return {"loss": 1.0}
        return {"loss": 1.0, "val_loss": 1.0 if step <= 200 else 1.0 - 0.001 * (step - 200)}

    found = detections(os.fspath(tmp_path / "r"), metrics, 600, 300)
    assert not [f for f in found if f[0] == "plateau_cut_lr" and f[1] < 300], found


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
