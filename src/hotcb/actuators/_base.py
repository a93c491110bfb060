"""The actuator contract: one controllable parameter, validated, applied, verified."""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ActuatorApplyError, ActuatorError

Env = Mapping[str, Any]
ApplyFn = Callable[[Any, Env], None]
ReadFn = Callable[[Env], Any]


class ActuatorType(str, enum.Enum):
    BOOL = "bool"
    FLOAT = "float"
    INT = "int"
    CHOICE = "choice"
    LOG_FLOAT = "log_float"
    TUPLE = "tuple"


class ActuatorState(str, enum.Enum):
    """INIT → UNTOUCHED (initial value read) → UNVERIFIED (applied) → VERIFIED (read back
    equal) → DISABLED (after ``max_failures`` failed applies)."""

    INIT = "init"
    UNTOUCHED = "untouched"
    UNVERIFIED = "unverified"
    VERIFIED = "verified"
    DISABLED = "disabled"


_NUMERIC = (ActuatorType.FLOAT, ActuatorType.LOG_FLOAT, ActuatorType.INT)


def _plain(value: Any) -> Any:
    """A 0-d tensor or numpy scalar as its Python number; anything else as it is."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "ndim", None) == 0 else value


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else repr(x)


@dataclass(eq=False)
class HotcbActuator:
    """A parameter that commands can change while training runs.

    ``apply_fn(value, env)`` makes the change; ``read_fn(env)`` (optional) reads the live value,
    used for the initial value and to verify a change. ``group`` is the command module that
    reaches it: ``opt``, ``loss`` or ``custom``.
    """

    param_key: str
    type: ActuatorType
    apply_fn: ApplyFn
    read_fn: ReadFn | None = None
    min_value: float | None = None
    max_value: float | None = None
    choices: tuple[Any, ...] | None = None
    length: int | None = None
    group: str = "custom"
    label: str | None = None
    description: str = ""
    max_failures: int = 3
    #: ``scheduled(env)``: a schedule in ``env`` moves this value (an LR scheduler); a
    #: checkpoint's value is then not put back on resume: the schedule's restored state holds it
    scheduled: Callable[[Env], bool] | None = None
    #: ``moves(value, env)``: what setting this actuator to ``value`` does to others, as
    #: ``{key: value}`` (``lr`` keeps the ratios between param groups, so it moves every
    #: ``lr@groupN``; ``lr@group0`` moves ``lr``). Those values are checked against the bounds
    #: of the actuator they belong to (this one's when that key is not registered) before
    #: anything changes, and :meth:`MutableState.apply_all` lists the ones that moved.
    moves: Callable[[Any, Env], dict[str, Any]] | None = None
    #: ``refuses(value, env)``: why ``value`` would not hold (a scheduler that sets momentum
    #: every step), or None; a reason refuses the command before anything changes
    refuses: Callable[[Any, Env], str | None] | None = None
    #: keys of the narrower actuators this one sets as a whole (``lr`` covers ``lr@group1``):
    #: in one command it is applied before them, so the value given for one group wins there
    covers: frozenset[str] = frozenset()
    state: ActuatorState = ActuatorState.INIT
    current_value: Any = None
    initial_value: Any = None
    failures: int = 0
    last_error: str | None = None
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=256))

    def __post_init__(self) -> None:
        self.type = ActuatorType(self.type)
        if self.type is ActuatorType.LOG_FLOAT and (self.min_value is None or self.min_value <= 0):
            raise ValueError(f"LOG_FLOAT actuator {self.param_key!r} needs min_value > 0")
        if self.type is ActuatorType.CHOICE and not self.choices:
            raise ValueError(f"CHOICE actuator {self.param_key!r} needs choices")
        if self.choices is not None:
            self.choices = tuple(self.choices)

    # -- validation -------------------------------------------------------------------------
    def _bounds(self, v: float, what: str) -> None:
        key = self.param_key
        if self.min_value is not None and v < self.min_value:
            raise ActuatorError(
                f"{what}={_fmt(v)} is below the minimum {_fmt(self.min_value)} for actuator {key!r}"
            )
        if self.max_value is not None and v > self.max_value:
            raise ActuatorError(
                f"{what}={_fmt(v)} is above the maximum {_fmt(self.max_value)} for actuator {key!r}"
            )

    def _number(self, value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ActuatorError(
                f"{what} must be a number for actuator {self.param_key!r} "
                f"({self.type.value}), got {type(value).__name__} {value!r}"
            )
        try:
            number = float(value)  # an int of 400 digits does not fit a float
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            shown = f"{str(value)[:20]}…" if len(str(value)) > 24 else repr(value)
            raise ActuatorError(f"{what}={shown} is not finite; actuator {self.param_key!r}")
        return number

    def validate(self, value: Any, *, bounded: bool = True) -> Any:
        """Return ``value`` coerced to this actuator's type, or raise :class:`ActuatorError`.
        ``bounded=False``: a value the actuator held (an undo puts it back) may lie outside
        its bounds (a param group frozen at lr 0, a weight that started below the minimum)."""
        t, key = self.type, self.param_key
        check = self._bounds if bounded else lambda v, what: None
        if t is ActuatorType.BOOL:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ActuatorError(f"{key} must be true or false, got {value!r}")
        if t is ActuatorType.CHOICE:
            assert self.choices is not None
            if value not in self.choices:
                raise ActuatorError(
                    f"{key}={value!r} is not one of {', '.join(map(repr, self.choices))}"
                )
            return value
        if t is ActuatorType.TUPLE:
            if not isinstance(value, (list, tuple)):
                n = self.length
                example = ",".join(["0.9", "0.999"] if n in (None, 2) else ["1"] * (n or 1))
                raise ActuatorError(
                    f"{key} must be a list of numbers (e.g. {key}=[{example}]), got {value!r}"
                )
            if self.length is not None and len(value) != self.length:
                raise ActuatorError(f"{key} needs {self.length} values, got {len(value)}")
            out = []
            for i, v in enumerate(value):
                f = self._number(v, f"{key}[{i}]")
                check(f, f"{key}[{i}]")
                out.append(f)
            return tuple(out)
        f = self._number(value, key)
        if t is ActuatorType.INT:
            if not f.is_integer():
                raise ActuatorError(f"{key} must be an integer, got {value!r}")
            check(f, key)
            return int(f)
        check(f, key)
        return f

    # -- live value -------------------------------------------------------------------------
    def read(self, env: Env) -> Any:
        """The live value, as a plain value: a 0-d tensor (a model's buffer) becomes its
        number, so the value recorded as "old" is not the same object the change moves."""
        if self.read_fn is None:
            return self.current_value
        value = self.read_fn(env)
        if isinstance(value, (list, tuple)):
            return tuple(_plain(v) for v in value)
        return _plain(value)

    def matches(self, a: Any, b: Any) -> bool:
        if self.type in _NUMERIC and isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
        if self.type is ActuatorType.TUPLE and a is not None and b is not None:
            return len(a) == len(b) and all(
                math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-12)
                for x, y in zip(a, b, strict=False)
            )
        return bool(a == b)

    def describe(self) -> dict[str, Any]:
        return {
            "param_key": self.param_key,
            "type": self.type.value,
            "group": self.group,
            "label": self.label or self.param_key,
            "description": self.description,
            "min": self.min_value,
            "max": self.max_value,
            "choices": list(self.choices) if self.choices is not None else None,
            "length": self.length,
            "current": self.current_value,
            "initial": self.initial_value,
            "state": self.state.value,
            "failures": self.failures,
            "last_error": self.last_error,
        }


class MutableState:
    """The set of actuators a run exposes, keyed by ``param_key``."""

    def __init__(self, actuators: Iterable[HotcbActuator] = (), *, auto_disable: bool = True):
        self._acts: dict[str, HotcbActuator] = {}
        self.auto_disable = auto_disable
        self.version = 0  # bumped when the set of actuators or a value changes
        for act in actuators:
            self.register(act)

    def register(self, act: HotcbActuator, *, replace: bool = False) -> None:
        if act.param_key in self._acts and not replace:
            raise ValueError(f"actuator {act.param_key!r} is already registered")
        self._acts[act.param_key] = act
        self.version += 1

    def unregister(self, key: str) -> None:
        if self._acts.pop(key, None) is not None:
            self.version += 1

    def get(self, key: str) -> HotcbActuator | None:
        return self._acts.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._acts

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._acts.values())

    def __len__(self) -> int:
        return len(self._acts)

    def keys(self, group: str | None = None) -> list[str]:
        return [k for k, a in self._acts.items() if group is None or a.group == group]

    def initialize(self, env: Env) -> None:
        """Read the initial value of every actuator still in INIT."""
        for act in self._acts.values():
            if act.state is ActuatorState.INIT:
                try:
                    value = act.read(env)
                except Exception as exc:  # a read that fails leaves the value unknown
                    act.last_error = f"initial read failed: {exc!r}"
                    value = None
                act.current_value = act.initial_value = value
                act.state = ActuatorState.UNTOUCHED
                self.version += 1

    def lookup(self, key: str, group: str | None = None) -> HotcbActuator:
        act = self._acts.get(key)
        if act is not None and group is not None and act.group != group:
            raise ActuatorError(
                f"{key!r} is {'an' if act.group[:1] in 'aeiou' else 'a'} {act.group} "
                f"actuator, not {group}: send it as 'hotcb "
                f"{act.group} set_params {key}=...' ('hotcb set' routes it there once the run "
                "has published its actuators)"
            )
        if act is None:
            known = ", ".join(self.keys(group)) or "none registered"
            where = f" in group {group!r}" if group else ""
            raise ActuatorError(f"unknown actuator {key!r}{where}; known: {known}")
        if act.state is ActuatorState.DISABLED:
            raise ActuatorError(
                f"actuator {key!r} is disabled after {act.failures} failed applies "
                f"(last error: {act.last_error})"
            )
        return act

    def apply(
        self,
        key: str,
        value: Any,
        env: Env,
        *,
        group: str | None = None,
        given: Collection[str] = (),
        bounded: bool = True,
    ) -> tuple[Any, Any]:
        """Validate, apply, read back. Returns ``(old, new)``.

        Raises :class:`ActuatorError` for a refused value (nothing changed), also when it
        would move another actuator out of its bounds (:attr:`HotcbActuator.moves`; not
        checked for the keys in ``given``, which the same command sets itself; not at all
        unless ``bounded``: see :meth:`HotcbActuator.validate`), and
        :class:`ActuatorApplyError` when ``apply_fn`` raised or the read-back differs (the old
        value restored; after ``max_failures`` such failures the actuator is DISABLED).
        """
        act = self.lookup(key, group)
        new = act.validate(value, bounded=bounded)
        if act.state is ActuatorState.INIT:
            self.initialize(env)
        moved = self._check_moves(act, new, env, given, bounded)
        old = act.read(env)
        try:
            act.apply_fn(new, env)
            live = act.read(env) if act.read_fn is not None else new
            if not act.matches(live, new):
                raise ActuatorApplyError(f"read back {live!r} after setting {new!r}")
        except Exception as exc:
            self._rollback(act, old, env)
            act.failures += 1
            act.last_error = f"{type(exc).__name__}: {exc}"
            if self.auto_disable and act.failures >= act.max_failures:
                act.state = ActuatorState.DISABLED
            self.version += 1
            raise ActuatorApplyError(
                f"applying {key}={new!r} failed ({act.last_error}); value rolled back to {old!r}"
            ) from exc
        act.current_value = new
        act.state = ActuatorState.VERIFIED if act.read_fn is not None else ActuatorState.UNVERIFIED
        self._follow(moved, env)
        self.version += 1
        return old, new

    def apply_all(
        self,
        items: Sequence[tuple[str, Any]],
        env: Env,
        *,
        group: str | None = None,
        bounded: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """Apply one command's values as a whole; returns its changes, ``{key: {old, new}}``.

        An actuator that covers others in the command (``lr`` and ``lr@group1``) goes first,
        so the narrower value wins for its group whatever order they were given in. A value
        that would move another actuator out of its bounds refuses the command
        (:class:`ActuatorError`) before anything changes; when one apply fails, the ones
        before it are rolled back and the error raised. The changes list every actuator whose
        value moved, given or moved by one that was (``lr`` moves ``lr@group1``), with the
        value it had before the command: an undo or a resume puts each one back (with
        ``bounded=False``: values the actuators held, whatever their bounds)."""
        acts = [(self.lookup(key, group), value) for key, value in items]
        given = {act.param_key for act, _ in acts}
        acts.sort(key=lambda av: 0 if av[0].covers & given else 1)  # stable: as given
        if any(act.state is ActuatorState.INIT for act, _ in acts):
            self.initialize(env)
        watched: dict[str, Any] = {}
        for act, value in acts:
            watched[act.param_key] = act.read(env)
            for key in self._check_moves(act, act.validate(value, bounded=bounded), env, given,
                                         bounded):  # fmt: skip
                if key not in watched and key in self._acts:
                    watched[key] = self._acts[key].read(env)
        done: list[str] = []
        try:
            for act, value in acts:
                self.apply(act.param_key, value, env, given=given, bounded=bounded)
                done.append(act.param_key)
        except (ActuatorError, ActuatorApplyError) as exc:
            # the values from before, in the same order: a broad one, then the ones it covers
            error = str(exc)
            for key in done:
                try:
                    self.apply(key, watched[key], env, given=given, bounded=False)
                except (ActuatorError, ActuatorApplyError) as again:
                    error += f"; rolling {key} back to {watched[key]!r} failed too: {again}"
            raise type(exc)(error) from exc
        changes: dict[str, dict[str, Any]] = {}
        for key, before in watched.items():
            act = self._acts[key]
            now = act.current_value if key in given else act.read(env)
            if key in given or not act.matches(now, before):
                changes[key] = {"old": before, "new": now}
        return changes

    def check_all(self, items: Sequence[tuple[str, Any]], env: Env) -> None:
        """Raise :class:`ActuatorError` when a value of one command would move an actuator
        it does not set out of its bounds (``lr=1`` with group 1 at 1000 × group 0's lr)."""
        given = {key for key, _ in items}
        for key, value in items:
            act = self.lookup(key)
            self._check_moves(act, act.validate(value), env, given)

    def _check_moves(
        self,
        act: HotcbActuator,
        value: Any,
        env: Env,
        given: Collection[str],
        bounded: bool = True,
    ) -> dict[str, Any]:
        """``act.moves(value, env)`` after checking each value against its bounds (a value
        an actuator has now is not a move: ``lr`` leaves a group frozen at lr 0 at 0), and
        after :attr:`HotcbActuator.refuses`."""
        # (a command that sets every key an actuator covers itself, lr and each lr@group: what
        # the broad one would refuse to work out, the narrow ones say)
        whole = bool(act.covers) and act.covers <= set(given)
        why = act.refuses(value, env) if act.refuses is not None and not whole else None
        if why:
            raise ActuatorError(
                f"{act.param_key}={_fmt(value)} would not hold: {why}; nothing changed"
            )
        if act.moves is None:
            return {}
        moved = act.moves(value, env)
        for key, target in moved.items():
            if key in given or not bounded or not isinstance(target, (int, float)):
                continue
            owner = self._acts.get(key, act)
            if owner is not act and owner.matches(owner.read(env), target):
                continue
            lo, hi = owner.min_value, owner.max_value
            if lo is not None and target < lo:
                where = f"below the minimum {_fmt(lo)}"
            elif hi is not None and target > hi:
                where = f"above the maximum {_fmt(hi)}"
            else:
                continue
            raise ActuatorError(
                f"{act.param_key}={_fmt(value)} would set {key} to {_fmt(float(target))}, "
                f"{where} for actuator {owner.param_key!r}; nothing changed"
            )
        return moved

    def _follow(self, moved: Mapping[str, Any], env: Env) -> None:
        """Read back the actuators a change moved, so their value is the live one."""
        for key in moved:
            other = self._acts.get(key)
            if other is None or other.read_fn is None or other.state is ActuatorState.INIT:
                continue
            try:
                other.current_value = other.read(env)
            except Exception as exc:  # the user's read_fn: the value is then unknown
                other.last_error = f"read failed: {exc!r}"
                continue
            if other.state is ActuatorState.UNTOUCHED:  # a change moved it, read back
                other.state = ActuatorState.VERIFIED

    def set_silently(self, key: str, value: Any, env: Env) -> dict[str, Any]:
        """Apply an already validated value without bookkeeping (one step of a ramp); the
        values it set: ``key``'s and those of the actuators it moved (``lr@group1``)."""
        act = self._acts[key]
        moved = act.moves(value, env) if act.moves is not None else {}
        act.apply_fn(value, env)
        act.current_value = value
        act.state = ActuatorState.UNVERIFIED
        self._follow(moved, env)
        out = {key: value}
        for other in moved:
            found = self._acts.get(other)
            if found is not None and found.current_value is not None:
                out[other] = found.current_value
        return out

    @staticmethod
    def _rollback(act: HotcbActuator, old: Any, env: Env) -> None:
        if old is None:
            return
        try:
            act.apply_fn(old, env)
        except Exception as exc:  # the rollback itself failed: say so, keep going
            act.last_error = f"rollback failed: {exc!r}"

    def verify(self, env: Env) -> dict[str, bool]:
        """Read every applied actuator back; UNVERIFIED becomes VERIFIED when it matches."""
        out: dict[str, bool] = {}
        for key, act in self._acts.items():
            if act.state not in (ActuatorState.UNVERIFIED, ActuatorState.VERIFIED):
                continue
            if act.read_fn is None:
                continue
            try:
                ok = act.matches(act.read(env), act.current_value)
            except Exception:
                ok = False
            out[key] = ok
            act.state = ActuatorState.VERIFIED if ok else ActuatorState.UNVERIFIED
        return out

    def describe_all(self) -> list[dict[str, Any]]:
        return [a.describe() for a in self._acts.values()]

    def values(self) -> dict[str, Any]:
        return {k: a.current_value for k, a in self._acts.items()}


def mutable_state(actuators: Iterable[HotcbActuator]) -> MutableState:
    """Wrap a list of actuators (e.g. your own custom knobs) into a :class:`MutableState`."""
    return MutableState(actuators)


def attr_actuator(
    obj: Any,
    attr: str,
    type: ActuatorType = ActuatorType.FLOAT,
    *,
    key: str | None = None,
    group: str = "custom",
    **kwargs: Any,
) -> HotcbActuator:
    """An actuator over ``obj.attr`` (e.g. a model's dropout rate or a flag)."""

    def apply_fn(value: Any, env: Env) -> None:
        setattr(obj, attr, value)

    def read_fn(env: Env) -> Any:
        return getattr(obj, attr)

    return HotcbActuator(
        param_key=key or attr, type=type, apply_fn=apply_fn, read_fn=read_fn, group=group, **kwargs
    )
