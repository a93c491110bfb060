"""The LLM autopilot (DESIGN §9; docs/autopilot.md, "LLM autopilot"): a policy of the
autopilot engine that asks a model behind any OpenAI-compatible endpoint what to change.

The rules stay its sensors, its actions come from the same bounded action set and go through
the same guard, and it falls back to the rules when its budget is spent or its endpoint keeps
failing. Needs the ``openai`` SDK (``pip install "hotcb[ai]"``), imported only when an AI mode
starts.
"""

from ._config import KEY_ENV, AIConfig, AIConfigError, load_ai_config
from ._context import REPLY_SCHEMA, SYSTEM_PROMPT, build_context, impact, messages, trend
from ._policy import AI_LOG, AI_STATE, AIPolicy, Outcome, project_memory
from ._prices import PRICES, cost_usd, price_of
from ._reply import MalformedReply, Reply, parse_reply

__all__ = [
    "AI_LOG",
    "AI_STATE",
    "KEY_ENV",
    "PRICES",
    "REPLY_SCHEMA",
    "SYSTEM_PROMPT",
    "AIConfig",
    "AIConfigError",
    "AIPolicy",
    "MalformedReply",
    "Outcome",
    "Reply",
    "build_context",
    "cost_usd",
    "impact",
    "load_ai_config",
    "messages",
    "parse_reply",
    "price_of",
    "project_memory",
    "trend",
]
