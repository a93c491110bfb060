"""PyTorch Lightning on scikit-learn's digits, steered live with HotCBLightning.

    python examples/lightning_digits.py --run-dir runs/lightning --steps 3000

In another terminal, while it trains:

    hotcb --dir runs/lightning status
    hotcb --dir runs/lightning set lr=3e-3 --wait    # survives the LambdaLR scheduler
    hotcb --dir runs/lightning set l2=1e-4           # a loss weight in the LightningModule
    hotcb --dir runs/lightning checkpoint            # trainer.save_checkpoint(...)
    hotcb --dir runs/lightning pause                 # ... then: hotcb --dir runs/lightning resume
    hotcb --dir runs/lightning extend --steps 1000   # trainer.fit_loop.epoch_loop.max_steps
    hotcb --dir runs/lightning stop                  # trainer.should_stop = True

Ctrl-C or SIGTERM saves a checkpoint (checkpoints/hotcb-step<N>.ckpt) at the next step and
stops; in one process Lightning answers SIGTERM by raising SIGTERMException out of fit(), caught
below. Under DDP (--devices 2) every rank saves and stops at the same step and fit() returns.

Resume from a checkpoint (hotcb's state comes back with it); `--resume` defaults to
`$HOTCB_RESUME_FROM`, and `--run-dir` to `$HOTCB_RUN_DIR`, which `hotcb launch` sets, so the
command `hotcb branch` prints runs the branch in its own directory:

    python examples/lightning_digits.py --run-dir runs/lightning --resume runs/lightning/checkpoints/hotcb-step200.ckpt
    hotcb --dir runs/lightning-b launch --resume-from runs/lightning/checkpoints/hotcb-step200.ckpt -- python examples/lightning_digits.py

Multi-process DDP on CPU (every rank applies each command at the same step):

    python examples/lightning_digits.py --run-dir runs/lightning-ddp --devices 2 --strategy ddp
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hotcb import HotKernel, loss_actuators
from hotcb.adapters.lightning import HotCBLightning
from hotcb.testing import TinyMLP, digits


class DigitsModule(pl.LightningModule):
    """TinyMLP with AdamW + LambdaLR; ``loss_weights`` is exposed through ``mutable_state``."""

    def __init__(self, lr: float = 1e-2, step_delay: float = 0.0) -> None:
        super().__init__()
        self.net = TinyMLP(seed=0)
        self.lr = lr
        self.step_delay = step_delay
        self.loss_weights = {"ce": 1.0, "l2": 0.0}
        # the kernel finds this attribute on env["model"] and registers the actuators
        self.mutable_state = loss_actuators(self.loss_weights)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        ce = nn.functional.cross_entropy(self.net(x), y)
        l2 = sum(p.pow(2).sum() for p in self.net.parameters())
        loss = self.loss_weights["ce"] * ce + self.loss_weights["l2"] * l2
        self.log("train_loss", loss)
        if self.step_delay:
            time.sleep(self.step_delay)  # slow it down enough to steer by hand
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.01 * s))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Trace(pl.Callback):
    """``--trace-dir``: per rank, one JSON line per step (lr, loss weights) and final weights,
    to check that every rank applied each command at the same step."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def _path(self, trainer: pl.Trainer, name: str) -> str:
        return os.path.join(self.folder, f"{name}_rank{trainer.global_rank}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        row = {
            "step": trainer.global_step,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "weights": pl_module.loss_weights,
            "stop": trainer.should_stop,
        }
        with open(self._path(trainer, "trace") + ".jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    def on_train_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        torch.save(pl_module.state_dict(), self._path(trainer, "weights") + ".pt")


def loaders(batch: int = 32) -> tuple[DataLoader, DataLoader]:
    x, y = digits()
    train = TensorDataset(x[:1500], y[:1500])
    val = TensorDataset(x[1500:], y[1500:])
    g = torch.Generator().manual_seed(0)
    return DataLoader(train, batch_size=batch, shuffle=True, generator=g), DataLoader(
        val, batch_size=256
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--run-dir",
        default=os.environ.get("HOTCB_RUN_DIR") or "runs/lightning",
        help="run directory (default: $HOTCB_RUN_DIR, which hotcb launch sets, else runs/lightning)",
    )
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--step-delay", type=float, default=0.01)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--val-every", type=int, default=100, help="validate every N batches")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="auto")
    ap.add_argument(
        "--resume",
        default=os.environ.get("HOTCB_RESUME_FROM") or None,
        help="a Lightning checkpoint to resume from (default: $HOTCB_RESUME_FROM)",
    )
    ap.add_argument("--trace-dir", help="per-rank trace of lr and loss weights (for tests)")
    args = ap.parse_args(argv)

    pl.seed_everything(0, verbose=False)
    kernel = HotKernel(args.run_dir)
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        accumulate_grad_batches=args.accumulate,
        val_check_interval=args.val_every,
        check_val_every_n_epoch=None,
        callbacks=[HotCBLightning(kernel), *([Trace(args.trace_dir)] if args.trace_dir else [])],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        default_root_dir=args.run_dir,
    )
    train, val = loaders()
    try:
        trainer.fit(DigitsModule(step_delay=args.step_delay), train, val, ckpt_path=args.resume)
    except SIGTERMException:  # hotcb saved a checkpoint at the step the signal came in
        print(f"SIGTERM: stopped at step {trainer.global_step}", flush=True)
    kernel.close()
    if trainer.is_global_zero:
        print(f"done at step {trainer.global_step}", flush=True)


if __name__ == "__main__":
    main()
