"""torch.distributed glue: rank 0 reads commands and broadcasts them, every rank applies them.

Nothing here imports torch unless the training process already did and a process group with
more than one rank is initialised.
"""

from __future__ import annotations

import sys
from typing import Any


class DistSync:
    """Broadcast of command batches from rank 0.

    Most polls find nothing new, so a poll first broadcasts one int (how many bytes of new
    commands rank 0 read: one small collective) and only a non-empty batch goes through
    ``broadcast_object_list`` (pickle, size, payload). Every rank makes the same calls in the
    same order, so none waits in a collective the others skip.
    """

    def __init__(self, dist: Any, group: Any = None) -> None:
        self._dist = dist
        self.group = group
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_leader = self.rank == 0
        self._flag: Any = None  # a 1-element int64 tensor on the backend's device, reused

    def _flag_tensor(self) -> Any:
        if self._flag is None:
            import torch

            device = torch.device("cpu")
            if str(self._dist.get_backend(self.group)) == "nccl":  # NCCL has no CPU tensors
                device = torch.device("cuda", torch.cuda.current_device())
            self._flag = torch.zeros(1, dtype=torch.int64, device=device)
        return self._flag

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (falsy ``obj``: a falsy value, via one int)."""
        flag = self._flag_tensor()
        if self.is_leader:
            flag.fill_(1 if obj else 0)
        self._dist.broadcast(flag, src=0, group=self.group)
        if not int(flag.item()):
            return obj if self.is_leader else None
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
