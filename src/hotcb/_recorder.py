"""The ledger recorder: numbers entries, buffers them for the safe point, writes them in one batch.

Only rank 0 writes; other ranks number their entries the same way (so ``seq`` agrees) and drop
them. A batch that could not be written stays queued and goes out with the next one; the writer
cuts a half-written batch off again, so a retry never writes an entry twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import jsonl
from ._intake import CommandIntake
from ._trials import TRIAL_ENDS, TrialView
from .ledger import Decision, LedgerWriter, iter_entries, new_entry
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
        #: keys an undo took back of a command whose other keys a later command had set again
        #: (``set_since``): those stay the command's, to take back once they are in force again
        self.partly: dict[str, set[str]] = {}
        #: ``(step, op)`` of the changes a resume has yet to re-apply in this life (the kernel
        #: sets it): to the person who saw the life it replaces, they came after the rest
        self.coming: Callable[[], Iterable[tuple[int, Any]]] = tuple
        #: the entries that ended each tuner trial, by trial number: ``(seq, "kept" |
        #: "rolled_back" | "voided")``, oldest first (a voided trial's roll-back follows its void)
        self.trial_ends: dict[Any, list[tuple[int, str]]] = {}
        #: this process is the whole run (False under torch.distributed: set by the kernel)
        self.alone = True
        #: the safe point being worked on (set by the kernel when a poll or a due op runs);
        #: entries that modules add through ``ModuleHost.record`` default to it
        self.point = SafePoint(0)
        #: the entry of a checkpoint command whose save is under way (:meth:`flush` writes
        #: nothing from it on until its outcome is in: see ``ControlModule.save_due``)
        self.held: dict[str, Any] | None = None
        #: the seq of the last entry written to the file (``seq`` counts queued ones too): what
        #: the heartbeat and the run's end record, so an emptied ledger is told from one that
        #: never got its queued entries (``refuse_lost_ledger``)
        self.written = seq
        #: the ledger's entries up to this seq are of the lives this one continues (a restart
        #: continues them all; a resume, those up to its checkpoint): :meth:`read_earlier`
        self.before = seq
        self.earlier_read = False
        #: a life started afresh in a new process, without a checkpoint: the ledger's entries
        #: up to this seq are of lives whose changes it does not have (None otherwise)
        self.fresh_from: int | None = None

    def emit(self, point: SafePoint, **fields: Any) -> dict[str, Any]:
        """Queue one entry at ``point`` (fields may override step and event)."""
        self.seq += 1
        fields.setdefault("step", point.step)
        fields.setdefault("event", point.event)
        fields.setdefault("cursor", self.intake.offset)
        record = new_entry(seq=self.seq, wall_time=time.time(), rank=self.rank, **fields)
        if self.leader:
            self.out.append(record)
        if record.get("module") == "tune":
            self._note_trial_end(record)
        return record

    def _note_trial_end(self, record: Mapping[str, Any]) -> None:
        """Remember a tuner ``keep``/``rollback``/``void`` for :meth:`trials` (rank 0 records
        all three, the other ranks the roll-backs: see :mod:`hotcb._trials`)."""
        end, tune = TRIAL_ENDS.get(record.get("op") or ""), record.get("tune")
        if end is None or record.get("decision") != "applied" or not isinstance(tune, Mapping):
            return
        if tune.get("trial") is not None:
            self.trial_ends.setdefault(tune["trial"], []).append((record["seq"], end))
            if len(self.trial_ends) > _HISTORY:
                del self.trial_ends[next(iter(self.trial_ends))]

    def read_earlier(self, path: str) -> None:
        """Put the applied changes of the lives this one continues (the ledger at ``path`` up
        to :attr:`before`) in front of this life's own, with their undos and tuner trial ends:
        after a restart or a resume, a plain ``undo`` still finds the change in force (it was
        refused: "no applied change with changes to undo"). Read once, when this life's own
        history has nothing left to undo, inside ``apply()``: the changes are the newest
        :data:`_HISTORY`, read back from the ledger's end, and of the rest only the lines
        naming an undo or the tuner are parsed (a 100k-entry ledger parsed whole cost a 2.4 s
        step)."""
        self.earlier_read = True
        self.flush()
        seen: set[int] = set()  # a batch written twice (an older hotcb's retry): once

        def change(entry: dict[str, Any]) -> bool:
            if not _earlier(entry, self.before) or entry["seq"] in seen:
                return False
            seen.add(entry["seq"])
            # a ramp's end (``source: "ramp"``) repeats its command's cmd_id: the command's
            # own entry, with its transition, is what an undo takes back, as in the life itself
            return bool(entry.get("changes")) and entry.get("source") != "ramp"

        earlier = jsonl.last_records(path, _HISTORY, keep=change)
        ends: dict[Any, list[tuple[int, str]]] = {}
        named = iter_entries(path, keep=lambda line: b'"undo_of"' in line or b'"tune"' in line)
        for entry in named:
            if not _earlier(entry, self.before):
                continue
            if entry.get("undo_of"):
                self.note_undo(str(entry["undo_of"]), entry)
            end, tune = TRIAL_ENDS.get(entry.get("op") or ""), entry.get("tune")
            if end is not None and isinstance(tune, Mapping) and tune.get("trial") is not None:
                ends.setdefault(tune["trial"], []).append((entry["seq"], end))
        self.history = deque([*earlier, *self.history], maxlen=_HISTORY)
        for trial, theirs in ends.items():
            self.trial_ends[trial] = [*theirs, *self.trial_ends.get(trial, [])]

    def note_undo(self, target: str, undo: Mapping[str, Any]) -> None:
        """An applied ``undo`` of command ``target``: undone, or in part when it left keys a
        later command had set again (its ``set_since``)."""
        if not undo.get("set_since"):
            self.undone.add(target)
            self.partly.pop(target, None)
            return
        self.partly.setdefault(target, set()).update(undo.get("changes") or ())

    def trials(self) -> TrialView:
        """The tuner's trials as the applied changes in memory show them (for ``undo``)."""
        return TrialView(self.history, self.trial_ends, alone=self.alone)

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
        flush, since the writer left nothing of it behind).

        An entry that cannot be turned into JSON (a value nested past what the encoder takes,
        a cycle, an object whose ``str`` raises) is replaced by one that can
        (:func:`_writable`), so it never costs the other entries of its batch.

        Nothing from :attr:`held` on is written: a checkpoint's entry is queued in its
        command's place, and later commands' entries (their cursors past its line) must not
        reach the file before it, or a kill during the save lost the checkpoint command (a
        restart reads on from the last entry's cursor)."""
        cut = len(self.out)
        if self.held is not None:
            cut = next((i for i, e in enumerate(self.out) if e is self.held), cut)
        out, self.out = self.out[:cut], self.out[cut:]
        if not out or not self.leader:
            return None
        try:
            try:
                self.writer.write(out)
            except OSError:
                raise
            except Exception:  # raised while encoding, before a byte was written
                out = [_writable(entry) for entry in out]
                self.writer.write(out)
        except BaseException as exc:  # the writer left nothing of them in the file
            if jsonl.written_before(exc):  # a Ctrl-C once they were all in: written
                self._wrote(out)
                raise
            self.out = out + self.out  # disk full, permissions: keep training, keep them
            if isinstance(exc, OSError):
                return f"could not write the ledger: {exc}"
            raise
        self._wrote(out)
        return None

    def _wrote(self, out: list[dict[str, Any]]) -> None:
        last = out[-1].get("seq")
        if type(last) is int:
            self.written = max(self.written, last)


#: Fields of an entry kept as they are when the entry cannot be written whole.
_KEPT = ("v", "seq", "step", "event", "wall_time", "rank", "cmd_id", "source", "module", "op",
         "id", "decision", "error", "cursor")  # fmt: skip
#: How deep an entry may nest to count as writable once its batch failed to encode. The
#: encoder's limit is Python's recursion limit less the caller's stack: an entry that encodes
#: here may not in the writer, a few frames deeper, nor in a deeper training loop; this one
#: leaves room for both.
_DEPTH = 100


def _writable(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` when it encodes as JSON; else an entry that does: its identity, cursor and
    error as they were (when they encode), every other field that does not encode replaced by
    a short repr of the reason, and the decision ``failed`` (``rejected`` stays ``rejected``:
    nothing was applied either way), saying what it was."""
    why = _unwritable(entry)
    if why is None:
        return entry
    kept: dict[str, Any] = {}
    lost: list[str] = []
    for key, value in entry.items():
        if _unwritable(value) is None:
            kept[key] = value
        else:
            kept[key] = None if key in _KEPT else f"<not written: {why}>"
            lost.append(str(key))
    was = entry.get("decision")
    if was != Decision.REJECTED.value:
        kept["decision"] = Decision.FAILED.value
    note = f"the ledger entry could not be written as JSON ({why}); {', '.join(lost)} replaced"
    if was != kept["decision"]:
        note += f"; it was {was!r}"
    error = kept.get("error")
    kept["error"] = f"{error}; {note}" if isinstance(error, str) and error else note
    log.warning("hotcb: %s (seq %s)", note, entry.get("seq"))
    return kept


def _unwritable(value: Any) -> str | None:
    """Why ``value`` cannot be written as JSON (nested deeper than :data:`_DEPTH`, or the
    encoder raises), or None."""
    if _nesting(value) > _DEPTH:
        return f"nested more than {_DEPTH} levels deep"
    try:
        jsonl.dumps(value)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def _nesting(value: Any) -> int:
    """How deep lists and dicts nest in ``value`` (counted without recursion; a container
    met again is not walked again, so a cycle ends; the encoder refuses it anyway)."""
    deepest, seen = 0, set()
    stack = [(value, 1)]
    while stack and deepest <= _DEPTH:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _earlier(entry: Mapping[str, Any], before: int) -> bool:
    """An applied entry of the lives before this one (``seq`` up to ``before``)."""
    seq = entry.get("seq")
    return isinstance(seq, int) and seq <= before and entry.get("decision") == "applied"
