"""Write side of a run: commands and freeze, validated here and appended with
``source: "dashboard"`` through :class:`hotcb.client.HotClient` (the one local writer).

Bodies are JSON (``JSONOnlyMiddleware`` refuses other types before this runs). A path in a
request (a freeze recipe or overlay, a checkpoint's ``params.path``, a callback file, a tuner
recipe) must resolve inside the run directory or one of ``allowed_roots`` (403 otherwise); the
refusal never says whether the file exists. A freeze that replays a recipe (and overlay) is
sent with the run's own copy of the bytes checked here (``hotcb.replay/``, as ``hotcb freeze``
does), never the path given: the file may change after the check. A tuner's study storage is a
URL that may name any file or database, so it is never taken from a request (the CLI and Python
set it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, HTTPException

from ... import jsonl
from ...client import HotClient
from ...errors import (
    ActuatorError,
    CommandError,
    JournalWriteError,
    PathNotAllowedError,
    RecipeError,
)
from ...runfiles import confine_path
from ..deps import Deps, not_written

if TYPE_CHECKING:
    from ...recipe import RecipeEntry

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


#: The name of the run's own copy of a freeze request's file, by its field.
_COPY_SUFFIX = {"recipe_path": "recipe.jsonl", "adjust_path": "adjust.yaml"}


def _read(path: str, what: str) -> bytes:
    try:
        fd, _ = jsonl.open_regular(path)  # a FIFO there would hang the request
        with open(fd, "rb") as f:
            return f.read()
    except OSError as exc:
        raise HTTPException(422, detail=f"cannot read {what} {path}: {exc.strerror or exc}") from None  # fmt: skip


def _inside(path: str, run_dir: str, roots: tuple[str, ...]) -> bool:
    try:
        confine_path(path, run_dir, roots)
    except PathNotAllowedError:
        return False
    return True


def _loads_code(entries: Sequence[RecipeEntry]) -> str | None:
    """The first ``cb load`` of code (anything but hotcb's bundled callbacks) among a replay's
    ``entries``, as ``line N: cb load ID (PATH)``; None when there is none."""
    from ...modules.cb._loader import BUNDLED_PATH

    for e in entries:
        target = e.target or {}
        if (e.module, e.op) == ("cb", "load") and not (
            target.get("kind") == "python_path" and target.get("path") == BUNDLED_PATH
        ):
            where = f"line {e.line}" if e.line is not None else "an entry the overlay inserts"
            return f"{where}: cb load {e.id} ({target.get('path')})"
    return None


def _replay_copies(
    run_dir: str, roots: tuple[str, ...], record: dict[str, Any], code_ok: bool
) -> None:
    """Point a freeze ``record`` that replays a recipe (and overlay) at the run's own copies
    of the bytes checked here (``hotcb.replay/<sha>.…``, as ``hotcb freeze`` does): each file
    is read once, so a file swapped after the check changes nothing the trainer replays.
    Unless ``code_ok``, 403 when the replay would load code; 422 for a file that cannot be
    read."""
    given = record.get("params")
    params: dict[str, Any] = given if isinstance(given, dict) else {}

    def field(key: str) -> Any:  # where the trainer looks: the record, then its params
        value = record.get(key)
        return params.get(key) if value is None else value

    mode = field("mode")
    if record.get("module") != "freeze" or mode not in ("replay", "replay_adjusted"):
        return
    needs = ["recipe_path", "adjust_path"] if mode == "replay_adjusted" else ["recipe_path"]
    missing = [key for key in needs if field(key) is None]
    if missing:  # the trainer would refuse it, in a ledger row the page does not point at
        cli = "--recipe FILE" + (" --adjust FILE" if mode == "replay_adjusted" else "")
        raise HTTPException(422, detail=f"freeze mode {mode} replays a recipe: send "
                            f"{' and '.join(missing)} (from the CLI: hotcb --dir RUN freeze "
                            f"--mode {mode} {cli})")  # fmt: skip
    from ...recipe import (
        apply_overlay,
        bring_sources,
        check_recipe,
        load_overlay,
        replay_copy,
        store_in_run,
    )

    keys = needs
    # _confine made each a string inside the allowed places
    data = {k: _read(confine_path(field(k), run_dir, roots, what=k), k) for k in keys}
    copies = {k: replay_copy(data[k], _COPY_SUFFIX[k]) for k in keys}
    # the entries that parse, whatever else is wrong with the file (the trainer says what)
    # parsed as the file it was read from: a captured source is looked for beside it
    recipe = check_recipe(confine_path(field("recipe_path"), run_dir, roots), data["recipe_path"])[
        0
    ]
    entries = recipe.entries
    if "adjust_path" in data:
        overlay = os.path.join(run_dir, copies["adjust_path"])
        try:  # an overlay may insert a load too
            patched = apply_overlay(entries, load_overlay(overlay, data["adjust_path"]))
            entries = [*entries, *patched]
        except RecipeError:
            pass  # the trainer reads the same bytes and refuses them too
    loads = None if code_ok else _loads_code(entries)
    if loads is not None:  # a replay would load the code a cb load from here may not
        raise HTTPException(
            403,
            detail=f"the recipe loads code ({loads}) and loading code from the dashboard is "
            "off: replay it with 'hotcb freeze' from the CLI, or start the server with "
            "allow_code_load: true (or HOTCB_ALLOW_CODE_LOAD=1)",
        )
    bring_sources(run_dir, recipe, readable=lambda path: _inside(path, run_dir, roots))
    for key in keys:
        store_in_run(run_dir, data[key], _COPY_SUFFIX[key])
        for holder in (record, params):
            if key in holder:
                holder[key] = copies[key]


def _check_tune(client: HotClient, record: dict[str, Any]) -> None:
    """A tuner command's settings or proposal id, checked as the CLI checks them (422 with
    every problem), instead of a 200 for a command the run then rejects."""
    op, params = record.get("op"), record.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise HTTPException(422, detail=f"tune {op}: params must be a JSON object, got {params!r}")
    try:
        if op == "enable":
            from ...modules.tune import parse_settings

            # (a recipe file is read, and checked, by the run: it may name one in the run)
            parse_settings({k: v for k, v in params.items() if v is not None and k != "recipe"})
        elif op in ("accept", "reject"):
            found = client.tune_proposal(params.get("id"))  # type: ignore[arg-type]  # (or why not)
            try:  # decided already, or the run is over: as the CLI refuses it
                params["id"] = client.pending_proposal(found["id"])
            except CommandError as exc:
                raise HTTPException(409, detail=str(exc)) from None
        elif op != "disable":
            raise CommandError(f"tune has no op {op!r}: enable, disable, accept or reject")
    except (CommandError, RecipeError) as exc:
        raise HTTPException(422, detail=str(exc)) from None


def _send(deps: Deps, roots: tuple[str, ...], run_id: str, body: Any) -> dict[str, str]:
    """Check ``body`` and append it to the run's commands as ``source: "dashboard"``."""
    run_dir = deps.path(run_id)  # sync handler: runs in a worker thread
    if not isinstance(body, dict):
        raise HTTPException(422, detail=f"a command must be a JSON object, got {body!r}")
    # what is checked is what is written: a null field is left out of the command (and the
    # trainer then reads it from params), so a check that saw `"mode": null` passed a replay
    # of code (a security hole)
    record = {k: v for k, v in body.items() if v is not None}
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
    _replay_copies(run_dir, roots, record, deps.config.allow_code_load)
    params = record.get("params")
    if record.get("module") == "tune" and isinstance(params, dict) and params.get("storage"):
        raise HTTPException(
            403,
            detail="the tuner's study storage is not set from the dashboard (a URL can name any "
            "file or database): use `hotcb tune enable --storage URL` or HotClient.tune_enable",
        )
    record["source"] = "dashboard"  # whoever asked, the ledger says it came from here
    record.pop("ts", None)
    client = HotClient(run_dir, source="dashboard", warn_over=False)  # (the answer says it)
    if record.get("module") == "tune":
        _check_tune(client, record)
    try:
        cmd_id = client.send_record(record)
    except (CommandError, ActuatorError) as exc:  # invalid, or refused by a published actuator
        raise HTTPException(422, detail=str(exc)) from None
    except JournalWriteError as exc:
        raise not_written(exc) from None
    over = client.run_over()
    if over is not None:  # nothing will answer it now: said, as the CLI does
        return {"cmd_id": cmd_id, "warning": f"the run {over}; the command waits in the "
                "commands file for the next run started in this directory (or the next loop "
                "of the same process, a second fit)"}  # fmt: skip
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
        the paths must lie inside the run directory or an allowed root, and the trainer
        replays the run's own copy of what was checked here (``hotcb.replay/``)."""
        return _send(deps, roots, run_id, _freeze_record(body))

    for path, fn in (("commands", post_command), ("freeze", post_freeze)):
        router.post(f"/runs/{{run_id:path}}/{path}")(fn)
        router.post(f"/runs/{path}", include_in_schema=False)(fn)
    return router
