"""Files planted in a shared run directory, a folder that other users can write: a symbolic link
under the name of a file hotcb writes, or of a temporary file it is about to create, must not
make the trainer, the CLI or ``hotcb serve`` write to the file the link points at (a
``~/.ssh/authorized_keys``); a FIFO in a file's place must not hang the server. Each attack
plants the file first, then runs the real thing: a trainer process, the ``hotcb`` command, a
real ``hotcb serve`` or a kernel in this process where the temporary name is this process's."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import types
import urllib.request
from typing import Any

import pytest

from hotcb import HotClient, jsonl
from hotcb.errors import JournalWriteError
from hotcb.runfiles import RunPaths
from hotcb.testing import StepDriver, wait_for

pytestmark = pytest.mark.slow

VICTIM = b"ssh-ed25519 AAAA the victim's own key\n"
REFUSED = "is a symbolic link, which hotcb will not follow"
#: this environment without a run directory (a developer's shell may set HOTCB_DIR)
ENV = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}


def _victim(tmp_path: Any, name: str = "authorized_keys") -> str:
    """A file of the user's outside the run: what a planted link points at."""
    path = tmp_path / "home" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(VICTIM)
    return os.fspath(path)


def _plant(link: str, target: str) -> None:
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)


def _untouched(*victims: str) -> None:
    for victim in victims:
        with open(victim, "rb") as f:
            assert f.read() == VICTIM, victim


# -- the trainer's own files ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "planted",
    [("hotcb.metrics.cols", "hotcb.applied.jsonl"), ("hotcb.metrics.jsonl",)],
    ids=["sidecar-and-ledger", "metrics"],
)
def test_links_planted_for_the_trainers_files_are_refused_and_training_goes_on(
    tmp_path: Any, start_trainer: Any, planted: tuple[str, ...]
) -> None:
    """The trainer opened ``hotcb.metrics.cols`` with ``O_TRUNC`` through the link (the target
    emptied) and appended its ledger to the target; now each is refused with a warning that
    names it, and the run trains to its end and applies its commands."""
    run = os.fspath(tmp_path / "run")
    victims = {name: _victim(tmp_path, name) for name in planted}
    for name, victim in victims.items():
        _plant(os.path.join(run, name), victim)
    jsonl.append(RunPaths(run).commands,
                 {"cmd_id": "A1", "module": "opt", "op": "set_params", "params": {"lr": 0.05}})  # fmt: skip
    trainer = start_trainer(run, os.fspath(tmp_path / "trace.jsonl"), steps=6)
    code, _, err = trainer.finish()
    assert code == 0, err
    _untouched(*victims.values())
    for name in planted:
        link = os.path.join(run, name)
        assert os.path.islink(link)  # left as it was: hotcb neither follows nor removes it
        assert f"{link} {REFUSED}" in err, err
    if "hotcb.applied.jsonl" in planted:  # the entries lost at the end: the link's remedy only
        assert "lost as the run closes" in err and "free disk space" not in err, err
    steps = trainer.steps()
    assert [s["step"] for s in steps] == list(range(6))
    assert steps[-1]["lr"] == pytest.approx(0.05)  # the command was applied all the same


def test_a_link_planted_as_the_commands_file_leaks_nothing_into_the_ledger(
    tmp_path: Any, start_trainer: Any
) -> None:
    """The trainer read the commands file through a planted link (to a private key, say) and
    copied the start of each line, "not valid JSON", into the ledger anyone who reads the run
    reads. Now it does not follow the link, says so, and trains on."""
    run = os.fspath(tmp_path / "run")
    secret = tmp_path / "home" / "id_ed25519"
    secret.parent.mkdir()
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nSECRET-KEY-LINE-1\n")
    _plant(RunPaths(run).commands, os.fspath(secret))
    trainer = start_trainer(run, os.fspath(tmp_path / "trace.jsonl"), steps=6)
    code, _, err = trainer.finish()
    assert code == 0, err
    assert [s["step"] for s in trainer.steps()] == list(range(6))
    with open(RunPaths(run).ledger) as f:
        ledger = f.read()
    assert "SECRET-KEY-LINE-1" not in ledger and "PRIVATE KEY" not in ledger, ledger
    assert "a symbolic link, which hotcb will not follow" in err, err


