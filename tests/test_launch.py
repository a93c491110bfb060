"""``hotcb launch`` and ``hotcb.launch()``: real training processes, a real dashboard, real
signals. Every wait is on a condition (a file, a line, a process), with generous deadlines."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import hotcb
from hotcb import LaunchError, jsonl
from hotcb._launch import exit_status
from hotcb.errors import RecipeError
from hotcb.ledger import checkpoint_path
from hotcb.testing import read_ledger, wait_for

#: The launch's tag in its training's environment (hotcb._launch.LAUNCH_ENV).
LAUNCH_ENV = "HOTCB_LAUNCH_ID"
#: This environment without HOTCB_DIR (a developer's shell may set it).
SUBPROCESS_ENV = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}

psutil = pytest.importorskip("psutil")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
BARE_LOOP = os.fspath(ROOT / "examples" / "bare_loop.py")
DDP_BARE = os.fspath(ROOT / "examples" / "ddp_bare.py")


class LaunchProcess:
    """``hotcb launch ...`` in a subprocess, its stdout and stderr read as they come."""

    def __init__(self, args: list[str], cwd: str | None = None, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hotcb", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env or SUBPROCESS_ENV,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def said(self, prefix: str) -> str | None:
        """The first stderr line starting with ``hotcb launch: <prefix>``, minus that."""
        head = f"hotcb launch: {prefix}"
        return next((line[len(head) :] for line in list(self.err) if line.startswith(head)), None)

    def wait_said(self, prefix: str, timeout: float = 120) -> str:
        def seen() -> str | None:
            if self.proc.poll() is not None and self.said(prefix) is None:
                raise AssertionError(f"hotcb launch exited ({self.proc.returncode}):\n{self.log()}")
            return self.said(prefix)

        return str(wait_for(seen, timeout, what=f"'hotcb launch: {prefix}'"))

    def finish(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout)
        self._close(timeout)
        return code

    def _close(self, timeout: float) -> None:
        for t in self._readers:
            t.join(timeout)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def log(self) -> str:
        return "\n".join([*self.out[-40:], "--- stderr ---", *self.err[-60:]])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close(30)


@pytest.fixture
def launched() -> Any:
    started: list[LaunchProcess] = []

    def start(*args: str, cwd: str | None = None, env: dict[str, str] | None = None) -> Any:
        lp = LaunchProcess(list(args), cwd=cwd, env=env)
        started.append(lp)
        return lp

    yield start
    for lp in started:
        for child in _descendants(lp.proc.pid):
            child.kill()
        lp.kill()


def _descendants(pid: int) -> list[Any]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _last_step(run_dir: str | os.PathLike[str]) -> int:
    last = jsonl.read_last(os.path.join(os.fspath(run_dir), "hotcb.metrics.jsonl"), 1)
    return int(last[0]["step"]) if last else -1


def _get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as resp:
        return int(resp.status)


def _port_closed(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    with socket.socket() as s:
        try:
            s.connect((parts.hostname, parts.port))
        except ConnectionRefusedError:
            return True
    return False


def test_cli_launch_steered_served_and_interrupted(tmp_path: Path, launched: Any, cli: Any) -> None:
    """The training runs with HOTCB_RUN_DIR set, is steered from the CLI, the printed URL
    answers; SIGINT to hotcb launch ends the training, the dashboard and the autopilot (no
    process, no port left) and hotcb launch exits with the training's code (130)."""
    run = tmp_path / "run"
    lp = launched(
        "--dir", os.fspath(run), "launch", "--serve", "--port", "0",
        "--autopilot", "suggest", "--key-metric", "loss",
        "--", sys.executable, BARE_LOOP, "--steps", "1000000", "--step-delay", "0.01",
    )  # fmt: skip
    url = lp.wait_said("dashboard: ")
    assert "token=" in url and lp.said("run directory ") == os.fspath(run)
    wait_for(lambda: _last_step(run) >= 3, 120, what="the launched training's first steps")

    done = cli(os.fspath(run), "set", "lr=3e-3", "--wait", timeout=120)
    assert done.returncode == 0, done.stderr
    (entry,) = [e for e in read_ledger(run) if e.get("module") == "opt"]
    assert entry["decision"] == "applied" and entry["source"] == "cli"
    assert entry["changes"]["lr"]["new"] == pytest.approx(3e-3)

    assert _get(url) == 200
    wait_for(lambda: (run / "hotcb.autopilot.state.json").exists(), 120, what="autopilot round")
    trainer_pid = jsonl.read_json(run / "hotcb.run.json")["pid"]
    children = _descendants(lp.proc.pid)
    assert trainer_pid in {c.pid for c in children} and len(children) >= 3  # + serve, autopilot

    lp.proc.send_signal(signal.SIGINT)
    code = lp.finish()
    assert lp.said("SIGINT forwarded to the training") is not None, lp.log()
    # the training's own answer to SIGINT (KeyboardInterrupt: 130; a kernel that checkpoints
    # and stops on signals: 0) is hotcb launch's exit code
    meta = jsonl.read_json(run / "hotcb.run.json")
    assert code == exit_status(meta["launch"]["exit_code"]) and code in (0, 130), lp.log()
    assert lp.said(f"training exited with {code}") is not None
    assert all(_gone(c.pid) for c in children), [c for c in children if not _gone(c.pid)]
    assert _port_closed(url)
    assert meta["launch"]["autopilot"] == "suggest"


