"""A loaded callback's state under the HF Trainer: saved in the checkpoint folder and back on
``train(resume_from_checkpoint=...)`` as it was, tensors included (a real Trainer on a tiny
BERT built from a config)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from adapter_helpers import load_example, read_jsonl

from hotcb import HotClient

pytest.importorskip("transformers")
EX = load_example("hf_tiny")

RUNNING_SUM = """\
import json, os
import torch

class RunningSum:
    def __init__(self, out):
        self.out, self.total = out, torch.zeros(2)

    def handle(self, event, env):
        if event == "train_step_end":
            self.total = self.total + 1.0  # a list from a JSON state would raise here
            with open(self.out, "a") as f:
                f.write(json.dumps({"step": env["step"], "total": self.total.tolist(),
                                    "tensor": isinstance(self.total, torch.Tensor)}) + "\\n")

    def state_dict(self):
        return {"total": self.total}

    def load_state_dict(self, state):
        self.total = state["total"]
"""


def test_a_callbacks_tensor_state_comes_back_a_tensor(tmp_path: Path) -> None:
    """``hotcb_state.json`` held the tensor as a list: the resumed callback raised at its first
    step and was disabled."""
    run_dir = os.fspath(tmp_path / "run")
    (tmp_path / "running_sum.py").write_text(RUNNING_SUM)
    out = os.fspath(tmp_path / "sums.jsonl")
    HotClient(run_dir, create=True).cb_load(
        "sum", file=os.fspath(tmp_path / "running_sum.py"), symbol="RunningSum", init={"out": out}
    )
    trainer, kernel = EX.build(run_dir, 6, save_steps=3)
    trainer.train()
    kernel.close()
    folder = os.path.join(run_dir, "output", "checkpoint-3")
    first = {r["step"]: r["total"] for r in read_jsonl(out)}
    os.remove(out)
    trainer, kernel = EX.build(run_dir, 6, resume_from=folder)
    trainer.train(resume_from_checkpoint=folder)
    kernel.close()
    resumed = read_jsonl(out)
    assert all(r["tensor"] for r in resumed), resumed
    assert {r["step"]: r["total"] for r in resumed} == {s: first[s] for s in (4, 5, 6)}
    problems = [e for e in read_jsonl(os.path.join(run_dir, "hotcb.applied.jsonl"))
                if e.get("module") == "cb" and e.get("decision") in ("failed", "rejected")]  # fmt: skip
    assert problems == []
