"""The LLM autopilot (modes ai_auto and ai_suggest) against a real chat-completions server on
127.0.0.1 (:class:`hotcb.testing.chat_server.ScriptedChatServer`, the stand-in for a paid API)
and a real kernel: replies applied or proposed, malformed and out-of-bounds replies, time-outs
and rate limits with back-off and the fallback to the rules, the budget, the key, the memory
of earlier runs, training that goes on while the model hangs, and ``hotcb autopilot`` itself.

The quick tests run a real kernel and optimizer in this process (the loss is ``f(lr, step)``),
one autopilot round every 10 steps; after a round that started a call, the loop waits for the
reply to come back, so the next round acts on it. The slow ones run the real trainer process.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcb import HotClient, HotKernel, jsonl
from hotcb.autopilot.ai import AI_LOG, AI_STATE, KEY_ENV, AIConfig, cost_usd
from hotcb.autopilot.engine import RECORDS, Autopilot, decide, proposals
from hotcb.cli._autopilot import _line
from hotcb.runfiles import COMMANDS
from hotcb.testing import read_ledger, wait_for
from hotcb.testing.chat_server import NOTHING, ScriptedChatServer

torch = pytest.importorskip("torch")

#: Subprocesses never inherit a run directory or a key from the developer's shell.
ENV = {k: v for k, v in os.environ.items() if k not in ("HOTCB_DIR", KEY_ENV)}
CHAT_PATH = "/v1/chat/completions"

HALVE_WHY = "the loss has been flat for a while; a smaller lr should help it settle"
HALVE: dict[str, Any] = {
    "json": {
        "reasoning": HALVE_WHY,
        "actions": [{"action": "lr_mult", "params": {"factor": 0.5}}],
        "next_check": None,
    }
}

DIVERGENCE_ONLY = """\
rules:
  - id: divergence_cut_lr
    when: {detector: divergence, metric: train}
    then: {action: lr_mult, params: {factor: 0.1}}
    cooldown_steps: 60
    confidence: high
"""


def falling(_lr: float, step: int) -> float:
    return math.exp(-step / 100)  # 8 % better every 8 steps: no rule detects anything


def flat(_lr: float, _step: int) -> float:
    return 1.0  # a plateau from the start


class Loop:
    """A real kernel and optimizer in this process; logs ``loss`` and ``lr`` every step."""

    def __init__(self, run_dir: Path, f: Callable[[float, int], float], lr: float) -> None:
        self.run_dir = str(run_dir)
        self.kernel = HotKernel(self.run_dir, poll_interval_sec=0.0)
        self.opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        self.f, self.step = f, 0

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def run(self, steps: int, pilot: Autopilot, wait: bool = True) -> list[dict[str, Any]]:
        """``steps`` training steps, an autopilot round every 10; a call a round starts is
        waited for (unless ``wait`` is False), so the next round acts on its reply."""
        out: list[dict[str, Any]] = []
        for _ in range(steps):
            self.step += 1
            metrics = {"loss": self.f(self.lr, self.step), "lr": self.lr}
            self.kernel.apply({"step": self.step, "optimizer": self.opt, "metrics": metrics})
            if self.step % 10 == 0:
                out += pilot.step()
                if wait:
                    wait_reply(pilot)
        return out

    def run_until(self, done: Callable[[], Any], pilot: Autopilot, limit: int) -> Any:
        """Train in rounds of 10 steps until ``done()`` holds (at most ``limit`` steps)."""
        for _ in range(0, limit, 10):
            self.run(10, pilot)
            found = done()
            if found:
                return found
        raise AssertionError(f"not done after {limit} steps: {done}")


def wait_reply(pilot: Autopilot) -> None:
    """Until the call in flight (if any) has come back."""
    ai = pilot.ai
    if ai is not None:
        wait_for(lambda: not ai.busy, 120, what="the model's reply")


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Callable[..., Loop]]:
    made: list[Loop] = []

    def make(run_dir: Path | None = None, f: Callable[[float, int], float] = falling,
             lr: float = 1e-2) -> Loop:  # fmt: skip
        lp = Loop(run_dir or tmp_path / "runs" / "run", f, lr)
        made.append(lp)
        return lp

    yield make
    for lp in made:
        lp.kernel.close()


def ai_config(srv: ScriptedChatServer, **changes: Any) -> AIConfig:
    """Settings for a test: the scripted server, a call every 20 steps, no minimum interval,
    no SDK retries, a short back-off."""
    settings: dict[str, Any] = {
        "base_url": srv.base_url, "model": "scripted", "every_steps": 20,
        "min_interval_sec": 0.0, "timeout_sec": 30.0, "max_retries": 0, "backoff_sec": 0.05,
        "settle_steps": 10,
    }  # fmt: skip
    return AIConfig(**{**settings, **changes})


def records(run_dir: str | Path, name: str, kind: str | None = None) -> list[dict[str, Any]]:
    recs = list(jsonl.iter_records(os.path.join(os.fspath(run_dir), name)))
    return [r for r in recs if kind is None or r.get("kind") == kind]


def by_source(run_dir: str | Path, source: str) -> list[dict[str, Any]]:
    return [e for e in read_ledger(run_dir) if e.get("source") == source]


def user_message(request: dict[str, Any]) -> str:
    (user,) = [m["content"] for m in request["body"]["messages"] if m["role"] == "user"]
    return str(user)


# ---------------------------------------------------------------------------------- ai_auto
def test_a_valid_reply_is_applied_with_its_reasoning(loop: Any) -> None:
    lp: Loop = loop()
    with ScriptedChatServer([HALVE, NOTHING]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
        lp.run(60, pilot)
    (entry,) = by_source(lp.run_dir, "ai")
    assert entry["decision"] == "applied" and entry["op"] == "set_params"
    assert entry["reason"].startswith("ai (call 1): ") and HALVE_WHY in entry["reason"]
    assert entry["changes"]["lr"]["new"] == pytest.approx(5e-3)
    assert lp.lr == pytest.approx(5e-3) and not by_source(lp.run_dir, "autopilot")

    calls = records(lp.run_dir, AI_LOG, "call")
    assert [(c["call"], c["step"]) for c in calls] == [(1, 20), (2, 40), (3, 60)]  # every 20
    call = calls[0]
    assert call["why"] == "every 20 steps" and call["model"] == "scripted"
    assert call["base_url"] == srv.base_url
    assert [m["role"] for m in call["messages"]] == ["system", "user"]
    response = records(lp.run_dir, AI_LOG, "response")[0]
    assert response["call"] == 1 and json.loads(response["text"]) == HALVE["json"]
    assert response["usage"]["prompt_tokens"] > 0 and response["usage"]["completion_tokens"] > 0
    assert response["cost_usd"] == 0.0  # "scripted" has no price: counted as $0
    decision = records(lp.run_dir, AI_LOG, "decision")[0]
    assert decision["call"] == 1 and decision["reasoning"] == HALVE_WHY
    assert decision["applied"] == [
        {"name": "lr_mult", "params": {"factor": 0.5}, "cmd_ids": [entry["cmd_id"]]}
    ]
    assert decision["rejected"] == []
    (action,) = records(lp.run_dir, RECORDS, "action")
    assert action["rule"] == "ai" and action["state"] == "applied"
    assert action["reasoning"] == HALVE_WHY and action["cmd_ids"] == [entry["cmd_id"]]
    assert [r["path"] for r in srv.requests] == [CHAT_PATH] * 3
    assert all(r["body"]["model"] == "scripted" for r in srv.requests)


def test_a_malformed_reply_does_nothing_and_the_next_cadence_asks_again(loop: Any) -> None:
    lp: Loop = loop()
    script = [{"content": "sure! I think lr is fine"}, HALVE, NOTHING]
    with ScriptedChatServer(script) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
        lp.run(30, pilot)  # asked at step 20; the round at step 30 reads the reply
        assert len(srv.requests) == 1 and not by_source(lp.run_dir, "ai")
        assert lp.lr == 1e-2
        lp.run(30, pilot)  # asked again at step 40 (every 20 steps); applied at step 50
    (error,) = records(lp.run_dir, AI_LOG, "error")
    assert error["call"] == 1 and error["error_kind"] == "malformed"
    assert error["backoff_sec"] == 0.0 and error["failures"] == 1
    failed = [r for r in records(lp.run_dir, RECORDS, "ai_reply") if r["call"] == 1]
    assert [(r["state"], r["error_kind"]) for r in failed] == [("failed", "malformed")]
    assert "no action" in failed[0]["reason"]
    calls = records(lp.run_dir, AI_LOG, "call")
    assert [c["step"] for c in calls[:2]] == [20, 40]  # every_steps 20 after the first
    (entry,) = by_source(lp.run_dir, "ai")
    assert entry["reason"].startswith("ai (call 2): ") and entry["decision"] == "applied"
    assert lp.lr == pytest.approx(5e-3)
    assert pilot.ai is not None and pilot.ai.failures == 0  # a good reply resets the count


def test_a_page_that_is_not_the_api_is_named_as_such(loop: Any) -> None:
    """A base_url that reaches a web page (200, text/html) instead of the API: the SDK hands
    the body over as a string; the reply was logged as empty and the page's text was lost."""
    lp: Loop = loop()
    with ScriptedChatServer([{"html": "<html><body>Welcome to the web UI</body></html>"},
                             NOTHING]) as srv:  # fmt: skip
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
        lp.run(30, pilot)
    (failed,) = [r for r in records(lp.run_dir, RECORDS, "ai_reply") if r["call"] == 1]
    assert failed["state"] == "failed" and failed["error_kind"] == "malformed"
    assert "did not answer with JSON ('<html><body>Welcome to the web UI" in failed["reason"]
    assert f"is base_url ({srv.base_url}) the API's address" in failed["reason"]
    (response,) = [r for r in records(lp.run_dir, AI_LOG, "response") if r["call"] == 1]
    assert "Welcome to the web UI" in response["text"]  # what came back is kept
    assert lp.lr == 1e-2


