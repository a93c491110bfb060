"""Reading the model's reply: tolerant of prose and code fences around the JSON, strict about
what it asks for (every action checked against the bounded action set). Before that, the chat
completion that carries it: its text (:func:`reply_text`) and its token counts
(:func:`token_counts`), whatever shape the endpoint sent them in."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..rules import Action, check_action

__all__ = ["MalformedReply", "Reply", "kept", "parse_reply", "reply_text", "token_counts"]


_MAX_STARTS = 64  # ``{`` tried as the start of the object (prose rarely has more)


class MalformedReply(ValueError):
    """The reply holds no JSON object of the expected shape."""


@dataclass
class Reply:
    reasoning: str
    actions: list[Action] = field(default_factory=list)
    #: ``(what was asked, why it is refused)`` for every action that fails its checks.
    rejected: list[tuple[Any, str]] = field(default_factory=list)
    next_check: int | None = None
    learning: str | None = None


def _first_object(text: str) -> Any:
    """The first JSON object in ``text``: the whole text, else inside a code fence, else the
    first balanced ``{...}`` that parses."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    except RecursionError:
        raise MalformedReply("the reply is nested too deeply") from None
    decoder = json.JSONDecoder()
    starts = [i for i, ch in enumerate(text) if ch == "{"][:_MAX_STARTS]
    for start in starts:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        except RecursionError:
            raise MalformedReply("the reply is nested too deeply") from None
        if isinstance(obj, dict):
            return obj
    raise MalformedReply("no JSON object in the reply")


#: What of a reply is kept: its reasoning's first characters, its first rejected actions (a
#: 3 MB reasoning with 500 actions was written whole, several times, to the run's files)
_REASONING_KEPT = 4000
_REJECTED_KEPT = 10


