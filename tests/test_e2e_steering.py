"""End to end: the real trainer process steered by the real CLI and by concurrent writers.

The trainer (``python -m hotcb.testing.trainer``) writes one trace line per step *after*
``kernel.apply`` returned, with the optimizer's lr and the loss weights it trains with, so the
trace shows exactly from which step a change took effect.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from hotcb import HotClient, jsonl
from hotcb.ledger import checkpoint_path
from hotcb.runfiles import RunPaths
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow

LR0 = 0.01  # the trainer's default --lr


def entry_of(run_dir: str, cmd_id: str) -> Any:
    """A predicate for wait_for: the final (non-scheduled) ledger entry of ``cmd_id``."""

    def find() -> dict[str, Any] | None:
        for e in read_ledger(run_dir):
            if e.get("cmd_id") == cmd_id and e.get("decision") != "scheduled":
                return e
        return None

    return find


def test_cli_lr_change_lands_at_the_ledger_step_and_stays_then_stop_ends_the_run(
    run_dir: str, tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    trace = os.fspath(tmp_path / "trace.jsonl")
    tr = start_trainer(run_dir, trace, steps=5000, step_delay=0.01)
    tr.wait_step(10)
    res = cli(run_dir, "opt", "set_params", "lr=0.002", "--wait", "--timeout", "30")
    assert res.returncode == 0, res.stderr
    assert "opt set_params -> applied (lr: 0.01 -> 0.002)" in res.stdout
    (entry,) = [e for e in read_ledger(run_dir) if e["module"] == "opt"]
    at = entry["step"]
    tr.wait_step(at + 20)
    stop = cli(run_dir, "stop", "--wait")
    assert stop.returncode == 0, stop.stderr
    code, out, err = tr.finish()
    assert code == 0, err
    stop_step = next(e for e in read_ledger(run_dir) if e["op"] == "stop")["step"]
    assert f"stopped at step {stop_step}" in out
    rows = tr.steps()
    assert rows[-1]["step"] == stop_step  # stop ends the run at that safe point
    assert [r["step"] for r in rows] == list(range(stop_step + 1))
    assert all(r["lr"] == LR0 for r in rows if r["step"] < at)
    assert all(r["lr"] == 0.002 for r in rows if r["step"] >= at)


_WRITER = """
import sys
from hotcb import HotClient
client = HotClient(sys.argv[1], source="writer" + sys.argv[2])
w = int(sys.argv[2])
ids = [client.loss(l2=(w * 1000 + i) * 1e-7) for i in range(int(sys.argv[3]))]
print("\\n".join(ids))
"""


def test_four_writer_processes_250_commands_each_all_applied_exactly_once(
    run_dir: str, tmp_path: Any, start_trainer: Any
) -> None:
    trace = os.fspath(tmp_path / "trace.jsonl")
    tr = start_trainer(run_dir, trace, steps=100_000, step_delay=0.002)
    tr.wait_step(1)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, run_dir, str(w), "250"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    sent: list[str] = []
    for p in writers:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        sent += out.split()
    assert len(sent) == len(set(sent)) == 1000

    def all_handled() -> bool:
        return {e["cmd_id"] for e in read_ledger(run_dir)} >= set(sent)

    wait_for(all_handled, 60, what="1000 commands in the ledger")
    HotClient(run_dir).stop()
    code, _, err = tr.finish()
    assert code == 0, err
    ledger = read_ledger(run_dir)
    counts = Counter(e["cmd_id"] for e in ledger)
    assert all(counts[c] == 1 for c in sent)
    assert {e["decision"] for e in ledger if e["cmd_id"] in set(sent)} == {"applied"}
    assert [e["seq"] for e in ledger] == list(range(1, len(ledger) + 1))
    cursors = [e["cursor"] for e in ledger]
    assert cursors == sorted(cursors)
    commands = list(jsonl.iter_records(RunPaths(run_dir).commands))
    assert len(commands) == 1001  # no line torn or lost: every one parses
    # per writer, commands were applied in the order that writer sent them
    for w in range(4):
        mine = [e["params"]["l2"] for e in ledger if e["source"] == f"writer{w}"]
        assert mine == sorted(mine) and len(mine) == 250


def test_torn_and_bad_lines_with_a_running_trainer(
    run_dir: str, tmp_path: Any, start_trainer: Any
) -> None:
    trace = os.fspath(tmp_path / "trace.jsonl")
    tr = start_trainer(run_dir, trace, steps=100_000, step_delay=0.02)  # until stopped
    tr.wait_step(2)
    commands = RunPaths(run_dir).commands
    good = '{"cmd_id":"torn","source":"hand","module":"loss","op":"set_params","params":{"l2":0.001}}\n'
    bad = [
        "garbage {{{\n",
        '{"cmd_id":"mod","module":"warp","op":"go","params":{}}\n',
        '{"cmd_id":"op","module":"opt","op":"explode","params":{"lr":1}}\n',
        '{"cmd_id":"nan","module":"opt","op":"set_params","params":{"lr":NaN}}\n',
        '{"cmd_id":"oob","module":"opt","op":"set_params","params":{"lr":1e9}}\n',
    ]
    with open(commands, "ab") as f:
        f.write(good[:40].encode())
    now = tr.last_step()
    tr.wait_step(now + 10)  # ten polls later the half line is still not taken
    assert [e for e in read_ledger(run_dir) if e["cmd_id"] == "torn"] == []
    with open(commands, "ab") as f:
        f.write((good[40:] + "".join(bad)).encode())
    applied = wait_for(entry_of(run_dir, "torn"), 30, what="the torn command")
    assert applied["decision"] == "applied"
    wait_for(entry_of(run_dir, "oob"), 30)
    stop = HotClient(run_dir, source="test").stop()
    code, out, err = tr.finish()
    assert code == 0, err
    stopped = wait_for(entry_of(run_dir, stop), 30)
    assert f"stopped at step {stopped['step']}" in out
    assert tr.last_step() == stopped["step"]  # training went on through every bad line
    rows = {r["step"]: r for r in tr.steps()}
    assert rows[applied["step"]]["weights"]["l2"] == 0.001
    assert rows[applied["step"] - 1]["weights"]["l2"] == 0.0
    ledger = read_ledger(run_dir)
    assert Counter(e["cmd_id"] for e in ledger)["torn"] == 1
    by_id = {e["cmd_id"]: e for e in ledger}
    garbage = [e for e in ledger if e["cmd_id"].startswith("@")]
    assert len(garbage) == 1 and "line is not valid JSON" in garbage[0]["error"]
    for cid, reason in {
        "mod": "unknown module 'warp'",
        "op": "unknown op 'explode'",
        "nan": "params.lr is nan",
        "oob": "is above the maximum 10",
    }.items():
        assert by_id[cid]["decision"] == "rejected"
        assert reason in by_id[cid]["error"]
    assert all(r["lr"] == LR0 for r in rows.values())


def test_kill_9_then_restart_applies_old_commands_never_again_and_new_ones_once(
    run_dir: str, tmp_path: Any, start_trainer: Any
) -> None:
    client = HotClient(run_dir, source="test")
    first = start_trainer(run_dir, os.fspath(tmp_path / "a.jsonl"), steps=100_000, step_delay=0.01)
    first.wait_step(1)
    old = [client.loss(l2=0.001 * (i + 1)) for i in range(3)]
    for cid in old:
        wait_for(entry_of(run_dir, cid), 30)
    first.proc.kill()  # SIGKILL: no close(), no flush beyond what the ledger already has
    first.finish()
    assert first.proc.returncode == -9
    new = [client.loss(ce=0.5), client.opt(lr=0.004)]  # appended while nothing runs
    second = start_trainer(run_dir, os.fspath(tmp_path / "b.jsonl"), steps=100_000, step_delay=0.01)
    for cid in new:
        wait_for(entry_of(run_dir, cid), 60)
    client.stop()
    code, _, err = second.finish()
    assert code == 0, err
    ledger = read_ledger(run_dir)
    counts = Counter(e["cmd_id"] for e in ledger)
    assert all(counts[c] == 1 for c in old + new)
    assert {e["decision"] for e in ledger if e["cmd_id"] in old + new} == {"applied"}
    assert [e["seq"] for e in ledger] == list(range(1, len(ledger) + 1))
    rows = second.steps()
    assert {r["weights"]["l2"] for r in rows} == {0.0}  # the old l2 changes were not re-applied
    assert rows[-1]["weights"]["ce"] == 0.5 and rows[-1]["lr"] == 0.004


def test_pause_blocks_the_loop_but_commands_still_get_through(
    run_dir: str, tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    trace = os.fspath(tmp_path / "trace.jsonl")
    tr = start_trainer(run_dir, trace, steps=100_000, step_delay=0.005)
    tr.wait_step(3)
    res = cli(run_dir, "pause", "--wait")
    assert res.returncode == 0 and "control pause -> applied" in res.stdout, res.stderr
    paused_at = next(e for e in read_ledger(run_dir) if e["op"] == "pause")["step"]
    # while paused: a change and a checkpoint are read and handled at the same safe point ...
    change = cli(run_dir, "set", "l2=0.002", "--wait")
    ckpt = os.path.join(run_dir, "paused.pt")  # paths stay inside the run (docs/security.md)
    saved = cli(run_dir, "checkpoint", "--path", ckpt, "--wait")
    assert change.returncode == 0 and saved.returncode == 0, change.stderr + saved.stderr
    assert f"control checkpoint -> applied: {ckpt}" in saved.stdout  # where it went
    # the trainer's own file name; --wait prints where it is from the shell's directory
    home = os.path.dirname(run_dir)
    default = cli(os.path.basename(run_dir), "checkpoint", "--wait", cwd=home)
    assert default.returncode == 0 and "control checkpoint -> applied: " in default.stdout
    printed = default.stdout.split("applied: ", 1)[1].strip()
    assert os.path.isfile(os.path.join(home, printed)), default.stdout
    ledger = read_ledger(run_dir)
    assert {e["step"] for e in ledger} == {paused_at}
    assert os.path.exists(ckpt)
    saves = [e for e in ledger if e["op"] == "checkpoint"]  # ledgered relative to the run
    assert [e["checkpoint"] for e in saves] == ["paused.pt", f"ckpt_{paused_at}.pt"]
    assert [checkpoint_path(e, run_dir) for e in saves] == [ckpt, printed]
    # ... and the loop did not move: its trace line for the paused step is not written yet
    assert tr.last_step() == paused_at - 1
    assert tr.proc.poll() is None
    res = cli(run_dir, "resume", "--wait")
    assert res.returncode == 0, res.stderr
    tr.wait_step(paused_at + 5)
    rows = {r["step"]: r for r in tr.steps()}
    assert rows[paused_at]["weights"]["l2"] == 0.002
    assert rows[paused_at - 1]["weights"]["l2"] == 0.0
    # stop gets through a pause too
    assert cli(run_dir, "pause", "--wait").returncode == 0
    stop = cli(run_dir, "stop", "--wait")
    assert stop.returncode == 0, stop.stderr
    code, out, err = tr.finish()
    assert code == 0, err
    assert "stopped at step" in out
