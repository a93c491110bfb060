"""Typos fail at once, not after --wait (issue #11, items 4 and 5)."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest

from hotcb import HotClient, HotKernel
from hotcb.errors import ActuatorError
from hotcb.testing import StepDriver


@pytest.fixture
def published(tmp_path: Any) -> str:
    """A run that has published its actuators (loss weights ce, aux, mse_weight)."""
    run_dir = os.fspath(tmp_path / "run")
    with StepDriver(run_dir, weights={"ce": 1.0, "aux": 0.0, "mse_weight": 0.0}) as drv:
        drv.steps(1)
    return run_dir


def test_unknown_names_and_bad_values_fail_before_anything_is_written(
    published: str, cli: Any
) -> None:
    commands = os.path.join(published, "hotcb.commands.jsonl")
    before = os.path.getsize(commands)
    done = cli(published, "set", "auxx=0.5")
    assert done.returncode == 2
    assert "unknown actuator 'auxx'" in done.stderr  # routed to custom by its name
    assert "did you mean 'aux' (in loss)?" in done.stderr  # a typo of a knob of another group
    done = cli(published, "custom", "set_params", "ce=1")
    assert done.returncode == 2  # the name is right, the group is not: the fix
    assert "'ce' is a loss actuator, not custom: send it as 'hotcb loss set_params ce=...'" in (
        done.stderr
    )
    done = cli(published, "set", "mse=0.5")  # no close spelling, but a name with it as a word
    assert done.returncode == 2  # (README's `set ce=0.5` on a run whose knob is `ce_weight`)
    assert "did you mean 'mse_weight' (in loss)?" in done.stderr, done.stderr
    done = cli(published, "loss", "set_params", "aux=-1")
    assert done.returncode == 2 and "below the minimum" in done.stderr
    done = cli(published, "set", "aux=oops")
    assert done.returncode == 2 and "must be a number" in done.stderr
    assert os.path.getsize(commands) == before  # nothing was queued
    with pytest.raises(ActuatorError, match="did you mean 'aux'"):
        HotClient(published).set({"auxx": 0.5})
    assert cli(published, "set", "aux=0.5").returncode == 0  # a good one still goes through


def test_before_the_run_publishes_a_command_is_queued_and_the_cli_says_so(
    run_dir: str, cli: Any
) -> None:
    assert cli(run_dir, "init").returncode == 0
    done = cli(run_dir, "set", "aux=0.5", "lr=1e-3", "ce_weight=2")
    assert done.returncode == 0 and len(done.stdout.split()) == 3  # a cmd_id per module
    assert "queued; the run has not published its actuators yet" in done.stderr
    # where each key went, by its name alone: a loss weight called "aux" lands in custom
    assert "routed by name: aux to custom, lr to opt, ce_weight to loss" in done.stderr


def test_a_misspelt_run_directory_is_refused_not_created(tmp_path: Any, cli: Any) -> None:
    missing = os.fspath(tmp_path / "misspelt")
    for argv in (["set", "lr=1e-3"], ["log"], ["pause"], ["cb", "list"]):
        done = cli(missing, *argv)
        assert done.returncode == 2, argv
        assert f"no run directory at {missing}" in done.stderr, argv
    assert not os.path.exists(missing)


def test_a_folder_of_runs_is_refused_with_its_runs_named(tmp_path: Any, cli: Any) -> None:
    """``--dir runs`` (what ``hotcb serve`` takes) for a command: it would wait in
    runs/hotcb.commands.jsonl for a run that never starts there."""
    runs = tmp_path / "runs"
    for name in ("exp1", "exp2"):
        assert cli(os.fspath(runs / name), "init").returncode == 0
    for argv in (["set", "lr=1e-3"], ["pause"], ["status"], ["log"], ["tune", "status"],
                 ["init"], ["cb", "list"], ["cancel", "X"]):  # fmt: skip
        # init made the folder a run: every command after it was queued there
        done = cli(os.fspath(runs), *argv)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        (line,) = done.stderr.strip().splitlines()
        assert f"{runs} is a folder of runs (exp1, exp2), not a run" in line, argv
        assert f"--dir {runs / 'exp1'}" in line
    assert sorted(os.listdir(runs)) == ["exp1", "exp2"]  # nothing written there
    with pytest.raises(ValueError, match="is a folder of runs"):  # the Python client too
        HotClient(runs).pause()


def test_a_folder_whose_runs_lie_a_level_deeper_is_refused_too(tmp_path: Any, cli: Any) -> None:
    """``runs/sweep/a``, which ``hotcb serve --dir runs`` lists: ``--dir runs`` for a command
    was taken for a run (``stop`` queued, ``init`` made it one, the page then listed it)."""
    runs = tmp_path / "runs"
    assert cli(os.fspath(runs / "sweep" / "a"), "init").returncode == 0
    for argv in (["init"], ["stop"], ["freeze", "--mode", "prod"], ["undo"]):
        done = cli(os.fspath(runs), *argv)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        assert f"{runs} is a folder of runs (sweep/a), not a run" in done.stderr, argv
    assert sorted(os.listdir(runs)) == ["sweep"]


def test_status_sees_a_run_as_soon_as_its_kernel_exists(
    run_dir: str, cli: Any, caplog: Any
) -> None:
    kernel = HotKernel(run_dir)  # no apply() yet
    try:
        done = cli(run_dir, "status")
        assert done.returncode == 0, done.stderr
        # (a run with history says the same: its new kernel has trained no step yet)
        said = f"[not started (its kernel is open in pid {os.getpid()}: no step yet)]"
        assert said in done.stdout.splitlines()[0], done.stdout
        assert "no run directory" not in done.stdout + done.stderr
        with caplog.at_level(logging.WARNING, logger="hotcb"):
            kernel.close()  # before a step: the run's end was gone, and its exit read `crashed`
        assert not caplog.records, caplog.text  # (a heartbeat of step None: TypeError)
        assert "[closed before its first step]" in cli(run_dir, "status").stdout.splitlines()[0]
        again = HotKernel(run_dir)
        again.apply({"step": 0})
        again.close()  # finished at step 0, then another kernel that trains no step
        HotKernel(run_dir).close()
        said = "[closed before its first step (the life before it finished at step 0)]"
        assert said in cli(run_dir, "status").stdout.splitlines()[0]
    finally:
        kernel.close()


def test_status_names_a_choice_knobs_values_and_a_ramp_of_one_is_refused_up_front(
    run_dir: str, cli: Any
) -> None:
    """`hotcb status` did not list what a choice knob takes, and `hotcb set mode=b --ramp 10`
    exited 0, to be refused by the run in the ledger."""
    from hotcb import HotKernel, MutableState
    from hotcb.actuators import ActuatorType, attr_actuator

    class Knobs:
        mode = "a"
        flag = False

    k = Knobs()
    kernel = HotKernel(run_dir, mutable_state=MutableState([
        attr_actuator(k, "mode", ActuatorType.CHOICE, choices=("a", "b")),
        attr_actuator(k, "flag", ActuatorType.BOOL),
    ]))  # fmt: skip
    kernel.apply({"step": 0})
    kernel.flush()
    (line,) = [ln for ln in cli(run_dir, "status").stdout.splitlines() if "mode" in ln]
    assert line.rstrip().endswith("one of a | b"), line
    for key in ("mode=b", "flag=true"):
        done = cli(run_dir, "custom", "set_params", key, "--ramp", "10")
        assert done.returncode == 2, done.stdout
        assert "transition needs a numeric actuator" in done.stderr
    kernel.close()


def test_odd_values_are_one_line_usage_errors(published: str, tmp_path: Any, cli: Any) -> None:
    """What printed a traceback or was taken as something else: a 400-digit int (an
    OverflowError), `--ramp 0` (a plain set), `--timeout -1` (0.1 s), a file given as the run
    (`[Errno 20] Not a directory`), `serve --log-level bogus` (uvicorn's KeyError)."""
    commands = os.path.join(published, "hotcb.commands.jsonl")
    before = os.path.getsize(commands)
    for args, said in (
        (("set", "aux=" + "9" * 400), "aux=99999999999999999999… is not finite"),
        (("set", "aux=0.5", "--ramp", "0"), "transition.steps must be an integer >= 1, got 0"),
        (("set", "aux=0.5", "--wait", "--timeout", "-1"), "must be a number of seconds > 0"),
    ):
        done = cli(published, *args)
        assert done.returncode == 2 and said in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert os.path.getsize(commands) == before
    afile = tmp_path / "afile"
    afile.write_text("not a run")
    for args in (("set", "lr=1e-3"), ("status",), ("stop",)):
        done = cli(str(afile), *args)
        assert done.returncode == 2 and "is a file, not a run directory" in done.stderr, done
    done = cli(published, "serve", "--log-level", "bogus")
    assert done.returncode == 2 and "invalid choice: 'bogus'" in done.stderr
    for args, said in (
        (("--port", "99999"), "--port: less than or equal to 65535, got 99999"),
        (("--max-body-bytes", "-1"), "--max-body-bytes: greater than or equal"),
    ):
        done = cli(published, "serve", *args)  # pydantic's four lines and a link before
        assert done.returncode == 2 and said in done.stderr and done.stderr.count("\n") == 1


def test_a_mistyped_command_names_the_close_one(cli: Any) -> None:
    """`hotcb sett` listed all 28 commands and left the user to spot `set` (an actuator's typo
    got "did you mean 'lr'")."""
    done = cli(None, "sett")
    assert done.returncode == 2
    assert "invalid choice: 'sett': did you mean 'set'?" in done.stderr, done.stderr
    done = cli(None, "tune", "enabel")
    assert "did you mean 'enable'?" in done.stderr, done.stderr
    done = cli(None, "zzz")  # nothing close: the whole list, as before
    assert "did you mean" not in done.stderr and "choose from" in done.stderr
