"""The fast first load of a metrics file (orjson, the columnar cache beside the file) gives
exactly what the plain ``json.loads`` reader gave: same series, same last record, same history
answers, on a file with a partial last line, NaN values in every spelling, non-numeric fields,
flat records, bad lines and a resumed run that logs earlier steps again."""

from __future__ import annotations

import json
import math
import os
from array import array
from bisect import bisect_left
from typing import Any

import pytest

pytest.importorskip("fastapi")

from hotcb.runfiles import METRICS, METRICS_INDEX
from hotcb.server import tailer
from hotcb.server.routers._runs import history
from hotcb.server.tailer import ColumnCache, MetricsIndex
from hotcb.testing import wait_for

_RESERVED = frozenset({"step", "epoch", "wall_time", "metrics", "v", "rank"})


class Reference:
    """The reader as it was before the fast paths: ``json.loads`` a line at a time."""

    def __init__(self, data: bytes) -> None:
        self.series: dict[str, tuple[array, array]] = {}
        self.lines = 0
        self.last_step: int | None = None
        self.last_wall_time: float | None = None
        self.last_record: Any = None
        complete = data[: data.rfind(b"\n") + 1]
        for raw in complete.split(b"\n")[:-1]:
            self.add(raw)

    def add(self, raw: bytes) -> None:
        try:
            rec = json.loads(raw)
        except ValueError:
            return
        if not isinstance(rec, dict):
            return
        step = rec.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            return
        step = int(step)
        metrics = rec.get("metrics")
        if not isinstance(metrics, dict):
            metrics = {k: v for k, v in rec.items() if k not in _RESERVED}
        for name, raw_value in metrics.items():
            value = tailer._number(raw_value)
            if value is None:
                continue
            steps, values = self.series.setdefault(name, (array("q"), array("d")))
            if steps and step < steps[-1]:
                cut = bisect_left(steps, step)
                del steps[cut:]
                del values[cut:]
            steps.append(step)
            values.append(value)
        self.lines += 1
        self.last_step = step
        wt = rec.get("wall_time")
        if isinstance(wt, (int, float)) and not isinstance(wt, bool):
            self.last_wall_time = float(wt)
        self.last_record = rec


def lines(n: int, start: int = 0) -> list[bytes]:
    out = []
    for s in range(start, start + n):
        loss: Any = 2.0 / (1 + s) + (s % 7) * 1e-3
        rec: dict[str, Any] = {"step": s, "wall_time": 1.7e9 + s, "metrics": {"loss": loss}}
        if s % 11 == 0:
            rec["metrics"]["loss"] = "nan"  # what hotcb writes for NaN
        if s % 13 == 0:
            rec["metrics"]["acc"] = None  # null: NaN
        if s % 17 == 0:
            rec["metrics"]["note"] = "warmup"  # a string that is not a number: skipped
            rec["metrics"]["flag"] = True  # a bool is not a metric
            rec["metrics"]["hist"] = [1, 2]
        if s % 19 == 0:
            rec["metrics"]["val"] = "1e-3"  # a number in a string
        if s % 23 == 0:
            rec["metrics"]["big"] = 10**30  # an int past 64 bits (orjson refuses it)
        out.append(json.dumps(rec, separators=(",", ":")).encode())
        if s % 29 == 0:  # flat records, as some loggers write them
            out.append(f'{{"step":{s},"epoch":1,"flat":{s / 3},"tag":"x"}}'.encode())
        if s % 31 == 0:  # bare NaN / Infinity tokens: json takes them, orjson does not
            out.append(f'{{"step":{s},"metrics":{{"tok":NaN,"inf":-Infinity}}}}'.encode())
        if s % 37 == 0:  # junk that is skipped
            out += [b"", b"not json", b"[1,2]", b'{"step":"seven"}', b'{"step":true}']
        if s % 41 == 0:
            out.append(f'{{"step":{s}.0,"metrics":{{"loss":0.5,"\\ud800":1}}}}'.encode())
    return out


