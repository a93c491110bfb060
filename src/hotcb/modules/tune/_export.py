"""``hotcb tune export``: the tuner's kept changes as a recipe that ``freeze --mode replay``
plays (the mutations it rolled back are left out)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from ...ledger import iter_entries, live_entries
from ...recipe import RecipeEntry, export_recipe, out_file, tune_entries
from ...runfiles import RunPaths

__all__ = ["export_kept", "kept_entries"]


def kept_entries(ledger: Iterable[Mapping[str, Any]]) -> list[RecipeEntry]:
    """The ``set_params`` of every mutation the tuner kept (and no one undid), and the lr its
    start bracket settled on, at the steps it made them."""
    entries = live_entries(ledger)  # not the trials of a life a resume replaced
    undone = {e.get("undo_of") for e in entries if e.get("decision") == "applied"}
    # a keep is of the last mutation of its trial number before it: a new study (another
    # --storage or --study) numbers its trials from 0 again, so a number alone names two
    open_: dict[Any, Mapping[str, Any]] = {}
    kept: list[Mapping[str, Any]] = []
    for e in entries:
        if e.get("module") != "tune":
            continue
        trial, what = (e.get("tune") or {}).get("trial"), (e.get("op"), e.get("decision"))
        if what == ("bracket", "applied"):
            params = e.get("params") or {}
            if params.get("settle") and not params.get("commanded"):  # (a person's value)
                kept.append(e)
        elif what == ("mutate", "applied"):
            open_[trial] = e
        elif e.get("op") == "keep" and trial in open_:
            kept.append(open_.pop(trial))
        elif e.get("op") in ("rollback", "void"):
            open_.pop(trial, None)
    out = [r for e in kept if e.get("cmd_id") not in undone for r in tune_entries(e)]
    out.sort(key=lambda entry: entry.step)
    return out


def export_kept(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> tuple[str, list[RecipeEntry]]:
    """Write the kept changes (default ``RUN/hotcb.tune.recipe.jsonl``; ``out`` a folder:
    that name in it)."""
    paths = RunPaths(os.fspath(run_dir))
    target = out_file(out, os.path.join(paths.root, "hotcb.tune.recipe.jsonl"))
    return export_recipe(run_dir, target, kept_entries(iter_entries(paths.ledger)))
