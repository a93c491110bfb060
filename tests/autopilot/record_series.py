"""Record real metric series for the detector tests: ``python tests/autopilot/record_series.py``.

Trains tiny MLPs on scikit-learn's bundled 8x8 digits (nothing is downloaded) and writes one JSON
fixture per run under ``tests/autopilot/series/``. The tests read these files and never train.
Run it again only to change the fixtures (the output is deterministic on one machine; torch
versions may differ in the last digits).

Each fixture is ``{"run": ..., "about": ..., "config": {...}, "series": {name: series}}`` with a
series written compactly as ``{"start": first step, "every": steps between points, "values":
[...]}`` (values rounded to 6 significant digits, ``null`` for NaN or inf, as
``hotcb.metrics.jsonl`` records them). The runs:

- ``good``: Adam at a sound learning rate on 1200 training images; nothing should fire.
- ``noisy``: the same at 10x the learning rate: it trains, with much noisier losses (a false
  positive test for divergence and spike).
- ``diverge``: SGD with momentum at a sound learning rate for 150 steps, then raised to 10x
  by step 250 (as a person or a schedule might): the loss climbs from about step 170.
- ``overfit``: 120 training images, 30 % of their labels redrawn, a wide MLP: train loss goes
  to zero while validation loss turns up after step 60.
- ``plateau``: the good run with its learning rate dropped 1000x after step 200: validation
  loss stops improving there.

Train loss and gradient norm are logged every step, validation loss (597 held-out images, the
same for every run) every 20 steps.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from torch import nn

from hotcb.testing import digits

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "series")
VAL_EVERY = 20


def _round(x: float) -> float | None:
    return float(f"{x:.6g}") if math.isfinite(x) else None


def _series(start: int, every: int, values: list[float]) -> dict[str, Any]:
    return {"start": start, "every": every, "values": [_round(v) for v in values]}


def _split(n_train: int, seed: int) -> tuple[Any, Any, Any, Any]:
    x, y = digits()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    val = order[-597:]  # a fixed third of the data, the same for every run
    train = order[:n_train]
    return x[train], y[train], x[val], y[val]


def _run(
    *,
    steps: int,
    n_train: int = 1200,
    hidden: int = 64,
    label_noise: float = 0.0,
    optimizer: str = "adam",
    lr: float = 1e-3,
    lr_at: Any = None,
    batch: int = 32,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    xt, yt, xv, yv = _split(n_train, seed)
    g = torch.Generator().manual_seed(seed + 1)
    if label_noise:
        flip = torch.rand(len(yt), generator=g) < label_noise
        yt = yt.clone()
        yt[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    train_loss: list[float] = []
    grad_norm: list[float] = []
    val_loss: list[float] = []
    for step in range(1, steps + 1):
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
        idx = torch.randint(0, len(yt), (batch,), generator=g)
        opt.zero_grad()
        loss = loss_fn(model(xt[idx]), yt[idx])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        opt.step()
        train_loss.append(loss.item())
        grad_norm.append(float(norm))
        if step % VAL_EVERY == 0:
            with torch.no_grad():
                val_loss.append(loss_fn(model(xv), yv).item())
    return {
        "train_loss": _series(1, 1, train_loss),
        "grad_norm": _series(1, 1, grad_norm),
        "val_loss": _series(VAL_EVERY, VAL_EVERY, val_loss),
    }


def _ramp(step: int) -> float:
    """SGD at a sound 0.1 for 150 steps, then raised linearly to 1.0 (10x) by step 250."""
    return 0.1 if step <= 150 else min(1.0, 0.1 + 0.9 * (step - 150) / 100)


def _drop(step: int) -> float:
    """Adam at 1e-3, then 1e-6 from step 201 on."""
    return 1e-3 if step <= 200 else 1e-6


#: name → (what it is, options of ``_run``); the module docstring says what each run shows.
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "good": ("Adam lr 1e-3, 1200 train images, hidden 64, batch 32", {"steps": 500}),
    "noisy": (
        "Adam lr 1e-2 (10x the good run's): trains, with noisy losses",
        {"steps": 500, "lr": 1e-2},
    ),
    "diverge": (
        "SGD momentum 0.9 at lr 0.1 for 150 steps, then raised linearly to 1.0 (10x) by step 250",
        {"steps": 500, "optimizer": "sgd", "lr": 0.1, "lr_at": _ramp},
    ),
    "overfit": (
        "Adam lr 3e-3, 120 train images with 30% of their labels redrawn, hidden 256",
        {"steps": 500, "n_train": 120, "hidden": 256, "label_noise": 0.3, "lr": 3e-3},
    ),
    "plateau": ("Adam lr 1e-3, dropped to 1e-6 after step 200", {"steps": 500, "lr_at": _drop}),
}


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    for name, (about, options) in RUNS.items():
        series = _run(**options)
        config = {k: v for k, v in options.items() if not callable(v)}
        path = os.path.join(OUT, f"{name}.json")
        with open(path, "w") as f:
            json.dump({"run": name, "about": about, "config": config, "series": series}, f)
            f.write("\n")
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
