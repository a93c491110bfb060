"""The ``cb`` module: hot-load, enable, disable, reconfigure and isolate training callbacks.

A hot callback is any object with ``handle(event, env)`` (see :class:`HotCallback`).
:class:`CallbackBase` and :class:`LambdaCallback` are conveniences; bundled diagnostics live in
:mod:`hotcb.modules.cb.callbacks`. User docs: docs/callbacks.md.
"""

from ._module import CallbackModule, read_config
from ._protocol import CallbackBase, CallbackContext, HotCallback, LambdaCallback, ParamError

__all__ = [
    "CallbackBase",
    "CallbackContext",
    "CallbackModule",
    "HotCallback",
    "LambdaCallback",
    "ParamError",
    "read_config",
]
