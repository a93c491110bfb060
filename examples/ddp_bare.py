"""DistributedDataParallel on CPU (gloo) in a bare loop, steered live from another terminal.

Under torchrun (one process per rank)::

    torchrun --nproc-per-node 2 examples/ddp_bare.py --run-dir runs/ddp --steps 5000

or without torchrun (the script spawns its own ranks)::

    python examples/ddp_bare.py --run-dir runs/ddp --nproc 2 --steps 5000

In another terminal, while it trains:

    hotcb --dir runs/ddp set lr=3e-3 --wait     # every rank applies it at the same step
    hotcb --dir runs/ddp set l2=1e-4
    hotcb --dir runs/ddp set lr=1e-4 --ramp 100
    hotcb --dir runs/ddp pause                  # all ranks wait; then: hotcb --dir runs/ddp resume
    hotcb --dir runs/ddp stop                   # all ranks leave the loop at the same step
    hotcb --dir runs/ddp checkpoint             # rank 0 saves runs/ddp/checkpoint_<step>.pt

Ctrl-C (or a SIGTERM from a scheduler, or torchrun's on Ctrl-C) saves a checkpoint on every
rank at the next agreed step, then every rank stops there; press it twice to abort at once.

`--resume CKPT` (default: `$HOTCB_RESUME_FROM`, which `hotcb launch --resume-from` and the
command `hotcb branch` prints set) continues from such a checkpoint on every rank.

Only rank 0 reads the commands file and writes the ledger; the batch of commands it read is
broadcast at each poll step (a step multiple of ``--debounce``), so every rank applies the same
change at the same step and the replicas never diverge. ``--trace-dir`` writes one JSON line per
step and rank (lr, loss weights, callbacks) so that can be checked.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hotcb import HotKernel, loss_actuators, mutable_state
from hotcb.testing import TinyMLP, digits


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--run-dir",
        default=os.environ.get("HOTCB_RUN_DIR") or "runs/ddp",
        help="run directory (default: $HOTCB_RUN_DIR, which hotcb launch sets, else runs/ddp)",
    )
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch", type=int, default=32, help="per rank")
    ap.add_argument("--debounce", type=int, default=1, help="HotKernel debounce_steps")
    ap.add_argument("--step-delay", type=float, default=0.0, help="sleep per step (seconds)")
    ap.add_argument(
        "--slow-after",
        type=int,
        default=-1,
        help="from this step on, sleep --slow-delay per step instead (the step time changes)",
    )
    ap.add_argument("--slow-delay", type=float, default=0.0)
    ap.add_argument("--nproc", type=int, default=2, help="ranks to spawn when not under torchrun")
    ap.add_argument("--trace-dir", help="write trace_rank{R}.jsonl (one line per step) here")
    ap.add_argument("--weights-dir", help="save weights_rank{R}.pt here at the end")
    ap.add_argument("--sched", action="store_true", help="add a LambdaLR scheduler")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--resume",
        default=os.environ.get("HOTCB_RESUME_FROM") or None,
        help="a checkpoint to resume from (default: $HOTCB_RESUME_FROM)",
    )
    return ap


def _trace_row(step: int, opt: Any, weights: dict[str, float], kernel: HotKernel) -> str:
    """What every rank must agree on after this step: live optimizer values, loss weights,
    loaded callbacks (module state), scheduled ops, control flags. Not the tuner's state: it
    decides on rank 0, and each other rank keeps only what it observed (its mutations reach
    every rank as commands, in the values above)."""
    state = kernel.state_dict()
    row = {
        "step": step,
        "lr": opt.param_groups[0]["lr"],
        "weight_decay": opt.param_groups[0]["weight_decay"],
        "weights": dict(weights),
        "modules": {name: m for name, m in state["modules"].items() if name != "tune"},
        "pending": [p["record"]["cmd_id"] for p in state["pending"]],
        "freeze": state["freeze"],
        "stop": kernel.stop_requested,
    }
    return json.dumps(row, sort_keys=True, default=str) + "\n"


def _save(path: str, step: int, model: Any, opt: Any, sched: Any, gen: Any, kernel: Any) -> None:
    """A checkpoint of every rank's state (a collective: each rank calls it at the same step)."""
    generators: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(generators, gen.get_state())  # each rank's data order
    if dist.get_rank() == 0:
        torch.save(
            {
                "step": step,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "generators": generators,
                "hotcb": kernel.state_dict(),
            },
            path,
        )


