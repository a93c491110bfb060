"""``hotcb launch`` refusing what it cannot run, before the training starts and without
leaving a run directory behind; the helpers (autopilot, notifier) that fail beside the
training, said whenever they fail; and the helpers' secrets, kept out of the training's
environment. Every launch is a real ``hotcb launch`` subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

#: This environment without HOTCB_DIR (a developer's shell may set it).
SUBPROCESS_ENV = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}

#: A training that says it started: a refused launch must never run it.
STARTED = [sys.executable, "-c", "open('training-started', 'w').close()"]


def _launch(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``hotcb launch ARGS`` in ``tmp_path`` (a new ``./runs/<time>`` there, without --dir)."""
    return subprocess.run(
        [sys.executable, "-m", "hotcb", "launch", *args], cwd=tmp_path, env=env or SUBPROCESS_ENV,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _refused(done: subprocess.CompletedProcess[str], tmp_path: Path) -> str:
    """Exit code 2, the training never started, no run directory made; the stderr."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert not (tmp_path / "training-started").exists(), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists(), sorted(os.listdir(tmp_path / "runs"))
    return done.stderr


@pytest.mark.parametrize(
    ("config", "flags", "said"),
    [
        ("api_key: sk-x\ntimeout_sec: 0\n", [],
         ["line 1: api_key: a key never goes in a file", "line 2: timeout_sec: must be >= 0.001"]),
        (None, [], ["cannot read --ai-config", "No such file or directory"]),
        ("model: m\n", ["--ai-base-url", "ftp://x"],
         ["base_url: expected an http:// or https:// URL, got 'ftp://x'"]),
    ],
    ids=["bad-file", "missing-file", "bad-base-url"],
)  # fmt: skip
def test_bad_ai_settings_are_refused_before_the_training_starts(
    tmp_path: Path, config: str | None, flags: list[str], said: list[str]
) -> None:
    """The autopilot checked them only once it ran beside a training already started (exit 2,
    'the training goes on'), and a short training ended before it said why."""
    if config is not None:
        (tmp_path / "ai.yaml").write_text(config)
    done = _launch(tmp_path, "--autopilot", "ai_auto", "--ai-config", "ai.yaml", *flags, "--",
                   *STARTED)  # fmt: skip
    err = _refused(done, tmp_path)
    for text in said:
        assert text in err, err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--autopilot", "suggest", "--rules", "rules.yaml"], "rules.yaml"),
        (["--notify", "notify.yaml"], "notify.yaml"),
        (["--tune-objective", "val_loss"], "--tune-objective without --tune MODE"),
        (["--serve", "--host", "192.0.2.1", "--port", "0"], "the dashboard did not start"),
    ],
    ids=["bad-rules", "bad-notify", "tune-flag-without-tune", "dashboard-cannot-start"],
)
def test_a_refused_launch_leaves_no_run_directory(
    tmp_path: Path, args: list[str], said: str
) -> None:
    """A refused launch made ./runs/<time> (and the dashboard's, hotcb.run.json in it) that
    then showed as a run 'not started'. 192.0.2.1 is an address of no machine here: the
    dashboard cannot listen on it."""
    (tmp_path / "rules.yaml").write_text("rules:\n  - id: x\n    when: {detector: nope}\n")
    (tmp_path / "notify.yaml").write_text("alerts: 3\n")
    err = _refused(_launch(tmp_path, *args, "--", *STARTED), tmp_path)
    assert said in err, err


def test_a_dashboard_that_cannot_start_leaves_a_given_directory_as_it_was(tmp_path: Path) -> None:
    """--dir RUN: a run directory it had to make is removed (with the folders above it that it
    made), and an existing one gets no launch record (the previous run's end stays), nor the
    tuner's command (it would wait there for the next run)."""
    args = ["--serve", "--host", "192.0.2.1", "--port", "0", "--tune", "active"]
    _refused(_launch(tmp_path, "--dir", "new/a/run", *args, "--", *STARTED), tmp_path)
    assert not (tmp_path / "new").exists()
    run = tmp_path / "old"
    run.mkdir()
    (run / "hotcb.run.json").write_text('{"ended": {"reason": "finished"}}')
    _refused(_launch(tmp_path, "--dir", "old", *args, "--", *STARTED), tmp_path)
    assert sorted(os.listdir(run)) == ["hotcb.run.json"]
    assert (run / "hotcb.run.json").read_text() == '{"ended": {"reason": "finished"}}'


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--rules", "rules.yaml"], "--rules without --autopilot MODE"),
        (["--key-metric", "acc", "--direction", "maximize"],
         "--key-metric, --direction without --autopilot MODE"),
        (["--ai-model", "m"], "--ai-model without --autopilot MODE"),
        (["--autopilot", "suggest", "--ai-config", "ai.yaml"],
         "--ai-config with --autopilot suggest: only the LLM autopilot reads it "
         "(--autopilot ai_suggest or ai_auto)"),
    ],
    ids=["rules", "key-metric", "ai-flag", "ai-flag-rule-mode"],
)  # fmt: skip
def test_autopilot_flags_without_the_autopilot_are_a_usage_error(
    tmp_path: Path, args: list[str], said: str
) -> None:
    """They were silently ignored, where --tune-* without --tune is refused."""
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    (tmp_path / "ai.yaml").write_text("model: m\n")
    err = _refused(_launch(tmp_path, *args, "--", *STARTED), tmp_path)
    assert said in err, err


# A stand-in for the helpers (put first on PYTHONPATH): `hotcb autopilot` and `hotcb notify`
# started by hotcb launch say they are up, then fail as hotcb launch stops them (SIGTERM), or
# at once ("at-once"). The launcher, the training and any other Python run as usual.
FAILING_HELPERS = """
import os, signal, sys

NAME = next((n for n in ("autopilot", "notify") if n in sys.argv), None)
if NAME is not None and "launch" not in sys.argv:

    def fail(*_):  # as the CLI says an error: one write (the helpers run unbuffered)
        sys.stderr.write(f"hotcb: error: the {NAME} broke\\n")
        sys.stderr.flush()
        os._exit(2)

    signal.signal(signal.SIGTERM, fail)
    if os.environ.get("HOTCB_NOTIFY_READY"):  # hotcb launch waits for it before SIGTERM
        open(os.environ["HOTCB_NOTIFY_READY"], "w").close()
    open(os.path.join(os.environ["HELPERS_UP"], NAME), "w").close()
    if os.environ["HELPERS_FAIL"] == "at-once":
        fail()
    while True:
        signal.pause()
"""

# The training: ends once both helpers are up (before the autopilot could fail on its own).
WAITS_FOR_THE_HELPERS = """
import os, sys, time
up = os.environ["HELPERS_UP"]
deadline = time.monotonic() + 60
while sorted(os.listdir(up)) != ["autopilot", "notify"]:
    if time.monotonic() > deadline:
        sys.exit(f"the helpers did not start: {os.listdir(up)}")
    time.sleep(0.02)
"""


@pytest.mark.parametrize("when", ["on-stop", "at-once"])
def test_a_helper_that_fails_is_said_even_when_the_training_ends_first(
    tmp_path: Path, when: str
) -> None:
    """An autopilot that failed as the training ended, and a notifier that failed at any time,
    were never mentioned: only an autopilot failing while the training still ran was."""
    site, up = tmp_path / "site", tmp_path / "up"
    site.mkdir()
    up.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(FAILING_HELPERS))
    path = os.pathsep.join(p for p in (str(site), SUBPROCESS_ENV.get("PYTHONPATH")) if p)
    env: dict[str, Any] = {**SUBPROCESS_ENV, "PYTHONPATH": path, "HELPERS_UP": str(up),
                           "HELPERS_FAIL": when}  # fmt: skip
    done = _launch(tmp_path, "--dir", "run", "--autopilot", "suggest", "--notify-webhook",
                   "http://127.0.0.1:9/hook", "--", sys.executable, "-c",
                   textwrap.dedent(WAITS_FOR_THE_HELPERS), env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    for name, helper in (("autopilot", "autopilot"), ("notify", "notifier")):
        assert f"hotcb: error: the {name} broke" in lines, done.stderr
        said = [ln for ln in lines if ln.startswith(f"hotcb launch: the {helper} exited (2)")]
        assert len(said) == 1, done.stderr  # once, whichever thread saw it first
    # the last line does not call them stopped: they had failed
    assert (
        lines[-1] == "hotcb launch: training exited with 0; autopilot and notifications "
        "had failed (said above)"
    ), done.stderr


# Stand-ins for the helpers (put first on PYTHONPATH): `hotcb autopilot` and `hotcb notify`
# started by hotcb launch write down which of the secrets they see, then wait for the SIGTERM
# that hotcb launch stops them with.
RECORDING_HELPERS = """
import json, os, signal, sys

NAME = next((n for n in ("autopilot", "notify") if n in sys.argv), None)
if NAME is not None and "launch" not in sys.argv:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if os.environ.get("HOTCB_NOTIFY_READY"):  # hotcb launch waits for it before SIGTERM
        open(os.environ["HOTCB_NOTIFY_READY"], "w").close()
    seen = {k: os.environ.get(k) for k in os.environ["SECRETS"].split(",")}
    path = os.path.join(os.environ["HELPERS_UP"], NAME)
    with open(path + ".tmp", "w") as f:
        json.dump(seen, f)
    os.rename(path + ".tmp", path)
    while True:
        signal.pause()
"""

# The training: once both helpers are up, writes down which of the secrets it sees.
RECORDS_ITS_SECRETS = (
    WAITS_FOR_THE_HELPERS
    + """
import json
seen = {k: os.environ.get(k) for k in os.environ["SECRETS"].split(",")}
with open(os.path.join(up, "..", "training.json"), "w") as f:
    json.dump(seen, f)
"""
)


def test_the_helpers_secrets_stay_out_of_the_training(tmp_path: Path) -> None:
    """`hotcb launch --autopilot ai_* --notify FILE` handed the LLM key ($HOTCB_AI_KEY) and
    the SMTP passwords ($HOTCB_SMTP_PASSWORD, a notify file's `password_env`) to the training
    too: its code, its logs, anything it imports could read them. The autopilot and the
    notifier keep them; the training gets the rest of the environment."""
    from hotcb._launch import SECRET_ENV
    from hotcb.autopilot.ai import KEY_ENV
    from hotcb.notify._deliveries import SMTP_PASSWORD_ENV

    # the names the helpers read, and the dashboard's token
    assert set(SECRET_ENV) == {KEY_ENV, SMTP_PASSWORD_ENV, "HOTCB_TOKEN"}
    site, up = tmp_path / "site", tmp_path / "up"
    site.mkdir()
    up.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(RECORDING_HELPERS))
    (tmp_path / "notify.yaml").write_text(
        "deliveries:\n  - {type: email, host: 127.0.0.1, port: 9, from: a@b.c, to: [me@x.y], "
        "starttls: true, user: u, password_env: MY_SMTP_PW}\n"
    )
    secrets = {"HOTCB_AI_KEY": "sk-hotcb-test-key-1234", "HOTCB_SMTP_PASSWORD": "smtp-pw-5678",
               "MY_SMTP_PW": "file-pw-9012", "HOTCB_TOKEN": "dashboard-token-3456",
               "NOT_A_SECRET": "kept"}  # fmt: skip
    path = os.pathsep.join(p for p in (str(site), SUBPROCESS_ENV.get("PYTHONPATH")) if p)
    env = {**SUBPROCESS_ENV, **secrets, "PYTHONPATH": path, "HELPERS_UP": str(up),
           "SECRETS": ",".join(secrets)}  # fmt: skip
    done = _launch(tmp_path, "--dir", "run", "--autopilot", "ai_suggest", "--ai-base-url",
                   "http://127.0.0.1:9/v1", "--ai-model", "m", "--notify", "notify.yaml", "--",
                   sys.executable, "-c", textwrap.dedent(RECORDS_ITS_SECRETS), env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    training = json.loads((tmp_path / "training.json").read_text())
    assert training == {"HOTCB_AI_KEY": None, "HOTCB_SMTP_PASSWORD": None, "MY_SMTP_PW": None,
                        "HOTCB_TOKEN": None, "NOT_A_SECRET": "kept"}  # fmt: skip
    for helper in ("autopilot", "notify"):
        assert json.loads((up / helper).read_text()) == secrets, helper


#: A training that runs until stopped (a kernel polling every step).
FOREVER = textwrap.dedent("""\
    import os, sys, time
    from hotcb import HotKernel
    k = HotKernel(os.environ["HOTCB_RUN_DIR"], poll_interval_sec=0.0)
    s = 0
    while not k.stop_requested:
        k.apply({"step": s, "metrics": {"loss": 1.0}})
        s += 1
        time.sleep(0.02)
    k.close()
""")


@pytest.mark.slow
def test_a_launch_into_a_run_that_still_trains_is_refused(tmp_path: Path) -> None:
    """A second `hotcb launch --dir RUN` while RUN's first launch trains: it was accepted
    silently, took the first trainer's pid out of hotcb.run.json (so no kernel warned of the
    other), mixed two trainers' metrics, and its end marked the run stopped while the first
    still trained."""
    from hotcb.testing import wait_for

    (tmp_path / "train.py").write_text(FOREVER)
    first = subprocess.Popen(
        [sys.executable, "-m", "hotcb", "launch", "--dir", "run", "--", sys.executable,
         "train.py"], cwd=tmp_path, env=SUBPROCESS_ENV, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run = tmp_path / "run"
    try:
        wait_for(lambda: (run / "hotcb.metrics.jsonl").exists() or first.poll() is not None,
                 120, what="the first launch's training")  # fmt: skip
        assert first.poll() is None
        meta_before = (run / "hotcb.run.json").read_text()
        second = _launch(tmp_path, "--dir", "run", "--", *STARTED)
        assert second.returncode == 2, second.stderr
        assert f"{run} is in use: its trainer (pid " in second.stderr, second.stderr
        assert f"'hotcb --dir {run} stop --wait'" in second.stderr
        assert not (tmp_path / "training-started").exists()
        assert (run / "hotcb.run.json").read_text() == meta_before
        stop = subprocess.run([sys.executable, "-m", "hotcb", "--dir", "run", "stop", "--wait"],
                              cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert stop.returncode == 0, stop.stderr
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    # over: a new launch into it is fine again
    again = _launch(tmp_path, "--dir", "run", "--", *STARTED)
    assert again.returncode == 0, again.stderr


@pytest.mark.slow
def test_a_python_launch_into_a_run_that_still_trains_is_refused(tmp_path: Path) -> None:
    """`hotcb.launch(..., run_dir=X)` run again in a notebook while the first still trains:
    two trainers ran in one directory (the CLI refused it; the Python API did not)."""
    from hotcb import launch
    from hotcb._launch import LaunchError
    from hotcb.testing import wait_for

    script = tmp_path / "train.py"
    script.write_text(FOREVER)
    run = tmp_path / "run"
    first = launch([sys.executable, os.fspath(script)], run_dir=os.fspath(run), serve=False)
    try:
        wait_for(lambda: (run / "hotcb.metrics.jsonl").exists() or not first.running, 120,
                 what="the first launch's training")  # fmt: skip
        meta_before = (run / "hotcb.run.json").read_text()
        with pytest.raises(LaunchError, match="is in use: a launch of this process"):
            launch([sys.executable, "-c", "raise SystemExit(3)"], run_dir=os.fspath(run),
                   serve=False)  # fmt: skip
        assert (run / "hotcb.run.json").read_text() == meta_before
        assert first.running
        first.stop()
        assert first.wait(timeout=120) == 0
    finally:
        if first.running:
            first.kill()
    again = launch([sys.executable, "-c", "pass"], run_dir=os.fspath(run), serve=False)
    assert again.wait(timeout=120) == 0


def test_a_helper_a_signal_ended_is_said_killed() -> None:
    """ "the autopilot exited (-9)" read as an exit code; a signal's end is said as one."""
    from hotcb._launch import _how_it_exited

    assert _how_it_exited(-9) == "was killed by SIGKILL (-9)"
    assert _how_it_exited(2) == "exited (2)"
