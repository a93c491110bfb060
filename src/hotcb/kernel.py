"""HotKernel: picks up commands at safe points, routes them, and ledgers what happened.

Call ``kernel.apply(env, events)`` at each safe point of the training loop (usually after
``optimizer.step()``). The kernel does all of its work inside that call; it owns no thread and no
socket. The idle path (no poll due, nothing scheduled) is a counter, a clock compare and an int
compare.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import distributed as _dist
from . import jsonl
from ._schedule import NEVER, Ramp, Schedule, StepSource
from .actuators import ActuatorType, HotcbActuator, MutableState, optimizer_actuators
from .errors import ActuatorApplyError, ActuatorError, CommandError, HotcbError
from .freeze import FreezeMode, FreezeState, passes_freeze
from .ledger import Decision, LedgerWriter, new_entry, tail_state
from .metrics import MetricsCollector
from .modules import create_module, module_specs
from .modules._base import HotModule, OpResult
from .ops import ACTUATOR_MODULES, MAX_COMMAND_BYTES, HotOp, command_to_hotop
from .runfiles import FORMAT_VERSION, RunPaths, confine_path, filesystem_type, is_network_fs

__all__ = ["HotKernel"]

log = logging.getLogger("hotcb")

Env = Mapping[str, Any]
_TRAIN_STEP_END = ("train_step_end",)
#: Sources the kernel generates itself; freeze does not gate them.
INTERNAL_SOURCES = frozenset({"recipe", "resume", "kernel", "ramp"})
_NUMERIC = (ActuatorType.FLOAT, ActuatorType.LOG_FLOAT, ActuatorType.INT, ActuatorType.TUPLE)
#: Ledger entries whose cmd_id a starting kernel remembers for de-duplication.
_SEEN_AT_START = 2000


def _version() -> str:
    from . import __version__

    return __version__


class HotKernel:
    """The training-side half of hotcb.

    Args:
        run_dir: the run directory (created if missing).
        debounce_steps: poll at most every this many safe points.
        poll_interval_sec: and not more often than this (ignored under torch.distributed, where
            polls fall on step multiples so every rank agrees).
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
            (recipe, overlay, checkpoint) may point into; any other path is rejected.
        replay_commands: start on a run directory whose commands file has content but whose
            ledger is gone, and apply its commands again (default: refuse, since they were
            applied once already). Also ``HOTCB_REPLAY_COMMANDS=1``.
        pause_poll_sec: how often a paused run re-reads commands.
        fsync_ledger: fsync the ledger after each batch of entries.
        run_meta: extra fields for ``hotcb.run.json`` (config, seed, …).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
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
    ) -> None:
        if debounce_steps < 1:
            raise ValueError(f"debounce_steps must be >= 1, got {debounce_steps}")
        if poll_interval_sec < 0:
            raise ValueError(f"poll_interval_sec must be >= 0, got {poll_interval_sec}")
        self.paths = RunPaths(os.fspath(run_dir))
        self.run_dir = self.paths.root
        self.debounce_steps = int(debounce_steps)
        self.poll_interval_sec = float(poll_interval_sec)
        self.pause_poll_sec = float(pause_poll_sec)
        self.auto_disable_on_error = auto_disable_on_error
        self.allow_code_load = allow_code_load
        self.allowed_code_dirs = [os.path.abspath(os.fspath(d)) for d in allowed_code_dirs or ()]
        self.allowed_roots = [os.path.abspath(os.fspath(d)) for d in allowed_roots]
        if isinstance(mutable_state, MutableState):
            self.mutable_state = mutable_state
        else:
            self.mutable_state = MutableState(mutable_state or ())
        self.mutable_state.auto_disable = auto_disable_on_error
        self._metrics_arg = metrics_collector
        self.metrics: MetricsCollector | None = (
            metrics_collector if isinstance(metrics_collector, MetricsCollector) else None
        )
        self._distributed_arg = distributed
        self._sync: _dist.DistSync | None = None
        self.rank = 0
        self.is_leader = True

        # control flags the training loop can read
        self.paused = False
        self.stop_requested = False
        self.checkpoint_requested = False

        os.makedirs(self.run_dir, exist_ok=True)
        if replay_commands is None:
            replay_commands = os.environ.get("HOTCB_REPLAY_COMMANDS", "") not in ("", "0")
        if not replay_commands:
            _refuse_lost_ledger(self.paths)
        self._ledger = LedgerWriter(self.paths.ledger, fsync=fsync_ledger)
        self._seq, cursor = tail_state(self.paths.ledger)
        self._tail = jsonl.JsonlTail(self.paths.commands, offset=cursor)
        self.freeze = freeze if freeze is not None else FreezeState.load(self.paths.freeze)
        self._run_meta = dict(run_meta or {})

        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        # a writer that re-sends a command (a retry) right after a restart is still a noop:
        # remember the ids of the ledger's recent entries (its tail only, so start stays cheap)
        for entry in jsonl.read_last(self.paths.ledger, _SEEN_AT_START):
            cid = entry.get("cmd_id")
            if isinstance(cid, str) and not cid.startswith("@"):
                self._remember(cid)
        self._out: list[dict[str, Any]] = []
        self._modules: dict[str, HotModule] = {}
        self._event_modules: list[HotModule] = []
        self._schedule = Schedule()
        self._sources: list[StepSource] = [self._schedule]
        self._ramps: dict[str, Ramp] = {}
        self._next_due = NEVER
        self._history: deque[dict[str, Any]] = deque(maxlen=1000)
        self._undone: set[str] = set()
        self._restore: dict[str, Any] = {}
        self._actuators_written = -1
        self._opt_registered = False
        self._model_state_seen = False
        self._started = False
        self._countdown = 0
        self._next_poll_time = 0.0
        self._next_poll_step = 0
        self._step = 0
        self._event = "train_step_end"
        self._env: Env = {}
        self._warned: set[str] = set()
        self._batch_start = -1
        self._next_refresh = 0.0
        self._closed = False
        self._state_loaded = False  # load_state_dict() restored the schedule from a checkpoint
        self._player: Any = None  # the RecipePlayer of a replay freeze mode (recipe.py)
        self._ckpt_due: list[HotOp] = []  # checkpoint commands, saved after the step's changes

    # ------------------------------------------------------------------ public API
    def apply(self, env: Env, events: Sequence[str] = _TRAIN_STEP_END) -> None:
        """Run at a safe point: forward metrics, pick up and apply commands that are due, and
        dispatch ``events`` to loaded callbacks. Never raises into the training loop."""
        try:
            step = env["step"]
        except (KeyError, TypeError):
            self._warn("no_step", "HotKernel.apply(env) needs env['step']; call ignored")
            return
        try:
            if not self._started:
                self._start(env)
            if "metrics" in env and self.metrics is not None:
                self._log_metrics(env, step)
            if self._sync is None:
                self._countdown -= 1
                if self._countdown <= 0:
                    self._countdown = self.debounce_steps
                    now = time.monotonic()
                    if now >= self._next_poll_time:
                        self._next_poll_time = now + self.poll_interval_sec
                        self._poll(env, step, events)
            elif step >= self._next_poll_step:
                self._next_poll_step = step - step % self.debounce_steps + self.debounce_steps
                self._poll(env, step, events)
            if step >= self._next_due:
                self._run_due(env, step, events)
            if self._event_modules:
                self._dispatch(env, events)
            if self._out:
                self._flush()
        except Exception as exc:  # hotcb's own bug: keep training, say so once per kind
            self._internal_error(exc)

    def register_actuator(self, actuator: HotcbActuator, *, replace: bool = False) -> None:
        """Expose one more parameter to commands (also possible while training runs)."""
        self.mutable_state.register(actuator, replace=replace)
        if actuator.group == "opt":
            self._opt_registered = True
        if self._started:
            self.mutable_state.initialize(self._env)
            self._write_actuators()

    def register_optimizer(self, optimizer: Any, *, schedulers: Sequence[Any] = ()) -> None:
        """Register lr / weight_decay / momentum|betas actuators for ``optimizer``."""
        for act in optimizer_actuators(optimizer, schedulers=schedulers):
            self.register_actuator(act, replace=True)

    def add_step_source(self, source: StepSource) -> None:
        """Plug in ops that fall due by step (a recipe player, a resume replay)."""
        self._sources.append(source)
        self._refresh_due()

    def remove_step_source(self, source: StepSource) -> None:
        if source in self._sources:
            self._sources.remove(source)
        self._refresh_due()

    def module(self, name: str) -> HotModule:
        """The module instance for ``name`` (created on first use)."""
        mod = self._modules.get(name)
        if mod is None:
            mod = create_module(name, self)
            self._modules[name] = mod
            self._refresh_event_modules()
        return mod

    def record(self, entry_fields: Mapping[str, Any]) -> None:
        """Add an entry to the ledger (modules use this, e.g. for ``callback_error``)."""
        fields = dict(entry_fields)
        fields.setdefault("step", self._step)
        fields.setdefault("event", self._event)
        fields.setdefault("source", "kernel")
        self._emit(**fields)

    def flush(self) -> None:
        if self._out:
            self._flush()

    @property
    def step(self) -> int:
        """The step of the last ``apply()``."""
        return self._step

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Scheduled ops still waiting, as ``{"at_step", "cmd_id", "module", "op", "params"}``."""
        return [
            {
                "at_step": s,
                "cmd_id": op.cmd_id,
                "module": op.module,
                "op": op.op,
                "params": op.params,
            }
            for s, op in self._schedule.ops()
        ]

    def close(self) -> None:
        """Flush the ledger, write the actuators file, close the metrics stream."""
        if self._closed:
            return
        self._closed = True
        try:
            self._flush()
            self._write_actuators()
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def __enter__(self) -> HotKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: put it in your training checkpoint."""
        return {
            "version": FORMAT_VERSION,
            "step": self._step,
            "cursor": self._tail.offset,
            "seq": self._seq,
            "actuators": {
                a.param_key: a.current_value
                for a in self.mutable_state
                if a.current_value is not None
            },
            "freeze": self.freeze.to_dict(),
            "modules": {name: m.state_dict() for name, m in self._modules.items()},
            "pending": [
                {"at_step": s, "record": op.to_record(), "cursor": op.cursor}
                for s, op in self._schedule.ops()
            ],
            "paused": self.paused,
            # ramps in progress: their op is before the checkpoint, so no resume re-queues it
            "ramps": [
                {
                    "key": r.key,
                    "start": r.start,
                    "target": r.target,
                    "start_step": r.start_step,
                    "steps": r.steps,
                    "shape": r.shape,
                    "is_int": r.is_int,
                    "record": r.op.to_record(),
                }
                for r in self._ramps.values()
            ],
            "recipe": self._player.state_dict() if self._player is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint's kernel state.

        Actuator values and loaded callbacks come back. Commands applied after the checkpoint's
        step (they are in the ledger) are re-applied at their original steps, ledgered with
        ``source: "resume"``, and live reading continues after the last ledgered command, so the
        resumed run follows the same trajectory and nothing is applied twice.
        """
        step = int(state.get("step", 0))
        self._step = step
        self._restore = dict(state.get("actuators") or {})
        self._restore_actuators({})
        self.freeze = FreezeState.from_dict(state.get("freeze"))
        self._set_player(None)
        if self.freeze.replaying:
            self._start_replay(state.get("recipe"))
        for name, mstate in (state.get("modules") or {}).items():
            try:
                self.module(name).load_state_dict(mstate)
            except Exception as exc:
                self._warn(f"restore_{name}", f"could not restore module {name!r}: {exc!r}")
        self._schedule = Schedule()
        self._sources = [self._schedule, *self._sources[1:]]
        resumed = self._queue_resume(int(state.get("seq") or 0))
        self._ramps = {}
        for item in state.get("ramps") or ():
            try:
                op = command_to_hotop(item["record"])
                start, target = item["start"], item["target"]
                if isinstance(target, list):  # betas, if the state went through JSON
                    start, target = tuple(start), tuple(target)
                self._ramps[item["key"]] = Ramp(
                    item["key"],
                    start,
                    target,
                    int(item["start_step"]),
                    int(item["steps"]),
                    item["shape"],
                    op,
                    is_int=bool(item.get("is_int")),
                )
            except (CommandError, KeyError, TypeError, ValueError) as exc:
                self._warn("restore_ramp", f"could not restore a ramp: {exc!r}")
        for item in state.get("pending") or ():
            try:
                op = command_to_hotop(item["record"])
            except (CommandError, KeyError):
                continue
            if op.cmd_id in resumed:
                continue  # it fell due after the checkpoint: the resume queue has it
            op.cursor = int(item.get("cursor") or 0)
            self._schedule.push(int(item["at_step"]), op)
        self._state_loaded = True
        self._requeue_scheduled(int(state.get("seq") or 0))
        seq, ledger_cursor = tail_state(self.paths.ledger)
        self._seq = max(self._seq, seq)
        self._tail.offset = max(int(state.get("cursor") or 0), ledger_cursor)
        self._refresh_due()
        self._refresh_event_modules()

    # ------------------------------------------------------------------ internals: start
    def _start(self, env: Env) -> None:
        self._started = True
        self._env = env
        want = self._distributed_arg
        if want is None or want:
            self._sync = _dist.detect()
            if self._sync is not None:
                self.rank, self.is_leader = self._sync.rank, self._sync.is_leader
                self._next_poll_step = 0
        if self.is_leader:
            if not os.path.exists(self.paths.commands):
                open(self.paths.commands, "ab").close()  # so an idle poll is one stat, no raise
            self._write_run_meta()
            if self._metrics_arg is None:
                self.metrics = MetricsCollector(self.run_dir)
        elif not isinstance(self._metrics_arg, MetricsCollector):
            self.metrics = None
        if self._metrics_arg is False:
            self.metrics = None
        self._discover(env)
        if not self._state_loaded:
            self._requeue_scheduled(0)  # a restart without a checkpoint: nothing is lost
        for name, spec in module_specs().items():
            if name not in self._modules and spec.start_when and spec.start_when(self.paths):
                try:
                    self.module(name).on_start(env)
                except Exception as exc:
                    self._emit_error(None, f"module {name!r} failed to start: {exc!r}", env)
        if self.freeze.replaying and self._player is None:
            self._start_replay(None)  # replay set in hotcb.freeze.json or HotKernel(freeze=)
        self._refresh_event_modules()
        self._refresh_due()

    def _discover(self, env: Env) -> None:
        """Register optimizer actuators and a model's ``mutable_state`` when first seen."""
        if not self._opt_registered:
            opts = env.get("optimizers") or ([env["optimizer"]] if env.get("optimizer") else [])
            for i, opt in enumerate(opts):
                if not hasattr(opt, "param_groups"):
                    continue
                prefix = "" if i == 0 else f"opt{i}."
                for act in optimizer_actuators(opt, prefix=prefix):
                    if act.param_key not in self.mutable_state:
                        self.mutable_state.register(act)
                self._opt_registered = True
        model = env.get("model")
        extra = getattr(model, "mutable_state", None) if model is not None else None
        if extra is not None and not self._model_state_seen:
            self._model_state_seen = True
            for act in list(extra):
                if act.param_key not in self.mutable_state:
                    self.mutable_state.register(act)
        self.mutable_state.initialize(env)
        self._restore_actuators(env)
        self._after_changes()

    def _restore_actuators(self, env: Env) -> None:
        for key in list(self._restore):
            act = self.mutable_state.get(key)
            if act is None:
                continue
            value = self._restore.pop(key)
            try:
                if act.state.value == "init":
                    self.mutable_state.initialize(env)
                if not act.matches(act.read(env), value):
                    act.apply_fn(act.validate(value), env)
                act.current_value = value if not isinstance(value, list) else tuple(value)
            except Exception as exc:
                self._warn(f"restore_{key}", f"could not restore actuator {key!r}: {exc!r}")

    def _write_run_meta(self) -> None:
        fstype = filesystem_type(self.run_dir)
        if is_network_fs(fstype):
            self._warn(
                "network_fs",
                f"run directory {self.run_dir} is on {fstype}: flock does not serialise appends "
                "from several hosts. Send commands from this host, or from elsewhere through "
                "'hotcb serve' running here (see docs/core.md, Shared filesystems).",
            )
        meta = jsonl.read_json(self.paths.run_meta, {}) or {}
        now = time.time()
        meta.setdefault("created", now)
        meta.update(
            {
                "format_version": FORMAT_VERSION,
                "hotcb_version": _version(),
                "started": now,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "python": sys.version.split()[0],
                "run_dir": self.run_dir,
                "filesystem": fstype,
            }
        )
        meta.update(self._run_meta)
        try:
            jsonl.write_json_atomic(self.paths.run_meta, meta)
        except OSError as exc:
            self._warn("run_meta", f"could not write {self.paths.run_meta}: {exc}")

    # ------------------------------------------------------------------ internals: poll
    def _read_lines(self) -> list[tuple[int, bytes]]:
        if not self.is_leader:
            return []
        tail = self._tail
        try:
            st = os.stat(tail.path)
        except OSError:
            return []
        if tail.caught_up(st):
            return []
        try:
            lines = tail.read_lines(st.st_size)
        except OSError as exc:
            # never raise here: under torch.distributed the other ranks wait for this batch
            self._warn("commands_read", f"could not read {tail.path}: {exc}")
            return []
        if tail.reset:
            tail.reset = False
            self._emit(
                step=self._step,
                event=self._event,
                decision=Decision.NOOP.value,
                source="kernel",
                module="kernel",
                op="cursor_reset",
                error="the commands file was truncated or replaced; reading it from the start",
            )
        return lines

    def _poll(self, env: Env, step: int, events: Sequence[str]) -> None:
        if env.get("is_accumulation_step"):
            self._countdown = 0  # try again at the next safe point
            self._next_poll_time = 0.0  # (the clock gate too: this poll did not happen)
            self._next_poll_step = step
            return
        self._step, self._env = step, env
        self._event = events[0] if events else "train_step_end"
        if not self._opt_registered and (env.get("optimizer") is not None or env.get("optimizers")):
            self._discover(env)
        lines = self._read_lines()
        if self._sync is not None:
            lines = self._sync.broadcast(lines)
        if lines:
            self._handle_lines(lines, env, step)
        if self.paused:
            self._pause_loop(env, step)
        if self._event_modules or not lines:
            now = time.monotonic()
            if now >= self._next_refresh:
                self._next_refresh = now + 1.0
                self._refresh_values(env)

    def _handle_lines(self, lines: list[tuple[int, bytes]], env: Env, step: int) -> None:
        first, _ = lines[0]
        self._batch_start = first - len(lines[0][1]) - 1
        try:
            for end, raw in lines:
                if raw.strip():
                    try:
                        self._handle_line(raw, end, end - len(raw) - 1, env, step)
                    except Exception as exc:  # the cursor is past this batch: ledger, go on
                        self._emit(
                            step=step,
                            event=self._event,
                            cmd_id=f"@{end - len(raw) - 1}",
                            source="kernel",
                            decision=Decision.FAILED.value,
                            error=f"could not handle the line: {type(exc).__name__}: {exc}",
                            cursor=end,
                        )
        finally:
            self._batch_start = -1
        self._after_changes()

    def _handle_line(
        self,
        raw: bytes,
        end: int,
        begin: int,
        env: Env,
        step: int,
    ) -> None:
        fallback = f"@{begin}"
        if len(raw) > MAX_COMMAND_BYTES:
            self._emit(
                step=step,
                event=self._event,
                cmd_id=fallback,
                source="unknown",
                decision=Decision.REJECTED.value,
                error=f"line is {len(raw)} bytes, more than the {MAX_COMMAND_BYTES} a command "
                "may have; it was not read",
                cursor=end,
            )
            return
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # also bad UTF-8, absurd nesting
            text = raw[:200].decode("utf-8", "replace")
            why = (
                f"{exc.msg} at column {exc.colno}"
                if isinstance(exc, json.JSONDecodeError)
                else f"{type(exc).__name__}: {exc}"
            )
            self._emit(
                step=step,
                event=self._event,
                cmd_id=fallback,
                source="unknown",
                decision=Decision.REJECTED.value,
                error=f"line is not valid JSON ({why}): {text!r}",
                cursor=end,
            )
            return
        try:
            op = command_to_hotop(record, cursor=end, fallback_id=fallback)
        except CommandError as exc:
            rec = record if isinstance(record, dict) else {}
            cid = rec.get("cmd_id")
            self._emit(
                step=step,
                event=self._event,
                cmd_id=cid if isinstance(cid, str) and cid else fallback,
                source=rec.get("source") if isinstance(rec.get("source"), str) else None,
                module=rec.get("module") if isinstance(rec.get("module"), str) else None,
                op=rec.get("op") if isinstance(rec.get("op"), str) else None,
                params=rec.get("params"),
                decision=Decision.REJECTED.value,
                error=str(exc),
                cursor=end,
            )
            return
        if op.cmd_id in self._seen:
            self._emit_op(
                op, step, Decision.NOOP, error=f"duplicate cmd_id {op.cmd_id!r}: already handled"
            )
            return
        self._remember(op.cmd_id)
        if self._frozen_out(op, step):
            return
        if op.at_step is not None and op.at_step > step:
            self._check_schedulable(op, step)
            return
        self._execute(op, env, step)

    def _check_schedulable(self, op: HotOp, step: int) -> None:
        if op.module in ACTUATOR_MODULES:
            try:
                for key, value in op.params.items():
                    self.mutable_state.lookup(key, op.module).validate(value)
            except ActuatorError as exc:
                self._emit_op(op, step, Decision.REJECTED, error=str(exc))
                return
        self._schedule.push(op.at_step or 0, op)
        extra: dict[str, Any] = {"at_step": op.at_step}
        if op.transition is not None:  # so a restarted kernel can re-queue it whole
            extra["transition"] = op.transition.to_dict()
        self._emit_op(op, step, Decision.SCHEDULED, extra=extra)
        self._refresh_due()

    def _requeue_scheduled(self, after_seq: int) -> None:
        """Put back on the schedule the commands the ledger shows as still waiting (a
        ``scheduled`` entry with ``seq > after_seq`` and nothing after it): the cursor is past
        their lines, so after a restart nothing else would ever apply them."""
        from .ledger import pending_scheduled

        queued = {op.cmd_id for _, op in self._schedule.ops()}
        for entry in pending_scheduled(self.paths.ledger):
            cid = entry.get("cmd_id")
            if int(entry.get("seq") or 0) <= after_seq or cid in queued:
                continue
            op = _op_from_entry(entry, ("at_step", "source"))
            if op is None:
                continue
            op.cursor = int(entry.get("cursor") or 0)
            self._remember(op.cmd_id)
            self._schedule.push(int(entry.get("at_step") or 0), op)

    def _frozen_out(self, op: HotOp, step: int) -> bool:
        """Ledger ``op`` as ``ignored_freeze`` when the freeze mode refuses it."""
        if (
            self.freeze.accepts_live
            or op.source in INTERNAL_SOURCES
            or passes_freeze(op.module, op.op)
        ):
            return False
        mode = self.freeze.mode.value
        self._emit_op(
            op,
            step,
            Decision.IGNORED_FREEZE,
            error=f"freeze mode is {mode}; send 'hotcb freeze --mode off' to steer",
        )
        return True

    def _remember(self, cmd_id: str) -> None:
        self._seen.add(cmd_id)
        self._seen_order.append(cmd_id)
        if len(self._seen_order) > 200_000:
            self._seen.discard(self._seen_order.popleft())

    def _pause_loop(self, env: Env, step: int) -> None:
        if self._ckpt_due:
            self._save_checkpoints(env, step)
        self._flush()
        while self.paused and not self.stop_requested and not self._closed:
            time.sleep(self.pause_poll_sec)
            lines = self._read_lines()
            if self._sync is not None:
                lines = self._sync.broadcast(lines)
            if lines:
                self._handle_lines(lines, env, step)
                if self._ckpt_due:  # a checkpoint asked for while paused is saved right away
                    self._save_checkpoints(env, step)
                self._flush()
        self.paused = False if self.stop_requested else self.paused

    # ------------------------------------------------------------------ internals: due ops
    def _refresh_due(self) -> None:
        nxt = min((s.next_step() for s in self._sources), default=NEVER)
        if self._ckpt_due:
            nxt = min(nxt, self._step)
        if self._ramps:
            nxt = min(nxt, self._step + 1, min(r.start_step + 1 for r in self._ramps.values()))
        self._next_due = nxt

    def _run_due(self, env: Env, step: int, events: Sequence[str]) -> None:
        if env.get("is_accumulation_step"):
            return
        self._step, self._env = step, env
        self._event = events[0] if events else "train_step_end"
        for source in list(self._sources):
            for op in source.pop_due(step, events):
                if not self._frozen_out(op, step):
                    self._execute(op, env, step)
        if self._ramps:
            self._advance_ramps(env, step)
        if self._ckpt_due:
            self._save_checkpoints(env, step)
        self._after_changes()
        self._refresh_due()

    def _save_checkpoints(self, env: Env, step: int) -> None:
        ops, self._ckpt_due = self._ckpt_due, []
        save = env.get("save_checkpoint")
        for op in ops:
            if not callable(save):
                self.checkpoint_requested = True
                self._emit_op(op, step, Decision.APPLIED, extra={"checkpoint": "requested"})
                continue
            try:
                path = self._confine(op, "path")
            except (HotcbError, ValueError) as exc:
                self._emit_op(op, step, Decision.REJECTED, error=str(exc))
                continue
            try:
                result = save(path) if path is not None else save()
            except Exception as exc:
                self._emit_op(op, step, Decision.FAILED, error=f"{type(exc).__name__}: {exc}")
                continue
            self._emit_op(
                op,
                step,
                Decision.APPLIED,
                extra={"checkpoint": os.fspath(result) if result else None},
            )

    def _advance_ramps(self, env: Env, step: int) -> None:
        for key, ramp in list(self._ramps.items()):
            if step <= ramp.start_step:
                continue
            try:
                self.mutable_state.set_silently(key, ramp.value_at(step), env)
            except Exception as exc:
                del self._ramps[key]
                self._emit_op(
                    ramp.op, step, Decision.FAILED, error=f"ramp of {key} failed: {exc!r}"
                )
                continue
            if step >= ramp.end_step:
                del self._ramps[key]
                self.mutable_state.verify(env)
                self.mutable_state.version += 1
                self._emit_op(
                    ramp.op,
                    step,
                    Decision.APPLIED,
                    changes={key: {"old": ramp.start, "new": ramp.target}},
                    source="ramp",
                    extra={"ramp": "complete"},
                )

    # ------------------------------------------------------------------ internals: execute
    def _execute(self, op: HotOp, env: Env, step: int) -> None:
        try:
            if op.module in ACTUATOR_MODULES:
                self._apply_actuators(op, env, step)
            elif op.module == "control":
                self._apply_control(op, env, step)
            elif op.module == "freeze":
                self._apply_freeze(op, env, step)
            else:
                self._apply_module(op, env, step)
        except Exception as exc:  # a bug in hotcb or a module must not reach the loop
            self._emit_op(
                op,
                step,
                Decision.FAILED,
                error=f"{type(exc).__name__}: {exc}",
                extra={"traceback": traceback.format_exc(limit=8)},
            )

    def _apply_actuators(self, op: HotOp, env: Env, step: int) -> None:
        ms = self.mutable_state
        # only when an optimizer is there to find: _discover rewrites the actuators file, and
        # doing that per command made a burst cost one file replace per command
        if not self._opt_registered and (env.get("optimizer") is not None or env.get("optimizers")):
            self._discover(env)
        try:
            plan = [(k, ms.lookup(k, op.module), v) for k, v in op.params.items()]
            plan = [(k, act, act.validate(v)) for k, act, v in plan]
            if op.transition is not None:
                for k, act, _ in plan:
                    if act.type not in _NUMERIC:
                        raise ActuatorError(
                            f"transition needs a numeric actuator; {k!r} is {act.type.value}"
                        )
        except ActuatorError as exc:
            self._emit_op(op, step, Decision.REJECTED, error=str(exc))
            return
        changes: dict[str, dict[str, Any]] = {}
        done: list[tuple[str, Any]] = []
        try:
            for key, act, value in plan:
                self._ramps.pop(key, None)  # a new command on a key ends its ramp
                if op.transition is not None:
                    old = act.read(env)
                    self._ramps[key] = Ramp(
                        key,
                        old,
                        value,
                        step,
                        op.transition.steps,
                        op.transition.shape,
                        op,
                        is_int=act.type is ActuatorType.INT,
                    )
                    changes[key] = {"old": old, "new": value}
                    continue
                old, new = ms.apply(key, value, env)
                done.append((key, old))
                changes[key] = {"old": old, "new": new}
        except (ActuatorApplyError, ActuatorError) as exc:
            for key, old in reversed(done):
                try:
                    ms.apply(key, old, env)
                except Exception:
                    pass
            for key in changes:
                self._ramps.pop(key, None)
            self._emit_op(op, step, Decision.FAILED, error=str(exc))
            return
        extra = {"transition": op.transition.to_dict()} if op.transition else None
        entry = self._emit_op(op, step, Decision.APPLIED, changes=changes, extra=extra)
        self._history.append(entry)
        if self._ramps:
            self._refresh_due()

    def _apply_control(self, op: HotOp, env: Env, step: int) -> None:
        name = op.op
        if name == "pause":
            if self.paused:
                self._emit_op(op, step, Decision.NOOP, error="already paused")
                return
            self.paused = True
            self._emit_op(
                op, step, Decision.APPLIED, changes={"paused": {"old": False, "new": True}}
            )
        elif name == "resume":
            if not self.paused:
                self._emit_op(op, step, Decision.NOOP, error="not paused")
                return
            self.paused = False
            self._emit_op(
                op, step, Decision.APPLIED, changes={"paused": {"old": True, "new": False}}
            )
        elif name == "stop":
            self.stop_requested = True
            request = env.get("request_stop")
            if callable(request):
                request()
            self._emit_op(op, step, Decision.APPLIED)
        elif name == "checkpoint":
            if callable(env.get("save_checkpoint")):
                # saved once every change of this safe point is applied (end of _run_due), so
                # the checkpoint holds them and a resume does not re-apply them a step late
                self._ckpt_due.append(op)
                self._next_due = min(self._next_due, step)
            else:
                self.checkpoint_requested = True
                self._emit_op(op, step, Decision.APPLIED, extra={"checkpoint": "requested"})
        elif name == "undo":
            self._undo(op, env, step)
        elif name == "cancel":
            target = op.params["cmd_id"]
            cancelled = self._schedule.cancel(target)
            if cancelled is None:
                self._emit_op(
                    op, step, Decision.REJECTED, error=f"no scheduled command {target!r} is pending"
                )
                return
            self._emit_op(cancelled, step, Decision.NOOP, error=f"cancelled by {op.cmd_id}")
            self._emit_op(op, step, Decision.APPLIED)
            self._refresh_due()

    def _undo(self, op: HotOp, env: Env, step: int) -> None:
        target_id = op.params.get("cmd_id")
        target = None
        for entry in reversed(self._history):
            if entry["cmd_id"] in self._undone or entry.get("undo_of"):
                continue
            if target_id is None or entry["cmd_id"] == target_id:
                target = entry
                break
        if target is None and target_id is not None:
            from .ledger import find_entry

            self._flush()
            target = find_entry(self.paths.ledger, target_id)
        if target is None or not target.get("changes"):
            what = f"command {target_id!r}" if target_id else "change"
            self._emit_op(
                op, step, Decision.REJECTED, error=f"no applied {what} with changes to undo"
            )
            return
        module = target.get("module")
        if module not in ACTUATOR_MODULES:
            mod = self._modules.get(module or "")
            if mod is None:
                self._emit_op(
                    op,
                    step,
                    Decision.REJECTED,
                    error=f"{module} {target.get('op')} cannot be undone",
                )
                return
            result = mod.undo(target, env)
            self._emit_result(op, step, result, extra={"undo_of": target["cmd_id"]})
            self._undone.add(target["cmd_id"])
            self._refresh_event_modules()  # e.g. undoing a cb disable turns dispatch back on
            return
        reverse = {k: v["old"] for k, v in target["changes"].items() if v.get("old") is not None}
        changes: dict[str, Any] = {}
        try:
            for key, value in reverse.items():
                self._ramps.pop(key, None)  # undoing a ramp stops it, else it lands anyway
                old, new = self.mutable_state.apply(key, value, env)
                changes[key] = {"old": old, "new": new}
        except (ActuatorError, ActuatorApplyError) as exc:
            self._emit_op(op, step, Decision.FAILED, error=str(exc))
            return
        self._undone.add(target["cmd_id"])
        entry = self._emit_op(
            op, step, Decision.APPLIED, changes=changes, extra={"undo_of": target["cmd_id"]}
        )
        entry["undo_of"] = target["cmd_id"]
        self._history.append(entry)

    def _apply_freeze(self, op: HotOp, env: Env, step: int) -> None:
        mode = op.extra.get("mode", op.params.get("mode"))
        old = self.freeze.mode.value
        try:
            new = FreezeState(
                mode=FreezeMode(mode),
                recipe_path=self._confine(op, "recipe_path"),
                adjust_path=self._confine(op, "adjust_path"),
                step_offset=int(op.extra.get("step_offset", op.params.get("step_offset")) or 0),
            )
            self._on_freeze_change(new, env, step)
        except Exception as exc:
            self._emit_op(op, step, Decision.REJECTED, error=str(exc))
            return
        self.freeze = new
        if self.is_leader:
            new.save(self.paths.freeze)
        self._emit_op(
            op, step, Decision.APPLIED, changes={"mode": {"old": old, "new": new.mode.value}}
        )

    def _confine(self, op: HotOp, key: str) -> str | None:
        """The op's path ``key`` resolved inside the run directory or an allowed root (None
        when absent); raises :class:`PathNotAllowedError` otherwise, before anything is read."""
        value = op.extra.get(key, op.params.get(key))
        if value is None:
            return None
        if not isinstance(value, str):
            raise CommandError(f"{key} must be a path string, got {type(value).__name__}")
        return confine_path(value, self.run_dir, self.allowed_roots, what=key)

    def _apply_module(self, op: HotOp, env: Env, step: int) -> None:
        try:
            mod = self.module(op.module)
        except (ImportError, KeyError) as exc:
            self._emit_op(
                op, step, Decision.REJECTED, error=f"module {op.module!r} is not available: {exc}"
            )
            return
        result = mod.apply(op, env)
        self._emit_result(op, step, result)
        self._refresh_event_modules()

    def _emit_result(
        self, op: HotOp, step: int, result: OpResult, extra: dict[str, Any] | None = None
    ) -> None:
        merged = dict(result.extra or {})
        if extra:
            merged.update(extra)
        entry = self._emit_op(
            op,
            step,
            Decision(result.decision),
            changes=result.changes,
            error=result.error,
            extra=merged,
        )
        if result.decision == Decision.APPLIED.value and result.changes:
            self._history.append(entry)

    def _dispatch(self, env: Env, events: Sequence[str]) -> None:
        for mod in self._event_modules:
            try:
                mod.on_events(events, env)
            except Exception as exc:
                self._emit_error(None, f"dispatch failed: {exc!r}", env)

    def _refresh_event_modules(self) -> None:
        self._event_modules = [m for m in self._modules.values() if m.wants_events]

    def _refresh_values(self, env: Env) -> None:
        """Pick up values that moved on their own (an LR scheduler) for the actuators file."""
        if not self.is_leader:
            return
        changed = False
        for act in self.mutable_state:
            if act.read_fn is None or act.state.value in ("init", "disabled"):
                continue
            try:
                live = act.read(env)
            except Exception:
                continue
            if not act.matches(live, act.current_value):
                act.current_value = live
                changed = True
        if changed:
            self.mutable_state.version += 1
            self._write_actuators()

    def _after_changes(self) -> None:
        if self.mutable_state.version != self._actuators_written:
            self._write_actuators()

    # ------------------------------------------------------------------ internals: output
    def _emit(self, **fields: Any) -> dict[str, Any]:
        self._seq += 1
        fields.setdefault("cursor", self._tail.offset)
        entry = new_entry(seq=self._seq, wall_time=time.time(), rank=self.rank, **fields)
        if self.is_leader:
            self._out.append(entry)
        return entry

    def _emit_op(
        self,
        op: HotOp,
        step: int,
        decision: Decision,
        *,
        changes: dict[str, Any] | None = None,
        error: str | None = None,
        source: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "step": step,
            "event": self._event,
            "cmd_id": op.cmd_id,
            "source": source or op.source,
            "module": op.module,
            "op": op.op,
            "params": op.params,
            "id": op.id,
            "decision": decision.value,
            "changes": changes,
            "error": error,
            # monotonic: a command read in this batch has the offset after its own line;
            # anything else (due, ramp, cancelled) the current read position
            "cursor": op.cursor if op.cursor > self._batch_start >= 0 else self._tail.offset,
        }
        if op.target is not None:
            fields["target"] = op.target.to_dict()
        if op.init is not None:
            fields["init"] = op.init
        if op.enabled is not None:
            fields["enabled"] = op.enabled
        if op.at_step is not None:
            fields["at_step"] = op.at_step
        if op.extra:
            for k, v in op.extra.items():
                fields.setdefault(k, v)
        if extra:
            fields.update(extra)
        if error and decision in (Decision.REJECTED, Decision.FAILED):
            log.warning("hotcb %s %s %s: %s", decision.value, op.module, op.op, error)
        return self._emit(**fields)

    def _emit_error(self, op: HotOp | None, message: str, env: Env) -> None:
        self._emit(
            step=self._step,
            event=self._event,
            source="kernel",
            module=op.module if op else "kernel",
            op=op.op if op else "error",
            decision=Decision.FAILED.value,
            error=message,
        )

    def _flush(self) -> None:
        out, self._out = self._out, []
        if not out or not self.is_leader:
            return
        try:
            self._ledger.write(out)
        except OSError as exc:  # disk full, permissions: keep training, keep the entries
            self._out = out + self._out
            self._warn("ledger_write", f"could not write the ledger: {exc}")

    def _write_actuators(self) -> None:
        self._actuators_written = self.mutable_state.version
        if not self.is_leader:
            return
        doc = {
            "v": FORMAT_VERSION,
            "step": self._step,
            "wall_time": time.time(),
            "actuators": self.mutable_state.describe_all(),
        }
        try:
            jsonl.write_json_atomic(self.paths.actuators, doc)
        except OSError as exc:
            self._warn("actuators_write", f"could not write {self.paths.actuators}: {exc}")

    def _log_metrics(self, env: Env, step: int) -> None:
        metrics = env["metrics"]
        if not metrics or self.metrics is None:
            return
        try:
            self.metrics.log(step, metrics, epoch=env.get("epoch"))
        except Exception as exc:
            self._warn("metrics", f"could not record metrics: {exc!r}")

    def _internal_error(self, exc: Exception) -> None:
        key = f"internal_{type(exc).__name__}"
        if key not in self._warned:
            log.error("hotcb: internal error in apply(); training continues", exc_info=exc)
        self._warned.add(key)
        try:
            self._emit(
                step=self._step,
                event=self._event,
                source="kernel",
                module="kernel",
                op="internal_error",
                decision=Decision.FAILED.value,
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(limit=8),
            )
            self._flush()
        except Exception:
            pass

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("hotcb: %s", message)

    # ------------------------------------------------------------------ replay
    def _on_freeze_change(self, new: FreezeState, env: Env, step: int) -> None:
        """Swap in the recipe player ``new`` calls for; raise (RecipeError) to reject the
        freeze command, e.g. when its recipe is missing or invalid."""
        from .recipe import player_for

        if new == self.freeze and self._player is not None:
            return  # the same replay sent again: keep its position, fire nothing twice
        self._set_player(player_for(new, self.run_dir))

    def _start_replay(self, player_state: Mapping[str, Any] | None) -> None:
        from .recipe import player_for

        try:
            player = player_for(self.freeze, self.run_dir)
            if player is not None and player_state:
                player.load_state_dict(player_state)
        except Exception as exc:
            self._emit_error(
                None, f"freeze mode {self.freeze.mode.value}: cannot start the recipe: {exc}", {}
            )
            return
        self._set_player(player)

    def _set_player(self, player: Any) -> None:
        if self._player is not None:
            self.remove_step_source(self._player)
        self._player = player
        if player is not None:
            self.add_step_source(player)

    # ------------------------------------------------------------------ resume
    def _queue_resume(self, after_seq: int) -> set[str]:
        """Queue the ledger's applied entries written after the checkpoint (``seq`` greater than
        the checkpoint's) for re-application at their original steps; return their cmd_ids."""
        from .ledger import iter_entries

        queued: set[str] = set()
        for entry in iter_entries(self.paths.ledger):
            if int(entry.get("seq") or 0) <= after_seq:
                continue
            if entry.get("decision") != Decision.APPLIED.value:
                continue
            if entry.get("source") in ("ramp", "recipe"):
                continue  # a ramp's op restarts it; the restored recipe player re-fires its ops
            module, name, cid = entry.get("module"), entry.get("op"), entry.get("cmd_id")
            if module in (None, "kernel") or cid in queued:
                continue
            if module == "control" and name in ("pause", "resume", "checkpoint", "stop"):
                continue
            params = {"cmd_id": entry["undo_of"]} if entry.get("undo_of") else entry.get("params")
            op = _op_from_entry(entry, source="resume", params=params)
            if op is None:
                continue
            queued.add(op.cmd_id)
            self._schedule.push(int(entry.get("step") or 0), op)
        return queued


def _refuse_lost_ledger(paths: RunPaths) -> None:
    """Raise when a kernel ran here before (``hotcb.run.json``), its commands file has content
    and its ledger is gone: starting would apply every old command again, ``stop`` included."""
    try:
        commands = os.stat(paths.commands).st_size
    except FileNotFoundError:
        return
    try:
        ledger = os.stat(paths.ledger).st_size
    except FileNotFoundError:
        ledger = 0
    if commands == 0 or ledger > 0 or not os.path.exists(paths.run_meta):
        return
    raise HotcbError(
        f"{paths.ledger} is missing but {paths.commands} holds {commands} bytes of commands "
        "that a previous run of this directory already applied; hotcb will not apply them a "
        "second time. Restore the ledger, start in a fresh run directory, or apply them again "
        "on purpose with HotKernel(replay_commands=True) / HOTCB_REPLAY_COMMANDS=1"
    )


_RESUME_FIELDS = (
    "cmd_id",
    "module",
    "op",
    "params",
    "id",
    "target",
    "init",
    "enabled",
    "transition",
)
_RESUME_EXTRA = ("mode", "recipe_path", "adjust_path", "step_offset", "source_capture")


def _op_from_entry(
    entry: Mapping[str, Any], keep: Sequence[str] = (), **override: Any
) -> HotOp | None:
    """The op a ledger entry recorded, to apply it again (resume, a restarted schedule);
    None when the entry no longer validates."""
    record = {k: entry.get(k) for k in _RESUME_FIELDS}
    for k in (*_RESUME_EXTRA, *keep):
        if k in entry:
            record[k] = entry[k]
    record.update(override)
    try:
        return command_to_hotop(record)
    except CommandError:
        return None
