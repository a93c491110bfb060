"""The notifier: one run's alerts, checked round by round (``step()``, like the autopilot)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from .. import jsonl
from ..autopilot.engine import RECORDS as AUTOPILOT_RECORDS
from ..jsonl import JsonlTail
from ..ledger import LedgerView, closed_on_error, life_started, run_over
from ..runfiles import process_alive
from ..runview import RunView
from ._alerts import Alert, Observation, Sample, onsets, samples
from ._config import NotifyConfig
from ._deliveries import Delivery, deliver

__all__ = ["RECORDS", "STATE", "Notifier"]

RECORDS = "hotcb.notify.jsonl"
STATE = "hotcb.notify.state.json"
_WINDOW = 512  # points kept per plateau metric

log = logging.getLogger("hotcb.notify")
#: The least :meth:`Notifier.close` waits for the deliveries queued or in flight.
_GRACE_SEC = 2.0


class Notifier:
    """Reads what is new in ``run_dir``, fires the alerts of ``config`` and delivers them in a
    worker thread. ``step()`` does one round and returns the alert events it fired; ``close()``
    waits (up to a deadline) for the deliveries in flight. Cursors and alert states persist in
    ``hotcb.notify.state.json`` after every round: a restart never fires again on what it saw.

    Started on a run that is already going (no state file yet), the records written before
    ``history_before`` (default: now) are history: they set each alert's state without firing,
    and an alert whose condition still holds at the end of them fires once, for that latest
    point. A NaN a thousand steps ago that the run recovered from is not news; a loss that is
    above its threshold right now is."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        config: NotifyConfig,
        *,
        history_before: float | None = None,
    ) -> None:
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.config = config
        self._state_path = os.path.join(self.run_dir, STATE)
        fresh = not os.path.exists(self._state_path)
        self._history_before = (
            (time.time() if history_before is None else history_before) if fresh else None
        )
        #: the latest active point of each alert in the history read so far
        self._history_hits: dict[str, Sample] = {}
        self._records_path = os.path.join(self.run_dir, RECORDS)
        #: deliveries that failed for good (after their retries) in this notifier's life
        self.failed = 0
        st = jsonl.read_json(self._state_path, {}) or {}
        cur = st.get("cursors") or {}
        self.view = RunView(self.run_dir, metrics_at=int(cur.get("metrics", 0)),
                            ledger_at=int(cur.get("ledger", 0)))  # fmt: skip
        self._autopilot = JsonlTail(os.path.join(self.run_dir, AUTOPILOT_RECORDS),
                                    offset=int(cur.get("autopilot", 0)))  # fmt: skip
        self.ledger = LedgerView(max_entries=1)
        self.ledger.control = st.get("control")
        at = st.get("control_wall_time")  # when it was applied: a later kernel start ends it
        self.ledger.control_wall_time = float(at) if isinstance(at, (int, float)) else None
        self.alert_state: dict[str, dict[str, Any]] = {
            k: dict(v) for k, v in (st.get("alerts") or {}).items()
        }
        self._watched = {a.metric for a in config.alerts if a.kind == "plateau" and a.metric}
        self.series: dict[str, deque[tuple[int, float | None]]] = {
            k: deque(((int(s), v) for s, v in pts), maxlen=_WINDOW)
            for k, pts in (st.get("series") or {}).items() if k in self._watched
        }  # fmt: skip
        self._last_step: int | None = None  # of the metrics read (said by a crash alert)
        self._channels: list[queue.Queue[dict[str, Any] | None]] | None = None
        self._idle = threading.Condition()
        self._pending: list[tuple[Delivery, dict[str, Any]]] = []  # queued or in flight
        self._write = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ one round
    def step(self, now: float | None = None) -> list[dict[str, Any]]:
        """Read what is new, check every alert, queue the deliveries of those that fired;
        the alert events fired (also recorded in ``hotcb.notify.jsonl``)."""
        now = time.time() if now is None else now
        obs = self._observe(now)
        old, last = None, True
        if self._history_before is not None:  # the first rounds of a fresh notifier
            old, obs = _split(obs, self._history_before)
            # a long run's history takes several reads: until the last, it only sets states
            last = not self.view.behind
            if last:
                self._history_before = None
        fired: list[dict[str, Any]] = []
        for alert in self.config.alerts:
            st = self.alert_state.setdefault(alert.id, {"active": False, "last_fired": None})
            hits = self._catch_up(alert, st, old, now, last) if old is not None else []
            more, st["active"], st["last_fired"] = onsets(
                samples(alert, obs, st), st["active"], st["last_fired"], alert.cooldown, now
            )
            for s in hits + more:
                event = {"kind": "alert", "alert": alert.id, "type": alert.kind,
                         "run": self.run_dir, "step": s.step, "metric": s.metric,
                         "value": s.value, "message": s.message, "time": now}  # fmt: skip
                fired.append(event)
        self._save()
        for event in fired:  # recorded and queued only once the state says they fired
            self._record(dict(event))
            self._enqueue(event)
        return fired

    def _catch_up(
        self, alert: Alert, st: dict[str, Any], history: Observation, now: float, last: bool
    ) -> list[Sample]:
        """The records from before the notifier started: they set the alert's state; only a
        condition that still holds at their end (``last``: this read reached it) fires,
        once, for its latest point."""
        found = samples(alert, history, st)
        _, st["active"], _ = onsets(found, st["active"], None, 0.0, now)
        hit = next((s for s in reversed(found) if s.active), None)
        if hit is not None:
            self._history_hits[alert.id] = hit
        if not last:
            return []
        hit = self._history_hits.pop(alert.id, None)
        if not st["active"] or hit is None:
            return []
        st["last_fired"] = now
        return [hit]

    def _observe(self, now: float) -> Observation:
        metrics = self.view.new_metrics()
        for rec in metrics:
            step = rec.get("step")
            if not isinstance(step, int):
                continue
            for name in self._watched & set(rec["metrics"]):
                v = rec["metrics"][name]
                number = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
                self.series.setdefault(name, deque(maxlen=_WINDOW)).append((step, number))
        for e in self.view.new_entries():
            self.ledger.add(e)
        for rec in metrics:  # the run's last step, for a crash alert
            if isinstance(rec.get("step"), int):
                self._last_step = max(self._last_step or 0, rec["step"])
        meta = self.view.meta()
        ended = isinstance(meta.get("ended"), dict)
        control = self.ledger.control_now(meta)  # not a pause of an earlier life
        crashed = closed_on_error(meta) or (
            not ended and process_alive(meta) is False and _crashed(meta, now)
        )
        return Observation(
            now=now,
            metrics=metrics,
            autopilot=self._autopilot.read_records(),
            series=self.series,
            last_metric_time=self._last_metric_time(meta),
            started_at=life_started(meta),
            resumed_at=self.ledger.control_wall_time if control == "resume" else None,
            ended=ended,
            paused=control == "pause",
            crashed=crashed,
            run_dir=self.view.paths.root,
            crash=run_over(meta, now) if crashed else None,
            last_step=self._last_step,
        )

    def _last_metric_time(self, meta: Mapping[str, Any]) -> float | None:
        """When the training last wrote a metric (the metrics file's mtime), else when it
        started; None before the run has started."""
        try:
            return os.stat(self.view.paths.metrics).st_mtime
        except OSError:
            return life_started(meta)

    @property
    def ended(self) -> bool:
        """The run was closed, or its process is gone (told only on its host)."""
        meta = self.view.meta()
        return isinstance(meta.get("ended"), dict) or process_alive(meta) is False

    # ------------------------------------------------------------------ deliveries
    def _enqueue(self, event: dict[str, Any]) -> None:
        """Queue ``event`` on every delivery. Each delivery has its own queue and worker
        thread: an endpoint that hangs (10 s a try, with retries and back-off) holds up its
        own alerts only, never the other channels'."""
        deliveries = self.config.deliveries
        if not deliveries:
            return
        if self._channels is None:
            self._channels = []
            for d in deliveries:
                q: queue.Queue[dict[str, Any] | None] = queue.Queue()
                threading.Thread(target=self._work, args=(d, q), daemon=True,
                                 name="hotcb-notify-delivery").start()  # fmt: skip
                self._channels.append(q)
        with self._idle:
            self._pending += [(d, event) for d in deliveries]
        for q in self._channels:
            q.put(event)

    def _work(self, delivery: Delivery, q: queue.Queue[dict[str, Any] | None]) -> None:
        cfg = self.config
        while (event := q.get()) is not None:
            deliver(delivery, event, self._record_open, retries=cfg.retries,
                    backoff=cfg.backoff, max_backoff=cfg.max_backoff)  # fmt: skip
            with self._idle:
                for i, (d, e) in enumerate(self._pending):
                    if d is delivery and e is event:
                        del self._pending[i]
                        break
                self._idle.notify_all()

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every queued alert is delivered (or given up on); False at the
        deadline."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 60.0) -> bool:
        """Deliver what is queued (waiting up to ``timeout`` seconds, 2 at least) and stop
        the workers. An alert still undelivered then is recorded as a ``failed`` delivery and
        said on stderr (the worker threads end with the process): never dropped silently."""
        # a delivery in flight a moment from its answer is not given up on: the stopping
        # server's deadline may be spent already (close(0)), and its "ok" would be lost
        done = self.flush(max(timeout, _GRACE_SEC))
        with self._idle:
            left, self._pending = self._pending, []
            self._closed = True
        for d, event in left:
            why = f"not delivered: the notifier stopped after waiting {timeout:g}s for it"
            self._record({"kind": "delivery", "alert": event.get("alert"), "target": d.target,
                          "attempt": None, "status": "failed", "error": why})  # fmt: skip
            log.warning("hotcb notify: the %s delivery of alert %s to %s failed: %s",
                        type(d).__name__.lower(), event.get("alert"), d.target, why)  # fmt: skip
        self.end()
        return done

    def end(self) -> None:
        """Let each worker deliver what is queued for it, then end; returns at once (the
        notifier takes no more alerts). :meth:`flush` waits for them, :meth:`close` too and
        gives up at its deadline. An alert fired later starts new workers."""
        for q in self._channels or ():
            q.put(None)
        self._channels = None

    # ------------------------------------------------------------------ files
    def _record_open(self, record: dict[str, Any]) -> None:
        """A delivery's record, unless :meth:`close` gave up on it already (it recorded the
        delivery as failed; a hung attempt that ends later must not add a second outcome)."""
        if not self._closed:
            self._record(record)

    def _record(self, record: dict[str, Any]) -> None:
        record.setdefault("wall_time", time.time())
        with self._write:
            if record.get("kind") == "delivery" and record.get("status") == "failed":
                self.failed += 1
            jsonl.append(self._records_path, record)

    def _save(self) -> None:
        cursors = {**self.view.cursors, "autopilot": self._autopilot.offset}
        jsonl.write_json_atomic(self._state_path, {
            "v": 1, "cursors": cursors, "control": self.ledger.control,
            "control_wall_time": self.ledger.control_wall_time,
            "alerts": self.alert_state, "series": {k: list(v) for k, v in self.series.items()},
            "alert_ids": [a.id for a in self.config.alerts], "updated": time.time(),
        })  # fmt: skip


