"""What a request may carry: JSON only for writes, a capped size, known fields, and paths that
stay inside the run directory (or a root allowed at start). Each attack hits a real server."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

PAUSE = {"module": "control", "op": "pause"}
#: A recipe with nothing to replay (a freeze request's recipe must exist: it is read and copied).
EMPTY_RECIPE = json.dumps({"v": 1, "kind": "hotcb.recipe"}) + "\n"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)


def _raw(url: str, head: bytes, timeout: float = 5) -> bytes:
    """Send ``head`` (request line and headers, no body) and return what the server answers
    before ``timeout``: a server that waits for the body answers nothing."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head)
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        return data


# ------------------------------------------------------------------------- response headers
def test_every_response_forbids_framing_and_sniffing(
    tmp_path: Any, live_server: Any, make_run: Any
) -> None:
    """CSP with ``frame-ancestors 'self'``, X-Frame-Options and nosniff on every HTTP answer:
    the page, its files, the API, and the refusals (401/404/415/413/303)."""
    make_run(tmp_path / "r")
    srv = live_server(max_body_bytes=2048)
    with srv.client() as c, srv.client(auth=False) as anon:
        answers = {
            "page": c.get("/"),
            "static": c.get("/static/app.js"),
            "api": c.get("/api/runs"),
            "health": anon.get("/api/health"),
            "401": anon.get("/api/runs"),
            "404": c.get("/api/runs/nope/status"),
            "415": c.post("/api/runs/r/commands", content=b"{}", headers={"Content-Type": "x/y"}),
            "413": c.post("/api/runs/r/commands", json={"x": "y" * 4096}),
            "303": anon.get("/", params={"token": srv.token}),
        }
        for what, r in answers.items():
            assert r.headers.get("content-security-policy") == CSP, what
            assert r.headers.get("x-frame-options") == "SAMEORIGIN", what
            assert r.headers.get("x-content-type-options") == "nosniff", what
        assert [answers[k].status_code for k in ("401", "404", "415", "413", "303")] == [
            401,
            404,
            415,
            413,
            303,
        ]
        # the API reference is under the same policy: no script, nothing from another site
        # (a script on this origin could read the token the page keeps in its storage)
        docs = c.get("/docs")
        assert docs.status_code == 200 and "POST /api/runs/{run_id}/commands" in docs.text
        assert docs.headers["content-security-policy"] == CSP
        assert "<script" not in docs.text.lower()
        linked = re.findall(r"""(?:src|href)=["']?([^"' >]+)""", docs.text)
        assert linked and [u for u in linked if not u.startswith(("/", "#", "data:"))] == [], linked


# ------------------------------------------------------------------------- content type
@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/merge-patch+json",
        "application/json-x",
        None,
    ],
)
def test_writes_that_are_not_json_are_refused(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any, ctype: str | None
) -> None:
    """The types a cross-site page can send without a CORS preflight (and any other non-JSON
    type) get 415 with the reason, on every write endpoint, before the body is parsed."""
    run = make_run(tmp_path / "r")
    srv = live_server()
    body = json.dumps(PAUSE).encode()
    headers = {"Content-Type": ctype} if ctype else {}
    with srv.client() as c:
        for path in ("/api/runs/r/commands", "/api/runs/r/freeze", "/api/runs/commands"):
            r = c.post(path, content=body, headers=headers)
            assert r.status_code == 415, (path, r.text)
            assert "application/json" in r.json()["detail"]
        for method in ("PUT", "PATCH", "DELETE"):
            r = c.request(method, "/api/runs/r/commands", content=body, headers=headers)
            assert r.status_code == 415, method
    assert read_commands(run) == []


def test_real_form_and_multipart_posts_are_refused(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any
) -> None:
    run = make_run(tmp_path / "r")
    srv = live_server()
    with srv.client() as c:
        r = c.post("/api/runs/r/commands", data={"module": "control", "op": "pause"})
        assert r.status_code == 415 and "x-www-form-urlencoded" in r.json()["detail"]
        r = c.post("/api/runs/r/commands", files={"f": ("c.json", json.dumps(PAUSE).encode())})
        assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
        # JSON with parameters is JSON
        r = c.post(
            "/api/runs/r/commands",
            content=json.dumps(PAUSE).encode(),
            headers={"Content-Type": "Application/JSON; charset=utf-8"},
        )
        assert r.status_code == 200, r.text
    assert [c["op"] for c in read_commands(run)] == ["pause"]


