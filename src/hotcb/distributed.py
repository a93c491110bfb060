"""torch.distributed glue: rank 0 reads commands and broadcasts them, every rank applies them,
and what went differently on one rank is settled the same way on every rank.

Nothing here imports torch unless the training process already did and a process group with
more than one rank is initialised.
"""

from __future__ import annotations

import sys
from typing import Any

from .errors import PeerLostError


class DistSync:
    """Rank 0's command batches to every rank, with the step of the next poll, and the notes
    of what went differently on one rank (a callback that raised there) to every rank.

    Each poll reduces three ints (one small collective): rank 0 gives whether it read new
    commands and the step of the next poll it chose, every rank the number of notes it holds
    (``all_reduce`` with ``SUM``: the other ranks give 0 for the first two). Only a non-empty
    batch then goes through ``broadcast_object_list`` (pickle, size, payload), and only when
    some rank holds notes do they go through ``all_gather_object``. Every rank makes the same
    calls in the same order at the same steps, so none waits in a collective the others skip,
    and between two polls no collective runs at all.
    """

    def __init__(self, dist: Any, group: Any = None) -> None:
        self._dist = dist
        self.group = group
        self.rank: int = dist.get_rank()
        self.world_size: int = dist.get_world_size()
        self.is_leader = self.rank == 0
        self._head: Any = None  # a 3-element int64 tensor on the backend's device, reused
        self._one: Any = None  # a 1-element one, for :meth:`count`

    def _tensor(self, n: int) -> Any:
        import torch

        device = torch.device("cpu")
        if str(self._dist.get_backend(self.group)) == "nccl":  # NCCL has no CPU tensors
            device = torch.device("cuda", torch.cuda.current_device())
        return torch.zeros(n, dtype=torch.int64, device=device)

    def _call(self, collective: Any, *args: Any, **kwargs: Any) -> None:
        """Run one collective; :class:`PeerLostError` when the backend fails it (a rank died:
        gloo's "Connection closed by peer", NCCL's abort), naming this rank. Other errors (an
        ``apply`` after ``destroy_process_group``) stay hotcb's to log: the loop goes on."""
        try:
            collective(*args, **kwargs)
        except RuntimeError as exc:  # the backend's (gloo, NCCL): not a group torn down on
            if not self._dist.is_initialized():  # purpose (a ValueError), nor one gone since
                raise
            raise PeerLostError(
                f"hotcb's exchange with the other ranks failed on rank {self.rank} of "
                f"{self.world_size} ({type(exc).__name__}: {str(exc)[:300]}): a rank died or "
                "the process group broke; this rank cannot go on with the others"
            ) from exc

    def exchange(self, obj: Any, next_step: int = 0, notes: int = 0) -> tuple[Any, int, int]:
        """Rank 0's ``(obj, next_step)`` on every rank, and the number of notes all ranks
        hold together (a falsy ``obj`` costs one small collective; other ranks then get
        ``None``)."""
        head = self._head
        if head is None:
            head = self._head = self._tensor(3)
        if self.is_leader:
            head[0] = 1 if obj else 0
            head[1] = int(next_step)
        else:
            head[0] = head[1] = 0
        head[2] = int(notes)
        self._call(self._dist.all_reduce, head, op=self._dist.ReduceOp.SUM, group=self.group)
        flag, nxt, total = (int(v) for v in head.tolist())
        if not flag:
            return (obj if self.is_leader else None), nxt, total
        box = [obj if self.is_leader else None]
        self._call(self._dist.broadcast_object_list, box, src=0, group=self.group)
        return box[0], nxt, total

    def count(self, n: int) -> int:
        """The sum of every rank's ``n`` (one small collective)."""
        one = self._one
        if one is None:
            one = self._one = self._tensor(1)
        one[0] = int(n)
        self._call(self._dist.all_reduce, one, op=self._dist.ReduceOp.SUM, group=self.group)
        return int(one.item())

    def gather(self, notes: list[Any]) -> list[Any]:
        """Every rank's ``notes``, in rank order, the same list on every rank."""
        parts: list[Any] = [None] * self.world_size
        self._call(self._dist.all_gather_object, parts, list(notes), group=self.group)
        return [note for part in parts for note in part or ()]


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