def _split(obs: Observation, before: float) -> tuple[Observation, Observation]:
    """``obs`` as (the records written before ``before``, the rest); a record without a
    ``wall_time`` counts as new."""

    def old(rec: Mapping[str, Any]) -> bool:
        t = rec.get("wall_time")
        return isinstance(t, (int, float)) and t < before

    history = dataclasses.replace(obs, metrics=[r for r in obs.metrics if old(r)],
                                  autopilot=[r for r in obs.autopilot if old(r)])  # fmt: skip
    new = dataclasses.replace(obs, metrics=[r for r in obs.metrics if not old(r)],
                              autopilot=[r for r in obs.autopilot if not old(r)])  # fmt: skip
    return history, new


def _crashed(meta: Mapping[str, Any], now: float) -> bool:
    """A run whose process is gone without closing it: crashed, not interrupted (Ctrl-C, a
    SIGTERM: ``hotcb launch`` records the signal with the exit code), and not a launch that
    is still recording how its training ended (a Ctrl-C read as a crash in that moment)."""
    from ..ledger import run_over

    launch = meta.get("launch")
    if isinstance(launch, Mapping) and "exit_code" not in launch:
        pid = launch.get("pid")
        alive = process_alive({"pid": pid, "host": launch.get("host")}) if pid else None
        if alive:  # hotcb launch is still there: its record of the exit comes next
            return False
    state = run_over(meta, now) or ""
    return not state.startswith("interrupted")
