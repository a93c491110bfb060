"""CallbackModule: the ``cb`` module. Loads, replaces, toggles, reconfigures and isolates callbacks.

Ops: ``load`` (by import path or from a file, with source capture), ``unload``, ``enable``,
``disable``, ``set_params``. Dispatch runs each enabled callback's ``handle(event, env)`` for
each event, in load order, each call in its own try/except.
"""

from __future__ import annotations

import difflib
import logging
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ... import jsonl
from ...errors import CodeLoadError, CommandError, PathNotAllowedError
from ...ops import CallbackTarget, HotOp, command_to_hotop, make_command, new_cmd_id
from .._base import OpResult
from ._loader import CallbackExit, Resolved, as_callback_exit, caught_exit, check_allowed, resolve
from ._protocol import CallbackContext, ParamError, type_clash

if TYPE_CHECKING:
    from .._base import ModuleHost

__all__ = ["CallbackModule"]

log = logging.getLogger("hotcb.cb")

Env = Mapping[str, Any]
_MISSING = object()
_TB_LIMIT = 8000  # characters of traceback kept in a ledger entry


class _Slot:
    """One loaded callback and its bookkeeping. ``handle`` is the bound method, looked up once."""

    __slots__ = (
        "capture",
        "cb",
        "enabled",
        "errors",
        "handle",
        "id",
        "init",
        "last_error",
        "last_report",
        "noted",
        "params",
        "suppressed",
        "target",
    )

    def __init__(
        self,
        ident: str,
        cb: Any,
        target: CallbackTarget,
        init: dict[str, Any],
        enabled: bool,
        capture: dict[str, str] | None,
    ) -> None:
        self.id = ident
        self.cb = cb
        self.handle = cb.handle
        self.target = target
        self.init = init
        self.enabled = enabled
        self.params: dict[str, Any] = {}
        self.capture = capture
        self.errors = 0
        self.suppressed = 0
        self.last_report = float("-inf")
        self.last_error: str | None = None
        #: under torch.distributed, the note of its error that the ranks have not settled yet
        self.noted: dict[str, Any] | None = None

    @property
    def sha256(self) -> str | None:
        return self.capture["sha256"] if self.capture else None


def _reload_changes(old: _Slot, new: _Slot) -> dict[str, Any]:
    """What a reload changed, as old/new pairs; the hashes when nothing else did."""
    changes: dict[str, Any] = {}
    if old.capture or new.capture:
        changes["sha256"] = {"old": old.sha256, "new": new.sha256}
    if old.target != new.target:
        changes["target"] = {"old": old.target.to_dict(), "new": new.target.to_dict()}
    if old.init != new.init:
        changes["init"] = {"old": old.init, "new": new.init}
    if old.enabled != new.enabled:
        changes["enabled"] = {"old": old.enabled, "new": new.enabled}
    if not changes:
        changes["sha256"] = {"old": old.sha256, "new": new.sha256}
    return changes


