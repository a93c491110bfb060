"""The LLM autopilot behind the dashboard, end to end: ``hotcb serve --autopilot ai_auto`` as a
real process, a real trainer process under the served folder, and a scripted chat-completions
server (:class:`hotcb.testing.chat_server.ScriptedChatServer`) standing in for the paid API.

What it shows: the model's action reaches the ledger with source ``ai``; the run's autopilot
document carries the model, its endpoint, its calls and the model's reasoning; no request to
the dashboard can change where the model is or what it is; and the endpoint's key, given to the
server in ``HOTCB_AI_KEY`` only, is in no answer of any GET endpoint the API lists, no page
file, no WebSocket message and no file under the served folder. Tests wait on conditions with
deadlines, never on sleeps."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from hotcb import HotClient, jsonl
from hotcb.autopilot.engine import RECORDS
from hotcb.server.testing import ServeProcess
from hotcb.testing import read_ledger, wait_for
from hotcb.testing.chat_server import NOTHING, ScriptedChatServer

pytestmark = pytest.mark.slow

ENV = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}
TOKEN = "ai-dashboard-token"
STATIC = Path(__file__).resolve().parents[2] / "src" / "hotcb" / "server" / "static"
REASONING = "the loss is flat; halving the learning rate (scripted reply)"
#: The first reply halves lr; every later one changes nothing.
SCRIPT = [
    {"json": {"reasoning": REASONING,
              "actions": [{"action": "lr_mult", "params": {"factor": 0.5}}],
              "next_check": None}},
    NOTHING,
]  # fmt: skip
AI_CONFIG = """\
every_steps: 40
min_interval_sec: 0
backoff_sec: 0
timeout_sec: 20
budget_usd: 5
prices:
  scripted: {input: 1.0, output: 2.0}