def make_file(path: str) -> bytes:
    body = lines(3000)
    body += lines(500, start=2000)  # resumed from an earlier checkpoint
    body += lines(300, start=2500)
    data = b"\n".join(body) + b"\n" + b'{"step":2800,"metrics":{"loss":0.1'  # half written
    with open(path, "wb") as f:
        f.write(data)
    return data


def state(index: Any) -> dict[str, Any]:
    series = {
        name: (bytes(s[0] if isinstance(s, tuple) else s.steps),
               bytes(s[1] if isinstance(s, tuple) else s.values))
        for name, s in index.series.items()
    }  # fmt: skip
    return {
        "series": series,
        "lines": index.lines,
        "last_step": index.last_step,
        "last_wall_time": index.last_wall_time,
        "last_record": json.dumps(index.last_record, sort_keys=True),
    }


def answers(index: MetricsIndex) -> list[str]:
    names = index.names()
    out = []
    for mp, lo, hi in [(4000, None, None), (64, None, None), (100, 500.0, 2600.0), (8, 10.5, 11)]:
        out.append(json.dumps(history(index, names, mp, lo, hi), sort_keys=True))
    return out


@pytest.mark.parametrize("parser", ["orjson", "json"])
def test_first_load_same_as_reference(tmp_path: Any, parser: str, monkeypatch: Any) -> None:
    if parser == "orjson":
        pytest.importorskip("orjson")
    monkeypatch.setattr(
        tailer, "loads", tailer._loads_orjson if parser == "orjson" else tailer._loads_json
    )
    path = str(tmp_path / METRICS)
    data = make_file(path)
    ref = Reference(data)
    index = MetricsIndex(path)
    index.update()
    assert state(index) == state(ref)
    assert set(index.series) >= {"loss", "acc", "val", "big", "flat", "tok", "inf"}
    assert math.isnan(index.series["tok"].values[0]) and index.series["inf"].values[0] == -math.inf
    assert "note" not in index.series and "flag" not in index.series


def test_cache_round_trip_and_tail(tmp_path: Any) -> None:
    """Saved, loaded by a new index (as a restarted server does), then the rest of the file:
    the same state and the same answers as one index that read it all."""
    path = str(tmp_path / METRICS)
    make_file(path)
    first = MetricsIndex(path, cache=True, cache_min_bytes=1)
    first.update()
    assert first.cache_due and first.save_cache() and not first.cache_due
    assert os.path.exists(tmp_path / METRICS_INDEX) and first.source == {"from": "parsed"}
    # the trainer goes on: it finishes the half-written line and appends more
    more = b"}}\n" + b"\n".join(lines(400, start=2800)) + b"\n"
    with open(path, "ab") as f:
        f.write(more)
    with open(path, "rb") as f:
        data = f.read()
    again = MetricsIndex(path, cache=True, cache_min_bytes=1 << 40)
    again.update()
    assert again.source["from"] == "cache" and again.source["bytes"] == first.tail.offset
    ref = Reference(data)
    assert state(again) == state(ref)
    plain = MetricsIndex(path)
    plain.update()
    assert answers(again) == answers(plain)


def test_cache_of_another_file_is_not_used(tmp_path: Any) -> None:
    path = str(tmp_path / METRICS)
    make_file(path)
    old = MetricsIndex(path, cache=True, cache_min_bytes=1)
    old.update()
    assert old.save_cache()
    with open(path, "wb") as f:  # the run started over in this directory
        f.write(b"\n".join(lines(50, start=100)) + b"\n")
    index = MetricsIndex(path, cache=True)
    index.update()
    assert index.source == {"from": "parsed"}
    with open(path, "rb") as f:
        assert state(index) == state(Reference(f.read()))
    # a damaged cache file is ignored too
    (tmp_path / METRICS_INDEX).write_bytes(ColumnCache.MAGIC + b'{"offset": 5}\n')
    fresh = MetricsIndex(path, cache=True)
    fresh.update()
    assert fresh.source == {"from": "parsed"} and fresh.lines == index.lines


