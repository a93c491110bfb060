"""The commands file and the ledger as an operator's shell leaves them: a commands file deleted
or replaced while the trainer was down, a ledger emptied or with a corrupt last line, a FIFO or
a directory where the commands file should be, a huge newline-less tail. The trainer starts,
keeps training and applies each new command once; nothing old is applied again.

In-process tests drive a real :class:`~hotcb.HotKernel` with a tiny torch model
(:class:`~hotcb.testing.TorchStepDriver`); the ``slow`` ones run the real trainer process and
kill it with SIGKILL.
"""

from __future__ import annotations

import logging
import os
import shutil
import tracemalloc
from typing import Any

import pytest

from hotcb import HotClient, HotKernel, jsonl
from hotcb._intake import CommandIntake
from hotcb.errors import HotcbError
from hotcb.ledger import tail_state
from hotcb.ops import MAX_COMMAND_BYTES
from hotcb.runfiles import RunPaths
from hotcb.testing import TorchStepDriver, read_ledger, wait_for

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """A tiny model trains faster on one thread, and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _loop(run_dir: str, **kernel_kw: Any) -> TorchStepDriver:
    kernel_kw.setdefault("metrics_collector", False)
    return TorchStepDriver(run_dir, weights={"ce": 1.0}, fsync_ledger=False, **kernel_kw)


def _lr(cmd_id: str, lr: float) -> dict[str, Any]:
    """A command as a hand or a script writes it; equal ids and digits, equal lengths."""
    return {"cmd_id": cmd_id, "module": "opt", "op": "set_params", "params": {"lr": lr}}


def _write(path: str, records: list[dict[str, Any]]) -> None:
    for record in records:
        jsonl.append(path, record)


def _since(run_dir: str, seq: int) -> list[tuple[str, str, str]]:
    return [(e["cmd_id"] or "", e["op"], e["decision"]) for e in read_ledger(run_dir)
            if e["seq"] > seq]  # fmt: skip


# -- a commands file replaced while the trainer was down --------------------------------------


def _replaced_while_down(run_dir: str) -> int:
    """A run that applied two commands and ended; its commands file deleted and written anew
    with three commands of the same lengths: a newline lands at the old cursor. The ledger's
    last seq."""
    paths = RunPaths(run_dir)
    first = _loop(run_dir)
    first.steps(2)
    _write(paths.commands, [_lr("old-1", 0.0011), _lr("old-2", 0.0012)])
    first.steps(2)
    first.close()
    seq, cursor = tail_state(paths.ledger)
    assert [e["decision"] for e in read_ledger(run_dir)] == ["applied", "applied"]
    os.remove(paths.commands)  # rotated, cleaned up by hand
    new = [_lr("new-1", 0.0021), _lr("new-2", 0.0022), _lr("new-3", 0.0023)]
    _write(paths.commands, new)
    with open(paths.commands, "rb") as f:
        assert f.read()[cursor - 1 : cursor] == b"\n"  # the old cursor is a line start here
    return seq


def test_a_commands_file_replaced_while_down_is_read_from_its_start(run_dir: str) -> None:
    seq = _replaced_while_down(run_dir)
    second = _loop(run_dir)  # the restart
    second.steps(2)
    second.close()
    assert _since(run_dir, seq) == [
        ("", "cursor_reset", "noop"),
        ("new-1", "set_params", "applied"),
        ("new-2", "set_params", "applied"),
        ("new-3", "set_params", "applied"),
    ]
    assert second.lr[1] == pytest.approx(0.0023)


def test_a_rewritten_file_skips_every_command_the_ledger_holds(
    run_dir: str, monkeypatch: Any
) -> None:
    """The file rewritten by hand while down (a bad line removed: every offset moves), old
    commands kept: each one the ledger holds is a noop, however long ago it was applied. Only
    the ids of the ledger's last entries were remembered at start (2000; 2 here), and older
    ones were applied again (an old ``stop`` stopped the restarted run at its first step)."""
    import hotcb.kernel

    monkeypatch.setattr(hotcb.kernel, "_SEEN_AT_START", 2)
    paths = RunPaths(run_dir)
    first = _loop(run_dir)
    first.steps(1)
    old = [_lr(f"old-{i}", 0.001 * i) for i in range(1, 6)]
    _write(paths.commands, old[:2])
    with open(paths.commands, "ab") as f:
        f.write(b"oops not json\n")
    _write(paths.commands, old[2:])
    first.steps(2)
    first.close()
    seq = tail_state(paths.ledger)[0]
    with open(paths.commands, "rb") as f:
        kept = [line for line in f if not line.startswith(b"oops")]
    with open(paths.commands, "wb") as f:  # as sed -i '/oops/d' would
        f.writelines(kept)
    _write(paths.commands, [_lr("new-1", 0.0077)])
    second = _loop(run_dir)
    second.steps(2)
    second.close()
    assert _since(run_dir, seq) == [
        ("", "cursor_reset", "noop"),
        *[(f"old-{i}", "set_params", "noop") for i in range(1, 6)],
        ("new-1", "set_params", "applied"),
    ]
    assert second.lr[1] == pytest.approx(0.0077)


@pytest.mark.slow
def test_a_commands_file_replaced_while_a_killed_trainer_was_down(
    tmp_path: Any, start_trainer: Any
) -> None:
    """The report's case with the real trainer and SIGKILL: every new command is ledgered."""
    run_dir = os.fspath(tmp_path / "run")
    paths = RunPaths(run_dir)
    first = start_trainer(run_dir, os.fspath(tmp_path / "t1.jsonl"), steps=100_000,
                          step_delay=0.01)  # fmt: skip
    first.wait_step(1)
    _write(paths.commands, [_lr("old-1", 0.0011), _lr("old-2", 0.0012)])
    wait_for(lambda: len(read_ledger(run_dir)) == 2, 60, what="the old commands' entries")
    first.kill()
    seq, cursor = tail_state(paths.ledger)
    os.remove(paths.commands)
    _write(paths.commands, [_lr("new-1", 0.0021), _lr("new-2", 0.0022), _lr("new-3", 0.0023)])
    with open(paths.commands, "rb") as f:
        assert f.read()[cursor - 1 : cursor] == b"\n"
    second = start_trainer(run_dir, os.fspath(tmp_path / "t2.jsonl"), steps=100_000,
                           step_delay=0.01)  # fmt: skip
    wait_for(lambda: len(_since(run_dir, seq)) == 4, 60, what="the new commands' entries")
    assert _since(run_dir, seq) == [
        ("", "cursor_reset", "noop"),
        ("new-1", "set_params", "applied"),
        ("new-2", "set_params", "applied"),
        ("new-3", "set_params", "applied"),
    ]
    second.wait_step(read_ledger(run_dir)[-1]["step"] + 1)
    assert second.steps()[-1]["lr"] == pytest.approx(0.0023)


