"""Recipes: export from a ledger, the golden v1 format, validation with line numbers, the
player's step/event rules, overlays for adjusted replay, and the patch template."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest

from hotcb import HotClient, HotKernel, loss_actuators, mutable_state
from hotcb.errors import RecipeError
from hotcb.freeze import FreezeMode, FreezeState
from hotcb.recipe import (
    RecipeEntry,
    RecipePlayer,
    apply_overlay,
    check_recipe,
    export_recipe,
    ledger_to_entries,
    load_overlay,
    patch_template,
    read_recipe,
    validate_recipe,
)
from hotcb.testing import read_ledger

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "recipe_v1.jsonl")


def _lines(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _entry(step: int, module: str = "opt", op: str = "set_params", **kw: Any) -> RecipeEntry:
    kw.setdefault("params", {"lr": 0.01} if module in ("opt", "loss", "custom") else {})
    return RecipeEntry(step=step, module=module, op=op, **kw)


# ----------------------------------------------------------------------------- golden format
def test_golden_v1_recipe_is_read_and_valid() -> None:
    recipe, problems = check_recipe(GOLDEN)
    assert problems == []
    assert recipe.header["kind"] == "hotcb.recipe"
    assert recipe.run_dir == "/runs/golden"
    got = [(e.step, e.event, e.module, e.op, e.id, e.params) for e in recipe.entries]
    assert got == [
        (0, "train_step_end", "cb", "load", "beat", {}),
        (12, "train_step_end", "opt", "set_params", None, {"lr": 0.005}),
        (12, "train_step_end", "loss", "set_params", None, {"l2": 0.0001}),
        (20, "train_step_end", "cb", "set_params", "beat", {"every_steps": 2}),
        (25, "val_epoch_end", "opt", "set_params", None, {"lr": 0.001}),
        (30, "train_step_end", "control", "undo", None, {"cmd_id": "01KB0000000000000000000003"}),
        (41, "train_step_end", "cb", "disable", "beat", {}),
    ]
    assert recipe.entries[0].target == {
        "kind": "python_path",
        "path": "hotcb.modules.cb.callbacks",
        "symbol": "HeartbeatCallback",
    }
    assert recipe.entries[4].transition == {"steps": 10, "shape": "cosine"}


def test_the_writer_produces_the_golden_entry_lines() -> None:
    """Entries written by export are the golden lines, key order included."""
    recipe = read_recipe(GOLDEN)
    written = [json.loads(json.dumps(e.to_record())) for e in recipe.entries]
    assert [json.dumps(w) for w in written] == [json.dumps(g) for g in _lines(GOLDEN)[1:]]


def test_the_golden_recipe_drives_a_kernel(tmp_path: Any) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    weights = {"ce": 1.0, "l2": 0.0}
    kernel = HotKernel(
        os.fspath(tmp_path / "run"),
        poll_interval_sec=0,
        metrics_collector=False,
        mutable_state=mutable_state(loss_actuators(weights)),
        freeze=FreezeState(FreezeMode.REPLAY, GOLDEN),
    )
    seen: dict[int, tuple[float, float]] = {}
    for step in range(45):
        env = {"step": step, "model": model, "optimizer": opt}
        kernel.apply(env)
        if step == 25:
            kernel.apply(env, ("val_epoch_end",))
        seen[step] = (opt.param_groups[0]["lr"], weights["l2"])
    kernel.close()
    ledger = read_ledger(tmp_path / "run")
    fired = [(e["step"], e["module"], e["op"], e["decision"]) for e in ledger]
    assert fired == [
        (0, "cb", "load", "applied"),
        (12, "opt", "set_params", "applied"),
        (12, "loss", "set_params", "applied"),
        (20, "cb", "set_params", "applied"),
        (25, "opt", "set_params", "applied"),
        (30, "control", "undo", "applied"),
        (35, "opt", "set_params", "applied"),  # the ramp completes
        (41, "cb", "disable", "applied"),
    ]
    assert [e["source"] for e in ledger] == ["recipe"] * 6 + ["ramp", "recipe"]
    assert [e.get("recipe_line") for e in ledger if e["source"] == "recipe"] == [
        2,
        3,
        4,
        5,
        6,
        7,
        8,
    ]
    assert seen[11] == (0.01, 0.0) and seen[12] == (0.005, 0.0001)
    assert seen[30][1] == 0.0  # the undo reverted the l2 change
    assert seen[35][0] == pytest.approx(0.001)


# ----------------------------------------------------------------------------- export
def test_export_keeps_the_changes_and_skips_what_is_not_replayable(tmp_path: Any) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "hotcb.run.json").write_text(json.dumps({"seed": 7, "run_dir": os.fspath(run)}))
    capture = os.fspath(run / "hotcb.sources" / "abc.py")
    ledger = [
        {"seq": 1, "step": 0, "source": "cli", "module": "freeze", "op": "set", "decision": "applied"},
        {"seq": 2, "step": 3, "source": "cli", "module": "opt", "op": "set_params",
         "params": {"lr": 0.1}, "decision": "applied", "cmd_id": "a"},
        {"seq": 3, "step": 3, "source": "cli", "module": "opt", "op": "set_params",
         "params": {"lr": -1}, "decision": "rejected", "cmd_id": "b"},
        {"seq": 4, "step": 4, "source": "cli", "module": "opt", "op": "set_params",
         "params": {"lr": 0.2}, "decision": "scheduled", "cmd_id": "c", "at_step": 9},
        {"seq": 5, "step": 5, "source": "cli", "module": "control", "op": "pause",
         "decision": "applied", "cmd_id": "d"},
        {"seq": 6, "step": 6, "source": "dashboard", "module": "cb", "op": "load", "id": "x",
         "params": {}, "target": {"kind": "python_file", "path": "/src/x.py", "symbol": "X"},
         "init": {"k": 1}, "enabled": True, "decision": "applied", "cmd_id": "e",
         "source_capture": {"sha256": "abc", "path": capture}},
        {"seq": 7, "step": 9, "source": "cli", "module": "opt", "op": "set_params",
         "params": {"lr": 0.2}, "decision": "applied", "cmd_id": "c", "at_step": 9,
         "transition": {"steps": 4, "shape": "linear"}},
        {"seq": 8, "step": 13, "source": "ramp", "module": "opt", "op": "set_params",
         "params": {"lr": 0.2}, "decision": "applied", "cmd_id": "c"},
        {"seq": 9, "step": 14, "source": "kernel", "module": "cb", "op": "callback_error",
         "decision": "applied"},
        {"seq": 10, "step": 15, "source": "cli", "module": "control", "op": "undo",
         "params": {}, "decision": "applied", "cmd_id": "f", "undo_of": "c"},
        {"seq": 11, "step": 16, "source": "resume", "module": "loss", "op": "set_params",
         "params": {"l2": 0.5}, "decision": "applied", "cmd_id": "g"},
        {"seq": 12, "step": 17, "source": "cli", "module": "control", "op": "checkpoint",
         "decision": "applied", "cmd_id": "h"},
        {"seq": 13, "step": 18, "source": "kernel", "module": "kernel", "op": "error",
         "decision": "failed"},
    ]  # fmt: skip
    with open(run / "hotcb.applied.jsonl", "w") as f:
        for e in ledger:
            f.write(json.dumps({"event": "train_step_end", **e}) + "\n")
    path, entries = export_recipe(run)
    assert path == os.fspath(run / "hotcb.recipe.jsonl")
    lines = _lines(path)
    assert lines[0]["kind"] == "hotcb.recipe" and lines[0]["run"]["seed"] == 7
    got = [(r["at"]["step"], r["module"], r["op"], r["params"], r["cmd_id"]) for r in lines[1:]]
    assert got == [
        (3, "opt", "set_params", {"lr": 0.1}, "a"),
        (6, "cb", "load", {}, "e"),
        (9, "opt", "set_params", {"lr": 0.2}, "c"),
        (15, "control", "undo", {"cmd_id": "c"}, "f"),
        (16, "loss", "set_params", {"l2": 0.5}, "g"),
    ]
    load = lines[2]
    assert load["source_capture"] == {"sha256": "abc", "path": "hotcb.sources/abc.py"}
    assert load["init"] == {"k": 1} and load["enabled"] is True and load["id"] == "x"
    assert lines[3]["transition"] == {"steps": 4, "shape": "linear"}
    assert "transition" not in lines[1]
    assert [e.step for e in entries] == [3, 6, 9, 15, 16]


def test_export_without_a_ledger_says_so(tmp_path: Any) -> None:
    with pytest.raises(RecipeError, match="no ledger"):
        export_recipe(tmp_path)


def test_export_of_a_live_run_round_trips(tmp_path: Any) -> None:
    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0, metrics_collector=False)
    weights = {"w": 1.0}
    kernel.register_actuator(loss_actuators(weights)[0])
    c = HotClient(run)
    for step in range(10):
        if step == 4:
            c.loss(w=0.5)
        kernel.apply({"step": step})
    kernel.close()
    path, _ = export_recipe(run, tmp_path / "out.jsonl")
    assert path == os.fspath(tmp_path / "out.jsonl")
    assert validate_recipe(path) == []
    assert [(e.step, e.params) for e in read_recipe(path).entries] == [(4, {"w": 0.5})]
    assert ledger_to_entries(read_ledger(run))[0].cmd_id == read_ledger(run)[0]["cmd_id"]


# ----------------------------------------------------------------------------- validate
BROKEN = [
    '{"v":1,"at":{"step":5},"module":"opt","op":"set_params","params":{"lr":0.1}}',
    "",
    '{"v":1,"at":{"step":6},"module":"opt","op":"set_params","params":{"lr":0.1}',
    '{"v":1,"at":{"step":7},"module":"optimizer","op":"set_params","params":{"lr":0.1}}',
    '{"v":1,"at":{"step":8},"module":"opt","op":"jump","params":{"lr":0.1}}',
    '{"v":1,"module":"opt","op":"set_params","params":{"lr":0.1}}',
    '{"v":1,"at":{"step":2},"module":"loss","op":"set_params","params":{"l2":0.1}}',
    '{"v":1,"at":{"step":9},"module":"cb","op":"load","id":"x","target":{"kind":"python_file",'
    '"path":"/nowhere/x.py","symbol":"X"},"source_capture":{"sha256":"00","path":"gone.py"}}',
    '{"v":1,"kind":"hotcb.recipe","run":{}}',
    '{"v":1,"at":{"step":10},"module":"cb","op":"enable","params":{}}',
    '{"v":2,"at":{"step":11},"module":"opt","op":"set_params","params":{"lr":0.1}}',
    '{"v":1,"at":{"step":12},"module":"control","op":"stop"}',
    '{"v":1,"at":{"step":13},"module":"opt","op":"set_params","params":{}}',
]


def test_validate_lists_every_problem_with_its_line(tmp_path: Any, cli: Any) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(BROKEN) + "\n")
    problems = [(p.line, p.message) for p in validate_recipe(path)]
    expected = {
        3: "not valid JSON",
        4: "unknown module 'optimizer'",
        5: "unknown op 'jump'",
        6: "'at' must be an object",
        7: "step 2 comes after step 8 (line 5)",
        8: "captured callback source 'gone.py' not found",
        9: "header may only be the first line",
        10: "needs 'id'",
        11: "unsupported recipe format v=2",
        12: "control stop is not replayable",
        13: "needs at least one parameter",
    }
    assert [line for line, _ in problems] == sorted(expected)
    for line, message in problems:
        assert expected[line] in message, (line, message)

    done = cli(None, "recipe", "validate", "--recipe", os.fspath(path))
    assert done.returncode == 1
    out = done.stdout.splitlines()
    assert len(out) == len(expected)
    for line, text in expected.items():
        assert any(o.startswith(f"{path}:{line}: ") and text in o for o in out), (line, out)
    assert "11 problem(s)" in done.stderr

    with pytest.raises(RecipeError, match="11 problem"):
        read_recipe(path)


def test_validate_a_missing_file(tmp_path: Any, cli: Any) -> None:
    problems = validate_recipe(tmp_path / "nope.jsonl")
    assert len(problems) == 1 and "cannot read recipe" in problems[0].message
    done = cli(None, "recipe", "validate", "--recipe", os.fspath(tmp_path / "nope.jsonl"))
    assert done.returncode == 1 and "cannot read recipe" in done.stdout


def test_a_changed_captured_source_is_a_problem(tmp_path: Any) -> None:
    src = tmp_path / "hotcb.sources"
    src.mkdir()
    (src / "cb.py").write_text("class X:\n    def handle(self, e, env): pass\n")
    import hashlib

    sha = hashlib.sha256((src / "cb.py").read_bytes()).hexdigest()
    line = {
        "v": 1, "at": {"step": 1}, "module": "cb", "op": "load", "id": "x",
        "target": {"kind": "python_file", "path": "/gone/cb.py", "symbol": "X"},
        "source_capture": {"sha256": sha, "path": "hotcb.sources/cb.py"},
    }  # fmt: skip
    recipe = tmp_path / "r.jsonl"
    recipe.write_text(json.dumps(line) + "\n")
    assert validate_recipe(recipe) == []  # found next to the recipe, same sha256
    (src / "cb.py").write_text("# edited\n")
    assert "has changed" in validate_recipe(recipe)[0].message


# ----------------------------------------------------------------------------- player
def test_player_fires_at_step_and_event_and_never_gets_stuck() -> None:
    player = RecipePlayer(
        [
            _entry(5, event="val_epoch_end", params={"lr": 1.0}),
            _entry(5, params={"lr": 2.0}),
            _entry(7, event="val_epoch_end", params={"lr": 3.0}),
        ]
    )
    assert player.next_step() == 5
    assert player.pop_due(4, ("train_step_end",)) == []
    got = player.pop_due(5, ("train_step_end",))
    assert [op.params for op in got] == [{"lr": 2.0}]
    assert all(op.source == "recipe" for op in got)
    assert player.next_step() == 5  # still waiting for val_epoch_end at step 5
    assert [op.params for op in player.pop_due(5, ("val_epoch_end",))] == [{"lr": 1.0}]
    assert player.pop_due(7, ("train_step_end",)) == []
    # val_epoch_end never came at step 7: the entry fires at the next safe point after it
    assert [op.params for op in player.pop_due(8, ("train_step_end",))] == [{"lr": 3.0}]
    assert len(player) == 0 and player.pop_due(100, ("train_step_end",)) == []


def test_player_step_offset_and_state() -> None:
    entries = [_entry(0), _entry(10, params={"lr": 0.5}), _entry(20, params={"lr": 0.2})]
    player = RecipePlayer(entries, step_offset=100)
    assert player.next_step() == 100
    assert player.pop_due(99, ("train_step_end",)) == []
    assert len(player.pop_due(111, ("train_step_end",))) == 2
    state = player.state_dict()
    again = RecipePlayer(entries, step_offset=100)
    again.load_state_dict(state)
    assert again.next_step() == 120
    assert [e.step for e in again.upcoming()] == [20]
    with pytest.raises(RecipeError, match="resume with the recipe"):
        RecipePlayer(entries[:2]).load_state_dict(state)


def test_player_needs_a_recipe(tmp_path: Any) -> None:
    with pytest.raises(RecipeError, match="needs a recipe"):
        RecipePlayer.from_freeze(FreezeState(FreezeMode.REPLAY))
    with pytest.raises(RecipeError, match="needs --adjust"):
        RecipePlayer.from_freeze(FreezeState(FreezeMode.REPLAY_ADJUSTED, GOLDEN))


# ----------------------------------------------------------------------------- overlay
def _overlay(tmp_path: Any, text: str) -> dict[str, Any]:
    path = tmp_path / "hotcb.adjust.yaml"
    path.write_text(text)
    return load_overlay(path)


def test_overlay_patches_in_order_then_sorts_by_step(tmp_path: Any) -> None:
    entries = read_recipe(GOLDEN).entries
    overlay = _overlay(
        tmp_path,
        """
