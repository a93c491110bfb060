"""The two tasks of ``benchmarks/tune.py``: an MLP on scikit-learn's digits, and a moving-optimum toy.

The digits MLP is ``hotcb bench``'s ``digits_mlp`` (:mod:`hotcb.bench.tasks`: the data, split,
model, batches and evaluation are defined there); this module adds what ``tune.py`` needs to know
about it (its start lrs and search range). The toy is this benchmark's own.

A task makes *runs*: one model with its data stream, seeded. A run does one training step with a
given optimizer (:meth:`Run.train_step`) and measures validation loss (:meth:`Run.evaluate`).
Everything a run's future depends on lives in ``run.model`` (weights, and the toy's progress as a
buffer) or in the optimizer, so copying ``model.state_dict()`` and ``optimizer.state_dict()``
copies a run (PBT's exploit step), and so does any weight rollback an online tuner does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from hotcb.bench.tasks import DigitsRun, digits_mlp
from hotcb.bench.tasks import Task as BenchTask

__all__ = ["Digits", "DigitsRun", "Run", "Task", "Toy", "ToyRun", "toy_target"]


class Run(Protocol):
    """One seeded training run of a task."""

    model: nn.Module

    def train_step(self, opt: torch.optim.Optimizer) -> float:
        """One optimizer step; returns the training loss of the step."""
        ...

    def evaluate(self) -> tuple[float, float | None]:
        """Validation loss and accuracy (``None`` where a task has no accuracy)."""
        ...


class Task(Protocol):
    """What ``benchmarks/tune.py`` needs to know about a task."""

    key: str  # file names: docs/benchmarks/img/tune_<key>.png
    title: str
    total_steps: int  # the budget every condition gets, in optimizer steps
    eval_every: int  # validation cadence, in steps
    lr_range: tuple[float, float]  # the search space of Optuna and of PBT's resampling
    has_gradients: bool  # Schedule-Free and Prodigy adapt to gradients; the toy has none

    def make(self, seed: int) -> Run: ...

    def bench_task(self, lr: float) -> BenchTask:
        """The task for :mod:`hotcb.bench`'s runner, its optimizer at ``lr``."""
        ...

    def starts(self) -> dict[str, float]:
        """The start lrs, by name (a condition that has no start lr runs once)."""
        ...


# ------------------------------------------------------------------------------- (a) digits
_MLP = digits_mlp()  # the MLP of ``hotcb bench`` (its data, split, model, batches and lr)


@dataclass(frozen=True)
class Digits:
    """(a) An MLP on digits with AdamW (weight decay 0.01, betas 0.9/0.999), 1200 steps.

    ``good_lr`` comes from a one-off sweep at this budget, seeds 0-2, mean final val loss:
    3e-4 0.140 | 1e-3 0.119 | 3e-3 0.126 | 5e-3 0.106 | 1e-2 0.093 | 2e-2 0.106 | 3e-2 0.103 |
    1e-1 0.559. So 1e-2; "10x too high" is 1e-1 (it trains, badly: val loss ~0.56, accuracy
    ~0.90) and "30x too low" is 3.3e-4 (~0.14, still converging at the end).
    """

    key: str = "digits"
    title: str = "MLP on digits (AdamW)"
    total_steps: int = _MLP.total_steps  # 1200
    eval_every: int = _MLP.eval_every  # 10
    good_lr: float = _MLP.lr  # 1e-2
    lr_range: tuple[float, float] = (1e-5, 1e-1)
    has_gradients: bool = True

    def make(self, seed: int) -> Run:
        return _MLP.make(seed)  # type: ignore[no-any-return]

    def bench_task(self, lr: float) -> BenchTask:
        return dataclasses.replace(
            _MLP, name=self.key, title=self.title, total_steps=self.total_steps,
            eval_every=self.eval_every, lr=lr,
        )  # fmt: skip

    def starts(self) -> dict[str, float]:
        return {"good": self.good_lr, "10x high": self.good_lr * 10, "30x low": self.good_lr / 30}


# ------------------------------------------------------------------------------- (b) the toy
def toy_target(progress: float) -> float:
    """The best log10(lr) at a given progress: -3 at the start, up to -2 at progress 0.3, then
    down by 1.5 decades to -3.5 at progress 1 (a warm-up, then a decay)."""
    if progress < 0.3:
        return -3.0 + progress / 0.3
    return -2.0 - 1.5 * (progress - 0.3) / 0.7


