"""Branch a run: a new run directory that starts from one of a parent run's checkpoints.

``branch(parent, child, source=STEP_OR_PATH, set_params={"lr": 1e-3})`` makes ``child`` a run
that the parent's checkpoint at that step continues, with other settings:

- ``hotcb.run.json`` names the parent (``branch``: parent, step, checkpoint, seq);
- ``hotcb.applied.jsonl`` begins with the parent's ledger up to the checkpoint, each entry
  marked ``"inherited": true`` with ``cursor: 0`` (those entries recorded commands of the
  parent's commands file, not the child's). A resume never re-applies an inherited entry; the
  checkpoint holds what they did. ``hotcb status`` and the callback list read them as the
  run's history;
- ``hotcb.commands.jsonl`` holds the ``set_params`` changes, due at the checkpoint's step
  (``at_step``), so they land at the child's first safe point, exactly as the same command
  scheduled in a run resumed from that checkpoint;
- the parent's ``hotcb.actuators.json`` (``hotcb set`` routes keys by it), captured callback
  sources (``hotcb.sources/``: a resumed callback is loaded from there) and replay recipes
  (``hotcb.replay/``: the checkpoint of a replaying run names its recipe there) are copied;
- a parent frozen at the checkpoint (``prod``, ``replay``) would ignore the ``set_params``
  changes: with changes to make, a ``freeze off`` command comes first (``frozen`` in the
  result says from which mode); without, the branch goes on in the parent's mode.

Then start the child's training with ``HOTCB_RESUME_FROM`` set to the checkpoint
(``hotcb --dir CHILD launch --resume-from CKPT -- python train.py ...``; the parent's own
command when it was started with ``hotcb launch``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import jsonl
from .client import HotClient
from .errors import HotcbError
from .ledger import checkpoint_path, iter_entries
from .runfiles import RunPaths, shell_path

__all__ = ["BranchError", "branch", "checkpoints", "resume_command", "retarget"]

#: Files of the parent copied into the child, when they exist.
_COPIED = ("hotcb.actuators.json", "hotcb.sources", "hotcb.replay")


class BranchError(HotcbError, ValueError):
    """The branch cannot be made: no such checkpoint, or the child is not a new run."""


def checkpoints(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The run's saved checkpoints, in ledger order: its applied ``control checkpoint`` entries
    that name a file (each with ``path``: the absolute path of that file)."""
    root = os.fspath(run_dir)
    out = []
    for e in iter_entries(RunPaths(root).ledger):
        if (e.get("module"), e.get("op"), e.get("decision")) != (
            "control",
            "checkpoint",
            "applied",
        ):
            continue
        path = checkpoint_path(e, root)
        if path is not None:
            out.append({**e, "path": path})
    return out


def _available(found: Sequence[Mapping[str, Any]], parent: str) -> str:
    if not found and _asked_only(parent):
        return (
            f"{parent}'s loop saved its checkpoints on kernel.checkpoint_requested, which does "
            "not tell the ledger their files: give kernel.apply a save_checkpoint(path) "
            "callable in env that returns the path it wrote (docs/branch.md), or resume from "
            "the file with 'hotcb launch --resume-from FILE'"
        )
    if not found:
        return (
            f"{parent} has no checkpoint in its ledger (save one with 'hotcb --dir {shell_path(parent)} "
            "checkpoint', or schedule one with --at-step)"
        )
    listed = ", ".join(f"step {e['step']} ({e['path']}"
                       + ("" if os.path.exists(e["path"]) else ", gone") + ")" for e in found)  # fmt: skip
    return f"checkpoints of {parent}: {listed}"


def _asked_only(parent: str) -> bool:
    """Whether the parent applied a checkpoint command that only set
    ``kernel.checkpoint_requested`` (no file in its ledger entry)."""
    return any(
        (e.get("module"), e.get("op"), e.get("decision")) == ("control", "checkpoint", "applied")
        and checkpoint_path(e, parent) is None
        for e in iter_entries(RunPaths(parent).ledger)
    )


