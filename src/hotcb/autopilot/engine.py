"""The rule autopilot: reads a run's metrics and ledger from outside the training process,
runs the rules' detectors, and applies or proposes their bounded actions.

Everything it does is recorded in ``hotcb.autopilot.jsonl`` (detections with their evidence,
proposals, decisions, guard checks). Commands go through the normal path with
``source: "autopilot"`` and a ``reason`` naming the rule, so the ledger, undo and replay treat
them like a person's. Its cursors, cooldowns and metric windows persist in
``hotcb.autopilot.state.json`` (replaced atomically), so a restarted autopilot continues where
it stopped and never fires again on data it has already seen.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import socket
import statistics
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .. import jsonl
from .._control import _never_undone
from ..client import HotClient, check_actuator_params
from ..errors import ActuatorError, HotcbError
from ..ledger import life_started, run_over
from ..metrics import VAL_LOSS_NAMES, guess_direction
from ..runfiles import AUTOPILOT_STATE, FREEZE, LEDGER, RUN_META, TUNE, process_alive
from ..runview import RunView
from .detectors import DETECTORS, Detection
from .rules import Action, Rule, Ruleset, action_text, load_rules

if TYPE_CHECKING:
    from .ai import AIConfig, AIPolicy, Outcome

__all__ = [
    "MODES",
    "OWNER",
    "RECORDS",
    "RECORD_KINDS",
    "STATE",
    "Autopilot",
    "AutopilotBusy",
    "decide",
    "owner_elsewhere",
    "proposals",
]

log = logging.getLogger("hotcb.autopilot")

MODES = ("off", "suggest", "auto", "ai_suggest", "ai_auto")
#: What the rules do in each mode: act (auto), propose (suggest), or only detect (the LLM
#: modes, where they are the model's sensors until it falls back to them).
_RULES_DO = {"off": "nothing", "suggest": "suggest", "auto": "auto", "ai_suggest": "sense",
             "ai_auto": "sense"}  # fmt: skip
RECORDS = "hotcb.autopilot.jsonl"
#: The ``kind`` of each record in ``RECORDS`` (what a notify ``autopilot`` alert may name).
RECORD_KINDS = ("detection", "proposal", "decision", "action", "skipped", "hold", "guard",
                "resumed", "ai_reply", "fallback")  # fmt: skip
STATE = AUTOPILOT_STATE
LOCK = "hotcb.autopilot.lock"
#: Which process drives the run's autopilot (``pid``, ``host``, ``mode``, ``started``).
OWNER = "hotcb.autopilot.owner.json"
_WINDOW = 512  # points kept per metric
#: Detectors of one point's event (a loss spike, a gradient-norm jump): each point read since
#: the last round is judged, or one between two rounds is never seen. The trend detectors
#: (plateau, divergence, overfitting) judge the newest window: a trend lasts, and judging
#: every point of a noisy per-batch loss would multiply their false alarms.
_POINT_DETECTORS = frozenset({"spike", "grad_explosion"})
_TRAIN_NAMES = ("loss", "train/loss", "train_loss")
#: Ledger sources that are not a person: their changes do not hold a knob.
_NOT_A_PERSON = frozenset({"autopilot", "tune", "ramp", "resume", "recipe", "kernel", "ai"})
#: Detectors whose changes are tuning, not safety: left to an active tuner on the same knob.
_TUNING_DETECTORS = frozenset({"plateau", "overfitting"})


class AutopilotBusy(HotcbError, RuntimeError):
    """Another live process already drives this run's autopilot."""


def owner_elsewhere(run_dir: str) -> dict[str, Any] | None:
    """The owner record of the run's autopilot when another live process on this host holds
    it; None when nobody does, the owner is gone, or it is this process. (On another host
    liveness cannot be told; callers look at how fresh the state file is.)"""
    owner = jsonl.read_json(os.path.join(run_dir, OWNER), None)
    if not isinstance(owner, dict) or owner.get("pid") == os.getpid():
        return None
    return owner if process_alive(owner) else None


@contextlib.contextmanager
def _locked(run_dir: str) -> Iterator[None]:
    """Hold the run's autopilot lock file: one claim or one decision at a time, across
    processes."""
    # never through a link planted in the run directory (it created the file it named)
    fd = jsonl.open_own(os.path.join(run_dir, LOCK), os.O_RDWR | os.O_CREAT)[0]
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _append(run_dir: str, record: dict[str, Any]) -> dict[str, Any]:
    record.setdefault("wall_time", time.time())
    jsonl.append(os.path.join(run_dir, RECORDS), record)
    return record


