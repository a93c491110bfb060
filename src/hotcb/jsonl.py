"""The one place that appends to and tails hotcb's JSON-lines files.

Writers (CLI, dashboard, autopilot, the kernel) call :func:`append`: the file is opened with
``O_APPEND``, an exclusive ``flock`` is held, and the whole line goes out in one ``os.write``, so
lines from concurrent processes are never torn or interleaved on a local filesystem. An append
is all or nothing: when the disk fills part way through, the file is cut back and
:class:`~hotcb.errors.JournalWriteError` raised, so no partial line is left for the next append
to be glued onto.

Readers keep a byte cursor (:class:`JsonlTail`) and consume only complete lines: a last line
without its ``\\n`` is a write still in progress and is left for the next read. A file that was
replaced, truncated or rewritten under the reader is read again from its start; a reader that
holds its file open (``hold_open``, the kernel's) first reads a file moved away to its end, and
an append that opened a file just before it was moved writes to the one the path names now.

``flock`` does not protect appends from several *hosts* on NFS: writers on another machine should
go through the dashboard server on the trainer's host (see docs/core.md).

A run directory may be a shared folder that other users can write. They can plant a symbolic
link, or a FIFO, under the name of a file hotcb writes, or under the name of a temporary file it
is about to create. So the run's own files are opened with ``O_NOFOLLOW`` and must be regular
files (:func:`open_own`, :class:`RunFileRefusedError` otherwise), and a file replaced whole is
written to a new temporary file with a random name, created with ``O_EXCL``
(:func:`atomic_writer`), never to a name someone could guess and plant first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import pwd
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from .errors import JournalWriteError

__all__ = [
    "O_NOFOLLOW",
    "JsonlTail",
    "RunFileRefusedError",
    "append",
    "append_many",
    "atomic_writer",
    "create_temp",
    "dumps",
    "iter_records",
    "last_records",
    "open_own",
    "open_regular",
    "parse_line",
    "read_json",
    "read_last",
    "write_atomic",
    "write_json_atomic",
]

_DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: The longest line the whole-file readers (:func:`iter_records`, :func:`read_last`) hold to
#: parse; a longer one is skipped as garbage (a hole of NUL bytes a crash left, say).
MAX_RECORD_BYTES = 64 * 1024 * 1024
#: What one look for the end of a very long line reads at a time.
_SCAN_CHUNK = 1 << 20


def _kind(mode: int) -> str:
    """What a file that is not a regular one is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "an unknown kind of file"


#: ``os.O_NOFOLLOW`` where the platform has it (0 elsewhere): open the file a path names, not
#: the one a symbolic link in its place points at.
O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)


def _planted_link(exc: OSError, path: str) -> bool:
    """Whether ``exc``, raised by an ``O_NOFOLLOW`` open of ``path``, says a symbolic link is
    in the file's place (ELOOP, EMLINK on the BSDs; also raised for a path through a loop of
    links, which is no such refusal)."""
    return exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path)