def test_a_server_without_response_format_gets_plain_requests(loop: Any) -> None:
    """llama.cpp-style servers refuse ``response_format``: the same call is sent again without
    it, the reply is read by the tolerant parser, and later calls go plain from the start."""
    lp: Loop = loop()
    fenced = {"content": "Sure.\n```json\n" + json.dumps(HALVE["json"]) + "\n```"}
    with ScriptedChatServer([{"reject_response_format": True}, fenced, NOTHING]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
        lp.run(40, pilot)
    first, again, later = (r["body"] for r in srv.requests[:3])
    assert "response_format" in first and "response_format" not in again
    assert "response_format" not in later
    (entry,) = by_source(lp.run_dir, "ai")
    assert entry["decision"] == "applied" and HALVE_WHY in entry["reason"]
    assert records(lp.run_dir, AI_LOG, "structured_off")
    assert json.loads((Path(lp.run_dir) / AI_STATE).read_text())["structured"] is False


def test_an_out_of_bounds_action_is_rejected_with_its_reason(loop: Any) -> None:
    lp: Loop = loop()
    too_big = {"action": "lr_mult", "params": {"factor": 5}}
    fine = {"action": "lr_mult", "params": {"factor": 0.5}}
    reply = {"json": {"reasoning": "go faster", "actions": [too_big, fine], "next_check": None}}
    with ScriptedChatServer([reply, NOTHING]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
        lp.run(40, pilot)
    decision = records(lp.run_dir, AI_LOG, "decision")[0]
    (rejected,) = decision["rejected"]
    assert rejected["asked"] == too_big
    assert "lr_mult factor=5 is outside its bounds [0.1, 2]" in rejected["reason"]
    (refused,) = [r for r in records(lp.run_dir, RECORDS, "action") if r["state"] == "rejected"]
    assert refused["asked"] == too_big and "outside its bounds" in refused["reason"]
    # nothing was sent for it; the valid action of the same reply still applies
    sent = [c for c in jsonl.iter_records(os.path.join(lp.run_dir, COMMANDS))
            if c.get("source") == "ai"]  # fmt: skip
    (entry,) = by_source(lp.run_dir, "ai")
    assert [c["cmd_id"] for c in sent] == [entry["cmd_id"]]
    assert decision["applied"] == [{"name": "lr_mult", "params": {"factor": 0.5},
                                    "cmd_ids": [entry["cmd_id"]]}]  # fmt: skip
    assert entry["changes"]["lr"]["new"] == pytest.approx(5e-3) and lp.lr == pytest.approx(5e-3)


def test_timeouts_and_rate_limits_back_off_then_the_rules_take_over(
    loop: Any, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(DIVERGENCE_ONLY)

    high = 0  # steps in a row above lr 0.05, where the loss doubles every 8 steps

    def f(lr: float, _step: int) -> float:
        nonlocal high
        high = high + 1 if lr > 0.05 else 0
        return float(2 ** (high / 8))

    lp: Loop = loop(f=f)
    script = [{"hang": 30}, {"status": 429, "retry_after": 0}]
    with ScriptedChatServer(script) as srv:
        cfg = ai_config(srv, timeout_sec=0.5, max_failures=3)
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=cfg, rules=str(rules),
                          key_metric="loss")  # fmt: skip
        assert pilot.rules_do == "sense"
        lp.run_until(lambda: records(lp.run_dir, RECORDS, "fallback"), pilot, limit=5000)
        assert pilot.rules_do == "auto" and len(srv.requests) == 3
        assert not by_source(lp.run_dir, "autopilot")
        # a schedule gone wrong, outside hotcb (the trainer's --lr-jump): the loss diverges
        lp.opt.param_groups[0]["lr"] *= 15
        entry = lp.run_until(lambda: by_source(lp.run_dir, "autopilot"), pilot, limit=500)[0]
        assert len(srv.requests) == 3  # the model is not asked any more
    errors = records(lp.run_dir, AI_LOG, "error")
    assert [e["error_kind"] for e in errors] == ["timeout", "rate_limit", "rate_limit"]
    assert [e["failures"] for e in errors] == [1, 2, 3]
    assert [e["backoff_sec"] for e in errors] == pytest.approx([0.05, 0.1, 0.2])  # doubling
    (fallback,) = records(lp.run_dir, AI_LOG, "fallback")
    assert fallback["reason"].startswith("3 failed calls in a row (last: rate_limit")
    (fell,) = records(lp.run_dir, RECORDS, "fallback")
    assert "3 failed calls in a row" in fell["reason"] and "the rules take over" in fell["reason"]
    state = json.loads(Path(lp.run_dir, AI_STATE).read_text())
    assert state["fallback"] == fallback["reason"] and state["failures"] == 3
    assert entry["decision"] == "applied" and entry["op"] == "set_params"
    assert entry["reason"].startswith("autopilot rule divergence_cut_lr: divergence on loss")
    assert entry["changes"]["lr"]["new"] == pytest.approx(0.15 * 0.1)
    assert not by_source(lp.run_dir, "ai")


def test_a_malformed_reply_does_not_double_the_next_wait(loop: Any) -> None:
    """A malformed reply is asked again at the next cadence, without a wait; it doubled the
    wait of the errors after it all the same (a probe: a first 500 after six bad replies
    waited 64 times ``backoff_sec``)."""
    lp: Loop = loop()
    script = [{"content": "not json"}, {"content": "still not json"}, {"status": 500}]
    with ScriptedChatServer(script) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_auto", key_metric="loss",
                          ai=ai_config(srv, max_failures=4))  # fmt: skip
        lp.run_until(lambda: records(lp.run_dir, AI_LOG, "fallback"), pilot, limit=2000)
    errors = records(lp.run_dir, AI_LOG, "error")
    assert [e["error_kind"] for e in errors] == ["malformed", "malformed", "status_500",
                                                 "status_500"]  # fmt: skip
    assert [e["backoff_sec"] for e in errors] == pytest.approx([0, 0, 0.05, 0.1])


def test_the_model_changes_one_knob_at_a_time_and_waits_after_an_undo(loop: Any) -> None:
    """While the guard judges the model's last change, its next knob changes are refused (each
    change is judged on its own, so a wild policy cannot stack changes the guard never sees);
    after the guard undid one, the model waits twice the settle time."""
    lr0 = 1e-2
    lp: Loop = loop(f=lambda lr, step: math.exp(-step / 100) * (1.0 if lr >= lr0 else 3.0))
    with ScriptedChatServer([HALVE]) as srv:  # halve, every call
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv, settle_steps=30),
                          key_metric="loss")  # fmt: skip
        lp.run(200, pilot)
    reasons = [r["reason"] for r in records(lp.run_dir, RECORDS, "action")
               if r["state"] == "rejected"]  # fmt: skip
    applied = [r for r in records(lp.run_dir, RECORDS, "action") if r["state"] == "applied"]
    first = applied[0]["step"]
    judging = f"the guard is still judging the change of step {first} (until step {first + 30}"
    assert any(r.startswith(judging) for r in reasons), reasons
    (guard, *_) = records(lp.run_dir, RECORDS, "guard")
    assert guard["rule"] == "ai" and "undo_cmd_id" in guard  # halving tripled the loss
    wait = (
        f"the guard undid the model's last change; no knob changes until step {guard['step'] + 60}"
    )
    assert wait in reasons
    assert applied[1]["step"] >= guard["step"] + 60


