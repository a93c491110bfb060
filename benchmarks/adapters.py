"""Overhead of the framework adapters and of the distributed poll, in µs per step.

    python benchmarks/adapters.py                 # everything
    python benchmarks/adapters.py --only bare lightning hf dist --steps 300

For each integration it trains the same tiny model twice, without and with hotcb (no commands
arrive: this is the idle cost every step pays), and prints

- ``hook``: time spent inside the adapter's hook (kernel.apply and the env it builds), measured
  around the call — precise, independent of the model;
- ``step``: the median wall time per optimizer step with and without hotcb and their difference
  (noisy on a busy machine: a few µs vs a step of milliseconds).

``dist`` runs two gloo ranks on CPU that call ``kernel.apply`` in a loop (no model), at
``debounce_steps`` 1 (a broadcast every step) and 10, against the same loop in one process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from hotcb import HotKernel


def _us(seconds: float) -> float:
    return seconds * 1e6


class _Clock:
    """Per-step timestamps and the time spent in a wrapped hook."""

    def __init__(self) -> None:
        self.marks: list[float] = []
        self.hook: list[float] = []

    def mark(self) -> None:
        self.marks.append(time.perf_counter())

    def step_median(self, skip: int = 10) -> float:
        deltas = [b - a for a, b in zip(self.marks[skip:], self.marks[skip + 1 :], strict=False)]
        return statistics.median(deltas)

    def timed(self, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.hook.append(time.perf_counter() - t)

        return wrapper


def _report(name: str, run: Any, repeats: int) -> None:
    """Run without and with hotcb ``repeats`` times, alternating (a busy machine's drift hits
    both alike); the best median step time of each, the hook's median over all runs."""
    run(True)  # warm up (imports, first-call costs)
    plain, hot = [], []
    for _ in range(repeats):
        plain.append(run(False))
        hot.append(run(True))
    p = min(c.step_median() for c in plain)
    h = min(c.step_median() for c in hot)
    hooks = [t for c in hot for t in c.hook[1:]]  # the first call starts the kernel
    hook = statistics.median(hooks) if hooks else float("nan")
    mean = statistics.fmean(hooks) if hooks else float("nan")
    print(
        f"{name:10s} hook {_us(hook):8.1f} µs/step (mean {_us(mean):7.1f})   "
        f"step {_us(p):9.1f} → {_us(h):9.1f} µs  (diff {_us(h - p):+8.1f} µs, "
        f"{100 * (h - p) / p:+.1f}%)",
        flush=True,
    )


# ---------------------------------------------------------------------------- bare loop
def bench_bare(steps: int, repeats: int) -> None:
    from torch import nn

    from hotcb.testing import TinyMLP, digits

    x, y = digits()

    def run(with_kernel: bool) -> _Clock:
        clock = _Clock()
        model = TinyMLP(seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        with tempfile.TemporaryDirectory() as d:
            kernel = HotKernel(d, metrics_collector=False)
            apply = clock.timed(kernel.apply)
            for step in range(steps):
                idx = torch.randint(0, len(x), (32,), generator=gen)
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if with_kernel:
                    apply({"step": step, "model": model, "optimizer": opt})
                clock.mark()
            kernel.close()
        return clock

    _report("bare", run, repeats)


# ---------------------------------------------------------------------------- Lightning
def bench_lightning(steps: int, repeats: int) -> None:
    import importlib.util

    import lightning.pytorch as pl

    from hotcb.adapters.lightning import HotCBLightning

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, os.pardir, "examples", "lightning_digits.py")
    spec = importlib.util.spec_from_file_location("lightning_digits", path)
    assert spec is not None and spec.loader is not None
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)

    class Mark(pl.Callback):
        def __init__(self, clock: _Clock) -> None:
            self.clock = clock

        def on_train_batch_end(self, *args: Any) -> None:
            self.clock.mark()

    def run(with_kernel: bool) -> _Clock:
        clock = _Clock()
        callbacks: list[Any] = []
        with tempfile.TemporaryDirectory() as d:
            kernel = HotKernel(d, metrics_collector=False)
            if with_kernel:
                hot = HotCBLightning(kernel)
                hot.on_train_batch_end = clock.timed(hot.on_train_batch_end)  # type: ignore[method-assign]
                callbacks.append(hot)
            trainer = pl.Trainer(
                max_steps=steps,
                accelerator="cpu",
                devices=1,
                callbacks=[*callbacks, Mark(clock)],
                enable_progress_bar=False,
                enable_model_summary=False,
                enable_checkpointing=False,
                logger=False,
                limit_val_batches=0,
            )
            trainer.fit(ex.DigitsModule(), ex.loaders()[0])
            kernel.close()
        return clock

    _report("lightning", run, repeats)


