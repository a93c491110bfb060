"""The rule autopilot and the dashboard (DESIGN §8-9; docs/autopilot.md).

- :class:`AutopilotHost` runs the autopilot inside the server (``hotcb serve --autopilot
  MODE``): one :class:`hotcb.autopilot.engine.Autopilot` per run under the served folder, runs
  that appear later included, one round each every ``autopilot.interval_sec`` in a worker
  thread (a round reads and writes files: never on the event loop). Shutdown waits for the
  round in progress, so no state file is left half done.
- :class:`AutopilotWatch` is what the page shows of a run's autopilot, read from its files
  whoever writes them: this server, a headless ``hotcb autopilot``, or nobody yet.

The server imports :mod:`hotcb.autopilot`, never the reverse: the headless autopilot needs no
FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import jsonl
from ..autopilot.ai._policy import AI_STATE
from ..autopilot.engine import OWNER, RECORDS, STATE, Autopilot, owner_elsewhere, proposals
from ..autopilot.rules import Ruleset, load_rules
from ..metrics import guess_direction
from ..runfiles import RunPaths, redact_url
from .config import AutopilotSettings

__all__ = ["NOT_HERE", "RECENT_KINDS", "AutopilotHost", "AutopilotWatch", "RuleOffInFile"]

log = logging.getLogger("hotcb.server")

#: Record kinds of ``hotcb.autopilot.jsonl`` that the page lists as recent activity.
RECENT_KINDS = frozenset(
    {"detection", "action", "guard", "skipped", "hold", "ai_reply", "fallback", "decision"}
)
RECENT_MAX = 20
#: How far back from the end of the records file the recent activity is looked for.
_RECENT_SCAN = 200

NOT_HERE = "the autopilot does not run in this server; use hotcb autopilot with a rules file"


class RuleOffInFile(ValueError):
    """A rule switched off in its rules file (``enabled: false``) cannot be switched on here."""


@dataclass
class _Hosted:
    pilot: Autopilot
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: bool = False  # the run ended and a last round has read its end


class AutopilotHost:
    """One autopilot per run under the served folder, stepped in a background task.

    ``find_runs()`` lists the run directories to watch (called once per round). A run is
    picked up once a kernel has started it (``hotcb.run.json``) and while it has not ended: a
    finished run gets no state file and no late action on old data. A run whose autopilot
    another live process drives (a headless ``hotcb autopilot``: ``hotcb.autopilot.owner.json``)
    is left to it. Both are looked at again each round."""

    def __init__(self, settings: AutopilotSettings, find_runs: Callable[[], Iterable[str]]) -> None:
        if settings.mode == "off":
            raise ValueError("AutopilotHost needs mode suggest or auto, got off")
        self.settings = settings
        self.ruleset: Ruleset = load_rules(settings.rules)  # RulesError now, not in a round
        self.ai: Any = None
        if settings.mode.startswith("ai_"):  # AIConfigError / ImportError now, not in a round
            from ..autopilot.ai import load_ai_config
            from ..autopilot.ai._policy import _import_openai

            _import_openai()
            self.ai = load_ai_config(settings.ai_config, base_url=settings.ai_base_url,
                                     model=settings.ai_model, budget_usd=settings.ai_budget_usd)  # fmt: skip
        self.find_runs = find_runs
        self.busy_after = max(5.0, 3 * settings.interval_sec)
        self._hosted: dict[str, _Hosted] = {}
        self._lock = threading.Lock()  # guards _hosted (rounds run in worker threads)
        self._elsewhere: set[str] = set()  # runs another autopilot drives (logged once)
        self._broken: set[str] = set()  # runs whose autopilot could not start (logged once)
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the loop --------------------------------------------------------------------------
    def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="hotcb-autopilot")

    async def stop(self) -> None:
        """Stop after the round in progress (a round is never cut in the middle)."""
        if self._stop is None or self._task is None:
            return
        self._stop.set()
        await self._task
        with self._lock:
            hosted = list(self._hosted.values())
        for h in hosted:  # the next autopilot on these runs needs not wait for this server
            with h.lock:
                h.pilot.close()

    async def _loop(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                await asyncio.to_thread(self.round)
            except Exception:  # a bug in one round must not end the autopilot for good
                log.exception("hotcb dashboard: an autopilot round failed")
            wait = max(0.0, self.settings.interval_sec - (time.monotonic() - t0))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=wait)

    def round(self) -> None:
        """Pick up new runs, then one round of each run's autopilot (in this thread)."""
        self._pick_up()
        with self._lock:
            hosted = list(self._hosted.items())
        for run_dir, h in hosted:
            if not os.path.isdir(run_dir):  # the run was deleted
                with self._lock:
                    self._hosted.pop(run_dir, None)
                continue
            ended = h.pilot.ended  # closed, or its process is gone (a crash)
            if ended and h.finished:
                continue  # nothing more will come (a resumed run clears `ended`)
            try:
                with h.lock:
                    records = h.pilot.step()
            except Exception:  # one run's trouble never stops the others
                log.exception("hotcb dashboard: the autopilot of %s failed", run_dir)
                continue
            h.finished = ended
            for rec in records:
                if rec.get("kind") in ("action", "proposal", "guard"):
                    what = rec.get("reason") or rec.get("describe") or rec.get("state")
                    log.info("hotcb autopilot %s: %s %s", run_dir, rec["kind"], what)

    def _pick_up(self) -> None:
        for run_dir in self.find_runs():
            with self._lock:
                if run_dir in self._hosted:
                    continue
            if not _live_run(run_dir) or self._driven_elsewhere(run_dir):
                continue
            s = self.settings
            try:
                pilot = Autopilot(run_dir, mode=s.mode, rules=self.ruleset,
                                  key_metric=s.key_metric, direction=s.direction, ai=self.ai)  # fmt: skip
            except Exception:  # one run's trouble never keeps the others from their autopilot
                if run_dir not in self._broken:  # logged once; tried again each round
                    self._broken.add(run_dir)
                    log.exception("hotcb dashboard: no autopilot for %s", run_dir)
                continue
            with self._lock:
                self._hosted[run_dir] = _Hosted(pilot)
            self._elsewhere.discard(run_dir)
            log.info("hotcb dashboard: autopilot (%s) on %s", s.mode, run_dir)

    def _driven_elsewhere(self, run_dir: str) -> bool:
        """Another process drives this run's autopilot: its owner record names a live process
        on this host, or (on another host, where liveness cannot be told) its state file was
        written in the last :attr:`busy_after` seconds."""
        owner = jsonl.read_json(os.path.join(run_dir, OWNER), None)
        if owner_elsewhere(run_dir) is not None:
            why = f"pid {owner.get('pid')} drives it" if isinstance(owner, dict) else "busy"
        elif isinstance(owner, dict) and owner.get("host") != socket.gethostname():
            state = jsonl.read_json(os.path.join(run_dir, STATE), {}) or {}
            updated = state.get("updated") if isinstance(state, dict) else None
            if not isinstance(updated, (int, float)) or time.time() - updated > self.busy_after:
                return False
            why = f"an autopilot on {owner.get('host')} wrote {STATE} {time.time() - updated:.1f} s ago"
        else:
            return False
        if run_dir not in self._elsewhere:
            self._elsewhere.add(run_dir)
            log.warning("hotcb dashboard: another autopilot (%s) runs on %s; this server leaves "
                        "that run to it", why, run_dir)  # fmt: skip
        return True

    # -- what the routes ask ---------------------------------------------------------------
    def runs_here(self, run_dir: str) -> bool:
        with self._lock:
            return run_dir in self._hosted

    def set_rule(self, run_dir: str, rule_id: str, enabled: bool) -> None:
        """Switch a rule of this run's autopilot on or off (kept across restarts).
        ``LookupError`` when the autopilot does not run here or has no such rule;
        :class:`RuleOffInFile` to switch on a rule its file keeps off."""
        with self._lock:
            h = self._hosted.get(run_dir)
        if h is None:
            raise LookupError(NOT_HERE)
        rule = next((r for r in h.pilot.ruleset.rules if r.id == rule_id), None)
        if rule is None:
            known = ", ".join(r.id for r in h.pilot.ruleset.rules)
            raise KeyError(f"no rule {rule_id!r}; the rules are {known}")
        if enabled and not rule.enabled:
            where = h.pilot.ruleset.path or "the rules file"
            raise RuleOffInFile(
                f"rule {rule_id} is off in {where} (enabled: false); switch it on there"
            )
        with h.lock:
            h.pilot.set_rule(rule_id, enabled)


