"""Read side of the controllers that change a run by themselves: the online tuner's state.

Its proposals are accepted or rejected through the commands endpoint like any other command
(``{"module": "tune", "op": "accept", "params": {"id": "P3"}}``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ...client import HotClient
from ...modules.tune import over_view
from ..deps import Deps
from ._runs import both


def create_tune_router(deps: Deps) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["runs"])

    @both(router, "tune")
    async def tune(run_id: str = ".") -> dict[str, Any]:
        """The online tuner's state (``hotcb.tune.json``), or ``{"mode": "off"}`` when the
        tuner was never enabled. A file that does not parse answers the last good document
        (``{"mode": "off", "error": reason}`` before any); URL passwords read ``***``. Once the
        run is over, as ``tune status --json`` says it: ``run_over``, no next boundary, its
        pending proposals ``ended``."""
        run = deps.run(run_id)
        await run.refresh()
        over = await run_in_threadpool(HotClient(deps.path(run_id), create=False).run_over)
        return over_view(run.tune.doc, over)

    return router
