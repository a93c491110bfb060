"""Test helpers that ship with hotcb: a tiny model on real data, a step driver and a real
trainer process.

Adapters, modules and users' own tests reuse them (like Lightning's ``BoringModel``)::

    from hotcb.testing import StepDriver, TorchStepDriver, digits, TinyMLP, trainer_command
    with StepDriver(run_dir, weights={"aux": 0.0}) as drv:  # a kernel stepped by hand
        cid = drv.client.loss(aux=0.5)
        drv.steps()
        assert drv.only(cid)["decision"] == "applied" and drv.weights["aux"] == 0.5
    proc = subprocess.Popen(trainer_command(run_dir, steps=500, step_delay=0.01))

``import hotcb.testing`` and :class:`StepDriver` need no third-party package; the model, the
data and :class:`TorchStepDriver` need torch and scikit-learn (the digits data ships inside
scikit-learn; nothing is downloaded).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .driver import StepDriver, TorchStepDriver

__all__ = [
    "StepDriver",
    "TinyMLP",
    "TorchStepDriver",
    "digits",
    "fill_filesystem",
    "read_ledger",
    "trainer_command",
    "wait_for",
]


def digits() -> tuple[Any, Any]:
    """scikit-learn's bundled 8x8 digits as float32 features in [0, 1] and int64 labels."""
    import torch

    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # the examples train on it; the lightning/hf extras lack it
        raise ImportError("the digits data ships with scikit-learn: pip install scikit-learn "
                          '(or "hotcb[all]")') from exc  # fmt: skip

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def TinyMLP(hidden: int = 32, seed: int | None = 0) -> Any:
    """A 64 → hidden → 10 MLP (deterministic init when ``seed`` is given)."""
    import torch
    from torch import nn

    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def trainer_command(run_dir: str | os.PathLike[str], **options: Any) -> list[str]:
    """argv for ``python -m hotcb.testing.trainer`` with ``--key value`` options
    (``step_delay=0.01`` → ``--step-delay 0.01``; ``True`` → a bare flag)."""
    argv = [sys.executable, "-m", "hotcb.testing.trainer", "--run-dir", os.fspath(run_dir)]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv.append(flag)
        if value is not True:
            argv.append(str(value))
    return argv


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; raise ``TimeoutError`` after
    ``timeout`` seconds (tests wait on conditions, never on sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


def read_ledger(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    from .. import jsonl
    from ..runfiles import LEDGER

    return list(jsonl.iter_records(os.path.join(os.fspath(run_dir), LEDGER)))


def entries_for(run_dir: str | os.PathLike[str], cmd_ids: Sequence[str]) -> list[dict[str, Any]]:
    wanted = set(cmd_ids)
    return [e for e in read_ledger(run_dir) if e.get("cmd_id") in wanted]


def fill_filesystem(directory: str | os.PathLike[str]) -> str:
    """Fill the filesystem of ``directory`` up to ENOSPC (a small tmpfs, in a test of a full
    disk); returns the filler's path: remove it to free the space."""
    import errno

    path = os.path.join(os.fspath(directory), "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return path
