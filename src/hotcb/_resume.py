"""Resume planning, as pure functions over ledger entries.

A run resumed from a checkpoint at step S re-applies the ledger's changes made after S at their
original steps (``source: "resume"``), and puts back on the schedule the ``at_step`` commands
that were still waiting, so it follows the same trajectory and nothing is applied twice.
Entries a branch inherited from its parent (``"inherited": true``, :mod:`hotcb.branch`) are
never applied again: the parent's checkpoint holds what they did.

The newest command wins: a re-applied command does not set a knob that a command written after
it (sent while the trainer was down, or by a later life) has set in this life already
(:class:`NewerCommands`); its other keys still apply. A re-applied undo is taken back whole
or not at all.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import jsonl
from .errors import HotcbError
from .ledger import LedgerEntry, last_entry
from .ops import ACTUATOR_MODULES, HotOp
from .runfiles import RunPaths

__all__ = [
    "LeftOut",
    "NewerCommands",
    "ResumePlan",
    "branched_before",
    "plan_resume",
    "refuse_lost_ledger",
    "resume_plan",
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
    """Raise when a kernel ran here before (its fields in ``hotcb.run.json``, or that file is
    there but unreadable; a kernel creates the ledger file at once), its commands file has
    content and its ledger is lost: the file is gone, emptied, or holds not one entry
    (zero-filled, garbage). Starting would apply every old command again, ``stop`` included.
    ``hotcb launch`` writes the file before the trainer's kernel exists, and commands sent in
    between are new, not lost; so are commands sent to a run that never ledgered one (its
    ledger is empty, and the run said seq 0)."""
    try:
        commands = os.stat(paths.commands).st_size
    except FileNotFoundError:
        return
    meta = jsonl.read_json(paths.run_meta, None)
    if commands == 0:
        return
    if not isinstance(meta, dict):
        # a run.json that is there but unreadable (emptied, garbage: it is only ever
        # replaced whole) was written by a kernel or a launch: the ledger tells the rest
        if not os.path.exists(paths.run_meta):
            return
        meta = {}
    elif "hotcb_version" not in meta:
        return
    lost = _lost(paths, meta)
    if lost is None:
        return
    raise HotcbError(
        f"{paths.ledger} {lost} but {paths.commands} holds {commands} bytes of commands "
        "that a previous run of this directory may have applied; hotcb will not apply them a "
        "second time. Restore the ledger, start in a fresh run directory, or apply them again "
        "on purpose with HotKernel(replay_commands=True) / HOTCB_REPLAY_COMMANDS=1"
    )


def _lost(paths: RunPaths, meta: Mapping[str, Any]) -> str | None:
    """How the ledger is lost (``is missing``, ``was emptied``, ``holds no readable
    entry``), or None when it holds an entry to resume from, or never held one.

    An empty ledger was emptied (``: > hotcb.applied.jsonl``) when the last kernel here had
    ledgered entries: the seq of its heartbeat (once a second) or of its end in
    ``hotcb.run.json``. One with neither is the file a kernel created and no command reached
    (a copy of it, or one touched, too). Bytes without a single entry (zeros, garbage) were
    written, so they held entries once."""
    try:
        st = os.stat(paths.ledger)
    except FileNotFoundError:
        return "is missing"
    except OSError:  # unreadable: reading it to resume will say so
        return None
    if st.st_size == 0:
        beat = jsonl.read_json(paths.heartbeat, None)
        ended = meta.get("ended")
        seqs = [d.get("seq") for d in (beat, ended) if isinstance(d, dict)]
        held = max((q for q in seqs if type(q) is int), default=0)
        return f"was emptied (it held {held} entries)" if held > 0 else None
    try:
        found = last_entry(paths.ledger)
    except OSError:  # not a regular file, unreadable: reading it to resume will say so
        return None
    return f"holds no readable entry in its {st.st_size} bytes" if found is None else None


Knob = tuple[str, ...]  # ("act", key) for an actuator, ("cb", callback id, key)


@dataclass
class ResumePlan:
    """What a resume from the checkpoint at ``seq == after_seq`` applies again."""

    #: ``(step, op)`` for each change to re-apply at its original step
    ops: list[tuple[int, HotOp]] = field(default_factory=list)
    #: how many lives the ledger records (the first, and one per ``kernel resume`` entry):
    #: the number of the life that resumes now
    lives: int = 1
    #: the life each command was first ledgered in, by cmd_id (0: before the first resume);
    #: the age :class:`NewerCommands` judges it by
    ages: dict[str, int] = field(default_factory=dict)
    #: the knobs each re-applied ``control undo`` changed in the life it replaces, by its cmd_id
    undoes: dict[str, list[Knob]] = field(default_factory=dict)


def resume_plan(entries: Iterable[Mapping[str, Any]], after_seq: int) -> list[tuple[int, HotOp]]:
    """``(step, op)`` for every change the ledger applied after ``seq == after_seq`` (the
    checkpoint's), to re-apply at its original step; each command once."""
    return plan_resume(entries, after_seq).ops


def plan_resume(entries: Iterable[Mapping[str, Any]], after_seq: int) -> ResumePlan:
    """:func:`resume_plan`, with the lives the ledger records and each command's age.

    A command's age is the life that first ledgered it, counted in ledger order (the ``kernel
    resume`` entries), not by its position in the commands file: the file may have been
    replaced or truncated in between, and a new file's offsets start again at 0."""
    plan = ResumePlan()
    queued: set[str] = set()
    gone: set[str] = set()  # the tuner's changes after the checkpoint: it decides afresh
    made: dict[str, tuple[str | None, str | None]] = {}  # applied cmd_id -> (module, id)
    scheduled: set[str] = set()  # commands scheduled (at_step) after the checkpoint
    for raw in entries:
        entry = LedgerEntry.from_dict(raw)
        if entry.module == "kernel" and entry.op == "resume":
            plan.lives += 1
        if entry.cmd_id:
            plan.ages.setdefault(entry.cmd_id, plan.lives - 1)
            if entry.decision == "applied":
                made.setdefault(entry.cmd_id, (entry.module, entry.id))
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
        undo_of = entry.extra.get("undo_of")
        if entry.module == "control" and entry.op == "undo" and isinstance(undo_of, str):
            module, ident = made.get(undo_of, (None, None))
            plan.undoes[op.cmd_id] = _knobs(module, ident, entry.changes or ())
        plan.ops.append((entry.step or 0, op))
    return plan


def _knobs(module: str | None, ident: str | None, keys: Iterable[str]) -> list[Knob]:
    """The knobs a change of ``keys`` by a ``module`` command sets (none: not a knob)."""
    if module in ACTUATOR_MODULES:
        return [("act", k) for k in keys]
    if module == "cb":
        return [("cb", str(ident), k) for k in keys]
    return []


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


@dataclass
class LeftOut:
    """What :meth:`NewerCommands.screen` left out of a re-applied op, for its ledger entry."""

    #: each key left out -> the ``seq`` of the newer command's entry (the entry's ``newer``)
    newer: dict[str, int]
    #: the entry's ``error``: ``lr was set by a newer command (#13): not re-applied``
    why: str


#: Sources of the automatic controllers (the rule and LLM autopilots, the tuner): their changes
#: in a resumed life are no newer intent than a re-applied command.
_AUTOMATIC = frozenset({"autopilot", "ai", "tune"})


class NewerCommands:
    """The newest command wins over a resume: which knobs a command newer than a re-applied
    one has set in this life.

    A command's age is the life that first ledgered it (:attr:`ResumePlan.ages`); a command
    the ledger did not hold when this life began (sent while the trainer was down, or since,
    into the same commands file or a new one) is this life's: newer than every command an
    earlier life applied, whatever their steps. Within one life the steps decide, as they did
    the first time (an ``at_step`` command written early lands late). A knob is an actuator
    (``lr``, ``lr@group1``) or a callback's parameter (``cb`` ``set_params``, by callback id
    and key). A newer ``lr`` moved every group, so it took ``lr@group1`` over too; a newer
    ``lr@group1`` takes ``lr`` over, which would move group 1 with the others."""

    def __init__(
        self,
        ages: Mapping[str, int],
        life: int,
        is_actuator: Callable[[str], bool],
        undoes: Mapping[str, Sequence[Knob]] | None = None,
    ) -> None:
        self.ages = ages
        self.now = life
        self.is_actuator = is_actuator
        self.undoes = undoes or {}
        self.set_by: dict[Knob, tuple[int, int]] = {}  # knob -> (life, ledger seq)
        self.reapplied: dict[str, list[Knob]] = {}  # cmd_id -> the knobs it changed again
        self.left_out: dict[str, LeftOut] = {}  # cmd_id -> why it was not re-applied at all

    def life(self, op: HotOp) -> int:
        """The life ``op`` was written in (0: before the first resume of the ledger)."""
        return self.ages.get(op.cmd_id, self.now)

    def note(self, op: HotOp, changes: Mapping[str, Any] | None, seq: int) -> None:
        """An applied command (ledger entry ``seq``) set the knobs it changed. An automatic
        controller's is not noted: it reacts to the run the resume is putting back on its
        trajectory, and a person's change re-applied there wins over it, as it did live."""
        if not op.cmd_id or op.source in _AUTOMATIC:
            return
        knobs: list[Knob]
        if op.module in ACTUATOR_MODULES or (op.module == "control" and op.op == "undo"):
            knobs = [("act", k) for k in changes or () if self.is_actuator(k)]
        elif op.module == "cb" and op.op == "set_params":
            knobs = [("cb", str(op.id), k) for k in op.params]
        else:
            return
        if op.source == "resume" and changes:  # what an undo of it takes back in this life
            self.reapplied[op.cmd_id] = knobs
        life = self.life(op)
        for knob in knobs:
            self.set_by[knob] = (life, seq)

    def screen(self, op: HotOp) -> tuple[HotOp | None, LeftOut | None]:
        """A re-applied ``op`` without the keys a newer command set (None when that is all of
        them, or for an undo, any), and what was left out and why."""
        if op.source != "resume" or not self.set_by:
            return op, None
        if op.module == "control" and op.op == "undo":
            return self._screen_undo(op)
        knobs: dict[str, list[Knob]]
        if op.module in ACTUATOR_MODULES:
            knobs = {k: [("act", k)] for k in op.params}
        elif op.module == "cb" and op.op == "set_params":
            knobs = {k: [("cb", str(op.id), k)] for k in op.params}
        else:
            return op, None
        newer, why = self._newer(op, knobs)
        if not newer:
            return op, None
        left = LeftOut(newer, f"{why}: not re-applied")
        params = {k: v for k, v in op.params.items() if k not in newer}
        if not params:
            self.left_out[op.cmd_id] = left
            return None, left
        extra = dict(op.extra)
        if isinstance(extra.get("relative_to"), Mapping):
            extra["relative_to"] = {k: v for k, v in extra["relative_to"].items()
                                    if k in params}  # fmt: skip
        return dataclasses.replace(op, params=params, extra=extra), left

    def _screen_undo(self, op: HotOp) -> tuple[HotOp | None, LeftOut | None]:
        """A re-applied undo takes back what its target changed in this life (when the resume
        re-applied it) or in the life it replaces: all of it or nothing, as an undo names a
        command, not keys. Not re-applied when a newer command set one of those knobs, nor
        when its target was left out (there is nothing to take back)."""
        target = str(op.params.get("cmd_id"))
        gone = self.left_out.get(target)
        if gone is not None:
            left = LeftOut(gone.newer, f"nothing to undo: its target {target} was left out "
                                       f"({gone.why})")  # fmt: skip
            self.left_out[op.cmd_id] = left
            return None, left
        knobs = self.reapplied.get(target, self.undoes.get(op.cmd_id, []))
        newer, why = self._newer(op, {knob[-1]: [knob] for knob in knobs})
        if not newer:
            return op, None
        rest = len(knobs) - len(newer)
        whole = f"; an undo is not re-applied in part ({rest} other key(s))" if rest > 0 else ""
        left = LeftOut(newer, f"{why}: not re-applied{whole}")
        self.left_out[op.cmd_id] = left
        return None, left

    def _newer(self, op: HotOp, knobs: Mapping[str, list[Knob]]) -> tuple[dict[str, int], str]:
        """``{key: seq}`` of the newest entry newer than ``op`` that set a knob each key moves
        (itself; for an actuator also its base, ``lr`` of ``lr@group1``, and the per-group
        knobs of a base), and the reason in words."""
        life = self.life(op)
        newer: dict[str, int] = {}
        parts: list[str] = []
        for key, names in knobs.items():
            found = [(s[1], n) for n in self._overlapping(names)
                     if (s := self.set_by.get(n)) is not None and s[0] > life]  # fmt: skip
            if not found:
                continue
            # the key itself first among one entry's knobs: a plain lr on two groups ledgers
            # lr@group1 too, and was said to be "lr@group1 … and lr moves every group"
            seq, knob = max(found, key=lambda f: (f[0], f[1][-1] == key))
            newer[key] = seq
            if "@" in knob[-1] and "@" not in key:
                parts.append(f"{knob[-1]} was set by a newer command (#{seq}) and {key} moves "
                             "every group")  # fmt: skip
            else:
                parts.append(f"{key} was set by a newer command (#{seq})")
        return newer, ", ".join(parts)

    def _overlapping(self, knobs: Iterable[Knob]) -> list[Knob]:
        out: list[Knob] = []
        for knob in knobs:
            out.append(knob)
            if knob[0] != "act":
                continue
            key = knob[1]
            base, at, _ = key.partition("@")
            if at:
                out.append(("act", base))
            else:  # lr: every lr@group… set in this life (lr would move that group too)
                out.extend(k for k in self.set_by
                           if k[0] == "act" and k[1].partition("@")[:2] == (key, "@"))  # fmt: skip
        return out


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
