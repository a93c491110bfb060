"""Tailers: one per watched file of a run, each with its own byte cursor and bounded memory.

- :class:`MetricsIndex` tails ``hotcb.metrics.jsonl`` into a columnar index, one
  ``array('q')`` of steps and one ``array('d')`` of values per metric (16 bytes a point, not a
  dict a record), so a history request over a million lines is a slice and a downsample.
- :class:`LedgerState` tails ``hotcb.applied.jsonl``: the last ``max_entries`` entries, what is
  still scheduled, and whether the run is paused.
- :class:`CommandsTail` tails ``hotcb.commands.jsonl`` from the moment the server watches the run.
- :class:`ActuatorsWatch` re-reads ``hotcb.actuators.json`` when its size or mtime changes.
- :class:`TuneWatch` re-reads the online tuner's ``hotcb.tune.json`` the same way, keeps the last
  good document when the file does not parse, and never lets a URL's password out.
- :class:`Tailer` is the server's background task: every ``tail_interval_sec`` it refreshes the
  runs that a page subscribes to (each refresh pushes one batched message per file that grew).

All of them read through :class:`hotcb.jsonl.JsonlTail`, so a half-written last line is left
for the next poll. None of them is thread-safe on its own: :class:`hotcb.server.runs.RunState`
serialises them under one lock per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import sys
import time
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .. import jsonl
from ..ledger import LedgerView, life_started
from ..metrics._columns import read_blocks, sidecar_path
from ..ops import MAX_COMMAND_BYTES
from ..runfiles import METRICS_INDEX, TUNE, redact_urls

try:  # the dashboard extra brings orjson; the standard library's json is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _orjson = None  # type: ignore[assignment]

if TYPE_CHECKING:  # runs.py builds on the tailers below; the loop only needs the names
    from .config import DashboardConfig
    from .hub import Hub
    from .runs import RunRegistry

__all__ = [
    "TUNE_STATE",
    "ActuatorsWatch",
    "ColumnCache",
    "CommandsTail",
    "HeartbeatWatch",
    "KnobHistory",
    "KnobsTail",
    "LedgerState",
    "MetricsIndex",
    "Tailer",
    "TuneWatch",
    "redact_urls",
]

log = logging.getLogger("hotcb.server")

_RESERVED = frozenset({"step", "epoch", "wall_time", "metrics", "v", "rank"})
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


_SAID: set[tuple[str, str]] = set()  # files that could not be read, and why: said once


def _chunks(tail: jsonl.JsonlTail) -> Iterator[list[tuple[int, bytes]]]:
    """Every new complete line, in chunks of at most ``tail.max_bytes`` bytes (a caught-up
    tail costs one ``stat``). After each chunk ``tail.reset`` tells whether the file was
    truncated or replaced (the chunk then starts from its beginning)."""
    while True:
        size = tail.size()
        before = tail.offset
        try:
            lines = tail.read_lines(size)
        except OSError as exc:  # a directory or a FIFO in the file's place: nothing to read
            key = (tail.path, str(exc))
            if key not in _SAID:
                _SAID.add(key)
                log.warning("hotcb: cannot read %s: %s", tail.path, exc)
            return
        if not lines and not tail.reset:
            return
        yield lines
        if size - before <= tail.max_bytes and not tail.reset:
            return
        tail.reset = False


def _loads_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:  # a hand-written line nested past Python's limit: not a record
        raise ValueError("nested too deep") from None


def _loads_orjson(raw: bytes) -> Any:
    """orjson, and json where orjson refuses what json takes (``NaN``/``Infinity`` tokens,
    integers past 64 bits, lone surrogates): every line parses to what ``json.loads`` gives."""
    try:
        return _orjson.loads(raw)
    except ValueError:
        return _loads_json(raw)


#: One metrics line to Python, as :func:`json.loads` would parse it (raises ValueError).
loads = _loads_json if _orjson is None else _loads_orjson


def _last_wall_time(recs: list[dict[str, Any]], before: float | None) -> float | None:
    """The last numeric ``wall_time`` of ``recs`` (records), else ``before``."""
    for r in reversed(recs):
        wt = r.get("wall_time")
        if type(wt) is float or type(wt) is int:
            return float(wt)
    return before


def _step_of(rec: Any) -> int | None:
    """A parsed line's step as :meth:`MetricsIndex._add` takes it (None: not a record)."""
    if type(rec) is not dict:
        return None
    step = rec.get("step")
    if type(step) is float and math.isfinite(step):  # a parser gives exact types
        step = int(step)
    if type(step) is not int or not _INT64_MIN <= step <= _INT64_MAX:
        return None  # no int64 column holds it: skipped like a bad line
    return step


