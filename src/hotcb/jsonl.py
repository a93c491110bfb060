"""The one place that appends to and tails hotcb's JSON-lines files.

Writers (CLI, dashboard, autopilot, the kernel) call :func:`append`: the file is opened with
``O_APPEND``, an exclusive ``flock`` is held, and the whole line goes out in one ``os.write``, so
lines from concurrent processes are never torn or interleaved on a local filesystem.

Readers keep a byte cursor (:class:`JsonlTail`) and consume only complete lines: a last line
without its ``\\n`` is a write still in progress and is left for the next read.

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

__all__ = [
    "append",
    "append_many",
    "dumps",
    "JsonlTail",
    "read_last",
    "iter_records",
    "write_json_atomic",
    "read_json",
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


def _write_locked(path: str, data: bytes, fsync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if fsync:
                os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def append(path: str | os.PathLike[str], record: dict[str, Any], *, fsync: bool = False) -> None:
    """Append one record as one line, atomically with respect to other local writers."""
    _write_locked(os.fspath(path), (dumps(record) + "\n").encode(), fsync=fsync)


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
    just after that line's ``\\n``. A file that shrinks (truncated or replaced) restarts from 0
    and sets :attr:`reset` so the caller can tell.
    """

    __slots__ = ("path", "offset", "max_bytes", "reset")

    def __init__(
        self, path: str | os.PathLike[str], offset: int = 0, max_bytes: int = _DEFAULT_MAX_BYTES
    ) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.max_bytes = max_bytes
        self.reset = False

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def has_new(self) -> bool:
        return self.size() != self.offset

    def read_lines(self, size: int | None = None) -> list[tuple[int, bytes]]:
        if size is None:
            size = self.size()
        if size < self.offset:
            self.offset = 0
            self.reset = True
        if size <= self.offset:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(min(size - self.offset, self.max_bytes))
                if data.rfind(b"\n") < 0 and len(data) == self.max_bytes:
                    data += f.read(size - self.offset - len(data))  # one very long line
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        out: list[tuple[int, bytes]] = []
        pos = self.offset
        for line in data[:end].split(b"\n"):
            pos += len(line) + 1
            out.append((pos, line))
        self.offset = pos
        return out

    def read_records(self) -> list[dict[str, Any]]:
        """Complete new lines parsed as JSON objects; lines that are not objects are skipped."""
        out = []
        for _, line in self.read_lines():
            rec = _parse(line)
            if rec is not None:
                out.append(rec)
        return out


def _parse(line: bytes) -> dict[str, Any] | None:
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
                rec = _parse(line)
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
        rec = _parse(line)
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
    except (FileNotFoundError, ValueError):
        return default
