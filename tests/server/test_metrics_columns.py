"""The trainer's column sidecar (``hotcb.metrics.cols``): a dashboard that opens a run reads the
columns MetricsCollector wrote beside its metrics file instead of parsing every line, and ends
with exactly what parsing gives, whatever happened to the run: NaN, metrics that come and go,
a resume from an earlier step, a trainer killed with its last block unwritten, a second writer,
a metrics file rewritten, a torn block."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest

pytest.importorskip("fastapi")

from hotcb.metrics import MetricsCollector, _columns
from hotcb.metrics._columns import read_blocks, sidecar_path
from hotcb.runfiles import METRICS, METRICS_COLUMNS
from hotcb.server.tailer import MetricsIndex
from hotcb.testing import wait_for


def state(index: MetricsIndex) -> dict[str, Any]:
    return {
        "series": {n: (bytes(s.steps), bytes(s.values)) for n, s in index.series.items()},
        "lines": index.lines,
        "last_step": index.last_step,
        "last_wall_time": index.last_wall_time,
        "last_record": json.dumps(index.last_record, sort_keys=True),
        "offset": index.tail.offset,
    }


def parsed(path: str) -> MetricsIndex:
    """The index as parsing the file gives it (the sidecar moved aside meanwhile)."""
    cols = sidecar_path(path)
    aside = cols + ".aside"
    moved = os.path.exists(cols)
    if moved:
        os.rename(cols, aside)
    try:
        index = MetricsIndex(path)
        index.update()
    finally:
        if moved:
            os.rename(aside, cols)
    assert index.source == {"from": "parsed"}
    return index


def opened(path: str) -> MetricsIndex:
    index = MetricsIndex(path)
    index.update()
    return index


def log_steps(c: MetricsCollector, steps: range) -> None:
    for s in steps:
        m: dict[str, Any] = {"loss": 1.0 / (s + 1), "learning_rate": 0.1}  # lr under its alias
        if s % 10 == 0:
            m["val_loss"] = float("nan") if s % 70 == 0 else s * 1e-3
        if s % 33 == 0:
            m["grad_norm"] = float("inf")  # non-finite: null in the file, NaN in the index
        c.log(s, m, epoch=s // 100)


def test_a_collected_run_opens_from_its_columns_exactly_as_parsed(
    tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(_columns, "BLOCK_LINES", 64)
    path = str(tmp_path / METRICS)
    c = MetricsCollector(str(tmp_path))
    log_steps(c, range(0, 1000))
    c.close()
    c = MetricsCollector(str(tmp_path))  # resumed from a checkpoint at step 600
    log_steps(c, range(600, 900))
    c.close()
    assert os.path.basename(sidecar_path(path)) == METRICS_COLUMNS
    index = opened(path)
    assert index.source["from"] == "columns"
    # the first session's blocks are read as columns; the resume goes back in steps, so from
    # there the parser takes over (it cuts the abandoned branch)
    with open(sidecar_path(path), "rb") as f:
        blocks = [h for h, _ in read_blocks(f.read())]
    assert len(blocks) == 1000 // 64 + 1 + 300 // 64 + 1
    assert sum(h["lines"] for h in blocks) == 1300 and index.source["bytes"] < os.path.getsize(path)
    assert state(index) == state(parsed(path))
    assert index.last_step == 899 and index.lines == 1300
    assert set(index.series) == {"loss", "lr", "val_loss", "grad_norm"}


def test_a_killed_trainer_loses_only_time_not_points(tmp_path: Any) -> None:
    """Killed with its buffered block unwritten, restarted: the lost block's lines are parsed."""
    path = str(tmp_path / METRICS)
    c = MetricsCollector(str(tmp_path))
    log_steps(c, range(0, 5000))  # one block of 4096 written, 904 records still buffered
    os.close(c._fd)  # the process dies: no close(), no flush
    assert c._columns is not None and c._columns._fd is not None
    os.close(c._columns._fd)
    c = MetricsCollector(str(tmp_path))
    log_steps(c, range(5000, 9500))
    c.close()
    index = opened(path)
    assert index.source["from"] == "columns"
    assert state(index) == state(parsed(path))
    assert index.lines == 9500 and len(index.series["loss"]) == 9500


def test_blocks_that_do_not_match_the_file_are_not_used(tmp_path: Any) -> None:
    path = str(tmp_path / METRICS)
    with MetricsCollector(str(tmp_path)) as c:
        log_steps(c, range(0, 300))
        c.flush()
        with open(path, "ab") as f:  # a second writer appends a line no block describes
            f.write(b'{"step":300,"metrics":{"other":1.5}}\n')
        log_steps(c, range(301, 600))
    index = opened(path)
    assert index.source["from"] == "columns" and index.lines == 600
    assert state(index) == state(parsed(path))
    assert list(index.series["other"].steps) == [300]

    # the metrics file rewritten by hand (same lines, one value changed): nothing matches
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data.replace(b'"step":299,', b'"step":299,"note":"edited",', 1))
    index = opened(path)  # the first block's bytes now end inside a line
    assert index.source == {"from": "parsed"}
    assert state(index) == state(parsed(path))


