"""The WebSocket fan-out: which page listens to which runs, and one bounded queue per page.

A message is serialised once and queued for every subscriber of its run. A page that cannot
keep up (its queue is full) is disconnected rather than letting memory grow: it reconnects and
refetches history over REST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from .. import jsonl

__all__ = ["Hub", "Subscriber"]

log = logging.getLogger("hotcb.server")


class Subscriber:
    """One WebSocket connection: its runs and its outgoing queue of JSON texts."""

    __slots__ = ("queue", "runs", "slow")

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=maxsize)
        self.runs: set[str] = set()
        self.slow = False

    def put(self, text: str | None) -> bool:
        if self.slow:
            return False
        try:
            self.queue.put_nowait(text)
            return True
        except asyncio.QueueFull:
            self.slow = True
            # Make room for the end-of-stream marker so the sender loop stops and closes.
            with contextlib.suppress(asyncio.QueueEmpty):  # a full queue is never empty
                self.queue.get_nowait()
            self.queue.put_nowait(None)
            return False


class Hub:
    """Subscriptions of every connected page, by run id."""

    def __init__(self, queue_max: int) -> None:
        self.queue_max = queue_max
        self._by_run: dict[str, set[Subscriber]] = {}
        self._all: set[Subscriber] = set()

    def connect(self) -> Subscriber:
        sub = Subscriber(self.queue_max)
        self._all.add(sub)
        return sub

    def disconnect(self, sub: Subscriber) -> None:
        self.subscribe(sub, ())
        self._all.discard(sub)

    def subscribe(self, sub: Subscriber, run_ids: Iterable[str]) -> set[str]:
        """Replace ``sub``'s runs; return the ones newly added."""
        new = set(run_ids)
        added = new - sub.runs
        for rid in sub.runs - new:
            subs = self._by_run.get(rid)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_run[rid]
        for rid in added:
            self._by_run.setdefault(rid, set()).add(sub)
        sub.runs = new
        return added

    def watched(self) -> list[str]:
        """Run ids that at least one page listens to."""
        return list(self._by_run)

    def has_subscribers(self, run_id: str) -> bool:
        return run_id in self._by_run

    @property
    def connections(self) -> int:
        return len(self._all)

    def publish(self, run_id: str, message: dict[str, Any]) -> None:
        subs = self._by_run.get(run_id)
        if not subs:
            return
        text = jsonl.dumps(message)
        for sub in list(subs):
            if not sub.put(text):
                log.warning("hotcb dashboard: a client is too slow; disconnecting it")

    def send(self, sub: Subscriber, message: dict[str, Any]) -> None:
        sub.put(jsonl.dumps(message))
