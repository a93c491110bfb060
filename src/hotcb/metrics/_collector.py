from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from .. import jsonl
from ..runfiles import METRICS
from ._columns import ColumnWriter, sidecar_path


def _number(value: Any) -> float | None:
    """A finite float, or None (non-finite, or not a number)."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)):
        item = getattr(value, "item", None)
        if not callable(item):
            return None
        try:
            value = item()
        except (TypeError, ValueError, RuntimeError):
            return None
        if not isinstance(value, (int, float)):
            return None
    value = float(value)
    return value if math.isfinite(value) else None


#: Framework names of one quantity, written under hotcb's name so that charts, overlays and
#: the autopilot see one metric (the HF Trainer logs the learning rate as ``learning_rate``).
METRIC_ALIASES = {"learning_rate": "lr"}
#: Metric keys whose written name is remembered (a loop that names a metric by its step gets
#: the work done again for the rest).
_NAMES_KEPT = 4096
#: What runs call their validation loss (hotcb's examples, Lightning, the HF Trainer, the
#: demo): a reader asked for the default, ``val_loss``, takes the first of these the run logs.
VAL_LOSS_NAMES = ("val_loss", "val/loss", "valid_loss", "valid/loss", "eval_loss", "eval/loss",
                  "validation_loss")  # fmt: skip
#: Words of a metric's name that say higher is better (``val_acc``, ``eval/f1``, ``auroc``),
#: and words that say lower is better whatever else the name holds (``acc_loss``, ``top1_err``).
_HIGHER = ("acc", "f1", "auc", "auroc", "auprc", "precision", "recall", "bleu", "rouge", "iou",
           "miou", "dice", "map", "ndcg", "psnr", "ssim", "r2", "top1", "top5", "reward",
           "return", "correct")  # fmt: skip
_LOWER = ("loss", "err", "error", "perplexity", "ppl", "mse", "mae", "rmse", "wer", "cer", "nll")


def guess_direction(metric: str) -> str:
    """``"maximize"`` for a metric whose name says higher is better (a word of it starts with
    acc, f1, auc, precision, recall, bleu, iou, map …, and none says loss or error), else
    ``"minimize"``: what the tuner and the autopilot assume when no direction is given."""
    words = [w for w in re.split(r"[^a-z0-9]+", metric.lower()) if w]
    if any(w.startswith(_LOWER) for w in words):
        return "minimize"
    return "maximize" if any(w.startswith(_HIGHER) for w in words) else "minimize"


class MetricsCollector:
    """Appends ``{"step", "epoch"?, "wall_time", "metrics": {name: number|null}}`` records.

    Non-finite values (NaN, inf) are written as ``null`` so readers never choke; tensors and
    numpy scalars are converted. One writer per file (the training process, rank 0), so the file
    stays open and each record is one ``os.write``; a file deleted or moved away (a log
    rotation) is made again at the path within a second.

    With ``columns`` (the default), the same numbers also go, in blocks, to the column sidecar
    beside the file (``hotcb.metrics.cols``, :mod:`hotcb.metrics._columns`), so that a dashboard
    opening a long run reads columns instead of parsing every line.
    """

    def __init__(
        self,
        run_dir: str,
        *,
        every_n_steps: int = 1,
        filename: str = METRICS,
        columns: bool = True,
    ) -> None:
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, filename)
        self.every_n_steps = max(1, int(every_n_steps))
        self._fd: int | None = None
        self._columns_on = columns
        self._columns: ColumnWriter | None = None
        #: the file ends in an unfinished line (a write cut short by a full disk): the next
        #: record goes through the journal's writer, which starts it on a line of its own
        self._torn = False
        self.last: dict[str, float | None] = {}
        self._ino: tuple[int, int] | None = None  # (device, inode) of the file held open
        self._checked = 0.0  # time.monotonic() when the path was last compared with it
        #: each metric key as written: its alias, and text that encodes (a name made from a
        #: file name that is not UTF-8 held a lone surrogate, and broke `hotcb status` and the
        #: dashboard's views of the run); worked out once per key
        self._names: dict[Any, str] = {}

    def _open(self) -> int:
        if self._fd is not None and self._moved():
            self.close()  # deleted or rotated: readers look at the path, so write there again
        if self._fd is None:
            # not through a symbolic link, nor into a FIFO, planted in the run directory
            self._fd, st = jsonl.open_own(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            self._ino, self._checked = (st.st_dev, st.st_ino), time.monotonic()
            offset = st.st_size
            # an earlier process's last write may have been cut short (and it died after)
            self._torn = offset > 0 and os.pread(self._fd, 1, offset - 1) != b"\n"
            if self._columns_on:
                self._columns = ColumnWriter(sidecar_path(self.path), offset)
        return self._fd

    def _moved(self) -> bool:
        """The file held open is no longer the one at the path (deleted, or moved away by a
        log rotation), compared at most once a second (one ``stat``)."""
        now = time.monotonic()
        if now - self._checked < 1.0:
            return False
        self._checked = now
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._ino

    def log(self, step: int, metrics: Mapping[str, Any], *, epoch: int | None = None) -> None:
        if step % self.every_n_steps:
            return
        names = self._names
        clean = {names.get(k) or self._name(k): _number(v) for k, v in metrics.items()}
        if not clean:
            return
        record: dict[str, Any] = {"step": int(step)}
        if epoch is not None:
            record["epoch"] = int(epoch)
        record["wall_time"] = time.time()
        record["metrics"] = clean
        self.last.update(clean)
        fd = self._open()
        if self._torn:
            self._append_after_torn(fd, record)
            return
        line = (jsonl.dumps(record) + "\n").encode()
        written = os.write(fd, line)
        columns = self._columns
        if written != len(line):  # a short write (disk full): the line is torn
            self._torn = True
            if columns is not None:
                columns.skip(written)  # no block may claim it
        elif columns is not None:
            columns.add(record["step"], clean, written, record)

    def _name(self, key: Any) -> str:
        """The name ``key`` is written under: its alias, a lone surrogate as its escape
        (``bad\\ud800``)."""
        name = METRIC_ALIASES.get(str(key), str(key))
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            name = name.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(self._names) < _NAMES_KEPT:
            self._names[key] = name
        return name

    def _append_after_torn(self, fd: int, record: dict[str, Any]) -> None:
        """Append ``record`` on a line of its own after an unfinished one, all or nothing
        (:func:`hotcb.jsonl.append`: the torn line stays a bad line readers skip, instead of
        taking this record down with it); raises ``OSError`` while the disk is still full."""
        jsonl.append(self.path, record)
        self._torn = False
        columns = self._columns
        if columns is not None:  # (a newline and the line) that no block describes
            columns.skip(os.fstat(fd).st_size - columns.offset)

    def flush(self) -> None:
        """Write the buffered columns now (the metrics file itself is never buffered)."""
        if self._columns is not None:
            self._columns.flush()

    def close(self) -> None:
        if self._columns is not None:
            self._columns.close()
            self._columns = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MetricsCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
