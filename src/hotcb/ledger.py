"""The ledger: what really happened to each command, one JSON line per entry, step-indexed.

``hotcb.applied.jsonl`` is authoritative. Each entry carries ``cursor``, the byte offset in the
commands file just after the command it records, so a kernel started on an existing run
directory resumes from the last entry (read from the file's tail) and applies nothing twice.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from typing import Any

from . import jsonl
from .runfiles import FORMAT_VERSION

__all__ = [
    "Decision",
    "LedgerWriter",
    "tail_state",
    "iter_entries",
    "find_entry",
    "pending_scheduled",
]


class Decision(str, enum.Enum):
    APPLIED = "applied"
    REJECTED = "rejected"  # invalid command: the reason in ``error``
    FAILED = "failed"  # raised while applying: state rolled back
    IGNORED_FREEZE = "ignored_freeze"
    SCHEDULED = "scheduled"  # accepted, due at ``at_step``
    NOOP = "noop"  # nothing to do (duplicate, cancelled, already in that state)


#: Keys every ledger entry has, in this order.
ENTRY_KEYS = (
    "v",
    "seq",
    "step",
    "event",
    "wall_time",
    "rank",
    "cmd_id",
    "source",
    "module",
    "op",
    "params",
    "id",
    "decision",
    "changes",
    "error",
    "cursor",
)


class LedgerWriter:
    """Appends batches of entries (one write, one fsync per batch)."""

    def __init__(self, path: str, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync

    def write(self, entries: list[dict[str, Any]]) -> None:
        if entries:
            jsonl.append_many(self.path, entries, fsync=self.fsync)


def tail_state(path: str) -> tuple[int, int]:
    """``(seq, cursor)`` of the last entry, or ``(0, 0)`` for a new ledger."""
    last = jsonl.read_last(path, 1)
    if not last:
        return 0, 0
    entry = last[0]
    return int(entry.get("seq") or 0), int(entry.get("cursor") or 0)


def iter_entries(path: str) -> Iterator[dict[str, Any]]:
    return jsonl.iter_records(path)


def find_entry(path: str, cmd_id: str, decision: str | None = "applied") -> dict[str, Any] | None:
    """The last entry for ``cmd_id`` (with that decision), scanning the whole ledger."""
    found = None
    for e in iter_entries(path):
        if e.get("cmd_id") == cmd_id and (decision is None or e.get("decision") == decision):
            found = e
    return found


def pending_scheduled(path: str) -> list[dict[str, Any]]:
    """Scheduled entries with no later entry for the same command: what is still waiting.

    Reads the whole ledger, but parses only lines that can matter (a ``scheduled`` decision,
    or naming a command still waiting): a kernel does this at start, on ledgers of any size."""
    waiting: dict[str, dict[str, Any]] = {}
    ids: dict[str, bytes] = {}
    marker = b'"scheduled"'

    def keep(line: bytes) -> bool:
        return marker in line or any(b in line for b in ids.values())

    for e in jsonl.iter_records(path, keep=keep):
        cid = e.get("cmd_id")
        if e.get("decision") == Decision.SCHEDULED.value:
            waiting[cid] = e
            ids[cid] = jsonl.dumps(cid).encode()
        elif cid in waiting:
            del waiting[cid]
            del ids[cid]
    return list(waiting.values())


def new_entry(**fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = dict.fromkeys(ENTRY_KEYS)
    entry["v"] = FORMAT_VERSION
    entry.update(fields)
    return entry


def exists(path: str) -> bool:
    return os.path.exists(path)
