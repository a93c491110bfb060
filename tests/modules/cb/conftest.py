"""Fixtures for the cb module's tests: callback files on disk and a real in-process torch loop."""

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


class Loop:
    """TinyMLP on digits with AdamW; ``run(kernel, steps)`` calls ``kernel.apply`` after each
    optimizer step with the env a real loop passes (model, optimizer, loss, metrics)."""

    def __init__(self, seed: int = 0, lr: float = 1e-2) -> None:
        import torch

        from hotcb.testing import TinyMLP, digits

        torch.manual_seed(seed)
        self.x, self.y = digits()
        self.model = TinyMLP(seed=seed)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.gen = torch.Generator().manual_seed(seed)
        self.step = 0
        self.poison_at: int | None = None  # make the loss NaN at this step

    def run(self, kernel: Any, steps: int, **env_extra: Any) -> None:
        import torch
        from torch import nn

        for _ in range(steps):
            idx = torch.randint(0, len(self.x), (32,), generator=self.gen)
            loss = nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx])
            if self.poison_at == self.step:
                loss = loss * float("nan")
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            env = {
                "framework": "torch",
                "step": self.step,
                "model": self.model,
                "optimizer": self.opt,
                "loss": loss.detach(),
                "metrics": {"loss": loss.item()},
                "batch_size": 32,
                **env_extra,
            }
            kernel.apply(env)
            self.step += 1


@pytest.fixture
def loop() -> Loop:
    return Loop()


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
