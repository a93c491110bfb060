"""Attacks on the trainer's own switches (issue #9): each sends what an attacker would append to
the commands file of a real trainer process and checks that nothing ran, nothing was read from
outside the run, and the ledger says why."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from hotcb import jsonl
from hotcb.ledger import checkpoint_path
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow

BUNDLED = "hotcb.modules.cb.callbacks"


def _append(run_dir: str, record: dict[str, Any]) -> None:
    os.makedirs(run_dir, exist_ok=True)
    jsonl.append(os.path.join(run_dir, "hotcb.commands.jsonl"), record)


def _entry(run_dir: str, cmd_id: str, timeout: float = 60) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        found = [e for e in read_ledger(run_dir) if e.get("cmd_id") == cmd_id]
        return found[-1] if found else None

    return wait_for(find, timeout, what=f"the ledger entry of {cmd_id}")


def _stop(trainer: Any, run_dir: str) -> None:
    _append(run_dir, {"cmd_id": "the-end", "module": "control", "op": "stop"})
    code, _, err = trainer.finish()
    assert code == 0, err


@pytest.fixture
def trainer(tmp_path: Any, start_trainer: Any) -> Any:
    """A real trainer process with code loading off (``--no-code-load``), running until
    stopped."""
    run_dir = os.fspath(tmp_path / "run")
    t = start_trainer(run_dir, os.fspath(tmp_path / "trace.jsonl"), steps=100_000, step_delay=0.005)
    t.wait_step(1)
    return t


def test_code_load_off_runs_no_code_through_a_dotted_symbol_or_any_import(
    trainer: Any, tmp_path: Any
) -> None:
    run_dir = trainer.run_dir
    marker = tmp_path / "pwned"
    shell = {"command": f"touch {marker}"}
    attacks = {
        # the reported exploit: a hotcb module, then a walk to os.system
        "dotted": {"kind": "python_path", "path": "hotcb.kernel", "symbol": "os.system"},
        # one attribute, but of a module that is not the bundled callbacks
        "os": {"kind": "python_path", "path": "os", "symbol": "system"},
        "hotcb-os": {"kind": "python_path", "path": "hotcb.kernel", "symbol": "os"},
        "bundled-not-a-callback": {"kind": "python_path", "path": BUNDLED, "symbol": "_stats"},
    }
    for ident, target in attacks.items():
        _append(
            run_dir,
            {"cmd_id": ident, "module": "cb", "op": "load", "id": ident, "target": target,
             "init": shell},
        )  # fmt: skip
    for ident in attacks:
        entry = _entry(run_dir, ident)
        assert entry["decision"] == "rejected", entry
    assert "one attribute name" in _entry(run_dir, "dotted")["error"]
    assert "code loading is disabled" in _entry(run_dir, "os")["error"]
    assert "no bundled callback" in _entry(run_dir, "bundled-not-a-callback")["error"]
    # the bundled callbacks, by name, still load
    _append(
        run_dir,
        {"cmd_id": "beat", "module": "cb", "op": "load", "id": "beat",
         "target": {"kind": "python_path", "path": BUNDLED, "symbol": "HeartbeatCallback"}},
    )  # fmt: skip
    assert _entry(run_dir, "beat")["decision"] == "applied"
    _stop(trainer, run_dir)
    assert not marker.exists()


def _recipe(path: Any, target: dict[str, str], init: dict[str, Any]) -> str:
    path.write_text(
        json.dumps({"v": 1, "kind": "hotcb.recipe", "run": {}})
        + "\n"
        + json.dumps(
            {
                "v": 1,
                "at": {"step": 0, "event": "train_step_end"},
                "module": "cb",
                "op": "load",
                "id": "evil",
                "params": {},
                "cmd_id": f"from-{path.stem}",
                "target": target,
                "init": init,
            }
        )
        + "\n"
    )
    return os.fspath(path)


def test_a_replayed_recipe_loads_no_code_when_code_loading_is_off(
    trainer: Any, tmp_path: Any
) -> None:
    run_dir = trainer.run_dir
    marker = tmp_path / "pwned-by-recipe"
    shell = {"command": f"touch {marker}"}
    evil = tmp_path / "run" / "evil.py"
    evil.write_text(f"open({os.fspath(marker)!r}, 'w').close()\nclass Cb:\n    pass\n")
    dotted = {"kind": "python_path", "path": "hotcb.kernel", "symbol": "os.system"}
    recipes = {
        # the reported attack: an absolute path anywhere, holding the dotted-symbol exploit
        "abs": _recipe(tmp_path / "outside.jsonl", dotted, shell),
        "dotted": _recipe(tmp_path / "run" / "dotted.jsonl", dotted, shell),
        "file": _recipe(
            tmp_path / "run" / "file.jsonl",
            {"kind": "python_file", "path": os.fspath(evil), "symbol": "Cb"},
            {},
        ),
    }
    for name, path in recipes.items():
        _append(run_dir, {"cmd_id": f"replay-{name}", "module": "freeze", "op": "set",
                          "mode": "replay", "recipe_path": path})  # fmt: skip
    assert "outside the run directory" in _entry(run_dir, "replay-abs")["error"]
    assert "one attribute name" in _entry(run_dir, "replay-dotted")["error"]
    assert _entry(run_dir, "replay-file")["decision"] == "applied"
    entry = _entry(run_dir, "from-file")
    assert entry["source"] == "recipe" and entry["decision"] == "rejected", entry
    assert "code loading is disabled" in entry["error"]
    _stop(trainer, run_dir)
    assert not marker.exists()


def test_hotcb_yaml_loads_no_file_when_code_loading_is_off(
    tmp_path: Any, start_trainer: Any
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "pwned-by-yaml"
    (run_dir / "evil.py").write_text(f"open({os.fspath(marker)!r}, 'w').close()\n")
    (run_dir / "hotcb.yaml").write_text(
        "callbacks:\n  - id: evil\n    file: evil.py\n    symbol: Cb\n"
    )
    t = start_trainer(os.fspath(run_dir), os.fspath(tmp_path / "t.jsonl"), steps=3)
    code, _, err = t.finish()
    assert code == 0, err
    loads = [e for e in read_ledger(run_dir) if e.get("op") == "load"]
    assert [e["decision"] for e in loads] == ["rejected"], loads
    assert "code loading is disabled" in loads[0]["error"]
    assert not marker.exists()


def test_paths_in_commands_stay_inside_the_run_and_errors_leak_nothing(
    trainer: Any, tmp_path: Any
) -> None:
    run_dir = trainer.run_dir
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = private / "credentials"
    secret.write_text("[default]\naws_access_key_id = AKIAEXAMPLESECRET\n")
    victim = private / "victim"
    victim.write_text("precious")
    attacks = {
        "ckpt": {"module": "control", "op": "checkpoint", "params": {"path": os.fspath(victim)}},
        "ckpt-dotdot": {"module": "control", "op": "checkpoint",
                        "params": {"path": "../private/victim"}},
        "adjust-secret": {"module": "freeze", "op": "set", "mode": "replay_adjusted",
                          "recipe_path": "missing.jsonl", "adjust_path": os.fspath(secret)},
        "adjust-missing": {"module": "freeze", "op": "set", "mode": "replay_adjusted",
                           "recipe_path": "missing.jsonl",
                           "adjust_path": os.fspath(private / "nothing-here")},
        "recipe-abs": {"module": "freeze", "op": "set", "mode": "replay",
                       "recipe_path": os.fspath(secret)},
    }  # fmt: skip
    for cid, rec in attacks.items():
        _append(run_dir, {"cmd_id": cid, **rec})
    errors = {}
    for cid in attacks:
        entry = _entry(run_dir, cid)
        assert entry["decision"] == "rejected", entry
        assert "outside the run directory" in entry["error"]
        errors[cid] = entry["error"]
    # the same answer whether the file exists or not, and never its content
    assert errors["adjust-secret"].replace("credentials", "X") == errors["adjust-missing"].replace(
        "nothing-here", "X"
    )
    _stop(trainer, run_dir)
    with open(os.path.join(run_dir, "hotcb.applied.jsonl")) as f:
        assert "AKIA" not in f.read()
    assert victim.read_text() == "precious"


def test_a_command_cannot_write_over_the_runs_own_files(trainer: Any) -> None:
    """A checkpoint saved as the commands file lost the next command (a zip with no final
    newline swallowed it); one saved as the ledger erased it; a JSONL logger pointed at the
    ledger hid the next life's entries. Each is rejected now, with the reason, and the files
    stay what they were; a checkpoint and a logger path of the user's own still work."""
    run_dir = trainer.run_dir
    own = {
        "hotcb.commands.jsonl",
        "hotcb.applied.jsonl",
        "hotcb.run.json",
        "hotcb.sources/x.pt",
        "HOTCB.Applied.jsonl",
    }  # the ledger itself on a case-blind filesystem (macOS)
    for i, path in enumerate(sorted(own)):
        _append(run_dir, {"cmd_id": f"ckpt-{i}", "module": "control", "op": "checkpoint",
                          "params": {"path": path}})  # fmt: skip
    _append(run_dir, {"cmd_id": "jl", "module": "cb", "op": "load", "id": "jl",
                      "target": {"kind": "python_path", "path": BUNDLED,
                                 "symbol": "JSONLLoggerCallback"},
                      "init": {"every_steps": 1000}})  # fmt: skip
    moves = {"to-ledger": "hotcb.applied.jsonl", "to-outside": "../elsewhere.jsonl",
             "to-own": "logs/mine.jsonl"}  # fmt: skip
    for cid, path in moves.items():
        _append(run_dir, {"cmd_id": cid, "module": "cb", "op": "set_params", "id": "jl",
                          "params": {"path": path}})  # fmt: skip
    _append(run_dir, {"cmd_id": "after", "module": "opt", "op": "set_params",
                      "params": {"lr": 0.05}})  # fmt: skip
    for i, path in enumerate(sorted(own)):
        entry = _entry(run_dir, f"ckpt-{i}")
        assert entry["decision"] == "rejected", entry
        assert f"path {path!r} is one of the run's own files" in entry["error"], entry
    assert _entry(run_dir, "jl")["decision"] == "applied"
    ledger = _entry(run_dir, "to-ledger")
    assert ledger["decision"] == "rejected" and "one of the run's own files" in ledger["error"]
    outside = _entry(run_dir, "to-outside")  # refused when sent, not switched off later
    assert outside["decision"] == "rejected" and "outside the run directory" in outside["error"]
    assert _entry(run_dir, "to-own")["decision"] == "applied"
    assert _entry(run_dir, "after")["decision"] == "applied"  # the next command is not lost
    _stop(trainer, run_dir)
    assert all(e.get("seq") is not None for e in read_ledger(run_dir))  # only ledger entries
    assert not os.path.exists(os.path.join(os.path.dirname(run_dir), "elsewhere.jsonl"))