def test_incremental_updates_same_as_one_load(tmp_path: Any) -> None:
    path = str(tmp_path / METRICS)
    data = make_file(path)
    cut = data.rfind(b"\n") + 1
    with open(path, "wb") as f:
        f.write(b"")
    index = MetricsIndex(path)
    for i in range(0, cut, 7919):  # arbitrary pieces, lines split across them
        with open(path, "ab") as f:
            f.write(data[i : min(i + 7919, cut)])
        index.update(collect=5)
    assert state(index) == state(Reference(data))


def test_restarted_server_answers_from_the_cache(tmp_path: Any, live_server: Any) -> None:
    """A real server writes the cache after answering; a second server over the same folder
    starts from it and answers exactly the same."""
    run = tmp_path / "r"
    run.mkdir()
    path = run / METRICS
    with open(path, "w") as f:  # past CACHE_MIN_BYTES, written fast (formatted, not dumps)
        s = 0
        while f.tell() < tailer.CACHE_MIN_BYTES + (1 << 20):
            f.write(
                f'{{"step":{s},"wall_time":{1.7e9 + s:.3f},'
                f'"metrics":{{"loss":{2.0 / (1 + s):.6g},"acc":{s % 97 / 97:.6g}}}}}\n'
            )
            s += 1
    q = {"max_points": 500}
    first = live_server(str(tmp_path))
    with first.client() as c:
        answer = c.get("/api/runs/r/metrics", params=q).json()
    assert answer["total_points"] == 2 * s
    wait_for(lambda: (run / METRICS_INDEX).exists(), timeout=60, what="the cache file")
    first.stop()
    second = live_server(str(tmp_path))
    with second.client() as c:
        again = c.get("/api/runs/r/metrics", params=q).json()
    assert again == answer
    index = second.deps.registry.cached("r").metrics
    assert index.source == {"from": "cache", "bytes": os.path.getsize(path)}


@pytest.mark.parametrize("block", [1 << 24, 4096, 100])
def test_uniform_records_column_path_same_as_reference(tmp_path: Any, block: int) -> None:
    """What MetricsCollector writes (the same names on every line): read column by column, in
    blocks of any size (a line longer than a block too), with NaN as "nan", null, ints, a
    bool, a float step, and a resumed run that logs earlier steps again in a later block."""
    path = str(tmp_path / METRICS)
    out = []
    for s in [*range(0, 600), *range(400, 700)]:  # resumed from step 400
        loss: Any = "nan" if s % 50 == 7 else (s % 5 if s % 3 == 0 else 1.0 / (s + 1))
        acc: Any = None if s % 40 == 3 else s / 700
        rec = {"step": s, "wall_time": 1.7e9 + s, "metrics": {"loss": loss, "acc": acc, "ok": True}}
        out.append(json.dumps(rec, separators=(",", ":")).encode())
    out.append(b'{"step":700.0,"wall_time":1,"metrics":{"loss":0.5,"acc":0.5,"ok":false}}')
    out.append(b'{"step":701,"metrics":{"loss":0.25,"acc":0.75,"ok":false}}')  # no wall_time
    data = b"\n".join(out) + b"\n" + b'{"step":702,"metrics":{"lo'  # half written
    with open(path, "wb") as f:
        f.write(data)
    index = MetricsIndex(path)
    index.tail.max_bytes = block
    index.update()
    assert state(index) == state(Reference(data))
    assert index.tail.offset == data.rfind(b"\n") + 1
    with open(path, "ab") as f:  # the line is finished; the live tail takes over
        f.write(b'ss":0.1,"acc":0.2}}\n')
    assert index.update(collect=5)[-1]["step"] == 702
    with open(path, "rb") as f:
        assert state(index) == state(Reference(f.read()))
