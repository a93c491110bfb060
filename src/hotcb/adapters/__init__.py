"""Framework adapters: glue between a trainer's hooks and :meth:`hotcb.HotKernel.apply`.

- :class:`hotcb.adapters.lightning.HotCBLightning` — a Lightning ``Callback``
  (``pip install "hotcb[lightning]"``).
- :class:`hotcb.adapters.hf.HotCBHFCallback` — a HuggingFace ``TrainerCallback``
  (``pip install "hotcb[hf]"``).

Nothing is imported until a name is asked for, so ``import hotcb.adapters`` stays free of torch,
Lightning and transformers. :class:`LazyEnv` is the env both hand to the kernel.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["HotCBHFCallback", "HotCBLightning", "LazyEnv"]

#: ``fill(key, values)``: put ``key`` (and whatever is built along with it) into ``values``.
Fill = Callable[[str, dict[str, Any]], None]


class LazyEnv(Mapping[str, Any]):
    """The env of one safe point, built only as far as the kernel reads it.

    At most safe points nothing is due: the kernel reads ``env["step"]``, asks
    ``"metrics" in env`` and returns. Building a trainer's whole env there (its optimizers,
    schedulers, epoch, metrics) was most of an adapter's cost per step. So an adapter hands over
    the values it already holds (``known``) and the name of every key the env has (``keys``, a
    superset of ``known``); the first read of any other key calls ``fill(key, values)``, which
    adds it. The kernel reads a key only when it does work with it (a poll that found commands,
    a due op, metrics to record, callbacks to run), so the env is built exactly then, and the
    kernel's decisions are the ones a plain dict would get: ``in`` answers from ``keys`` without
    building anything.
    """

    __slots__ = ("_fill", "_keys", "_values")

    def __init__(self, known: dict[str, Any], keys: frozenset[str], fill: Fill) -> None:
        self._values = known
        self._keys = keys
        self._fill = fill

    def __getitem__(self, key: str) -> Any:
        values = self._values
        if key in values:
            return values[key]
        if key not in self._keys:
            raise KeyError(key)
        self._fill(key, values)
        return values[key]

    def get(self, key: str, default: Any = None) -> Any:
        values = self._values
        if key in values:
            return values[key]
        if key not in self._keys:
            return default
        self._fill(key, values)
        return values[key]

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        values = self._values
        for key in self._keys:
            if key not in values:
                self._fill(key, values)
        return iter(values)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"LazyEnv({self._values!r}, pending={sorted(self._keys - self._values.keys())})"


_WHERE = {"HotCBLightning": ".lightning", "HotCBHFCallback": ".hf"}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'hotcb.adapters' has no attribute {name!r}")
    return getattr(importlib.import_module(where, __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
