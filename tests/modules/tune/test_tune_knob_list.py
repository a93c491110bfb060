"""A tuner recipe's knob the run does not have is refused with the run's knobs listed: the
numeric actuators only, the ones a search space can move (``betas``, a tuple, was listed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hotcb import HotClient, HotKernel, loss_actuators, mutable_state
from hotcb.modules.tune import RecipeError


def test_its_knobs_are_the_numeric_actuators(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0, metrics_collector=False,
                       mutable_state=mutable_state(loss_actuators({"ce_weight": 1.0})))  # fmt: skip
    kernel.apply({"step": 0, "optimizer": opt})  # publishes betas (tuple), beta1, beta2, lr, …
    kernel.close()
    recipe = tmp_path / "space.yaml"
    recipe.write_text(
        "space:\n  - {key: dropout, module: custom, mode: set, low: 0.0, high: 0.5}\n"
    )
    with pytest.raises(RecipeError) as caught:
        HotClient(run).tune_enable(recipe=os.fspath(recipe))
    said = str(caught.value)
    assert "line 2: custom.dropout: the run has no actuator 'dropout'" in said
    assert "(its knobs: beta1, beta2, ce_weight, lr, weight_decay)" in said
    assert "betas" not in said  # a tuple: not a knob a search space can move


def test_a_recipe_sent_before_the_run_started_is_checked_by_the_run(tmp_path: Path) -> None:
    """``hotcb launch --tune-recipe`` sends the enable before the run has published its
    knobs: a recipe with a knob the run lacks was taken, and the tuner left that knob out with
    no word in the ledger (`tune status` warned only once a trial was asked for). The run now
    refuses it as `tune enable` on a started run does: every problem, with its line."""
    import torch

    from hotcb.testing import read_ledger

    run = os.fspath(tmp_path / "run")
    os.makedirs(run)
    (Path(run) / "space.yaml").write_text(
        "space:\n  - {key: lr, module: opt, low: 0.5, high: 2.0}\n"
        "  - {key: ce, module: loss, mode: set, low: 0.5, high: 2.0, log: false}\n"
    )
    HotClient(run).tune_enable("active", recipe="space.yaml")  # nothing published to check
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    kernel = HotKernel(run, poll_interval_sec=0, metrics_collector=False,
                       mutable_state=mutable_state(loss_actuators({"ce_weight": 1.0})))  # fmt: skip
    kernel.apply({"step": 0, "optimizer": opt})
    kernel.close()
    (enable,) = [e for e in read_ledger(run) if e.get("op") == "enable"]
    assert enable["decision"] == "rejected", enable
    assert (
        "line 3: loss.ce: the run has no actuator 'ce'; did you mean 'ce_weight'?"
        in (enable["error"])
    )
    assert HotClient(run).tune_status()["mode"] == "off"