def _plain(value: Any) -> Any:
    """``value`` when it is JSON-friendly (recordable as old/new), else None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (bool, int, float, str)) for v in value
    ):
        return list(value)
    return None


def _fmt_exc(exc: BaseException) -> str:
    if isinstance(exc, CallbackExit):  # its message says "SystemExit: …" and what happened
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _tb() -> str:
    text = traceback.format_exc()
    return text if len(text) <= _TB_LIMIT else "…" + text[-_TB_LIMIT:]


class CallbackModule:
    """The ``cb`` module (created by the kernel on the first ``cb`` command, or at start when
    the run directory has a ``hotcb.yaml``).

    Attributes:
        error_interval_sec: a callback that keeps raising (auto-disable off) gets at most one
            ``callback_error`` ledger entry per this many seconds; the entry counts the
            errors suppressed since the previous one.
    """

    error_interval_sec = 30.0

    def __init__(self, host: ModuleHost) -> None:
        self.host = host
        self._slots: dict[str, _Slot] = {}  # insertion order is load order
        self._active: tuple[_Slot, ...] = ()
        self._leader = bool(host.is_leader)
        self.wants_events = False

    # ------------------------------------------------------------------ dispatch (hot path)
    def on_events(self, events: Sequence[str], env: Env) -> None:
        """Give each event to each enabled callback, in load order; an exception is recorded
        and (with ``auto_disable_on_error``) disables that callback. Never raises."""
        if self._leader is not self.host.is_leader:
            self._rebuild()
        for event in events:
            for slot in self._active:
                try:
                    slot.handle(event, env)
                except Exception as exc:
                    self._on_error(slot, event, env, exc)
                except SystemExit as exc:  # sys.exit() in a callback is its error, not the run's
                    error = as_callback_exit(exc, f"callback {slot.id!r}", f"in handle({event!r})")
                    self._on_error(slot, event, env, error)

    def _rebuild(self) -> None:
        self._leader = leader = bool(self.host.is_leader)
        self._active = tuple(
            s
            for s in self._slots.values()
            if s.enabled and (leader or not getattr(s.cb, "rank_zero_only", False))
        )
        self.wants_events = bool(self._active)

    def _flush_suppressed(self, slot: _Slot, why: str) -> None:
        """Ledger the errors of ``slot`` suppressed since its last report (auto-disable off),
        now that no later report will carry them (``why``: ``unload``, ``reload``,
        ``disable``, ``close``)."""
        if not slot.suppressed:
            return
        n, slot.suppressed = slot.suppressed, 0
        if self._lockstep():  # rank-local: the ranks ledger it at the next poll
            note = self._error_note(slot, None, None, slot.last_error or "")
            note.update(suppressed=n, flushed_on=why)
            self._note(note)
            return
        try:
            self.host.record(
                {
                    "module": "cb",
                    "op": "callback_error",
                    "id": slot.id,
                    "decision": "failed",
                    "error": f"{n} more error(s) since the last report, not ledgered one by "
                    f"one; the last: {slot.last_error}",
                    "errors": slot.errors,
                    "suppressed": n,
                    "flushed_on": why,
                }
            )
        except Exception:  # recording must never be what breaks training
            log.exception("hotcb: could not record the errors of callback %r", slot.id)

    def close(self) -> None:
        """The run's end: ledger the error counts still waiting for their next report (for
        ``HotKernel.close()`` to call)."""
        for slot in self._slots.values():
            self._flush_suppressed(slot, "close")

    def _on_error(self, slot: _Slot, event: str, env: Env, exc: Exception) -> None:
        try:
            slot.errors += 1
            msg = _fmt_exc(exc)
            slot.last_error = msg
            if self._lockstep():
                self._note_error(slot, event, env, msg)
                return
            disable = bool(self.host.auto_disable_on_error)
            if disable:
                slot.enabled = False
                self._rebuild()
            now = time.monotonic()
            if not disable and now - slot.last_report < self.error_interval_sec:
                slot.suppressed += 1
                return
            slot.last_report = now
            fields: dict[str, Any] = {
                "module": "cb",
                "op": "callback_error",
                "id": slot.id,
                "event": event,
                "decision": "failed",
                "error": msg,
                "traceback": _tb(),
                "errors": slot.errors,
                "suppressed": slot.suppressed,
            }
            step = env.get("step")
            if isinstance(step, int):
                fields["step"] = step
            if disable:
                fields["auto_disabled"] = True
                fields["changes"] = {"enabled": {"old": True, "new": False}}
            slot.suppressed = 0
            log.warning(
                "hotcb: callback %r raised in %s: %s%s",
                slot.id,
                event,
                msg,
                " (disabled)" if disable else "",
            )
            self.host.record(fields)
        except Exception:  # recording must never be what breaks training
            log.exception("hotcb: could not record the error of callback %r", slot.id)

    # ------------------------------------------------------------------ torch.distributed
    # An error on one rank must not change the callbacks on that rank alone: the ranks would
    # run different callbacks (a callback's collective then waits for a rank that skips it),
    # and only rank 0 writes the ledger. So the rank notes it (ModuleHost.note_for_ranks),
    # the callback stays as it is on every rank, and at the next poll every rank gets every
    # rank's notes and settle() applies the same outcome on every rank, in the same order.
    def _lockstep(self) -> bool:
        """Whether this runs under torch.distributed with more than one rank."""
        return int(getattr(self.host, "world_size", 1)) > 1

    def _note(self, note: dict[str, Any]) -> bool:
        fn = getattr(self.host, "note_for_ranks", None)
        return bool(fn(note)) if callable(fn) else False

    def _error_note(
        self, slot: _Slot, event: str | None, env: Env | None, msg: str
    ) -> dict[str, Any]:
        note: dict[str, Any] = {
            "module": "cb", "kind": "error", "id": slot.id, "event": event, "error": msg,
            "errors": 1, "suppressed": 0,
        }  # fmt: skip
        step = env.get("step") if env is not None else None
        if isinstance(step, int):
            note["step"] = step
        return note

    def _note_error(self, slot: _Slot, event: str, env: Env, msg: str) -> None:
        """``_on_error`` under torch.distributed: note the error for the ranks to settle; a
        callback already noted counts its further errors into that note."""
        if slot.noted is not None:
            slot.noted["errors"] += 1
            return
        if not self.host.auto_disable_on_error:
            now = time.monotonic()
            if now - slot.last_report < self.error_interval_sec:
                slot.suppressed += 1
                return
            slot.last_report = now
        note = self._error_note(slot, event, env, msg)
        note["traceback"] = _tb()
        note["suppressed"], slot.suppressed = slot.suppressed, 0
        if not self._note(note):
            return
        slot.noted = note
        log.warning(
            "hotcb: callback %r raised in %s: %s (every rank settles it at the next poll)",
            slot.id, event, msg,
        )  # fmt: skip

    def _note_load(self, op: HotOp, result: OpResult) -> None:
        """A load (or a restore) that did not apply here: the ranks settle it (where it
        failed on some ranks only, the callback is unloaded on every rank)."""
        note = {"module": "cb", "kind": "load", "id": op.id, "cmd_id": op.cmd_id,
                "op": op.op, "decision": result.decision, "error": result.error}  # fmt: skip
        self._note(note)

    def settle(self, notes: Sequence[Mapping[str, Any]], env: Env) -> None:
        """Apply what every rank noted, the same on every rank (the kernel calls it at a poll,
        with every rank's notes in rank order): a load that failed on some ranks only unloads
        the callback on every rank; a callback that raised on any rank is disabled on every
        rank (with ``auto_disable_on_error``). One ledger entry per callback and kind, naming
        the ranks."""
        loads: dict[tuple[Any, Any], list[Mapping[str, Any]]] = {}
        errors: dict[Any, list[Mapping[str, Any]]] = {}
        for note in notes:
            if note.get("kind") == "load":
                loads.setdefault((note.get("id"), note.get("cmd_id")), []).append(note)
            else:
                errors.setdefault(note.get("id"), []).append(note)
        try:
            for (ident, cmd_id), group in loads.items():
                self._settle_load(str(ident), cmd_id, group, env)
            for ident, group in errors.items():
                self._settle_error(str(ident), group)
        finally:
            self._rebuild()

    def _settle_load(
        self, ident: str, cmd_id: Any, group: Sequence[Mapping[str, Any]], env: Env
    ) -> None:
        ranks = sorted({int(n["rank"]) for n in group})
        world = int(getattr(self.host, "world_size", 1))
        where = _on_ranks(ranks)
        why = "; ".join(f"{_on_ranks([int(n['rank'])])}: {n.get('error')}" for n in group)
        if len(ranks) >= world:  # it failed alike on every rank: nothing diverged
            if group[0].get("op") == "restore":  # (a failed load has its own entry)
                self.host.record({"module": "cb", "op": "restore", "id": ident, "ranks": ranks,
                                  "decision": "failed", "error": f"{where}: {why}"})  # fmt: skip
            return
        slot = self._slots.pop(ident, None)
        fields: dict[str, Any] = {
            "module": "cb", "id": ident, "ranks": ranks, "load_cmd_id": cmd_id,
            "rank_errors": [
                {"rank": n["rank"], "op": n.get("op"), "decision": n.get("decision"),
                 "error": n.get("error")}
                for n in group
            ],
        }  # fmt: skip
        if slot is not None:
            self._hook(slot, "on_unload", env)
            fields.update(
                op="unload", decision="applied", changes={"loaded": {"old": True, "new": False}},
                error=f"cb {ident}: the load failed {where} ({why}); unloaded on every rank",
            )  # fmt: skip
        else:  # it never loaded here (rank 0 is among the ranks where it failed)
            fields.update(
                op="load", decision="failed",
                error=f"cb {ident}: the load failed {where} ({why}); not loaded on any rank",
            )  # fmt: skip
        if self.host.is_leader:
            log.warning("hotcb: %s", fields["error"])
        self.host.record(fields)

    def _settle_error(self, ident: str, group: Sequence[Mapping[str, Any]]) -> None:
        slot = self._slots.get(ident)
        if slot is not None:
            slot.noted = None
        ranks = sorted({int(n["rank"]) for n in group})
        flushed = [n for n in group if n.get("flushed_on")]
        raised = [n for n in group if not n.get("flushed_on")]
        first = raised[0] if raised else group[0]
        messages: dict[str, list[int]] = {}
        for n in group:
            messages.setdefault(str(n.get("error")), []).append(int(n["rank"]))
        error = "; ".join(f"{msg} {_on_ranks(rs)}" for msg, rs in messages.items())
        disable = bool(
            raised and self.host.auto_disable_on_error and slot is not None and slot.enabled
        )
        fields: dict[str, Any] = {
            "module": "cb", "op": "callback_error", "id": ident, "event": first.get("event"),
            "decision": "failed", "error": error, "ranks": ranks,
            "errors": sum(int(n.get("errors") or 0) for n in raised),
            "suppressed": sum(int(n.get("suppressed") or 0) for n in group),
            "rank_errors": [
                {k: n.get(k) for k in ("rank", "event", "step", "error", "errors", "suppressed")}
                for n in group
            ],
        }  # fmt: skip
        if first.get("traceback"):
            fields["traceback"] = first["traceback"]
        if isinstance(first.get("step"), int):
            fields["error_step"] = first["step"]
        if flushed and not raised:
            fields["flushed_on"] = flushed[0]["flushed_on"]
        if disable:
            assert slot is not None
            slot.enabled = False
            fields["auto_disabled"] = True
            fields["changes"] = {"enabled": {"old": True, "new": False}}
        if self.host.is_leader:
            log.warning(
                "hotcb: callback %r raised: %s%s", ident, error,
                " (disabled on every rank)" if disable else "",
            )  # fmt: skip
        self.host.record(fields)

    # ------------------------------------------------------------------ ops
    def apply(self, op: HotOp, env: Env) -> OpResult:
        """Route a ``cb`` op; an unexpected exception becomes a ``failed`` result."""
        handler = getattr(self, f"_op_{op.op}", None)
        if handler is None:
            return OpResult("rejected", error=f"cb has no op {op.op!r}")
        try:
            result: OpResult = handler(op, env)
        except Exception as exc:
            result = OpResult("failed", error=_fmt_exc(exc), extra={"traceback": _tb()})
        if op.op == "load" and result.decision in ("failed", "rejected") and self._lockstep():
            self._note_load(op, result)
        self._rebuild()
        return result

    def _missing(self, ident: str | None) -> OpResult:
        loaded = ", ".join(self._slots) or "none"
        return OpResult(
            "rejected", error=f"no callback {ident!r} is loaded (loaded: {loaded}); load it first"
        )

    def _ctx_env(self, env: Env, ident: str) -> dict[str, Any]:
        out = dict(env)
        out["hotcb"] = CallbackContext(self.host, ident)
        return out

    def _build(
        self, op_id: str, target: CallbackTarget, init: dict[str, Any], capture: Any
    ) -> tuple[Any, Resolved]:
        resolved = resolve(self.host, target, capture if target.kind == "python_file" else None)
        with caught_exit(f"{target.symbol}(...)", "while it was constructed"):
            cb = resolved.factory(**init)
        if not callable(getattr(cb, "handle", None)):
            raise TypeError(
                f"{target.symbol} built an object of type {type(cb).__name__} without a "
                f"handle(event, env) method; a hot callback needs one"
            )
        return cb, resolved

    def _op_load(self, op: HotOp, env: Env) -> OpResult:
        assert op.id is not None and op.target is not None  # validated by command_to_hotop
        target = op.target
        try:
            check_allowed(self.host, target)
        except CodeLoadError as exc:
            return OpResult("rejected", error=str(exc))
        init = dict(op.init or {})
        try:
            cb, resolved = self._build(op.id, target, init, op.extra.get("source_capture"))
        except (FileNotFoundError, CodeLoadError) as exc:  # (a capture outside the policy)
            return OpResult("rejected", error=str(exc))
        except ParamError as exc:  # a bad init value: the callback says which and why
            return OpResult(
                "rejected", error=f"could not load {target.symbol} from {target.path}: {exc}"
            )
        except Exception as exc:
            return OpResult(
                "failed",
                error=f"could not load {target.symbol} from {target.path}: {_fmt_exc(exc)}",
                extra={"traceback": _tb()},
            )
        enabled = True if op.enabled is None else op.enabled
        slot = _Slot(op.id, cb, target, init, enabled, resolved.source_capture)
        extra: dict[str, Any] = {}
        if slot.capture:
            extra["source_capture"] = dict(slot.capture)
        old = self._slots.get(op.id)
        unload_err = None
        if old is not None:
            self._flush_suppressed(old, "reload")
            unload_err = self._hook(old, "on_unload", env)
            if unload_err:
                extra["on_unload_error"] = unload_err[0]
        err = self._hook(slot, "on_load", env)
        if err:
            extra["traceback"] = err[1]
            # a refused value (a path outside the run, a bad parameter) is the command's fault
            refused = isinstance(err[2], (PathNotAllowedError, ParamError))
            decision = "rejected" if refused else "failed"
            if old is None:
                return OpResult(decision, error=f"{op.id}: on_load raised {err[0]}", extra=extra)
            return self._reload_failed(old, err[0], unload_err, env, extra, decision)
        self._slots[op.id] = slot  # a replacement keeps its place in the load order
        if old is None:
            changes: dict[str, Any] = {"loaded": {"old": False, "new": True}}
        else:
            extra["replaced"] = True
            changes = _reload_changes(old, slot)
        error = resolved.stale
        if unload_err:  # replaced all the same
            error = f"{op.id}: the previous version's on_unload raised {unload_err[0]}" + (
                f"; {error}" if error else ""
            )
            extra["traceback"] = unload_err[1]
        return OpResult("applied", changes=changes, error=error, extra=extra)

    def _reload_failed(
        self,
        old: _Slot,
        error: str,
        unload_err: tuple[str, str, BaseException] | None,
        env: Env,
        extra: dict[str, Any],
        decision: str = "failed",
    ) -> OpResult:
        """The new version's ``on_load`` raised: the old instance, whose ``on_unload`` already
        ran, gets its ``on_load`` again and stays loaded; the entry says all of it."""
        said = f"{old.id}: the new version's on_load raised {error}; the previous version "
        if unload_err:
            said += f"stays loaded (its on_unload raised {unload_err[0]}, "
        else:
            said += "stays loaded (its on_unload ran, "
        back = self._hook(old, "on_load", env)  # put the previous version back
        extra["restored"] = back is None
        if back is None:
            said += "then its on_load again)"
        else:
            extra["restore_error"] = back[0]
            said += (
                f"then its on_load again, which raised {back[0]}: it may not work; "
                f"cb unload {old.id}, or load a fixed version)"
            )
        return OpResult(decision, error=said, extra=extra)

    def _hook(self, slot: _Slot, name: str, env: Env) -> tuple[str, str, BaseException] | None:
        """Call ``on_load``/``on_unload`` if the callback has it; (error, traceback, the
        exception) if it raised."""
        fn = getattr(slot.cb, name, None)
        if not callable(fn):
            return None
        try:
            with caught_exit(f"callback {slot.id!r}", f"in {name}()"):
                fn(self._ctx_env(env, slot.id))
        except Exception as exc:
            slot.last_error = _fmt_exc(exc)
            log.warning("hotcb: callback %r %s raised: %s", slot.id, name, slot.last_error)
            return slot.last_error, _tb(), exc
        return None

    def _op_unload(self, op: HotOp, env: Env) -> OpResult:
        slot = self._slots.get(op.id or "")
        if slot is None:
            return self._missing(op.id)
        del self._slots[slot.id]
        self._flush_suppressed(slot, "unload")
        extra: dict[str, Any] = {}
        error = None
        err = self._hook(slot, "on_unload", env)
        if err:  # unloaded all the same: the entry says what its on_unload left undone
            error = f"{slot.id}: on_unload raised {err[0]}; unloaded anyway"
            extra["on_unload_error"] = err[0]
            extra["traceback"] = err[1]
        if slot.capture:
            extra["source_capture"] = dict(slot.capture)
        changes = {"loaded": {"old": True, "new": False}}
        return OpResult("applied", changes=changes, error=error, extra=extra)

    def _toggle(self, op: HotOp, value: bool) -> OpResult:
        slot = self._slots.get(op.id or "")
        if slot is None:
            return self._missing(op.id)
        if slot.enabled == value:
            return OpResult("noop", error=f"{slot.id} is already {'en' if value else 'dis'}abled")
        if not value:
            self._flush_suppressed(slot, "disable")
        slot.enabled = value
        if value:
            slot.last_report = float("-inf")
        return OpResult("applied", changes={"enabled": {"old": not value, "new": value}})

    def _op_enable(self, op: HotOp, env: Env) -> OpResult:
        return self._toggle(op, True)

    def _op_disable(self, op: HotOp, env: Env) -> OpResult:
        return self._toggle(op, False)

    def _op_set_params(self, op: HotOp, env: Env) -> OpResult:
        slot = self._slots.get(op.id or "")
        if slot is None:
            return self._missing(op.id)
        if not op.params:
            return OpResult("rejected", error="cb set_params needs at least one key=value")
        return self._set_params(slot, op.params)

    def _set_params(self, slot: _Slot, params: Mapping[str, Any]) -> OpResult:
        cb = slot.cb
        old = {k: _plain(getattr(cb, k, None)) for k in params}
        setter = getattr(cb, "set_params", None)
        if callable(setter):
            try:
                with caught_exit(f"callback {slot.id!r}", "in set_params()"):
                    setter(**params)
            except (TypeError, ValueError, AttributeError, PathNotAllowedError) as exc:
                return OpResult("rejected", error=f"{slot.id}.set_params: {_fmt_exc(exc)}")
        else:
            # no set_params(): set attributes the instance already has, nothing new
            unknown = [
                k
                for k in params
                if k.startswith("_") or not hasattr(cb, k) or callable(getattr(cb, k))
            ]
            if unknown:
                known = sorted(k for k in vars(cb) if not k.startswith("_"))
                return OpResult(
                    "rejected",
                    error=f"{slot.id} has no settable attribute "
                    f"{', '.join(map(repr, unknown))} and no set_params(); "
                    f"settable: {', '.join(known) or 'none'}",
                )
            clashes = [w for k, v in params.items() if (w := type_clash(k, getattr(cb, k), v))]
            if clashes:
                return OpResult("rejected", error=f"{slot.id}: {'; '.join(clashes)}")
            for k, v in params.items():
                setattr(cb, k, v)
        slot.params.update(params)
        changes = {
            k: {"old": old[k], "new": _plain(getattr(cb, k, v)) if hasattr(cb, k) else v}
            for k, v in params.items()
        }
        return OpResult("applied", changes=changes)

    # ------------------------------------------------------------------ undo
    def undo(self, entry: Mapping[str, Any], env: Env) -> OpResult:
        """Revert an applied ``enable``/``disable``/``set_params`` or a first ``load``."""
        op, ident, changes = entry.get("op"), entry.get("id"), entry.get("changes") or {}
        first_load = op == "load" and "loaded" in changes
        if op not in ("enable", "disable", "set_params") and not first_load:
            # (before the slot: an unload's undo was told "no callback is loaded; load it")
            again = "cb load it again" if op == "unload" else "cb load with the previous file"
            return OpResult("rejected", error=f"cb {op} cannot be undone; send the opposite "
                            f"command ({again})")  # fmt: skip
        slot = self._slots.get(ident or "")
        if slot is None:
            return self._missing(ident)
        try:
            if op in ("enable", "disable"):
                res = self._toggle(_fake(ident), op == "disable")
            elif op == "set_params":
                res = self._undo_set_params(slot, changes)
            else:
                res = self._op_unload(_fake(ident), env)
        finally:
            self._rebuild()
        return res

    def _undo_set_params(self, slot: _Slot, changes: Mapping[str, Any]) -> OpResult:
        """Put a ``set_params``' old values back, but of the parameters set again since (their
        value is no longer the one it set): a later change is not wiped out, as with a knob."""
        params = {k: v["old"] for k, v in changes.items() if v.get("old") is not None}
        if not params:
            return OpResult(
                "rejected", error="the old values were not recorded; nothing to restore"
            )
        moved = {k: _plain(getattr(slot.cb, k, None)) for k in params}
        moved = {k: now for k, now in moved.items() if now != changes[k].get("new")}
        said = "; ".join(f"{k} was set again since (it is {now!r} now)" for k, now in moved.items())
        if moved:
            said += ": this change is no longer in force there, so the undo leaves it"
        params = {k: v for k, v in params.items() if k not in moved}
        if not params:
            return OpResult("noop", error=said)
        res = self._set_params(slot, params)
        if moved and res.decision == "applied":
            res.error = said
        return res

    # ------------------------------------------------------------------ start / state
    def on_start(self, env: Env) -> None:
        """Load the callbacks that ``hotcb.yaml`` in the run directory declares, each on its
        own: a bad entry is a ``failed`` load entry saying which and why, the others load.
        (A file that is not YAML or has no ``callbacks`` list raises.)"""
        path = self.host.paths.config_yaml
        if not os.path.exists(path):
            return
        for entry in config_entries(path):
            if entry.record is not None:
                self._apply_internal(entry.record, env, source="config")
                continue
            log.warning("hotcb: %s", entry.problem)
            self.host.record(
                {
                    "cmd_id": new_cmd_id(),
                    "source": "config",
                    "module": "cb",
                    "op": "load",
                    "id": entry.id,
                    "target": entry.target,
                    "decision": "failed",
                    "error": entry.problem,
                    "config_entry": entry.index,
                }
            )

    def _apply_internal(self, record: dict[str, Any], env: Env, *, source: str) -> None:
        record.setdefault("cmd_id", new_cmd_id())
        record["source"] = source
        op = command_to_hotop(record)
        result = self.apply(op, env)
        fields = {
            "cmd_id": op.cmd_id,
            "source": source,
            "module": "cb",
            "op": op.op,
            "id": op.id,
            "params": op.params,
            "target": op.target.to_dict() if op.target else None,
            "init": op.init,
            "enabled": op.enabled,
            "decision": result.decision,
            "changes": result.changes,
            "error": result.error,
        }
        fields.update(result.extra or {})
        self.host.record(fields)

    def state_dict(self) -> dict[str, Any]:
        """Loaded callbacks in load order: target, init, enabled, params set, source capture,
        and the callback's own ``state_dict()`` when it has one."""
        out = []
        for s in self._slots.values():
            item: dict[str, Any] = {
                "id": s.id,
                "target": s.target.to_dict(),
                "init": s.init,
                "enabled": s.enabled,
                "params": dict(s.params),
                "source_capture": dict(s.capture) if s.capture else None,
            }
            fn = getattr(s.cb, "state_dict", None)
            if callable(fn):
                try:
                    with caught_exit(f"callback {s.id!r}", "in state_dict()"):
                        item["state"] = fn()
                except Exception as exc:
                    log.warning("hotcb: state_dict of callback %r raised: %r", s.id, exc)
            out.append(item)
        return {"callbacks": out}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Re-create the callbacks of a checkpoint (file loads from their captured source).

        The ones restored are named by one ``cb restore`` entry (``restored``: their ids): it
        tells ``cb list`` that they are loaded in this life of the trainer, where a trainer
        started again without its checkpoint has none of them."""
        restored: list[str] = []
        for item in state.get("callbacks") or ():
            ident = item.get("id")
            try:
                target = CallbackTarget(**item["target"])
                check_allowed(self.host, target)
                cb, resolved = self._build(
                    ident, target, dict(item.get("init") or {}), item.get("source_capture")
                )
            except Exception as exc:
                error = f"could not restore callback {ident!r}: {_fmt_exc(exc)}"
                if self._lockstep():  # it may fail on some ranks only: the ranks settle it
                    self._note({"module": "cb", "kind": "load", "id": ident, "cmd_id": None,
                                "op": "restore", "decision": "failed", "error": error})  # fmt: skip
                    continue
                self.host.record(
                    {
                        "module": "cb",
                        "op": "restore",
                        "id": ident,
                        "decision": "failed",
                        "error": error,
                    }
                )
                continue
            old = self._slots.pop(ident, None)
            if old is not None:
                self._hook(old, "on_unload", {})
            slot = _Slot(
                ident,
                cb,
                target,
                dict(item.get("init") or {}),
                bool(item.get("enabled", True)),
                resolved.source_capture,
            )
            self._hook(slot, "on_load", {})
            if item.get("params"):
                self._set_params(slot, item["params"])
            fn = getattr(cb, "load_state_dict", None)
            if callable(fn) and item.get("state") is not None:
                try:
                    with caught_exit(f"callback {ident!r}", "in load_state_dict()"):
                        fn(item["state"])
                except Exception as exc:
                    log.warning("hotcb: load_state_dict of callback %r raised: %r", ident, exc)
            self._slots[ident] = slot
            restored.append(ident)
        self._rebuild()
        if restored:
            self.host.record(
                {"module": "cb", "op": "restore", "decision": "noop", "restored": restored}
            )

    # ------------------------------------------------------------------ inspection
    def describe(self) -> list[dict[str, Any]]:
        """What ``cb list`` shows, for in-process callers."""
        return [
            {
                "id": s.id,
                "target": s.target.to_dict(),
                "enabled": s.enabled,
                "params": dict(s.params),
                "sha256": s.sha256,
                "errors": s.errors,
                "last_error": s.last_error,
            }
            for s in self._slots.values()
        ]

    def get(self, ident: str) -> Any:
        """The callback instance loaded as ``ident`` (None when not loaded)."""
        slot = self._slots.get(ident)
        return slot.cb if slot is not None else None


def _on_ranks(ranks: Sequence[int]) -> str:
    return f"on rank {ranks[0]}" if len(ranks) == 1 else f"on ranks {', '.join(map(str, ranks))}"


def _fake(ident: Any) -> HotOp:
    return HotOp(module="cb", op="undo", cmd_id="undo", id=ident)


#: The keys of a ``callbacks`` entry of ``hotcb.yaml``.
CONFIG_KEYS = ("id", "path", "file", "symbol", "init", "enabled", "target")


@dataclass(frozen=True)
class ConfigEntry:
    """One ``callbacks[index]`` of a ``hotcb.yaml``: its ``cb load`` command (``record``), or
    why it cannot be loaded (``problem``, naming the file, the entry and its id)."""

    index: int
    id: str | None
    record: dict[str, Any] | None
    problem: str | None = None
    target: dict[str, Any] | None = None


def read_config(path: str) -> list[dict[str, Any]]:
    """The ``cb load`` commands declared by a ``hotcb.yaml``::

    callbacks:
      - id: heartbeat
        path: hotcb.modules.cb.callbacks    # an import path, or
        # file: callbacks/my_cb.py           # a file (relative to the run directory)
        symbol: HeartbeatCallback
        init: {every_steps: 100}
        enabled: true

    Raises ``ValueError`` naming every bad entry (the kernel loads the good ones of such a
    file anyway, see :func:`config_entries`)."""
    entries = config_entries(path)
    problems = [e.problem for e in entries if e.problem]
    if problems:
        raise ValueError("\n".join(problems))
    return [e.record for e in entries if e.record is not None]


def config_entries(path: str) -> list[ConfigEntry]:
    """Each entry of the ``callbacks`` list of a ``hotcb.yaml``, checked on its own. Raises
    when the file as a whole is unreadable (no PyYAML, not YAML, not a mapping, ``callbacks``
    not a list)."""
    try:
        import yaml
    except ImportError as exc:
        raise ImportError(
            f'{path} declares callbacks, reading it needs PyYAML: pip install "hotcb[yaml]"'
        ) from exc
    fd, _ = jsonl.open_regular(path)  # a FIFO in its place would hang the trainer's start
    with open(fd, encoding="utf-8") as f:
        try:
            doc = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping with a 'callbacks' list")
    items = doc.get("callbacks") or []
    if not isinstance(items, list):
        raise ValueError(f"{path}: 'callbacks' must be a list of entries, got {items!r}")
    root = os.path.dirname(os.path.abspath(path))
    return [_config_entry(path, root, i, item) for i, item in enumerate(items)]


def _config_entry(path: str, root: str, i: int, item: Any) -> ConfigEntry:
    where = f"{path}: callbacks[{i}]"
    if not isinstance(item, dict):
        return ConfigEntry(
            i, None, None, f"{where} must be a mapping (id, path or file, symbol), got {item!r}"
        )
    problems: list[str] = []
    ident = item.get("id")
    if isinstance(ident, int) and not isinstance(ident, bool):
        ident = str(ident)
    if isinstance(ident, str) and ident:
        where += f" (id {ident!r})"
    else:
        problems.append(f"'id' must be a non-empty string, got {ident!r}")
        ident = None
    for key in item:
        if key not in CONFIG_KEYS:
            near = difflib.get_close_matches(str(key), CONFIG_KEYS, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(CONFIG_KEYS)}"
            problems.append(f"unknown key {key!r} ({hint})")
    target = _config_target(item, root, problems)
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(f"'enabled' must be true or false (unquoted), got {enabled!r}")
    init = item.get("init")
    if init is not None and not isinstance(init, dict):
        problems.append(f"'init' must be a mapping of constructor arguments, got {init!r}")
    shown = target if isinstance(target, dict) else None
    if problems:
        return ConfigEntry(i, ident, None, f"{where}: {'; '.join(problems)}", shown)
    try:
        rec = make_command(
            "cb", "load", source="config", id=ident, target=target, init=init or {},
            enabled=enabled,
        )  # fmt: skip
    except CommandError as exc:
        return ConfigEntry(i, ident, None, f"{where}: {exc}", shown)
    return ConfigEntry(i, ident, rec, target=shown)


def _config_target(item: Mapping[str, Any], root: str, problems: list[str]) -> Any:
    """The ``target`` of a ``hotcb.yaml`` entry (from ``path``/``file`` and ``symbol``, or as
    given); what is wrong with it goes to ``problems``."""
    given = [k for k in ("path", "file", "target") if item.get(k) is not None]
    if len(given) > 1:
        problems.append(f"give one of 'path' or 'file', not {' and '.join(map(repr, given))}")
        return None
    if not given:
        problems.append(
            "nothing to load: give 'path' (an importable module) or 'file' (a .py file, "
            "relative to the run directory), and 'symbol'"
        )
        return None
    if given == ["target"]:
        return item["target"]
    where = item[given[0]]
    if given == ["file"] and isinstance(where, str) and where and not os.path.isabs(where):
        where = os.path.join(root, where)
    kind = "python_file" if given == ["file"] else "python_path"
    return {"kind": kind, "path": where, "symbol": item.get("symbol")}
