"""HotClient and the real ``hotcb`` command (subprocesses) against a run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from hotcb import HotClient, HotKernel, jsonl
from hotcb.client import route_keys
from hotcb.errors import CommandError
from hotcb.runfiles import RunPaths
from hotcb.testing import StepDriver, TinyMLP, read_ledger

SUBPROCESS_ENV = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}


def commands(run_dir: str) -> list[dict[str, Any]]:
    return list(jsonl.iter_records(RunPaths(run_dir).commands))


class Run(StepDriver):
    """An in-process kernel over a real optimizer and loss weights (the CLI is the other side);
    its first step is applied at once, so the actuators file exists."""

    def __init__(self, run_dir: str) -> None:
        self.model = TinyMLP()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        super().__init__(run_dir, weights={"ce": 1.0, "smooth": 0.1})
        self.steps()

    def train_step(self, step: int) -> dict[str, Any]:
        return {"optimizer": self.opt, "metrics": {"loss": 2.5 - step}}


@pytest.fixture
def run(run_dir: str) -> Any:
    r = Run(run_dir)
    yield r
    r.kernel.close()


def test_import_hotcb_imports_no_heavy_dependency() -> None:
    code = (
        "import sys, hotcb, hotcb.cli, hotcb.client, hotcb.kernel\n"
        "heavy = ('torch', 'fastapi', 'optuna', 'lightning', 'transformers', 'numpy', 'yaml')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=SUBPROCESS_ENV
    )
    assert out.stdout.strip() == "[]"


def test_hotcb_testing_and_its_step_driver_need_no_heavy_dependency(tmp_path: Any) -> None:
    code = (
        "import sys\n"
        "from hotcb.testing import StepDriver\n"
        "with StepDriver(sys.argv[1], weights={'aux': 0.0}) as drv:\n"
        "    cid = drv.client.loss(aux=0.5)\n"
        "    drv.steps()\n"
        "    assert drv.only(cid)['decision'] == 'applied' and drv.weights['aux'] == 0.5\n"
        "heavy = ('torch', 'sklearn', 'numpy', 'fastapi', 'yaml', 'pytest')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, os.fspath(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_route_keys_by_actuators_first_then_name_patterns() -> None:
    acts = [{"param_key": "smooth", "group": "loss"}, {"param_key": "lr", "group": "opt"}]
    keys = ["lr", "smooth", "betas", "aux_weight", "terms.kd", "lr@head", "temperature"]
    assert route_keys(keys, acts) == {
        "opt": ["lr", "betas", "lr@head"],
        "loss": ["smooth", "aux_weight", "terms.kd"],
        "custom": ["temperature"],
    }


def test_set_routes_by_the_runs_actuators_file(run: Run, run_dir: str, cli: Any) -> None:
    # a name the run did not publish fails at once, before anything is written
    res = cli(run_dir, "set", "lr=1e-3", "smooth=0.2", "temperature=2")
    assert res.returncode == 2 and "unknown actuator 'temperature' in group 'custom'" in res.stderr
    assert "the run's knobs: loss: " in res.stderr and "opt: " in res.stderr  # what it has
    res = cli(run_dir, "set", "lr=1e-3", "smooth=0.2")
    assert res.returncode == 0, res.stderr
    recs = commands(run_dir)
    assert [(r["module"], r["params"]) for r in recs] == [
        ("opt", {"lr": 0.001}),
        ("loss", {"smooth": 0.2}),  # the name alone would have said custom
    ]
    assert res.stdout.split() == [r["cmd_id"] for r in recs]
    assert {r["source"] for r in recs} == {"cli"} and {r["v"] for r in recs} == {1}
    run.steps()
    decisions = {e["module"]: e["decision"] for e in read_ledger(run_dir)}
    assert decisions == {"opt": "applied", "loss": "applied"}
    assert run.opt.param_groups[0]["lr"] == 0.001 and run.weights["smooth"] == 0.2


def test_set_falls_back_to_name_patterns_and_parses_values_as_json(run_dir: str, cli: Any) -> None:
    assert cli(run_dir, "init").returncode == 0  # a run not started yet: nothing published
    res = cli(
        run_dir, "set", "lr=1e-4", "aux_weight=0.5", "terms.aux=false", "betas=[0.9,0.99]", "t=x"
    )
    assert res.returncode == 0, res.stderr
    assert [(r["module"], r["params"]) for r in commands(run_dir)] == [
        ("opt", {"lr": 0.0001, "betas": [0.9, 0.99]}),
        ("loss", {"aux_weight": 0.5, "terms.aux": False}),
        ("custom", {"t": "x"}),
    ]


def test_betas_as_python_writes_them_are_a_list(run_dir: str, cli: Any) -> None:
    """`betas=0.9,0.99` and `betas=(0.9, 0.99)` were sent as the strings '0.9,0.99' and
    '(0.9, 0.99)', and the run refused them: numbers with commas are a list. A string with
    commas that are not all numbers stays a string."""
    assert cli(run_dir, "init").returncode == 0
    for given in ("0.9,0.99", "(0.9, 0.99)", "[0.9, 0.99]"):
        assert cli(run_dir, "opt", "set_params", f"betas={given}").returncode == 0
    assert cli(run_dir, "custom", "set_params", "tag=a,b").returncode == 0
    assert [r["params"] for r in commands(run_dir)] == [{"betas": [0.9, 0.99]}] * 3 + [
        {"tag": "a,b"}
    ]


def test_module_commands_and_their_options_write_the_right_records(run_dir: str, cli: Any) -> None:
    assert cli(run_dir, "init").returncode == 0
    assert os.path.exists(RunPaths(run_dir).commands)
    calls = [
        ("opt", "set_params", "lr=0.01", "--at-step", "100"),
        ("loss", "set_params", "aux=0.5", "--ramp", "20", "--shape", "cosine"),
        ("custom", "set_params", "temp=2"),
        ("pause",),
        ("resume",),
        ("stop",),
        ("checkpoint", "--path", "/tmp/x.pt"),
        ("pause", "--at-step", "7"),
        ("stop", "--at-step", "9"),
        ("checkpoint", "--at-step", "8"),
        ("evaluate", "--at-step", "5"),
        ("undo",),
        ("undo", "--cmd-id", "FIRST"),
        ("cancel", "FIRST"),
    ]
    first = None
    for argv in calls:
        res = cli(run_dir, *[first if a == "FIRST" else a for a in argv])
        assert res.returncode == 0, (argv, res.stderr)
        first = first or res.stdout.strip()
    # an id that names no command of the run is refused at once (the run would reject it)
    before = len(commands(run_dir))
    for argv in (("undo", "--cmd-id", "ABC"), ("cancel", "ABC")):
        res = cli(run_dir, *argv)
        assert res.returncode == 2 and "no command 'ABC' in" in res.stderr, (argv, res.stderr)
    # a shape without a ramp, and a key given twice, are refused too
    res = cli(run_dir, "set", "lr=1e-3", "--shape", "cosine")
    assert res.returncode == 2 and "--shape shapes a ramp" in res.stderr
    res = cli(run_dir, "set", "lr=1e-3", "lr=2e-3")
    assert res.returncode == 2 and "lr is given twice" in res.stderr
    assert len(commands(run_dir)) == before
    got = [
        (r["module"], r["op"], r["params"], r["at_step"], r["transition"])
        for r in commands(run_dir)
    ]
    assert got == [
        ("opt", "set_params", {"lr": 0.01}, 100, None),
        ("loss", "set_params", {"aux": 0.5}, None, {"steps": 20, "shape": "cosine"}),
        ("custom", "set_params", {"temp": 2}, None, None),
        ("control", "pause", {}, None, None),
        ("control", "resume", {}, None, None),
        ("control", "stop", {}, None, None),
        ("control", "checkpoint", {"path": "/tmp/x.pt"}, None, None),
        ("control", "pause", {}, 7, None),
        ("control", "stop", {}, 9, None),
        ("control", "checkpoint", {}, 8, None),
        ("control", "evaluate", {}, 5, None),
        ("control", "undo", {}, None, None),
        ("control", "undo", {"cmd_id": first}, None, None),
        ("control", "cancel", {"cmd_id": first}, None, None),
    ]


def test_undo_from_the_cli_reverts_last_and_named_changes(run: Run, run_dir: str, cli: Any) -> None:
    first = cli(run_dir, "opt", "set_params", "lr=0.05").stdout.strip()
    run.steps()
    cli(run_dir, "loss", "set_params", "smooth=0.3")
    run.steps()
    assert cli(run_dir, "undo").returncode == 0
    run.steps()
    assert run.weights["smooth"] == 0.1 and run.opt.param_groups[0]["lr"] == 0.05
    assert cli(run_dir, "undo", "--cmd-id", first).returncode == 0
    run.steps()
    assert run.opt.param_groups[0]["lr"] == 0.1
    assert [e.get("undo_of") for e in read_ledger(run_dir)][2:] == [
        read_ledger(run_dir)[1]["cmd_id"],
        first,
    ]
    # an undo of an undo: refused at once (it was sent, and the run rejected it later)
    commands = Path(run_dir, "hotcb.commands.jsonl")
    sent = commands.read_text()
    again = cli(run_dir, "undo", "--cmd-id", "#4")
    assert again.returncode == 2 and "is an undo: control undo cannot be undone" in again.stderr
    assert commands.read_text() == sent


def test_wait_prints_the_ledger_entry_and_exits_1_when_rejected(run: Run, run_dir: str) -> None:
    def cli_while_training(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "hotcb", "--dir", run_dir, *args]
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=SUBPROCESS_ENV
        )
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            run.steps()
            time.sleep(0.01)  # the loop's own pace; the wait is on the process above
        out, err = proc.communicate(timeout=30)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    ok = cli_while_training("set", "smooth=0.25", "--wait")
    assert ok.returncode == 0, ok.stderr
    assert "[cli] loss set_params -> applied (smooth: 0.1 -> 0.25)" in ok.stdout
    # refused by the run's published bounds before it is written: exit 2, nothing to wait for
    bad = cli_while_training("opt", "set_params", "lr=50", "--wait")
    assert bad.returncode == 2 and "lr=50 is above the maximum 10" in bad.stderr
    # rejected by the run itself (no such callback): --wait prints the entry and exits 1
    bad = cli_while_training("cb", "set_params", "nope", "k=1", "--wait")
    assert bad.returncode == 1
    assert "-> rejected" in bad.stdout and "no callback 'nope' is loaded" in bad.stdout


def test_a_command_after_an_unfinished_hand_written_line_is_applied_on_its_own(
    run: Run, run_dir: str
) -> None:
    """A person writing the commands file by hand leaves a line without its end; a command
    sent meanwhile starts on a line of its own: applied, not glued to the unfinished line and
    rejected with it (its id was then never in the ledger, and ``wait`` said it still waited)."""
    paths = RunPaths(run_dir)
    with open(paths.commands, "a") as f:
        f.write('{"cmd_id":"hand1","module":"opt","op":"set_params","params":{"lr":0.0041}')
    client = HotClient(run_dir)
    sent = client.opt(lr=0.0042)
    run.steps(2)
    entry = client.wait(sent, timeout=30)
    assert entry["decision"] == "applied" and entry["changes"]["lr"]["new"] == 0.0042
    with open(paths.commands, "a") as f:  # the hand-written line's end, too late
        f.write("}\n")
    run.steps(2)
    ledger = read_ledger(run_dir)
    assert [e["decision"] for e in ledger if e.get("cmd_id") == sent] == ["applied"]
    rejected = [e for e in ledger if e["decision"] == "rejected"]
    assert len(rejected) == 2 and all("not valid JSON" in e["error"] for e in rejected)
    assert run.opt.param_groups[0]["lr"] == 0.0042


def test_a_cmd_id_the_run_already_has_is_refused_before_it_is_written(
    run: Run, run_dir: str
) -> None:
    """The run skips a command whose id it has seen (a duplicate): a sender that names an id
    is told at once, not left waiting on the first command's entry."""
    client = HotClient(run_dir)
    client.send("opt", "set_params", params={"lr": 0.002}, cmd_id="mine1")
    run.steps()
    with pytest.raises(CommandError, match="cmd_id 'mine1' is taken"):
        client.send("opt", "set_params", params={"lr": 0.0021}, cmd_id="mine1")
    for bad in ("a\nb", "a\u200bb", "a\x85b", " "):  # a newline, zero-width, C1, blank
        with pytest.raises(CommandError, match="printable"):
            client.send("opt", "set_params", params={"lr": 0.0021}, cmd_id=bad)
    # the same command again (a sender's retry after its crash): its id, nothing written twice
    assert client.send("opt", "set_params", params={"lr": 0.002}, cmd_id="mine1") == "mine1"
    assert [c["cmd_id"] for c in commands(run_dir)] == ["mine1"]
    client.send("opt", "set_params", params={"lr": 0.0021}, cmd_id="mine2")  # a new one is fine
    # one id over two modules: a part each, both applied (the second was skipped as a duplicate)
    ids = client.set({"lr": 0.003, "smooth": 0.2}, cmd_id="both1")
    assert sorted(ids) == ["both1.loss", "both1.opt"]
    run.steps(2)
    assert [client.wait(i, timeout=30)["decision"] for i in ids] == ["applied", "applied"]
    assert run.kernel.mutable_state.get("smooth").read({}) == 0.2


