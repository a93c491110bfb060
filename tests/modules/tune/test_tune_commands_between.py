"""A trial is judged on what the tuner changed alone: no trial starts on a trend a command
just broke, nor into a change already scheduled for its segment."""

from __future__ import annotations

import math
from typing import Any

from tune_helpers import Toy, log_level

from hotcb import HotClient
from hotcb.testing import read_ledger, wait_for

LR_ONLY = [{"key": "lr", "module": "opt", "mode": "mult", "low": 0.5, "high": 2.0, "max": 10.0}]
SEGMENT = 10


def _one_level_in(toy: Any, poll: float = 0) -> tuple[Toy, HotClient, int]:
    """A run whose tuner has one baseline level: its next boundary would start a trial."""
    t: Toy = toy(log_level, lr=1e-3, poll=poll)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=SEGMENT, seed=0,
                       space=LR_ONLY, sync=True)  # fmt: skip
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    t.run(1000, until=lambda: tune().mode == "active" and len(tune().history) == 1)
    assert tune().phase == "baseline" and not t.ledger("mutate")
    return t, client, tune().segment.start + SEGMENT - 1


def test_no_trial_starts_on_the_trend_a_command_just_broke(toy: Any) -> None:
    """The autopilot's lr cut landed at step 60 and the tuner's trial started at step 60 too:
    the trial was scored against the trend from before the cut, so the cut's effect counted
    as the trial's. The tuner now makes its trend again from the segments after the change."""
    t, client, boundary = _one_level_in(toy)
    t.run(boundary - 3 - t.step)
    client.opt(lr=5e-4, source="autopilot")  # lands at the next step, in that segment
    t.run(1000, until=lambda: bool(t.ledger("mutate")))
    (mutate,) = t.ledger("mutate")
    assert mutate["step"] >= boundary + 2 * SEGMENT, (mutate["step"], boundary)
    assert mutate["changes"]["lr"]["old"] == 5e-4


def test_no_trial_starts_into_a_change_scheduled_for_its_segment(toy: Any) -> None:
    """``set lr=… --at-step`` due inside the next segment: a trial started there was voided by
    it (Optuna told FAIL, the segment wasted). The tuner waits until after it."""
    t, client, boundary = _one_level_in(toy)
    due = boundary + SEGMENT // 2
    client.opt(lr=5e-4, at_step=due)
    t.run(1000, until=lambda: bool(t.ledger("mutate")))
    (mutate,) = t.ledger("mutate")
    assert mutate["step"] > due and mutate["changes"]["lr"]["old"] == 5e-4
    assert not t.ledger("void")


def test_an_answer_that_lands_before_a_scheduled_change_starts_no_trial(
    toy: Any, held_ask: Any
) -> None:
    """Asked in the background, the trial's answer came after ``set lr=… --at-step`` was
    scheduled inside the segment it would start: the trial started and the change voided it.
    The answer is told FAIL with the reason, and the next trial comes after the change."""
    t: Toy = toy(log_level, lr=1e-3, poll=0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=SEGMENT, seed=0,
                       space=LR_ONLY)  # fmt: skip
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    t.run(100_000, until=lambda: tune().asking is not None)  # a trial asked for, held
    due = t.step + SEGMENT // 2
    client.opt(lr=5e-4, at_step=due)
    t.run(2)  # the command is read and scheduled
    held_ask.set()
    future = tune().asking["future"]
    wait_for(future.done, timeout=60, what="Optuna's answer")  # lands at the next step

    def mutated() -> bool:  # the next trial is asked for in the background too: however long
        t.run(10, until=lambda: bool(t.ledger("mutate")))  # that takes on a loaded machine
        return bool(t.ledger("mutate"))

    wait_for(mutated, timeout=120, interval=0.01, what="the trial after the change")
    (void,) = t.ledger("void")
    assert "a command is due in its segment while the trial was asked for" in void["tune"]["reason"]
    (mutate,) = t.ledger("mutate")
    assert mutate["step"] > due and mutate["changes"]["lr"]["old"] == 5e-4


def test_a_command_read_in_the_poll_of_a_trials_mutation_keeps_its_value(toy: Any) -> None:
    """A person's ``set lr`` written just before a boundary was read in the poll after it, with
    the trial's mutation the boundary had just written: the mutation scaled the person's lr
    (``set lr=0.002`` ended at 0.00053 in the same step) and the trial was judged on both
    changes. The mutation is now not applied: the person's value stays, Optuna hears FAIL, and
    the next trial waits for the trend after the change."""
    # the kernel polls at its first step, then only when the tuner writes a command: what a
    # person writes waits for the tuner's next command (a poll a second apart, stretched)
    t, client, boundary = _one_level_in(toy, poll=3600)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    t.run(boundary - 3 - t.step)
    person = client.opt(lr=2e-3)  # read with the mutation the boundary writes
    t.run(1000, until=lambda: bool(t.ledger("mutate")))
    (refused,) = t.ledger("mutate")
    assert refused["decision"] == "noop" and refused["step"] == boundary + 1
    assert "a command changed opt.lr after this trial was decided" in refused["error"]
    (set_,) = [e for e in read_ledger(t.kernel.run_dir) if e.get("cmd_id") == person]
    assert set_["step"] == boundary + 1 and set_["changes"]["lr"]["new"] == 2e-3
    assert t.lr == 2e-3  # the person's value, not scaled by the trial
    trial = refused["tune"]["trial"]
    (row,) = [r for r in tune().trials if r["trial"] == trial]
    assert row["decision"] == "failed"
    # a trial after the change starts from it, two segments on
    t.run(1000, until=lambda: len(t.ledger("mutate")) == 2)
    later = t.ledger("mutate")[1]
    assert later["decision"] == "applied" and later["changes"]["lr"]["old"] == 2e-3
    assert later["step"] >= boundary + 1 + 2 * SEGMENT


def test_a_command_read_with_a_roll_back_makes_the_next_trial_wait(toy: Any) -> None:
    """A person's `set lr` read in the same poll as a trial's roll-back, just after it: the
    baseline segment the roll-back began starts at the next step, and the set (at the
    roll-back's step) fell outside it, so the next trial came one segment later, judged
    against a trend the set had broken. It waits two segments, as after any command."""
    # any move from 1e-3 is worse: every trial is rolled back
    t: Toy = toy(lambda lr, _s: 1.0 + abs(math.log10(lr / 1e-3)), lr=1e-3, poll=0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=SEGMENT, seed=0,
                       space=LR_ONLY, sync=True)  # fmt: skip
    tune = t.kernel.module("tune")
    submit, sent = tune._submit, []

    def person_after(op: str, params: dict[str, Any], step: int) -> None:
        submit(op, params, step)
        if op == "rollback" and not sent:  # written just after the tuner's roll-back
            sent.append(client.opt(lr=5e-4))

    tune._submit = person_after

    def next_trial() -> bool:
        backs = t.ledger("rollback")
        return bool(backs) and any(e["step"] > backs[0]["step"] for e in t.ledger("mutate"))

    t.run(5000, until=next_trial)
    back = t.ledger("rollback")[0]
    (person,) = [e for e in read_ledger(t.kernel.run_dir) if e.get("cmd_id") == sent[0]]
    assert person["step"] == back["step"] and person["seq"] == back["seq"] + 1
    after = [e for e in t.ledger("mutate") if e["step"] > back["step"]]
    assert after and after[0]["step"] >= back["step"] + 1 + 2 * SEGMENT, (back["step"], after[0])
    assert after[0]["changes"]["lr"]["old"] == 5e-4
