"""Freeze and recipe commands: ``freeze``, ``recipe export|validate|patch-template``."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from .. import jsonl
from ..errors import RecipeError
from ..freeze import FreezeMode, FreezeState, saved_freeze
from ..ledger import iter_entries
from ..ops import FREEZE_MODES
from ..recipe import (
    RecipeEntry,
    RecipePlayer,
    RecipeProblem,
    check_actuators,
    check_recipe,
    export_recipe,
    out_file,
    overlay_problems,
    player_for,
    sets_actuators,
)
from ..runfiles import RunPaths, shell_path
from ._common import (
    UsageError,
    add_wait,
    client,
    finish,
    require_out_folder,
    require_run_dir,
    say,
    term_safe,
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "freeze",
        help="freeze the run: off (steer live) | prod (ignore changes; pause, resume, stop, "
        "checkpoint, evaluate and freeze still work) | replay | replay_adjusted",
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
    p.add_argument("--out", help="file, or folder to write it in (default RUN/hotcb.recipe.jsonl)")
    p.set_defaults(func=cmd_export)

    p = rsub.add_parser("validate", help="list every problem of a recipe (exit 1 if any)")
    p.add_argument("--recipe", help="recipe file (default RUN/hotcb.recipe.jsonl)")
    p.add_argument("--adjust", help="also check this overlay against the recipe")
    p.set_defaults(func=cmd_validate)

    p = rsub.add_parser("patch-template", help="write a commented hotcb.adjust.yaml for a recipe")
    p.add_argument("--recipe", help="recipe file (default RUN/hotcb.recipe.jsonl)")
    p.add_argument("--out", help="write to this file (or folder) instead of stdout")
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
        if mode is FreezeMode.REPLAY and adjust is not None:  # the run would ignore it
            raise UsageError(
                "--adjust only applies to --mode replay_adjusted (replay follows the recipe "
                "as written); use --mode replay_adjusted to replay it with the overlay"
            )
        player = player_for(state)  # fail here, not in the run, when the recipe is broken
        assert player is not None
        adjusted = mode is FreezeMode.REPLAY_ADJUSTED
        _check_replay(args, recipe, player.entries, adjust if adjusted else None)
    elif recipe or adjust:
        raise UsageError(f"--recipe/--adjust only apply to the replay modes, not {mode.value}")
    cid = client(args).freeze(
        mode.value,
        recipe_path=recipe,
        adjust_path=adjust,
        step_offset=args.step_offset or None,
    )
    return finish(args, [cid])


def _not_checked(run_dir: str) -> str:
    """The line that says a recipe's param names and bounds were not checked."""
    return (
        f"hotcb: param names and bounds not checked: {os.path.abspath(run_dir)} has no "
        "published actuators (hotcb.actuators.json); the run checks each entry when it "
        "replays it"
    )


def _check_replay(
    args: argparse.Namespace, recipe: str, entries: list[RecipeEntry], adjust: str | None
) -> None:
    """``freeze``: refuse a replay of nothing, or of entries the run's published actuators
    would refuse (all of them listed, with their lines)."""
    if not entries:
        if adjust:
            raise UsageError(f"{recipe} has no entries left after {adjust}: nothing to replay")
        raise UsageError(
            f"{recipe} is empty: nothing to replay ('hotcb --dir RUN recipe export' writes the "
            "changes a run applied)"
        )
    problems = check_actuators(entries, args.dir)
    if problems is None:
        if sets_actuators(entries):
            print(_not_checked(args.dir), file=sys.stderr)
        return
    if problems:
        raise UsageError(
            f"{recipe}: {len(problems)} problem(s) against the run's actuators"
            + (f" (after {adjust})" if adjust else "")
            + ":\n"
            + "\n".join(f"  {_located(recipe, p)}" for p in problems)
            + f"\n'hotcb --dir {shell_path(args.dir)} recipe validate --recipe {shell_path(recipe)}' lists them"
        )


