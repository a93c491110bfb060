"""hotcb's exceptions: one root, builtin mix-ins so callers can catch what they expect."""

from __future__ import annotations


class HotcbError(Exception):
    """Root of every error hotcb raises on purpose."""


class CommandError(HotcbError, ValueError):
    """A command record is malformed or names something that does not exist."""


class ActuatorError(HotcbError, ValueError):
    """A value was refused by an actuator (type, bounds, NaN/inf, disabled)."""


class ActuatorApplyError(HotcbError, RuntimeError):
    """An actuator's ``apply_fn`` raised; the value was rolled back."""


class RecipeError(HotcbError, ValueError):
    """A recipe or overlay is malformed."""


class CodeLoadError(HotcbError, PermissionError):
    """Loading code was refused (``allow_code_load=False`` or a directory not allowed)."""
