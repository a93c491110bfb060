"""The step a finished Lightning run records as its last (``hotcb status``: "finished at step
N"): with ``metrics_every`` > 1 a batch end with nothing due skips ``apply()``, and
``kernel.close()`` wrote the step of the last one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import load_example

from hotcb import HotClient, HotKernel, jsonl
from hotcb.runfiles import RunPaths

pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("torch")

from hotcb.adapters.lightning import HotCBLightning  # noqa: E402

EX = load_example("lightning_digits")


def test_a_run_whose_last_steps_had_nothing_due_finishes_at_its_last_step(
    tmp_path: Path, cli: Any
) -> None:
    """Metrics every 3rd step and no poll due after the first: apply() runs at steps 1, 3 and 6,
    and the run records step 8, where fit() stopped."""
    run_dir = os.fspath(tmp_path / "run")
    kernel = HotKernel(run_dir, poll_interval_sec=3600.0)
    trainer = pl.Trainer(
        callbacks=[HotCBLightning(kernel, metrics_every=3)], max_steps=8, accelerator="cpu",
        devices=1, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, logger=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(EX.DigitsModule(), EX.loaders()[0])
    kernel.close()

    assert trainer.global_step == 8
    meta = jsonl.read_json(RunPaths(run_dir).run_meta, {})
    assert meta["ended"]["step"] == 8, meta
    assert HotClient(run_dir).run_over() == "finished at step 8"
    out = cli(run_dir, "status").stdout
    assert "finished at step 8" in out, out