def test_links_planted_under_the_kernels_temporary_names_leave_their_targets_alone(
    tmp_path: Any,
) -> None:
    """The heartbeat was written through ``hotcb.heartbeat.json.tmp.<pid>`` (``O_TRUNC``), and
    the actuators file and ``hotcb.run.json`` through ``<file>.tmp.<pid>.<thread>``: names
    anyone can guess, here planted for this very process."""
    run = os.fspath(tmp_path / "run")
    paths = RunPaths(run)
    guessed = {
        f"{paths.heartbeat}.tmp.{os.getpid()}": _victim(tmp_path, "heartbeat-victim"),
        **{
            f"{path}.tmp.{os.getpid()}.{threading.get_ident()}": _victim(tmp_path, name)
            for name, path in (("actuators-victim", paths.actuators),
                               ("meta-victim", paths.run_meta))
        },
    }  # fmt: skip
    for link, victim in guessed.items():
        _plant(link, victim)
    with StepDriver(run, weights={"ce": 1.0}) as drv:
        drv.steps(3)
        cid = drv.client.loss(ce=0.5)
        drv.steps(2)
        assert drv.only(cid)["decision"] == "applied"
    _untouched(*guessed.values())
    for path in (paths.heartbeat, paths.actuators, paths.run_meta):
        assert stat.S_ISREG(os.lstat(path).st_mode), path
        assert isinstance(jsonl.read_json(path), dict), path
    left = sorted(n for n in os.listdir(run) if ".tmp." in n)
    assert left == sorted(os.path.basename(link) for link in guessed)  # only the planted ones


def test_a_link_planted_under_the_source_capture_temporary_name_is_not_written_through(
    tmp_path: Any,
) -> None:
    """A callback's captured source went through ``hotcb.sources/<sha>.py.<pid>.tmp``."""
    from hotcb.modules.cb._loader import capture_source

    paths = RunPaths(os.fspath(tmp_path / "run"))
    code = b"class Cb:\n    def handle(self, event, env):\n        pass\n"
    dest = os.path.join(paths.sources, f"{hashlib.sha256(code).hexdigest()}.py")
    victim = _victim(tmp_path)
    _plant(f"{dest}.{os.getpid()}.tmp", victim)
    capture_source(types.SimpleNamespace(paths=paths, is_leader=True), code)
    _untouched(victim)
    with open(dest, "rb") as f:
        assert f.read() == code


def test_a_link_planted_under_the_hf_tensor_state_temporary_name_is_not_written_through(
    tmp_path: Any,
) -> None:
    """The Hugging Face adapter saved a callback's tensors through a fixed ``<file>.tmp``."""
    import torch

    from hotcb.adapters.hf import TENSOR_STATE_FILE, _load_tensors, _save_tensors

    folder = os.fspath(tmp_path / "checkpoint-10")
    victim = _victim(tmp_path)
    _plant(os.path.join(folder, TENSOR_STATE_FILE + ".tmp"), victim)
    _save_tensors(folder, {"cb": {"ema": torch.ones(3)}})
    _untouched(victim)
    loaded = _load_tensors(folder)
    assert loaded is not None and torch.equal(loaded["cb"]["ema"], torch.ones(3))


# -- the commands file, from the CLI and the dashboard --------------------------------------------
def test_a_link_planted_as_the_commands_file_is_refused_by_the_cli(tmp_path: Any, cli: Any) -> None:
    """``hotcb set`` appended the command to whatever file the link named."""
    run = os.fspath(tmp_path / "run")
    victim = _victim(tmp_path)
    link = RunPaths(run).commands
    _plant(link, victim)
    done = cli(run, "set", "lr=0.002")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""  # no cmd_id: nothing was written
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and f"{link} {REFUSED}" in lines[0], done.stderr
    _untouched(victim)
    with pytest.raises(JournalWriteError, match=REFUSED):
        HotClient(run).opt(lr=0.002)
    _untouched(victim)


def test_a_link_planted_as_the_commands_file_is_refused_by_the_dashboard(
    tmp_path: Any, live_server: Any, make_run: Any
) -> None:
    run = make_run(tmp_path / "runs" / "r")
    victim = _victim(tmp_path)
    _plant(RunPaths(run).commands, victim)
    srv = live_server(root=tmp_path / "runs")
    with srv.client() as c:
        r = c.post("/api/runs/r/commands", json={"module": "control", "op": "pause"})
    assert r.status_code == 507, r.text  # not written, the reason said (as for a full disk)
    assert REFUSED in r.json()["detail"]
    _untouched(victim)


# -- hotcb serve ----------------------------------------------------------------------------------
def _get(url: str, token: str, timeout: float = 10) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return int(resp.status)


def _padded_metrics(run: str, mib: int) -> None:
    """A metrics file over ``mib`` MiB, with no column sidecar: the server parses it all, and
    then writes its cache (it does from 8 MiB read)."""
    os.makedirs(run, exist_ok=True)
    pad = "p" * 2000
    with open(os.path.join(run, "hotcb.metrics.jsonl"), "w") as f:
        step = 0
        while f.tell() < mib << 20:
            f.write(json.dumps({"step": step, "wall_time": 1.0, "metrics": {"m": 1.0 / (step + 1)},
                                "pad": pad}) + "\n")  # fmt: skip
            step += 1


