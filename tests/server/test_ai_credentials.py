"""Credentials inside the LLM autopilot's base URL (``--ai-base-url
'http://user:PASS@host/v1?api-key=SECRET'``, how some gateways take their key) were written to
``hotcb.ai.jsonl``, ``hotcb.ai.state.json`` and ``hotcb.autopilot.state.json`` and served by
``GET /api/runs/{id}/autopilot``. The autopilot runs here against a real chat-completions
server on 127.0.0.1 (:class:`hotcb.testing.chat_server.ScriptedChatServer`), steering a real
kernel; the dashboard is a real server over the same folder."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from hotcb.autopilot.ai import AI_STATE, AIConfig
from hotcb.autopilot.engine import Autopilot
from hotcb.testing import read_ledger, wait_for
from hotcb.testing.chat_server import NOTHING, ScriptedChatServer

pytest.importorskip("openai")
pytestmark = pytest.mark.slow

PASSWORD = "pw-" + "7f3a9c1e5b"
QUERY_KEY = "qk-" + "d2e8b4a6c0"
HALVE = {"json": {"reasoning": "flat loss: halve lr",
                  "actions": [{"action": "lr_mult", "params": {"factor": 0.5}}],
                  "next_check": None}}  # fmt: skip


def _secret_url(base: str) -> str:
    return base.replace("http://", f"http://hotcb:{PASSWORD}@") + f"?api-key={QUERY_KEY}&v=2"


def _leaks(text: str) -> list[str]:
    basic = base64.b64encode(f"hotcb:{PASSWORD}".encode()).decode()
    return [s for s in (PASSWORD, QUERY_KEY, basic) if s in text]


def test_credentials_in_the_base_url_reach_no_file_and_no_answer(
    tmp_path: Path, flat_run: Any, live_server: Any
) -> None:
    run = flat_run(tmp_path / "r", steps=0)
    # a page that is not the API (its error names base_url) and that quotes the request's
    # Authorization (the Basic login of user:PASS@), then an action, then nothing
    script = [{"html": "<html>debug: {authorization}</html>"}, HALVE, NOTHING]
    with ScriptedChatServer(script) as chat:
        config = AIConfig(base_url=_secret_url(chat.base_url), model="scripted",
                          every_steps=20, min_interval_sec=0.0, timeout_sec=30.0,
                          max_retries=0, backoff_sec=0.0, settle_steps=10)  # fmt: skip
        pilot = Autopilot(run.path, mode="ai_auto", ai=config, key_metric="loss", ai_key="k")
        try:
            for _ in range(40):  # a round every 10 steps, each call waited for
                run.advance(10)
                pilot.step()
                wait_for(lambda: pilot.ai is not None and not pilot.ai.busy, 60, what="a reply")
                if any(e.get("source") == "ai" for e in read_ledger(run.path)):
                    break
        finally:
            pilot.close()
        requests = list(chat.requests)
    # the calls themselves went to the whole URL, credentials and all
    assert len(requests) >= 2
    assert all(r["path"] == f"/v1/chat/completions?api-key={QUERY_KEY}&v=2" for r in requests)
    assert all(_leaks(r["headers"]["authorization"]) for r in requests)
    (applied,) = [e for e in read_ledger(run.path) if e.get("source") == "ai"]
    assert applied["decision"] == "applied"

    files = [p for p in Path(run.path).rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"hotcb.ai.jsonl", AI_STATE, "hotcb.autopilot.state.json"} <= names
    assert {str(p): _leaks(p.read_text(errors="replace")) for p in files} == {
        str(p): [] for p in files
    }
    shown = _secret_url(chat.base_url).replace(PASSWORD, "***").replace(QUERY_KEY, "***")
    with open(os.path.join(run.path, "hotcb.ai.jsonl")) as f:
        log = [json.loads(line) for line in f]
    (error,) = [r for r in log if r["kind"] == "error"]  # the page that is not the API
    assert f"is base_url ({shown}) the API's address" in error["error"]
    (page,) = [r for r in log if r["kind"] == "response" and "debug" in r["text"]]
    assert page["text"] == "<html>debug: Basic ***</html>"
    with open(os.path.join(run.path, AI_STATE)) as f:
        state = json.load(f)
    assert state["base_url"] == state["settings"]["base_url"] == shown
    srv = live_server(root=tmp_path)
    with srv.client() as c:
        r = c.get("/api/runs/r/autopilot")
    assert r.status_code == 200, r.text
    assert r.json()["ai"]["base_url"] == shown
    assert _leaks(r.text) == []


def test_a_state_file_that_holds_the_whole_url_is_shown_redacted(
    tmp_path: Path, flat_run: Any, live_server: Any
) -> None:
    """``hotcb.ai.state.json`` written by an earlier hotcb holds the base URL whole: the
    dashboard redacts what it shows of it."""
    run = flat_run(tmp_path / "r", steps=3)
    url = _secret_url("http://127.0.0.1:9/v1")
    doc = {"v": 1, "base_url": url, "model": "m", "calls": 1,
           "fallback": f"3 failed calls in a row (last: malformed: is base_url ({url}) …)"}  # fmt: skip
    with open(os.path.join(run.path, AI_STATE), "w") as f:
        json.dump(doc, f)
    srv = live_server(root=tmp_path)
    with srv.client() as c:
        r = c.get("/api/runs/r/autopilot")
    assert r.status_code == 200, r.text
    ai = r.json()["ai"]
    assert ai["base_url"] == "http://hotcb:***@127.0.0.1:9/v1?api-key=***&v=2"
    assert ai["model"] == "m" and _leaks(r.text) == []