def open_regular(path: str, *, follow: bool = True) -> tuple[int, os.stat_result]:
    """A read-only descriptor of ``path``, which must name a regular file, and its ``fstat``.

    ``O_NONBLOCK``: a FIFO in a file's place would block ``open`` until some process opens it
    to write (a training loop would hang there); on a regular file it changes nothing.
    ``follow=False``: a symbolic link in the file's place is refused too (a run's file that
    whoever can write the run directory could point at another file of the reader's).
    Raises ``FileNotFoundError`` as ``open`` does, and ``OSError`` for anything else there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow else O_NOFOLLOW))
    except OSError as exc:
        if not follow and _planted_link(exc, path):
            raise OSError(exc.errno, "a symbolic link, which hotcb will not follow", path) from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            code = errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL
            raise OSError(code, f"not a regular file ({_kind(st.st_mode)})", path)
    except OSError:
        os.close(fd)
        raise
    return fd, st


_NOT_WRITTEN = "%s, not a regular file, which hotcb will not write to"


class RunFileRefusedError(JournalWriteError):
    """hotcb would not write to one of the run's own files: a symbolic link, or something else
    than a regular file (a FIFO, a directory), was in its place, or a log file belonged to
    another user. Whoever can write the run directory can plant those, to make the process
    write to a file of their choosing or hang it. Nothing was written (``written=False``)."""


def _refusal(path: str, what: str, code: int | None) -> RunFileRefusedError:
    return RunFileRefusedError(
        f"{path} is {what} (whoever can write the run directory can plant one there): remove "
        "it, and hotcb creates the file anew",
        errno=code,
        path=path,
    )


def open_own(
    path: str, flags: int, mode: int = 0o666, *, mine: bool = False
) -> tuple[int, os.stat_result]:
    """``os.open(path, flags, mode)`` of a file hotcb writes in a run directory, and its
    ``fstat``: never through a symbolic link (``O_NOFOLLOW``), never anything but a regular
    file (``O_NONBLOCK``: opening a FIFO neither blocks nor succeeds unnoticed) and, with
    ``mine``, never a file another user owns. A refusal raises :class:`RunFileRefusedError`
    naming the file; other failures raise ``OSError`` as ``os.open`` does."""
    try:
        fd = os.open(path, flags | O_NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as exc:
        if _planted_link(exc, path):
            raise _refusal(path, "a symbolic link, which hotcb will not follow", exc.errno) from exc
        if exc.errno == errno.ENXIO:  # a FIFO opened to write, with no reader
            raise _refusal(path, _NOT_WRITTEN % "a FIFO", exc.errno) from exc
        owner = _owner(path) if mine and isinstance(exc, PermissionError) else None
        if owner is not None and owner != os.geteuid():  # (private to them: not even opened)
            raise _refusal(path, _THEIRS % owner, exc.errno) from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refusal(path, _NOT_WRITTEN % _kind(st.st_mode), errno.EINVAL)
        if mine and st.st_uid != os.geteuid():
            raise _refusal(path, _THEIRS % st.st_uid, errno.EPERM)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


_THEIRS = "another user's file (uid %d), which hotcb will not write to"


def _owner(path: str) -> int | None:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


#: How many random names :func:`create_temp` tries before it gives up.
_TEMP_TRIES = 100


def create_temp(path: str) -> tuple[int, str]:
    """A new, empty file beside ``path``, opened to write, and its name: ``PATH.tmp.<random>``,
    created by this call (``O_CREAT | O_EXCL``), so never a file or a symbolic link that someone
    planted under a name they guessed. Its mode is what ``open(…, "w")`` gives a new file
    (``0o666`` less the umask). The caller renames it over ``path`` or removes it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW
    for _ in range(_TEMP_TRIES):
        tmp = f"{path}.tmp.{os.urandom(8).hex()}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except PermissionError as exc:  # named by the file wanted, not the temporary name
            folder = os.path.dirname(path) or "."
            raise PermissionError(exc.errno, f"{exc.strerror}: cannot create a file in {folder}",
                                  path) from exc  # fmt: skip
    raise FileExistsError(errno.EEXIST, "no unused temporary name beside it", path)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content to, which replaces ``path`` when the block
    ends without an error: readers see the old file or the new one, never half of one. The
    file is a :func:`create_temp`, removed again when anything fails (a full disk): none is
    left behind. Threads and processes may write the same path at once (the last one wins)."""
    path = os.fspath(path)
    fd, tmp = create_temp(path)
    try:
        with open(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
) -> bool:
    """Append ``data`` under the lock: all of it, or nothing, on a line of its own; False
    when ``unless()`` said nothing was to be written.

    A write that fails part way (disk full, file size limit, I/O error) would leave a partial
    line that the next append gets glued onto; the file is cut back to its size before the
    write, so the caller may retry the whole record. ``fsync`` failing after a complete write
    raises with ``written=True``: the record is in the file, do not write it again.
    ``unless()``, called under the lock, says when nothing is to be written (or raises)."""
    fd, start = _open_locked(path)  # start: the size, which no other writer moves now
    complete = False
    try:
        try:
            if unless is not None and unless():
                return False
            if start and os.pread(fd, 1, start - 1) != b"\n":
                # a line that a writer without the lock left unfinished (a hand-written
                # command): ours starts on its own line, not glued to it and lost with it
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                complete = True
            except OSError as exc:
                raise _cut_back(fd, path, start, len(data), exc) from exc
            except BaseException:  # an interrupt (Ctrl-C) part way: none of it stays
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
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
    except BaseException as exc:
        if complete and not isinstance(exc, Exception):
            # an interrupt once every byte was in the file: the caller must not write it again
            exc.hotcb_written = True  # type: ignore[attr-defined]
        raise
    finally:
        os.close(fd)
    return True


def written_before(exc: BaseException) -> bool:
    """Whether the interrupt ``exc`` (Ctrl-C) came once an append's data was all in the file
    (:func:`append_many` and the like then raise it all the same)."""
    return bool(getattr(exc, "hotcb_written", False))


#: How often an append opens the path again when the file it opened was moved away (rotated)
#: before it got the lock; then it writes where the last open landed.
_REOPEN_TRIES = 3


def set_aside_torn_tail(path: str, aside: str) -> bytes:
    """Cut what follows the last newline of the file ``path`` (a line its writer died while
    writing: invalid JSON that every line-by-line reader of the file stumbles on) and append
    it, as a line, to ``aside``; the bytes set aside (``b""``: none). A complete record that
    lacks only its newline gets the newline and stays; a file in which no line ends (zeroes
    a crash left, a lone torn line) is left as it is, for its reader to judge."""
    if not os.path.isfile(path):
        return b""
    fd, size = _open_locked(path)
    try:
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return b""
        start = size
        while start > 0:  # back to the last newline, a block at a time
            lo = max(0, start - 65536)
            nl = os.pread(fd, start - lo, lo).rfind(b"\n")
            if nl >= 0:
                start = lo + nl + 1
                break
            start = lo
        if start == 0:  # no line ends in it: no entry to keep clear of (zeroes, one torn line)
            return b""
        tail = os.pread(fd, size - start, start)
        try:
            json.loads(tail)
            os.write(fd, b"\n")
            return b""
        except ValueError:  # (UnicodeDecodeError too)
            pass
        out, _ = open_own(aside, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(out, tail + b"\n")
        finally:
            os.close(out)
        os.ftruncate(fd, start)
        return tail
    finally:
        os.close(fd)


def _open_locked(path: str) -> tuple[int, int]:
    """A descriptor of the file ``path`` names (created when missing), opened to append and
    locked exclusively, and the file's size. A symbolic link or a FIFO in the file's place is
    refused (:func:`open_own`).

    A file moved away or deleted between the open and the lock (``mv commands commands.1``)
    is let go for the one the path names now: a reader that finishes a rotated file
    (:class:`JsonlTail` with ``hold_open``) takes the lock before it reads the rotated file's
    last bytes, so a line lands either before those bytes are read or in the new file."""
    tries = _REOPEN_TRIES
    while True:
        try:
            fd, _ = open_own(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        except PermissionError as exc:
            raise _not_permitted(path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            tries -= 1
            if tries == 0 or _names(path, st):
                return fd, st.st_size
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # (and its lock)


def _not_permitted(path: str, exc: OSError) -> JournalWriteError:
    """Permission denied, said with whose file (or folder) it is and what to do."""
    try:
        st, what = os.stat(path), "the file"
    except OSError:
        folder = os.path.dirname(path) or "."
        try:
            st, what = os.stat(folder), f"its folder {folder}"
        except OSError:
            return JournalWriteError(f"cannot write {path}: {exc.strerror or exc}",
                                     errno=exc.errno, path=path)  # fmt: skip
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = f"uid {st.st_uid}"
    return JournalWriteError(
        f"cannot write {path}: permission denied ({what} belongs to {owner}, mode "
        f"{stat.S_IMODE(st.st_mode):04o}). Whoever sends commands must be able to write the "
        f"run's files: in a folder a group shares, {owner} runs with umask 002 (or chmod g+w "
        f"the files); or send through `hotcb serve` started by {owner}",
        errno=exc.errno,
        path=path,
    )


def _names(path: str, st: os.stat_result) -> bool:
    """Whether ``path`` names the file ``st`` is the ``fstat`` of."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return now.st_ino == st.st_ino and now.st_dev == st.st_dev


