"""A callback loaded with ``cb load`` sees the loss the trainer logged (docs/callbacks.md: "the
adapters hand over ``metrics``"), under both adapters: a real Trainer on a tiny model built
from a config, the callback loaded from a file through :class:`hotcb.HotClient`.

Under the HF Trainer the logs arrive in ``on_log``, after the step's safe point
(``on_step_end``; transformers 5.x: ``on_step_end`` → ``_maybe_log_save_evaluate`` →
``Trainer.log`` → ``on_log`` → evaluate → ``on_evaluate`` → ``on_save``). On a logging step
the adapter holds the step's ``train_step_end`` back until ``on_log`` and hands it over there
with the logs (``HotKernel.observe(env, events)``); the callback never saw them before.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from adapter_helpers import load_example, read_jsonl

from hotcb import HotClient, HotKernel

PROBE = '''
import json


class LossProbe:
    """One line per train_step_end: the step and the env's metrics."""

    def __init__(self, out):
        self.out = out

    def handle(self, event, env):
        if event == "train_step_end":
            metrics = {k: float(v) for k, v in env.get("metrics", {}).items()}
            with open(self.out, "a") as f:
                f.write(json.dumps({"step": env["step"], "metrics": metrics}) + "\\n")
'''


def _load_probe(tmp_path: Path, run_dir: str) -> str:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out = os.fspath(tmp_path / "seen.jsonl")
    # written before training: lands at the first safe point
    HotClient(run_dir).cb_load(
        "probe", file=os.fspath(probe), symbol="LossProbe", init={"out": out}
    )
    return out


def test_hf_callback_sees_the_loss_the_trainer_logged_at_its_step(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    ex = load_example("hf_tiny")
    run_dir = os.fspath(tmp_path / "run")
    os.makedirs(run_dir)
    out = _load_probe(tmp_path, run_dir)
    trainer, kernel = ex.build(run_dir, 4)  # logging_steps=1: a log at every step
    trainer.train()
    kernel.close()

    logged = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    assert sorted(logged) == [1, 2, 3, 4]
    seen = {row["step"]: row["metrics"] for row in read_jsonl(out)}
    assert sorted(seen) == [1, 2, 3, 4]
    for step, loss in logged.items():
        assert seen[step].get("loss") == pytest.approx(loss), (step, seen[step])
        assert "learning_rate" in seen[step] and "grad_norm" in seen[step]


def test_lightning_callback_sees_the_loss_the_module_logged_at_its_step(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from hotcb.adapters.lightning import HotCBLightning

    ex = load_example("lightning_digits")
    run_dir = os.fspath(tmp_path / "run")
    os.makedirs(run_dir)
    out = _load_probe(tmp_path, run_dir)
    losses: dict[int, float] = {}

    class Losses(pl.Callback):  # type: ignore[misc,name-defined]
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            losses[trainer.global_step] = float(trainer.callback_metrics["train_loss"])

    kernel = HotKernel(run_dir)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=4, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=[HotCBLightning(kernel), Losses()],
    )  # fmt: skip
    trainer.fit(ex.DigitsModule(), ex.loaders()[0])
    kernel.close()

    seen = {row["step"]: row["metrics"] for row in read_jsonl(out)}
    assert sorted(seen) == [1, 2, 3, 4] == sorted(losses)
    for step, loss in losses.items():
        assert seen[step]["train_loss"] == pytest.approx(loss), (step, seen[step])
        assert "lr" in seen[step]