def test_a_restart_after_a_rejected_line_without_cmd_id_reads_on_from_the_cursor(
    run_dir: str,
) -> None:
    """The last line read was garbage (no cmd_id to recognise it by): the file is taken as the
    one the ledger read, and nothing is read again."""
    first = _loop(run_dir)
    first.steps(1)
    cid = first.client.opt(lr=0.005)
    first.raw("not a command\n")
    first.steps(1)
    first.close()
    assert [e["decision"] for e in read_ledger(run_dir)] == ["applied", "rejected"]
    second = _loop(run_dir)
    late = second.client.opt(lr=0.002)
    second.steps(2)
    second.close()
    assert [e["cmd_id"] for e in read_ledger(run_dir)][2:] == [late]  # no reset, cid once
    assert [e["cmd_id"] for e in read_ledger(run_dir)].count(cid) == 1


def test_a_command_older_than_the_recent_ids_still_marks_the_same_file(run_dir: str) -> None:
    """The cmd_id at the cursor is not among the ids the kernel remembers at start (2000
    entries of a replay came after it, say): the whole ledger is asked before the file is
    taken for another one."""
    first = _loop(run_dir)
    first.steps(1)
    first.client.opt(lr=0.005)
    first.steps(1)
    first.close()
    paths = RunPaths(run_dir)
    cursor = tail_state(paths.ledger)[1]
    intake = CommandIntake(paths.commands, cursor, seen=())  # no recent ids known
    assert intake.read() == ([], None, None)
    assert intake.offset == cursor


# -- a lost ledger: emptied or zero-filled ----------------------------------------------------


def _stopped_run(run_dir: str) -> str:
    drv = _loop(run_dir)
    drv.steps(1)
    drv.client.opt(lr=0.005)
    drv.client.stop()
    drv.steps(1)
    drv.close()
    assert drv.kernel.stop_requested
    return RunPaths(run_dir).ledger


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda size: b"", "was emptied"),
        (lambda size: b"\0" * size, "holds no readable entry"),
        (lambda size: b"garbage\n" * 3, "holds no readable entry"),
    ],
    ids=["emptied", "zero-filled", "garbage"],
)
def test_an_emptied_or_zero_filled_ledger_counts_as_lost(
    run_dir: str, damage: Any, says: str
) -> None:
    ledger = _stopped_run(run_dir)
    with open(ledger, "r+b") as f:
        data = damage(os.path.getsize(ledger))
        f.truncate(0)
        f.write(data)
    with pytest.raises(HotcbError) as refused:
        HotKernel(run_dir, metrics_collector=False)
    message = str(refused.value)
    assert f"hotcb.applied.jsonl {says}" in message and "replay_commands" in message
    # on purpose: the old commands apply again, the stop included
    again = _loop(run_dir, replay_commands=True)
    again.steps(1)
    again.close()
    assert again.kernel.stop_requested and again.lr[0] == pytest.approx(0.005)


