"""A proposal accepted while the autopilot reads a NaN the run logged before the accepted cut
landed: that NaN is the trouble the cut deals with, not a new one. On a loaded machine the
rule proposed a second x0.1 cut on it (the accepted one had not landed yet), and that second
proposal held the knob, so the plateau rule's cut waited behind it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from hotcb import HotKernel
from hotcb.autopilot.engine import Autopilot, decide, proposals


def test_a_nan_from_before_the_accepted_cut_landed_is_not_proposed_again(tmp_path: Path) -> None:
    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    pilot = Autopilot(run, mode="suggest")

    def train(steps: range, nan_at: set[int]) -> None:
        for step in steps:
            loss = math.nan if step in nan_at else 1.0
            kernel.apply({"step": step, "optimizer": opt, "metrics": {"loss": loss}})

    train(range(0, 11), {10})
    (first,) = [r for r in pilot.step() if r["kind"] == "proposal"]
    assert first["rule"] == "nan_cut_lr"
    train(range(11, 161), {160})  # past the rule's cooldown, the lr still high: NaN again
    decide(run, first["id"], accept=True)  # the cut is sent; the run has not taken it yet
    said = pilot.step()  # reads the NaN at step 160, logged before the cut
    assert not [r for r in said if r["kind"] == "proposal"], said
    (skip,) = [r for r in said if r["kind"] == "skipped"]
    assert skip["rule"] == "nan_cut_lr" and first["id"] in skip["reason"], skip

    train(range(161, 171), set())  # the cut lands at step 161
    assert opt.param_groups[0]["lr"] == 0.001
    pilot.step()
    assert [p["id"] for p in proposals(run) if p["state"] == "pending"] == []

    train(range(171, 400), {300})  # a NaN after the cut is new trouble: proposed
    (again,) = [r for r in pilot.step() if r["kind"] == "proposal"]
    assert again["rule"] == "nan_cut_lr" and again["id"] != first["id"]
    kernel.close()
