"""``hotcb branch``: a child run continues a parent's checkpoint with changes (issue #15).

The parent (the real trainer process, CPU, fixed seed) changes lr at step 10, saves a
checkpoint at step 30 and has a change scheduled for step 50. The child, branched at 30 with
``--set lr=X`` and started through ``hotcb launch --resume-from``, must train exactly like the
parent's checkpoint resumed directly in a fresh run directory with the same change scheduled at
step 30: equal final weights bit for bit, equal per-step traces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hotcb import HotClient
from hotcb._launch import Launch, LaunchOptions
from hotcb.branch import BranchError, branch
from hotcb.recipe import ledger_to_entries
from hotcb.testing import read_ledger, trainer_command

torch = pytest.importorskip("torch")

S, T, LR = 30, 60, 0.001
ENV = {k: v for k, v in os.environ.items() if k not in ("HOTCB_DIR", "HOTCB_RESUME_FROM")}


def _train(run_dir: str, tmp: Path, name: str, **options: Any) -> None:
    argv = trainer_command(
        run_dir,
        steps=T,
        trace=os.fspath(tmp / f"{name}.jsonl"),
        save_weights=os.fspath(tmp / f"{name}.pt"),
        no_code_load=True,
        **options,
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "hotcb", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=ENV)


def _trace(tmp: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp / f"{name}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("branch")
    run_dir = os.fspath(tmp / "parent")
    c = HotClient(run_dir, source="test")
    c.send("opt", "set_params", params={"lr": 0.005}, at_step=10)
    c.send("control", "checkpoint", at_step=S)
    c.send("opt", "set_params", params={"lr": 0.02}, at_step=50)
    _train(run_dir, tmp, "parent")
    assert os.path.isfile(os.path.join(run_dir, f"ckpt_{S}.pt"))
    return run_dir, tmp


def test_a_branch_trains_like_a_direct_resume_with_the_same_change(
    parent: tuple[str, Path],
) -> None:
    parent_dir, tmp = parent
    child = os.fspath(tmp / "child")
    made = _cli("--dir", parent_dir, "branch", "--from", str(S), "--to", child, "--set", f"lr={LR}")
    assert made.returncode == 0, made.stderr
    ckpt = os.path.join(parent_dir, f"ckpt_{S}.pt")
    assert f"--resume-from {ckpt}" in made.stdout
    # the parent ran without `hotcb launch`: no made-up command, and the output says so
    assert f"--resume-from {ckpt} -- <your training command>\n" in made.stdout
    assert "not started with 'hotcb launch'" in made.stdout

    # the child, started the way `hotcb branch` prints (the trainer reads HOTCB_RESUME_FROM)
    train = trainer_command(
        child, steps=T, trace=os.fspath(tmp / "child.jsonl"),
        save_weights=os.fspath(tmp / "child.pt"), no_code_load=True,
    )  # fmt: skip
    launched = _cli("--dir", child, "launch", "--resume-from", ckpt, "--", *train)
    assert launched.returncode == 0, launched.stdout + launched.stderr

    # the parent's checkpoint resumed directly elsewhere, the same change due at the same step
    # (a run directory resumed from a checkpoint reads its commands file from the checkpoint's
    # cursor: it starts as a copy of the parent's, then gets the change)
    direct = os.fspath(tmp / "direct")
    os.makedirs(direct)
    shutil.copy(os.path.join(parent_dir, "hotcb.commands.jsonl"), direct)
    HotClient(direct, source="test").send("opt", "set_params", params={"lr": LR}, at_step=S)
    _train(direct, tmp, "direct", resume=ckpt)

    a, b = torch.load(tmp / "child.pt"), torch.load(tmp / "direct.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    child_trace, direct_trace = _trace(tmp, "child"), _trace(tmp, "direct")
    assert child_trace == direct_trace
    assert child_trace[0]["step"] == S + 1 and child_trace[-1]["step"] == T - 1
    assert child_trace[0]["lr"] == LR  # applied at the child's first safe point
    parent_trace = {r["step"]: r for r in _trace(tmp, "parent")}
    assert parent_trace[S + 1]["lr"] == 0.005  # the branch did change the trajectory
    p = torch.load(tmp / "parent.pt")
    assert not all(torch.equal(a[k], p[k]) for k in a)

    # the child ledger: the parent's history up to the checkpoint, marked, applied only there
    meta = json.loads(Path(child, "hotcb.run.json").read_text())
    assert meta["branch"]["parent"] == parent_dir
    assert meta["branch"]["step"] == S and meta["branch"]["checkpoint"] == ckpt
    # who the parent is, wherever it is moved (the dashboard finds it by this)
    parent_meta = json.loads(Path(parent_dir, "hotcb.run.json").read_text())
    assert meta["branch"]["parent_created"] == parent_meta["created"]
    entries = read_ledger(child)
    inherited = [e for e in entries if e.get("inherited")]
    assert inherited == entries[: len(inherited)]
    assert [e["seq"] for e in inherited] == [e["seq"] for e in read_ledger(parent_dir)][
        : len(inherited)
    ]
    assert inherited[-1]["op"] == "checkpoint" and inherited[-1]["checkpoint"] == ckpt
    own = entries[len(inherited) :]
    applied = [(e["step"], e["source"], e["params"]) for e in own if e["decision"] == "applied"]
    # lr 0.005 (step 10) is not applied again; the change scheduled before the checkpoint for
    # step 50 is part of the checkpoint's schedule, so it lands in the child as in a resume
    assert applied == [(S + 1, "branch", {"lr": LR}), (50, "test", {"lr": 0.02})]
    assert not [e for e in own if e["decision"] in ("rejected", "failed")]
    assert not [e for e in entries if e["module"] == "kernel" and e["op"] == "cursor_reset"]
    direct_applied = [
        (e["step"], e["params"]) for e in read_ledger(direct) if e["decision"] == "applied"
    ]
    assert direct_applied == [(S + 1, {"lr": LR}), (50, {"lr": 0.02})]

    # the child's recipe is its whole trajectory from step 0: each change once
    steps = [(e.step, e.params) for e in ledger_to_entries(entries) if e.module == "opt"]
    assert steps == [(10, {"lr": 0.005}), (S + 1, {"lr": LR}), (50, {"lr": 0.02})]


def test_the_printed_command_says_where_a_secret_was_left_out(
    parent: tuple[str, Path], tmp_path: Path
) -> None:
    """``hotcb launch`` records the training command without its secrets (``***``): the
    command a branch prints says to put them back."""
    parent_dir = os.fspath(tmp_path / "launched")
    shutil.copytree(parent[0], parent_dir)
    meta_path = os.path.join(parent_dir, "hotcb.run.json")
    meta = json.loads(Path(meta_path).read_text())
    meta["launch"] = {"argv": ["python", "train.py", "--hf-token", "***"], "cwd": parent_dir}
    Path(meta_path).write_text(json.dumps(meta))
    made = _cli("--dir", parent_dir, "branch", "--from", str(S), "--to", os.fspath(tmp_path / "c"))
    assert made.returncode == 0, made.stderr
    assert "-- python train.py --hf-token '***'\n" in made.stdout
    assert "kept without its secrets: put each back where it says ***" in made.stdout


def test_a_checkpoint_given_by_path(parent: tuple[str, Path], tmp_path: Path) -> None:
    parent_dir, _ = parent
    made = branch(
        parent_dir, tmp_path / "c", source=os.path.join(parent_dir, f"ckpt_{S}.pt")
    )  # fmt: skip
    assert made["step"] == S and made["commands"] == []
    assert (tmp_path / "c" / "hotcb.actuators.json").is_file()
    # relative to the parent, as `hotcb checkpoint --path ckpt.pt` takes a relative path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, "-m", "hotcb", "--dir", parent_dir, "branch", "--from",
                          f"ckpt_{S}.pt", "--to", os.fspath(tmp_path / "d")], cwd=elsewhere,
                         capture_output=True, text=True, timeout=120, env=ENV)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_a_branch_not_started_yet_says_so(parent: tuple[str, Path], tmp_path: Path) -> None:
    """Before its training starts, a branch's status said `[idle]` and listed the actuators
    with the values the parent ended with (lr 0.02, set after the checkpoint)."""
    parent_dir, _ = parent
    child = os.fspath(tmp_path / "child")
    assert _cli("--dir", parent_dir, "branch", "--from", str(S), "--to", child).returncode == 0
    done = _cli("--dir", child, "status")
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.endswith(f"[not started (a branch of {parent_dir} at step {S})]"), first
    assert "actuators (the parent's; their values come when the branch starts)" in done.stdout
    (lr,) = [ln.split() for ln in done.stdout.splitlines() if ln.strip().startswith("lr ")]
    assert lr[1] == "–"
    assert _cli("--dir", child, "set", "lr=0.001").returncode == 0  # routed by the parent's


def test_a_bad_from_lists_the_checkpoints(parent: tuple[str, Path], tmp_path: Path) -> None:
    parent_dir, _ = parent
    for bad in ("7", os.fspath(tmp_path / "nope.pt")):
        out = _cli("--dir", parent_dir, "branch", "--from", bad, "--to", os.fspath(tmp_path / "c"))
        assert out.returncode == 2
        assert f"checkpoints of {parent_dir}: step {S} (" in out.stderr, out.stderr
    assert not (tmp_path / "c").exists()


def test_an_existing_run_is_not_overwritten(parent: tuple[str, Path], tmp_path: Path) -> None:
    parent_dir, _ = parent
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "hotcb.commands.jsonl").write_text("")
    with pytest.raises(BranchError, match="not empty"):
        branch(parent_dir, taken, source=S)
    with pytest.raises(BranchError, match="new run directory"):
        branch(parent_dir, parent_dir, source=S)
    assert (taken / "hotcb.commands.jsonl").read_text() == ""


def test_a_bad_set_key_leaves_no_child(parent: tuple[str, Path], tmp_path: Path) -> None:
    parent_dir, _ = parent
    with pytest.raises(ValueError, match="lr"):
        branch(parent_dir, tmp_path / "c", source=S, set_params={"lr": -1.0})
    assert not (tmp_path / "c").exists()


def test_launch_branch_resumes_the_same_command(parent: tuple[str, Path], tmp_path: Path) -> None:
    parent_dir, _ = parent
    run = Launch(["python", "train.py"], parent_dir, LaunchOptions(serve_dir=parent_dir))
    child = run.branch(tmp_path / "c", from_=S, set={"lr": LR}, start=False)
    assert child.argv == run.argv and child.run_dir == os.fspath(tmp_path / "c")
    assert child.opts.resume_from == os.path.join(parent_dir, f"ckpt_{S}.pt")
    assert child.opts.serve_dir == child.run_dir
    assert child.opts.log_path is not None and child.opts.log_path.startswith(child.run_dir)


def test_a_checkpoint_saved_as_a_folder_branches(tmp_path: Path) -> None:
    """The HF Trainer saves ``checkpoint-<step>/`` folders: a branch starts from one."""
    from hotcb import HotKernel

    run_dir = os.fspath(tmp_path / "hf")

    def save() -> str:
        folder = os.path.join(run_dir, "output", "checkpoint-3")
        os.makedirs(folder, exist_ok=True)
        return folder

    HotClient(run_dir, source="test").send("control", "checkpoint", at_step=3)
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    for step in range(6):
        kernel.apply({"step": step, "save_checkpoint": save})
    kernel.close()
    made = branch(run_dir, tmp_path / "child", source=3)
    assert made["step"] == 3 and made["checkpoint"] == os.path.join(
        run_dir, "output", "checkpoint-3"
    )
    assert "--resume-from " + made["checkpoint"] in made["resume"]


def test_checkpoints_saved_on_the_flag_say_how_to_make_them_branchable(tmp_path: Path) -> None:
    """A loop that saves on ``kernel.checkpoint_requested`` leaves no file in the ledger: the
    refusal says why and what to change, not 'save one with hotcb checkpoint' (just done)."""
    from hotcb import HotKernel

    run_dir = os.fspath(tmp_path / "flag")
    HotClient(run_dir, source="test").send("control", "checkpoint", at_step=3)
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    for step in range(6):
        kernel.apply({"step": step})
        if kernel.checkpoint_requested:
            Path(run_dir, f"checkpoint_{step}.pt").write_bytes(b"state")
            kernel.checkpoint_requested = False
    kernel.close()
    with pytest.raises(BranchError) as info:
        branch(run_dir, tmp_path / "child", source=3)
    said = str(info.value)
    assert "saved its checkpoints on kernel.checkpoint_requested" in said
    assert "save_checkpoint(path) callable in env" in said and "save one with" not in said
    assert not (tmp_path / "child").exists()


def test_the_printed_command_trains_into_the_child_not_the_parent(tmp_path: Path) -> None:
    """A launched command that names its run directory (``--run-dir``) gets the child's."""
    from hotcb.branch import resume_command

    parent, child = os.fspath(tmp_path / "runs" / "a"), os.fspath(tmp_path / "runs" / "b")
    argv = ["python", "train.py", "--run-dir", "runs/a", "--out=runs/a", "--lr", "runs/ab"]
    got = resume_command(child, "/ck.pt", argv, parent, os.fspath(tmp_path))
    assert got == (
        f"hotcb --dir {child} launch --resume-from /ck.pt -- python train.py --run-dir {child} "
        f"--out={child} --lr runs/ab"
    )


