"""Recipe edges a probe found: ``--adjust`` with ``--mode replay``, undos with nothing to undo,
steps out of range, unknown events, shared cmd_ids, overlays that move an entry below step 0
(named by file and line), an export of a run that restarted without a checkpoint, and freeze
entries that say which recipe they started.

CLI behaviour runs the real ``hotcb`` command (the ``cli`` fixture)."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

from hotcb import HotClient
from hotcb.errors import CommandError, RecipeError
from hotcb.freeze import FreezeMode, FreezeState
from hotcb.recipe import RecipePlayer, read_recipe
from hotcb.runfiles import RunPaths
from hotcb.testing import StepDriver

pytest.importorskip("yaml")

HEADER = {"v": 1, "kind": "hotcb.recipe", "run": {}}


def _entry(step: int, params: dict[str, Any], cmd_id: str, **more: Any) -> dict[str, Any]:
    return {"at": {"step": step, "event": more.pop("event", "train_step_end")},
            "module": more.pop("module", "loss"), "op": more.pop("op", "set_params"),
            "params": params, "cmd_id": cmd_id, **more}  # fmt: skip


def _undo(step: int, target: str, cmd_id: str) -> dict[str, Any]:
    return _entry(step, {"cmd_id": target}, cmd_id, module="control", op="undo")


def _recipe(path: Any, *entries: dict[str, Any]) -> str:
    with open(path, "w") as f:
        for rec in (HEADER, *entries):
            f.write(json.dumps(rec) + "\n")
    return os.fspath(path)


def _freezes(run_dir: str) -> list[dict[str, Any]]:
    path = RunPaths(run_dir).commands
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [c for c in map(json.loads, f) if c.get("module") == "freeze"]


# ----------------------------------------------------------------------------- --adjust
def test_adjust_with_mode_replay_is_a_usage_error(tmp_path: Any, cli: Any) -> None:
    """The run ignores an overlay in ``replay``: it exited 0 and replayed the recipe as written."""
    run_dir = os.fspath(tmp_path / "run")
    os.makedirs(run_dir)
    recipe = _recipe(tmp_path / "r.jsonl", _entry(2, {"l2": 0.5}, "a"))
    overlay = tmp_path / "adj.yaml"
    overlay.write_text("patches:\n  - match: {module: loss}\n    replace_params: {l2: 0.1}\n")
    done = cli(run_dir, "freeze", "--mode", "replay", "--recipe", recipe, "--adjust",
               os.fspath(overlay))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--adjust only applies to --mode replay_adjusted" in done.stderr
    assert _freezes(run_dir) == []  # nothing sent
    done = cli(run_dir, "freeze", "--mode", "replay_adjusted", "--recipe", recipe, "--adjust",
               os.fspath(overlay))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [c["mode"] for c in _freezes(run_dir)] == ["replay_adjusted"]
    with pytest.raises(CommandError, match="adjust_path only applies to mode 'replay_adjusted'"):
        HotClient(run_dir).freeze("replay", recipe_path=recipe, adjust_path=os.fspath(overlay))
    assert [c["mode"] for c in _freezes(run_dir)] == ["replay_adjusted"]  # nothing more sent


# ----------------------------------------------------------------------------- recipe lines
def test_validate_and_freeze_refuse_an_undo_with_nothing_to_undo(tmp_path: Any, cli: Any) -> None:
    """An undo of a cmd_id the recipe lacks, or of a change that comes after it: the replay
    rejects it ("no applied command ... to undo"); validate said ok and freeze sent it."""
    recipe = _recipe(
        tmp_path / "r.jsonl",
        _entry(2, {"l2": 0.5}, "a"),
        _undo(4, "NOPE", "u1"),
        _undo(5, "c", "u2"),
        _entry(6, {"l2": 0.7}, "c"),
    )
    done = cli(None, "recipe", "validate", "--recipe", recipe)
    assert done.returncode == 1, done.stdout
    assert done.stdout.splitlines() == [
        f"{recipe}:3: control undo names cmd_id 'NOPE', which no entry of this recipe has: "
        "the replay would reject it (nothing to undo)",
        f"{recipe}:4: control undo comes before the change it undoes, line 5 (step 6 "
        '(train_step_end): loss set_params {"l2": 0.7}): the replay would reject it',
    ]
    run_dir = os.fspath(tmp_path / "run")
    os.makedirs(run_dir)
    done = cli(run_dir, "freeze", "--mode", "replay", "--recipe", recipe)
    assert done.returncode == 2 and "NOPE" in done.stderr, done.stderr
    assert _freezes(run_dir) == []


BAD_LINES = [
    (_entry(-5, {"l2": 0.5}, "a"), "at.step must be an integer from 0 to 9223372036854775807, "
                                   "got -5"),
    (_entry(10**30, {"l2": 0.5}, "a"), "at.step must be an integer from 0 to "
                                       f"9223372036854775807, got {10**30}"),
    (_entry(3, {"l2": 0.5}, "a", event="val_epch_end"), "unknown at.event 'val_epch_end'; did "
     "you mean 'val_epoch_end'? (known: train_batch_end, train_step_end, val_epoch_end); an "
     "event that never comes would fire the entry at the next safe point instead"),
]  # fmt: skip


@pytest.mark.parametrize(("rec", "says"), BAD_LINES)
def test_validate_refuses_steps_out_of_range_and_unknown_events(
    tmp_path: Any, cli: Any, rec: dict[str, Any], says: str
) -> None:
    """A negative step, one past any step counter, an event no safe point sends (the entry
    fired silently at the next safe point): each said ok."""
    recipe = _recipe(tmp_path / "r.jsonl", _entry(1, {"l2": 0.1}, "first"), rec)
    done = cli(None, "recipe", "validate", "--recipe", recipe)
    assert done.returncode == 1, done.stdout
    assert done.stdout.splitlines() == [f"{recipe}:3: {says}"]
    with pytest.raises(RecipeError, match=r"at\.step|at\.event"):
        read_recipe(recipe)  # the replay refuses it too


def test_a_loop_s_own_event_is_not_refused(tmp_path: Any, cli: Any) -> None:
    """`kernel.apply(env, ("my_eval_end",))` ledgers its own event; its recipes replay it."""
    recipe = _recipe(tmp_path / "r.jsonl", _entry(1, {"l2": 0.1}, "first"),
                     _entry(3, {"l2": 0.5}, "a", event="my_eval_end"))  # fmt: skip
    done = cli(None, "recipe", "validate", "--recipe", recipe)
    assert done.returncode == 0, done.stdout
    assert [e.event for e in read_recipe(recipe).entries] == ["train_step_end", "my_eval_end"]


def test_validate_refuses_two_entries_with_one_cmd_id(tmp_path: Any, cli: Any) -> None:
    recipe = _recipe(tmp_path / "r.jsonl", _entry(1, {"l2": 0.1}, "same"),
                     _entry(3, {"l2": 0.2}, "other"), _entry(5, {"l2": 0.3}, "same"))  # fmt: skip
    done = cli(None, "recipe", "validate", "--recipe", recipe)
    assert done.returncode == 1, done.stdout
    assert done.stdout.splitlines() == [
        f"{recipe}:4: cmd_id 'same' is already the cmd_id of line 2: each entry needs its own"
    ]


# ----------------------------------------------------------------------------- overlays
def test_overlay_problems_name_the_file_and_the_patch_line(tmp_path: Any, cli: Any) -> None:
    """A shift below step 0 was accepted; the overlay's other problems said ``overlay patch N``
    without the file."""
    recipe = _recipe(tmp_path / "r.jsonl", _entry(20, {"l2": 0.5}, "a"), _entry(40, {"ce": 2}, "b"))
    overlay = tmp_path / "adj.yaml"
    overlay.write_text(
        "version: 1\n"
        "patches:\n"
        "  - match: {module: loss, has_param: l2}\n"
        "    shift_step: -30\n"
        "  - match: {module: opt}\n"
        "    drop: true\n"
        "  - insert: {at: {step: 50}, module: control, op: undo, params: {cmd_id: NOPE}}\n"
    )
    ov = os.fspath(overlay)
    done = cli(None, "recipe", "validate", "--recipe", recipe, "--adjust", ov)
    assert done.returncode == 1, done.stdout
    assert done.stdout.splitlines() == [
        f"overlay {ov}:3 patch 1: shift_step moves line 2 below step 0 (step -10 "
        '(train_step_end): loss set_params {"l2": 0.5})',
        f"overlay {ov}:5 patch 2 matches no recipe entry: {{'module': 'opt'}}",
        f"overlay {ov}:7 patch 3: the undo at an entry the overlay inserts (step 50) names "
        "cmd_id 'NOPE', which no entry has: the replay would reject that undo",
    ]
    assert done.stderr.splitlines()[-1] == f"3 problem(s) in {ov}"  # after what went unchecked

    # the replay refuses it with the same words (the freeze state names the overlay)
    state = FreezeState(FreezeMode.REPLAY_ADJUSTED, recipe, ov)
    with pytest.raises(RecipeError, match=r"patch 1: shift_step moves line 2 below step 0"):
        RecipePlayer.from_freeze(state)

    # a JSON overlay has no lines to name: the file and the patch
    as_json = tmp_path / "adj.json"
    as_json.write_text(json.dumps({"patches": [{"match": {"module": "opt"}, "drop": True}]}))
    done = cli(None, "recipe", "validate", "--recipe", recipe, "--adjust", os.fspath(as_json))
    assert done.stdout.splitlines() == [
        f"overlay {as_json} patch 1 matches no recipe entry: {{'module': 'opt'}}"
    ]


def _validated(tmp_path: Any, cli: Any, run_dir: str | None, patches: str) -> tuple[Any, str]:
    """``recipe validate --adjust`` of an overlay of ``patches`` on a recipe of one entry
    (``l2`` at step 20, line 2); the finished command and the overlay's path."""
    recipe = _recipe(tmp_path / "r.jsonl", _entry(20, {"l2": 0.5}, "a"))
    overlay = tmp_path / "adj.yaml"
    overlay.write_text("version: 1\npatches:\n" + patches)
    ov = os.fspath(overlay)
    return cli(run_dir, "recipe", "validate", "--recipe", recipe, "--adjust", ov), ov