def test_a_cmd_id_is_checked_under_the_commands_file_lock(run_dir: str) -> None:
    """Two senders of one id at once: the check and the write are one step under the file's
    lock, so the second sees the first's line (checked before the lock, both were written and
    the run skipped one, unsaid)."""
    import fcntl
    import threading

    client = HotClient(run_dir, create=True)
    os.makedirs(run_dir, exist_ok=True)
    fd = os.open(RunPaths(run_dir).commands, os.O_RDWR | os.O_CREAT | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another sender, writing now
    got: dict[str, str] = {}

    def send() -> None:
        try:
            got["id"] = client.send("opt", "set_params", params={"lr": 0.002}, cmd_id="mine")
        except CommandError as exc:
            got["error"] = str(exc)

    sender = threading.Thread(target=send)
    sender.start()
    sender.join(timeout=1.0)
    assert sender.is_alive()  # it waits for the lock
    other = {"cmd_id": "mine", "module": "opt", "op": "set_params", "params": {"lr": 0.001}}
    os.write(fd, (json.dumps(other) + "\n").encode())
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    sender.join(timeout=30)
    assert "cmd_id 'mine' is taken" in got.get("error", ""), got
    assert [c["params"] for c in commands(run_dir)] == [{"lr": 0.001}]


def test_status_text_and_json(run: Run, run_dir: str, cli: Any) -> None:
    cli(run_dir, "set", "lr=0.02")
    cli(run_dir, "opt", "set_params", "lr=0.5", "--at-step", "50")
    run.steps(2)
    res = cli(run_dir, "status")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "freeze   off" in text
    assert "metrics  step 2" in text and "loss=0.5" in text
    lines = {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.startswith("  ")}
    assert lines["lr"][1:4] == ["0.02", "opt", "verified"]
    assert lines["momentum"][1:4] == ["0.9", "opt", "untouched"]
    assert lines["smooth"][1:4] == ["0.1", "loss", "untouched"]
    assert "scheduled" in text and "at step 50: opt set_params" in text
    assert "opt set_params -> applied (lr: 0.1 -> 0.02)" in text

    st = json.loads(cli(run_dir, "status", "--json").stdout)
    assert st["freeze"]["mode"] == "off"
    acts = {a["param_key"]: a for a in st["actuators"]}
    assert acts["lr"]["current"] == 0.02 and acts["lr"]["state"] == "verified"
    assert [e["decision"] for e in st["ledger"]] == ["applied", "scheduled"]
    assert [e["at_step"] for e in st["pending"]] == [50]
    assert st["last_metrics"]["step"] == 2
    assert st["unread_command_bytes"] == 0


def test_status_of_a_loop_that_logs_no_metrics_is_running(run_dir: str, cli: Any) -> None:
    """The README's minimal loop records no metrics: the kernel's heartbeat tells
    ``hotcb status`` it is running, at which step."""
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    try:
        for step in range(1, 4):
            kernel.apply({"step": step, "optimizer": opt, "model": model})
        res = cli(run_dir, "status")
        assert res.returncode == 0, res.stderr
        assert f"run      {run_dir}  [running]" in res.stdout
        alive = [ln for ln in res.stdout.splitlines() if ln.startswith("alive    step ")]
        assert alive and f"pid {os.getpid()}" in alive[0]
        st = json.loads(cli(run_dir, "status", "--json").stdout)
        assert st["state"] == "running" and st["last_metrics"] is None
        assert st["heartbeat"]["step"] in (1, 2, 3)
    finally:
        kernel.close()
    # over: the state line says where it ended, and no stale "alive" line contradicts it
    res = cli(run_dir, "status")
    assert "[finished at step 3]" in res.stdout and "alive" not in res.stdout, res.stdout
    # --wait on a run that is over: not applied, so not exit code 0 (a script reads 0 as done)
    waited = cli(run_dir, "set", "lr=0.5", "--wait")
    assert waited.returncode == 1 and "(not applied: exit code 1)" in waited.stderr, waited
    assert "the run finished at step 3; the command waits" in waited.stderr
    assert cli(run_dir, "set", "lr=0.25").returncode == 0  # without --wait: queued, as asked


def test_log_shows_the_last_n_entries(run: Run, run_dir: str, cli: Any) -> None:
    empty = cli(run_dir, "log")  # it printed nothing at all
    assert empty.returncode == 0 and not empty.stdout
    assert empty.stderr.strip() == "ledger (empty): nothing applied yet"
    for v in (0.2, 0.3, 0.4):
        cli(run_dir, "loss", "set_params", f"smooth={v}")
        run.steps()
    res = cli(run_dir, "log", "-n", "2")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("#2 step 2 [cli] loss set_params -> applied (smooth: 0.2 -> 0.3)")
    assert lines[1].startswith("#3 step 3 [cli] loss set_params -> applied (smooth: 0.3 -> 0.4)")
    raw = cli(run_dir, "log", "-n", "0", "--json").stdout.splitlines()
    assert [json.loads(x)["seq"] for x in raw] == [1, 2, 3]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("set", "lr"), "hotcb: error: expected key=value, got 'lr' (e.g. lr=1e-4)"),
        (("set", "=3"), "hotcb: error: expected key=value, got '=3'"),
        (("set", "lr=NaN"), "hotcb: error: params.lr is nan; send a finite number"),
        (("opt", "set_params", "lr=Infinity"), "hotcb: error: params.lr is inf"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    run_dir: str, cli: Any, argv: tuple[str, ...], message: str
) -> None:
    res = cli(run_dir, *argv)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith(message)
    assert "Traceback" not in res.stderr
    assert not os.path.exists(RunPaths(run_dir).commands)  # nothing was sent