UNDO: dict[str, Any] = {
    "json": {"reasoning": "the last change did not help; take it back",
             "actions": [{"action": "undo"}], "next_check": None}
}  # fmt: skip


def test_the_models_undo_leaves_a_persons_change_alone(loop: Any) -> None:
    """``undo`` took back the run's newest change whoever made it: in a probe the model's undo
    took back a person's ``set lr`` inside its hold, then, asked again, the model's own
    earlier cuts one by one. It now names the newest change and is refused when a person
    made it; the person's value stands."""
    lp: Loop = loop()
    with ScriptedChatServer([HALVE, NOTHING, UNDO]) as srv:  # the undo at every later call
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
        lp.run(45, pilot)  # halved at step 30
        assert lp.lr == pytest.approx(5e-3)
        HotClient(lp.run_dir).opt(lr=2e-2)  # a person
        lp.run(80, pilot)  # the model asks for an undo at steps 60, 80, 100, 120
    assert lp.lr == 2e-2
    assert not [e for e in read_ledger(lp.run_dir) if e.get("op") == "undo"]
    refused = [r for r in records(lp.run_dir, RECORDS, "action")
               if r["state"] == "rejected" and r["asked"]["action"] == "undo"]  # fmt: skip
    assert len(refused) >= 2
    assert all("a person changed opt.lr" in r["reason"] or "a person's" in r["reason"]
               for r in refused), refused  # fmt: skip


