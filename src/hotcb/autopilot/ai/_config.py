"""The LLM autopilot's settings: where the model is, what it may spend, how often it is asked.

They are set only where the autopilot runs: command-line flags (``--ai-base-url``,
``--ai-model``, ``--ai-budget``), a config file (``--ai-config FILE``, YAML or JSON) and the
key in the environment (``HOTCB_AI_KEY``). Nothing here can be set over REST, and the key is
never part of these settings: it stays in the process environment, and a config file that holds
one is refused so it never lands in a file beside the runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..._checks import Checker, CheckError, parse_document

__all__ = ["KEY_ENV", "AIConfig", "AIConfigError", "load_ai_config"]

#: The environment variable holding the endpoint's key (the only place a key is read from).
KEY_ENV = "HOTCB_AI_KEY"
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class AIConfigError(CheckError):
    """An AI config file with problems; ``problems`` lists every one, with its line."""


@dataclass(frozen=True)
class AIConfig:
    """What the LLM autopilot needs, besides the key (docs/autopilot.md, "LLM autopilot")."""

    base_url: str = DEFAULT_BASE_URL
    model: str = "gpt-4.1-mini"
    budget_usd: float = 1.0  # per run; spent: the rules take over
    #: USD per 1M tokens, ``{model: {"input": x, "output": y}}``, over the shipped table.
    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    every_steps: int = 200  # ask at least this often (in training steps)
    min_interval_sec: float = 30.0  # and never more often than this
    timeout_sec: float = 60.0  # per request (the SDK's timeout)
    max_retries: int = 2  # the SDK's own retries, with its back-off, inside one call
    max_failures: int = 3  # failed calls in a row before the rules take over
    backoff_sec: float = 10.0  # wait after a failed call, doubled after each further one
    max_context_tokens: int = 3000  # the prompt's size limit (estimated: 4 characters a token)
    structured: str = "auto"  # response_format json_schema: auto (try, then plain) | on | off
    temperature: float = 0.2
    max_actions: int = 3  # per reply; the rest are rejected
    settle_steps: int = 100  # the guard judges an AI change this many steps after it
    total_steps: int | None = None  # the run's length, when the run does not say it
    memory: int = 10  # learnings carried from this project's earlier runs (0: none)

    def public(self) -> dict[str, Any]:
        """What may be shown (the dashboard, the state file): everything here; no key exists
        in these settings to leak."""
        return asdict(self)


_STRUCTURED = ("auto", "on", "off")
_FORBIDDEN = ("key", "api_key", "apikey", "token", "secret", "authorization")


def load_ai_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> AIConfig:
    """Settings from ``path`` (optional), then ``overrides`` that are not None (the command
    line wins over the file). :class:`AIConfigError` lists every problem with its line."""
    doc: Mapping[str, Any] = {}
    lines: dict[str, int] = {}
    where = "the --ai-* flags"
    if path is not None:
        where = os.fspath(path)
        with open(where, encoding="utf-8") as f:
            parsed, lines = parse_document(f.read(), where, AIConfigError)
        if parsed is not None and not isinstance(parsed, Mapping):
            raise AIConfigError(where, ["expected a mapping of settings (base_url, model, ...)"])
        doc = parsed or {}
    merged = {**doc, **{k: v for k, v in overrides.items() if v is not None}}
    return _check(merged, lines, where)


def _check(doc: Mapping[str, Any], lines: dict[str, int], where: str) -> AIConfig:
    ck = Checker(lines)
    known = {f.name for f in fields(AIConfig)}
    for key in sorted(doc, key=str):
        if str(key).lower() in _FORBIDDEN:
            ck.add(str(key), f"a key never goes in a file: set it in the environment as {KEY_ENV}")
        elif key not in known:
            ck.add(str(key), f"unknown setting; expected one of {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for name in ("base_url", "model"):
        values[name] = ck.string(doc, name, name)
    base = values.get("base_url")
    if isinstance(base, str) and not base.startswith(("http://", "https://")):
        ck.add("base_url", f"expected an http:// or https:// URL, got {base!r}")
    for name in ("budget_usd", "min_interval_sec", "backoff_sec", "temperature"):
        values[name] = ck.number(doc, name, name, minimum=0)
    values["timeout_sec"] = ck.number(doc, "timeout_sec", "timeout_sec", minimum=0.001)
    for name, low in (("every_steps", 1), ("max_retries", 0), ("max_failures", 1),
                      ("max_context_tokens", 200), ("max_actions", 0), ("settle_steps", 0),
                      ("total_steps", 1), ("memory", 0)):  # fmt: skip
        values[name] = ck.number(doc, name, name, integer=True, minimum=low)
    structured = doc.get("structured")  # YAML reads a bare `off` (and `on`) as a boolean
    if isinstance(structured, bool):
        structured = "on" if structured else "off"
    values["structured"] = ck.choice({"structured": structured}, "structured", "structured",
                                     _STRUCTURED)  # fmt: skip
    values["prices"] = _prices(doc.get("prices"), ck)
    if ck.problems:
        raise AIConfigError(where, ck.problems)
    return replace(AIConfig(), **{k: v for k, v in values.items() if v is not None})


def _prices(raw: Any, ck: Checker) -> dict[str, dict[str, float]] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        ck.add("prices", "expected {model: {input: USD per 1M tokens, output: ...}}")
        return None
    out: dict[str, dict[str, float]] = {}
    for model, price in raw.items():
        at = f"prices.{model}"
        if not isinstance(price, Mapping) or set(price) - {"input", "output"}:
            ck.add(at, "expected {input: USD per 1M tokens, output: USD per 1M tokens}")
            continue
        row = {k: ck.number(price, k, f"{at}.{k}", minimum=0) for k in ("input", "output")}
        if None in row.values():
            ck.add(at, "needs both input and output (USD per 1M tokens)")
            continue
        out[str(model)] = {k: float(v) for k, v in row.items()}
    return out