def _columns(
    steps: list[int], ms: list[dict[str, Any]]
) -> list[tuple[str, list[int], list[float]]] | None:
    """``(name, steps, values)`` of each metric when every ``metrics`` dict has the same
    names; None otherwise. Values as :func:`_number` takes them (points it skips are left
    out with their steps)."""
    names = list(ms[0])
    if set(map(len, ms)) != {len(names)}:
        return None
    columns: list[tuple[str, list[int], list[float]]] = []
    for name in names:
        try:
            vals = [m[name] for m in ms]
        except KeyError:  # another set of names somewhere
            return None
        if set(map(type, vals)) <= {float, int}:
            columns.append((name, steps, vals))
            continue
        xs = list(map(_number, vals))
        keep = [i for i, x in enumerate(xs) if x is not None]
        if keep:
            columns.append((name, [steps[i] for i in keep], [xs[i] for i in keep]))  # type: ignore[misc]
    return columns


def _parse_all(raws: list[bytes]) -> list[Any]:
    """Each line parsed as :data:`loads` would; a line that does not parse is left out."""
    if loads is _loads_orjson:
        try:  # one C loop over the chunk; a line orjson refuses: line by line below
            return list(map(_orjson.loads, raws))
        except ValueError:
            pass
    out = []
    parse = loads
    for raw in raws:
        try:
            out.append(parse(raw))
        except ValueError:
            continue
    return out


#: A first load larger than this runs with the cyclic garbage collector paused (the records it
#: builds are freed by reference counting; a collection pass over a growing heap is waste).
_BULK_BYTES = 1 << 20
#: A metrics file gets a columnar cache once the server has read this much of it.
CACHE_MIN_BYTES = 8 << 20


def _number(v: Any) -> float | None:
    """A metric value as float: numbers, ``null``/``"nan"`` (NaN); anything else is skipped."""
    if isinstance(v, float):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if v is None:
        return math.nan
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


class Series:
    """One metric: parallel step and value columns, sorted by step."""

    __slots__ = ("steps", "values")

    def __init__(self) -> None:
        self.steps = array("q")
        self.values = array("d")

    def __len__(self) -> int:
        return len(self.steps)