def test_a_patch_that_makes_an_entry_the_run_refuses_is_named(tmp_path: Any, cli: Any) -> None:
    """Against a run's published actuators, an entry an overlay inserts with a knob the run
    lacks was blamed on the recipe, with no patch or overlay line, and the summary counted it
    as the recipe's ("2 problem(s) (1 in adj.yaml)" for problems that were all the overlay's)."""
    run_dir = os.fspath(tmp_path / "run")
    with StepDriver(run_dir, weights={"ce": 1.0, "l2": 0.0}, metrics_collector=False) as drv:
        drv.steps(1)
    done, ov = _validated(tmp_path, cli, run_dir, (
        "  - match: {module: loss, has_param: l2}\n"
        "    replace_params: {l2: oops}\n"
        "  - insert: {at: {step: 30}, module: custom, op: set_params, params: {dropout: 0.0}}\n"
    ))  # fmt: skip
    assert done.returncode == 1, done.stdout
    lines = done.stdout.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"overlay {ov}:3 patch 1: recipe line 2 as it changes it (step 20")
    assert "must be a number" in lines[0], lines[0]
    assert lines[1].startswith(f"overlay {ov}:5 patch 2: the entry it inserts (step 30")
    assert "unknown actuator 'dropout'" in lines[1]
    assert done.stderr.splitlines()[-1] == f"2 problem(s) in {ov}"