class AutopilotWatch:
    """A run's autopilot as the page shows it (``GET …/autopilot``, ``autopilot`` messages):

    ``{"mode", "key_metric", "direction", "rules": [{id, when, then, cooldown_steps,
    confidence, enabled}], "recent", "pending", "in_server", "ran", "step", "updated", "ai"}``;
    ``ai``: the LLM policy's model, base URL, calls, spend and budget, fallback (None when it
    never ran on this run).

    Mode, rules and switched-off rules come from the state file (``hotcb.autopilot.state.json``)
    whoever wrote it; without one, mode ``off`` and the shipped rules (or, once this server's
    autopilot picked the run up, its own settings). ``recent``: the last :data:`RECENT_MAX`
    detections, actions, guard checks, skips and holds of the records file, with their
    evidence; ``pending``: the proposals waiting for a decision. Files are read again only when
    they changed (the caller runs :meth:`update` in a worker thread when :meth:`changed`)."""

    def __init__(
        self, run_dir: str, settings: AutopilotSettings, host: AutopilotHost | None
    ) -> None:
        self.run_dir = run_dir
        self.settings = settings
        self.host = host
        self.state_path = os.path.join(run_dir, STATE)
        self.records_path = os.path.join(run_dir, RECORDS)
        self.ai_path = os.path.join(run_dir, AI_STATE)
        self._sigs: tuple[Any, ...] | None = None
        self._records_sig: Any = None
        self._records: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
        self.doc: dict[str, Any] = {}

    def _signature(self) -> tuple[Any, ...]:
        return (_sig(self.state_path), _sig(self.records_path), self._in_server(),
                _sig(self.ai_path))  # fmt: skip

    def _in_server(self) -> bool:
        return self.host is not None and self.host.runs_here(self.run_dir)

    def changed(self) -> bool:
        """Whether a file (or who runs the autopilot) changed since the last :meth:`update`."""
        return self._signature() != self._sigs

    def update(self) -> bool:
        """Read what changed; True when the document is new."""
        sigs = self._signature()
        if sigs == self._sigs:
            return False
        self._sigs = sigs
        if sigs[1] != self._records_sig:
            self._records_sig = sigs[1]
            self._records = _recent(self.records_path), _pending(self.run_dir)
        doc = self._state(sigs[2])
        doc["recent"], doc["pending"] = self._records
        doc["ai"] = _ai(self.ai_path) if sigs[3] is not None else None
        if doc == self.doc:
            return False
        self.doc = doc
        return True

    def _state(self, in_server: bool) -> dict[str, Any]:
        st = jsonl.read_json(self.state_path, None)
        if isinstance(st, dict) and isinstance(st.get("rules"), list):
            off = set(st.get("disabled") or ())
            rules = [_rule(r, off) for r in st["rules"] if isinstance(r, dict)]
            return {
                "mode": st.get("mode", "off"), "key_metric": st.get("key_metric"),
                "direction": st.get("direction"), "rules": rules, "rules_path": st.get("rules_path"),
                "in_server": in_server, "ran": True, "step": st.get("step"),
                "updated": st.get("updated"), "key_logged_as": st.get("key_logged_as"),
                "logged": list(st.get("logged") or ())[:12],
            }  # fmt: skip
        # never ran here (or not yet: this server's autopilot writes the file after a round)
        host = self.host if in_server else None
        ruleset = host.ruleset if host is not None else _shipped_rules()
        s = host.settings if host is not None else self.settings
        direction = s.direction or guess_direction(s.key_metric)
        return {
            "mode": s.mode if host is not None else "off", "key_metric": s.key_metric,
            "direction": direction, "rules": [_rule(r.to_dict(), set()) for r in ruleset.rules],
            "rules_path": ruleset.path, "in_server": in_server, "ran": False, "step": None,
            "updated": None,
        }  # fmt: skip