@pytest.mark.parametrize(
    "argv",
    [("bogus",), ("opt",), ("opt", "set_params"), ("log", "-n", "many"), ("set", "--at-step")],
)
def test_bad_syntax_exits_2_without_a_traceback(run_dir: str, cli: Any, argv: tuple) -> None:
    res = cli(run_dir, *argv)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr  # one line, no usage dump
    assert lines[0].startswith("hotcb") and "error:" in lines[0] and "--help" in lines[0]


def test_every_command_help_says_what_the_command_does(tmp_path: Any, cli: Any) -> None:
    """``hotcb freeze --help`` (and every other command's) opens with what it does, not only
    its usage line."""
    for argv in (("freeze",), ("set",), ("pause",), ("tune", "accept"), ("cb", "list")):
        res = cli(os.fspath(tmp_path), *argv, "--help")
        assert res.returncode == 0, res.stderr
        _usage, _, rest = res.stdout.partition("\n\n")
        first = rest.split("\n\n")[0].strip()
        assert first and not first.startswith(("positional", "options")), (argv, res.stdout)
    res = cli(os.fspath(tmp_path), "freeze", "--help")
    assert "prod (ignore changes;" in " ".join(res.stdout.split())


def test_status_of_a_missing_run_directory_is_an_error(tmp_path: Any, cli: Any) -> None:
    res = cli(os.fspath(tmp_path / "nowhere"), "status")
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"hotcb: error: no run directory at {tmp_path / 'nowhere'}; ")
    assert "init' creates one" in line


