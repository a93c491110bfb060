"""hotcb: a live training control plane for PyTorch.

Steer a running model from another process (CLI, Python, dashboard, autopilot): callbacks,
optimizer parameters, loss weights, custom knobs, pause/resume/checkpoint/stop. Every change is
recorded in a step-indexed ledger. ``import hotcb`` needs no third-party package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .actuators import (
    ActuatorState,
    ActuatorType,
    HotcbActuator,
    MutableState,
    attr_actuator,
    loss_actuators,
    mutable_state,
    optimizer_actuators,
)
from .client import HotClient
from .errors import ActuatorError, CommandError, HotcbError, RecipeError
from .kernel import HotKernel
from .metrics import MetricsCollector
from .ops import CallbackTarget, HotOp, command_to_hotop

if TYPE_CHECKING:
    from ._launch import Launch, LaunchError, launch

__all__ = [
    "ActuatorError",
    "ActuatorState",
    "ActuatorType",
    "CallbackTarget",
    "CommandError",
    "HotClient",
    "HotKernel",
    "HotOp",
    "HotcbActuator",
    "HotcbError",
    "Launch",
    "LaunchError",
    "MetricsCollector",
    "MutableState",
    "RecipeError",
    "__version__",
    "attr_actuator",
    "command_to_hotop",
    "launch",
    "loss_actuators",
    "mutable_state",
    "optimizer_actuators",
]


def __getattr__(name: str) -> Any:
    """``launch``, ``Launch`` and ``LaunchError`` load on first use (``import hotcb`` stays
    light)."""
    if name in ("launch", "Launch", "LaunchError"):
        from . import _launch

        return getattr(_launch, name)
    raise AttributeError(f"module 'hotcb' has no attribute {name!r}")