def test_a_link_planted_under_the_servers_cache_temporary_name_leaves_its_target_alone(
    tmp_path: Any, serve: Any
) -> None:
    """``hotcb serve`` wrote its metrics cache through ``hotcb.metrics.idx.<pid>.tmp``: with
    the server's pid (``ps``), whoever wrote the run's metrics chose bytes the server then
    wrote over ``~/.ssh/authorized_keys`` (tests/security, the probe's repro1)."""
    root = tmp_path / "root"
    run = os.fspath(root / "shared")
    _padded_metrics(run, 9)
    token = "t-planted"
    proc = serve(root, env={"HOTCB_TOKEN": token})
    victim = _victim(tmp_path)
    idx = os.path.join(run, "hotcb.metrics.idx")
    _plant(f"{idx}.{proc.proc.pid}.tmp", victim)
    assert _get(f"{proc.url}/api/runs/shared/status", token) == 200
    wait_for(lambda: os.path.lexists(idx), 60, what="the server's metrics cache")
    _untouched(victim)
    assert stat.S_ISREG(os.lstat(idx).st_mode)
    with open(idx, "rb") as f:
        assert f.read(10) == b"HOTCBIDX1\n"


def test_fifos_in_a_served_run_hang_no_request_and_the_server_stops(
    tmp_path: Any, serve: Any, make_run: Any
) -> None:
    """A FIFO as ``hotcb.tune.json`` or ``hotcb.metrics.idx`` hung every request for the run
    for good (a worker thread stuck in ``open()``, the run's lock held) and the server's exit
    after it; as ``hotcb.autopilot.jsonl`` it made the status a 500."""
    root = tmp_path / "root"
    planted = ("hotcb.tune.json", "hotcb.metrics.idx", "hotcb.autopilot.jsonl")
    for name in planted:
        run = make_run(root / name.replace(".", "-"))
        os.mkfifo(os.path.join(run, name))
    token = "t-fifo"
    proc = serve(root, env={"HOTCB_TOKEN": token})
    for name in planted:
        for what in ("status", "metrics", "tune", "autopilot"):
            url = f"{proc.url}/api/runs/{name.replace('.', '-')}/{what}"
            assert _get(url, token) == 200, url
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) is not None


def test_a_fifo_planted_as_hotcb_yaml_does_not_hang_the_trainers_start(
    tmp_path: Any, start_trainer: Any
) -> None:
    """The callbacks module opened ``hotcb.yaml`` with a plain ``open()``, which blocks on a
    FIFO until something writes to it: the trainer never took its first step."""
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "hotcb.yaml")
    trainer = start_trainer(os.fspath(run), os.fspath(tmp_path / "trace.jsonl"), steps=4)
    code, _, err = trainer.finish(timeout=120)
    assert code == 0, err
    assert [s["step"] for s in trainer.steps()] == list(range(4))
    assert "hotcb.yaml" in err and "not a regular file" in err, err


def test_sparse_giant_files_in_a_served_run_are_not_read_whole(
    tmp_path: Any, serve: Any, make_run: Any
) -> None:
    """A 1 GB sparse ``hotcb.run.json`` took the server to 2 GB at each runs list, a 2 GB
    ``hotcb.features.jsonl`` to 2.3 GB at each features request (no line end: read again
    every time). Both are refused past a size (nothing of them is a record)."""
    root = tmp_path / "root"
    big = make_run(root / "big")
    for name, size in (("hotcb.run.json", 1 << 30), ("hotcb.features.jsonl", 2 << 30)):
        with open(os.path.join(big, name), "wb") as f:
            f.truncate(size)  # sparse: no disk used
    assert jsonl.read_json(os.path.join(big, "hotcb.run.json"), "unreadable") == "unreadable"
    token = "t-sparse"
    proc = serve(root, env={"HOTCB_TOKEN": token})
    for what in ("status", "features", "features", "features"):
        assert _get(f"{proc.url}/api/runs/big/{what}", token) == 200, what
    assert _get(f"{proc.url}/api/runs", token) == 200
    assert proc.proc is not None
    with open(f"/proc/{proc.proc.pid}/status") as f:  # VmHWM: the server's peak memory
        (peak,) = [int(line.split()[1]) for line in f if line.startswith("VmHWM:")]
    assert peak < 600 * 1024, f"{peak} kB"