def test_client_wait_times_out_with_a_useful_message(run_dir: str) -> None:
    client = HotClient(run_dir)
    cid = client.custom(x=1)
    with pytest.raises(TimeoutError, match=f"no ledger entry for {cid} after 0.1s"):
        client.wait(cid, timeout=0.1)


def test_client_wait_returns_the_final_entry_not_the_scheduled_one(run: Run, run_dir: str) -> None:
    client = HotClient(run_dir)
    cid = client.send("loss", "set_params", params={"smooth": 0.5}, at_step=3)
    run.steps(4)
    entry = client.wait(cid, timeout=5)
    assert entry["decision"] == "applied" and entry["step"] == 3
    assert [e["decision"] for e in client.entries(cid)] == ["scheduled", "applied"]


def test_client_wait_finds_its_entry_however_json_wrote_the_id(run: Run, run_dir: str) -> None:
    """``wait`` skips the ledger lines that cannot be its entry without parsing them (a 100k
    entry ledger took 0.8 s and 250 MB per ``--wait``): an id JSON escapes is still found, and
    an entry that only mentions the id (the cancel of it) is not taken for its own."""
    client = HotClient(run_dir)
    odd = client.send("loss", "set_params", params={"smooth": 0.1}, cmd_id="lr-Ünï-1")
    plain = client.send("loss", "set_params", params={"smooth": 0.2}, at_step=3)
    client.cancel(plain)
    run.steps(1)
    with open(RunPaths(run_dir).ledger) as f:
        assert '"lr-\\u00dcn\\u00ef-1"' in f.read()  # as JSON wrote it
    assert client.wait(odd, timeout=5)["changes"]["smooth"]["new"] == 0.1
    entry = client.wait(plain, timeout=5)
    assert (entry["cmd_id"], entry["decision"]) == (plain, "noop")