class MetricsIndex:
    """Columnar in-memory index of a run's metrics file, appended by each :meth:`update`.

    With ``cache=True`` a new index starts from the cache beside the metrics file
    (:data:`METRICS_INDEX`, see :class:`ColumnCache`) when it still matches the metrics file,
    reading only the lines appended since; :attr:`cache_due` says when at least
    ``cache_min_bytes`` were read since it was written (:meth:`save_cache` writes it; the
    server does that after answering, not while a request waits)."""

    def __init__(self, path: str, *, cache: bool = False, cache_min_bytes: int = 8 << 20) -> None:
        self.tail = jsonl.JsonlTail(path)
        self.series: dict[str, Series] = {}
        self.loaded = False
        self.lines = 0
        self.last_step: int | None = None
        self.last_wall_time: float | None = None
        self.last_record: dict[str, Any] | None = None
        self.cache = (
            ColumnCache(os.path.join(os.path.dirname(os.path.abspath(path)), METRICS_INDEX))
            if cache
            else None
        )
        self.cache_min_bytes = cache_min_bytes
        self._unsaved = 0  # bytes read since the cache was last written
        #: where the first load came from: "cache" (and how many bytes), or "parsed"
        self.source: dict[str, Any] = {}

    def pending_bytes(self) -> int:
        return max(0, self.tail.size() - self.tail.offset)

    def clear(self) -> None:
        self.series.clear()
        self.lines = 0
        self.last_step = self.last_wall_time = self.last_record = None

    def update(self, collect: int = 0) -> list[dict[str, Any]]:
        """Read every new complete line into the index; return the last ``collect`` new
        records (for pushing to subscribers). Reads in chunks until caught up."""
        if not self.loaded:
            cached = self.cache.load(self) if self.cache is not None else 0
            columns = self._load_columns()
            self.source = {"from": "parsed"}
            if cached:
                self.source = {"from": "cache", "bytes": cached}
            if columns:
                self.source = {"from": "columns", "bytes": columns, "cache_bytes": cached}
        before = self.tail.offset
        pause = self.pending_bytes() > _BULK_BYTES and gc.isenabled()
        if pause:
            gc.disable()
        try:
            records = self._read(collect)
        finally:
            if pause:
                gc.enable()
        self.loaded = True
        if self.cache is not None:
            self._unsaved += max(0, self.tail.offset - before)
        return records

    @property
    def cache_due(self) -> bool:
        """At least ``cache_min_bytes`` were read since the cache was last written."""
        return self.cache is not None and self._unsaved >= self.cache_min_bytes

    def save_cache(self) -> bool:
        """Write the cache now (the caller holds the run's lock: nothing appends meanwhile)."""
        return self.cache is not None and self.cache.write(self.cache_snapshot())

    def cache_snapshot(self) -> tuple[dict[str, Any], list[bytes]] | None:
        """A copy of the index for :meth:`ColumnCache.write` (taken under the run's lock)."""
        if self.cache is None:
            return None
        self._unsaved = 0
        return self.cache.snapshot(self)

    def _load_columns(self) -> int:
        """Take from the trainer's column sidecar (:mod:`hotcb.metrics._columns`) what it
        says about the metrics file from the cursor on; the bytes of the file skipped.

        A block is used only when it starts at the cursor, right after a newline, and the
        file's bytes it claims hold exactly its number of lines, the last of which is the
        record its header quotes; and when its steps, like the index's, never go back (a
        resumed run's second branch goes through the parser, which cuts the first). The
        first block that fails a check ends the reading: the rest is parsed."""
        try:  # (regular files only: a FIFO in a file's place would hang the server here)
            side, _ = jsonl.open_regular(sidecar_path(self.tail.path))
            with open(side, "rb") as f:
                data = f.read()
            fd, _ = jsonl.open_regular(self.tail.path)
        except OSError:
            return 0
        start = self.tail.offset
        try:
            size = os.fstat(fd).st_size
            for header, cols in read_blocks(data):
                lo, hi, last = header["start"], header["end"], header["last"]
                if hi <= self.tail.offset:
                    continue  # already in the index (the server's own cache)
                if lo != self.tail.offset or hi > size or type(last) is not dict:
                    break
                raw = os.pread(fd, hi - lo + 1, lo - 1) if lo else os.pread(fd, hi, 0)
                if lo and raw[:1] != b"\n":
                    break
                if len(raw) != hi - lo + (lo > 0) or raw.count(b"\n") != header["lines"] + (lo > 0):
                    break
                cut = raw.rfind(b"\n", 0, len(raw) - 1)
                try:
                    if loads(raw[cut + 1 : -1]) != last:
                        break
                except ValueError:
                    break
                if not self._add_column_block(cols):
                    break
                self.lines += header["lines"]
                self.last_step = last.get("step")
                wt = last.get("wall_time")
                if type(wt) is float or type(wt) is int:
                    self.last_wall_time = float(wt)
                self.last_record = last
                self.tail.offset = hi
        except (OSError, KeyError, TypeError, ValueError) as exc:
            log.debug("hotcb dashboard: stopped reading %s: %r", sidecar_path(self.tail.path), exc)
        finally:
            os.close(fd)
        return self.tail.offset - start

    def _add_column_block(self, cols: list[tuple[str, array[int], array[float]]]) -> bool:
        """Append one sidecar block's columns; False, having changed nothing, when a step
        goes back (within the block or from what the index holds)."""
        for name, steps, _ in cols:
            lst = steps.tolist()
            if lst != sorted(lst):
                return False
            s = self.series.get(name)
            if s is not None and s.steps and lst and lst[0] < s.steps[-1]:
                return False
        self._extend(cols)
        return True

    def _extend(self, cols: list[tuple[str, array[int], array[float]]]) -> None:
        """Append ``(name, steps, values)`` columns to their series."""
        for name, steps, values in cols:
            s = self.series.get(name)
            if s is None:
                s = self.series[name] = Series()
            s.steps.extend(steps)
            s.values.extend(values)

    def _first_read(self) -> None:
        """The first load: the file (from the cache's offset) in blocks of ``max_bytes``, each
        cut into lines and parsed in bulk. :meth:`jsonl.JsonlTail.read_lines` pairs every line
        with its end offset, a third of a million-line load that only the live tail needs; the
        tail is left as ``read_lines`` would leave it (cursor after the last complete line,
        the file's identity remembered), and a line longer than a block is left to it."""
        tail = self.tail
        try:
            fd, _ = jsonl.open_regular(tail.path)  # (not a FIFO: the server would hang)
        except OSError:  # missing, or not a regular file: the live tail says what it is
            return
        try:
            st = os.fstat(fd)
            if st.st_size < tail.offset:  # shorter than the cache said: read_lines restarts
                return
            tail._dev, tail._ino = st.st_dev, st.st_ino  # what read_lines would remember
            while tail.offset < st.st_size:
                data = os.pread(fd, min(tail.max_bytes, st.st_size - tail.offset), tail.offset)
                last = data.rfind(b"\n")
                if last < 0:
                    return
                recs = _parse_all(data[:last].split(b"\n"))
                tail.offset += last + 1
                if not self._add_columns(recs):
                    self._add_records(recs)
        finally:
            os.close(fd)

    def _read(self, collect: int) -> list[dict[str, Any]]:
        out: deque[dict[str, Any]] = deque(maxlen=max(0, collect))
        if not self.loaded and not collect:
            self._first_read()
        for lines in _chunks(self.tail):
            if self.tail.reset:  # truncated or replaced: start over
                self.tail.reset = False
                self.clear()
                out.clear()
            if collect:
                add = self._add
                for _, raw in lines:
                    rec = add(raw)
                    if rec is not None:
                        out.append(rec)
            else:  # a first load, or a burst nobody is pushed: the bulk path
                recs = _parse_all([raw for _, raw in lines])
                if not self._add_columns(recs):
                    self._add_records(recs)
        return list(out)

    def _add_columns(self, recs: list[Any]) -> bool:
        """The common case column by column, in C loops: every record a dict with an int
        ``step`` (never going back, within the chunk or from what the index holds) and a
        ``metrics`` dict with the same names. False, having changed nothing, for anything
        else (:meth:`_add_records` then does it record by record; the result is the same)."""
        if not recs:
            return True
        try:
            steps = [r["step"] for r in recs]
            ms = [r["metrics"] for r in recs]
        except (KeyError, TypeError):  # not a dict, or flat records
            return False
        if set(map(type, steps)) != {int} or set(map(type, ms)) != {dict}:
            return False
        if steps != sorted(steps):
            return False
        columns = _columns(steps, ms)
        if columns is None:
            return False
        for name, st, _ in columns:
            s = self.series.get(name)
            if s is not None and s.steps and st[0] < s.steps[-1]:
                return False  # a resumed run logging earlier steps again: the general loop
        try:
            all_steps = array("q", steps)  # shared by every column that has each record
            arrays = [
                (name, all_steps if st is steps else array("q", st), array("d", vs))
                for name, st, vs in columns
            ]
        except (OverflowError, TypeError):  # an int past 64 bits, a float too large
            return False
        self._extend(arrays)
        self.lines += len(recs)
        self.last_step = steps[-1]
        self.last_wall_time = _last_wall_time(recs, self.last_wall_time)
        self.last_record = recs[-1]
        return True

    def _add_records(self, recs: list[Any]) -> None:
        """:meth:`_add` for many parsed lines, the same in every case (what
        :meth:`_add_columns` leaves: flat records, mixed names, a resumed run, bad lines)."""
        series = self.series
        cols: dict[str, list[Any]] = {}  # name -> [steps, values, last step]
        for rec in recs:
            step = _step_of(rec)
            if step is None:
                continue
            metrics = rec.get("metrics")
            if type(metrics) is not dict:
                metrics = {k: v for k, v in rec.items() if k not in _RESERVED}
            for name, raw_value in metrics.items():
                value = _number(raw_value)
                if value is None:
                    continue
                c = cols.get(name)
                if c is None:
                    s = series.get(name) or series.setdefault(name, Series())
                    c = cols[name] = [s.steps, s.values, s.steps[-1] if s.steps else None]
                if c[2] is not None and step < c[2]:
                    cut = bisect_left(c[0], step)  # a resumed run: as in _add
                    del c[0][cut:]
                    del c[1][cut:]
                c[0].append(step)
                c[1].append(value)
                c[2] = step
            self.lines += 1
            self.last_step = step
            wt = rec.get("wall_time")
            if type(wt) is float or type(wt) is int:
                self.last_wall_time = float(wt)
            self.last_record = rec

    def _add(self, raw: bytes) -> dict[str, Any] | None:
        try:
            rec = loads(raw)
        except ValueError:
            return None
        if type(rec) is not dict:
            return None
        step = _step_of(rec)
        if step is None:
            return None
        metrics = rec.get("metrics")
        if type(metrics) is not dict:  # flat records: every other numeric key is a metric
            metrics = {k: v for k, v in rec.items() if k not in _RESERVED}
        series = self.series
        for name, raw_value in metrics.items():
            tv = type(raw_value)
            if tv is float:
                value = raw_value
            elif tv is int:
                value = float(raw_value)
            else:
                value = _number(raw_value)
                if value is None:
                    continue
            s = series.get(name)
            if s is None:
                s = series[name] = Series()
            elif s.steps and step < s.steps[-1]:
                # A run resumed from an earlier checkpoint logs those steps again: the new
                # branch replaces the abandoned one (as TensorBoard purges orphaned data),
                # which also keeps every series sorted by step for bisecting.
                cut = bisect_left(s.steps, step)
                del s.steps[cut:]
                del s.values[cut:]
            s.steps.append(step)
            s.values.append(value)
        self.lines += 1
        self.last_step = step
        wt = rec.get("wall_time")
        if isinstance(wt, (int, float)) and not isinstance(wt, bool):
            self.last_wall_time = float(wt)
        self.last_record = rec
        return rec

    def names(self) -> list[str]:
        return sorted(self.series)


