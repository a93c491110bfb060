"""The default stream: ``opt``, ``loss`` and ``custom`` ``set_params`` on the actuators.

Validation of every key before anything changes, ramps (``transition``) that move a value over
N steps, roll-back of the keys already applied when one fails, undo of an applied change, and
``hotcb.actuators.json``, the file that tells the dashboard what it can control.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from . import jsonl
from ._recorder import LedgerRecorder, SafePoint
from ._schedule import NEVER, Ramp
from ._trials import TrialView, set_since, since_text
from .actuators import ActuatorType, MutableState, optimizer_actuators
from .errors import ActuatorApplyError, ActuatorError
from .ledger import Decision
from .modules import OpResult
from .ops import HotOp
from .runfiles import FORMAT_VERSION

__all__ = ["ActuatorStream"]

Env = Mapping[str, Any]
_NUMERIC = (ActuatorType.FLOAT, ActuatorType.LOG_FLOAT, ActuatorType.INT, ActuatorType.TUPLE)
#: How many LR schedulers seen in env are kept (a loop that makes a new one each epoch).
_SCHEDULERS_KEPT = 8


def _positive(value: Any) -> float | None:
    """``value`` when it is a number above zero (not a bool), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _optimizers(env: Env) -> list[Any]:
    """The optimizers ``env`` passes: ``env["optimizers"]``, else ``[env["optimizer"]]``."""
    many = env.get("optimizers")
    if many:
        return list(many)
    one = env.get("optimizer")
    return [one] if one is not None else []


