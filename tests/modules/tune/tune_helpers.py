"""A toy training loop around a real HotKernel and a real torch optimizer (the tuner's tests)."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch


class Toy:
    """A real kernel and a real torch optimizer; the objective is ``f(lr, step)`` plus noise,
    so a test decides which change helps."""

    def __init__(
        self, run_dir: str, f: Callable[[float, int], float], *, lr: float = 1e-3,
        weight_decay: float = 0.0, noise: float = 0.002, seed: int = 0, train_key: str = "loss",
        decay: float | None = None, model: bool = False, poll: float | None = None,
        allowed_roots: Sequence[str | os.PathLike[str]] = (),
    ) -> None:  # fmt: skip
        from hotcb import HotKernel

        # ``poll``: the kernel's poll interval (0: every step, so a command lands at a known step)
        # ``allowed_roots``: folders a study file may lie in besides the run (a shared study)
        self.kernel = HotKernel(run_dir, allowed_roots=allowed_roots, **(
            {} if poll is None else {"poll_interval_sec": poll}))  # fmt: skip
        self.param = torch.nn.Parameter(torch.zeros(1))
        self.opt = torch.optim.AdamW([self.param], lr=lr, weight_decay=weight_decay)
        self.f = f
        self.noise = noise
        self.rng = random.Random(seed)
        self.step = 0
        self.lrs: list[float] = []
        self.train_key = train_key  # the training loss's name: `loss`, Lightning's `train_loss`
        #: ``model``: the parameter as env's ``model`` too (what ``restore: state`` copies)
        self.model = torch.nn.ParameterList([self.param]) if model else None
        #: ``decay``: an ExponentialLR scheduler (gamma = decay) stepped every step
        self.sched = (
            torch.optim.lr_scheduler.ExponentialLR(self.opt, decay) if decay is not None else None
        )

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def run(
        self,
        steps: int,
        until: Callable[[], bool] | None = None,
        *,
        val_every: int = 0,
        val_name: str = "val_loss",
    ) -> None:
        """``steps`` steps (fewer when ``until()`` holds); ``val_every``: also log ``val_loss``
        (or ``val_name``) on every that many steps, as a run that validates now and then."""
        for _ in range(steps):
            self.step += 1
            value = self.f(self.lr, self.step) * (1 + self.noise * self.rng.gauss(0, 1))
            self.lrs.append(self.lr)
            metrics = {self.train_key: value}
            if val_every and self.step % val_every == 0:
                metrics[val_name] = value * 1.1
            env = {"step": self.step, "optimizer": self.opt, "metrics": metrics}
            if self.model is not None:
                env["model"] = self.model
            if self.sched is not None:
                self.opt.step()  # no gradients: nothing moves, but the scheduler wants it first
                self.sched.step()
                env["scheduler"] = self.sched
            self.kernel.apply(env)
            if until is not None and until():
                return

    def ledger(self, op: str | None = None) -> list[dict[str, Any]]:
        from hotcb.testing import read_ledger

        entries = [e for e in read_ledger(self.kernel.run_dir) if e.get("module") == "tune"]
        return [e for e in entries if op is None or e["op"] == op]


def log_level(lr: float, _step: int) -> float:
    """Higher lr is better everywhere in the range the tests reach."""
    return 10.0 - math.log10(lr)