def _resolve(parent: str, source: int | str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint entry ``source`` names: a step number or a checkpoint file's path."""
    found = checkpoints(parent)
    if isinstance(source, int):
        matches = [e for e in found if e.get("step") == source]
        what = f"no checkpoint at step {source}"
    else:
        # as given from here, or inside the parent, as `checkpoint --path` takes a relative one
        wanted = {os.path.realpath(os.fspath(source)),
                  os.path.realpath(os.path.join(parent, os.fspath(source)))}  # fmt: skip
        matches = [e for e in found if os.path.realpath(e["path"]) in wanted]
        what = f"{os.fspath(source)} is not a checkpoint in {parent}'s ledger"
    if not matches:
        raise BranchError(f"{what}; {_available(found, parent)}")
    entry = matches[-1]  # saved again at the same step: the later file is the one on disk
    if not os.path.exists(entry["path"]):  # a file, or a folder (the HF Trainer's)
        raise BranchError(
            f"the checkpoint of step {entry['step']} ({entry['path']}) is gone; "
            f"{_available(found, parent)}"
        )
    return entry


def _new_run(child: str, parent: str) -> None:
    if os.path.realpath(child) == os.path.realpath(parent):
        raise BranchError(f"the branch must go to a new run directory, not the parent {parent}")
    if os.path.exists(child) and not os.path.isdir(child):
        raise BranchError(f"{child} is a file, not a folder; branch into a new run directory")
    if os.path.isdir(child) and os.listdir(child):
        raise BranchError(f"{child} exists and is not empty; branch into a new run directory")


def _inherited(parent: str, last_seq: int) -> list[dict[str, Any]]:
    """The parent's entries up to ``last_seq``, marked as inherited, cursors cleared, and a
    checkpoint's file named by its absolute path (it lies in the parent's directory)."""
    out = []
    for e in iter_entries(RunPaths(parent).ledger):
        seq = e.get("seq")
        if type(seq) is int and seq > last_seq:
            break
        e = {**e, "inherited": True, "cursor": 0}
        saved = checkpoint_path(e, parent) if e.get("module") == "control" else None
        if saved is not None:
            e["checkpoint"] = saved
        out.append(e)
    return out


def _forget_values(path: str) -> None:
    """The parent's actuators file, kept for its names, types and bounds (``hotcb set`` checks
    and routes keys by them), without the values the parent ended with: the branch starts from
    the checkpoint's, which its kernel publishes when it starts."""
    doc = jsonl.read_json(path, None)
    if not isinstance(doc, dict) or not isinstance(doc.get("actuators"), list):
        return
    for a in doc["actuators"]:
        if isinstance(a, dict):
            a["current"] = None
    doc["from_parent"] = True
    jsonl.write_json_atomic(path, doc)


def _freeze_mode(entries: Sequence[Mapping[str, Any]]) -> str | None:
    """The freeze mode the last applied ``freeze`` entry left in force, when not ``off``."""
    mode = "off"
    for e in entries:
        if e.get("module") == "freeze" and e.get("decision") == "applied":
            new = ((e.get("changes") or {}).get("mode") or {}).get("new")
            mode = new if isinstance(new, str) else mode
    return None if mode == "off" else mode


#: Where the training command goes in :func:`resume_command` when the parent's is not known
#: (it was not started with ``hotcb launch``).
UNKNOWN_COMMAND = "<your training command>"


def resume_command(
    child: str,
    ckpt: str,
    argv: Sequence[str] | None,
    parent: str | None = None,
    cwd: str | None = None,
) -> str:
    """The command that starts the child's training from the checkpoint: the parent's
    launched ``argv`` (run from ``cwd``), where an argument naming the parent's run directory
    (``--run-dir runs/a``, ``--run-dir=runs/a``) names the child's."""
    if argv and parent:
        argv = retarget(argv, parent, child, cwd)
    train = shlex.join(argv) if argv else UNKNOWN_COMMAND
    return f"hotcb --dir {shlex.quote(child)} launch --resume-from {shlex.quote(ckpt)} -- {train}"


def retarget(argv: Sequence[str], parent: str, child: str, cwd: str | None = None) -> list[str]:
    """``argv`` with each argument that names the run directory ``parent`` (a path from
    ``cwd``, alone or as ``--flag=PATH``) naming ``child`` instead."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
        if not eq:
            flag, value = "", arg
        where = os.path.join(cwd or os.getcwd(), os.path.expanduser(value))
        out.append(f"{flag}{eq}{child}" if value and os.path.abspath(where) == parent else arg)
    return out


def branch(
    parent: str | os.PathLike[str],
    child: str | os.PathLike[str],
    *,
    source: int | str | os.PathLike[str],
    set_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Create ``child`` as a branch of ``parent`` at a checkpoint (``source``: its step, or its
    file's path); ``set_params`` (``{"lr": 1e-3}``) become its commands, due at its first step.

    Returns ``child``, ``parent``, ``step``, ``checkpoint`` (the file to resume from),
    ``inherited`` (how many ledger entries), ``commands`` (the cmd_ids of the changes),
    ``frozen`` (the parent's freeze mode at the checkpoint when the branch turns it off for its
    changes, else None) and
    ``resume`` (the ``hotcb launch`` command that starts it; with the parent's launched command
    when ``hotcb.run.json`` has one). :class:`BranchError` when there is no such checkpoint
    (the message lists those there are) or ``child`` is not a new, empty directory."""
    parent_dir, child_dir = os.path.abspath(os.fspath(parent)), os.path.abspath(os.fspath(child))
    parent_paths = RunPaths(parent_dir)
    if not os.path.isfile(parent_paths.ledger):
        raise BranchError(f"{parent_dir} is not a run directory (no {parent_paths.ledger})")
    _new_run(child_dir, parent_dir)
    entry = _resolve(parent_dir, source)
    step, ckpt = int(entry["step"]), entry["path"]
    info = {"parent": parent_dir, "step": step, "checkpoint": ckpt, "seq": entry["seq"]}
    born = (jsonl.read_json(RunPaths(parent_dir).run_meta, {}) or {}).get("created")
    if isinstance(born, (int, float)):  # who the parent is, wherever it goes (the dashboard)
        info["parent_created"] = born
    created = not os.path.exists(child_dir)
    try:
        ids, frozen = _populate(parent_dir, child_dir, info, set_params or {})
    except BaseException:  # a bad --set key, a full disk: leave no half-made child behind
        if created:
            shutil.rmtree(child_dir, ignore_errors=True)
        raise
    parent_meta = jsonl.read_json(parent_paths.run_meta, {}) or {}
    launched = parent_meta.get("launch") if isinstance(parent_meta, dict) else None
    argv = launched.get("argv") if isinstance(launched, dict) else None
    cwd = launched.get("cwd") if isinstance(launched, dict) else None
    return {
        "child": child_dir,
        **info,
        "inherited": sum(1 for _ in iter_entries(RunPaths(child_dir).ledger)),
        "commands": ids,
        "frozen": frozen,
        "resume": resume_command(child_dir, ckpt, argv, parent_dir, cwd),
    }


def _populate(
    parent: str, child: str, info: Mapping[str, Any], set_params: Mapping[str, Any]
) -> tuple[list[str], str | None]:
    """Write the child's files; the cmd_ids of its commands, and the freeze mode it turns off
    for them (None: none to turn off)."""
    paths = RunPaths(child)
    os.makedirs(child, exist_ok=True)
    for name in _COPIED:
        src, dst = os.path.join(parent, name), os.path.join(child, name)
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        elif os.path.isfile(src):
            shutil.copy2(src, dst)
    _forget_values(paths.actuators)
    inherited = _inherited(parent, int(info["seq"]))
    frozen = _freeze_mode(inherited) if set_params else None
    # the commands first: a key that no actuator of the parent takes fails before the rest
    client = HotClient(child, source="branch")
    ids = [client.freeze("off", at_step=info["step"])] if frozen is not None else []
    try:
        ids += client.set(dict(set_params), at_step=info["step"]) if set_params else []
    except BaseException:
        if ids:  # the child is new: nothing else is in its commands file
            os.remove(paths.commands)
        raise
    os.close(jsonl.open_own(paths.commands, os.O_WRONLY | os.O_CREAT | os.O_APPEND)[0])
    jsonl.append_many(paths.ledger, inherited, fsync=True)
    jsonl.write_json_atomic(
        paths.run_meta, {"created": time.time(), "run_dir": child, "branch": dict(info)}
    )
    return ids, frozen
