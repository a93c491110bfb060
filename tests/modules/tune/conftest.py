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


@pytest.fixture
def held_ask(monkeypatch: Any) -> Any:
    """A ``threading.Event``: Optuna's ``ask`` (on the tuner's thread) waits for it, so a
    test decides when a trial's answer lands, without sleeping."""
    import threading

    from hotcb.modules.tune._study import Study

    gate = threading.Event()
    real_ask = Study.ask

    def late_ask(self: Study, *args: Any, **kw: Any) -> Any:
        gate.wait(120)
        return real_ask(self, *args, **kw)

    monkeypatch.setattr(Study, "ask", late_ask)
    yield gate
    gate.set()
