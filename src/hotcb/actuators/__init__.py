"""Actuators: the parameters a run exposes to live control."""

from ._base import (
    ActuatorState,
    ActuatorType,
    HotcbActuator,
    MutableState,
    attr_actuator,
    mutable_state,
)
from .loss import loss_actuators
from .optimizer import optimizer_actuators

__all__ = [
    "ActuatorState",
    "ActuatorType",
    "HotcbActuator",
    "MutableState",
    "attr_actuator",
    "loss_actuators",
    "mutable_state",
    "optimizer_actuators",
]
