"""What the docs promise about recipes, checked as written: ``recipe validate`` says what it did
not check with problems too, an ``at.event`` in the wrong case is a near miss, overlay problems
come in the file's order, and the commands that create a missing run directory (docs/core.md).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from hotcb.cli import main
from hotcb.errors import RecipeError
from hotcb.recipe import RecipeEntry, overlay_problems, read_recipe

NOT_CHECKED = "param names and bounds not checked"


def _recipe(path: Path, *entries: dict[str, Any]) -> str:
    header = {"v": 1, "kind": "hotcb.recipe", "run": {}}
    path.write_text("".join(json.dumps(r) + "\n" for r in (header, *entries)))
    return os.fspath(path)


def _set(step: int, module: str = "opt", **params: Any) -> dict[str, Any]:
    at = {"step": step, "event": "train_step_end"}
    return {"v": 1, "at": at, "module": module, "op": "set_params", "params": params}


def test_validate_says_names_went_unchecked_when_it_lists_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run with no published actuators: ``lrr`` and ``lr=99`` go unchecked, and the user is
    told so next to the problems found (it was said only when there were none)."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    bad = _recipe(tmp_path / "bad.jsonl", _set(8, lrr=0.1), _set(2, lr=99.0))  # steps backwards
    assert main(["--dir", os.fspath(fresh), "recipe", "validate", "--recipe", bad]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{bad}:3: step 2 comes after step 8 (line 2): entries must be "
                                "in step order"]  # fmt: skip
    lines = err.splitlines()
    assert len(lines) == 2 and NOT_CHECKED in lines[0] and os.fspath(fresh) in lines[0]
    assert lines[1] == "1 problem(s)"

    # an overlay's problems too
    overlay = tmp_path / "o.yaml"
    overlay.write_text("version: 1\npatches:\n  - match: {at_step: 99}\n    drop: true\n")
    good = _recipe(tmp_path / "good.jsonl", _set(2, lrr=0.1))
    argv = ["--dir", os.fspath(fresh), "recipe", "validate", "--recipe", good]
    assert main([*argv, "--adjust", os.fspath(overlay)]) == 1
    out, err = capsys.readouterr()
    assert "matches no recipe entry" in out
    assert NOT_CHECKED in err and err.splitlines()[-1] == f"1 problem(s) in {overlay}"


@pytest.mark.parametrize("event", ["Train_Step_End", "TRAIN_STEP_END", "Val_Epch_End"])
def test_an_event_in_another_case_is_a_near_miss(event: str) -> None:
    """Events match exactly: ``Train_Step_End`` would never come, so it is refused with the
    name it nearly is (it passed as a loop's own event)."""
    rec = {**_set(1, lr=0.1), "at": {"step": 1, "event": event}}
    with pytest.raises(RecipeError, match=r"unknown at.event .*; did you mean '(train_step_end|"
                       r"val_epoch_end)'"):  # fmt: skip
        RecipeEntry.from_record(rec, line=2)
    own = {**rec, "at": {"step": 1, "event": "My_Event"}}  # far from every known one: kept
    assert RecipeEntry.from_record(own, line=2).event == "My_Event"


def test_overlay_problems_come_in_the_files_order(tmp_path: Path) -> None:
    """A malformed patch is found before the others are applied; the list still reads top
    down (it said lines 9, 3, 7, 5)."""
    recipe = _recipe(tmp_path / "fix.jsonl", _set(40, lr=0.004), _set(80, lr=0.002))
    overlay = tmp_path / "bad.adjust.yaml"
    overlay.write_text(
        "version: 1\n"
        "patches:\n"
        "  - match: {module: opt, at_step: 40}\n"
        "    replace_params: {lrr: 0.001}\n"
        "  - match: {module: opt, at_step: 80}\n"
        "    shift_step: -100\n"
        "  - match: {module: loss, has_param: distill}\n"
        "    drop: true\n"
        "  - match: {module: opt, at_step: 40}\n"
        "    transform_params: {scale: .nan}\n"
    )
    _, problems = overlay_problems(read_recipe(recipe).entries, overlay)
    where = re.escape(os.fspath(overlay))
    lines = [int(re.match(rf"overlay {where}:(\d+) patch", p).group(1)) for p in problems]  # type: ignore[union-attr]
    assert lines == [3, 5, 7, 9]


@pytest.mark.parametrize("mode", ["replay", "replay_adjusted"])
def test_freeze_with_a_recipe_creates_the_run_directory(
    tmp_path: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/core.md's exception: the recipe is copied into ``RUN/hotcb.replay/``, so a replay
    can be queued before the run starts (README and docs/replay.md do it without ``init``);
    other commands refuse a missing directory."""
    recipe = _recipe(tmp_path / "fix.jsonl", _set(4, lr=0.004))
    overlay = tmp_path / "hotcb.adjust.yaml"
    overlay.write_text("version: 1\npatches:\n")
    run = tmp_path / "runs" / "b"
    extra = ["--adjust", os.fspath(overlay)] if mode == "replay_adjusted" else []
    assert (
        main(["--dir", os.fspath(run), "freeze", "--mode", mode, "--recipe", recipe, *extra]) == 0
    )
    assert (run / "hotcb.replay").is_dir() and (run / "hotcb.commands.jsonl").is_file()
    other = tmp_path / "runs" / "c"
    assert main(["--dir", os.fspath(other), "freeze", "--mode", "prod"]) == 2
    assert "no run directory at" in capsys.readouterr().err and not other.exists()
