"""PollGate: when the kernel looks at the commands file (pure: time is passed in)."""

from __future__ import annotations

from typing import Any

import pytest

from hotcb import HotClient, HotKernel
from hotcb._gate import PollGate


def test_a_deferred_poll_is_retried_at_the_next_safe_point() -> None:
    gate = PollGate(debounce_steps=3, interval=0.05)
    gate.countdown, gate.next_time = 2, 99.0
    gate.defer(step=7)  # between micro-batches: no poll happened
    assert gate.countdown == 0 and gate.next_time == 0.0 and gate.next_step == 7


def test_local_polls_follow_the_countdown_and_the_clock(tmp_path: Any) -> None:
    kernel = HotKernel(tmp_path, debounce_steps=1, poll_interval_sec=3600, metrics_collector=False)
    kernel.apply({"step": 0})  # the first safe point polls, the next is an hour away
    cid = HotClient(tmp_path, validate=False).checkpoint()
    for step in range(1, 50):
        kernel.apply({"step": step})
    assert not kernel.checkpoint_requested and kernel.nothing_due(50)  # not read yet
    kernel._gate.next_time = 0.0  # the hour has passed
    assert not kernel.nothing_due(50)
    kernel.apply({"step": 50})
    kernel.close()
    assert kernel.checkpoint_requested
    assert HotClient(tmp_path).wait(cid, 5)["step"] == 50


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
