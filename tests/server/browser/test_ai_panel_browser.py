"""The Autopilot panel with the LLM autopilot, in headless Chromium against a real ``hotcb
serve`` process: the model's line (model, endpoint, calls, spend and budget), its fallback to the
rules, and the model's reasoning beside its proposals and decisions, always as text.

The run's files are written here, as the engine and the LLM policy write them
(``hotcb.autopilot.state.json``, ``hotcb.autopilot.jsonl``, ``hotcb.ai.state.json``), so what
the page shows is known to the character; the server reads them as it reads any run's. Tests
wait on conditions with generous deadlines, never on sleeps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hotcb import jsonl
from hotcb.autopilot.ai import AI_STATE
from hotcb.autopilot.engine import RECORDS, STATE
from hotcb.autopilot.rules import load_rules
from hotcb.metrics import MetricsCollector
from hotcb.server.testing import ServeProcess

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TOKEN = "ai-panel-token"
CARD = "#autopilot-card"
BASE_URL = "http://127.0.0.1:8099/v1"
#: A reasoning that would be markup if the page took it as HTML.
XSS = 'lr looks too high <img src=x onerror="window.pwned=1"> & <b>bold</b>'
PROPOSAL_WHY = "<script>window.pwned=2</script> weight decay: the gap to val grows"
AI = {
    "v": 1, "base_url": BASE_URL, "model": "scripted", "calls": 3, "spent_usd": 0.0012,
    "budget_usd": 1.0, "left_usd": 0.9988, "price_known": True,
    "tokens": {"prompt": 900, "completion": 150}, "failures": 0, "fallback": None,
    "structured": True, "last_call_step": 400, "next_check_step": None, "in_flight": False,
    "learnings": [], "summarized": False, "settings": {"base_url": BASE_URL, "model": "scripted"},
}  # fmt: skip


def write_run(run: str, ai: dict[str, Any]) -> None:
    """A run whose LLM autopilot (ai_auto, headless) replied three times, acted on one reply,
    had one asked action rejected, and has one AI proposal pending."""
    with MetricsCollector(run) as m:
        for s in range(20):
            m.log(s, {"loss": 1.0 - s * 0.001})
    now = time.time()
    jsonl.write_json_atomic(os.path.join(run, STATE), {
        "v": 1, "mode": "ai_auto", "key_metric": "loss", "direction": "minimize",
        "rules": [r.to_dict() for r in load_rules().rules], "rules_path": None, "step": 412,
        "disabled": [], "updated": now,
    })  # fmt: skip
    jsonl.write_json_atomic(os.path.join(run, AI_STATE), {**ai, "updated": now})
    records = [
        {"kind": "ai_reply", "call": 3, "step": 410, "state": "replied", "reasoning": XSS,
         "cost_usd": 0.0004},
        {"kind": "action", "rule": "ai", "step": 412, "state": "applied",
         "action": {"name": "lr_mult", "params": {"factor": 0.5}}, "cmd_ids": ["01KAI"],
         "reason": f"ai (call 3): {XSS}", "reasoning": XSS, "call": 3},
        {"kind": "action", "rule": "ai", "step": 412, "state": "rejected", "call": 3,
         "asked": {"action": "lr_mult", "params": {"factor": 40}},
         "reason": "factor=40 is above the maximum 10"},
        {"kind": "proposal", "id": "A4", "rule": "ai", "source": "ai", "step": 412,
         "action": {"name": "wd_mult", "params": {"factor": 2}}, "reasoning": PROPOSAL_WHY,
         "describe": f"wd_mult(factor=2): {PROPOSAL_WHY}", "state": "pending", "call": 3},
    ]  # fmt: skip
    for rec in records:
        jsonl.append(os.path.join(run, RECORDS), {**rec, "mode": "ai_auto", "wall_time": now})


@pytest.fixture(scope="module")
def served(tmp_path_factory: Any) -> Iterator[tuple[str, ServeProcess]]:
    root = os.fspath(tmp_path_factory.mktemp("ai-panel"))
    srv = ServeProcess(root, env={"HOTCB_TOKEN": TOKEN})
    srv.start(timeout=60)
    yield root, srv
    srv.stop()


def wait_page(page: Any, expr: str, timeout: float = 60) -> dict[str, Any]:
    """Wait until the JS expression over ``d`` (= ``window.hotcb.debug()``) is truthy."""
    fn = f"() => {{ const d = window.hotcb && window.hotcb.debug(); return !!(d && ({expr})); }}"
    page.wait_for_function(fn, timeout=timeout * 1000)
    return page.evaluate("window.hotcb.debug()")  # type: ignore[no-any-return]


def text(page: Any, selector: str) -> str:
    """The one element's text as the DOM holds it (``textContent``)."""
    loc = page.locator(selector)
    assert loc.count() == 1, (selector, loc.count())
    return loc.text_content()  # type: ignore[no-any-return]


