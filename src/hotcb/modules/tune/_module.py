"""TuneModule: the online tuner, a kernel module (command module ``tune``).

The run is cut into segments (N steps, or K observations of the objective). At each boundary,
on the leader rank only, the tuner scores the segment that closes, tells Optuna that score,
keeps the mutation or rolls the actuators back to their exact previous values, and asks for the
next mutation. Its mutations and roll-backs are ordinary commands (``tune mutate`` /
``tune rollback``, ``source: "tune"``) appended to the commands file, so they reach every rank
at the same step, land in the ledger with the trial and the score, and can be undone.

``hotcb.tune.json`` (written by the leader after every change of state) is what ``hotcb tune
status`` and the dashboard read.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import statistics
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ... import jsonl
from ..._trials import since_text
from ...errors import CommandError, HotcbError
from ...metrics import VAL_LOSS_NAMES
from ...ops import HotOp, make_command
from ...runfiles import TUNE, RunPaths, confine_path, redact_url
from .._base import OpResult
from . import _snapshot
from ._bracket import Bracket, bracket_ended
from ._score import NONFINITE_SCORE, Segment, expected_level, noise, score_segment
from ._space import (
    MODES,
    Knob,
    RecipeError,
    Settings,
    bracket_knob,
    load_recipe,
    parse_settings,
)

if TYPE_CHECKING:
    from .._base import ModuleHost
    from ._study import Study, Worker

__all__ = ["STATE_FILE", "TuneModule"]

log = logging.getLogger("hotcb.tune")

Env = Mapping[str, Any]
STATE_FILE = TUNE
RECIPE_FILE = "hotcb.tune.yaml"
_KEEP_ROWS = 50  # trials and proposals kept in the state file
_HISTORY = 4  # segment levels kept for the trend
_UNMOVED_PER_BOUNDARY = 3  # trials in a row that move no knob before a baseline segment
#: Settings a ``tune enable`` on a tuner that is on lists in its ledger entry when it changes them
_SHOWN = ("objective", "direction", "segment_steps", "segment_evals", "start", "restore", "risk",
          "threshold", "startup_trials", "total_steps", "abort", "seed", "sync")  # fmt: skip
_OPENING = "no trial while the study was opening"  # the head of the note tune status shows
_NO_KEEP = "no trial can be kept: the bar to keep one is above +1, the most a lower loss scores"
#: A level whose standard error is this share of it or more is not sure to be above zero
_NEAR_ZERO = 0.25
_FROZEN = "the run's freeze mode is"  # the head of the note while the tuner holds back
#: The training loss under the names loops log it (bare loops and HF: ``loss``; Lightning's
#: ``self.log("train_loss", ...)``): the blow-up watch, and the objective's stand-in.
_TRAIN_LOSSES = ("loss", "train_loss", "train/loss")
#: An objective the run logs under another name: scored under that one, said in ``tune status``.
_ALIASED = {VAL_LOSS_NAMES[0]: VAL_LOSS_NAMES, **{n: _TRAIN_LOSSES for n in _TRAIN_LOSSES}}
_TRAIN_WATCH = 50  # training losses before a mutation: the blow-up watch's "before"
_VAL_EVENT = "val_epoch_end"
_NOTHING_SCORED = "nothing is scored: --objective picks another"


#: A dialect's default database driver (a URL without ``+driver``): its package, and a URL
#: that names another.
_DRIVERS = {"postgresql": ("psycopg2-binary", "postgresql+psycopg://…"),
            "mysql": ("mysqlclient", "mysql+pymysql://…")}  # fmt: skip


def _driver_hint(url: str, exc: BaseException) -> str:
    """What to install when SQLAlchemy could not import a storage URL's database driver
    (Optuna says only "Failed to import DB access module")."""
    chain = (exc, exc.__cause__, exc.__context__)
    if not any(isinstance(e, ImportError) for e in chain) and "import DB access" not in str(exc):
        return ""
    dialect, _, driver = url.partition("://")[0].partition("+")
    if driver:
        return f" (the training's environment lacks {driver}: pip install {driver})"
    if dialect not in _DRIVERS:
        return ""
    package, other = _DRIVERS[dialect]
    return (f" (the training's environment lacks the {dialect} driver: pip install {package}, "
            f"or name another in the URL, e.g. {other})")  # fmt: skip


def _blow_up_line(before: Iterable[float], abort: float) -> float | None:
    """Where a trial's training loss (the median of 5 steps) reads as a blow-up: ``abort``
    worse than the median of the steps before the change, and above the highest of them.
    Per-batch losses are heavy-tailed: against the median alone, the unlucky batches of a
    harmless trial (a Lightning run on digits: 0.198 after lr x0.92, against 0.084) read as a
    blow-up, and the trial is told the worst score."""
    values = [v for v in before if math.isfinite(v)]
    if len(values) < 5:  # too little to draw a line (a NaN step is not a level)
        return None
    return max((1 + abort) * statistics.median(values), max(values))


def _space_line(space: Any) -> str:
    """A search space in a line: ``opt.lr mult [0.25, 4], opt.weight_decay mult [0.5, 2]``."""
    return ", ".join(
        f"{k.get('module')}.{k.get('key')} {k.get('mode')} [{k.get('low'):g}, {k.get('high'):g}]"
        for k in space or ()
        if isinstance(k, Mapping)
    )


def _positive(value: Any) -> float | None:
    """``value`` as a float when it is a number above zero (a knob a factor can scale)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return float(value) if ok else None