"""


class Site:
    """The served folder ``runs/`` with one trainer (``runs/r``), the server, the model."""

    def __init__(self, base: Path, chat: ScriptedChatServer, key: str) -> None:
        self.root = os.fspath(base / "runs")
        self.run = os.path.join(self.root, "r")
        self.logs = os.fspath(base / "logs")
        os.makedirs(self.root)
        os.makedirs(self.logs)
        self.chat = chat
        self.key = key
        config = base / "ai.yaml"
        config.write_text(AI_CONFIG)
        args = ["--autopilot", "ai_auto", "--key-metric", "loss", "--ai-base-url", chat.base_url,
                "--ai-model", "scripted", "--ai-config", os.fspath(config)]  # fmt: skip
        env = {"HOTCB_TOKEN": TOKEN, "HOTCB_AUTOPILOT__INTERVAL_SEC": "0.2", "HOTCB_AI_KEY": key}
        # the server's logs beside the run: a plain file there once kept the AI autopilot
        # from starting (it reads the learnings of the folders beside the run)
        self.server = ServeProcess(self.root, args=args, env=env)
        self.trainer: subprocess.Popen[bytes] | None = None

    def start_trainer(self) -> None:
        argv = [sys.executable, "-m", "hotcb.testing.trainer", "--run-dir", self.run,
                "--steps", "1000000", "--step-delay", "0.01"]  # fmt: skip
        with open(os.path.join(self.logs, "trainer.log"), "wb") as log:
            self.trainer = subprocess.Popen(argv, env=ENV, stdout=log, stderr=subprocess.STDOUT)

    def stop_trainer(self) -> None:
        if self.trainer is None or self.trainer.poll() is not None:
            return
        if os.path.exists(os.path.join(self.run, "hotcb.run.json")):
            HotClient(self.run, source="cli").stop()
        try:
            self.trainer.wait(60)
        except subprocess.TimeoutExpired:
            self.trainer.kill()
            self.trainer.wait(10)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, timeout=30,
                            headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    key = "sk-hotcb-test-" + secrets.token_hex(16)
    with ScriptedChatServer(SCRIPT) as chat:
        s = Site(tmp_path, chat, key)
        s.server.start(timeout=60)
        try:
            s.start_trainer()
            yield s
        finally:
            s.stop_trainer()
            s.server.stop()


def autopilot_doc(c: httpx.Client) -> dict[str, Any]:
    r = c.get("/api/runs/r/autopilot")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_ai_auto_acts_shows_its_reasoning_and_never_shows_the_key(site: Site) -> None:
    # -- the model's action, applied by the run, with source "ai"
    def ai_change() -> dict[str, Any] | None:
        return next((e for e in read_ledger(site.run) if e.get("source") == "ai"
                     and e.get("decision") == "applied"), None)  # fmt: skip

    entry = wait_for(ai_change, 180, what="the model's lr cut in the ledger")
    assert (entry["module"], entry["op"]) == ("opt", "set_params")
    old, new = entry["changes"]["lr"]["old"], entry["changes"]["lr"]["new"]
    assert new == pytest.approx(old * 0.5)
    assert entry["reason"].startswith(f"ai (call 1): {REASONING}")
    # the key went to the model's endpoint, and that is the only place it went
    assert site.chat.requests, "the scripted model was never asked"
    for req in site.chat.requests:
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"]["authorization"] == f"Bearer {site.key}"
        assert req["body"]["model"] == "scripted"

    with site.client() as c:
        # -- the run's autopilot document: the model, its endpoint, its calls, its reasoning
        doc = wait_for(lambda: (d := autopilot_doc(c))["ai"] and d["ai"]["calls"] >= 1
                       and any(r["kind"] == "ai_reply" for r in d["recent"]) and d,
                       60, what="the AI in the autopilot document")  # fmt: skip
        assert doc["mode"] == "ai_auto" and doc["in_server"] is True
        ai = doc["ai"]
        assert (ai["model"], ai["base_url"]) == ("scripted", site.chat.base_url)
        assert ai["price_known"] is True and ai["spent_usd"] > 0
        assert ai["budget_usd"] == 5 and ai["left_usd"] == pytest.approx(5 - ai["spent_usd"])
        assert ai["fallback"] is None and ai["failures"] == 0
        assert set(ai) == {"base_url", "model", "calls", "spent_usd", "budget_usd", "left_usd",
                           "price_known", "failures", "fallback", "in_flight",
                           "next_check_step"}  # fmt: skip
        replies = [r for r in doc["recent"] if r["kind"] == "ai_reply"]
        assert all(r["state"] == "replied" for r in replies), replies
        recs = list(jsonl.iter_records(os.path.join(site.run, RECORDS)))
        (first,) = [r for r in recs if r["kind"] == "ai_reply" and r["call"] == 1]
        assert first["reasoning"] == REASONING
        (action,) = [r for r in recs if r["kind"] == "action" and r["rule"] == "ai"]
        assert action["state"] == "applied" and action["reasoning"] == REASONING
        assert action["cmd_ids"] == [entry["cmd_id"]]
        wait_for(lambda: any(r["kind"] == "action" and r.get("rule") == "ai"
                             and r.get("reasoning") == REASONING
                             for r in autopilot_doc(c)["recent"]),
                 30, what="the AI action in recent")  # fmt: skip

        # -- no request to the dashboard sets where the model is, or the mode
        with ScriptedChatServer() as decoy:
            asked = {"ai_base_url": decoy.base_url, "base_url": decoy.base_url,
                     "ai_model": "decoy", "mode": "ai_suggest"}  # fmt: skip
            paths = ["/api/runs/r/autopilot", "/api/runs/autopilot", "/api/config",
                     "/api/autopilot", "/api/autopilot/config", "/api/runs/r/autopilot/config",
                     "/api/runs/r/autopilot/ai", "/api/runs/r/config", "/api/runs/r/ai"]  # fmt: skip
            for path in paths:
                for method in ("POST", "PUT", "PATCH"):
                    r = c.request(method, path, json=asked)
                    assert r.status_code in (404, 405, 422), (method, path, r.status_code, r.text)
            for path in ("/api/runs/r/autopilot/rules/plateau_cut_lr",
                         "/api/runs/r/autopilot/proposals/A1"):  # fmt: skip
                r = c.post(path, json={"enabled": True, "decision": "accept", **asked})
                assert r.status_code == 422, (path, r.status_code, r.text)
            command = {"module": "autopilot", "op": "set_params", "params": asked}
            r = c.post("/api/runs/r/commands", json=command)
            assert r.status_code == 422, r.text
            # the server still asks its own model, at its own address, as its own mode
            calls = autopilot_doc(c)["ai"]["calls"]
            asks = len(site.chat.requests)
            doc = wait_for(lambda: (d := autopilot_doc(c))["ai"]["calls"] > calls and d, 60,
                           what="a later call to the model")  # fmt: skip
            # the count goes up when the call starts, before its request reaches the model
            wait_for(lambda: len(site.chat.requests) > asks, 60, what="its request at the model")
            assert (doc["mode"], doc["ai"]["base_url"], doc["ai"]["model"]) == (
                "ai_auto", site.chat.base_url, "scripted",
            )  # fmt: skip
            assert decoy.requests == []
            config = c.get("/api/config").json()
            assert config["autopilot"]["ai_base_url"] == site.chat.base_url

        # -- the key: in no GET answer the API lists, no page file, no WebSocket message
        answers = _every_get(c, "r")
        answers += _ws_snapshot(site)
    for where, text in answers:
        assert site.key not in text, f"the key is in {where}"
    assert len(answers) > 15, [w for w, _ in answers]  # the enumeration found the API

    # ... and in no file under the served folder (run files, state files), nor in the logs
    site.stop_trainer()
    site.server.stop()
    scanned = []
    for top in (site.root, site.logs):
        for dirpath, _, files in os.walk(top):
            for name in files:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    assert site.key.encode() not in f.read(), f"the key is in {path}"
                scanned.append(os.path.relpath(path, os.path.dirname(top)))
    assert {"runs/r/hotcb.ai.jsonl", "runs/r/hotcb.ai.state.json", "runs/r/hotcb.autopilot.jsonl",
            "runs/r/hotcb.applied.jsonl", "logs/trainer.log"} <= set(scanned), scanned  # fmt: skip
    assert "Traceback" not in site.server.stderr(), site.server.stderr()


def _every_get(c: httpx.Client, run: str) -> list[tuple[str, str]]:
    """``(where, text)`` of every GET endpoint in the app's OpenAPI schema (for ``run``), the
    schema itself, the page and every file of the page's folder."""
    r = c.get("/openapi.json")
    assert r.status_code == 200, r.text
    out = [("/openapi.json", r.text)]
    gets = [p for p, ops in r.json()["paths"].items() if "get" in ops]
    assert "/api/runs/{run_id}/autopilot" in gets, gets
    for path in gets:
        url = path.replace("{run_id}", run)
        assert "{" not in url, f"a path parameter this test does not fill: {path}"
        resp = c.get(url)
        assert resp.status_code < 500, (url, resp.status_code, resp.text)
        out.append((f"GET {url} ({resp.status_code})", resp.text + json.dumps(dict(resp.headers))))
    for url in ("/", "/docs", f"/?run={run}"):
        resp = c.get(url)
        assert resp.status_code == 200, (url, resp.status_code)
        out.append((f"GET {url}", resp.text))
    for file in sorted(STATIC.rglob("*")):
        if file.is_file():
            url = "/static/" + file.relative_to(STATIC).as_posix()
            resp = c.get(url)
            assert resp.status_code == 200, (url, resp.status_code)
            out.append((f"GET {url}", resp.content.decode(errors="replace")))
    return out


def _ws_snapshot(site: Site) -> list[tuple[str, str]]:
    """Every WebSocket message from the hello to the run's autopilot snapshot (with ``ai``) and
    a status message."""
    got: list[tuple[str, str]] = []
    seen: set[str] = set()
    url = site.server.url.replace("http://", "ws://") + "/ws"
    with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        ws.send(json.dumps({"subscribe": ["r"]}))
        deadline = time.monotonic() + 60
        while not {"autopilot", "status"} <= seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no autopilot snapshot and status over the WebSocket: {seen}"
            text = ws.recv(timeout=left)
            assert isinstance(text, str)
            msg = json.loads(text)
            got.append((f"WebSocket {msg.get('type')}", text))
            if msg.get("type") == "autopilot":
                assert msg["doc"]["ai"]["model"] == "scripted"
            seen.add(str(msg.get("type")))
    return got
