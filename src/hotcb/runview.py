"""A read-only view of a run directory for out-of-process readers (the autopilot; DESIGN §2).

It follows ``hotcb.metrics.jsonl`` and the ledger incrementally from byte cursors that a reader
can persist, so a restarted reader continues where it stopped and never reads a record twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from . import jsonl
from .runfiles import RunPaths

__all__ = ["RunView"]


class RunView:
    """New metric records and ledger entries since the last call; the published actuators."""

    def __init__(
        self, run_dir: str | os.PathLike[str], *, metrics_at: int = 0, ledger_at: int = 0
    ) -> None:
        self.paths = RunPaths(os.fspath(run_dir))
        self._metrics = jsonl.JsonlTail(self.paths.metrics, offset=metrics_at)
        self._ledger = jsonl.JsonlTail(self.paths.ledger, offset=ledger_at)

    @property
    def cursors(self) -> dict[str, int]:
        """Where the next read starts (persist these to continue after a restart)."""
        return {"metrics": self._metrics.offset, "ledger": self._ledger.offset}

    def new_metrics(self) -> list[dict[str, Any]]:
        """``{"step", "metrics": {name: number|None}}`` records appended since the last call."""
        return [r for r in self._metrics.read_records() if isinstance(r.get("metrics"), Mapping)]

    def new_entries(self) -> list[dict[str, Any]]:
        """Ledger entries appended since the last call."""
        return self._ledger.read_records()

    @property
    def behind(self) -> bool:
        """The last read of the metrics or the ledger stopped at its byte limit with more
        after it: a long run's history is being read (call again before acting on it)."""
        return self._metrics.more or self._ledger.more

    def actuators(self) -> dict[str, dict[str, Any]]:
        """The run's published actuators by ``group.key`` (``opt.lr``), with ``current``."""
        doc = jsonl.read_json(self.paths.actuators, {}) or {}
        out: dict[str, dict[str, Any]] = {}
        for act in doc.get("actuators") or ():
            if isinstance(act, Mapping) and act.get("param_key") and act.get("group"):
                out[f"{act['group']}.{act['param_key']}"] = dict(act)
        return out

    def meta(self) -> dict[str, Any]:
        doc = jsonl.read_json(self.paths.run_meta, {}) or {}
        return doc if isinstance(doc, dict) else {}
