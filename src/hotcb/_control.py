"""Run control: ``pause``, ``resume``, ``stop``, ``checkpoint``, ``evaluate``, ``extend``,
``undo`` and ``cancel``.

The training loop reads the flags (``paused``, ``stop_requested``, ``checkpoint_requested``,
``evaluate_requested``) and the horizon (``max_steps``, ``max_epochs``), or hands the kernel
callables in ``env`` that act on the framework: ``request_stop``, ``save_checkpoint``,
``request_evaluate``, ``set_max_steps``, ``set_max_epochs``. A checkpoint is saved at the end of
the safe point, once every change of that step is applied, so the checkpoint holds them and a
resume does not re-apply them a step late.

The horizon
-----------
``extend`` changes how long the run trains: ``{"steps": N}`` adds N optimizer steps (negative:
fewer), ``{"epochs": N}`` adds epochs, ``{"to_step": S}`` sets ``max_steps`` to S. With a
``set_max_steps`` / ``set_max_epochs`` callable in ``env`` (the adapters), the framework's own
horizon changes and ``env["max_steps"]`` / ``env["max_epochs"]`` is the value before; without
one (a bare loop), the kernel keeps the horizon (:attr:`RunControl.max_steps`, seeded from the
first ``env["max_steps"]``) and the loop reads it. The ledger entry holds the old and the new
horizon, so ``undo`` puts the old one back; a checkpoint holds the horizon an ``extend`` set, so
a resumed run trains as long as the run it continues. LR schedules are left alone: a schedule
built for the old horizon keeps it (a linear decay stays at its end value, a cosine restarts its
cycle); ``OneCycleLR`` raises when stepped past its ``total_steps``, so an extension past it is
refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeGuard

from ._recorder import LedgerRecorder, SafePoint
from ._schedule import NEVER, Schedule
from .errors import HotcbError
from .ledger import Decision, checkpoint_field, find_entry
from .modules import HotModule, OpResult
from .ops import HotOp
from .runfiles import confine_path

log = logging.getLogger("hotcb")

__all__ = ["RunControl"]

Env = Mapping[str, Any]


class RunControl:
    """Handler of the ``control`` module; shares the module protocol (``apply``/``undo``)."""

    wants_events = False

    def __init__(
        self,
        recorder: LedgerRecorder,
        schedule: Callable[[], Schedule],
        handler: Callable[[str], HotModule | None],
        *,
        ledger_path: str,
        run_dir: str,
        allowed_roots: Sequence[str],
    ) -> None:
        self.recorder = recorder
        self._schedule = schedule
        self._handler = handler
        self._ledger_path = ledger_path
        self._run_dir = run_dir
        self._roots = allowed_roots
        self.paused = False
        self.stop_requested = False
        self.checkpoint_requested = False
        self.checkpoint_path_requested: str | None = None  # the command's path, for the loop
        self.evaluate_requested = False
        # checkpoint commands waiting for the end of the safe point, with their queued entries
        self.due: list[tuple[HotOp, dict[str, Any]]] = []
        self.saving: list[tuple[HotOp, dict[str, Any]]] = []  # those of save_due, as it saves
        #: the run's horizon as the kernel knows it (a bare loop reads these)
        self.max_steps: int | None = None
        self.max_epochs: int | None = None
        #: what ``extend`` (or a restored checkpoint) set: kept in the checkpoint
        self.extended: dict[str, int] = {}
        #: the horizon the loop had set before this life's first ``extend`` of it: an undo
        #: that puts it back leaves the horizon the loop's own again (a checkpoint then keeps
        #: no ``extend`` to replace a resumed loop's horizon with)
        self.own: dict[str, int | None] = {}
        #: a signal that asked for checkpoint-and-stop, not handled yet (set by the handler)
        self.signal: int | None = None
        self._ops: dict[str, Callable[[HotOp, Env], OpResult | None]] = {
            "pause": self._op_pause,
            "resume": self._op_resume,
            "stop": self._op_stop,
            "checkpoint": self._op_checkpoint,
            "cancel": self._op_cancel,
            "undo": self._op_undo,
            "evaluate": self._op_evaluate,
            "extend": self._op_extend,
        }

    # ------------------------------------------------------------------ the module protocol
    def apply(self, op: HotOp, env: Env) -> OpResult | None:
        """The op's result, or None when it is ledgered later (a checkpoint, a cancel)."""
        return self._ops[op.op](op, env)  # command_to_hotop admits only these ops

    def undo(self, entry: Mapping[str, Any], env: Env) -> OpResult:
        if entry.get("op") == "extend":
            return self._undo_extend(entry, env)
        return OpResult("rejected", error=f"control {entry.get('op')} cannot be undone")

    def on_start(self, env: Env) -> None:
        return None

    def on_events(self, events: Sequence[str], env: Env) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"paused": self.paused, "horizon": dict(self.extended)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.paused = bool(state.get("paused"))
        self.restore_horizon(state.get("horizon") or {})

    def restore_horizon(self, horizon: Mapping[str, Any]) -> list[str]:
        """The horizon an ``extend`` had set when the checkpoint was saved; what it replaced
        that the loop had set otherwise (``max_steps 2500 -> 21000``)."""
        self.extended = {k: int(v) for k, v in horizon.items() if k in _HORIZON_KEYS and _is_int(v)}
        replaced = []
        for key, value in self.extended.items():
            old = getattr(self, key)
            if old is not None and old != value:
                replaced.append(f"{key} {old} -> {value}")
            setattr(self, key, value)
        return replaced

    def next_step(self, step: int) -> int:
        return step if self.due or self.signal is not None else NEVER

    def seed_horizon(self, env: Env) -> None:
        """The horizon a loop passes (``env["max_steps"]``, ``env["max_epochs"]``), unless one is
        known already (set by the loop, an ``extend`` or a checkpoint)."""
        for key in _HORIZON_KEYS:
            value = env.get(key)
            if getattr(self, key) is None and _is_int(value):
                setattr(self, key, value)

    # ------------------------------------------------------------------ ops
    def _op_pause(self, op: HotOp, env: Env) -> OpResult:
        if self.paused:
            return OpResult("noop", error="already paused")
        self.paused = True
        return OpResult("applied", changes={"paused": {"old": False, "new": True}})

    def _op_resume(self, op: HotOp, env: Env) -> OpResult:
        if not self.paused:
            return OpResult("noop", error="not paused")
        self.paused = False
        return OpResult("applied", changes={"paused": {"old": True, "new": False}})

    def _op_stop(self, op: HotOp, env: Env) -> OpResult:
        self.stop_requested = True
        request = env.get("request_stop")
        if callable(request):
            request()
        return OpResult("applied")

    def _op_checkpoint(self, op: HotOp, env: Env) -> OpResult | None:
        if callable(env.get("save_checkpoint")):
            # its entry takes its place in the ledger now (its cursor, before later commands'),
            # held back from the file until the save's outcome is filled in (save_due)
            rec = self.recorder
            entry = rec.emit_op(op, rec.point, Decision.APPLIED, extra={"checkpoint": None})
            if rec.held is None:
                rec.held = entry
            self.due.append((op, entry))
            return None
        return self._request_checkpoint(op)

    def _request_checkpoint(self, op: HotOp) -> OpResult:
        """No ``save_checkpoint`` in env: the loop saves on ``checkpoint_requested``, to
        ``checkpoint_path_requested`` when the command named a path (checked like a save's)."""
        try:
            path = self._checkpoint_path(op)
        except (HotcbError, TypeError, OSError) as exc:
            return OpResult("rejected", error=str(exc))
        self.checkpoint_requested = True
        self.checkpoint_path_requested = path
        extra: dict[str, Any] = {"checkpoint": "requested"}
        if path is not None:
            extra["path"] = checkpoint_field(path, self._run_dir)
        return OpResult("applied", extra=extra)

    def _checkpoint_path(self, op: HotOp) -> str | None:
        """The checkpoint command's ``path`` (``None``: it names none), confined like any path
        a command has something write to, its folder made: a bare loop's ``torch.save`` does
        not make it, and ``checkpoint --path ckpt/now.pt`` crashed the training. Raises
        ``HotcbError``/``TypeError`` (refused) or ``OSError`` (no folder)."""
        given = op.params.get("path")
        if given is None:
            return None
        path = confine_path(given, self._run_dir, self._roots, what="path", writes=True)
        if os.path.isdir(path) or str(given).endswith(("/", os.sep)):
            raise HotcbError(
                f"path {given!r} names a folder: give the checkpoint file's name in it "
                f"(e.g. {os.path.join(str(given), 'ckpt.pt')!r})"
            )
        folder = os.path.dirname(path)
        if folder and not os.path.isdir(folder):
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise OSError(f"cannot make the folder {folder} of path: {exc.strerror}") from None
        return path

    def _op_evaluate(self, op: HotOp, env: Env) -> OpResult:
        request = env.get("request_evaluate")
        if not callable(request):
            self.evaluate_requested = True  # the loop evaluates and sets it back to False
            return OpResult("applied", extra={"evaluate": "requested"})
        try:
            how = request()
        except HotcbError as exc:  # the framework cannot (the reason says why)
            return OpResult("rejected", error=str(exc), extra={"evaluate": "unsupported"})
        return OpResult("applied", extra={"evaluate": how})

    def _op_extend(self, op: HotOp, env: Env) -> OpResult:
        params = op.params
        key = "max_epochs" if "epochs" in params else "max_steps"
        old = self.horizon_now(key, env)
        if "to_step" in params:
            new = int(params["to_step"])
        else:
            delta = int(params["epochs" if key == "max_epochs" else "steps"])
            if old is None or old < 0:
                return OpResult("rejected", error=_no_horizon(key, old, delta))
            new = old + delta
            if new < 0:
                return OpResult("rejected", error=f"{key} {old} {delta:+d} would be {new}, below 0")
        if key == "max_steps":
            refused = _schedule_refuses(env, new)
            if refused is not None:
                return OpResult("rejected", error=refused)
        return self._set_horizon(key, old, new, env)

    def _undo_extend(self, entry: Mapping[str, Any], env: Env) -> OpResult:
        changes = entry.get("changes") or {}
        for key in _HORIZON_KEYS:
            change = changes.get(key)
            if isinstance(change, Mapping) and _is_int(change.get("old")):
                done = self._set_horizon(key, self.horizon_now(key, env), change["old"], env)
                own = self.own.get(key)
                if done.decision == "applied" and own is not None and own == getattr(self, key):
                    del self.extended[key]  # the loop's own horizon again
                return done
        return OpResult("rejected", error="the horizon before this extend is not known")

    def horizon_now(self, key: str, env: Env) -> int | None:
        """The horizon now: the framework's (``env[key]``) where it owns one, else the
        kernel's."""
        if callable(env.get("set_" + key)):
            value = env.get(key)
            return int(value) if _is_int(value) else None
        value = getattr(self, key)
        if value is None and _is_int(env.get(key)):
            value = env.get(key)
        return int(value) if value is not None else None

    def _set_horizon(self, key: str, old: int | None, new: int, env: Env) -> OpResult:
        setter = env.get("set_" + key)
        extra: dict[str, Any] = {}
        if callable(setter):
            try:
                facts = setter(new)
            except HotcbError as exc:  # the framework cannot (the reason says why)
                return OpResult("rejected", error=str(exc))
            extra.update(facts or {})
            if extra.get(key, new) != new:
                extra["requested"] = new
                new = int(extra[key])
            extra.pop(key, None)
        if key not in self.extended:
            self.own.setdefault(key, old)
        setattr(self, key, new)
        self.extended[key] = new
        if env.get("schedulers") or env.get("scheduler") is not None:
            extra.setdefault("lr_schedule", "unchanged: it keeps the horizon it was built for")
        return OpResult("applied", changes={key: {"old": old, "new": new}}, extra=extra)

    def _op_cancel(self, op: HotOp, env: Env) -> OpResult:
        target = op.params["cmd_id"]
        cancelled = self._schedule().cancel(target)
        if cancelled is None:
            return self._not_pending(target)
        self.recorder.emit_op(
            cancelled, self.recorder.point, Decision.NOOP, error=f"cancelled by {op.cmd_id}"
        )
        what = " ".join(x for x in (cancelled.module, cancelled.op) if x)
        if cancelled.params:
            what += " " + json.dumps(cancelled.params, sort_keys=True)
        # said here too: `cancel --wait` prints this entry, and the id alone says nothing
        return OpResult("applied", error=f"{what} (scheduled for step {cancelled.at_step}, "
                        f"sent by {cancelled.source}) will not be applied")  # fmt: skip

    def _not_pending(self, target: str) -> OpResult:
        """The answer to a cancel of ``target``, which waits for no step: what became of it
        (a second cancel said only "no scheduled command is pending")."""
        self.recorder.flush()
        last = find_entry(self._ledger_path, target, decision=None)
        if last is None:
            return OpResult("rejected", error=f"no scheduled command {target!r} is pending")
        said, step = str(last.get("error") or ""), last.get("step")
        if last.get("decision") == "noop" and said.startswith("cancelled by "):
            return OpResult("noop", error=f"command {target!r} is cancelled already ({said})")
        if last.get("decision") == "applied":
            fresh, seq = self.recorder.fresh_from, last.get("seq")
            if fresh is not None and isinstance(seq, int) and seq <= fresh:  # no undo either
                how = f", in a life before this one{_NOT_IN_FORCE}; set the value you want instead"
            else:
                how = f": nothing to cancel ('hotcb undo {target}' takes it back)"
            return OpResult("rejected", error=f"command {target!r} applied already, at step "
                            f"{step}{how}")  # fmt: skip
        return OpResult("rejected", error=f"command {target!r} is not scheduled: it was "
                        f"{last.get('decision')} at step {step}")  # fmt: skip

    def _op_undo(self, op: HotOp, env: Env) -> OpResult:
        named = op.params.get("cmd_id")
        if named is not None:
            rec = self.recorder
            if not rec.earlier_read:  # the undos of the lives before this one too
                rec.read_earlier(self._ledger_path)
            if named in rec.undone:  # again, it took the change's ratio off a schedule twice
                return OpResult("noop", error=f"command {named!r} is undone already: nothing "
                                "to take back")  # fmt: skip
            coming = next((at for at, o in rec.coming() if o.cmd_id == named), None)
            if coming is not None:  # sent while the trainer was down, say: it never came back
                self._schedule().cancel(named)
                rec.note_undo(named, {})  # all of it: none of it comes back
                return OpResult("applied", extra={"not_reapplied": coming, "undo_of": named},
                                error=f"command {named!r} had not come back in this life (the "
                                f"resume re-applies it at step {coming}): it will not be")  # fmt: skip
        target = self._undo_target(named)
        fresh = self.recorder.fresh_from
        if target is not None and not target.get("changes"):  # an evaluate, a cancel, …
            return OpResult("rejected", error=f"{target.get('module')} {target.get('op')} "
                            f"(#{target.get('seq')}) changed no value: nothing to undo")  # fmt: skip
        if target is None:
            what = f"command {op.params.get('cmd_id')!r}" if op.params.get("cmd_id") else "change"
            return OpResult("rejected", error=f"no applied {what} with changes to undo"
                            + (_NOT_IN_FORCE if fresh is not None else ""))  # fmt: skip
        if fresh is not None and isinstance(target.get("seq"), int) and target["seq"] <= fresh:
            return OpResult("rejected", error=f"command {target.get('cmd_id')!r} (#"
                            f"{target['seq']}) is of a life before this one"
                            f"{_NOT_IN_FORCE}; set the value you want instead")  # fmt: skip
        handler = self._handler(str(target.get("module") or ""))
        if handler is None:
            return OpResult(
                "rejected", error=f"{target.get('module')} {target.get('op')} cannot be undone"
            )
        reapply = self.recorder.coming
        if op.source == "resume":  # re-applied at its step: what the resume has yet to
            self.recorder.coming = tuple  # re-apply came after it in that life too
        try:
            result = handler.undo(target, env)
        finally:
            self.recorder.coming = reapply
        result.extra = {**(result.extra or {}), "undo_of": target["cmd_id"]}
        if result.decision == Decision.APPLIED.value:
            self.recorder.note_undo(target["cmd_id"], {**result.extra, "changes": result.changes})
        return result

    def _undo_target(self, cmd_id: str | None) -> Mapping[str, Any] | None:
        """The newest applied change not undone yet that can be undone (pause and resume
        cannot, see :func:`_never_undone`; nor a tuner's mutation that it rolled back or voided
        since), or the one of ``cmd_id``."""
        rec = self.recorder
        found = self._in_history(cmd_id)
        if found is None and cmd_id is None and not rec.earlier_read:
            rec.read_earlier(self._ledger_path)  # a restart or resume: the lives before it
            found = self._in_history(cmd_id)
        if found is not None or cmd_id is None:
            return found
        rec.flush()
        return find_entry(self._ledger_path, cmd_id)

    def _in_history(self, cmd_id: str | None) -> Mapping[str, Any] | None:
        rec = self.recorder
        trials = rec.trials()
        entry: Mapping[str, Any]  # mypy: reversed() over dicts holding Any matches two overloads
        for entry in reversed(rec.history):
            if entry["cmd_id"] in rec.undone or entry.get("undo_of"):
                continue
            if cmd_id is None and (
                _never_undone(entry) or trials.end(entry) in ("rolled_back", "voided")
            ):
                continue  # a `control resume` would hide every change made before it
            if cmd_id is None or entry["cmd_id"] == cmd_id:
                return entry
        return None

    # ------------------------------------------------------------------ end of the safe point
    def save_due(self, env: Env, point: SafePoint) -> None:
        """Save the checkpoints asked for at this safe point, now that its changes are in."""
        ops, self.due = self.due, []
        self.saving = ops
        try:
            for i, (op, entry) in enumerate(ops):
                self.recorder.held = entry  # the file gets nothing from it on until it is done
                try:
                    self._save_one(op, entry, env)
                except BaseException as exc:  # a Ctrl-C in the user's save
                    _outcome(entry, Decision.FAILED, f"{type(exc).__name__} during the save: "
                             "its file may be missing or incomplete; send it again")  # fmt: skip
                    self._not_saved(ops[i + 1 :], exc)
                    raise
        finally:
            self.recorder.held, self.saving = None, []

    def cut_short(self, exc: BaseException) -> None:
        """An interrupt (Ctrl-C) leaves the safe point before the checkpoints asked for at it
        were saved: each is ledgered failed, and nothing is held back from the file any more.
        The process goes on (a notebook), and a kernel made again on the run reads on from
        the ledger, which must hold every change this one applied."""
        self._not_saved(self.due, exc)
        self.due = []
        self.recorder.held = None

    @staticmethod
    def _not_saved(ops: Sequence[tuple[HotOp, dict[str, Any]]], exc: BaseException) -> None:
        for _op, entry in ops:
            _outcome(entry, Decision.FAILED, f"{type(exc).__name__} before its save: no "
                     "checkpoint was saved; send it again")  # fmt: skip

    def _save_one(self, op: HotOp, entry: dict[str, Any], env: Env) -> None:
        """Save one due checkpoint and fill its queued ``entry`` in with the outcome."""
        save = env.get("save_checkpoint")
        if not callable(save):
            asked = self._request_checkpoint(op)
            _outcome(entry, Decision(asked.decision), asked.error, asked.extra)
            return
        try:
            path = self._checkpoint_path(op)
        except (HotcbError, TypeError, OSError) as exc:
            _outcome(entry, Decision.REJECTED, str(exc))
            return
        try:
            result = save(path) if path is not None else save()
        except Exception as exc:  # the user's save: record, never raise
            _outcome(entry, Decision.FAILED, f"{type(exc).__name__}: {exc}")
            return
        saved = checkpoint_field(result, self._run_dir) if result else None
        _outcome(entry, Decision.APPLIED, None, {"checkpoint": saved})


