"""The ledger: what really happened to each command, one JSON line per entry, step-indexed.

``hotcb.applied.jsonl`` is authoritative. Each entry carries ``cursor``, the byte offset in the
commands file just after the command it records, so a kernel started on an existing run
directory resumes from the last entry (read from the file's tail) and applies nothing twice.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import jsonl
from .errors import CommandError, JournalWriteError
from .ops import HotOp, command_to_hotop
from .runfiles import FORMAT_VERSION

__all__ = [
    "Decision",
    "LedgerEntry",
    "LedgerWriter",
    "tail_state",
    "iter_entries",
    "find_entry",
    "pending_scheduled",
]

log = logging.getLogger("hotcb")


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
    """Appends batches of entries (one write, one fsync per batch).

    :meth:`write` keeps a batch whole or not at all, so a caller that retries a failed batch
    never writes an entry twice:

    - the write fails (disk full, file size limit): the partial batch is cut off again and
      :class:`~hotcb.errors.JournalWriteError` (an ``OSError``) is raised: nothing was kept,
      write the whole batch again later;
    - every byte was written and only ``fsync`` failed: the batch is in the file (readers see
      it), so it counts as written: a warning is logged, nothing is raised, and it must not be
      written again (it may not survive a power loss; a retry could not make it more durable).
    """

    def __init__(self, path: str, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync

    def write(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        try:
            jsonl.append_many(self.path, entries, fsync=self.fsync)
        except JournalWriteError as exc:
            if not exc.written:
                raise
            log.warning("hotcb: %s", exc)


def tail_state(path: str) -> tuple[int, int]:
    """``(seq, cursor)`` of the last entry, or ``(0, 0)`` for a new ledger."""
    last = jsonl.read_last(path, 1)
    if not last:
        return 0, 0
    entry = last[0]
    return int(entry.get("seq") or 0), int(entry.get("cursor") or 0)


def _in_seq_order(entries: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Drop an entry whose integer ``seq`` is not above the last one seen.

    ``seq`` only grows, so a smaller or equal one is a batch written twice (a retry by an older
    hotcb after a half-written batch): the first copy is what happened."""
    last = None
    for e in entries:
        seq = e.get("seq")
        if type(seq) is int:
            if last is not None and seq <= last:
                continue
            last = seq
        yield e


def iter_entries(path: str) -> Iterator[dict[str, Any]]:
    """Every entry of the ledger, in order, each ``seq`` once."""
    return _in_seq_order(jsonl.iter_records(path))


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

    # only kept lines' seqs are compared, which is enough: the ``scheduled`` lines of a batch
    # written twice were kept the first time, so their seqs were seen
    for e in _in_seq_order(jsonl.iter_records(path, keep=keep)):
        cid = e.get("cmd_id")
        if e.get("decision") == Decision.SCHEDULED.value:
            waiting[cid] = e
            ids[cid] = jsonl.dumps(cid).encode()
        elif cid in waiting:
            del waiting[cid]
            del ids[cid]
    return list(waiting.values())


#: The fields of a ledger entry that make up the command it recorded.
_COMMAND_FIELDS = ("cmd_id", "module", "op", "params", "id", "target", "init", "enabled",
                   "transition", "mode", "recipe_path", "adjust_path", "step_offset",
                   "source_capture")  # fmt: skip
#: Run control a resume does not re-apply: the resumed run was started on purpose, it is not
#: paused, and its checkpoints were saved already.
_NOT_RESUMED = frozenset({"pause", "resume", "checkpoint", "stop"})


@dataclass
class LedgerEntry:
    """One line of ``hotcb.applied.jsonl``: what happened to one command at one step.

    The fields every entry has are attributes; anything else a writer added (``target``,
    ``traceback``, ``undo_of``, ``checkpoint``, …) is in :attr:`extra`. :meth:`to_dict` gives
    the line as written, keys in :data:`ENTRY_KEYS` order first."""

    seq: int = 0
    step: int | None = None
    event: str | None = None
    wall_time: float | None = None
    rank: int = 0
    cmd_id: str | None = None
    source: str | None = None
    module: str | None = None
    op: str | None = None
    params: Any = None
    id: str | None = None
    decision: str | None = None
    changes: dict[str, Any] | None = None
    error: str | None = None
    cursor: int = 0
    v: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LedgerEntry:
        known = {k: d[k] for k in ENTRY_KEYS if k in d and d[k] is not None}
        entry = cls(**known, extra={k: v for k, v in d.items() if k not in ENTRY_KEYS})
        entry.seq = entry.seq if type(entry.seq) is int else 0
        entry.cursor = entry.cursor if type(entry.cursor) is int else 0
        return entry

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ENTRY_KEYS}
        out.update(self.extra)
        return out

    def to_command(self, keep: Sequence[str] = (), **override: Any) -> dict[str, Any]:
        """The command record this entry recorded, to apply it again (a resume, a restarted
        schedule, a recipe). An ``undo`` names the change it undid, so it undoes the same one
        again rather than "the last change". ``keep``: more entry fields to carry over."""
        whole = self.to_dict()
        record = {k: whole[k] for k in _COMMAND_FIELDS if whole.get(k) is not None}
        record.setdefault("params", {})
        for k in keep:
            if whole.get(k) is not None:
                record[k] = whole[k]
        if self.extra.get("undo_of"):
            record["params"] = {"cmd_id": self.extra["undo_of"]}
        record.update(override)
        return record

    def to_op(self, keep: Sequence[str] = (), **override: Any) -> HotOp | None:
        """:meth:`to_command` as a validated op; None when it no longer validates."""
        try:
            return command_to_hotop(self.to_command(keep, **override))
        except CommandError:
            return None

    def reapplied_on_resume(self) -> bool:
        """Whether a run resumed from a checkpoint before this entry applies it again.

        Not: anything not applied, kernel entries, ramp completions (the op that started the
        ramp restarts it), recipe entries (the restored recipe player fires them again) and run
        control (:data:`_NOT_RESUMED`). A recipe export (``recipe.ledger_to_entries``) keeps
        recipe entries (they are part of the trajectory to reproduce elsewhere) and drops
        ``freeze`` (a replay sets its own mode); a resume keeps ``freeze`` (the same run goes
        on in the mode it had)."""
        if self.decision != Decision.APPLIED.value or self.source in ("ramp", "recipe"):
            return False
        if self.module in (None, "kernel"):
            return False
        return not (self.module == "control" and self.op in _NOT_RESUMED)


def new_entry(**fields: Any) -> dict[str, Any]:
    """A ledger line with every :data:`ENTRY_KEYS` key (writers fill in what they know)."""
    return LedgerEntry.from_dict(fields).to_dict()
