"""``start: bracket``: the tuner's first move, judged on arms trained from the same weights.

Before its baseline segments the tuner trains one segment (an *arm*) at the lr in force, puts
the model's weights and the optimizer's state back as they were, trains the same length at lr ×
low, puts them back again, and trains at lr × high (``low``/``high``: the lr knob's range, 0.25
and 4 by default). The arm whose objective ended best wins (by more than the two levels' noise:
a near tie goes to the arm that came first, the lr in force), and the run goes on from the end
of that arm, at its lr. When a move won, the next round pits it against the same move once more
(lr × 4 × 4 …), for up to :data:`ROUNDS` rounds; when a repeated move loses, a last round tries
half of it (its square root: × 2 after × 4). Losing arms cost their steps and nothing else.
When the lr settled on is not the one the bracket began at, the run goes on from the weights it
began with: each round's winner trained at an lr that a later round found too high.

Why: a trial judged against a trend cannot repair what the first segments at a bad lr did to the
weights (``docs/tune.md``); arms from one copy of the weights throw the losers' weights away.

This module holds the leader's plan only (which arm comes next, which won); the copies of the
weights are taken and put back by the ``tune bracket`` commands, on every rank at the same step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._space import Knob

__all__ = ["ROUNDS", "Bracket", "bracket_ended"]

ROUNDS = 3  # rounds of whole moves at most: from 30x too low, two x4 moves and one too many


@dataclass
class Arm:
    factor: float  # of the round's base value
    value: float  # the knob's value in this arm
    level: float | None = None  # the objective's level at the arm's end (None: not yet)
    noise: float = 0.0  # the level's relative standard error (``_score.noise``)
    # the value it really began at: under an LR scheduler a move is a ratio of the lr the
    # schedule has reached, which ``value`` (the plan's) does not follow
    at: float | None = None


@dataclass
class Bracket:
    """The bracket under way. ``target(factor, base)``: the knob's value for a move, within its
    bounds. ``sign``: +1 when lower is better."""

    knob: Knob
    base: float
    target: Callable[[float, float], float]
    sign: float = 1.0
    round: int = 1
    index: int = 0  # the arm under way
    best: int | None = None  # the round's best arm so far
    arms: list[Arm] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # the rounds closed
    arm_step: int = 0  # the step the arm under way began at
    refined: bool = False  # the last round, of half a move, is under way or done
    # the arm whose value is in force: (its value as planned, its round's base), a schedule aside
    in_force: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.arms:
            self.arms = self._arms((self.knob.low, self.knob.high))

    def _arms(self, moves: tuple[float, ...]) -> list[Arm]:
        """The round's arms: the base value first, then each move that really moves it (one
        that a bound holds at the base value is left out)."""
        arms = [Arm(1.0, self.base)]
        for factor in moves:
            value = self.target(factor, self.base)
            if not math.isclose(value, self.base, rel_tol=1e-9):
                arms.append(Arm(factor, value))
        return arms

    @property
    def arm(self) -> Arm:
        return self.arms[self.index]

    @property
    def winner(self) -> Arm:
        return self.arms[self.best if self.best is not None else 0]

    def close(self, level: float, noise: float = 0.0) -> tuple[str, bool]:
        """Score the arm under way with the objective's ``level`` at its end and that level's
        relative standard error ``noise``. An arm beats the round's best so far only by more
        than their noise together: a near tie goes to the arm that came first, the lr in force
        before the moves. Returns what comes next, ``"arm"`` (the round's next arm, from the
        round's start), ``"round"`` (a new round, from the winner's end) or ``"settle"`` (the
        bracket is over: go on from the winner's end), and whether this arm is the round's best
        so far (its end is kept)."""
        arm = self.arm
        arm.level, arm.noise = level, noise
        best = self.best
        save = best is None or self._beats(arm, self.arms[best])
        if save:
            self.best = self.index
        if self.index + 1 < len(self.arms):
            self.index += 1
            return "arm", save
        winner = self.winner
        self.rounds.append({"round": self.round, "base": self.base, "from": self.arms[0].at,
                            "arms": [a.__dict__.copy() for a in self.arms],
                            "winner": winner.factor})  # fmt: skip
        move = self.arms[1].factor if len(self.arms) == 2 else None  # a repeated move
        if winner.factor == 1.0 and move is not None and not self.refined and abs(
                math.log(move)) > math.log(2.0) + 1e-9:  # fmt: skip
            # the move went one step too far: half of it (in log space) from here
            self.refined, self.round = True, self.round + 1
            self.arms = self._arms((math.sqrt(move),))
            self.index, self.best = 0, None
            if len(self.arms) > 1:
                return "round", save
            self.arms = [winner]
            return "settle", save
        if (winner.factor == 1.0 or self.refined or self.round >= ROUNDS
                or not math.isfinite(self._ranked(winner))):  # fmt: skip
            return "settle", save
        self.round += 1
        self.base = winner.value
        self.arms = self._arms((winner.factor,))
        self.index, self.best = 0, None
        if len(self.arms) == 1:  # the move is held at a bound: nothing left to compare
            self.rounds[-1]["held"] = True
            self.arms = [winner]  # the settle goes on from the winner, at its value
            return "settle", save
        return "round", save

    def _beats(self, arm: Arm, other: Arm) -> bool:
        """``arm`` ended better than ``other`` by more than their levels' noise."""
        ranked, against = self._ranked(arm), self._ranked(other)
        if not math.isfinite(against):
            return math.isfinite(ranked)
        if not math.isfinite(ranked):
            return False
        margin = math.hypot(arm.noise * (arm.level or 0.0), other.noise * (other.level or 0.0))
        return ranked < against - margin

    def _ranked(self, arm: Arm) -> float:
        level = arm.level
        return self.sign * level if level is not None and math.isfinite(level) else math.inf

    def to_dict(self) -> dict[str, Any]:
        """What ``tune status`` shows."""
        return {
            "knob": self.knob.name,
            "round": self.round,
            "arm": self.index,
            "base": self.base,
            "from": self.arms[0].at,
            "arms": [a.__dict__.copy() for a in self.arms],
            "rounds": self.rounds,
            "in_force": list(self.in_force) if self.in_force else None,
        }


def bracket_ended(doc: Mapping[str, Any], step: int, reason: str | None = None) -> dict[str, Any]:
    """How a bracket ended, for ``tune status`` (from :meth:`Bracket.to_dict`): its rounds, at
    ``step``, with the ``reason`` it was cut short, and without what only a bracket under way
    has (the arm under way, the value in force, the values to restore)."""
    out = {k: v for k, v in doc.items() if k not in ("arm", "in_force", "values")}
    out["ended_at"] = step
    if reason:
        out["reason"] = reason
    return out
