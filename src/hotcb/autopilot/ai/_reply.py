"""Reading the model's reply: tolerant of prose and code fences around the JSON, strict about
what it asks for (every action checked against the bounded action set)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..rules import Action, check_action

__all__ = ["MalformedReply", "Reply", "parse_reply"]


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


def _kept(reasoning: str) -> str:
    """The reasoning as the AI log, the records and the page keep it: its head."""
    if len(reasoning) <= _REASONING_KEPT:
        return reasoning
    cut = len(reasoning) - _REASONING_KEPT
    return f"{reasoning[:_REASONING_KEPT]} … ({cut} more characters not kept)"


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
    reply = Reply(reasoning=_kept(reasoning.strip()))
    for i, raw in enumerate(raw_actions):
        if len(reply.rejected) >= _REJECTED_KEPT:  # a runaway reply: counted, not each kept
            rest = len(raw_actions) - i
            reply.rejected.append(({"actions": rest}, f"{rest} more actions not read (a reply "
                                   f"has at most {max_actions})"))  # fmt: skip
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