def test_a_frozen_run_can_still_be_paused_checkpointed_and_stopped(
    trainer: Any, tmp_path: Any
) -> None:
    run_dir = trainer.run_dir
    _append(run_dir, {"cmd_id": "prod", "module": "freeze", "op": "set", "mode": "prod"})
    assert _entry(run_dir, "prod")["decision"] == "applied"
    _append(run_dir, {"cmd_id": "lr", "module": "opt", "op": "set_params", "params": {"lr": 0.5}})
    assert _entry(run_dir, "lr")["decision"] == "ignored_freeze"
    for cid, op in (("pause", "pause"), ("ckpt", "checkpoint"), ("resume", "resume")):
        _append(run_dir, {"cmd_id": cid, "module": "control", "op": op})
        assert _entry(run_dir, cid)["decision"] == "applied", cid
    assert os.path.exists(checkpoint_path(_entry(run_dir, "ckpt"), run_dir) or "")
    _append(run_dir, {"cmd_id": "stop", "module": "control", "op": "stop"})
    assert _entry(run_dir, "stop")["decision"] == "applied"
    code, out, err = trainer.finish()
    assert code == 0 and "stopped at step" in out, err


def test_a_lost_ledger_does_not_apply_old_commands_again(tmp_path: Any, start_trainer: Any) -> None:
    run_dir = os.fspath(tmp_path / "run")
    first = start_trainer(run_dir, os.fspath(tmp_path / "a.jsonl"), steps=100_000)
    first.wait_step(1)
    _stop(first, run_dir)  # the commands file now holds a stop
    os.remove(os.path.join(run_dir, "hotcb.applied.jsonl"))
    again = start_trainer(run_dir, os.fspath(tmp_path / "b.jsonl"), steps=20)
    code, out, err = again.finish()
    assert code != 0 and "stopped at step" not in out
    assert "hotcb.applied.jsonl is missing" in err and "replay_commands" in err
    assert not os.path.exists(os.path.join(run_dir, "hotcb.applied.jsonl"))
    # the way out, on purpose: the old stop is applied again
    on_purpose = start_trainer(
        run_dir, os.fspath(tmp_path / "c.jsonl"), steps=20, replay_commands=True
    )
    code, out, err = on_purpose.finish()
    assert code == 0 and "stopped at step 0" in out, err


