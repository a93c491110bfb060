"""``/ws``: one connection per page, channels per run.

The page sends ``{"subscribe": [run_id, ...]}`` (again to change); the server answers with a
``hello`` on connect, a snapshot (``actuators`` and ``status``) for each newly subscribed run,
then batched ``metrics``/``ledger``/``commands``/``actuators`` deltas as the tailer reads them and
a periodic ``status``. ``{"type": "ping"}`` gets ``{"type": "pong"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ... import __version__
from ..deps import Deps
from ..hub import Subscriber
from ..runs import RunNotFound


async def _sender(ws: WebSocket, sub: Subscriber) -> None:
    while True:
        text = await sub.queue.get()
        if text is None:  # too slow: close so the page reconnects and refetches
            await ws.close(code=1013, reason="client too slow")
            return
        await ws.send_text(text)


def create_ws_router(deps: Deps) -> APIRouter:
    router = APIRouter()
    hub = deps.hub

    async def subscribe(sub: Subscriber, ids: Any) -> None:
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            hub.send(sub, {"type": "error", "detail": "subscribe needs a list of run ids"})
            return
        runs = []
        for rid in ids:
            try:
                runs.append(deps.registry.get(rid))
            except RunNotFound as exc:
                hub.send(sub, {"type": "error", "detail": str(exc), "run": rid})
        added = hub.subscribe(sub, [r.run_id for r in runs])
        for run in runs:
            if run.run_id in added:
                await run.refresh()
                hub.send(sub, {"type": "actuators", "run": run.run_id, "doc": run.actuators.doc})
                hub.send(sub, run.status_message())

    @router.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        sub = hub.connect()
        ui = deps.config.ui.model_dump(mode="json")
        hub.send(sub, {"type": "hello", "version": __version__, "config": ui})
        sender = asyncio.create_task(_sender(websocket, sub))
        try:
            while True:
                receive = asyncio.create_task(websocket.receive_text())
                done, _ = await asyncio.wait({receive, sender}, return_when="FIRST_COMPLETED")
                if sender in done:
                    receive.cancel()
                    break
                text = receive.result()
                try:
                    msg = json.loads(text)
                except ValueError:
                    hub.send(sub, {"type": "error", "detail": "messages must be JSON"})
                    continue
                if not isinstance(msg, dict):
                    continue
                if "subscribe" in msg:
                    await subscribe(sub, msg["subscribe"])
                elif msg.get("type") == "ping":
                    hub.send(sub, {"type": "pong"})
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            hub.disconnect(sub)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    return router
