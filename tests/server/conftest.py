"""A real uvicorn server on 127.0.0.1 (random free port) in a thread, per test."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
import uvicorn  # noqa: E402

from hotcb.server.app import create_app  # noqa: E402
from hotcb.server.config import DashboardConfig  # noqa: E402
from hotcb.testing import wait_for  # noqa: E402


@dataclass
class LiveServer:
    url: str
    ws_url: str
    config: DashboardConfig
    root: str
    deps: Any  # the app's hotcb.server.deps.Deps (registry, hub), for white-box checks

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


def _serve(
    config: DashboardConfig, static_dir: str | None = None
) -> tuple[uvicorn.Server, threading.Thread, int, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(config, static_dir=static_dir)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            ws="websockets-sansio",
            lifespan="on",
        )
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/api/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=20, what="the dashboard server to answer")
    return server, thread, port, app.state.deps


@pytest.fixture
def live_server(tmp_path: Any) -> Iterator[Callable[..., LiveServer]]:
    """``live_server(root=None, static_dir=None, **config)`` starts a server over ``root``
    (default: tmp_path); ``static_dir`` replaces the page's folder."""
    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(
        root: str | None = None, static_dir: str | None = None, **overrides: Any
    ) -> LiveServer:
        root = os.fspath(root or tmp_path)
        overrides.setdefault("tail_interval_sec", 0.02)
        config = DashboardConfig.load(None, dir=root, **overrides)
        server, thread, port, deps = _serve(config, static_dir)
        started.append((server, thread))
        url = f"http://127.0.0.1:{port}"
        return LiveServer(url, f"ws://127.0.0.1:{port}/ws", config, root, deps)

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(timeout=10)
