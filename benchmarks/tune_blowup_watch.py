"""How often the tuner's blow-up watch cuts a harmless trial short, and how fast it catches a
real blow-up, on per-batch training losses with heavy tails.

    python benchmarks/tune_blowup_watch.py        # a few seconds

A trial's training loss (the median of its last five steps) is a blow-up when it crosses a
line drawn from the steps before the change. The losses here are i.i.d. lognormal around 1
(sigma: how heavy the batch-to-batch tails are; a small-batch classifier near convergence is
around 0.5-0.8). "false cuts": the share of harmless trials (the loss does not change) that the
watch ends within 50 steps; "caught in": the median number of steps until a trial whose loss
jumps xK is ended (K = 3 and 10), "-" when fewer than half are caught within 50 steps.

Two lines are compared: the median of the 20 steps before, times (1 + abort) (the tuner until
this round), and hotcb's ``_blow_up_line`` over the 50 steps before (that, and above the
highest of them).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence

from hotcb.modules.tune._module import _TRAIN_WATCH, _blow_up_line

ABORT = 1.0  # the tuner's default
TRIALS = 4000
STEPS = 50  # a trial's steps before its segment ends


def median_line(before: Sequence[float]) -> float:
    return (1 + ABORT) * statistics.median(before[-20:])


def hotcb_line(before: Sequence[float]) -> float:
    line = _blow_up_line(before[-_TRAIN_WATCH:], ABORT)
    assert line is not None
    return line


def first_cut(rng: random.Random, sigma: float, jump: float, line: Callable) -> int | None:
    """The step of the trial at which the watch ends it (None: it runs to its end)."""
    before = [math.exp(sigma * rng.gauss(0, 1)) for _ in range(max(_TRAIN_WATCH, 20))]
    at = line(before)
    after: list[float] = []
    for k in range(1, STEPS + 1):
        after.append(jump * math.exp(sigma * rng.gauss(0, 1)))
        if k >= 5 and statistics.median(after[-5:]) > at:
            return k
    return None


def row(sigma: float, name: str, line: Callable) -> str:
    rng = random.Random(0)
    false = sum(first_cut(rng, sigma, 1.0, line) is not None for _ in range(TRIALS)) / TRIALS
    cells = [f"{100 * false:.1f} %"]
    for jump in (3.0, 10.0):
        cuts = [first_cut(rng, sigma, jump, line) for _ in range(TRIALS // 4)]
        caught = sorted(c for c in cuts if c is not None)
        cells.append(str(caught[len(cuts) // 2]) if len(caught) > len(cuts) // 2 else "-")
    return f"| {sigma} | {name} | " + " | ".join(cells) + " |"


def main() -> None:
    print("| sigma | line | false cuts | caught in (x3) | caught in (x10) |")
    print("|---|---|---|---|---|")
    for sigma in (0.3, 0.5, 0.8, 1.2):
        print(row(sigma, "2 x median of 20 (before)", median_line))
        print(row(sigma, f"hotcb: 2 x median and above the max, {_TRAIN_WATCH} steps", hotcb_line))


if __name__ == "__main__":
    main()
