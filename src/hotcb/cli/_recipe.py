"""Freeze and recipe commands: ``freeze``, ``recipe export|validate|patch-template``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import RecipeError
from ..freeze import FreezeMode, FreezeState
from ..ledger import iter_entries
from ..ops import FREEZE_MODES
from ..recipe import (
    RecipePlayer,
    check_recipe,
    export_recipe,
    load_overlay,
    player_for,
    validate_recipe,
)
from ..runfiles import RunPaths
from ._common import UsageError, add_wait, client, finish, require_out_folder


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "freeze",
        help="freeze the run: off (steer live) | prod (ignore commands) | replay | replay_adjusted",
    )
    p.add_argument("--mode", required=True, choices=FREEZE_MODES)
    p.add_argument("--recipe", help="recipe to replay (replay modes)")
    p.add_argument("--adjust", help="overlay YAML that patches the recipe (replay_adjusted)")
    p.add_argument(
        "--step-offset", type=int, default=0, help="shift every recipe step by N (default 0)"
    )
    add_wait(p)
    p.set_defaults(func=cmd_freeze)

    rp = sub.add_parser("recipe", help="export, validate and adjust replay recipes")
    rsub = rp.add_subparsers(dest="recipe_command", metavar="OP")
    rsub.required = True
    p = rsub.add_parser("export", help="write the run's applied changes as a recipe")
    p.add_argument("--out", help="output file (default RUN/hotcb.recipe.jsonl)")
    p.set_defaults(func=cmd_export)

    p = rsub.add_parser("validate", help="list every problem of a recipe (exit 1 if any)")
    p.add_argument("--recipe", help="recipe file (default RUN/hotcb.recipe.jsonl)")
    p.add_argument("--adjust", help="also check this overlay against the recipe")
    p.set_defaults(func=cmd_validate)

    p = rsub.add_parser("patch-template", help="write a commented hotcb.adjust.yaml for a recipe")
    p.add_argument("--recipe", help="recipe file (default RUN/hotcb.recipe.jsonl)")
    p.add_argument("--out", help="write here instead of stdout")
    p.set_defaults(func=cmd_patch_template)


def _recipe_arg(args: argparse.Namespace) -> str:
    return os.path.abspath(args.recipe) if args.recipe else RunPaths(args.dir).recipe


def cmd_freeze(args: argparse.Namespace) -> int:
    mode = FreezeMode(args.mode)
    recipe = os.path.abspath(args.recipe) if args.recipe else None
    adjust = os.path.abspath(args.adjust) if args.adjust else None
    state = FreezeState(mode, recipe, adjust, args.step_offset)
    if state.replaying:
        if recipe is None:
            raise UsageError(f"--mode {mode.value} needs --recipe FILE (see 'hotcb recipe export')")
        if mode is FreezeMode.REPLAY_ADJUSTED and adjust is None:
            raise UsageError("--mode replay_adjusted needs --adjust hotcb.adjust.yaml")
        player_for(state)  # fail here, not in the run, when the recipe or overlay is broken
    elif recipe or adjust:
        raise UsageError(f"--recipe/--adjust only apply to the replay modes, not {mode.value}")
    cid = client(args).freeze(
        mode.value,
        recipe_path=recipe,
        adjust_path=adjust,
        step_offset=args.step_offset or None,
    )
    return finish(args, [cid])


def cmd_export(args: argparse.Namespace) -> int:
    require_out_folder(args.out)
    path, entries = export_recipe(args.dir, args.out)
    print(f"wrote {len(entries)} entries to {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    path = _recipe_arg(args)
    problems = validate_recipe(path)
    for p in problems:
        print(f"{path}:{p.line}: {p.message}" if p.line else f"{path}: {p.message}")
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    recipe, _ = check_recipe(path)
    if args.adjust:
        from ..recipe import apply_overlay

        try:
            entries = apply_overlay(recipe.entries, load_overlay(args.adjust))
        except RecipeError as exc:  # every problem of the overlay, one a line, like a recipe's
            lines = str(exc).splitlines()
            said = lines[1:] if len(lines) > 1 else lines
            for line in said:
                print(line)
            print(f"{len(said)} problem(s) in {args.adjust}", file=sys.stderr)
            return 1
        print(f"ok: {len(recipe.entries)} entries, {len(entries)} after {args.adjust}")
    else:
        print(f"ok: {len(recipe.entries)} entries")
    return 0


def cmd_patch_template(args: argparse.Namespace) -> int:
    from ..recipe import patch_template, read_recipe

    require_out_folder(args.out)
    text = patch_template(read_recipe(_recipe_arg(args)))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def status_extra(paths: RunPaths, n: int = 5) -> dict[str, Any]:
    """For ``hotcb status``: in a replay mode, the next recipe entries still to fire."""
    state = FreezeState.load(paths.freeze)
    if not state.replaying:
        return {}
    try:
        player: RecipePlayer | None = player_for(state, paths.root)
    except Exception as exc:
        return {"replay_next": [f"recipe unusable: {exc}"]}
    assert player is not None
    fired = {
        (e.get("cmd_id"), e.get("recipe_line"))
        for e in iter_entries(paths.ledger)
        if e.get("source") == "recipe"
    }
    left = [e for e in player.entries if (e.cmd_id, e.line) not in fired]
    off = player.step_offset
    lines = []
    for e in left[:n]:
        text = e.describe()
        if off:
            text = f"[run step {e.step + off}] {text}"
        lines.append(text)
    if not left:
        lines.append(f"recipe done ({len(player.entries)} entries replayed)")
    elif len(left) > n:
        lines.append(f"... {len(left) - n} more")
    return {"replay_next": lines}
