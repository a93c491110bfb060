"""Notifiers for a folder of runs, in a thread: what ``hotcb serve --notify`` runs.

One :class:`~hotcb.notify.Notifier` per run, picked up once a kernel has started it
(``hotcb.run.json``) while its process lives: a run that had ended or crashed before the server
looked gets no alert about its old data. A run is stepped until it ends, then once more (the
end, or a crash, is seen) and its notifier closed; a run started again in the same directory is
picked up again. No FastAPI here: the server starts and stops it from its lifespan.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .. import jsonl
from ..runfiles import RunPaths, process_alive
from ._config import NotifyConfig
from ._notifier import Notifier

__all__ = ["NotifierHost"]

#: Seconds a run started again waits, at most, for its last life's queued alerts to go out
#: (so a restart's alerts come after them).
_LAST_LIFE_WAIT = 10.0

log = logging.getLogger("hotcb.notify")


class NotifierHost:
    """Steps one :class:`Notifier` per live run that ``find_runs()`` lists, every ``interval``
    seconds, in a daemon thread (:meth:`start` / :meth:`stop`). One run's trouble is logged and
    never stops the others."""

    def __init__(
        self,
        config: NotifyConfig,
        find_runs: Callable[[], Iterable[str]],
        *,
        interval: float = 1.0,
        notifier: Callable[[str, NotifyConfig], Notifier] = Notifier,
    ) -> None:
        self.config = config
        self.find_runs = find_runs
        self.interval = interval
        self._make = notifier
        self.notifiers: dict[str, Notifier] = {}  # run dir -> its notifier (live runs)
        self._done: set[str] = set()  # runs whose end this host has seen
        # of ended runs (run dir, notifier): delivering what was queued
        self._closing: list[tuple[str, Notifier]] = []
        self._broken: set[str] = set()  # runs whose notifier could not start (logged once)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop --------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="hotcb-notify", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the round in progress, then deliver what is queued (waiting up to
        ``timeout`` seconds in all) and close every notifier."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        deadline = time.monotonic() + timeout
        for notifier in [n for _, n in self._closing] + list(self.notifiers.values()):
            notifier.close(max(0.0, deadline - time.monotonic()))
        self.notifiers.clear()
        self._closing.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.round()
            except Exception:  # a bug in one round must not end the notifications for good
                log.exception("hotcb notify: a round failed")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def round(self) -> list[dict[str, Any]]:
        """Pick up new runs, then one round of each run's notifier; the alerts fired."""
        self._pick_up()
        fired: list[dict[str, Any]] = []
        for run_dir, notifier in list(self.notifiers.items()):
            try:
                events = notifier.step()
                ended = notifier.ended
                if ended:
                    events += notifier.step()  # what came with the end (a crash)
            except Exception:  # one run's trouble never stops the others
                log.exception("hotcb notify: the notifier of %s failed", run_dir)
                continue
            for e in events:
                log.warning("hotcb notify %s: alert %s: %s", run_dir, e["alert"], e["message"])
            fired += events
            if ended:
                del self.notifiers[run_dir]
                self._done.add(run_dir)
                notifier.end()  # its workers deliver what is queued, then end
                self._closing = [(r, n) for r, n in self._closing if not n.flush(0)]
                self._closing.append((run_dir, notifier))
        return fired

    def _pick_up(self) -> None:
        for run_dir in self.find_runs():
            if run_dir in self.notifiers:
                continue
            live = _live(run_dir)
            if run_dir in self._done:
                if not live:
                    continue
                self._done.discard(run_dir)  # started again: the last life's alerts go first
                for ended, notifier in self._closing:
                    if ended == run_dir:
                        notifier.flush(_LAST_LIFE_WAIT)
            if not live:
                continue
            try:
                self.notifiers[run_dir] = self._make(run_dir, self.config)
            except Exception:
                if run_dir not in self._broken:  # logged once; tried again each round
                    self._broken.add(run_dir)
                    log.exception("hotcb notify: no notifier for %s", run_dir)
                continue
            self._broken.discard(run_dir)
            log.info("hotcb notify: watching %s", run_dir)


def _live(run_dir: str) -> bool:
    """A kernel started the run, has not ended it, and its process is not known to be gone."""
    meta = jsonl.read_json(RunPaths(run_dir).run_meta, None)
    return (
        isinstance(meta, dict)
        and not isinstance(meta.get("ended"), dict)
        and process_alive(meta) is not False
    )
