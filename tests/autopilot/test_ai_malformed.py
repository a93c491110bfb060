"""The LLM autopilot against endpoints that answer badly: replies of an unexpected shape (the
content an object, tool calls instead of content, no choices, ``choices`` a string), unreadable
or negative token counts, a body labelled JSON that is not, a runaway reply, a server that is
not there. Each is a recorded failed call (counted toward the fallback to the rules) or a reply
read as far as it can be, never a dead call thread, and what is recorded stays small.

A real kernel and optimizer run in this process, the autopilot steps every 10 steps, and the
model is a real chat-completions server on 127.0.0.1: :class:`RawChatServer`, the repo's
:class:`~hotcb.testing.chat_server.ScriptedChatServer` with two more steps for replies of any
shape.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from hotcb import HotKernel, jsonl
from hotcb.autopilot.ai import AI_LOG, AI_STATE, AIConfig
from hotcb.autopilot.engine import RECORDS, Autopilot
from hotcb.autopilot.rules import action_text
from hotcb.testing import read_ledger, wait_for
from hotcb.testing.chat_server import NOTHING, ScriptedChatServer

torch = pytest.importorskip("torch")

HALVE_WHY = "the loss is flat; a smaller lr should help"
HALVE: dict[str, Any] = {
    "reasoning": HALVE_WHY,
    "actions": [{"action": "lr_mult", "params": {"factor": 0.5}}],
}
USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
IMAGE_PART = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
#: What a model that was offered tools (or thinks it was) answers: no content, a tool call.
TOOL_CALL = {
    "role": "assistant", "content": None,
    "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "lr_mult", "arguments": '{"factor": 0.5}'}}],
}  # fmt: skip


def completion(content: Any = None, **changes: Any) -> dict[str, Any]:
    """A chat-completions body with ``content`` in its first choice; ``message``, ``choices``
    or ``usage`` in ``changes`` replace the regular ones."""
    message = changes.pop("message", {"role": "assistant", "content": content})
    doc: dict[str, Any] = {
        "id": "chatcmpl-raw", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "finish_reason": "stop", "message": message}], "usage": USAGE,
    }  # fmt: skip
    return {**doc, **changes}


class RawChatServer(ScriptedChatServer):
    """:class:`ScriptedChatServer` with two more steps: ``{"doc": obj}`` answers 200 with
    ``obj`` as the whole JSON body (a reply of any shape), ``{"body": bytes}`` answers 200 with
    those bytes labelled ``application/json``. Other steps are the scripted server's."""

    def _serve(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self._lock:
            step = self.script[min(self._i, len(self.script) - 1)]
            if "doc" in step or "body" in step:
                self._i += 1
                self.requests.append({"path": h.path, "headers": headers, "body": body})
        if "doc" not in step and "body" not in step:
            return super()._serve(h, body)
        data = step["body"] if "body" in step else json.dumps(step["doc"]).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


class Loop:
    """A real kernel and optimizer; logs ``loss`` and ``lr`` every step, an autopilot round
    every 10 steps, and waits for a call a round starts, so the next round reads its reply."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = str(run_dir)
        self.kernel = HotKernel(self.run_dir, poll_interval_sec=0.0)
        self.opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
        self.step = 0

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def run(self, steps: int, pilot: Autopilot) -> None:
        for _ in range(steps):
            self.step += 1
            metrics = {"loss": math.exp(-self.step / 100), "lr": self.lr}
            self.kernel.apply({"step": self.step, "optimizer": self.opt, "metrics": metrics})
            if self.step % 10 == 0:
                pilot.step()
                wait_reply(pilot)

    def run_until(self, done: Callable[[], Any], pilot: Autopilot, limit: int = 300) -> Any:
        for _ in range(0, limit, 10):
            self.run(10, pilot)
            found = done()
            if found:
                return found
        raise AssertionError(f"not done after {limit} steps")


def wait_reply(pilot: Autopilot) -> None:
    """Until the call in flight (if any) has come back."""
    ai = pilot.ai
    if ai is not None:
        wait_for(lambda: not ai.busy, 60, what="the model's reply")


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    lp = Loop(tmp_path / "runs" / "run")
    yield lp
    lp.kernel.close()


@pytest.fixture
def died(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The exceptions that ended a thread during the test (none may)."""
    found: list[str] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        found.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: "
                     f"{args.exc_value}")  # fmt: skip

    monkeypatch.setattr(threading, "excepthook", hook)
    return found


