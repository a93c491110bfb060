"""Write side of a run: commands and freeze, validated here and appended with
``source: "dashboard"`` through :class:`hotcb.client.HotClient` (the one local writer).

Bodies are JSON (``JSONOnlyMiddleware`` refuses other types before this runs). A path in a
request (a freeze recipe or overlay, a checkpoint's ``params.path``, a callback file, a tuner
recipe) must resolve inside the run directory or one of ``allowed_roots`` (403 otherwise); the
refusal never says whether the file exists. A tuner's study storage is a URL that may name any
file or database, so it is never taken from a request (the CLI and Python set it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Body, HTTPException

from ...client import HotClient
from ...errors import ActuatorError, CommandError, JournalWriteError, PathNotAllowedError
from ...runfiles import confine_path
from ..deps import Deps

_COMMAND_EXAMPLE = {"module": "opt", "op": "set_params", "params": {"lr": 0.0003}}
_FREEZE_EXAMPLE = {"mode": "prod"}
_FREEZE_FIELDS = frozenset({"mode", "recipe_path", "adjust_path", "step_offset"})


def _paths(record: dict[str, Any]) -> Iterator[tuple[str, Any, bool]]:
    """``(name, value, writes)`` of every field of ``record`` that names a file the trainer
    would open or (``writes``) write."""
    raw = record.get("params")
    params: dict[str, Any] = raw if isinstance(raw, dict) else {}
    module, op = record.get("module"), record.get("op")
    for key in ("recipe_path", "adjust_path"):
        if record.get(key) is not None:
            yield key, record[key], False
        if module == "freeze" and params.get(key) is not None:
            yield f"params.{key}", params[key], False
    if module == "control" and op == "checkpoint" and params.get("path") is not None:
        yield "params.path", params["path"], True
    if module == "cb" and op in ("load", "set_params") and params.get("path") is not None:
        yield "params.path", params["path"], True  # a callback's output (the JSONL logger's)
    target = record.get("target")
    if module == "cb" and isinstance(target, dict) and target.get("kind") == "python_file":
        yield "target.path", target.get("path"), False
    if module == "tune" and op == "enable" and params.get("recipe") is not None:
        yield "params.recipe", params["recipe"], False


def _confine(run_dir: str, roots: tuple[str, ...], record: dict[str, Any]) -> None:
    """422 for a path field that is not a string, 403 for one outside the run and ``roots``
    or, for a file written, one of the run's own ``hotcb.*`` files."""
    for what, value, writes in _paths(record):
        if not isinstance(value, str):
            raise HTTPException(422, detail=f"{what} must be a string path, got {value!r}")
        try:
            confine_path(value, run_dir, roots, what=what, writes=writes)
        except PathNotAllowedError as exc:
            raise HTTPException(403, detail=str(exc)) from None


def _recipe_loads_code(run_dir: str, roots: tuple[str, ...], record: dict[str, Any]) -> str | None:
    """The first ``cb load`` of code (anything but hotcb's bundled callbacks) that a freeze
    ``record``'s recipe (and overlay) would replay, as ``line N: cb load ID (PATH)``; None when
    there is none, or the recipe cannot be read (the trainer refuses it and says why)."""
    given = record.get("params")
    params: dict[str, Any] = given if isinstance(given, dict) else {}

    def field(key: str) -> Any:
        return record.get(key, params.get(key))

    if record.get("module") != "freeze" or field("mode") not in ("replay", "replay_adjusted"):
        return None
    from ...modules.cb._loader import BUNDLED_PATH
    from ...recipe import apply_overlay, check_recipe, load_overlay

    try:  # the entries that parse, whatever else is wrong with the file
        entries = check_recipe(confine_path(field("recipe_path"), run_dir, roots))[0].entries
    except Exception:
        return None
    if field("mode") == "replay_adjusted" and field("adjust_path"):
        try:  # an overlay may insert a load too
            overlay = load_overlay(confine_path(field("adjust_path"), run_dir, roots))
            entries = [*entries, *apply_overlay(entries, overlay)]
        except Exception:
            pass
    for e in entries:
        target = e.target or {}
        if (e.module, e.op) == ("cb", "load") and not (
            target.get("kind") == "python_path" and target.get("path") == BUNDLED_PATH
        ):
            where = f"line {e.line}" if e.line is not None else "an entry the overlay inserts"
            return f"{where}: cb load {e.id} ({target.get('path')})"
    return None