def _in_order(p: RecipeProblem) -> tuple[bool, int, int]:
    """The recipe's problems by line, then the overlay's by patch (its file's order)."""
    patch = re.search(r" patch (\d+)", p.message) if p.overlay else None
    return p.overlay, int(patch.group(1)) if patch else 0, p.line


def _located(path: str, p: RecipeProblem) -> str:
    if p.overlay:  # an overlay patch's: its message names the overlay's file and line
        return p.message
    return f"{path}:{p.line}: {p.message}" if p.line else f"{path}: {p.message}"


def cmd_export(args: argparse.Namespace) -> int:
    require_run_dir(args.dir)
    require_out_folder(args.out)
    try:
        path, entries = export_recipe(args.dir, args.out)
    except PermissionError as exc:
        if args.out:
            raise
        raise UsageError(f"{exc.filename}: {exc.strerror}; write the recipe elsewhere with "
                         "--out FILE") from None  # fmt: skip
    print(f"wrote {len(entries)} entries to {path}")
    with open(path, "rb") as f:  # the header's warnings: the ledger is not read again
        header = jsonl.parse_line(f.readline()) or {}
    for warning in header.get("warnings") or ():
        say(f"hotcb: warning: {warning}", file=sys.stderr)
    if not entries:
        print("hotcb: the run applied no change a recipe replays; the recipe is empty",
              file=sys.stderr)  # fmt: skip
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    path = _recipe_arg(args)
    try:
        recipe, problems = check_recipe(path)
    except RecipeError as exc:  # cannot read it
        recipe, problems = None, [RecipeProblem(0, str(exc))]
    entries = recipe.entries if recipe is not None else []
    said: list[str] = []  # the overlay's problems, all at once (a malformed patch left out)
    if recipe is not None and args.adjust and not problems:
        adjusted, said = overlay_problems(recipe.entries, args.adjust)
        entries = adjusted if adjusted is not None else []  # None: it cannot be read
    # the entries the replay would apply (after the overlay), as a live command is checked
    # (not when the recipe's problems kept the overlay from being applied)
    skipped = bool(args.adjust and problems)
    checked = None if skipped else check_actuators(entries, args.dir)
    problems = sorted([*problems, *(checked or ())], key=_in_order)
    # a recipe's or an overlay's problems quote what its lines hold (PyYAML's on lines of
    # their own: where in the file)
    for text in [*said, *(_located(path, p) for p in problems)]:
        print("\n".join(map(term_safe, text.split("\n"))))
    if not skipped and checked is None and sets_actuators(entries):  # with problems or not
        print(_not_checked(args.dir), file=sys.stderr)
    if said or problems:
        overlay = len(said) + sum(p.overlay for p in problems)
        where = (f" in {args.adjust}" if overlay == len(said) + len(problems) else
                 f" ({overlay} in {args.adjust})" if overlay else "")  # fmt: skip
        print(f"{len(said) + len(problems)} problem(s){where}", file=sys.stderr)
        return 1
    assert recipe is not None
    after = f", {len(entries)} after {args.adjust}" if args.adjust else ""
    if not entries:
        print(
            f"{path}: empty: nothing to replay ({len(recipe.entries)} entries{after}); "
            "freeze --mode replay refuses it"
        )
    else:
        print(f"ok: {len(recipe.entries)} entries{after}")
    return 0


def cmd_patch_template(args: argparse.Namespace) -> int:
    from ..recipe import patch_template, read_recipe

    require_out_folder(args.out)
    out = out_file(args.out, "hotcb.adjust.yaml") if args.out else None
    text = patch_template(read_recipe(_recipe_arg(args)))
    if out:
        with open(out, "w") as f:
            f.write(text)
        print(f"wrote {out}")
    else:
        sys.stdout.write("\n".join(term_safe(line) for line in text.split("\n")))
    return 0


def status_extra(paths: RunPaths, n: int = 5) -> dict[str, Any]:
    """For ``hotcb status``: in a replay mode, the next recipe entries still to fire."""
    state, _ = saved_freeze(paths.freeze, paths.ledger)
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