#: What the page shows of the LLM policy (``hotcb.ai.state.json`` holds no key to begin with).
_AI_SHOWN = ("base_url", "model", "calls", "spent_usd", "budget_usd", "left_usd", "price_known",
             "failures", "fallback", "in_flight", "next_check_step")  # fmt: skip


def _ai(path: str) -> dict[str, Any] | None:
    """The LLM policy's state as the page shows it, URLs redacted whoever wrote the file (an
    older hotcb wrote the base URL whole, ``user:password@`` and ``?api-key=`` included, and
    its fallback reason may quote it)."""
    st = jsonl.read_json(path, None)
    if not isinstance(st, dict):
        return None
    shown = {k: st.get(k) for k in _AI_SHOWN}
    return {k: redact_url(v) if isinstance(v, str) else v for k, v in shown.items()}


def _live_run(run_dir: str) -> bool:
    """A kernel started the run (``hotcb.run.json``) and has not ended it."""
    meta = jsonl.read_json(RunPaths(run_dir).run_meta, None)
    return isinstance(meta, dict) and not isinstance(meta.get("ended"), dict)


@functools.cache
def _shipped_rules() -> Ruleset:
    return load_rules(None)


def _sig(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _rule(r: dict[str, Any], off: set[str]) -> dict[str, Any]:
    """A rule as the page shows it: ``enabled`` is its file's switch and not switched off."""
    out = {k: r.get(k) for k in ("id", "when", "then", "cooldown_steps", "confidence")}
    out["enabled"] = bool(r.get("enabled", True)) and r.get("id") not in off
    out["enabled_in_file"] = bool(r.get("enabled", True))
    return out


def _recent(path: str) -> list[dict[str, Any]]:
    try:
        last = jsonl.read_last(path, _RECENT_SCAN)
    except OSError as exc:  # a FIFO, a directory in its place: nothing to show, not a 500
        log.warning("hotcb dashboard: cannot read %s: %s", path, exc)
        return []
    recs = [r for r in last if r.get("kind") in RECENT_KINDS]
    return recs[-RECENT_MAX:]


def _pending(run_dir: str) -> list[dict[str, Any]]:
    try:
        return [p for p in proposals(run_dir) if p.get("state") == "pending"]
    except OSError as exc:  # (as in _recent)
        log.warning("hotcb dashboard: cannot read the autopilot records in %s: %s", run_dir, exc)
        return []
