"""The examples under ``hotcb launch`` and ``hotcb branch``, as a user runs them (real
subprocesses): they write into the run directory ``hotcb launch`` names (``$HOTCB_RUN_DIR``)
unless ``--run-dir`` says otherwise, resume from ``$HOTCB_RESUME_FROM`` the way their framework
does, and a ``hotcb checkpoint`` of the bare loop is one ``hotcb branch --from`` starts from."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hotcb.client import HotClient
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow
pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: No run directory or checkpoint inherited from the developer's shell.
ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in ("HOTCB_DIR", "HOTCB_RUN_DIR", "HOTCB_RESUME_FROM")
}
#: Each example, trained for a few steps.
QUICK = {
    "bare_loop.py": ["--steps", "5"],
    "lightning_digits.py": ["--steps", "4", "--step-delay", "0", "--val-every", "2"],
    "hf_tiny.py": ["--steps", "3", "--step-delay", "0", "--eval-steps", "0"],
}
NEEDS = {"lightning_digits.py": "lightning.pytorch", "hf_tiny.py": "transformers"}


def hotcb(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real ``hotcb`` command; fails the test when it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "hotcb", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=ENV,
    )
    assert proc.returncode == 0, f"hotcb {shlex.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def launch_argv(run_dir: Path, script: str, *flags: str) -> list[str]:
    """``hotcb launch --dir RUN -- python examples/SCRIPT FLAGS``, without ``hotcb``."""
    return ["launch", "--dir", os.fspath(run_dir), "--", sys.executable, str(EXAMPLES / script), *flags]  # fmt: skip


def metrics(run_dir: Path) -> dict[int, dict[str, Any]]:
    """The training steps' metrics by step (the first record of each step)."""
    path = run_dir / "hotcb.metrics.jsonl"
    if not path.exists():
        return {}
    out: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], rec["metrics"])
    return out


def run_printed(printed: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the ``hotcb ... launch ...`` command ``hotcb branch`` printed last."""
    argv = shlex.split(printed.strip().splitlines()[-1])
    assert argv[0] == "hotcb" and "launch" in argv, printed
    return hotcb(*argv[1:], cwd=cwd, timeout=timeout)


@pytest.mark.parametrize("script", sorted(QUICK))
def test_an_example_under_hotcb_launch_writes_into_the_launch_directory(
    tmp_path: Path, script: str
) -> None:
    if script in NEEDS:
        pytest.importorskip(NEEDS[script])
    run = tmp_path / "launched"
    hotcb(*launch_argv(run, script, *QUICK[script]), cwd=tmp_path)
    assert metrics(run), f"nothing in {run}: {os.listdir(run)}"
    assert not (tmp_path / "runs").exists()  # the example's own default run directory


def test_an_explicit_run_dir_wins_over_hotcb_launch(tmp_path: Path) -> None:
    mine, launched = tmp_path / "mine", tmp_path / "launched"
    hotcb(*launch_argv(launched, "bare_loop.py", "--steps", "3", "--run-dir", str(mine)), cwd=tmp_path)  # fmt: skip
    assert sorted(metrics(mine)) == [0, 1, 2]
    assert metrics(launched) == {}


@pytest.fixture(scope="module")
def bare_branch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A bare loop under ``hotcb launch``, a live ``hotcb checkpoint``, ``hotcb branch`` from
    it, and the child started with the command ``hotcb branch`` printed (each run stopped a
    few steps after the checkpoint)."""
    tmp = tmp_path_factory.mktemp("bare_branch")
    parent, child = tmp / "parent", tmp / "child"
    flags = ("--steps", "100000", "--step-delay", "0.02")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotcb", *launch_argv(parent, "bare_loop.py", *flags)],
        cwd=tmp,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: max(metrics(parent), default=-1) >= 10, 180, what="the parent's step 10")
        hotcb("--dir", str(parent), "checkpoint", "--wait", "--timeout", "120", cwd=tmp)
        (saved,) = [e for e in read_ledger(parent) if e.get("op") == "checkpoint"]
        step = saved["step"]
        wait_for(lambda: max(metrics(parent)) >= step + 5, 120, what="the parent past it")
        hotcb("--dir", str(parent), "stop", "--wait", "--timeout", "120", cwd=tmp)
        assert proc.wait(120) == 0
    finally:
        proc.kill()  # a no-op when it ended
    printed = hotcb(
        "--dir", str(parent), "branch", "--from", str(step), "--to", str(child), cwd=tmp
    )
    argv = shlex.split(printed.stdout.strip().splitlines()[-1])
    parent_lines = (parent / "hotcb.metrics.jsonl").read_text()
    child_proc = subprocess.Popen(
        [sys.executable, "-m", "hotcb", *argv[1:]],
        cwd=tmp,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: max(metrics(child), default=-1) >= step + 5, 180, what="the child")
        hotcb("--dir", str(child), "stop", "--wait", "--timeout", "120", cwd=tmp)
        assert child_proc.wait(120) == 0
    finally:
        child_proc.kill()
    return {
        "parent": parent,
        "child": child,
        "step": step,
        "saved": saved,
        "argv": argv,
        "parent_unchanged": parent_lines == (parent / "hotcb.metrics.jsonl").read_text(),
    }