@pytest.mark.parametrize("meta", [b"", b'{"hotcb_version": "0.1'], ids=["emptied", "torn"])
def test_a_lost_ledger_counts_as_lost_when_the_run_file_is_damaged_too(
    run_dir: str, meta: bytes
) -> None:
    """With ``hotcb.run.json`` emptied as well, the kernel took the directory for one no
    kernel had run in and applied every old command again at step 0, the stop included."""
    ledger = _stopped_run(run_dir)
    for path, data in ((ledger, b""), (RunPaths(run_dir).run_meta, meta)):
        with open(path, "wb") as f:
            f.write(data)
    with pytest.raises(HotcbError) as refused:
        HotKernel(run_dir, metrics_collector=False)
    assert "hotcb.applied.jsonl was emptied" in str(refused.value)


def test_commands_sent_to_a_run_that_never_ledgered_one_are_new(run_dir: str) -> None:
    """Its ledger is empty, as the kernel created it: nothing was lost, the commands are
    applied."""
    first = _loop(run_dir)
    first.steps(2)
    first.close()
    cid = first.client.opt(lr=0.005)  # sent while the trainer is down
    os.utime(RunPaths(run_dir).ledger)  # touched, as a copy (cp -r) would: still not lost
    second = _loop(run_dir)
    second.steps(1)
    second.close()
    assert [(e["cmd_id"], e["decision"]) for e in read_ledger(run_dir)] == [(cid, "applied")]


def test_a_copy_of_a_run_that_never_ledgered_a_command_starts(run_dir: str, tmp_path: Any) -> None:
    """``cp -r`` (new mtimes) of a run whose ledger stayed empty, a command sent to the copy:
    refused as 'was emptied' by a rule that took a ledger changed since the start for one
    emptied. The run's own word (its heartbeat's and its end's ledger seq) decides."""
    first = _loop(run_dir)
    first.steps(2)
    first.close()
    copy = os.fspath(tmp_path / "copy")
    shutil.copytree(run_dir, copy, copy_function=shutil.copy)  # contents, not times
    cid = HotClient(copy).opt(lr=0.005)
    second = _loop(copy)
    second.steps(1)
    second.close()
    assert [(e["cmd_id"], e["decision"]) for e in read_ledger(copy)] == [(cid, "applied")]


# -- a corrupt last ledger line -----------------------------------------------------------------

_CORRUPT = {
    "seq-not-a-number": b'{"seq":"abc","cursor":5}',
    "seq-overflows": b'{"seq":1e400}',
    "absurd-nesting": b"[" * 5000 + b"]" * 5000,
    "negative-cursor": b'{"seq":4,"cursor":-100}',
    "zeros": b"\0" * 100,
}


@pytest.mark.parametrize("bad", list(_CORRUPT.values()), ids=list(_CORRUPT))
def test_a_corrupt_last_ledger_line_is_skipped_at_start(run_dir: str, bad: bytes, cli: Any) -> None:
    first = _loop(run_dir)
    first.steps(1)
    old = first.client.opt(lr=0.005)
    first.steps(1)
    first.close()
    paths = RunPaths(run_dir)
    seq = tail_state(paths.ledger)[0]
    with open(paths.ledger, "ab") as f:
        f.write(bad + b"\n")
    second = _loop(run_dir)  # starts: resumes from the last good entry
    new = second.client.opt(lr=0.002)
    second.steps(2)
    second.close()
    entries = read_ledger(run_dir)
    assert [e.get("cmd_id") for e in entries].count(old) == 1  # not applied again
    assert [(e["cmd_id"], e["seq"], e["decision"]) for e in entries[-1:]] == [
        (new, seq + 1, "applied")
    ]
    assert second.lr[1] == pytest.approx(0.002)
    status = cli(run_dir, "status")
    assert status.returncode == 0, status.stderr


@pytest.mark.parametrize("bad", [_CORRUPT["absurd-nesting"], _CORRUPT["zeros"]],
                         ids=["absurd-nesting", "zeros"])  # fmt: skip
