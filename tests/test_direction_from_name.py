"""A metric's direction, when none is given, follows its name (as Keras's ``mode="auto"``
does): ``--key-metric val_acc`` or ``tune enable --objective val_acc`` without ``--direction``
maximized accuracy's opposite before. The rule autopilot read a rising val_acc as a plateau
getting worse and cut the lr of a run that was learning; the tuner kept the moves that
lowered accuracy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from hotcb import HotKernel
from hotcb.autopilot.engine import Autopilot
from hotcb.metrics import guess_direction
from hotcb.modules.tune import parse_settings
from hotcb.testing import read_ledger


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("val_loss", "minimize"), ("eval/loss", "minimize"), ("perplexity", "minimize"),
        ("val_acc", "maximize"), ("val/accuracy", "maximize"), ("eval_f1", "maximize"),
        ("auroc", "maximize"), ("val_mAP", "maximize"), ("eval_bleu", "maximize"),
        ("top1_err", "minimize"), ("acc_loss", "minimize"), ("grad_norm", "minimize"),
    ],
)  # fmt: skip
def test_the_name_says_which_way_is_better(name: str, direction: str) -> None:
    assert guess_direction(name) == direction


def test_the_tuner_maximizes_an_accuracy_it_is_given_without_a_direction() -> None:
    assert parse_settings({"objective": "val_acc"}).direction == "maximize"
    assert parse_settings({}).direction == "minimize"  # val_loss
    given = {"objective": "val_acc", "direction": "minimize"}
    assert parse_settings(given).direction == "minimize"  # said: as said


def test_the_autopilot_leaves_a_rising_accuracy_alone(tmp_path: Path, cli: Any) -> None:
    """A run still learning: its loss falls, its val_acc rises by ~1.5 % per 8 evaluations.
    `--key-metric val_acc` without a direction: no plateau, no lr cut."""
    run = str(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0.0)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    pilot = Autopilot(run, mode="auto", key_metric="val_acc")
    assert pilot.direction == "maximize"
    try:
        for step in range(1, 1001):
            metrics = {"loss": 1.0 / math.sqrt(step)}
            if step % 10 == 0:
                metrics["val_acc"] = 0.5 + 0.4 * (1 - math.exp(-step / 1000))
            kernel.apply({"step": step, "optimizer": opt, "metrics": metrics})
            if step % 10 == 0:
                pilot.step()
    finally:
        kernel.close()
    acted = [e for e in read_ledger(run) if e.get("source") == "autopilot"]
    assert acted == [], acted
    assert opt.param_groups[0]["lr"] == 1e-2
    status = cli(run, "status").stdout  # hotcb status names the run's controllers
    assert "autopilot auto on val_acc (maximize), last round at step 1000" in status, status