def ai_config(base_url: str, **changes: Any) -> AIConfig:
    settings: dict[str, Any] = {
        "base_url": base_url, "model": "scripted", "every_steps": 20, "min_interval_sec": 0.0,
        "timeout_sec": 30.0, "max_retries": 0, "backoff_sec": 0.01, "max_failures": 3,
    }  # fmt: skip
    return AIConfig(**{**settings, **changes})


def records(run_dir: str, name: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in jsonl.iter_records(os.path.join(run_dir, name)) if r.get("kind") == kind]


def ai_entries(run_dir: str) -> list[dict[str, Any]]:
    return [e for e in read_ledger(run_dir) if e.get("source") == "ai"]


def state(run_dir: str) -> dict[str, Any]:
    doc = json.loads(Path(run_dir, AI_STATE).read_text())
    assert isinstance(doc, dict)
    return doc


# ------------------------------------------------------------ replies of an unexpected shape
@pytest.mark.parametrize(
    ("reply", "says"),
    [
        pytest.param(
            completion(HALVE),
            'the reply\'s content is a JSON object ({"reasoning": "the loss is flat',
            id="content-an-object",
        ),
        pytest.param(
            completion([{"type": "text", "text": "{"}, IMAGE_PART]),
            'content part 2 is of type "image_url": only text parts are read',
            id="content-parts-not-text",
        ),
        pytest.param(
            completion(message=TOOL_CALL),
            "the model called tools (lr_mult) instead of answering in its content: tool calls "
            "are not used",
            id="tool-calls",
        ),
        pytest.param(completion(choices=[]), "the reply has no choices", id="no-choices"),
        pytest.param(
            completion(choices="oops"),
            "the reply's 'choices' is a string (\"oops\"), expected a list",
            id="choices-a-string",
        ),
        pytest.param(
            completion(choices=[{"index": 0}]),
            "the reply's first choice has no message",
            id="no-message",
        ),
        pytest.param(
            {"error": {"message": "quota exceeded"}},
            'the reply has no \'choices\' (it says "error": {"message": "quota exceeded"})',
            id="an-error-object",
        ),
        pytest.param(
            [completion(HALVE)],
            "expected a chat completion (an object with 'choices'), got a list",
            id="a-list",
        ),
    ],
)
def test_a_reply_of_an_unexpected_shape_is_a_failed_call_and_the_rules_take_over(
    loop: Loop, died: list[str], reply: Any, says: str
) -> None:
    with RawChatServer([{"doc": reply}]) as srv:
        pilot = Autopilot(loop.run_dir, mode="ai_auto", ai=ai_config(srv.base_url),
                          key_metric="loss")  # fmt: skip
        loop.run_until(lambda: records(loop.run_dir, AI_LOG, "fallback"), pilot)
        assert len(srv.requests) == 3
    assert died == []
    errors = records(loop.run_dir, AI_LOG, "error")
    assert [(e["error_kind"], e["failures"]) for e in errors] == [
        ("malformed", 1), ("malformed", 2), ("malformed", 3)
    ]  # fmt: skip
    assert all(says in e["error"] for e in errors), errors[0]["error"]
    (fallback,) = records(loop.run_dir, AI_LOG, "fallback")
    assert fallback["reason"].startswith("3 failed calls in a row (last: malformed: ")
    assert state(loop.run_dir)["fallback"] == fallback["reason"]
    assert records(loop.run_dir, RECORDS, "fallback")
    failed = records(loop.run_dir, RECORDS, "ai_reply")
    assert [r["state"] for r in failed] == ["failed"] * 3
    assert not ai_entries(loop.run_dir) and loop.lr == 1e-2


def test_a_key_in_a_reply_of_an_unexpected_shape_is_scrubbed_before_it_is_cut(
    loop: Loop, died: list[str]
) -> None:
    """The error quotes the start of what came; the key is taken out before the quote is cut
    short, so no piece of it is left to reach a file."""
    key = "sk-test-" + secrets.token_hex(16)
    echoed = {"note": "n" * 100 + key}  # the quote is cut at 120 characters: inside the key
    with RawChatServer([{"doc": completion(echoed)}]) as srv:
        pilot = Autopilot(loop.run_dir, mode="ai_auto", ai=ai_config(srv.base_url), ai_key=key,
                          key_metric="loss")  # fmt: skip
        loop.run_until(lambda: records(loop.run_dir, AI_LOG, "error"), pilot)
        assert srv.requests[0]["headers"]["authorization"] == f"Bearer {key}"
    assert died == []
    (error,) = records(loop.run_dir, AI_LOG, "error")[:1]
    assert '{"note": "nnnn' in error["error"] and "[key]" in error["error"]
    for name in os.listdir(loop.run_dir):
        path = os.path.join(loop.run_dir, name)
        if os.path.isfile(path):
            assert key[:10] not in Path(path).read_text(errors="replace"), name


