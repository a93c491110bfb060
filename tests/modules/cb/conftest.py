"""Fixtures for the cb module's tests: callback files on disk, kernels and a real in-process
torch loop driving them."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def write_cb(tmp_path: Any) -> Callable[..., str]:
    """``write_cb(code, name="cb.py") -> path``: a callback file in a folder of its own."""

    def write(code: str, name: str = "cb.py") -> str:
        folder = tmp_path / "user_code"
        folder.mkdir(exist_ok=True)
        path = folder / name
        path.write_text(textwrap.dedent(code))
        return os.fspath(path)

    return write


@pytest.fixture
def driver_for() -> Callable[[Any], Any]:
    """``driver_for(kernel) -> TorchStepDriver`` (:mod:`hotcb.testing`) driving ``kernel``:
    TinyMLP on digits with AdamW, 32 random samples a step, steps counted from 0;
    ``steps(n, **env)`` passes the env a real loop passes (model, optimizer, loss, metrics,
    batch_size) and ``poison_at`` makes one step's loss NaN."""
    from hotcb.testing import TorchStepDriver

    def make(kernel: Any) -> TorchStepDriver:
        return TorchStepDriver(kernel.run_dir, kernel=kernel)

    return make


@pytest.fixture
def kernel_factory(tmp_path: Any) -> Any:
    """``kernel_factory(**kwargs) -> HotKernel`` on ``tmp_path/"run"`` polling every safe point;
    closed at the end of the test."""
    from hotcb import HotKernel

    made: list[Any] = []

    def make(run_dir: str | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("poll_interval_sec", 0.0)
        kwargs.setdefault("fsync_ledger", False)
        k = HotKernel(run_dir or os.fspath(tmp_path / "run"), **kwargs)
        made.append(k)
        return k

    yield make
    for k in made:
        k.close()
