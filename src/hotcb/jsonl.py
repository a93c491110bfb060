"""The one place that appends to and tails hotcb's JSON-lines files.

Writers (CLI, dashboard, autopilot, the kernel) call :func:`append`: the file is opened with
``O_APPEND``, an exclusive ``flock`` is held, and the whole line goes out in one ``os.write``, so
lines from concurrent processes are never torn or interleaved on a local filesystem. An append
is all or nothing: when the disk fills part way through, the file is cut back and
:class:`~hotcb.errors.JournalWriteError` raised, so no partial line is left for the next append
to be glued onto.

Readers keep a byte cursor (:class:`JsonlTail`) and consume only complete lines: a last line
without its ``\\n`` is a write still in progress and is left for the next read. A file that was
replaced, truncated or rewritten under the reader is read again from its start.

``flock`` does not protect appends from several *hosts* on NFS: writers on another machine should
go through the dashboard server on the trainer's host (see docs/core.md).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .errors import JournalWriteError

__all__ = [
    "JsonlTail",
    "append",
    "append_many",
    "dumps",
    "iter_records",
    "parse_line",
    "read_json",
    "read_last",
    "write_json_atomic",
]

_DEFAULT_MAX_BYTES = 16 * 1024 * 1024


def _to_jsonable(obj: Any) -> Any:
    """``json.dumps`` fallback: tensors, numpy scalars, enums, sets, paths."""
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    value = getattr(obj, "value", None)
    if value is not None and type(obj).__module__ != "builtins":
        return value
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def _sanitize(obj: Any) -> Any:
    """Replace non-finite floats with their repr so a record with NaN can still be written."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, dict):
        return {str(k): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    return obj


def dumps(record: Any) -> str:
    """Compact JSON for one record. Non-finite floats become strings (``"nan"``), never tokens
    that other JSON parsers refuse."""
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False, default=_to_jsonable)
    except ValueError:
        return json.dumps(
            _sanitize(json.loads(json.dumps(record, default=_to_jsonable))),
            separators=(",", ":"),
            allow_nan=False,
        )


def _write_locked(
    path: str, data: bytes, fsync: bool = False, unless: Callable[[], bool] | None = None
) -> None:
    """Append ``data`` under the lock: all of it, or nothing, on a line of its own.

    A write that fails part way (disk full, file size limit, I/O error) would leave a partial
    line that the next append gets glued onto; the file is cut back to its size before the
    write, so the caller may retry the whole record. ``fsync`` failing after a complete write
    raises with ``written=True``: the record is in the file, do not write it again.
    ``unless()``, called under the lock, says when nothing is to be written (or raises)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if unless is not None and unless():
                return
            start = os.fstat(fd).st_size  # under the lock: no other writer moves the end now
            if start and os.pread(fd, 1, start - 1) != b"\n":
                # a line that a writer without the lock left unfinished (a hand-written
                # command): ours starts on its own line, not glued to it and lost with it
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                raise _cut_back(fd, path, start, len(data), exc) from exc
            if fsync:
                try:
                    os.fsync(fd)
                except OSError as exc:
                    raise JournalWriteError(
                        f"wrote {len(data)} bytes to {path} but fsync failed "
                        f"({_reason(exc)}): the data is in the file but may not survive a "
                        "crash; check the disk",
                        errno=exc.errno,
                        path=path,
                        written=True,
                    ) from exc
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    return f"{exc.strerror or exc}, errno {exc.errno}" if exc.errno else str(exc)


def _cut_back(fd: int, path: str, size: int, nbytes: int, exc: OSError) -> JournalWriteError:
    """Truncate the file back to ``size`` after a failed write; the error to raise."""
    try:
        os.ftruncate(fd, size)
    except OSError as cut:
        return JournalWriteError(
            f"could not append {nbytes} bytes to {path} ({_reason(exc)}), nor cut off the "
            f"partial line it left ({_reason(cut)}): free disk space, then check the file's "
            "last line; the record was not written",
            errno=exc.errno,
            path=path,
        )
    return JournalWriteError(
        f"could not append {nbytes} bytes to {path} ({_reason(exc)}): free disk space and try "
        "again; nothing was written",
        errno=exc.errno,
        path=path,
    )


def append(
    path: str | os.PathLike[str],
    record: dict[str, Any],
    *,
    fsync: bool = False,
    unless: Callable[[], bool] | None = None,
) -> None:
    """Append one record as one line, atomically with respect to other local writers;
    nothing when ``unless()`` (called under the lock) is true."""
    _write_locked(os.fspath(path), (dumps(record) + "\n").encode(), fsync=fsync, unless=unless)


def append_many(
    path: str | os.PathLike[str], records: Iterable[dict[str, Any]], *, fsync: bool = False
) -> None:
    """Append several records in one write (one lock, one system call for the data)."""
    data = "".join(dumps(r) + "\n" for r in records).encode()
    if data:
        _write_locked(os.fspath(path), data, fsync=fsync)


class JsonlTail:
    """Byte-cursor reader of a JSON-lines file that only ever yields complete lines, once.

    ``read_lines()`` returns ``(end_offset, raw_line)`` pairs, where ``end_offset`` is the cursor
    just after that line's ``\\n``. The cursor must sit at a line start (0, or just after a
    ``\\n``).

    A file that was replaced or rewritten is read again from 0, and :attr:`reset` is set so the
    caller can tell. Like ``tail -F``, the tail remembers the identity ``(st_dev, st_ino)`` of
    the file it read and restarts when the path shows another file (``os.replace``, delete and
    re-create) or a file smaller than the cursor (truncated). A file truncated and rewritten in
    place past the cursor keeps its identity and size can't tell; every read that has new bytes
    therefore starts one byte early, at the ``\\n`` that ended the last consumed line, and
    restarts when that byte is anything else. (A rewrite that happens to put a ``\\n`` at that
    very byte goes unseen: no reader without the old contents can tell.)

    The kernel's poll does one ``os.stat`` and asks :meth:`caught_up` before reading.
    """

    __slots__ = ("_dev", "_ino", "max_bytes", "offset", "path", "reset")

    def __init__(
        self, path: str | os.PathLike[str], offset: int = 0, max_bytes: int = _DEFAULT_MAX_BYTES
    ) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.max_bytes = max_bytes
        self.reset = False
        self._dev = self._ino = -1  # not read yet: no ``caught_up`` before the first read

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def caught_up(self, st: os.stat_result) -> bool:
        """True when ``st`` (an ``os.stat`` of :attr:`path`) shows the file this tail read,
        with nothing after the cursor: there is nothing to read. No system call."""
        return st.st_size == self.offset and st.st_ino == self._ino and st.st_dev == self._dev

    def has_new(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self.offset != 0
        return not self.caught_up(st)

    def _restart(self) -> None:
        if self.offset:  # a cursor at 0 has consumed nothing: there is nothing to redo
            self.offset = 0
            self.reset = True

    def read_lines(self, size: int | None = None) -> list[tuple[int, bytes]]:
        """The new complete lines, reading no further than byte ``size`` when given."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        try:
            # the identity and size of the file actually opened, not of what ``path`` named a
            # moment ago: a replacement between the caller's stat and this open is then seen
            st = os.fstat(fd)
            if (st.st_ino != self._ino or st.st_dev != self._dev) and self._ino != -1:
                self._restart()  # another file now: replaced, or deleted and created again
            elif st.st_size < self.offset:
                self._restart()  # truncated
            self._dev, self._ino = st.st_dev, st.st_ino
            end = st.st_size if size is None else min(size, st.st_size)
            return self._read(fd, end)
        finally:
            os.close(fd)

    def _read(self, fd: int, end: int) -> list[tuple[int, bytes]]:
        start = self.offset
        if end <= start:
            return []
        back = 1 if start > 0 else 0  # the byte before the cursor: the newline we consumed
        data = os.pread(fd, min(end - start, self.max_bytes) + back, start - back)
        if back and data[:1] != b"\n":
            self._restart()  # rewritten in place (truncated, then written past the cursor)
            return self._read(fd, end)
        last = data.rfind(b"\n", back)
        if last < 0 and len(data) - back == self.max_bytes:  # one very long line
            data += os.pread(fd, end - start - self.max_bytes, start + self.max_bytes)
            last = data.rfind(b"\n", back)
        if last < 0:
            return []
        out: list[tuple[int, bytes]] = []
        pos = start
        for line in data[back:last].split(b"\n"):
            pos += len(line) + 1
            out.append((pos, line))
        self.offset = pos
        return out

    def read_records(self) -> list[dict[str, Any]]:
        """Complete new lines parsed as JSON objects; lines that are not objects are skipped."""
        out = []
        for _, line in self.read_lines():
            rec = parse_line(line)
            if rec is not None:
                out.append(rec)
        return out


