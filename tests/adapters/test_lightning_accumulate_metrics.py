"""Lightning with gradient accumulation: a validation after a micro-batch records the step's
training loss once (examples/lightning_digits.py, real Trainer)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from adapter_helpers import load_example, read_jsonl

pytest.importorskip("lightning.pytorch")
LIT = load_example("lightning_digits")


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
