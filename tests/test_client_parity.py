"""HotClient refuses what the CLI refuses, and both say what happened in the run's words."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest

from hotcb import HotClient, HotKernel, jsonl, mutable_state
from hotcb.actuators import ActuatorType, HotcbActuator
from hotcb.errors import CommandError
from hotcb.runfiles import RunPaths
from hotcb.testing import wait_for

SUBPROCESS_ENV = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}


def commands(run_dir: str) -> list[dict[str, Any]]:
    return list(jsonl.iter_records(RunPaths(run_dir).commands))


@pytest.fixture
def kernel(run_dir: str) -> Any:
    """A real kernel with an ``opt`` knob ``lr`` and a ``loss`` knob ``ce``, one step in."""
    values = {"lr": 0.1, "ce": 1.0}
    knobs = [
        HotcbActuator(key, ActuatorType.FLOAT, apply_fn=lambda v, env, k=key: values.update({k: v}),
                      read_fn=lambda env, k=key: values[k], min_value=0.0, max_value=10.0,
                      group=group)
        for key, group in (("lr", "opt"), ("ce", "loss"))
    ]  # fmt: skip
    k = HotKernel(run_dir, mutable_state=mutable_state(knobs), poll_interval_sec=0)
    k.apply({"step": 0})
    yield k
    k.close()


def test_client_refuses_cb_set_params_without_params_and_a_missing_file(run_dir: str) -> None:
    """The CLI required a key=value and refused a missing --file; the client queued both and
    the run rejected them later (the file with a bare "[Errno 2] ...")."""
    client = HotClient(run_dir, create=True)
    with pytest.raises(CommandError, match="cb set_params needs at least one key=value"):
        client.cb("set_params", "printer")
    with pytest.raises(CommandError, match="cb set_params needs at least one key=value"):
        client.send_record({"module": "cb", "op": "set_params", "id": "printer"})
    missing = os.path.join(run_dir, "nonexistent.py")
    with pytest.raises(CommandError, match=re.escape(f"no such file: {missing}")):
        client.cb_load("printer", file=missing, symbol="Printer")
    assert commands(run_dir) == []


def test_wait_for_an_id_never_sent_says_so(run_dir: str, kernel: HotKernel) -> None:
    """On a live run, wait("NOPE") asked "is the run alive?"."""
    client = HotClient(run_dir)
    client.opt(lr=0.2)
    with pytest.raises(TimeoutError) as info:
        client.wait("NOPE", timeout=0.05)
    assert f"no command with id 'NOPE' was sent to {os.path.abspath(run_dir)}" in str(info.value)
    assert "is the run alive" not in str(info.value)


def _cli(run_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hotcb", "--dir", run_dir, *args],
                          capture_output=True, text=True, timeout=60, env=SUBPROCESS_ENV)  # fmt: skip


@pytest.mark.parametrize("value", ["nan", "NaN", "Nan", "inf", "-inf", "INF", "Infinity"])
def test_cli_refuses_nan_and_inf_in_any_case_as_not_finite(
    run_dir: str, kernel: HotKernel, value: str
) -> None:
    """`set lr=nan` said "got str 'nan'", `lr=NaN` "params.lr is nan"."""
    res = _cli(run_dir, "set", f"lr={value}")
    assert res.returncode == 2
    assert res.stderr.startswith("hotcb: error: params.lr is ") and "send a finite" in res.stderr
    assert "str" not in res.stderr


def test_actuator_errors_use_the_kernels_words(run_dir: str, kernel: HotKernel) -> None:
    """The client said "unknown actuator 'lrr' in opt; did you mean", the kernel "in group
    'opt'; known:"; and "'lr' is a opt actuator"."""
    res = _cli(run_dir, "custom", "set_params", "lr=0.5")
    assert res.returncode == 2
    assert "'lr' is an opt actuator, not custom" in res.stderr
    res = _cli(run_dir, "opt", "set_params", "lrr=0.5")
    assert res.returncode == 2
    cid = HotClient(run_dir, validate=False).opt(lrr=0.5)
    kernel.apply({"step": 1})
    said = HotClient(run_dir).wait(cid, timeout=5)["error"]
    assert said == "unknown actuator 'lrr' in group 'opt'; known: lr"
    assert res.stderr.startswith(f"hotcb: error: {said}; did you mean 'lr'?")


def test_wait_on_a_run_that_crashes_prints_the_id_and_exits_1(
    run_dir: str, tmp_path: Any, start_trainer: Any
) -> None:
    """The CLI waited out --timeout, then exited 2 without ever printing the cmd_id."""
    tr = start_trainer(run_dir, os.fspath(tmp_path / "trace.jsonl"), steps=100_000, step_delay=0.01)
    tr.wait_step(1)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "hotcb", "--dir", run_dir, "set", "lr=0.002", "--at-step",
         "1000000000", "--wait", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=SUBPROCESS_ENV,
    )  # fmt: skip
    ledger = RunPaths(run_dir).ledger
    wait_for(lambda: any(e.get("decision") == "scheduled" for e in jsonl.iter_records(ledger)),
             60, what="the scheduled entry")  # fmt: skip
    tr.kill()  # kill -9 while the CLI waits for the step
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 1, err
    sent = [c["cmd_id"] for c in commands(run_dir) if c.get("at_step") == 1_000_000_000]
    assert out.split() == sent
    assert "crashed" in err and "waits in the commands file for the next run" in err