def test_client_wait_on_a_command_scheduled_later_says_so(run: Run, run_dir: str) -> None:
    """``set lr=… --at-step 1000000 --wait`` timed out with "no ledger entry …: is the run
    alive?" while the ledger had its ``scheduled`` entry and the run trained on."""
    client = HotClient(run_dir)
    cid = client.send("loss", "set_params", params={"smooth": 0.5}, at_step=1_000_000)
    run.steps(2)
    with pytest.raises(TimeoutError) as info:
        client.wait(cid, timeout=0.5)
    assert str(info.value).startswith(f"{cid} is scheduled for step 1000000 (since step 1): "
                                      "not applied after 0.5s; ")  # fmt: skip
    assert f"cancel {cid}' cancels it" in str(info.value)
    run.close()  # the run ends before the step: "log shows it when it lands" it would not
    with pytest.raises(TimeoutError) as info:
        client.wait(cid, timeout=0.5)
    assert str(info.value).startswith(f"{cid} is scheduled for step 1000000 (since step 1), and "
                                      "the run finished at step 2 before it (a resume from a "
                                      "checkpoint still applies it at that step)")  # fmt: skip


def test_client_waits_for_the_list_set_returns(run: Run, run_dir: str) -> None:
    """`client.wait(client.set({...}))`: set() returns a list of ids (one per module); wait
    took only one, never matched the list, and timed out saying "is the run alive?"."""
    client = HotClient(run_dir)
    ids = client.set({"lr": 0.02, "smooth": 0.5})  # opt and loss: two commands
    assert isinstance(ids, list) and len(ids) == 2
    run.steps(1)
    entries = client.wait(ids, timeout=30)
    assert [e["cmd_id"] for e in entries] == ids
    assert [e["decision"] for e in entries] == ["applied", "applied"]
    with pytest.raises(TypeError, match="takes a cmd_id or a list of them"):
        client.wait(5, timeout=1)  # type: ignore[call-overload]