def test_non_json_write_is_refused_before_its_body_is_read(
    tmp_path: Any, live_server: Any, make_run: Any
) -> None:
    """The refusal is ours, not a side effect of body parsing: it comes back while the client
    has sent only the headers of a 10 MB text/plain body."""
    make_run(tmp_path / "r")
    srv = live_server()
    head = (
        "POST /api/runs/r/commands HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {srv.token}\r\nContent-Type: text/plain\r\n"
        "Content-Length: 10000000\r\n\r\n"
    ).encode()
    answer = _raw(srv.url, head)
    assert answer.startswith(b"HTTP/1.1 415"), answer


# ------------------------------------------------------------------------- size
def test_declared_oversized_body_is_413_before_reading(
    tmp_path: Any, live_server: Any, make_run: Any
) -> None:
    make_run(tmp_path / "r")
    srv = live_server()
    head = (
        "POST /api/runs/r/commands HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {srv.token}\r\nContent-Type: application/json\r\n"
        "Content-Length: 314572800\r\n\r\n"
    ).encode()
    answer = _raw(srv.url, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"connection: close" in answer.lower()


def test_a_body_a_little_over_the_cap_gets_its_413_not_a_reset(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any
) -> None:
    """A client sends its whole body before it reads the answer. A server that closed while
    the body still came made its kernel reset the connection, and the reset took the 413 with
    it: one 1 MiB command in five got "connection reset" instead of the reason."""
    run = make_run(tmp_path / "r")
    srv = live_server(max_body_bytes=2048)
    body = json.dumps({**PAUSE, "params": {"x": "y" * (1 << 20)}}).encode()
    with srv.client() as c:
        for _ in range(20):
            r = c.post("/api/runs/r/commands", content=body,
                       headers={"Content-Type": "application/json"})  # fmt: skip
            assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]
    assert read_commands(run) == []


def test_streamed_300mb_body_is_cut_off_at_the_cap(
    tmp_path: Any, serve: Any, make_run: Any, read_commands: Any
) -> None:
    """300 MB sent chunked (no Content-Length) to ``hotcb serve``: 413, and the server's
    memory does not grow with the body (it never holds more than the cap)."""
    psutil = pytest.importorskip("psutil")
    run = make_run(tmp_path / "runs" / "r")
    token = "size-t0ken"
    srv = serve(tmp_path / "runs", env={"HOTCB_TOKEN": token})
    proc = psutil.Process(srv.proc.pid)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=srv.url, headers=headers, timeout=60) as c:
        assert c.get("/api/runs").status_code == 200  # warm: imports and first request done
        rss_before = proc.memory_info().rss
        sent = [0]

        def body() -> Iterator[bytes]:
            yield b'{"module": "control", "op": "pause", "params": {"x": "'
            chunk = b"a" * (1 << 20)
            for _ in range(300):
                sent[0] += len(chunk)
                yield chunk
            yield b'"}}'

        r = c.post("/api/runs/r/commands", content=body())
        rss_after = proc.memory_info().rss
    assert r.status_code == 413, r.text
    assert "max_body_bytes" in r.json()["detail"]
    assert sent[0] < 100 * (1 << 20)  # the server closed the connection: the upload stopped
    assert rss_after - rss_before < 50 * (1 << 20), (rss_before, rss_after)
    assert read_commands(run) == []
    assert proc.is_running()
    assert httpx.get(srv.url + "/api/health").status_code == 200  # still serving


