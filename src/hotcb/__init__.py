"""hotcb: a live training control plane for PyTorch.

Steer a running model from another process (CLI, Python, dashboard, autopilot): callbacks,
optimizer parameters, loss weights, custom knobs, pause/resume/checkpoint/stop. Every change is
recorded in a step-indexed ledger. ``import hotcb`` needs no third-party package.
"""

from __future__ import annotations

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
    "MetricsCollector",
    "MutableState",
    "RecipeError",
    "__version__",
    "attr_actuator",
    "command_to_hotop",
    "loss_actuators",
    "mutable_state",
    "optimizer_actuators",
]
