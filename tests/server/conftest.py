"""A real uvicorn server on 127.0.0.1 (random free port) in a thread, per test
(:func:`hotcb.server.testing.serve_in_thread`). Its clients carry the server's token
(generated: a token is on by default); ``client(auth=False)`` / ``ws(auth=False)`` do not."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")

from hotcb.server.config import DashboardConfig
from hotcb.server.testing import LiveServer, serve_in_thread

__all__ = ["LiveServer"]


@pytest.fixture
def live_server(tmp_path: Any) -> Iterator[Callable[..., LiveServer]]:
    """``live_server(root=None, static_dir=None, **config)`` starts a server over ``root``
    (default: tmp_path); ``static_dir`` replaces the page's folder."""
    started: list[LiveServer] = []

    def start(
        root: str | None = None, static_dir: str | None = None, **overrides: Any
    ) -> LiveServer:
        root = os.fspath(root or tmp_path)
        overrides.setdefault("tail_interval_sec", 0.02)
        config = DashboardConfig.load(None, dir=root, **overrides)
        srv = serve_in_thread(config, static_dir)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