class ActuatorStream:
    """Handler of the actuator modules; shares the module protocol (``apply``/``undo``)."""

    wants_events = False

    def __init__(
        self,
        state: MutableState,
        recorder: LedgerRecorder,
        actuators_path: str,
        *,
        warn: Callable[[str, str], None],
        history_path: str | None = None,
    ) -> None:
        self.state = state
        self.recorder = recorder
        self.path = actuators_path
        self.history_path = history_path  # hotcb.knobs.jsonl: values that moved on their own
        self.leader = True
        self.ramps: dict[str, Ramp] = {}
        #: key -> (the step a command last changed it at, the count of commands noted by then)
        #: (a set, an undo, a ramp's move; not a module's own actuation, which has no cmd_id):
        #: the tuner voids a trial it overlaps. The count orders commands within one step
        #: (before or after a trial's mutation), the same on every rank of a run.
        self.commanded: dict[str, tuple[int, int]] = {}
        self.noted = 0
        #: keys whose last command was a factor of the value then in force (``relative_to``:
        #: the autopilot's lr × 0.5), not a value: a tuner that voids its trial takes the
        #: trial's own factor back from them
        self.relative: set[str] = set()
        self.opt_registered = any(a.group == "opt" for a in state)
        #: LR schedulers seen in env (shared with the optimizer's actuators, which keep them in
        #: step with an lr change made at an apply whose env has none)
        self.schedulers: list[Any] = []
        #: cmd_id -> {key: factor} of the ramps that ended under an LR scheduler (the last
        #: few): an undo of one takes its ratio back from the schedule (:attr:`Ramp.factor`)
        self.ramp_factors: dict[str, dict[str, float]] = {}
        #: the values ramps set since they were last recorded: the actuators file and
        #: ``hotcb.knobs.jsonl`` get them at most once a second and at each ramp's end (a ramp
        #: is a schedule of hotcb's own), at the step they were set at
        self.ramp_moved: dict[str, Any] = {}
        self.ramp_flush = 0.0  # time.monotonic() of the next record of ramp_moved
        self.needs_init = False  # an actuator was registered after the start
        #: the optimizers whose actuators discovery registered, and their keys: a loop that
        #: builds a new optimizer (a notebook's training cell run again, a second Lightning
        #: fit) gets its actuators moved to it
        self._bound: list[Any] = []
        self._bound_keys: list[str] = []
        self._model_seen = False
        #: look for a new optimizer at the next poll whatever its env (another loop began:
        #: a lazy env is otherwise read for it only with a command to apply)
        self.rebind_due = False
        self._written = -1
        self._restore: dict[str, Any] = {}
        #: each knob's value at the run's start, from a checkpoint: the actuators file says it
        #: (the Knobs panel of a resumed run drew the lr at the checkpoint from step 0)
        self._initial: dict[str, Any] = {}
        self._warn = warn  # (key, message): a log line once per kind

    # ------------------------------------------------------------------ discovery
    def discover(self, env: Env) -> None:
        """Register the optimizer's actuators and a model's ``mutable_state`` when first seen,
        read initial values, restore checkpointed ones, write the actuators file."""
        if not self.opt_registered:
            for i, opt in enumerate(_optimizers(env)):
                if not hasattr(opt, "param_groups"):
                    continue
                for act in optimizer_actuators(
                    opt, prefix="" if i == 0 else f"opt{i}.", schedulers=self.schedulers
                ):
                    self._register(act, "the optimizer's")
                    if self.state.get(act.param_key) is act:
                        self._bound_keys.append(act.param_key)
                self._bound.append(opt)
                self.opt_registered = True
        model = env.get("model")
        extra = getattr(model, "mutable_state", None) if model is not None else None
        if extra is not None and not self._model_seen:
            self._model_seen = True
            for act in list(extra):
                self._register(act, "model.mutable_state's")
        self.state.initialize(env)
        self._restore_values(env)
        self.write_if_changed(env.get("step"))

    def _register(self, act: Any, whose: str) -> None:
        """Register ``act`` unless its name is taken. Names are unique across groups: a loss
        weight called ``lr`` hid the optimizer's lr without a word (`hotcb set lr=…` then said
        "unknown actuator 'lr' in opt"); the clash is said once."""
        taken = self.state.get(act.param_key)
        if taken is None:
            self.state.register(act)
        elif taken is not act and taken.group != act.group:
            self._warn(f"clash_{act.param_key}",
                       f"{whose} {act.group} actuator {act.param_key!r} is not registered: a "
                       f"{taken.group} actuator of that name came first (names are unique across "
                       "groups; rename one of them)")  # fmt: skip

    def catch_up(self, env: Env, *, work: bool = False) -> None:
        """Discover an optimizer that appeared, or initialise actuators registered since; only
        then: discovery rewrites the actuators file, and doing that per command made a burst
        cost one file replace per command. Remember the LR schedulers ``env`` passes, and
        move the optimizer's actuators to a new optimizer (:meth:`_rebind`): always when
        ``work`` is done with it, else from a plain dict only (a framework's lazy env is built
        on reading, and passes its scheduler at every safe point anyway)."""
        built = work or isinstance(env, dict) or self.rebind_due
        self.rebind_due = False
        if built:
            self._note_schedulers(env)
        if built and self._bound and self._swapped(env):  # (a command: before it applies)
            self._rebind(env)
        elif self.needs_init or (
            not self.opt_registered and (env.get("optimizer") is not None or env.get("optimizers"))
        ):
            self.needs_init = False
            self.discover(env)
        elif self._restore:  # checkpointed values loaded after discovery: with this env
            self._restore_values(env)

    def _swapped(self, env: Env) -> bool:
        """Whether ``env`` passes other optimizers than the ones the actuators drive: other
        objects with other ``param_groups`` lists (a wrapper, accelerate's or Lightning's,
        shares its optimizer's list; a wrapper that built a new list at each read is still
        the same object: the same optimizer either way)."""
        opts = [o for o in _optimizers(env) if hasattr(o, "param_groups")]
        # (a safe point that passes fewer, `optimizer` alone at validation: those it passes)
        pairs = zip(opts, self._bound, strict=False)
        return any(a is not b and a.param_groups is not b.param_groups for a, b in pairs)

    def _rebind(self, env: Env) -> None:
        """A new optimizer in ``env`` (a notebook's training cell run again, a second Lightning
        ``fit`` with the same kernel): the optimizer's actuators move to it, with its values,
        and the ledger says so. They drove the first one: a ``set lr`` was ledgered applied and
        shown on the dashboard while the training optimizer kept its lr."""
        for key in self._bound_keys:  # a ramp of the old optimizer's ends with it
            self._drop_ramp(key, "the optimizer it ramped was replaced")
            self.state.unregister(key)
        self._bound, self._bound_keys, self.opt_registered = [], [], False
        self.discover(env)
        values = {k: self.state.lookup(k).current_value for k in self._bound_keys}
        self.recorder.emit(
            self.recorder.point, source="kernel", module="opt", op="new_optimizer",
            decision=Decision.NOOP.value, values=values,
            error="a new optimizer in env: lr, weight decay and the other optimizer knobs now "
                  "steer it, from its own values (the old one's changes stay with the old one)",
        )  # fmt: skip

    def _note_schedulers(self, env: Env) -> None:
        """Keep the LR schedulers seen in ``env["scheduler"]`` / ``env["schedulers"]`` (the
        last few): a loop that passes its scheduler to ``apply()`` after the training step but
        not at validation got an lr set there (a command, the tuner's roll-back) off the
        schedule, which then undid or multiplied it."""
        one, many = env.get("scheduler"), env.get("schedulers")
        if one is None and not many:
            return
        for sched in (one, *(many or ())):
            if sched is not None and all(sched is not known for known in self.schedulers):
                self.schedulers.append(sched)
                del self.schedulers[:-_SCHEDULERS_KEPT]

    def check(self, op: HotOp) -> str | None:
        """Why ``op``'s values would be refused (for a command scheduled for later), or None."""
        try:
            for key, value in op.params.items():
                self.state.lookup(key, op.module).validate(value)
        except ActuatorError as exc:
            return str(exc)
        return None

    # ------------------------------------------------------------------ the module protocol
    def apply(self, op: HotOp, env: Env) -> OpResult:
        self.catch_up(env, work=True)
        step = int(env["step"])
        rebased: dict[str, dict[str, Any]] = {}
        try:
            plan = self._plan(op, env, rebased)
        except ActuatorError as exc:
            return OpResult("rejected", error=str(exc))
        changes: dict[str, dict[str, Any]] = {}
        for key, act, value in plan:  # a new command on a key ends its ramp, and the ramps
            for ramped in self._ramps_under(key, act, value, env):  # of keys it moves
                self.end_ramp(ramped, op, env)
        transition = op.transition
        try:
            if transition is None:  # as one: lr@group1 wins over lr for group 1
                changes = self.state.apply_all([(key, value) for key, _, value in plan], env)
            else:
                for key, act, value in plan:
                    old = act.read(env)
                    self.ramps[key] = Ramp(key, old, value, step, transition.steps,
                                           transition.shape, op,
                                           is_int=act.type is ActuatorType.INT)  # fmt: skip
                    changes[key] = {"old": old, "new": value}
                    changes.update(self._moved_too(act, old, value, env, changes))
        except (ActuatorApplyError, ActuatorError) as exc:  # apply_all rolled the rest back
            for key in changes:
                self.ramps.pop(key, None)
            return OpResult("failed", error=str(exc))
        self._note_command(op, changes, step)
        extra: dict[str, Any] = {"transition": op.transition.to_dict()} if op.transition else {}
        if rebased:
            extra["rebased"] = rebased
        return OpResult("applied", changes=changes, extra=extra)

    def _ramps_under(self, key: str, act: Any, value: Any, env: Env) -> list[str]:
        """The keys whose ramp a command setting ``key`` to ``value`` takes over: its own, the
        ones it moves or covers (``lr`` moves ``lr@group1``, ``betas`` covers ``beta2``), and
        the ones whose ramp moves it (a ramp of ``betas`` moves ``beta2``). Left running, such
        a ramp put its own value back at the next step over the command ledgered applied."""
        if not self.ramps:
            return []
        taken = {key, *act.covers, *self._moves(act, value, env)}
        out = []
        for ramped, ramp in self.ramps.items():
            other = self.state.get(ramped)
            if ramped in taken or (
                other is not None
                and (key in other.covers or key in self._moves(other, ramp.target, env))
            ):
                out.append(ramped)
        return out

    @staticmethod
    def _moves(act: Any, value: Any, env: Env) -> dict[str, Any]:
        """``act.moves(value, env)``, ``{}`` when it has none or it raised (the user's)."""
        if act.moves is None:
            return {}
        try:
            return dict(act.moves(value, env))
        except Exception:
            return {}

    def _moved_too(
        self, act: Any, old: Any, new: Any, env: Env, skip: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """The other keys a ramp of ``act`` from ``old`` to ``new`` moves (each param group's
        lr for ``lr``), ``{key: {old, new}}``, but those in ``skip``: a ramp's entries list them
        as a change made at once does, so a later undo of an older change of one of them sees
        that the ramp set it since."""
        before, after = self._moves(act, old, env), self._moves(act, new, env)
        out: dict[str, dict[str, Any]] = {}
        for key, target in after.items():
            other = self.state.get(key)
            if key in skip or other is None or other.matches(before.get(key), target):
                continue
            out[key] = {"old": before.get(key), "new": target}
        return out

    def _plan(
        self, op: HotOp, env: Env, rebased: dict[str, dict[str, Any]]
    ) -> list[tuple[str, Any, Any]]:
        """Each key's actuator and checked value; raises :class:`ActuatorError`."""
        plan = [(k, self.state.lookup(k, op.module), v) for k, v in op.params.items()]
        if "relative_to" in op.extra:
            plan = [(k, act, self._rebase(k, act, v, op, env, rebased)) for k, act, v in plan]
        plan = [(k, act, act.validate(v)) for k, act, v in plan]
        self.state.check_all([(k, v) for k, _, v in plan], env)  # a group out of its bounds
        if op.transition is not None:
            for k, act, _ in plan:
                if act.type not in _NUMERIC:
                    raise ActuatorError(
                        f"transition needs a numeric actuator; {k!r} is {act.type.value}"
                    )
        return plan

    @staticmethod
    def _rebase(
        key: str, act: Any, value: Any, op: HotOp, env: Env, rebased: dict[str, dict[str, Any]]
    ) -> Any:
        """A multiplier sent as ``basis × factor`` (``relative_to``), applied to the value in
        force now when that moved since the sender read it: an autopilot's ×0.3 computed from
        a tuner trial's lr that a roll-back has since taken back stays ×0.3, not ×0.65."""
        basis = op.extra["relative_to"].get(key)
        now = act.read(env)
        if basis is None or isinstance(now, bool) or not isinstance(now, (int, float)):
            return value
        if now == basis or act.type not in (ActuatorType.FLOAT, ActuatorType.LOG_FLOAT):
            return value
        rebased[key] = {"sent": value, "basis": basis, "in_force": now}
        return now * (value / basis)

    def _note_command(self, op: HotOp, keys: Iterable[str], step: int) -> None:
        """Remember the step a command changed ``keys`` at (a module's own actuation, which
        has no cmd_id, is not a command)."""
        if op.cmd_id:
            relative = op.extra.get("relative_to") or {}
            self._commanded(keys, step, [k for k in keys if k in relative])

    def _commanded(self, keys: Iterable[str], step: int, relative: Iterable[str] = ()) -> None:
        self.noted += 1
        keys = list(keys)
        self.commanded.update(dict.fromkeys(keys, (step, self.noted)))
        self.relative.difference_update(keys)  # the last command on a key says which it was
        self.relative.update(relative)

    def commanded_since(self, step: int, after: int | None = None) -> list[str]:
        """The keys a command changed at ``step`` or later; with ``after`` (a :attr:`noted`
        count of this process), the ones changed by a command noted after that."""
        if after is not None:
            return [k for k, (_, n) in self.commanded.items() if n > after]
        return [k for k, (at, _) in self.commanded.items() if at >= step]

    def undo(self, entry: Mapping[str, Any], env: Env) -> OpResult:
        """Put back the old values an applied entry recorded (and stop its ramps).

        A value a schedule moves (lr under an LR scheduler) is not set back to the number it had
        then: the schedule went on since. The change's ratio is taken back instead
        (``now * old / new``), which puts the run on the schedule it would be on without it.

        An old value that a tuner trial had set, when the trial was not kept (rolled back or
        voided, its roll-back leaving the key to this command), loses the trial's move too
        (:meth:`_without_trial`): the value the roll-back would have put back."""
        taken = self.recorder.partly.get(str(entry.get("cmd_id")), set())  # by an earlier undo
        # (an lr would move the groups taken back already too: the others go one by one)
        reverse = {k: v for k, v in entry["changes"].items()
                   if v.get("old") is not None and k not in taken
                   and not any(t.split("@")[0] == k for t in taken)}  # fmt: skip
        if entry.get("transition") is not None:  # a ramp's keys; the groups follow its lr
            ramped = entry.get("params") or {}
            reverse = {k: v for k, v in reverse.items() if k in ramped}
        changes: dict[str, Any] = {}
        scaled: dict[str, float] = {}  # key -> the factor that took the change back
        zero: list[str] = []  # at zero on their schedule: left there
        trials: dict[str, dict[str, Any]] = {}  # key -> the unkept trial whose move went too
        view = self.recorder.trials()
        since = set_since(view, entry, reverse, self.recorder.coming())
        if since and not set(reverse) - set(since):
            return OpResult("noop", error=since_text(since), extra={"set_since": since})
        back: list[tuple[str, Any]] = []  # what to set, applied as one (lr before lr@group1)
        try:
            for key, change in reverse.items():
                if key in since:  # nothing of this change is in force on it
                    continue
                self.end_ramp(key, None, env)  # undoing a ramp stops it, else it lands anyway
                # a ramp's entry holds its target, not where it was stopped: its old value,
                # or under an LR scheduler the ratio its moves scaled the schedule by
                if entry.get("transition") is not None:
                    value, factor = self._before_ramp(entry, key, change["old"], env)
                else:
                    value, factor = self.value_before(key, change["old"], change.get("new"), env)
                if value is None:  # at zero on its schedule: it stays there
                    zero.append(key)
                    continue
                value, factor = self._without_trial(entry, key, value, factor, trials, view)
                back.append((key, value))
                if factor is not None:
                    scaled[key] = factor
            changes = self.state.apply_all(back, env, bounded=False)  # values it held
        except (ActuatorError, ActuatorApplyError) as exc:
            return OpResult("failed", error=str(exc))
        self._commanded(changes, int(env["step"]))
        extra: dict[str, Any] = {"on_schedule": scaled} if scaled else {}
        if zero:
            extra["at_zero"] = zero
        if trials:
            extra["without_trial"] = trials
        if since:
            extra["set_since"] = since
            return OpResult("applied", changes=changes, extra=extra, error=since_text(since))
        return OpResult("applied", changes=changes, extra=extra)

    def _without_trial(
        self,
        entry: Mapping[str, Any],
        key: str,
        value: Any,
        factor: float | None,
        trials: dict[str, dict[str, Any]],
        view: TrialView,
    ) -> tuple[Any, float | None]:
        """``value`` (what undoing ``entry`` sets ``key`` to; ``factor``: the ratio taken back
        from the value in force, None for a value put back as it was) without the move of the
        tuner trial whose value ``entry`` found, when that trial was rolled back or voided
        (or is open, so voided at its end: this command overlapped it). The trial's roll-back
        left ``key`` to the command, so putting the command's old value back would bring back
        a move the tuner rejected, or never judged. ``trials`` gets what was taken back."""
        found = view.unkept_under(entry, key)
        act = self.state.get(key)
        if found is None or act is None or act.type not in (ActuatorType.FLOAT,
                                                            ActuatorType.LOG_FLOAT):  # fmt: skip
            return value, factor
        change = (found.mutation.get("changes") or {}).get(key) or {}
        before, moved = _positive(change.get("old")), _positive(change.get("new"))
        if before is None or moved is None or _positive(value) is None:
            return value, factor
        if factor is not None and found.rescaled:
            return value, factor  # the roll-back took the trial's factor from the value now
        back = before / moved
        trials[key] = {"trial": found.mutation["tune"]["trial"], "ended": found.ended,
                       "factor": back, "mutation": found.mutation.get("cmd_id"),
                       "module": act.group}  # fmt: skip
        if factor is None and act.matches(value, moved):
            return before, None  # the trial's start value, exactly
        return value * back, (factor * back if factor is not None else None)

    def _before_ramp(
        self, entry: Mapping[str, Any], key: str, old: Any, env: Env
    ) -> tuple[Any, float | None]:
        """What undoing the ramp of ``entry`` sets ``key`` to: under an LR scheduler the value
        in force with the ramp's ratio taken back (as :meth:`value_before` does for a change
        made at once), else the value it started from."""
        ramped = self.ramp_factors.get(entry.get("cmd_id") or "", {}).get(key)
        act = self.state.get(key)
        if ramped is None or act is None or not ramped > 0:
            return old, None
        now = act.read(env)
        if not isinstance(now, (int, float)) or isinstance(now, bool):
            return old, None
        value = now / ramped
        if value <= 0 or (act.min_value is not None and value < act.min_value):
            return None, 1 / ramped
        return value, 1 / ramped

    def _ramp_ended(self, ramp: Ramp) -> None:
        """Keep the ratio a ramp scaled a schedule by, for an undo of its command."""
        if ramp.factor != 1.0 and ramp.op.cmd_id:
            self.ramp_factors.setdefault(ramp.op.cmd_id, {})[ramp.key] = ramp.factor
            while len(self.ramp_factors) > _SCHEDULERS_KEPT * 8:
                del self.ramp_factors[next(iter(self.ramp_factors))]

    def value_before(self, key: str, old: Any, new: Any, env: Env) -> tuple[Any, float | None]:
        """What taking back a change ``old -> new`` of ``key`` sets now, and the factor when it
        is not ``old``: a value a schedule moved since (lr under an LR scheduler) gets the
        change's ratio taken back (``now * old / new``), which puts the run on its schedule.
        None (nothing to set) when the schedule has the value at zero, or below its minimum.
        Used by ``undo`` and by the tuner's roll-back."""
        act = self.state.get(key)
        if (
            act is None
            or act.scheduled is None
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                       for v in (old, new))
            or not act.scheduled(env)
        ):  # fmt: skip
            return old, None
        now = act.read(env)
        if not isinstance(now, (int, float)) or act.matches(now, new):
            return old, None  # nothing moved it since
        value = now * (old / new)
        if value <= 0 or (act.min_value is not None and value < act.min_value):
            return None, old / new  # the schedule has it at zero (a cosine's end): it stays
        return value, old / new

    def on_start(self, env: Env) -> None:
        self.discover(env)

    def on_events(self, events: Sequence[str], env: Env) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "actuators": {
                a.param_key: a.current_value for a in self.state if a.current_value is not None
            },
            # ramps in progress: their op is before the checkpoint, so no resume re-queues it
            "ramps": [r.to_dict() for r in self.ramps.values()],
            # the step each knob was last commanded at (and whether by a factor): a resumed
            # tuner voids a trial a command overlapped before the checkpoint, as the life that
            # died would have (no resume re-queues those commands)
            "commanded": {k: at for k, (at, _) in self.commanded.items()},
            "relative": sorted(self.relative),
            # the ratio each ended ramp scaled a schedule by: an undo after a restart takes
            # back what the ramp did, not its endpoints' ratio (the schedule moved under it)
            "ramp_factors": {c: dict(f) for c, f in self.ramp_factors.items()},
            "initial": {
                a.param_key: a.initial_value for a in self.state if a.initial_value is not None
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._restore = dict(state.get("actuators") or {})
        if self.leader and self._restore and isinstance(state.get("step"), int):
            # in force from the checkpoint's step: the page's knob lines held the gone life's
            # last value there until the scheduler moved the lr again
            self._remember(state["step"], dict(self._restore))
        self._restore_values({})
        initial = state.get("initial")
        self._initial = dict(initial) if isinstance(initial, Mapping) else {}
        commanded = state.get("commanded")
        if isinstance(commanded, Mapping):  # this life's marks start after them (mark 0)
            self.commanded = {str(k): (int(at), 0) for k, at in commanded.items()
                              if isinstance(at, int) and not isinstance(at, bool)}  # fmt: skip
            self.relative = {str(k) for k in state.get("relative") or () if k in self.commanded}
        factors = state.get("ramp_factors")
        if isinstance(factors, Mapping):
            self.ramp_factors = {
                str(c): {str(k): float(v) for k, v in f.items() if isinstance(v, (int, float))}
                for c, f in factors.items()
                if isinstance(f, Mapping)
            }
        self.ramps = {}
        for item in state.get("ramps") or ():
            try:
                ramp = Ramp.from_dict(item)
            except (KeyError, TypeError, ValueError) as exc:
                self._warn("restore_ramp", f"could not restore a ramp: {exc!r}")
                continue
            self.ramps[ramp.key] = ramp

    # ------------------------------------------------------------------ ramps
    def end_ramp(self, key: str, by: HotOp | None, env: Env) -> None:
        """Stop ``key``'s ramp where it is, and ledger that it was superseded (by ``by``, or
        by an undo), at which value: the ramp's op will never reach its target."""
        ramp = self.ramps.pop(key, None)
        if ramp is None:
            return
        self._ramp_ended(ramp)
        try:
            now = self.state.lookup(key).read(env)
        except Exception:  # the user's read_fn: the value reached is then unknown
            now = None
        who = f"by {by.cmd_id} ({by.module} {by.op})" if by is not None else "by an undo"
        self.recorder.emit_op(
            ramp.op,
            self.recorder.point,
            Decision.APPLIED,
            changes=self._ramp_changes(ramp, now, env),
            error=f"ramp of {key} to {ramp.target!r} superseded at {now!r} {who}",
            source="ramp",
            extra={"ramp": "superseded", "superseded_by": by.cmd_id if by else None},
        )

    def _ramp_changes(self, ramp: Ramp, now: Any, env: Env) -> dict[str, dict[str, Any]]:
        """The changes of a ramp's end entry: its key from its start to ``now``, and the keys
        it moved with it (:meth:`_moved_too`)."""
        changes = {ramp.key: {"old": ramp.start, "new": now}}
        act = self.state.get(ramp.key)
        if act is not None and now is not None:
            changes.update(self._moved_too(act, ramp.start, now, env, changes))
        return changes

    def end_ramps_with_loop(self) -> None:
        """The training loop the ramps ran in ended (another loop on the kernel begins): stop
        each where it got to and ledger it superseded. Carried on, a loop whose
        steps count from 0 again ran it a second time, and one with a new optimizer dropped it
        without a word (a ``--ramp --wait`` then waited for nothing)."""
        for key in list(self.ramps):
            self._drop_ramp(key, "the training loop it ran in ended")

    def _drop_ramp(self, key: str, why: str) -> None:
        """End ``key``'s ramp, if any, where its last move got it, and ledger it superseded,
        ``why``."""
        ramp = self.ramps.pop(key, None)
        if ramp is None:
            return
        self._ramp_ended(ramp)
        now = ramp.reached
        at = "" if now is None else f" at {now!r}"
        self.recorder.emit_op(
            ramp.op, self.recorder.point, Decision.APPLIED,
            changes=self._ramp_changes(ramp, now, {}),
            error=f"ramp of {key} to {ramp.target!r} superseded{at}: {why}",
            source="ramp", extra={"ramp": "superseded"},
        )  # fmt: skip

    def next_step(self, step: int) -> int:
        """The next step a ramp moves at (``NEVER`` without ramps)."""
        if not self.ramps:
            return NEVER
        return min(step + 1, min(r.start_step + 1 for r in self.ramps.values()))

    def advance(self, env: Env, point: SafePoint) -> None:
        """Move every ramp to its value at this step; ledger the ones that arrive."""
        step = point.step
        for key, ramp in list(self.ramps.items()):
            if step <= ramp.start_step:
                continue
            try:
                act = self.state.get(key)
                scheduled = act is not None and act.scheduled is not None and act.scheduled(env)
                before = act.read(env) if scheduled and act is not None else None
                value = ramp.reached = ramp.value_at(step)
                self.ramp_moved.update(self.state.set_silently(key, value, env))
                if isinstance(before, (int, float)) and before > 0:  # the schedule's, replaced
                    ramp.factor *= value / before
                self._commanded((key,), step)
            except Exception as exc:  # the user's apply_fn: record, never raise
                del self.ramps[key]
                self.recorder.emit_op(
                    ramp.op, point, Decision.FAILED, error=f"ramp of {key} failed: {exc!r}"
                )
                continue
            if step >= ramp.end_step:
                del self.ramps[key]
                self._ramp_ended(ramp)
                self.ramp_flush = 0.0  # the end's value is recorded at once
                self.state.verify(env)
                self.state.version += 1
                self.recorder.emit_op(
                    ramp.op,
                    point,
                    Decision.APPLIED,
                    changes=self._ramp_changes(ramp, ramp.target, env),
                    source="ramp",
                    extra={"ramp": "complete"},
                )
        self._record_ramp_moves(step)

    def _record_ramp_moves(self, step: int) -> None:
        """The values the ramps set, into the actuators file and ``hotcb.knobs.jsonl`` (at
        most once a second, and at a ramp's end)."""
        if not self.ramp_moved:
            return
        now = time.monotonic()
        if now < self.ramp_flush:
            return
        self.ramp_flush = now + 1.0
        moved, self.ramp_moved = self.ramp_moved, {}
        self.state.version += 1  # the kernel writes the actuators file after this
        if self.leader:
            self._remember(step, moved)

    # ------------------------------------------------------------------ values and the file
    def _restore_values(self, env: Env) -> None:
        for key in list(self._restore):
            act = self.state.get(key)
            if act is None:
                continue
            if act.scheduled is not None:  # an lr: is an LR scheduler moving it?
                if not env:
                    continue  # known at the next safe point, whose env holds the scheduler
                if act.scheduled(env):
                    # the restored scheduler holds it (a live change rescaled it) and moved it
                    # since the checkpoint: putting the saved value back would bend the schedule
                    del self._restore[key]
                    continue
            value = self._restore.pop(key)
            try:
                if act.state.value == "init":
                    self.state.initialize(env)
                if not act.matches(act.read(env), value):
                    act.apply_fn(act.validate(value), env)
                act.current_value = value if not isinstance(value, list) else tuple(value)
            except Exception as exc:  # the user's read/apply: warn, keep training
                self._warn(f"restore_{key}", f"could not restore actuator {key!r}: {exc!r}")

    def refresh(self, env: Env, step: Any = None) -> None:
        """Pick up values that moved on their own (an LR scheduler) for the actuators file, as
        of ``step`` (default: ``env``'s)."""
        if not self.leader:
            return
        moved: dict[str, Any] = {}
        for act in self.state:
            if act.read_fn is None or act.state.value in ("init", "disabled"):
                continue
            try:
                live = act.read(env)
            except Exception:  # a value that cannot be read now is simply not refreshed
                continue
            if not act.matches(live, act.current_value):
                act.current_value = live
                moved[act.param_key] = live
        if moved:
            step = env.get("step") if step is None else step
            self.state.version += 1
            self.write(step)
            self._remember(step, moved)
        elif self._written != self.state.version:  # the last write failed: try again
            self.write(env.get("step") if step is None else step)

    def _remember(self, step: Any, moved: dict[str, Any]) -> None:
        """Append the values that moved on their own to ``hotcb.knobs.jsonl`` (at most once a
        second, with the refresh), so the dashboard can chart them from the start."""
        if self.history_path is None:
            return
        record = {"step": step, "wall_time": time.time(), "values": moved}
        try:
            jsonl.append(self.history_path, record)
        except OSError as exc:
            self._warn("knobs_write", f"could not write {self.history_path}: {exc}")

    def write_if_changed(self, step: Any) -> None:
        if self.state.version != self._written:
            self.write(step)

    def write(self, step: Any) -> None:
        """Write ``hotcb.actuators.json`` (rank 0): what the dashboard can control. Marked
        written only once it is: a write that failed (a full disk) is tried again at the next
        change, and by :meth:`refresh` (once a second) when none comes."""
        version = self.state.version
        if not self.leader:
            self._written = version
            return
        for key in list(self._initial):  # once read at this life's start (which it replaces)
            act = self.state.get(key)
            if act is not None and act.initial_value is not None:
                act.initial_value = self._initial.pop(key)
        described = self.state.describe_all()
        for a in described:  # a ramp moves it: say so, and where to (hotcb status, the page)
            ramp = self.ramps.get(str(a.get("param_key")))
            if ramp is not None:
                a.update(state="ramping", ramp_target=ramp.target)
        doc = {"v": FORMAT_VERSION, "step": step, "wall_time": time.time(), "actuators": described}
        try:
            jsonl.write_json_atomic(self.path, doc)
        except OSError as exc:
            self._warn("actuators_write", f"could not write {self.path}: {exc}")
            return
        self._written = version