def test_client_on_a_run_that_is_over_queues_no_stop(run: Run, run_dir: str) -> None:
    """A stop queued on a finished run stopped the next run in the directory at its first
    step (the CLI says "nothing to stop"; the client queued it). wait() on a finished run
    says the run is over, not "is the run alive?"."""
    client = HotClient(run_dir)
    run.kernel.close()
    over = client.run_over()
    assert over is not None and over.startswith("finished at step")
    before = commands(run_dir)
    with pytest.raises(CommandError, match=f"the run {over}: nothing to stop"):
        client.stop()
    assert commands(run_dir) == before  # nothing queued
    cid = client.loss(smooth=0.3)  # other commands wait for the next run, as documented
    with pytest.raises(TimeoutError, match=f"the run {over}; the command waits in the commands"):
        client.wait(cid, timeout=0.2)


def test_client_tune_accept_takes_a_number_and_says_why_there_is_none(run_dir: str) -> None:
    client = HotClient(run_dir)
    with pytest.raises(CommandError, match=r"no proposal 'P3'; pending: none; the tuner is off"):
        client.tune_accept(3)  # an AttributeError ('int' has no 'upper') before
    with pytest.raises(CommandError, match=r"no proposal 'x3' \(ids look like P3\)"):
        client.tune_reject("x3")
    before = commands(run_dir)  # ids that name no command: refused here, as by the CLI
    for call in (lambda: client.undo("bogus"), lambda: client.cancel("bogus")):
        with pytest.raises(CommandError, match="no command 'bogus' in"):
            call()
    assert commands(run_dir) == before


