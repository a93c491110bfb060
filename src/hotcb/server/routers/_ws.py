"""``/ws``: one connection per page, channels per run.

The page sends ``{"subscribe": [run_id, ...]}`` (again to change); the server answers with a
``hello`` on connect, a snapshot (``actuators``, ``tune``, ``autopilot`` and ``status``) for
each newly subscribed run, then batched ``metrics``/``ledger``/``commands``/``actuators``/
``tune``/``autopilot`` deltas as the tailer reads them and a periodic ``status``. ``{"type": "ping"}`` gets ``{"type": "pong"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ... import __version__
from ..auth import ws_subprotocol
from ..deps import Deps
from ..hub import Subscriber
from ..runs import RunNotFound, RunState

#: The most runs one ``subscribe`` may name (distinct ids): a page watches one run, or a few
#: to compare them.
MAX_SUBSCRIBED_RUNS = 1000


async def _sender(ws: WebSocket, sub: Subscriber) -> None:
    while True:
        text = await sub.queue.get()
        if text is None:  # too slow: close so the page reconnects and refetches
            await ws.close(code=1013, reason="client too slow")
            return
        await ws.send_text(text)


async def _subscribe(deps: Deps, sub: Subscriber, ids: Any) -> None:
    """Subscribe ``sub`` to the runs ``ids``; a snapshot for each newly added run, an error
    for each unknown one. A run named twice (or spelled two ways) counts once; a list of
    more than :data:`MAX_SUBSCRIBED_RUNS` runs is refused whole."""
    hub = deps.hub
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        hub.send(sub, {"type": "error", "detail": "subscribe needs a list of run ids"})
        return
    distinct = list(dict.fromkeys(ids))  # a megabyte of one id was a refresh per copy
    if len(distinct) > MAX_SUBSCRIBED_RUNS:
        hub.send(sub, {"type": "error", "detail": f"subscribe names {len(distinct)} runs; at "
                       f"most {MAX_SUBSCRIBED_RUNS} at once"})  # fmt: skip
        return
    found: dict[str, RunState] = {}
    for rid in distinct:
        try:
            run = deps.registry.get(rid)
        except RunNotFound as exc:
            hub.send(sub, {"type": "error", "detail": str(exc), "run": rid})
            continue
        found.setdefault(run.run_id, run)
    runs = list(found.values())
    added = hub.subscribe(sub, [r.run_id for r in runs])
    for run in runs:
        if run.run_id in added:
            # the run's state: what the refresh pushed this subscriber (a run no page watched
            # was read for the first time there) is not sent again
            pushed = await run.refresh()
            snapshot = [{"type": "actuators", "run": run.run_id, "doc": run.actuators.doc},
                        run.tune_message(), run.autopilot_message()]  # fmt: skip
            for msg in snapshot:
                if msg["type"] not in pushed:
                    hub.send(sub, msg)
            hub.send(sub, run.status_message())


async def _handle(deps: Deps, sub: Subscriber, text: str) -> None:
    """One message from the page: ``subscribe`` or ``ping``; anything else is answered with
    an ``error``."""
    try:
        msg = json.loads(text)
    except ValueError:
        deps.hub.send(sub, {"type": "error", "detail": "messages must be JSON"})
        return
    if isinstance(msg, dict) and "subscribe" in msg:
        await _subscribe(deps, sub, msg["subscribe"])
    elif isinstance(msg, dict) and msg.get("type") == "ping":
        deps.hub.send(sub, {"type": "pong"})
    else:  # (it went unanswered: a script's typo looked like a server that never answers)
        deps.hub.send(sub, {"type": "error", "detail": 'expected {"subscribe": [run ids]} or '
                            '{"type": "ping"}'})  # fmt: skip


async def _receive(
    websocket: WebSocket, deps: Deps, sub: Subscriber, sender: asyncio.Task[None]
) -> None:
    """Handle the page's messages until the sender ends (the page was too slow)."""
    while True:
        receive = asyncio.create_task(websocket.receive())
        done, _ = await asyncio.wait({receive, sender}, return_when="FIRST_COMPLETED")
        if sender in done:
            receive.cancel()
            return
        message = receive.result()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        if text is None:  # a binary frame: receive_text() raised KeyError and dropped the socket
            deps.hub.send(sub, {"type": "error", "detail": "messages must be JSON text, not "
                                "binary frames"})  # fmt: skip
            continue
        await _handle(deps, sub, text)


def create_ws_router(deps: Deps) -> APIRouter:
    router = APIRouter()
    hub = deps.hub

    @router.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol=ws_subprotocol(websocket.scope))
        sub = hub.connect()
        ui = deps.config.ui.model_dump(mode="json")
        hub.send(sub, {"type": "hello", "version": __version__, "config": ui})
        sender = asyncio.create_task(_sender(websocket, sub))
        try:
            await _receive(websocket, deps, sub, sender)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            hub.disconnect(sub)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    return router
