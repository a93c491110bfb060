"""``hotcb demo``: starts a real trainer and a real server, serves the page, and leaves no
process behind on Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from hotcb.testing import wait_for

ENV = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
        return json.loads(resp.read())


def test_synthetic_trainer_writes_a_steerable_run(tmp_path: Any) -> None:
    """Without torch the demo still trains (pure Python) and exposes controls."""
    from hotcb import HotClient
    from hotcb.demo import train

    run = os.fspath(tmp_path / "run")
    HotClient(run, source="test").opt(lr=0.005)  # waiting before the run starts
    last = train(run, max_steps=40, step_delay=0, synthetic=True)
    assert last == 39
    with open(os.path.join(run, "hotcb.metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    assert [r["step"] for r in recs] == list(range(40))
    assert {"train/loss", "lr", "grad_norm"} <= set(recs[-1]["metrics"])
    assert recs[-1]["metrics"]["lr"] == 0.005
    with open(os.path.join(run, "hotcb.actuators.json")) as f:
        acts = {a["param_key"]: a for a in json.load(f)["actuators"]}
    assert acts["lr"]["type"] == "log_float" and acts["lr"]["group"] == "opt"
    assert {"momentum", "reg", "noise"} <= set(acts)


def _losses(run: str) -> dict[int, float]:
    with open(os.path.join(run, "hotcb.metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["step"]: r["metrics"]["train/loss"] for r in recs if "step" in r}


@pytest.mark.slow
@pytest.mark.parametrize("synthetic", [False, True], ids=["torch", "synthetic"])
def test_a_branch_of_the_demo_resumes_from_its_checkpoint(tmp_path: Any, synthetic: bool) -> None:
    """``hotcb branch`` of a demo run prints ``hotcb launch --resume-from CKPT -- <the
    demo's trainer>``: the demo's trainer ignored ``$HOTCB_RESUME_FROM`` and started again at
    step 0 under a ledger that said the parent's changes were in force (the trainer without
    torch saved no checkpoint at all). It resumes now, on the parent's very trajectory (no
    change was set)."""
    parent, child = os.fspath(tmp_path / "parent"), os.fspath(tmp_path / "child")

    def hotcb(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "hotcb", *args], env=ENV, text=True,
                              capture_output=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def demo(run: str) -> list[str]:
        return [sys.executable, "-m", "hotcb.demo", "train", "--run-dir", run,
                "--max-steps", "40", "--step-delay", "0",
                *(["--synthetic"] if synthetic else [])]  # fmt: skip

    hotcb("--dir", parent, "init")
    hotcb("--dir", parent, "checkpoint", "--at-step", "20")
    subprocess.run(demo(parent), env=ENV, check=True, timeout=300, capture_output=True)
    printed = hotcb("--dir", parent, "branch", "--from", "20", "--to", child)
    ckpt = re.search(r"--resume-from (\S+)", printed)
    assert ckpt, printed
    hotcb("--dir", child, "launch", "--resume-from", ckpt.group(1), "--", *demo(child))
    was, now = _losses(parent), _losses(child)
    assert min(now) == 21 and max(now) == 39, sorted(now)
    assert [now[s] for s in (21, 30, 39)] == [was[s] for s in (21, 30, 39)]


@pytest.mark.slow
def test_hotcb_demo_serves_and_cleans_up_on_sigint(tmp_path: Any) -> None:
    psutil = pytest.importorskip("psutil")
    pytest.importorskip("fastapi")
    port = _free_port()
    argv = [sys.executable, "-m", "hotcb", "demo", "--max-steps", "100000", "--port", str(port),
            "--step-delay", "0.02", "--no-browser"]  # fmt: skip
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        demo = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    try:

        def url() -> str | None:
            m = re.search(r"dashboard: (http://\S+)", out_path.read_text())
            return m.group(1) if m else None

        page_url = wait_for(url, timeout=90, what="hotcb demo to print the dashboard URL")
        # default run dir: a fresh ./runs/demo-<time>, served with the other runs under ./runs
        (run_name,) = os.listdir(tmp_path / "runs")
        assert run_name.startswith("demo-")
        # the URL carries the server's token (a token is on by default, loopback included)
        parts = urllib.parse.urlsplit(page_url)
        query = urllib.parse.parse_qs(parts.query)
        token = query["token"][0]
        assert len(token) >= 20
        assert page_url == f"http://127.0.0.1:{port}/?token={token}&run={run_name}"
        assert set(query) == {"token", "run"}

        children = psutil.Process(demo.pid).children(recursive=True)
        cmdlines = [" ".join(c.cmdline()) for c in children]
        assert len(children) == 2, cmdlines
        assert any("hotcb.demo train" in c for c in cmdlines)
        assert any(" serve " in c for c in cmdlines)
        assert not any(token in c for c in cmdlines)  # handed over in the environment, not argv
        server_log = tmp_path / "runs" / run_name / "demo.server.log"
        assert stat.S_IMODE(server_log.stat().st_mode) == 0o600  # it holds the printed URL

        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/", timeout=5) as resp:
            assert b"hotcb dashboard" in resp.read()
        with pytest.raises(urllib.error.HTTPError) as info:
            _get(base + "/api/runs")
        assert info.value.code == 401
        info.value.close()
        runs = _get(base + "/api/runs", token)["runs"]
        assert [r["run_id"] for r in runs] == [run_name]
        wait_for(
            lambda: (
                (_get(f"{base}/api/runs/{run_name}/status", token).get("last_metrics") or {}).get(
                    "step", -1
                )
                >= 5
            ),
            timeout=60,
            what="the demo's metrics to reach the server",
        )
        acts = _get(f"{base}/api/runs/{run_name}/actuators", token)["actuators"]
        assert "lr" in {a["param_key"] for a in acts}

        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0
        for child in children:
            wait_for(lambda c=child: not c.is_running(), timeout=10, what=f"{child.pid} to exit")
        text = out_path.read_text()
        assert "stopping" in text
        with open(tmp_path / "runs" / run_name / "demo.trainer.log") as f:
            assert "trainer interrupted" in f.read()  # it unwound through kernel.close()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)


def test_ctrl_c_before_the_run_started_leaves_no_folder(tmp_path: Any) -> None:
    """Ctrl-C in the first seconds (before the URL) left ``runs/demo-<time>/`` with only the
    two logs: a run "not started" in ``hotcb status``, for good."""
    argv = [sys.executable, "-m", "hotcb", "demo", "--port", str(_free_port()), "--no-browser"]
    demo = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for(lambda: (tmp_path / "runs").is_dir() and os.listdir(tmp_path / "runs"),
                 timeout=60, interval=0.005, what="the demo's run folder")  # fmt: skip
        demo.send_signal(signal.SIGINT)  # long before its trainer's first step (torch imports)
        out, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate(timeout=10)  # reaped, its pipe closed
    assert demo.returncode == 0 and b"stopping" in out, out
    assert os.listdir(tmp_path / "runs") == [], out


_ARMED: list[int] = []


def _ctrl_c_in_the_fork_hook() -> None:
    if _ARMED:
        _ARMED.append(1)
        raise KeyboardInterrupt  # what a Ctrl-C arriving just then raises here


def test_a_ctrl_c_while_the_demo_starts_its_children_is_not_lost(tmp_path: Any) -> None:
    """The demo started its children with a ``preexec_fn``: Python then runs its at-fork hooks,
    and a Ctrl-C that arrived during one (logging's, for one) was raised there and dropped
    ("Exception ignored"). The demo printed its URL and served on, Ctrl-C forgotten."""
    from hotcb.demo import _spawn

    os.register_at_fork(after_in_parent=_ctrl_c_in_the_fork_hook)
    _ARMED.append(0)
    try:
        child = _spawn([sys.executable, "-c", "pass"], str(tmp_path / "child.log"))
        assert child.wait(60) == 0
    finally:
        ran_hook = len(_ARMED) > 1
        _ARMED.clear()
    assert not ran_hook, "the demo ran Python code in a fork: a Ctrl-C there is lost"


def test_hotcb_dir_names_the_demo_run(tmp_path: Any) -> None:
    """`hotcb --dir mine demo` trained in a fresh ./runs/demo-<time> and left `mine` empty, so
    `hotcb --dir mine status` (what a user runs next) found no run."""
    port = _free_port()
    argv = [sys.executable, "-m", "hotcb", "--dir", "mine", "demo", "--port", str(port),
            "--max-steps", "100000", "--step-delay", "0.02", "--no-browser"]  # fmt: skip
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        demo = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    try:
        page_url = wait_for(
            lambda: (re.search(r"dashboard: (http://\S+)", out_path.read_text()) or [None, None])[
                1
            ],
            timeout=90,
            what="hotcb demo to print the dashboard URL",
        )
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(page_url).query)["token"][0]
        runs = _get(f"http://127.0.0.1:{port}/api/runs", token)["runs"]
        assert [r["run_id"] for r in runs] == ["."]  # the run directory, served alone
        assert not os.path.exists(tmp_path / "runs")
        wait_for(lambda: (tmp_path / "mine" / "hotcb.metrics.jsonl").exists(), timeout=60,
                 what="the demo's metrics in ./mine")  # fmt: skip
        status = subprocess.run([sys.executable, "-m", "hotcb", "--dir", "mine", "status"],
                                cwd=tmp_path, env=ENV, capture_output=True, text=True,
                                timeout=60)  # fmt: skip
        assert status.returncode == 0 and "step" in status.stdout, status.stdout + status.stderr
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)


def test_demo_says_when_8421_is_taken(capsys: Any) -> None:
    """The README says 8421: when another server holds it, the demo says where it went."""
    from hotcb.demo import DEFAULT_PORT, _demo_port

    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            holder.bind(("127.0.0.1", DEFAULT_PORT))
            holder.listen()
        except OSError:
            pass  # something else holds it already: the same situation
        port = _demo_port(None)
    finally:
        holder.close()
    assert port != DEFAULT_PORT
    assert f"{DEFAULT_PORT} is in use; serving on {port}" in capsys.readouterr().err


def test_demo_port_0_is_any_free_port_and_bad_values_are_usage_errors(tmp_path: Any) -> None:
    """`--port 0` polled port 0 for a minute and said the server did not start (it had, on a
    free port); `--port 99999` printed an OverflowError traceback after making a run folder;
    `--step-delay -1` started a trainer that crashed."""
    from hotcb.demo import _demo_port

    assert _demo_port(0) > 0
    for flag, value, said in (
        ("--port", "99999", "must be 0..65535"),
        ("--step-delay", "-1", "must be 0 or more seconds"),
        ("--max-steps", "0", "must be 1 or more"),
    ):
        done = subprocess.run([sys.executable, "-m", "hotcb", "demo", flag, value, "--no-browser"],
                              cwd=tmp_path, env=ENV, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 2 and said in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.slow
def test_the_demo_task_is_not_solved_in_a_few_hundred_steps(tmp_path: Any) -> None:
    """The demo must keep learning for minutes so a change visibly lands on its curves: with
    noisy training labels the training loss stays well above zero while the (clean)
    validation loss keeps falling."""
    pytest.importorskip("torch")
    from hotcb.demo import train

    run = os.fspath(tmp_path / "run")
    train(run, max_steps=900, step_delay=0)
    with open(os.path.join(run, "hotcb.metrics.jsonl")) as f:
        recs = [json.loads(line)["metrics"] | {"step": json.loads(line)["step"]} for line in f]
    val = {r["step"]: r["val/loss"] for r in recs if "val/loss" in r}
    late_train = [r["train/loss"] for r in recs if r["step"] >= 800]
    assert sum(late_train) / len(late_train) > 0.6  # not memorised yet
    assert val[850] < val[400] < val[100]  # still generalising better


def test_the_demo_says_when_it_trains_the_synthetic_loop_for_want_of_torch(
    monkeypatch: Any,
) -> None:
    """Without torch (or scikit-learn) the trainer falls back to the pure-Python loop, and the
    first line said "digits MLP" (or "golden multi-task") all the same."""
    import importlib.util

    from hotcb import demo

    assert demo._demo_kind(golden=False, synthetic=False) == "digits MLP"  # torch is here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))  # fmt: skip
    kind = demo._demo_kind(golden=True, synthetic=False)
    assert kind.startswith("synthetic: no torch here for the golden multi-task model")
    assert 'pip install "hotcb[all]"' in kind


def test_a_demo_folder_with_only_empty_run_files_is_dropped_at_an_early_ctrl_c(
    tmp_path: Any,
) -> None:
    """A Ctrl-C after the trainer built its kernel (an empty commands file and ledger) but
    before its first step left the folder, a run "not started" in `hotcb status`; one with
    anything written in it stays."""
    from hotcb.demo import _drop_if_unstarted

    for name, kept in (("early", False), ("trained", True)):
        run = tmp_path / name
        run.mkdir()
        for log in ("demo.trainer.log", "demo.server.log"):
            (run / log).write_text("starting\n")
        (run / "hotcb.commands.jsonl").touch()
        (run / "hotcb.applied.jsonl").write_text('{"seq": 1}\n' if kept else "")
        _drop_if_unstarted(str(run))
        assert run.exists() is kept, name


def test_a_ctrl_c_while_the_cli_sets_up_its_commands_is_no_traceback(monkeypatch: Any) -> None:
    """`hotcb demo` interrupted in its first fraction of a second (the CLI still building its
    commands) printed a KeyboardInterrupt traceback; it ends as a command's Ctrl-C does."""
    import hotcb.cli as cli

    def interrupted() -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["demo"]) == 130
