"""How a bundled callback reaches the user: the lines it was loaded to print (a heartbeat), and
the one warning it gives when the loop does not hand it what it measures (no gradients at the
safe point, a key that is nowhere in env).

Both must be seen without any logging set-up: Python shows no INFO line by default, and a
callback that records nothing and says nothing looks like a callback that works.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .._protocol import CallbackBase, user_line

Env = Mapping[str, Any]


def _logger(cb: CallbackBase) -> logging.Logger:
    return logging.getLogger(f"hotcb.cb.{cb.ctx.id}" if cb.ctx is not None else "hotcb.cb")


def say(cb: CallbackBase, line: str, env: Env) -> None:
    """A line the user loaded ``cb`` to see: to ``env["log"]`` when the loop gives one; else
    to the ``hotcb.cb.<id>`` logger when logging would show it (a handler configured for it or
    an ancestor, INFO enabled); else on stderr."""
    user_line(_logger(cb).name, line, env)


def warn(cb: CallbackBase, message: str) -> None:
    """Tell the user that ``cb`` cannot do its job in this loop, and why (the caller says it
    once): a WARNING on the ``hotcb.cb.<id>`` logger (stderr when logging is not configured)
    and, under a kernel, a ``warning`` entry in the ledger (``hotcb log``)."""
    _logger(cb).warning("hotcb: %s", message)
    if cb.ctx is not None:
        cb.ctx.record("warning", message)


def who(cb: CallbackBase) -> str:
    """``GradStatsCallback 'grads'`` (the id when loaded by a kernel)."""
    name = type(cb).__name__
    return f"{name} {cb.ctx.id!r}" if cb.ctx is not None else name


def no_grads_reason(env: Env) -> str:
    """Why a parameter has no gradient at hotcb's safe point, and what to do, for this loop."""
    hf = (
        "under the HF Trainer, hotcb's safe point (on_step_end) comes after the Trainer's "
        "zero_grad(), so the gradients are gone there; the Trainer measures the gradient norm "
        "itself and logs it as grad_norm (env['metrics']['grad_norm'] at logging steps)"
    )
    if env.get("framework") == "hf":
        return hf[0].upper() + hf[1:] + "."
    return (
        "hotcb reads gradients at its safe point: call kernel.apply(env) after loss.backward() "
        f"and before optimizer.zero_grad() (right after optimizer.step() qualifies); {hf}."
    )