def test_cli_launch_default_run_dir_and_exit_code(tmp_path: Path, launched: Any) -> None:
    """Without --dir (and $HOTCB_DIR) the run goes to a new ./runs/<time>; with $HOTCB_DIR
    there. The child sees the absolute run directory; its exit code is hotcb launch's."""
    child = "import os, sys; print('RUN=' + os.environ['HOTCB_RUN_DIR']); sys.exit(3)"
    lp = launched("launch", "--", sys.executable, "-c", child, cwd=os.fspath(tmp_path))
    assert lp.finish() == 3, lp.log()
    (printed,) = [line[4:] for line in lp.out if line.startswith("RUN=")]
    assert Path(printed).parent == tmp_path / "runs" and Path(printed).is_dir()
    # the command line as printed can be pasted back into a shell
    said = str(lp.said("training (pid ")).split("): ", 1)[1]
    assert said == shlex.join([sys.executable, "-c", child]), lp.log()
    assert jsonl.read_json(Path(printed) / "hotcb.run.json")["launch"]["exit_code"] == 3

    env = {**SUBPROCESS_ENV, "HOTCB_DIR": os.fspath(tmp_path / "from_env")}
    lp = launched("launch", "--", sys.executable, "-c", child, cwd=os.fspath(tmp_path), env=env)
    assert lp.finish() == 3, lp.log()
    assert f"RUN={tmp_path / 'from_env'}" in lp.out


def test_the_recorded_command_keeps_no_secret(tmp_path: Path, launched: Any) -> None:
    """``hotcb.run.json`` (which the dashboard serves as the run's status) records the
    training command without the secrets on it: a flag named like one, an ``env``
    assignment, a URL's password."""
    run_dir = tmp_path / "run"
    secrets = ("hf_s3cr3tTOKEN", "sk-s3cr3tKEY", "pw0rdS3CRET")
    lp = launched("--dir", os.fspath(run_dir), "launch", "--", "env",
                  f"OPENAI_API_KEY={secrets[1]}", sys.executable, "-c", "pass", "--hf-token",
                  secrets[0], "--db", f"postgresql://me:{secrets[2]}@db/x", "--tokenizer", "t5",
                  cwd=os.fspath(tmp_path))  # fmt: skip
    assert lp.finish() == 0, lp.log()
    text = (run_dir / "hotcb.run.json").read_text()
    assert not [s for s in secrets if s in text], text
    # nor on what `hotcb launch` says (a CI log, a nohup file keeps it)
    said = str(lp.said("training (pid "))
    assert "--hf-token '***'" in said and not [s for s in secrets if s in lp.log()], said
    assert jsonl.read_json(run_dir / "hotcb.run.json")["launch"]["argv"] == [
        "env", "OPENAI_API_KEY=***", sys.executable, "-c", "pass", "--hf-token", "***",
        "--db", "postgresql://me:***@db/x", "--tokenizer", "t5",
    ]  # fmt: skip


def test_a_command_sent_before_the_trainer_builds_its_kernel_is_applied(
    tmp_path: Path, launched: Any, cli: Any
) -> None:
    """``hotcb launch`` writes hotcb.run.json before the trainer exists; a command sent in
    between (the README's ``run = hotcb.launch(...); run.set(lr=...)``) is new, not the
    commands of a lost ledger: the trainer applies it instead of refusing to start."""
    run = tmp_path / "run"
    trainer = textwrap.dedent(
        """
        import os, sys, time
        from hotcb import HotKernel, loss_actuators, mutable_state
        run = os.environ["HOTCB_RUN_DIR"]
        commands = os.path.join(run, "hotcb.commands.jsonl")
        deadline = time.monotonic() + 120
        while not (os.path.exists(commands) and os.path.getsize(commands)):  # the test's set
            if time.monotonic() > deadline:
                sys.exit("no command came")
            time.sleep(0.05)
        k = HotKernel(run, mutable_state=mutable_state(loss_actuators({"aux": 1.0})))
        for step in range(3):
            k.apply({"step": step, "metrics": {"loss": 1.0}})
        k.close()
        """
    )
    lp = launched("launch", "--dir", os.fspath(run), "--", sys.executable, "-c", trainer)
    wait_for(lambda: "launch" in (jsonl.read_json(run / "hotcb.run.json", None) or {}), 60,
             what="hotcb launch's record of the run")  # fmt: skip
    assert cli(os.fspath(run), "loss", "set_params", "aux=0.25").returncode == 0
    assert lp.finish() == 0, lp.log()
    applied = [e for e in read_ledger(run) if e.get("op") == "set_params"]
    assert [(e["decision"], e["params"]) for e in applied] == [("applied", {"aux": 0.25})]


