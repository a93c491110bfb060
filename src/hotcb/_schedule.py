"""Step-driven op sources: ``at_step`` schedules, resume replays (and recipes, see recipe.py).

The kernel asks each source for its next due step once per change, and keeps the minimum in one
int, so the idle path of ``apply()`` pays one comparison for all of them.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .ops import HotOp, command_to_hotop

NEVER = 1 << 62


class StepSource(Protocol):
    """Ops that fall due by step (and event), not by clock."""

    def next_step(self) -> int: ...

    def pop_due(self, step: int, events: Sequence[str]) -> list[HotOp]: ...


class Schedule:
    """A heap of ops due at a step: live ``at_step`` commands and resume re-applications."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, HotOp]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, step: int, op: HotOp) -> None:
        heapq.heappush(self._heap, (step, next(self._order), op))

    def next_step(self) -> int:
        return self._heap[0][0] if self._heap else NEVER

    def pop_due(self, step: int, events: Sequence[str]) -> list[HotOp]:
        out = []
        while self._heap and self._heap[0][0] <= step:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def cancel(self, cmd_id: str) -> HotOp | None:
        for i, (_, _, op) in enumerate(self._heap):
            if op.cmd_id == cmd_id:
                self._heap.pop(i)
                heapq.heapify(self._heap)
                return op
        return None

    def ops(self) -> list[tuple[int, HotOp]]:
        return [(s, op) for s, _, op in sorted(self._heap)]


@dataclass
class Ramp:
    """A numeric actuator moving from ``start`` to ``target`` over ``steps`` steps."""

    key: str
    start: Any
    target: Any
    start_step: int
    steps: int
    shape: str
    op: HotOp
    is_int: bool = False
    #: under an LR scheduler, how far the ramp's moves have scaled the schedule so far (each
    #: step's value over the schedule's value it replaced): an undo takes that ratio back
    factor: float = 1.0
    #: the value its last move set (None: it has not moved in this process)
    reached: Any = None

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps

    def value_at(self, step: int) -> Any:
        t = min(1.0, max(0.0, (step - self.start_step) / self.steps))
        if self.shape == "cosine":
            t = (1.0 - math.cos(math.pi * t)) / 2.0
        if isinstance(self.target, tuple):
            return tuple(a + (b - a) * t for a, b in zip(self.start, self.target, strict=False))
        value = self.start + (self.target - self.start) * t
        return round(value) if self.is_int else value

    def to_dict(self) -> dict[str, Any]:
        """The ramp as JSON-friendly data for a checkpoint (its op as a command record)."""
        return {
            "key": self.key,
            "start": self.start,
            "target": self.target,
            "start_step": self.start_step,
            "steps": self.steps,
            "shape": self.shape,
            "is_int": self.is_int,
            "factor": self.factor,
            "record": self.op.to_record(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ramp:
        """Inverse of :meth:`to_dict`; raises ``CommandError``/``KeyError``/``TypeError``/
        ``ValueError`` for a damaged entry."""
        start, target = d["start"], d["target"]
        if isinstance(target, list):  # betas, after a trip through JSON
            start, target = tuple(start), tuple(target)
        return cls(
            d["key"],
            start,
            target,
            int(d["start_step"]),
            int(d["steps"]),
            d["shape"],
            command_to_hotop(d["record"]),
            is_int=bool(d.get("is_int")),
            factor=float(d.get("factor", 1.0)),
        )
