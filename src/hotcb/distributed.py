"""torch.distributed glue: rank 0 reads commands and broadcasts them, every rank applies them.

Nothing here imports torch unless the training process already did and a process group with
more than one rank is initialised.
"""

from __future__ import annotations

import sys
from typing import Any


class DistSync:
    """Broadcast of command batches from rank 0, with the step of the next poll.

    Each poll broadcasts two ints from rank 0 (whether it read new commands, and the step of
    the next poll it chose: one small collective) and only a non-empty batch goes through
    ``broadcast_object_list`` (pickle, size, payload). Every rank makes the same calls in the
    same order at the same steps, so none waits in a collective the others skip, and between
    two polls no collective runs at all.
    """

    def __init__(self, dist: Any, group: Any = None) -> None:
        self._dist = dist
        self.group = group
        self.rank: int = dist.get_rank()
        self.world_size: int = dist.get_world_size()
        self.is_leader = self.rank == 0
        self._head: Any = None  # a 2-element int64 tensor on the backend's device, reused

    def _head_tensor(self) -> Any:
        if self._head is None:
            import torch

            device = torch.device("cpu")
            if str(self._dist.get_backend(self.group)) == "nccl":  # NCCL has no CPU tensors
                device = torch.device("cuda", torch.cuda.current_device())
            self._head = torch.zeros(2, dtype=torch.int64, device=device)
        return self._head

    def broadcast(self, obj: Any, next_step: int = 0) -> tuple[Any, int]:
        """Rank 0's ``(obj, next_step)`` on every rank (a falsy ``obj`` costs one small
        collective; other ranks then get ``None``)."""
        head = self._head_tensor()
        if self.is_leader:
            head[0] = 1 if obj else 0
            head[1] = int(next_step)
        self._dist.broadcast(head, src=0, group=self.group)
        flag, nxt = (int(v) for v in head.tolist())
        if not flag:
            return (obj if self.is_leader else None), nxt
        box = [obj if self.is_leader else None]
        self._dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0], nxt


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


def first_rank() -> bool:
    """Whether this process is rank 0 (True without torch.distributed). Before the process
    group exists, as the launcher said: ``RANK`` (torchrun, accelerate), else ``NODE_RANK``
    and ``LOCAL_RANK`` (Lightning's launcher starts its other processes with only these,
    before ``fit()`` makes the group)."""
    sync = detect()
    if sync is not None:
        return bool(sync.is_leader)
    import os

    names = ("RANK",) if os.environ.get("RANK") else ("NODE_RANK", "LOCAL_RANK")
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in names)