def test_unknown_and_oversized_command_fields_are_422(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any
) -> None:
    run = make_run(tmp_path / "r")
    srv = live_server()
    with srv.client() as c:
        r = c.post("/api/runs/r/commands", json={**PAUSE, "exec": "rm -rf /"})
        assert r.status_code == 422 and "unknown command field" in r.json()["detail"]
        assert "'exec'" in r.json()["detail"]
        # under the body cap, over the size of any real command
        big = {"module": "opt", "op": "set_params", "params": {"lr": 0.1}, "id": "x" * 200_000}
        r = c.post("/api/runs/r/commands", json=big)
        assert r.status_code == 422 and "bytes as JSON" in r.json()["detail"]
        assert len(r.text) < 2000  # the reason, not an echo of the field
        r = c.post("/api/runs/r/freeze", json={"mode": "prod", "shell": "x"})
        assert r.status_code == 422 and "shell" in r.json()["detail"]
    assert read_commands(run) == []


# ------------------------------------------------------------------------- paths
def test_paths_in_requests_must_stay_inside_the_run(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any
) -> None:
    """A recipe, an overlay or a checkpoint path outside the run directory (and the allowed
    roots) is refused with 403, and nothing is appended for the trainer to act on."""
    run = make_run(tmp_path / "runs" / "r")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.pt").write_bytes(b"precious")
    os.symlink(outside, os.path.join(run, "link-out"))
    srv = live_server(root=tmp_path / "runs")
    attempts = [
        ("freeze", {"mode": "replay", "recipe_path": "/any/absolute/path.jsonl"}),
        ("freeze", {"mode": "replay", "recipe_path": "../../elsewhere/r.jsonl"}),
        ("freeze", {"mode": "replay", "recipe_path": "link-out/r.jsonl"}),
        ("freeze", {"mode": "replay_adjusted", "recipe_path": "r.jsonl", "adjust_path": "/etc"}),
        ("commands", {"module": "control", "op": "checkpoint", "params": {"path": str(outside)}}),
        (
            "commands",
            {"module": "control", "op": "checkpoint", "params": {"path": "~/ckpt.pt"}},
        ),
        (
            "commands",
            {"module": "freeze", "op": "set", "mode": "replay", "recipe_path": "/tmp/r.jsonl"},
        ),
        (
            "commands",
            {"module": "freeze", "op": "set", "params": {"mode": "replay", "recipe_path": "/x"}},
        ),
    ]
    with srv.client() as c:
        for endpoint, body in attempts:
            r = c.post(f"/api/runs/r/{endpoint}", json=body)
            assert r.status_code == 403, (body, r.text)
            assert "outside the run directory" in r.json()["detail"]
        r = c.post("/api/runs/r/commands", json={**PAUSE, "params": {}, "recipe_path": 3})
        assert r.status_code == 422
        # inside the run, but one of its own files: a checkpoint or a logger written over the
        # commands file or the ledger (the next command was lost, the audit trail erased)
        for body in (
            {"module": "control", "op": "checkpoint", "params": {"path": "hotcb.commands.jsonl"}},
            {"module": "control", "op": "checkpoint", "params": {"path": "./hotcb.applied.jsonl"}},
            {"module": "cb", "op": "set_params", "id": "jl",
             "params": {"path": "hotcb.applied.jsonl"}},
        ):  # fmt: skip
            r = c.post("/api/runs/r/commands", json=body)
            assert r.status_code == 403, (body, r.text)
            assert "is one of the run's own files" in r.json()["detail"]
    assert read_commands(run) == []
    assert (outside / "model.pt").read_bytes() == b"precious"

    # inside the run directory: accepted
    with open(os.path.join(run, "r.jsonl"), "w") as f:
        f.write(EMPTY_RECIPE)
    with srv.client() as c:
        ok = {"module": "control", "op": "checkpoint", "params": {"path": "ckpt/last.pt"}}
        assert c.post("/api/runs/r/commands", json=ok).status_code == 200
        body = {"mode": "replay", "recipe_path": os.path.join(run, "r.jsonl")}
        assert c.post("/api/runs/r/freeze", json=body).status_code == 200
    assert len(read_commands(run)) == 2