# ----------------------------------------------------------------------------- export
def test_export_warns_of_a_restart_without_a_checkpoint(tmp_path: Any, cli: Any) -> None:
    """Life 1 sets l2 at step 4 and dies; life 2 starts again at step 0 without a checkpoint
    and sets ce at step 2: its l2 stayed 0, but the recipe says l2=0.5 at step 4. The export
    keeps both (a restart continues the ledger) and now says so, on stderr and in the header."""
    run_dir = os.fspath(tmp_path / "run")
    first = StepDriver(run_dir, weights={"ce": 1.0, "l2": 0.0}, metrics_collector=False)
    first.steps(6, actions={4: lambda c: c.loss(l2=0.5)})
    first.close()
    done = cli(run_dir, "recipe", "export")
    assert done.returncode == 0 and done.stderr == "", done.stderr  # one life: nothing to say

    second = StepDriver(run_dir, weights={"ce": 1.0, "l2": 0.0}, metrics_collector=False)
    second.steps(3, actions={2: lambda c: c.loss(ce=2.0)})
    second.close()
    seq = second.ledger()[-1]["seq"]
    done = cli(run_dir, "recipe", "export")
    assert done.returncode == 0, done.stderr
    said = (
        f"the run restarted without a checkpoint at ledger seq {seq} (its steps went back from "
        "4 to 2, with no 'kernel resume' entry): the recipe includes the 1 change(s) of the "
        "life before, which the restarted run did not have"
    )
    assert done.stderr.splitlines() == [f"hotcb: warning: {said}"]
    recipe = read_recipe(RunPaths(run_dir).recipe)
    assert recipe.header["warnings"] == [said]
    assert [(e.step, e.params) for e in recipe.entries] == [(2, {"ce": 2.0}), (4, {"l2": 0.5})]