def _reason(exc: OSError) -> str:
    return f"{exc.strerror or exc}, errno {exc.errno}" if exc.errno else str(exc)


def _remedy(exc: OSError) -> str:
    """What to do about a failed append: a file-size limit (EFBIG) is not a full disk."""
    if exc.errno == errno.EFBIG:
        return ("file too large (a file-size limit: ulimit -f, or the filesystem's largest "
                "file): raise the limit")  # fmt: skip
    return "free disk space"


def _cut_back(fd: int, path: str, size: int, nbytes: int, exc: OSError) -> JournalWriteError:
    """Truncate the file back to ``size`` after a failed write; the error to raise."""
    try:
        os.ftruncate(fd, size)
    except OSError as cut:
        return JournalWriteError(
            f"could not append {nbytes} bytes to {path} ({_reason(exc)}), nor cut off the "
            f"partial line it left ({_reason(cut)}): {_remedy(exc)}, then check the file's "
            "last line; the record was not written",
            errno=exc.errno,
            path=path,
        )
    return JournalWriteError(
        f"could not append {nbytes} bytes to {path} ({_reason(exc)}): {_remedy(exc)} and try "
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
    path: str | os.PathLike[str],
    records: Iterable[dict[str, Any]],
    *,
    fsync: bool = False,
    unless: Callable[[], bool] | None = None,
) -> bool:
    """Append several records in one write (one lock, one system call for the data): all of
    them or none; nothing when ``unless()`` (called under the lock) is true. Whether they
    were written."""
    data = "".join(dumps(r) + "\n" for r in records).encode()
    return bool(data) and _write_locked(os.fspath(path), data, fsync=fsync, unless=unless)


