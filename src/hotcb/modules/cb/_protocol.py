"""What a hot callback is: a Protocol (the contract), an optional base class and a lambda helper.

A hot callback needs only ``handle(event, env)``. Everything else is optional and looked up with
``getattr`` when the module needs it, so a plain class with one method is a valid callback.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .._base import ModuleHost

__all__ = ["CallbackBase", "CallbackContext", "HotCallback", "LambdaCallback", "ParamError"]

Env = Mapping[str, Any]


class ParamError(ValueError):
    """A callback parameter given a value it cannot take (the message names the parameter and
    why). Raised from a callback's constructor, ``cb load`` is ``rejected``; from
    ``set_params``, ``cb set_params`` is (like any ``TypeError``/``ValueError`` there)."""


def type_clash(name: str, old: Any, new: Any) -> str | None:
    """Why ``new`` cannot replace ``old`` (a parameter's current value) for its type, or None:
    a number stays a number (an int may become a float), a flag a flag, a text a text; any
    other kind of value (None, a list) takes anything. ``every=abc`` was set, and the callback
    failed at its next step and was disabled."""
    kinds = ((bool, "true or false"), ((int, float), "a number"), (str, "a text"))
    for kind, what in kinds:
        if isinstance(old, kind):
            if isinstance(new, kind) and (kind is bool or not isinstance(new, bool)):
                return None
            return f"{name} must be {what}, got {new!r} (it is {old!r} now)"
    return None


@runtime_checkable
class HotCallback(Protocol):
    """The contract between the ``cb`` module and a callback.

    Required: ``handle(event, env)``, called for each event of ``kernel.apply(env, events)``
    while the callback is enabled (``event`` is e.g. ``"train_step_end"``; ``env`` is the dict the
    training loop passed, see DESIGN §4).

    Optional (found by name when present):

    - ``on_load(env)``: after construction. ``env`` is a copy of the current env with one more
      key, ``env["hotcb"]``: a :class:`CallbackContext` with the callback's id, the run
      directory, ``log_metrics`` and ``log`` (the only handle on hotcb a callback gets).
    - ``on_unload(env)``: before it is removed or replaced by a reload.
    - ``set_params(**params)``: for ``cb set_params``. Without it, ``set_params`` sets existing
      attributes of the instance (an unknown name is rejected).
    - ``state_dict()`` / ``load_state_dict(state)``: saved in ``kernel.state_dict()``.
    - ``rank_zero_only = True``: under torch.distributed, run only on rank 0.
    """

    def handle(self, event: str, env: Env) -> None: ...


@dataclass
class CallbackContext:
    """What a callback gets from hotcb at ``on_load`` (as ``env["hotcb"]``).

    Diagnostics write their figures with :meth:`log_metrics`, which goes to the run's metrics
    stream (``hotcb.metrics.jsonl``) so the dashboard charts them. On ranks other than 0 there
    is no metrics stream and the call does nothing.
    """

    host: ModuleHost
    id: str

    @property
    def run_dir(self) -> str:
        return self.host.run_dir

    @property
    def is_leader(self) -> bool:
        return bool(self.host.is_leader)

    def confine(self, path: str, what: str = "path", *, writes: bool = True) -> str:
        """``path`` (relative: to the run directory) as an absolute path, when it lies inside
        the run directory or an allowed root and (``writes``, the default) is none of the run's
        own ``hotcb.*`` files; else :class:`~hotcb.errors.PathNotAllowedError`. A callback
        that writes where a command says goes through here: a command (from the CLI, a recipe,
        the dashboard) must not make it write anywhere on the machine, or over the ledger."""
        from ...runfiles import confine_path

        return confine_path(
            path, self.host.run_dir, self.host.allowed_roots, what=what, writes=writes
        )

    def log_metrics(self, step: int, metrics: Mapping[str, Any], epoch: int | None = None) -> None:
        """Append figures (name → number) to the metrics stream at ``step``."""
        collector = self.host.metrics
        if collector is not None and metrics:
            collector.log(step, metrics, epoch=epoch)

    def record(self, op: str, error: str, **fields: Any) -> None:
        """Add a ``noop`` ledger entry about this callback (``module: cb``, ``id``, ``op``),
        e.g. an anomaly it saw; ``fields`` (``step``, ``event``, …) are merged in."""
        self.host.record(
            {"module": "cb", "op": op, "id": self.id, "decision": "noop", "error": error, **fields}
        )

    def log(self, message: str, env: Env | None = None) -> None:
        """A line for the user: through ``env["log"]`` when the loop gave one, else the
        ``hotcb.cb.<id>`` logger when logging shows it, else stderr (:func:`user_line`)."""
        user_line(f"hotcb.cb.{self.id}", message, env)


def user_line(logger_name: str, message: str, env: Env | None = None) -> None:
    """A line a callback means the user to see, without any logging set-up (Python shows no
    INFO line by default): to ``env["log"]`` when the loop gives one; else to the logger when
    logging would show it (a handler for it or an ancestor, INFO enabled); else on stderr."""
    fn = env.get("log") if env is not None else None
    if callable(fn):
        fn(message)
        return
    logger = logging.getLogger(logger_name)
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(message)
    else:
        print(message, file=sys.stderr, flush=True)


class CallbackBase:
    """Optional convenience base: no-op hooks, ``set_params`` that sets known attributes,
    and a stored :class:`CallbackContext` (``self.ctx``) after ``on_load``.

    Subclasses override :meth:`handle` (and any hook they need). ``every_steps`` helpers keep
    diagnostics cheap on fast loops.
    """

    #: Set True to run only on rank 0 under torch.distributed.
    rank_zero_only: bool = False
    ctx: CallbackContext | None = None
    #: ``{name: check}``: ``check(value)`` returns the value to set or raises
    #: :class:`ParamError`; :meth:`set_params` checks every value before it sets any.
    _param_checks: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}

    def on_load(self, env: Env) -> None:
        ctx = env.get("hotcb")
        if isinstance(ctx, CallbackContext):
            self.ctx = ctx

    def on_unload(self, env: Env) -> None:
        return None

    def handle(self, event: str, env: Env) -> None:
        return None

    def set_params(self, **params: Any) -> None:
        """Set known public attributes, each value checked by :attr:`_param_checks` (and
        ``rank_zero_only`` a bool) first: one bad value and nothing is set."""
        new: dict[str, Any] = {}
        for key, value in params.items():
            if (
                key.startswith("_")
                or key == "ctx"
                or callable(getattr(self, key, None))
                or not hasattr(self, key)
            ):
                raise AttributeError(
                    f"{type(self).__name__} has no parameter {key!r}; "
                    f"known: {', '.join(sorted(self.params()))}"
                )
            check = self._param_checks.get(key)
            if check is not None:
                value = check(value)
            elif (why := type_clash(key, getattr(self, key), value)) is not None:
                raise ParamError(why)
            new[key] = value
        for key, value in new.items():
            setattr(self, key, value)

    def params(self) -> dict[str, Any]:
        """Public, plain-valued attributes: what ``set_params`` can change."""
        return {
            k: v
            for k, v in vars(self).items()
            if not k.startswith("_") and k != "ctx" and isinstance(v, (int, float, str, bool))
        }

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None

    # helpers for subclasses -----------------------------------------------------------------
    def log_metrics(self, step: int, metrics: Mapping[str, Any], epoch: Any = None) -> None:
        if self.ctx is not None:
            self.ctx.log_metrics(step, metrics, epoch if isinstance(epoch, int) else None)

    def log(self, message: str, env: Env | None = None) -> None:
        if self.ctx is not None:
            self.ctx.log(message, env)
            return
        user_line("hotcb.cb", message, env)


class LambdaCallback(CallbackBase):
    """A callback from functions: ``LambdaCallback(train_step_end=lambda env: ...)``.

    Each keyword names an event; its function gets ``env``. ``on_any_event=fn`` gets
    ``(event, env)`` for every event. Handy in notebooks and scripts.
    """

    def __init__(
        self,
        on_any_event: Callable[[str, Env], Any] | None = None,
        **on: Callable[[Env], Any],
    ) -> None:
        self._any = on_any_event
        self._on = dict(on)

    def handle(self, event: str, env: Env) -> None:
        fn = self._on.get(event)
        if fn is not None:
            fn(env)
        if self._any is not None:
            self._any(event, env)


def every(step: Any, n: int) -> bool:
    """True when ``step`` is an int multiple of ``n`` (n <= 1: always)."""
    return n <= 1 or (isinstance(step, int) and step % n == 0)


def now() -> float:
    return time.perf_counter()