def test_log_follow_prints_new_entries_as_they_come(run: Run, run_dir: str) -> None:
    run.kernel.flush()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotcb", "--dir", run_dir, "log", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=SUBPROCESS_ENV,
    )
    try:
        client = HotClient(run_dir, source="cli")
        for v in (0.2, 0.3):
            client.loss(smooth=v)
            run.steps()
        line1 = proc.stdout.readline()  # blocks until --follow prints: the wait is on output
        line2 = proc.stdout.readline()
        assert "loss set_params -> applied (smooth: 0.1 -> 0.2)" in line1
        assert "loss set_params -> applied (smooth: 0.2 -> 0.3)" in line2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_dir_is_accepted_after_the_command_too(run_dir: str, cli: Any) -> None:
    assert cli(None, "init", "--dir", run_dir).returncode == 0
    res = cli(None, "opt", "set_params", "lr=1e-3", "--dir", run_dir)
    assert res.returncode == 0, res.stderr
    record = list(jsonl.iter_records(RunPaths(run_dir).commands))[-1]
    assert record["params"] == {"lr": 1e-3}
    before = cli(run_dir, "status", "--json").stdout
    after = cli(None, "status", "--json", "--dir", run_dir).stdout
    assert json.loads(before)["run_dir"] == json.loads(after)["run_dir"] == os.path.abspath(run_dir)


def test_status_says_whether_the_run_is_running_or_stopped(run_dir: str, cli: Any) -> None:
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    kernel.apply({"step": 0, "metrics": {"loss": 1.0}})
    kernel.flush()
    assert json.loads(cli(run_dir, "status", "--json").stdout)["state"] == "running"
    HotClient(run_dir).stop()
    kernel.apply({"step": 1, "metrics": {"loss": 0.9}})
    kernel.close()
    assert kernel.stop_requested
    res = cli(run_dir, "status")
    assert res.stdout.splitlines()[0].endswith("[stopped at step 1]")  # stopped, then closed


def test_the_cancel_a_scheduled_wait_suggests_runs_as_printed_in_a_dir_with_spaces(
    tmp_path: Any,
) -> None:
    """It said ``cancel --cmd-id ID`` (cancel takes the id alone: exit 2) and left the run
    directory unquoted (a path with a space broke the command pasted into a shell)."""
    run = os.fspath(tmp_path / "my runs" / "exp 1")
    with StepDriver(run, weights={"aux": 0.5}) as drv:
        drv.steps(1)
        cid = drv.client.send("loss", "set_params", params={"aux": 0.1}, at_step=10**6)
        drv.steps(1)
        with pytest.raises(TimeoutError) as caught:
            drv.client.wait(cid, timeout=0.1)
        (suggested,) = [s for s in str(caught.value).split("'") if " cancel " in s]
        env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
        python = f"{sys.executable} -m hotcb"
        done = subprocess.run(["bash", "-c", suggested.replace("hotcb", python, 1)],
                              capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        drv.steps(1)
        assert [e["decision"] for e in read_ledger(run) if e.get("cmd_id") == cid] == [
            "scheduled", "noop",
        ]  # fmt: skip


def test_status_shows_every_metric_the_last_step_logged(run_dir: str, cli: Any) -> None:
    """A callback's ``grad/…`` record after the loop's at the same step: ``hotcb status``
    showed the callback's alone, and the loss was gone from it."""
    from hotcb.metrics import MetricsCollector

    with MetricsCollector(run_dir) as m:
        m.log(1, {"loss": 0.75, "acc": 0.5})
        m.log(2, {"loss": 0.5, "acc": 0.625})
        m.log(2, {"grad/global_norm": 1.25})
    text = cli(run_dir, "status").stdout
    (line,) = [ln for ln in text.splitlines() if ln.startswith("metrics  ")]
    assert "step 2 " in line and "loss=0.5, acc=0.625, grad/global_norm=1.25" in line, line
    st = json.loads(cli(run_dir, "status", "--json").stdout)
    assert st["last_metrics"]["metrics"] == {"loss": 0.5, "acc": 0.625, "grad/global_norm": 1.25}
    with MetricsCollector(run_dir) as m:  # more than the line shows: it says how many more
        m.log(3, {f"grad/norm/{i}": 1.0 for i in range(8)})
    (line,) = [ln for ln in cli(run_dir, "status").stdout.splitlines() if ln.startswith("metrics")]
    assert line.endswith("grad/norm/5=1, … (2 more)"), line
