"""What a call costs: the ``usage`` tokens a reply reports times a price table.

Prices are USD per 1M tokens as their providers published them when this table was written;
they change, so a config file's ``prices`` overrides any row (docs/autopilot.md). A model not in
the table (a local Ollama or vLLM model) costs 0, and the status says its price is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["PRICES", "cost_usd", "price_of"]

PRICES: dict[str, dict[str, float]] = {
    "gpt-5": {"input": 1.25, "output": 10.0},
    "gpt-5-mini": {"input": 0.25, "output": 2.0},
    "gpt-5-nano": {"input": 0.05, "output": 0.40},
    "gpt-4.1": {"input": 2.0, "output": 8.0},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "output": 0.40},
    "gpt-4o": {"input": 2.50, "output": 10.0},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "o4-mini": {"input": 1.10, "output": 4.40},
    "o3": {"input": 2.0, "output": 8.0},
}


def price_of(
    model: str, overrides: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, float] | None:
    """The price row of ``model``: an exact match, else the longest name it starts with
    (``gpt-4o-mini-2024-07-18`` is ``gpt-4o-mini``); None when unknown."""
    table = {**PRICES, **(overrides or {})}
    if model in table:
        return dict(table[model])
    prefixes = [name for name in table if model.startswith(name + "-")]
    return dict(table[max(prefixes, key=len)]) if prefixes else None


def cost_usd(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
) -> float | None:
    """USD for one call, or None when the model's price is unknown."""
    price = price_of(model, overrides)
    if price is None:
        return None
    return (prompt_tokens * price["input"] + completion_tokens * price["output"]) / 1e6