class Autopilot:
    """One run's autopilot. ``step()`` does one round; ``run()`` loops until the run ends."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        mode: str = "suggest",
        rules: Ruleset | str | os.PathLike[str] | None = None,
        key_metric: str = "val_loss",
        direction: str | None = None,
        person_hold_steps: int = 300,
        ai: AIConfig | None = None,
        ai_key: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        direction = direction or guess_direction(key_metric)  # val_acc: maximize
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"direction must be minimize or maximize, got {direction!r}")
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.ruleset = rules if isinstance(rules, Ruleset) else load_rules(rules)
        self.mode, self.key, self.direction = mode, key_metric, direction
        self.person_hold_steps = person_hold_steps
        self.client = HotClient(self.run_dir, source="autopilot", create=False)
        self._claim()
        self._state_path = os.path.join(self.run_dir, STATE)
        st = jsonl.read_json(self._state_path, {}) or {}
        cursors = st.get("cursors") or {}
        self.view = RunView(self.run_dir, metrics_at=int(cursors.get("metrics", 0)),
                            ledger_at=int(cursors.get("ledger", 0)))  # fmt: skip
        self.series: dict[str, deque[tuple[int, float]]] = {
            name: deque(((int(s), float(v)) for s, v in points), maxlen=_WINDOW)
            for name, points in (st.get("series") or {}).items()
        }
        self.step_now = int(st.get("step", -1))
        self._said_missing = False  # missing_key() said its line
        self._first_step: int | None = None  # the first metrics step this autopilot read
        self.fired: dict[str, int] = dict(st.get("fired") or {})  # rule -> step it acted at
        self.seen: dict[str, int] = dict(st.get("seen") or {})  # rule -> last detection step
        #: metric -> the last step of it a round judged: the next round judges each point
        #: after it (a one-step spike between two rounds was never the latest point); none
        #: yet in a first round (the latest point alone: history is not acted on late)
        self._judged: dict[str, int] = {n: p[-1][0] for n, p in self.series.items() if p}
        self._rounds = 0
        # the firings of a life the run went back from, and a kernel resume seen before the
        # metrics said so: a resume re-applies the actions, so their rules stay cooled down
        self._gone_fired: dict[str, int] = {}
        self._resume_seen = False
        #: the lives of the run this autopilot saw (one more each time its steps went back),
        #: and the one each model call in flight was asked in
        self._life = 0
        self._asked_in: dict[int, int] = {}
        #: when the life of the run went on began (``hotcb.run.json``): a new trainer process
        #: is a new life before its first metric says its steps went back
        self._life_began = life_started(self.view.meta())
        self.holds: dict[str, int] = dict(st.get("holds") or {})  # knob -> held until step
        self.disabled: set[str] = set(st.get("disabled") or ())
        self.guard: dict[str, Any] | None = st.get("guard")
        # past every id in the records too: a lost state file must not give out A1 again
        self.next_id = max(int(st.get("next_id", 1)), _after_last_id(self.run_dir))
        #: rules that may have a proposal waiting (made here, or found at the start): only
        #: those are looked for when their trouble is gone (:meth:`_expire`)
        self._waiting = {str(p.get("rule")) for p in proposals(self.run_dir)
                         if p["state"] == "pending"}  # fmt: skip
        #: Recent applied changes to opt/loss (any source), for the model's context.
        self.changes: deque[dict[str, Any]] = deque(st.get("changes") or (), maxlen=20)
        self.detections: deque[dict[str, Any]] = deque(st.get("detections") or (), maxlen=10)
        self._watched = self._metric_names()
        #: names the run logs that nothing here watches (status names them when the key
        #: metric is not among what the run logs)
        self.logged: set[str] = set(st.get("logged") or ())
        self.ai: AIPolicy | None = None
        if mode.startswith("ai_"):
            from .ai import AIConfig, AIPolicy, project_memory

            self.ai = AIPolicy(self.run_dir, ai or AIConfig(), key=ai_key)
            self.ai_client = HotClient(self.run_dir, source="ai", create=False)
            self._memory = project_memory(self.run_dir, self.ai.config.memory)

    def _claim(self) -> None:
        """Become the run's autopilot, or :class:`AutopilotBusy` when another live process
        is (two autopilots on one run would both act on every detection)."""
        with _locked(self.run_dir):
            other = owner_elsewhere(self.run_dir)
            if other is not None:
                raise AutopilotBusy(
                    f"another autopilot (pid {other.get('pid')}, mode {other.get('mode')}) "
                    f"drives {self.run_dir}; stop it first"
                )
            jsonl.write_json_atomic(os.path.join(self.run_dir, OWNER), {
                "pid": os.getpid(), "host": socket.gethostname(), "mode": self.mode,
                "started": time.time(),
            })  # fmt: skip

    def close(self) -> None:
        """Stop being the run's autopilot (the next one needs not wait for this process). A
        call to the model still waiting for its reply is abandoned: recorded as such (an
        ``ai_reply`` record, state ``abandoned``), and no longer shown as in flight."""
        abandoned = self.ai.close() if self.ai is not None else None
        if abandoned is not None:
            call, step, why = abandoned
            self._record({"kind": "ai_reply", "call": call, "step": step, "state": "abandoned",
                          "reason": f"no action: {why}"})  # fmt: skip
        with _locked(self.run_dir):
            path = os.path.join(self.run_dir, OWNER)
            owner = jsonl.read_json(path, None)
            if isinstance(owner, dict) and owner.get("pid") == os.getpid():
                os.unlink(path)

    #: Steps of other metrics before :meth:`missing_key` says the key metric is not logged.
    MISSING_KEY_AFTER = 200

    def missing_key(self) -> str | None:
        """Once per autopilot: a line saying the key metric has not been logged while others
        have, for :data:`MISSING_KEY_AFTER` steps (the rules on it wait; nothing else shows
        it but ``autopilot status``); None otherwise."""
        first = self._first_step
        if self._said_missing or self._resolve("key") is not None or first is None:
            return None
        if self.step_now - first < self.MISSING_KEY_AFTER:
            return None
        self._said_missing = True
        logged = ", ".join(sorted(self.logged | set(self.series))[:12])
        return (
            f"{self.key} has not been logged in {self.step_now - first} steps (the run logs "
            f"{logged}): the rules on the key metric wait for it; --key-metric NAME picks "
            "another"
        )

    # ------------------------------------------------------------------ one round
    def step(self) -> list[dict[str, Any]]:
        """Read what is new, check the guard, run the rules; the records written."""
        out: list[dict[str, Any]] = []
        holds: dict[str, dict[str, Any]] = {}
        self._read_metrics(out)
        self._read_ledger(holds)
        while self.view.behind:  # a long run's history: all of it before anything is judged
            self._read_metrics(out)
            self._read_ledger(holds)
        # a person's changes hold their knobs: said for the holds still in force (a first
        # round over a long run's ledger said every hold it ever had)
        out.extend(self._record(h) for h in holds.values() if h["until"] > self.step_now)
        if self.guard is not None:
            self._check_guard(out)
        todo = self.rules_do
        if todo != "nothing":
            seen = len(out)
            for rule in self.ruleset.rules:
                if rule.enabled and rule.id not in self.disabled:
                    self._evaluate(rule, out, todo)
            if self.ai is not None and self.ai.fallback is None:
                detected = any(r.get("kind") == "detection" for r in out[seen:])
                self._ai_round(detected, out)
        self._judged = {name: points[-1][0] for name, points in self.series.items() if points}
        self._rounds += 1
        if self.ai is not None and self.closed:  # (not a crash: a resume may go on with it)
            self._ai_finish()
        self._save()
        return out

    @property
    def rules_do(self) -> str:
        """What the rules do now: ``auto``, ``suggest``, ``sense`` (detect for the model) or
        ``nothing``. Once the LLM policy fell back, its mode's rules act as in auto/suggest."""
        if self.ai is not None and self.ai.fallback is not None:
            return "auto" if self.mode == "ai_auto" else "suggest"
        return _RULES_DO[self.mode]

    def run(
        self, interval: float = 1.0, *, until: Callable[[], bool] | None = None
    ) -> None:  # pragma: no cover - the CLI's loop; step() is what the tests drive
        while until is None or not until():
            self.step()
            if self.ended:
                self.step()
                return
            time.sleep(interval)

    # ------------------------------------------------------------------ reading
    def _metric_names(self) -> set[str]:
        names = {self.key, "lr", *_TRAIN_NAMES}
        if self.key == VAL_LOSS_NAMES[0]:  # the default: the run may call it eval_loss, ...
            names.update(VAL_LOSS_NAMES)
        for rule in self.ruleset.rules:
            names.add(rule.metric)
            names.add(rule.train_metric)
        return names

    def _read_metrics(self, out: list[dict[str, Any]]) -> None:
        for rec in self.view.new_metrics():
            step = rec.get("step")
            if not isinstance(step, int):
                continue
            if step < self.step_now:
                out.append(self._went_back(step))
                out.extend(self._expire_gone(step))
            self.step_now = max(self.step_now, step)
            if self._first_step is None:
                self._first_step = step
            for name, value in rec["metrics"].items():
                if name not in self._watched:
                    if len(self.logged) < 64:
                        self.logged.add(name)
                    continue
                number = float(value) if isinstance(value, (int, float)) else math.nan
                self.series.setdefault(name, deque(maxlen=_WINDOW)).append((step, number))

    def _went_back(self, step: int) -> dict[str, Any]:
        """The run's steps went back (a resume from an earlier checkpoint, a restart from
        step 0): what the autopilot knew of the steps from ``step`` on belongs to a life that
        is gone. Its points leave the series (a detector would read two lives as one curve),
        and holds, cooldowns and the guard made there end (a hold "until step 2096" made at
        step 1796 blocked a restarted run's first 2100 steps)."""
        was = self.step_now
        for name, points in self.series.items():
            self.series[name] = deque(((s, v) for s, v in points if s < step), maxlen=_WINDOW)
        self.holds = {k: u for k, u in self.holds.items() if u - self.person_hold_steps < step}
        gone = {k: f for k, f in self.fired.items() if f >= step}
        self.fired = {k: f for k, f in self.fired.items() if f < step}
        if self._resume_seen:  # the kernel's resume entry came first
            self.fired.update(gone)
            gone = {}
        self._gone_fired, self._resume_seen = gone, False
        self.seen = {k: f for k, f in self.seen.items() if f < step}
        self._judged = {k: min(j, step - 1) for k, j in self._judged.items()}
        if self.guard is not None and int(self.guard.get("step", 0)) >= step:
            self.guard = None
        if self.ai is not None:  # a call asked with the gone steps is not acted on (_ai_stale)
            self.ai.went_back(step)
            self._life += 1
        self.step_now = step
        return self._record({
            "kind": "resumed", "step": step, "was": was,
            "reason": f"the run went back from step {was} to step {step} (a resume from a "
                      "checkpoint, or a restart): the autopilot forgets what it saw after it",
        })  # fmt: skip

    def _expire_gone(self, step: int) -> list[dict[str, Any]]:
        """Close the proposals still waiting that were made at ``step`` or after, in the life
        the run left: their evidence is steps that no longer exist, and accepted, one changed
        the new life on the gone life's trouble (an lr cut for a plateau it never had)."""
        out: list[dict[str, Any]] = []
        with _locked(self.run_dir):  # not while a person's accept of one of them runs
            for p in proposals(self.run_dir):
                made = p.get("step")
                if p["state"] != "pending" or not isinstance(made, int) or made < step:
                    continue
                self._waiting.discard(str(p.get("rule")))
                out.append(self._record({
                    "kind": "decision", "id": p["id"], "rule": p.get("rule"), "by": "autopilot",
                    "state": "expired", "step": step,
                    "reason": f"made at step {made} in a life the run left: it went back to "
                              f"step {step} (a resume from an earlier checkpoint, or a restart)",
                }))  # fmt: skip
        return out

    def _read_ledger(self, holds: dict[str, dict[str, Any]]) -> None:
        """Read the new ledger entries; ``holds`` gets the hold record of each knob a person
        changed (the newest per knob)."""
        for e in self.view.new_entries():
            self._watch_guard(e)
            guard, cmd_id = self.guard, e.get("cmd_id")
            if guard is not None and cmd_id is not None:  # the tuner's entries have none
                if cmd_id == guard.get("undo_cmd_id"):
                    self.guard = None  # the guard's undo landed (or was refused): judged, done
                elif (cmd_id == guard.get("cmd_id") and not guard.get("undo_cmd_id")
                      and e.get("decision") not in ("applied", "scheduled")):  # fmt: skip
                    # the run did not make the change: nothing to judge (_check_guard says so)
                    self.guard = {**guard, "not_applied": {"seq": e.get("seq"),
                                  "decision": e.get("decision"), "error": e.get("error")}}  # fmt: skip
            if e.get("module") == "kernel" and e.get("op") == "resume":
                self._kernel_resumed()
            if e.get("decision") != "applied":
                continue
            if e.get("module") not in ("opt", "loss") or not isinstance(e.get("changes"), dict):
                if e.get("module") == "control" and e.get("op") == "undo":
                    self.changes.append(_change(e, 0))
                    # a person who took an automatic change back holds its knobs too: the
                    # same rule fired again at the next round and made it again
                    if isinstance(e.get("changes"), dict):
                        self._hold(e, self._module_of(e.get("undo_of")), holds)
                continue
            settle = self.ai.config.settle_steps if self.ai and e.get("source") == "ai" else 0
            self.changes.append(_change(e, settle))
            self._hold(e, e["module"], holds)
            if e.get("source") in ("resume", "autopilot"):
                self._rearm(e)

    def _hold(self, e: Mapping[str, Any], module: str, holds: dict[str, dict[str, Any]]) -> None:
        """Hold the knobs that entry ``e`` changed, of ``module``, when a person changed them;
        ``holds`` gets the hold record of each (the newest per knob). A person's change that a
        resume re-applied (``source: resume``) holds them as it did the first time: the
        autopilot cut a person's re-applied ``set lr`` at once."""
        source = e.get("source")
        again = ""
        if source == "resume":
            source, again = self._first_source(e.get("cmd_id")), " (re-applied by a resume)"
        if source in _NOT_A_PERSON:
            return
        step = int(e.get("step") or 0)
        did = ("took back a change of" if e.get("op") == "undo" else "changed") + again
        for key in e["changes"]:
            knob = f"{module}.{key}"
            self.holds[knob] = step + self.person_hold_steps
            holds.pop(knob, None)  # in the order they came
            holds[knob] = {
                "kind": "hold", "knob": knob, "step": step, "until": self.holds[knob],
                "reason": f"{source} {did} {knob} at step {step}; the autopilot "
                          f"leaves it alone until step {self.holds[knob]}",
            }  # fmt: skip

    def _kernel_resumed(self) -> None:
        """The kernel resumed from a checkpoint (its ``resume`` entry): the commands after it
        come again at their steps, the autopilot's own actions among them. Their rules stay
        cooled down as in the life that made them (a rule that fired again before its
        re-applied cut had that cut compound with its new one)."""
        if self._gone_fired:
            self.fired.update(self._gone_fired)
            self._gone_fired = {}
        else:  # read before the metrics that say the run went back (or nothing was gone)
            self._resume_seen = True

    def _rearm(self, e: Mapping[str, Any]) -> None:
        """An autopilot change applied (``e``) that its rule should count from: an accepted
        proposal's, or one of its own a resume re-applied (the run went back past it, which
        ended its rule's cooldown and its guard: the same rule cut the lr again three steps
        after the re-applied cut). The rule's cooldown starts again at ``e``, and what it
        detected before is dealt with (a NaN between a proposal and its accept, or one the
        resumed run logged again before the re-applied cut, drew a second cut for the same
        trouble). A re-applied automatic change is judged again, as when it was first made."""
        cmd_id = e.get("cmd_id")
        rec = self._sender(cmd_id)
        if rec is None or (rec.get("kind") == "action" and e.get("source") != "resume"):
            return  # (an automatic change just made: its rule already counts from it)
        rule_id, step = str(rec.get("rule")), int(e.get("step") or 0)
        if rule_id == "ai":
            settle = self.ai.config.settle_steps if self.ai is not None else 0
        else:
            rule = next((r for r in self.ruleset.rules if r.id == rule_id), None)
            if rule is None:
                return
            self.fired[rule_id] = max(self.fired.get(rule_id, step), step)
            self.seen[rule_id] = max(self.seen.get(rule_id, step), step)
            settle = rule.cooldown_steps // 2
        if rec.get("kind") != "action":
            return  # an accepted proposal's change is a person's choice: not judged
        if self.guard is None and step + settle > self.step_now:
            # (not for an old one a new autopilot reads in a run's history: judged back then)
            self._watch(rule_id, str(cmd_id), settle, at=step)

    def _sender(self, cmd_id: Any) -> dict[str, Any] | None:
        """The record of the autopilot's that sent command ``cmd_id``: the ``action`` record of
        its own change, or the ``accepted`` decision of a proposal; None for another's."""

        def sent(r: dict[str, Any]) -> bool:
            return (r.get("kind") == "action" or r.get("state") == "accepted") and cmd_id in (
                r.get("cmd_ids") or ()
            )

        rec = self._first_mention(RECORDS, cmd_id, sent)
        if rec is None and isinstance(cmd_id, str) and cmd_id:
            with _locked(self.run_dir):  # an accept writes its decision after it sent the command
                rec = self._first_mention(RECORDS, cmd_id, sent)
        return rec

    def _first_source(self, cmd_id: Any) -> str:
        """Who sent command ``cmd_id``: the source of its first ledger entry that a resume did
        not write (``resume`` when there is none)."""
        rec = self._first_mention(LEDGER, cmd_id, lambda r: r.get("cmd_id") == cmd_id
                                  and r.get("source") not in (None, "resume"))  # fmt: skip
        return "resume" if rec is None else str(rec["source"])

    def _first_mention(
        self, name: str, cmd_id: Any, fits: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any] | None:
        """The first record of the run's file ``name`` that mentions command ``cmd_id`` and
        ``fits``; only lines holding the id are parsed."""
        if not isinstance(cmd_id, str) or not cmd_id:
            return None
        needle = jsonl.dumps(cmd_id).encode()
        found = jsonl.iter_records(
            os.path.join(self.run_dir, name), keep=lambda line: needle in line
        )
        return next((rec for rec in found if fits(rec)), None)

    def _module_of(self, cmd_id: Any) -> str:
        """The module (``opt`` or ``loss``) of the change ``cmd_id`` (an undo's target), from
        the changes read; ``opt`` when it is not among them."""
        found = (c.get("module") for c in reversed(self.changes) if c.get("cmd_id") == cmd_id)
        module = next(found, None)
        return module if module in ("opt", "loss") else "opt"

    def _watch_guard(self, e: dict[str, Any]) -> None:
        """Note the knobs the guarded change set (its own applied entry), and whether someone
        set one of them since (a person, the tuner, an undo): the guard then judges nothing.
        Its undo would put back the value from before the automatic change, over theirs."""
        guard = self.guard
        if guard is None or guard.get("undo_cmd_id") or guard.get("superseded"):
            return
        changes = e.get("changes")
        if e.get("decision") != "applied" or not isinstance(changes, dict) or not changes:
            return
        if e.get("cmd_id") is not None and e.get("cmd_id") == guard.get("cmd_id"):
            self.guard = {**guard, "keys": sorted({*guard.get("keys", ()), *changes})}
            return
        hit = sorted(set(changes) & set(guard.get("keys") or ()))
        if hit:
            self.guard = {**guard, "superseded": {
                "keys": hit, "source": e.get("source"), "step": e.get("step"), "seq": e.get("seq"),
                "what": f"{e.get('module')} {e.get('op')}"}}  # fmt: skip

    def _resolve(self, name: str) -> str | None:
        if name == "key":
            if self.key in self.series:
                return self.key
            if self.key == VAL_LOSS_NAMES[0]:  # the default, under the run's own name for it
                return next((n for n in VAL_LOSS_NAMES if n in self.series), None)
            return None
        if name == "train":
            return next((n for n in _TRAIN_NAMES if n in self.series), None)
        return name if name in self.series else None

    # ------------------------------------------------------------------ rules
    def _evaluate(self, rule: Rule, out: list[dict[str, Any]], todo: str) -> None:
        if self.fired.get(rule.id, -(10**12)) + rule.cooldown_steps > self.step_now:
            return
        found = self._detect(rule)
        if found is None and todo in ("suggest", "auto"):  # (auto: its low-confidence rules')
            self._expire(rule, out)
        if found is None or found.step <= self.seen.get(rule.id, -1):
            return
        self.seen[rule.id] = found.step
        detection = self._record({
            "kind": "detection", "rule": rule.id, "detector": found.detector,
            "metric": found.metric, "step": found.step, "severity": found.severity,
            "evidence": found.evidence, "describe": found.describe(),
        })  # fmt: skip
        out.append(detection)
        self.detections.append(detection)
        if todo == "sense":  # the model decides; the rule's cooldown still spaces detections
            self.fired[rule.id] = self.step_now
            return
        acts = todo == "auto" and rule.confidence in ("high", "medium")
        over = run_over(self.view.meta(), time.time()) if self.ended else None
        why_not = f"the run {over}: nothing would apply it" if over else None
        if rule.action.name == "undo":
            why_not = why_not or self._undo_blocked(lambda knob: self._rule_blocked(knob, acts))
        why_not = why_not or self._rule_blocked(rule.action.knob, acts)
        if why_not is None and acts:
            why_not = self._tuned(rule.action.knob, rule.detector)
        if why_not is not None:
            out.append(self._record({
                "kind": "skipped", "rule": rule.id, "step": self.step_now, "reason": why_not,
            }))  # fmt: skip
            return
        if acts:
            # one of the rule's own, from suggest mode, may wait: closed first (accepted after
            # the rule's own change it would double it); it no longer silences the rule
            out.extend(self._supersede(rule.action, f"rule {rule.id}", rule=rule.id))
            self.fired[rule.id] = self.step_now
            out.extend(self._apply(rule, found))
            return
        with _locked(self.run_dir):  # not while a person's accept of the one it renews runs
            out.append(self._propose(rule, found))

    def _expire(self, rule: Rule, out: list[dict[str, Any]]) -> None:
        """Close the rule's waiting proposal once its trouble is gone: past the rule's cooldown
        since it was last made or renewed, its detector no longer fires. Accepted later, it
        would act on evidence the run has left behind (a plateau the run has since left)."""
        if rule.id not in self._waiting:
            return
        self._waiting.discard(rule.id)  # until it proposes again (or one found here waits on)
        with _locked(self.run_dir):  # not while a person's accept of it runs
            for p in proposals(self.run_dir):
                if p["state"] != "pending" or p.get("rule") != rule.id:
                    continue
                if int(p.get("step", 0)) + rule.cooldown_steps > self.step_now:
                    self._waiting.add(rule.id)
                    continue
                out.append(self._record({
                    "kind": "decision", "id": p["id"], "rule": rule.id, "by": "autopilot",
                    "state": "expired", "step": self.step_now,
                    "reason": f"rule {rule.id} no longer detects its trouble at step "
                              f"{self.step_now} (last seen at step {p.get('step')})",
                }))  # fmt: skip

    def _propose(self, rule: Rule, found: Detection) -> dict[str, Any]:
        """The rule's proposal, or a ``skipped`` record while another proposal on the same
        knob waits: one proposal per knob waits at a time, as in ``ai_suggest`` (NaN, a spike
        and a plateau each proposed an lr cut, and accepting all three compounded them)."""
        every = proposals(self.run_dir)
        accepted = self._lands_after(rule.id, found.step, every)
        if accepted is not None:
            return self._record({
                "kind": "skipped", "rule": rule.id, "step": self.step_now,
                "reason": f"what rule {rule.id} saw at step {found.step} came before the change "
                          f"of its accepted proposal {accepted} landed: that change deals "
                          "with it",
            })  # fmt: skip
        pending = [p for p in every if p["state"] == "pending"]
        other = _pending_on(rule.action, [p for p in pending if p["rule"] != rule.id])
        if other is not None:
            return self._record({
                "kind": "skipped", "rule": rule.id, "step": self.step_now,
                "waiting": other["id"], "reason": _still_pending(other, rule.action),
            })  # fmt: skip
        self.fired[rule.id] = self.step_now
        # one proposal per rule waits at a time; a newer detection renews its evidence
        # under the same id (an accept of that id, typed meanwhile, still applies it)
        waiting = [p for p in pending if p["rule"] == rule.id]
        first = waiting[-1].get("first_step", waiting[-1].get("step")) if waiting else None
        self._waiting.add(rule.id)
        pin = self._pin(rule.action)
        return self._record({
            "kind": "proposal", "id": waiting[-1]["id"] if waiting else self._new_id(),
            "rule": rule.id, "step": self.step_now,
            "action": {"name": rule.action.name, "params": rule.action.params},
            "describe": f"{rule.action.describe()}{pin.pop('of', '')} because {found.describe()}",
            "evidence": found.evidence, "state": "pending",
            **({"first_step": first} if waiting else {}), **pin,
        })  # fmt: skip

    def _lands_after(self, rule_id: str, step: int, every: list[dict[str, Any]]) -> str | None:
        """The id of the rule's newest accepted proposal when its change landed at ``step`` or
        later, or has not landed yet: a detection at ``step`` saw the trouble it deals with.
        (An accept while a round ran, or before the round read the cut's entry, had the rule
        propose a second cut on a NaN logged before the first.)"""
        accepted = [p for p in every if p.get("rule") == rule_id and p["state"] == "accepted"]
        cmd_ids = accepted[-1].get("cmd_ids") if accepted else None
        if not cmd_ids:
            return None
        cmd_id = cmd_ids[-1]
        e = self._first_mention(LEDGER, cmd_id, lambda r: r.get("cmd_id") == cmd_id)
        if e is not None and (
            e.get("decision") not in ("applied", "scheduled") or int(e.get("step") or 0) < step
        ):
            return None  # it landed before (or the run did not take it): this is new trouble
        return str(accepted[-1]["id"])

    def _rule_blocked(self, knob: str | None, acts: bool) -> str | None:
        """Why a rule may not act on ``knob`` now: a person holds it, or (for a change the rule
        would make itself, not a proposal) the guard is still judging an earlier automatic
        change: one change at a time, so each one is judged on its own."""
        if knob is None:
            return None
        if self.holds.get(knob, -1) > self.step_now:
            return f"a person changed {knob}; held until step {self.holds[knob]}"
        frozen = self._frozen()
        if frozen is not None:
            return frozen
        if acts and self.guard is not None:
            return self._judging()
        return None

    def _pin(self, action: Action) -> dict[str, Any]:
        """For an ``undo`` proposal, the change it takes back (``undo_of``, checked again at
        the accept: accepted later, it took back whatever change was newest by then) and
        ``of``, the words for its description."""
        if action.name != "undo":
            return {}
        try:
            target = undo_target(self.run_dir)
        except ValueError:
            return {}
        return {"undo_of": target["cmd_id"],
                "of": f" of {', '.join(target['knobs'])} ({target['by']}, step {target['step']})"}  # fmt: skip

    def _undo_blocked(self, blocked: Callable[[str], str | None]) -> str | None:
        """Why an ``undo`` may not be sent now: it has no automatic change to take back, or
        one of the knobs it would put back is ``blocked`` (a person holds it, the guard
        judges a change): an undo changes knobs like any other change."""
        try:
            target = undo_target(self.run_dir)
        except ValueError as exc:
            return str(exc)
        return next(filter(None, map(blocked, target["knobs"])), None)

    def _frozen(self) -> str | None:
        return frozen_reason(self.run_dir)

    def _tuned(self, knob: str | None, detector: str | None) -> str | None:
        """Why a change of ``knob`` for ``detector`` (None: the model's) is left alone: the
        online tuner, in active mode, tunes it. Two controllers on one knob undo each other's
        work (each change of the autopilot voids the tuner's open trial, and the tuner's moves
        land in the window the guard judges the autopilot's change on). The safety rules (NaN,
        divergence, exploding gradients) still act, except while the tuner's start bracket
        runs: its arms try lrs up to 4x and go back to saved weights, a jump a divergence
        rule reads as the run blowing up, and a cut then ended the bracket at the wrong lr."""
        if knob is None:
            return None
        tune = jsonl.read_json(os.path.join(self.run_dir, TUNE), None)
        if not isinstance(tune, dict) or tune.get("mode") != "active":
            return None
        space = (tune.get("settings") or {}).get("space") or ()
        names = {f"{k.get('module')}.{k.get('key')}" for k in space if isinstance(k, dict)}
        if knob not in names:
            return None
        bracket = tune.get("bracket")
        if isinstance(bracket, dict) and "ended_at" not in bracket:  # (one over has it)
            return (f"the online tuner's start bracket is under way on {knob}: its arms are "
                    "left to it (each goes back to the weights the bracket began with)")  # fmt: skip
        if detector is None:
            return f"the online tuner (active) tunes {knob}: the model's changes are left to it"
        if detector not in _TUNING_DETECTORS:
            return None
        return (f"the online tuner (active) tunes {knob}: changes for a plateau or overfitting "
                "are left to it")  # fmt: skip

    def _detect(self, rule: Rule) -> Detection | None:
        metric = self._resolve(rule.metric)
        if metric is None:
            return None
        steps, values = _columns(self.series[metric])
        fn = DETECTORS[rule.detector]
        kwargs: dict[str, Any] = {"metric": metric, **rule.params}
        if rule.detector in ("plateau", "divergence") and "direction" not in kwargs:
            kwargs["direction"] = self.direction if rule.metric == "key" else "minimize"
        if rule.detector == "nonfinite":  # any bad point since the last round, not just the last
            seen = self.seen.get(rule.id, -1)
            for i in range(len(steps) - 1, -1, -1):
                if steps[i] <= seen:
                    break
                if not math.isfinite(values[i]):
                    return fn(steps[: i + 1], values[: i + 1], metric=metric)
            return None
        try:
            if rule.detector == "overfitting":
                train = self._resolve(rule.train_metric)
                if train is None:
                    return None
                tsteps, tvalues = _columns(self.series[train])
                return fn(tsteps, tvalues, steps, values, **kwargs)
            if rule.detector in _POINT_DETECTORS:
                return self._each_new_point(fn, metric, steps, values, kwargs)
            return fn(steps, values, **kwargs)
        except Exception as exc:  # a detector's bug must not stop the autopilot
            log.warning("hotcb autopilot: detector %s failed: %r", rule.detector, exc)
            return None

    def _each_new_point(self, fn: Callable[..., Detection | None], metric: str,
                        steps: list[int], values: list[float],
                        kwargs: dict[str, Any]) -> Detection | None:  # fmt: skip
        """The first detection among the points read since the last round, each judged with
        the window that ended at it."""
        window = int(kwargs.get("window", (fn.__kwdefaults__ or {}).get("window", 1)))
        for i in range(self._first_new(metric, steps), len(steps)):
            lo = max(0, i + 1 - window)
            found = fn(steps[lo : i + 1], values[lo : i + 1], **kwargs)
            if found is not None:
                return found
        return None

    def _first_new(self, metric: str, steps: list[int]) -> int:
        """The index of the first point of ``metric`` this round judges: the first after the
        last round's (all of them when it was not logged then; the latest alone in the first
        round), or the latest when nothing is new (a paused run's trouble still holds)."""
        if metric in self._judged:
            first = bisect_right(steps, self._judged[metric])
        else:
            first = 0 if self._rounds else len(steps) - 1
        return max(0, min(first, len(steps) - 1))

    def _apply(self, rule: Rule, found: Detection) -> list[dict[str, Any]]:
        reason = f"autopilot rule {rule.id}: {found.describe()}"
        try:
            cmd_ids = send_action(self.client, rule.action, reason, live=self._live())
        except Exception as exc:  # out of bounds, no such actuator: record, go on
            return [self._record({"kind": "action", "rule": rule.id, "step": self.step_now,
                                  "state": "refused", "reason": str(exc)})]  # fmt: skip
        record = self._record({
            "kind": "action", "rule": rule.id, "step": self.step_now, "state": "applied",
            "action": {"name": rule.action.name, "params": rule.action.params},
            "cmd_ids": cmd_ids, "reason": reason,
        })  # fmt: skip
        if rule.action.knob is not None and cmd_ids:
            # judge after the change has settled (half the rule's cooldown): right after an
            # lr cut a diverging loss still climbs for a few steps
            self._watch(rule.id, cmd_ids[0], rule.cooldown_steps // 2)
        return [record, *self._supersede(rule.action, f"rule {rule.id}")]

    def _supersede(self, action: Action, by: str, rule: str | None = None) -> list[dict[str, Any]]:
        """Close the pending proposals that act where an automatic change just did (the same
        knob, the same run control), or only ``rule``'s own (about to act in auto mode):
        accepted afterwards, they would compound with it (a low-confidence rule's lr cut
        waited, a high-confidence one cut the lr itself, and the person's accept cut it
        twice). Their decision records, state ``superseded``."""
        out: list[dict[str, Any]] = []
        what = action.knob or action.name
        why = (
            f"{by} acts on {what} itself at step {self.step_now} (auto mode)"
            if rule is not None
            else f"{by} changed {what} itself at step {self.step_now}"
        )
        with _locked(self.run_dir):  # not while a person's accept of one of them runs
            for p in proposals(self.run_dir):
                if p["state"] != "pending" or _pending_on(action, [p]) is None:
                    continue
                if rule is not None and p.get("rule") != rule:
                    continue
                out.append(self._record({
                    "kind": "decision", "id": p["id"], "rule": p["rule"], "by": "autopilot",
                    "state": "superseded", "step": self.step_now,
                    "reason": f"{why}; accepted too, this would compound with it",
                }))  # fmt: skip
        return out

    def _watch(self, rule_id: str, cmd_id: str, settle: int, at: int | None = None) -> None:
        """Arm the guard on an automatic change made at step ``at`` (now): judged ``settle``
        steps after it."""
        step = self.step_now if at is None else at
        before = [v for s, v in self.series.get(self._key_name, ()) if s <= step]
        before = [v for v in before if math.isfinite(v)][-self.ruleset.guard_window :]
        if before:
            self.guard = {"rule": rule_id, "cmd_id": cmd_id, "step": step, "from": step + settle,
                          "before": statistics.median(before)}  # fmt: skip

    def _live(self) -> dict[str, float]:
        points = self.series.get("lr")
        return _live(self.run_dir, points[-1] if points else None)

    # ------------------------------------------------------------------ the LLM policy
    def _ai_round(self, detected: bool, out: list[dict[str, Any]]) -> None:
        """Act on a reply that came back; ask again when due (the call runs in a thread)."""
        ai = self.ai
        assert ai is not None
        began = life_started(self.view.meta())
        if began != self._life_began:  # a trainer started (again): replies asked before are
            self._life_began, self._life = began, self._life + 1  # stale (a resume loading)
        outcome = ai.poll()
        if outcome is not None:
            out.extend(self._ai_outcome(outcome))
        if ai.fallback is not None:
            out.append(self._record({"kind": "fallback", "step": self.step_now,
                                     "reason": f"LLM autopilot: {ai.fallback}; the rules "
                                               "take over"}))  # fmt: skip
            return
        if self.ended or (self._resolve("key") is None and self._resolve("train") is None):
            return
        why = ai.due(self.step_now, detected)
        if why is not None:
            from .ai import messages

            self._asked_in[ai.start(messages(self.ai_context()), self.step_now, why)] = self._life
        elif ai.fallback is not None:  # the budget ran out just now
            out.append(self._record({"kind": "fallback", "step": self.step_now,
                                     "reason": f"LLM autopilot: {ai.fallback}; the rules "
                                               "take over"}))  # fmt: skip

    def ai_context(self) -> dict[str, Any]:
        """What the model is shown now (:func:`hotcb.autopilot.ai.build_context`)."""
        from .ai import build_context

        ai = self.ai
        assert ai is not None
        acts = self.view.actuators()
        live = self._live().get("opt.lr")
        if live is not None and "opt.lr" in acts:
            acts["opt.lr"] = {**acts["opt.lr"], "current": live}
        tune = jsonl.read_json(os.path.join(self.run_dir, TUNE), None)
        tune = tune if isinstance(tune, dict) and tune.get("mode", "off") != "off" else None
        total = ai.config.total_steps or (tune or {}).get("total_steps")
        st = ai.status()
        budget = {k: st[k] for k in ("spent_usd", "budget_usd", "left_usd", "calls")}
        pending = [p for p in proposals(self.run_dir)
                   if p["state"] == "pending" and p.get("rule") == "ai"
                   ] if self.mode == "ai_suggest" else []  # fmt: skip
        key = self._resolve("key")  # without one yet, the training loss (minimized)
        return build_context(
            key_metric=key or self._resolve("train") or self.key,
            direction=self.direction if key else "minimize",
            series={k: list(v)[-256:] for k, v in self.series.items()}, step=self.step_now,
            total_steps=total, detections=list(self.detections), changes=list(self.changes),
            actuators=acts, budget=budget, tune=tune, memory=self._memory, pending=pending,
            max_tokens=ai.config.max_context_tokens,
        )  # fmt: skip

    def _ai_outcome(self, outcome: Outcome) -> list[dict[str, Any]]:
        ai = self.ai
        assert ai is not None
        head = {"kind": "ai_reply", "call": outcome.call, "step": outcome.step}
        asked_in = self._asked_in.pop(outcome.call, self._life)
        if outcome.reply is None:
            return [self._record({**head, "state": "failed", "error_kind": outcome.kind,
                                  "reason": f"no action: {outcome.error}"})]  # fmt: skip
        reply = outcome.reply
        too_late = self._too_late(outcome, asked_in)
        if too_late is not None:
            state, why = too_late
            return [self._record({**head, "state": state, "reasoning": reply.reasoning,
                                  "cost_usd": outcome.cost_usd, "reason": why})]  # fmt: skip
        ai.heed(outcome)
        out = [self._record({**head, "state": "replied", "reasoning": reply.reasoning,
                             "cost_usd": outcome.cost_usd})]  # fmt: skip
        rejected = [{"asked": asked, "reason": why} for asked, why in reply.rejected]
        applied: list[dict[str, Any]] = []
        proposed: list[str] = []
        reason = f"ai (call {outcome.call}): {reply.reasoning}"[:2000]
        for action in reply.actions:
            knob = action.knob
            why_not = (self._ai_blocked(knob) if knob is not None
                       else self._undo_blocked(self._ai_blocked) if action.name == "undo"
                       else None)  # fmt: skip
            if why_not is None and knob is not None:
                why_not = self._no_such_knob(knob)
            if why_not is not None:
                rejected.append({"asked": _asked(action), "reason": why_not})
                continue
            params = {"name": action.name, "params": action.params}
            if self.mode == "ai_suggest":
                waiting = self._pending_for(action)
                if waiting is not None:  # accepted later, both would act on one knob
                    rejected.append({"asked": _asked(action), "reason": waiting})
                    continue
                ident = self._new_id()
                pin = self._pin(action)
                out.append(self._record({
                    "kind": "proposal", "id": ident, "rule": "ai", "source": "ai",
                    "step": self.step_now, "action": params, "reasoning": reply.reasoning,
                    "describe": f"{action.describe()}{pin.pop('of', '')}: "
                                f"{reply.reasoning}"[:400],
                    "state": "pending", "call": outcome.call, **pin,
                }))  # fmt: skip
                proposed.append(ident)
                continue
            try:
                # a model's stop ends a run no one may be watching: where it got to is saved
                first = (send_action(self.ai_client, Action("checkpoint", {}), reason)
                         if action.name == "stop" else [])  # fmt: skip
                cmd_ids = [*first, *send_action(self.ai_client, action, reason, live=self._live())]
            except Exception as exc:  # out of bounds, no such actuator: recorded, never raised
                rejected.append({"asked": _asked(action), "reason": str(exc)})
                continue
            out.append(self._record({
                "kind": "action", "rule": "ai", "step": self.step_now, "state": "applied",
                "action": params, "cmd_ids": cmd_ids, "reason": reason,
                "reasoning": reply.reasoning, "call": outcome.call,
                "replied_at": outcome.replied_at,
            }))  # fmt: skip
            applied.append({**params, "cmd_ids": cmd_ids})
            out += self._supersede(action, f"the model (call {outcome.call})")
            if knob is not None and cmd_ids and self.guard is None:
                self._watch("ai", cmd_ids[0], ai.config.settle_steps)
                if self.guard is None:  # no key-metric values to judge it on: it settles all
                    # the same (three lr cuts 29 steps apart compounded, unjudged)
                    self.fired["ai_settle"] = self.step_now + ai.config.settle_steps
        for r in rejected:
            out.append(self._record({"kind": "action", "rule": "ai", "step": self.step_now,
                                     "state": "rejected", "call": outcome.call, **r}))  # fmt: skip
        ai.write("decision", call=outcome.call, step=self.step_now, reasoning=reply.reasoning,
                 applied=applied, proposed=proposed, rejected=rejected,
                 next_check=reply.next_check)  # fmt: skip
        return out

    def _too_late(self, outcome: Outcome, asked_in: int) -> tuple[str, str] | None:
        """Why the model's reply is not acted on, as ``(state, reason)``: the run finished
        while the model thought, or the call was asked (in life ``asked_in``) with steps the
        run went back from (in ``ai_auto`` its lr cut landed on the new life for trouble it
        never had)."""
        if self.ended:
            return "late", "the run had ended when the reply was read: nothing would apply it"
        if asked_in != self._life:
            return "stale", (f"asked at step {outcome.step}, in a life the run left (it went "
                             "back since): nothing is sent")  # fmt: skip
        return None

    def _no_such_knob(self, knob: str) -> str | None:
        """Why ``knob`` (``loss.aux``) cannot be changed: the run published no such actuator
        (the model named one it does not have). A proposal for it waited for good, its every
        accept refused. None when it has it, or has published none yet."""
        published = list(self.view.actuators().values())
        group, _, key = knob.partition(".")
        if not published or any(a["param_key"] == key and a["group"] == group for a in published):
            return None
        try:
            check_actuator_params(group, {key: 0.0}, published)
        except ActuatorError as exc:
            return str(exc)
        return None

    def _pending_for(self, action: Action) -> str | None:
        """Why the model may not propose ``action`` now: a proposal for the same knob (or the
        same run control) is still pending, its own or a rule's from an earlier ``suggest``
        autopilot (each reply that saw the same trouble added one, and accepting them all
        compounded the cut)."""
        waiting = _pending_on(action, [p for p in proposals(self.run_dir)
                                       if p["state"] == "pending"])  # fmt: skip
        if waiting is None:
            return None
        return (f"proposal {waiting['id']} ({action_text(waiting.get('action'))}) is still "
                f"pending: accept or reject it first ('hotcb autopilot accept {waiting['id']}')")  # fmt: skip

    def _ai_blocked(self, knob: str) -> str | None:
        """Why the model may not change ``knob`` now: a person holds it, the guard is still
        judging an earlier automatic change (one change at a time, so each one is judged on
        its own), or the guard undid the model's last change a short while ago."""
        if self.holds.get(knob, -1) > self.step_now:
            return f"a person changed {knob}; held until step {self.holds[knob]}"
        frozen = self._frozen()
        if frozen is not None:
            return frozen
        tuned = self._tuned(knob, None) if self.mode == "ai_auto" else None
        if tuned is not None:
            return tuned
        if self.guard is not None and self.mode == "ai_auto":
            return self._judging()
        settle = self.fired.get("ai_settle", -1)
        if self.mode == "ai_auto" and settle > self.step_now:
            return (f"the model's last change settles until step {settle} (one change at a "
                    f"time; no guard judges it: {self._key_name} had no values)")  # fmt: skip
        until = self.fired.get("ai", -1)
        if until > self.step_now:
            return f"the guard undid the model's last change; no knob changes until step {until}"
        return None

    def _ai_finish(self) -> None:
        """The run ended: the measured effect of its automatic changes, kept for the next
        runs of the project (``hotcb.ai.state.json``)."""
        from .ai import impact

        ai = self.ai
        assert ai is not None
        if ai.summarized:
            return
        judged = self._resolve("key") or self._resolve("train") or self.key
        points = list(self.series.get(judged) or ())
        notes: list[str] = []
        for c in self.changes:
            if c.get("source") not in ("ai", "autopilot", "tune") or not c.get("changes"):
                continue
            m = impact(points, int(c["step"]), settle=int(c.get("settle") or 0),
                       direction=self.direction)  # fmt: skip
            if m is None:
                continue
            what = ", ".join(f"{c['module']}.{k} {_shown(v)}" for k, v in c["changes"].items())
            notes.append(f"{what} at step {c['step']} ({c['source']}): {judged} "
                         f"{m['before']} -> {m['after']} ({m['verdict']})")  # fmt: skip
        finite = [v for _, v in points if math.isfinite(v)]
        if finite:
            notes.insert(0, f"final {judged} {finite[-1]:.4g} at step {self.step_now}")
        ai.finish(notes[:2])

    # ------------------------------------------------------------------ the guard
    def _judging(self) -> str:
        """What the guard is doing about the last automatic change (the reason a further
        automatic knob change waits)."""
        guard = self.guard
        assert guard is not None
        if guard.get("undo_cmd_id"):
            return (f"the guard is undoing the change of step {guard['step']}; waiting for "
                    "the undo to land")  # fmt: skip
        return (f"the guard is still judging the change of step {guard['step']} "
                f"(until step {int(guard.get('from', guard['step']))} and "
                f"{self.ruleset.guard_window} more values of {self._key_name})")  # fmt: skip

    @property
    def _key_name(self) -> str:
        """The key metric under the name the run logs it (``eval_loss`` for ``val_loss``)."""
        return self._resolve("key") or self.key

    def _key_values(self, after: int | None, finite: bool = True) -> list[float]:
        points = self.series.get(self._key_name) or ()
        return [v for s, v in points
                if (after is None or s > after) and (not finite or math.isfinite(v))]  # fmt: skip

    def _check_guard(self, out: list[dict[str, Any]]) -> None:
        """Judge the last automatic change once its window of key-metric values is in: keep
        it, or undo it. An undo keeps the guard armed until it is in the ledger, so the next
        automatic change starts from the value the undo put back."""
        guard = self.guard
        assert guard is not None
        if guard.get("undo_cmd_id"):
            return  # judged; its undo has not landed yet
        moved = guard.get("superseded")
        if moved is not None:
            self.guard = None
            out.append(self._record({
                "kind": "action", "rule": guard["rule"], "step": self.step_now,
                "state": "not_judged", "cmd_ids": [guard["cmd_id"]],
                "reason": f"{', '.join(moved['keys'])} changed since the change of step "
                          f"{guard['step']} (#{moved.get('seq')} {moved.get('what')} by "
                          f"{moved.get('source')} at step {moved.get('step')}): the guard "
                          "leaves it alone instead of undoing over it",
            }))  # fmt: skip
            return
        missed = guard.get("not_applied")
        if missed is not None:
            self.guard = None
            why = missed.get("error") or "no reason given"
            out.append(self._record({
                "kind": "action", "rule": guard["rule"], "step": self.step_now,
                "state": "not_applied", "cmd_ids": [guard["cmd_id"]],
                "reason": f"the run did not apply the change of step {guard['step']} "
                          f"(#{missed.get('seq')} {missed.get('decision')}: {why}); "
                          "nothing for the guard to judge",
            }))  # fmt: skip
            return
        window = self.ruleset.guard_window
        after = self._key_values(after=int(guard.get("from", guard["step"])), finite=False)
        if len(after) < window:
            return
        self.guard = None
        after = after[:window]
        before = float(guard["before"])
        record: dict[str, Any] = {
            "kind": "guard", "rule": guard["rule"], "step": self.step_now, "cmd_id": guard["cmd_id"],
            "metric": self._key_name, "before": before,
        }  # fmt: skip
        bad = sum(not math.isfinite(v) for v in after)
        if bad:  # NaN/inf after the change: as bad as it gets
            record.update(after=None, worse_by=None, non_finite=bad)
            what = f"{bad} of {window} {self._key_name} values non-finite"
        else:
            level = statistics.median(after)
            sign = 1.0 if self.direction == "minimize" else -1.0
            worse = sign * (level - before) / max(abs(before), 1e-12)
            record.update(after=level, worse_by=worse)
            what = f"{before:.4g} -> {level:.4g} ({worse:+.0%})"
        if bad or record["worse_by"] > self.ruleset.guard_tolerance:
            reason = (f"autopilot guard: {self._key_name} {what} after rule {guard['rule']}; "
                      "undoing it")  # fmt: skip
            record["undo_cmd_id"] = self.client.send(
                "control", "undo", params={"cmd_id": guard["cmd_id"]}, reason=reason
            )
            record["reason"] = reason
            self.guard = {**guard, "undo_cmd_id": record["undo_cmd_id"]}
            rule = next((r for r in self.ruleset.rules if r.id == guard["rule"]), None)
            if rule is not None:  # and leave that rule alone for a while
                self.fired[rule.id] = self.step_now + rule.cooldown_steps
            elif guard["rule"] == "ai" and self.ai is not None:  # the model too
                self.fired["ai"] = self.step_now + 2 * self.ai.config.settle_steps
        out.append(self._record(record))

    # ------------------------------------------------------------------ records, state
    def _new_id(self) -> str:
        ident = f"A{self.next_id}"
        self.next_id += 1
        return ident

    def _record(self, record: dict[str, Any]) -> dict[str, Any]:
        record.setdefault("mode", self.mode)
        return _append(self.run_dir, record)

    def set_rule(self, rule_id: str, enabled: bool) -> None:
        """Switch a rule on or off (kept across restarts)."""
        if rule_id not in {r.id for r in self.ruleset.rules}:
            raise KeyError(f"no rule {rule_id!r}")
        (self.disabled.discard if enabled else self.disabled.add)(rule_id)
        self._save()

    def _save(self) -> None:
        state = {
            "v": 1, "mode": self.mode, "key_metric": self.key, "direction": self.direction,
            "key_logged_as": self._resolve("key"),
            "logged": sorted(self.logged | set(self.series)),
            "rules": [r.to_dict() for r in self.ruleset.rules], "rules_path": self.ruleset.path,
            "cursors": self.view.cursors, "step": self.step_now,
            "series": {k: list(v) for k, v in self.series.items()},
            "fired": self.fired, "seen": self.seen, "holds": self.holds,
            "disabled": sorted(self.disabled), "guard": self.guard, "next_id": self.next_id,
            "changes": list(self.changes), "detections": list(self.detections),
            "ai": None if self.ai is None else {k: v for k, v in self.ai.status().items()},
            "updated": time.time(),
        }  # fmt: skip
        jsonl.write_json_atomic(self._state_path, state)

    @property
    def ended(self) -> bool:
        """The training process closed the run (``hotcb.run.json`` says ``ended``), or it is
        gone without closing it (a crash, kill -9; told only on the host it ran on)."""
        meta = self.view.meta()
        return isinstance(meta.get("ended"), dict) or process_alive(meta) is False

    @property
    def closed(self) -> bool:
        """The training process closed the run (``hotcb.run.json`` says ``ended``)."""
        return isinstance(self.view.meta().get("ended"), dict)

    @property
    def crashed(self) -> bool:
        """The training process is gone and did not close the run."""
        meta = self.view.meta()
        return not isinstance(meta.get("ended"), dict) and process_alive(meta) is False


def _after_last_id(run_dir: str) -> int:
    """The number after the highest proposal id (``A7``) in the run's records (1: none)."""
    last = 0
    for rec in jsonl.iter_records(os.path.join(run_dir, RECORDS)):
        ident = rec.get("id") if rec.get("kind") == "proposal" else None
        if isinstance(ident, str) and ident[:1] == "A" and ident[1:].isdecimal():
            last = max(last, int(ident[1:]))
    return last + 1


def _pending_on(action: Action, waiting: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The first ``waiting`` proposal that acts where ``action`` would: on the same knob, or
    the same run control. Accepted both, the two would compound (two lr cuts, two undos)."""
    for p in waiting:
        asked = p.get("action") or {}
        other = Action(str(asked.get("name")), dict(asked.get("params") or {}))
        if other.knob == action.knob and (action.knob is not None or other.name == action.name):
            return p
    return None


def _still_pending(p: Mapping[str, Any], action: Action) -> str:
    """Why a rule's ``action`` is not proposed while proposal ``p`` waits on the same knob."""
    by = "the model" if p.get("rule") == "ai" else f"rule {p.get('rule')}"
    return (f"proposal {p['id']} ({action_text(p.get('action'))}, {by}) still waits on "
            f"{action.knob or action.name}: one proposal per knob waits at a time; accept or "
            f"reject it first ('hotcb autopilot accept {p['id']}')")  # fmt: skip


def _asked(action: Action) -> dict[str, Any]:
    """An action the model asked for, in its reply's own shape (``{"action", "params"}``), as
    the format check records what it rejects: every ``asked`` in the records reads alike."""
    return {"action": action.name, "params": dict(action.params)}


def _shown(change: Any) -> str:
    """A ledger change ``{"old", "new"}`` as ``0.01 -> 0.005``."""
    if isinstance(change, Mapping) and "new" in change:
        return f"{_num(change.get('old'))} -> {_num(change['new'])}"
    return f"= {change}"


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _change(e: Mapping[str, Any], settle: int) -> dict[str, Any]:
    """A ledger entry as the model's context lists it."""
    out = {k: e.get(k) for k in ("step", "source", "module", "op", "changes", "cmd_id")}
    out["reason"] = str(e.get("reason") or "")[:160]
    out["settle"] = settle
    return out


def _live(run_dir: str, last_lr: tuple[int, float] | None) -> dict[str, float]:
    """Values the run logged more recently than it published its actuators: an lr that a
    schedule (or the loop itself) moved shows in the ``lr`` metric at once. ``last_lr``: the
    last ``(step, lr)`` logged, read from the metrics file when not given."""
    if last_lr is None:
        for rec in reversed(jsonl.read_last(os.path.join(run_dir, "hotcb.metrics.jsonl"), 50)):
            value = (rec.get("metrics") or {}).get("lr")
            if isinstance(value, (int, float)) and isinstance(rec.get("step"), int):
                last_lr = (rec["step"], float(value))
                break
    if last_lr is None or not math.isfinite(last_lr[1]):
        return {}
    published = jsonl.read_json(os.path.join(run_dir, "hotcb.actuators.json"), {}) or {}
    step = published.get("step")
    if isinstance(step, int) and step > last_lr[0]:
        return {}
    return {"opt.lr": last_lr[1]}


def _columns(points: Iterable[tuple[int, float]]) -> tuple[list[int], list[float]]:
    steps: list[int] = []
    values: list[float] = []
    for s, v in points:
        steps.append(s)
        values.append(v)
    return steps, values


# ---------------------------------------------------------------------------------- actions
def send_action(
    client: HotClient,
    action: Action,
    reason: str,
    live: Mapping[str, float] | None = None,
    undo_of: str | None = None,
) -> list[str]:
    """Send ``action`` as commands (bounds checked again here); their ids. A multiplier
    applies to ``live[knob]`` when given (the value the run last logged), else to the value
    the run last published in ``hotcb.actuators.json``."""
    from .rules import check_action

    problems = check_action(action.name, action.params)
    if problems:
        raise ValueError("; ".join(problems))
    p = action.params
    if action.name == "undo":  # of the newest change, pinned: one landing meanwhile is not it
        of = undo_target(client.run_dir)["cmd_id"]
        if undo_of is not None and of != undo_of:  # (a proposal's: made for another change)
            raise ValueError(f"the change it was proposed to take back ({undo_of}) is no longer "
                             f"the newest automatic change in force ({of} is): reject it")  # fmt: skip
        return [client.send("control", "undo", params={"cmd_id": of}, reason=reason)]
    if action.name in ("pause", "checkpoint", "stop"):
        return [client.send("control", action.name, reason=reason)]
    if action.name == "loss_weight_set":
        return [client.set_params("loss", {p["key"]: p["value"]}, reason=reason)]
    module, key = {"lr_mult": ("opt", "lr"), "wd_mult": ("opt", "weight_decay"),
                   "loss_weight_mult": ("loss", str(p.get("key")))}[action.name]  # fmt: skip
    current = (live or {}).get(f"{module}.{key}")
    if current is None:
        current = RunView(client.run_dir).actuators().get(f"{module}.{key}", {}).get("current")
    if not isinstance(current, (int, float)) or isinstance(current, bool):
        raise ValueError(f"the run publishes no numeric {module}.{key} to change")
    if current == 0:
        raise ValueError(f"{module}.{key} is 0: multiplying it changes nothing")
    # relative to what it read: if the value moved before the command lands (a tuner's
    # roll-back, a person), the run applies the factor to the value then in force
    target = current * float(p["factor"])
    return [client.set_params(module, {key: target}, reason=reason, relative_to={key: current})]


def undo_target(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The change an automatic ``undo`` takes back: the run's newest change still in force
    (undone by nothing, not a tuner's trial it rolled back), with ``knobs`` (``opt.lr``, …)
    and ``by`` (who made it). ``ValueError`` when there is none, or when it is not an
    automatic change: the autopilot takes back only its own kind (a person's change wins; the
    tuner judges its own trials). A plain ``control undo`` took back a person's ``set`` made
    a moment before, whoever had made the last change."""
    live: dict[str, dict[str, Any]] = {}  # cmd_id -> the newest applied entry of it
    made_by: dict[str, str] = {}  # cmd_id -> its first source (a resume's re-apply: the same)
    trial_of: dict[Any, str] = {}  # a tuner's trial -> its mutation's cmd_id
    for e in jsonl.iter_records(os.path.join(os.fspath(run_dir), LEDGER)):
        cmd_id, tune = e.get("cmd_id"), e.get("tune")
        trial = tune.get("trial") if isinstance(tune, Mapping) else None
        if e.get("decision") != "applied" or not isinstance(cmd_id, str):
            continue
        if e.get("undo_of") is not None:  # in part (set_since): the rest is still in force
            if not e.get("set_since"):
                live.pop(str(e["undo_of"]), None)
            continue
        if e.get("module") == "tune" and e.get("op") in ("rollback", "void"):
            live.pop(trial_of.get(trial, ""), None)
            continue
        if not isinstance(e.get("changes"), dict) or not e["changes"] or _never_undone(e):
            continue
        made_by.setdefault(cmd_id, str(e.get("source") or "cli"))
        if e.get("source") == "ramp":
            continue  # a ramp's steps are its command's; the command is what an undo names
        if trial is not None:
            trial_of[trial] = cmd_id
        live.pop(cmd_id, None)  # newest last
        live[cmd_id] = e
    if not live:
        raise ValueError("no change in force to undo")
    cmd_id, e = next(reversed(live.items()))
    by = made_by[cmd_id]
    module = str(e.get("module"))
    what = f"{e.get('module')} {e.get('op')} {cmd_id} at step {e.get('step')}"
    if by == "tune":
        raise ValueError(f"the last change is the online tuner's ({what}): it keeps or rolls "
                         "back its own trials")  # fmt: skip
    if by not in _NOT_A_PERSON:
        raise ValueError(f"the last change is a person's ({what}, {by}): the autopilot takes "
                         "back only automatic changes ('hotcb undo' takes it back)")  # fmt: skip
    return {"cmd_id": cmd_id, "by": by, "step": e.get("step"),
            "knobs": [f"{module}.{k}" for k in e["changes"]]}  # fmt: skip


# ---------------------------------------------------------------------------------- proposals
def proposals(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every proposal of the run with its current state (pending, accepted, rejected): a
    renewed one (its rule detected again while it waited) as last written."""
    out: dict[str, dict[str, Any]] = {}
    for rec in jsonl.iter_records(os.path.join(os.fspath(run_dir), RECORDS)):
        if rec.get("kind") == "proposal" and isinstance(rec.get("id"), str):
            out[rec["id"]] = dict(rec)
        elif rec.get("kind") == "decision" and rec.get("id") in out:
            out[rec["id"]].update(state=rec.get("state"), cmd_ids=rec.get("cmd_ids"))
            if rec.get("state") in ("superseded", "expired"):
                out[rec["id"]]["reason"] = rec.get("reason")
    return list(out.values())


def frozen_reason(run_dir: str) -> str | None:
    """Why no knob change would take: the run is frozen (``prod``, ``replay``), and ignores
    every change of a knob that does not come from its recipe; None when it is not."""
    doc = jsonl.read_json(os.path.join(run_dir, FREEZE), None)
    mode = doc.get("mode") if isinstance(doc, dict) else None
    if not isinstance(mode, str) or mode == "off":
        return None
    return (f"the run is frozen ({mode}): it ignores knob changes "
            "('hotcb freeze --mode off' lifts the freeze)")  # fmt: skip


def decide(
    run_dir: str | os.PathLike[str], proposal_id: str, accept: bool, *, by: str = "cli"
) -> dict[str, Any]:
    """Accept (send its action now) or reject a pending proposal; the decision record.

    One decision at a time per run, across processes (a lock file): the CLI and the dashboard
    accepting the same proposal at once send its action once, and the second is told it is no
    longer pending."""
    run_dir = os.path.abspath(os.fspath(run_dir))
    with _locked(run_dir):
        return _decide(run_dir, proposal_id, accept, by)


def gone_life(run_dir: str, proposal: Mapping[str, Any]) -> str | None:
    """Where ``proposal`` was made, when that is a life the run has left: before the life that
    goes on started afresh, or after the checkpoint it resumed from (``resumed_from`` in
    ``hotcb.run.json``). None when it is this life's, or came with its checkpoint. An accept
    must not wait for the autopilot to see the steps go back: none may run (``hotcb
    autopilot`` ends with the trainer it watched)."""
    made, step = proposal.get("wall_time"), proposal.get("step")
    meta = jsonl.read_json(os.path.join(run_dir, RUN_META), {}) or {}
    life = life_started(meta)
    if life is None or not isinstance(made, (int, float)) or made >= life:
        return None
    resumed = meta.get("resumed_from")
    at = resumed.get("step") if isinstance(resumed, Mapping) else None
    if type(at) is not int:
        return (
            f"at step {step} in a life the run left: it started again since, not from a checkpoint"
        )
    if type(step) is int and step > at:
        return (
            f"at step {step} in a life the run left: it resumed since from its checkpoint "
            f"at step {at}"
        )
    return None


def _decide(run_dir: str, proposal_id: str, accept: bool, by: str) -> dict[str, Any]:
    found: Mapping[str, Any] | None = next(  # "a3" is A3: ids differ by their number only
        (p for p in proposals(run_dir) if str(p["id"]).upper() == proposal_id.upper()), None
    )
    if found is not None:
        proposal_id = str(found["id"])
    if found is None:
        pending = [p["id"] for p in proposals(run_dir) if p["state"] == "pending"]
        raise KeyError(f"no proposal {proposal_id!r}; pending: {', '.join(pending) or 'none'}")
    if found["state"] != "pending":
        why = f" ({found['reason']})" if found.get("reason") else ""
        raise ValueError(f"proposal {proposal_id} is {found['state']}, not pending{why}")
    record: dict[str, Any] = {"kind": "decision", "id": proposal_id, "rule": found["rule"],
                              "by": by, "state": "accepted" if accept else "rejected"}  # fmt: skip
    if accept:
        over = HotClient(run_dir, create=False).run_over()
        if over is not None:  # nothing would apply its action (a new run proposes afresh)
            raise ValueError(f"the run {over}: proposal {proposal_id} ended with it; nothing "
                             "would apply it (reject it to clear it)")  # fmt: skip
        gone = gone_life(run_dir, found)
        if gone is not None:  # the autopilot expires it once it sees the steps go back
            raise ValueError(f"proposal {proposal_id} was made {gone}: what it saw is not in "
                             "this run (reject it to clear it)")  # fmt: skip
        action = Action(found["action"]["name"], dict(found["action"].get("params") or {}))
        frozen = frozen_reason(run_dir) if action.knob is not None else None
        if frozen is not None:  # the run would ignore it: it waits, for an unfreeze
            raise ValueError(f"{frozen}; proposal {proposal_id} stays pending (until its "
                             "rule no longer sees its trouble): accept it once the run takes "
                             "changes again")  # fmt: skip
        reason = f"autopilot rule {found['rule']} ({proposal_id}, accepted by {by}): " + str(
            found.get("describe", "")
        )
        client = HotClient(run_dir, source=str(found.get("source") or "autopilot"), create=False)
        record["cmd_ids"] = send_action(client, action, reason[:2000], live=_live(run_dir, None),
                                        undo_of=found.get("undo_of"))  # fmt: skip
    return _append(run_dir, record)
