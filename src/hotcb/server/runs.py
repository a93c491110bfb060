"""Runs under the served root: discovery, ids, and the live state of each watched run.

A run id is the run directory's path relative to the served root (``"."`` when the root is
itself a run). A directory is a run when it holds any ``hotcb.*`` file; discovery looks up to
``scan_depth`` levels down and is repeated on every ``/api/runs`` call, so new runs appear
without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, TypeGuard

from .. import jsonl
from ..freeze import freeze_doc, saved_freeze
from ..ledger import current_step, life_started
from ..runfiles import RUN_OUTPUTS, RunPaths, discover_runs, redact_argv, redact_secrets
from .autopilot import AutopilotHost, AutopilotWatch
from .config import DashboardConfig
from .hub import Hub
from .tailer import (
    TUNE_STATE,
    ActuatorsWatch,
    CommandsTail,
    HeartbeatWatch,
    KnobsTail,
    LedgerState,
    MetricsIndex,
    TuneWatch,
)

__all__ = ["RunNotFound", "RunRegistry", "RunState", "discover", "run_dirs"]

log = logging.getLogger("hotcb.server")

#: Catching up more than this many bytes happens in a worker thread, not on the event loop.
_INLINE_BYTES = 256 * 1024
#: How long after a load the metrics cache is written (the page's first requests come first).
_CACHE_DELAY_SEC = 2.0
#: Values of one knob kept from the actuators file (older ones are thinned beyond this).
_MAX_OBSERVED = 4096
#: The most points of one knob's line ``GET …/knobs`` sends (a chart is a few hundred pixels
#: wide; a knob a controller set every step would otherwise send megabytes per refresh).
KNOB_POINTS = 2000
#: The most applied changes of one knob it lists (the newest; ``changes_total`` counts all).
KNOB_CHANGES = 500


def _plain(v: Any) -> TypeGuard[float]:
    """A number a chart can draw: int or float, not bool, finite."""
    return type(v) in (int, float) and math.isfinite(v)


def _last(path: str) -> list[dict[str, Any]]:
    """The file's last record; none when it cannot be read (a directory or a FIFO in its
    place): one broken run must not fail the whole runs list."""
    try:
        return jsonl.read_last(path, 1)
    except OSError:
        return []


class RunNotFound(LookupError):
    pass


def _created_and_dir(path: str) -> tuple[Any, Any]:
    """``created`` and ``run_dir`` of the run at ``path`` (its ``hotcb.run.json``)."""
    meta = jsonl.read_json(RunPaths(path).run_meta, {})
    return (meta.get("created"), meta.get("run_dir")) if isinstance(meta, dict) else (None, None)


def _has_hotcb_file(path: str) -> bool:
    """Whether ``path`` holds a file a run's kernel, CLI or controller writes
    (:data:`RUN_OUTPUTS`): a folder with only a ``hotcb.yaml`` or a tuner recipe is no run."""
    try:
        with os.scandir(path) as it:
            return any(e.name in RUN_OUTPUTS and not e.is_dir(follow_symlinks=False) for e in it)
    except OSError:
        return False


def _last_wall_time(rec: dict[str, Any] | None) -> float | None:
    wt = (rec or {}).get("wall_time")
    return float(wt) if isinstance(wt, (int, float)) and not isinstance(wt, bool) else None


def discover(root: str, depth: int) -> list[str]:
    """Run ids under ``root`` (``"."`` for the root itself), sorted, up to ``depth`` levels;
    not those whose folder name is no UTF-8 text (said once each in the server's log): one
    such id in the list of runs failed it whole, and the page said "no runs yet"."""
    ids = []
    for rid in discover_runs(root, depth, _has_hotcb_file):
        try:
            rid.encode("utf-8")
        except UnicodeEncodeError:
            if rid not in _UNNAMED:
                _UNNAMED.add(rid)
                shown = os.path.join(root, rid).encode("utf-8", "surrogateescape")
                log.warning("hotcb serve: %s is not shown: its folder name is not UTF-8 text; "
                            "rename it", shown.decode("utf-8", "replace"))  # fmt: skip
            continue
        ids.append(rid)
    return ids


#: The runs :func:`discover` left out for their name, said once each.
_UNNAMED: set[str] = set()


def run_dirs(root: str, depth: int) -> list[str]:
    """The directories of :func:`discover`'s runs."""
    return [root if rid == "." else os.path.join(root, rid) for rid in discover(root, depth)]


def _thin(steps: list[int], values: list[float], most: int) -> tuple[list[int], list[float]]:
    """At most about ``most`` points of a step function: in each run of consecutive points,
    the lowest and the highest (a spike stays on the chart), and always the first and last."""
    n = len(steps)
    if n <= most:
        return steps, values
    size = math.ceil(n / max(1, (most - 2) // 2))
    keep = {0, n - 1}
    for lo in range(1, n - 1, size):
        idx = range(lo, min(lo + size, n - 1))
        keep.add(min(idx, key=values.__getitem__))
        keep.add(max(idx, key=values.__getitem__))
    kept = sorted(keep)
    return [steps[i] for i in kept], [values[i] for i in kept]


def _step_function(events: list[tuple[int, int, float]], end: int) -> tuple[list[int], list[float]]:
    """Sorted ``(step, order, value)`` events as the points of a step function: one point per
    step (the last event of a step wins), a point only where the value changes, and a last
    point at ``end`` so the line reaches the run's last step."""
    steps: list[int] = []
    values: list[float] = []
    for st, _, v in events:
        if steps and steps[-1] == st:
            values[-1] = v
        elif not values or values[-1] != v:
            steps.append(st)
            values.append(v)
    if steps and steps[-1] < end:
        steps.append(end)
        values.append(values[-1])
    return steps, values


class RunState:
    """The tailers of one run, behind one lock. Every refresh publishes what it read, so a
    record consumed by a REST request still reaches WebSocket subscribers."""

    def __init__(
        self,
        run_id: str,
        path: str,
        config: DashboardConfig,
        hub: Hub,
        autopilot: AutopilotHost | None = None,
    ) -> None:
        self.run_id = run_id
        self.paths = RunPaths(path)
        self.config = config
        self.hub = hub
        self.metrics = MetricsIndex(self.paths.metrics, cache=True)
        self.ledger = LedgerState(self.paths.ledger, config.ledger_max_entries)
        self.commands = CommandsTail(self.paths.commands)
        self.actuators = ActuatorsWatch(self.paths.actuators)
        self.tune = TuneWatch(os.path.join(self.paths.root, TUNE_STATE))
        self.heartbeat = HeartbeatWatch(self.paths.heartbeat)
        #: knob values that moved on their own, {key: [(step, v, wall time)]}: the kernel's
        #: record of them (hotcb.knobs.jsonl, the whole run) and the actuators file while the
        #: server watched
        self.observed: dict[str, list[tuple[int, float, float | None]]] = {}
        self.knob_log = KnobsTail(self.paths.knobs)
        self.autopilot = AutopilotWatch(self.paths.root, config.autopilot, autopilot)
        self.lock = asyncio.Lock()
        self._saving: asyncio.Task[None] | None = None  # the metrics cache being written
        self._meta: dict[str, Any] = {}
        self._meta_sig: tuple[int, int, int] | None = None

    @property
    def path(self) -> str:
        return self.paths.root

    async def refresh(self) -> set[str]:
        """Read what is new in every watched file and push it to subscribers; the types of
        the messages pushed."""
        async with self.lock:
            big = (
                self.metrics.pending_bytes() > _INLINE_BYTES
                or self.ledger.tail.size() - self.ledger.tail.offset > _INLINE_BYTES
                or self.autopilot.changed()  # its state file: rewritten whole every round
            )
            if big:
                msgs = await asyncio.to_thread(self._poll)
            else:
                msgs = self._poll()
        for msg in msgs:
            self.hub.publish(self.run_id, msg)
        if self.metrics.cache_due and self._saving is None:
            # after the request that is waiting now (it takes the lock first)
            self._saving = asyncio.get_running_loop().create_task(self._save_cache())
        return {msg["type"] for msg in msgs}

    async def _save_cache(self) -> None:
        """Copy the index under the lock, write the copy without it (requests go on), a
        little after the load: the page's first requests come first."""
        try:
            await asyncio.sleep(_CACHE_DELAY_SEC)
            async with self.lock:
                snap = await asyncio.to_thread(self.metrics.cache_snapshot)
            if self.metrics.cache is not None:
                await asyncio.to_thread(self.metrics.cache.write, snap)
        finally:
            self._saving = None

    def _poll(self) -> list[dict[str, Any]]:
        cap = self.config.push_max_records
        rid = self.run_id
        msgs: list[dict[str, Any]] = []
        # The first load of a file is history (served over REST), not news to push.
        before = self.metrics.lines
        records = self.metrics.update(cap if self.metrics.loaded else 0)
        if records:
            msg: dict[str, Any] = {"type": "metrics", "run": rid, "records": records}
            dropped = self.metrics.lines - before - len(records)
            if dropped > 0:  # a burst larger than push_max_records: the page should refetch
                msg["dropped"] = dropped
            msgs.append(msg)
        entries = self.ledger.update(cap if self.ledger.loaded else 0)
        if entries:
            msgs.append({"type": "ledger", "run": rid, "entries": entries})
        commands = self.commands.update(cap)
        if commands:
            msgs.append({"type": "commands", "run": rid, "records": commands})
        for rec in self.knob_log.update():  # before the actuators file: it is never older
            self._moved(rec.get("step"), rec.get("values"), rec.get("wall_time"))
        if self.actuators.update():
            msgs.append({"type": "actuators", "run": rid, "doc": self.actuators.doc})
            self._observe(self.actuators.doc)
        if self.tune.update():
            msgs.append(self.tune_message())
        self.heartbeat.update()
        if self.autopilot.update():
            msgs.append(self.autopilot_message())
        return msgs

    async def run_locked(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` in a worker thread while no tailer touches this run's index."""
        async with self.lock:
            return await asyncio.to_thread(fn, *args)

    # -- derived views ---------------------------------------------------------------------
    @property
    def last_wall_time(self) -> float | None:
        """The newest wall time of the metrics, the ledger and the kernel's heartbeat."""
        times = [
            t
            for t in (
                self.metrics.last_wall_time,
                self.ledger.last_wall_time,
                self.heartbeat.wall_time,
            )
            if t
        ]
        return max(times) if times else None

    @property
    def last_step(self) -> int | None:
        """The run's step now (:func:`hotcb.ledger.current_step`): of the newest of its last
        metric, ledger entry and heartbeat, in the life of the run that goes on now."""
        return current_step(
            [
                (self.metrics.last_step, self.metrics.last_wall_time),
                (self.ledger.last_step, self.ledger.last_wall_time),
                (self.heartbeat.step, self.heartbeat.wall_time),
            ],
            self.meta(),
        )

    @property
    def paused(self) -> bool:
        """Paused in the life of the run that goes on now (a pause before a restart is over)."""
        return self.ledger.view.control_now(self.meta()) == "pause"

    def markers(self) -> list[dict[str, Any]]:
        """The chart markers of the life that goes on (see :class:`~.tailer.GoneLives`)."""
        return self.ledger.lives.of_life(self.ledger.marks, self.meta())

    def stale(self, now: float | None = None) -> bool:
        t = self.last_wall_time
        if t is None:
            return True
        return (now or time.time()) - t > self.config.ui.stale_after_sec

    def meta(self) -> dict[str, Any]:
        """``hotcb.run.json``, read again only when the file changed (it is replaced
        atomically: a new inode, mtime or size)."""
        try:
            st = os.stat(self.paths.run_meta)
            sig: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            sig = None
        if sig != self._meta_sig:
            meta = jsonl.read_json(self.paths.run_meta, {}) if sig is not None else {}
            self._meta = meta if isinstance(meta, dict) else {}
            self._meta_sig = sig
        return self._meta

    def state(self) -> str:
        """What the run is doing, in words (:meth:`hotcb.ledger.LedgerView.run_state`):
        ``finished at step N``, ``stopped at step N``, ``crashed …``, ``paused``, ``running``…"""
        return self.ledger.view.run_state(
            self.last_wall_time,
            time.time(),
            self.config.ui.stale_after_sec,
            meta=self.meta(),
            root=self.paths.root,
        )

    def _observe(self, doc: dict[str, Any]) -> None:
        """Keep each knob's value at the step of the actuators file, when it moved (an LR
        scheduler moves lr on its own; the kernel rewrites the file at most once a second)."""
        acts = [a for a in doc.get("actuators") or () if isinstance(a, dict)]
        values = {str(a.get("param_key")): a.get("current") for a in acts}
        self._moved(doc.get("step"), values, doc.get("wall_time"))

    def _moved(self, step: Any, values: Any, wall: Any) -> None:
        """Keep ``{key: value}`` at ``step`` (written at ``wall``) for each knob whose value
        changed since the last one kept. A record of a lower step is one seen already, unless
        it was written later: the run went back (a resume, a restart), and the values past
        its step are of a life it left (a restart's scheduler moved the lr unrecorded until
        it passed the old life's last step)."""
        if type(step) is not int or not isinstance(values, dict):
            return
        wall = float(wall) if _plain(wall) else None
        for key, value in values.items():
            if not _plain(value):
                continue
            seen = self.observed.setdefault(str(key), [])
            if seen and step < seen[-1][0]:
                if wall is None or seen[-1][2] is None or wall <= seen[-1][2]:
                    continue
                while seen and seen[-1][0] > step:
                    seen.pop()
            if seen and seen[-1][1] == value:
                continue
            if len(seen) >= _MAX_OBSERVED:
                del seen[: _MAX_OBSERVED // 2 : 2]  # thin the older half
            seen.append((step, float(value), wall))

    def _observed_of_life(self, meta: Mapping[str, Any]) -> dict[str, list[tuple[int, float]]]:
        """The values that moved on their own, without those of the lives the one that goes
        on left (``meta``: ``hotcb.run.json``): those before it, when it started afresh; those
        before it and past its checkpoint's step, when it resumed from one. The Knobs panel
        drew a killed life's lr steps over the new life's curve, out to its steps."""
        started = life_started(meta)
        resumed = meta.get("resumed_from")
        step = resumed.get("step") if isinstance(resumed, Mapping) else None
        at = step if type(step) is int else -1  # -1: started afresh
        life = -math.inf if started is None else started
        if type(step) is not int and self.ledger.lives.resumed_at >= life:
            life = -math.inf  # (resumed, not saying from which step: all of it)
        return {
            key: [(st, v) for st, v, w in seen if w is None or w >= life or st <= at]
            for key, seen in self.observed.items()
        }

    def knobs(self) -> dict[str, Any]:
        """Each knob's value over the run, from the kernel's own records: its value at the start
        (the ledger's first ``old``, else the actuators file's ``initial``), every applied
        change in the ledger (``changes``, with step, source and seq, for marking), the values
        that moved on their own (the kernel's ``hotcb.knobs.jsonl``, and the actuators file
        while the server watched), and its value now. ``points`` is
        a step function: the value holds from each step until the next, thinned to about
        :data:`KNOB_POINTS` (each stretch's lowest and highest kept); ``changes``: the newest
        :data:`KNOB_CHANGES` (``changes_total``: how many the ledger holds)."""
        acts = {
            str(a.get("param_key")): a
            for a in self.actuators.doc.get("actuators") or ()
            if isinstance(a, dict)
        }
        changes: dict[str, list[dict[str, Any]]] = {}
        meta = self.meta()
        observed = self._observed_of_life(meta)
        for ch in self.ledger.lives.of_life(self.ledger.knobs.changes, meta):
            changes.setdefault(ch["key"], []).append(ch)
        # the run's first step: its first metric or change (the actuators file is seen only
        # from when the server watched: not a start); 0 when it has neither
        starts = [s.steps[0] for s in self.metrics.series.values() if s.steps]
        starts += [c[0]["step"] for c in changes.values()]
        if isinstance(meta.get("branch"), Mapping):  # its history is its parent's:
            starts.append(0)  # from the start (it began at its first inherited change's step)
        first = min([min(starts) if starts else 0, *(o[0][0] for o in observed.values() if o)])
        last = max(self.last_step or 0, first)
        out = []
        for key in [*acts, *(k for k in changes if k not in acts)]:
            act = acts.get(key, {})
            mine = changes.get(key, [])
            # the run's first value (a checkpoint carries it), else the first change's old one
            initial = act.get("initial")
            if not _plain(initial) and mine and mine[0]["old"] is not None:
                initial = mine[0]["old"]
            current = act.get("current")
            events: list[tuple[int, int, float]] = []  # (step, order at that step, value)
            if _plain(initial):
                events.append((first, 0, float(initial)))
            events += [(st, 1, v) for st, v in observed.get(key, ())]
            # a ramp's command holds the value at its step (its end entry brings the target)
            events += [(c["step"], 2, float(c["old"] if c.get("ramp") and _plain(c["old"])
                                            else c["new"])) for c in mine]  # fmt: skip
            end = max([last, *(e[0] for e in events)])
            if _plain(current):
                events.append((end, 3, float(current)))
            steps, values = _step_function(sorted(events, key=lambda e: (e[0], e[1])), end)
            if not steps:
                continue
            steps, values = _thin(steps, values, KNOB_POINTS)
            out.append(
                {
                    "key": key,
                    "group": act.get("group") or (mine[0]["module"] if mine else None),
                    "label": act.get("label") or key,
                    "type": act.get("type"),
                    "initial": initial if _plain(initial) else None,
                    "current": current if _plain(current) else None,
                    "points": {"step": steps, "value": values},
                    "changes": mine[-KNOB_CHANGES:],
                    "changes_total": len(mine),
                }
            )
        return {"first_step": first, "last_step": last, "knobs": out}

    def tune_message(self) -> dict[str, Any]:
        return {"type": "tune", "run": self.run_id, "doc": self.tune.doc}

    def autopilot_message(self) -> dict[str, Any]:
        return {"type": "autopilot", "run": self.run_id, "doc": self.autopilot.doc}

    def status_message(self) -> dict[str, Any]:
        return {
            "type": "status",
            "run": self.run_id,
            "stale": self.stale(),
            "last_wall_time": self.last_wall_time,
            "last_step": self.last_step,
            "paused": self.paused,
            "state": self.state(),
        }

    def freeze(self) -> dict[str, Any]:
        return freeze_doc(self.paths.freeze, self.paths.ledger)

    def status(self) -> dict[str, Any]:
        return {
            "run": _shown_meta(self.meta()),
            "freeze": self.freeze(),
            "actuators": list(self.actuators.doc.get("actuators") or []),
            "pending": list(self.ledger.pending.values()),
            "last_metrics": self.metrics.last_record,
            "stale": self.stale(),
            "paused": self.paused,
            "last_step": self.last_step,
            "last_wall_time": self.last_wall_time,
            "state": self.state(),
            "ledger_entries": self.ledger.count,
        }


def _shown_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``hotcb.run.json`` as served: without secrets, in the launched command (a file an
    older hotcb wrote kept them) and in the user's ``run_meta`` (a training config passed
    whole, its ``hf_token`` too)."""
    out = dict(meta)
    launch = out.get("launch")
    if isinstance(launch, Mapping) and isinstance(launch.get("argv"), list):
        out["launch"] = {**launch, "argv": redact_argv([str(a) for a in launch["argv"]])}
    shown: dict[str, Any] = redact_secrets(out)
    return shown


class RunRegistry:
    """Finds runs under the root and keeps one :class:`RunState` per run asked about."""

    def __init__(
        self, config: DashboardConfig, hub: Hub, autopilot: AutopilotHost | None = None
    ) -> None:
        self.config = config
        self.hub = hub
        self.autopilot = autopilot
        self.root = os.path.realpath(config.dir)
        # Least recently used first; runs nobody watches are dropped beyond max_loaded_runs so
        # a folder of hundreds of runs cannot hold every run's index at once.
        self._states: OrderedDict[str, RunState] = OrderedDict()

    def discover(self) -> list[str]:
        """Run ids under the root, sorted, up to ``scan_depth`` levels deep."""
        return discover(self.root, self.config.scan_depth)

    def resolve(self, run_id: str) -> str:
        """The run directory of ``run_id``; :class:`RunNotFound` when it is outside the root
        or is not a run."""
        if "\x00" in run_id:  # no file has that name (and realpath raises on it)
            raise RunNotFound(f"no run {run_id!r} under {self.root}")
        rel = run_id.strip("/") or "."
        path = os.path.realpath(os.path.join(self.root, rel))
        if path != self.root and not path.startswith(self.root + os.sep):
            raise RunNotFound(f"run {run_id!r} is outside the served folder")
        if not os.path.isdir(path) or not _has_hotcb_file(path):
            raise RunNotFound(f"no run {run_id!r} under {self.root}")
        return path

    @staticmethod
    def normalise(run_id: str) -> str:
        rel = os.path.normpath(run_id.strip("/") or ".").replace(os.sep, "/")
        return "." if rel in ("", os.curdir) else rel

    def get(self, run_id: str) -> RunState:
        rid = self.normalise(run_id)
        state = self._states.get(rid)
        if state is not None and not os.path.isdir(state.path):  # the run was deleted
            del self._states[rid]
            state = None
        if state is None:
            path = self.resolve(rid)
            state = RunState(rid, path, self.config, self.hub, self.autopilot)
            self._states[rid] = state
            self._evict()
        else:
            self._states.move_to_end(rid)
        return state

    def _evict(self) -> None:
        excess = len(self._states) - self.config.max_loaded_runs
        for rid in list(self._states):
            if excess <= 0:
                break
            state = self._states[rid]
            if self.hub.has_subscribers(rid) or state.lock.locked():
                continue
            del self._states[rid]
            excess -= 1

    def cached(self, run_id: str) -> RunState | None:
        return self._states.get(self.normalise(run_id))

    def summary(self, run_id: str) -> dict[str, Any]:
        """One line of the runs list; cheap (reads the tails of files, not whole files)."""
        path = self.resolve(run_id)
        paths = RunPaths(path)
        meta = jsonl.read_json(paths.run_meta, {}) or {}
        if not isinstance(meta, dict):
            meta = {}
        state = self._states.get(run_id)
        # A loaded run is up to date only while the tailer refreshes it, that is while a page
        # watches it; one nobody watches any more (a run compared a while ago) keeps the step
        # of its last refresh: read the files' tails instead.
        if state is not None and state.metrics.loaded and self.hub.has_subscribers(run_id):
            last_step, last_wall = state.last_step, state.last_wall_time
        else:
            last_m, last_l = _last(paths.metrics), _last(paths.ledger)
            beat = jsonl.read_json(paths.heartbeat)
            recs = [r[0] for r in (last_m, last_l) if r]
            if isinstance(beat, dict):
                recs.append(beat)
            walls = [t for t in (_last_wall_time(r) for r in recs) if t is not None]
            last_step = current_step([(r.get("step"), _last_wall_time(r)) for r in recs], meta)
            last_wall = max(walls) if walls else None
        name = meta.get("name")
        stale = last_wall is None or time.time() - last_wall > self.config.ui.stale_after_sec
        return {
            "run_id": run_id,
            "name": name or os.path.basename(path),
            "path": path,
            "last_step": last_step,
            "last_wall_time": last_wall,
            "stale": stale,
            "freeze_mode": saved_freeze(paths.freeze, paths.ledger)[0].mode.value,
            "branch": self.branch_info(meta.get("branch")),
        }

    @staticmethod
    def _is_parent(path: str, recorded: str, born: Any, *, moved: bool = False) -> bool:
        """Whether the run at ``path`` is the parent a branch recorded (its folder then,
        ``recorded``; its ``created``, ``born``, where the branch wrote it). At the recorded
        path, a run created at another time took its place; elsewhere (``moved``), the run
        created then, or without ``born`` (an older branch) the one whose ``run_dir`` still
        names the recorded folder."""
        created, run_dir = _created_and_dir(path)
        if isinstance(born, (int, float)) and created is not None:
            return bool(created == born)
        return not moved or run_dir == recorded

    def _moved_parent(self, recorded: str, born: Any) -> str | None:
        """The run id of a branch's parent found elsewhere under the root (:meth:`_is_parent`)."""
        for rid in self.discover():
            try:
                path = self.resolve(rid)
            except RunNotFound:  # gone since the listing
                continue
            if path != os.path.realpath(recorded) and self._is_parent(path, recorded, born,
                                                                       moved=True):  # fmt: skip
                return rid
        return None

    def branch_info(self, info: Any) -> dict[str, Any] | None:
        """``hotcb.run.json``'s ``branch`` (written by ``hotcb branch``) for the page:
        ``parent`` is the parent's run id when the parent is a run under the served folder,
        else None; ``parent_path`` the path as written; ``step`` the branch point."""
        if not isinstance(info, dict) or not isinstance(info.get("parent"), str):
            return None
        if "\x00" in info["parent"]:  # no folder has that name (and realpath raises on it)
            return {"parent": None, "parent_path": info["parent"], "step": None}
        raw = info["parent"]
        born = info.get("parent_created")  # the parent's hotcb.run.json `created`
        parent: str | None = None
        path = os.path.realpath(os.path.join(self.root, raw))
        inside = path == self.root or path.startswith(self.root + os.sep)
        if inside and _has_hotcb_file(path) and self._is_parent(path, raw, born):
            rel = os.path.relpath(path, self.root)
            parent = "." if rel == os.curdir else rel.replace(os.sep, "/")
        else:  # moved or copied (an archive of the folder), or another run took its place
            parent = self._moved_parent(raw, born)
        step = info.get("step")
        return {
            "parent": parent,
            "parent_path": raw,
            "step": step if isinstance(step, int) and not isinstance(step, bool) else None,
        }