def test_text_content_parts_are_joined_into_the_reply(loop: Loop, died: list[str]) -> None:
    """The protocol lets ``content`` be a list of parts; text parts are the reply's text."""
    text = json.dumps(HALVE)
    parts = [{"type": "text", "text": text[:20]}, {"type": "text", "text": text[20:]}]
    with RawChatServer([{"doc": completion(parts)}, NOTHING]) as srv:
        pilot = Autopilot(loop.run_dir, mode="ai_auto", ai=ai_config(srv.base_url),
                          key_metric="loss")  # fmt: skip
        (entry,) = loop.run_until(lambda: ai_entries(loop.run_dir), pilot)
    assert died == []
    assert HALVE_WHY in entry["reason"] and loop.lr == pytest.approx(5e-3)
    (response,) = records(loop.run_dir, AI_LOG, "response")[:1]
    assert json.loads(response["text"]) == HALVE
    assert not records(loop.run_dir, AI_LOG, "error")


# ------------------------------------------------------------ token counts
def test_unreadable_token_counts_count_as_zero_with_a_note(loop: Loop, died: list[str]) -> None:
    """A good reply is acted on whatever its usage says; a count that is not a number, or no
    count of tokens at all, counts 0 (as a missing one does), and the response record says so."""
    usage = {"prompt_tokens": "lots", "completion_tokens": 10**400}  # an int past any float
    with RawChatServer([{"doc": completion(json.dumps(HALVE), usage=usage)}, NOTHING]) as srv:
        cfg = ai_config(srv.base_url, prices={"scripted": {"input": 1.0, "output": 1.0}})
        pilot = Autopilot(loop.run_dir, mode="ai_auto", ai=cfg, key_metric="loss")
        (entry,) = loop.run_until(lambda: ai_entries(loop.run_dir), pilot)
    assert died == []
    assert HALVE_WHY in entry["reason"] and loop.lr == pytest.approx(5e-3)
    response = records(loop.run_dir, AI_LOG, "response")[0]
    assert response["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert response["usage_note"] == (
        'prompt_tokens "lots" is not a number: counted as 0; '
        f"completion_tokens {str(10**400)[:40]}… is not a token count: counted as 0"
    )
    assert response["cost_usd"] == 0.0
    assert not records(loop.run_dir, AI_LOG, "error")


def test_negative_token_counts_do_not_refill_the_budget(loop: Loop, died: list[str]) -> None:
    """A reply that claims -1e9 tokens once made the spend -$5999999 (saved in the state file),
    so the budget never ran out: a negative count counts 0, and the next honest reply spends
    the budget as it should."""
    lying = {"prompt_tokens": -(10**9), "completion_tokens": -(10**9)}
    script = [{"doc": completion(json.dumps(NOTHING["json"]), usage=lying)},
              {"doc": completion(json.dumps(NOTHING["json"]))}]  # fmt: skip
    prices = {"scripted": {"input": 10_000.0, "output": 10_000.0}}  # 120 tokens: $1.20
    with RawChatServer(script) as srv:
        cfg = ai_config(srv.base_url, prices=prices, budget_usd=1.0)
        pilot = Autopilot(loop.run_dir, mode="ai_auto", ai=cfg, key_metric="loss")
        loop.run_until(lambda: records(loop.run_dir, AI_LOG, "response"), pilot)
        assert state(loop.run_dir)["spent_usd"] == 0.0
        loop.run_until(lambda: records(loop.run_dir, AI_LOG, "fallback"), pilot)
        assert len(srv.requests) == 2
    assert died == []
    first, second = records(loop.run_dir, AI_LOG, "response")
    assert first["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert first["usage_note"] == ("prompt_tokens -1000000000 is negative: counted as 0; "
                                   "completion_tokens -1000000000 is negative: counted as 0")  # fmt: skip
    assert first["cost_usd"] == 0.0 and second["cost_usd"] == pytest.approx(1.2)
    st = state(loop.run_dir)
    assert st["spent_usd"] == pytest.approx(1.2) and st["left_usd"] == 0.0
    assert st["tokens"] == {"prompt": 100, "completion": 20}
    (fallback,) = records(loop.run_dir, AI_LOG, "fallback")
    assert "the budget of $1 is spent" in fallback["reason"]