version: 1
patches:
  - match: {module: opt, has_param: lr, nth: 0}
    replace_params: {lr: 0.004}
    shift_step: 30
  - match: {module: loss, at_step: 12}
    transform_params: {scale: 10, add: 0.5}
  - match: {module: cb, id: beat, op: disable}
    drop: true
  - match: {step_min: 20, step_max: 25, module: opt}
    transform_params: {scale: 2}
  - insert: {at: {step: 3}, module: custom, op: set_params, params: {dropout: 0.1}}
""",
    )
    out = apply_overlay(entries, overlay)
    got = [(e.step, e.module, e.op, e.params, e.adjusted) for e in out]
    assert got == [
        (0, "cb", "load", {}, False),
        (3, "custom", "set_params", {"dropout": 0.1}, True),
        (12, "loss", "set_params", {"l2": 0.0001 * 10 + 0.5}, True),
        (20, "cb", "set_params", {"every_steps": 2}, False),
        (25, "opt", "set_params", {"lr": 0.002}, True),
        (30, "control", "undo", {"cmd_id": "01KB0000000000000000000003"}, False),
        (42, "opt", "set_params", {"lr": 0.004}, True),
    ]
    assert out[1].cmd_id == "insert-5" and out[1].line is None
    assert next(e.params for e in entries if e.module == "opt") == {"lr": 0.005}  # untouched


def test_overlay_errors_are_clear(tmp_path: Any) -> None:
    entries = read_recipe(GOLDEN).entries
    with pytest.raises(RecipeError, match="patch 1 matches no recipe entry"):
        apply_overlay(
            entries, _overlay(tmp_path, "patches:\n  - match: {module: tune}\n    drop: true\n")
        )
    with pytest.raises(RecipeError, match="unknown match key"):
        _overlay(tmp_path, "patches:\n  - match: {modul: opt}\n    drop: true\n")
    with pytest.raises(RecipeError, match="expected one or more of"):
        _overlay(tmp_path, "patches:\n  - match: {module: opt}\n    scale: 2\n")
    with pytest.raises(RecipeError, match="shift_step must be an integer"):
        _overlay(tmp_path, "patches:\n  - match: {module: opt}\n    shift_step: soon\n")
    with pytest.raises(RecipeError, match="unsupported version"):
        _overlay(tmp_path, "version: 2\npatches: []\n")
    with pytest.raises(RecipeError, match="invalid insert"):
        _overlay(tmp_path, "patches:\n  - insert: {at: {step: 1}, module: opt, op: set_params}\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        _overlay(tmp_path, "patches: [\n")
    with pytest.raises(RecipeError, match="invalid entry"):
        apply_overlay(
            entries,
            _overlay(
                tmp_path,
                "patches:\n  - match: {module: opt, nth: 0}\n    replace_params: {lr: .nan}\n",
            ),
        )


def test_validate_lists_every_problem_of_an_overlay_with_exit_1(tmp_path: Any, cli: Any) -> None:
    """One pass lists what a person must fix: a patch that matches nothing, a typo of a param
    name, a param made invalid; not the first of them and exit 2. Malformed patches (a
    non-finite scale, an insert of an unknown module) are listed with them: they were listed
    alone, and the rest only once they were fixed. A non-finite scale is refused when the
    overlay is read."""
    path = tmp_path / "hotcb.adjust.yaml"
    path.write_text(
        "patches:\n"
        "  - match: {module: tune}\n    drop: true\n"
        "  - match: {module: opt, nth: 0}\n    replace_params: {lrr: 0.1}\n"
        "  - match: {module: loss}\n    replace_params: {l2: .nan}\n"
        "  - match: {module: opt}\n    transform_params: {scale: .nan}\n"
        "  - insert: {at: {step: 10}, module: optimizer, op: set_params, params: {lr: 0.1}}\n"
    )
    done = cli(None, "recipe", "validate", "--recipe", GOLDEN, "--adjust", str(path))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 5, lines
    assert "patch 1 matches no recipe entry" in lines[0]  # in the file's order
    assert "patch 2: replace_params 'lrr' is not a param of step 12" in lines[1]
    assert "did you mean 'lr'?" in lines[1]
    assert "patch 3 made an invalid entry" in lines[2] and "l2" in lines[2]
    assert "patch 4: transform_params.scale must be a finite number" in lines[3]
    assert "patch 5: invalid insert: unknown module 'optimizer'" in lines[4]
    assert f"5 problem(s) in {path}" in done.stderr
    with pytest.raises(RecipeError, match=r"transform_params\.scale must be a finite number"):
        _overlay(
            tmp_path, "patches:\n  - match: {module: opt}\n    transform_params: {scale: .nan}\n"
        )


def test_an_overlay_that_would_change_nothing_is_refused(tmp_path: Any, cli: Any) -> None:
    """A typo that left the overlay doing nothing passed as "ok", and the adjusted replay ran
    the recipe unchanged: ``patch:`` for ``patches:``, a ``transform_params.keys`` name no
    matched entry sets (``lrr``; a ``replace_params`` typo was already refused), an empty
    ``transform_params`` or ``replace_params``."""
    cases = {
        "version: 1\npatch:\n  - match: {module: cb}\n    drop: true\n":
            "unknown key(s) ['patch']: an overlay has 'version' and 'patches'; did you mean "
            "'patches'?",
        "patches:\n  - match: {module: opt, nth: 0}\n    transform_params: {scale: 0.1, keys: [lrr]}\n":
            "patch 1: transform_params key 'lrr' is not a param of the entries it matches; did "
            "you mean 'lr'?",
        "patches:\n  - match: {module: opt}\n    transform_params: {}\n":
            "patch 1: transform_params changes nothing: give scale (x scale) or add (+ add)",
        "patches:\n  - match: {module: opt}\n    replace_params: {}\n":
            "patch 1: replace_params is empty: it changes nothing",
    }  # fmt: skip
    path = tmp_path / "hotcb.adjust.yaml"
    for text, said in cases.items():
        path.write_text(text)
        done = cli(None, "recipe", "validate", "--recipe", GOLDEN, "--adjust", str(path))
        assert done.returncode == 1, (text, done.stdout, done.stderr)
        assert said in done.stdout, (text, done.stdout)
    for fine in ("transform_params: {scale: 0.1, keys: lr}",
                 # a key the patch's replace_params adds, then transforms
                 "replace_params: {weight_decay: 0.05}\n    transform_params: {scale: 2, keys: [weight_decay]}"):  # fmt: skip
        path.write_text(f"patches:\n  - match: {{module: opt, nth: 0}}\n    {fine}\n")
        done = cli(None, "recipe", "validate", "--recipe", GOLDEN, "--adjust", str(path))
        assert done.returncode == 0, (fine, done.stdout + done.stderr)


def test_overlay_needs_pyyaml_and_says_how_to_get_it(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ImportError, match=r'pip install "hotcb\[yaml\]"'):
        _overlay(tmp_path, "version: 1\n")
    json_overlay = tmp_path / "adjust.json"
    json_overlay.write_text(
        json.dumps(
            {"version": 1, "patches": [{"match": {"module": "cb", "op": "disable"}, "drop": True}]}
        )
    )
    assert len(apply_overlay(read_recipe(GOLDEN).entries, load_overlay(json_overlay))) == 6


def test_patch_template_changes_nothing_until_a_patch_is_uncommented(
    tmp_path: Any, cli: Any
) -> None:
    recipe = read_recipe(GOLDEN)
    text = patch_template(recipe)
    path = tmp_path / "hotcb.adjust.yaml"
    path.write_text(text)
    assert load_overlay(path)["patches"] == []
    assert apply_overlay(recipe.entries, load_overlay(path)) == recipe.entries

    # uncomment the drop patch of the opt entry at step 12
    lines = text.splitlines()
    at = lines.index("# - match: {module: opt, op: set_params, at_step: 12}", lines.index(
        "# line 3: step 12 (train_step_end): opt set_params {\"lr\": 0.005}") + 4)  # fmt: skip
    assert lines[at + 1] == "#   drop: true"
    lines[at], lines[at + 1] = lines[at][2:], lines[at + 1][2:]
    path.write_text("\n".join(lines) + "\n")
    out = apply_overlay(recipe.entries, load_overlay(path))
    assert [e.line for e in out] == [2, 4, 5, 6, 7, 8]

    done = cli(None, "recipe", "patch-template", "--recipe", GOLDEN)
    assert done.returncode == 0 and done.stdout == text
    done = cli(None, "recipe", "patch-template", "--recipe", GOLDEN, "--out", tmp_path / "t.yaml")
    assert done.returncode == 0 and (tmp_path / "t.yaml").read_text() == text


def test_patch_template_tells_apart_entries_at_the_same_step(tmp_path: Any) -> None:
    """Two lr changes at step 100 (``set lr=… --at-step 100`` sent twice): the template wrote
    the same match under both, and the drop listed under the second dropped both."""
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (
        {"v": 1, "kind": "hotcb.recipe", "run": {}},
        _entry(100, params={"lr": 0.003}, cmd_id="a").to_record(),
        _entry(100, params={"lr": 0.002}, cmd_id="b").to_record(),
    )) + "\n")  # fmt: skip
    recipe = read_recipe(path)
    lines = patch_template(recipe).splitlines()
    second = lines.index('# line 3: step 100 (train_step_end): opt set_params {"lr": 0.002}')
    at = lines.index("# - match: {module: opt, op: set_params, at_step: 100, nth: 1}", second + 3)
    assert lines[at + 1] == "#   drop: true"
    lines[at], lines[at + 1] = lines[at][2:], lines[at + 1][2:]
    (tmp_path / "adj.yaml").write_text("\n".join(lines) + "\n")
    out = apply_overlay(recipe.entries, load_overlay(tmp_path / "adj.yaml"))
    assert [e.params for e in out] == [{"lr": 0.003}]  # that one only

    # the drop under the first one too: nth counts what the patches above leave, and the
    # refusal says so (it said only "matches no recipe entry")
    first = lines.index("# - match: {module: opt, op: set_params, at_step: 100, nth: 0}",
                        lines.index('# line 2: step 100 (train_step_end): opt set_params {"lr": 0.003}') + 3)  # fmt: skip
    lines[first], lines[first + 1] = lines[first][2:], lines[first + 1][2:]
    (tmp_path / "adj.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecipeError, match="patch 1 dropped one of the entries it counts: nth "
                       "counts the entries the patches above leave"):  # fmt: skip
        apply_overlay(recipe.entries, load_overlay(tmp_path / "adj.yaml"))


def test_export_of_a_resumed_run_is_in_step_order() -> None:
    """After a resume from step 150, the new life's changes (at 180) follow in the ledger those
    the first life made later (200, re-applied by the resume): the recipe sorts them."""
    ledger = [
        {"seq": 1, "step": 100, "source": "cli", "cmd_id": "a", "params": {"lr": 0.1}},
        {"seq": 2, "step": 200, "source": "cli", "cmd_id": "b", "params": {"lr": 0.2}},
        {"seq": 3, "step": 200, "source": "resume", "cmd_id": "b", "params": {"lr": 0.2}},
        {"seq": 4, "step": 180, "source": "cli", "cmd_id": "c", "params": {"lr": 0.3}},
        {"seq": 5, "step": 180, "source": "cli", "cmd_id": "d", "params": {"lr": 0.4}},
    ]
    base = {"module": "opt", "op": "set_params", "decision": "applied"}
    entries = ledger_to_entries([{**base, **e} for e in ledger])
    assert [(e.step, e.cmd_id) for e in entries] == [(100, "a"), (180, "c"), (180, "d"), (200, "b")]
