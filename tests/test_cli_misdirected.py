"""A command sent where the user did not mean it, and ids the user can read off ``hotcb log``:
the real ``hotcb`` command as a subprocess, a real kernel for the ledger it reads."""

from __future__ import annotations

import os
from typing import Any

from hotcb.testing import StepDriver

NO_RUN = "holds no run yet (no hotcb.* files)"


def test_a_command_sent_to_a_folder_without_a_run_says_so_on_stderr(
    tmp_path: Any, cli: Any
) -> None:
    """A forgotten ``--dir``: ``hotcb stop`` in a project folder wrote a commands file there
    with exit 0 and not a word, to stop any run started there later."""
    proj = tmp_path / "proj"
    proj.mkdir()
    proc = cli(None, "stop", cwd=os.fspath(proj))
    assert proc.returncode == 0, proc.stderr
    assert f"the current directory {NO_RUN}" in proc.stderr
    assert "give --dir RUN" in proc.stderr
    again = cli(None, "set", "lr=0.1", cwd=os.fspath(proj))  # every time, not the first only
    assert again.returncode == 0 and NO_RUN in again.stderr, again.stderr
    # a run directory, even one not started yet (hotcb init), is where a command belongs
    run = os.fspath(tmp_path / "run")
    assert cli(run, "init").returncode == 0
    proc = cli(run, "set", "lr=1e-3")
    assert proc.returncode == 0 and NO_RUN not in proc.stderr, proc.stderr


def test_undo_and_cancel_take_the_number_hotcb_log_shows(run_dir: str, cli: Any) -> None:
    """``hotcb log`` shows ``#N``, not command ids, yet ``undo --cmd-id`` wanted an id."""
    with StepDriver(run_dir, weights={"aux": 0.0}) as drv:
        drv.steps(1)
        drv.client.loss(aux=0.5)
        drv.steps(1)
        drv.client.loss(aux=0.25)
        drv.steps(1)
        later = drv.client.send("loss", "set_params", params={"aux": 0.75}, at_step=100)
        drv.steps(1)
        lines = cli(run_dir, "log").stdout.splitlines()
        newest = next(line for line in lines if "aux: 0.5 -> 0.25" in line)
        seq = newest.split()[0]
        assert seq.startswith("#"), lines
        undo = cli(run_dir, "undo", "--cmd-id", seq)
        assert undo.returncode == 0, undo.stderr
        scheduled = next(line.split()[0] for line in cli(run_dir, "log").stdout.splitlines()
                         if "scheduled" in line)  # fmt: skip
        assert cli(run_dir, "cancel", scheduled).returncode == 0
        drv.steps(1)
        entries = drv.ledger()
        (undone,) = [e for e in entries if e["op"] == "undo"]
        assert undone["undo_of"] == entries[1]["cmd_id"] and undone["decision"] == "applied"
        (cancel,) = [e for e in entries if e["op"] == "cancel"]
        assert cancel["decision"] == "applied" and cancel["params"]["cmd_id"] == later
        gone = cli(run_dir, "undo", "--cmd-id", "#999")
        assert gone.returncode == 2 and "no ledger entry #999" in gone.stderr


def test_a_file_where_a_run_folder_should_be_is_one_line_for_launch_demo_and_branch(
    tmp_path: Any, cli: Any
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    for args in (["launch", "--dir", os.fspath(afile), "--", "true"],
                 ["demo", "--no-browser", "--run-dir", os.fspath(afile)]):  # fmt: skip
        proc = cli(None, *args, cwd=os.fspath(tmp_path))
        assert proc.returncode == 2, (args, proc.stderr)
        assert "is a file, not a run directory" in proc.stderr and "Errno" not in proc.stderr
        assert "serving on" not in proc.stdout + proc.stderr  # refused before anything started
    with StepDriver(os.fspath(tmp_path / "parent")) as drv:
        drv.steps(1)
    proc = cli(os.fspath(tmp_path / "parent"), "branch", "--from", "0", "--to", os.fspath(afile))
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr, proc.stderr


def test_bench_run_refuses_dir_it_would_ignore(tmp_path: Any, cli: Any) -> None:
    """``bench run --dir foo`` ran into ./bench-out and left no foo."""
    proc = cli(None, "bench", "run", "--dir", "foo", "--task", "digits_mlp", "--conditions",
               "fixed", "--steps", "2", "--no-progress", cwd=os.fspath(tmp_path))  # fmt: skip
    assert proc.returncode == 2 and "give --out foo instead of --dir" in proc.stderr
    assert not os.listdir(tmp_path)


def test_autopilot_once_on_a_folder_without_a_run_says_so_and_fails(
    tmp_path: Any, cli: Any
) -> None:
    """It said it was waiting for a run, then exited 0 at once."""
    proc = cli(os.fspath(tmp_path), "autopilot", "--once", "--mode", "suggest")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no run under" in proc.stdout and "waiting" not in proc.stdout


def test_freeze_prod_help_says_run_control_still_works(cli: Any) -> None:
    text = " ".join(cli(None, "freeze", "--help").stdout.split())
    assert (
        "prod (ignore changes; pause, resume, stop, checkpoint, evaluate and freeze still" in text
    )
