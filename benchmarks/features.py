"""What FeatureCapture costs a training step: prints figures and the ratio to the 2% target.

    python benchmarks/features.py                      # figures (about a minute on 2 cores)
    python benchmarks/features.py --markdown docs/benchmarks/features.md
    python benchmarks/features.py --check              # exit 1 when the default misses 2%

Two real models on scikit-learn's bundled digits (batch 64, SGD, torch on one thread): an MLP
64-256-256-10 and a small CNN (two 3x3 convolutions on the 8x8 images, then a linear head).
Each is trained in a bare loop, with no capture, with :class:`hotcb.features.FeatureCapture` on
every leaf module at its default ``every`` and at ``every=1`` (every step a capture step), and
``every=10``. The conditions run in alternating blocks of steps (order shuffled per round) so
that the machine's drift hits them alike; a condition's figure is the median over rounds of
its block's mean step time.

Two overhead figures for the default:

- measured: the median over rounds of (mean step time with capture / without in the same
  round) - 1 (noisy: the effect is small next to a shared machine's jitter);
- derived: each step of the every=10 and default blocks is timed and classed as a capture
  step, an arming step (the one before, which attaches the hooks) or a step between; the
  extra of the first two over the third, spread over ``every`` steps. The steps of one block
  interleave at the finest grain, so the machine's drift cancels.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hotcb.features import DEFAULT_EVERY, FeatureCapture
from hotcb.testing import digits

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = 0.02  # of a step, at the default every


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(32 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 8, 8)
        x = self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.head(x.flatten(1))


TASKS: dict[str, Callable[[], nn.Module]] = {"digits_mlp": mlp, "digits_cnn": CNN}


class Bench:
    """One model, its optimizer and a cursor over the data; ``block(n, cap)`` runs n steps."""

    def __init__(self, make: Callable[[], nn.Module], batch: int = 64) -> None:
        torch.manual_seed(0)
        self.x, self.y = digits()
        self.model = make()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.batch = batch
        self.step = 0
        self.loss_fn = nn.CrossEntropyLoss()

    def block(self, n: int, cap: FeatureCapture | None, kinds: dict[str, list[float]]) -> float:
        """Run ``n`` steps; return the mean CPU seconds of this process per step (CPU time,
        not wall time: on a shared machine the time spent waiting for a core is not the
        step's) and add each step's time to ``kinds[kind]``: ``capture`` (the hooks ran and
        the record was written), ``arm`` (the step before: the hooks were attached at its
        end), ``between`` (neither), or ``off`` without a capture."""
        x, y, b, model, opt = self.x, self.y, self.batch, self.model, self.opt
        rows = x.shape[0] - b
        clock = time.process_time
        every = cap.every if cap is not None else 0
        total = 0.0
        for _ in range(n):
            step = self.step
            i = (step * b) % rows
            t0 = clock()
            loss = self.loss_fn(model(x[i : i + b]), y[i : i + b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cap is not None:
                cap.step(step)
            dt = clock() - t0
            total += dt
            if cap is None:
                kinds["off"].append(dt)
            elif step % every == 0:
                kinds["capture"].append(dt)  # with every=1 also an arming step
            elif (step + 1) % every == 0:
                kinds["arm"].append(dt)
            else:
                kinds["between"].append(dt)
            self.step += 1
        return total / n


def measure(task: str, steps: int, rounds: int, run_dir: str, seed: int = 0) -> dict[str, Any]:
    bench = Bench(TASKS[task])
    everies = [DEFAULT_EVERY, 10, 1]
    caps: dict[str, FeatureCapture | None] = {"off": None}
    for every in everies:
        caps[f"every={every}"] = FeatureCapture(
            every=every, model=bench.model, run_dir=os.path.join(run_dir, f"{task}-{every}")
        )
    scratch: dict[str, list[float]] = {k: [] for k in ("off", "capture", "arm", "between")}
    bench.block(max(50, steps // 4), None, scratch)  # warm up
    times: dict[str, list[float]] = {name: [] for name in caps}
    # per-step times by kind, from the every=10 and default blocks (every=1 has only captures)
    kinds: dict[str, list[float]] = {k: [] for k in ("off", "capture", "arm", "between")}
    rng = random.Random(seed)
    names = list(caps)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            # start a block one step after a multiple of every, so that a block of k * every
            # steps holds k captures, each armed within the block
            cap = caps[name]
            if cap is not None:
                bench.step += (1 - bench.step) % cap.every
            pool = kinds if cap is None or cap.every > 1 else scratch
            times[name].append(bench.block(steps, cap, pool))
            if cap is not None:
                cap.close()  # the block's last step may have armed the next capture
    for cap in caps.values():
        if cap is not None:
            cap.close()
    med = {name: statistics.median(v) for name, v in times.items()}
    # per round, the condition against "off" of the same round (drift cancels), then the median
    paired = {
        name: statistics.median(t / o for t, o in zip(v, times["off"], strict=True)) - 1
        for name, v in times.items()
    }
    step_med = {k: statistics.median(v) for k, v in kinds.items()}
    layers = len(caps[f"every={DEFAULT_EVERY}"]._modules(bench.model))  # type: ignore[union-attr]
    return {
        "task": task,
        "layers": layers,
        "median": med,
        "paired": paired,
        "steps": step_med,
        "counts": {k: len(v) for k, v in kinds.items()},
    }


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=DEFAULT_EVERY, help="steps per block")
    ap.add_argument("--rounds", type=int, default=40, help="blocks per condition")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    ap.add_argument("--check", action="store_true", help="exit 1 when the default misses 2%%")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    import tempfile

    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            results.append(measure(task.strip(), args.steps, args.rounds, tmp))
    took = time.perf_counter() - t0

    print(f"{'task':<12} {'layers':>6} {'condition':<11} {'CPU ms/step':>11} {'vs off':>8}")
    rows: list[tuple[str, ...]] = []
    missed = []
    for r in results:
        for name, t in r["median"].items():
            paired = r["paired"][name]
            print(f"{r['task']:<12} {r['layers']:>6} {name:<11} {t * 1e3:>11.4f} {paired:>+8.2%}")
            rows.append((r["task"], str(r["layers"]), name, f"{t * 1e3:.4f}", f"{paired:+.2%}"))
        st = r["steps"]
        base = st["between"]
        cap_extra, arm_extra = st["capture"] - base, st["arm"] - base
        derived = (cap_extra + arm_extra) / (DEFAULT_EVERY * base)
        r["derived"], r["measured"] = derived, r["paired"][f"every={DEFAULT_EVERY}"]
        r["cap_steps"], r["arm_steps"] = cap_extra / base, arm_extra / base
        r["between_vs_off"] = base / st["off"] - 1
        ok = derived < TARGET
        if not ok:
            missed.append(r["task"])
        print(
            f"{r['task']}: per step (median CPU ms): no capture {st['off'] * 1e3:.3f}, between "
            f"captures {base * 1e3:.3f}, arming {st['arm'] * 1e3:.3f}, capture "
            f"{st['capture'] * 1e3:.3f}; a capture costs {r['cap_steps']:.2f} steps, arming "
            f"{r['arm_steps']:.2f}; at every={DEFAULT_EVERY}: derived overhead {derived:.3%} "
            f"(target < 2%: ratio {derived / TARGET:.3f} {'OK' if ok else 'MISS'}), measured "
            f"{r['measured']:+.2%}"
        )

    if args.markdown:
        write_markdown(args, results, rows, took)
    return 1 if (args.check and missed) else 0


def write_markdown(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    rows: list[tuple[str, ...]],
    took: float,
) -> None:
    lines = [
        "# FeatureCapture overhead",
        "",
        f"Generated by `python benchmarks/features.py --markdown {args.markdown}`; do not edit "
        "by hand. What activation capture (docs/features.md) costs a training step.",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), shared with other work "
        f"while this ran, so single figures are noisy (the step times are this process's CPU "
        f"time, which a busy machine disturbs less than wall time); torch {torch.__version__} on 1 thread; "
        f"hotcb at commit {_commit()}; {args.rounds} rounds of {args.steps}-step blocks per "
        f"condition, the median of the block means; the run took {took:.0f} s.",
        "",
        "Models: an MLP 64-256-256-10 and a small CNN (two 3x3 convolutions, 16 and 32 "
        "channels, on the 8x8 digits, average pooling, a linear head), batch 64, SGD with "
        "momentum. FeatureCapture hooks every leaf module (the `layers` column) and records "
        "mean, std, max |x|, dead fraction and norm of each output.",
        "",
        "| task | layers | condition | CPU ms / step | vs no capture |",
        "|---|---:|---|---:|---:|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "*vs no capture*: per round, the block's mean step time against the no-capture block of "
        "the same round, the median over rounds. It moves by a few percent from round to round "
        "on this machine, more than the effect at the default, so the figure that decides is the "
        "one below.",
        "",
        f"Per step, inside the `every=10` and `every={DEFAULT_EVERY}` blocks (median CPU ms; the "
        "steps of one block interleave at the finest grain, so the machine's drift cancels): the "
        "extra cost of a capture step and of the step before it (which attaches the hooks), and "
        f"from them the overhead at the default `every={DEFAULT_EVERY}` (target: under 2% of a "
        "step):",
        "",
        "| task | no capture | between captures | arming step | capture step | a capture costs "
        f"| arming costs | overhead at every={DEFAULT_EVERY} | measured directly |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        st = r["steps"]
        lines.append(
            f"| {r['task']} | {st['off'] * 1e3:.3f} | {st['between'] * 1e3:.3f} | "
            f"{st['arm'] * 1e3:.3f} | {st['capture'] * 1e3:.3f} | {r['cap_steps']:.2f} steps | "
            f"{r['arm_steps']:.2f} steps | **{r['derived']:.2%}** | {r['measured']:+.2%} |"
        )
    lines += [
        "",
        "*Overhead at every=N* = (capture step - between + arming step - between) / (N x "
        "between). The steps between captures run no hook, only the callback's modulo: their "
        "time against the no-capture steps is within the noise ("
        + ", ".join(f"{r['task']}: {r['between_vs_off']:+.1%}" for r in results)
        + ").",
        "",
    ]
    with open(args.markdown, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.markdown}")


if __name__ == "__main__":
    sys.exit(main())
