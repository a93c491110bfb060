"""Train a small MLP on scikit-learn's bundled digits and steer it live.

    python examples/bare_loop.py --run-dir runs/digits --steps 3000

In another terminal, while it trains:

    hotcb --dir runs/digits status
    hotcb --dir runs/digits set lr=3e-3 --wait
    hotcb --dir runs/digits set aux_weight=0.0
    hotcb --dir runs/digits set lr=1e-4 --ramp 200
    hotcb --dir runs/digits pause      # ... then: hotcb --dir runs/digits resume
    hotcb --dir runs/digits log -f
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

from hotcb import HotKernel, loss_actuators, mutable_state


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run-dir", default="runs/digits")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
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

    kernel = HotKernel(args.run_dir, mutable_state=mutable_state(loss_actuators(weights)))
    gen = torch.Generator().manual_seed(args.seed)
    print(f"training; steer with: hotcb --dir {args.run_dir} set lr=3e-3", flush=True)
    for step in range(args.steps):
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
                "model": model,
                "optimizer": optimizer,
                "scheduler": scheduler,
                "metrics": {
                    "loss": loss.item(),
                    "ce": ce.item(),
                    "acc": acc.item(),
                    "lr": optimizer.param_groups[0]["lr"],
                },
            }
        )
        if kernel.stop_requested:
            print(f"stop requested at step {step}", flush=True)
            break
        if kernel.checkpoint_requested:
            torch.save(
                {"model": model.state_dict(), "hotcb": kernel.state_dict()},
                f"{args.run_dir}/checkpoint_{step}.pt",
            )
            kernel.checkpoint_requested = False
        if args.step_delay:
            time.sleep(args.step_delay)
    kernel.close()
    print(f"done: loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    main()