def test_cli_launch_tune_turns_the_tuner_on_from_the_first_step(
    tmp_path: Path, launched: Any, cli: Any
) -> None:
    """``hotcb launch --tune active``: the tuner is on at the trainer's first step and judges
    trials; a recipe named relative to where launch runs is read; a broken one stops the
    launch before anything starts, every problem listed."""
    pytest.importorskip("optuna")
    (tmp_path / "space.yaml").write_text(
        "space:\n  - {key: lr, module: opt, mode: mult, low: 0.5, high: 2.0}\n"
    )
    run = tmp_path / "run"
    lp = launched("launch", "--dir", os.fspath(run), "--tune", "active", "--tune-objective",
                  "loss", "--tune-segment-steps", "20", "--tune-recipe", "space.yaml",
                  "--tune-restore", "state", "--tune-sync", "--",
                  sys.executable, BARE_LOOP, "--steps", "100000", "--step-delay", "0.002",
                  cwd=os.fspath(tmp_path))  # fmt: skip

    def judged() -> bool:  # Optuna opens its study and asks on its own thread: a deadline
        if lp.proc.poll() is not None:
            raise AssertionError(f"the training ended first:\n{lp.log()}")
        counts = hotcb.HotClient(run).tune_status().get("counts") or {}
        return counts.get("kept", 0) + counts.get("rolled_back", 0) > 0

    wait_for(judged, 240, what="a trial judged")
    assert cli(os.fspath(run), "stop").returncode == 0
    assert lp.finish(300) == 0, lp.log()
    assert lp.said("tuner (active) from the first step") is not None, lp.log()
    (enable,) = [e for e in read_ledger(run) if e.get("module") == "tune" and e["op"] == "enable"]
    assert enable["decision"] == "applied" and enable["source"] == "launch" and enable["step"] <= 1
    status = hotcb.HotClient(run).tune_status()
    assert status["objective_used"] == "loss" and status["settings"]["restore"] == "state"
    assert status["settings"]["sync"] is True  # --tune-sync
    assert status["counts"]["kept"] + status["counts"]["rolled_back"] > 0, status["counts"]
    assert {n for r in status["trials"] for n in r.get("sampled", {})} == {"opt.lr"}  # the recipe

    (tmp_path / "bad.yaml").write_text("direction: sideways\nspace: 3\n")
    done = cli(None, "launch", "--dir", os.fspath(tmp_path / "r2"), "--tune", "active",
               "--tune-recipe", "bad.yaml", "--", sys.executable, BARE_LOOP,
               cwd=os.fspath(tmp_path))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "line 1: direction" in done.stderr and "line 2: space" in done.stderr, done.stderr
    assert not (tmp_path / "r2").exists()  # nothing started, nothing sent
    done = cli(None, "launch", "--dir", os.fspath(tmp_path / "r3"), "--tune-objective",
               "val_acc", "--", sys.executable, BARE_LOOP, cwd=os.fspath(tmp_path))  # fmt: skip
    assert done.returncode == 2 and "--tune-objective without --tune MODE" in done.stderr


def test_a_training_that_ends_at_once_leaves_no_crash_dump(tmp_path: Path, launched: Any) -> None:
    """The autopilot and the dashboard are stopped while they may still be starting: they end
    quietly (SIGTERM), not with Python's crash dump or a traceback on the user's terminal."""
    lp = launched("launch", "--dir", os.fspath(tmp_path / "r"), "--serve", "--port", "0",
                  "--autopilot", "suggest", "--", sys.executable, "-c", "pass")  # fmt: skip
    assert lp.finish() == 0, lp.log()
    printed = "\n".join([*lp.out, *lp.err])
    assert "Traceback" not in printed and "Fatal Python error" not in printed, lp.log()
    assert lp.said("training exited with 0; dashboard and autopilot stopped") is not None