def parse_line(line: bytes) -> dict[str, Any] | None:
    """One raw line as a JSON object; None for a blank line, bad JSON or a non-object."""
    line = line.strip()
    if not line:
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def iter_records(
    path: str | os.PathLike[str],
    start: int = 0,
    *,
    keep: Callable[[bytes], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every complete JSON-object line of a file, from byte ``start``; missing file: nothing.

    ``keep(raw_line)``, when given, is asked before a line is parsed: a cheap byte test that
    skips most of a large file (parsing is what costs)."""
    try:
        f = open(os.fspath(path), "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with f:
        f.seek(start)
        pending = b""
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            chunk = pending + chunk
            end = chunk.rfind(b"\n")
            if end < 0:
                pending = chunk
                continue
            pending = chunk[end + 1 :]
            for line in chunk[:end].split(b"\n"):
                if keep is not None and not keep(line):
                    continue
                rec = parse_line(line)
                if rec is not None:
                    yield rec


def read_last(path: str | os.PathLike[str], n: int = 1, block: int = 65536) -> list[dict[str, Any]]:
    """The last ``n`` complete records of a file, oldest first, reading only its tail."""
    if n <= 0:
        return []
    try:
        f = open(os.fspath(path), "rb")  # noqa: SIM115
    except FileNotFoundError:
        return []
    with f:
        size = f.seek(0, os.SEEK_END)
        pos = size
        data = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
            if data.count(b"\n") > n + 1:
                break
    end = data.rfind(b"\n")
    if end < 0:
        return []
    lines = data[:end].split(b"\n")
    if pos > 0:
        lines = lines[1:]  # the first piece may be the middle of a line
    out: list[dict[str, Any]] = []
    for line in reversed(lines):
        rec = parse_line(line)
        if rec is not None:
            out.append(rec)
            if len(out) == n:
                break
    out.reverse()
    return out


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write a whole JSON document so readers see the old or the new one, never half."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(dumps(obj))
    os.replace(tmp, path)


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """A whole JSON document, or ``default`` when the file is missing or unreadable."""
    try:
        with open(os.fspath(path)) as f:
            return json.load(f)
    except (OSError, ValueError):  # missing, a directory, no permission, not JSON
        return default