# -- the log files of hotcb.launch and hotcb demo --------------------------------------------------
def test_a_link_planted_as_the_launch_log_is_refused(tmp_path: Any) -> None:
    """``hotcb.launch()`` appended the children's output (the dashboard's too) to whatever the
    link named; now it refuses before anything starts."""
    run = os.fspath(tmp_path / "run")
    victim = _victim(tmp_path)
    _plant(os.path.join(run, "hotcb.launch.log"), victim)
    started = os.fspath(tmp_path / "training-started")
    code = ("import sys, hotcb; hotcb.launch([sys.executable, '-c', sys.argv[2]], "
            "run_dir=sys.argv[1], serve=False, block=True)")  # fmt: skip
    training = f"open({started!r}, 'w').close()"
    done = subprocess.run([sys.executable, "-c", code, run, training], capture_output=True,
                          text=True, timeout=120, env=ENV)  # fmt: skip
    assert done.returncode != 0
    assert "RunFileRefusedError" in done.stderr and REFUSED in done.stderr, done.stderr
    assert not os.path.exists(started)
    _untouched(victim)


def test_a_log_planted_for_the_demo_is_refused(tmp_path: Any) -> None:
    """``hotcb demo --run-dir`` reused an existing ``demo.trainer.log`` (and the server's log,
    which holds the tokenised URL): a link was followed, another user's file kept theirs."""
    run = os.fspath(tmp_path / "run")
    victim = _victim(tmp_path)
    link = os.path.join(run, "demo.trainer.log")
    _plant(link, victim)
    argv = [sys.executable, "-m", "hotcb", "demo", "--run-dir", run, "--port", "0",
            "--no-browser", "--max-steps", "5"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"{link} {REFUSED}" in done.stderr, done.stderr
    _untouched(victim)


@pytest.mark.allow_skip(reason="giving a file to another user needs root")
def test_a_log_file_of_another_user_is_refused(tmp_path: Any) -> None:
    """A regular file that another user planted (and can read) is not the launch's log."""
    from hotcb._launch import _open_log

    if os.geteuid() != 0:
        pytest.skip("needs root to run the attacker as the OS user 'nobody' (here: to give "
                    "the planted log to nobody)")  # fmt: skip
    path = os.fspath(tmp_path / "hotcb.launch.log")
    with open(path, "wb") as f:
        f.write(VICTIM)
    os.chmod(path, 0o666)
    os.chown(path, 65534, 65534)
    with pytest.raises(jsonl.RunFileRefusedError, match=r"another user's file \(uid 65534\)"):
        _open_log(path)
    _untouched(path)
    os.chown(path, os.geteuid(), os.getegid())  # the user's own, from an older hotcb: private
    _open_log(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_link_planted_as_the_features_file_is_not_appended_through(tmp_path: Any) -> None:
    """Activation capture appended its records to whatever a link planted as
    ``hotcb.features.jsonl`` named; now the capture is not written, and training goes on."""
    torch = pytest.importorskip("torch")
    from hotcb.features import FeatureCapture

    run = os.fspath(tmp_path / "run")
    victim = _victim(tmp_path)
    _plant(os.path.join(run, "hotcb.features.jsonl"), victim)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    cap = FeatureCapture(every=1, model=model, run_dir=run)
    cap.step(0)
    model(torch.ones(3, 2))
    cap.step(1)  # logs the refusal; never raises into the loop
    assert cap.captures == 1
    _untouched(victim)


def test_a_link_planted_as_the_autopilot_lock_creates_nothing(tmp_path: Any, cli: Any) -> None:
    """The autopilot's lock file was opened with ``O_CREAT`` through a planted link: a dangling
    link made an (empty) file wherever it pointed, as the user who accepted a proposal."""
    run = os.fspath(tmp_path / "run")
    os.makedirs(run)
    target = tmp_path / "home" / ".bashrc.d" / "planted"
    target.parent.mkdir(parents=True)
    _plant(os.path.join(run, "hotcb.autopilot.lock"), os.fspath(target))
    res = cli(run, "autopilot", "accept", "A1")
    assert res.returncode != 0
    assert "hotcb.autopilot.lock" in res.stderr and REFUSED in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not os.path.lexists(target)


def test_a_run_directory_every_user_can_write_is_said_at_the_start(
    tmp_path: Any, caplog: Any
) -> None:
    """Another user replaced ``hotcb.commands.jsonl`` in a 0777 run directory with a ``cb
    load`` of their own code, and the trainer ran it as its user, without a word about the
    directory being open to everyone."""
    from hotcb import HotKernel

    run = tmp_path / "shared"
    run.mkdir()
    os.chmod(run, 0o777)
    with caplog.at_level("WARNING", logger="hotcb"):
        HotKernel(os.fspath(run)).close()
    said = [
        r.getMessage() for r in caplog.records if "every user of this machine" in r.getMessage()
    ]
    assert len(said) == 1 and "0o777" in said[0] and "run code in it" in said[0], caplog.text
    caplog.clear()
    private = tmp_path / "private"
    private.mkdir(mode=0o755)
    with caplog.at_level("WARNING", logger="hotcb"):
        HotKernel(os.fspath(private), allow_code_load=False).close()
    assert "every user" not in caplog.text