class ColumnCache:
    """A :class:`MetricsIndex` on disk: a header line of JSON (format, the byte offset of the
    metrics file it covers, hashes of the file's first and last 4 KiB before that offset, the
    last record, the series and their lengths), then each series' steps (int64) and values
    (float64) as raw machine arrays. Written atomically (a temporary file, then a rename); read
    only when the metrics file still starts and, at that offset, ends with the same bytes (a
    file replaced, truncated or rewritten is parsed again). Any problem reading or writing it
    is ignored: the cache only ever saves time."""

    MAGIC = b"HOTCBIDX1\n"
    _PROBE = 4096

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def _fingerprint(cls, metrics_path: str, offset: int) -> list[str] | None:
        try:  # (regular files only: a FIFO in a file's place would hang the server here)
            fd, _ = jsonl.open_regular(metrics_path)
            with open(fd, "rb") as f:
                head = f.read(min(cls._PROBE, offset))
                f.seek(max(0, offset - cls._PROBE))
                tail = f.read(min(cls._PROBE, offset))
        except OSError:
            return None
        if len(head) != min(cls._PROBE, offset) or len(tail) != len(head):
            return None
        return [hashlib.blake2b(b, digest_size=16).hexdigest() for b in (head, tail)]

    def snapshot(self, index: MetricsIndex) -> tuple[dict[str, Any], list[bytes]] | None:
        """What :meth:`write` writes, copied (with the run's lock held: the columns do not
        move meanwhile; the copy can then be written while the tailer goes on)."""
        offset = index.tail.offset
        fp = self._fingerprint(index.tail.path, offset)
        if fp is None or offset == 0:
            return None
        header = {
            "offset": offset,
            "fingerprint": fp,
            "byteorder": sys.byteorder,
            "lines": index.lines,
            "last_step": index.last_step,
            "last_wall_time": index.last_wall_time,
            "last_record": index.last_record,
            "series": [[name, len(s)] for name, s in index.series.items()],
        }
        blobs = [bytes(col) for s in index.series.values() for col in (s.steps, s.values)]
        return header, blobs

    def write(self, snap: tuple[dict[str, Any], list[bytes]] | None) -> bool:
        if snap is None:
            return False
        header, blobs = snap
        try:  # a new temporary file of a random name: none that a writer of the run planted
            with jsonl.atomic_writer(self.path) as f:
                f.write(self.MAGIC)
                f.write(jsonl.dumps(header).encode() + b"\n")
                for blob in blobs:
                    f.write(blob)
        except (OSError, ValueError, TypeError) as exc:
            log.debug("hotcb dashboard: could not write %s: %r", self.path, exc)
            return False
        return True

    def save(self, index: MetricsIndex) -> bool:
        return self.write(self.snapshot(index))

    def load(self, index: MetricsIndex) -> int:
        """Fill the (empty) ``index`` from the cache and move its cursor past what the cache
        covers; the number of bytes of the metrics file skipped (0: nothing loaded)."""
        try:
            fd, _ = jsonl.open_regular(self.path)  # a FIFO would hang the server in open()
            with open(fd, "rb") as f:
                if f.readline() != self.MAGIC:
                    return 0
                header = json.loads(f.readline())
                offset = int(header["offset"])
                if (
                    header.get("byteorder") != sys.byteorder
                    or index.tail.size() < offset
                    or header.get("fingerprint") != self._fingerprint(index.tail.path, offset)
                ):
                    return 0
                series: dict[str, Series] = {}
                for name, n in header["series"]:
                    s = Series()
                    s.steps.frombytes(f.read(8 * n))
                    s.values.frombytes(f.read(8 * n))
                    if len(s.steps) != n or len(s.values) != n:
                        return 0
                    series[name] = s
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("hotcb dashboard: ignoring %s: %r", self.path, exc)
            return 0
        index.series = series
        index.lines = header.get("lines") or 0
        index.last_step = header.get("last_step")
        index.last_wall_time = header.get("last_wall_time")
        index.last_record = header.get("last_record")
        index.tail.offset = offset
        return offset


