"""Overhead of the framework adapters and of the distributed poll, in µs per step.

    python benchmarks/adapters.py                 # everything
    python benchmarks/adapters.py --only bare lightning hf dist --steps 300

For each integration it trains the same tiny model four ways, alternating: without hotcb; with a
hook that does nothing (``no-op``: what calling any hook at that point costs, the floor); with
hotcb as configured by default (a poll of the commands file at most every 50 ms); and with a
kernel whose poll never falls due after the first (``idle``: the cost of a safe point where
nothing is due). No commands arrive. It prints

- ``hook``: time spent inside the adapter's hook (kernel.apply and the env it builds), measured
  around the call — precise, independent of the model: median and mean over every step (the
  mean includes the polls, and what the kernel does at a poll), then the same for ``idle`` and
  ``no-op``. Right after a training step the caches are cold: calling any Python function there
  costs a few µs that the same call in a tight loop does not;
- ``step``: the median wall time per optimizer step without and with hotcb and their difference
  (noisy on a busy machine: a few µs vs a step of milliseconds).

``dist`` runs two gloo ranks on CPU that call ``kernel.apply`` in a loop (no model): a poll (one
broadcast) every step, every 10 steps, and with the defaults (rank 0 spaces idle polls by the
measured step time, about one per 50 ms), against the same loop in one process.
"""

from __future__ import annotations

import argparse
import functools
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


#: ``poll_interval_sec`` of the ``idle`` runs: after the first call no poll is due again.
IDLE_POLL_SEC = 3600.0
KINDS = ("plain", "noop", "hot", "idle")


def _noop(*args: Any, **kwargs: Any) -> None:
    """The ``noop`` runs' hook: what calling any hook there costs (the floor)."""


def _hook_stats(clocks: list[_Clock]) -> tuple[float, float]:
    hooks = [t for c in clocks for t in c.hook[1:]]  # the first call starts the kernel
    if not hooks:
        return float("nan"), float("nan")
    return statistics.median(hooks), statistics.fmean(hooks)


def _report(name: str, run: Any, repeats: int) -> None:
    """Run ``run(kind)`` for each of :data:`KINDS` ``repeats`` times, alternating (a busy
    machine's drift hits all alike); the best median step time of each, the hook's median and
    mean over all runs of a kind."""
    run("hot")  # warm up (imports, first-call costs)
    clocks: dict[str, list[_Clock]] = {kind: [] for kind in KINDS}
    for _ in range(repeats):
        for kind in KINDS:
            clocks[kind].append(run(kind))
    p = min(c.step_median() for c in clocks["plain"])
    h = min(c.step_median() for c in clocks["hot"])
    hook, mean = _hook_stats(clocks["hot"])
    idle, idle_mean = _hook_stats(clocks["idle"])
    floor, floor_mean = _hook_stats(clocks["noop"])
    print(
        f"{name:10s} hook {_us(hook):5.1f} µs/step (mean {_us(mean):5.1f})  "
        f"idle {_us(idle):5.1f} (mean {_us(idle_mean):5.1f})  "
        f"no-op {_us(floor):5.1f} (mean {_us(floor_mean):5.1f})  "
        f"step {_us(p):7.1f} → {_us(h):7.1f} µs ({_us(h - p):+6.1f} µs, "
        f"{100 * (h - p) / p:+.1f}%)",
        flush=True,
    )


def _poll_sec(kind: str) -> float:
    return IDLE_POLL_SEC if kind == "idle" else 0.05


def _kernel(run_dir: str, kind: str) -> HotKernel:
    return HotKernel(run_dir, metrics_collector=False, poll_interval_sec=_poll_sec(kind))


