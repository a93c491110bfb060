"""Freeze modes: whether live commands are accepted, and whether a recipe drives the run.

- ``off``: live commands accepted.
- ``prod``: every external command that would change the trajectory is ``ignored_freeze``;
  ``freeze`` itself and run control (:data:`RUN_CONTROL_OPS`) always pass: freeze blocks
  changes, never the operator's hand on the run.
- ``replay``: external commands ignored; the recipe's ops are applied at their recorded steps.
- ``replay_adjusted``: the same, with a YAML overlay that patches the recipe first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from . import jsonl

#: ``control`` ops that no freeze mode blocks: they steer the run, not its trajectory.
RUN_CONTROL_OPS = frozenset({"pause", "resume", "stop", "checkpoint", "evaluate"})


def passes_freeze(module: str, op: str, source: str | None = None) -> bool:
    """Whether a command goes through in every freeze mode: ``freeze``, run control, ``tune
    disable``, and the tuner's own roll-back of its open trial or end of its start bracket (a
    freeze set during a trial must not leave the trial's values in force)."""
    return (
        module == "freeze"
        or (module == "control" and op in RUN_CONTROL_OPS)
        or (module == "tune" and (op == "disable"
                                  or (op in ("rollback", "bracket") and source == "tune")))
    )  # fmt: skip


class FreezeMode(str, enum.Enum):
    OFF = "off"
    PROD = "prod"
    REPLAY = "replay"
    REPLAY_ADJUSTED = "replay_adjusted"


@dataclass
class FreezeState:
    mode: FreezeMode = FreezeMode.OFF
    recipe_path: str | None = None
    adjust_path: str | None = None
    step_offset: int = 0

    def __post_init__(self) -> None:
        self.mode = FreezeMode(self.mode)

    @property
    def accepts_live(self) -> bool:
        return self.mode is FreezeMode.OFF

    @property
    def replaying(self) -> bool:
        return self.mode in (FreezeMode.REPLAY, FreezeMode.REPLAY_ADJUSTED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "recipe_path": self.recipe_path,
            "adjust_path": self.adjust_path,
            "step_offset": self.step_offset,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> FreezeState:
        d = d or {}
        return cls(
            mode=FreezeMode(d.get("mode") or "off"),
            recipe_path=d.get("recipe_path"),
            adjust_path=d.get("adjust_path"),
            step_offset=int(d.get("step_offset") or 0),
        )

    def save(self, path: str) -> None:
        jsonl.write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> FreezeState:
        return cls.from_dict(jsonl.read_json(path))