def _plain_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


class KnobHistory:
    """Every applied change of a knob's value in the ledger (``changes: {key: {old, new}}``),
    the whole run's, not just the recent entries :class:`LedgerState` keeps. A change is a
    knob's when its entry is an actuator command (``opt``, ``loss``, ``custom``), an undo of
    one, or the online tuner's trial, roll-back or bracket arm; only numbers are kept (a
    knob's chart is a line). At most ``max_changes`` (the oldest go first)."""

    MODULES = frozenset({"opt", "loss", "custom"})
    #: the online tuner's ops that move knobs (a trial, its roll-back, a bracket's arm); an
    #: enable's changes are the tuner's settings, not knobs
    TUNE_OPS = frozenset({"mutate", "rollback", "bracket"})

    def __init__(self, max_changes: int = 100_000) -> None:
        self.changes: deque[dict[str, Any]] = deque(maxlen=max_changes)
        self._undoable: set[str] = set()  # cmd_ids of actuator commands (an undo's target)

    def add(self, e: dict[str, Any]) -> None:
        changes, step = e.get("changes"), e.get("step")
        if e.get("decision") != "applied" or not isinstance(changes, dict) or type(step) is not int:
            return
        module = e.get("module")
        if module in self.MODULES:
            if isinstance(e.get("cmd_id"), str):
                self._undoable.add(e["cmd_id"])
        elif not (module == "tune" and e.get("op") in self.TUNE_OPS) and (
            e.get("undo_of") not in self._undoable
        ):
            return
        for key, ch in changes.items():
            if not isinstance(ch, dict) or not _plain_number(ch.get("new")):
                continue
            old = ch.get("old")
            self.changes.append(
                {
                    "key": key,
                    "step": step,
                    "old": old if _plain_number(old) else None,
                    "new": ch["new"],
                    "seq": e.get("seq"),
                    "wall_time": e.get("wall_time"),
                    "source": e.get("source"),
                    "module": module,
                    "op": e.get("op"),
                    "undo": e.get("undo_of") is not None,
                    # a ramp's command: ``new`` is its target, reached at the ramp's end
                    # entry; the value holds at this step and moves in the knobs file
                    "ramp": e.get("transition") is not None,
                }
            )