# ---------------------------------------------------------------------------- bare loop
def bench_bare(steps: int, repeats: int) -> None:
    from torch import nn

    from hotcb.testing import TinyMLP, digits

    x, y = digits()

    def run(kind: str) -> _Clock:
        clock = _Clock()
        model = TinyMLP(seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        with tempfile.TemporaryDirectory() as d:
            kernel = _kernel(d, kind)
            apply = clock.timed(_noop if kind == "noop" else kernel.apply)
            for step in range(steps):
                idx = torch.randint(0, len(x), (32,), generator=gen)
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if kind != "plain":
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

    def run(kind: str) -> _Clock:
        clock = _Clock()
        callbacks: list[Any] = []
        with tempfile.TemporaryDirectory() as d:
            kernel = _kernel(d, kind)
            if kind != "plain":
                hot = HotCBLightning(kernel)
                hook = _noop if kind == "noop" else hot.on_train_batch_end
                hot.on_train_batch_end = clock.timed(hook)  # type: ignore[method-assign]
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

    def run(kind: str) -> _Clock:
        clock = _Clock()
        # the example builds its kernel: with the poll interval of this kind
        ex.HotKernel = functools.partial(HotKernel, poll_interval_sec=_poll_sec(kind))
        with tempfile.TemporaryDirectory() as d:
            trainer, kernel = ex.build(d, steps, extra_callbacks=[Mark(clock)])
            trainer.args.logging_steps = 10**9  # the cost of hotcb, not of HF's logging
            if kind == "plain":
                trainer.remove_callback(HotCBHFCallback)
            else:
                hot = trainer.pop_callback(HotCBHFCallback)
                hot.on_step_end = clock.timed(_noop if kind == "noop" else hot.on_step_end)
                trainer.add_callback(hot)
                trainer.pop_callback(Mark)
                trainer.add_callback(Mark(clock))
            trainer.train()
            kernel.close()
        return clock

    _report("hf", run, repeats)


# ---------------------------------------------------------------------------- distributed
#: (debounce_steps, poll_interval_sec) of the distributed runs: with no interval a poll (one
#: broadcast) falls every debounce_steps steps; with one, rank 0 spaces idle polls by the
#: measured step time (about one per interval).
DIST_CONFIGS = ((1, 0.0), (10, 0.0), (1, 0.05))


def _dist_worker(rank: int, world: int, port: int, steps: int, out: str) -> None:
    """One rank: time ``kernel.apply`` in each of :data:`DIST_CONFIGS`, write the lines to
    ``out/rank<R>.txt`` (the parent prints them, in rank order, once both are done)."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lines = []
    for i, (debounce, interval) in enumerate(DIST_CONFIGS):
        run = os.path.join(out, f"run{i}")  # the same run dir on both ranks
        kernel = HotKernel(
            run, debounce_steps=debounce, poll_interval_sec=interval, metrics_collector=False
        )
        env = {"step": 0, "model": model, "optimizer": opt}
        kernel.apply(env)
        dist.barrier()
        t = time.perf_counter()
        for step in range(1, steps + 1):
            env["step"] = step
            kernel.apply(env)
        dt = time.perf_counter() - t
        kernel.close()
        what = f"debounce_steps={debounce:<2d} poll_interval_sec={interval:<4g}"
        lines.append(f"{what} rank {rank}: {_us(dt / steps):8.2f} µs/step")
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write("".join(f"{line}\n" for line in lines))
    # every rank is past its last collective before any rank tears down
    dist.barrier()
    dist.destroy_process_group()
    # Then leave without the interpreter's finalization: that is where the process aborted
    # (SIGABRT, "terminate called without an active exception", no Python frame left) in about
    # one run in 20 on a loaded 2-core machine: torch's C++ objects (gloo's, the TCPStore's)
    # torn down at exit, after destroy_process_group had returned. Nothing of ours is left to
    # finalize: the results are written, the kernels closed, the group destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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
    world = 2
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_dist_worker, args=(world, port, steps, out), nprocs=world, join=True)
        for rank in range(world):
            with open(os.path.join(out, f"rank{rank}.txt")) as f:
                for line in f.read().splitlines():
                    print(f"dist       {line}", flush=True)


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