def test_the_testing_trainer_runs_under_launch_without_its_run_dir(
    tmp_path: Path, launched: Any
) -> None:
    """``python -m hotcb.testing.trainer`` defaulted ``--resume`` to what ``hotcb launch`` sets
    but required ``--run-dir``: under ``hotcb launch`` it stopped at once (exit 2)."""
    run = tmp_path / "r"
    lp = launched("--dir", os.fspath(run), "launch", "--", sys.executable, "-m",
                  "hotcb.testing.trainer", "--steps", "5")  # fmt: skip
    assert lp.finish() == 0, lp.log()
    lines = (run / "hotcb.metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines][-1] == 4


def test_cli_launch_forwards_signals(tmp_path: Path, launched: Any) -> None:
    """SIGTERM reaches the training (its handler's exit code comes back); a training that
    ignores Ctrl-C is killed by the third one (137), and the launcher says it sent SIGKILL;
    SIGTERM goes as SIGTERM."""
    on_term = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    lp = launched("--dir", os.fspath(tmp_path / "a"), "launch", "--", sys.executable, "-c", on_term)
    wait_for(lambda: "ready" in lp.out or lp.proc.poll() is not None, 120, what="child ready")
    lp.proc.send_signal(signal.SIGTERM)
    assert lp.finish() == 7, lp.log()

    deaf = on_term.replace("SIGTERM, lambda *a: sys.exit(7)", "SIGINT, signal.SIG_IGN")
    lp = launched("--dir", os.fspath(tmp_path / "b"), "launch", "--", sys.executable, "-c", deaf)
    wait_for(lambda: "ready" in lp.out or lp.proc.poll() is not None, 120, what="child ready")
    for n in (1, 2, 3):
        lp.proc.send_signal(signal.SIGINT)
        wait_for(
            lambda n=n: sum("SIGINT forwarded" in line for line in lp.err) >= n,
            60,
            what=f"SIGINT {n} forwarded",
        )
    assert lp.finish() == 128 + signal.SIGKILL, lp.log()
    said = [line for line in lp.err if "forwarded" in line]  # what really went out
    pid = str(lp.said("SIGINT forwarded to the training (pid ")).rstrip(")")
    assert [line.split(" (pid ")[0] for line in said] == [
        "hotcb launch: SIGINT forwarded to the training",
        "hotcb launch: SIGINT forwarded to the training",
        "hotcb launch: SIGINT forwarded as SIGKILL to the training",
    ] and said[2].endswith(f"(pid {pid}): the third in a row"), lp.log()

    # without a handler, SIGTERM ends a plain loop as SIGTERM does (143), not as Ctrl-C
    plain = "import time\nprint('ready', flush=True)\ntime.sleep(600)\n"
    lp = launched("--dir", os.fspath(tmp_path / "c"), "launch", "--", sys.executable, "-c", plain)
    wait_for(lambda: "ready" in lp.out or lp.proc.poll() is not None, 120, what="child ready")
    lp.proc.send_signal(signal.SIGTERM)
    assert lp.finish() == 128 + signal.SIGTERM, lp.log()
    assert lp.said("SIGTERM forwarded to the training") is not None
    assert "KeyboardInterrupt" not in "\n".join(lp.err), lp.log()


def test_cli_launch_usage_errors(tmp_path: Path, cli: Any) -> None:
    done = cli(None, "launch", cwd=os.fspath(tmp_path))
    assert done.returncode == 2 and "after --" in done.stderr
    done = cli(None, "launch", "--", "no-such-program-xyz", cwd=os.fspath(tmp_path))
    assert done.returncode == 2 and "no-such-program-xyz" in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing created for a launch that cannot start
    help_text = cli(None, "--help").stdout
    assert "launch" in help_text


# A training that starts a child in a session of its own (as torchrun starts its workers), so
# outside the training's process group; both ignore Ctrl-C. "clean-env": the child's
# environment is empty (no launch tag: only the launch's look at the training's descendants
# before it kills it finds it); "exit": the training exits at once, leaving the child behind.
DETACHING = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; "
         "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(600)"],
        env={} if "clean-env" in sys.argv else None,
        start_new_session=True,
        stdout=subprocess.DEVNULL,  # not holding hotcb launch's pipes open: a test that fails
        stderr=subprocess.DEVNULL,  # says so at once
    )
    print(f"child {child.pid} tag {os.environ.get('HOTCB_LAUNCH_ID')}", flush=True)
    if "exit" in sys.argv:
        sys.exit(0)
    time.sleep(600)
    """
)


@pytest.fixture
def strays() -> Any:
    """Pids a test expects gone: killed at the end whatever happened, so nothing leaks."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def _child_pid(lines: list[str]) -> int | None:
    found = [line.split()[1] for line in lines if line.startswith("child ")]
    return int(found[0]) if found else None


def _tagged(tag: str) -> list[Any]:
    """The live processes whose environment carries the launch tag ``tag``."""
    out = []
    for proc in psutil.process_iter():
        try:
            if tag in proc.environ().get(LAUNCH_ENV, "").split(",") and not _gone(proc.pid):
                out.append(proc)
        except psutil.Error:
            pass
    return out


def test_a_launch_ends_what_the_training_left_outside_its_group(
    tmp_path: Path, strays: list[int]
) -> None:
    """A process the training started in another session (out of its process group) is ended
    with the launch: when the training exits (it carries the launch's tag), and when kill()
    SIGKILLs the training (its descendants are taken before the kill, tag or not)."""
    run = hotcb.launch([sys.executable, "-c", DETACHING, "exit"], run_dir=tmp_path / "a",
                       serve=False)  # fmt: skip
    assert run.wait(60) == 0, run.output()
    pid = wait_for(lambda: _child_pid(run.output().splitlines()), 30, what="the child's pid")
    strays.append(pid)
    wait_for(lambda: _gone(pid), 20, what="the training's detached child gone")
    tag = run.output().split(" tag ")[1].split()[0]
    assert tag not in ("", "None") and tag not in os.environ.get(LAUNCH_ENV, "")
    assert not _tagged(tag)

    run = hotcb.launch([sys.executable, "-c", DETACHING, "clean-env"], run_dir=tmp_path / "b",
                       serve=False)  # fmt: skip
    pid = wait_for(lambda: _child_pid(run.output().splitlines()), 60, what="the child's pid")
    strays.append(pid)
    assert run.kill(signal.SIGINT, timeout=1) == -signal.SIGKILL  # it ignores SIGINT
    wait_for(lambda: _gone(pid), 20, what="the killed training's detached child gone")
    assert run.status()["state"] == "killed"


