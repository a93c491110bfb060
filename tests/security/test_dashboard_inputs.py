"""Input that a token holder (or a page) may send that once stalled or broke the server: a
WebSocket ``subscribe`` that names one run 170 000 times (1 MB, under the cap: a refresh and a
snapshot per copy, 26 s of a blocked event loop), or thousands of runs; and a run id with a NUL
byte (a 500 with a traceback). Each against a real server and a real WebSocket client."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _until_pong(ws: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """Send a ping and return every message that came before its pong: the server handles a
    connection's messages in order, so what a subscribe sent it sent by then."""
    ws.send(json.dumps({"type": "ping"}))
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
        if msg.get("type") == "pong":
            return got
        got.append(msg)


def _subscribe(srv: Any, ids: list[str]) -> list[dict[str, Any]]:
    """What one fresh connection gets for ``{"subscribe": ids}`` (after its hello)."""
    with srv.ws() as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        ws.send(json.dumps({"subscribe": ids}))
        return _until_pong(ws)


def test_a_run_named_many_times_is_subscribed_once(
    tmp_path: Any, live_server: Any, make_run: Any
) -> None:
    """``["r1"] * 170000`` gets the snapshot of a single subscribe; the server answers the
    next request at once (the same thread runs both)."""
    make_run(tmp_path / "r1")
    srv = live_server(status_interval_sec=3600)  # no periodic status among the snapshots
    _subscribe(srv, ["r1"])  # the run's first read pushes its autopilot document once more
    once = _subscribe(srv, ["r1"])
    assert Counter(m["type"] for m in once) == {
        "actuators": 1, "tune": 1, "autopilot": 1, "status": 1,
    }  # fmt: skip
    ids = ["r1"] * 170_000
    assert len(json.dumps({"subscribe": ids})) < srv.config.max_body_bytes
    flood = _subscribe(srv, ids)
    assert [(m["type"], m.get("run")) for m in flood] == [(m["type"], m["run"]) for m in once]
    # spelled other ways, it is the same run
    again = _subscribe(srv, ["r1", "r1/", "./r1", "r1"])
    assert [m["type"] for m in again] == [m["type"] for m in once]
    with srv.client() as c:
        assert c.get("/api/health").json()["ok"] is True


def test_a_subscribe_naming_too_many_runs_is_refused_whole(
    tmp_path: Any, live_server: Any, make_run: Any
) -> None:
    make_run(tmp_path / "r1")
    srv = live_server(status_interval_sec=3600)
    ids = ["r1"] + [f"nope-{i}" for i in range(5000)]
    (error,) = _subscribe(srv, ids)
    assert error == {"type": "error", "detail": "subscribe names 5001 runs; at most 1000 at once"}
    # at the limit, each unknown run gets its error and the known one its snapshot
    answer = _subscribe(srv, ["r1", *[f"nope-{i}" for i in range(3)]])
    assert [m["type"] for m in answer].count("error") == 3
    assert {m["type"] for m in answer if m.get("run") == "r1"} == {
        "actuators", "tune", "autopilot", "status",
    }  # fmt: skip


def test_a_run_id_with_a_nul_byte_is_no_such_run(
    tmp_path: Any, live_server: Any, make_run: Any
) -> None:
    make_run(tmp_path / "r1")
    srv = live_server()
    with srv.client() as c:
        for path in ("/api/runs/r1%00/status", "/api/runs/%00/metrics", "/api/runs/r1%00x/ledger"):
            r = c.get(path)
            assert r.status_code == 404, (path, r.text)
            assert r.json()["detail"].startswith("no run '"), r.text
        r = c.post("/api/runs/r1%00/commands", json={"module": "control", "op": "pause"})
        assert r.status_code == 404, r.text
        assert c.get("/api/runs/r1/status").status_code == 200
    (error,) = _subscribe(srv, ["r1\x00"])
    assert error["type"] == "error" and error["run"] == "r1\x00"
    assert error["detail"].startswith("no run 'r1\\x00'")
