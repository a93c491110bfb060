"""PollGate: when the kernel looks at the commands file (pure: time is passed in)."""

from __future__ import annotations

import pytest

from hotcb._gate import PollGate


def test_local_polls_wait_for_the_countdown_and_the_clock() -> None:
    gate = PollGate(debounce_steps=2, interval=0.05)
    assert gate.local_due(now=10.0)  # first call: due, next one not before 10.05
    assert gate.countdown == 2
    assert not gate.local_due(now=10.01)
    assert gate.local_due(now=10.06)
    gate.defer(step=7)  # between micro-batches: retry at the next safe point
    assert gate.countdown == 0 and gate.local_due(now=10.061) and gate.next_step == 7


def test_distributed_polls_are_sparse_when_idle_and_close_when_busy() -> None:
    gate = PollGate(debounce_steps=1, interval=0.05)
    assert gate.plan(step=0, now=0.0, busy=False) == 1  # no step time measured yet
    assert gate.plan(step=1, now=0.001, busy=False) == 1 + 50  # 1 ms steps: 50 per interval
    assert gate.plan(step=51, now=0.051, busy=True) == 52  # commands flowing: next step
    # the steps slow down to 25 ms: taken at once, the next poll is 2 steps away
    assert gate.plan(step=52, now=0.076, busy=False) == 54
    # faster again (1 ms): believed gradually, so one quick stretch does not make polls sparse
    step, now = 54, 0.078
    nxt = gate.plan(step, now, busy=False)
    assert nxt == 54 + 2
    periods = []
    for _ in range(30):
        now += (nxt - step) * 0.001
        step, nxt = nxt, gate.plan(nxt, now, busy=False)
        periods.append(nxt - step)
    assert periods == sorted(periods) and periods[-1] > 40  # back to about 50 steps


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="debounce_steps"):
        PollGate(0, 0.05)
    with pytest.raises(ValueError, match="poll_interval_sec"):
        PollGate(1, -1)
