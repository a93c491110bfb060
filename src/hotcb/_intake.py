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
from .ledger import Decision, holds_command
from .ops import MAX_COMMAND_BYTES, HotOp, command_to_hotop, valid_text
from .runfiles import LEDGER

__all__ = ["CommandIntake"]

#: How many handled cmd_ids are remembered for de-duplication.
_SEEN_MAX = 200_000

#: Sources of the commands a kernel writes for itself (``HotKernel.submit``): the tuner's
#: trials, a signal's checkpoint and stop under torch.distributed. Each is meant for the
#: process that wrote it; one that process did not live to apply is not applied by the next.
OWN_SOURCES = frozenset({"tune", "signal"})


class CommandIntake:
    """The commands file as a stream of validated ops, each handed out once."""

    def __init__(
        self, path: str, offset: int, seen: Iterable[str] = (), *, ledger: str | None = None
    ) -> None:
        """``offset``: where the ledger says reading stopped; ``seen``: the cmd_ids the ledger
        handled lately; ``ledger``: its path (default: next to ``path``)."""
        # hold_open: a file rotated (moved away) with commands not read yet is read to its end
        self.tail = jsonl.JsonlTail(
            path,
            offset=offset,
            max_line=MAX_COMMAND_BYTES,
            check_resume=self._resumable,
            hold_open=True,
            # a link planted as the commands file: its target's lines went, as "not valid
            # JSON" errors, into the ledger that anyone who reads the run reads
            follow_links=False,
        )
        self.ledger = ledger if ledger is not None else os.path.join(os.path.dirname(path), LEDGER)
        self._problem: str | None = None  # the reason the file could not be read, told once
        #: a checkpoint's cursor past the ledger's, not read from yet (the note of a reset)
        self._restored: int | None = None
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
        if value != self.tail.offset:  # a checkpoint's cursor, past the ledger's: the ledger
            self.tail.check_resume = None  # cannot vouch for its line (see _resumable)
            self._restored = value
        self.tail.offset = value

    # ------------------------------------------------------------------ reading
    def read(self) -> tuple[list[tuple[int, bytes]], str | None, str | None]:
        """New complete lines as ``(end offset, raw)``; the note to ledger when the file was
        truncated or replaced (it is read again from the start); the reason it could not be
        read, once until the reason changes (or the file is read again). Never raises: under
        torch.distributed the other ranks wait for this batch."""
        tail = self.tail
        try:
            st: os.stat_result | None = os.stat(tail.path)
        except OSError:
            self._problem = None
            if not tail.holding:
                return [], None, None
            st = None  # moved away or deleted: the file held may have commands not read yet
        if st is not None and tail.caught_up(st):
            return [], None, None
        try:
            lines = tail.read_lines(None if st is None else st.st_size)
        except OSError as exc:
            problem = f"could not read {tail.path}: {exc.strerror or exc}"
            if problem == self._problem:
                return [], None, None
            self._problem = problem
            return [], None, problem
        self._problem = None
        reset, restored, self._restored = None, self._restored, None
        if tail.reset:
            tail.reset = False
            reset = "the commands file was truncated or replaced; reading it from the start"
            if tail.left_unread:
                reset += (f" (the {tail.left_unread} bytes after the last newline of the file "
                          "it replaced, an unfinished line, were not read)")  # fmt: skip
                tail.left_unread = 0
            if restored is not None:  # the first read since a checkpoint set the cursor
                size = 0 if st is None else st.st_size
                reset = (f"the commands file ({size} bytes) does not hold the cursor of "
                         f"the checkpoint this run resumed from (byte {restored}): that "
                         "checkpoint was saved in another run directory, or the file was "
                         "replaced since; reading it from the start")  # fmt: skip
            self._forget_offsets()
            self._remember_ledger()
        return lines, reset, None

    def _forget_offsets(self) -> None:
        """Forget the ``@offset`` ids (lines without a cmd_id) of the file read before: they
        count bytes of that file, and the new one's line at the same offset (a command written
        by hand after an editor saved the file, or after a rotation) is another command, not a
        duplicate to skip."""
        self._seen_order = deque(c for c in self._seen_order if c[:1] != "@")
        self._seen = set(self._seen_order)

    def close(self) -> None:
        """Let go of the commands file the tail holds open."""
        self.tail.close()

    def _remember_ledger(self) -> None:
        """Remember every cmd_id the ledger holds: a file read again from its start may hold
        commands older than the ids remembered (the ledger's last ones at start, and this
        life's), and each is a duplicate to skip, not a command to apply again (an old
        ``stop``). Only when the file was replaced: a rare event, worth one read of the
        ledger."""
        try:
            for rec in jsonl.iter_records(self.ledger):
                cmd_id = rec.get("cmd_id")
                if isinstance(cmd_id, str) and cmd_id[:1] != "@" and cmd_id not in self._seen:
                    self.remember(cmd_id)
        except OSError:  # a ledger that cannot be read: the ids remembered are what we have
            pass

    def _resumable(self, before: bytes) -> bool:
        """Whether the commands file is the one the resume offset counts bytes of, from the
        bytes that end there (``before``): the line that ends at the offset is one the ledger
        handled. A file deleted or replaced while the trainer was down can have a newline at
        the old offset by chance; the line that ends there is then another command, and the
        new file is read from its start instead of from the middle.

        A line with no cmd_id there (bad JSON, a blank line, one too long to be a command) was
        rejected or skipped under an ``@offset`` id: nothing tells its file from another, and
        the offset is kept. A cmd_id the recent ids do not hold is looked up in the whole
        ledger (a file replaced is read again from its start, and only the ids remembered are
        known duplicates there). A cursor a checkpoint restored past the ledger's is taken as
        it is (:attr:`offset`): the ledger cannot vouch for it."""
        if not before.endswith(b"\n"):
            return False  # no line ends at the offset
        start = before.rfind(b"\n", 0, len(before) - 1) + 1
        if start == 0 and len(before) < self.tail.offset:
            return True  # longer than a command: rejected under its offset
        cmd_id = _cmd_id(before[start:-1])
        if cmd_id is None or cmd_id in self._seen:
            return True
        # (a line the kernel failed to handle is ledgered under its offset)
        at = f"@{self.tail.offset - len(before) + start}"
        try:
            return holds_command(self.ledger, cmd_id, at)
        except OSError:  # a ledger that cannot be read cannot tell: the offset is kept
            return True

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
        self._batch_start = end - self._length(raw, end) - 1

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
        size = len(raw)
        if size > MAX_COMMAND_BYTES:  # cut short when it was read: its real length
            size = self._length(raw, end)
        fallback = f"@{end - size - 1}"
        refused: dict[str, Any] = {
            "cmd_id": fallback,
            "source": "unknown",
            "decision": Decision.REJECTED.value,
            "cursor": end,
        }
        if size > MAX_COMMAND_BYTES:
            refused["error"] = (
                f"line is {size} bytes, more than the {MAX_COMMAND_BYTES} a command may "
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
            cid, params = _str(rec.get("cmd_id")), rec.get("params")
            refused.update(  # (not a lone surrogate: it broke every reader of the ledger)
                cmd_id=cid or fallback,
                source=_str(rec.get("source")),
                module=_str(rec.get("module")),
                op=_str(rec.get("op")),
                params=params if valid_text(params) else None,
                error=str(exc),
            )
            return refused

    def _length(self, raw: bytes, end: int) -> int:
        """The length of the line that ends at ``end``: the tail hands out a line too long to be
        a command cut to ``MAX_COMMAND_BYTES + 1`` bytes (:attr:`jsonl.JsonlTail.cut`). Other
        ranks, which get the batch, see the cut line's length, still too long: they reject it
        all the same."""
        cut = self.tail.cut
        return cut[1] if cut is not None and cut[0] == end else len(raw)

    # ------------------------------------------------------------------ de-duplication
    def first_time(self, cmd_id: str) -> bool:
        """True the first time ``cmd_id`` is seen (and remember it)."""
        if cmd_id in self._seen:
            return False
        self.remember(cmd_id)
        return True

    def forget(self, end: int, raw: bytes) -> None:
        """Forget the line ``raw`` (ending at ``end``) was seen: it is handled again (an
        interrupt cut its handling short before anything came of it)."""
        cmd_id = _cmd_id(raw) or f"@{end - self._length(raw, end) - 1}"
        if cmd_id in self._seen:
            self._seen.discard(cmd_id)
            self._seen_order.remove(cmd_id)

    def remember(self, cmd_id: str) -> None:
        self._seen.add(cmd_id)
        self._seen_order.append(cmd_id)
        if len(self._seen_order) > _SEEN_MAX:
            self._seen.discard(self._seen_order.popleft())


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value and valid_text(value) else None


def _cmd_id(raw: bytes) -> str | None:
    """The cmd_id a command line names, or None (not JSON, not an object, none given)."""
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    cmd_id = record.get("cmd_id") if isinstance(record, dict) else None
    return cmd_id if isinstance(cmd_id, str) and cmd_id else None
