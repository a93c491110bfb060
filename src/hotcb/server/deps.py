"""What the routers share: built once by :func:`hotcb.server.app.create_app`."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from fastapi import HTTPException

from ..errors import JournalWriteError
from .autopilot import AutopilotHost
from .config import DashboardConfig
from .hub import Hub
from .runs import RunNotFound, RunRegistry, RunState

__all__ = ["Deps", "not_written"]


@dataclass
class Deps:
    config: DashboardConfig
    registry: RunRegistry
    hub: Hub
    autopilot: AutopilotHost | None = None  # the autopilot runs in this server (--autopilot)

    def path(self, run_id: str) -> str:
        """The run's directory, or a 404; touches no shared state (safe in worker threads)."""
        try:
            return self.registry.resolve(self.registry.normalise(run_id))
        except RunNotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None

    def run(self, run_id: str) -> RunState:
        """The run's state, or a 404 that says what was looked for (event loop only: the
        registry is not locked)."""
        try:
            return self.registry.get(run_id)
        except RunNotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None


def not_written(exc: JournalWriteError) -> HTTPException:
    """A command the server could not write: 403 when this server's user may not write the
    run's commands file (the message says whose it is), 507 for a full disk or another
    failure of the write."""
    status = 403 if exc.errno in (errno.EACCES, errno.EPERM) else 507
    return HTTPException(status, detail=str(exc))
