"""The tuner's state file as it reads once its run is over (``tune status``, the dashboard's
``GET …/tune``): the file keeps what the run wrote last, a next boundary and proposals still
``pending``, which nothing can apply any more."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def over_view(state: Mapping[str, Any], over: str | None) -> dict[str, Any]:
    """``state`` for a run whose training process is gone (``over``: ``finished at step N``,
    …): ``run_over``, no next boundary, its pending proposals ``ended``. As it is while the
    run goes on (``over`` None)."""
    if over is None:
        return dict(state)
    proposals = [{**p, "state": "ended"} if p.get("state") == "pending" else p
                 for p in state.get("proposals") or ()]  # fmt: skip
    return {**state, "run_over": over, "next_boundary": None, "proposals": proposals}
