"""Recipe checks at the edges: ``--out`` a folder, entries checked against the actuators a run
published, an undo an overlay leaves with nothing to undo, an overlay that is not YAML, a file
that is not a recipe, an empty recipe, ``recipe export`` of a run directory that is not there.

CLI behaviour runs the real ``hotcb`` command (the ``cli`` fixture)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from hotcb import HotClient, HotKernel, loss_actuators, mutable_state
from hotcb.actuators import ActuatorType, HotcbActuator
from hotcb.errors import RecipeError
from hotcb.recipe import apply_overlay, load_overlay, read_recipe
from hotcb.runfiles import RunPaths

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "recipe_v1.jsonl")


def _strays(*folders: Any) -> list[str]:
    """Temporary files an interrupted write left in ``folders``."""
    return [n for f in folders for n in os.listdir(f) if ".tmp." in n]


@pytest.fixture
def run(tmp_path: Any) -> str:
    """A run that applied one change (``loss l2=0.5`` at step 2) and published its actuators:
    opt ``lr`` (log_float, 1e-10..10), loss ``ce`` and ``l2`` (float, 0..10000)."""
    run_dir = str(tmp_path / "run")
    weights = {"ce": 1.0, "l2": 0.0}
    kernel = HotKernel(
        run_dir,
        poll_interval_sec=0,
        metrics_collector=False,
        mutable_state=mutable_state(loss_actuators(weights)),
    )
    lr = {"lr": 0.01}
    kernel.register_actuator(
        HotcbActuator(
            param_key="lr",
            type=ActuatorType.LOG_FLOAT,
            apply_fn=lambda value, env: lr.update(lr=value),
            min_value=1e-10,
            max_value=10.0,
            group="opt",
        )
    )
    client = HotClient(run_dir)
    for step in range(4):
        if step == 2:
            client.loss(l2=0.5)
        kernel.apply({"step": step})
    kernel.close()
    assert os.path.exists(RunPaths(run_dir).actuators)
    return run_dir


# ----------------------------------------------------------------------------- --out a folder
def test_export_out_a_folder_writes_the_recipe_in_it(run: str, tmp_path: Any, cli: Any) -> None:
    """Like ``cp`` into a folder: ``--out DIR`` writes ``DIR/hotcb.recipe.jsonl`` (it said
    "[Errno 21] Is a directory" and left ``DIR.tmp.<pid>`` beside the folder)."""
    out = tmp_path / "recipes"
    out.mkdir()
    done = cli(run, "recipe", "export", "--out", os.fspath(out))
    assert done.returncode == 0, done.stderr
    written = os.fspath(out / "hotcb.recipe.jsonl")
    assert done.stdout.strip() == f"wrote 1 entries to {written}"
    assert [e.params for e in read_recipe(written).entries] == [{"l2": 0.5}]
    assert _strays(tmp_path, out) == []

    done = cli(run, "tune", "export", "--out", os.fspath(out))  # the same for the tuner's recipe
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == os.fspath(out / "hotcb.tune.recipe.jsonl")
    assert read_recipe(out / "hotcb.tune.recipe.jsonl").entries == []
    assert "the tuner was never on in this run" in done.stderr, done.stderr

    done = cli(None, "recipe", "patch-template", "--recipe", written, "--out", os.fspath(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {out / 'hotcb.adjust.yaml'}"
    assert load_overlay(out / "hotcb.adjust.yaml")["patches"] == []
    assert _strays(tmp_path, out) == []


def test_tune_export_before_the_trainer_applied_anything(tmp_path: Any, cli: Any) -> None:
    """A run whose trainer has applied nothing yet: an empty tuner recipe and the reason (it
    said "no ledger entries at ...: has this run applied anything?" and wrote nothing)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    done = cli(os.fspath(run_dir), "tune", "export")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == os.fspath(run_dir / "hotcb.tune.recipe.jsonl")
    assert read_recipe(run_dir / "hotcb.tune.recipe.jsonl").entries == []
    assert "the trainer has applied nothing in this run yet" in done.stderr, done.stderr

    done = cli(os.fspath(run_dir), "recipe", "export")  # every change: still an error
    assert done.returncode == 2 and "no ledger entries" in done.stderr, done.stderr


