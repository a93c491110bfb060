"""Run control: ``pause``, ``resume``, ``stop``, ``checkpoint``, ``undo`` and ``cancel``.

The training loop reads the flags (``paused``, ``stop_requested``, ``checkpoint_requested``) or
hands the kernel ``request_stop`` / ``save_checkpoint`` callables in ``env``. A checkpoint is
saved at the end of the safe point, once every change of that step is applied, so the
checkpoint holds them and a resume does not re-apply them a step late.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._recorder import LedgerRecorder, SafePoint
from ._schedule import NEVER, Schedule
from .errors import HotcbError
from .ledger import Decision, checkpoint_field, find_entry
from .modules import HotModule, OpResult
from .ops import HotOp
from .runfiles import confine_path

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
        self.due: list[HotOp] = []  # checkpoint commands waiting for the end of the safe point
        self._ops: dict[str, Callable[[HotOp, Env], OpResult | None]] = {
            "pause": self._op_pause,
            "resume": self._op_resume,
            "stop": self._op_stop,
            "checkpoint": self._op_checkpoint,
            "cancel": self._op_cancel,
            "undo": self._op_undo,
        }

    # ------------------------------------------------------------------ the module protocol
    def apply(self, op: HotOp, env: Env) -> OpResult | None:
        """The op's result, or None when it is ledgered later (a checkpoint, a cancel)."""
        return self._ops[op.op](op, env)  # command_to_hotop admits only these ops

    def undo(self, entry: Mapping[str, Any], env: Env) -> OpResult:
        return OpResult("rejected", error=f"control {entry.get('op')} cannot be undone")

    def on_start(self, env: Env) -> None:
        return None

    def on_events(self, events: Sequence[str], env: Env) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"paused": self.paused}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.paused = bool(state.get("paused"))

    def next_step(self, step: int) -> int:
        return step if self.due else NEVER

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
            self.due.append(op)
            return None
        self.checkpoint_requested = True
        return OpResult("applied", extra={"checkpoint": "requested"})

    def _op_cancel(self, op: HotOp, env: Env) -> OpResult:
        target = op.params["cmd_id"]
        cancelled = self._schedule().cancel(target)
        if cancelled is None:
            return OpResult("rejected", error=f"no scheduled command {target!r} is pending")
        self.recorder.emit_op(
            cancelled, self.recorder.point, Decision.NOOP, error=f"cancelled by {op.cmd_id}"
        )
        return OpResult("applied")

    def _op_undo(self, op: HotOp, env: Env) -> OpResult:
        target = self._undo_target(op.params.get("cmd_id"))
        if target is None or not target.get("changes"):
            what = f"command {op.params.get('cmd_id')!r}" if op.params.get("cmd_id") else "change"
            return OpResult("rejected", error=f"no applied {what} with changes to undo")
        handler = self._handler(str(target.get("module") or ""))
        if handler is None:
            return OpResult(
                "rejected", error=f"{target.get('module')} {target.get('op')} cannot be undone"
            )
        result = handler.undo(target, env)
        if result.decision == Decision.APPLIED.value:
            self.recorder.undone.add(target["cmd_id"])
        result.extra = {**(result.extra or {}), "undo_of": target["cmd_id"]}
        return result

    def _undo_target(self, cmd_id: str | None) -> Mapping[str, Any] | None:
        """The newest applied change not undone yet (or the one of ``cmd_id``)."""
        rec = self.recorder
        entry: Mapping[str, Any]  # mypy: reversed() over dicts holding Any matches two overloads
        for entry in reversed(rec.history):
            if entry["cmd_id"] in rec.undone or entry.get("undo_of"):
                continue
            if cmd_id is None or entry["cmd_id"] == cmd_id:
                return entry
        if cmd_id is None:
            return None
        rec.flush()
        return find_entry(self._ledger_path, cmd_id)

    # ------------------------------------------------------------------ end of the safe point
    def save_due(self, env: Env, point: SafePoint) -> None:
        """Save the checkpoints asked for at this safe point, now that its changes are in."""
        ops, self.due = self.due, []
        save = env.get("save_checkpoint")
        for op in ops:
            if not callable(save):
                self.checkpoint_requested = True
                self.recorder.emit_op(
                    op, point, Decision.APPLIED, extra={"checkpoint": "requested"}
                )
                continue
            try:
                path = op.params.get("path")
                if path is not None:
                    path = confine_path(path, self._run_dir, self._roots, what="path")
            except (HotcbError, TypeError) as exc:
                self.recorder.emit_op(op, point, Decision.REJECTED, error=str(exc))
                continue
            try:
                result = save(path) if path is not None else save()
            except Exception as exc:  # the user's save: record, never raise
                error = f"{type(exc).__name__}: {exc}"
                self.recorder.emit_op(op, point, Decision.FAILED, error=error)
                continue
            saved = checkpoint_field(result, self._run_dir) if result else None
            self.recorder.emit_op(op, point, Decision.APPLIED, extra={"checkpoint": saved})
