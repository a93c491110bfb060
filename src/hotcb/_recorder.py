"""The ledger recorder: numbers entries, buffers them for the safe point, writes them in one batch.

Only rank 0 writes; other ranks number their entries the same way (so ``seq`` agrees) and drop
them. A batch that could not be written stays queued and goes out with the next one; the writer
cuts a half-written batch off again, so a retry never writes an entry twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._intake import CommandIntake
from .ledger import Decision, LedgerWriter, new_entry
from .modules import OpResult
from .ops import HotOp

__all__ = ["LedgerRecorder", "SafePoint"]

log = logging.getLogger("hotcb")

#: Applied changes kept in memory for ``undo`` (older ones are looked up in the ledger).
_HISTORY = 1000


@dataclass(frozen=True, slots=True)
class SafePoint:
    """Where the training loop is: the step and first event of the current ``apply()``."""

    step: int
    event: str = "train_step_end"


class LedgerRecorder:
    """Builds ledger entries (:class:`~hotcb.ledger.LedgerEntry` lines) and writes them to
    ``hotcb.applied.jsonl``."""

    def __init__(
        self, writer: LedgerWriter, intake: CommandIntake, seq: int, *, leader: bool = True
    ) -> None:
        self.writer = writer
        self.intake = intake
        self.seq = seq
        self.rank = 0
        self.leader = leader
        self.out: list[dict[str, Any]] = []
        #: applied entries with changes, newest last (what ``undo`` reverts)
        self.history: deque[dict[str, Any]] = deque(maxlen=_HISTORY)
        self.undone: set[str] = set()
        #: the safe point being worked on (set by the kernel when a poll or a due op runs);
        #: entries that modules add through ``ModuleHost.record`` default to it
        self.point = SafePoint(0)

    def emit(self, point: SafePoint, **fields: Any) -> dict[str, Any]:
        """Queue one entry at ``point`` (fields may override step and event)."""
        self.seq += 1
        fields.setdefault("step", point.step)
        fields.setdefault("event", point.event)
        fields.setdefault("cursor", self.intake.offset)
        record = new_entry(seq=self.seq, wall_time=time.time(), rank=self.rank, **fields)
        if self.leader:
            self.out.append(record)
        return record

    def emit_op(
        self,
        op: HotOp,
        point: SafePoint,
        decision: Decision,
        *,
        changes: dict[str, Any] | None = None,
        error: str | None = None,
        source: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Queue the entry about ``op``: its command fields, the decision and what changed."""
        fields: dict[str, Any] = {
            "cmd_id": op.cmd_id,
            "source": source or op.source,
            "module": op.module,
            "op": op.op,
            "params": op.params,
            "id": op.id,
            "decision": decision.value,
            "changes": changes,
            "error": error,
            "cursor": self.intake.cursor_for(op),
        }
        if op.target is not None:
            fields["target"] = op.target.to_dict()
        if op.init is not None:
            fields["init"] = op.init
        if op.enabled is not None:
            fields["enabled"] = op.enabled
        if op.at_step is not None:
            fields["at_step"] = op.at_step
        for k, v in op.extra.items():
            fields.setdefault(k, v)
        if extra:
            fields.update(extra)
        if error and decision in (Decision.REJECTED, Decision.FAILED):
            log.warning("hotcb %s %s %s: %s", decision.value, op.module, op.op, error)
        return self.emit(point, **fields)

    def emit_result(
        self, op: HotOp, point: SafePoint, result: OpResult, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Queue the entry for a handler's :class:`OpResult`; applied changes join the history."""
        merged = {**(result.extra or {}), **(extra or {})}
        entry = self.emit_op(
            op,
            point,
            Decision(result.decision),
            changes=result.changes,
            error=result.error,
            extra=merged,
        )
        if result.decision == Decision.APPLIED.value and result.changes:
            self.history.append(entry)
        return entry

    def flush(self) -> str | None:
        """Write what is queued; the reason when it could not be written (kept for the next
        flush, since the writer left nothing of it behind)."""
        out, self.out = self.out, []
        if not out or not self.leader:
            return None
        try:
            self.writer.write(out)
        except OSError as exc:  # disk full, permissions: keep training, keep the entries
            self.out = out + self.out  # the writer left nothing of them in the file
            return f"could not write the ledger: {exc}"
        return None