def test_the_models_undo_takes_back_its_own_change_once(loop: Any) -> None:
    """The model's undo names its own last change; asked again, it finds nothing more of its
    own to take back instead of reaching further back."""
    lp: Loop = loop()
    HotClient(lp.run_dir).opt(weight_decay=0.05)  # a person's change, before the model's
    with ScriptedChatServer([HALVE, NOTHING, UNDO]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
        (halve,) = lp.run_until(lambda: by_source(lp.run_dir, "ai"), pilot, 200)
        undo = lp.run_until(lambda: [e for e in by_source(lp.run_dir, "ai")
                                     if e["op"] == "undo"], pilot, 600)  # fmt: skip
        lp.run(60, pilot)  # asked twice more
    assert [u["params"]["cmd_id"] for u in undo] == [halve["cmd_id"]]
    assert lp.lr == 1e-2 and lp.opt.param_groups[0]["weight_decay"] == 0.05
    assert len([e for e in read_ledger(lp.run_dir) if e.get("op") == "undo"]) == 1
    last = [r for r in records(lp.run_dir, RECORDS, "action") if r["state"] == "rejected"][-1]
    assert "the last change is a person's (opt set_params" in last["reason"], last


def test_an_accepted_undo_proposal_takes_back_no_persons_change(loop: Any) -> None:
    """The model proposed an undo of its change; a person set the lr meanwhile. Accepting the
    proposal would have taken back the person's set: the accept is refused, saying why."""
    lp: Loop = loop()
    with ScriptedChatServer([HALVE, UNDO, NOTHING]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_suggest", ai=ai_config(srv), key_metric="loss")
        lp.run(30, pilot)
        decide(lp.run_dir, proposals(lp.run_dir)[0]["id"], accept=True, by="test")
        lp.run_until(lambda: [p for p in proposals(lp.run_dir)
                              if p["action"]["name"] == "undo"], pilot, 200)  # fmt: skip
        HotClient(lp.run_dir).opt(lr=2e-2)
        lp.run(10, pilot)
        (undo,) = [p for p in proposals(lp.run_dir) if p["action"]["name"] == "undo"]
        with pytest.raises(ValueError, match=r"the last change is a person's \(opt set_params"):
            decide(lp.run_dir, undo["id"], accept=True, by="test")
        lp.run(10, pilot)
    assert lp.lr == 2e-2 and undo["state"] == "pending"


def test_an_undo_proposal_takes_back_the_change_it_was_made_for_or_nothing(loop: Any) -> None:
    """An undo proposal named no change: accepted after another proposal (a weight-decay
    change), it took that one back instead of the lr cut it was proposed about. It names its
    change now, and the accept is refused once that change is no longer the newest."""
    lp: Loop = loop()
    both = {"json": {"reasoning": "the lr cut did not help; take it back",
                     "actions": [{"action": "undo"},
                                 {"action": "wd_mult", "params": {"factor": 2}}],
                     "next_check": None}}  # fmt: skip
    with ScriptedChatServer([HALVE, both, NOTHING]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_suggest", ai=ai_config(srv), key_metric="loss")
        lp.run(30, pilot)
        decide(lp.run_dir, proposals(lp.run_dir)[0]["id"], accept=True, by="test")
        (cut,) = lp.run_until(lambda: by_source(lp.run_dir, "ai"), pilot, 200)
        undo, wd = lp.run_until(lambda: [p for p in proposals(lp.run_dir)
                                         if p["state"] == "pending"], pilot, 200)  # fmt: skip
        assert undo["action"]["name"] == "undo" and undo["undo_of"] == cut["cmd_id"]
        assert undo["describe"].startswith("undo() of opt.lr (ai, step ")
        decide(lp.run_dir, wd["id"], accept=True, by="test")
        lp.run_until(lambda: len(by_source(lp.run_dir, "ai")) == 2, pilot, 200)
        with pytest.raises(
            ValueError,
            match=r"the change it was proposed to take back "
            rf"\({cut['cmd_id']}\) is no longer the newest",
        ):
            decide(lp.run_dir, undo["id"], accept=True, by="test")
        lp.run(10, pilot)
    assert lp.lr == pytest.approx(5e-3) and lp.opt.param_groups[0]["weight_decay"] == 0.02


def test_a_spent_budget_hands_over_to_the_rules(loop: Any) -> None:
    lp: Loop = loop()
    with ScriptedChatServer([NOTHING]) as srv:
        cfg = ai_config(srv, model="gpt-4o-mini", budget_usd=1e-5)  # a price hotcb knows
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=cfg, key_metric="loss")
        lp.run(100, pilot)
    assert len(srv.requests) == 1  # one call spent it all
    (response,) = records(lp.run_dir, AI_LOG, "response")
    usage = response["usage"]
    spent = cost_usd("gpt-4o-mini", usage["prompt_tokens"], usage["completion_tokens"])
    assert spent is not None and spent > 1e-5
    assert response["cost_usd"] == pytest.approx(spent)
    (fallback,) = records(lp.run_dir, AI_LOG, "fallback")
    assert "budget" in fallback["reason"] and "$1e-05" in fallback["reason"]
    (fell,) = records(lp.run_dir, RECORDS, "fallback")
    assert "budget" in fell["reason"] and fell["step"] == 30  # the round after the reply
    state = json.loads(Path(lp.run_dir, AI_STATE).read_text())
    assert state["spent_usd"] == pytest.approx(spent, abs=1e-6) and state["left_usd"] == 0
    assert state["calls"] == 1 and "budget" in state["fallback"]
    assert pilot.rules_do == "auto"


def test_an_autopilot_started_again_with_a_new_budget_asks_the_model_again(loop: Any) -> None:
    """The rules took over when the budget was spent; an autopilot started again with a larger
    budget restored that fallback and never called the model (its status said both "$0.41
    of $5" and "the budget of $0.05 is spent")."""
    lp: Loop = loop()
    with ScriptedChatServer([NOTHING]) as srv:
        spent = ai_config(srv, model="gpt-4o-mini", budget_usd=1e-5)
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=spent, key_metric="loss")
        lp.run(100, pilot)
        assert len(srv.requests) == 1 and pilot.rules_do == "auto"
        pilot.close()
        again = Autopilot(lp.run_dir, mode="ai_auto", key_metric="loss",
                          ai=ai_config(srv, model="gpt-4o-mini", budget_usd=1.0))  # fmt: skip
        lp.run(100, again)
        assert len(srv.requests) >= 2  # asked again
        state = json.loads(Path(lp.run_dir, AI_STATE).read_text())
        assert state["fallback"] is None and state["budget_usd"] == 1.0
        (again_record,) = records(lp.run_dir, AI_LOG, "model_again")
        assert "the budget of $1e-05 is spent" in again_record["reason"]
        again.close()
        still = Autopilot(lp.run_dir, mode="ai_auto", key_metric="loss",
                          ai=ai_config(srv, model="gpt-4o-mini", budget_usd=1e-5))  # fmt: skip
        asked = len(srv.requests)
        lp.run(50, still)
        assert len(srv.requests) == asked  # still spent: the rules at once, said with its budget
        state = json.loads(Path(lp.run_dir, AI_STATE).read_text())
        assert state["fallback"].startswith("the budget of $1e-05 is spent")


def test_a_detection_asks_the_model_before_its_cadence(loop: Any) -> None:
    lp: Loop = loop(f=flat)
    with ScriptedChatServer([NOTHING]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv, every_steps=1000),
                          key_metric="loss")  # fmt: skip
        lp.run(20, pilot)
    (detection,) = records(lp.run_dir, RECORDS, "detection")
    assert detection["rule"] == "plateau_cut_lr" and detection["step"] == 10
    (call,) = records(lp.run_dir, AI_LOG, "call")
    assert call["step"] == 10 and call["why"] == "a detector fired"
    context = json.loads(user_message(srv.requests[0]).split("\n")[1])
    assert [d["rule"] for d in context["detections"]] == ["plateau_cut_lr"]
    assert not by_source(lp.run_dir, "autopilot")  # the rules only sense in an AI mode


