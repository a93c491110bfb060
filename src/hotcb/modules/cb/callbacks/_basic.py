"""Heartbeat, timing and a JSON-lines logger: light callbacks with no torch dependency."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .... import jsonl
from ....runfiles import CB_LOG
from .._protocol import CallbackBase, ParamError
from ._params import checks, names, number, text, whole
from ._say import say

Env = Mapping[str, Any]


class HeartbeatCallback(CallbackBase):
    """A periodic "alive" line: every ``every_steps`` steps and/or every ``every_sec`` seconds.

    The line goes to ``env["log"]`` when the loop provides it; else to the ``hotcb.cb.<id>``
    logger when logging shows its INFO lines (a handler configured, INFO enabled); else to
    stderr, so it is seen without any set-up (no adapter gives ``env["log"]``). It says the step, the wall time since load and the recent step rate, so a glance at
    a log tells whether a long run is alive and how fast it goes. ``every_steps=0``: by time
    only.
    """

    _param_checks = checks(
        every_steps=whole("every_steps", 0),
        every_sec=number("every_sec", low=0),
        event=text("event"),
    )

    def __init__(
        self, every_steps: int = 100, every_sec: float = 0.0, event: str = "train_step_end"
    ) -> None:
        c = self._param_checks
        self.every_steps = c["every_steps"](every_steps)
        self.every_sec = c["every_sec"](every_sec)
        self.event = c["event"](event)
        self.beats = 0
        self.last_line = ""
        self._t0 = time.monotonic()
        self._last_t = self._t0
        self._last_step: int | None = None

    def handle(self, event: str, env: Env) -> None:
        if event != self.event:
            return
        step = env.get("step", 0)
        now = time.monotonic()
        due_steps = self.every_steps > 0 and isinstance(step, int) and step % self.every_steps == 0
        due_time = self.every_sec > 0 and now - self._last_t >= self.every_sec
        if not (due_steps or due_time):
            return
        rate = ""
        if self._last_step is not None and now > self._last_t:
            rate = f", {(step - self._last_step) / (now - self._last_t):.1f} steps/s"
        self.beats += 1
        self.last_line = f"hotcb heartbeat: step {step}, {now - self._t0:.1f}s since load{rate}"
        say(self, self.last_line, env)
        self._last_t, self._last_step = now, step


class TimingCallback(CallbackBase):
    """Step time and throughput → metrics ``time/step_sec``, ``time/steps_per_sec`` and, when
    the batch size is known (``batch_size`` init or ``env["batch_size"]``),
    ``time/samples_per_sec``. Reported at steps that are multiples of ``every_steps``,
    averaged over the steps since the previous report (the first event only starts the clock)."""

    _param_checks = checks(
        every_steps=whole("every_steps", 1),
        batch_size=whole("batch_size", 0),
        event=text("event"),
    )

    def __init__(
        self, every_steps: int = 10, batch_size: int = 0, event: str = "train_step_end"
    ) -> None:
        c = self._param_checks
        self.every_steps = c["every_steps"](every_steps)
        self.batch_size = c["batch_size"](batch_size)
        self.event = c["event"](event)
        self.last: dict[str, float] = {}
        self._t: float | None = None
        self._n = 0

    def handle(self, event: str, env: Env) -> None:
        if event != self.event:
            return
        now = time.perf_counter()
        if self._t is None:
            self._t = now
            return
        self._n += 1
        step = env.get("step", 0)
        if self.every_steps > 1 and not (isinstance(step, int) and step % self.every_steps == 0):
            return
        dt = (now - self._t) / self._n
        self._t, self._n = now, 0
        figures = {"time/step_sec": dt, "time/steps_per_sec": 1.0 / dt if dt > 0 else 0.0}
        batch = env.get("batch_size") or self.batch_size
        if batch and dt > 0:
            figures["time/samples_per_sec"] = float(batch) / dt
        self.last = figures
        self.log_metrics(step, figures, env.get("epoch"))


def _scalar(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, str)):
        return value
    numel = getattr(value, "numel", None)
    if callable(numel):
        try:
            if numel() == 1:
                return value.detach().item()
        except Exception:
            return None
    return None


class JSONLLoggerCallback(CallbackBase):
    """Writes one JSON line per event (``step``, ``event``, ``wall_time`` and the scalars of
    env: numbers, strings, one-element tensors, and ``env["metrics"]``) to ``path`` (relative to
    the run directory; default ``hotcb.cb_log.jsonl``), through :mod:`hotcb.jsonl`.

    ``events`` limits which events are logged (default: all); ``keys`` limits which env keys
    (default: every scalar); ``every_steps`` thins it out.
    """

    rank_zero_only = True
    _param_checks = checks(  # ``path``: see _abs
        every_steps=whole("every_steps", 1),
        events=names("events", optional=True),
        keys=names("keys", optional=True),
    )

    def __init__(
        self,
        path: str = CB_LOG,
        every_steps: int = 1,
        events: Sequence[str] | str | None = None,
        keys: Sequence[str] | str | None = None,
    ) -> None:
        self.path = path
        c = self._param_checks
        self.every_steps = c["every_steps"](every_steps)
        self.events = c["events"](events)
        self.keys = c["keys"](keys)
        self.written = 0
        self._folder_made: str | None = None
        self._resolved: tuple[str, str] | None = None  # (path as set, where it resolved)

    def on_load(self, env: Env) -> None:
        super().on_load(env)
        self._abs()  # a path outside the run directory fails the load, with the reason

    def set_params(self, **params: Any) -> None:
        """A new ``path`` is checked now (the command is rejected with the reason), not at the
        next write (the command was "applied", then the callback switched itself off)."""
        if "path" in params:
            path = params["path"]
            if not isinstance(path, str) or not path:
                raise ParamError(f"path must be a file name, got {path!r}")
            if self.ctx is not None:
                self.ctx.confine(path, what=f"{type(self).__name__} path")
        super().set_params(**params)

    def _abs(self) -> str:
        """Where the lines go: under a kernel, confined to the run directory and its allowed
        roots (a ``cb load``/``set_params`` command names the path); standalone, as given."""
        if self.ctx is None:
            return self.path
        if self._resolved is None or self._resolved[0] != self.path:  # once per path set
            where = self.ctx.confine(self.path, what=f"{type(self).__name__} path")
            self._resolved = (self.path, where)
        return self._resolved[1]

    def handle(self, event: str, env: Env) -> None:
        if self.events is not None and event not in self.events:
            return
        step = env.get("step", 0)
        if self.every_steps > 1 and isinstance(step, int) and step % self.every_steps:
            return
        record: dict[str, Any] = {"step": step, "event": event, "wall_time": time.time()}
        keys = self.keys if self.keys is not None else list(env)
        for key in keys:
            if key in ("step", "metrics") or key not in env:
                continue
            value = _scalar(env[key])
            if value is not None:
                record[key] = value
        metrics = env.get("metrics")
        if isinstance(metrics, Mapping) and (self.keys is None or "metrics" in self.keys):
            record["metrics"] = {k: _scalar(v) for k, v in metrics.items()}
        path = self._abs()
        if path != self._folder_made:  # a path under a folder of the run: made once
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._folder_made = path
        jsonl.append(path, record)
        self.written += 1