def _outcome(
    entry: dict[str, Any], decision: Decision, error: str | None,
    extra: Mapping[str, Any] | None = None,
) -> None:  # fmt: skip
    """Fill a checkpoint's queued ledger entry in with what its save did."""
    entry.update(decision=decision.value, error=error, **(extra or {}))
    if error and decision in (Decision.REJECTED, Decision.FAILED):
        log.warning("hotcb %s %s %s: %s", decision.value, entry.get("module"), entry.get("op"),
                    error)  # fmt: skip


def _never_undone(entry: Mapping[str, Any]) -> bool:
    """Entries that ``undo`` refuses whatever their state: a pause, a resume, a freeze or a
    tuner's enable/disable (send the mode you want), a tuner's roll-back (its own undo of a
    trial: undoing it brought the trial's change back with no trial to judge it). Only
    ``extend`` of the control ops, and a tuner's mutation or bracket arm, can be undone."""
    module, op = entry.get("module"), entry.get("op")
    return (
        module == "freeze"
        or (module == "control" and op != "extend")
        or (module == "tune" and op not in ("mutate", "bracket"))
    )


_HORIZON_KEYS = ("max_steps", "max_epochs")
#: Why a life started afresh (a new process, no checkpoint) undoes nothing of the lives before.
_NOT_IN_FORCE = (
    ": this life started again without a checkpoint, in a new process, so the changes of the "
    "lives before it are not in force here"
)