def test_hotcb_log_skips_a_line_it_cannot_parse(run_dir: str, bad: bytes, cli: Any) -> None:
    drv = _loop(run_dir)
    drv.steps(1)
    drv.client.opt(lr=0.005)
    drv.steps(1)
    drv.close()
    with open(RunPaths(run_dir).ledger, "ab") as f:
        f.write(bad + b"\n")
    out = cli(run_dir, "log")
    assert out.returncode == 0, out.stderr
    assert "opt set_params -> applied" in out.stdout


# -- not a regular file -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("when", ["at-start", "mid-run"])
def test_a_fifo_for_a_commands_file_does_not_hang_the_trainer(
    tmp_path: Any, start_trainer: Any, when: str
) -> None:
    """The loop goes on, says once that the path is not a regular file, and reads commands
    again once it is one."""
    run_dir = os.fspath(tmp_path / "run")
    commands = RunPaths(run_dir).commands
    if when == "at-start":
        os.makedirs(run_dir)
        os.mkfifo(commands)
    tr = start_trainer(run_dir, os.fspath(tmp_path / "t.jsonl"), steps=100_000, step_delay=0.005)
    tr.wait_step(1)
    if when == "mid-run":
        jsonl.append(commands, _lr("before", 0.005))
        wait_for(lambda: read_ledger(run_dir), 60, what="the first command's entry")
        os.remove(commands)
        os.mkfifo(commands)
    at = tr.last_step()
    tr.wait_step(at + 30)  # the loop goes on: polls do not block on the FIFO
    os.remove(commands)
    jsonl.append(commands, {"cmd_id": "the-end", "module": "control", "op": "stop"})
    code, out, err = tr.finish()
    assert code == 0 and "stopped at step" in out, err
    assert err.count("not a regular file (a FIFO)") == 1, err


def test_a_directory_for_a_commands_file_is_reported_once_per_episode(
    run_dir: str, caplog: Any
) -> None:
    drv = _loop(run_dir)
    drv.steps(1)
    commands = drv.paths.commands
    caplog.set_level(logging.WARNING, logger="hotcb")
    # (files of other lengths each time: inode numbers are reused, and a file of the inode
    # and the size of the one read last is one no poll can tell from it)
    for command in (_lr("dir-1", 0.003), _lr("dir-episode-2", 0.0025)):
        os.remove(commands)
        os.mkdir(commands)  # the directory comes, goes, and comes back
        drv.steps(20)
        os.rmdir(commands)
        jsonl.append(commands, command)
        drv.steps(1)
        assert drv.only(command["cmd_id"])["decision"] == "applied"
    drv.close()
    said = [r.getMessage() for r in caplog.records if "could not read" in r.getMessage()]
    assert len(said) == 2 and all("not a regular file (a directory)" in m for m in said), said


# -- a huge tail without a newline ------------------------------------------------------------


def test_a_huge_tail_without_newline_is_looked_through_once_in_bounded_memory(
    run_dir: str, monkeypatch: Any
) -> None:
    """``truncate -s +32M`` on the commands file of a live run: the polls read each byte of it
    about once, never hold much of it, and once a command ends it, it is one ``rejected``
    line (its length and offset, as for any line too long) and the command applies."""
    drv = _loop(run_dir)
    drv.steps(1)
    commands = drv.paths.commands
    cid = drv.client.opt(lr=0.005)
    drv.steps(1)
    start = os.path.getsize(commands)
    garbage = 32 * 1024 * 1024
    os.truncate(commands, start + garbage)
    read = 0
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        nonlocal read
        data = real_pread(fd, n, offset)
        read += len(data)
        return data

    monkeypatch.setattr(os, "pread", pread)
    tracemalloc.start()
    try:
        drv.steps(40)  # a poll at every step
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read < 2 * garbage  # not 40 times the tail
    assert peak < 24 * 1024 * 1024  # no more than one read's block at a time
    late = drv.client.opt(lr=0.002)  # its writer ends the long line first
    drv.steps(2)
    drv.close()
    rejected, applied = [e for e in read_ledger(run_dir) if e["cmd_id"] != cid]
    assert rejected["cmd_id"] == f"@{start}" and rejected["decision"] == "rejected"
    assert rejected["error"].startswith(f"line is {garbage} bytes, more than the "
                                        f"{MAX_COMMAND_BYTES}")  # fmt: skip
    assert rejected["cursor"] == start + garbage + 1
    assert (applied["cmd_id"], applied["decision"]) == (late, "applied")
    assert drv.lr[drv.step] == pytest.approx(0.002)
