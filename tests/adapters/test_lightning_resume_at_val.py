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
    sent_while_down = HotClient(run).loss(l2=0.002)
    LIT.main([*argv, "--resume", os.path.join(run, saved["checkpoint"])])
    ledger = read_jsonl(os.path.join(run, "hotcb.applied.jsonl"))
    replayed = [(e["step"], e["event"]) for e in ledger
                if e.get("source") == "recipe" and e["module"] == "loss"]  # fmt: skip
    assert replayed == [(50, "val_epoch_end"), (50, "val_epoch_end")], replayed
    # a live command is no part of the saved step: it waits for the first resumed batch
    (live,) = [e for e in ledger if e.get("cmd_id") == sent_while_down]
    assert (live["step"], live["decision"]) == (51, "ignored_freeze"), live
