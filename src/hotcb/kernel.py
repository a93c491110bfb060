"""HotKernel: picks up commands at safe points, routes them, and ledgers what happened.

Call ``kernel.apply(env, events)`` at each safe point of the training loop (usually after
``optimizer.step()``). The kernel does all of its work inside that call; it owns no thread and no
socket. The idle path (no poll due, nothing scheduled) is a counter, a clock compare and an int
compare.

The parts, each in its own file (ARCHITECTURE.md has the map):

- :class:`~hotcb._gate.PollGate`: when to look at the commands file;
- :class:`~hotcb._intake.CommandIntake`: read, parse, de-duplicate; the cursor rule;
- :class:`~hotcb._recorder.LedgerRecorder`: number, buffer and write ledger entries;
- handlers, one per command ``module``, all with the module protocol
  (:class:`~hotcb.modules.HotModule`): :class:`~hotcb._stream.ActuatorStream` (opt, loss,
  custom), :class:`~hotcb._control.RunControl`, :class:`~hotcb._freezegate.FreezeGate`, and the
  registered modules (``cb``, …) created on first use;
- :mod:`hotcb._resume`: what a resumed or restarted run applies again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from types import CodeType
from typing import Any

from . import distributed as _dist
from . import jsonl
from ._control import RunControl
from ._freezegate import FreezeGate
from ._gate import PollGate
from ._intake import CommandIntake
from ._recorder import LedgerRecorder, SafePoint
from ._resume import (
    LeftOut,
    NewerCommands,
    branched_before,
    plan_resume,
    refuse_lost_ledger,
    waiting_plan,
)
from ._schedule import NEVER, Schedule, StepSource
from ._signals import DEFAULT_SIGNALS, SignalCatcher, signal_name
from ._stream import ActuatorStream
from ._trials import set_since
from .actuators import HotcbActuator, MutableState, optimizer_actuators
from .errors import PeerLostError
from .freeze import FreezeState, saved_freeze
from .ledger import (
    Decision,
    LedgerWriter,
    iter_entries,
    open_ramps,
    pending_scheduled,
    tail_state,
)
from .metrics import MetricsCollector
from .modules import HotModule, OpResult, create_module, module_specs
from .ops import ACTUATOR_MODULES, HotOp, command_to_hotop, new_cmd_id
from .runfiles import (
    FORMAT_VERSION,
    RunPaths,
    close_run_meta,
    other_live_trainer,
    redact_argv,
    update_run_meta,
    write_run_meta,
)

__all__ = ["HotKernel"]

log = logging.getLogger("hotcb")

Env = Mapping[str, Any]
_TRAIN_STEP_END = ("train_step_end",)
#: Ledger entries whose cmd_id a starting kernel remembers for de-duplication.
_SEEN_AT_START = 2000


#: ``_next_due`` once a signal asked for checkpoint-and-stop: every step is at or past it.
_NOW = -1

#: The run directory of ``HotKernel()`` without one (``hotcb launch`` sets it).
RUN_DIR_ENV = "HOTCB_RUN_DIR"
#: Folders besides the run directory that paths in commands may point into (``allowed_roots``)
ALLOWED_ROOTS_ENV = "HOTCB_ALLOWED_ROOTS"


def _entry_key(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """What tells a ledger entry apart from others: a command's id, source, op and decision
    (one entry each; a later life may have given it another seq), else its seq and op."""
    cmd_id = entry.get("cmd_id")
    if isinstance(cmd_id, str) and cmd_id:
        return cmd_id, entry.get("source"), entry.get("op"), entry.get("decision")
    return entry.get("seq"), entry.get("op")


def _other_trainer_note(pid: int, run_dir: str | None = None) -> str:
    where = f" in {run_dir}" if run_dir else ""
    return (
        f"another trainer (pid {pid} on this host) is still running{where} and has not closed "
        "it: while both run, each applies every command (twice in all) and they write the "
        f"ledger with clashing seqs. Stop one of them (kill {pid} if it is the old one), or "
        "start this one in another run directory"
    )


#: Exceptions a loop ends on by design (an iterator's end, a generator closed), also when
#: ``close()`` is called in the ``except`` that handled them: not a crash.
_NOT_A_CRASH = (StopIteration, StopAsyncIteration, GeneratorExit)


_BEARER = re.compile(r"(?i)\b(bearer)\s+\S+")


def _error_line(exc: BaseException) -> str:
    """``Type: message`` of the error a loop ended on, as ``hotcb.run.json`` keeps it (and the
    dashboard serves it): one line, at most 300 characters, URL secrets as ``***`` (an HTTP
    error quotes the URL it fetched, token and all)."""
    if isinstance(exc, SystemExit):
        text = f"sys.exit({exc.code!r})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    words = redact_argv(_BEARER.sub(r"\1 ***", text).split())  # api_key=…, URL secrets
    line = " ".join(words)
    return line if len(line) <= 300 else line[:299] + "…"


def _run_dir(given: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    if given is not None:
        return given
    env = os.environ.get(RUN_DIR_ENV)
    if not env:
        raise TypeError(
            f"HotKernel() needs a run directory: HotKernel('runs/exp1'), or ${RUN_DIR_ENV} "
            "set (hotcb launch sets it for the command it starts)"
        )
    return env


class HotKernel:
    """The training-side half of hotcb.

    Args:
        run_dir: the run directory (created if missing). Default: ``$HOTCB_RUN_DIR``, which
            ``hotcb launch`` sets for the training command it starts, so a launched script
            needs no hotcb flags.
        debounce_steps: poll at most every this many safe points.
        poll_interval_sec: and not more often than this. Under torch.distributed, rank 0 turns
            it into a number of steps from the measured step time, so every rank agrees.
        mutable_state: actuators beyond the optimizer's (loss weights, custom knobs).
        metrics_collector: where ``env["metrics"]`` goes; default: ``hotcb.metrics.jsonl`` in
            the run directory; ``False`` to not record metrics.
        auto_disable_on_error: disable an actuator after repeated failures, a callback after it
            raises.
        allow_code_load: allow ``cb load`` of user code. Off: no import and no file execution
            from any path (commands, recipes, replay, ``hotcb.yaml``, resume); only hotcb's
            bundled callbacks load. ``allowed_code_dirs`` limits files and modules to those
            directories.
        allowed_roots: folders besides the run directory that paths in commands and recipes
            (recipe, overlay, checkpoint, the tuner's study file) may point into; any other
            path is rejected. Also ``HOTCB_ALLOWED_ROOTS`` (folders separated by ``os.pathsep``),
            added to these: how a ``hotcb launch`` sets it for a training it does not edit.
        replay_commands: start on a run directory whose commands file has content but whose
            ledger is gone, and apply its commands again (default: refuse, since they were
            applied once already). Also ``HOTCB_REPLAY_COMMANDS=1``.
        pause_poll_sec: how often a paused run re-reads commands.
        fsync_ledger: fsync the ledger after each batch of entries.
        run_meta: extra fields for ``hotcb.run.json`` (config, seed, …).
        distributed: use torch.distributed when it is initialised (default) or not (False).
        freeze: start in this freeze state (default: the run directory's ``hotcb.freeze.json``).
        checkpoint_on_signal: on SIGTERM or SIGINT (Ctrl-C), save a checkpoint at the next safe
            point and stop (ledgered with ``source: "signal"``) instead of dying mid-step; a
            second signal does what the first would have done without hotcb. Installed now, in
            the main thread only, chained to any handler you installed; ``close()`` puts the
            previous handlers back. The adapters turn it on for you (:meth:`catch_signals`).
            The checkpoint goes through ``env["save_checkpoint"]``, else
            ``checkpoint_requested`` is set for the loop (save before acting on
            ``stop_requested``).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        debounce_steps: int = 1,
        poll_interval_sec: float = 0.05,
        mutable_state: MutableState | Iterable[HotcbActuator] | None = None,
        metrics_collector: MetricsCollector | bool | None = None,
        auto_disable_on_error: bool = True,
        *,
        allow_code_load: bool = True,
        allowed_code_dirs: Sequence[str | os.PathLike[str]] | None = None,
        allowed_roots: Sequence[str | os.PathLike[str]] = (),
        replay_commands: bool | None = None,
        pause_poll_sec: float = 0.05,
        fsync_ledger: bool = True,
        run_meta: Mapping[str, Any] | None = None,
        distributed: bool | None = None,
        freeze: FreezeState | None = None,
        checkpoint_on_signal: bool = False,
    ) -> None:
        self._gate = PollGate(debounce_steps, poll_interval_sec)
        self._warned: set[str] = set()  # kinds of warning already logged (once each)
        # resolved once: a run started through a link (runs/latest) stays in the directory it
        # started in when the link is pointed elsewhere (it read the other run's commands)
        self.paths = RunPaths(os.path.realpath(os.path.expanduser(os.fspath(_run_dir(run_dir)))))
        self.run_dir = self.paths.root
        self.pause_poll_sec = float(pause_poll_sec)
        self.auto_disable_on_error = auto_disable_on_error
        self.allow_code_load = allow_code_load
        self.allowed_code_dirs = [os.path.abspath(os.fspath(d)) for d in allowed_code_dirs or ()]
        from_env = [d for d in os.environ.get(ALLOWED_ROOTS_ENV, "").split(os.pathsep) if d]
        self.allowed_roots = [os.path.abspath(os.fspath(d)) for d in (*allowed_roots, *from_env)]
        if isinstance(mutable_state, MutableState):
            self.mutable_state = mutable_state
        else:
            self.mutable_state = MutableState(mutable_state or ())
        self.mutable_state.auto_disable = auto_disable_on_error
        self._metrics_arg = metrics_collector
        self.metrics = (
            metrics_collector if isinstance(metrics_collector, MetricsCollector) else None
        )
        self._distributed_arg = distributed
        self._run_meta = dict(run_meta or {})
        self._sync: _dist.DistSync | None = None
        #: what went differently on this rank, for the ranks to settle at the next poll
        self._notes: list[dict[str, Any]] = []
        self._unhandled: list[tuple[Any, ...]] = []  # lines an interrupted batch left
        self.rank = 0
        self.is_leader = True

        os.makedirs(self.run_dir, exist_ok=True)
        if replay_commands is None:
            replay_commands = os.environ.get("HOTCB_REPLAY_COMMANDS", "") not in ("", "0")
        if _dist.first_rank():  # (before entries are read from it)
            self._set_aside_torn_entry()
        if not replay_commands:
            refuse_lost_ledger(self.paths)
        self._other_pid: int | None = None  # another live trainer in this run directory
        self._opened_run = _dist.first_rank()  # this kernel wrote the run's hotcb.run.json
        # the last life ran in this process (a notebook's HotKernel cell run again): its
        # changes are still in force in the objects it steered, unlike a new process's
        self._same_process = self._opened_run and (
            (jsonl.read_json(self.paths.run_meta, {}) or {}).get("pid") == os.getpid()
        )
        if self._opened_run:  # the run's files exist from here on: `hotcb status` sees it
            self._warn_if_open_to_all()
            for path in (self.paths.commands, self.paths.ledger):
                if not os.path.exists(path):  # an idle poll is one stat, no raise; and a
                    # ledger that goes missing later is noticed. Never through a link planted
                    # there (it made its target); refused again, and said, where it is written
                    with contextlib.suppress(OSError):
                        os.close(jsonl.open_own(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)[0])
            other = self._other_trainer()  # before our pid replaces its own
            self._other_pid = other["pid"] if other else None
            extra = {**self._run_meta, "other_trainer": other} if other else self._run_meta
            write_run_meta(self.paths, extra, self._warn)
        seq, cursor = tail_state(self.paths.ledger)
        # a writer that re-sends a command (a retry) right after a restart is still a noop:
        # remember the ids of the ledger's recent entries (its tail only, so start stays cheap)
        recent = (e.get("cmd_id") for e in jsonl.read_last(self.paths.ledger, _SEEN_AT_START))
        seen = (c for c in recent if isinstance(c, str) and not c.startswith("@"))
        self._intake = CommandIntake(self.paths.commands, cursor, seen)
        self._ledger = LedgerRecorder(LedgerWriter(self.paths.ledger, fsync=fsync_ledger),
                                      self._intake, seq)  # fmt: skip
        self._schedule = Schedule()
        self._sources: list[StepSource] = [self._schedule]
        self._newer: NewerCommands | None = None  # set by a resume that re-applies commands
        self._stream = ActuatorStream(
            self.mutable_state, self._ledger, self.paths.actuators, warn=self._warn,
            history_path=self.paths.knobs,
        )  # fmt: skip
        self._ledger.coming = self._coming
        self._control = RunControl(
            self._ledger,
            lambda: self._schedule,
            lambda name: self._handlers.get(name),
            ledger_path=self.paths.ledger,
            run_dir=self.run_dir,
            allowed_roots=self.allowed_roots,
        )
        self._freeze = FreezeGate(
            freeze if freeze is not None else self._saved_freeze(),
            self._ledger,
            run_dir=self.run_dir,
            state_path=self.paths.freeze,
            allowed_roots=self.allowed_roots,
            plug=self._swap_source,
        )
        self._freeze.save_at_start = freeze is not None  # HotKernel(freeze=...): for status
        #: command ``module`` -> its handler: built-ins first, registered modules on first use
        self._handlers: dict[str, HotModule] = {
            **dict.fromkeys(ACTUATOR_MODULES, self._stream),
            "control": self._control,
            "freeze": self._freeze,
        }
        self._modules: dict[str, HotModule] = {}  # the registered ones, created so far
        self._event_modules: list[HotModule] = []
        self._next_due = NEVER
        self._next_refresh = 0.0
        self._polled_env: Env | None = None  # the last poll's: close() reads the final values
        self._next_beat = 0.0  # the next heartbeat (time.monotonic())
        self._started = False
        self._closed = False
        self._pid = os.getpid()  # a process forked from this one closes nothing (close())
        self._state_loaded = False  # load_state_dict() restored the schedule from a checkpoint
        self._last_step: Any = None  # the step of the last apply()
        self._signals = SignalCatcher(self._on_signal, lambda: not self._closed)
        self._caught_at_close: tuple[int, ...] = ()  # what reopen() catches again
        self._stopped_by: str | None = None  # the signal that stopped the run
        if checkpoint_on_signal:
            self.catch_signals()

    # ------------------------------------------------------------------ the safe point
    def apply(
        self, env: Env, events: Sequence[str] = _TRAIN_STEP_END, *, deliver: bool = True
    ) -> None:
        """Run at a safe point: forward metrics, pick up and apply commands that are due, and
        dispatch ``events`` to loaded callbacks. Never raises into the training loop, but for
        :class:`~hotcb.errors.PeerLostError` under torch.distributed (a rank died: the run
        cannot go on with the others, and a pause must not silently end).

        ``deliver=False``: ``events`` are this safe point's (a recipe's entry at one of them is
        due here) but loaded callbacks do not get them: an adapter hands them over later, with
        :meth:`observe` (the HF Trainer logs a step's loss after its safe point)."""
        try:
            step = env["step"]
        except (KeyError, TypeError):
            self._warn("no_step", "HotKernel.apply(env) needs env['step']; call ignored")
            return
        self._last_step = step  # what close() records as the run's last step
        try:
            if not self._started:
                self._start(env)
            if "metrics" in env and self.metrics is not None:
                self._log_metrics(env, step)
            gate = self._gate  # the gate's idle check, inline: this is the hot path
            if self._sync is None:
                gate.countdown -= 1
                if gate.countdown <= 0:
                    gate.countdown = gate.debounce_steps
                    now = time.monotonic()
                    if now >= gate.next_time:
                        gate.next_time = now + gate.interval
                        self._poll(env, step, events)
            elif step >= gate.next_step:
                self._poll(env, step, events)
            if step >= self._next_due:
                self._run_due(env, step, events, deliver)
            elif self._event_modules and deliver:
                self._dispatch(env, events)
            if self._ledger.out:
                self.flush()
        except BaseException as exc:  # hotcb's own bug (kept out of training) or a Ctrl-C
            self._left_with(exc)

    def observe(self, env: Env, events: Sequence[str] = ()) -> None:
        """Metrics that come between safe points (the HF Trainer logs its training loss after
        the step's ``on_step_end``): recorded like ``apply``'s, and shown to the modules that
        watch metrics (the tuner), with no poll and no command applied. ``events``: the ones an
        adapter held back from the step's safe point so that loaded callbacks get them with
        these metrics (none by default). ``env`` needs ``step`` and ``metrics``. Never raises
        into the training loop."""
        try:
            step = env["step"]
            if not self._started:  # no stream yet; the first safe point starts the kernel
                return
            if "metrics" in env and self.metrics is not None:
                self._log_metrics(env, step)
            if self._event_modules:
                self._dispatch(env, events)
            if self._ledger.out:
                self.flush()
        except BaseException as exc:  # hotcb's own bug (kept out of training) or a Ctrl-C
            self._left_with(exc)

    def catch_up(self, env: Env, events: Sequence[str]) -> None:
        """Apply what fell due at ``env["step"]``'s ``events`` that the framework will not run
        again: a run resumed from a checkpoint saved at a batch's end, before that step's
        validation (Lightning does not validate it again). A replayed recipe's entries at
        those events and the changes the resume re-applies at that step land there, before
        the first resumed batch, as in the saved run. Nothing else: no poll (a live command
        waits for the next safe point, as it would have), no callback event, no ramp step.
        Never raises into the training loop."""
        try:
            step = env["step"]
            if not self._started:
                self._start(env)
            if step < self._next_due or env.get("is_accumulation_step"):
                return
            point = self._enter(step, events)
            for source in list(self._sources):
                for op in source.pop_due(step, events):
                    self._route(op, env, point)
            self._refresh_due(step)
            if self._ledger.out:
                self.flush()
        except BaseException as exc:  # hotcb's own bug (kept out of training) or a Ctrl-C
            self._left_with(exc)

    @property
    def takes_events(self) -> bool:
        """Whether a module takes events now (a loaded callback, the tuner): an adapter that
        holds a step's event back until its metrics come (:meth:`observe`) needs to know."""
        return bool(self._event_modules)

    def reached(self, step: int) -> None:
        """The loop got to ``step`` past its last ``apply()`` (a hook skipped the steps
        after it, as :meth:`nothing_due` allows): the step :meth:`close` records as the run's
        last (``hotcb status``: "finished at step N"). The adapters call it when training
        ends; a loop that calls ``apply()`` every step need not."""
        last = self._last_step
        if not isinstance(last, int) or isinstance(last, bool) or step > last:
            self._last_step = int(step)

    def nothing_due(self, step: int) -> bool:
        """Would ``apply(env)`` at ``step`` do nothing and change nothing? Then a framework hook
        may skip the call and the building of its env (metrics to record at this step are the
        hook's to know: it calls ``apply`` for them anyway).

        True when the kernel has started, no poll is due (alone: ``debounce_steps=1`` and the
        clock not due; under torch.distributed: before the agreed poll step), no op is due, no
        callback wants events and no ledger entry waits. With ``debounce_steps > 1`` (alone)
        every safe point counts towards the next poll, so ``apply`` is not skipped then."""
        if not self._started or self._ledger.out or self._event_modules or step >= self._next_due:
            return False
        gate = self._gate
        if self._sync is not None:
            return step < gate.next_step
        return gate.debounce_steps == 1 and time.monotonic() < gate.next_time

    def _poll(self, env: Env, step: int, events: Sequence[str]) -> None:
        if env.get("is_accumulation_step"):
            self._gate.defer(step)  # a change lands on an optimizer-step boundary only
            return
        point = self._enter(step, events)
        self._polled_env = env
        self._signals.reinstate()  # a notebook's cell took SIGINT back (nothing when none)
        self._stream.catch_up(env)
        lines = self._read()
        if self._sync is not None:
            lines = self._sync_batch(lines, step, env)
        if lines:
            self._handle_lines(lines, env, point)
            if self._sync is not None:
                self._settle_batch(env)
        if self._control.paused:
            self._pause_loop(env, point)
        now = time.monotonic()  # the poll's clock: the idle path of apply() pays nothing
        self._heartbeat(step, now)
        if (self._event_modules or not lines) and now >= self._next_refresh:
            self._next_refresh = now + 1.0
            self._stream.refresh(env)

    def _run_due(self, env: Env, step: int, events: Sequence[str], deliver: bool) -> None:
        """What falls due at this step, then the step's events, then the checkpoints asked
        for (after the events: the callbacks' state in it holds this step too)."""
        if env.get("is_accumulation_step"):
            if self._event_modules and deliver:
                self._dispatch(env, events)
            return
        point = self._enter(step, events)
        for source in list(self._sources):
            for op in source.pop_due(step, events):
                self._route(op, env, point)
        if self._stream.ramps:
            self._stream.advance(env, point)
        if self._control.signal is not None:
            self._take_signal(env, point)
        self._stream.write_if_changed(step)
        if self._event_modules and deliver:
            self._dispatch(env, events)
        if self._control.due:
            self._control.save_due(env, self._ledger.point)
        self._refresh_due(step)

    def _enter(self, step: int, events: Sequence[str]) -> SafePoint:
        point = SafePoint(step, events[0] if events else "train_step_end")
        self._ledger.point = point
        return point

    def _warn_if_open_to_all(self) -> None:
        """Say so when any user of the machine may write the run directory: whoever can write
        its commands file (or put another in its place) steers the run, and runs code in it
        while code loading is on."""
        try:
            mode = os.stat(self.run_dir).st_mode
        except OSError:
            return
        if not mode & stat.S_IWOTH:
            return
        code = ", and run code in it (code loading is on)" if self.allow_code_load else ""
        log.warning(
            "hotcb: %s can be written by every user of this machine (mode %s): any of them "
            "can steer this run through its commands file%s; chmod o-w it, or keep runs in a "
            "folder of your own", self.run_dir, oct(stat.S_IMODE(mode)), code,
        )  # fmt: skip

    def _heartbeat(self, step: Any, now: float) -> None:
        """Rank 0 replaces ``hotcb.heartbeat.json`` (step, wall time, pid, the ledger's seq),
        at most once a second: the dashboard sees a live run even when it records no metrics,
        and a restart tells a ledger emptied since from one that never held an entry."""
        if now < self._next_beat:
            return
        self._next_beat = now + 1.0
        if not self.is_leader:
            return
        path = self.paths.heartbeat
        # A whole new file, then unlink and rename: a reader sees the last beat, the new one or
        # (for microseconds) none, never half of one. Not os.replace: renaming over a file
        # makes ext4 flush the new one first (auto_da_alloc), milliseconds on the training
        # thread; this is about a hundred microseconds (benchmarks/overhead.py). The new file
        # has a random name and is created here (O_EXCL), never opened through a link that a
        # writer of the run directory planted under a name it could guess.
        try:
            data = (
                f'{{"step":{int(step)},"wall_time":{time.time()!r},"pid":{os.getpid()},'
                f'"seq":{self._ledger.written}}}'
            )  # (seq: a ledger emptied later is lost)
            fd, tmp = jsonl.create_temp(path)
            try:
                try:
                    os.write(fd, data.encode())
                finally:
                    os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.rename(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except (OSError, TypeError, ValueError) as exc:
            self._warn("heartbeat", f"could not write {self.paths.heartbeat}: {exc!r}")

    # ------------------------------------------------------------------ commands
    def _read(self) -> list[tuple[Any, ...]]:
        if not self.is_leader:
            return []
        lines, reset, error = self._intake.read()
        if reset is not None:
            self._intake.life_start = 0  # a new file: every line in it is this life's
            self._ledger.emit(
                self._ledger.point, decision=Decision.NOOP.value, source="kernel",
                module="kernel", op="cursor_reset", error=reset,
            )  # fmt: skip
        if error is not None:
            log.warning("hotcb: %s", error)  # once until it changes or a read succeeds
        if lines and self._intake.life_start:  # the first lines after a restart
            lines = self._intake.mark_earlier_life(lines)
        if self._unhandled:  # what an interrupt left of the last batch goes first
            lines, self._unhandled = [*self._unhandled, *lines], []
        return lines

    def _sync_batch(
        self, lines: list[tuple[Any, ...]], step: int, env: Env
    ) -> list[tuple[Any, ...]]:
        """Every rank gets rank 0's batch and the step of the next poll rank 0 chose, and the
        ranks settle the notes any of them took since the last poll (:meth:`note_for_ranks`):
        one collective when there are none."""
        assert self._sync is not None
        nxt = self._gate.plan(step, time.monotonic(), busy=bool(lines)) if self.is_leader else 0
        lines, self._gate.next_step, noted = self._sync.exchange(lines, nxt, len(self._notes))
        if noted:
            self._settle(env)
        return lines or []

    def _settle_batch(self, env: Env) -> None:
        """After a batch (under torch.distributed): a command that failed on some ranks only
        (a callback whose constructor raises there) is settled at this same poll, before any
        callback sees an event. One more small collective, on polls that brought commands."""
        assert self._sync is not None
        if self._sync.count(len(self._notes)):
            self._settle(env)

    def _settle(self, env: Env) -> None:
        """Every rank's notes, the same list on every rank, each module's handed to its
        ``settle(notes, env)``, which applies the same outcome on every rank (and ledgers it:
        rank 0 writes, every rank numbers the entries alike)."""
        assert self._sync is not None
        mine, self._notes = self._notes, []
        notes = self._sync.gather(mine)
        by_module: dict[str, list[dict[str, Any]]] = {}
        for note in notes:
            by_module.setdefault(str(note.get("module")), []).append(note)
        for name, group in by_module.items():
            try:
                settle = getattr(self.module(name), "settle", None)
                if callable(settle):
                    settle(group, env)
            except Exception as exc:  # a module's own bug: ledger it, keep training
                self._error(f"settling what the ranks noted for module {name!r} failed: {exc!r}")
        self._refresh_event_modules()

    def _handle_lines(self, lines: list[tuple[Any, ...]], env: Env, point: SafePoint) -> None:
        intake = self._intake
        intake.begin(lines)
        try:
            for i, (end, raw, *stale) in enumerate(lines):
                if not raw.strip():
                    continue
                seq = self._ledger.seq
                try:
                    self._handle_line(raw, end, env, point, stale[0] if stale else None)
                except Exception as exc:  # the cursor is past this batch: ledger it, go on
                    self._ledger.emit(
                        point, cmd_id=f"@{end - len(raw) - 1}", source="kernel",
                        decision=Decision.FAILED.value, cursor=end,
                        error=f"could not handle the line: {type(exc).__name__}: {exc}",
                    )  # fmt: skip
                except BaseException:  # a Ctrl-C: the rest of the batch at the next poll
                    self._carry_interrupted(lines, i, seq)
                    raise
        finally:
            intake.end()
        self._stream.write_if_changed(point.step)

    def _carry_interrupted(self, lines: list[tuple[Any, ...]], i: int, seq: int) -> None:
        """An interrupt (Ctrl-C) cut the batch short in line ``i``: the lines after it, and
        that one when it has no entry yet (a save or a callback's load cut short), are handled
        at the next poll: the read position is past them, and they would be lost."""
        again = self._ledger.seq == seq
        if again:
            self._intake.forget(*lines[i][:2])
        self._unhandled = lines[i if again else i + 1 :]

    def _handle_line(
        self, raw: bytes, end: int, env: Env, point: SafePoint, stale: str | None = None
    ) -> None:
        parsed = self._intake.parse(raw, end)
        if isinstance(parsed, dict):
            self._ledger.emit(point, **parsed)
        elif not self._intake.first_time(parsed.cmd_id):
            error = f"duplicate cmd_id {parsed.cmd_id!r}: already handled"
            self._ledger.emit_op(parsed, point, Decision.NOOP, error=error)
        elif stale is not None:  # (CommandIntake.mark_earlier_life)
            self._ledger.emit_op(parsed, point, Decision.NOOP, error=stale)
        elif parsed.at_step is not None and parsed.at_step > point.step:
            self._schedule_op(parsed, point)
        else:
            self._route(parsed, env, point)

    def _schedule_op(self, op: HotOp, point: SafePoint) -> None:
        if self._refused(op, point):
            return
        if op.module in ACTUATOR_MODULES:
            error = self._stream.check(op)
            if error is not None:
                self._ledger.emit_op(op, point, Decision.REJECTED, error=error)
                return
        self._schedule.push(op.at_step or 0, op)
        extra: dict[str, Any] = {"at_step": op.at_step}
        if op.transition is not None:  # so a restarted kernel can re-queue it whole
            extra["transition"] = op.transition.to_dict()
        self._ledger.emit_op(op, point, Decision.SCHEDULED, extra=extra)
        self._refresh_due(point.step)

    def _route(self, op: HotOp, env: Env, point: SafePoint) -> None:
        """Apply ``op`` through its module's handler and ledger the result."""
        if self._refused(op, point):
            return
        if (
            self._control.due
            and op.source == "signal"
            and op.module == "control"
            and op.op == "stop"
        ):
            # a signal's checkpoint came just before (under torch.distributed, in the same
            # batch of commands on every rank): saved now, so the ledger reads checkpoint, then
            # stop, and the checkpoint is on disk before anything acts on the stop
            self._control.save_due(env, point)
        left: LeftOut | None = None
        if self._newer is not None:
            kept, left = self._newer.screen(op)
            if kept is None and left is not None:  # a newer command set it: the newest wins
                self._ledger.emit_op(op, point, Decision.NOOP, error=left.why,
                                     extra={"newer": left.newer})  # fmt: skip
                return
            op = kept or op
        try:
            handler = self._handlers.get(op.module) or self.module(op.module)
        except (ImportError, KeyError) as exc:
            error = f"module {op.module!r} is not available: {exc}"
            self._ledger.emit_op(op, point, Decision.REJECTED, error=error)
            return
        try:
            result = handler.apply(op, env)
        except Exception as exc:  # a bug in hotcb or a module must not reach the loop
            self._ledger.emit_op(
                op, point, Decision.FAILED, error=f"{type(exc).__name__}: {exc}",
                extra={"traceback": traceback.format_exc(limit=8)},
            )  # fmt: skip
            return
        if result is not None:  # None: the handler ledgers it later (a checkpoint)
            extra = {"newer": left.newer} if left else None
            if left and result.error is None:  # the keys a newer command set are left out
                result.error = left.why
            entry = self._ledger.emit_result(op, point, result, extra)
            if self._newer is not None and result.decision == Decision.APPLIED.value:
                self._newer.note(op, result.changes, entry["seq"])
        if handler is not self._stream:
            self._refresh_event_modules()  # e.g. a cb load, or undoing a cb disable
        self._refresh_due(point.step)

    def _refused(self, op: HotOp, point: SafePoint) -> bool:
        """Ledger ``op`` as ``ignored_freeze`` when the freeze mode refuses it."""
        reason = self._freeze.blocks(op)
        if reason is not None:
            self._ledger.emit_op(op, point, Decision.IGNORED_FREEZE, error=reason)
        return reason is not None

    def _pause_loop(self, env: Env, point: SafePoint) -> None:
        control = self._control
        if control.due:
            control.save_due(env, point)
        # the values in force as the run waits, before the pause's entry says it waits (an LR
        # scheduler moved lr since the last once-a-second look: the actuators file, status and
        # the page showed an older lr for the whole pause, to a person deciding what to set)
        self._next_refresh = time.monotonic() + 1.0
        self._stream.refresh(env)
        self.flush()
        while control.paused and not control.stop_requested and not self._closed:
            if control.signal is not None:
                if self._sync is None:
                    break  # apply() goes on to the checkpoint and the stop
                self._take_signal(env, point)  # under DDP: rank 0 sends them to every rank
            time.sleep(self.pause_poll_sec)
            self._heartbeat(point.step, time.monotonic())  # paused, not gone
            lines = self._read()
            if self._sync is not None:
                lines = self._sync_batch(lines, point.step, env)
            if lines:
                self._handle_lines(lines, env, point)
                if self._sync is not None:
                    self._settle_batch(env)
                if control.due:  # a checkpoint asked for while paused is saved right away
                    control.save_due(env, point)
                self.flush()
        if self._closed and control.paused:  # close() from another thread (an app's stop
            control.stop_requested = True  # button) ends the loop; it did not resume it
        if control.stop_requested:
            control.paused = False

    # ------------------------------------------------------------------ modules
    def module(self, name: str) -> HotModule:
        """The handler of command module ``name`` (a registered module is created on first
        use)."""
        handler = self._handlers.get(name)
        if handler is None:
            handler = create_module(name, self)
            self._modules[name] = self._handlers[name] = handler
            self._refresh_event_modules()
        return handler

    def record(self, entry_fields: Mapping[str, Any]) -> None:
        """Add an entry to the ledger (modules use this, e.g. for ``callback_error``); step and
        event default to the current safe point's."""
        fields = dict(entry_fields)
        fields.setdefault("source", "kernel")
        self._ledger.emit(self._ledger.point, **fields)

    @property
    def world_size(self) -> int:
        """The number of ranks under torch.distributed (1 alone, or before the first
        ``apply``)."""
        return self._sync.world_size if self._sync is not None else 1

    def note_for_ranks(self, note: dict[str, Any]) -> bool:
        """Under torch.distributed, keep ``note`` (a dict with the ``module`` it is for; this
        rank is added as ``rank``) for the ranks to settle at the next poll: every rank then
        gets every rank's notes and the module's ``settle(notes, env)`` applies the same
        outcome everywhere. The module may update the dict until then (an error count).
        False alone: nothing to agree on, the module acts at once."""
        if self._sync is None:
            return False
        note["rank"] = self.rank
        self._notes.append(note)
        return True

    def submit(self, record: Mapping[str, Any]) -> None:
        """Append a command a module decided on (the tuner's mutations) to the commands file,
        so it takes the path of every command: each rank applies it at the same step, the
        ledger records it. Alone, the next safe point polls for it; under torch.distributed
        it lands at the next agreed poll step. Leader only."""
        if not self.is_leader:
            return
        jsonl.append(self.paths.commands, dict(record))
        if self._sync is None:
            self._gate.countdown, self._gate.next_time = 1, 0.0

    def actuate(self, module: str, params: Mapping[str, Any], env: Env) -> OpResult:
        """Set actuator values now, through the actuator stream (validation, ramps ended,
        roll-back of a partial change); the result holds the ``changes``."""
        op = HotOp(module=module, op="set_params", cmd_id="", params=dict(params))
        return self._stream.apply(op, env)

    def read_actuator(self, module: str, key: str, env: Env | None = None) -> Any:
        """An actuator's current value (None when there is no such actuator): read live from
        ``env`` when given (an LR scheduler moves lr between the kernel's looks), else the
        value the kernel last saw."""
        act = self.mutable_state.get(key)
        if act is None or act.group != module:
            return None
        if env is not None:
            try:
                return act.read(env)
            except Exception:  # a reader that fails here: the last value seen
                pass
        return act.current_value

    def actuator_bounds(self, module: str, key: str) -> tuple[float | None, float | None]:
        """An actuator's ``(min, max)`` (None where it has no bound, or no such actuator)."""
        act = self.mutable_state.get(key)
        if act is None or act.group != module:
            return None, None
        return act.min_value, act.max_value

    @property
    def resumed(self) -> bool:
        """:meth:`load_state_dict` restored this life from a checkpoint."""
        return self._state_loaded

    def describe_actuators(self) -> list[dict[str, Any]]:
        """The run's actuators as ``hotcb.actuators.json`` lists them."""
        return self.mutable_state.describe_all()

    def commanded_since(self, step: int, after: int | None = None) -> list[tuple[str, str]]:
        """``(module, key)`` of the actuators a command (a person's, the autopilot's, a
        schedule's, an undo, a ramp) changed at ``step`` or later; with ``after`` (a
        :meth:`command_mark` of this process), changed after that mark, which orders commands
        within a step. A module's own :meth:`actuate` is not a command."""
        changed = self._stream.commanded_since(step, after)
        return [(act.group, act.param_key) for k in changed if (act := self.mutable_state.get(k))]

    def commanded_relative(self, module: str, key: str) -> bool:
        """Whether the last command that set ``module.key`` was a factor of the value then in
        force (``relative_to``, the autopilot's ``lr_mult``), not a value."""
        act = self.mutable_state.get(key)
        return act is not None and act.group == module and key in self._stream.relative

    def command_mark(self) -> int:
        """A mark of the commands applied so far in this process (the same on every rank), for
        :meth:`commanded_since`."""
        return self._stream.noted

    def steps_horizon(self, env: Env) -> int | None:
        """The run's length in steps now: the framework's where it owns one (the adapters'
        ``env["max_steps"]``), else :attr:`max_steps`, which ``hotcb extend`` moves in a bare
        loop while the loop may keep passing the ``max_steps`` it started with."""
        return self._control.horizon_now("max_steps", env)

    def value_before(
        self, module: str, key: str, old: Any, new: Any, env: Env
    ) -> tuple[Any, float | None]:
        """What taking back a change ``old -> new`` sets now (see
        :meth:`ActuatorStream.value_before`: on an LR scheduler's schedule), and the factor."""
        act = self.mutable_state.get(key)
        if act is None or act.group != module:
            return old, None
        return self._stream.value_before(key, old, new, env)

    def _coming(self) -> list[tuple[int, HotOp]]:
        """``(step, op)`` of the changes a resume has yet to re-apply (see
        ``LedgerRecorder.coming``)."""
        return [(at, op) for at, op in self._schedule.ops() if op.source == "resume"]

    def set_since(self, entry: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
        """The keys of ``entry`` a later command set again (see :func:`hotcb._trials.set_since`)."""
        return set_since(self._ledger.trials(), entry, keys)

    def _dispatch(self, env: Env, events: Sequence[str]) -> None:
        step = env["step"]
        if self._ledger.point.step != step:  # what a module records lands at this step
            self._enter(step, events)
        for mod in self._event_modules:
            try:
                mod.on_events(events, env)
            except Exception as exc:  # a module's own bug: ledger it, keep training
                self._error(f"dispatch failed: {exc!r}")

    def _refresh_event_modules(self) -> None:
        self._event_modules = [m for m in self._modules.values() if m.wants_events]

    # ------------------------------------------------------------------ step sources
    def add_step_source(self, source: StepSource) -> None:
        """Plug in ops that fall due by step (a recipe player, a resume replay)."""
        self._sources.append(source)
        self._refresh_due(self.step)

    def remove_step_source(self, source: StepSource) -> None:
        if source in self._sources:
            self._sources.remove(source)
        self._refresh_due(self.step)

    def _swap_source(self, old: StepSource | None, new: StepSource | None) -> None:
        if old is not None:
            self.remove_step_source(old)
        if new is not None:
            self.add_step_source(new)

    def _refresh_due(self, step: int) -> None:
        self._next_due = min(
            min((s.next_step() for s in self._sources), default=NEVER),
            self._stream.next_step(step),
            self._control.next_step(step),
        )
        if self._control.signal is not None:  # a signal that came while this was computed
            self._next_due = _NOW

    # ------------------------------------------------------------------ actuators
    def register_actuator(self, actuator: HotcbActuator, *, replace: bool = False) -> None:
        """Expose one more parameter to commands (also possible while training runs)."""
        self.mutable_state.register(actuator, replace=replace)
        if actuator.group == "opt":
            self._stream.opt_registered = True
        if self._started:
            self._stream.needs_init = True  # read its value at the next poll, with that env

    def register_optimizer(self, optimizer: Any, *, schedulers: Sequence[Any] = ()) -> None:
        """Register lr / weight_decay / momentum|betas actuators for ``optimizer``."""
        for act in optimizer_actuators(optimizer, schedulers=schedulers):
            self.register_actuator(act, replace=True)

    # ------------------------------------------------------------------ run control
    @property
    def paused(self) -> bool:
        return self._control.paused

    @property
    def stop_requested(self) -> bool:
        """A ``stop`` was applied: the loop should end after this step."""
        return self._control.stop_requested

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        self._control.stop_requested = value

    @property
    def checkpoint_requested(self) -> bool:
        """A ``checkpoint`` was applied and ``env`` had no ``save_checkpoint``: save one and
        set this back to False."""
        return self._control.checkpoint_requested

    @checkpoint_requested.setter
    def checkpoint_requested(self, value: bool) -> None:
        self._control.checkpoint_requested = value
        if not value:
            self._control.checkpoint_path_requested = None

    @property
    def checkpoint_path_requested(self) -> str | None:
        """The absolute path the ``checkpoint`` command named (``hotcb checkpoint --path``),
        inside the run directory or an allowed root; None: save where you always do."""
        return self._control.checkpoint_path_requested

    @property
    def evaluate_requested(self) -> bool:
        """An ``evaluate`` was applied and ``env`` had no ``request_evaluate``: run your
        evaluation and set this back to False (``hotcb evaluate``, the dashboard's button)."""
        return self._control.evaluate_requested

    @evaluate_requested.setter
    def evaluate_requested(self, value: bool) -> None:
        self._control.evaluate_requested = value

    @property
    def max_steps(self) -> int | None:
        """The run's horizon in optimizer steps: a bare loop trains while it has done fewer.

        Seeded from the first ``env["max_steps"]`` (or set it yourself), moved by
        ``hotcb extend`` and restored from a checkpoint; None when unknown. With an adapter the
        framework's own horizon moves too (``trainer.fit_loop``, the HF ``state.max_steps``)."""
        return self._control.max_steps

    @max_steps.setter
    def max_steps(self, value: int | None) -> None:
        self._control.max_steps = value

    @property
    def max_epochs(self) -> int | None:
        """The horizon in epochs, like :attr:`max_steps` (from ``env["max_epochs"]``)."""
        return self._control.max_epochs

    @max_epochs.setter
    def max_epochs(self, value: int | None) -> None:
        self._control.max_epochs = value

    @property
    def horizon(self) -> dict[str, int]:
        """What ``extend`` set (or a checkpoint restored): ``{"max_steps": N}`` and/or
        ``{"max_epochs": E}``; empty while the run keeps the horizon it started with. An
        adapter applies it to the trainer after restoring a checkpoint."""
        return dict(self._control.extended)

    @property
    def freeze(self) -> FreezeState:
        return self._freeze.state

    @property
    def step(self) -> int:
        """The step of the last safe point that did any work."""
        return self._ledger.point.step

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Scheduled ops still waiting, as ``{"at_step", "cmd_id", "module", "op", "params"}``."""
        return [
            {"at_step": s, "cmd_id": op.cmd_id, "module": op.module, "op": op.op,
             "params": op.params}
            for s, op in self._schedule.ops()
        ]  # fmt: skip

    # ------------------------------------------------------------------ signals
    def catch_signals(
        self, signals: Sequence[int] = DEFAULT_SIGNALS, *, within: CodeType | None = None
    ) -> tuple[int, ...]:
        """Checkpoint and stop at the next safe point on these signals (default SIGTERM and
        SIGINT) instead of dying mid-step; see ``checkpoint_on_signal``. Returns the signals
        caught (none outside the main thread; a signal set to ``SIG_IGN`` stays ignored).
        Calling it again adds signals; :meth:`release_signals` or :meth:`close` undoes it.

        ``within``: the code of the function that runs the training loop (an adapter's, whose
        framework tells it of no error). A signal that comes while no frame of it runs (the
        loop raised) does what it did before hotcb, and the handlers are released."""
        caught = self._signals.install(signals)
        self._signals.within(within)
        return caught

    @property
    def signals_caught(self) -> tuple[int, ...]:
        """The signals :meth:`catch_signals` installed for (and not released yet)."""
        return self._signals.installed

    @property
    def signal_pending(self) -> bool:
        """A signal asked for checkpoint-and-stop and no safe point has handled it yet."""
        return self._control.signal is not None

    def release_signals(self) -> None:
        """Put back the signal handlers :meth:`catch_signals` replaced."""
        self._signals.restore()

    def reclaim_signals(self, signals: Sequence[int] = DEFAULT_SIGNALS) -> tuple[int, ...]:
        """Make hotcb's handler the installed one again for these of the signals it catches,
        replacing a handler installed over it since (a framework's, which called hotcb's after
        its own) rather than being chained by it: for a framework whose own answer to the
        signal breaks checkpoint-and-stop (Lightning under DDP raises ``SIGTERMException`` on
        every rank before the ranks agree on the checkpoint). Returns the signals whose handler
        it replaced; :meth:`release_signals` still puts back the handlers hotcb replaced
        first."""
        return self._signals.reclaim(signals)

    def _on_signal(self, signum: int) -> None:
        # inside the signal handler: two stores, no I/O; the next apply() does the work
        self._control.signal = signum
        self._next_due = _NOW

    def _take_signal(self, env: Env, point: SafePoint) -> None:
        """A checkpoint, then a stop, both ``source: "signal"``. Under torch.distributed rank 0
        sends them as commands, so every rank saves and stops at the same step."""
        signum, self._control.signal = self._control.signal, None
        if signum is None:
            return
        name = signal_name(signum)
        self._stopped_by = name
        if not self.is_leader:  # rank 0 sends the checkpoint and the stop to every rank
            self._signals.leave()
            log.warning("hotcb: %s on rank %d: left to rank 0 (every rank saves and stops when "
                        "the signal reaches rank 0; a second %s ends this rank)",
                        name, self.rank, name)  # fmt: skip
            return
        when = ("at this safe point" if self._sync is None else
                f"at the next poll every rank agrees on (step {self._gate.next_step} at the "
                "latest)")  # fmt: skip
        log.warning("hotcb: %s: saving a checkpoint and stopping %s", name, when)
        records: list[dict[str, Any]] = [
            {"cmd_id": new_cmd_id(), "source": "signal", "module": "control", "op": op,
             "params": {}, "reason": f"{name} received"}
            for op in ("checkpoint", "stop")
        ]  # fmt: skip
        if self._sync is not None:
            for record in records:
                self.submit(record)
            return
        for record in records:  # _route saves the checkpoint before it applies the stop
            self._route(command_to_hotop(record), env, point)

    # ------------------------------------------------------------------ start, state, close
    def _start(self, env: Env) -> None:
        self._started = True
        self._control.seed_horizon(env)
        self._ledger.point = SafePoint(int(env["step"]))
        if self._closed:  # a loop after close(): the same kernel, its modules already started
            self.reopen()
            return
        self._find_rank()
        if self.is_leader:
            if self._metrics_arg is None:
                self.metrics = MetricsCollector(self.run_dir)
        elif not isinstance(self._metrics_arg, MetricsCollector):
            self.metrics = None
        if self._metrics_arg is False:
            self.metrics = None
        self._stream.discover(env)
        if not self._state_loaded:
            self._started_without_checkpoint()
        for name, spec in module_specs().items():
            if name not in self._handlers and spec.start_when and spec.start_when(self.paths):
                try:
                    self.module(name).on_start(env)
                except Exception as exc:  # e.g. a broken hotcb.yaml: ledger it, keep training
                    self._error(f"module {name!r} failed to start: {exc!r}")
                    if self.is_leader:  # said where the trainer runs too, not in the ledger only
                        log.warning("hotcb: module %r failed to start (training goes on "
                                    "without it): %s", name, exc)  # fmt: skip
        self._freeze.on_start(env)
        if self._other_pid is not None and self.is_leader:  # `hotcb status` shows the ledger
            self._ledger.emit(
                self._ledger.point, source="kernel", module="kernel", op="other_trainer",
                decision=Decision.NOOP.value, other_pid=self._other_pid,
                error=_other_trainer_note(self._other_pid),
            )  # fmt: skip
        self._refresh_event_modules()
        self._refresh_due(self.step)

    def _find_rank(self) -> None:
        """This process's rank under torch.distributed, once the process group is up: from the
        first ``apply()``, or from ``load_state_dict`` when a loop restores its checkpoint
        before it (every rank would do rank 0's work there: a restored tuner's commands)."""
        if self._sync is not None or self._distributed_arg is False:
            return
        self._sync = _dist.detect()
        if self._sync is not None:
            self.rank, self.is_leader = self._sync.rank, self._sync.is_leader
            self._ledger.rank, self._ledger.leader = self.rank, self.is_leader
            self._stream.leader = self.is_leader
            self._freeze.leader = self.is_leader

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: put it in your training checkpoint.

        The ledger entries still queued are written first; those that cannot be (a full disk)
        travel in the state (``unwritten``), since its cursor is past their commands, and
        :meth:`load_state_dict` writes the ones the ledger still lacks."""
        if self._ledger.out:
            self.flush()
        if self._polled_env is not None:  # a value the loop set itself within the last second
            # (by hand, not through a scheduler) was saved as its older one, and a resume put
            # that back over the optimizer's own: the lr the loop set was lost
            self._stream.refresh(self._polled_env, self.step)
        stream, gate = self._stream.state_dict(), self._freeze.state_dict()
        return {
            "version": FORMAT_VERSION,
            "step": self._saved_step(),
            "cursor": self._intake.offset,
            "seq": self._ledger.seq,
            "actuators": stream["actuators"],
            "freeze": gate["freeze"],
            "modules": {name: m.state_dict() for name, m in self._modules.items()},
            "pending": [
                {"at_step": s, "record": op.to_record(), "cursor": op.cursor}
                for s, op in self._schedule.ops()
            ],
            "paused": self._control.paused,
            "horizon": self.horizon,
            "ramps": stream["ramps"],
            "commanded": stream["commanded"],  # which knobs commands set, and when (the tuner)
            "relative": stream["relative"],
            "ramp_factors": stream["ramp_factors"],  # for an undo of a ramp after a restart
            "initial": stream["initial"],  # each knob's value at the run's start (the page)
            "recipe": gate["recipe"],
            "unwritten": self._unwritten(),
        }

    def _unwritten(self) -> list[dict[str, Any]]:
        """The queued ledger entries, for :meth:`state_dict`. Called from a ``save_checkpoint``
        that a checkpoint command asked for, they begin with that command's entry, its outcome
        not in yet: a run resumed from this state writes it as the save that made the state,
        and any checkpoint due after it at the same step as not saved in that life."""
        held, out = self._ledger.held, []
        saving = [entry for _, entry in self._control.saving]
        at = next((i for i, e in enumerate(saving) if e is held), len(saving))
        due = {id(e) for e in saving[at + 1 :]}
        for e in self._ledger.out:
            copy = dict(e)
            if e is held:
                copy["checkpoint_note"] = "saved; the run that resumed from it wrote this entry"
            elif id(e) in due:
                copy.update(decision=Decision.NOOP.value, error=(
                    "not saved in that life: the run resumed from a checkpoint saved before it "
                    "at the same step"), checkpoint_note="not saved")  # fmt: skip
            out.append(copy)
        return out

    def _saved_step(self) -> int:
        """The step of the last safe point, idle or not: where the loop saved the state (the
        ledger's point moves only on a safe point that did work)."""
        last = self._last_step
        if isinstance(last, int) and not isinstance(last, bool):
            return max(self.step, last)
        return self.step

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint's kernel state.

        Actuator values, loaded callbacks and a horizon set by ``extend`` (:attr:`horizon`)
        come back. Commands applied after the checkpoint's step (they are in the ledger) are
        re-applied at their original steps, ledgered with ``source: "resume"``, and live reading
        continues after the last ledgered command, so the resumed run follows the same
        trajectory and nothing is applied twice.
        """
        step, seq = int(state.get("step", 0)), int(state.get("seq") or 0)
        self._find_rank()  # before the modules: rank 0 alone sends what a restore decides
        # the parent's checkpoint a branch starts from: its cursor counts bytes of the
        # parent's commands file, so this run's own ledger says where to read from
        own = not branched_before(self.paths, seq)
        late = self._restore_unwritten(state.get("unwritten")) if own else []
        self._ledger.point = SafePoint(step)
        if own:  # `undo` looks up to the checkpoint in the ledger; later changes are re-applied
            self._ledger.before, self._ledger.earlier_read = seq, False
            self._ledger.history.clear()
        self._stream.load_state_dict(state)
        self._freeze.load_state_dict(state)
        replaced = self._control.restore_horizon(state.get("horizon") or {})
        if replaced:  # a branch's new command line (--steps 2500) trained on to 21000
            log.warning(
                "hotcb: the checkpoint's horizon replaces the one this loop set (%s): an "
                "`extend` had set it before the save; set kernel.max_steps (or max_epochs) "
                "after load_state_dict to keep yours", ", ".join(replaced),
            )  # fmt: skip
        for name, mstate in (state.get("modules") or {}).items():
            try:
                self.module(name).load_state_dict(mstate)
            except Exception as exc:  # a module that cannot come back: the run goes on
                self._warn(f"restore_{name}", f"could not restore module {name!r}: {exc!r}")
        self._schedule = Schedule()
        self._sources = [self._schedule, *self._sources[1:]]
        resumed = set()
        plan = plan_resume(iter_entries(self.paths.ledger), seq)
        for at, op in plan.ops:
            resumed.add(op.cmd_id)
            self._schedule.push(at, op)
        for item in state.get("pending") or ():
            try:
                op = command_to_hotop(item["record"])
            except (ValueError, KeyError):
                continue
            if op.cmd_id in resumed:
                continue  # it fell due after the checkpoint: the resume plan has it
            op.cursor = int(item.get("cursor") or 0) if own else 0
            self._schedule.push(int(item["at_step"]), op)
        self._state_loaded = True
        if self._opened_run:  # for whoever asks what this life holds (an autopilot accept)
            update_run_meta(self.paths, {"resumed_from": {"step": step, "seq": seq}}, self._warn)
        self._requeue_waiting(seq)
        last_seq, ledger_cursor = tail_state(self.paths.ledger)
        self._ledger.seq = max(self._ledger.seq, last_seq)
        # a command the ledger does not hold yet is newer than every re-applied one
        self._newer = (
            NewerCommands(plan.ages, plan.lives,
                          lambda key: self.mutable_state.get(key) is not None, plan.undoes)
            if plan.ops else None
        )  # fmt: skip
        if own and last_seq > seq:
            # a new life from a checkpoint: what the ledger holds after its seq is superseded
            # (re-applied above where it was a command; the tuner's own trials are not)
            self._ledger.emit(self._ledger.point, source="kernel", module="kernel",
                              op="resume", decision=Decision.NOOP.value,
                              resumed_from={"step": step, "seq": seq, "last": last_seq})  # fmt: skip
        for entry in late:  # (see _restore_unwritten)
            self._ledger.seq += 1
            self._ledger.out.append(
                {**entry, "seq": self._ledger.seq, "late": {"seq": entry["seq"]}}
            )
        self._intake.offset = max(int(state.get("cursor") or 0) if own else 0, ledger_cursor)
        self._refresh_due(step)
        self._refresh_event_modules()

    def _restore_unwritten(self, saved: Any) -> list[dict[str, Any]]:
        """Write the entries the checkpoint's process had not written when it saved (a full
        disk; :meth:`state_dict`) and that the ledger still lacks: that process may have
        written them later, and a run started here again without the checkpoint may have
        applied their commands again (:func:`_entry_key`). They keep their seqs, which are
        the checkpoint's, so no resume applies them again: the checkpoint holds what they did.
        Returns the missing ones whose seqs the ledger has used since: they go after the
        ledger's last entry, renumbered."""
        if not self.is_leader or not isinstance(saved, list):
            return []
        entries = [e for e in saved if isinstance(e, dict) and type(e.get("seq")) is int]
        if not entries:
            return []
        first = min(e["seq"] for e in entries)
        held, before = set(), first <= 1
        for e in jsonl.iter_records(self.paths.ledger):
            if type(e.get("seq")) is int and e["seq"] >= first:
                held.add(_entry_key(e))
                held.add(_entry_key(e)[:3])  # a checkpoint's, whatever its outcome was
            before = before or e.get("seq") == first - 1
        if not before:  # another run's ledger (a copy of a checkpoint resumed elsewhere): the
            # checkpoint commands being saved as the state was taken are not this run's
            entries = [e for e in entries if "checkpoint_note" not in e]
        # a checkpoint queued at the save (its outcome not in yet, or "not saved in that life")
        # is the ledger's once the process that saved wrote its outcome, whichever it was
        missing = sorted((e for e in entries if _entry_key(e) not in held
                          and ("checkpoint_note" not in e or _entry_key(e)[:3] not in held)),
                         key=lambda e: e["seq"])  # fmt: skip
        for e in missing:
            if isinstance(e.get("cmd_id"), str):
                self._intake.remember(e["cmd_id"])
        if not missing:
            return []
        log.warning("hotcb: writing %d ledger entries the checkpoint's process could not write",
                    len(missing))  # fmt: skip
        if missing[0]["seq"] <= tail_state(self.paths.ledger)[0]:
            return missing
        self._ledger.out[:0] = missing  # before anything this process adds
        self._ledger.seq = max(self._ledger.seq, missing[-1]["seq"])
        self.flush()
        return []

    def _requeue_waiting(self, after_seq: int) -> None:
        queued = {op.cmd_id for _, op in self._schedule.ops()}
        for at, op in waiting_plan(pending_scheduled(self.paths.ledger), after_seq, queued):
            self._intake.remember(op.cmd_id)
            self._schedule.push(at, op)

    def _started_without_checkpoint(self) -> None:
        """A life started with no checkpoint loaded: the commands the last one scheduled wait
        again (nothing is lost), its ramps under way end, and, in a new process, what the
        lives before set is not in force here: an undo does not take it back."""
        self._requeue_waiting(0)
        self._end_lost_ramps()
        if not self._same_process and self._ledger.before > 0:  # (a first life has none)
            self._ledger.fresh_from, self._ledger.before = self._ledger.before, 0

    def _end_lost_ramps(self) -> None:
        """A restart without a checkpoint: ledger the ramps the last life left under way as
        ended (superseded), so that no ramp reads as still going (``hotcb status``, a
        ``set --ramp --wait``). Where it got to is not known here: the value in force now is
        whatever this life started with."""
        for e in open_ramps(self.paths.ledger) if self.is_leader else ():
            old = {k: {"old": ch.get("old"), "new": None}
                   for k, ch in (e.get("changes") or {}).items() if isinstance(ch, Mapping)}  # fmt: skip
            self._ledger.emit(
                self._ledger.point, source="ramp", module=e.get("module"), op=e.get("op"),
                cmd_id=e.get("cmd_id"), decision=Decision.APPLIED.value, changes=old,
                ramp="superseded", error="the run restarted without a checkpoint before the "
                "ramp ended; the value in force is the one this life started with",
            )  # fmt: skip

    def flush(self) -> None:
        """Write the queued ledger entries now."""
        problem = self._ledger.flush()
        if problem is not None:
            self._warn("ledger_write", problem)

    def close(self) -> None:
        """End the ramps still under way (ledgered superseded where they got to), flush the
        ledger, write the actuators file, close the metrics stream, put back the signal
        handlers :meth:`catch_signals` replaced.

        In a process forked from the training (``os.fork()``, a ``sys.exit`` there unwinding
        through the loop's ``finally: kernel.close()``), nothing: the run is its parent's."""
        if self._closed or os.getpid() != self._pid:
            return
        self._closed = True
        self._caught_at_close = self._signals.installed
        self._signals.restore()
        try:
            # a ramp still under way ends where it got to, ledgered superseded: nothing moves
            # it any more (`hotcb set … --ramp N --wait` waited for an end that never came)
            self._stream.end_ramps_with_loop()
            for mod in self._modules.values():  # what a module still holds for the ledger
                closer = getattr(mod, "close", None)
                if callable(closer):
                    try:
                        closer()
                    except Exception as exc:  # one module's trouble: the run still closes
                        self._warn(f"close_{type(mod).__name__}", f"closing a module: {exc!r}")
            problem = self._ledger.flush()
            if problem is not None:
                self._lost_at_close(problem)
            # `hotcb status`: "finished at step N"; a kernel closed before any step (it
            # opened the run, so the last life's end is gone): "closed before its first step"
            unstarted = self._last_step is None and self._opened_run
            if (self._started and self.is_leader) or unstarted:
                ended = {
                    "step": self._last_step,
                    "wall_time": time.time(),
                    "stopped": self.stop_requested,
                    "seq": self._ledger.written,  # the ledger's last entry (refuse_lost_ledger)
                }
                ended.update(self._how_it_ended())
                close_run_meta(self.paths, ended, self._warn)
                self._replay_unfinished()
                # a last beat with the ledger's seq: the run's record of it that stays should
                # hotcb.run.json be lost too (refuse_lost_ledger)
                if self._last_step is not None:  # (closed before its first step: no beat)
                    self._next_beat = 0.0
                    self._heartbeat(self._last_step, time.monotonic())
            if self._polled_env is not None:  # what a scheduler did since the last refresh
                self._stream.refresh(self._polled_env, self.step)
                self._polled_env = None
            self._stream.write(self.step)
        finally:
            self._intake.close()  # the commands file its tail holds open
            if self.metrics is not None:
                self.metrics.close()
            # an apply() after this is another loop: its first safe point reopens the run
            self._started = False

    def _replay_unfinished(self) -> None:
        """A replay whose loop ended before the recipe did: said at close (it ended silently,
        the entries past its last step never applied, and only ``hotcb status`` still showed
        the next one as if it were to come)."""
        player = self._freeze.player
        if player is None or not len(player):
            return
        nxt = player.upcoming(1)[0]
        log.warning("hotcb: the replay ended at step %s with %d recipe entr%s never reached (the "
                    "next: %s %s at step %d): give the run as many steps as the recipe's, or "
                    "--step-offset to line them up", self._last_step, len(player),
                    "y" if len(player) == 1 else "ies", nxt.module, nxt.op,
                    player.next_step())  # fmt: skip

    def _how_it_ended(self) -> dict[str, Any]:
        """What ``ended`` in ``hotcb.run.json`` says beyond the step: the signal that stopped
        the run, ``interrupted`` (Ctrl-C unwound the loop through ``close()``), or the
        ``error`` that did (``try: ... finally: kernel.close()``, ``with HotKernel(...)``):
        ``hotcb status`` then says ``crashed at step N (ValueError: …)``, not ``finished``."""
        if self._stopped_by is not None:
            return {"signal": self._stopped_by}
        out: dict[str, Any] = {}
        if self._control.signal is not None:  # caught, and no safe point came to take it
            out["signal_pending"] = signal_name(self._control.signal)
        exc = sys.exc_info()[1]
        if (
            exc is None
            or isinstance(exc, _NOT_A_CRASH)
            or (isinstance(exc, SystemExit) and exc.code in (None, 0))
        ):
            return out
        if isinstance(exc, KeyboardInterrupt) or isinstance(exc.__context__, KeyboardInterrupt):
            return {**out, "interrupted": True}  # (Lightning answers a Ctrl-C with sys.exit(1))
        if out and "DataLoader worker" in str(exc):
            log.warning("hotcb: the %s reached the DataLoader's workers too, which died of it "
                        "before a safe point could checkpoint: docs/core.md, 'Checkpoint on "
                        "SIGTERM and Ctrl-C', says how to keep them", out["signal_pending"])  # fmt: skip
        return {**out, "error": _error_line(exc)}

    def reopen(self) -> None:
        """Open the run again for another training loop on this kernel: a notebook's
        training cell run again after ``close()``, a second Lightning ``fit`` or HF ``train()``
        with the same callback. ``hotcb status`` says the run runs again instead of
        ``finished`` or ``stopped``; a ``stop`` or a pause the last loop ended on (a signal
        while paused) no longer holds, since the new loop was asked for after it; a ramp still
        under way ends where it got to (ledgered superseded); the signals ``close()`` let go
        are caught again.
        Ledgered as ``kernel reopen``. The first safe point after ``close()`` calls it, and the
        adapters at each fit's start; nothing happens when the kernel is open and not
        stopped."""
        closed, stopped = self._closed, self._control.stop_requested
        # a new fit may bring a new optimizer (also after a fit that raised, which left the
        # run open): look at the next poll
        self._stream.rebind_due = True
        if not (closed or stopped) or self._last_step is None:
            return  # nothing to reopen: the first loop, or one that ended on its own
        self._closed = False
        self._control.stop_requested = False
        paused, self._control.paused = self._control.paused, False
        self._stopped_by = None
        self._stream.end_ramps_with_loop()
        self._next_beat = 0.0  # `hotcb status`: alive at this loop's step, not the last's
        if closed and self._caught_at_close:
            self._signals.install(self._caught_at_close)
        if not self.is_leader:
            return
        other = self._other_trainer()
        self._other_pid = other["pid"] if other else None
        write_run_meta(self.paths, {**self._run_meta, "other_trainer": other} if other
                       else self._run_meta, self._warn)  # fmt: skip
        after = "close()" if closed else "a stop"
        self._ledger.emit(
            self._ledger.point, source="kernel", module="kernel", op="reopen",
            decision=Decision.NOOP.value,
            reopened={"closed": closed, "stopped": stopped, "paused": paused},
            reason=f"a new training loop on this kernel after {after}: the run runs again",
        )  # fmt: skip

    def __enter__(self) -> HotKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ problems
    def _log_metrics(self, env: Env, step: int) -> None:
        metrics = env["metrics"]
        if not metrics or self.metrics is None:
            return
        try:
            self.metrics.log(step, metrics, epoch=env.get("epoch"))
        except Exception as exc:  # a metric that cannot be written must not stop training
            said = str(exc) if isinstance(exc, OSError) else repr(exc)  # (names the file)
            self._warn("metrics", f"could not record metrics: {said}")

    def _error(self, message: str) -> None:
        self._ledger.emit(
            self._ledger.point, source="kernel", module="kernel", op="error",
            decision=Decision.FAILED.value, error=message,
        )  # fmt: skip

    def _other_trainer(self) -> dict[str, Any] | None:
        """Another trainer still running in this run directory (said as a warning): not an
        error, since a requeued job may start while the old process is still exiting. Its pid,
        host, start and run directory, for ``hotcb.run.json`` (``hotcb status`` names it)."""
        meta = jsonl.read_json(self.paths.run_meta, {}) or {}
        pid = other_live_trainer(meta, self.run_dir)
        if pid is None:
            return None
        log.warning("hotcb: %s", _other_trainer_note(pid, self.run_dir))
        return {k: meta.get(k) for k in ("pid", "host", "started", "run_dir")}

    def _lost_at_close(self, problem: str) -> None:
        """The last flush failed: the queued entries die with this process. Said as an error
        every time (the ``ledger_write`` warning may have been said once, long ago)."""
        out = self._ledger.out
        shown = ", ".join(f"{e.get('module')} {e.get('op')}" for e in out[:5])
        if len(out) > 5:
            shown += f" and {len(out) - 5} more"
        entries = "1 ledger entry" if len(out) == 1 else f"{len(out)} ledger entries"
        log.error(
            "hotcb: %s; %s (%s) %s lost as the run closes. The next start in %s resumes from "
            "the ledger's last entry, so it applies those commands again (a stop among them "
            "stops it at its first step); fix what stopped the write, and before restarting "
            "check the commands file after the ledger's last cursor.",
            problem, entries, shown, "is" if len(out) == 1 else "are", self.run_dir,
        )  # fmt: skip

    def _peer_lost(self, exc: PeerLostError) -> None:
        """Ledger why the training loop gets ``exc`` (rank 0 writes; on a rank that cannot
        write, the exception itself says it)."""
        log.error("hotcb: %s", exc)
        try:
            self._ledger.emit(
                self._ledger.point, source="kernel", module="kernel", op="peer_lost",
                decision=Decision.FAILED.value, error=str(exc),
            )  # fmt: skip
            self.flush()
        except Exception as again:
            log.error("hotcb: could not ledger the lost rank: %r", again)

    def _left_with(self, exc: BaseException) -> None:
        """A safe point that raised: hotcb's own bug is ledgered and training goes on (said
        once per kind); an interrupt (Ctrl-C, a notebook's stop button: not an ``Exception``)
        goes on up once what the safe point applied is written. A change in force with no
        entry would be applied again by the next kernel on this run, which reads on from the
        ledger's cursor (a notebook's cell run again)."""
        if isinstance(exc, Exception):
            self._internal_error(exc)
            return
        try:
            self._control.cut_short(exc)
            if self._ledger.out:
                self.flush()
        except Exception as again:  # the interrupt goes on up; this is all that can be said
            log.error("hotcb: could not write the ledger on an interrupt: %r", again)
        raise exc

    def _internal_error(self, exc: Exception) -> None:
        if isinstance(exc, PeerLostError):  # not hotcb's bug: the run cannot go on
            self._peer_lost(exc)
            raise exc
        key = f"internal_{type(exc).__name__}"
        if key not in self._warned:
            log.error("hotcb: internal error in apply(); training continues", exc_info=exc)
        self._warned.add(key)
        try:
            self._ledger.emit(
                self._ledger.point, source="kernel", module="kernel", op="internal_error",
                decision=Decision.FAILED.value, error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(limit=8),
            )  # fmt: skip
            self.flush()
        except Exception as again:  # the ledger itself is broken: the log line is all we have
            log.error("hotcb: could not ledger the internal error: %r", again)

    def _set_aside_torn_entry(self) -> None:
        """The ledger's last entry, torn by a process that died while writing it, goes to
        ``hotcb.applied.jsonl.torn``: left in place, it was an invalid line (a reader that
        parses each line failed on it) before the entries this life appends."""
        path = self.paths.ledger
        try:
            torn = jsonl.set_aside_torn_tail(path, path + ".torn")
        except OSError as exc:
            self._warn("torn_entry", f"could not set aside the torn end of {path}: {exc}")
            return
        if torn:
            self._warn("torn_entry", f"{path} ended with a torn entry ({len(torn)} bytes, the "
                       "last process died writing it): moved to hotcb.applied.jsonl.torn")  # fmt: skip

    def _saved_freeze(self) -> FreezeState:
        """The freeze state :func:`~hotcb.freeze.saved_freeze` reads, with a warning when it
        came from the ledger (the file is then written again)."""
        state, why = saved_freeze(self.paths.freeze, self.paths.ledger)
        if why is None:
            return state
        self._warn("freeze_file", why)
        if _dist.first_rank():  # written again: `hotcb status` reads the mode there
            with contextlib.suppress(OSError):
                state.save(self.paths.freeze)
        return state

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("hotcb: %s", message)
