"""A real uvicorn server on 127.0.0.1 (random free port) in a thread, per test
(:func:`hotcb.server.testing.serve_in_thread`). Its clients carry the server's token
(generated: a token is on by default); ``client(auth=False)`` / ``ws(auth=False)`` do not.

``tune_state(run_dir, **fields)`` writes the online tuner's state file as the tuner does;
``flat_run(path)`` is a real kernel whose metrics plateau (for the autopilot)."""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")

from hotcb.server.config import DashboardConfig
from hotcb.server.testing import LiveServer, serve_in_thread

__all__ = ["TUNE_DOC", "FlatRun", "LiveServer"]

#: A state document of the online tuner, shaped as its contract says (RUN/hotcb.tune.json):
#: suggest mode, an objective that fell back, three trials, one proposal answered, one pending.
TUNE_DOC: dict[str, Any] = {
    "version": 1,
    "mode": "suggest",
    "objective": "val_loss",
    "objective_used": "loss",
    "direction": "minimize",
    "segment_steps": 200,
    "segment_evals": None,
    "study": "hotcb-demo",
    "storage": "sqlite:////runs/demo/hotcb.tune.db",
    "phase": "trial",
    "trial": 7,
    "segment_start": 1400,
    "next_boundary": 1600,
    "counts": {"segments": 9, "kept": 2, "rolled_back": 3, "proposed": 1, "failed": 0},
    "accept_rate": 0.4,
    "best": {"trial": 5, "score": 0.12, "values": {"opt": {"lr": 0.003}}},
    "space": [{"module": "opt", "key": "lr", "mode": "mult", "low": 0.25, "high": 4.0,
               "log": True}],
    "warnings": ["objective 'val_loss' not logged; scoring 'loss'"],
    "trials": [
        {"trial": 5, "step": 1000, "end_step": 1200, "changes": {"opt.lr": [0.001, 0.003]},
         "score": 0.12, "decision": "kept"},
        {"trial": 6, "step": 1200, "end_step": 1400, "changes": {"opt.lr": [0.003, 0.009]},
         "score": -0.03, "decision": "rolled_back"},
        {"trial": 7, "step": 1400, "end_step": None, "changes": {"opt.lr": [0.003, 0.0045]},
         "score": None, "decision": "open"},
    ],
    "proposals": [
        {"id": "P2", "trial": 6, "step": 1200, "changes": {"opt.lr": [0.003, 0.009]},
         "state": "rejected"},
        {"id": "P3", "trial": 8, "step": 1600, "changes": {"opt.lr": [0.003, 0.0045]},
         "state": "pending"},
    ],
    "updated": 1764633600.0,
}  # fmt: skip


def write_tune_state(run_dir: str, **fields: Any) -> dict[str, Any]:
    """Write ``RUN/hotcb.tune.json`` as the tuner does (whole, atomically): :data:`TUNE_DOC`
    with ``fields`` replaced. Returns the document written."""
    doc = copy.deepcopy(TUNE_DOC)
    doc.update(fields)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "hotcb.tune.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(path + ".tmp", path)
    return doc


@pytest.fixture
def tune_state() -> Callable[..., dict[str, Any]]:
    """``tune_state(run_dir, **fields)``: :func:`write_tune_state`."""
    return write_tune_state


@pytest.fixture
def live_server(tmp_path: Any) -> Iterator[Callable[..., LiveServer]]:
    """``live_server(root=None, static_dir=None, **config)`` starts a server over ``root``
    (default: tmp_path); ``static_dir`` replaces the page's folder."""
    started: list[LiveServer] = []

    def start(
        root: str | None = None, static_dir: str | None = None, **overrides: Any
    ) -> LiveServer:
        root = os.fspath(root or tmp_path)
        overrides.setdefault("tail_interval_sec", 0.02)
        config = DashboardConfig.load(None, dir=root, **overrides)
        srv = serve_in_thread(config, static_dir)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


class FlatRun:
    """A real :class:`hotcb.HotKernel` in this process whose metrics plateau: ``loss`` and
    ``val_loss`` stay 1.0 at every step, so the autopilot's ``plateau`` detector fires on
    either once it has its window. Its optimizer is a plain object with ``param_groups`` (what
    hotcb's ``opt`` actuators need; no torch), so ``opt.lr`` is published and applied.

    :meth:`advance` runs steps now; :meth:`start` runs a step every ``delay`` seconds in a
    thread (the kernel then applies commands as they come) until :meth:`close`."""

    def __init__(self, path: str, lr: float = 0.01) -> None:
        import types

        from hotcb import HotKernel

        self.path = path
        self.opt = types.SimpleNamespace(param_groups=[{"lr": lr, "weight_decay": 0.01}])
        self.kernel = HotKernel(path, poll_interval_sec=0.0)
        self.step = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def advance(self, steps: int) -> None:
        for _ in range(steps):
            metrics = {"loss": 1.0, "val_loss": 1.0}
            self.kernel.apply({"step": self.step, "optimizer": self.opt, "metrics": metrics})
            self.step += 1

    def start(self, delay: float = 0.02) -> FlatRun:
        def loop() -> None:
            while not self._stop.is_set():
                self.advance(1)
                self._stop.wait(delay)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.kernel.close()


@pytest.fixture
def flat_run() -> Iterator[Callable[..., FlatRun]]:
    """``flat_run(path, steps=20)``: a :class:`FlatRun` that has run ``steps`` steps (closed
    after the test)."""
    made: list[FlatRun] = []

    def make(path: Any, steps: int = 20, lr: float = 0.01) -> FlatRun:
        run = FlatRun(os.fspath(path), lr=lr)
        made.append(run)
        run.advance(steps)
        return run

    yield make
    for run in made:
        run.close()
