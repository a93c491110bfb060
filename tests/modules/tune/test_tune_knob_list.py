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
