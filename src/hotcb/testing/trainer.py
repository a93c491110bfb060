"""A real, deterministic training process for tests, demos and benchmarks.

    python -m hotcb.testing.trainer --run-dir RUN --steps 500 --step-delay 0.01

Trains TinyMLP on digits with AdamW (or SGD), optional LR scheduler, loss weights
``{"ce": 1.0, "l2": 0.0}`` exposed as loss actuators, and calls ``kernel.apply`` after every
optimizer step. Per-step values go to ``--trace`` (JSON lines: step, lr, weights, loss) so a
test can check exactly when a change took effect. Checkpoints hold model, optimizer,
scheduler, RNG and kernel state, so ``--resume`` continues bit for bit.

It trains while fewer than ``kernel.max_steps`` steps are done (``--steps`` until a
``hotcb extend`` moves it), evaluates on held-out digits when ``kernel.evaluate_requested``
(``val_loss`` at that step, event ``val_epoch_end``), and with ``--checkpoint-on-signal`` saves
a checkpoint and stops on SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO


def _lr_jump(text: str | None) -> tuple[int, float]:
    """``--lr-jump STEP:FACTOR`` as ``(step, factor)``; ``(-1, 1.0)`` without one."""
    if not text:
        return -1, 1.0
    at, _, factor = text.partition(":")
    return int(at), float(factor)


def _jump_lr(opt: Any, step: int, jump: tuple[int, float]) -> None:
    if step == jump[0]:
        for group in opt.param_groups:
            group["lr"] *= jump[1]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m hotcb.testing.trainer")
    run_dir = os.environ.get("HOTCB_RUN_DIR") or None  # under `hotcb launch`
    ap.add_argument("--run-dir", required=run_dir is None, default=run_dir,
                    help="the run directory (default: $HOTCB_RUN_DIR, which 'hotcb launch' "
                    "sets)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    ap.add_argument("--sched", choices=("none", "step", "cosine", "lambda"), default="none")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--step-delay", type=float, default=0.0, help="sleep per step (seconds)")
    ap.add_argument("--poll-interval", type=float, default=0.0, help="kernel poll_interval_sec")
    ap.add_argument("--trace", help="write per-step JSON lines (step, lr, weights, loss) here")
    ap.add_argument("--save-weights", help="torch.save the final model state_dict here")
    ap.add_argument(
        "--checkpoint-at",
        type=int,
        action="append",
        default=[],
        help="save a checkpoint after this step (repeatable)",
    )
    ap.add_argument("--checkpoint-dir", help="where checkpoints go (default: the run dir)")
    ap.add_argument(
        "--resume",
        default=os.environ.get("HOTCB_RESUME_FROM") or None,
        help="checkpoint file to resume from (default: $HOTCB_RESUME_FROM, which "
        "'hotcb launch --resume-from' sets)",
    )
    ap.add_argument("--ready-file", help="touch this file after the first step")
    ap.add_argument("--no-code-load", action="store_true", help="HotKernel(allow_code_load=False)")
    ap.add_argument("--allowed-root", action="append", default=[],
                    help="HotKernel(allowed_roots=[...]) (repeatable)")  # fmt: skip
    ap.add_argument(
        "--replay-commands",
        action="store_true",
        help="apply the commands file again although the ledger is gone (HotKernel(replay_commands))",
    )
    ap.add_argument("--metrics-every", type=int, default=1)
    ap.add_argument(
        "--lr-jump",
        metavar="STEP:FACTOR",
        help="multiply the lr by FACTOR at STEP, outside hotcb (a schedule gone wrong: the run "
        "starts to diverge)",
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: a tiny model gains nothing more)"
    )
    ap.add_argument(
        "--checkpoint-on-signal",
        action="store_true",
        help="HotKernel(checkpoint_on_signal=True): save a checkpoint and stop on SIGTERM/SIGINT",
    )
    return ap


def _optimizer(args: argparse.Namespace, model: Any) -> Any:
    import torch

    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)


def _scheduler(args: argparse.Namespace, opt: Any) -> Any:
    """The ``--sched`` LR scheduler of ``opt``, or None."""
    import torch

    if args.sched == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)
    if args.sched == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, args.steps))
    if args.sched == "lambda":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.01 * s))
    return None


def _resume(
    path: str,
    model: Any,
    opt: Any,
    sched: Any,
    weights: dict[str, float],
    gen: Any,
    kernel: Any,
) -> int:
    """Restore everything a checkpoint holds; return the step to continue from."""
    import torch

    ck = torch.load(path, weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    if sched is not None and ck.get("scheduler"):
        sched.load_state_dict(ck["scheduler"])
    weights.update(ck["weights"])
    gen.set_state(ck["generator"])
    torch.set_rng_state(ck["torch_rng"])
    kernel.load_state_dict(ck["hotcb"])
    return int(ck["step"]) + 1


def _trace(trace: TextIO, step: int, lr: float, weights: dict[str, float], loss: float) -> None:
    """One line of the per-step trace, flushed so a test sees it at once."""
    trace.write(json.dumps({"step": step, "lr": lr, "weights": dict(weights), "loss": loss}) + "\n")
    trace.flush()


def _optimize(
    model: Any, opt: Any, sched: Any, weights: dict[str, float], inp: Any, target: Any
) -> tuple[Any, Any]:
    """One optimizer (and scheduler) step on a batch; the weighted loss and its ``ce`` term."""
    from torch import nn

    logits = model(inp)
    ce = nn.functional.cross_entropy(logits, target)
    l2 = sum(p.pow(2).sum() for p in model.parameters())
    loss = weights["ce"] * ce + weights["l2"] * l2
    opt.zero_grad()
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return loss, ce


def _evaluate_if_asked(kernel: Any, step: int, model: Any, x: Any, y: Any) -> None:
    """``hotcb evaluate``: cross-entropy on the held-out tail of the digits (the last 297) as
    ``val_loss`` at this step, a safe point with event ``val_epoch_end``."""
    if not kernel.evaluate_requested:
        return
    import torch
    from torch import nn

    kernel.evaluate_requested = False
    with torch.no_grad():
        val_loss = float(nn.functional.cross_entropy(model(x[1500:]), y[1500:]))
    kernel.apply({"step": step, "metrics": {"val_loss": val_loss}}, ("val_epoch_end",))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from hotcb import HotKernel, loss_actuators, mutable_state
    from hotcb.testing import TinyMLP, digits

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y = digits()
    model = TinyMLP(seed=args.seed)
    opt = _optimizer(args, model)
    sched = _scheduler(args, opt)
    weights = {"ce": 1.0, "l2": 0.0}
    kernel = HotKernel(
        args.run_dir,
        poll_interval_sec=args.poll_interval,
        mutable_state=mutable_state(loss_actuators(weights)),
        allow_code_load=not args.no_code_load,
        allowed_roots=args.allowed_root,
        replay_commands=args.replay_commands,
        checkpoint_on_signal=args.checkpoint_on_signal,
    )
    gen = torch.Generator().manual_seed(args.seed)
    start = 0
    if args.resume:
        start = _resume(args.resume, model, opt, sched, weights, gen, kernel)
    trace = open(args.trace, "a") if args.trace else None  # noqa: SIM115
    ck_dir = args.checkpoint_dir or args.run_dir

    def save_checkpoint(path: str | None = None, step: int = 0) -> str:
        path = path or os.path.join(ck_dir, f"ckpt_{step}.pt")
        torch.save(
            {
                "step": step,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "weights": dict(weights),
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "hotcb": kernel.state_dict(),
            },
            path,
        )
        return path

    jump = _lr_jump(args.lr_jump)
    kernel.max_steps = kernel.max_steps or args.steps  # a resumed run may have been extended
    step = start - 1
    while step + 1 < (kernel.max_steps or 0):  # moved by `hotcb extend`
        step += 1
        _jump_lr(opt, step, jump)
        idx = torch.randint(0, len(x), (args.batch,), generator=gen)
        loss, ce = _optimize(model, opt, sched, weights, x[idx], y[idx])
        env = {
            "framework": "torch",
            "step": step,
            "max_steps": args.steps,
            "model": model,
            "optimizer": opt,
            "scheduler": sched,
            "loss": loss,
            "save_checkpoint": lambda path=None, _s=step: save_checkpoint(path, _s),
        }
        if step % args.metrics_every == 0:
            env["metrics"] = {"loss": loss.item(), "ce": ce.item(), "lr": opt.param_groups[0]["lr"]}
        kernel.apply(env)
        _evaluate_if_asked(kernel, step, model, x, y)
        if trace is not None:
            _trace(trace, step, opt.param_groups[0]["lr"], weights, loss.item())
        if step in args.checkpoint_at:
            save_checkpoint(None, step)
        if args.ready_file and step == start:
            open(args.ready_file, "w").close()
        if kernel.stop_requested:
            print(f"stopped at step {step}", flush=True)
            break
        if args.step_delay:
            time.sleep(args.step_delay)
    kernel.close()
    if trace is not None:
        trace.close()
    if args.save_weights:
        torch.save(model.state_dict(), args.save_weights)
    print(f"done at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
