"""The freeze gate: which commands a freeze mode lets through, and the recipe a replay plays.

``freeze set`` changes the mode; its recipe and overlay paths must lie inside the run directory
or an allowed root (checked before anything is read). In a replay mode the recipe's player is a
step source of the kernel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._recorder import LedgerRecorder
from ._schedule import StepSource
from .errors import CommandError
from .freeze import FreezeMode, FreezeState, passes_freeze
from .ledger import Decision
from .modules import OpResult
from .ops import HotOp
from .runfiles import confine_path, run_relative

if TYPE_CHECKING:
    from .recipe import RecipePlayer

__all__ = ["INTERNAL_SOURCES", "FreezeGate"]

log = logging.getLogger("hotcb")

Env = Mapping[str, Any]
#: Sources the kernel generates itself; freeze does not gate them.
INTERNAL_SOURCES = frozenset({"recipe", "resume", "kernel", "ramp"})


class FreezeGate:
    """Handler of the ``freeze`` module; shares the module protocol (``apply``/``undo``)."""

    wants_events = False

    def __init__(
        self,
        state: FreezeState,
        recorder: LedgerRecorder,
        *,
        run_dir: str,
        allowed_roots: Sequence[str],
        state_path: str,
        plug: Callable[[StepSource | None, StepSource | None], None],
    ) -> None:
        self.state = state
        self.player: RecipePlayer | None = None
        self.leader = True
        self._recorder = recorder
        self._run_dir = run_dir
        self._roots = allowed_roots
        self._path = state_path
        self._plug = plug  # (old source, new source): swap the player among the step sources
        #: the state came from ``HotKernel(freeze=)``: written to ``hotcb.freeze.json`` at start
        self.save_at_start = False

    def blocks(self, op: HotOp) -> str | None:
        """The reason when the freeze mode refuses ``op``; None when it passes."""
        if self.state.accepts_live or op.source in INTERNAL_SOURCES:
            return None
        if passes_freeze(op.module, op.op, op.source):
            return None
        return (
            f"freeze mode is {self.state.mode.value}: changes are ignored until it is "
            "off ('hotcb freeze --mode off', or the dashboard's Freeze)"
        )

    # ------------------------------------------------------------------ the module protocol
    def apply(self, op: HotOp, env: Env) -> OpResult:
        old = self.state.mode.value
        try:
            new = FreezeState(
                mode=FreezeMode(op.extra.get("mode", op.params.get("mode"))),
                recipe_path=self._confine(op, "recipe_path"),
                adjust_path=self._confine(op, "adjust_path"),
                step_offset=int(op.extra.get("step_offset", op.params.get("step_offset")) or 0),
            )
            # the same replay again keeps its place
            swap = new != self.state or self.player is None
            player = _player_for(new, self._run_dir) if swap else None
        except Exception as exc:  # a missing or broken recipe, a path outside: reject
            return OpResult("rejected", error=str(exc))
        if self.leader:  # saved first: a mode that cannot be saved is not taken
            try:
                new.save(self._path)
            except OSError as exc:
                return OpResult("failed", error=f"could not write {self._path}: {exc}; the "
                                                f"freeze mode stays {old}")  # fmt: skip
        if swap:
            self._set_player(player)
        changes = _changes(self.state, new)
        self.state = new
        return OpResult("applied", changes=changes)

    def undo(self, entry: Mapping[str, Any], env: Env) -> OpResult:
        return OpResult("rejected", error="freeze cannot be undone; send the mode you want")

    def on_start(self, env: Env) -> None:
        """Start the replay that ``hotcb.freeze.json`` or ``HotKernel(freeze=)`` asks for; the
        latter's mode is written to ``hotcb.freeze.json`` (``hotcb status`` reads it there, and
        said ``off`` while the run refused live changes)."""
        if self.save_at_start and self.leader:
            self.save_at_start = False
            try:
                self.state.save(self._path)
            except OSError as exc:
                log.warning("hotcb: could not write %s: %s", self._path, exc)
        if self.state.replaying and self.player is None:
            self.start_replay(None)

    def on_events(self, events: Sequence[str], env: Env) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "freeze": self.state.to_dict(),
            "recipe": self.player.state_dict() if self.player is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """The freeze of a checkpoint: in force again, and written to ``hotcb.freeze.json``
        (``hotcb status`` reads the mode there; a branch's new directory had none)."""
        self.state = FreezeState.from_dict(state.get("freeze"))
        self._set_player(None)
        if self.leader:
            self.state.save(self._path)
        if self.state.replaying:
            self.start_replay(state.get("recipe"))

    # ------------------------------------------------------------------ replay
    def start_replay(self, player_state: Mapping[str, Any] | None) -> None:
        """Start this state's recipe (at ``player_state``'s position), or ledger why not."""
        try:
            player = _player_for(self.state, self._run_dir)
            if player is not None and player_state:
                player.load_state_dict(player_state)
        except Exception as exc:  # a recipe gone or changed: the run goes on, the ledger says so
            self._recorder.emit(
                self._recorder.point,
                source="kernel",
                module="kernel",
                op="error",
                decision=Decision.FAILED.value,
                error=f"freeze mode {self.state.mode.value}: cannot start the recipe: {exc}",
            )
            return
        self._set_player(player)

    def _set_player(self, player: RecipePlayer | None) -> None:
        old, self.player = self.player, player
        self._plug(old, player)

    def _confine(self, op: HotOp, key: str) -> str | None:
        value = op.extra.get(key, op.params.get(key))
        if value is None:
            return None
        if not isinstance(value, str):
            raise CommandError(f"{key} must be a path string, got {type(value).__name__}")
        # kept relative to the run directory when inside it: hotcb.freeze.json and the
        # checkpoints then hold up when the run directory is moved or copied
        return run_relative(confine_path(value, self._run_dir, self._roots, what=key),
                            self._run_dir)  # fmt: skip


def _changes(old: FreezeState, new: FreezeState) -> dict[str, Any]:
    """A freeze's ledgered changes: the mode, and the recipe, overlay and step offset where
    either state has one (``hotcb log`` then shows a change of recipe, not ``replay -> replay``)."""
    out = {"mode": {"old": old.mode.value, "new": new.mode.value}}
    for key in ("recipe_path", "adjust_path", "step_offset"):
        before, after = getattr(old, key), getattr(new, key)
        if before or after:
            out[key] = {"old": before, "new": after}
    return out


def _player_for(state: FreezeState, run_dir: str) -> RecipePlayer | None:
    """The recipe player of ``state``; hotcb.recipe is imported only when a run replays, so
    ``import hotcb`` stays within its budget."""
    if not state.replaying:
        return None
    from .recipe import player_for

    return player_for(state, run_dir)