def test_export_of_a_replay_started_again_says_no_lost_change(tmp_path: Any, cli: Any) -> None:
    """A finished replay launched again in its folder replays its recipe again, with the same
    commands: the export warned that the recipe "includes the 2 change(s) of the life before,
    which the restarted run did not have", though it had every one of them."""
    run_dir = os.fspath(tmp_path / "run")
    recipe = _recipe(tmp_path / "r.jsonl", _entry(2, {"l2": 0.5}, "a"), _entry(4, {"ce": 2.0}, "b"))
    for _ in range(2):
        run = StepDriver(run_dir, weights={"ce": 1.0, "l2": 0.0}, metrics_collector=False)
        if not os.path.exists(RunPaths(run_dir).freeze):
            run.client.freeze("replay", recipe_path=recipe)
        run.steps(6)
        run.close()
        assert run.weights == {"ce": 2.0, "l2": 0.5}
    done = cli(run_dir, "recipe", "export")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    entries = read_recipe(RunPaths(run_dir).recipe).entries
    assert [(e.step, e.params) for e in entries] == [(2, {"l2": 0.5}), (4, {"ce": 2.0})]


def test_export_of_a_run_resumed_with_a_callback_says_no_restart(tmp_path: Any, cli: Any) -> None:
    """A run resumed from its checkpoint with a callback loaded: the checkpoint's ``cb restore``
    entry comes before the ``kernel resume`` one, at the checkpoint's step, and the export
    warned "the run restarted without a checkpoint", telling the user to cut the recipe by
    hand and so drop real changes."""
    run_dir = os.fspath(tmp_path / "run")
    first = StepDriver(run_dir, weights={"ce": 1.0, "l2": 0.0}, metrics_collector=False)
    first.client.cb_load("beat", path="hotcb.modules.cb.callbacks", symbol="HeartbeatCallback")
    first.steps(5)
    saved = first.kernel.state_dict()
    first.steps(5, actions={8: lambda c: c.loss(l2=0.5)})  # dies without close()
    second = StepDriver(run_dir, weights={"ce": 1.0, "l2": 0.0}, metrics_collector=False)
    second.kernel.load_state_dict(saved)
    second.step = saved["step"]
    second.steps(5)
    second.close()
    ops = [(e["module"], e["op"]) for e in second.ledger()]
    assert ops.index(("cb", "restore")) < ops.index(("kernel", "resume")), ops
    # `hotcb log` names what came back (it said only "cb restore -> noop")
    assert "cb restore -> noop: beat back from the checkpoint" in cli(run_dir, "log").stdout
    done = cli(run_dir, "recipe", "export")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "warnings" not in read_recipe(RunPaths(run_dir).recipe).header


