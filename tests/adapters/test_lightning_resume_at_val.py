"""A Lightning run resumed from a checkpoint saved at a step that validates: what was due at
that step's validation (a replayed recipe's entry at ``val_epoch_end``) lands at that step in
the resumed run too, before its first batch (examples/lightning_digits.py, real Trainer)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from adapter_helpers import load_example, read_jsonl

from hotcb import HotClient

pytest.importorskip("lightning.pytorch")
LIT = load_example("lightning_digits")

RECIPE = [
    {"v": 1, "kind": "hotcb.recipe", "run": {}},
    {"v": 1, "at": {"step": 50, "event": "val_epoch_end"}, "module": "loss", "op": "set_params",
     "id": None, "params": {"l2": 0.001}, "target": None, "init": None, "enabled": None,
     "cmd_id": "V1"},
]  # fmt: skip


def test_a_resume_from_a_validating_step_applies_its_validation_changes_at_that_step(
    tmp_path: Path,
) -> None:
    """The checkpoint is saved at the batch's end, before that step's validation, which
    Lightning does not run again on resume: the entry due there waited for the next safe
    point, after batch 51 had trained with the old weight."""
    run = os.fspath(tmp_path / "run")
    recipe = tmp_path / "recipe.jsonl"
    recipe.write_text("".join(json.dumps(r) + "\n" for r in RECIPE))
    client = HotClient(run)
    client.freeze("replay", recipe_path=os.fspath(recipe))
    client.checkpoint(at_step=50)
    argv = ["--run-dir", run, "--steps", "60", "--step-delay", "0", "--val-every", "50"]
    LIT.main(argv)
    ledger = read_jsonl(os.path.join(run, "hotcb.applied.jsonl"))
    (saved,) = [e for e in ledger if e["op"] == "checkpoint" and e["decision"] == "applied"]
    assert saved["step"] == 50
    LIT.main([*argv, "--resume", os.path.join(run, saved["checkpoint"])])
    replayed = [(e["step"], e["event"]) for e in read_jsonl(os.path.join(run, "hotcb.applied.jsonl"))
                if e.get("source") == "recipe" and e["module"] == "loss"]  # fmt: skip
    assert replayed == [(50, "val_epoch_end"), (50, "val_epoch_end")], replayed


def test_a_validation_after_a_micro_batch_does_not_record_the_steps_loss_again(
    tmp_path: Path,
) -> None:
    """With gradient accumulation, a validation that comes after a micro-batch (47 batches an
    epoch, accumulated by 2) carried that micro-batch's ``train_loss``: steps 30, 40, … had two
    different training losses in hotcb.metrics.jsonl."""
    run = os.fspath(tmp_path / "run")
    LIT.main(["--run-dir", run, "--steps", "50", "--step-delay", "0", "--accumulate", "2",
              "--val-every", "20"])  # fmt: skip
    rows = read_jsonl(os.path.join(run, "hotcb.metrics.jsonl"))
    vals = [r for r in rows if "val_loss" in r["metrics"]]
    assert len(vals) >= 3, [r["step"] for r in vals]
    seen: dict[int, int] = {}
    for r in rows:
        if "train_loss" in r["metrics"]:
            seen[r["step"]] = seen.get(r["step"], 0) + 1
    assert all(n == 1 for n in seen.values()), {s: n for s, n in seen.items() if n > 1}
    assert {r["step"] for r in vals} <= set(seen)  # each validated step has its train loss
