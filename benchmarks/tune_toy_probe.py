"""What the moving-optimum toy's target asks of a single-run controller, measured.

    python benchmarks/tune_toy_probe.py        # about a minute on one core

Not hotcb's tuner: a yardstick, the way the hindsight oracle is one on digits. A controller
that knows the toy's shape but not its target: it keeps a centre ``c`` (log10 of the lr) and
spends the run in pairs of segments, the first at ``c + delta``, the second at ``c - delta``;
after each pair it moves ``c`` by ``eta`` towards the side whose training loss fell faster
(the slope of a least-squares line through the segment's per-step losses), when the two
slopes differ by more than one standard error of their difference, and stays otherwise. The
last steps that do not fill a pair run at ``c``. It starts at the toy's start lr (1e-3).

Its three settings (segment length, ``delta``, ``eta``) are picked on seeds 0-15 for each
segment length, from a small grid, and the pick is then run on seeds 16-31, which the table
reports, beside the best fixed lr of the benchmark's sweep on the same seeds. Picked on the
toy itself, this is the most a probe-and-step controller of this kind gets out of the toy: an
upper mark for hotcb's tuner, whose trials are judged one segment at a time.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence

from _tasks import Toy, ToyRun  # benchmarks/ is sys.path[0]

SEGMENTS = (50, 100, 150, 200)  # the benchmark's tuner uses 50
DELTAS = (0.1, 0.15, 0.25, 0.35)  # decades
ETAS = (0.1, 0.15, 0.25, 0.35, 0.5)  # decades
PICK_SEEDS = range(16)
REPORT_SEEDS = range(16, 32)
TASK = Toy()


class _Lr:
    """The one thing the toy reads of an optimizer: its first param group's lr."""

    def __init__(self, lr: float) -> None:
        self.param_groups = [{"lr": lr}]

    def set(self, log10_lr: float) -> None:
        self.param_groups[0]["lr"] = 10**log10_lr


def _slope(ys: Sequence[float]) -> float:
    n = len(ys)
    mid = (n - 1) / 2
    den = sum((i - mid) ** 2 for i in range(n))
    return sum((i - mid) * y for i, y in enumerate(ys)) / den


def probe_run(seed: int, segment: int, delta: float, eta: float) -> float:
    """The probe-and-step controller's final validation loss on the toy."""
    run = ToyRun(seed)
    opt = _Lr(TASK.start_lr)
    c = math.log10(TASK.start_lr)
    # the standard error of a difference of two segment slopes, at the toy's training noise
    se = ToyRun.train_noise * math.sqrt(2 * 12 / (segment**3 - segment))
    steps = 0

    def segment_slope(log10_lr: float) -> float:
        nonlocal steps
        opt.set(log10_lr)
        losses = [run.train_step(opt) for _ in range(segment)]  # type: ignore[arg-type]
        steps += segment
        return _slope(losses)

    while steps + 2 * segment <= TASK.total_steps:
        up, down = segment_slope(c + delta), segment_slope(c - delta)
        if down - up > se:  # the loss fell faster above the centre
            c += eta
        elif up - down > se:
            c -= eta
    opt.set(c)
    while steps < TASK.total_steps:
        run.train_step(opt)  # type: ignore[arg-type]
        steps += 1
    return run.evaluate()[0]


def fixed_run(seed: int, lr: float) -> float:
    run = ToyRun(seed)
    opt = _Lr(lr)
    for _ in range(TASK.total_steps):
        run.train_step(opt)  # type: ignore[arg-type]
    return run.evaluate()[0]


def mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs)


def main() -> int:
    best_lr = min(TASK.sweep, key=lambda lr: mean([fixed_run(s, lr) for s in PICK_SEEDS]))
    fixed = [fixed_run(s, best_lr) for s in REPORT_SEEDS]
    print(f"best fixed lr (picked on seeds 0-15): {best_lr:.2g}, seeds 16-31: "
          f"{mean(fixed):.3f} ± {statistics.stdev(fixed):.3f}\n")  # fmt: skip
    print(
        "| segment steps | delta | eta | picked on 0-15 | seeds 16-31 | vs best fixed | lower in |"
    )
    print("|---|---|---|---|---|---|---|")
    for segment in SEGMENTS:
        grid = itertools.product(DELTAS, ETAS)
        scored = [(mean([probe_run(s, segment, d, e) for s in PICK_SEEDS]), d, e) for d, e in grid]
        picked, delta, eta = min(scored)
        held = [probe_run(s, segment, delta, eta) for s in REPORT_SEEDS]
        wins = sum(h < f for h, f in zip(held, fixed, strict=True))
        print(f"| {segment} | {delta} | {eta} | {picked:.3f} | {mean(held):.3f} ± "
              f"{statistics.stdev(held):.3f} | {mean(held) / mean(fixed):.2f}× | "
              f"{wins} of {len(held)} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
