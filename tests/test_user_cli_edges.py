"""What a new user types at the ``hotcb`` command (real subprocesses) and what it answers:
edge inputs, ended runs, and messages that must say what happened."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

from hotcb.testing import StepDriver

SUBPROCESS_ENV = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}


def _hotcb(*args: str, cwd: str | None = None, timeout: float = 120) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "hotcb", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=SUBPROCESS_ENV,
        cwd=cwd,
    )


def test_status_n_0_counts_no_command_as_unread_once_the_run_read_them(
    run_dir: str, cli: Any
) -> None:
    with StepDriver(run_dir, weights={"aux": 0.0}) as drv:
        drv.steps()
        assert cli(run_dir, "set", "aux=0.5").returncode == 0
        drv.steps()
        assert drv.weights["aux"] == 0.5
        st = json.loads(cli(run_dir, "status", "--json", "-n", "0").stdout)
        assert st["unread_command_bytes"] == 0 and st["ledger"] == []
        text = cli(run_dir, "status", "-n", "0").stdout
        assert "not yet read" not in text and "(empty)" not in text  # the ledger is not empty


def test_a_negative_or_non_numeric_n_is_a_one_line_error(run_dir: str, cli: Any) -> None:
    assert cli(run_dir, "init").returncode == 0
    for argv in (("log", "-n", "-1"), ("status", "-n", "-1"), ("status", "-n", "x")):
        res = cli(run_dir, *argv)
        assert res.returncode == 2, argv
        assert res.stderr.count("\n") == 1 and "-n" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and "maxlen" not in res.stderr


def test_an_unknown_flag_is_refused_by_the_command_it_was_given_to(run_dir: str, cli: Any) -> None:
    """`autopilot reject A1 --wait` said `hotcb: error: ... (see 'hotcb --help')`, which lists
    commands, not the flags of the one that refused it."""
    done = cli(run_dir, "autopilot", "reject", "A1", "--wait")
    assert done.returncode == 2
    assert done.stderr == (
        "hotcb autopilot reject: error: unrecognized arguments: --wait "
        "(see 'hotcb autopilot reject --help')\n"
    )


def test_a_command_to_a_finished_run_says_it_waits_for_the_next_run_without_wait(
    run_dir: str, cli: Any
) -> None:
    with StepDriver(run_dir, weights={"aux": 0.0}) as drv:
        drv.steps(3)
    res = cli(run_dir, "pause")  # no --wait: it would pause the next run at its first step
    assert res.returncode == 0 and len(res.stdout.split()) == 1  # the command id, as before
    assert "finished at step 2" in res.stderr and "waits in the commands file" in res.stderr


def test_cb_list_does_not_call_a_refused_command_an_error_raised_0_times(
    run_dir: str, cli: Any
) -> None:
    with StepDriver(run_dir, weights={"aux": 0.0}) as drv:
        drv.client.cb_load(
            "hb", path="hotcb.modules.cb.callbacks", symbol="HeartbeatCallback", init={}
        )
        drv.steps()
        assert cli(run_dir, "cb", "set_params", "hb", "nosuch=1").returncode == 0
        drv.steps()
        text = cli(run_dir, "cb", "list").stdout
        assert "hb" in text and "nosuch" in text
        assert "0 errors" not in text and "last problem:" in text


def test_launch_refuses_a_missing_resume_checkpoint_before_training(
    tmp_path: Any, cli: Any
) -> None:
    marker = tmp_path / "trained"
    res = cli(
        os.fspath(tmp_path / "run"),
        "launch",
        "--resume-from",
        os.fspath(tmp_path / "nope.pt"),
        "--",
        sys.executable,
        "-c",
        f"open({os.fspath(marker)!r}, 'w').close()",
    )
    assert res.returncode == 2 and "--resume-from: no checkpoint at" in res.stderr
    assert res.stderr.count("\n") == 1 and not marker.exists()


def test_launch_refuses_a_bad_rules_file_before_training(tmp_path: Any, cli: Any) -> None:
    marker = tmp_path / "trained"
    train = ["--", sys.executable, "-c", f"open({os.fspath(marker)!r}, 'w').close()"]
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules: []\n")
    run = os.fspath(tmp_path / "run")
    for rules, says in ((bad, "expected a non-empty list"), (tmp_path / "no.yaml", "no rules")):
        res = cli(run, "launch", "--autopilot", "suggest", "--rules", os.fspath(rules), *train)
        assert res.returncode == 2 and says in res.stderr, res.stderr
        assert not marker.exists()


def test_launch_names_only_the_helpers_it_started(tmp_path: Any, cli: Any) -> None:
    res = cli(
        os.fspath(tmp_path / "run"), "launch", "--", sys.executable, "-c", "raise SystemExit(3)"
    )
    assert res.returncode == 3
    last = res.stderr.strip().splitlines()[-1]
    assert last == "hotcb launch: training exited with 3", last


def test_autopilot_on_an_ended_run_says_why_it_leaves(run_dir: str, cli: Any) -> None:
    with StepDriver(run_dir, weights={"aux": 0.0}) as drv:
        drv.steps(3)
    res = cli(run_dir, "autopilot", "--mode", "suggest", "--interval", "0.1")
    assert res.returncode == 0, res.stderr
    assert "finished at step 2; done" in res.stdout


def test_autopilot_rules_check_of_a_missing_file_is_one_line(tmp_path: Any) -> None:
    res = _hotcb("autopilot", "rules", "--check", "nope.yaml", cwd=os.fspath(tmp_path))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "--check: no rules file at" in res.stderr and "Errno" not in res.stderr


def test_init_on_a_file_and_export_to_a_missing_folder_are_one_line_errors(
    tmp_path: Any, cli: Any
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    res = cli(os.fspath(afile), "init")
    assert res.returncode == 2 and "exists and is not a directory" in res.stderr, res.stderr
    run_dir = os.fspath(tmp_path / "run")
    with StepDriver(run_dir, weights={"aux": 0.0}) as drv:
        drv.client.loss(aux=0.5)
        drv.steps()
    out = os.fspath(tmp_path / "nope" / "fix.jsonl")
    res = cli(run_dir, "recipe", "export", "--out", out)
    assert res.returncode == 2 and "--out: no folder" in res.stderr, res.stderr
    assert ".tmp." not in res.stderr and "Errno" not in res.stderr
    recipe = os.fspath(tmp_path / "fix.jsonl")
    assert cli(run_dir, "recipe", "export", "--out", recipe).returncode == 0
    res = cli(run_dir, "recipe", "patch-template", "--recipe", recipe, "--out", out)
    assert res.returncode == 2 and "--out: no folder" in res.stderr, res.stderr
    res = cli(run_dir, "tune", "export", "--out", out)
    assert res.returncode == 2 and "--out: no folder" in res.stderr, res.stderr
    assert ".tmp." not in res.stderr and "Errno" not in res.stderr


def test_init_through_a_symlink_to_a_run_not_made_yet_makes_its_target(
    tmp_path: Any, cli: Any
) -> None:
    """``runs/latest -> exp3`` before exp3 exists: init failed with a raw ``[Errno 17]``, and
    ``set`` then said to run init."""
    (tmp_path / "latest").symlink_to("exp3")
    link = os.fspath(tmp_path / "latest")
    res = cli(link, "init")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "exp3" / "hotcb.commands.jsonl").is_file()
    assert cli(link, "loss", "set_params", "aux=0.5").returncode == 0
    with StepDriver(os.fspath(tmp_path / "exp3"), weights={"aux": 0.0}) as drv:
        drv.steps()
        assert drv.weights["aux"] == 0.5


def test_init_through_a_loop_of_links_says_so_in_one_line(tmp_path: Any, cli: Any) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    res = cli(os.fspath(tmp_path / "a"), "init")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "a loop of links?" in res.stderr and "Errno" not in res.stderr


def test_a_command_to_a_live_run_whose_loop_stopped_polling_says_it_waits(
    run_dir: str, cli: Any
) -> None:
    """A notebook cell interrupted with Ctrl-C (no close): the trainer's process lives on and
    its loop reaches no safe point. `hotcb stop` was accepted without a word, and stopped the
    cell run next at its first step; the CLI now says the command waits for that safe point."""
    import time

    from hotcb import HotKernel, jsonl
    from hotcb.runfiles import RunPaths

    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    kernel.apply({"step": 1, "metrics": {"loss": 1.0}})  # (this process: the live trainer)
    fresh = cli(run_dir, "stop")
    assert fresh.returncode == 0 and "safe point" not in fresh.stderr, fresh.stderr
    beat = RunPaths(run_dir).heartbeat
    # the loop's last beat a minute ago (what a minute without apply() leaves)
    jsonl.write_json_atomic(beat, {**jsonl.read_json(beat), "wall_time": time.time() - 60})
    quiet = cli(run_dir, "set", "lr=0.1")
    assert quiet.returncode == 0
    assert re.search(r"has reached no safe point for 6\ds", quiet.stderr), quiet.stderr
    assert "applies at its next safe point" in quiet.stderr
    kernel.close()


def test_the_llm_autopilot_without_a_key_for_a_hosted_api_says_so_at_start(run_dir: str) -> None:
    """It printed "asking gpt-4.1-mini at https://api.openai.com/v1" and nothing about the
    missing HOTCB_AI_KEY: the first call failed, minutes later. A local server needs none."""
    from hotcb import HotKernel

    kernel = HotKernel(run_dir)
    kernel.apply({"step": 1, "metrics": {"loss": 1.0}})
    kernel.close()  # an ended run: one round, no call
    env = {k: v for k, v in os.environ.items() if k not in ("HOTCB_AI_KEY", "HOTCB_DIR")}

    def pilot(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "hotcb", "--dir", run_dir, "autopilot", "--mode",
                "ai_suggest", "--ai-model", "m", "--once", *extra]  # fmt: skip
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

    hosted = pilot()
    assert hosted.returncode == 0, hosted.stderr
    assert "HOTCB_AI_KEY is not set, and api.openai.com is not on this machine" in hosted.stderr
    local = pilot("--ai-base-url", "http://127.0.0.1:9/v1")
    assert local.returncode == 0 and "HOTCB_AI_KEY" not in local.stderr, local.stderr


def test_the_autopilot_says_when_its_key_metric_is_not_logged(run_dir: str, cli: Any) -> None:
    """The README's autopilot on examples/bare_loop.py, which logs no val_loss: it printed its
    start line and then nothing, its plateau rule waiting for val_loss for good (only
    `autopilot status` said why)."""
    from hotcb import HotKernel

    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    for step in range(1, 260):
        kernel.apply({"step": step, "metrics": {"loss": 1.0 / step, "acc": 0.5}})
    done = cli(run_dir, "autopilot", "--mode", "suggest", "--once")
    kernel.close()
    assert done.returncode == 0, done.stderr
    assert "val_loss has not been logged in 258 steps (the run logs acc, loss" in done.stdout
    assert "--key-metric NAME picks another" in done.stdout
    early = os.path.join(run_dir, "early")
    kernel = HotKernel(early, poll_interval_sec=0.0)
    for step in range(1, 50):  # too soon to say: a validation may come at an epoch's end
        kernel.apply({"step": step, "metrics": {"loss": 1.0}})
    done = cli(early, "autopilot", "--mode", "suggest", "--once")
    kernel.close()
    assert "has not been logged" not in done.stdout
