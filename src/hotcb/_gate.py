"""When the kernel looks at the commands file: the poll gate.

Alone, a poll is due every ``debounce_steps`` safe points and not more often than
``poll_interval_sec``. Under torch.distributed the clock cannot decide (the ranks must agree), so
polls fall on steps that rank 0 chooses and broadcasts with each batch (:meth:`PollGate.plan`):
close while commands flow, about a poll interval's worth of steps (from the measured step time)
while the commands file is idle. Between two such steps no collective runs.

The kernel checks this object's fields inline on its idle path (alone: count down
``countdown``, then compare the clock with ``next_time`` and arm ``next_time = now +
interval``; distributed: compare the step with ``next_step``); everything else here runs only
when a poll is due.
"""

from __future__ import annotations

__all__ = ["PollGate"]

#: The most steps between two distributed polls, however fast the steps are.
_MAX_PERIOD = 10_000
#: Weight of the newest step time in the running mean (rank 0, distributed only).
_EMA = 0.2


class PollGate:
    """Countdown, clock and distributed next-step gating of polls. Pure: time is passed in."""

    __slots__ = (
        "_last_step",
        "_last_time",
        "countdown",
        "debounce_steps",
        "interval",
        "next_step",
        "next_time",
        "step_time",
    )

    def __init__(self, debounce_steps: int, interval: float) -> None:
        if debounce_steps < 1:
            raise ValueError(f"debounce_steps must be >= 1, got {debounce_steps}")
        if interval < 0:
            raise ValueError(f"poll_interval_sec must be >= 0, got {interval}")
        self.debounce_steps = int(debounce_steps)
        self.interval = float(interval)
        self.countdown = 0
        self.next_time = 0.0
        self.next_step = 0  # distributed: the step of the next poll, agreed by every rank
        self.step_time = 0.0  # distributed, rank 0: running mean of seconds per step
        self._last_step = -1
        self._last_time = 0.0

    def defer(self, step: int) -> None:
        """The poll could not happen here (between micro-batches): try at the next safe point."""
        self.countdown = 0
        self.next_time = 0.0
        self.next_step = step

    def plan(self, step: int, now: float, busy: bool) -> int:
        """Rank 0 at a distributed poll: the step of the next one, for every rank.

        ``busy`` (commands arrived in this poll): the next debounce period. Idle: as many steps
        as fit in the poll interval at the measured step time, so a command still lands within
        about one poll interval while an idle run pays one collective per interval. A step time
        that grows is taken at once, one that shrinks through a running mean."""
        if self._last_step >= 0 and step > self._last_step:
            per_step = (now - self._last_time) / (step - self._last_step)
            # slower steps count at once (a command must not wait for many of them), faster
            # ones through a running mean (one quick burst must not make polls sparse)
            if per_step >= self.step_time:
                self.step_time = per_step
            else:
                self.step_time = (1 - _EMA) * self.step_time + _EMA * per_step
        self._last_step, self._last_time = step, now
        period = self.debounce_steps
        if not busy and self.step_time > 0.0 and self.interval > 0.0:
            period = max(period, min(_MAX_PERIOD, int(self.interval / self.step_time)))
        return step + period
