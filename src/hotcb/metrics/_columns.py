"""The metrics file's column sidecar (``hotcb.metrics.cols``), written by the trainer.

:class:`MetricsCollector` appends every record to ``hotcb.metrics.jsonl`` as a line of JSON, and
also keeps the same numbers as columns (per metric: steps as int64, values as float64, NaN for a
non-finite value) that it appends to the sidecar in blocks of :data:`BLOCK_LINES` records. A
dashboard that opens a long run then reads the columns instead of parsing a million lines of
JSON.

A block is::

    MAGIC, header length (uint32, little-endian), header (JSON), then per column its steps
    and its values as raw machine arrays

with the header ``{"start", "end", "lines", "byteorder", "last", "cols": [[name, n], ...]}``:
the byte range ``[start, end)`` of the metrics file its ``lines`` records were written to, and
the last of those records (``last``) as the line says it. The trainer is the only writer; the
sidecar is a cache of the metrics file, never the record: :func:`read_blocks` yields only
complete blocks, and a reader checks each block against the metrics file before it trusts it
(see :meth:`hotcb.server.tailer.MetricsIndex`). A block lost (the trainer killed before it
wrote its buffer) or a block that does not match (the file rewritten, a second writer) only
means that part of the file is parsed as JSON again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import sys
from array import array
from collections.abc import Iterator
from typing import Any

from .. import jsonl

__all__ = ["BLOCK_LINES", "MAGIC", "ColumnWriter", "read_blocks", "sidecar_path"]

log = logging.getLogger("hotcb")

MAGIC = b"HCBCOLS1"
#: Records a block holds (about 200 KB for three metrics); the trainer writes one block per
#: this many records, so a reader parses at most this many lines of a running run's tail.
BLOCK_LINES = 4096
_LEN = struct.Struct("<I")
_NAN = math.nan


def sidecar_path(metrics_path: str) -> str:
    """``hotcb.metrics.jsonl`` -> ``hotcb.metrics.cols`` (same folder)."""
    stem = metrics_path[:-6] if metrics_path.endswith(".jsonl") else metrics_path
    return stem + ".cols"


class ColumnWriter:
    """Buffers records as columns; :meth:`flush` appends them as one block (one ``write``).

    ``offset`` is where the next record's line starts in the metrics file. A write that fails
    turns the writer off (the metrics file is the record; the sidecar only saves readers time).
    """

    def __init__(self, path: str, offset: int, *, block_lines: int | None = None) -> None:
        self.path = path
        self.block_lines = max(1, int(BLOCK_LINES if block_lines is None else block_lines))
        self.offset = offset
        self._start = offset
        self._cols: dict[str, tuple[array[int], array[float]]] = {}
        self._lines = 0
        self._last: dict[str, Any] | None = None
        self._fd: int | None = None
        self.enabled = True
        if offset == 0:  # a new metrics file: whatever a sidecar held describes another one
            self._truncate()

    def _truncate(self) -> None:
        try:
            fd, _ = jsonl.open_own(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        except OSError as exc:
            self._off(exc)
            return
        os.close(fd)

    def _off(self, exc: OSError) -> None:
        """Turn the writer off (the metrics file is the record). A refusal (a symbolic link or
        a FIFO planted in the sidecar's place) is said, since nothing else would tell."""
        self.enabled = False
        if isinstance(exc, jsonl.RunFileRefusedError):
            log.warning("hotcb: %s; the column sidecar is off (the metrics are still written "
                        "to the metrics file)", exc)  # fmt: skip

    def add(self, step: int, values: dict[str, float | None], nbytes: int, record: Any) -> None:
        """One record of ``nbytes`` bytes (its line, newline included) was appended."""
        if not self.enabled:
            return
        if not -(1 << 63) <= step < 1 << 63:  # no int64 holds it: the parser takes over
            self.skip(nbytes)
            return
        cols = self._cols
        for name, value in values.items():
            col = cols.get(name)
            if col is None:
                col = cols[name] = (array("q"), array("d"))
            col[0].append(step)
            col[1].append(_NAN if value is None else value)
        self._lines += 1
        self.offset += nbytes
        self._last = record
        if self._lines >= self.block_lines:
            self.flush()

    def skip(self, nbytes: int) -> None:
        """``nbytes`` were appended that no block describes (the next block starts after)."""
        self.flush()
        self.offset += nbytes
        self._start = self.offset

    def flush(self) -> None:
        if not self._lines:
            return
        header = {
            "start": self._start,
            "end": self.offset,
            "lines": self._lines,
            "byteorder": sys.byteorder,
            "last": self._last,
            "cols": [[name, len(col[0])] for name, col in self._cols.items()],
        }
        head = jsonl.dumps(header).encode()
        parts = [MAGIC, _LEN.pack(len(head)), head]
        for steps, values in self._cols.values():
            parts.append(steps.tobytes())
            parts.append(values.tobytes())
        self._cols = {}
        self._lines = 0
        self._start = self.offset
        if not self.enabled:
            return
        try:
            if self._fd is None:
                self._fd, _ = jsonl.open_own(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(self._fd, b"".join(parts))
        except OSError as exc:
            self._off(exc)  # a torn block is refused by readers; none follows it

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_blocks(
    data: bytes,
) -> Iterator[tuple[dict[str, Any], list[tuple[str, array[int], array[float]]]]]:
    """The complete, well-formed blocks at the start of ``data`` (a sidecar's bytes), each as
    its header and its columns ``(name, steps, values)``; stops at the first one that is not
    (a torn last block, another byte order, anything else)."""
    pos = 0
    view = memoryview(data)
    while pos + len(MAGIC) + _LEN.size <= len(data):
        if data[pos : pos + len(MAGIC)] != MAGIC:
            return
        pos += len(MAGIC)
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        try:
            header = json.loads(view[pos : pos + n].tobytes())
            if header["byteorder"] != sys.byteorder:
                return
            cols: list[tuple[str, array[int], array[float]]] = []
            pos += n
            for name, count in header["cols"]:
                size = 8 * int(count)
                if pos + 2 * size > len(data):
                    return
                steps, values = array("q"), array("d")
                steps.frombytes(view[pos : pos + size])
                values.frombytes(view[pos + size : pos + 2 * size])
                pos += 2 * size
                cols.append((str(name), steps, values))
        except (ValueError, KeyError, TypeError):
            return
        yield header, cols