def test_allowed_root_widens_the_confinement(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any
) -> None:
    run = make_run(tmp_path / "runs" / "r")
    shared = tmp_path / "recipes"
    shared.mkdir()
    (shared / "a.jsonl").write_text(EMPTY_RECIPE)
    srv = live_server(root=tmp_path / "runs", allowed_roots=[str(shared)])
    with srv.client() as c:
        body = {"mode": "replay", "recipe_path": str(shared / "a.jsonl")}
        assert c.post("/api/runs/r/freeze", json=body).status_code == 200
        body = {"mode": "replay", "recipe_path": str(tmp_path / "recipes-evil" / "a.jsonl")}
        assert c.post("/api/runs/r/freeze", json=body).status_code == 403
    assert len(read_commands(run)) == 1


def test_refused_path_reveals_neither_content_nor_existence(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any
) -> None:
    """``/etc/passwd`` and a missing file get the same answer, bar the path itself, and the
    answer holds nothing of the file."""
    run = make_run(tmp_path / "r")
    srv = live_server()
    with open("/etc/passwd") as f:
        first_line = f.readline().strip()
    answers = {}
    with srv.client() as c:
        for path in ("/etc/passwd", "/etc/no-such-file-hotcb"):
            body = {"mode": "replay_adjusted", "recipe_path": "r.jsonl", "adjust_path": path}
            answers[path] = c.post("/api/runs/r/freeze", json=body)
    exists, missing = answers["/etc/passwd"], answers["/etc/no-such-file-hotcb"]
    assert exists.status_code == missing.status_code == 403
    assert exists.text.replace("/etc/passwd", "P") == missing.text.replace(
        "/etc/no-such-file-hotcb", "P"
    )
    assert first_line not in exists.text and "root:" not in exists.text
    assert read_commands(run) == []


def test_a_recipe_that_loads_code_is_not_replayed_from_the_dashboard(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any
) -> None:
    """With code loading off, `cb load` from the dashboard is refused, but a freeze that
    replays a recipe holding a `cb load` of a user's file was accepted: the recipe loaded the
    code on the token holder's word. A recipe of hotcb's bundled callbacks still replays."""
    run = make_run(tmp_path / "runs" / "r")

    def recipe(name: str, target: dict[str, Any]) -> str:
        load = {"v": 1, "at": {"step": 5, "event": "train_step_end"}, "module": "cb",
                "op": "load", "id": "p", "params": {}, "target": target}  # fmt: skip
        path = os.path.join(run, name)
        with open(path, "w") as f:
            f.write(json.dumps({"v": 1, "kind": "hotcb.recipe"}) + "\n" + json.dumps(load) + "\n")
        return path

    code = recipe("code.jsonl", {"kind": "python_file", "path": "/tmp/x/sidefx.py",
                                 "symbol": "P"})  # fmt: skip
    bundled = recipe("bundled.jsonl", {"kind": "python_path",
                                       "path": "hotcb.modules.cb.callbacks",
                                       "symbol": "HeartbeatCallback"})  # fmt: skip
    srv = live_server(root=tmp_path / "runs")
    with srv.client() as c:
        for endpoint, body in (
            ("freeze", {"mode": "replay", "recipe_path": code}),
            ("commands", {"module": "freeze", "op": "set", "mode": "replay",
                          "recipe_path": "code.jsonl"}),
            # a null field is dropped from the command written, and the trainer reads the
            # mode from params: the check saw no replay and the code ran in the trainer
            ("commands", {"module": "freeze", "op": "set", "mode": None,
                          "params": {"mode": "replay", "recipe_path": "code.jsonl"}}),
            ("commands", {"module": "freeze", "op": "set", "mode": "replay",
                          "recipe_path": None, "params": {"recipe_path": "code.jsonl"}}),
        ):  # fmt: skip
            r = c.post(f"/api/runs/r/{endpoint}", json=body)
            assert r.status_code == 403, r.text
            assert "the recipe loads code (line 2: cb load p (/tmp/x/sidefx.py))" in r.text
        assert read_commands(run) == []
        ok = c.post("/api/runs/r/freeze", json={"mode": "replay", "recipe_path": bundled})
        assert ok.status_code == 200, ok.text
    assert len(read_commands(run)) == 1
    srv = live_server(root=tmp_path / "runs", allow_code_load=True)
    with srv.client() as c:
        ok = c.post("/api/runs/r/freeze", json={"mode": "replay", "recipe_path": code})
        assert ok.status_code == 200, ok.text
