"""The one small protocol through which modules plug into the kernel, and their registry.

A module handles the ops of one command ``module`` name (``cb``, ``tune``, …). The kernel knows
modules only by the import path in the registry and creates them on first use, so
``import hotcb`` loads none of them and none of their optional dependencies.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..freeze import FreezeState
    from ..metrics import MetricsCollector
    from ..ops import HotOp
    from ..runfiles import RunPaths

Env = Mapping[str, Any]


@dataclass
class OpResult:
    """What a module did with an op; becomes the ledger entry's decision/changes/error.

    ``extra`` is merged into the ledger entry (e.g. ``{"source_capture": {"sha256": …}}``).
    """

    decision: str = "applied"
    changes: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ModuleHost(Protocol):
    """What a module sees of the kernel: the run, its policy, and one way to write the ledger.

    A module never gets the kernel itself, so what it may touch is declared here."""

    @property
    def run_dir(self) -> str: ...

    @property
    def paths(self) -> RunPaths: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def allow_code_load(self) -> bool: ...

    @property
    def allowed_code_dirs(self) -> Sequence[str]: ...

    @property
    def allowed_roots(self) -> Sequence[str]: ...

    @property
    def auto_disable_on_error(self) -> bool: ...

    @property
    def metrics(self) -> MetricsCollector | None: ...

    @property
    def stop_requested(self) -> bool:
        """A ``stop`` was applied: the run ends after this step (a module starts nothing)."""

    @property
    def resumed(self) -> bool:
        """This life came back from a checkpoint (``load_state_dict``): what a module held then
        is in it, and the commands after it are applied again at their steps."""

    @property
    def freeze(self) -> FreezeState:
        """The freeze mode: a module that changes the run by itself (the tuner) holds back
        while it takes no live changes."""

    def record(self, entry_fields: Mapping[str, Any]) -> None:
        """Append a ledger entry (step and event default to the current safe point's)."""

    def submit(self, record: Mapping[str, Any]) -> None:
        """Append a command the module decided on (leader only); every rank applies it at the
        same step, like a command a person sent."""

    def actuate(self, module: str, params: Mapping[str, Any], env: Env) -> OpResult:
        """Set ``opt``/``loss``/``custom`` actuator values now; the result has the changes."""

    def read_actuator(self, module: str, key: str, env: Mapping[str, Any] | None = None) -> Any:
        """An actuator's current value (live from ``env`` when given), or None."""

    def actuator_bounds(self, module: str, key: str) -> tuple[float | None, float | None]:
        """An actuator's ``(min, max)``: what it refuses beyond (None where it has no bound)."""

    def describe_actuators(self) -> list[dict[str, Any]]:
        """The run's actuators as ``hotcb.actuators.json`` lists them (``param_key``,
        ``group``, ``type``, …)."""

    def commanded_since(self, step: int, after: int | None = None) -> list[tuple[str, str]]:
        """``(module, key)`` of the actuators a command (not a module's own ``actuate``)
        changed at ``step`` or later; with ``after`` (a :meth:`command_mark`), after it."""

    def commanded_relative(self, module: str, key: str) -> bool:
        """Whether the last command that set ``module.key`` was a factor of the value then in
        force (``relative_to``), not a value."""

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Commands waiting for their ``at_step``: ``{"at_step", "cmd_id", "module", "op",
        "params"}`` each."""

    def command_mark(self) -> int:
        """A mark of the commands applied so far in this process: what a module compares
        with ``commanded_since(..., after=...)`` to order commands within a step."""

    def steps_horizon(self, env: Env) -> int | None:
        """The run's length in steps now (the framework's, or the kernel's after ``hotcb
        extend`` in a bare loop); None when unknown."""

    def value_before(
        self, module: str, key: str, old: Any, new: Any, env: Mapping[str, Any]
    ) -> tuple[Any, float | None]:
        """What taking back a change ``old -> new`` sets now, and the factor when it is not
        ``old`` (a value an LR scheduler moved since: the change's ratio is taken back)."""

    def set_since(self, entry: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
        """The keys of an applied ``entry`` that a later command set again (nothing of
        ``entry`` is in force there: an undo leaves them), with who set each."""


@runtime_checkable
class HotModule(Protocol):
    """What the kernel needs from a module: every hook it calls is declared here."""

    #: True while the module wants ``on_events`` calls (e.g. at least one enabled callback).
    wants_events: bool

    def apply(self, op: HotOp, env: Env) -> OpResult | None:
        """The op's result for the ledger. None: the handler ledgers it later (the kernel's
        ``control`` handler does, for a checkpoint it takes at the next safe point)."""

    def on_start(self, env: Env) -> None:
        """Called once at the first safe point when the registry's ``start_when`` holds."""

    def on_events(self, events: Sequence[str], env: Env) -> None: ...

    def undo(self, entry: Mapping[str, Any], env: Env) -> OpResult:
        """Revert the applied ledger ``entry`` of one of this module's ops (or reject)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class ModuleSpec:
    """Where a module lives (``"package.module:Factory"``; the factory takes the kernel) and,
    optionally, when the kernel should create it at start (e.g. a config file exists)."""

    path: str
    ops: frozenset[str]
    start_when: Callable[[RunPaths], bool] | None = None


_REGISTRY: dict[str, ModuleSpec] = {}
_OPS: dict[str, frozenset[str]] = {}


def register_module(
    name: str,
    path: str,
    ops: Sequence[str],
    start_when: Callable[[RunPaths], bool] | None = None,
) -> None:
    """Plug a module in: commands with ``module == name`` are routed to it, and its ``ops``
    become valid command ops everywhere (client, kernel, recipes): the registry is the one
    list of module op names."""
    _REGISTRY[name] = ModuleSpec(path, frozenset(ops), start_when)
    _OPS[name] = frozenset(ops)


def module_specs() -> Mapping[str, ModuleSpec]:
    return _REGISTRY


def module_ops() -> Mapping[str, frozenset[str]]:
    """``{module: ops}`` of the registered modules (a live view; do not mutate)."""
    return _OPS


def create_module(name: str, host: ModuleHost) -> HotModule:
    spec = _REGISTRY.get(name)
    if spec is None:
        raise KeyError(f"no module registered for {name!r}")
    mod_path, _, attr = spec.path.partition(":")
    factory: Callable[[ModuleHost], HotModule] = getattr(importlib.import_module(mod_path), attr)
    return factory(host)
