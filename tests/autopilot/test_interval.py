"""``hotcb autopilot --interval`` must be a positive number of seconds, checked before it
starts: ``-1`` started, then died with ``sleep length must be non-negative``; ``0`` spun a
core while it waited for the run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.parametrize("interval", ["-1", "0", "nan"])
def test_a_non_positive_interval_is_a_usage_error(tmp_path: Path, cli: Any, interval: str) -> None:
    done = cli(os.fspath(tmp_path / "not-yet"), "autopilot", "--mode", "suggest",
               "--interval", interval, timeout=30)  # fmt: skip
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith(
        "hotcb autopilot: error: argument --interval: must be a number of seconds > 0, got "
        f"{interval}"
    ), done.stderr
    assert not done.stdout  # it never started waiting
