"""The commands file rotated under a running trainer (``mv hotcb.commands.jsonl …jsonl.1``), the way
``logrotate`` or an operator's shell does it: a command appended just before the rotation and
not read yet is applied once, before the commands of the new file, as ``tail -F`` reads the old
file to its end before the new one. Truncation and replacement keep their ``cursor_reset``.

A real :class:`~hotcb.HotKernel` stepped by hand in this process (:class:`~hotcb.testing.
StepDriver`): the test decides what the loop has read when it renames the file.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from hotcb import jsonl
from hotcb.testing import StepDriver, wait_for


def _driver(run_dir: str) -> StepDriver:
    return StepDriver(run_dir, weights={"w": 1.0}, fsync_ledger=False, metrics_collector=False)


def _held(drv: StepDriver) -> str:
    """A first command, applied: the kernel has read the commands file (and holds it open)."""
    first = drv.client.loss(w=1.1)
    drv.steps()
    assert drv.only(first)["decision"] == "applied"
    return first


def _step_until_ledgered(drv: StepDriver, cmd_id: str) -> None:
    def stepped() -> bool:
        drv.steps()
        return bool(drv.entries(cmd_id))

    wait_for(stepped, 10, what=f"a ledger entry for {cmd_id}")


def _since(drv: StepDriver, cmd_id: str) -> list[tuple[str, str, str]]:
    """``(cmd_id, op, decision)`` of the entries after the one of ``cmd_id``."""
    ledger = drv.ledger()
    at = next(i for i, e in enumerate(ledger) if e["cmd_id"] == cmd_id)
    return [(e["cmd_id"] or "", e["op"], e["decision"]) for e in ledger[at + 1 :]]


def test_a_command_not_read_before_a_rotation_is_applied_before_the_new_files(
    run_dir: str,
) -> None:
    with _driver(run_dir) as drv:
        first = _held(drv)
        commands = drv.paths.commands
        a = drv.client.loss(w=2.2)
        os.rename(commands, commands + ".1")  # A is still unread, in the rotated file
        b = drv.client.loss(w=3.3)  # creates a new commands file
        _step_until_ledgered(drv, b)
        assert _since(drv, first) == [
            (a, "set_params", "applied"),
            ("", "cursor_reset", "noop"),
            (b, "set_params", "applied"),
        ]
        # A's cursor counts bytes of the file it was read from; B's, of the new file
        assert drv.only(a)["cursor"] == os.path.getsize(commands + ".1")
        assert drv.only(b)["cursor"] == os.path.getsize(commands)
        assert drv.client.wait(a, timeout=5)["decision"] == "applied"
        assert drv.weights["w"] == 3.3


def test_a_command_in_a_file_moved_away_with_nothing_in_its_place_is_applied(
    run_dir: str,
) -> None:
    """Nobody writes to the path after the rotation: the command is not left waiting for a
    next command to create the file."""
    with _driver(run_dir) as drv:
        first = _held(drv)
        a = drv.client.loss(w=2.2)
        os.rename(drv.paths.commands, drv.paths.commands + ".1")
        _step_until_ledgered(drv, a)
        drv.steps(2)
        assert _since(drv, first) == [(a, "set_params", "applied")]
        b = drv.client.loss(w=3.3)
        _step_until_ledgered(drv, b)
        assert _since(drv, a) == [("", "cursor_reset", "noop"), (b, "set_params", "applied")]
        assert drv.weights["w"] == 3.3


def test_a_file_truncated_in_place_is_read_from_its_start(run_dir: str) -> None:
    with _driver(run_dir) as drv:
        first = _held(drv)
        ino = os.stat(drv.paths.commands).st_ino
        with open(drv.paths.commands, "r+b") as f:
            f.truncate(0)
        # longer than the line before the cursor, so the byte before the cursor is not a
        # newline (a rewrite that puts one there goes unseen: no copy of the file is kept)
        b = drv.client.loss(w=0.30000000000000004)
        assert os.stat(drv.paths.commands).st_ino == ino
        _step_until_ledgered(drv, b)
        assert _since(drv, first) == [("", "cursor_reset", "noop"), (b, "set_params", "applied")]


def test_a_file_rewritten_to_the_same_length_is_read_from_its_start(run_dir: str) -> None:
    """Truncated (``: > file``, logrotate's copytruncate), then a command as long as the one
    read: nothing lay past the cursor, and the byte before it was a newline, so the file
    was taken as read and the command lost, with no entry."""
    with _driver(run_dir) as drv:
        first = _held(drv)
        with open(drv.paths.commands, "rb") as f:
            old = f.read()
        before = os.stat(drv.paths.commands).st_mtime_ns
        line = old.replace(first.encode(), b"X" * len(first)).replace(b"1.1", b"2.2")
        assert len(line) == len(old) and line != old
        with open(drv.paths.commands, "r+b") as f:
            f.truncate(0)
            f.write(line)
        # a rewrite a moment later (the clock's tick may be coarser than two writes here)
        os.utime(drv.paths.commands, ns=(before + 10**9, before + 10**9))
        _step_until_ledgered(drv, "X" * len(first))
        assert _since(drv, first) == [("", "cursor_reset", "noop"),
                                      ("X" * len(first), "set_params", "applied")]  # fmt: skip
        assert drv.weights["w"] == 2.2


def test_a_file_replaced_with_the_same_bytes_is_read_on_from_the_cursor(
    run_dir: str,
) -> None:
    """Replaced (``os.replace``, an editor's save) after every line was read, with the same
    bytes: the new file is read on from the cursor, in the same poll, with no reset and no
    noop entry for each old command."""
    with _driver(run_dir) as drv:
        first = _held(drv)
        with open(drv.paths.commands, "rb") as f:
            old = f.read()
        tmp = drv.paths.commands + ".new"
        with open(tmp, "wb") as f:
            f.write(old)
        os.replace(tmp, drv.paths.commands)
        b = drv.client.loss(w=3.3)
        drv.steps()
        assert _since(drv, first) == [(b, "set_params", "applied")]


def test_an_unfinished_line_of_a_rotated_file_is_counted_in_the_reset_note(
    run_dir: str,
) -> None:
    with _driver(run_dir) as drv:
        first = _held(drv)
        drv.raw('{"cmd_id": "torn"')
        os.rename(drv.paths.commands, drv.paths.commands + ".1")
        b = drv.client.loss(w=3.3)
        _step_until_ledgered(drv, b)
        reset = [e for e in drv.ledger() if e["op"] == "cursor_reset"]
        assert len(reset) == 1
        assert "the 17 bytes after the last newline" in reset[0]["error"]
        assert _since(drv, first) == [("", "cursor_reset", "noop"), (b, "set_params", "applied")]


def test_a_tail_reads_a_rotated_file_to_its_end_first(tmp_path: Any) -> None:
    path = os.fspath(tmp_path / "f.jsonl")
    jsonl.append(path, {"n": 1})
    tail = jsonl.JsonlTail(path, hold_open=True)
    assert [line for _, line in tail.read_lines()] == [b'{"n":1}']
    jsonl.append(path, {"n": 2})
    os.rename(path, path + ".1")
    jsonl.append(path, {"n": 3})
    assert tail.read_lines() == [(16, b'{"n":2}')] and not tail.reset
    assert tail.read_lines() == [(8, b'{"n":3}')] and tail.reset
    tail.close()
    assert not tail.holding


def test_a_writer_that_opened_the_file_before_it_was_rotated_writes_to_the_new_one(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """The file moved between the writer's open and its lock: the line goes to the file the
    path names now, not into the rotated one after a reader has finished it."""
    path = os.fspath(tmp_path / "f.jsonl")
    jsonl.append(path, {"n": 1})
    flock = fcntl.flock
    moved = []

    def rotate_then_lock(fd: int, op: int) -> None:
        if op == fcntl.LOCK_EX and not moved:
            moved.append(os.rename(path, path + ".1"))
        flock(fd, op)

    monkeypatch.setattr(jsonl.fcntl, "flock", rotate_then_lock)
    jsonl.append(path, {"n": 2})
    with open(path + ".1", "rb") as f:
        assert f.read() == b'{"n":1}\n'
    with open(path, "rb") as f:
        assert f.read() == b'{"n":2}\n'


def test_a_hand_written_command_after_an_editor_saved_the_file_is_applied(run_dir: str) -> None:
    """Lines without a cmd_id are known by their offset (``@0``); a command written by hand
    at the same offset of the file an editor saved (or truncated) was a noop: "duplicate
    cmd_id '@0': already handled"."""
    with _driver(run_dir) as drv:
        line = b'{"module": "loss", "op": "set_params", "params": {"w": 2.5}}\n'
        with open(drv.paths.commands, "ab") as f:
            f.write(line)  # written by hand, as docs/core.md shows
        drv.steps()
        assert drv.weights["w"] == 2.5
        tmp = drv.paths.commands + ".new"
        with open(tmp, "wb") as f:  # the editor's save: a new file, renamed over
            f.write(b"")
        os.replace(tmp, drv.paths.commands)
        with open(drv.paths.commands, "ab") as f:
            f.write(line.replace(b"2.5", b"4.5"))  # the next hand-written command, at byte 0
        drv.steps(2)
        assert drv.weights["w"] == 4.5
        handled = [(e["cmd_id"], e["decision"]) for e in drv.ledger() if e["op"] == "set_params"]
        assert handled == [("@0", "applied"), ("@0", "applied")]


def test_an_editors_save_that_kept_the_lines_read_applies_only_what_it_added(
    run_dir: str,
) -> None:
    """An editor (or ``sed -i``) saves by writing a new file and renaming it over the old one.
    Lines without a cmd_id are known by their offset; reading the saved file again from its
    start applied every hand-written command in it again (a ``w`` written by hand took a later
    change back)."""
    with _driver(run_dir) as drv:
        commands = drv.paths.commands
        by_hand = b'{"module": "loss", "op": "set_params", "params": {"w": 2.5}}\n'
        with open(commands, "ab") as f:
            f.write(by_hand)
        drv.steps()
        later = drv.client.loss(w=3.5)
        drv.steps()
        assert drv.weights["w"] == 3.5
        for added in (by_hand.replace(b"2.5", b"4.5"), b""):  # a line added, then none
            with open(commands, "rb") as f:
                saved = f.read() + added
            with open(commands + ".swp", "wb") as f:
                f.write(saved)
            os.replace(commands + ".swp", commands)
            drv.steps(3)
        assert drv.weights["w"] == 4.5  # the added line; the first w=2.5 was not applied again
        assert _since(drv, later) == [(f"@{len(saved) - len(by_hand)}", "set_params", "applied")]


def test_a_file_replaced_with_other_bytes_before_the_cursor_is_read_from_its_start(
    run_dir: str,
) -> None:
    """A rewrite that changed a line already read is another file: read from its start (with
    its ``cursor_reset`` note), its commands with a cmd_id skipped as already handled."""
    with _driver(run_dir) as drv:
        first = _held(drv)
        commands = drv.paths.commands
        with open(commands, "rb") as f:
            saved = f.read().replace(b"1.1", b"1.2")  # an edit of a line already applied
        with open(commands + ".swp", "wb") as f:
            f.write(saved)
        os.replace(commands + ".swp", commands)
        drv.steps(2)
        assert _since(drv, first) == [("", "cursor_reset", "noop"), (first, "set_params", "noop")]
        assert drv.weights["w"] == 1.1