def _number(value: Any) -> float | None:
    """A metric as a float: a number or a 0-d tensor (Lightning's ``callback_metrics``)."""
    if value is None or isinstance(value, (bool, str)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of many values
        return None


def _flat(values: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {f"{m}.{k}": v for m, kv in values.items() for k, v in kv.items()}


def _next_proposal_id(state: Mapping[str, Any]) -> int:
    """The number of the next proposal after those of a saved state file (``P7`` → 8)."""
    ids = [int(p["id"][1:]) for p in state.get("proposals") or ()
           if isinstance(p, dict) and re.fullmatch(r"P\d+", str(p.get("id")))]  # fmt: skip
    saved = state.get("next_proposal")
    return max([*ids, (saved if isinstance(saved, int) else 1) - 1]) + 1


class TuneModule:
    """The ``tune`` module (see the module docstring)."""

    def __init__(self, host: ModuleHost) -> None:
        self.host = host
        self.settings = Settings(mode="active")
        self.mode = "off"
        self.study: Study | None = None
        self._worker: Worker | None = None  # the thread that talks to the study
        self.asking: dict[str, Any] | None = None  # a trial being asked for in the background
        # trials dropped while being asked for, until the ask answers: (its future, why, study)
        self._dropped: list[tuple[Any, str, Any]] = []
        self.opening: Any = None  # the study being opened in the background (a Future)
        # while a tuner that was on opens the study of a new storage or study name: the one it
        # was in (or the Future still opening it), to go on in if the new one cannot be opened
        self.standby: tuple[str | None, str | None, Any] | None = None
        # the `tune enable` command this tuner runs under: its failure to open the study is
        # ledgered under it, and `tune enable --wait` waits for the study on it
        self.enable_cmd: str | None = None
        self.objective_used = self.settings.objective
        self.seen = False
        # the objective came with a validation event: on other steps its value is a repeat
        # (Lightning's callback_metrics keep the last val_loss), not a new observation
        self.val_objective = False
        self.phase = "off"
        self.segment = Segment(0, [], [])
        self.enabled_at = 0
        self.last_value_step: int | None = None  # the objective's last value (a gap check)
        self.history: list[tuple[float, float]] = []
        self.trial: dict[str, Any] | None = None  # the open trial
        self.waiting: dict[str, Any] | None = None  # a submitted mutate/rollback not yet applied
        self.proposals: list[dict[str, Any]] = []
        self.trials: list[dict[str, Any]] = []
        self.counts = {"segments": 0, "kept": 0, "rolled_back": 0, "proposed": 0, "accepted": 0,
                       "rejected": 0, "expired": 0, "failed": 0}  # fmt: skip
        self.cooldowns: dict[str, int] = {}
        self.streak = 0
        self.backoff = 0
        self.best: dict[str, Any] | None = None
        self.warnings: list[str] = []
        self.next_proposal = 1
        self.asked = 0
        self._snapshot: tuple[Any, dict[str, Any] | None] | None = None  # restore: state
        # (trial, the host's command mark when its mutation was applied), on every rank: a
        # command at the trial's own step came before or after it (in memory: a new process
        # orders by step)
        self._mark: tuple[Any, int] | None = None
        #: the command mark when the segment began (None after a restart: its step counts)
        self._segment_mark: int | None = None
        self._names: set[str] = set()  # metric names seen before the objective (a typo's hint)
        self.bracket: Bracket | None = None  # start: bracket, under way (the leader's plan)
        self.bracket_done: dict[str, Any] | None = None  # how the last one ended (tune status)
        # per study ("name@url"): what other runs had put in it when this run first opened it
        self.joined: dict[str, Any] = {}
        # a bracket asked for while a trial was open: it begins once the trial's roll-back has
        # had its baseline segment (the next boundary)
        self.bracket_wanted = False
        self._bracket_begins = False  # the last enable begins a bracket (every rank knows)
        # the bracket's copies of the weights, on every rank: "start" (the round's), "best"
        self._bracket_snaps: dict[str, Any] = {}
        # the last training losses (objective != loss): a bounded window, no copy per step
        self.train_recent: deque[float] = deque(maxlen=_TRAIN_WATCH)
        self._watch_before: list[float] = []  # train_recent when the open trial started
        # the segment that closed last: the step of its boundary and its last values of the
        # objective. A trial's early-abort line is drawn from them and the values since,
        # whenever its mutation lands (Optuna's answer, a person's accept: steps later)
        self.closed: tuple[int, list[float]] = (-1, [])
        self.trend_noise: float | None = None  # relative miss of the trend on baseline segments
        self.total_steps: int | None = None  # the run's length, when known: no trial at its end
        self.train_name: str | None = None  # the training loss seen while the objective was not
        self.last_step: int | None = None  # the last step seen: where the run's end cut a trial
        self._unmoved_streak = 0  # trials in a row that moved nothing (asked for at once)

    @property
    def wants_events(self) -> bool:  # off, until the trials dropped while asked for are told
        return (self.mode != "off" or bool(self._dropped)) and self.host.is_leader

    # ------------------------------------------------------------------ the module protocol
    def apply(self, op: HotOp, env: Env) -> OpResult:
        handler = getattr(self, f"_op_{op.op}", None)
        if handler is None:
            return OpResult("rejected", error=f"tune has no op {op.op!r}")
        if op.op not in ("bracket", "enable") and "enabled" in self._bracket_snaps:
            self._bracket_snaps = {}  # an enable's copy that no bracket took (none began)
        result: OpResult = handler(op, env)
        if self.host.is_leader:
            self._save()
        return result

    def on_start(self, env: Env) -> None:
        """A restarted run (no checkpoint) whose tuner was on: turn it on again with the same
        settings; the study continues and this run's trials left open are told FAIL. Not after
        a resume from a checkpoint that had no tuner in it (the kernel starts this module only
        when the checkpoint did not): the enable after it comes back at its own step."""
        if self.host.resumed:
            return
        state = jsonl.read_json(self._path, None)
        if not isinstance(state, dict):  # unreadable (emptied, torn) or, the ledger says, deleted
            what = ("unreadable (emptied or torn)" if os.path.exists(self._path) else
                    "missing (deleted?), and the ledger says the tuner was on")  # fmt: skip
            error = (f"could not turn the tuner on again: {self._path} is {what}; 'hotcb tune "
                     "enable' with the same settings goes on in its study")  # fmt: skip
            if self.host.is_leader:
                log.warning("hotcb: %s", error)
                self.host.record({"module": "tune", "op": "enable", "decision": "failed",
                                  "error": error})  # fmt: skip
            return
        if state.get("mode") in (None, "off"):
            return
        saved = dict(state.get("settings") or {})
        storage = saved.get("storage")
        if isinstance(storage, str) and ":***@" in storage:  # the state file's is redacted
            saved["storage"] = self._storage_sent(state.get("enable_cmd")) or storage
        try:
            settings = parse_settings({**saved, "mode": state["mode"], "space": saved.get("space")})
            if settings.study is None and isinstance(state.get("study"), str):
                # the study it was in: the default name is the run directory's, and a run
                # moved (mv runs/a runs/b) would start a study of its own, trials from 0
                settings = replace(settings, study=state["study"])
            joined = state.get("study_joined")
            if isinstance(joined, dict):  # when the run first joined, not the restart
                url, name = self._where(settings)
                self.joined = {f"{name}@{redact_url(url)}": joined}
            self._enable(settings, int(env["step"]), self._horizon(env))
            # proposal ids go on from the last life's: a "P1" a person still holds from before
            # the crash must not accept the new life's first proposal, another move
            self.next_proposal = _next_proposal_id(state)
            cmd = state.get("enable_cmd")  # the command these settings came from
            self.enable_cmd = cmd if isinstance(cmd, str) else None
        except Exception as exc:
            self.host.record({"module": "tune", "op": "enable", "decision": "failed",
                              "error": f"could not turn the tuner on again: {exc}"})  # fmt: skip
            return
        self.host.record({"module": "tune", "op": "enable", "source": "resume",
                          "decision": "applied", "changes": {"mode": {"old": "off",
                          "new": self.mode}}})  # fmt: skip
        if self.host.is_leader:
            self._save()

    def _storage_sent(self, cmd_id: Any) -> str | None:
        """The storage URL, password and all, of the ``tune enable`` command ``cmd_id``, from
        the commands file (the state file keeps it redacted)."""
        if not isinstance(cmd_id, str):
            return None
        mark = cmd_id.encode()
        for rec in jsonl.iter_records(self.host.paths.commands, keep=lambda raw: mark in raw):
            if rec.get("cmd_id") == cmd_id:
                storage = (rec.get("params") or {}).get("storage")
                return storage if isinstance(storage, str) else None
        return None

    def on_events(self, events: Sequence[str], env: Env) -> None:
        step = self.last_step = int(env["step"])
        if (self._dropped and self._collect_dropped()) or self.mode == "off":
            return  # (listed for events until the next command refreshes the list)
        if self.opening is not None and self.opening.done():
            # collected as soon as it answers: a storage that cannot be opened turns the
            # tuner off now (ledgered), not two baseline segments later
            self._study_ready()
            self._save()
            if self.mode == "off":
                return
        metrics = env.get("metrics")
        if metrics:
            self._observe(step, metrics, _VAL_EVENT in events)
        if not self.seen:
            self._missing(step, metrics or {}, _VAL_EVENT in events)
        if self.asking is not None:
            if self.asking["future"].done():
                self._asked(step)
                self._save()
            return
        if self.waiting is not None:
            if step - self.waiting["since"] > self._patience:
                self._give_up(step)
            return
        if self.phase in ("baseline", "trial", "backoff", "bracket") and (
            self._at_boundary(step) or self._harmful() or self._train_blew_up()
        ):
            # the run's length as it is now: `hotcb extend` moves it in a bare loop that keeps
            # passing the max_steps it started with
            self.total_steps = self._horizon(env) or self.total_steps
            self._boundary(step)
            self._save()

    def close(self) -> None:
        """The run ends (``kernel.close()``: its loop finished, or was stopped): nothing it
        opened is left RUNNING in the study, where a shared study would keep it open for good.
        The open trial, a mutation not applied yet, a trial being asked for and the pending
        proposals are told FAIL, each with its reason in the ledger and ``tune status``; then
        what is queued for the study is written. A kill -9 skips this: the next life's resume
        or restart fails what it left open (``Study.fail_open``)."""
        if self.mode != "off" and self.host.is_leader:
            self._end_of_run()
            self._save()
        self._drain()
        if self._dropped:  # every ask has answered now
            self._dropped_answered()
            self._save()
            self._drain()

    def _end_of_run(self) -> None:
        """:meth:`close`'s part on the leader of a tuner that is on."""
        ended = self.asking is not None or self.trial is not None
        self._drop_asking("the run ended while the trial was asked for")
        waiting = self.waiting
        if waiting is not None and waiting.get("kind") == "mutate":
            self.waiting, ended = None, True
            self._void_unjudged(
                waiting.get("trial"), "the run ended before its mutation was applied"
            )
        # left pending in the state file: `tune status` and `tune proposals` show a finished
        # run's as `ended`, and an accept is refused with the run's end as the reason
        self._expire_proposals("the run ended before a person answered it", keep=True)
        trial, self.trial = self.trial, None
        if trial is not None:
            self._void_unjudged(trial["number"], "the run ended during the trial")
        if self.bracket is not None:  # a run shorter than its arms (its length not known)
            why = "the run ended during the bracket"
            self.bracket_done = bracket_ended(self.bracket.to_dict(), self.last_step or 0, why)
            self.bracket, ended = None, True
            self.host.record({"module": "tune", "op": "bracket", "source": "tune",
                              "decision": "noop", "tune": {"bracket": {"settle": True,
                              "reason": why}}})  # fmt: skip
            self._warn(f"start bracket: {why} (give the run's length: --total-steps N, or "
                       "max_steps in env)")  # fmt: skip
        self._bracket_snaps = {}
        if ended:  # a checkpoint saved after the end resumes in a baseline segment
            self._start_segment(self.last_step if self.last_step is not None else -1, "baseline")

    def _void_unjudged(self, number: Any, why: str) -> None:
        """A trial left unjudged (the run's end, a disable, an enable again): FAIL, in its row
        and the ledger."""
        reason = f"{why}: not judged"
        self._fail(number, reason)
        self._row(number).update(decision="failed", end_step=self.last_step,
                                 detail={"reason": reason})  # fmt: skip
        self.host.record({"module": "tune", "op": "void", "source": "tune", "decision": "applied",
                          "tune": {"trial": number, "reason": reason}})  # fmt: skip

    def undo(self, entry: Mapping[str, Any], env: Env) -> OpResult:
        if entry.get("op") == "rollback":  # a trial's change back, with no trial to judge it
            return OpResult("rejected", error="a tuner roll-back is not undone: it would bring "
                            "back a trial's change that no trial judges; set the value you "
                            "want instead (hotcb set KEY=VALUE)")  # fmt: skip
        if entry.get("op") not in ("mutate", "bracket"):
            return OpResult("rejected", error=f"tune {entry.get('op')} is not undone: send the "
                            "mode you want (hotcb tune enable|disable)")  # fmt: skip
        changes = entry.get("changes") or {}
        # a knob a later command (or a later kept trial) set again: nothing of this one there
        since = self.host.set_since(entry, changes)
        if since and not set(changes) - set(since):
            return OpResult("noop", error=since_text(since), extra={"set_since": since})
        values, scaled = self._undo_values(entry, {k: v for k, v in changes.items()
                                                   if k not in since}, env)  # fmt: skip
        if not values:
            return OpResult("rejected", error="this tune entry changed no value to undo")
        trial = (entry.get("tune") or {}).get("trial")
        if self.trial is not None and self.trial["number"] == trial:
            self._void_undone(trial, int(env["step"]))
        result = self._actuate(values, env)
        if scaled:
            result.extra["on_schedule"] = scaled
        if since:
            result.extra["set_since"] = since
            result.error = since_text(since)
        if result.decision == "applied":
            self._undone_keep(trial, int(env["step"]))
        if self.host.is_leader:
            self._save()
        return result

    def _undo_values(
        self, entry: Mapping[str, Any], changes: Mapping[str, Any], env: Env
    ) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
        """What undoing ``changes`` of a tuner ``entry`` sets, by module, and the ratios taken
        back from values an LR scheduler moved since."""
        modules = (entry.get("tune") or {}).get("modules") or {}
        values: dict[str, dict[str, Any]] = {}
        scaled: dict[str, float] = {}
        for key, change in changes.items():
            if isinstance(change, Mapping) and change.get("old") is not None:
                module = modules.get(key, "opt")
                # an lr its scheduler moved since: the change's ratio goes, not the number
                value, factor = self.host.value_before(module, key, change["old"],
                                                       change.get("new"), env)  # fmt: skip
                if value is None:  # at zero on its schedule: it stays there
                    continue
                values.setdefault(module, {})[key] = value
                if factor is not None:
                    scaled[key] = factor
        return values, scaled

    def _void_undone(self, trial: Any, step: int) -> None:
        """The open trial's mutation undone: it cannot be judged."""
        reason = "its mutation was undone (control undo): not judged"
        self._close_trial(None, "failed", reason=reason)
        self._row(trial).update(end_step=step, detail={"reason": reason})
        if self.host.is_leader:  # said in the ledger and tune status, like any void
            self.host.record({"module": "tune", "op": "void", "source": "tune",
                              "decision": "applied",
                              "tune": {"trial": trial, "reason": reason}})  # fmt: skip
        self._start_segment(step, "baseline")

    def _undone_keep(self, number: Any, step: int) -> None:
        """A kept trial's change undone (``control undo``): its row says so, and ``counts``
        how many (``kept`` stays the tuner's verdicts; ``tune export`` leaves it out)."""
        row = self._row_of(number)
        if row is None or row.get("decision") != "kept" or row.get("undone") is not None:
            return
        row["undone"] = step
        self.counts["undone"] = self.counts.get("undone", 0) + 1

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (a copy: a checkpoint saved later, by an asynchronous checkpoint writer
        say, must not pick up the segments and trials that came after it)."""
        url, name = self._where(self.settings)
        return copy.deepcopy({
            "settings": self.settings.to_dict(),
            "mode": self.mode,
            "objective_used": self.objective_used,
            "seen": self.seen,
            "val_objective": self.val_objective,
            "phase": "baseline" if self.phase == "asking" else self.phase,
            "segment": {
                "start": self.segment.start,
                "steps": self.segment.steps,
                "values": self.segment.values,
            },
            "enabled_at": self.enabled_at,
            "history": self.history,
            "closed": {"step": self.closed[0], "values": self.closed[1]},
            "trial": self.trial,
            "waiting": self.waiting,
            "proposals": self.proposals,
            "trials": self.trials,
            "counts": self.counts,
            "cooldowns": self.cooldowns,
            "streak": self.streak,
            "backoff": self.backoff,
            "best": self.best,
            "warnings": self.warnings,
            "next_proposal": self.next_proposal,
            "asked": self.asked,
            "trend_noise": self.trend_noise,
            "total_steps": self.total_steps,
            "bracket": self._bracket_state(),
            "bracket_done": self.bracket_done,
            "bracket_wanted": self.bracket_wanted,
            # where the study is: a branch (another run directory) resumes in the same one
            "study": {"url": url, "name": name, "run_dir": self.host.run_dir},
            "joined": self.joined,
        })  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Come back from a checkpoint: the open trial goes on (its segment is re-observed from
        the checkpoint's step), trials this run opened after the checkpoint are told FAIL."""
        mode = state.get("mode", "off")
        if mode == "off":
            self.mode, self.phase = "off", "off"
            return
        saved = dict(state.get("settings") or {})
        settings = parse_settings({**saved, "mode": mode, "space": saved.get("space")})
        settings = self._branch_study(settings, state.get("study"))
        self.settings, self.mode = settings, mode
        self.objective_used = state.get("objective_used") or settings.objective
        self.seen = bool(state.get("seen", True))
        self.val_objective = bool(state.get("val_objective", False))
        self.phase = state.get("phase", "baseline")
        seg = state.get("segment") or {}
        self.segment = Segment(int(seg.get("start", 0)), list(seg.get("steps") or []),
                               list(seg.get("values") or []))  # fmt: skip
        self._segment_mark = None  # marks are this process's: its steps count
        self.enabled_at = int(state.get("enabled_at") or 0)
        self.history = [(float(h[0]), float(h[1])) for h in state.get("history") or []]
        closed = state.get("closed") or {}
        self.closed = (int(closed.get("step", -1)), [float(v) for v in closed.get("values") or []])
        self.trial = state.get("trial")
        self.proposals = [dict(p) for p in state.get("proposals") or []]
        self.trials = [dict(r) for r in state.get("trials") or []]
        self.counts.update(state.get("counts") or {})
        self.cooldowns = dict(state.get("cooldowns") or {})
        self.streak, self.backoff = int(state.get("streak", 0)), int(state.get("backoff", 0))
        self.best, self.warnings = state.get("best"), list(state.get("warnings") or [])
        # ids go on from the life the resume replaced too (its state file): a "P1" a person
        # still holds from it must not accept this life's first proposal, another move
        left = jsonl.read_json(self._path, None)
        self.next_proposal = max(int(state.get("next_proposal", 1)),
                                 _next_proposal_id(left) if isinstance(left, dict) else 1)  # fmt: skip
        self.asked = int(state.get("asked", 0))
        self.trend_noise = state.get("trend_noise")
        self.total_steps = state.get("total_steps") or self.settings.total_steps
        self.bracket_wanted = bool(state.get("bracket_wanted"))
        self.joined = dict(state.get("joined") or {})
        done = state.get("bracket_done")
        self.bracket_done = dict(done) if isinstance(done, Mapping) else None
        waiting = state.get("waiting")
        if self.host.is_leader:
            self._drain()
            self.asking = None
            self.study = self._open_study(settings)
            keep = self.trial["number"] if self.trial else None
            if waiting and waiting.get("kind") == "rollback":
                keep = None
            # judged before the checkpoint, the score maybe still queued when the process died
            judged = {r["trial"]: r["score"] for r in self.trials
                      if r.get("decision") in ("kept", "rolled_back")
                      and isinstance(r.get("score"), (int, float))
                      and math.isfinite(r["score"])}  # fmt: skip
            # a mutation decided but not applied by the checkpoint: its trial is this run's no
            # more (the life that died applied it, and maybe judged it: replaced as later ones)
            unapplied = (
                waiting.get("trial") if waiting and waiting.get("kind") == "mutate" else None
            )
            known = [r["trial"] for r in self.trials
                     if isinstance(r.get("trial"), int) and r["trial"] != unapplied]  # fmt: skip
            replaced = self.study.finished_after(max(known, default=-1))
            # a pending proposal the checkpoint holds is still offered: its trial stays open
            offered = {p["trial"] for p in self.proposals
                       if p.get("state") == "pending" and isinstance(p.get("trial"), int)}  # fmt: skip
            failed = self.study.fail_open(keep={*offered, *([keep] if keep is not None else [])},
                                          judged=judged)  # fmt: skip
            self._list_replaced(replaced)
            if keep is not None:
                self._judged_before(keep)
            for number in failed:  # opened after the checkpoint by the life that ended
                reason = ("opened after the checkpoint this run resumed from, by a process "
                          "that ended before judging it: told FAIL")  # fmt: skip
                self._row(number).update(decision="failed", detail={"reason": reason})
                # in the ledger too, as a restart without a checkpoint says it (_left_open)
                self.host.record({"module": "tune", "op": "void", "source": "tune",
                                  "decision": "applied", "tune": {"trial": number,
                                  "reason": reason}})  # fmt: skip
            self.counts["failed"] += len(failed)
            if waiting and waiting.get("kind") == "rollback":
                # the checkpoint holds the mutated values: roll them back again
                keys = ("trial", "values", "applied", "score", "needed", "reason")
                self._submit("rollback", {k: waiting.get(k) for k in keys}, self.segment.start)
            elif waiting:  # a mutation decided but not applied by the checkpoint: start over
                self.phase = "baseline"
                self.waiting = None
            cut = state.get("bracket")
            if isinstance(cut, Mapping) and self.waiting is None:
                # the copies of the weights did not survive the restart: the run goes on from
                # the checkpoint's weights, at the lr the round started from
                self.phase = "baseline"
                held = cut.get("in_force")
                ratio = held[1] / held[0] if isinstance(held, list) and len(held) == 2 and all(
                    isinstance(v, (int, float)) and v > 0 for v in held) else None  # fmt: skip
                why = "a restart from a checkpoint cut the bracket short"
                self.bracket_done = bracket_ended(cut, self.segment.start, why)
                self._settle_bracket(cut.get("values"), self.segment.start, why, ratio)
            self._save()  # `tune status` shows this life from its first step
        else:
            self.waiting = None

    def _list_replaced(self, replaced: list[Any]) -> None:
        """Trials that a life this resume replaced opened and finished after the checkpoint.
        The study keeps their real scores (the sampler learned from them); their changes are
        in no life of this run any more: ``tune status`` lists them as ``replaced``, with what
        that life decided (``was``), so the study's numbering has no unexplained gap."""
        for t in replaced:
            attrs = t.user_attrs.get("hotcb") or {}
            decided = attrs.get("decision") or ("failed" if t.value is None else "judged")
            changes = {k: [None, v] for k, v in (attrs.get("values") or {}).items()}
            self._row(t.number).update(step=attrs.get("step"), end_step=attrs.get("end_step"),
                                       score=t.value, decision="replaced", was=decided,
                                       changes=changes)  # fmt: skip

    def _judged_before(self, number: int) -> None:
        """The trial open at the checkpoint, which the life this resume replaced judged (or
        failed) already: this life judges it again and acts on its own score, but the study
        keeps the first answer (nothing is told twice). Its row says so (``study_score``), so
        ``tune status`` and the study do not silently disagree."""
        assert self.study is not None
        found = self.study.trial(number)
        if found is None or not found.state.is_finished():
            return
        if found.value is None:  # that life ended (or voided it) before judging it
            why = (found.user_attrs.get("hotcb") or {}).get("reason") or "not judged"
            note = (f"open at the checkpoint and told FAIL by the life the resume replaced "
                    f"({why}): the study keeps FAIL; this life judges the trial again and acts "
                    "on its own score")  # fmt: skip
        else:
            note = ("open at the checkpoint and judged by the life the resume replaced: the "
                    "study keeps that score; this life judged the trial again and acted on its "
                    "own")  # fmt: skip
        self._row(number).update(study_score=found.value, note=note)

    # ------------------------------------------------------------------ ops
    def _op_enable(self, op: HotOp, env: Env) -> OpResult:
        try:
            settings = self._settings(op.params, op.source)
        except (RecipeError, HotcbError, OSError) as exc:
            return OpResult("rejected", error=str(exc))
        old, before, where = self.mode, self.settings.to_dict(), self._where(self.settings)
        if old != "off" and settings.to_dict() == before:
            # the tuner as it is (`hotcb launch --resume-from … --tune active` sends its enable
            # again over the checkpoint's tuner): nothing to restart, the open trial goes on
            return OpResult("noop", error=f"the tuner runs in {old} mode with these settings "
                            "already: nothing to change",
                            extra={"tune": self._public_settings()})  # fmt: skip
        try:
            self._enable(settings, int(env["step"]), self._horizon(env))
        except RuntimeError as exc:  # optuna missing, a storage that cannot be opened
            return OpResult("rejected", error=str(exc))
        self.enable_cmd = op.cmd_id
        if self.mode == "active" and self._bracket_begins:
            # on every rank: the bracket's arms start from the weights as they are now, not a
            # step or two later when its first command lands (from 10x too high each step at
            # the bad lr does damage that no later lr repairs)
            snap = _snapshot.take(env)
            if snap is not None:
                self._bracket_snaps = {"enabled": snap, "enabled_at": int(env["step"])}
        changes: dict[str, dict[str, Any]] = {}
        if old != self.mode:  # (a mode that stays is not a change to list)
            changes["mode"] = {"old": old, "new": self.mode}
        if old != "off":  # what else the enable changed on a tuner that was on
            new = self.settings.to_dict()
            # a segment counted in evaluations has no length in steps to show
            unused = "segment_steps" if new.get("segment_evals") is not None else None
            changes.update({k: {"old": before.get(k), "new": new.get(k)} for k in _SHOWN
                            if before.get(k) != new.get(k) and k != unused})  # fmt: skip
            if before.get("space") != new.get("space"):  # a new recipe's knobs, as a line each
                changes["space"] = {"old": _space_line(before.get("space")),
                                    "new": _space_line(new.get("space"))}  # fmt: skip
            now = self._where(self.settings)  # the study moved: where from, where to
            for i, key in enumerate(("storage", "study")):
                if where[i] != now[i]:
                    changes[key] = {"old": redact_url(where[i]) if i == 0 else where[i],
                                    "new": redact_url(now[i]) if i == 0 else now[i]}  # fmt: skip
        return OpResult("applied", changes=changes, extra={"tune": self._public_settings()})

    def _op_disable(self, op: HotOp, env: Env) -> OpResult:
        """Off. A trial still open is not judged (Optuna hears FAIL) and its change is taken
        back, values only: what the tuner leaves in force is what it judged and kept, which
        is also what ``tune export`` replays. A knob a command set since it began keeps the
        command's value."""
        old, trial, step = self.mode, self.trial, int(env["step"])
        self._drop_asking("tuner disabled")
        self.opening = None
        self._snapshot = None  # the weights trained on: a disable throws no steps away
        self._expire_proposals("tuner disabled")
        self.mode, self.phase, self.waiting = "off", "off", None
        if self.bracket is not None:  # the arm's lr goes back; what it trained stays
            self._settle_bracket(self._bracket_values(), step, "the tuner was disabled",
                                 self._back_to_base())  # fmt: skip
            self.phase = "off"
        if trial is not None:
            reason = "the tuner was disabled during the trial: not judged"
            self._close_trial(None, "failed", reason=reason)
            self._row(trial["number"]).update(end_step=step, detail={"reason": reason})
            touched = self._touched(trial["number"], int(trial["step"]))
            self._take_back(trial, touched, step, reason=reason)
            self.phase = "off"  # its roll-back is on its way; the tuner proposes nothing more
        return OpResult("applied", changes={"mode": {"old": old, "new": "off"}})

    def _op_accept(self, op: HotOp, env: Env) -> OpResult:
        return self._decide(op, env, accept=True)

    def _op_reject(self, op: HotOp, env: Env) -> OpResult:
        return self._decide(op, env, accept=False)

    def _decide(self, op: HotOp, env: Env, *, accept: bool) -> OpResult:
        """A person's answer to a proposal (decided on the leader, which holds them)."""
        if not self.host.is_leader:
            return OpResult("applied")
        found = self._pending(op.params.get("id"))
        if isinstance(found, str):
            return OpResult("rejected", error=found)
        if accept:
            found["state"] = "accepted"
            self.counts["accepted"] = self.counts.get("accepted", 0) + 1
            self._submit("mutate", {"trial": found["trial"], "values": found["values"],
                                    "moves": found.get("moves") or {}},
                         int(env["step"]))  # fmt: skip
        else:
            found["state"] = "rejected"
            self.counts["rejected"] += 1  # not a failure: Optuna hears FAIL all the same
            self._tell(found["trial"], None, {"reason": "rejected by a person"})
            self._row(found["trial"])["decision"] = "rejected"
        return OpResult("applied", extra={"tune": {"proposal": found["id"],
                                                    "trial": found["trial"]}})  # fmt: skip

    def _op_mutate(self, op: HotOp, env: Env) -> OpResult:
        if op.source == "tune" and self.mode == "off":  # written just before a disable landed
            return OpResult("rejected", error="the tuner was disabled before this trial began")
        values = self._values(op.params.get("values"))
        if isinstance(values, str):
            return OpResult("rejected", error=values)
        if op.source == "tune" and self.host.stop_requested:
            return self._not_after_stop(op, int(env["step"]))
        since = op.params.get("since")
        moved = (
            self.host.commanded_since(since) if type(since) is int and op.source == "tune" else []
        )
        if moved:
            return self._overtaken(op, moved, int(env["step"]))
        self._apply_moves(values, op.params.get("moves"), env)
        trial = op.params.get("trial")
        if self.settings.restore == "state" and op.source == "tune" and self.mode != "off":
            self._snapshot = (trial, _snapshot.take(env))  # on every rank, before the change
        result = self._actuate(values, env)
        result.extra["tune"] = {"trial": trial, "modules": self._modules(values)}
        self._mark = (trial, self.host.command_mark())
        mine = self.waiting is not None and self.waiting["cmd_id"] == op.cmd_id
        if mine and self.waiting is not None:
            self.waiting = None
            if result.decision != "applied":
                self._fail(trial, f"the mutation was not applied: {result.error}")
                self._row(trial)["decision"] = "failed"
                self._start_segment(int(env["step"]), "baseline")
                return result
            before = {m: {k: (result.changes or {}).get(k, {}).get("old") for k in kv}
                      for m, kv in values.items()}  # fmt: skip
            made = result.changes or {}
            applied = {m: {k: made.get(k, {}).get("new", v) for k, v in kv.items()}
                       for m, kv in values.items()}  # fmt: skip
            line = _blow_up_line(self.train_recent, self.settings.abort)
            self.trial = {"number": trial, "step": int(env["step"]), "before": before,
                          "after": values, "applied": applied, "cmd_id": op.cmd_id,
                          "train_line": line, "objective_line": self._per_step_line()}  # fmt: skip
            self._watch_before = list(self.train_recent)
            row = self._row(trial)
            row.update(
                step=int(env["step"]),
                decision="open",
                changes={k: [_flat(before).get(k), v] for k, v in _flat(values).items()},
            )
            self._start_segment(int(env["step"]), "trial")
        return result

    def _not_after_stop(self, op: HotOp, step: int) -> OpResult:
        """A trial's mutation read after a stop (a person's stop written before it, or under
        torch.distributed a signal's, in the same batch): the run ends at this step, so
        nothing would judge it. Optuna hears FAIL; nothing changes."""
        why = "the run stopped before this trial's mutation was applied: not judged"
        trial = op.params.get("trial")
        if self.waiting is not None and self.waiting["cmd_id"] == op.cmd_id:
            self.waiting = None
            self._fail(trial, why)
            self._row(trial).update(decision="failed", detail={"reason": why})
            self._start_segment(step, "baseline")
        return OpResult("noop", error=why, extra={"tune": {"trial": trial}})

    def _overtaken(self, op: HotOp, moved: Sequence[tuple[str, str]], step: int) -> OpResult:
        """A trial's mutation read after a command that changed a knob since the trial was
        decided (a person's ``set`` read in the same poll, just before it): the trend it would
        be judged against is gone, and it would scale the person's value. Not applied, on every
        rank alike; Optuna hears FAIL, and the trend is made again from the segments after."""
        knobs = ", ".join(f"{m}.{k}" for m, k in moved)
        why = (f"a command changed {knobs} after this trial was decided: not applied, the "
               "command's value stays and the next trial waits for the trend after it")  # fmt: skip
        trial = op.params.get("trial")
        if self.waiting is not None and self.waiting["cmd_id"] == op.cmd_id:
            self.waiting = None
            self._fail(trial, why)
            self._row(trial).update(decision="failed", detail={"reason": why})
            self.history = []
            self._start_segment(step, "baseline")
        return OpResult("noop", error=why, extra={"tune": {"trial": trial}})

    def _back_on_schedule(
        self, values: dict[str, dict[str, Any]], applied: Any, env: Env
    ) -> tuple[dict[str, float], list[str]]:
        """A knob that a schedule moved during the trial (lr under an LR scheduler) is not set
        back to its value at the trial's start, which the schedule has left behind: the trial's
        ratio is taken back (``now × before / applied``), which puts the run on its schedule.
        The factors, by key, and the keys a schedule has at zero (left there); ``values`` is
        changed in place."""
        scaled: dict[str, float] = {}
        zero: list[str] = []
        if not isinstance(applied, Mapping):
            return scaled, zero
        for module, kv in list(values.items()):
            for key, old in list(kv.items()):
                new = (applied.get(module) or {}).get(key)
                kv[key], factor = self.host.value_before(module, key, old, new, env)
                if kv[key] is None:  # at zero on its schedule (a cosine's end): it stays there
                    del kv[key]
                    zero.append(key)
                elif factor is not None:
                    scaled[key] = factor
            if not kv:
                del values[module]
        return scaled, zero

    def _schedule_notes(
        self, result: OpResult, trial: Any, scaled: dict[str, float], zero: list[str]
    ) -> None:
        """A roll-back's ledger notes: the ratios that put knobs back on their schedule, the
        knobs a schedule has at zero (left there), and a refusal (the trial's values stay)."""
        if result.decision != "applied":
            self._warn(f"the roll-back of trial {trial} was {result.decision} "
                       f"({result.error}): its values stay in force")  # fmt: skip
        if scaled:
            result.extra["on_schedule"] = scaled
        if zero:
            result.extra["at_zero"] = zero

    def _apply_moves(self, values: dict[str, dict[str, Any]], moves: Any, env: Env) -> None:
        """The targets of a trial's relative moves (``mult``/``delta``), from the values read
        live now, in place of those computed when it was asked for."""
        if not isinstance(moves, Mapping):
            return
        for name, x in moves.items():
            knob = self._knob(str(name))
            if knob is None or knob.mode == "set" or not isinstance(x, (int, float)):
                continue
            live = self.host.read_actuator(knob.module, knob.key, env)
            if isinstance(live, (int, float)) and not isinstance(live, bool):
                values.setdefault(knob.module, {})[knob.key] = self._target(knob, live, x)

    def _op_rollback(self, op: HotOp, env: Env) -> OpResult:
        rescale = op.params.get("rescale")
        raw = op.params.get("values")
        values = {} if rescale and not raw else self._values(raw)
        if isinstance(values, str):
            return OpResult("rejected", error=values)
        values, left = self._not_commanded(values, op.params.get("trial"), op.params.get("since"))
        scaled, zero = self._back_on_schedule(values, op.params.get("applied"), env)
        rescale, later = self._not_since(rescale, op.params.get("mark"))
        rescaled = self._rescale(rescale, values, env)
        result = self._actuate(values, env)
        self._schedule_notes(result, op.params.get("trial"), scaled, zero)
        restored: list[str] = []
        snap, self._snapshot = self._snapshot, None
        if snap is not None and snap[0] == op.params.get("trial") and snap[1] is not None:
            try:  # after the values: the ledger's changes show the mutated -> previous values
                restored = _snapshot.restore(snap[1], env)
            except Exception as exc:  # a state that no longer fits: values only, and say so
                self.warnings.append(f"could not restore the model's state: {exc!r}")
        result.extra["tune"] = {"trial": op.params.get("trial"), "score": op.params.get("score"),
                                "modules": self._modules(values), "restored": restored}  # fmt: skip
        for key in ("needed", "reason"):  # the bar a judged trial missed; why one was not
            if op.params.get(key) is not None:
                result.extra["tune"][key] = op.params[key]
        said: list[str] = [result.extra["tune"].get("reason") or ""]
        if rescaled:  # a command's relative change stays; the trial's own factor goes
            result.extra["tune"]["rescaled"] = rescaled
            said += [f"{name}: the trial's x{1 / f:.3g} taken back from a command's relative "
                     "change" for name, f in rescaled.items()]  # fmt: skip
        left = [name for name in [*left, *later] if name not in rescaled]
        if left:  # a person's (or the autopilot's) value, set after the trial was judged
            result.extra["tune"]["left"] = left
            said.append(f"{', '.join(left)} left as a command set "
                        f"{'them' if len(left) > 1 else 'it'} after the trial began")  # fmt: skip
        if any(said[1:]):
            result.extra["tune"]["reason"] = "; ".join(filter(None, said))
        if self.waiting is not None and self.waiting["cmd_id"] == op.cmd_id:
            self.waiting = None
            # the trial's training losses were made with values no longer in force: the watch
            # goes back to what it saw before the trial (a blown-up trial's losses would raise
            # the next trial's line and hide its blow-up)
            self.train_recent = deque(self._watch_before, maxlen=_TRAIN_WATCH)
            phase = "off" if self.mode == "off" else "backoff" if self.backoff else "baseline"
            self._start_segment(int(env["step"]), phase)
        return result

    def _op_bracket(self, op: HotOp, env: Env) -> OpResult:
        """One step of ``start: bracket`` (:mod:`._bracket`), on every rank: the weights an arm
        starts from (:meth:`_bracket_weights`), then the arm's value. ``settle`` ends it."""
        p = op.params
        values = self._values(p.get("values"))
        if isinstance(values, str):
            return OpResult("rejected", error=values)
        self._bracket_move(values, p.get("ratio"), env)
        restored, trouble = self._bracket_weights(p, env)
        result = self._actuate(values, env)
        keys = ("round", "arm", "factor", "settle", "levels", "winner", "reason")
        result.extra["tune"] = {"bracket": {k: p[k] for k in keys if p.get(k) is not None},
                                "modules": self._modules(values), "restored": restored}  # fmt: skip
        if trouble:
            result.extra["tune"]["bracket"]["trouble"] = trouble
        back = bool(p.get("settle") and p.get("from") == "first" and restored)
        if back:  # the run trains on from the weights the bracket began with
            result.extra["tune"]["bracket"]["back_to_start"] = True
        if self.waiting is None or self.waiting["cmd_id"] != op.cmd_id:
            return result
        self.waiting = None
        step = int(env["step"])
        if p.get("settle") or trouble or self.bracket is None or result.decision != "applied":
            if trouble:
                self._warn(f"{trouble}; the tuner starts with baseline segments instead")
            if self.bracket is not None:
                self.bracket_done = bracket_ended(self.bracket.to_dict(), step)
                if back:
                    self.bracket_done["back_to_start"] = True
            elif self.bracket_done is not None and p.get("reason"):  # cut short: it ends here
                self.bracket_done["ended_at"] = step  # (after a restart: in this life)
            self.bracket = None
            self._start_segment(step, "off" if self.mode == "off" else "baseline")
        else:
            self.bracket.arm_step = step + 1
            knob = self.bracket.knob  # the value this arm really began at (tune status)
            self.bracket.arm.at = _number(values.get(knob.module, {}).get(knob.key))
            planned = _number(p.get("planned"))
            base = _number(p.get("base"))
            if planned and base:
                self.bracket.in_force = (planned, base)
            self._start_segment(step, "bracket")
        return result

    def _bracket_move(self, values: dict[str, dict[str, Any]], ratio: Any, env: Env) -> None:
        """A bracket's move as a ratio of the lr in force when it lands (``values`` in place):
        under an LR scheduler the arms move the schedule, as a trial's ``mult`` does, and
        never set the value it had when the round began over the schedule's."""
        knob = bracket_knob(self.settings.space)
        if knob is None or not isinstance(ratio, (int, float)) or isinstance(ratio, bool):
            return
        live = self.host.read_actuator(knob.module, knob.key, env)
        if isinstance(live, (int, float)) and not isinstance(live, bool) and live > 0:
            values.setdefault(knob.module, {})[knob.key] = self._target(knob, live, float(ratio))

    def _bracket_weights(self, p: Mapping[str, Any], env: Env) -> tuple[list[str], str | None]:
        """Keep the closing arm's end when it is the best so far (``save``); go back to the
        round's start or to the best arm's end (``from``); copy the weights a new round starts
        from (``snapshot``). What was restored, and what went wrong."""
        snaps, start_from, save = self._bracket_snaps, p.get("from"), bool(p.get("save"))
        restored: list[str] = []
        trouble = None
        try:
            enabled = snaps.pop("enabled", None)
            if enabled is not None and snaps.pop("enabled_at", None) == p.get("since"):
                # the first arm: from the weights the enable copied, a step or two ago
                restored = _snapshot.restore(enabled, env)
                self._bracket_snaps = {"start": enabled, "first": enabled}
                return restored, None
            if save and start_from == "start":
                snaps["best"] = _snapshot.take(env)
            # from the best arm's end: the closing arm is it when it is saved
            source = snaps.get("start") if start_from == "start" else (
                snaps.get("best") if start_from == "best" and not save else
                snaps.get("first") if start_from == "first" else None)  # fmt: skip
            if source is not None:
                restored = _snapshot.restore(source, env)
            if p.get("settle"):
                snaps.clear()
            elif p.get("snapshot"):
                start = _snapshot.take(env)  # the first round's is kept for the settle (the
                # bracket's start again when it starts again here: its first arm went unscored)
                first = start if start_from == "here" else snaps.get("first", start)
                snaps = self._bracket_snaps = {"start": start, "first": first}
                if snaps["start"] is None:
                    trouble = ("start: bracket needs the model in env (kernel.apply(env) with "
                               "model=…) to train its arms from the same weights")  # fmt: skip
        except Exception as exc:  # a state that no longer fits: no bracket
            trouble = f"could not copy or restore the model's state: {exc!r}"
        if trouble:
            self._bracket_snaps = {}
        return restored, trouble

    def _begin_bracket(self, step: int) -> None:
        knob = bracket_knob(self.settings.space)
        base = self.host.read_actuator(knob.module, knob.key) if knob is not None else None
        if (
            knob is None
            or not isinstance(base, (int, float))
            or isinstance(base, bool)
            or base <= 0
        ):
            self._warn("start: bracket needs the optimizer's lr as a positive actuator; the "
                       "tuner starts with baseline segments instead")  # fmt: skip
            return
        s = self.settings
        if (
            s.segment_evals is None
            and self.total_steps
            and step + 10 * s.segment_steps > self.total_steps
        ):
            self._warn(f"start: bracket needs up to 9 segments of arms and one more; the run has "
                       f"{self.total_steps - step} steps left: the tuner starts with baseline "
                       "segments instead")  # fmt: skip
            return
        knob = knob.scaled(s.risk)
        self.bracket = Bracket(knob, float(base), lambda f, v: self._target(knob, v, f), self._sign)
        self._submit_arm(step, save=False, start_from="here", snapshot=True, ratio=1.0,
                         since=step)  # fmt: skip

    def _bracket_values(self, value: float | None = None) -> dict[str, dict[str, float]]:
        b = self.bracket
        assert b is not None
        return {b.knob.module: {b.knob.key: b.base if value is None else value}}

    def _submit_arm(
        self,
        step: int,
        *,
        save: bool,
        start_from: str,
        snapshot: bool,
        ratio: float | None,
        reason: str | None = None,
        since: int | None = None,
    ) -> None:
        """The next arm's command. ``since``: the step the bracket was asked for (its first arm
        starts from the weights an enable at that step copied, when one did)."""
        b = self.bracket
        assert b is not None
        arm = b.arm
        params = {"round": b.round, "arm": b.index, "factor": arm.factor,
                  "values": self._bracket_values(arm.value), "planned": arm.value,
                  "base": b.base, "ratio": ratio, "save": save, "from": start_from,
                  "snapshot": snapshot}  # fmt: skip
        if since is not None:
            params["since"] = since
        if reason:
            params["reason"] = reason
        self._submit("bracket", params, step)

    def _back_to_base(self) -> float | None:
        """The ratio that takes the arm in force back to its round's base (None: none is)."""
        b = self.bracket
        return b.in_force[1] / b.in_force[0] if b is not None and b.in_force else None

    def _bracket_boundary(self, seg: Segment, step: int) -> None:
        """An arm's end: the next arm, a new round, or the end of the bracket."""
        b = self.bracket
        assert b is not None
        touched = self.host.commanded_since(b.arm_step)
        if touched or self._frozen():
            names = ", ".join(f"{m}.{k}" for m, k in touched)
            why = f"{names} set by a command" if touched else "the run was frozen"
            live = self.host.read_actuator(b.knob.module, b.knob.key)
            self._settle_bracket(self._bracket_values(live if touched else None), step,
                                 f"{why} during the bracket: it ends here",
                                 None if touched else self._back_to_base(),
                                 commanded=bool(touched))  # fmt: skip
            return
        if not seg.values and not self._unscored_arm(b, step):
            return
        level = seg.level() if seg.values else math.nan
        ended, round_ = b.arm, b.round
        spread = noise(seg.values, level) if math.isfinite(level) else 0.0
        after, save = b.close(level, spread)
        # where the next op goes, as a ratio of the lr in force (which a schedule may move)
        dest = b.arm if after == "arm" else b.arms[0] if after == "round" else b.winner
        ratio = dest.value / ended.value
        live = self.host.read_actuator(
            b.knob.module, b.knob.key
        )  # what it trained at, schedule and all
        value = (
            live if isinstance(live, (int, float)) and not isinstance(live, bool) else ended.value
        )
        self.host.record({"module": "tune", "op": "arm", "source": "tune", "decision": "applied",
                          "tune": {"bracket": {"round": round_, "factor": ended.factor,
                                   "value": value, "level": level, "noise": spread,
                                   "best": save}}})  # fmt: skip
        if after == "arm":
            self._submit_arm(step, save=save, start_from="start", snapshot=False, ratio=ratio)
        elif after == "round":
            self._submit_arm(step, save=save, start_from="best", snapshot=True, ratio=ratio)
        else:
            winner = b.winner
            # a move won: back to the weights the bracket began with, at the lr it found. The
            # rounds' winners trained at lrs a later round found too high (from 10x too high, 50
            # steps at lr x 0.25 cost as much as the bracket gained: docs/tune.md)
            first = b.rounds[0]["base"] if b.rounds else b.base
            moved = not math.isclose(winner.value, first, rel_tol=1e-9)
            params = {"settle": True, "values": self._bracket_values(winner.value), "save": save,
                      "from": "first" if moved else "best", "ratio": ratio,
                      "winner": {"factor": winner.factor, "value": winner.value,
                                 "level": winner.level, "began": first}}  # fmt: skip
            self._submit("bracket", params, step)

    def _unscored_arm(self, b: Bracket, step: int) -> bool:
        """An arm that saw no value of the objective. Before any value came (the objective is
        not logged): the training loss stands in from now and the bracket starts again from
        here. Otherwise the bracket ends (an arm shorter than the objective's interval). True
        when the arm is to be scored all the same (it blew up: its loss is not finite)."""
        name, wanted = self.train_name, self.objective_used
        if not self.seen and name is not None and wanted not in _TRAIN_LOSSES and (
                b.round, b.index) == (1, 0):  # fmt: skip
            self._fall_back(name, "in the bracket's first arm")
            b.arm_step = step + 1
            why = (f"{wanted!r} was not logged in the first arm: {name!r} stands in, and the "
                   "bracket starts again")  # fmt: skip
            self._submit_arm(step, save=False, start_from="here", snapshot=True, ratio=1.0,
                             reason=why)  # fmt: skip
            return False
        length = step + 1 - self.segment.start
        self._settle_bracket(self._bracket_values(), step,
                             f"no value of {wanted!r} came in an arm's {length} steps (log it "
                             "more often, or count segments in its values: --segment-evals)",
                             self._back_to_base())  # fmt: skip
        return False

    def _settle_bracket(
        self,
        values: Any,
        step: int,
        reason: str,
        ratio: float | None = None,
        *,
        commanded: bool = False,
    ) -> None:
        """End the bracket early (a command, a freeze, a disable, a restart): the weights stay
        as they are, the knob goes to ``values`` (or the lr in force × ``ratio``); the copies
        are dropped on every rank. ``commanded``: ``values`` are what a person's command set
        (not a change of the tuner's: ``tune export`` leaves it out)."""
        if self.bracket is not None:
            self.bracket_done = bracket_ended(self.bracket.to_dict(), step, reason)
        self.bracket = None
        self._warn(f"start bracket: {reason}")
        if not self.host.is_leader or not isinstance(values, Mapping):
            return
        params = {
            "settle": True,
            "from": "here",
            "values": dict(values),
            "ratio": ratio,
            "reason": reason,
        }
        if commanded:
            params["commanded"] = True
        self._submit("bracket", params, step)

    def _bracket_state(self) -> dict[str, Any] | None:
        """The open bracket (``values``: the knob as the round began), or None."""
        if self.bracket is None:
            return None
        return {**self.bracket.to_dict(), "values": self._bracket_values()}

    # ------------------------------------------------------------------ enabling
    @property
    def _path(self) -> str:
        return self.host.paths.tune

    def _settings(self, params: Mapping[str, Any], source: str | None = None) -> Settings:
        """An enable's settings: its params over its recipe (``recipe``, else the run's
        ``hotcb.tune.yaml``) over the defaults. On a tuner that is on, what the command does not
        name (its mode included) stays as it is: ``tune enable --mode suggest`` changes the
        mode, not the objective, the segment or the study."""
        given = {k: v for k, v in params.items() if v is not None}
        recipe: dict[str, Any] = {}
        path = given.get("recipe")
        if path is not None:
            if not isinstance(path, str):
                raise RecipeError("tune enable", [f"recipe: expected a path, got {path!r}"])
            recipe = load_recipe(confine_path(path, self.host.run_dir, self.host.allowed_roots,
                                              what="recipe"))  # fmt: skip
        elif self.mode == "off" and os.path.exists(os.path.join(self.host.run_dir, RECIPE_FILE)):
            path = RECIPE_FILE
            recipe = load_recipe(os.path.join(self.host.run_dir, RECIPE_FILE))
        if source == "dashboard":
            self._no_storage_from_the_dashboard(given, recipe, path)
        if self.mode != "off":
            given = {**self._in_force(given, recipe), **given}
        settings = parse_settings(given, recipe)
        if "space" in given or "space" in recipe:
            self._check_knobs(settings, path if "space" not in given else None)
        return settings

    def _check_knobs(self, settings: Settings, path: str | None) -> None:
        """A space's knobs the run does not have as numeric actuators: refused, each named
        (with its line in the recipe ``path``), as ``tune enable`` refuses them on a run that
        has published its actuators. Sent before the run started (``hotcb launch
        --tune-recipe``), a recipe with a knob the run lacks was taken, and the tuner never
        tuned that knob with no word in the ledger."""
        from ...client import _raw_space, _space_problems

        lines: dict[str, int] = {}
        if path is not None:
            lines = _raw_space(confine_path(path, self.host.run_dir, self.host.allowed_roots,
                                            what="recipe"))[1]  # fmt: skip
        items = [{"key": k.key, "module": k.module} for k in settings.space]
        problems = _space_problems(items, self.host.describe_actuators(), lines)
        if problems:
            raise RecipeError(path or "space", problems)

    def _no_storage_from_the_dashboard(
        self, given: Mapping[str, Any], recipe: Mapping[str, Any], path: str | None
    ) -> None:
        """An enable sent from the dashboard moves the study to no storage but the one in
        force: the server refuses a ``storage`` in its params (a URL can name any file or
        database), and neither may the recipe it names or the run's ``hotcb.tune.yaml`` bring
        one in."""
        for storage, where in ((given.get("storage"), "the command"),
                               (recipe.get("storage"), f"the recipe {path}")):  # fmt: skip
            if storage is not None and storage != self.settings.storage:
                raise CommandError(
                    f"the study storage {redact_url(str(storage))!r} comes from {where}, and "
                    "the dashboard sets no storage (a URL can name any file or database): "
                    "enable the tuner with `hotcb tune enable` or HotClient.tune_enable, "
                    "which read the same recipe, or take storage out of it"
                )

    def _in_force(self, given: Mapping[str, Any], recipe: Mapping[str, Any]) -> dict[str, Any]:
        """The settings in force that an enable naming ``given`` and ``recipe`` keeps: all but
        those it names (a new recipe brings its own space), one segment setting for another."""
        named = set(given) | set(recipe)
        if "recipe" in given:
            named.add("space")
        if named & {"segment_steps", "segment_evals"}:
            named |= {"segment_steps", "segment_evals"}
        if "objective" in named:  # a new objective's direction: as given, else from its name
            named.add("direction")
        kept = self.settings.to_dict()
        return {k: v for k, v in kept.items() if k not in named and v is not None}

    def _horizon(self, env: Env) -> int | None:
        """The run's length in steps as the loop or the framework says it now, or None."""
        total = self.host.steps_horizon(env) or env.get("total_steps")
        return (
            total if isinstance(total, int) and not isinstance(total, bool) and total > 0 else None
        )

    def _enable(self, settings: Settings, step: int, horizon: int | None = None) -> None:
        if settings.mode not in MODES:
            raise RuntimeError(f"mode must be one of {', '.join(MODES)}")
        study = self._study_first(settings)
        was = self._where(self.settings)
        left = was[1] if was != self._where(settings) else None  # the study it leaves
        # a bracket begins a tuner: not one whose other settings change (a new segment length),
        # but one that asked for it in a mode without one and is now made active
        begins = (self.mode == "off" or self.settings.start != "bracket"
                  or (self.mode != "active" and self.bracket is None
                      and self.bracket_done is None))  # fmt: skip
        self._drop_asking("tuner enabled again")
        self._drain()
        # proposals of the tuner as it was: answered by nobody in active or observe mode, and
        # a pending one blocks every new trial; their trials are told FAIL in the old study
        self._expire_proposals("tuner enabled again")
        # the open trial ends first: its FAIL is queued before the study is opened again, whose
        # clean-up (fail_open) would otherwise find it RUNNING and count it a second time
        trial, reason = self.trial, "the tuner was enabled again with other settings: not judged"
        if trial is not None:
            self._close_trial(None, "failed", reason=reason)
        self.opening = None
        if self.host.is_leader and not settings.sync:
            # optuna's import here (a refusal if it is missing, ~0.5 s); creating the study
            # (~1.5 s on SQLite) on the study's thread, while the first baseline segments are
            # observed
            from ._study import import_optuna

            import_optuna()
            self.opening = self._worker_().submit(self._open_and_clean, settings)
        self.settings, self.study, self.mode = settings, study, settings.mode
        self.objective_used = settings.objective
        self.seen = False  # the objective has been logged since the tuner was enabled
        self.last_value_step = None
        self.val_objective = False
        self.enabled_at = step
        self.history, self.waiting, self.streak, self.backoff = [], None, 0, 0
        self.closed = (-1, [])
        # (the loop's length where it gives one: a bracket that cannot fit is not begun)
        self.trend_noise, self.total_steps = None, settings.total_steps or horizon
        self.warnings = []
        self._weights_note()
        if study is not None:
            self._left_open(study.fail_open())
        self._start_segment(step, "baseline")
        if trial is not None:  # its change goes, as with a disable; a baseline follows it
            self._row(trial["number"]).update(end_step=step, detail={"reason": reason})
            self._take_back(trial, self._touched(trial["number"], int(trial["step"])), step,
                            reason=reason)  # fmt: skip
        elif self.bracket is not None:  # as a trial's: the arm's lr goes back
            self._settle_bracket(self._bracket_values(), step, "the tuner was enabled again",
                                 self._back_to_base())  # fmt: skip
        self.bracket_wanted = False
        # every rank copies the weights for a bracket this enable begins (the leader alone
        # decides whether it starts: a copy that no bracket takes goes at the next tune op)
        self._bracket_begins = settings.start == "bracket" and begins and trial is None
        if settings.start == "bracket" and begins:
            if settings.mode != "active":
                self._warn(f"start: bracket runs in active mode only: none in {settings.mode} "
                           "mode")  # fmt: skip
            elif trial is not None:  # its change goes back first; the bracket starts from there
                self.bracket_wanted = True
            elif self.host.is_leader:
                self._begin_bracket(step)
        if left is not None:  # the new study numbers its trials from 0 again: rows by study
            self.trials = [{**r, "study": r.get("study", left)} for r in self.trials]
            self.best = None  # the best of the study shown: the old one's is no trial of it

    def _study_first(self, settings: Settings) -> Study | None:
        """Before an enable tears anything down: with ``sync``, the study opened (a storage
        that cannot be opened raises, and leaves the tuner as it was); without, the study a
        tuner that was on is in, kept as a stand-by while a new storage or name opens."""
        self.standby = None
        if self.host.is_leader and settings.sync:
            return self._open_study(settings)
        moved = self._where(self.settings) != self._where(settings)
        held = self.study if self.study is not None else self.opening  # (enables queued at once)
        if self.mode != "off" and held is not None and moved:
            self.standby = (self.settings.storage, self.settings.study, held)
        return None

    def _open_and_clean(self, settings: Settings) -> tuple[Study, list[int]]:
        study = self._open_study(settings)
        return study, study.fail_open()

    def _study_ready(self) -> bool:
        """Whether the study is open (collecting the background open once it has answered)."""
        if self.study is not None:
            return True
        if self.opening is None or not self.opening.done():
            return False
        opening, self.opening = self.opening, None
        standby, self.standby = self.standby, None
        try:
            self.study, failed = opening.result()
        except Exception as exc:  # a storage that cannot be opened
            # the study is no longer opening: the failure replaces the note that it was
            self.warnings = [w for w in self.warnings if not w.startswith(_OPENING)]
            self.host.record({"module": "tune", "op": "enable", "source": "tune",
                              "cmd_id": self.enable_cmd, "decision": "failed",
                              "error": str(exc)})  # fmt: skip
            if standby is None:  # nothing to go on in: the tuner turns off
                self.warnings.append(str(exc))
                self.mode, self.phase = "off", "off"
                return False
            # a tuner that was on goes on in the study it was in, with the enable's other
            # settings: one mistyped URL does not end it
            from ._study import redact

            storage, name, held = standby
            self.settings = replace(self.settings, storage=storage, study=name)
            url, name = self._where(self.settings)
            self.warnings.append(f"{exc}; the tuner goes on in its study {name!r} in "
                                 f"{redact(url)}")  # fmt: skip
            if hasattr(held, "done"):  # that one is still opening (an enable queued before)
                self.opening = held
                return self._study_ready()
            self.study = held
            return True
        self._left_open(failed)
        return True

    def _left_open(self, failed: Sequence[int]) -> None:
        """Trials of this run that a process which ended without closing it (a kill, a crash)
        left open, told FAIL as the study opened: a row and a ledger entry each, so that the
        count of failed trials matches what `tune status` lists."""
        proposed = self._proposed_only(failed)
        for number in failed:
            if number in proposed:  # never a trial that ran: a proposal nobody answered
                why = ("proposed, and the process that proposed it ended (a kill or a crash) "
                       "before a person answered it")  # fmt: skip
                self.counts["expired"] = self.counts.get("expired", 0) + 1
                self._row(number).update(decision="expired", detail={"reason": why})
                self.host.record({"module": "tune", "op": "expire", "source": "tune",
                                  "decision": "applied", "tune": {"proposal": proposed[number],
                                  "trial": number, "reason": why}})  # fmt: skip
                continue
            reason = ("left open by a process of this run that ended before judging it (a "
                      "kill or a crash): told FAIL")  # fmt: skip
            self.counts["failed"] += 1
            self._row(number).update(decision="failed", detail={"reason": reason})
            self.host.record({"module": "tune", "op": "void", "source": "tune",
                              "decision": "applied", "tune": {"trial": number,
                              "reason": reason}})  # fmt: skip

    def _proposed_only(self, numbers: Sequence[int]) -> dict[int, str]:
        """Of trials ``numbers``, those the ledger has only as a proposal (proposed, never
        applied), with the proposal's id."""
        if not numbers:
            return {}
        proposed: dict[int, str] = {}
        applied: set[int] = set()
        for e in jsonl.iter_records(self.host.paths.ledger,
                                    keep=lambda raw: b'"propose"' in raw or b'"mutate"' in raw):  # fmt: skip
            info = e.get("tune") if e.get("module") == "tune" else None
            if not isinstance(info, dict):
                continue
            trial = info.get("trial")
            if not isinstance(trial, int) or trial not in numbers:
                continue
            if e.get("op") == "propose":
                proposed[trial] = str(info.get("proposal"))
            elif e.get("op") == "mutate" and e.get("decision") == "applied":
                applied.add(trial)
        return {n: p for n, p in proposed.items() if n not in applied}

    def _branch_study(self, settings: Settings, where: Any) -> Settings:
        """A checkpoint of another run directory (``hotcb branch``'s parent, or a run copied
        elsewhere) goes on in the study it was in: its default one is the parent's SQLite file
        and named after the parent. Opening this run's own would start the numbering again
        under trials the checkpoint still refers to."""
        if not isinstance(where, Mapping) or not isinstance(where.get("run_dir"), str):
            return settings
        if os.path.abspath(where["run_dir"]) == os.path.abspath(self.host.run_dir):
            return settings
        storage, study = settings.storage, settings.study or where.get("name")
        if storage is None and os.path.exists(RunPaths(where["run_dir"]).tune_db):
            storage = where.get("url")  # the parent's file (a moved run: its own copy)
        return replace(settings, storage=storage, study=study)

    def _where(self, settings: Settings) -> tuple[str, str]:
        """The study's storage URL and name."""
        url = settings.storage or f"sqlite:///{self.host.paths.tune_db}"
        return url, settings.study or f"hotcb-{os.path.basename(self.host.run_dir)}"

    def _open_study(self, settings: Settings) -> Study:
        from ._study import Study, confine_storage, redact

        url, name = self._where(settings)
        try:  # whatever the URL came from: a command, a recipe, a restart, a checkpoint
            confine_storage(url, self.host.run_dir, self.host.allowed_roots)
        except HotcbError as exc:  # nothing opened: refused like a storage that cannot be
            raise RuntimeError(f"could not open study {name!r} in {redact(url)}: {exc}") from None
        try:
            shared = settings.storage is not None or settings.study is not None
            study = Study(url, name, self.host.run_dir, seed=settings.seed,
                          startup_trials=settings.startup_trials, shared=shared)  # fmt: skip
            # what the others had put in it when this run first joined it: an enable that opens
            # it again (another mode) or a restart does not move that moment. (This runs on the
            # tuner's thread: a new dict, never one that a checkpoint may be copying, changes.)
            key = f"{name}@{redact_url(url)}"
            if key not in self.joined:
                self.joined = {**self.joined, key: study.joined}
            study.joined = self.joined[key]
            return study
        except RuntimeError:
            raise
        except Exception as exc:  # a storage that cannot be opened
            # SQLAlchemy ends its messages with a line that links its docs: one line is enough
            said = " ".join(line for line in str(exc).splitlines()
                            if not line.startswith("(Background on this error"))  # fmt: skip
            raise RuntimeError(f"could not open study {name!r} in {redact(url)}: {said}"
                               f"{_driver_hint(url, exc)}") from exc  # fmt: skip

    # ------------------------------------------------------------------ segments
    @property
    def _patience(self) -> int:
        return 4 * max(self.settings.segment_steps, 50)

    def _start_segment(self, step: int, phase: str) -> None:
        # the step that applied a change already ran with the old values: observe from the next
        self.segment = Segment(step + 1, [], [])
        self.phase = phase
        # a command read later in the poll that began it (a person's set after a roll-back)
        # changes the segment from its first step too: :meth:`_commanded_in`
        self._segment_mark = self.host.command_mark()

    def _observe(self, step: int, metrics: Mapping[str, Any], validation: bool) -> None:
        name = next((n for n in _TRAIN_LOSSES if n in metrics), None)
        train = _number(metrics.get(name)) if name is not None else None
        # the early-abort watch, every step but the one that applied a change (old values)
        if (train is not None and self.objective_used not in _TRAIN_LOSSES
                and step >= self.segment.start):  # fmt: skip
            self.train_recent.append(train)
            if self.trial is not None:
                self.trial.setdefault("train", []).append(train)
        value = metrics.get(self.objective_used)
        if value is None and not self.seen and self.objective_used in _ALIASED:
            # the HF Trainer's eval_loss, the demo's val/loss; Lightning's train_loss for loss
            alias = next((n for n in _ALIASED[self.objective_used] if n in metrics), None)
            if alias is not None:
                self._warn(f"objective {self.objective_used!r} is logged as {alias!r} by this "
                           f"run: scoring {alias!r}")  # fmt: skip
                self.objective_used, value = alias, metrics[alias]
        if value is not None:
            self.seen = True
            if validation and self.objective_used not in _TRAIN_LOSSES:  # (logged every step)
                self.val_objective = True
            elif self.val_objective:  # the last validation's value, repeated on a train step
                return
        elif not self.seen and name is not None and self.objective_used not in _TRAIN_LOSSES:
            value = self._stand_in(step, metrics, name, train)
        number = _number(value)
        if number is None:
            return
        self._sparse(step)
        if step < self.segment.start:
            return
        self.segment.steps.append(step)
        self.segment.values.append(number)

    def _stand_in(
        self, step: int, metrics: Mapping[str, Any], name: str, train: float | None
    ) -> float | None:
        """The objective has not come yet: after two segments' worth of steps, the training
        loss ``name`` stands in (its value now, ``train``); None before."""
        if len(self._names) < 200:  # what the run logs, to name a near miss (a typo)
            self._names.update(k for k in metrics if isinstance(k, str))
        self.train_name = name
        s = self.settings
        wait = 2 * s.segment_steps
        if s.segment_evals is not None or step - self.enabled_at < wait:
            return None
        self._fall_back(name, f"in {wait} steps")
        self.seen = train is not None  # the stand-in is the objective from here on
        return train

    def _fall_back(self, name: str, when: str) -> None:
        """Score the training loss ``name``: the objective asked for was not logged ``when``."""
        import difflib

        wanted = self.settings.objective
        near = difflib.get_close_matches(wanted, sorted(self._names - {name}), n=1, cutoff=0.6)
        pick = (f"did you mean {near[0]!r}? the run logs it: --objective {near[0]}" if near
                else "--objective picks another")  # fmt: skip
        self.objective_used = name
        self.warnings = [w for w in self.warnings if not w.endswith(_NOTHING_SCORED)]
        self._warn(f"objective {wanted!r} was not logged {when}; scoring {name!r} instead "
                   f"({pick})")  # fmt: skip
        self._weights_note()
        self.segment = Segment(self.segment.start, [], [])
        self.history, self.closed = [], (-1, [])

    def _sparse(self, step: int) -> None:
        """Say in ``tune status`` when the objective comes less often than once a segment of
        steps (the HF Trainer logs its loss every 500 steps by default): most segments then
        see none, and their trials cannot be judged."""
        last, self.last_value_step = self.last_value_step, step
        s = self.settings
        if last is None or s.segment_evals is not None or step - last <= s.segment_steps:
            return
        self._warn(f"{self.objective_used!r} came {step - last} steps after its last value, "
                   f"more than a segment ({s.segment_steps} steps): segments without a value "
                   "judge no trial; --segment-evals 1 counts segments in values of it, or log "
                   "it more often")  # fmt: skip

    def _missing(self, step: int, metrics: Mapping[str, Any], validation: bool) -> None:
        """Say so in ``tune status`` when the objective does not reach the tuner and nothing
        can stand in for it: after two segments' worth of steps, or at a validation without
        it (``--segment-evals``; or when two segments' worth of steps brought none)."""
        s = self.settings
        if self.mode == "off":
            return
        if s.segment_evals is None:
            if step - self.enabled_at < 2 * s.segment_steps:
                return
            where = f"in {2 * s.segment_steps} steps"
        elif validation:
            where = "in a validation"
        elif step - self.enabled_at >= 2 * s.segment_steps:  # nor a validation without it
            where = (f"in {2 * s.segment_steps} steps, and no validation came (--segment-evals "
                     "counts its values; a loop marks one with kernel.apply(env, "
                     "('val_epoch_end',)))")  # fmt: skip
        else:
            return
        said = f"objective {self.objective_used!r} was not logged"
        if any(w.startswith(said) for w in self.warnings):
            return
        names = ", ".join(sorted(str(k) for k in metrics)) or "none on this step"
        self._warn(f"{said} {where} (metrics the tuner sees: {names}); {_NOTHING_SCORED}")
        self._save()  # for `tune status` now, not at the next boundary

    def _warn(self, note: str) -> None:
        if note not in self.warnings:
            self.warnings.append(note)
            log.warning("hotcb tune: %s", note)

    def _harmful(self) -> bool:
        """A trial whose objective is already clearly worse than expected ends early (and is
        rolled back): the median of its last three values (five, and above the segment before:
        :meth:`_per_step_line`, for one logged every step) is ``abort`` (relative) worse than
        the trend, or one is NaN/inf."""
        values, name = self.segment.values, self.objective_used
        if self.phase == "bracket":  # an arm that blew up ends now: it has lost
            return bool(values) and not math.isfinite(values[-1])
        if self.phase != "trial" or self.trial is None:
            return False
        if values and not math.isfinite(values[-1]):
            self.trial["cut"] = f"{name} became {values[-1]}"
            return True
        # an objective logged every step (a training loss) is a batch's: the median of 5, and
        # above what the segment before held too (its median of 3 read batch noise as harm)
        line = self.trial.get("objective_line")
        n = 3 if line is None else 5
        if len(values) < n or len(self.history) < 1:
            return False
        expected = expected_level(self.history, self.segment.mid, self._sign)
        if not math.isfinite(expected) or expected == 0:
            return False
        recent = statistics.median(values[-n:])
        worse = self._sign * (recent - expected) / abs(expected)
        if worse <= self.settings.abort or (line is not None and recent <= line):
            return False
        self.trial["cut"] = (f"ended early: {name} {recent:.4g} (median of its last {n} values), "
                             f"{worse:.0%} worse than the {expected:.4g} its trend expected")  # fmt: skip
        self.trial["cut_score"] = max(NONFINITE_SCORE, -worse)  # what those values score
        return True

    def _per_step_line(self) -> float | None:
        """For an objective logged every step and minimized (a training loss): the line a
        trial's values must pass to end it early, from the segment before it and the steps
        since its boundary (:func:`_blow_up_line`); None for one logged at validations.

        The segment in progress is not "the segment before": in the default mode a new one
        starts while Optuna is asked, and a person accepts a proposal any step into one. Drawn
        from the few steps before the answer, the line depended on the timing of the answer,
        and under 5 steps there was none (the median of 3 then read batch noise as harm)."""
        if self._sign < 0 or (self.objective_used not in _TRAIN_LOSSES and self.val_objective):
            return None
        at, before = self.closed
        seg = self.segment  # the closed one itself, until a new segment starts
        since = [v for s, v in zip(seg.steps, seg.values, strict=True) if s > at]
        return _blow_up_line([*before, *since][-_TRAIN_WATCH:], self.settings.abort)

    def _train_blew_up(self) -> bool:
        """The training loss (logged every step) of a trial is ``abort`` worse than before the
        mutation, and worse than any step before it (:func:`_blow_up_line`): caught in a few
        steps, long before the next evaluation. Not for a trial that moves a loss weight: the
        training loss it weighs is then another quantity (ce × 2 is not a blow-up)."""
        trial = self.trial
        if trial is None or not trial.get("train_line") or "loss" in trial["after"]:
            return False
        got = trial.get("train") or []
        if len(got) < 5:
            return False
        now = statistics.median(got[-5:])
        if math.isfinite(now) and now <= trial["train_line"]:
            return False
        trial["blew_up"] = now
        return True

    def _at_boundary(self, step: int) -> bool:
        s = self.settings
        if s.segment_evals is not None:
            return len(self.segment.values) >= s.segment_evals
        return step >= self.segment.start + s.segment_steps - 1

    def _boundary(self, step: int) -> None:
        seg = self.segment
        self.counts["segments"] += 1
        self.closed = (step, seg.values[-_TRAIN_WATCH:])
        for name in list(self.cooldowns):
            self.cooldowns[name] -= 1
            if self.cooldowns[name] <= 0:
                del self.cooldowns[name]
        if self.phase == "trial" and self.trial is not None:
            self._judge(seg, step)
            return
        if self.phase == "bracket" and self.bracket is not None:
            self._bracket_boundary(seg, step)
            return
        if self.phase != "bracket" and "enabled" in self._bracket_snaps:
            self._bracket_snaps = {}  # an enable's copy that no bracket used (the leader's call)
        if self._commanded_in(seg):
            # a command changed a knob in this segment (a person, the autopilot, a ramp): the
            # trend before it is not the run's any more, and a trial started now would be
            # judged against it; two segments after it make the trend again
            self.history = []
            if self.phase == "backoff":
                self.backoff = max(0, self.backoff - 1)
            self._next(step)
            return
        level = seg.level()
        if math.isfinite(level) and seg.values:
            if len(self.history) >= 2:  # how well the trend predicted a segment left alone
                guess = expected_level(self.history, seg.mid, self._sign)
                if math.isfinite(guess) and guess != 0:
                    miss = abs(level - guess) / abs(guess)
                    self.trend_noise = miss if self.trend_noise is None else (
                        0.5 * self.trend_noise + 0.5 * miss)  # fmt: skip
            self.history = [*self.history, (seg.mid, level)][-_HISTORY:]
        if self.phase == "backoff":
            self.backoff = max(0, self.backoff - 1)
        self._next(step)

    def _commanded_in(self, seg: Segment) -> bool:
        """Whether a command changed a knob in ``seg``: at its steps, or read after it began
        (a ``set`` read in the poll of the roll-back that began it is at the step before its
        first: the next trial was judged against a trend the set had broken)."""
        mark = self._segment_mark
        return bool(self.host.commanded_since(seg.start)
                    or (mark is not None and self.host.commanded_since(0, after=mark)))  # fmt: skip

    def _margin(self, detail: Mapping[str, Any], values: int) -> float:
        """How far a score must beat the threshold to keep a trial: the noise of its segment's
        level, or how far the trend missed segments that were left alone (``values``: how
        many of the objective a whole segment holds, 0 for a trial cut short; one has no noise
        to measure: said)."""
        if values == 1 and not self.trend_noise:
            self._warn(f"segments of one value of {self.objective_used!r} have no noise to "
                       "measure: until the trend has missed a segment left alone, a trial is "
                       "kept on any gain; use --segment-evals 3 or more")  # fmt: skip
        return max(float(detail.get("noise", 0.0)), self.trend_noise or 0.0)

    def _no_keep_cause(self, detail: Mapping[str, Any]) -> str:
        """Why the bar to keep a trial is above +1, said with its fix. The threshold asked for;
        a level near zero (its own noise sets the bar, or its standard error is a quarter of it
        or more, or a level was not above zero: the trend's misses are that noise, and stay);
        else the trend's miss on segments left alone: a jump of the level (a blow-up, say),
        which passes as they follow the trend again. Another objective helps the second only
        (a probe's val_loss of 4.8 after a blow-up was said to be "so near zero")."""
        name, threshold = self.objective_used, self.settings.threshold
        if threshold >= 1.0:
            return f"the threshold asked for (--threshold {threshold:g}) is that high; lower it"
        level = _number(detail.get("level"))
        own = float(detail.get("noise", 0.0))
        if threshold + own >= 1.0 or own >= _NEAR_ZERO or any(y <= 0 for _, y in self.history):
            at = f" ({level:.3g})" if level is not None else ""
            return (f"{name!r} is so near zero that its noise is larger than its level{at}; "
                    "score another objective (--objective)")  # fmt: skip
        levels = ", ".join(f"{y:.4g}" for _, y in self.history)
        return (f"the trend missed the segments left alone by {self.trend_noise or 0.0:.0%} "
                f"(levels {levels}): {name!r} is not near zero (the trial's level"
                + (f" {level:.4g}" if level is not None else "")
                + f" ±{own:.0%}), its level jumped (a blow-up, say); the bar comes down as "
                "segments left alone follow the trend again (each one it predicts halves "
                "the miss)")  # fmt: skip

    def _cut_short(
        self, trial: Mapping[str, Any], seg: Segment, score: float, detail: dict[str, Any]
    ) -> dict[str, Any]:
        """A trial's score details, with why it ended early when it did: a blow-up of the
        training loss (judged on the evaluations that came in first, if any) or an early abort
        on the objective."""
        if "blew_up" in trial:
            reason = (f"the training loss blew up: {trial['blew_up']:.4g} (median of the last 5 "
                      f"steps), above {trial['train_line']:.4g}, the line the steps before the "
                      "change drew")  # fmt: skip
            if not seg.values:
                return {"reason": reason, "score": score}
            which = "the value" if len(seg.values) == 1 else f"the {len(seg.values)} values"
            detail["reason"] = (f"{reason}; judged on {which} of {self.objective_used!r} that "
                                "came in first")  # fmt: skip
        elif trial.get("cut"):
            detail["reason"] = trial["cut"]
        return detail

    def _judge(self, seg: Segment, step: int) -> None:
        trial = self.trial
        assert trial is not None
        # a command (a person, the autopilot) on any knob since the trial started: its
        # segment measures that change too
        touched = self._touched(trial["number"], int(trial["step"]))
        if touched:
            names = ", ".join(f"{m}.{k}" for m, k in touched)
            self._void(trial, step, f"{names} set by a command during the trial", touched)
            return
        if not seg.values and "blew_up" not in trial:  # nothing measured: no score to tell
            why = (f"no value of {self.objective_used!r} came in the trial's "
                   f"{step + 1 - int(trial['step'])} steps")  # fmt: skip
            self._void(trial, step, why, [])
            return
        score, detail = score_segment(seg, self.history, self.objective_used_direction)
        if len(self.history) < 2:  # (a proposal accepted early): no trend, a made-up score
            why = (f"no baseline of {self.objective_used!r} to score it against (its trend "
                   "began again after a change from outside the tuner, and fewer than the two "
                   "segments a trend takes measured it before the trial)")  # fmt: skip
            self._void(trial, step, why, [])
            return
        if trial.get("cut_score") is not None and trial["cut_score"] < score:
            # cut short on its last values: the segment's level (its better start) must not
            # outscore them (a trial "192% worse than its trend" was kept at +0.50)
            detail["segment_score"], score = score, float(trial["cut_score"])
        detail = self._cut_short(trial, seg, score, detail)
        # a trial cut short (a blow-up, an early abort) is no segment of that length
        whole = "blew_up" not in trial and not trial.get("cut")
        detail["margin"] = margin = self._margin(detail, len(seg.values) if whole else 0)
        detail["needed"] = needed = self.settings.threshold + margin  # the bar a keep clears
        if needed >= 1.0 and self._sign > 0:  # a lower loss scores +1 at most (down to zero)
            self.warnings = [w for w in self.warnings if not w.startswith(_NO_KEEP)]
            self._warn(f"{_NO_KEEP} (+{needed:.3g}): {self._no_keep_cause(detail)}")
        keep = math.isfinite(score) and score > needed
        attrs = {
            "score_detail": detail,
            "step": trial["step"],
            "end_step": step,
            "values": _flat(trial["after"]),
            "decision": "kept" if keep else "rolled_back",
        }
        self._tell(trial["number"], score, attrs)
        row = self._row(trial["number"])
        row.update(end_step=step, score=score, detail=detail)
        self.trial = None
        if keep:
            self._snapshot = None
            row["decision"] = "kept"
            self.counts["kept"] += 1
            self.streak = 0
            level = seg.level()
            self.history = [*self.history, (seg.mid, level)][-_HISTORY:]
            for name in _flat(trial["after"]):
                knob = self._knob(name)
                if knob is not None and knob.cooldown:
                    self.cooldowns[name] = knob.cooldown + 1
            if self.best is None or score > self.best["score"]:
                self.best = {"trial": trial["number"], "score": score, "values": trial["after"]}
            self.host.record({"module": "tune", "op": "keep", "source": "tune",
                              "decision": "applied", "tune": {"trial": trial["number"],
                              "score": score, **detail}})  # fmt: skip
            self._next(step)
            return
        row["decision"] = "rolled_back"
        self.counts["rolled_back"] += 1
        self.streak += 1
        if self.streak >= self.settings.reject_streak:
            self.streak, self.backoff = 0, self.settings.backoff_segments
        params = {
            "trial": trial["number"],
            "values": trial["before"],
            "applied": trial.get("applied"),
            "score": score,
            "needed": needed,
            "since": trial["step"],
        }
        if detail.get("reason"):  # cut short: why (a blow-up of the training loss)
            params["reason"] = detail["reason"]
        self._submit("rollback", params, step)

    def _void(
        self, trial: Mapping[str, Any], step: int, why: str, touched: list[tuple[str, str]]
    ) -> None:
        """A trial that cannot be judged: overlapped by a command (``touched``: its knobs), or
        with no value of the objective. Optuna hears FAIL, not a score that belongs to someone
        else's change or to no measurement; a command's values stay, the trial's other knobs
        are rolled back."""
        number = trial["number"]
        reason = f"{why}: not judged"
        self._close_trial(None, "failed", reason=reason)
        self._row(number).update(end_step=step, detail={"reason": reason})
        self.host.record({"module": "tune", "op": "void", "source": "tune", "decision": "applied",
                          "tune": {"trial": number, "reason": reason}})  # fmt: skip
        self._snapshot = None  # values only: what the trial's steps trained stays
        if not self._take_back(trial, touched, step):
            self._start_segment(step, "baseline")

    def _not_since(self, rescale: Any, mark: Any) -> tuple[Any, list[str]]:
        """``rescale`` without the knobs a command set after ``mark`` (the leader's command
        mark when the trial was voided: a person's ``set lr=…`` read just before the roll-back
        is their value, not one to take the trial's factor from), and those knobs' names."""
        if not isinstance(rescale, Mapping) or not isinstance(mark, int):
            return rescale, []
        since = set(self.host.commanded_since(0, after=mark))
        later = [f"{m}.{k}" for m, kv in rescale.items() if isinstance(kv, Mapping)
                 for k in kv if (m, k) in since]  # fmt: skip
        kept = {m: {k: f for k, f in kv.items() if (m, k) not in since}
                for m, kv in rescale.items() if isinstance(kv, Mapping)}  # fmt: skip
        return {m: kv for m, kv in kept.items() if kv}, later

    def _rescale(
        self, rescale: Any, values: dict[str, dict[str, Any]], env: Env
    ) -> dict[str, float]:
        """Add to ``values`` each knob of ``rescale`` (``{module: {key: factor}}``) at its value
        now times its factor; the factors, by ``module.key``."""
        out: dict[str, float] = {}
        if not isinstance(rescale, Mapping):
            return out
        for module, kv in rescale.items():
            for key, factor in (kv or {}).items() if isinstance(kv, Mapping) else ():
                live = self.host.read_actuator(str(module), str(key), env)
                if isinstance(live, (int, float)) and not isinstance(live, bool) and isinstance(
                        factor, (int, float)):  # fmt: skip
                    values.setdefault(str(module), {})[str(key)] = live * factor
                    out[f"{module}.{key}"] = float(factor)
        return out

    def _touched(self, trial: Any, since: Any) -> list[tuple[str, str]]:
        """The knobs a command set since ``trial`` began: after its mutation where this process
        applied it, else from its step ``since`` on (None: none known)."""
        if self._mark is not None and self._mark[0] == trial:
            return self.host.commanded_since(0, after=self._mark[1])
        if isinstance(since, int) and not isinstance(since, bool):
            return self.host.commanded_since(since)
        return []

    def _not_commanded(
        self, values: dict[str, dict[str, Any]], trial: Any, since: Any
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """A roll-back's ``values`` without the knobs a command set since the trial began (a
        command that came after the trial was judged, in the same poll as its roll-back: the
        roll-back undid it), and those knobs' names."""
        touched = set(self._touched(trial, since))
        left = [f"{m}.{k}" for m, kv in values.items() for k in kv if (m, k) in touched]
        if not left:
            return values, []
        rest = {m: {k: v for k, v in kv.items() if (m, k) not in touched}
                for m, kv in values.items()}  # fmt: skip
        return {m: kv for m, kv in rest.items() if kv}, left

    def _take_back(
        self, trial: Mapping[str, Any], touched: list[tuple[str, str]], step: int, *,
        reason: str | None = None,
    ) -> bool:  # fmt: skip
        """Roll back an unjudged trial's knobs that no command set since it began (those keep
        the command's value); False when none is left to roll back."""
        rest = {m: {k: v for k, v in kv.items() if (m, k) not in touched}
                for m, kv in trial["before"].items()}  # fmt: skip
        rest = {m: kv for m, kv in rest.items() if kv}
        applied = trial.get("applied") or {}
        rescale = self._relative_undo(trial, touched)
        if not (rest or rescale) or not self.host.is_leader:
            return False
        made = {m: {k: (applied.get(m) or {}).get(k) for k in kv} for m, kv in rest.items()}
        params: dict[str, Any] = {"trial": trial["number"], "values": rest, "applied": made,
                                  "score": None, "since": trial["step"]}  # fmt: skip
        if rescale:  # with the mark of the commands so far: one after it is left alone
            params["rescale"], params["mark"] = rescale, self.host.command_mark()
        self._submit("rollback", {**params, "reason": reason} if reason else params, step)
        return True

    def _relative_undo(
        self, trial: Mapping[str, Any], touched: list[tuple[str, str]]
    ) -> dict[str, dict[str, float]]:
        """The trial's own factor on each knob a command scaled during it (``relative_to``:
        the autopilot's lr × 0.5 multiplied the trial's lr, so the value it left holds the
        unjudged trial's move too): ``{module: {key: before / applied}}``, to take back."""
        out: dict[str, dict[str, float]] = {}
        applied = trial.get("applied") or {}
        for m, k in touched:
            old = _positive((trial["before"].get(m) or {}).get(k))
            new = _positive((applied.get(m) or {}).get(k))
            if old is None or new is None or old == new:
                continue
            if self.host.commanded_relative(m, k):
                out.setdefault(m, {})[k] = old / new
        return out

    @property
    def objective_used_direction(self) -> str:
        """The direction the objective in use is scored in: a training loss standing in for an
        objective that was not logged is minimized, whatever direction the objective asked."""
        if self.objective_used != self.settings.objective and self.objective_used in _TRAIN_LOSSES:
            return "minimize"
        return self.settings.direction

    @property
    def _sign(self) -> float:
        """+1 when lower values of the objective in use are better, -1 when higher are."""
        return 1.0 if self.objective_used_direction == "minimize" else -1.0

    def _next(self, step: int) -> None:
        """After a boundary: a baseline segment, a proposal, or a mutation (or the bracket an
        enable asked for while a trial was open)."""
        s = self.settings
        if self.bracket_wanted:
            self.bracket_wanted = False
            if s.mode == "active" and s.start == "bracket" and not self._frozen():
                self._begin_bracket(step)
                if self.bracket is not None:
                    return
        pending = any(p["state"] == "pending" for p in self.proposals)
        length = self._segment_length(step)
        ending = self.total_steps is not None and step + 2 * max(1, length) > self.total_steps
        # (past it: a loop that counts from 1, as the HF Trainer does, ends on step == total)
        if ending and self.total_steps is not None and step > self.total_steps:
            self._warn(f"the run is past its total_steps ({self.total_steps}): no trial starts "
                       "(tune enable --total-steps N gives the run's real length)")  # fmt: skip
        if self._frozen():
            self._start_segment(step, "baseline")
            return
        if (s.mode == "observe" or self.backoff or len(self.history) < 2 or pending or ending
                or self._command_due(step, length)):  # fmt: skip
            self._start_segment(step, "backoff" if self.backoff else "baseline")
            return
        if not self._study_ready():
            if self.mode != "off":
                self._opening_note(step)
                self._start_segment(step, "baseline")
            return
        knobs = self._knobs()
        if not knobs or self.study is None:
            self._start_segment(step, "baseline")
            return
        prior_first = self.asked == 0
        self.asked += 1
        if not s.sync:  # ask in the background; the trial starts at the step the answer lands
            future = self._worker_().submit(self.study.ask, knobs, prior_first)
            self.asking = {"future": future, "knobs": knobs}
            self._start_segment(step, "asking")
            return
        try:
            number, sampled = self.study.ask(knobs, prior_first)
        except Exception as exc:  # a storage hiccup must not stop training
            self._ask_failed(exc, step)
            return
        self._start(number, sampled, knobs, step)

    def _segment_length(self, step: int) -> int:
        """The next segment's length in steps: counted in evaluations, as long as the one
        that closes at ``step``."""
        s = self.settings
        return s.segment_steps if s.segment_evals is None else step + 1 - self.segment.start

    def _command_due(self, step: int, length: int) -> bool:
        """Whether a command waiting for its ``at_step`` changes a knob within the next
        segment: a trial started now would be voided by it."""
        for p in self.host.pending:
            at = p.get("at_step")
            if not isinstance(at, int) or not step < at <= step + max(1, length):
                continue
            if p.get("module") in ("opt", "loss", "custom") or (
                p.get("module") == "control" and p.get("op") == "undo"
            ):
                return True
        return False

    def _frozen(self) -> bool:
        """Whether the run's freeze mode takes no live changes: then no trial and no proposal
        (their commands would be refused), and ``tune status`` says why, until it does."""
        mode = self.host.freeze.mode.value
        self.warnings = [w for w in self.warnings if not w.startswith(_FROZEN)]
        if self.host.freeze.accepts_live:
            return False
        self.warnings.append(f"{_FROZEN} {mode}: no trial until 'hotcb freeze --mode off'")
        return True

    def _weights_note(self) -> None:
        """Say in ``tune status`` when the space moves loss weights and the score is the
        training loss: the loss those weights scale, so a lower weight scores better whatever
        it does to the model (a trial that halves a term's weight lowers the loss by itself)."""
        weights = [
            k.key
            for k in self.settings.space
            if k.module == "loss" and _numeric(self.host.read_actuator("loss", k.key))
        ]  # (else not tuned)
        if weights and self.objective_used in _TRAIN_LOSSES:
            self._warn(
                f"scoring the training loss {self.objective_used!r} while tuning loss weights "
                f"({', '.join(weights)}): the weights scale it, so a lower weight scores better "
                "whatever it does to the model; score a metric they do not scale (--objective "
                "val_loss, or an unweighted term the run logs)"
            )

    def _opening_note(self, step: int) -> None:
        """Say in ``tune status`` that a trial was due but the study was not open yet (a run
        of a few seconds can end before Optuna is imported and its storage opened)."""
        old = next((w for w in self.warnings if w.startswith(_OPENING)), None)
        count = 1 + (int(old.split("(", 1)[1].split(" ", 1)[0]) if old else 0)
        note = (f"{_OPENING} ({count} segment boundaries, the last at step {step}): importing "
                "Optuna and opening its storage takes a few seconds")  # fmt: skip
        self.warnings = [note if w is old else w for w in self.warnings] if old else [
            *self.warnings, note]  # fmt: skip

    def _asked(self, step: int) -> None:
        """The background ask has answered: start the trial now."""
        asking, self.asking = self.asking, None
        assert asking is not None
        try:
            number, sampled = asking["future"].result()
        except Exception as exc:
            self._ask_failed(exc, step)
            return
        moved = self._commanded_in(self.segment)
        if moved or self._command_due(step, self._segment_length(step)):
            # since the ask a command changed a knob (the trend is gone) or one fell due in
            # the trial's segment: it would be judged on that, or voided by it
            if moved:
                self.history = []
            why = "a command changed a knob" if moved else "a command is due in its segment"
            self._void_unjudged(number, f"{why} while the trial was asked for")
            self._start_segment(step, "baseline")
            return
        self._start(number, sampled, asking["knobs"], step)

    def _ask_failed(self, exc: BaseException, step: int) -> None:
        self._warn(f"could not ask the study for a trial: {exc}")  # once, not at every boundary
        self._start_segment(step, "baseline")

    def _drop_asking(self, reason: str) -> None:
        """A trial asked for but not started: FAIL, with its row and ledger entry, once the ask
        has answered and its number is known (:meth:`_dropped_answered`)."""
        asking, self.asking = self.asking, None
        if asking is None or self.study is None:
            return
        self._dropped.append((asking["future"], reason, self.study))
        self._dropped_answered()

    def _collect_dropped(self) -> bool:
        """:meth:`_dropped_answered` at a step; whether the tuner is off (nothing else to do)."""
        dropped = len(self._dropped)
        self._dropped_answered()
        if self.mode != "off":
            return False
        if len(self._dropped) < dropped:
            self._save()  # for `tune status` now
        return True

    def _dropped_answered(self) -> None:
        """The trials dropped while being asked for whose ask has answered: told FAIL (after
        the ask, on the study's thread), each with a row and a ledger entry. Before, the study
        and the count had a failed trial that `tune status`'s rows and the ledger skipped."""
        left = []
        for future, reason, study in self._dropped:
            if not future.done():
                left.append((future, reason, study))
            elif future.exception() is None:
                number, why = future.result()[0], f"{reason} (not started)"
                if study is self.study:
                    self._void_unjudged(number, why)
                    continue
                # in a study the tuner has left since (enabled again elsewhere): FAIL there
                self._tell(number, None, {"reason": why}, study=study)
                self.host.record({"module": "tune", "op": "void", "source": "tune",
                                  "decision": "applied", "tune": {"trial": number,
                                  "study": study.name, "reason": f"{why}: not judged"}})  # fmt: skip
        self._dropped = left

    def _start(
        self, number: int, sampled: Mapping[str, float], knobs: Sequence[Knob], step: int
    ) -> None:
        """Turn a sampled trial into a mutation (active) or a proposal (suggest)."""
        s = self.settings
        values: dict[str, dict[str, float]] = {}
        for knob in knobs:  # from the values in force now: a person may have moved them
            current = self.host.read_actuator(knob.module, knob.key)
            if not isinstance(current, (int, float)) or isinstance(current, bool):
                continue
            values.setdefault(knob.module, {})[knob.key] = self._target(
                knob, current, sampled[knob.name]
            )
        self.trials.append({"trial": number, "step": None, "changes": {}, "score": None,
                            "decision": "proposed", "sampled": dict(sampled)})  # fmt: skip
        self.trials = self.trials[-_KEEP_ROWS:]
        if not values:
            self._fail(number, "its knobs are no longer numeric actuators of this run")
            self._start_segment(step, "baseline")
            return
        if all(
            v == self.host.read_actuator(m, k) for m, kv in values.items() for k, v in kv.items()
        ):
            self._unmoved(number, values, step)
            return
        self._unmoved_streak = 0
        # relative moves are applied to the values in force when the command lands (an
        # accepted proposal can land many steps later, after a scheduler or a person moved them)
        moves = {k.name: sampled[k.name] for k in knobs if k.mode != "set"}
        if s.mode == "active":
            self._submit("mutate", {"trial": number, "values": values, "moves": moves,
                                    "since": step}, step)  # fmt: skip
            return
        before = {m: {k: self.host.read_actuator(m, k) for k in kv} for m, kv in values.items()}
        self.proposals.append({
            "id": f"P{self.next_proposal}", "trial": number, "step": step, "values": values,
            "moves": moves,
            "changes": {k: [_flat(before).get(k), v] for k, v in _flat(values).items()},
            "state": "pending",
        })  # fmt: skip
        self.proposals = self.proposals[-_KEEP_ROWS:]
        self.next_proposal += 1
        self.counts["proposed"] += 1
        self.host.record({"module": "tune", "op": "propose", "source": "tune",
                          "decision": "applied", "tune": {"proposal": self.proposals[-1]["id"],
                          "trial": number, "values": values}})  # fmt: skip
        self._start_segment(step, "baseline")

    def _unmoved(self, number: int, values: Mapping[str, Mapping[str, float]], step: int) -> None:
        """A trial that moves no knob (each held at its bound: lr 10 × 3 is 10): told a score
        of 0, the gain of changing nothing, without a segment spent on it, so the sampler learns
        that going that way gains nothing there. The next trial is asked for at once (up to
        :data:`_UNMOVED_PER_BOUNDARY` in a row, then a baseline segment: Optuna's answer can
        land steps after the ask, so a count per step let a tuner held at a bound ask again
        every few steps)."""
        held = ", ".join(f"{k}={v:g}" for k, v in _flat(values).items())
        reason = f"{held} held at its bound: the trial moves nothing (told a score of 0)"
        self._tell(number, 0.0, {"decision": "unmoved", "reason": reason, "step": step})
        self._row(number).update(step=step, score=0.0, decision="unmoved",
                                 detail={"reason": reason})  # fmt: skip
        self.counts["unmoved"] = self.counts.get("unmoved", 0) + 1
        self.host.record({"module": "tune", "op": "unmoved", "source": "tune",
                          "decision": "applied", "tune": {"trial": number, "score": 0.0,
                          "reason": reason}})  # fmt: skip
        self._unmoved_streak += 1
        if self._unmoved_streak < _UNMOVED_PER_BOUNDARY:
            self._next(step)
        else:
            self._unmoved_streak = 0
            self._start_segment(step, "baseline")

    def _target(self, knob: Knob, current: float, sampled: float) -> float:
        """The knob's new value, within the knob's bounds and the actuator's: a value the
        actuator refuses would fail the trial, and a sampler that has learned to go that way
        would ask for it again at every boundary (an lr at its maximum, thousands of refusals)."""
        bounds = self.host.actuator_bounds(knob.module, knob.key)
        return knob.target(float(current), float(sampled), bounds)

    def _knobs(self) -> list[Knob]:
        """The knobs a trial may move now: numeric, movable, not cooling down."""
        knobs: list[Knob] = []
        for knob in self.settings.space:
            if knob.name in self.cooldowns:
                continue
            value = self.host.read_actuator(knob.module, knob.key)
            if not _numeric(value):
                note = f"{knob.name} is not a numeric actuator of this run; not tuned"
                if note not in self.warnings:
                    self.warnings.append(note)
                continue
            if knob.mode == "mult" and value == 0:
                note = f"{knob.name} is 0: a multiplier cannot move it; not tuned"
                if note not in self.warnings:
                    self.warnings.append(note)
                continue
            knobs.append(knob.scaled(self.settings.risk))
        return knobs

    # ------------------------------------------------------------------ helpers
    def _submit(self, op: str, params: dict[str, Any], step: int) -> None:
        """Append a ``tune`` command (the leader only) and wait for it to come back."""
        record = make_command("tune", op, source="tune", params=params)
        self.waiting = {"cmd_id": record["cmd_id"], "kind": op, "since": step,
                        "trial": params.get("trial"), "values": params.get("values"),
                        "applied": params.get("applied"), "score": params.get("score"),
                        "needed": params.get("needed"), "reason": params.get("reason")}  # fmt: skip
        self.phase = "waiting"
        try:
            self.host.submit(record)
        except OSError as exc:  # disk full: the trial cannot go on
            self.waiting = None
            self._fail(params.get("trial"), f"could not write the {op} command: {exc}")
            self._start_segment(step, "baseline")

    def _give_up(self, step: int) -> None:
        waiting = self.waiting
        assert waiting is not None
        self.waiting = None
        reason = f"the {waiting['kind']} command was not applied within {self._patience} steps"
        self.warnings.append(reason)
        if waiting["kind"] == "mutate":
            self._fail(waiting["trial"], reason)
            self._row(waiting["trial"])["decision"] = "failed"
        self.bracket = None
        self._start_segment(step, "baseline")

    def _close_trial(self, score: float | None, decision: str, *, reason: str) -> None:
        trial = self.trial
        if trial is None:
            return
        self.trial = None
        self._fail(trial["number"], reason)
        self._row(trial["number"])["decision"] = decision

    def _tell(
        self, number: Any, score: float | None, attrs: Mapping[str, Any], study: Any = None
    ) -> None:
        study = study if study is not None else self.study
        if study is None or not isinstance(number, int):
            return
        attrs = json.loads(json.dumps(attrs, default=str))  # a snapshot

        def tell() -> None:
            try:
                study.tell(number, score, attrs)
            except Exception as exc:  # a storage hiccup must not stop training
                self.warnings.append(f"could not record trial {number}: {exc}")

        if self.settings.sync:
            tell()
        else:
            self._worker_().submit(tell)

    def _worker_(self) -> Worker:
        if self._worker is None:
            from ._study import Worker

            self._worker = Worker()
        return self._worker

    def _drain(self) -> None:
        if self._worker is not None:
            self._worker.drain()

    def _expire_proposals(self, reason: str, *, keep: bool = False) -> None:
        """Pending proposals of the tuner as it was: Optuna hears FAIL, the trial's row and
        the ledger say they expired (the row said `proposed` for good, the ledger nothing).
        ``keep``: the proposal itself stays ``pending`` (at the run's end: shown ``ended``)."""
        for p in self.proposals:
            if p["state"] == "pending":  # not a failure: Optuna hears FAIL all the same
                self.counts["expired"] = self.counts.get("expired", 0) + 1
                self._tell(p["trial"], None, {"reason": reason})
                if not keep:
                    p["state"] = "expired"
                self._row(p["trial"]).update(decision="expired", detail={"reason": reason})
                self.host.record({"module": "tune", "op": "expire", "source": "tune",
                                  "decision": "applied", "tune": {"proposal": p["id"],
                                  "trial": p["trial"], "reason": reason}})  # fmt: skip

    def _fail(self, number: Any, reason: str) -> None:
        self.counts["failed"] += 1
        self._tell(number, None, {"reason": reason})

    def _row(self, number: Any) -> dict[str, Any]:
        """The current study's row of trial ``number`` (rows of a study the tuner left have
        its name in ``study``), made when there is none."""
        found = self._row_of(number)
        if found is not None:
            return found
        row: dict[str, Any] = {
            "trial": number,
            "step": None,
            "changes": {},
            "score": None,
            "decision": None,
        }
        self.trials = [*self.trials, row][-_KEEP_ROWS:]
        return row

    def _row_of(self, number: Any) -> dict[str, Any] | None:
        """The current study's row of trial ``number``, if it has one."""
        return next(
            (r for r in reversed(self.trials) if r["trial"] == number and "study" not in r), None
        )

    def _knob(self, name: str) -> Knob | None:
        return next((k for k in self.settings.space if k.name == name), None)

    def _pending(self, ident: Any) -> dict[str, Any] | str:
        for p in self.proposals:
            if p["id"] == ident:
                if p["state"] != "pending":
                    return f"proposal {ident} is {p['state']}, not pending"
                return p
        waiting = [p["id"] for p in self.proposals if p["state"] == "pending"]
        return f"no proposal {ident!r}; pending: {', '.join(waiting) or 'none'}"

    def _values(self, raw: Any) -> dict[str, dict[str, Any]] | str:
        if not isinstance(raw, Mapping) or not raw:
            return "params.values must be {module: {key: value}}, e.g. {'opt': {'lr': 0.001}}"
        for module, kv in raw.items():
            if module not in ("opt", "loss", "custom") or not isinstance(kv, Mapping) or not kv:
                return f"params.values: {module!r} must be opt, loss or custom with {{key: value}}"
        return {m: dict(kv) for m, kv in raw.items()}

    @staticmethod
    def _modules(values: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        return {k: m for m, kv in values.items() for k in kv}

    def _actuate(self, values: Mapping[str, Mapping[str, Any]], env: Env) -> OpResult:
        """Set ``values`` through the actuator stream; all or nothing across modules."""
        changes: dict[str, Any] = {}
        done: list[tuple[str, dict[str, Any]]] = []
        for module, kv in values.items():
            result = self.host.actuate(module, kv, env)
            if result.decision != "applied":
                for back_module, back in reversed(done):
                    self.host.actuate(back_module, back, env)
                return OpResult(result.decision, error=result.error)
            got = result.changes or {}
            changes.update(got)
            done.append((module, {k: c["old"] for k, c in got.items() if "old" in c}))
        return OpResult("applied", changes=changes)

    def _public_settings(self) -> dict[str, Any]:
        from ._study import redact

        out = self.settings.to_dict()
        out["storage"] = redact(out.get("storage"))
        return out

    def _save(self) -> None:
        from ._study import redact

        s = self.settings
        url, name = self._where(s)
        kept, judged = self.counts["kept"], self.counts["kept"] + self.counts["rolled_back"]
        state = {
            "version": 1,
            "mode": self.mode,
            "objective": s.objective,
            "objective_used": self.objective_used,
            "direction": s.direction,
            # the stand-in training loss is minimized whatever the objective asked
            "direction_used": self.objective_used_direction,
            # one of the two is the segment's length; the other is None
            "segment_steps": s.segment_steps if s.segment_evals is None else None,
            "segment_evals": s.segment_evals,
            "study": name,
            "storage": redact(url),
            "study_open": self.study is not None,
            # a shared study: what other runs had put in it when this run opened it
            "study_joined": self.study.joined if self.study is not None else None,
            "enable_cmd": self.enable_cmd,
            "phase": self.phase,
            "trial": self.trial["number"] if self.trial else None,
            "segment_start": self.segment.start,
            "next_boundary": (
                self.segment.start + s.segment_steps - 1
                if s.segment_evals is None
                and self.phase not in ("waiting", "asking")
                and self.mode != "off"
                else None
            ),
            "counts": self.counts,
            # the last segments' levels (the trend's points): what observe mode shows
            "levels": [{"step": round(mid), "level": level} for mid, level in self.history],
            # trials kept of those judged, whoever started them (in suggest mode: of the
            # proposals accepted, those that kept their score); `accept_rate` is its old name
            "kept_rate": kept / judged if judged else None,
            "accept_rate": kept / judged if judged else None,
            "judged": judged,
            "best": self.best,
            "space": [k.to_dict() for k in s.space],
            "warnings": self.warnings,
            "trials": self.trials,
            "proposals": self.proposals,
            "next_proposal": self.next_proposal,
            "bracket": self._bracket_state() or self.bracket_done,
            "settings": self._public_settings(),
            "updated": time.time(),
        }
        try:
            jsonl.write_json_atomic(self._path, state)
        except OSError as exc:
            log.warning("hotcb tune: could not write %s: %s", self._path, exc)


def _numeric(value: Any) -> bool:
    """A number a knob can be moved from (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
