"""Framework adapters: glue between a trainer's hooks and :meth:`hotcb.HotKernel.apply`.

- :class:`hotcb.adapters.lightning.HotCBLightning` — a Lightning ``Callback``
  (``pip install "hotcb[lightning]"``).
- :class:`hotcb.adapters.hf.HotCBHFCallback` — a HuggingFace ``TrainerCallback``
  (``pip install "hotcb[hf]"``).

Nothing is imported until a name is asked for, so ``import hotcb.adapters`` stays free of torch,
Lightning and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["HotCBHFCallback", "HotCBLightning"]

_WHERE = {"HotCBLightning": ".lightning", "HotCBHFCallback": ".hf"}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'hotcb.adapters' has no attribute {name!r}")
    return getattr(importlib.import_module(where, __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
