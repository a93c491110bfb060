"""A kernel that outlives its optimizer: a notebook's training cell run again builds a new
one (a second Lightning ``fit`` with the same kernel and callback calls
``configure_optimizers`` again). ``set lr`` was ledgered applied and shown on the dashboard
while it went to the first optimizer, and the training one kept its lr."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import load_example

from hotcb import HotClient, HotKernel
from hotcb.testing import read_ledger

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from hotcb.adapters.lightning import HotCBLightning  # noqa: E402

EX = load_example("lightning_digits")


def _entries(run_dir: str, op: str) -> list[dict[str, Any]]:
    return [e for e in read_ledger(run_dir) if e.get("op") == op]


def test_a_bare_loop_run_again_with_a_new_optimizer_is_steered(tmp_path: Path) -> None:
    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0.0)  # the notebook's first cell
    client = HotClient(run)

    def train(opt: Any, steps: range) -> None:  # the training cell
        for step in steps:
            opt.zero_grad()
            kernel.apply({"step": step, "optimizer": opt, "metrics": {"loss": 1.0}})

    net = torch.nn.Linear(4, 2)
    first = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    train(first, range(0, 5))
    second = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)  # the cell run again
    cid = client.set({"lr": 0.001})
    train(second, range(5, 10))
    kernel.close()
    (done,) = [e for e in read_ledger(run) if e.get("cmd_id") in cid]
    assert done["decision"] == "applied" and done["changes"]["lr"]["new"] == 0.001
    assert second.param_groups[0]["lr"] == 0.001  # the optimizer that trains
    assert first.param_groups[0]["lr"] == 0.05
    (note,) = _entries(run, "new_optimizer")
    assert note["step"] == 5 and note["values"]["lr"] == 0.05, note
    assert "now steer it" in note["error"]
    # the file the dashboard builds its controls from shows the new optimizer's values
    client.set({"momentum": 0.5})
    kernel2 = HotKernel(run, poll_interval_sec=0.0)
    kernel2.apply({"step": 10, "optimizer": second, "metrics": {"loss": 1.0}})
    kernel2.close()
    assert second.param_groups[0]["momentum"] == 0.5


class Lrs(pl.Callback):
    """The lr the training optimizer has, per batch (after HotCBLightning)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.slow
def test_a_second_lightning_fit_with_the_same_kernel_is_steered(tmp_path: Path) -> None:
    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0.0)
    module = EX.DigitsModule(lr=0.05)
    train, _ = EX.loaders()

    def fit() -> Lrs:
        lrs = Lrs()
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=6, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, logger=False,
            num_sanity_val_steps=0, limit_val_batches=0,
            callbacks=[HotCBLightning(kernel), lrs],
        )  # fmt: skip
        trainer.fit(module, train)
        return lrs

    fit()
    cid = HotClient(run).set({"lr": 0.001})  # between the two fits: lands at the second's start
    second = fit()
    kernel.close()
    (done,) = [e for e in read_ledger(run) if e.get("cmd_id") in cid]
    assert done["decision"] == "applied", done
    assert second.lrs and all(abs(lr - 0.001) < 1e-4 for lr in second.lrs), second.lrs
    assert len(_entries(run, "new_optimizer")) == 1


@pytest.mark.slow
def test_a_second_lightning_fit_moves_the_knobs_at_its_first_poll_without_a_command(
    tmp_path: Path,
) -> None:
    """With no command to apply, the knobs stayed on the first fit's optimizer: ``hotcb
    status`` and the page showed its lr for the whole second fit, and the ledger had no
    ``new_optimizer`` note until a command came."""
    from hotcb import jsonl
    from hotcb.runfiles import RunPaths

    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0.0)
    module = EX.DigitsModule(lr=0.05)
    train, _ = EX.loaders()

    def fit() -> None:
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=6, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, logger=False,
            num_sanity_val_steps=0, limit_val_batches=0, callbacks=[HotCBLightning(kernel)],
        )  # fmt: skip
        trainer.fit(module, train)

    fit()
    module.lr = 0.003  # the second fit's configure_optimizers builds an optimizer at 0.003
    fit()
    kernel.close()
    (note,) = _entries(run, "new_optimizer")
    assert 0.0025 < note["values"]["lr"] <= 0.003, note  # (its LambdaLR may have stepped once)
    doc = jsonl.read_json(RunPaths(run).actuators, {})
    (lr,) = [a["current"] for a in doc["actuators"] if a["param_key"] == "lr"]
    assert lr < 0.003 + 1e-12  # the second optimizer's (its LambdaLR decays it), not 0.05's


class Raises(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step >= 3:
            raise RuntimeError("a bug in the training code")


@pytest.mark.slow
def test_a_fit_again_after_one_that_raised_moves_the_knobs_to_its_optimizer(
    tmp_path: Path,
) -> None:
    """The notebook's "fix the bug, fit again": the fit that raised left the run open, so the
    next fit's start did not look for a new optimizer, and status showed the dead one's lr."""
    from hotcb import jsonl
    from hotcb.runfiles import RunPaths

    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0.0)
    module = EX.DigitsModule(lr=0.05)
    train, _ = EX.loaders()

    def fit(*extra: Any) -> None:
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=6, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, logger=False,
            num_sanity_val_steps=0, limit_val_batches=0,
            callbacks=[HotCBLightning(kernel), *extra],
        )  # fmt: skip
        trainer.fit(module, train)

    with pytest.raises(RuntimeError, match="a bug in the training code"):
        fit(Raises())
    module.lr = 0.003
    fit()
    kernel.close()
    (note,) = _entries(run, "new_optimizer")
    assert 0.0025 < note["values"]["lr"] <= 0.003, note
    doc = jsonl.read_json(RunPaths(run).actuators, {})
    (lr,) = [a["current"] for a in doc["actuators"] if a["param_key"] == "lr"]
    assert lr < 0.003 + 1e-12
