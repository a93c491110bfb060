"""The step a finished HF run records as its last (``hotcb status``: "finished at step N",
``HotClient.run_over()``, the CLI's "the run finished at step N"): ``kernel.close()`` writes the
step of the last ``apply()``, and ``on_step_end`` skips ``apply()`` at steps with nothing due,
so a fast run said "finished at step 297" after 300 steps. A real Trainer on a tiny BERT built
from a config (nothing downloaded)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import load_example

from hotcb import HotClient, HotKernel, jsonl
from hotcb.runfiles import RunPaths

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


EX = load_example("hf_tiny")


def test_a_run_whose_last_steps_had_nothing_due_finishes_at_its_last_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Any
) -> None:
    """No poll falls due after the first step (a fast run between two polls): apply() runs at
    step 1 only, and the run still records step 6, where the Trainer stopped."""
    run_dir = os.fspath(tmp_path / "run")
    monkeypatch.setattr(EX, "HotKernel", functools.partial(HotKernel, poll_interval_sec=3600.0))
    trainer, kernel = EX.build(run_dir, 6)
    applied: list[int] = []
    apply = kernel.apply

    def spy_apply(env: Any, events: Any, **kw: Any) -> None:
        applied.append(env["step"])
        apply(env, events, **kw)

    monkeypatch.setattr(kernel, "apply", spy_apply)
    trainer.train()
    kernel.close()

    assert trainer.state.global_step == 6 and applied == [1]  # the last steps skipped apply()
    meta = jsonl.read_json(RunPaths(run_dir).run_meta, {})
    assert meta["ended"]["step"] == 6, meta
    assert HotClient(run_dir).run_over() == "finished at step 6"
    out = cli(run_dir, "status").stdout
    assert "finished at step 6" in out, out