def test_cli_launch_ends_leftovers_when_the_training_is_killed(
    tmp_path: Path, launched: Any, strays: list[int]
) -> None:
    """hotcb launch ends the processes its training left outside its process group after a
    third Ctrl-C (SIGKILL) and after someone else SIGKILLed the training's group."""
    lp = launched("--dir", os.fspath(tmp_path / "a"), "launch", "--", sys.executable, "-c",
                  DETACHING, "clean-env")  # fmt: skip
    pid = wait_for(lambda: _child_pid(lp.out), 60, what="the child's pid")
    strays.append(pid)
    for n in (1, 2, 3):
        lp.proc.send_signal(signal.SIGINT)
        wait_for(lambda n=n: sum("forwarded" in line for line in lp.err) >= n, 60,
                 what=f"SIGINT {n} forwarded")  # fmt: skip
    assert lp.finish() == 128 + signal.SIGKILL, lp.log()
    wait_for(lambda: _gone(pid), 20, what="the detached child gone after the third Ctrl-C")

    lp = launched("--dir", os.fspath(tmp_path / "b"), "launch", "--", sys.executable, "-c",
                  DETACHING)  # fmt: skip
    pid = wait_for(lambda: _child_pid(lp.out), 60, what="the child's pid")
    strays.append(pid)
    trainer = int(lp.wait_said("training (pid ").split(")")[0])
    os.killpg(trainer, signal.SIGKILL)  # kill -9 -- -PGID, from outside
    assert lp.finish() == 128 + signal.SIGKILL, lp.log()
    wait_for(lambda: _gone(pid), 20, what="the detached child gone after kill -9 of the group")


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [os.fspath(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
def test_cli_launch_torchrun_two_ranks(tmp_path: Path, launched: Any, cli: Any) -> None:
    """torchrun with 2 CPU ranks (gloo) under hotcb launch: steered and stopped from the CLI;
    hotcb launch exits 0 and every process it started (workers included) is gone."""
    run = tmp_path / "run"
    lp = launched(
        "--dir", os.fspath(run), "launch", "--",
        *_torchrun(), "--standalone", "--nproc-per-node", "2",
        DDP_BARE, "--steps", "1000000", "--step-delay", "0.01",
    )  # fmt: skip
    wait_for(lambda: _last_step(run) >= 3, 240, what="the DDP ranks' first steps")
    children = _descendants(lp.proc.pid)
    assert len(children) >= 3  # torchrun and its two workers
    done = cli(os.fspath(run), "set", "lr=3e-3", "--wait", timeout=120)
    assert done.returncode == 0 and "applied" in done.stdout, done.stderr
    done = cli(os.fspath(run), "stop", "--wait", timeout=120)
    assert done.returncode == 0 and "applied" in done.stdout, done.stderr
    assert lp.finish(240) == 0, lp.log()
    assert all(_gone(c.pid) for c in children)
    ledger = read_ledger(run)
    assert {e["rank"] for e in ledger} == {0}
    assert [e["decision"] for e in ledger if e.get("module") in ("opt", "control")] == [
        "applied",
        "applied",
    ]


# A DDP trainer whose ranks ignore Ctrl-C (torchrun forwards it to them), examples/ddp_bare.py.
DEAF_DDP = textwrap.dedent(
    """
    import runpy, signal, sys
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


@pytest.mark.slow
def test_python_launch_kill_under_torchrun_leaves_no_worker(tmp_path: Path) -> None:
    """torchrun starts each worker in a session of its own, so SIGKILLing torchrun (kill()'s
    last resort, ranks that ignore SIGINT) used to orphan both ranks, still training. The
    launch ends them: no process carrying its tag is left."""
    (tmp_path / "deaf_ddp.py").write_text(DEAF_DDP)
    cmd = [*_torchrun(), "--standalone", "--nproc-per-node", "2",
           os.fspath(tmp_path / "deaf_ddp.py"), DDP_BARE]  # fmt: skip
    run = hotcb.launch(cmd, run_dir=tmp_path / "run", serve=False, steps=1_000_000,
                       step_delay=0.01)  # fmt: skip
    workers: list[Any] = []
    try:
        run.wait_step(3, timeout=120)
        assert run.pid is not None
        workers = [p for p in _descendants(run.pid) if "LOCAL_RANK" in p.environ()]
        assert len(workers) == 2, workers  # the two ranks, each in a session of its own
        assert all(os.getsid(w.pid) != os.getsid(run.pid) for w in workers)
        tag = psutil.Process(run.pid).environ().get(LAUNCH_ENV)
        assert run.kill(signal.SIGINT, timeout=5) == -signal.SIGKILL, run.output()
        wait_for(lambda: all(_gone(w.pid) for w in workers), 30, what="both ranks gone")
        assert tag and not _tagged(tag)  # nothing else of the launch either
        assert run.status()["state"] == "killed"
    finally:
        for w in workers:
            with contextlib.suppress(psutil.Error):
                w.kill()
        if run.running:
            run.kill(signal.SIGKILL)


@pytest.mark.slow
def test_cli_launch_ctrl_c_under_torchrun_is_an_interruption(
    tmp_path: Path, launched: Any, cli: Any
) -> None:
    """torchrun answers Ctrl-C with exit code 1: hotcb launch, which forwarded the SIGINT,
    exits 130 and records the signal it sent; the ranks (``checkpoint_on_signal``) saved a
    checkpoint at one step and stopped there, so the run reads "stopped at step N", not
    "crashed"; no process of the launch is left."""
    run = tmp_path / "run"
    lp = launched(
        "--dir", os.fspath(run), "launch", "--",
        *_torchrun(), "--standalone", "--nproc-per-node", "2",
        DDP_BARE, "--steps", "1000000", "--step-delay", "0.01",
    )  # fmt: skip
    wait_for(lambda: _last_step(run) >= 3, 120, what="the DDP ranks' first steps")
    trainer = int(lp.wait_said("training (pid ").split(")")[0])
    workers = [p for p in _descendants(trainer) if "LOCAL_RANK" in p.environ()]
    tag = psutil.Process(trainer).environ().get(LAUNCH_ENV)
    lp.proc.send_signal(signal.SIGINT)
    assert lp.finish(120) == 128 + signal.SIGINT, lp.log()
    launch = jsonl.read_json(run / "hotcb.run.json")["launch"]
    assert (launch["exit_code"], launch["signal_sent"]) == (1, "SIGINT"), launch
    assert lp.said("training exited with 1 after SIGINT: interrupted, exit code 130") == "", (
        lp.log()
    )
    done = cli(os.fspath(run), "status")
    stop = [e for e in read_ledger(os.fspath(run)) if e.get("source") == "signal"]
    assert [(e["op"], e["decision"]) for e in stop] == [("checkpoint", "applied"),
                                                        ("stop", "applied")], stop  # fmt: skip
    step = stop[-1]["step"]
    assert (run / f"checkpoint_{step}.pt").exists()
    assert f"[stopped at step {step}]" in done.stdout and "crashed" not in done.stdout, done.stdout
    assert len(workers) == 2 and all(_gone(w.pid) for w in workers)
    assert tag and not _tagged(tag)


def test_python_launch_script_steered_and_stopped(tmp_path: Path, cli: Any) -> None:
    """hotcb.launch("examples/bare_loop.py", ...): kwargs become its flags; set lr, read the
    metrics, stop it; wait() gives 0 and nothing is left running."""
    run = hotcb.launch(
        BARE_LOOP, run_dir=tmp_path / "run", steps=1_000_000, step_delay=0.01, seed=1
    )
    try:
        assert run.url is not None and _get(run.url) == 200
        assert "--step-delay" in run.argv and run.argv[0] == sys.executable
        run.wait_step(3, timeout=120)
        (cid,) = run.set(lr=3e-3)
        entry = run.applied(cid, timeout=120)
        assert entry["decision"] == "applied" and entry["source"] == "launch"
        run.wait_step(entry["step"] + 2, timeout=120)
        frame = run.metrics()
        rows = frame.to_dict("records") if hasattr(frame, "to_dict") else frame
        assert rows[-1]["lr"] == pytest.approx(3e-3, rel=1e-3) and "loss" in rows[-1]
        assert run.status()["state"] == "running" and run.status()["actuators"]["lr"] == 3e-3
        html = run._repr_html_()
        assert "running" in html and "open the dashboard" in html
        pids = [c.pid for c in _descendants(os.getpid())]
        assert run.pid in pids and len(pids) >= 2  # the training and the dashboard
        run.stop()
        assert run.wait(120) == 0
    finally:
        if run.running:
            run.kill(signal.SIGKILL)
    st = run.status()
    assert st["state"] == "stopped" and st["exit_code"] == 0
    assert _port_closed(run.url)
    assert all(_gone(p) for p in pids)
    ledger = run.ledger(as_frame=False)
    assert [(e["module"], e["decision"]) for e in ledger if e["module"] != "kernel"] == [
        ("opt", "applied"),
        ("control", "applied"),
    ]
    assert "stop requested" in run.output()


def _api(url: str, path: str) -> Any:
    """GET ``path`` of the dashboard at ``url`` (the printed one, with its token)."""
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["token"][0]
    base = urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="", query=""))
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_a_run_launched_again_from_its_checkpoint_runs_at_its_own_step(
    tmp_path: Path, cli: Any
) -> None:
    """The documented resume flow: Ctrl-C (a checkpoint and a stop), then a launch in the same
    directory from an earlier checkpoint. The new life read ``stopped`` (the previous life's
    ``control stop`` stayed in force: ``hotcb status``, the handle's ``stopping``, the
    dashboard) and the dashboard gave the previous life's last step, the largest."""
    run_dir = tmp_path / "run"
    first = hotcb.launch(BARE_LOOP, run_dir=run_dir, serve=False, steps=1_000_000,
                         step_delay=0.005)  # fmt: skip
    try:
        first.wait_step(20, timeout=120)
        early = first.applied(first.client.checkpoint(), timeout=120)
        first.wait_step(early["step"] + 150, timeout=120)
        first.kill(signal.SIGINT)  # checkpoint_on_signal: a checkpoint, then a stop
    finally:
        if first.running:
            first.kill(signal.SIGKILL)
    stops = [e for e in read_ledger(run_dir) if (e["module"], e["op"]) == ("control", "stop")]
    assert stops and stops[-1]["decision"] == "applied" and stops[-1]["source"] == "signal"
    reached = _last_step(run_dir)
    assert reached >= early["step"] + 150
    ckpt = checkpoint_path(early, run_dir)
    assert ckpt is not None and os.path.exists(ckpt)

    second = hotcb.launch(BARE_LOOP, run_dir=run_dir, resume_from=ckpt, port=0,
                          steps=1_000_000, step_delay=0.05)  # fmt: skip
    try:
        second.wait_step(early["step"] + 5, timeout=120)  # of this life, not the last one's
        st = second.status()
        assert (st["state"], st["detail"]) == ("running", "running"), st
        assert early["step"] < st["step"] < reached, st
        done = cli(os.fspath(run_dir), "status")
        assert done.stdout.splitlines()[0].endswith("[running]"), done.stdout
        assert second.url is not None
        rid = urllib.parse.parse_qs(urllib.parse.urlsplit(second.url).query).get("run", ["."])[0]

        def served() -> Any:
            got = _api(second.url or "", f"/api/runs/{rid}/status")
            return got if got["last_step"] is not None and got["state"] == "running" else None

        got = wait_for(served, 60, what="the dashboard's status of the new life")
        assert early["step"] < got["last_step"] < reached and got["paused"] is False, got
        second.stop()
        assert second.wait(120) == 0
    finally:
        if second.running:
            second.kill(signal.SIGKILL)
    assert second.status()["state"] == "stopped"


def test_a_launch_whose_script_fails_at_once_says_so(tmp_path: Path, cli: Any) -> None:
    """A flag the script does not take (``dir=`` for ``--run-dir``): argparse exits 2 before
    any kernel opens the run. The run said "not started" and the handle took commands that
    nothing would apply; a stop queued then would stop the next run in the directory."""
    run = hotcb.launch(BARE_LOOP, run_dir=tmp_path / "run", serve=False, dir="elsewhere")
    assert run.wait(120) == 2
    assert run.status()["state"] == "crashed"
    assert "unrecognized arguments: --dir elsewhere" in run.output()
    with pytest.raises(hotcb.LaunchError, match=r"ended \(exit code 2\).*hotcb.launch.log"):
        run.set(lr=1e-3)
    with pytest.raises(hotcb.LaunchError, match="nothing would apply"):
        run.send("opt", "set_params", lr=1e-3)
    assert run.stop() is None
    commands = tmp_path / "run" / "hotcb.commands.jsonl"
    assert not commands.exists() or not commands.read_text().strip()  # nothing queued
    done = cli(str(tmp_path / "run"), "status")
    assert "[ended before it started (its training exited with code 2)]" in done.stdout
    assert "pid None" not in done.stdout
    done = cli(str(tmp_path / "run"), "stop")
    assert "ended before it started" in done.stdout and "nothing to stop" in done.stdout


TRAIN_MODULE = """
import time

from hotcb import HotKernel


def train(steps, value=1.0, fail=False, forever=False):
    kernel = HotKernel()  # the run directory comes from $HOTCB_RUN_DIR
    step = 0
    while forever or step < steps:
        kernel.apply({"step": step, "metrics": {"x": value * step}})
        if kernel.stop_requested:
            break
        if forever:
            time.sleep(0.01)
        step += 1
    kernel.close()
    if fail:
        raise RuntimeError("the training failed on purpose")
"""


def test_python_launch_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An importable function (or 'module:function') runs in a child with its JSON kwargs;
    a failure is a crash with its output kept; kill() and leaving a with-block by an
    exception end the training; what a child cannot import is refused up front."""
    (tmp_path / "launch_train_mod.py").write_text(textwrap.dedent(TRAIN_MODULE))
    monkeypatch.syspath_prepend(os.fspath(tmp_path))
    monkeypatch.chdir(tmp_path)
    import launch_train_mod

    run = hotcb.launch(
        launch_train_mod.train, run_dir=tmp_path / "a", serve=False, steps=30, value=2.0
    )
    assert run.wait(120) == 0 and run.url is None
    rows = run.metrics(as_frame=False)
    assert [r["x"] for r in rows] == [2.0 * s for s in range(30)]
    assert run.status()["state"] == "finished"

    run = hotcb.launch(
        "launch_train_mod:train", run_dir=tmp_path / "b", serve=False, steps=5, fail=True
    )
    assert run.wait(120) == 1
    assert run.status()["state"] == "crashed" and "failed on purpose" in run.output()
    assert "failed on purpose" in run._repr_html_()

    run = hotcb.launch(
        launch_train_mod.train, run_dir=tmp_path / "c", serve=False, steps=0, forever=True
    )
    run.wait_step(2, timeout=120)
    assert run.kill(signal.SIGKILL) == -signal.SIGKILL and run.status()["state"] == "killed"

    run = hotcb.launch(
        launch_train_mod.train, run_dir=tmp_path / "d", serve=False, steps=0, forever=True
    )

    def leave_the_block_by_an_exception() -> None:
        with run:
            run.wait_step(2, timeout=120)
            raise RuntimeError("leave the block")

    with pytest.raises(RuntimeError, match="leave the block"):
        leave_the_block_by_an_exception()
    assert run.exit_code is not None and not run.running

    def local_fn() -> None:
        pass

    with pytest.raises(LaunchError, match="cannot be imported"):
        hotcb.launch(local_fn, serve=False)
    with pytest.raises(LaunchError, match="JSON"):
        hotcb.launch(launch_train_mod.train, serve=False, steps=object())
    with pytest.raises(LaunchError, match="no script"):
        hotcb.launch(tmp_path / "missing.py", serve=False)
    with pytest.raises(LaunchError, match="cannot import"):
        hotcb.launch("no_such_module_xyz:main", serve=False)
    assert not (tmp_path / "runs").exists()


def test_python_launch_turns_the_tuner_on_from_the_first_step(tmp_path: Path) -> None:
    """``hotcb.launch(..., tune="active", tune_settings={...})``, as ``hotcb launch --tune``:
    the tuner is on at the first step with those settings; a bad setting or mode raises
    before anything starts."""
    pytest.importorskip("optuna")
    settings = {"objective": "loss", "segment_steps": 20, "restore": "state", "sync": True}
    run = hotcb.launch(BARE_LOOP, run_dir=tmp_path / "a", serve=False, tune="active",
                       tune_settings=settings, steps=300)  # fmt: skip
    assert run.wait(120) == 0, run.output()
    (enable,) = [e for e in read_ledger(run.run_dir) if (e.get("module"), e.get("op")) == (
        "tune", "enable")]  # fmt: skip
    assert enable["decision"] == "applied" and enable["source"] == "launch" and enable["step"] <= 1
    st = run.client.tune_status()
    assert (st["objective"], st["segment_steps"], st["settings"]["restore"]) == ("loss", 20,
                                                                                "state")  # fmt: skip
    assert st["counts"]["kept"] + st["counts"]["rolled_back"] > 0
    with pytest.raises(ValueError, match="tune must be off, observe, suggest or active"):
        hotcb.launch(BARE_LOOP, run_dir=tmp_path / "b", serve=False, tune="on")
    with pytest.raises(RecipeError, match="segment_steps: must be >= 1"):
        hotcb.launch(BARE_LOOP, run_dir=tmp_path / "b", serve=False, tune="active",
                     tune_settings={"segment_steps": 0})  # fmt: skip
    with pytest.raises(ValueError, match="tune_settings without tune"):
        hotcb.launch(BARE_LOOP, run_dir=tmp_path / "b", serve=False, tune_settings=settings)
    assert not (tmp_path / "b").exists()


def test_import_hotcb_stays_light_and_launch_is_callable() -> None:
    code = textwrap.dedent(
        """
        import sys, hotcb
        assert "hotcb._launch" not in sys.modules, "hotcb._launch is imported eagerly"
        assert "torch" not in sys.modules and "fastapi" not in sys.modules
        from hotcb import launch, Launch, LaunchError
        assert callable(hotcb.launch) and launch is hotcb.launch and Launch is hotcb.Launch
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=60
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_a_port_a_stopped_dashboard_served_on_counts_as_free() -> None:
    """`hotcb demo` / `hotcb launch --serve` said "8421 is in use" and moved the dashboard to
    another port for a minute after one was stopped: the connections it had served were in
    TIME_WAIT, and the check bound without SO_REUSEADDR (the server binds with it)."""
    from hotcb._launch import port_free

    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert not port_free(port)  # listening: in use
        with socket.create_connection(("127.0.0.1", port)) as client:
            served, _ = srv.accept()
            served.close()  # the server closes first: its side waits in TIME_WAIT
            client.recv(1)
    assert port_free(port)


def _without(modules: tuple[str, ...], *argv: str, cwd: Any) -> subprocess.CompletedProcess[str]:
    """``hotcb ARGV`` in a Python where ``modules`` cannot be imported (an install without
    their extra)."""
    code = ("import sys\n"
            f"for name in {modules!r}: sys.modules[name] = None\n"
            "from hotcb.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=SUBPROCESS_ENV)  # fmt: skip


def test_a_launch_whose_autopilot_or_tuner_cannot_run_here_is_refused_before_it_starts(
    tmp_path: Path,
) -> None:
    """Without PyYAML the autopilot exited at once ("the training goes on") and the launch
    exited 0; without optuna the run refused `tune enable` and trained untuned, exit 0. Both
    are refused before anything starts, with the extra to install; the hint no longer names
    hotcb[tune] for YAML."""
    train = [sys.executable, "-c", "pass"]
    for missing, flags, said in (
        (("yaml",), ["--autopilot", "suggest"], 'PyYAML: pip install "hotcb[yaml]"'),
        (("optuna",), ["--tune", "active", "--tune-objective", "loss"],
         'optuna in the training\'s environment: pip install "hotcb[tune]"'),
    ):  # fmt: skip
        res = _without(missing, "--dir", "run", "launch", *flags, "--", *train, cwd=tmp_path)
        assert res.returncode == 2 and said in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        assert not (tmp_path / "run").exists()  # nothing started, nothing made
    rules = _without(("yaml",), "autopilot", "rules", cwd=tmp_path)
    assert rules.returncode == 2 and 'needs PyYAML: pip install "hotcb[yaml]"' in rules.stderr
    assert "hotcb[tune]" not in rules.stderr
