"""Resume planning, as pure functions over ledger entries.

A run resumed from a checkpoint at step S re-applies the ledger's changes made after S at their
original steps (``source: "resume"``), and puts back on the schedule the ``at_step`` commands
that were still waiting, so it follows the same trajectory and nothing is applied twice.
Entries a branch inherited from its parent (``"inherited": true``, :mod:`hotcb.branch`) are
never applied again: the parent's checkpoint holds what they did.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from . import jsonl
from .errors import HotcbError
from .ledger import LedgerEntry
from .ops import HotOp
from .runfiles import RunPaths

__all__ = ["branched_before", "refuse_lost_ledger", "resume_plan", "waiting_plan"]


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


def resume_plan(entries: Iterable[Mapping[str, Any]], after_seq: int) -> list[tuple[int, HotOp]]:
    """``(step, op)`` for every change the ledger applied after ``seq == after_seq`` (the
    checkpoint's), to re-apply at its original step; each command once."""
    plan: list[tuple[int, HotOp]] = []
    queued: set[str] = set()
    gone: set[str] = set()  # the tuner's changes after the checkpoint: it decides afresh
    for raw in entries:
        entry = LedgerEntry.from_dict(raw)
        if entry.seq <= after_seq or entry.inherited:
            continue
        if not entry.reapplied_on_resume():
            if entry.module == "tune" and entry.cmd_id:
                gone.add(entry.cmd_id)
            continue
        if entry.extra.get("undo_of") in gone:  # an undo of the replaced life's tuner trial: in
            continue  # this life another trial is open there, and it would set that one's values
        if isinstance(entry.extra.get("relative_to"), Mapping):
            # a factor of the value then in force (the autopilot's lr × 0.5): the same factor
            # of the value in force now, not the number it reached in the life it replaces
            op = entry.to_op(keep=("relative_to",), source="resume", params=dict(entry.params))
        else:
            op = entry.to_op(source="resume")
        if op is None or op.cmd_id in queued:
            continue
        queued.add(op.cmd_id)
        plan.append((entry.step or 0, op))
    return plan


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