def test_a_checkpoint_cannot_write_over_another_runs_files_under_an_allowed_root(
    tmp_path: Any,
) -> None:
    """A trainer allowed a folder of runs (``allowed_roots=["runs"]``) took ``checkpoint --path
    ../B/hotcb.commands.jsonl`` and saved over run B's commands file. Another run's own files
    are refused as the run's own are; a checkpoint of the user's own beside them still saves."""
    from hotcb import HotClient, HotKernel

    runs = tmp_path / "runs"
    HotClient(os.fspath(runs / "B")).opt(lr=0.02)  # run B, with its commands file
    b_commands = runs / "B" / "hotcb.commands.jsonl"
    before = b_commands.read_bytes()
    kernel = HotKernel(os.fspath(runs / "A"), allowed_roots=[os.fspath(runs)],
                       poll_interval_sec=0.0)  # fmt: skip
    saved: list[str] = []

    def save(path: str | None = None) -> str:
        assert path is not None
        with open(path, "wb") as f:
            f.write(b"torch.save bytes")
        saved.append(path)
        return path

    try:
        client = HotClient(os.fspath(runs / "A"))
        over = client.checkpoint(path="../B/hotcb.commands.jsonl")
        beside = client.checkpoint(path="../B/ckpt.pt")
        # a folder with no run yet: the file would make it pass for one
        new = client.checkpoint(path="../C/hotcb.commands.jsonl")
        for step in range(3):
            kernel.apply({"step": step, "save_checkpoint": save})
    finally:
        kernel.close()
    by_id = {e["cmd_id"]: e for e in read_ledger(os.fspath(runs / "A"))}
    assert by_id[over]["decision"] == "rejected", by_id[over]
    assert "is one of the own files (hotcb.*) of the run" in by_id[over]["error"]
    assert by_id[new]["decision"] == "rejected", by_id[new]
    assert "is named as a run's own file: its folder would pass for a run" in by_id[new]["error"]
    assert not (runs / "C" / "hotcb.commands.jsonl").exists()
    assert b_commands.read_bytes() == before
    assert by_id[beside]["decision"] == "applied"
    assert saved == [os.fspath(runs / "B" / "ckpt.pt")]
