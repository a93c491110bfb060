"""A recipe recorded under the HF Trainer replays at the steps it was recorded at: a real
Trainer on a one-layer BERT built from a config (examples/hf_tiny.py, which logs every step),
commands sent for given steps, the recipe exported, and a second run frozen to replay it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from adapter_helpers import load_example, read_jsonl

from hotcb import HotClient
from hotcb.recipe import export_recipe

CHANGED = ("opt", "custom", "control")


def changes(run_dir: str) -> list[tuple[int, str, str, str]]:
    """(step, module, op, event) of every applied change of the run's ledger."""
    return [(e["step"], e["module"], e["op"], e.get("event"))
            for e in read_jsonl(os.path.join(run_dir, "hotcb.applied.jsonl"))
            if e.get("decision") == "applied" and e.get("module") in CHANGED
            and e.get("op") in ("set_params", "extend")]  # fmt: skip


def test_a_replay_under_the_hf_trainer_applies_each_change_at_its_recorded_step(
    tmp_path: Path,
) -> None:
    """At a step that logs (every step here) the adapter's safe point took no event, so a
    replayed entry waited for the next step: every change landed a step late, and an
    ``extend`` recorded at the run's last step never came."""
    pytest.importorskip("transformers")
    ex = load_example("hf_tiny")
    recorded = os.fspath(tmp_path / "recorded")
    os.makedirs(recorded)
    client = HotClient(recorded)
    client.set_params("opt", {"lr": 1e-3}, at_step=3)
    client.set_params("custom", {"max_grad_norm": 0.5}, at_step=5)
    client.send("control", "extend", params={"steps": 2}, at_step=8)
    trainer, kernel = ex.build(recorded, 8)
    trainer.train()
    kernel.close()
    assert trainer.state.global_step == 10
    want = changes(recorded)
    assert [(s, m) for s, m, _, _ in want] == [(3, "opt"), (5, "custom"), (8, "control")]

    recipe, _ = export_recipe(recorded, os.fspath(tmp_path / "recipe.jsonl"))
    replayed = os.fspath(tmp_path / "replayed")
    os.makedirs(replayed)
    HotClient(replayed).freeze("replay", recipe_path=recipe)
    trainer, kernel = ex.build(replayed, 8)
    trainer.train()
    kernel.close()
    assert changes(replayed) == want
    assert trainer.state.global_step == 10  # the extend at the last step, replayed