# ---------------------------------------------------------------------------------- the key
def test_the_key_goes_only_to_the_configured_server_and_is_never_written(
    loop: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = "sk-hotcb-test-" + secrets.token_hex(16)
    monkeypatch.setenv(KEY_ENV, key)
    lp: Loop = loop()
    # a 401, malformed replies, then a proposal: error paths are where a key would leak, and
    # each of these quotes the request's Authorization header back (a debug page, a proxy: the
    # page's text reached the records, the state files and the dashboard's API unscrubbed)
    script = [
        {"status": 401, "message": "bad key: {authorization}"},
        {"html": "<html>debug: {authorization} is not valid here</html>"},
        {"content": "no JSON here, {authorization}"},
        HALVE, NOTHING,
    ]  # fmt: skip
    with ScriptedChatServer(script) as srv, ScriptedChatServer() as decoy:
        # the SDK's own environment points elsewhere: the configured base URL must win
        monkeypatch.setenv("OPENAI_BASE_URL", decoy.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-env-must-not-be-sent")
        config = ai_config(srv, max_failures=5)  # three failures in a row: not yet the rules
        pilot = Autopilot(lp.run_dir, mode="ai_suggest", ai=config, key_metric="loss")
        lp.run_until(lambda: proposals(lp.run_dir), pilot, limit=5000)
        (proposal,) = proposals(lp.run_dir)
        decide(lp.run_dir, proposal["id"], accept=True, by="test")
        lp.run(40, pilot)
    assert len(srv.requests) >= 3 and not decoy.requests
    assert all(r["path"] == CHAT_PATH for r in srv.requests)
    assert all(r["headers"]["authorization"] == f"Bearer {key}" for r in srv.requests)
    assert [e["error_kind"] for e in records(lp.run_dir, AI_LOG, "error")] == [
        "status_401", "malformed", "malformed",
    ]  # fmt: skip
    said = json.dumps(records(lp.run_dir, RECORDS, "ai_reply"))
    assert "debug: Bearer [key] is not valid here" in said, said  # what came back, scrubbed
    assert by_source(lp.run_dir, "ai")[0]["decision"] == "applied"

    secret = key.encode()
    files = [p for p in Path(lp.run_dir).rglob("*") if p.is_file()]
    assert {AI_LOG, AI_STATE, RECORDS, "hotcb.applied.jsonl"} <= {p.name for p in files}
    assert [str(p) for p in files if secret in p.read_bytes()] == []
    env = {**ENV, KEY_ENV: key}  # the CLI has the key too, and still does not show it
    for args in (["status", "--json"], ["proposals", "--all", "--json"]):
        done = subprocess.run([sys.executable, "-m", "hotcb", "--dir", lp.run_dir, "autopilot",
                               *args], capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) and key not in done.stdout + done.stderr


def test_a_base_url_with_a_query_keeps_it_after_the_path(
    loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--ai-base-url 'http://host/v1?api-key=K'`` (a gateway's key in the query, as
    docs/autopilot.md allows) reached the server as ``/v1/?api-key=Kchat/completions``, a path
    no API serves. The query goes after the path, the key still as the Bearer token, and the
    query's secret stays out of the files."""
    key = "sk-hotcb-test-" + secrets.token_hex(16)
    query_key = "qk-" + secrets.token_hex(8)
    monkeypatch.setenv(KEY_ENV, key)
    lp: Loop = loop()
    with ScriptedChatServer([HALVE, NOTHING]) as srv:
        config = ai_config(srv, base_url=f"{srv.base_url}?api-key={query_key}&v=2")
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=config, key_metric="loss")
        lp.run(40, pilot)
    (entry,) = by_source(lp.run_dir, "ai")
    assert entry["decision"] == "applied"
    assert srv.requests
    for r in srv.requests:
        path, _, query = r["path"].partition("?")
        assert path == CHAT_PATH, r["path"]
        assert urllib.parse.parse_qs(query) == {"api-key": [query_key], "v": ["2"]}
        assert r["headers"]["authorization"] == f"Bearer {key}"
    (call, *_) = records(lp.run_dir, AI_LOG, "call")
    assert call["base_url"] == f"{srv.base_url}?api-key=***&v=2"
    files = [p for p in Path(lp.run_dir).rglob("*") if p.is_file()]
    assert [str(p) for p in files if query_key.encode() in p.read_bytes()] == []


# ---------------------------------------------------------------------------------- ai_suggest
def test_ai_suggest_proposes_and_a_person_decides(loop: Any) -> None:
    lp: Loop = loop()
    second = {"json": {**HALVE["json"], "reasoning": "still flat; halve it again"}}
    with ScriptedChatServer([HALVE, second, NOTHING]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_suggest", ai=ai_config(srv), key_metric="loss")
        lp.run(30, pilot)  # asked at step 20; proposed at step 30
        (first,) = proposals(lp.run_dir)
        assert first["state"] == "pending" and first["rule"] == "ai"
        assert first["reasoning"] == HALVE_WHY and first["action"]["name"] == "lr_mult"
        assert lp.lr == 1e-2 and not by_source(lp.run_dir, "ai")  # a proposal changes nothing
        accepted = decide(lp.run_dir, first["id"], accept=True, by="test")
        lp.run(20, pilot)  # applied at step 31; asked again at step 40, proposed at step 50
        (entry,) = by_source(lp.run_dir, "ai")
        assert entry["cmd_id"] == accepted["cmd_ids"][0] and entry["decision"] == "applied"
        assert HALVE_WHY in entry["reason"] and lp.lr == pytest.approx(5e-3)
        (again,) = [p for p in proposals(lp.run_dir) if p["state"] == "pending"]
        assert again["reasoning"] == "still flat; halve it again"
        decide(lp.run_dir, again["id"], accept=False, by="test")
        lp.run(40, pilot)
    assert lp.lr == pytest.approx(5e-3) and len(by_source(lp.run_dir, "ai")) == 1
    assert [p["state"] for p in proposals(lp.run_dir)] == ["accepted", "rejected"]
    decisions = records(lp.run_dir, AI_LOG, "decision")
    assert decisions[0]["proposed"] == [first["id"]] and decisions[0]["applied"] == []


def test_the_model_s_changes_settle_one_at_a_time_without_a_key_metric(loop: Any) -> None:
    """The key metric (``val_loss``) never logged: the guard had nothing to judge the model's
    change on, so nothing held its next one back (three lr cuts 29 steps apart compounded
    inside ``settle_steps``). The change settles all the same."""
    lp: Loop = loop()
    with ScriptedChatServer([HALVE]) as srv:  # the same advice at every call
        pilot = Autopilot(lp.run_dir, mode="ai_auto", key_metric="val_loss",
                          ai=ai_config(srv, settle_steps=100))  # fmt: skip
        lp.run(95, pilot)  # asked at steps 20, 40, 60, 80
        assert len(srv.requests) >= 3
    assert lp.lr == pytest.approx(5e-3)  # one cut
    held = [r for r in records(lp.run_dir, RECORDS, "action") if r["state"] == "rejected"]
    assert held and all("the model's last change settles until step 130" in r["reason"]
                        for r in held), held  # fmt: skip


def test_a_stop_by_the_model_saves_a_checkpoint_first(loop: Any) -> None:
    """In ``ai_auto`` one reply ("stop it now") ended an unattended run with no checkpoint."""
    lp: Loop = loop()
    stop = {"json": {"reasoning": "stop it now", "actions": [{"action": "stop", "params": {}}]}}
    with ScriptedChatServer([stop, NOTHING]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
        lp.run(32, pilot)  # asked at step 20, sent at step 30, applied at step 31
    done = [(e["module"], e["op"]) for e in by_source(lp.run_dir, "ai")]
    assert done == [("control", "checkpoint"), ("control", "stop")], done
    assert lp.kernel.stop_requested


def test_ai_suggest_proposes_no_change_of_a_knob_the_run_does_not_have(loop: Any) -> None:
    """The model named a loss weight the run does not have: the proposal waited, every accept
    refused ("unknown actuator"), until a person rejected it. ``ai_auto`` rejected the same
    reply at once; ``ai_suggest`` now does too, with the run's words."""
    lp: Loop = loop()
    made_up = {"json": {"reasoning": "weigh the aux loss more", "actions": [
        {"action": "loss_weight_set", "params": {"key": "does_not_exist", "value": 1.0}},
        {"action": "lr_mult", "params": {"factor": 0.5}}]}}  # fmt: skip
    with ScriptedChatServer([made_up, NOTHING]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_suggest", ai=ai_config(srv), key_metric="loss")
        lp.run(30, pilot)
    (proposal,) = proposals(lp.run_dir)  # the lr's, not the made-up knob's
    assert proposal["action"]["name"] == "lr_mult"
    (refused,) = [r for r in records(lp.run_dir, RECORDS, "action") if r["state"] == "rejected"]
    assert refused["asked"]["params"]["key"] == "does_not_exist"
    assert "unknown actuator 'does_not_exist' in group 'loss'" in refused["reason"]


def test_ai_suggest_keeps_one_proposal_per_knob_pending(loop: Any) -> None:
    """Each reply that saw the same plateau added another pending lr_mult(0.5) (a probe: A3
    to A9); accepting them all would have cut the lr 2**7 times. While one waits, the model's
    next proposal for that knob is rejected with the pending one's id; after a decision it
    may propose again."""
    lp: Loop = loop()
    with ScriptedChatServer([HALVE]) as srv:  # the same advice at every call
        pilot = Autopilot(lp.run_dir, mode="ai_suggest", ai=ai_config(srv), key_metric="loss")
        lp.run(70, pilot)  # calls at steps 20, 40, 60
        assert len(srv.requests) >= 3
        (first,) = proposals(lp.run_dir)
        refused = [r for r in records(lp.run_dir, RECORDS, "action") if r["state"] == "rejected"]
        assert len(refused) >= 2
        assert all(f"proposal {first['id']} (lr_mult(factor=0.5)) is still pending" in r["reason"]
                   for r in refused)  # fmt: skip
        # recorded in the reply's own shape, as the format check records what it rejects
        assert refused[0]["asked"] == {"action": "lr_mult", "params": {"factor": 0.5}}
        decide(lp.run_dir, first["id"], accept=False, by="test")
        lp.run(40, pilot)
    pending = [p for p in proposals(lp.run_dir) if p["state"] == "pending"]
    assert len(pending) == 1 and pending[0]["id"] != first["id"]
    assert lp.lr == 1e-2


def test_ai_suggest_proposes_nothing_on_a_knob_a_rules_proposal_waits_on(loop: Any) -> None:
    """A rule's lr proposal left by an earlier ``suggest`` autopilot did not stop the model
    proposing another lr cut; accepting both compounded them (a probe: 0.001 -> 0.00015)."""
    lp: Loop = loop(f=flat)
    rules = Autopilot(lp.run_dir, mode="suggest", key_metric="loss")
    (waiting,) = lp.run_until(lambda: proposals(lp.run_dir), rules, 600)
    assert waiting["action"]["name"] == "lr_mult", waiting
    with ScriptedChatServer([HALVE]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_suggest", ai=ai_config(srv), key_metric="loss")
        lp.run(50, pilot)
        assert srv.requests
    assert [p["id"] for p in proposals(lp.run_dir)] == [waiting["id"]]
    refused = [r for r in records(lp.run_dir, RECORDS, "action") if r["state"] == "rejected"]
    assert refused and all(f"proposal {waiting['id']} (lr_mult(factor=" in r["reason"]
                           for r in refused), refused  # fmt: skip


# ---------------------------------------------------------------------------------- memory
LEARNING = "lr 0.5x at plateau helped"


def test_a_file_beside_the_runs_does_not_stop_the_ai_autopilot(loop: Any, tmp_path: Path) -> None:
    """Learnings are read from the folders beside the run; a plain file there is skipped."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("a file beside the runs\n")
    lp: Loop = loop(tmp_path / "runs" / "run")
    with ScriptedChatServer([NOTHING]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
        lp.run(30, pilot)
    assert len(srv.requests) == 1


@pytest.mark.slow
def test_learnings_of_a_finished_run_reach_the_next_run(
    loop: Any, tmp_path: Path, start_trainer: Any
) -> None:
    run1 = tmp_path / "proj" / "run1"
    learn = {"json": {**HALVE["json"], "learning": LEARNING}}
    with ScriptedChatServer([learn, NOTHING]) as srv:
        trainer = start_trainer(str(run1), str(tmp_path / "trace1.jsonl"), steps=5000,
                                step_delay=0.01)  # fmt: skip
        trainer.wait_step(1, 120)
        client = HotClient(run1, source="test")
        client.wait(client.pause(), 120)  # held until the model has answered
        pilot = Autopilot(run1, mode="ai_auto", ai=ai_config(srv, every_steps=1),
                          key_metric="loss")  # fmt: skip

        def learned() -> bool:
            pilot.step()
            return bool(records(run1, AI_LOG, "decision"))

        wait_for(learned, 120, interval=0.05, what="the model's reply")
        assert pilot.ai is not None and pilot.ai.learnings == [LEARNING]
        client.resume()
        trainer.wait_step(trainer.last_step() + 20, 120)
        client.stop()
        code, _out, err = trainer.finish(120)
        assert code == 0, err[-2000:]

        def summarized() -> bool:
            pilot.step()
            return pilot.ended and pilot.ai is not None and pilot.ai.summarized

        wait_for(summarized, 120, interval=0.05, what="run1 summarized")
    state = json.loads((run1 / AI_STATE).read_text())
    assert state["summarized"] is True and LEARNING in state["learnings"]
    assert state["learnings"][0].startswith("final loss ")
    (kept,) = records(run1, AI_LOG, "learnings")
    assert kept["learnings"] == state["learnings"]

    lp: Loop = loop(tmp_path / "proj" / "run2")
    with ScriptedChatServer([NOTHING]) as srv2:
        pilot2 = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv2), key_metric="loss")
        lp.run(30, pilot2)
    first = user_message(srv2.requests[0])
    assert f"run run1: {LEARNING}" in first
    context = json.loads(first.split("\n")[1])
    assert context["memory"] == [f"run run1: {text}" for text in state["learnings"]]


def test_a_reply_that_comes_after_the_run_ended_changes_nothing(loop: Any) -> None:
    """A call still in flight when the run ends: its reply is recorded as late, no command
    reaches the finished run (a resumed run would pick it up), and its learning does not push
    the run's summarized notes out."""
    lp: Loop = loop()
    gate = threading.Event()
    first = {"json": {**HALVE["json"], "learning": "halving helped"}}
    late = {"json": {**HALVE["json"], "reasoning": "late", "learning": "a late learning"}}
    asked: list[int] = []

    def policy(_body: dict[str, Any]) -> dict[str, Any]:
        asked.append(1)
        if len(asked) == 1:
            return first
        gate.wait(120)  # the second call is in flight until the test lets it answer
        return late

    with ScriptedChatServer(policy=policy) as srv:
        try:
            pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
            lp.run(30, pilot)  # asked at step 20, applied at step 30
            lp.run(30, pilot, wait=False)  # asked again at step 40: no answer yet
            assert pilot.ai is not None and pilot.ai.busy
            lp.kernel.close()  # the run ends with the call in flight
            pilot.step()
            assert pilot.ended and pilot.ai.summarized
            summary = json.loads(Path(lp.run_dir, AI_STATE).read_text())["learnings"]
            assert summary[0].startswith("final loss ") and "halving helped" in summary
        finally:
            gate.set()
        wait_reply(pilot)
        pilot.step()  # the late reply comes back after the end
    sent = [c for c in jsonl.iter_records(os.path.join(lp.run_dir, COMMANDS))
            if c.get("source") == "ai"]  # fmt: skip
    assert len(sent) == 1, sent  # only call 1's change; nothing sent to the finished run
    applied = [r for r in records(lp.run_dir, RECORDS, "action") if r["state"] == "applied"]
    assert [r["call"] for r in applied] == [1]
    state = json.loads(Path(lp.run_dir, AI_STATE).read_text())
    assert state["learnings"][0].startswith("final loss ")  # the run's summary stands


def test_a_run_resumed_from_an_earlier_checkpoint_gets_the_models_attention_afresh(
    loop: Any,
) -> None:
    """The trainer died with a call in flight and resumed from its checkpoint at step 10. The
    reply, asked with the gone steps, was applied to the new life (an lr cut for trouble it
    never had), and no call came until the new life passed the old life's last call step (a
    NaN in between handled by nobody). The reply is now dropped as stale, and the cadence
    counts from the step the run went back to."""
    lp: Loop = loop()
    gate = threading.Event()
    asked: list[int] = []

    def policy(_body: dict[str, Any]) -> dict[str, Any]:
        asked.append(1)
        if len(asked) == 2:
            gate.wait(120)  # in flight while the trainer dies and resumes
            return HALVE
        return NOTHING

    with ScriptedChatServer(policy=policy) as srv:
        try:
            pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
            lp.run(10, pilot)
            saved = lp.kernel.state_dict()  # the checkpoint, at step 10
            lp.run(10, pilot)  # asked at step 20, answered
            lp.run(20, pilot, wait=False)  # asked again at step 40: no answer yet
            assert pilot.ai is not None and pilot.ai.busy
            lp.kernel = HotKernel(lp.run_dir, poll_interval_sec=0.0)  # resumed: the old died
            lp.kernel.load_state_dict(saved)
            lp.step, lp.opt.param_groups[0]["lr"] = 10, 1e-2
            lp.run(10, pilot, wait=False)  # the autopilot sees the steps go back
        finally:
            gate.set()
        wait_reply(pilot)
        out = lp.run(40, pilot)
    (stale,) = [r for r in out if r["kind"] == "ai_reply" and r.get("state") == "stale"]
    assert stale["call"] == 2 and "in a life the run left" in stale["reason"]
    assert _line(stale) == f"[step {stale['step']}] ai_reply call 2 stale: {stale['reason']}"
    assert lp.lr == 1e-2 and not by_source(lp.run_dir, "ai")  # nothing sent
    calls = [(c["call"], c["step"]) for c in records(lp.run_dir, AI_LOG, "call")]
    assert calls[:3] == [(1, 20), (2, 40), (3, 40)]  # the cadence counts from the resume


def test_a_reply_that_comes_while_the_resumed_trainer_loads_is_stale(loop: Any) -> None:
    """The reply to a call of the killed life came after the new trainer process had started
    but before its first step: the steps had not gone back yet, so it was applied (an lr cut
    at the new life's first step) and its learning kept. A new trainer is a new life."""
    lp: Loop = loop()
    gate = threading.Event()
    stale_reply = {"json": {**HALVE["json"], "learning": "a learning of the gone life"}}

    def policy(_body: dict[str, Any]) -> dict[str, Any]:
        gate.wait(120)  # in flight while the trainer dies and its successor loads
        return stale_reply

    with ScriptedChatServer(policy=policy) as srv:
        try:
            pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
            lp.run(10, pilot)
            saved = lp.kernel.state_dict()  # the checkpoint, at step 10
            lp.run(10, pilot, wait=False)  # asked at step 20: no answer yet
            lp.kernel = HotKernel(lp.run_dir, poll_interval_sec=0.0)  # loading, no step yet
            lp.kernel.load_state_dict(saved)
        finally:
            gate.set()
        wait_reply(pilot)
        out = pilot.step()
    (stale,) = [r for r in out if r["kind"] == "ai_reply"]
    assert stale["state"] == "stale", stale
    assert not [c for c in jsonl.iter_records(os.path.join(lp.run_dir, COMMANDS))
                if c.get("source") == "ai"]  # fmt: skip
    assert pilot.ai is not None and pilot.ai.learnings == []


@pytest.mark.slow
def test_a_crash_does_not_seal_the_runs_learnings(tmp_path: Path, start_trainer: Any) -> None:
    """A kill -9 sealed the AI memory as if the run had ended ("final loss … at step 352"):
    the run, resumed, went on to a different end, and its later learnings were thrown away.
    Only a run that closed is summed up."""
    run = tmp_path / "runs" / "run"
    with ScriptedChatServer([NOTHING]) as srv:
        trainer = start_trainer(str(run), str(tmp_path / "trace.jsonl"), steps=100_000,
                                step_delay=0.01)  # fmt: skip
        trainer.wait_step(20, 120)
        pilot = Autopilot(run, mode="ai_auto", ai=ai_config(srv, every_steps=1),
                          key_metric="loss")  # fmt: skip
        pilot.step()
        trainer.kill()
        wait_for(lambda: pilot.crashed, 60, what="the autopilot to see the crash")
        pilot.step()
    assert pilot.ended and pilot.ai is not None and not pilot.ai.summarized
    assert not records(run, AI_LOG, "learnings")


# ---------------------------------------------------------------------------------- liveness
@pytest.mark.slow
def test_training_goes_on_while_the_model_hangs(tmp_path: Path, start_trainer: Any) -> None:
    run = tmp_path / "runs" / "run"
    trainer = start_trainer(str(run), str(tmp_path / "trace.jsonl"), steps=400, step_delay=0.01)
    trainer.wait_step(1, 120)
    client = HotClient(run, source="test")
    client.wait(client.pause(), 120)  # held until the call is in flight
    with ScriptedChatServer([{"hang": 600}]) as srv:
        cfg = ai_config(srv, every_steps=1, timeout_sec=600)
        pilot = Autopilot(run, mode="ai_auto", ai=cfg, key_metric="loss")
        ai = pilot.ai
        assert ai is not None

        def in_flight() -> bool:
            pilot.step()
            return ai.busy

        wait_for(in_flight, 120, interval=0.05, what="the call in flight")
        asked_at = pilot.step_now
        client.resume()

        def trained_on() -> bool:
            pilot.step()  # returns while the call hangs: the engine is not blocked
            assert ai.busy, "the hanging call ended before the training did"
            return pilot.step_now >= asked_at + 50

        wait_for(trained_on, 120, interval=0.05, what="50 more steps with the call in flight")
        code, _out, err = trainer.finish(120)
        assert code == 0, err[-2000:]
        pilot.step()
        assert ai.busy and pilot.ended and pilot.step_now == 399
        assert len(srv.requests) == 1  # no second call while one is in flight
        assert not records(run, AI_LOG, "response") and not records(run, AI_LOG, "error")


@pytest.mark.slow
def test_an_autopilot_stopped_while_the_model_thinks_abandons_the_call(
    tmp_path: Path, loop: Any
) -> None:
    """`hotcb autopilot` stopped (SIGTERM, as `hotcb launch` stops it) while a call waited
    for its reply: `hotcb.ai.state.json` kept `"in_flight": true`, and the dashboard said
    "asking the model…" for good. The call is recorded as abandoned and nothing is in flight."""
    lp: Loop = loop()
    for step in range(1, 30):
        lp.kernel.apply({"step": step, "optimizer": lp.opt, "metrics": {"loss": 1.0}})
    config = tmp_path / "ai.yaml"
    config.write_text("every_steps: 1\nmin_interval_sec: 0\ntimeout_sec: 600\nmax_retries: 0\n")
    state = Path(lp.run_dir, AI_STATE)
    with ScriptedChatServer([{"hang": 600}]) as srv:

        def in_flight() -> bool:  # the server has the request, the state file says so
            return bool(srv.requests) and state.exists() and json.loads(
                state.read_text())["in_flight"]  # fmt: skip

        argv = [sys.executable, "-m", "hotcb", "--dir", lp.run_dir, "autopilot", "--mode",
                "ai_auto", "--ai-base-url", srv.base_url, "--ai-model", "scripted",
                "--ai-config", str(config), "--key-metric", "loss", "--interval", "0.1"]  # fmt: skip
        pilot = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env=ENV)  # fmt: skip
        try:
            wait_for(in_flight, 120, what="the call in flight")
            pilot.send_signal(signal.SIGTERM)
            out, _ = pilot.communicate(timeout=120)
        finally:
            if pilot.poll() is None:
                pilot.kill()
                pilot.communicate()
    assert pilot.returncode == 0, out[-3000:]
    st = json.loads(state.read_text())
    assert st["in_flight"] is False and st["calls"] == 1, st
    last = records(lp.run_dir, AI_LOG)[-1]
    assert last["kind"] == "error" and last["call"] == 1 and last["error_kind"] == "abandoned"
    assert last["error"] == "the autopilot stopped before the model answered"
    (reply,) = records(lp.run_dir, RECORDS, "ai_reply")
    assert reply["call"] == 1 and reply["state"] == "abandoned"


def test_a_reply_the_autopilot_stopped_before_acting_on_is_said(loop: Any) -> None:
    """The model answered, and the autopilot stopped before its next round acted on the reply:
    nothing said what became of it (a call still waiting was recorded as abandoned)."""
    lp: Loop = loop()
    with ScriptedChatServer([HALVE]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
        lp.run(20, pilot)  # the call at step 20, its reply back, not read by a round yet
        pilot.close()
    (reply,) = records(lp.run_dir, RECORDS, "ai_reply")
    assert (reply["call"], reply["step"], reply["state"]) == (1, 20, "abandoned")
    assert (
        reply["reason"] == "no action: the autopilot stopped before it acted on the model's reply"
    )
    assert not by_source(lp.run_dir, "ai") and lp.lr == 1e-2


# ---------------------------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_hotcb_autopilot_ai_auto_steers_a_trainer(tmp_path: Path, start_trainer: Any) -> None:
    key = "sk-hotcb-test-" + secrets.token_hex(16)
    run = tmp_path / "runs" / "run"
    config = tmp_path / "ai.yaml"
    config.write_text("every_steps: 1\nmin_interval_sec: 0\ntimeout_sec: 30\nmax_retries: 0\n")
    trace = tmp_path / "trace.jsonl"
    trainer = start_trainer(str(run), str(trace), steps=5000, step_delay=0.01)
    trainer.wait_step(1, 120)
    client = HotClient(run, source="test")
    client.wait(client.pause(), 120)  # a paused run still applies commands
    with ScriptedChatServer([HALVE, NOTHING]) as srv:
        argv = [sys.executable, "-m", "hotcb", "--dir", str(run), "autopilot", "--mode",
                "ai_auto", "--ai-base-url", srv.base_url, "--ai-model", "scripted",
                "--ai-config", str(config), "--key-metric", "loss", "--interval", "0.1"]  # fmt: skip
        pilot = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env={**ENV, KEY_ENV: key})  # fmt: skip
        try:
            entry = wait_for(lambda: by_source(run, "ai"), 120, what="the model's change")[0]
            client.resume()
            trainer.wait_step(entry["step"] + 20, 120)
            client.stop()
            code, _out, err = trainer.finish(120)
            assert code == 0, err[-2000:]
            out, _ = pilot.communicate(timeout=120)  # it exits once the run has ended
        finally:
            if pilot.poll() is None:
                pilot.kill()
                pilot.communicate()
    assert pilot.returncode == 0, out[-3000:]
    assert "hotcb autopilot: asking scripted at " + srv.base_url in out
    assert "ai applied" in out and key not in out
    assert srv.requests and all(
        r["headers"]["authorization"] == f"Bearer {key}" for r in srv.requests
    )
    assert entry["decision"] == "applied" and HALVE_WHY in entry["reason"]
    assert entry["changes"]["lr"]["new"] == pytest.approx(5e-3)
    opt_changes = [e for e in read_ledger(run) if e.get("module") == "opt"]
    assert opt_changes[-1]["source"] == "ai"  # the ledger ends with the model's change
    rows = [json.loads(x) for x in trace.read_text().splitlines()]
    after = [r["lr"] for r in rows if r["step"] > entry["step"]]
    assert len(after) >= 20 and after == [pytest.approx(5e-3)] * len(after)


def test_a_config_file_with_a_key_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    HotKernel(str(run)).close()  # an existing run
    config = tmp_path / "ai.yaml"
    config.write_text("model: gpt-4.1-mini\nevery_steps: 50\napi_key: sk-in-a-file-123456\n")
    argv = [sys.executable, "-m", "hotcb", "--dir", str(run), "autopilot", "--mode", "ai_auto",
            "--ai-config", str(config)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "line 3" in done.stderr and "api_key" in done.stderr and KEY_ENV in done.stderr
    assert "sk-in-a-file-123456" not in done.stdout + done.stderr
    assert not (run / AI_LOG).exists() and not (run / RECORDS).exists()


def test_ai_auto_leaves_a_knob_an_active_tuner_tunes_to_it(loop: Any) -> None:
    """Each of the model's lr cuts beside an active tuner voided the tuner's open trial (half
    its trials failed, ``opt.lr set by a command during the trial``): rejected, with why."""
    pytest.importorskip("optuna")
    lp: Loop = loop()
    HotClient(lp.run_dir).tune_enable("active", objective="loss", segment_steps=50, sync=True)
    with ScriptedChatServer([HALVE, NOTHING]) as srv:
        pilot = Autopilot(lp.run_dir, mode="ai_auto", ai=ai_config(srv), key_metric="loss")
        lp.run(60, pilot)
    assert not by_source(lp.run_dir, "ai")
    (rejected,) = records(lp.run_dir, AI_LOG, "decision")[0]["rejected"]
    assert rejected["reason"] == (
        "the online tuner (active) tunes opt.lr: the model's changes are left to it"
    )
