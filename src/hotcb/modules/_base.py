"""The one small protocol through which modules plug into the kernel, and their registry.

A module handles the ops of one command ``module`` name (``cb``, ``tune``, …). The kernel knows
modules only by the import path in the registry and creates them on first use, so
``import hotcb`` loads none of them and none of their optional dependencies.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..kernel import HotKernel
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


@runtime_checkable
class HotModule(Protocol):
    """What the kernel needs from a module."""

    #: True while the module wants ``on_events`` calls (e.g. at least one enabled callback).
    wants_events: bool

    def apply(self, op: HotOp, env: Env) -> OpResult: ...

    def on_events(self, events: Sequence[str], env: Env) -> None: ...

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


def register_module(
    name: str,
    path: str,
    ops: Sequence[str],
    start_when: Callable[[RunPaths], bool] | None = None,
) -> None:
    """Plug a module in: commands with ``module == name`` are routed to it."""
    _REGISTRY[name] = ModuleSpec(path, frozenset(ops), start_when)


def module_specs() -> Mapping[str, ModuleSpec]:
    return _REGISTRY


def module_ops() -> dict[str, frozenset[str]]:
    return {name: spec.ops for name, spec in _REGISTRY.items()}


def create_module(name: str, kernel: HotKernel) -> HotModule:
    spec = _REGISTRY.get(name)
    if spec is None:
        raise KeyError(f"no module registered for {name!r}")
    mod_path, _, attr = spec.path.partition(":")
    factory = getattr(importlib.import_module(mod_path), attr)
    return factory(kernel)  # type: ignore[no-any-return]
