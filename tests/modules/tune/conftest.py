"""Fixtures for the tuner's tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("optuna")

from tune_helpers import Toy


@pytest.fixture
def toy(tmp_path: Any) -> Any:
    made: list[Toy] = []

    def make(f: Callable[[float, int], float], name: str = "run", **kw: Any) -> Toy:
        t = Toy(str(tmp_path / name), f, **kw)
        made.append(t)
        return t

    yield make
    for t in made:
        t.kernel.close()