def test_cli_says_file_too_large_at_a_file_size_limit(run_dir: str) -> None:
    """EFBIG (ulimit -f) said "free disk space"."""
    HotClient(run_dir, create=True).opt(lr=0.005)
    size = os.path.getsize(RunPaths(run_dir).commands)
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 50}, resource.RLIM_INFINITY))\n"
        "from hotcb.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, "--dir", run_dir, "set", "lr=0.002"],
                         capture_output=True, text=True, timeout=60, env=SUBPROCESS_ENV)  # fmt: skip
    assert res.returncode == 2 and res.stdout == ""
    assert "file too large (a file-size limit: ulimit -f" in res.stderr
    assert "free disk space" not in res.stderr


def test_a_set_of_two_modules_is_written_whole_or_not_at_all(run_dir: str) -> None:
    """`set lr=… aux=…` is two commands (opt, loss). At a file size limit the first was written
    and the second not, and the CLI said nothing was written: the lr change was applied by the
    run, with no id printed to wait on or cancel, and sending it again made it twice."""
    HotClient(run_dir, create=True).opt(lr=0.005)
    commands_file = RunPaths(run_dir).commands
    size = os.path.getsize(commands_file)
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size + size * 3 // 2}, "
        "resource.RLIM_INFINITY))\n"
        "from hotcb.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )  # room for one more command, not for two
    argv = [sys.executable, "-c", code, "--dir", run_dir, "set", "lr=0.002", "aux_weight=0.5"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=SUBPROCESS_ENV)
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert "the commands (opt set_params, loss set_params) were not written" in res.stderr
    assert os.path.getsize(commands_file) == size  # nothing of it: the run applies nothing


def test_status_and_set_say_a_freeze_the_run_has_not_read_yet(
    run_dir: str, kernel: HotKernel
) -> None:
    """Right after `freeze --mode prod`, status said `freeze off` and "N bytes of commands not
    yet read"; `set` on a frozen run printed only its id, and the run ignored it."""
    assert _cli(run_dir, "freeze", "--mode", "prod").returncode == 0
    status = _cli(run_dir, "status")
    assert "freeze   off (prod sent, not yet read by the run)" in status.stdout
    res = _cli(run_dir, "set", "lr=0.3")
    assert res.returncode == 0 and len(res.stdout.split()) == 1
    assert "the run is frozen (freeze prod): it will ignore this command (ignored_freeze)" in (
        res.stderr
    )
    assert "freeze --mode off" in res.stderr
    kernel.apply({"step": 1})
    status = _cli(run_dir, "status")
    assert "freeze   prod\n" in status.stdout and "not yet read" not in status.stdout
    res = _cli(run_dir, "set", "lr=0.4")  # frozen by the file now
    assert "it will ignore this command (ignored_freeze)" in res.stderr
    res = _cli(run_dir, "pause")  # run control passes every freeze mode: no hint
    assert res.returncode == 0 and "frozen" not in res.stderr
    res = _cli(run_dir, "tune", "enable", "--mode", "observe")  # the tuner's commands too
    assert res.returncode == 0 and "it will ignore this command (ignored_freeze)" in res.stderr
    res = _cli(run_dir, "tune", "disable")  # passes every freeze mode
    assert res.returncode == 0 and "frozen" not in res.stderr


def test_opt_and_loss_take_the_commands_own_fields(run_dir: str, kernel: HotKernel) -> None:
    """``client.opt(lr=0.2, at_step=3)`` sent ``at_step`` as a knob: the run rejected the whole
    command ("unknown actuator 'at_step'") and the lr never moved."""
    client = HotClient(run_dir)
    lr_id = client.opt(lr=0.2, at_step=3, reason="warm-up over")  # (reason was a knob too)
    ce_id = client.loss(ce=2.0, cmd_id="weight-up", at_step=2)
    assert ce_id == "weight-up"
    sent = {c["cmd_id"]: c for c in commands(run_dir)}
    assert sent[lr_id]["params"] == {"lr": 0.2} and sent[lr_id]["at_step"] == 3
    assert sent[lr_id]["reason"] == "warm-up over"
    assert sent[ce_id]["params"] == {"ce": 2.0} and sent[ce_id]["at_step"] == 2
    for step in range(1, 5):
        kernel.apply({"step": step})
    applied = {e["cmd_id"]: e for e in jsonl.iter_records(RunPaths(run_dir).ledger)
               if e.get("cmd_id") in (lr_id, ce_id)}  # fmt: skip
    assert applied[lr_id]["decision"] == "applied" and applied[lr_id]["step"] == 3
    assert applied[ce_id]["decision"] == "applied" and applied[ce_id]["step"] == 2