# ------------------------------------------------------------ what is recorded stays small
def test_a_huge_reply_and_a_huge_error_are_recorded_cut(loop: Loop, died: list[str]) -> None:
    """A 30 MB reply grew hotcb.ai.jsonl by 30 MB per call: the response's text is kept to its
    head (saying how much was cut), as the reasoning already was; so is an error's text."""
    huge = {"reasoning": "x" * 3_000_000, "actions": []}
    script = [{"json": huge}, {"status": 500, "message": "boom " * 200_000}]
    with RawChatServer(script) as srv:
        pilot = Autopilot(loop.run_dir, mode="ai_auto", ai=ai_config(srv.base_url),
                          key_metric="loss")  # fmt: skip
        loop.run_until(lambda: records(loop.run_dir, AI_LOG, "error"), pilot)
    assert died == []
    (response,) = records(loop.run_dir, AI_LOG, "response")
    assert response["text"].startswith('{"reasoning": "xxxx')
    assert len(response["text"]) < 20_100
    assert response["text"].endswith(f"({len(json.dumps(huge)) - 20_000} more characters "
                                      "not kept)")  # fmt: skip
    (error,) = records(loop.run_dir, AI_LOG, "error")
    assert error["error_kind"] == "status_500" and "boom boom" in error["error"]
    assert len(error["error"]) < 2100 and error["error"].endswith("more characters not kept)")
    (failed,) = [r for r in records(loop.run_dir, RECORDS, "ai_reply") if r["state"] == "failed"]
    assert len(failed["reason"]) < 2200
    assert os.path.getsize(os.path.join(loop.run_dir, AI_LOG)) < 200_000
    assert os.path.getsize(os.path.join(loop.run_dir, RECORDS)) < 200_000


def test_a_runaway_action_list_is_named_in_the_records(loop: Loop, died: list[str]) -> None:
    """``action ai rejected: None() (988 more actions not read …)``: the rest of a runaway
    list is recorded as what it is."""
    too_big = {"action": "lr_mult", "params": {"factor": 100}}
    runaway = {"reasoning": "much higher", "actions": [too_big] * 1000}
    with RawChatServer([{"json": runaway}, NOTHING]) as srv:
        pilot = Autopilot(loop.run_dir, mode="ai_auto", ai=ai_config(srv.base_url),
                          key_metric="loss")  # fmt: skip
        loop.run_until(lambda: records(loop.run_dir, AI_LOG, "decision"), pilot)
    assert died == []
    rejected = [r for r in records(loop.run_dir, RECORDS, "action") if r["state"] == "rejected"]
    assert [r["asked"] for r in rejected[:10]] == [too_big] * 10
    (rest,) = rejected[10:]
    assert rest["asked"] == "990 more actions"
    assert rest["reason"] == "not read (a reply has at most 3 actions)"
    assert action_text(rest["asked"]) == "990 more actions"  # as `hotcb autopilot` prints it
    assert not ai_entries(loop.run_dir) and loop.lr == 1e-2


# ------------------------------------------------------------ endpoints that are not the API
def test_a_body_labelled_json_that_is_not_is_named_as_such(loop: Loop, died: list[str]) -> None:
    script = [{"body": b"<!doctype html>not json at all {{{"}, NOTHING]
    with RawChatServer(script) as srv:
        pilot = Autopilot(loop.run_dir, mode="ai_auto", ai=ai_config(srv.base_url),
                          key_metric="loss")  # fmt: skip
        loop.run_until(lambda: records(loop.run_dir, AI_LOG, "error"), pilot)
    assert died == []
    (error,) = records(loop.run_dir, AI_LOG, "error")
    assert error["error_kind"] == "malformed"
    assert error["error"].startswith(
        "the endpoint did not answer with JSON ('<!doctype html>not json at all {{{'): is "
        f"base_url ({srv.base_url}) the API's address, usually ending in /v1?"
    )
    (response,) = records(loop.run_dir, AI_LOG, "response")
    assert response["text"] == "<!doctype html>not json at all {{{"


def test_a_server_that_is_not_there_is_named_with_its_address(loop: Loop, died: list[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://hotcb:s3cret-pass@127.0.0.1:{port}/v1"
    pilot = Autopilot(loop.run_dir, mode="ai_auto", ai=ai_config(url), key_metric="loss")
    loop.run_until(lambda: records(loop.run_dir, AI_LOG, "error"), pilot)
    assert died == []
    error = records(loop.run_dir, AI_LOG, "error")[0]
    assert error["error_kind"] == "connection"
    assert error["error"].startswith("APIConnectionError: Connection error. (ConnectError: ")
    assert "Connection refused" in error["error"]
    assert error["error"].endswith(
        f"calling http://hotcb:***@127.0.0.1:{port}/v1: is the server up, at that address?"
    )
    assert "s3cret-pass" not in Path(loop.run_dir, AI_LOG).read_text()
