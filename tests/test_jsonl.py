"""hotcb.jsonl: the one append/tail implementation (complete lines only, once, in order)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotcb import jsonl


def test_append_writes_one_compact_line_per_record(tmp_path: Any) -> None:
    path = tmp_path / "a.jsonl"
    jsonl.append(path, {"a": 1, "b": [1, 2]})
    jsonl.append_many(path, [{"c": "x"}, {"d": None}])
    assert path.read_bytes() == b'{"a":1,"b":[1,2]}\n{"c":"x"}\n{"d":null}\n'


def test_append_after_a_line_left_unfinished_starts_a_line_of_its_own(tmp_path: Any) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"half":')
    jsonl.append(path, {"a": 1})
    jsonl.append_many(path, [{"b": 2}])
    assert path.read_bytes() == b'{"half":\n{"a":1}\n{"b":2}\n'
    assert list(jsonl.iter_records(path)) == [{"a": 1}, {"b": 2}]


def test_non_finite_floats_are_written_as_strings_not_invalid_json(tmp_path: Any) -> None:
    path = tmp_path / "a.jsonl"
    jsonl.append(path, {"x": float("nan"), "y": [float("inf")], "z": 1.5})
    line = path.read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"x": "nan", "y": ["inf"], "z": 1.5}


def test_tail_leaves_a_line_without_newline_for_later_and_yields_it_once(tmp_path: Any) -> None:
    path = tmp_path / "c.jsonl"
    tail = jsonl.JsonlTail(path)
    assert tail.read_lines() == []  # missing file: nothing, no error
    with open(path, "ab") as f:
        f.write(b'{"n":1}\n{"n":2')
    assert [json.loads(raw) for _, raw in tail.read_lines()] == [{"n": 1}]
    assert tail.offset == 8
    assert tail.read_lines() == []  # the torn line is still incomplete
    with open(path, "ab") as f:
        f.write(b"}\n")
    got = tail.read_lines()
    assert [(end, json.loads(raw)) for end, raw in got] == [(os.path.getsize(path), {"n": 2})]
    assert tail.read_lines() == []


def test_tail_restarts_from_zero_when_the_file_shrinks(tmp_path: Any) -> None:
    path = tmp_path / "c.jsonl"
    jsonl.append_many(path, [{"n": i} for i in range(5)])
    tail = jsonl.JsonlTail(path)
    assert len(tail.read_records()) == 5
    path.write_bytes(b'{"n":"new"}\n')
    assert tail.read_records() == [{"n": "new"}]
    assert tail.reset


def test_tail_restarts_when_the_file_is_replaced_by_a_bigger_one(tmp_path: Any) -> None:
    path = tmp_path / "c.jsonl"
    jsonl.append_many(path, [{"n": 1}, {"n": 2}])
    tail = jsonl.JsonlTail(path)
    assert len(tail.read_records()) == 2
    tmp = tmp_path / "c.jsonl.new"
    jsonl.append_many(tmp, [{"n": "a" * 20}, {"n": "b"}])
    os.replace(tmp, path)
    assert not tail.caught_up(os.stat(path))
    assert tail.read_records() == [{"n": "a" * 20}, {"n": "b"}]
    assert tail.reset


def test_tail_restarts_when_replaced_by_a_file_of_the_same_size(tmp_path: Any) -> None:
    path = tmp_path / "c.jsonl"
    jsonl.append(path, {"n": 1})
    tail = jsonl.JsonlTail(path)
    assert tail.read_records() == [{"n": 1}]
    assert tail.caught_up(os.stat(path))
    tmp = tmp_path / "c.jsonl.new"
    jsonl.append(tmp, {"n": 2})
    os.replace(tmp, path)
    assert os.path.getsize(path) == tail.offset
    assert not tail.caught_up(os.stat(path))  # same size, another file
    assert tail.read_records() == [{"n": 2}]
    assert tail.reset


def test_tail_restarts_when_rewritten_in_place_past_the_cursor(tmp_path: Any) -> None:
    path = tmp_path / "c.jsonl"
    jsonl.append(path, {"n": 1})
    tail = jsonl.JsonlTail(path)
    assert tail.read_records() == [{"n": 1}]
    inode = os.stat(path).st_ino
    with open(path, "r+b") as f:  # truncated and rewritten before the next read
        f.truncate(0)
        f.write(b'{"n":"longer"}\n{"n":3}\n')
    assert os.stat(path).st_ino == inode
    assert tail.read_records() == [{"n": "longer"}, {"n": 3}]
    assert tail.reset


def test_tail_resumed_at_a_cursor_checks_the_byte_before_it(tmp_path: Any) -> None:
    path = tmp_path / "c.jsonl"
    jsonl.append_many(path, [{"n": 1}, {"n": 2}])
    cursor = len(b'{"n":1}\n')
    tail = jsonl.JsonlTail(path, offset=cursor)  # a kernel resuming from its ledger
    assert not tail.caught_up(os.stat(path))  # nothing read yet: its identity is unknown
    assert tail.read_records() == [{"n": 2}]
    assert not tail.reset
    assert tail.caught_up(os.stat(path))
    wrong = jsonl.JsonlTail(path, offset=cursor + 2)  # not at a line start: a rewritten file
    assert wrong.read_records() == [{"n": 1}, {"n": 2}]
    assert wrong.reset


def test_tail_reads_a_line_longer_than_max_bytes(tmp_path: Any) -> None:
    path = tmp_path / "c.jsonl"
    big = {"blob": "x" * 5000}
    jsonl.append_many(path, [big, {"n": 1}])
    tail = jsonl.JsonlTail(path, max_bytes=1024)
    got = []
    for _ in range(10):
        got += tail.read_records()
    assert got == [big, {"n": 1}]


def test_tail_looks_through_a_long_line_once_and_hands_it_out_cut(tmp_path: Any) -> None:
    """A line longer than ``max_line`` is read about once, however many polls its writer
    takes, and handed out cut to ``max_line + 1`` bytes with its real length in ``cut``."""
    path = tmp_path / "c.jsonl"
    tail = jsonl.JsonlTail(path, max_bytes=1024, max_line=100)
    jsonl.append(path, {"n": 1})
    assert [json.loads(raw) for _, raw in tail.read_lines()] == [{"n": 1}]
    start = tail.offset
    seen = 0
    for _ in range(20):  # a writer without a newline, 500 bytes at a time
        with open(path, "ab") as f:
            f.write(b"x" * 500)
        assert tail.read_lines() == []
        st = os.stat(path)
        seen = st.st_size - start
        assert tail.caught_up(st)  # nothing to read until more comes
    with open(path, "ab") as f:
        f.write(b'\n{"n":2}\n')
    ((end, raw),) = tail.read_lines()
    assert tail.cut == (end, seen) and raw == b"x" * 101 and end == start + seen + 1
    assert [json.loads(raw) for _, raw in tail.read_lines()] == [{"n": 2}]
    assert tail.cut is None


def test_read_last_walks_back_past_any_number_of_garbage_lines(tmp_path: Any) -> None:
    path = tmp_path / "l.jsonl"
    jsonl.append_many(path, [{"n": i} for i in range(3)])
    with open(path, "ab") as f:
        f.write(b"x" * 100 + b"\n")
        f.write((b"[" * 5000 + b"]" * 5000 + b"\n") * 30)  # 300 kB: past several blocks
        f.write(b"\0" * 200_000)  # a hole at the end, no newline
    assert jsonl.read_last(path, 2) == [{"n": 1}, {"n": 2}]
    assert jsonl.read_last(path, 1, block=4096) == [{"n": 2}]
    assert list(jsonl.iter_records(path)) == [{"n": 0}, {"n": 1}, {"n": 2}]


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
_records = st.lists(st.dictionaries(st.text(max_size=6), _json_values, max_size=4), max_size=12)


def poll(tail: jsonl.JsonlTail, kernel_style: bool) -> list[tuple[int, bytes]]:
    """One read, plainly or the way the kernel polls (one stat, read only when not caught up)."""
    if not kernel_style:
        return tail.read_lines()
    st = os.stat(tail.path)
    return [] if tail.caught_up(st) else tail.read_lines(st.st_size)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=_records,
    cuts=st.lists(st.integers(min_value=0), max_size=20),
    kernel_style=st.booleans(),
)
def test_any_chunking_of_appended_bytes_yields_exactly_the_complete_lines_once_in_order(
    tmp_path: Any, records: list[dict[str, Any]], cuts: list[int], kernel_style: bool
) -> None:
    data = b"".join((jsonl.dumps(r) + "\n").encode() for r in records)
    points = sorted({c % (len(data) + 1) for c in cuts} | {len(data)})
    path = tmp_path / f"p{os.getpid()}_{abs(hash((data, tuple(points))))}.jsonl"
    path.write_bytes(b"")
    tail = jsonl.JsonlTail(path)
    got: list[dict[str, Any]] = []
    ends: list[int] = []
    written = 0
    for point in points:
        with open(path, "ab") as f:
            f.write(data[written:point])
        written = point
        for end, raw in poll(tail, kernel_style):
            ends.append(end)
            got.append(json.loads(raw))
        # never past the last newline written so far: a torn line is never consumed
        assert tail.offset == data.rfind(b"\n", 0, written) + 1
        assert not tail.reset
    assert got == records
    assert ends == [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    path.unlink()


def _chunks(data: bytes, cuts: list[int]) -> list[int]:
    return sorted({c % (len(data) + 1) for c in cuts} | {len(data)})


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    old=_records,
    new=_records,
    old_cuts=st.lists(st.integers(min_value=0), max_size=8),
    new_cuts=st.lists(st.integers(min_value=0), max_size=8),
    how=st.sampled_from(["replace", "rewrite"]),
    kernel_style=st.booleans(),
)
def test_a_replacement_mid_stream_yields_the_new_file_whole_and_once(
    tmp_path: Any,
    old: list[dict[str, Any]],
    new: list[dict[str, Any]],
    old_cuts: list[int],
    new_cuts: list[int],
    how: str,
    kernel_style: bool,
) -> None:
    """Chunks of one file, then the file replaced (``os.replace``) or truncated and rewritten
    in place, in chunks: the reader yields the old file's complete lines, then the new file's
    lines from its start, each once. The one case no reader can see (rewritten in place, never
    seen shorter than the cursor, a ``\\n`` at the byte before the cursor) yields the new file
    from the cursor on, as ``tail -F`` would."""
    a = b"".join((jsonl.dumps(r) + "\n").encode() for r in old)
    b = b"".join((jsonl.dumps(r) + "\n").encode() for r in new)
    path = tmp_path / f"r{os.getpid()}_{abs(hash((a, b, how, tuple(old_cuts))))}.jsonl"
    path.write_bytes(b"")
    tail = jsonl.JsonlTail(path)
    got_old: list[dict[str, Any]] = []
    written = 0
    for point in _chunks(a, old_cuts):
        with open(path, "ab") as f:
            f.write(a[written:point])
        written = point
        got_old += [json.loads(raw) for _, raw in poll(tail, kernel_style)]
    assert got_old == old
    cursor = tail.offset
    assert cursor == len(a)
    points = _chunks(b, new_cuts)
    if how == "replace":
        tmp = tmp_path / (path.name + ".tmp")
        tmp.write_bytes(b[: points[0]])
        os.replace(tmp, path)
        written = points[0]
    else:
        os.truncate(path, 0)
        written = 0
    got: list[dict[str, Any]] = []
    resets = 0
    for point in points:
        with open(path, "ab") as f:
            f.write(b[written:point])
        written = point
        got += [json.loads(raw) for _, raw in poll(tail, kernel_style)]
        resets += tail.reset
        tail.reset = False
    seen = (
        cursor == 0
        or how == "replace"
        or any(p < cursor for p in points)  # polled while shorter: a shrink
        or b[cursor - 1 : cursor] != b"\n"  # the byte before the cursor isn't a line end
    )
    if seen:
        assert got == new
        assert resets == (cursor > 0)
    else:
        assert got == new[b[:cursor].count(b"\n") :]
        assert resets == 0
    assert tail.offset == len(b)
    path.unlink()


def test_read_last_returns_the_last_records_oldest_first(tmp_path: Any) -> None:
    path = tmp_path / "l.jsonl"
    assert jsonl.read_last(path) == []
    jsonl.append_many(path, [{"n": i} for i in range(100)])
    with open(path, "ab") as f:
        f.write(b'{"n": "partial')  # a write in progress is not a record yet
    assert jsonl.read_last(path) == [{"n": 99}]
    assert jsonl.read_last(path, 3) == [{"n": 97}, {"n": 98}, {"n": 99}]
    assert jsonl.read_last(path, 1000) == [{"n": i} for i in range(100)]


def test_read_last_on_a_big_file_reads_only_its_tail(tmp_path: Any, monkeypatch: Any) -> None:
    path = tmp_path / "big.jsonl"
    row = {"seq": 0, "payload": "y" * 200}
    with open(path, "wb") as f:
        for i in range(40_000):  # ~9 MB
            row["seq"] = i
            f.write((jsonl.dumps(row) + "\n").encode())
    size = os.path.getsize(path)
    read_bytes = 0
    real_open = open

    class Counting:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def seek(self, *a: Any) -> int:
            return self.f.seek(*a)

        def read(self, n: int = -1) -> bytes:
            nonlocal read_bytes
            data = self.f.read(n)
            read_bytes += len(data)
            return data

    monkeypatch.setattr(
        jsonl, "open", lambda p, mode="r": Counting(real_open(p, mode)), raising=False
    )
    last = jsonl.read_last(path, 2)
    assert [r["seq"] for r in last] == [39_998, 39_999]
    assert read_bytes <= 128 * 1024 < size // 50


def test_iter_records_skips_garbage_and_the_unfinished_last_line(tmp_path: Any) -> None:
    path = tmp_path / "i.jsonl"
    path.write_bytes(b'{"a":1}\nnot json\n[1,2]\n\n{"b":2}\n{"c":')
    assert list(jsonl.iter_records(path)) == [{"a": 1}, {"b": 2}]
    assert list(jsonl.iter_records(tmp_path / "missing.jsonl")) == []


def test_write_json_atomic_and_read_json(tmp_path: Any) -> None:
    path = tmp_path / "doc.json"
    assert jsonl.read_json(path, {"default": True}) == {"default": True}
    jsonl.write_json_atomic(path, {"v": 1, "x": math.inf})
    assert jsonl.read_json(path) == {"v": 1, "x": "inf"}
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]  # no temp file left behind
    path.write_text("{half")
    assert jsonl.read_json(path, "fallback") == "fallback"


def test_iter_records_keep_skips_lines_before_parsing(tmp_path: Any) -> None:
    path = tmp_path / "k.jsonl"
    jsonl.append_many(path, [{"d": "applied"}, {"d": "scheduled"}, {"d": "noop"}])
    seen: list[bytes] = []

    def keep(line: bytes) -> bool:
        seen.append(line)
        return b"scheduled" in line

    assert list(jsonl.iter_records(path, keep=keep)) == [{"d": "scheduled"}]
    assert len(seen) == 3