# ----------------------------------------------------------------------------- freeze entries
def test_a_freeze_entry_shows_the_recipe_it_replays(tmp_path: Any, cli: Any) -> None:
    """``hotcb log`` said ``mode: replay -> replay`` for a change of recipe."""
    run_dir = os.fspath(tmp_path / "run")
    one = _recipe(tmp_path / "one.jsonl", _entry(50, {"l2": 0.5}, "a"))
    two = _recipe(tmp_path / "two.jsonl", _entry(60, {"l2": 0.7}, "b"))
    run = StepDriver(run_dir, weights={"ce": 1.0, "l2": 0.0}, metrics_collector=False)
    first = run.client.freeze("replay", recipe_path=one)
    run.steps(1)
    second = run.client.freeze("replay", recipe_path=two, step_offset=5)
    run.steps(1)
    run.close()
    a, b = run.only(first)["changes"], run.only(second)["changes"]
    assert a["mode"] == {"old": "off", "new": "replay"}
    assert a["recipe_path"]["old"] is None and a["recipe_path"]["new"].endswith(".recipe.jsonl")
    assert b["mode"] == {"old": "replay", "new": "replay"}
    assert b["recipe_path"] == {"old": a["recipe_path"]["new"], "new": b["recipe_path"]["new"]}
    assert b["recipe_path"]["old"] != b["recipe_path"]["new"]
    assert b["step_offset"] == {"old": 0, "new": 5}
    assert "adjust_path" not in b
    log = cli(run_dir, "log", "-n", "0")
    assert f"recipe_path: {a['recipe_path']['new']} -> {b['recipe_path']['new']}" in log.stdout


def test_the_python_freeze_example_of_the_docs_runs(tmp_path: Any, monkeypatch: Any) -> None:
    """docs/replay.md's ``HotClient.freeze`` example, as written, from a folder holding the
    files it names: both commands land in the run's commands file with the copies' paths."""
    docs = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "replay.md")
    with open(docs) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    example = next(b for b in blocks if "client.freeze(" in b)
    monkeypatch.chdir(tmp_path)
    os.makedirs("runs/a")
    _recipe("runs/a/hotcb.recipe.jsonl", _entry(20, {"l2": 0.5}, "a"))
    with open("hotcb.adjust.yaml", "w") as f:
        f.write("patches:\n  - match: {module: loss}\n    replace_params: {l2: 0.1}\n")
    exec(compile(example, "docs/replay.md", "exec"), {})
    sent = _freezes("runs/b")
    assert [c["mode"] for c in sent] == ["replay", "replay_adjusted"]
    assert sent[0]["recipe_path"] == sent[1]["recipe_path"]  # the copy of runs/a's recipe
    assert sent[0]["recipe_path"].startswith("hotcb.replay/"), sent[0]
    assert sent[1]["adjust_path"].startswith("hotcb.replay/") and sent[1]["step_offset"] == 10_000


def test_below_step_0_names_the_patch_that_moved_or_inserted_it(tmp_path: Any, cli: Any) -> None:
    """A shift below step 0 followed by another patch of the same entry (a replace_params)
    blamed the later patch, line and all, as the one that moved it."""
    done, ov = _validated(tmp_path, cli, None, (
        "  - match: {module: loss, has_param: l2}\n"
        "    shift_step: -30\n"
        "  - match: {module: loss, has_param: l2}\n"
        "    replace_params: {l2: 0.25}\n"
    ))  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert done.stdout.splitlines() == [
        f"overlay {ov}:3 patch 1: shift_step moves line 2 below step 0 (step -10 "
        '(train_step_end): loss set_params {"l2": 0.25})'
    ]
