"""Command intake: read new lines of the commands file, parse and validate them, de-duplicate
by ``cmd_id``, and own the cursor rule (which byte offset a ledger entry records).

The kernel asks :meth:`CommandIntake.read` only when a poll is due; everything else here runs
per command line.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable
from typing import Any

from . import jsonl
from .ledger import Decision
from .ops import MAX_COMMAND_BYTES, HotOp, command_to_hotop

__all__ = ["CommandIntake"]

#: How many handled cmd_ids are remembered for de-duplication.
_SEEN_MAX = 200_000

#: Sources of the commands a kernel writes for itself (``HotKernel.submit``): the tuner's
#: trials, a signal's checkpoint and stop under torch.distributed. Each is meant for the
#: process that wrote it; one that process did not live to apply is not applied by the next.
OWN_SOURCES = frozenset({"tune", "signal"})


class CommandIntake:
    """The commands file as a stream of validated ops, each handed out once."""

    def __init__(self, path: str, offset: int, seen: Iterable[str] = ()) -> None:
        self.tail = jsonl.JsonlTail(path, offset=offset)
        # the file's length when this process began: a line of OWN_SOURCES that ends before
        # it was written by an earlier process (0 once read past, or for an empty file)
        try:
            self.life_start = os.stat(path).st_size
        except OSError:
            self.life_start = 0
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self._batch_start = -1
        for cmd_id in seen:
            self.remember(cmd_id)

    @property
    def offset(self) -> int:
        """The read position: the byte after the last consumed line."""
        return self.tail.offset

    @offset.setter
    def offset(self, value: int) -> None:
        self.tail.offset = value

    # ------------------------------------------------------------------ reading
    def read(self) -> tuple[list[tuple[int, bytes]], str | None, str | None]:
        """New complete lines as ``(end offset, raw)``; the note to ledger when the file was
        truncated or replaced (it is read again from the start); the reason it could not be
        read. Never raises: under torch.distributed the other ranks wait for this batch."""
        tail = self.tail
        try:
            st = os.stat(tail.path)
        except OSError:
            return [], None, None
        if tail.caught_up(st):
            return [], None, None
        try:
            lines = tail.read_lines(st.st_size)
        except OSError as exc:
            return [], None, f"could not read {tail.path}: {exc}"
        reset = None
        if tail.reset:
            tail.reset = False
            reset = "the commands file was truncated or replaced; reading it from the start"
        return lines, reset, None

    def mark_earlier_life(self, lines: list[tuple[int, bytes]]) -> list[tuple[Any, ...]]:
        """``lines`` (the leader's batch), each command an earlier process wrote for itself
        and did not apply (a tuner's trial, a signal's stop, left in the file by a kill -9)
        marked ``(end, raw, reason)``: the process it was meant for is gone, and this one
        decides again (a resumed tuner re-judges its open trial). Read past the file's length
        at this process's start, nothing is looked at again."""
        start = self.life_start
        out: list[tuple[Any, ...]] = []
        if lines and lines[-1][0] >= start:
            self.life_start = 0
        for end, raw in lines:
            source = None
            if end <= start and b'"source"' in raw:
                try:
                    record = json.loads(raw)
                    source = record.get("source") if isinstance(record, dict) else None
                except (ValueError, RecursionError):
                    pass  # parse() refuses it, with the reason
            if source in OWN_SOURCES:
                out.append((end, raw, f"written by this run's {source} in an earlier process, "
                                      "which ended before applying it: not applied (this "
                                      "process decides again)"))  # fmt: skip
            else:
                out.append((end, raw))
        return out

    def begin(self, lines: list[tuple[Any, ...]]) -> None:
        """A batch starts: ops read in it record their own line's end as their cursor."""
        end, raw = lines[0][:2]
        self._batch_start = end - len(raw) - 1

    def end(self) -> None:
        self._batch_start = -1

    def cursor_for(self, op: HotOp | None) -> int:
        """The cursor a ledger entry about ``op`` records, monotonic in the ledger: a command
        read in this batch has the offset after its own line; anything else (a due op, a ramp,
        a cancelled one) the current read position."""
        if op is not None and op.cursor > self._batch_start >= 0:
            return op.cursor
        return self.tail.offset

    # ------------------------------------------------------------------ parsing
    def parse(self, raw: bytes, end: int) -> HotOp | dict[str, Any]:
        """The validated op of one line, or the fields of its ``rejected`` ledger entry."""
        fallback = f"@{end - len(raw) - 1}"
        refused: dict[str, Any] = {
            "cmd_id": fallback,
            "source": "unknown",
            "decision": Decision.REJECTED.value,
            "cursor": end,
        }
        if len(raw) > MAX_COMMAND_BYTES:
            refused["error"] = (
                f"line is {len(raw)} bytes, more than the {MAX_COMMAND_BYTES} a command may "
                "have; it was not read"
            )
            return refused
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # also bad UTF-8, absurd nesting
            why = (
                f"{exc.msg} at column {exc.colno}"
                if isinstance(exc, json.JSONDecodeError)
                else f"{type(exc).__name__}: {exc}"
            )
            text = raw[:200].decode("utf-8", "replace")
            refused["error"] = f"line is not valid JSON ({why}): {text!r}"
            return refused
        try:
            return command_to_hotop(record, cursor=end, fallback_id=fallback)
        except ValueError as exc:  # CommandError
            rec = record if isinstance(record, dict) else {}
            cid = rec.get("cmd_id")
            refused.update(
                cmd_id=cid if isinstance(cid, str) and cid else fallback,
                source=_str(rec.get("source")),
                module=_str(rec.get("module")),
                op=_str(rec.get("op")),
                params=rec.get("params"),
                error=str(exc),
            )
            return refused

    # ------------------------------------------------------------------ de-duplication
    def first_time(self, cmd_id: str) -> bool:
        """True the first time ``cmd_id`` is seen (and remember it)."""
        if cmd_id in self._seen:
            return False
        self.remember(cmd_id)
        return True

    def remember(self, cmd_id: str) -> None:
        self._seen.add(cmd_id)
        self._seen_order.append(cmd_id)
        if len(self._seen_order) > _SEEN_MAX:
            self._seen.discard(self._seen_order.popleft())


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
