"""torch.distributed glue: rank 0 reads commands and broadcasts them, every rank applies them.

Nothing here imports torch unless the training process already did and a process group with
more than one rank is initialised.
"""

from __future__ import annotations

import sys
from typing import Any


class DistSync:
    """Broadcast of command batches from rank 0 (``broadcast_object_list``)."""

    def __init__(self, dist: Any, group: Any = None) -> None:
        self._dist = dist
        self.group = group
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_leader = self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self.is_leader else None]
        self._dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


def detect() -> DistSync | None:
    """A :class:`DistSync` when torch.distributed runs with world size > 1, else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    if dist.get_world_size() <= 1:
        return None
    return DistSync(dist)


def rank() -> int:
    """This process's rank (0 without torch.distributed); also honours RANK set by launchers."""
    sync = detect()
    if sync is not None:
        return sync.rank
    import os

    return int(os.environ.get("RANK", "0") or 0)