class _ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # the optimizers need a parameter; its lr is what the toy reads
        self.w = nn.Parameter(torch.zeros(1))
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))


class ToyRun:
    """The moving-optimum toy: see :class:`Toy`."""

    rate = 1 / 2500  # progress per step with lr exactly on target
    width = 0.4  # decades: the gain falls off as a Gaussian of the distance to the target
    tolerance = 0.5  # decades above the target from which progress goes backwards
    gain_noise = 0.5  # relative, per step
    train_noise = 0.02  # on the training loss
    val_noise = 0.01  # on the validation loss

    def __init__(self, seed: int) -> None:
        self.model = _ToyModel()
        self._train = np.random.default_rng(seed)
        self._val = np.random.default_rng(10_000 + seed)

    @property
    def progress(self) -> float:
        return float(self.model.progress)

    def train_step(self, opt: torch.optim.Optimizer) -> float:
        lr = float(opt.param_groups[0]["lr"])
        x = self.progress
        off = math.log10(max(lr, 1e-30)) - toy_target(x)  # > 0: lr too high
        if off <= self.tolerance:
            gain = self.rate * math.exp(-0.5 * (off / self.width) ** 2)
        else:  # too high: unstable, the run loses ground
            gain = -self.rate * (off - self.tolerance)
        gain *= 1 + self.gain_noise * self._train.normal()
        x = min(1.0, max(0.0, x + gain))
        self.model.progress.fill_(x)
        return 1 - x + self.train_noise * float(self._train.normal())

    def evaluate(self) -> tuple[float, float | None]:
        return 1 - self.progress + self.val_noise * float(self._val.normal()), None


@dataclass(frozen=True)
class Toy:
    """(b) The moving optimum, after the function example of Ray Tune's PBT docs (own code).

    A run has a progress ``x`` in [0, 1] (a buffer of its model); the loss is the distance to
    done, ``1 - x``, plus Gaussian noise (sd 0.02 on the training loss, 0.01 on validation).
    Each step reads the lr of the optimizer's first param group and moves ``x`` by an amount that
    depends on ``d = log10(lr) - target(x)``, the distance in decades to the best lr:

    - ``d <= 0.5``: ``x += rate * exp(-d² / (2 · 0.4²))`` (``rate = 1/2500``): full speed on
      target, a 2x miss costs ~14%, a 10x miss ~96%;
    - ``d > 0.5`` (lr more than ~3x too high): ``x -= rate * (d - 0.5)``: it loses ground;

    each step's change times ``(1 + 0.5 · N(0, 1))``, ``x`` clipped to [0, 1].
    ``target(x)`` is -3 at the start, -2 at ``x = 0.3`` and falls to -3.5 at
    ``x = 1``: warm up, then decay, as a function of how far the run got. No fixed lr fits it:
    following the target exactly for 2000 steps ends near loss 0.21, the best fixed lr
    (10^-2.5) near 0.39, and 10^-2.375 or higher never gets going. The start lr is 1e-3 (on
    target at step 0; loss ~0.74 when kept). There are no gradients: Schedule-Free and Prodigy
    do not apply.
    """

    key: str = "toy"
    title: str = "moving-optimum toy"
    total_steps: int = 2000
    eval_every: int = 10
    start_lr: float = 1e-3
    lr_range: tuple[float, float] = (1e-5, 1e-1)
    has_gradients: bool = False
    # fixed lrs: 1e-4 … 10^-1.5, 8 per decade
    sweep: tuple[float, ...] = tuple(10 ** (-4 + 0.125 * i) for i in range(21))

    def make(self, seed: int) -> Run:
        return ToyRun(seed)

    def bench_task(self, lr: float) -> BenchTask:
        """Plain SGD on the toy's dummy parameter: the toy reads only its lr."""
        return BenchTask(self.key, self.title, self.total_steps, self.eval_every, lr, ToyRun,
                         optimizer=_sgd)  # fmt: skip

    def starts(self) -> dict[str, float]:
        return {"start": self.start_lr}


def _sgd(params: object, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr)  # type: ignore[arg-type]