def test_a_failed_export_leaves_no_temporary_file(run: str, tmp_path: Any, cli: Any) -> None:
    out = tmp_path / "recipes"
    (out / "hotcb.recipe.jsonl").mkdir(parents=True)  # the file it would write is a folder
    done = cli(run, "recipe", "export", "--out", os.fspath(out))
    assert done.returncode == 2
    assert done.stderr.startswith("hotcb: error: ") and len(done.stderr.splitlines()) == 1
    assert os.listdir(out) == ["hotcb.recipe.jsonl"] and _strays(tmp_path) == []

    # a folder that is not there (the trailing slash says a folder is meant): no file instead
    done = cli(run, "recipe", "export", "--out", os.fspath(tmp_path / "nowhere") + os.sep)
    assert done.returncode == 2
    assert "no folder" in done.stderr and not os.path.exists(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- actuators
BAD = [
    {"at": {"step": 1}, "module": "opt", "op": "set_params", "params": {"lr": -1}},
    {"at": {"step": 2}, "module": "opt", "op": "set_params", "params": {"lrr": 0.1}},
    {"at": {"step": 3}, "module": "opt", "op": "set_params", "params": {"lr": "fast"}},
    {"at": {"step": 4}, "module": "opt", "op": "set_params", "params": {"lr": [1, 2]}},
    {"at": {"step": 5}, "module": "loss", "op": "set_params", "params": {"nonexistent_weight": 0.3}},
    {"at": {"step": 6}, "module": "loss", "op": "set_params", "params": {"l2": -0.1, "ce": -2}},
    {"at": {"step": 7}, "module": "opt", "op": "set_params", "params": {"lr": 0.001}},
]  # fmt: skip
#: (line of the recipe file (the header is line 1), what the live check says about it)
BAD_SAYS = [
    (2, "lr=-1 is below the minimum 1e-10 for actuator 'lr'"),
    (3, "unknown actuator 'lrr' in group 'opt'; known: lr; did you mean 'lr'?"),
    (4, "lr must be a number for actuator 'lr' (log_float), got str 'fast'"),
    (5, "lr must be a number for actuator 'lr' (log_float), got list [1, 2]"),
    (6, "unknown actuator 'nonexistent_weight' in group 'loss'; known: ce, l2"),
    (7, "l2=-0.1 is below the minimum 0 for actuator 'l2'"),  # every wrong param of a line
    (7, "ce=-2 is below the minimum 0 for actuator 'ce'"),
]


def _recipe(path: str | os.PathLike[str], entries: list[dict[str, Any]]) -> str:
    header = {"v": 1, "kind": "hotcb.recipe", "run": {}}
    with open(path, "w") as f:
        for rec in (header, *entries):
            f.write(json.dumps(rec) + "\n")
    return os.fspath(path)


def test_validate_checks_entries_against_the_published_actuators(
    run: str, tmp_path: Any, cli: Any
) -> None:
    """Every wrong param of every opt/loss/custom entry, with its line and the message a live
    command gets; it said "ok: 7 entries"."""
    bad = _recipe(tmp_path / "bad.jsonl", BAD)
    done = cli(run, "recipe", "validate", "--recipe", bad)
    assert done.returncode == 1, done.stdout
    assert done.stdout.splitlines() == [f"{bad}:{n}: {said}" for n, said in BAD_SAYS]
    assert done.stderr.strip() == f"{len(BAD_SAYS)} problem(s)"

    live = cli(run, "opt", "set_params", "lrr=0.1")  # the same words as the live command
    assert live.returncode == 2
    assert live.stderr.strip() == f"hotcb: error: {BAD_SAYS[1][1]}"

    # a run that has published nothing: the entries parse, and it says what it did not check
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    done = cli(os.fspath(fresh), "recipe", "validate", "--recipe", bad)
    assert done.returncode == 0 and done.stdout.strip() == "ok: 7 entries"
    assert done.stderr.count("\n") == 1
    assert "names and bounds not checked" in done.stderr and os.fspath(fresh) in done.stderr
    from hotcb.recipe import check_actuators

    assert check_actuators(read_recipe(bad).entries, fresh) is None
    assert len(check_actuators(read_recipe(bad).entries, run) or ()) == len(BAD_SAYS)


def test_freeze_refuses_a_recipe_the_published_actuators_refuse(
    run: str, tmp_path: Any, cli: Any
) -> None:
    bad = _recipe(tmp_path / "bad.jsonl", BAD)
    done = cli(run, "freeze", "--mode", "replay", "--recipe", bad)
    assert done.returncode == 2
    for n, said in BAD_SAYS:
        assert f"  {bad}:{n}: {said}\n" in done.stderr, (n, done.stderr)
    assert f"{len(BAD_SAYS)} problem(s) against the run's actuators" in done.stderr
    commands = RunPaths(run).commands
    with open(commands) as f:
        assert not any(json.loads(line)["module"] == "freeze" for line in f)  # nothing sent

    # an overlay that fixes the entries makes the plan replayable
    overlay = tmp_path / "fix.yaml"
    overlay.write_text(
        "patches:\n"
        "  - match: {step_max: 5}\n    drop: true\n"
        "  - match: {module: loss}\n    replace_params: {ce: 2, l2: 0.1}\n"
    )
    done = cli(run, "freeze", "--mode", "replay_adjusted", "--recipe", bad, "--adjust",
               os.fspath(overlay))  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = cli(run, "recipe", "validate", "--recipe", bad, "--adjust", os.fspath(overlay))
    assert done.returncode == 0 and done.stdout.strip() == "ok: 7 entries, 2 after " + os.fspath(
        overlay
    )


# ----------------------------------------------------------------------------- overlays
DROP_L2 = "patches:\n  - match: {module: loss, has_param: l2}\n    drop: true\n"


def test_validate_reports_an_undo_the_overlay_leaves_with_nothing_to_undo(
    tmp_path: Any, cli: Any
) -> None:
    """The golden recipe undoes its l2 change (line 4) at line 7: dropping that change, or
    shifting it past the undo, leaves an undo the replay would reject."""
    overlay = tmp_path / "drop.yaml"
    overlay.write_text(DROP_L2)
    done = cli(None, "recipe", "validate", "--recipe", GOLDEN, "--adjust", os.fspath(overlay))
    assert done.returncode == 1, done.stdout
    assert done.stdout.splitlines() == [
        f'overlay {overlay}:2 patch 1 drops line 4 (step 12 (train_step_end): loss set_params {{"l2": 0.0001}}), '
        "which the undo at line 7 (step 30) undoes: the replay would reject that undo; "
        "drop it too"
    ]
    assert "1 problem(s)" in done.stderr

    entries = read_recipe(GOLDEN).entries
    shift = tmp_path / "shift.yaml"
    shift.write_text("patches:\n  - match: {module: loss, has_param: l2}\n    shift_step: 20\n")
    with pytest.raises(RecipeError, match=r"the undo at line 7 \(step 30\) comes before the "
                       r"change it undoes, line 4 \(step 32"):  # fmt: skip
        apply_overlay(entries, load_overlay(shift))

    both = tmp_path / "both.yaml"  # the change and its undo dropped together: fine
    both.write_text(DROP_L2 + "  - match: {module: control, op: undo}\n    drop: true\n")
    assert len(apply_overlay(entries, load_overlay(both))) == 5


def test_an_overlay_that_is_not_yaml_is_one_problem_shown_whole(tmp_path: Any, cli: Any) -> None:
    overlay = tmp_path / "ov.yaml"
    overlay.write_text("version: 1\npatches: [ {match: {module: opt\n")
    done = cli(None, "recipe", "validate", "--recipe", GOLDEN, "--adjust", os.fspath(overlay))
    assert done.returncode == 1
    out = done.stdout.splitlines()
    assert out[0] == f"overlay {overlay} is not valid YAML: while parsing a flow mapping"
    assert len(out) > 2  # where in the file, as PyYAML says it
    assert done.stderr.strip() == f"1 problem(s) in {overlay}"


# ----------------------------------------------------------------------------- not a recipe
def test_export_of_no_run_directory_says_so(tmp_path: Any, cli: Any) -> None:
    done = cli(os.fspath(tmp_path / "nonexist"), "recipe", "export")
    assert done.returncode == 2
    assert done.stderr.startswith(f"hotcb: error: no run directory at {tmp_path / 'nonexist'}")
    assert not os.path.exists(tmp_path / "nonexist")


@pytest.mark.parametrize(
    ("name", "looks"),
    [
        ("hotcb.applied.jsonl", "a run's ledger"),
        ("hotcb.metrics.jsonl", "a run's metrics file"),
        ("hotcb.commands.jsonl", "a run's commands file"),
    ],
)
def test_validate_a_run_file_says_once_it_is_not_a_recipe(
    run: str, name: str, looks: str, cli: Any
) -> None:
    """Not "'at' must be an object" on every line."""
    path = os.path.join(run, name)
    if name == "hotcb.metrics.jsonl":  # as MetricsCollector writes them
        with open(path, "w") as f:
            for step in range(3):
                f.write(json.dumps({"step": step, "wall_time": 1.0, "metrics": {"loss": 1.0}}))
                f.write("\n")
    done = cli(None, "recipe", "validate", "--recipe", path)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [_not_a_recipe(path, looks, name)]
    assert done.stderr.strip() == "1 problem(s)"


def _not_a_recipe(path: str, looks: str, name: str) -> str:
    """What ``recipe validate`` says, once, of a run's own file."""
    return (f"{path}: this is not a recipe: it looks like {looks} ({name}), and no line has "
            "'at' {step, event}; 'hotcb --dir RUN recipe export' makes a recipe of a run's "
            "applied changes")  # fmt: skip


def test_a_run_file_with_a_scheduled_command_is_still_named(tmp_path: Any, cli: Any) -> None:
    """A run that had an `--at-step` command: its ledger and commands file hold lines with
    `at_step` (a recipe's shorthand for `at`), and validate said "'at' must be an object" or
    "at.step must be an integer" on every other line instead of what the file is."""
    run_dir = str(tmp_path / "run")
    kernel = HotKernel(run_dir, poll_interval_sec=0, metrics_collector=False,
                       mutable_state=mutable_state(loss_actuators({"ce": 1.0, "l2": 0.0})))  # fmt: skip
    client = HotClient(run_dir)
    kernel.apply({"step": 0})
    client.send("loss", "set_params", params={"l2": 0.1}, at_step=500)  # pending at the end
    for step in range(1, 4):
        client.loss(l2=0.1 * step)
        kernel.apply({"step": step})
    kernel.close()
    for name, looks in (("hotcb.applied.jsonl", "a run's ledger"),
                        ("hotcb.commands.jsonl", "a run's commands file")):  # fmt: skip
        path = os.path.join(run_dir, name)
        with open(path) as f:
            assert '"at_step":500' in f.read().replace(" ", "")  # the case: some lines have a step
        done = cli(None, "recipe", "validate", "--recipe", path)
        assert done.returncode == 1
        assert done.stdout.splitlines() == [_not_a_recipe(path, looks, name)], done.stdout


def test_an_empty_recipe_is_nothing_to_replay(tmp_path: Any, cli: Any) -> None:
    """Validate warns (exit 0); freeze refuses it: a replay of nothing is a mistake."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    header_only = _recipe(tmp_path / "header.jsonl", [])
    for path in (os.fspath(empty), header_only):
        done = cli(None, "recipe", "validate", "--recipe", path)
        assert done.returncode == 0
        assert done.stdout.startswith(f"{path}: empty: nothing to replay (0 entries)")
        done = cli(os.fspath(tmp_path / "B"), "freeze", "--mode", "replay", "--recipe", path)
        assert done.returncode == 2
        assert done.stderr.startswith(f"hotcb: error: {path} is empty: nothing to replay")
        assert not os.path.exists(tmp_path / "B")

    overlay = tmp_path / "all.yaml"
    overlay.write_text("patches:\n  - match: {step_min: 0}\n    drop: true\n")
    done = cli(os.fspath(tmp_path / "B"), "freeze", "--mode", "replay_adjusted", "--recipe",
               GOLDEN, "--adjust", os.fspath(overlay))  # fmt: skip
    assert done.returncode == 2 and "no entries left after" in done.stderr