def kept(text: str, limit: int = _REASONING_KEPT) -> str:
    """``text`` as the AI log, the records and the page keep it: its first ``limit``
    characters, and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} … ({len(text) - limit} more characters not kept)"


def parse_reply(text: str | None, *, max_actions: int = 3) -> Reply:
    """The reply's reasoning, valid actions (at most ``max_actions``), rejected actions with
    their reasons, and ``next_check`` (steps). :class:`MalformedReply` when it holds no JSON
    object with a ``reasoning`` and an ``actions`` list."""
    if not text or not text.strip():
        raise MalformedReply("the reply is empty")
    doc = _first_object(text)
    if not isinstance(doc, Mapping):
        raise MalformedReply(f"expected a JSON object, got {type(doc).__name__}")
    reasoning = doc.get("reasoning")
    raw_actions = doc.get("actions", [])
    if not isinstance(reasoning, str):
        raise MalformedReply("the reply has no 'reasoning' string")
    if raw_actions is None:
        raw_actions = []
    if not isinstance(raw_actions, list):
        raise MalformedReply("'actions' must be a list")
    reply = Reply(reasoning=kept(reasoning.strip()))
    for i, raw in enumerate(raw_actions):
        if len(reply.rejected) >= _REJECTED_KEPT:  # a runaway reply: counted, not each kept
            rest = len(raw_actions) - i  # named as the records and `hotcb autopilot` show it
            reply.rejected.append((f"{rest} more actions",
                                   f"not read (a reply has at most {max_actions} actions)"))  # fmt: skip
            break
        action, problem = _action(raw)
        if problem is not None:
            reply.rejected.append((raw, problem))
        elif len(reply.actions) >= max_actions:
            reply.rejected.append((raw, f"at most {max_actions} actions per reply"))
        else:
            assert action is not None
            reply.actions.append(action)
    nxt = doc.get("next_check")
    if isinstance(nxt, (int, float)) and not isinstance(nxt, bool) and nxt == nxt and nxt >= 1:
        reply.next_check = int(min(nxt, 10**7))
    learning = doc.get("learning")
    if isinstance(learning, str) and learning.strip():
        reply.learning = learning.strip()[:300]
    return reply


def _action(raw: Any) -> tuple[Action | None, str | None]:
    if not isinstance(raw, Mapping):
        return None, f"an action must be an object {{action, params}}, got {raw!r}"
    name = raw.get("action", raw.get("name"))
    if not isinstance(name, str):
        return None, "an action needs a name ('action')"
    params = raw.get("params")
    if params is None:  # tolerate {"action": "lr_mult", "factor": 0.5}
        params = {k: v for k, v in raw.items() if k not in ("action", "name")}
    if not isinstance(params, Mapping):
        return None, f"params of {name} must be an object, got {params!r}"
    problems = check_action(name, params)
    if problems:
        return None, "; ".join(problems)
    return Action(name, dict(params)), None


# ---------------------------------------------------------------------- the chat completion
# The SDK builds its response objects without validating them: any field may hold any JSON.


def reply_text(completion: Any, scrub: Callable[[str], str] | None = None) -> str:
    """The text of a chat completion's first choice: its ``content`` string, or its text parts
    joined (the protocol allows a list of ``{"type": "text", "text": ...}``).
    :class:`MalformedReply` says what came instead: no choices, tool calls, a refusal, content
    of another kind. ``scrub`` takes the secrets out of what the message quotes, before it is
    cut short (a secret cut in two could not be found any more)."""
    q = functools.partial(_quote, scrub=scrub)
    choices = _get(completion, "choices")
    if choices is None:
        if not hasattr(completion, "model_extra") and not isinstance(completion, Mapping):
            raise MalformedReply(f"expected a chat completion (an object with 'choices'), "
                                 f"got {_kind(completion)}: {q(completion)}")  # fmt: skip
        error = _get(completion, "error")
        says = f' (it says "error": {q(error)})' if error is not None else ""
        raise MalformedReply(f"the reply has no 'choices'{says}")
    if not isinstance(choices, list):
        raise MalformedReply(f"the reply's 'choices' is {_kind(choices)} ({q(choices)}), "
                             "expected a list")  # fmt: skip
    if not choices:
        raise MalformedReply("the reply has no choices ('choices' is an empty list)")
    message = _get(choices[0], "message")
    if message is None:
        raise MalformedReply("the reply's first choice has no message")
    content = _get(message, "content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return _joined(content, q)
    if content is None:
        raise MalformedReply(_no_content(message))
    raise MalformedReply(f"the reply's content is {_kind(content)} ({q(content)}), not "
                         "text: the decision goes in the message's content, as a string")  # fmt: skip


def _joined(parts: list[Any], q: Callable[[Any], str]) -> str:
    texts = []
    for i, part in enumerate(parts, 1):
        kind, text = _get(part, "type"), _get(part, "text")
        if kind != "text" or not isinstance(text, str):
            what = f"of type {q(kind)}" if isinstance(kind, str) else q(part)
            raise MalformedReply(f"the reply's content part {i} is {what}: only text parts "
                                 "are read")  # fmt: skip
        texts.append(text)
    return "".join(texts)


def _no_content(message: Any) -> str:
    calls = _get(message, "tool_calls") or _get(message, "function_call")
    if calls:
        calls = calls if isinstance(calls, list) else [calls]
        names = ", ".join(str(_get(_get(c, "function"), "name") or _get(c, "name") or "?")
                          for c in calls)  # fmt: skip
        return (
            f"the model called tools ({names}) instead of answering in its content: tool "
            "calls are not used, the decision must be the message's content"
        )
    refusal = _get(message, "refusal")
    if isinstance(refusal, str) and refusal:
        return f"the model refused: {refusal}"
    return "the reply is empty (its message has no content)"


_MAX_TOKENS = 10**12


def token_counts(
    usage: Any, scrub: Callable[[str], str] | None = None
) -> tuple[int, int, str | None]:
    """The prompt and completion tokens of a reply's ``usage``, each a count >= 0, and a note
    on any count that could not be taken as it came. A missing count counts 0 (local servers
    often leave ``usage`` out); so does one that is not a number or is negative, with the note
    saying so (a negative count made the spend negative, so the budget never ran out);
    ``scrub`` as for :func:`reply_text`."""
    counts: list[int] = []
    notes: list[str] = []
    for name in ("prompt_tokens", "completion_tokens"):
        raw = _get(usage, name)
        count = 0
        if raw is None:
            pass
        elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
            notes.append(f"{name} {_quote(raw, scrub=scrub)} is not a number: counted as 0")
        elif raw < 0:
            notes.append(f"{name} {raw} is negative: counted as 0")
        elif not raw <= _MAX_TOKENS:  # NaN, infinity, or a number no reply comes near
            notes.append(f"{name} {_quote(raw, 40)} is not a token count: counted as 0")
        else:
            count = int(raw)
        counts.append(count)
    return counts[0], counts[1], "; ".join(notes) or None


def _get(obj: Any, name: str) -> Any:
    """``obj``'s field ``name``, from an SDK object or a plain mapping; None when missing."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    if isinstance(obj, (str, bytes, int, float, list)):
        return None  # not an object (getattr would find a str's methods)
    return getattr(obj, name, None)


def _kind(value: Any) -> str:
    names = {dict: "a JSON object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _quote(value: Any, limit: int = 120, scrub: Callable[[str], str] | None = None) -> str:
    """``value`` as JSON (else its repr), scrubbed (``scrub``), its first ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if scrub is not None:
        text = scrub(text)
    return text if len(text) <= limit else f"{text[:limit]}…"