def _resume(path: str | None, model: Any, opt: Any, sched: Any, gen: Any, kernel: Any) -> int:
    """Restore a checkpoint of :func:`_save` on this rank; the step to continue from."""
    if not path:
        return 0
    ckpt = torch.load(path, weights_only=False)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    if sched is not None:
        sched.load_state_dict(ckpt["scheduler"])
    gen.set_state(ckpt["generators"][dist.get_rank()])
    kernel.load_state_dict(ckpt["hotcb"])
    # what the run changed at the saved step after the save lands now, before training
    env = {"step": int(ckpt["step"]), "model": model, "optimizer": opt, "scheduler": sched}
    kernel.catch_up(env, ("train_step_end",))
    return int(ckpt["step"]) + 1


def train(args: argparse.Namespace) -> None:
    """One rank's loop (the process group is already initialised)."""
    rank = dist.get_rank()
    x, y = digits()
    model = DistributedDataParallel(TinyMLP(seed=args.seed))  # same init on every rank
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = None
    if args.sched:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.001 * s))
    weights = {"ce": 1.0, "l2": 0.0}
    kernel = HotKernel(
        args.run_dir,
        debounce_steps=args.debounce,
        mutable_state=mutable_state(loss_actuators(weights)),
        checkpoint_on_signal=True,  # rank 0 turns Ctrl-C / SIGTERM into checkpoint + stop
    )
    gen = torch.Generator().manual_seed(args.seed + rank)  # each rank its own batches
    trace = None
    if args.trace_dir:
        os.makedirs(args.trace_dir, exist_ok=True)
        trace = open(os.path.join(args.trace_dir, f"trace_rank{rank}.jsonl"), "w")  # noqa: SIM115
    step = start = _resume(args.resume, model.module, opt, sched, gen, kernel)

    def save_checkpoint(path: str | None = None) -> str:
        """`hotcb checkpoint`: every rank applies it at the same step; rank 0 writes the file."""
        path = path or os.path.join(args.run_dir, f"checkpoint_{step}.pt")
        _save(path, step, model.module, opt, sched, gen, kernel)
        return path

    for step in range(start, args.steps):
        idx = torch.randint(0, len(x), (args.batch,), generator=gen)
        ce = nn.functional.cross_entropy(model(x[idx]), y[idx])
        l2 = sum(p.pow(2).sum() for p in model.parameters())
        loss = weights["ce"] * ce + weights["l2"] * l2
        opt.zero_grad()
        loss.backward()  # DDP all-reduces the gradients here
        opt.step()
        if sched is not None:
            sched.step()
        kernel.apply(
            {
                "framework": "torch",
                "step": step,
                "model": model.module,
                "optimizer": opt,
                "scheduler": sched,
                "save_checkpoint": save_checkpoint,
                "metrics": {"loss": loss.item(), "ce": ce.item()},
            }
        )
        if trace is not None:
            trace.write(_trace_row(step, opt, weights, kernel))
            trace.flush()
        if kernel.stop_requested:  # every rank sees it at the same step
            break
        delay = args.slow_delay if 0 <= args.slow_after <= step else args.step_delay
        if delay:
            time.sleep(delay)
    kernel.close()
    if trace is not None:
        trace.close()
    if args.weights_dir:
        os.makedirs(args.weights_dir, exist_ok=True)
        torch.save(
            model.module.state_dict(), os.path.join(args.weights_dir, f"weights_rank{rank}.pt")
        )
    if rank == 0:
        print(f"done at step {step}", flush=True)


def _spawned(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train(args)
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        dist.destroy_process_group()
    _leave()


def _leave() -> None:
    """End a rank whose training is over and whose files are closed, without the
    interpreter's teardown: gloo's C++ threads can abort it ("terminate called without an
    active exception", SIGABRT: about one run in ten on CPU), which mp.spawn and torchrun
    report as a failed training."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        dist.init_process_group("gloo")
        try:
            train(args)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        _leave()
    import signal

    import torch.multiprocessing as mp

    ranks = mp.spawn(_spawned, args=(args.nproc, _free_port(), args), nprocs=args.nproc,
                     join=False)  # fmt: skip
    # Ctrl-C reaches the ranks too (one process group): they checkpoint and stop while this
    # parent waits for them, instead of dying on KeyboardInterrupt and orphaning them. A
    # SIGTERM sent to this process alone (a scheduler's) is passed on to the ranks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(
        signal.SIGTERM,
        lambda *_: [os.kill(p.pid, signal.SIGTERM) for p in ranks.processes if p.is_alive()],
    )
    while not ranks.join():
        pass


if __name__ == "__main__":
    main()
