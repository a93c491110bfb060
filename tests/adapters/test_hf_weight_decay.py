"""``set weight_decay`` on the HF Trainer's param groups at its default ``weight_decay=0``:
the weights, then the biases and LayerNorm weights, which keep no decay (a real Trainer on a
one-layer BERT built from a config, examples/hf_tiny.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import load_example, read_jsonl

from hotcb import HotClient


def test_weight_decay_set_on_the_hf_trainers_groups_leaves_biases_and_norms_without(
    tmp_path: Path,
) -> None:
    """The HF Trainer's groups at its default ``weight_decay=0``: the weights, then the
    biases and LayerNorm weights. ``set weight_decay`` gave both groups the value."""
    pytest.importorskip("transformers")
    from transformers import TrainerCallback

    seen: list[list[float]] = []

    class Groups(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            seen.append([g["weight_decay"] for g in kw["optimizer"].param_groups])

    run_dir = os.fspath(tmp_path / "run")
    os.makedirs(run_dir)
    HotClient(run_dir).opt(weight_decay=0.1)  # lands at the first step
    trainer, kernel = load_example("hf_tiny").build(run_dir, 3, extra_callbacks=[Groups()])
    assert trainer.args.weight_decay == 0.0
    trainer.train()
    kernel.close()
    groups = trainer.optimizer.param_groups
    assert len(groups) == 2 and all(p.ndim == 1 for p in groups[1]["params"])
    assert seen[-1] == [0.1, 0.0], seen
    (entry,) = [
        e
        for e in read_jsonl(os.path.join(run_dir, "hotcb.applied.jsonl"))
        if e["op"] == "set_params"
    ]
    assert entry["decision"] == "applied"
    assert set(entry["changes"]) == {"weight_decay", "weight_decay@group0"}, entry["changes"]