def test_ai_line_and_reasoning_are_shown_as_text(page: Any, served: Any) -> None:
    root, srv = served
    run = os.path.join(root, "ai")
    write_run(run, AI)
    page.goto(f"{srv.url}/?token={TOKEN}&run=ai")
    d = wait_page(
        page, "d.connected && d.run === 'ai' && d.autopilot.ai && d.autopilot.pending.length"
    )
    assert d["autopilot"]["mode"] == "ai_auto"
    assert text(page, f"{CARD} .ap-mode") == "ai_auto"

    # the model's line: model and endpoint, calls, spend and what is left of the budget
    assert text(page, f"{CARD} .ap-ai-what") == f"LLM scripted at {BASE_URL}"
    assert text(page, f"{CARD} .ap-ai-calls") == "3 calls"
    assert text(page, f"{CARD} .ap-ai-cost") == "$0.0012 spent of $1.00, $0.9988 left"
    assert page.locator(f"{CARD} .ap-ai-price, {CARD} .ap-ai-fallback").count() == 0
    assert page.locator(f"{CARD} .ap-ai").is_visible()

    # the AI's decisions in the recent list, newest first, each with the model's reasoning
    assert d["autopilot"]["recent"] == ["action:ai", "action:ai", "ai_reply:"]
    applied = f'{CARD} li.ap-rec[data-kind="action"]:has(.ap-state-applied)'
    assert text(page, f"{applied} .ap-describe") == "lr_mult(factor=0.5) applied"
    assert text(page, f"{applied} .ap-rec-rule") == "ai"
    assert text(page, f"{applied} .ap-reasoning") == XSS
    reply = f'{CARD} li.ap-rec[data-kind="ai_reply"]'
    assert text(page, f"{reply} .ap-dec-ai_reply") == "AI reply"
    assert text(page, f"{reply} .ap-describe") == "call 3 replied ($0.0004)"
    assert text(page, f"{reply} .ap-reasoning") == XSS
    rejected = f'{CARD} li.ap-rec[data-kind="action"]:has(.ap-state-rejected)'
    assert text(page, f"{rejected} .ap-describe") == (
        "rejected: lr_mult(factor=40) — factor=40 is above the maximum 10"
    )
    assert page.locator(f"{rejected} .ap-reasoning").count() == 0

    # the AI's pending proposal, with the model's reasoning under it
    prop = f'{CARD} li.ap-proposal[data-id="A4"]'
    assert text(page, f"{prop} .what") == "wd_mult(factor=2)"
    assert page.locator(f"{prop} .ap-accept").get_attribute("title") == (
        "send wd_mult(factor=2) now (source ai, reason: the model's reasoning)"
    )
    assert text(page, f"{CARD} li.ap-because.ap-reasoning") == PROPOSAL_WHY

    # text, never markup: no element came of the model's words, and none of its script ran
    assert page.locator(f"{CARD} img, {CARD} script, {CARD} b").count() == 0
    assert page.evaluate("window.pwned") is None
    assert page.locator(f"{CARD} .ap-reasoning").first.is_visible()

    # the policy falls back to the rules, and no price is known: the line says both, live
    fallback = "the budget of $1 is spent ($1.0003 in 9 calls)"
    jsonl.write_json_atomic(os.path.join(run, AI_STATE), {
        **AI, "calls": 9, "spent_usd": 0.0, "left_usd": 1.0, "price_known": False,
        "fallback": fallback, "updated": time.time(),
    })  # fmt: skip
    jsonl.append(os.path.join(run, RECORDS), {
        "kind": "fallback", "step": 900, "mode": "ai_auto", "wall_time": time.time(),
        "reason": f"LLM autopilot: {fallback}; the rules take over",
    })  # fmt: skip
    d = wait_page(page, "d.autopilot.ai.fallback && d.autopilot.recent[0] === 'fallback:'")
    assert text(page, f"{CARD} .ap-ai-calls") == "9 calls"
    assert text(page, f"{CARD} .ap-ai-cost") == "$0.0000 spent of $1.00, $1.0000 left"
    assert text(page, f"{CARD} .ap-ai-price") == "price unknown: counted as $0"
    assert text(page, f"{CARD} .ap-ai-fallback") == f"fallen back to the rules: {fallback}"
    row = f'{CARD} li.ap-rec[data-kind="fallback"]'
    assert text(page, f"{row} .ap-dec-fallback") == "fallback"
    assert text(page, f"{row} .ap-describe") == f"LLM autopilot: {fallback}; the rules take over"


def test_ai_line_fits_at_1280x720(browser: Any, served: Any) -> None:
    """A long endpoint and a long fallback reason wrap inside the card: nothing overflows
    sideways, and the panel's head stays one line."""
    root, srv = served
    run = os.path.join(root, "ai-long")
    long_url = "https://llm-gateway.internal.example.com/" + "v1/" * 30
    write_run(run, {**AI, "base_url": long_url, "fallback": "3 failed calls in a row " * 12})
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{srv.url}/?token={TOKEN}&run=ai-long")
        wait_page(page, "d.connected && d.run === 'ai-long' && d.autopilot.ai")
        m = page.evaluate("""() => {
          const card = document.querySelector('#autopilot-card');
          const box = (sel) => card.querySelector(sel).getBoundingClientRect();
          return {
            width: window.innerWidth, scrollWidth: document.documentElement.scrollWidth,
            cardOverflow: card.scrollWidth - card.clientWidth,
            ai: box('.ap-ai-box'), side: box('.ap-side'), recent: box('.ap-recent-box'),
            head: box('.card-head').height,
          };
        }""")
        assert m["scrollWidth"] <= m["width"], m
        assert m["cardOverflow"] <= 0, m
        assert m["ai"]["bottom"] <= m["side"]["top"] and m["ai"]["bottom"] <= m["recent"]["top"], m
        assert m["head"] <= 32, m
        assert errors == []
    finally:
        ctx.close()
