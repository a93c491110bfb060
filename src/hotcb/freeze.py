"""Freeze modes: whether live commands are accepted, and whether a recipe drives the run.

- ``off``: live commands accepted.
- ``prod``: every external command that would change the trajectory is ``ignored_freeze``;
  ``freeze`` itself and run control (:data:`RUN_CONTROL_OPS`) always pass: freeze blocks
  changes, never the operator's hand on the run.
- ``replay``: external commands ignored; the recipe's ops are applied at their recorded steps.
- ``replay_adjusted``: the same, with a YAML overlay that patches the recipe first.
"""

from __future__ import annotations

import contextlib
import enum
import os
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
        """The state ``d`` holds; ValueError (or TypeError) when it holds something else."""
        d = d or {}
        if not isinstance(d, dict):
            raise TypeError(f"a freeze state is an object, not {type(d).__name__}")
        try:
            offset = int(d.get("step_offset") or 0)
        except OverflowError:  # 1e400: JSON's infinity
            raise ValueError(f"step_offset {d.get('step_offset')!r} is not a step") from None
        return cls(
            mode=FreezeMode(d.get("mode") or "off"),
            recipe_path=d.get("recipe_path"),
            adjust_path=d.get("adjust_path"),
            step_offset=offset,
        )

    def save(self, path: str) -> None:
        jsonl.write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> FreezeState:
        return cls.from_dict(jsonl.read_json(path))


def freeze_doc(freeze_path: str, ledger_path: str) -> dict[str, Any]:
    """:func:`saved_freeze`'s state as the status shows it, with its ``warning`` when the file
    did not say it."""
    state, why = saved_freeze(freeze_path, ledger_path)
    return {**state.to_dict(), **({"warning": why} if why else {})}


def saved_freeze(freeze_path: str, ledger_path: str) -> tuple[FreezeState, str | None]:
    """The run's freeze state from ``hotcb.freeze.json``, and None; when that file is
    unreadable (emptied, torn, a mode hotcb does not know) or missing (deleted) while the
    ledger says the run was frozen, the state of the ledger's last applied ``freeze set``, and
    why it came from there. Taken as ``off``, a frozen run (``prod``, a replay) took live
    changes again, silently; and one bad file broke the dashboard's list of every run."""
    doc = jsonl.read_json(freeze_path, None)
    missing = not os.path.exists(freeze_path)
    if isinstance(doc, dict):
        try:
            return FreezeState.from_dict(doc), None
        except (ValueError, TypeError):
            pass  # as unreadable
    last = None
    applied = ("freeze", "set", "applied")
    with contextlib.suppress(OSError):
        for e in jsonl.iter_records(ledger_path, keep=lambda line: b'"freeze"' in line):
            if (e.get("module"), e.get("op"), e.get("decision")) == applied:
                last = e
    state = FreezeState()
    if last is not None:
        with contextlib.suppress(ValueError, TypeError):
            state = FreezeState.from_dict({k: last.get(k, (last.get("params") or {}).get(k))
                                           for k in ("mode", "recipe_path", "adjust_path",
                                                     "step_offset")})  # fmt: skip
    if missing and state.mode is FreezeMode.OFF:
        return state, None  # never frozen (or unfrozen last): a missing file lost nothing
    where = (f"the ledger's last freeze set (#{last.get('seq')}, step {last.get('step')})"
             if last is not None else "no freeze set in the ledger")  # fmt: skip
    return state, (f"{freeze_path} is {'missing' if missing else 'unreadable'}; the freeze "
                   f"mode is {state.mode.value}, from {where}")  # fmt: skip