#: The applied changes whose chart markers a run keeps (``GET …/markers``): the newest ones.
MARKERS_MAX = 5000
#: The fields of a ledger entry that its chart marker shows (its tooltip, its colour and dash).
_MARK_KEYS = ("seq", "step", "source", "module", "op", "id", "cmd_id", "decision", "changes",
              "undo_of", "reason", "tune", "checkpoint", "wall_time")  # fmt: skip


def _mark(e: dict[str, Any]) -> dict[str, Any] | None:
    """The marker of an entry that applied a change at a step (what the charts mark), with
    only the fields the marker shows; None for any other entry."""
    changes = e.get("changes")
    if e.get("decision") != "applied" or type(e.get("step")) is not int:
        return None
    if not isinstance(changes, dict) or not changes:
        return None
    return {k: e[k] for k in _MARK_KEYS if e.get(k) is not None}


class GoneLives:
    """Which of the changes read so far a later life of the run left behind, as entries come
    in file order: the steps the charts plot are the life that goes on now, so a change made
    at step 421 of a life the trainer was killed in is not a change of the curve at step 421.

    A ``kernel resume`` entry leaves behind what was written after its checkpoint
    (``resumed_from.seq``); an entry whose step goes back (another loop on a kernel) leaves
    behind the changes after its step, the rule the page's metric series follow. An entry
    written earlier than the newest one (a resume writing the entries its checkpoint held but
    the ledger missed) moves nothing."""

    def __init__(self) -> None:
        self._step: int | None = None  # where the life that goes on has got to
        self._wall = -math.inf
        self.resumed_at = -math.inf  # the wall time of the last ``kernel resume`` entry

    def cut(self, e: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], bool] | None:
        """The test of the changes (with ``seq`` and ``step``) that ``e`` leaves behind; None
        when it leaves none."""
        step, wall = e.get("step"), e.get("wall_time")
        if type(step) is not int or not isinstance(wall, (int, float)) or wall < self._wall:
            return None
        self._wall, last, self._step = wall, self._step, step
        if e.get("module") == "kernel" and e.get("op") == "resume":
            self.resumed_at = wall
            at = (e.get("resumed_from") or {}).get("seq")
            if type(at) is int:
                return lambda ch: type(ch.get("seq")) is int and ch["seq"] > at
        if last is not None and step < last:
            # past ``step``: an entry a resume writes at its checkpoint's step (a trial of the
            # gone life told FAIL) comes before its ``kernel resume``; a change at that step
            # may be the checkpoint's. A restart's from step 0: :meth:`of_life`
            return lambda ch: ch["step"] > step
        return None

    def of_life(
        self, items: Iterable[dict[str, Any]], meta: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """``items`` (changes with their ``wall_time``) without those of the lives before the
        one that goes on, when it started afresh, not from a checkpoint (``meta``: the run's
        ``hotcb.run.json``: when it began, :func:`hotcb.ledger.life_started`, and
        ``resumed_from`` once it loaded one); it may have written no entry yet."""
        life = life_started(meta)
        resumed = isinstance(meta.get("resumed_from"), Mapping) or self.resumed_at >= (life or 0)
        if life is None or resumed:
            return list(items)
        return [x for x in items
                if not (_plain_number(x.get("wall_time")) and x["wall_time"] < life)]  # fmt: skip


def _without(
    kept: deque[dict[str, Any]], gone: Callable[[Mapping[str, Any]], bool]
) -> deque[dict[str, Any]]:
    return deque((x for x in kept if not gone(x)), maxlen=kept.maxlen)


class LedgerState:
    """The ledger as the dashboard needs it: a :class:`~hotcb.ledger.LedgerView` (the one
    reducer: recent entries, pending schedules, run control) fed by a tail of the file, the
    :class:`KnobHistory` of the whole file, the markers of its newest :data:`MARKERS_MAX`
    applied changes (``marks``), and how many entries it holds (``count``)."""

    def __init__(self, path: str, max_entries: int) -> None:
        self.tail = jsonl.JsonlTail(path)
        self.max_entries = max_entries
        self.view = LedgerView(max_entries)
        self.knobs = KnobHistory()
        self.lives = GoneLives()  # the changes a later life left behind leave the two below
        self.marks: deque[dict[str, Any]] = deque(maxlen=MARKERS_MAX)
        self.count = 0
        self.loaded = False

    @property
    def entries(self) -> deque[dict[str, Any]]:
        return self.view.entries

    @property
    def pending(self) -> dict[str, dict[str, Any]]:
        return self.view.pending

    @property
    def paused(self) -> bool:
        return self.view.paused

    @property
    def last_step(self) -> int | None:
        return self.view.last_step

    @property
    def last_wall_time(self) -> float | None:
        return self.view.last_wall_time

    def update(self, collect: int = 0) -> list[dict[str, Any]]:
        out: deque[dict[str, Any]] = deque(maxlen=max(0, collect))
        for lines in _chunks(self.tail):
            if self.tail.reset:
                self.tail.reset = False
                self.view = LedgerView(self.max_entries)
                self.knobs = KnobHistory()
                self.lives = GoneLives()
                self.marks.clear()
                self.count = 0
                out.clear()
            for _, raw in lines:
                entry = _scrubbed(jsonl.parse_line(raw), raw)
                if entry is not None and self.view.add(entry):
                    gone = self.lives.cut(entry)
                    if gone is not None:
                        self.marks = _without(self.marks, gone)
                        self.knobs.changes = _without(self.knobs.changes, gone)
                    self.knobs.add(entry)
                    self.count += 1
                    mark = _mark(entry)
                    if mark is not None:
                        self.marks.append(mark)
                    if collect:
                        out.append(entry)
        self.loaded = True
        return list(out)


def _new_records(
    tail: jsonl.JsonlTail, keep: int | None = None, longest: int | None = None
) -> list[dict[str, Any]]:
    """The records appended since the last call (the last ``keep`` of them, none longer than
    ``longest`` bytes); a file truncated or replaced starts over."""
    out: deque[dict[str, Any]] = deque(maxlen=keep)
    for lines in _chunks(tail):
        if tail.reset:
            tail.reset = False
            out.clear()
        for _, raw in lines:
            if longest is not None and len(raw) > longest:
                continue
            rec = _scrubbed(jsonl.parse_line(raw), raw)
            if rec is not None:
                out.append(rec)
    return list(out)


def _scrubbed(rec: dict[str, Any] | None, raw: bytes) -> dict[str, Any] | None:
    """A ledger or command record as the dashboard may show it: a storage URL's password (a
    `tune enable --storage postgresql://user:password@host/db` carries it to the run in its
    params) replaced by ``***``. Only a line with a URL and an ``@`` is walked."""
    if rec is None or b"://" not in raw or b"@" not in raw:
        return rec
    out: dict[str, Any] = redact_urls(rec)
    return out


class CommandsTail:
    """New command records, from the end of the file at the time the run is first watched. A
    line longer than a command may be is neither kept nor pushed (the trainer does not read
    it either): one 300 MB line held the server a gigabyte and closed the pages' sockets."""

    def __init__(self, path: str) -> None:
        self.tail = jsonl.JsonlTail(path, max_line=MAX_COMMAND_BYTES)
        self.tail.offset = self.tail.size()

    def update(self, collect: int) -> list[dict[str, Any]]:
        return _new_records(self.tail, max(1, collect), MAX_COMMAND_BYTES)


class KnobsTail:
    """``hotcb.knobs.jsonl``: knob values the kernel saw move on their own, from the start of
    the file (a run's whole history, however late the server began to watch)."""

    def __init__(self, path: str) -> None:
        self.tail = jsonl.JsonlTail(path)

    def update(self) -> list[dict[str, Any]]:
        return _new_records(self.tail)


class ActuatorsWatch:
    """The actuators document, re-read only when the file changed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sig: tuple[int, int] | None = None
        self.doc: dict[str, Any] = {"actuators": []}

    def update(self) -> bool:
        """True when the document changed since the last call."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            # gone with its folder (a deleted run): what the run published stays, so the page
            # shows its controls disabled, not none; a file written again is read anew
            self._sig = None
            return False
        sig = (st.st_mtime_ns, st.st_size)
        if sig == self._sig:
            return False
        doc = jsonl.read_json(self.path)
        if not isinstance(doc, dict):  # mid-replace or corrupt: try again next poll
            return False
        self._sig = sig
        doc.setdefault("actuators", [])
        self.doc = doc
        return True


class HeartbeatWatch:
    """The kernel's heartbeat (``hotcb.heartbeat.json``: step, wall time, pid), re-read only
    when the file changed. A run that records no metrics still has a step and a last sign of
    life from it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sig: tuple[int, int, int] | None = None
        self.step: int | None = None
        self.wall_time: float | None = None

    def update(self) -> bool:
        """True when the heartbeat moved since the last call."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False  # none yet (an older hotcb, or the first poll has not happened)
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig == self._sig:
            return False
        doc = jsonl.read_json(self.path)
        if not isinstance(doc, dict):  # mid-replace: next poll
            return False
        self._sig = sig
        step, wall = doc.get("step"), doc.get("wall_time")
        self.step = step if type(step) is int else self.step
        if isinstance(wall, (int, float)) and not isinstance(wall, bool):
            self.wall_time = float(wall)
        return True


#: The online tuner's state file in a run directory (``hotcb.modules.tune`` writes it, atomically,
#: on rank 0 after every change of its state).
TUNE_STATE = TUNE


class TuneWatch:
    """The tuner's state document (:data:`TUNE_STATE`), re-read only when the file changed.

    No file: ``{"mode": "off"}`` (the tuner was never enabled here). A file that does not parse
    (a writer that is not atomic, a damaged disk) leaves the last good document in place; with
    none yet, the document is ``{"mode": "off", "error": reason}``. The tuner redacts its
    storage URL itself; :func:`redact_urls` is the server's own guard, on every string."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sig: tuple[int, int, int] | None = None  # of the file last read, good or not
        self._good = False
        self.doc: dict[str, Any] = {"mode": "off"}

    def update(self) -> bool:
        """True when the document changed since the last call."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._sig is None and not self._good:
                return False
            self._sig, self._good = None, False
            self.doc = {"mode": "off"}
            return True
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig == self._sig:
            return False
        self._sig = sig
        try:
            fd, _ = jsonl.open_regular(self.path)  # a FIFO would hang the server in open()
            with open(fd, "rb") as f:
                doc = json.loads(f.read())
            if not isinstance(doc, dict):
                raise ValueError(f"a JSON object was expected, got {type(doc).__name__}")
        except FileNotFoundError:  # replaced between the stat and the open: next poll
            self._sig = None
            return False
        except (OSError, ValueError) as exc:
            if self._good:
                return False
            self.doc = {"mode": "off", "error": f"{TUNE_STATE} is unreadable: {exc}"}
            return True
        self._good = True
        self.doc = redact_urls(doc)
        return True


#: A watched run whose files brought nothing new for this long is quiet: polled every
#: :data:`QUIET_POLL_SEC` instead of every ``tail_interval_sec`` (60 idle runs on one page held
#: the server at 9 % of a core, stat()ing their files 20 times a second).
QUIET_AFTER_SEC = 10.0
QUIET_POLL_SEC = 0.5


class Tailer:
    """Polls the watched runs' files and publishes deltas; a periodic status per run. A run
    quiet for :data:`QUIET_AFTER_SEC` is polled every :data:`QUIET_POLL_SEC` (and with each
    status) until it brings something new."""

    def __init__(self, registry: RunRegistry, hub: Hub, config: DashboardConfig) -> None:
        self.registry = registry
        self.hub = hub
        self.config = config
        self._task: asyncio.Task[None] | None = None
        self._news: dict[str, float] = {}  # run -> when its files last brought something new
        self._due: dict[str, float] = {}  # run -> when a quiet run is polled next

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="hotcb-tailer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        cfg, hub, registry = self.config, self.hub, self.registry
        next_status = 0.0
        while True:
            t0 = time.monotonic()
            send_status = t0 >= next_status
            if send_status:
                next_status = t0 + cfg.status_interval_sec
            watched = hub.watched()
            for rid in watched:
                if not send_status and t0 < self._due.get(rid, 0.0):
                    continue  # quiet: polled again soon
                try:
                    run = registry.get(rid)
                    if run.lock.locked():  # a first load or a history request: next round
                        continue
                    if await run.refresh():
                        self._news[rid] = t0
                    quiet = t0 - self._news.setdefault(rid, t0) > QUIET_AFTER_SEC
                    self._due[rid] = t0 + QUIET_POLL_SEC if quiet else 0.0
                    if send_status:
                        hub.publish(rid, run.status_message())
                except LookupError:  # RunNotFound: the run folder went away
                    continue
                except Exception:  # one bad file never stops the others
                    log.exception("hotcb dashboard: tailing run %s failed", rid)
            if send_status:  # forget the runs no page watches (watched again: news at once)
                for gone in set(self._news) - set(watched):
                    del self._news[gone]
                    self._due.pop(gone, None)
            await asyncio.sleep(max(0.0, cfg.tail_interval_sec - (time.monotonic() - t0)))
