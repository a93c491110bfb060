"""The token stays out of the address bar, out of URLs the page builds, and out of the logs."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

pytestmark = pytest.mark.slow


def test_printed_url_hands_the_token_to_the_page_in_the_fragment(
    tmp_path: Any, live_server: Any, make_run: Any
) -> None:
    """Opening ``/?token=T&run=r`` answers 303 to ``/?run=r#token=T``: the token leaves the
    query (a fragment is never sent to a server, nor in a ``Referer``), and the page's script
    moves it into its own storage. No cookie is set: browsers send a host's cookies to every
    port of it. A cookie an older hotcb set is expired, and does not let a request in."""
    make_run(tmp_path / "r")
    srv = live_server(token="t0ken-for-the-page")
    port = srv.url.rsplit(":", 1)[1]
    with httpx.Client(base_url=srv.url) as c:
        r = c.get("/", params={"token": srv.token, "run": "r"})
        assert r.status_code == 303
        assert r.headers["location"] == "/?run=r#token=t0ken-for-the-page"
        assert "set-cookie" not in r.headers
        assert "no-store" in r.headers["cache-control"]
        assert r.headers["referrer-policy"] == "no-referrer"
        assert c.get("/api/runs").status_code == 401  # nothing was handed to the client
    with httpx.Client(base_url=srv.url) as c:
        # a wrong token is dropped from the address, and not handed on
        r = c.get("/", params={"token": "wrong", "compare": "a,b"})
        assert r.status_code == 303 and r.headers["location"] == "/?compare=a%2Cb"
        # a browser opening another public address (e.g. /docs) is redirected the same way
        r = c.get("/docs", params={"token": srv.token}, headers={"Sec-Fetch-Mode": "navigate"})
        assert r.status_code == 303 and r.headers["location"] == "/docs"
        # an API address opened in the browser answers: the token in it is what lets it in
        r = c.get("/api/runs", params={"token": srv.token}, headers={"Sec-Fetch-Mode": "navigate"})
        assert r.status_code == 200 and [x["run_id"] for x in r.json()["runs"]] == ["r"]
        # "//evil.example/?token=…" must not turn into a redirect to another site
        r = c.get(f"{srv.url}//evil.example/", params={"token": srv.token})
        assert r.status_code in (303, 404)
        if r.status_code == 303:
            assert r.headers["location"].startswith("/") and not r.headers["location"].startswith(
                "//"
            )
        # /index.html is the page too
        r = c.get("/index.html", params={"token": srv.token})
        assert r.status_code == 303
        assert r.headers["location"] == "/index.html#token=t0ken-for-the-page"
        assert c.get("/index.html").status_code == 200
    # the cookies older hotcbs set (per port, and before that one for every port) never let a
    # request in, and every answer tells the browser to drop them
    for legacy in (f"hotcb_token_{port}", "hotcb_token"):
        with httpx.Client(base_url=srv.url, cookies={legacy: srv.token}) as c:
            for r in (c.get("/api/runs"), c.get("/"), c.get("/", params={"token": srv.token})):
                assert (
                    r.status_code == 401
                    if r.url.path == "/api/runs"
                    else r.status_code
                    in (
                        200,
                        303,
                    )
                )
                assert r.headers["set-cookie"].startswith(f"{legacy}=; Max-Age=0; Path=/"), r
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
    ``authorization`` header, and the subprotocol the page offers its token in
    (``hotcb.token.<hex>``), carried the token into the log."""
    make_run(tmp_path / "runs" / "r")
    token = "d3bug-t0ken-abcdefghijklmnop"
    srv = serve(tmp_path / "runs", "--log-level", "debug", env={"HOTCB_TOKEN": token})
    ws = srv.url.replace("http://", "ws://") + "/ws"
    with connect(ws, additional_headers={"Authorization": f"Bearer {token}"}) as sock:
        assert '"hello"' in sock.recv(timeout=10)
    offered = ["hotcb", "hotcb.token." + token.encode().hex()]
    with connect(ws, subprotocols=offered) as sock:  # type: ignore[arg-type]
        assert sock.subprotocol == "hotcb"
        assert '"hello"' in sock.recv(timeout=10)
    srv.stop()
    out, err = srv.stdout(), srv.stderr()
    assert "< authorization: [redacted]" in err, err
    assert "< sec-websocket-protocol: [redacted]" in err, err
    assert token.encode().hex() not in out + err
    assert (out + err).count(token) == 1, out + err  # the URL to click, printed once


def test_trace_logs_show_no_token(tmp_path: Any, serve: Any, make_run: Any) -> None:
    """``--log-level trace`` logs each connection's ASGI scope: its query string, and the
    subprotocols the page's WebSocket offers its token in (``hotcb.token.<hex>``). A quote
    in a token sent raw by curl ended the redaction early."""
    make_run(tmp_path / "runs" / "r")
    token = "tr4ce-t0ken-it's-me"
    srv = serve(tmp_path / "runs", "--log-level", "trace", env={"HOTCB_TOKEN": token})
    ws = srv.url.replace("http://", "ws://") + "/ws"
    offered = ["hotcb", "hotcb.token." + token.encode().hex()]
    with connect(ws, subprotocols=offered) as sock:  # type: ignore[arg-type]
        assert '"hello"' in sock.recv(timeout=10)
    with connect(ws + "?token=" + quote(token)) as sock:
        assert '"hello"' in sock.recv(timeout=10)
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/api/runs", params={"token": token}).status_code == 200
        assert c.get(f"/api/runs?token={token}").status_code == 200  # the quote raw, as curl
    srv.stop()
    out, err = srv.stdout(), srv.stderr()
    assert "ASGI [" in err and "'subprotocols'" in err  # the scope was logged
    assert token.encode().hex() not in out + err
    assert "it's-me" not in err and quote(token) not in err and "it%27s-me" not in err, err
    assert token not in out + err
    assert (out + err).count(urlencode({"token": token})) == 1  # the URL to click, printed once


@pytest.mark.parametrize(
    "log",
    [
        lambda log: log.info("scope %s", {"query_string": b"token=S3CRET", "x": 1}),
        lambda log: log.info("scope %s", {"subprotocols": ["hotcb", "hotcb.token.53334352"]}),
        lambda log: log.info(ValueError("/x?token=S3CRET")),
        lambda log: log.info("%(path)s", {"path": "/ws?token=S3CRET"}),
        lambda log: log.info("< %s: %s", "sec-websocket-protocol", "hotcb.token.53334352"),
        lambda log: log.info("broken %d ?token=S3CRET", "not a number"),
        lambda log: log.exception("failed", exc_info=RuntimeError("/y?token=S3CRET")),
    ],
    ids=[
        "bytes-in-dict",
        "subprotocol-list",
        "non-str-msg",
        "dict-args",
        "header-dump",
        "bad-format",
        "traceback",
    ],
)
def test_every_shape_of_log_record_is_redacted(log: Any) -> None:
    """What reaches uvicorn's loggers comes in many shapes (a scope dict at trace level, an
    exception as the message, a traceback, a format string that does not fit its arguments):
    the token is out of each, and the filter itself never raises out of the caller's log
    call."""
    import io
    import logging

    from hotcb.server.logs import install_log_filters

    install_log_filters()
    logger = logging.getLogger("uvicorn.error")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        log(logger)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = out.getvalue()
    assert text and "S3CRET" not in text and "53334352" not in text, text
    assert "[redacted]" in text, text
