"""The run directory's JSON-lines files survive replaced files and full disks (issue #9).

Each test performs the failure for real: the commands file truncated and rewritten, or replaced
with ``os.replace``, under a running trainer process; a disk that fills up (a tiny tmpfs where
one can be mounted, else ``RLIMIT_FSIZE`` in a subprocess: writes past the limit are short,
then fail with ``EFBIG``, the way a full disk fails with ``ENOSPC``); a ledger batch that only
half fits.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from hotcb import HotClient, jsonl
from hotcb.errors import JournalWriteError
from hotcb.ledger import LedgerWriter, iter_entries, new_entry, pending_scheduled
from hotcb.ops import make_command
from hotcb.runfiles import RunPaths
from hotcb.testing import fill_filesystem, read_ledger

#: Environment for subprocesses: never inherit a run directory from the developer's shell.
ENV = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}

# Run python code with a file size limit: writes past it are short, then fail with EFBIG
# (SIGXFSZ ignored, as a full disk fails with ENOSPC instead of killing the process). The soft
# limit can be raised again by the code: "space frees".
_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv.pop(1)), resource.RLIM_INFINITY))
"""


def run_limited(limit: int, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter whose files may not grow past ``limit`` bytes."""
    return subprocess.run(
        [sys.executable, "-c", _LIMITED + textwrap.dedent(code), str(limit), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )


def line(record: dict[str, Any]) -> bytes:
    return (jsonl.dumps(record) + "\n").encode()


def lr_command(lr: float) -> dict[str, Any]:
    return make_command("opt", "set_params", params={"lr": lr}, source="test")


def raw_ledger(run_dir: str) -> list[dict[str, Any]]:
    """Every line of the ledger parsed strictly: a torn or glued line fails the test."""
    with open(RunPaths(run_dir).ledger, "rb") as f:
        data = f.read()
    assert data.endswith(b"\n"), data[-200:]
    return [json.loads(raw) for raw in data.split(b"\n")[:-1]]


def final_entry(client: HotClient, cmd_id: str) -> dict[str, Any]:
    return client.wait(cmd_id, timeout=60)


# -- replaced commands file ---------------------------------------------------------------------


@pytest.mark.slow
def test_commands_file_truncated_then_rewritten_longer_between_polls_loses_no_command(
    run_dir: str, tmp_path: Any, start_trainer: Any
) -> None:
    trace = os.fspath(tmp_path / "trace.jsonl")
    tr = start_trainer(run_dir, trace, steps=100_000, step_delay=0.2)
    tr.wait_step(1)
    client = HotClient(run_dir, source="test")
    # a longer line than the next ones, so the cursor will land inside the new file's 2nd line
    assert final_entry(client, client.opt(lr=0.005123456789))["decision"] == "applied"
    commands = RunPaths(run_dir).commands
    cursor = os.path.getsize(commands)  # the kernel consumed the file up to here
    second, third = lr_command(0.002), lr_command(0.0007)
    new = line(second) + line(third)
    # the new file is longer than the cursor, and the cursor lands in the middle of a line
    assert len(new) > cursor and new[cursor - 1 : cursor] != b"\n"
    # right after a poll (the trainer traces a step after apply(), then sleeps 0.2 s): the
    # kernel's next poll sees the file already rewritten, same inode, bigger than its cursor
    tr.wait_step(tr.last_step() + 1)
    os.truncate(commands, 0)
    jsonl.append_many(commands, [second, third])
    assert final_entry(client, second["cmd_id"])["decision"] == "applied"
    assert final_entry(client, third["cmd_id"])["decision"] == "applied"
    ops = [e["op"] for e in read_ledger(run_dir)]
    assert ops.count("set_params") == 3  # nothing rejected, nothing applied twice
    tr.wait_step(final_entry(client, third["cmd_id"])["step"] + 1)
    assert tr.steps()[-1]["lr"] == 0.0007


@pytest.mark.slow
def test_commands_file_replaced_by_a_bigger_file_loses_no_command(
    run_dir: str, tmp_path: Any, start_trainer: Any
) -> None:
    trace = os.fspath(tmp_path / "trace.jsonl")
    tr = start_trainer(run_dir, trace, steps=100_000, step_delay=0.01)
    tr.wait_step(1)
    client = HotClient(run_dir, source="test")
    assert final_entry(client, client.opt(lr=0.005))["decision"] == "applied"
    commands = RunPaths(run_dir).commands
    cursor = os.path.getsize(commands)
    second, third = lr_command(0.002), lr_command(0.0007)
    tmp = commands + ".new"
    with open(tmp, "wb") as f:
        f.write(line(second) + line(third))
    assert os.path.getsize(tmp) > cursor
    os.replace(tmp, commands)  # an editor's save, a tool that rewrites the file
    assert final_entry(client, second["cmd_id"])["decision"] == "applied"
    assert final_entry(client, third["cmd_id"])["decision"] == "applied"
    assert [e["op"] for e in read_ledger(run_dir)].count("cursor_reset") == 1


@pytest.mark.slow
def test_commands_file_replaced_by_a_file_of_the_same_size_loses_no_command(
    run_dir: str, tmp_path: Any, start_trainer: Any
) -> None:
    trace = os.fspath(tmp_path / "trace.jsonl")
    tr = start_trainer(run_dir, trace, steps=100_000, step_delay=0.01)
    tr.wait_step(1)
    client = HotClient(run_dir, source="test")
    first = lr_command(0.0051234567891)  # a longer line than the next one
    jsonl.append(RunPaths(run_dir).commands, first)
    assert final_entry(client, first["cmd_id"])["decision"] == "applied"
    commands = RunPaths(run_dir).commands
    cursor = os.path.getsize(commands)
    body = line(lr_command(0.002))[:-1]
    second = json.loads(body)
    # trailing blanks are fine in a line: they make the new file exactly as long as the old
    new = body + b" " * (cursor - len(body) - 1) + b"\n"
    assert len(new) == cursor  # the cursor is at the new file's end: only its identity differs
    tmp = commands + ".new"
    with open(tmp, "wb") as f:
        f.write(new)
    os.replace(tmp, commands)
    assert final_entry(client, second["cmd_id"])["decision"] == "applied"


# -- full disk ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_disk_leaves_no_partial_line_and_the_next_command_is_applied(
    small_fs: str, tmp_path: Any, start_trainer: Any
) -> None:
    run_dir = os.path.join(small_fs, "run")
    os.mkdir(run_dir)
    commands = RunPaths(run_dir).commands
    with open(commands, "wb") as f:  # blank lines (skipped by the kernel): 40 bytes of room
        f.write(b"\n" * (4096 - 40))  # left in the file's page, less than a command line
    trace = os.fspath(tmp_path / "trace.jsonl")
    tr = start_trainer(run_dir, trace, steps=100_000, step_delay=0.01, metrics_every=10**9)
    tr.wait_step(1)
    client = HotClient(run_dir, source="test")
    filler = fill_filesystem(small_fs)
    size = os.path.getsize(commands)
    with pytest.raises(JournalWriteError) as info:
        client.opt(lr=0.002)  # 40 bytes fit, then ENOSPC
    left = os.path.getsize(commands) - size
    os.unlink(filler)  # space frees
    cid = client.opt(lr=0.002)
    assert final_entry(client, cid)["decision"] == "applied"  # not glued onto a partial line
    assert [e["decision"] for e in read_ledger(run_dir)] == ["applied"]
    assert left == 0  # the partial line was cut off again
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert commands in message and "free disk space" in message and "not written" in message


_SEND = """
import json, sys
from hotcb import HotClient
try:
    cid = HotClient(sys.argv[1], source="limited").opt(lr=0.002)
except OSError as exc:
    print(json.dumps({"error": str(exc), "errno": exc.errno, "type": type(exc).__name__}))
else:
    print(json.dumps({"cmd_id": cid}))
"""


@pytest.mark.slow
def test_short_write_at_the_file_size_limit_leaves_no_partial_line(
    run_dir: str, tmp_path: Any, start_trainer: Any
) -> None:
    trace = os.fspath(tmp_path / "trace.jsonl")
    tr = start_trainer(run_dir, trace, steps=100_000, step_delay=0.01)
    tr.wait_step(1)
    client = HotClient(run_dir, source="test")
    assert final_entry(client, client.opt(lr=0.005))["decision"] == "applied"
    commands = RunPaths(run_dir).commands
    size = os.path.getsize(commands)
    res = run_limited(size + 50, _SEND, run_dir)  # 50 bytes of the line fit, then EFBIG
    assert res.returncode == 0, res.stderr
    left = os.path.getsize(commands) - size
    cid = client.opt(lr=0.002)
    assert final_entry(client, cid)["decision"] == "applied"  # not glued onto a partial line
    assert all(e["decision"] == "applied" for e in read_ledger(run_dir))
    assert left == 0
    out = json.loads(res.stdout)
    assert "cmd_id" not in out  # an unwritten command has no id to wait on
    assert out["type"] == "JournalWriteError" and out["errno"] == errno.EFBIG
    assert commands in out["error"] and "not written" in out["error"]


_CLI = """
import sys
from hotcb.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_set_on_a_full_disk_prints_one_line_and_exits_2(run_dir: str) -> None:
    client = HotClient(run_dir, source="test")
    client.opt(lr=0.005)
    commands = RunPaths(run_dir).commands
    size = os.path.getsize(commands)
    res = run_limited(size + 50, _CLI, "--dir", run_dir, "set", "lr=0.002")
    assert os.path.getsize(commands) == size  # no partial line left behind
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stdout == ""  # no cmd_id printed
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("hotcb: error: the command (opt set_params) was not written")
    assert commands in lines[0] and "file too large (a file-size limit: ulimit -f" in lines[0]
    assert os.path.getsize(commands) == size


def test_append_is_all_or_nothing_and_says_which_file(tmp_path: Any) -> None:
    path = os.fspath(tmp_path / "a.jsonl")
    jsonl.append(path, {"n": 0})
    code = """
    import sys
    from hotcb import jsonl
    from hotcb.errors import HotcbError, JournalWriteError
    try:
        jsonl.append_many(sys.argv[1], [{"n": i, "pad": "x" * 40} for i in range(1, 4)])
    except JournalWriteError as exc:
        assert isinstance(exc, OSError) and isinstance(exc, HotcbError)
        assert not exc.written and exc.path == sys.argv[1]
        print(exc)
    """
    res = run_limited(os.path.getsize(path) + 100, code, path)
    assert res.returncode == 0, res.stderr
    nbytes = sum(len(line({"n": i, "pad": "x" * 40})) for i in range(1, 4))
    assert res.stdout.startswith(f"could not append {nbytes} bytes to {path} (File too large")
    assert "file too large (a file-size limit: ulimit -f" in res.stdout
    with open(path, "rb") as f:
        assert f.read() == b'{"n":0}\n'
    jsonl.append(path, {"n": 9})
    assert list(jsonl.iter_records(path)) == [{"n": 0}, {"n": 9}]


# -- the ledger: a retried batch is never written twice -----------------------------------------

_KERNEL = """
import json, os, resource, sys
from hotcb import HotClient, HotKernel
from hotcb.actuators import ActuatorType, HotcbActuator
run = sys.argv[1]
box = {"x": 0.0}
act = HotcbActuator(
    "x", ActuatorType.FLOAT, lambda v, env: box.__setitem__("x", v), lambda env: box["x"]
)
kernel = HotKernel(run, poll_interval_sec=0, mutable_state=[act])
kernel.apply({"step": 0})
ids = [HotClient(run, source="test").custom(x=float(i)) for i in range(12)]
ledger = kernel.paths.ledger
before = os.path.getsize(ledger) if os.path.exists(ledger) else 0
inf = resource.RLIM_INFINITY
resource.setrlimit(resource.RLIMIT_FSIZE, (before + 1000, inf))  # the batch does not fit
kernel.apply({"step": 1})
failed = os.path.getsize(ledger) if os.path.exists(ledger) else 0
resource.setrlimit(resource.RLIMIT_FSIZE, (inf, inf))  # space frees
kernel.apply({"step": 2})
kernel.close()
print(json.dumps({"ids": ids, "before": before, "failed": failed, "x": box["x"]}))
"""


def test_ledger_batch_that_fails_part_way_is_retried_whole_and_written_once(
    run_dir: str,
) -> None:
    res = run_limited(1 << 30, _KERNEL, run_dir)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert "could not write the ledger" in res.stderr  # the kernel did hit the limit
    assert out["failed"] == out["before"]  # nothing of the failed batch was kept
    entries = raw_ledger(run_dir)  # every line parses: nothing torn, nothing glued
    seqs = [e["seq"] for e in entries]
    assert seqs == list(range(1, len(entries) + 1))  # each seq exactly once, in order
    applied = [e["cmd_id"] for e in entries if e["decision"] == "applied"]
    assert applied == out["ids"]
    assert out["x"] == 11.0


def test_ledger_fsync_failure_after_a_complete_write_counts_as_written(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = os.fspath(tmp_path / "applied.jsonl")
    writer = LedgerWriter(path, fsync=True)

    def fsync_fails(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync_fails)
    batch = [new_entry(seq=i, cmd_id=f"c{i}", decision="applied") for i in (1, 2)]
    with caplog.at_level(logging.WARNING, logger="hotcb"):
        writer.write(batch)  # no exception: a caller must not write it again
    assert "fsync failed" in caplog.text and path in caplog.text
    assert [e["seq"] for e in raw_ledger_at(path)] == [1, 2]


def raw_ledger_at(path: str) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return [json.loads(raw) for raw in f.read().split(b"\n")[:-1]]


def test_ledger_readers_skip_a_batch_written_twice(tmp_path: Any) -> None:
    """A ledger an older hotcb left behind: seq 3-5 written, then written again on retry."""
    path = os.fspath(tmp_path / "applied.jsonl")
    e = [new_entry(seq=1, cmd_id="a", decision="applied")]
    e.append(new_entry(seq=2, cmd_id="b", decision="applied"))
    batch = [
        new_entry(seq=3, cmd_id="s", decision="scheduled", at_step=50),
        new_entry(seq=4, cmd_id="c", decision="applied"),
        new_entry(seq=5, cmd_id="s", decision="applied"),
    ]
    jsonl.append_many(path, e + batch + batch)
    jsonl.append(path, new_entry(seq=6, cmd_id="d", decision="applied"))
    assert [x["seq"] for x in iter_entries(path)] == [1, 2, 3, 4, 5, 6]
    assert pending_scheduled(path) == []  # the repeated "scheduled" is not waiting again