def _send(deps: Deps, roots: tuple[str, ...], run_id: str, body: Any) -> dict[str, str]:
    """Check ``body`` and append it to the run's commands as ``source: "dashboard"``."""
    run_dir = deps.path(run_id)  # sync handler: runs in a worker thread
    if not isinstance(body, dict):
        raise HTTPException(422, detail=f"a command must be a JSON object, got {body!r}")
    record = dict(body)
    if (
        record.get("module") == "cb"
        and record.get("op") == "load"
        and not deps.config.allow_code_load
    ):
        raise HTTPException(
            403,
            detail="loading code from the dashboard is off: start the server with "
            "allow_code_load: true (or HOTCB_ALLOW_CODE_LOAD=1) to allow `cb load`",
        )
    _confine(run_dir, roots, record)
    loads = None if deps.config.allow_code_load else _recipe_loads_code(run_dir, roots, record)
    if loads is not None:  # a replay would load the code a cb load from here may not
        raise HTTPException(
            403,
            detail=f"the recipe loads code ({loads}) and loading code from the dashboard is "
            "off: replay it with 'hotcb freeze' from the CLI, or start the server with "
            "allow_code_load: true (or HOTCB_ALLOW_CODE_LOAD=1)",
        )
    params = record.get("params")
    if record.get("module") == "tune" and isinstance(params, dict) and params.get("storage"):
        raise HTTPException(
            403,
            detail="the tuner's study storage is not set from the dashboard (a URL can name any "
            "file or database): use `hotcb tune enable --storage URL` or HotClient.tune_enable",
        )
    record["source"] = "dashboard"  # whoever asked, the ledger says it came from here
    record.pop("ts", None)
    client = HotClient(run_dir, source="dashboard")
    try:
        cmd_id = client.send_record(record)
    except (CommandError, ActuatorError) as exc:  # invalid, or refused by a published actuator
        raise HTTPException(422, detail=str(exc)) from None
    except JournalWriteError as exc:
        raise HTTPException(507, detail=str(exc)) from None
    over = client.run_over()
    if over is not None:  # nothing will answer it now: said, as the CLI does
        return {"cmd_id": cmd_id, "warning": f"the run {over}; the command waits in the "
                "commands file for the next run started in this directory"}  # fmt: skip
    return {"cmd_id": cmd_id}


def _freeze_record(body: Any) -> dict[str, Any]:
    """The ``freeze set`` command of a freeze request body (422 when the body is wrong)."""
    if not isinstance(body, dict):
        raise HTTPException(422, detail=f"freeze needs a JSON object, got {body!r}")
    unknown = set(body) - _FREEZE_FIELDS
    if unknown:
        raise HTTPException(422, detail=f"unknown freeze field(s): {', '.join(sorted(unknown))}")
    offset = body.get("step_offset")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)):
        raise HTTPException(422, detail=f"step_offset must be an integer, got {offset!r}")
    return {"module": "freeze", "op": "set", **{k: v for k, v in body.items() if v is not None}}


def create_commands_router(deps: Deps) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["commands"])
    roots = tuple(deps.config.allowed_roots)

    def post_command(
        run_id: str = ".",
        body: Any = Body(..., examples=[_COMMAND_EXAMPLE]),
    ) -> dict[str, str]:
        """Append one command (``module``, ``op``, ``params``, ``id``, ``at_step``,
        ``transition``, …); 422 with the reason when it is invalid, 403 for a path outside
        the run directory and the allowed roots."""
        return _send(deps, roots, run_id, body)

    def post_freeze(
        run_id: str = ".",
        body: Any = Body(..., examples=[_FREEZE_EXAMPLE]),
    ) -> dict[str, str]:
        """Set the freeze mode: ``{"mode", "recipe_path"?, "adjust_path"?, "step_offset"?}``;
        the paths must lie inside the run directory or an allowed root."""
        return _send(deps, roots, run_id, _freeze_record(body))

    for path, fn in (("commands", post_command), ("freeze", post_freeze)):
        router.post(f"/runs/{{run_id:path}}/{path}")(fn)
        router.post(f"/runs/{path}", include_in_schema=False)(fn)
    return router