def test_a_rewritten_file_and_a_torn_block_are_parsed(tmp_path: Any) -> None:
    path = str(tmp_path / METRICS)
    with MetricsCollector(str(tmp_path)) as c:
        log_steps(c, range(0, 300))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:  # same size, another value: the block's last record differs
        f.write(
            data.replace(b'{"step":299,"epoch":2,"wall_time"', b'{"step":298,"epoch":2,"wall_time"')
        )
    index = opened(path)
    assert index.source == {"from": "parsed"} and index.last_step == 298
    assert state(index) == state(parsed(path))

    # a new metrics file in the same folder: the collector starts the sidecar over
    os.unlink(path)
    with MetricsCollector(str(tmp_path)) as c:
        log_steps(c, range(0, 10))
    index = opened(path)
    assert index.source["from"] == "columns" and index.lines == 10

    # a torn block (the disk filled up mid-write): the blocks before it are used
    with MetricsCollector(str(tmp_path)) as c:
        log_steps(c, range(10, 20))
    cols = sidecar_path(path)
    with open(cols, "r+b") as f:
        f.truncate(os.path.getsize(cols) - 5)
    index = opened(path)
    assert index.source["from"] == "columns" and index.source["bytes"] < os.path.getsize(path)
    assert state(index) == state(parsed(path)) and index.lines == 20


@pytest.mark.parametrize("how", ["deleted", "rotated"])
def test_a_metrics_file_deleted_or_rotated_while_training_is_written_again(
    tmp_path: Any, monkeypatch: Any, how: str
) -> None:
    """The collector kept writing the file it held open: after ``rm hotcb.metrics.jsonl`` (or a
    rotation's ``mv``) no reader saw another point of the run."""
    monkeypatch.setattr(_columns, "BLOCK_LINES", 16)
    path = str(tmp_path / METRICS)
    c = MetricsCollector(str(tmp_path))
    log_steps(c, range(0, 100))
    if how == "deleted":
        os.unlink(path)
    else:
        os.rename(path, path + ".1")
    step = [100]

    def logged_again() -> bool:
        log_steps(c, range(step[0], step[0] + 1))
        step[0] += 1
        return os.path.exists(path)

    wait_for(logged_again, timeout=60, interval=0.05, what="the metrics file written again")
    first = step[0] - 1  # the step whose record made the file again
    log_steps(c, range(step[0], step[0] + 40))
    c.close()
    index = opened(path)
    assert index.source["from"] == "columns" and index.lines == 41
    assert list(index.series["loss"].steps)[:1] == [first] and index.last_step == first + 40
    assert state(index) == state(parsed(path))
    if how == "rotated":  # the rotated file holds every earlier point (up to a second's more)
        old = MetricsIndex(path + ".1")
        old.update()
        assert list(old.series["loss"].steps) == list(range(first))


def test_a_step_past_int64_is_skipped_not_a_crash(tmp_path: Any) -> None:
    """No int64 column holds it: the collector leaves it out of its blocks and every reader
    skips it like a bad line (the server used to raise on it)."""
    path = str(tmp_path / METRICS)
    with MetricsCollector(str(tmp_path)) as c:
        log_steps(c, range(0, 20))
        c.log(1 << 64, {"loss": 0.5})
        log_steps(c, range(20, 23))
    with open(path, "ab") as f:
        f.write(b'{"step":1e400,"metrics":{"loss":1}}\n{"step":NaN,"metrics":{"loss":1}}\n')
    index = opened(path)
    assert index.source["from"] == "columns" and index.lines == 23
    assert state(index) == state(parsed(path)) and index.last_step == 22


def test_metrics_are_recorded_when_the_sidecar_cannot_be_written(tmp_path: Any) -> None:
    os.mkdir(sidecar_path(str(tmp_path / METRICS)))  # a folder where the file should be
    with MetricsCollector(str(tmp_path)) as c:
        log_steps(c, range(0, 50))
    index = opened(str(tmp_path / METRICS))
    assert index.source == {"from": "parsed"} and index.lines == 50


TRAINER = textwrap.dedent(
    """
    import sys, time
    from hotcb import HotKernel
    kernel = HotKernel(run_dir=sys.argv[1])
    step = 0
    while True:
        loss = 1.0 / (step + 1)
        kernel.apply({"step": step, "metrics": {"loss": loss, "acc": step % 10 / 10}}, ["step"])
        step += 1
        if step == 9000:
            print("ready", flush=True)
        if step > 9000:
            time.sleep(0.001)
    """
)


@pytest.mark.slow
def test_a_server_opens_a_killed_trainers_run_from_its_columns(
    tmp_path: Any, live_server: Any
) -> None:
    """A real trainer (HotKernel in a subprocess) logs past two blocks and is killed with
    SIGKILL; a real server then answers the history exactly as parsing the file would."""
    run = tmp_path / "r"
    run.mkdir()
    script = tmp_path / "train.py"
    script.write_text(TRAINER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
    path = str(run / METRICS)
    assert os.path.getsize(sidecar_path(path)) > 0
    srv = live_server(str(tmp_path))
    q = {"names": "loss,acc", "max_points": 500}
    with srv.client() as c:
        answer = c.get("/api/runs/r/metrics", params=q).json()
    index = srv.deps.registry.cached("r").metrics
    assert index.source["from"] == "columns" and index.source["bytes"] > 0
    assert state(index) == state(parsed(path))
    assert answer["total_points"] == 2 * index.lines and index.lines >= 9000
