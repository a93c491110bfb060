"""How long the online tuner holds up a training step, with Optuna on the training thread
(``sync=True``) and on its own thread (the default).

A digits MLP (``benchmarks/_tasks.py``) trains with a real ``HotKernel`` and the tuner in active
mode; every ``kernel.apply()`` is timed. The figures: the slowest ``apply()``, its 99.9th
percentile, the time spent in ``apply()`` at the steps that closed a segment, and the trials the
tuner judged, on an SQLite study in the run directory (the default storage).

    python benchmarks/tune_stall.py [--steps 1500] [--segment-steps 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tasks import Digits

from hotcb import HotClient, HotKernel


def measure(sync: bool, steps: int, segment_steps: int, seed: int = 0) -> dict[str, float]:
    task = Digits()
    run = task.make(seed)
    opt = torch.optim.AdamW(run.model.parameters(), lr=1e-2)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        HotClient(run_dir).tune_enable(mode="active", objective="val_loss",
                                       segment_steps=segment_steps, seed=seed, sync=sync)  # fmt: skip
        kernel = HotKernel(run_dir, poll_interval_sec=0.0)
        times: list[float] = []
        for step in range(1, steps + 1):
            loss = run.train_step(opt)
            metrics = {"loss": loss}
            if step % task.eval_every == 0:
                metrics["val_loss"] = run.evaluate()[0]
            t0 = time.perf_counter()
            kernel.apply({"step": step, "optimizer": opt, "model": run.model, "metrics": metrics})
            times.append(time.perf_counter() - t0)
        tune = kernel.module("tune")
        judged = tune.counts["kept"] + tune.counts["rolled_back"]
        kernel.close()
    ordered = sorted(times)
    return {
        "max_ms": 1e3 * ordered[-1],
        "p999_ms": 1e3 * ordered[int(0.999 * (len(ordered) - 1))],
        "median_ms": 1e3 * statistics.median(times),
        "over_50ms": sum(t > 0.05 for t in times),
        "total_s": sum(times),
        "judged": judged,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--segment-steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = {name: measure(sync, args.steps, args.segment_steps)
            for name, sync in (("sync (Optuna on the training thread)", True),
                               ("default (Optuna on its own thread)", False))}  # fmt: skip
    print(f"{args.steps} steps of a digits MLP, segment {args.segment_steps} steps, SQLite study")
    print(
        f"{'':38} {'max':>9} {'p99.9':>9} {'median':>8} {'>50 ms':>7} {'in apply':>9} {'trials':>7}"
    )
    for name, r in rows.items():
        print(f"{name:38} {r['max_ms']:7.1f}ms {r['p999_ms']:7.1f}ms {r['median_ms']:6.3f}ms "
              f"{r['over_50ms']:7d} {r['total_s']:8.2f}s {r['judged']:7d}")  # fmt: skip
    a, b = rows.values()
    print(
        f"slowest step held up {a['max_ms'] / b['max_ms']:.0f}x less; "
        f"time in apply {a['total_s'] / b['total_s']:.1f}x less"
    )


if __name__ == "__main__":
    main()
