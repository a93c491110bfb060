"""Write side of a run: commands and freeze, validated here and appended with
``source: "dashboard"`` through :class:`hotcb.client.HotClient` (the one local writer)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, HTTPException

from ...client import HotClient
from ...errors import CommandError
from ..deps import Deps

_COMMAND_EXAMPLE = {"module": "opt", "op": "set_params", "params": {"lr": 0.0003}}
_FREEZE_EXAMPLE = {"mode": "prod"}


def _json(body: Any) -> Any:
    """Only ``Content-Type: application/json`` bodies are commands. A body of another type
    arrives as bytes and is refused: a cross-site page can send a plain-text POST without a
    CORS preflight, so accepting it would let any website steer a local run."""
    if isinstance(body, (bytes, str)):
        raise HTTPException(
            415, detail="send the command as JSON with 'Content-Type: application/json'"
        )
    return body


def create_commands_router(deps: Deps) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["commands"])

    def send(run_id: str, body: Any) -> dict[str, str]:
        run_dir = deps.path(run_id)  # sync handler: runs in a worker thread
        body = _json(body)
        if not isinstance(body, dict):
            raise HTTPException(422, detail=f"a command must be a JSON object, got {body!r}")
        record = dict(body)
        if record.get("module") == "cb" and record.get("op") == "load":
            if not deps.config.allow_code_load:
                raise HTTPException(
                    403,
                    detail="loading code from the dashboard is off: start the server with "
                    "allow_code_load: true (or HOTCB_ALLOW_CODE_LOAD=1) to allow `cb load`",
                )
        record["source"] = "dashboard"  # whoever asked, the ledger says it came from here
        record.pop("ts", None)
        try:
            cmd_id = HotClient(run_dir, source="dashboard").send_record(record)
        except CommandError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        return {"cmd_id": cmd_id}

    def post_command(run_id: str = ".", body: Any = Body(..., examples=[_COMMAND_EXAMPLE])):  # noqa: B008
        """Append one command (``module``, ``op``, ``params``, ``id``, ``at_step``,
        ``transition``, …); 422 with the reason when it is invalid."""
        return send(run_id, body)

    def post_freeze(run_id: str = ".", body: Any = Body(..., examples=[_FREEZE_EXAMPLE])):  # noqa: B008
        """Set the freeze mode: ``{"mode", "recipe_path"?, "adjust_path"?, "step_offset"?}``."""
        body = _json(body)
        if not isinstance(body, dict):
            raise HTTPException(422, detail=f"freeze needs a JSON object, got {body!r}")
        unknown = set(body) - {"mode", "recipe_path", "adjust_path", "step_offset"}
        if unknown:
            raise HTTPException(
                422, detail=f"unknown freeze field(s): {', '.join(sorted(unknown))}"
            )
        offset = body.get("step_offset")
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)):
            raise HTTPException(422, detail=f"step_offset must be an integer, got {offset!r}")
        record = {
            "module": "freeze",
            "op": "set",
            **{k: v for k, v in body.items() if v is not None},
        }
        return send(run_id, record)

    for path, fn in (("commands", post_command), ("freeze", post_freeze)):
        router.post(f"/runs/{{run_id:path}}/{path}")(fn)
        router.post(f"/runs/{path}", include_in_schema=False)(fn)
    return router
