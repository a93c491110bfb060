"""The rule autopilot of a run: its state, proposals and rules (docs/autopilot.md).

The state is read from the run's autopilot files whoever writes them (this server with
``--autopilot``, a headless ``hotcb autopilot``, or nobody). A decision on a proposal goes
through :func:`hotcb.autopilot.engine.decide`, as ``hotcb autopilot accept|reject`` does, with
``by: "dashboard"``; an accepted proposal's commands carry ``source: "autopilot"`` and a
``reason`` naming the rule. Rules are switched on and off only in an autopilot this server runs:
a headless one takes its rules from its file.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, StrictBool

from ...autopilot.engine import decide, proposals
from ...errors import JournalWriteError
from ..autopilot import NOT_HERE, RuleOffInFile
from ..deps import Deps, not_written
from ._runs import both


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["accept", "reject"]


class RuleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: StrictBool


class _Locks:
    """One lock per run: one decision at a time, so a double click cannot send a proposal's
    action twice."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def __call__(self, run_dir: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(run_dir, threading.Lock())


def _decide(run_dir: str, lock: threading.Lock, proposal_id: str, accept: bool) -> dict[str, Any]:
    with lock:
        found = next((p for p in proposals(run_dir) if p.get("id") == proposal_id), None)
        if found is None:
            raise HTTPException(404, detail=f"no autopilot proposal {proposal_id!r}")
        if found.get("state") != "pending":
            why = f" ({found['reason']})" if found.get("reason") else ""
            raise HTTPException(
                409, detail=f"proposal {proposal_id} is {found.get('state')}, not pending{why}"
            )
        try:
            return decide(run_dir, proposal_id, accept, by="dashboard")
        except JournalWriteError as exc:
            raise not_written(exc) from None
        except (KeyError, ValueError) as exc:  # out of bounds, no such actuator now, ...
            raise HTTPException(409, detail=str(exc).strip("'\"")) from None


def _set_rule(deps: Deps, run_dir: str, rule_id: str, enabled: bool) -> None:
    host = deps.autopilot
    if host is None or not host.runs_here(run_dir):
        raise HTTPException(409, detail=NOT_HERE)
    try:
        host.set_rule(run_dir, rule_id, enabled)
    except RuleOffInFile as exc:
        raise HTTPException(409, detail=str(exc)) from None
    except KeyError as exc:
        raise HTTPException(404, detail=str(exc).strip("'\"")) from None
    except LookupError as exc:  # the run went away between the check and the call
        raise HTTPException(409, detail=str(exc)) from None


def create_autopilot_router(deps: Deps) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["autopilot"])
    lock_for = _Locks()

    @both(router, "autopilot")
    async def autopilot(run_id: str = ".") -> dict[str, Any]:
        """The run's autopilot: ``mode``, ``key_metric``, ``direction``, ``rules`` (with
        ``enabled``), ``recent`` detections/actions/guard checks/skips/holds with their
        evidence, ``pending`` proposals, ``in_server`` (whether it runs in this server: only
        then can its rules be switched here). Never ran: mode ``off`` and the shipped rules."""
        run = deps.run(run_id)
        await run.refresh()
        return run.autopilot.doc

    def post_decision(proposal_id: str, body: DecisionBody, run_id: str = ".") -> dict[str, Any]:
        """Accept (its action is sent now) or reject a pending proposal: the decision record.
        404 for an unknown proposal, 409 for one that is not pending (with its state) or
        whose action cannot be sent (the reason)."""
        run_dir = deps.path(run_id)  # sync handler: runs in a worker thread
        return _decide(run_dir, lock_for(run_dir), proposal_id, body.decision == "accept")

    def post_rule(rule_id: str, body: RuleBody, run_id: str = ".") -> dict[str, Any]:
        """Switch a rule on or off in the autopilot this server runs (kept across restarts).
        409 when the autopilot does not run in this server, 404 for an unknown rule."""
        _set_rule(deps, deps.path(run_id), rule_id, body.enabled)
        return {"rule": rule_id, "enabled": body.enabled}

    for path, fn in (
        ("autopilot/proposals/{proposal_id}", post_decision),
        ("autopilot/rules/{rule_id}", post_rule),
    ):
        router.post(f"/runs/{{run_id:path}}/{path}")(fn)
        router.post(f"/runs/{path}", include_in_schema=False)(fn)
    return router