def _no_horizon(key: str, old: int | None, delta: int) -> str:
    """Why ``delta`` cannot be added to a horizon that is unknown (None) or off (-1)."""
    unit = "epochs" if key == "max_epochs" else "steps"
    if old is None:
        return (
            f"cannot add {delta} {unit}: the run's {key} is not known (a loop passes "
            f"env[{key!r}] to apply(), or sets kernel.{key})"
            + ("; or send to_step=S" if key == "max_steps" else "")
        )
    other = "send to_step=S or extend by epochs" if key == "max_steps" else "extend by steps"
    return f"cannot add {delta} {unit}: the run has no {unit} limit ({key}={old}); {other}"


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _schedule_refuses(env: Env, max_steps: int) -> str | None:
    """Why a horizon of ``max_steps`` would crash the run's LR schedule, or None.

    ``torch.optim.lr_scheduler.OneCycleLR`` raises once stepped past its ``total_steps`` (a
    step-wise schedule, stepped once per optimizer step)."""
    found = list(env.get("schedulers") or ())
    if env.get("scheduler") is not None:
        found.append(env.get("scheduler"))
    for sched in found:
        inner = getattr(sched, "scheduler", sched)  # accelerate's AcceleratedScheduler
        total = getattr(inner, "total_steps", None)
        if type(inner).__name__ == "OneCycleLR" and _is_int(total) and max_steps > total:
            return (
                f"max_steps={max_steps} is past the OneCycleLR's total_steps={total}: it raises "
                "when stepped further, which would end the run; extend to at most "
                f"{total} steps, or build the schedule for the longer run"
            )
    return None