@pytest.fixture(scope="module")
def replaying(parent: tuple[str, Path]) -> tuple[str, Path]:
    """A run that replays the parent's recipe from step 0, with a checkpoint at step S."""
    parent_dir, tmp = parent
    run_dir = os.fspath(tmp / "replaying")
    recipe = os.fspath(tmp / "parent.recipe.jsonl")
    assert _cli("--dir", parent_dir, "recipe", "export", "--out", recipe).returncode == 0
    c = HotClient(run_dir, source="test")
    c.freeze("replay", recipe_path=recipe)  # copied into the run's hotcb.replay/
    c.send("control", "checkpoint", at_step=S)
    _train(run_dir, tmp, "replaying")
    return run_dir, tmp


def test_a_replay_run_copied_elsewhere_resumes_from_its_own_recipe(
    replaying: tuple[str, Path],
) -> None:
    """hotcb.freeze.json and the checkpoint named the recipe by its absolute path: a copy of
    the run replayed its original's recipe, and once that was moved the copy's resume failed
    ("cannot read recipe /…/B/hotcb.replay/…")."""
    run_dir, tmp = replaying
    freeze = json.loads(Path(run_dir, "hotcb.freeze.json").read_text())
    assert freeze["mode"] == "replay" and freeze["recipe_path"].startswith("hotcb.replay/")
    copy = os.fspath(tmp / "replaying-copy")
    shutil.copytree(run_dir, copy)
    moved = run_dir + ".moved"
    os.rename(run_dir, moved)
    try:
        _train(copy, tmp, "copy", resume=os.path.join(copy, f"ckpt_{S}.pt"))
    finally:
        os.rename(moved, run_dir)
    entries = read_ledger(copy)
    assert not [e for e in entries if e["decision"] in ("failed", "rejected")], entries
    replayed = [(e["step"], e["params"]) for e in entries if e["source"] == "recipe"]
    assert (50, {"lr": 0.02}) in replayed  # the recipe's change after the checkpoint
    assert _trace(tmp, "copy")[-1] == _trace(tmp, "replaying")[-1]


