"""Train a small MLP on scikit-learn's bundled digits and steer it live.

    python examples/bare_loop.py --run-dir runs/digits --steps 3000

In another terminal, while it trains:

    hotcb --dir runs/digits status
    hotcb --dir runs/digits set lr=3e-3 --wait
    hotcb --dir runs/digits set aux_weight=0.0
    hotcb --dir runs/digits set lr=1e-4 --ramp 200
    hotcb --dir runs/digits pause      # ... then: hotcb --dir runs/digits resume
    hotcb --dir runs/digits evaluate   # held-out loss at the next step (kernel.evaluate_requested)
    hotcb --dir runs/digits extend --steps 1000   # train longer (kernel.max_steps)
    hotcb --dir runs/digits log -f
    hotcb --dir runs/digits checkpoint   # saves runs/digits/checkpoint_<step>.pt

Ctrl-C (or a SIGTERM from a scheduler) saves a checkpoint and stops at the next step; press
Ctrl-C twice to stop at once.

Resume from a checkpoint (`--resume`, or `$HOTCB_RESUME_FROM`, which `hotcb launch
--resume-from` sets), or try another setting from one in a new run:

    hotcb --dir runs/digits checkpoint --at-step 1200   # a checkpoint to branch from
    hotcb --dir runs/digits branch --from 1200 --to runs/digits-lr --set lr=3e-4
    # then run the command it prints: hotcb --dir runs/digits-lr launch --resume-from ... -- ...
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

from hotcb import HotKernel, loss_actuators, mutable_state


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--run-dir",
        default=os.environ.get("HOTCB_RUN_DIR") or "runs/digits",
        help="run directory (default: $HOTCB_RUN_DIR, which hotcb launch sets, else runs/digits)",
    )
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--resume",
        default=os.environ.get("HOTCB_RESUME_FROM") or None,
        help="a checkpoint to resume from (default: $HOTCB_RESUME_FROM)",
    )
    ap.add_argument(
        "--step-delay", type=float, default=0.0, help="seconds to sleep per step (demo pacing)"
    )
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    # Loss weights live in a dict the loss reads every step; hotcb mutates it in place.
    weights = {"ce_weight": 1.0, "aux_weight": 1e-4}

    kernel = HotKernel(
        args.run_dir,
        mutable_state=mutable_state(loss_actuators(weights)),
        checkpoint_on_signal=True,  # Ctrl-C / SIGTERM: checkpoint at the next step, then stop
    )
    gen = torch.Generator().manual_seed(args.seed)
    x_val, y_val = x[1500:], y[1500:]  # held out: `hotcb evaluate` scores them
    x, y = x[:1500], y[:1500]
    # the cosine schedule keeps its horizon (--steps) when `hotcb extend` moves kernel.max_steps
    kernel.max_steps = args.steps
    step = -1

    def save_checkpoint(path: str | None = None) -> str:
        """`hotcb checkpoint` and Ctrl-C / SIGTERM call this; the ledger records the path,
        which `hotcb branch --from` and `--resume` use."""
        path = path or os.path.join(args.run_dir, f"checkpoint_{step}.pt")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # --path ckpt/x.pt
        torch.save(
            {
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": gen.get_state(),  # the data order
                "hotcb": kernel.state_dict(),  # loss weights, lr, scheduled commands, horizon
            },
            path,
        )
        return path

    if args.resume:  # the same trajectory as the run that saved it
        ckpt = torch.load(args.resume, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        gen.set_state(ckpt["generator"])
        kernel.load_state_dict(ckpt["hotcb"])
        step = ckpt["step"]
        # what the run changed at that step after the save (a checkpoint taken while paused,
        # then another change) lands now, before the next step trains, as it did then
        kernel.catch_up({"step": step, "model": model, "optimizer": optimizer,
                         "scheduler": scheduler}, ("train_step_end",))  # fmt: skip
    print(f"training; steer with: hotcb --dir {args.run_dir} set lr=3e-3", flush=True)
    try:  # close() records how the run ended, also when the loop raises (or Ctrl-C twice)
        while step + 1 < kernel.max_steps:
            step += 1
            idx = torch.randint(0, len(x), (64,), generator=gen)
            logits = model(x[idx])
            ce = nn.functional.cross_entropy(logits, y[idx])
            aux = sum(p.pow(2).sum() for p in model.parameters())  # an L2 term, weight steerable
            loss = weights["ce_weight"] * ce + weights["aux_weight"] * aux
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            acc = (logits.argmax(1) == y[idx]).float().mean()
            kernel.apply(
                {
                    "framework": "torch",
                    "step": step,
                    "max_steps": args.steps,
                    "model": model,
                    "optimizer": optimizer,
                    "scheduler": scheduler,
                    "save_checkpoint": save_checkpoint,
                    "metrics": {
                        "loss": loss.item(),
                        "ce": ce.item(),
                        "acc": acc.item(),
                        "lr": optimizer.param_groups[0]["lr"],
                    },
                }
            )
            if kernel.evaluate_requested:
                kernel.evaluate_requested = False
                with torch.no_grad():
                    val_loss = nn.functional.cross_entropy(model(x_val), y_val).item()
                metrics = {"val_loss": val_loss}
                env = {"step": step, "save_checkpoint": save_checkpoint, "metrics": metrics}
                kernel.apply(env, ("val_epoch_end",))
            if kernel.stop_requested:
                print(f"stop requested at step {step}", flush=True)
                break
            if args.step_delay:
                time.sleep(args.step_delay)
    finally:
        kernel.close()
    print(f"done: loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()
