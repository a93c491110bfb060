"""The token stays out of the address bar, out of URLs the page builds, and out of the logs."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

pytestmark = pytest.mark.slow


def test_printed_url_trades_the_token_for_a_cookie(
    tmp_path: Any, live_server: Any, make_run: Any
) -> None:
    """Opening ``/?token=T&run=r`` answers 303 to ``/?run=r`` with an HttpOnly, SameSite=Strict
    cookie: the token leaves the address bar (and history, and Referer) at once."""
    make_run(tmp_path / "r")
    srv = live_server(token="t0ken-for-cookie")
    port = srv.url.rsplit(":", 1)[1]
    with httpx.Client(base_url=srv.url) as c:
        r = c.get("/", params={"token": srv.token, "run": "r"})
        assert r.status_code == 303
        assert r.headers["location"] == "/?run=r"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"hotcb_token_{port}=t0ken-for-cookie;")
        assert {p.strip() for p in cookie.split(";")[1:]} == {
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
        }
        assert "no-store" in r.headers["cache-control"]
        assert srv.token not in r.headers["location"]
        # the cookie now authenticates the page's calls, with no token in any URL
        assert c.get("/api/runs").status_code == 200
        assert c.get("/").status_code == 200
    with httpx.Client(base_url=srv.url) as c:
        # a wrong token is dropped from the address too, and earns no cookie
        r = c.get("/", params={"token": "wrong", "compare": "a,b"})
        assert r.status_code == 303 and r.headers["location"] == "/?compare=a%2Cb"
        assert "set-cookie" not in r.headers
        assert c.get("/api/runs").status_code == 401
        # a browser opening another address (e.g. /docs) is redirected the same way
        r = c.get("/docs", params={"token": srv.token}, headers={"Sec-Fetch-Mode": "navigate"})
        assert r.status_code == 303 and r.headers["location"] == "/docs"
        # "//evil.example/?token=…" must not turn into a redirect to another site
        r = c.get(f"{srv.url}//evil.example/", params={"token": srv.token})
        assert r.status_code in (303, 404)
        if r.status_code == 303:
            assert r.headers["location"].startswith("/") and not r.headers["location"].startswith(
                "//"
            )
    # scripts keep their ways in: the Bearer header, and (redacted from logs) ?token= on the API
    with srv.client() as c:
        assert c.get("/api/runs").status_code == 200
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/api/runs", params={"token": srv.token}).status_code == 200


def test_serve_logs_show_the_token_once_and_no_error(
    tmp_path: Any, serve: Any, make_run: Any
) -> None:
    """``hotcb serve --log-level info``: the token is printed once (the URL to click), never in
    an access-log or WebSocket log line, and a refused WebSocket logs no ERROR."""
    make_run(tmp_path / "runs" / "r")
    token = "l0g-t0ken-abcdefghijklmnop"
    srv = serve(tmp_path / "runs", "--log-level", "info", env={"HOTCB_TOKEN": token})
    ws = srv.url.replace("http://", "ws://") + "/ws"
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/", params={"token": token}).status_code == 303
        assert c.get("/api/runs", params={"token": token}).status_code == 200
        assert c.get("/api/runs", params={"token": "typo-of-the-token"}).status_code == 401
        assert c.get("/api/runs", params={"run": "x", "token": token}).status_code == 200
        # the name percent-encoded (read as "token" all the same): it was logged as it came
        assert c.get(f"/api/runs?tok%65n={token}").status_code == 200
    for url in (ws, ws + "?token=wr0ng-ws-token", ws + "?%74oken=wr0ng-ws-token"):
        with pytest.raises(InvalidStatus) as info, connect(url):
            pass
        assert info.value.response.status_code == 401
    with connect(ws + f"?token={token}") as sock:
        assert '"hello"' in sock.recv(timeout=10)
    with contextlib.closing(httpx.Client(base_url=srv.url)) as c:
        c.get("/api/health")
    srv.stop()
    out, err = srv.stdout(), srv.stderr()
    assert (out + err).count(token) == 1, out + err
    assert f"?token={token}" in out.splitlines()[0]  # the URL line, printed first
    assert "typo-of-the-token" not in out + err and "wr0ng-ws-token" not in out + err
    assert "token=[redacted]" in out + err  # the requests were logged, without the value
    assert '"WebSocket /ws" 401' in err  # the refusal itself is logged, at INFO
    assert "ERROR" not in err, err


def test_debug_logs_show_no_token_in_the_websocket_headers(
    tmp_path: Any, serve: Any, make_run: Any
) -> None:
    """At ``--log-level debug`` the WebSocket handshake logs every request header: the
    ``authorization`` and ``cookie`` headers carried the token into the log."""
    make_run(tmp_path / "runs" / "r")
    token = "d3bug-t0ken-abcdefghijklmnop"
    srv = serve(tmp_path / "runs", "--log-level", "debug", env={"HOTCB_TOKEN": token})
    ws = srv.url.replace("http://", "ws://") + "/ws"
    port = srv.url.rsplit(":", 1)[1]
    for header in ({"Authorization": f"Bearer {token}"}, {"Cookie": f"hotcb_token_{port}={token}"}):
        with connect(ws, additional_headers=header) as sock:
            assert '"hello"' in sock.recv(timeout=10)
    srv.stop()
    out, err = srv.stdout(), srv.stderr()
    assert "< authorization: [redacted]" in err and "< cookie: [redacted]" in err, err
    assert (out + err).count(token) == 1, out + err  # the URL to click, printed once