def test_a_branch_of_a_frozen_run_turns_the_freeze_off_for_its_changes(
    replaying: tuple[str, Path],
) -> None:
    """The parent replays a recipe: the branch's --set was ignored (`ignored_freeze`), the
    child went on replaying the parent's recipe, and its status said `freeze off`."""
    run_dir, tmp = replaying
    child = os.fspath(tmp / "frozen-child")
    made = _cli("--dir", run_dir, "branch", "--from", str(S), "--to", child, "--set", f"lr={LR}")
    assert made.returncode == 0, made.stderr
    assert "the parent was frozen (replay) at that step" in made.stdout
    train = trainer_command(child, steps=T, trace=os.fspath(tmp / "frozen-child.jsonl"),
                            no_code_load=True)  # fmt: skip
    ckpt = os.path.join(run_dir, f"ckpt_{S}.pt")
    launched = _cli("--dir", child, "launch", "--resume-from", ckpt, "--", *train)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    own = [e for e in read_ledger(child) if not e.get("inherited")]
    assert not [e for e in own if e["decision"] in ("failed", "rejected", "ignored_freeze")], own
    applied = [(e["step"], e["module"], e["source"]) for e in own if e["decision"] == "applied"]
    assert applied[:2] == [(S + 1, "freeze", "branch"), (S + 1, "opt", "branch")]
    assert "recipe" not in [e["source"] for e in own if e["decision"] == "applied"]
    assert _trace(tmp, "frozen-child")[0]["lr"] == LR
    status = json.loads(_cli("--dir", child, "status", "--json").stdout)
    assert status["freeze"]["mode"] == "off"
    # without changes, a branch goes on in the parent's mode, from its own copy of the recipe
    same = os.fspath(tmp / "same-child")
    made = _cli("--dir", run_dir, "branch", "--from", str(S), "--to", same)
    assert made.returncode == 0 and "frozen" not in made.stdout
    train = trainer_command(same, steps=T, trace=os.fspath(tmp / "same-child.jsonl"),
                            no_code_load=True)  # fmt: skip
    assert _cli("--dir", same, "launch", "--resume-from", ckpt, "--", *train).returncode == 0
    assert json.loads(_cli("--dir", same, "status", "--json").stdout)["freeze"]["mode"] == "replay"
    assert _trace(tmp, "same-child")[-1] == _trace(tmp, "replaying")[-1]
