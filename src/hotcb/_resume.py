"""Resume planning, as pure functions over ledger entries.

A run resumed from a checkpoint at step S re-applies the ledger's changes made after S at their
original steps (``source: "resume"``), and puts back on the schedule the ``at_step`` commands
that were still waiting, so it follows the same trajectory and nothing is applied twice.
Entries a branch inherited from its parent (``"inherited": true``, :mod:`hotcb.branch`) are
never applied again: the parent's checkpoint holds what they did.

The newest command wins: a re-applied command does not set a knob that a command written after
it (sent while the trainer was down, or by a later life) has set in this life already
(:class:`NewerCommands`); its other keys still apply.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import jsonl
from .errors import HotcbError
from .ledger import LedgerEntry
from .ops import ACTUATOR_MODULES, HotOp
from .runfiles import RunPaths

__all__ = [
    "NewerCommands",
    "ResumePlan",
    "branched_before",
    "plan_resume",
    "refuse_lost_ledger",
    "resume_plan",
    "superseded_note",
    "waiting_plan",
]


def branched_before(paths: RunPaths, seq: int) -> bool:
    """Whether a checkpoint whose kernel state has ``seq`` predates this run's branch point
    (``hotcb.run.json``'s ``branch``, :mod:`hotcb.branch`): it is the parent's checkpoint,
    and its cursor counts bytes of the parent's commands file, not this run's."""
    meta = jsonl.read_json(paths.run_meta, {})
    info = meta.get("branch") if isinstance(meta, dict) else None
    at = info.get("seq") if isinstance(info, dict) else None
    return type(at) is int and seq <= at


def refuse_lost_ledger(paths: RunPaths) -> None:
    """Raise when a kernel ran here before (its fields in ``hotcb.run.json``; it creates the
    ledger file at once), its commands file has content and its ledger file is gone: starting
    would apply every old command again, ``stop`` included. ``hotcb launch`` writes the file
    before the trainer's kernel exists, and commands sent in between are new, not lost."""
    try:
        commands = os.stat(paths.commands).st_size
    except FileNotFoundError:
        return
    if commands == 0 or os.path.exists(paths.ledger) or not _kernel_ran(paths):
        return
    raise HotcbError(
        f"{paths.ledger} is missing but {paths.commands} holds {commands} bytes of commands "
        "that a previous run of this directory may have applied; hotcb will not apply them a "
        "second time. Restore the ledger, start in a fresh run directory, or apply them again "
        "on purpose with HotKernel(replay_commands=True) / HOTCB_REPLAY_COMMANDS=1"
    )


def _kernel_ran(paths: RunPaths) -> bool:
    """Whether ``hotcb.run.json`` holds what a kernel writes there when it starts."""
    meta = jsonl.read_json(paths.run_meta, None)
    return isinstance(meta, dict) and "hotcb_version" in meta


@dataclass
class ResumePlan:
    """What a resume from the checkpoint at ``seq == after_seq`` applies again."""

    #: ``(step, op)`` for each change to re-apply at its original step; ``op.cursor`` is where
    #: its line ends in the commands file (the newest command wins: :class:`NewerCommands`)
    ops: list[tuple[int, HotOp]] = field(default_factory=list)
    #: the commands file's read position when each earlier life was resumed (the cursor of its
    #: ``kernel resume`` entry): a command past one was written after that life began
    lives: list[int] = field(default_factory=list)


def resume_plan(entries: Iterable[Mapping[str, Any]], after_seq: int) -> list[tuple[int, HotOp]]:
    """``(step, op)`` for every change the ledger applied after ``seq == after_seq`` (the
    checkpoint's), to re-apply at its original step; each command once."""
    return plan_resume(entries, after_seq).ops


def plan_resume(entries: Iterable[Mapping[str, Any]], after_seq: int) -> ResumePlan:
    """:func:`resume_plan`, with the lives the ledger records (:attr:`ResumePlan.lives`)."""
    plan = ResumePlan()
    queued: set[str] = set()
    gone: set[str] = set()  # the tuner's changes after the checkpoint: it decides afresh
    first: dict[str, int] = {}  # cmd_id -> the cursor of its first entry: its line's end
    scheduled: set[str] = set()  # commands scheduled (at_step) after the checkpoint
    for raw in entries:
        entry = LedgerEntry.from_dict(raw)
        if entry.cmd_id:
            first.setdefault(entry.cmd_id, entry.cursor)
        if entry.module == "kernel" and entry.op == "resume":
            plan.lives.append(entry.cursor)
        if entry.seq <= after_seq or entry.inherited:
            continue
        if entry.decision == "scheduled" and entry.cmd_id:
            scheduled.add(entry.cmd_id)
        if not entry.reapplied_on_resume():
            if entry.module == "tune" and entry.cmd_id:
                gone.add(entry.cmd_id)
            continue
        op = _again(entry, gone, scheduled)
        if op is None or op.cmd_id in queued:
            continue
        queued.add(op.cmd_id)
        op.cursor = first.get(op.cmd_id, entry.cursor)
        plan.ops.append((entry.step or 0, op))
    return plan


def _again(entry: LedgerEntry, gone: set[str], scheduled: set[str]) -> HotOp | None:
    """The op that applies ``entry``'s change again; None when a resume must not."""
    if entry.extra.get("undo_of") in gone:  # an undo of the replaced life's tuner trial: in
        return None  # this life another trial is open there, and it would set that one's values
    if (
        entry.module == "control"
        and entry.op == "cancel"
        and ((entry.params or {}).get("cmd_id") in scheduled)
    ):  # its target was scheduled after the checkpoint: the resume does not put a cancelled
        return None  # command back on the schedule, so there is nothing to cancel
    if isinstance(entry.extra.get("relative_to"), Mapping):
        # a factor of the value then in force (the autopilot's lr × 0.5): the same factor
        # of the value in force now, not the number it reached in the life it replaces
        return entry.to_op(keep=("relative_to",), source="resume", params=dict(entry.params))
    return entry.to_op(source="resume")


Knob = tuple[str, ...]


class NewerCommands:
    """The newest command wins over a resume: which knobs a command newer than a re-applied
    one has set in this life.

    A command's age is the life it was written in, told by where its line ends in the
    commands file (``op.cursor``) against :attr:`ResumePlan.lives` and the read position at
    this life's start: a person's ``hotcb set lr=…`` sent while the trainer was down is newer
    than every command the dead life applied, whatever their steps. Within one life the steps
    decide, as they did the first time (an ``at_step`` command written early lands late). A
    knob is an actuator (``lr``, ``lr@group1``: a newer ``lr`` moved every group) or a
    callback's parameter (``cb`` ``set_params``, by callback id and key)."""

    def __init__(self, lives: Sequence[int], is_actuator: Callable[[str], bool]) -> None:
        self.lives = sorted(lives)
        self.is_actuator = is_actuator
        self.set_by: dict[Knob, tuple[int, int]] = {}  # knob -> (life, ledger seq)

    def life(self, op: HotOp) -> int:
        """The life ``op`` was written in (0: before the first resume of the ledger)."""
        return bisect.bisect_left(self.lives, op.cursor)

    def note(self, op: HotOp, changes: Mapping[str, Any] | None, seq: int) -> None:
        """An applied command (ledger entry ``seq``) set the knobs it changed."""
        if not op.cmd_id:
            return
        knobs: list[Knob]
        if op.module in ACTUATOR_MODULES or (op.module == "control" and op.op == "undo"):
            knobs = [("act", k) for k in changes or () if self.is_actuator(k)]
        elif op.module == "cb" and op.op == "set_params":
            knobs = [("cb", str(op.id), k) for k in op.params]
        else:
            return
        life = self.life(op)
        for knob in knobs:
            self.set_by[knob] = (life, seq)

    def screen(self, op: HotOp) -> tuple[HotOp | None, dict[str, int]]:
        """A re-applied ``op`` without the keys a newer command set (None when that is all of
        them), and ``{key: seq}`` of the newer command's entry for each key left out."""
        if op.source != "resume" or not self.set_by:
            return op, {}
        knobs: dict[str, list[Knob]]
        if op.module in ACTUATOR_MODULES:
            knobs = {k: [("act", k), ("act", k.partition("@")[0])] for k in op.params}
        elif op.module == "cb" and op.op == "set_params":
            knobs = {k: [("cb", str(op.id), k)] for k in op.params}
        else:
            return op, {}
        life = self.life(op)
        newer: dict[str, int] = {}
        for key, names in knobs.items():
            seqs = [s[1] for s in map(self.set_by.get, names) if s is not None and s[0] > life]
            if seqs:
                newer[key] = max(seqs)
        if not newer:
            return op, {}
        params = {k: v for k, v in op.params.items() if k not in newer}
        if not params:
            return None, newer
        extra = dict(op.extra)
        if isinstance(extra.get("relative_to"), Mapping):
            extra["relative_to"] = {k: v for k, v in extra["relative_to"].items()
                                    if k in params}  # fmt: skip
        return dataclasses.replace(op, params=params, extra=extra), newer


def superseded_note(newer: Mapping[str, int]) -> str:
    """``lr was set by a newer command (#13): not re-applied``, for a ledger entry."""
    parts = ", ".join(f"{k} was set by a newer command (#{seq})" for k, seq in newer.items())
    return f"{parts}: not re-applied"


def waiting_plan(
    scheduled: Iterable[Mapping[str, Any]], after_seq: int, queued: set[str]
) -> list[tuple[int, HotOp]]:
    """``(at_step, op)`` for each ``scheduled`` entry after ``after_seq`` whose command is still
    waiting (nothing later in the ledger) and not in ``queued``: the commands file's cursor is
    past their lines, so after a restart nothing else would ever apply them."""
    plan: list[tuple[int, HotOp]] = []
    for raw in scheduled:
        entry = LedgerEntry.from_dict(raw)
        if entry.seq <= after_seq or entry.inherited or entry.cmd_id in queued:
            continue
        op = entry.to_op(keep=("at_step", "source"))
        if op is None:
            continue
        op.cursor = entry.cursor
        plan.append((int(entry.extra.get("at_step") or 0), op))
    return plan
