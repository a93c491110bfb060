"""The early abort of an objective logged every step compares a trial with the line drawn from
the segment before its mutation, whenever Optuna's answer lands (docs/tune.md, "Early
abort")."""

from __future__ import annotations

from typing import Any

from tune_helpers import Toy

from hotcb import HotClient
from hotcb.testing import wait_for

LR_ONLY = [{"key": "lr", "module": "opt", "mode": "mult", "low": 0.5, "high": 2.0, "max": 10.0}]
LR0 = 0.1


def _spiky(lr: float, step: int) -> float:
    """A baseline of 1.0 with a batch spike of 5.0 every 10 steps; a trial (any other lr)
    trains at 3.0: three times the baseline's level, below its spikes."""
    if lr != LR0:
        return 3.0
    return 5.0 if step % 10 == 0 else 1.0


def test_a_late_answer_from_optuna_draws_the_line_from_the_closed_segment(
    toy: Any, held_ask: Any
) -> None:
    """In the default (background) mode a new segment starts while Optuna is asked: the line
    came from the two or three steps before its answer landed, too few for a line, and the
    trial fell back to the median of 3 (the probe: 0, 2 or 4 harmless trials ended early by
    timing alone). The line is the closed segment's (median 1.0, a highest value of 5.0), and
    a trial at 3.0 runs its whole segment."""
    gate = held_ask
    t: Toy = toy(_spiky, lr=LR0, noise=0.0, poll=0)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    HotClient(t.kernel.run_dir).tune_enable(
        "active", objective="loss", segment_steps=20, seed=1, space=LR_ONLY
    )
    t.run(100, until=lambda: tune() is not None)
    # the study opens on the tuner's thread: no trial is due before it is open
    wait_for(lambda: tune().study is not None or tune().opening.done(), timeout=60,
             what="the study to open")  # fmt: skip
    t.run(100, until=lambda: tune().phase == "asking")
    assert tune().phase == "asking"
    t.run(2)  # Optuna answers two steps after the boundary
    gate.set()
    wait_for(lambda: tune().asking["future"].done(), timeout=60, what="Optuna's answer")
    t.run(50, until=lambda: tune().phase == "trial")
    assert tune().phase == "trial" and t.lr != LR0
    assert tune().trial["objective_line"] == 5.0  # max(2 x median 1.0, the highest 5.0)
    number = tune().trial["number"]

    t.run(100, until=lambda: tune().trial is None)
    (row,) = [r for r in tune().trials if r["trial"] == number]
    assert row["decision"] == "rolled_back", row
    assert "ended early" not in str(row["detail"].get("reason")), row["detail"]
    assert row["end_step"] - row["step"] == 20  # its whole segment


def test_a_proposal_accepted_just_after_a_boundary_draws_the_line_from_the_closed_segment(
    toy: Any,
) -> None:
    """Suggest mode: a proposal accepted a step or two into a baseline segment is judged
    against the segment that closed before it, not the step or two of the new one."""
    t: Toy = toy(_spiky, lr=LR0, noise=0.0, poll=0)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("suggest", objective="loss", segment_steps=20, seed=1, space=LR_ONLY,
                       sync=True)  # fmt: skip
    t.run(5000, until=lambda: tune() is not None and tune().proposals)
    proposal = tune().proposals[0]["id"]
    # the next boundary closes a whole baseline segment; accept one step after it
    start = tune().segment.start
    t.run(100, until=lambda: tune().segment.start != start)
    client.tune_accept(proposal)
    t.run(50, until=lambda: tune().phase == "trial")
    assert tune().phase == "trial"
    assert tune().trial["objective_line"] == 5.0