def test_a_bare_loop_checkpoint_is_one_hotcb_branch_starts_a_child_from(
    bare_branch: dict[str, Any],
) -> None:
    saved, parent = bare_branch["saved"], bare_branch["parent"]
    assert saved["decision"] == "applied"
    ckpt = parent / f"checkpoint_{bare_branch['step']}.pt"
    assert saved["checkpoint"] == ckpt.name and ckpt.is_file()  # the path, not "requested"
    assert bare_branch["argv"][1:6] == ["--dir", str(bare_branch["child"]), "launch", "--resume-from", str(ckpt)]  # fmt: skip


def test_the_child_continues_from_the_parents_checkpoint_in_its_own_directory(
    bare_branch: dict[str, Any],
) -> None:
    step, parent, child = bare_branch["step"], bare_branch["parent"], bare_branch["child"]
    mine, theirs = metrics(child), metrics(parent)
    assert min(mine) == step + 1  # not step 0: the checkpoint's model, optimizer and data order
    for s in (step + 1, step + 2):
        assert mine[s]["loss"] == pytest.approx(theirs[s]["loss"], rel=1e-6, abs=0.0), s
    assert bare_branch["parent_unchanged"]  # the child wrote into its own directory
    assert [e["op"] for e in read_ledger(child) if e.get("inherited")] == ["checkpoint"]


def test_a_branch_of_a_bare_loop_follows_the_parents_lr_schedule(tmp_path: Path) -> None:
    parent, child = tmp_path / "parent", tmp_path / "child"
    HotClient(os.fspath(parent)).send("control", "checkpoint", at_step=20)
    hotcb(*launch_argv(parent, "bare_loop.py", "--steps", "60"), cwd=tmp_path)  # cosine, T_max 60
    printed = hotcb("--dir", str(parent), "branch", "--from", "20", "--to", str(child), cwd=tmp_path)  # fmt: skip
    run_printed(printed.stdout, tmp_path)
    mine, theirs = metrics(child), metrics(parent)
    assert sorted(mine) == list(range(21, 60))
    assert [mine[s]["lr"] for s in mine] == pytest.approx([theirs[s]["lr"] for s in mine])


def test_lightning_branch_resumes_with_ckpt_path_in_the_childs_directory(tmp_path: Path) -> None:
    pytest.importorskip("lightning.pytorch")
    parent, child = tmp_path / "parent", tmp_path / "child"
    HotClient(os.fspath(parent)).send("control", "checkpoint", at_step=3)
    flags = ("--steps", "6", "--step-delay", "0", "--val-every", "3")
    hotcb(*launch_argv(parent, "lightning_digits.py", *flags), cwd=tmp_path)
    assert (parent / "checkpoints" / "hotcb-step3.ckpt").is_file()
    before = (parent / "hotcb.metrics.jsonl").read_text()
    printed = hotcb("--dir", str(parent), "branch", "--from", "3", "--to", str(child), "--set", "lr=0.02", cwd=tmp_path)  # fmt: skip
    out = run_printed(printed.stdout, tmp_path)
    assert "done at step 6" in out.stdout
    assert sorted(metrics(child)) == [4, 5, 6]  # steps 4-6 only: Lightning resumed at step 3
    assert (parent / "hotcb.metrics.jsonl").read_text() == before
    (change,) = [e for e in read_ledger(child) if e.get("op") == "set_params"]
    assert (change["decision"], change["step"]) == ("applied", 4)
    assert not (tmp_path / "runs").exists()