# ---------------------------------------------------------------------------- HF Trainer
def bench_hf(steps: int, repeats: int) -> None:
    import importlib.util

    from transformers import TrainerCallback

    from hotcb.adapters.hf import HotCBHFCallback

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, os.pardir, "examples", "hf_tiny.py")
    spec = importlib.util.spec_from_file_location("hf_tiny", path)
    assert spec is not None and spec.loader is not None
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)

    class Mark(TrainerCallback):
        def __init__(self, clock: _Clock) -> None:
            self.clock = clock

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.clock.mark()

    def run(with_kernel: bool) -> _Clock:
        clock = _Clock()
        with tempfile.TemporaryDirectory() as d:
            trainer, kernel = ex.build(d, steps, extra_callbacks=[Mark(clock)])
            trainer.args.logging_steps = 10**9  # the cost of hotcb, not of HF's logging
            if not with_kernel:
                trainer.remove_callback(HotCBHFCallback)
            else:
                hot = trainer.pop_callback(HotCBHFCallback)
                hot.on_step_end = clock.timed(hot.on_step_end)
                trainer.add_callback(hot)
                trainer.pop_callback(Mark)
                trainer.add_callback(Mark(clock))
            trainer.train()
            kernel.close()
        return clock

    _report("hf", run, repeats)


# ---------------------------------------------------------------------------- distributed
def _dist_worker(rank: int, world: int, port: int, steps: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = torch.nn.Linear(4, 4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        lines = []
        for debounce in (1, 10):
            run = os.path.join(out, f"run{debounce}")  # the same run dir on both ranks
            kernel = HotKernel(run, debounce_steps=debounce, metrics_collector=False)
            env = {"step": 0, "model": model, "optimizer": opt}
            kernel.apply(env)
            dist.barrier()
            t = time.perf_counter()
            for step in range(1, steps + 1):
                env["step"] = step
                kernel.apply(env)
            dt = time.perf_counter() - t
            kernel.close()
            lines.append(
                f"debounce_steps={debounce:<3d} rank {rank}: {_us(dt / steps):8.2f} µs/step"
            )
        dist.barrier()
        for line in lines:
            print(f"dist       {line}", flush=True)
    finally:
        dist.destroy_process_group()


def bench_dist(steps: int) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as d:
        kernel = HotKernel(d, metrics_collector=False, poll_interval_sec=0.0)
        env = {"step": 0, "optimizer": torch.optim.SGD(torch.nn.Linear(4, 4).parameters(), lr=1)}
        kernel.apply(env)
        t = time.perf_counter()
        for step in range(1, steps + 1):
            env["step"] = step
            kernel.apply(env)
        dt = time.perf_counter() - t
        kernel.close()
    print(f"dist       one process, a poll (stat) every step: {_us(dt / steps):8.2f} µs/step")
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_dist_worker, args=(2, port, steps, out), nprocs=2, join=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each, alternating")
    ap.add_argument("--dist-steps", type=int, default=5000, help="apply() calls per rank")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=("bare", "lightning", "hf", "dist"),
        default=["bare", "lightning", "hf", "dist"],
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    for name in args.only:
        if name == "dist":
            bench_dist(args.dist_steps)
        else:
            globals()[f"bench_{name}"](args.steps, args.repeats)


if __name__ == "__main__":
    main()