def _same_start(a: int, b: int, n: int) -> bool:
    """Whether the files open as ``a`` and ``b`` hold the same first ``n`` bytes."""
    at = 0
    while at < n:
        size = min(n - at, 1 << 20)
        chunk = os.pread(a, size, at)
        if len(chunk) != size or os.pread(b, size, at) != chunk:
            return False
        at += size
    return True


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

    A tail started at a cursor (a kernel resuming from its ledger) has no identity to compare
    yet: ``check_resume(before)``, when given, is called at its first read with the bytes that
    end at the cursor (the line that ended there, and the newline before it, when they are no
    longer than ``max_line + 2`` bytes, or ``max_bytes`` without ``max_line``); False says
    the file is not the one the cursor counts bytes of, and it is read from its start.

    A line longer than ``max_bytes`` is not read again on every call while its newline is
    missing: the tail remembers how far it has looked and reads only bytes it has not seen
    (all of them in one call, and the line whole once its newline came; with ``max_line``, at
    most ``max_bytes`` a call). With ``max_line``, such a line is not kept whole either: once
    ``max_line`` of its bytes have no newline, it is handed out, when its newline arrives, cut to
    its first ``max_line + 1`` bytes, and :attr:`cut` says ``(end_offset, length)`` of it.

    The path must name a regular file: anything else (a FIFO, a directory) raises ``OSError``
    from :meth:`read_lines` instead of blocking or reading it; with ``follow_links=False``, so
    does a symbolic link (:func:`open_regular`).

    With ``hold_open``, the tail keeps the file it reads open between reads, as ``tail -F``
    does, so a file moved away (``mv f f.1``, rotation) or deleted with lines not read yet is
    read to its end through that descriptor before the file the path names now: the lines of
    the old file come with their offsets in it, in one or more reads that hand out nothing of
    the new file, and only the read after them restarts (:attr:`reset`) on the new file. The
    rotated file is read under a shared ``flock``, which :func:`append` respects, so a writer
    that chose it before it was moved has finished, and a later one writes to the new file.
    What follows the last newline of the rotated file (an unfinished hand-written line) is
    not read: :attr:`left_unread` says how many bytes that was. A file renamed over the old
    one that starts with the same bytes up to the cursor (an editor's save, ``sed -i``, which
    kept every line read and maybe added some) is read on from the cursor, without a
    restart. A truncation in place, or a file replaced with other bytes before the cursor,
    restarts as without ``hold_open``. The file is held
    from the first read on: what was not read of a file rotated before it (a trainer that was
    down) is gone for this tail. :meth:`close` lets it go.

    The kernel's poll does one ``os.stat`` and asks :meth:`caught_up` before reading.
    """

    __slots__ = ("_dev", "_head", "_held", "_ino", "_mtime", "_scan", "_scan_from", "_tail", "check_resume", "cut",
                 "follow_links", "hold_open", "left_unread", "max_bytes", "max_line", "more",
                 "offset", "path", "reset")  # fmt: skip

    def __init__(
        self,
        path: str | os.PathLike[str],
        offset: int = 0,
        max_bytes: int = _DEFAULT_MAX_BYTES,
        *,
        max_line: int | None = None,
        check_resume: Callable[[bytes], bool] | None = None,
        hold_open: bool = False,
        follow_links: bool = True,
    ) -> None:
        self._held = -1  # the descriptor of the file read (hold_open), first: __del__ reads it
        self.hold_open = hold_open
        self.follow_links = follow_links
        #: bytes of a rotated file after its last newline, not read (see ``hold_open``); set
        #: with :attr:`reset`
        self.left_unread = 0
        self.path = os.fspath(path)
        self.offset = offset
        self.max_bytes = max_bytes
        self.max_line = max_line
        self.check_resume = check_resume
        self.reset = False
        #: the last read stopped at ``max_bytes`` with more of the file after it (a reader
        #: catching up on a long run's history reads on before it acts on what it read)
        self.more = False
        #: ``(end_offset, length)`` of the line the last read handed out cut (``max_line``)
        self.cut: tuple[int, int] | None = None
        self._dev = self._ino = -1  # not read yet: no ``caught_up`` before the first read
        # the file's mtime at the last read, and the bytes that end at the cursor (at most
        # 256): a file rewritten to the same length (truncated, then a line as long as the
        # one read) had nothing past the cursor and was taken as read, its commands lost
        self._mtime = -1
        self._tail = b""
        # a line longer than max_bytes (or max_line) at the cursor: where it starts, how far
        # it has no newline, and its first max_line + 1 bytes
        self._scan_from = self._scan = -1
        self._head = b""

    def close(self) -> None:
        """Let go of the file held open (``hold_open``); a later read opens the path again."""
        if self._held >= 0:
            fd, self._held = self._held, -1
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    @property
    def holding(self) -> bool:
        """Whether a file is held open (``hold_open``): one the path may no longer name, with
        lines not read yet. No system call."""
        return self._held >= 0

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def caught_up(self, st: os.stat_result) -> bool:
        """True when ``st`` (an ``os.stat`` of :attr:`path`) shows the file this tail read,
        with nothing after the cursor (or after the long line it looked through): there is
        nothing to read. No system call."""
        size = st.st_size
        return (
            (size == self.offset or (size == self._scan and self._scan_from == self.offset))
            and st.st_ino == self._ino
            and st.st_dev == self._dev
            and st.st_mtime_ns == self._mtime
        )

    def has_new(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self.offset != 0
        return not self.caught_up(st)

    def _restart(self) -> None:
        self._forget_long()
        self._tail = b""
        if self.offset:  # a cursor at 0 has consumed nothing: there is nothing to redo
            self.offset = 0
            self.reset = True

    def _forget_long(self) -> None:
        self._scan_from = self._scan = -1
        self._head = b""

    def read_lines(self, size: int | None = None) -> list[tuple[int, bytes]]:
        """The new complete lines, reading no further than byte ``size`` when given."""
        self.cut = None
        self.more = False
        try:
            fd, st = open_regular(self.path, follow=self.follow_links)
        except FileNotFoundError:
            # moved away or deleted, nothing in its place yet: what is left of the file held
            return self._finish_held()[0] if self._held >= 0 else []
        try:
            # the identity and size of the file actually opened, not of what ``path`` named a
            # moment ago: a replacement between the caller's stat and this open is then seen
            continued = False
            if self._held >= 0 and (st.st_ino != self._ino or st.st_dev != self._dev):
                lines, continued = self._finish_held(fd)
                if self._held >= 0:  # lines of the old file: the new one at the next read
                    return lines
            known = self._ino != -1
            self._check_cursor(fd, st, known, continued)
            if not known:
                self.check_resume = None
            self._dev, self._ino, self._mtime = st.st_dev, st.st_ino, st.st_mtime_ns
            end = st.st_size if size is None else min(size, st.st_size)
            lines = self._read(fd, end)
            if self.hold_open and self._held < 0:
                self._held, fd = fd, -1
            return lines
        finally:
            if fd >= 0:
                os.close(fd)

    def _finish_held(self, new: int = -1) -> tuple[list[tuple[int, bytes]], bool]:
        """The lines of the file held open, which the path no longer names, that were not read
        yet; the file is let go (and :attr:`left_unread` set) once none is left. With ``new``,
        the descriptor of the file the path names now, also whether that file starts with the
        same bytes up to the cursor: an editor's save (a new file renamed over the old one)
        that kept every line read, which is read on from the cursor, not again from its start.

        Read under a shared lock: a writer that opened the file before it was moved and locked
        it before this read has written its line; one that locks it later sees that the path
        names another file and writes there (:func:`append`). While a writer holds the lock,
        what is there now is read and the file kept for the next read."""
        fd = self._held
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            locked = False
        try:
            end = os.fstat(fd).st_size
            lines = self._read(fd, end)
        finally:
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
        # a long line looked through in bounded steps may not be looked through to its end yet
        looking = self._scan_from == self.offset and 0 <= self._scan < end
        if lines or not locked or looking:
            return lines, False
        same = new >= 0 and _same_start(fd, new, self.offset)
        self.left_unread = 0 if same else max(end - self.offset, 0)
        self.close()
        return [], same

    def _check_cursor(self, fd: int, st: os.stat_result, known: bool, continued: bool) -> None:
        """Start again from the file's first byte when the cursor no longer counts bytes of
        what was read: another file, a shorter one, one rewritten up to the cursor."""
        if known and (st.st_ino != self._ino or st.st_dev != self._dev) and not continued:
            self._restart()  # another file now: replaced, or deleted and created again
        elif st.st_size < self.offset:
            self._restart()  # truncated
        elif not known and self.offset and self.check_resume is not None:
            if not self.check_resume(self._before(fd)):
                self._restart()  # not the file the cursor counts bytes of
        elif st.st_mtime_ns != self._mtime and self._rewritten(fd):
            self._restart()  # rewritten up to the cursor (to the same length, say)
        elif st.st_size < self._scan:
            self._forget_long()  # cut back inside a long line: look through it again

    def _rewritten(self, fd: int) -> bool:
        """The bytes that end at the cursor are not those read there (one ``pread``, only
        when the file's mtime moved)."""
        tail = self._tail
        if not tail or self.offset < len(tail):
            return False
        return os.pread(fd, len(tail), self.offset - len(tail)) != tail

    def _before(self, fd: int) -> bytes:
        """The bytes that end at the cursor: its line, and the newline before it."""
        limit = (self.max_bytes if self.max_line is None else self.max_line) + 2
        n = min(self.offset, limit)
        return os.pread(fd, n, self.offset - n)

    def _read(self, fd: int, end: int) -> list[tuple[int, bytes]]:
        start = self.offset
        if end <= start:
            return []
        if self._scan_from == start and self._scan > start:  # still in a long line
            if start and os.pread(fd, 1, start - 1) != b"\n":
                self._restart()  # rewritten in place
                return self._read(fd, end)
            return self._long_line(fd, end)
        back = 1 if start > 0 else 0  # the byte before the cursor: the newline we consumed
        self.more = end - start > self.max_bytes
        data = os.pread(fd, min(end - start, self.max_bytes) + back, start - back)
        if back and data[:1] != b"\n":
            self._restart()  # rewritten in place (truncated, then written past the cursor)
            return self._read(fd, end)
        last = data.rfind(b"\n", back)
        if last < 0:
            size = len(data) - back
            if size >= self.max_bytes or (self.max_line is not None and size > self.max_line):
                # one very long line: from now on, only the bytes after these are looked at
                self._scan_from, self._scan = start, start + size
                if self.max_line is not None:
                    self._head = data[back : back + self.max_line + 1]
                return self._long_line(fd, end)  # its newline may be there already
            return []
        out: list[tuple[int, bytes]] = []
        pos = start
        for line in data[back:last].split(b"\n"):
            pos += len(line) + 1
            out.append((pos, line))
        self.offset = pos
        self._tail = data[max(0, last + 1 - 256) : last + 1]
        return out

    def _long_line(self, fd: int, end: int) -> list[tuple[int, bytes]]:
        """Look for the newline of the long line at the cursor in bytes not looked at yet (at
        most ``max_bytes`` of them); the line, once it has one."""
        pos = self._scan
        # a reader that keeps a long line whole reads it whole once it has ended, as it did
        # before; one that cuts it (``max_line``: the kernel's commands) bounds each poll
        stop = end if self.max_line is None else min(end, pos + self.max_bytes)
        while pos < stop:
            chunk = os.pread(fd, min(stop - pos, _SCAN_CHUNK), pos)
            if not chunk:
                break
            nl = chunk.find(b"\n")
            if nl >= 0:
                return [self._take_long(fd, pos + nl)]
            pos += len(chunk)
        self._scan = pos
        return []

    def _take_long(self, fd: int, nl: int) -> tuple[int, bytes]:
        """The long line at the cursor, which ends with the newline at ``nl``: whole, or cut
        to ``max_line + 1`` bytes (:attr:`cut`)."""
        start, end = self.offset, nl + 1
        if self.max_line is None:
            line = os.pread(fd, nl - start, start)
        else:
            line, self.cut = self._head, (end, nl - start)
        self._forget_long()
        self.offset = end
        self._tail = b""  # (a long line: not checked again)
        return end, line

    def read_records(self) -> list[dict[str, Any]]:
        """Complete new lines parsed as JSON objects; lines that are not objects are skipped."""
        out = []
        for _, line in self.read_lines():
            rec = parse_line(line)
            if rec is not None:
                out.append(rec)
        return out


def parse_line(line: bytes) -> dict[str, Any] | None:
    """One raw line as a JSON object; None for a blank line, bad JSON (absurd nesting too) or
    a non-object."""
    line = line.strip()
    if not line:
        return None
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
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
    skips most of a large file (parsing is what costs). A line longer than
    :data:`MAX_RECORD_BYTES` is skipped without being held (a hole of NUL bytes after a
    crash, garbage). Raises ``OSError`` when the path names something else than a regular
    file (a FIFO, a directory)."""
    try:
        fd, _ = open_regular(os.fspath(path))
    except FileNotFoundError:
        return
    with open(fd, "rb") as f:
        f.seek(start)
        pending: list[bytes] = []  # the start of a line that the chunks so far do not end
        held = 0
        skip = False  # that line is longer than a record may be: dropped up to its end
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            end = chunk.rfind(b"\n")
            if end < 0:
                if not skip:
                    pending.append(chunk)
                    held += len(chunk)
                    if held > MAX_RECORD_BYTES:
                        pending, held, skip = [], 0, True
                continue
            lines = chunk[:end].split(b"\n")
            if skip:
                del lines[0]
                skip = False
            elif pending:
                lines[0] = b"".join(pending) + lines[0]
            pending = [chunk[end + 1 :]]
            held = len(pending[0])
            for line in lines:
                if keep is not None and not keep(line):
                    continue
                rec = parse_line(line)
                if rec is not None:
                    yield rec


def _lines_backward(f: Any, block: int) -> Iterator[bytes]:
    """The complete lines of an open binary file, last first, read in blocks from its end.

    The bytes after the last newline (a write in progress) are not a line; a line longer than
    :data:`MAX_RECORD_BYTES` is skipped without being held."""
    pos = f.seek(0, os.SEEK_END)
    pending: list[bytes] = []  # pieces of the line being put together, right to left
    held = 0
    drop = True  # the line being put together is dropped: the unfinished last one, or too long
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        chunk = f.read(step)
        if b"\n" not in chunk:
            if not drop:
                pending.append(chunk)
                held += len(chunk)
                if held > MAX_RECORD_BYTES:
                    pending, held, drop = [], 0, True
            continue
        parts = chunk.split(b"\n")
        if not drop:
            pending.append(parts[-1])
            yield b"".join(reversed(pending))
        drop = False
        yield from reversed(parts[1:-1])
        pending, held = [parts[0]], len(parts[0])
    if not drop:
        yield b"".join(reversed(pending))  # the file's first line


def read_last(path: str | os.PathLike[str], n: int = 1, block: int = 65536) -> list[dict[str, Any]]:
    """The last ``n`` complete records of a file, oldest first, reading only its tail: back
    from the end until ``n`` lines parsed as JSON objects (past garbage lines, the whole file
    when it has fewer). Missing file: none; raises ``OSError`` when the path names something
    else than a regular file."""
    return last_records(path, n, block=block)


def last_records(
    path: str | os.PathLike[str],
    n: int = 1,
    *,
    keep: Callable[[dict[str, Any]], bool] | None = None,
    block: int = 65536,
) -> list[dict[str, Any]]:
    """:func:`read_last`, counting only the records that ``keep(record)`` accepts."""
    if n <= 0:
        return []
    try:
        fd, _ = open_regular(os.fspath(path))
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    with open(fd, "rb") as f:
        for line in _lines_backward(f, block):
            rec = parse_line(line)
            if rec is not None and (keep is None or keep(rec)):
                out.append(rec)
                if len(out) == n:
                    break
    out.reverse()
    return out


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``path`` through a new temporary file beside it (:func:`atomic_writer`), so
    readers see the old or the new file, never half of one, and nothing is written through a
    link someone planted under the temporary file's name."""
    with atomic_writer(path) as f:
        f.write(data)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write a whole JSON document so readers see the old or the new one, never half."""
    write_atomic(path, dumps(obj).encode())


#: The largest JSON document :func:`read_json` reads (hotcb's own are a few KB to a few MB:
#: a tuner's state with its trials): a bigger one is unreadable, not a gigabyte in memory (a
#: sparse file planted in a served folder took the dashboard to 2 GB at each runs list).
MAX_JSON_BYTES = 64 * 1024 * 1024


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """A whole JSON document, or ``default`` when the file is missing or unreadable (or
    larger than :data:`MAX_JSON_BYTES`)."""
    try:
        fd, st = open_regular(os.fspath(path))
        with open(fd) as f:
            if st.st_size > MAX_JSON_BYTES:
                return default
            return json.load(f)
    except (OSError, ValueError, RecursionError):  # missing, a FIFO, not JSON, absurd nesting
        return default