def test_hf_resumes_from_hotcb_resume_from_with_its_hotcb_state(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    parent, child = tmp_path / "parent", tmp_path / "child"
    HotClient(os.fspath(parent)).send("custom", "set_params", params={"max_grad_norm": 0.5})
    flags = ("--steps", "6", "--step-delay", "0", "--eval-steps", "0", "--save-steps", "3")
    hotcb(*launch_argv(parent, "hf_tiny.py", *flags), cwd=tmp_path)
    ckpt = parent / "output" / "checkpoint-3"
    argv = launch_argv(child, "hf_tiny.py", *flags)
    out = hotcb(argv[0], "--resume-from", str(ckpt), *argv[1:], cwd=tmp_path)
    assert "done at step 6" in out.stdout
    assert sorted(metrics(child)) == [4, 5, 6]  # resume_from_checkpoint: steps 4-6 only
    assert (child / "output" / "checkpoint-6").is_dir()
    # the kernel's state came back from the parent's checkpoint folder, not from its own output
    acts = json.loads((child / "hotcb.actuators.json").read_text())["actuators"]
    assert {a["param_key"]: a["current"] for a in acts}["max_grad_norm"] == 0.5
    assert not (tmp_path / "runs").exists()


def test_ddp_bare_branch_resumes_every_rank_from_the_checkpoint(tmp_path: Path) -> None:
    parent, child = tmp_path / "parent", tmp_path / "child"
    HotClient(os.fspath(parent)).send("control", "checkpoint", at_step=5)
    hotcb(*launch_argv(parent, "ddp_bare.py", "--nproc", "2", "--steps", "10"), cwd=tmp_path)
    printed = hotcb("--dir", str(parent), "branch", "--from", "5", "--to", str(child), cwd=tmp_path)  # fmt: skip
    out = run_printed(printed.stdout, tmp_path)
    assert "done at step 9" in out.stdout
    mine, theirs = metrics(child), metrics(parent)
    assert sorted(mine) == [6, 7, 8, 9]
    # every rank's model, optimizer and data order came back: the same losses (no LR scheduler)
    assert [mine[s]["loss"] for s in mine] == pytest.approx([theirs[s]["loss"] for s in mine])


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm-to-the-parent"])
def test_ddp_bare_saves_a_checkpoint_on_every_rank_at_ctrl_c_and_stops(
    tmp_path: Path, how: str
) -> None:
    """Ctrl-C in the terminal of ``python examples/ddp_bare.py`` (SIGINT to its process group:
    the parent and both ranks) or a scheduler's SIGTERM to the parent alone: the ranks agree
    on one step, save a checkpoint there and stop; the script exits 0 with no rank left."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "ddp_bare.py"), "--run-dir", os.fspath(run_dir),
         "--nproc", "2", "--steps", "1000000", "--step-delay", "0.01"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # whatever CI's shell did
    )  # fmt: skip
    try:
        wait_for(lambda: max(metrics(run_dir), default=-1) >= 3, 120, what="step 3")
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    by = [(e["module"], e["op"], e["decision"], e["step"]) for e in read_ledger(os.fspath(run_dir))
          if e.get("source") == "signal"]  # fmt: skip
    assert [b[:3] for b in by] == [("control", "checkpoint", "applied"),
                                   ("control", "stop", "applied")], by  # fmt: skip
    step = by[0][3]
    assert by[1][3] == step and (run_dir / f"checkpoint_{step}.pt").exists()
    assert f"done at step {step}" in out


def test_a_bare_loop_resumed_from_a_checkpoint_taken_while_paused_keeps_each_change_at_its_step(
    tmp_path: Path,
) -> None:
    """Paused at step N, a person sets lr, saves a checkpoint, sets aux_weight, and the run
    dies. Resumed from that checkpoint, the aux_weight (after the save, so not in it) was
    re-applied at step N+1, after that step trained with the old weight; it lands at step N,
    before the first resumed step, as in the life that died."""
    run_dir = tmp_path / "run"
    argv = [sys.executable, str(EXAMPLES / "bare_loop.py"), "--run-dir", os.fspath(run_dir)]
    proc = subprocess.Popen([*argv, "--steps", "1000000", "--step-delay", "0.01"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: max(metrics(run_dir), default=-1) >= 3, 120, what="step 3")
        hotcb("--dir", os.fspath(run_dir), "pause", "--wait", cwd=tmp_path)
        hotcb("--dir", os.fspath(run_dir), "set", "lr=0.002", "--wait", cwd=tmp_path)
        saved = hotcb("--dir", os.fspath(run_dir), "checkpoint", "--wait", cwd=tmp_path)
        hotcb("--dir", os.fspath(run_dir), "set", "aux_weight=0.01", "--wait", cwd=tmp_path)
    finally:
        proc.kill()  # the run dies, paused
        proc.wait()
    (ckpt,) = [e for e in read_ledger(os.fspath(run_dir)) if e["op"] == "checkpoint"]
    step, path = ckpt["step"], os.path.join(run_dir, ckpt["checkpoint"])  # (relative to it)
    assert ckpt["checkpoint"] in saved.stdout
    done = subprocess.run([*argv, "--steps", str(step + 4), "--resume", path], env=ENV,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    again = [e for e in read_ledger(os.fspath(run_dir)) if e.get("source") == "resume"
             and "aux_weight" in (e.get("changes") or {})]  # fmt: skip
    assert [e["step"] for e in again] == [step], again


def test_an_example_without_scikit_learn_says_what_to_install(tmp_path: Path) -> None:
    """`pip install "hotcb[lightning]"` then examples/lightning_digits.py: a bare
    ModuleNotFoundError from deep inside hotcb.testing. The digits loader names the package."""
    code = ("import sys, runpy\n"
            "sys.modules['sklearn'] = None\n"
            "sys.argv = ['lightning_digits.py', '--run-dir', 'run']\n"
            f"runpy.run_path({str(EXAMPLES / 'lightning_digits.py')!r}, run_name='__main__')\n")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=ENV)  # fmt: skip
    assert res.returncode != 0
    assert "the digits data ships with scikit-learn: pip install scikit-learn" in res.stderr
