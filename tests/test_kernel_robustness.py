"""The kernel keeps its word when things go wrong around it.

Each test causes the failure for real: a command nested a thousand levels deep, a ledger entry
no JSON encoder can write, a full disk (a tiny tmpfs, root on Linux only), a file a write must
replace turned into a directory, a write cut short at the file size limit (``RLIMIT_FSIZE`` in
a subprocess), a run directory reached through a symlink that is pointed elsewhere, and two
trainer processes started on one run directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcb import HotClient, HotKernel, jsonl
from hotcb.errors import CommandError
from hotcb.ops import MAX_COMMAND_DEPTH, command_to_hotop, make_command
from hotcb.recipe import export_recipe
from hotcb.runfiles import RunPaths
from hotcb.testing import StepDriver, TorchStepDriver, fill_filesystem, read_ledger, wait_for

torch = pytest.importorskip("torch")

#: Environment for subprocesses: never inherit a run directory from the developer's shell.
ENV = {k: v for k, v in os.environ.items() if k not in ("HOTCB_DIR", "RANK")}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def nested(depth: int) -> Any:
    """A list ``depth`` levels deep around a 1, built without recursion."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# -- a command nested too deep ------------------------------------------------------------------


def test_a_deeply_nested_command_is_rejected_and_its_batch_is_ledgered(run_dir: str) -> None:
    with TorchStepDriver(run_dir) as drv:
        drv.steps(2)
        before = drv.client.opt(lr=0.004)
        deep = {"v": 1, "cmd_id": "deep-1", "source": "hand", "module": "cb",
                "op": "set_params", "id": "foo", "params": {"k": nested(200)}}  # fmt: skip
        # written by hand (hotcb's client refuses it, below): 1.2 KB of brackets
        drv.raw(json.dumps(deep) + "\n")
        after = drv.client.opt(lr=0.003)
        drv.steps()  # one poll reads all three
        entries = drv.ledger()
        assert [e["cmd_id"] for e in entries] == [before, "deep-1", after]
        assert [e["decision"] for e in entries] == ["applied", "rejected", "applied"]
        assert f"more than {MAX_COMMAND_DEPTH} levels deep" in entries[1]["error"]
        assert "params.k" in entries[1]["error"]
        assert drv.opt.param_groups[0]["lr"] == 0.003


def test_the_client_and_the_cli_refuse_a_deeply_nested_command(run_dir: str, cli: Any) -> None:
    assert cli(run_dir, "init").returncode == 0
    commands = RunPaths(run_dir).commands
    size = os.path.getsize(commands) if os.path.exists(commands) else 0
    with pytest.raises(ValueError, match="levels deep"):
        HotClient(run_dir).send("cb", "set_params", id="foo", params={"k": nested(986)})
    done = cli(run_dir, "cb", "set_params", "foo", "k=" + "[" * 986 + "1" + "]" * 986)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert f"more than {MAX_COMMAND_DEPTH} levels deep" in done.stderr
    # deeper than Python's own recursion limit: refused where the value is read
    done = cli(run_dir, "cb", "set_params", "foo", "k=" + "[" * 5000 + "1" + "]" * 5000)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-300:]
    assert "nested too deep to be a value" in done.stderr
    assert (os.path.getsize(commands) if os.path.exists(commands) else 0) == size


def test_a_command_nested_as_deep_as_allowed_is_accepted() -> None:
    record = make_command("cb", "set_params", id="foo", params={"k": nested(MAX_COMMAND_DEPTH - 1)})
    assert record["params"]["k"] == nested(MAX_COMMAND_DEPTH - 1)
    # any field counts its levels as params does (an extra field was refused a level early)
    deep = {"k": nested(MAX_COMMAND_DEPTH - 1)}
    command_to_hotop(
        {"cmd_id": "a", "module": "cb", "op": "set_params", "id": "foo", "recipe_line": deep}
    )
    with pytest.raises(CommandError, match="levels deep"):
        command_to_hotop({"cmd_id": "b", "module": "cb", "op": "set_params", "id": "foo",
                          "recipe_line": {"k": nested(MAX_COMMAND_DEPTH)}})  # fmt: skip


# -- an entry that cannot be written ------------------------------------------------------------


def test_an_entry_no_encoder_can_write_costs_no_other_entry_of_its_batch(
    run_dir: str, caplog: Any
) -> None:
    with TorchStepDriver(run_dir) as drv:
        drv.steps(2)
        first = drv.client.opt(lr=0.004)
        second = drv.client.opt(lr=0.003)
        # what modules record at this safe point: a value nested past what json's encoder
        # takes (5000 levels: a RecursionError at any stack depth), and a cycle
        drv.kernel.record({"module": "cb", "op": "note", "decision": "noop",
                           "detail": nested(5000)})  # fmt: skip
        cycle: dict[str, Any] = {"a": 1}
        cycle["self"] = cycle
        drv.kernel.record({"module": "cb", "op": "note", "decision": "noop", "detail": cycle})
        with caplog.at_level(logging.WARNING, logger="hotcb"):
            drv.steps()
        entries = drv.ledger()
        assert [e.get("cmd_id") for e in entries] == [None, None, first, second]
        assert [e["decision"] for e in entries] == ["failed", "failed", "applied", "applied"]
        assert [e["seq"] for e in entries] == [1, 2, 3, 4]
        deep, circular = entries[:2]
        assert (
            deep["op"] == "note"
            and deep["detail"] == "<not written: nested more than 100 levels deep>"
        )
        assert "could not be written as JSON (nested more than 100 levels deep)" in deep["error"]
        assert "detail replaced; it was 'noop'" in deep["error"]
        assert circular["detail"] == "<not written: ValueError: Circular reference detected>"
        assert not any(e["op"] == "internal_error" for e in entries)
        assert not any(r.levelno >= logging.ERROR for r in caplog.records)
        assert drv.opt.param_groups[0]["lr"] == 0.003


def test_a_hand_written_command_a_thousand_levels_deep_costs_its_batch_nothing(
    run_dir: str,
) -> None:
    with TorchStepDriver(run_dir) as drv:
        drv.steps(2)
        before = drv.client.opt(lr=0.004)
        k = "[" * 986 + "1" + "]" * 986  # 2 KB
        drv.raw('{"cmd_id":"deep","module":"cb","op":"set_params","id":"foo","params":{"k":'
                + k + "}}\n")  # fmt: skip
        after = drv.client.opt(lr=0.003)
        drv.steps()
        entries = drv.ledger()
        assert [e["decision"] for e in entries] == ["applied", "rejected", "applied"]
        assert [e["cmd_id"] for e in entries][::2] == [before, after]
        assert drv.opt.param_groups[0]["lr"] == 0.003


def test_an_entry_that_cannot_be_written_stays_rejected(run_dir: str) -> None:
    with TorchStepDriver(run_dir) as drv:
        drv.steps(1)
        drv.kernel.record({"module": "opt", "op": "set_params", "decision": "rejected",
                           "error": "lr is not a number", "params": {"lr": nested(5000)}})  # fmt: skip
        cid = drv.client.opt(lr=0.004)
        drv.steps()
        bad, good = drv.ledger()
        assert bad["decision"] == "rejected" and bad["error"].startswith("lr is not a number; ")
        assert good["cmd_id"] == cid and good["decision"] == "applied"


# -- a full disk --------------------------------------------------------------------------------


def fill_ledger_page(drv: StepDriver) -> None:
    """Apply commands until the ledger's last page has no room for another entry: a full
    tmpfs still takes writes into the last page of a file."""
    while (size := os.path.getsize(drv.paths.ledger)) == 0 or -size % 4096 > 250:
        drv.client.opt(lr=0.01)
        drv.steps()


def applied_on_a_full_disk(run_dir: str, fs: str) -> tuple[TorchStepDriver, str, str]:
    """A run that applies ``lr=0.005`` while its disk is full: the driver, the command's id
    and the filler to delete when space should come back."""
    drv = TorchStepDriver(run_dir, metrics_collector=False)
    drv.steps(3)
    fill_ledger_page(drv)
    cid = drv.client.opt(lr=0.005)
    filler = fill_filesystem(fs)
    drv.steps()  # applied; its ledger entry cannot be written
    assert drv.opt.param_groups[0]["lr"] == 0.005
    assert drv.entries(cid) == []
    return drv, cid, filler


def test_a_checkpoint_carries_the_entries_a_full_disk_kept_out_of_the_ledger(
    small_fs: str, tmp_path: Any
) -> None:
    run_dir = os.path.join(small_fs, "run")
    dead, cid, filler = applied_on_a_full_disk(run_dir, small_fs)
    dead_step = dead.step
    dead.steps(2)
    ckpt = os.fspath(tmp_path / "ckpt.pt")  # saved elsewhere: the run's disk is full
    torch.save({"step": dead.step, "model": dead.model.state_dict(),
                "opt": dead.opt.state_dict(), "hotcb": dead.kernel.state_dict()}, ckpt)  # fmt: skip
    del dead  # killed (-9): never closed, the entry never written
    os.unlink(filler)  # space is back

    saved = torch.load(ckpt, weights_only=False)
    assert [e["cmd_id"] for e in saved["hotcb"]["unwritten"]] == [cid]
    with TorchStepDriver(run_dir, metrics_collector=False) as drv:
        drv.model.load_state_dict(saved["model"])
        drv.opt.load_state_dict(saved["opt"])
        drv.kernel.load_state_dict(saved["hotcb"])
        drv.step = saved["step"]
        (entry,) = drv.entries(cid)  # written by the resume, once
        assert entry["decision"] == "applied" and entry["step"] == dead_step
        assert entry["changes"]["lr"]["new"] == 0.005
        drv.steps(3)
        assert drv.entries(cid) == [entry]  # not applied again: the cursor is past it
        assert drv.lr[drv.step] == 0.005
        assert HotClient(run_dir).wait(cid, timeout=5)["seq"] == entry["seq"]
        cid2 = drv.client.opt(lr=0.002)
        drv.steps()
        assert drv.only(cid2)["seq"] == entry["seq"] + 1
    _, rows = export_recipe(run_dir, os.fspath(tmp_path / "recipe.jsonl"))
    assert [(r.step, r.params) for r in rows][-2:] == [(dead_step, {"lr": 0.005}),
                                                      (dead_step + 6, {"lr": 0.002})]  # fmt: skip


def test_entries_the_process_wrote_after_its_checkpoint_are_not_written_again(
    small_fs: str, tmp_path: Any
) -> None:
    run_dir = os.path.join(small_fs, "run")
    dead, cid, filler = applied_on_a_full_disk(run_dir, small_fs)
    state = dead.kernel.state_dict()
    assert [e["cmd_id"] for e in state["unwritten"]] == [cid]
    os.unlink(filler)
    dead.steps()  # space came back before the kill: the entry went out
    assert len(dead.entries(cid)) == 1
    del dead
    with StepDriver(run_dir) as drv:
        drv.kernel.load_state_dict(state)
        drv.steps(2)
    assert [e["cmd_id"] for e in read_ledger(run_dir)].count(cid) == 1


def test_a_checkpoint_loaded_after_a_restart_without_it_writes_no_command_twice(
    small_fs: str,
) -> None:
    run_dir = os.path.join(small_fs, "run")
    dead = TorchStepDriver(run_dir, metrics_collector=False)
    dead.steps(3)
    fill_ledger_page(dead)
    cid = dead.client.opt(lr=0.005)
    filler = fill_filesystem(small_fs)
    dead.kernel.record({"module": "cb", "op": "note", "decision": "noop"})  # a module's entry
    dead.steps()  # the note and the command's entry: neither can be written
    state = dead.kernel.state_dict()
    note_seq, _ = (e["seq"] for e in state["unwritten"])
    del dead
    os.unlink(filler)
    with TorchStepDriver(run_dir, metrics_collector=False) as again:  # no checkpoint loaded
        again.steps(2)  # reads the command again, from the ledger's cursor
        assert again.only(cid)["seq"] == note_seq  # the seq the dead process gave its note
    with TorchStepDriver(run_dir, metrics_collector=False) as drv:
        drv.kernel.load_state_dict(state)
        drv.steps()
        assert len(drv.entries(cid)) == 1  # applied by the restart: not written a second time
        notes = [e for e in drv.ledger() if e["op"] == "note"]
        assert len(notes) == 1 and notes[0]["late"] == {"seq": note_seq}
        assert notes[0]["seq"] == note_seq + 1  # after the restart's last entry
    seqs = [e["seq"] for e in read_ledger(run_dir)]
    assert seqs == sorted(set(seqs))


def test_close_on_a_full_disk_says_which_entries_are_lost(small_fs: str, caplog: Any) -> None:
    run_dir = os.path.join(small_fs, "run")
    with TorchStepDriver(run_dir, metrics_collector=False) as drv:
        drv.steps(2)
        fill_ledger_page(drv)
        drv.client.stop()
        filler = fill_filesystem(small_fs)
        with caplog.at_level(logging.WARNING, logger="hotcb"):
            drv.steps()  # the stop is applied; its entry cannot be written (a warning, once)
            assert drv.kernel.stop_requested
            caplog.clear()
            drv.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.records
    assert "1 ledger entry (control stop) is lost" in errors[0]
    assert "No space left on device" in errors[0]
    assert "applies those commands again" in errors[0]
    os.unlink(filler)
    assert read_ledger(run_dir)[-1]["op"] != "stop"


# -- a file that cannot be replaced -------------------------------------------------------------


def test_a_freeze_that_cannot_be_saved_is_failed_and_not_in_force(run_dir: str) -> None:
    with TorchStepDriver(run_dir) as drv:
        drv.steps(2)
        os.mkdir(drv.paths.freeze)  # hotcb.freeze.json cannot be replaced now
        cid = drv.client.freeze("prod")
        drv.steps()
        entry = drv.only(cid)
        assert entry["decision"] == "failed"
        assert "hotcb.freeze.json" in entry["error"] and "stays off" in entry["error"]
        assert drv.kernel.freeze.mode.value == "off"
        lr = drv.client.opt(lr=0.004)
        drv.steps()
        assert drv.only(lr)["decision"] == "applied"  # not ignored_freeze: the run is not frozen
        os.rmdir(drv.paths.freeze)
        again = drv.client.freeze("prod")
        drv.steps()
        assert drv.only(again)["decision"] == "applied"
        assert drv.kernel.freeze.mode.value == "prod"
        assert jsonl.read_json(drv.paths.freeze)["mode"] == "prod"


def test_the_actuators_file_catches_up_after_a_failed_write(run_dir: str) -> None:
    with TorchStepDriver(run_dir) as drv:
        drv.steps(2)
        assert drv.actuators()["lr"]["current"] == 0.01
        os.unlink(drv.paths.actuators)
        os.mkdir(drv.paths.actuators)  # cannot be replaced now
        cid = drv.client.opt(lr=0.004)
        drv.steps()
        assert drv.only(cid)["decision"] == "applied"
        os.rmdir(drv.paths.actuators)  # writable again; no command follows

        def published() -> bool:
            drv.steps()
            return os.path.isfile(drv.paths.actuators) and drv.actuators()["lr"]["current"] == 0.004

        wait_for(published, timeout=10, what="hotcb.actuators.json with lr=0.004")


# -- a write cut short --------------------------------------------------------------------------

_CUT_SHORT = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
from hotcb import HotKernel

run_dir = sys.argv[1]
metrics = os.path.join(run_dir, "hotcb.metrics.jsonl")
kernel = HotKernel(run_dir, poll_interval_sec=0)

def limit(extra):
    size = os.path.getsize(metrics) + extra if extra is not None else resource.RLIM_INFINITY
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))

def step(s):
    kernel.apply({"step": s, "metrics": {"loss": 1.0 / (s + 1)}})

for s in range(3):
    step(s)
limit(20)
step(3)  # 20 bytes of its line fit
step(4)  # nothing fits
limit(None)  # space is back
step(5)
limit(20)
step(6)  # cut short again, and the process dies
os._exit(0)
"""


def test_a_metrics_record_after_a_write_cut_short_starts_on_its_own_line(run_dir: str) -> None:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(_CUT_SHORT), run_dir],
                         capture_output=True, text=True, timeout=120, env=ENV)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "could not record metrics" in res.stderr
    kernel = HotKernel(run_dir)  # the next process
    kernel.apply({"step": 7, "metrics": {"loss": 0.125}})
    kernel.close()
    with open(RunPaths(run_dir).metrics, "rb") as f:
        lines = f.read().split(b"\n")
    assert lines[-1] == b""
    steps, torn = [], []
    for line in lines[:-1]:
        record = jsonl.parse_line(line)
        (torn if record is None else steps).append(line if record is None else record["step"])
    assert steps == [0, 1, 2, 5, 7]
    assert [len(t) for t in torn] == [20, 20]  # the two partial lines, alone on theirs


# -- the run directory ---------------------------------------------------------------------------


def test_a_run_started_through_a_symlink_stays_in_its_directory(
    tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    run_b = os.fspath(tmp_path / "runB")  # an older run, stopped by a command
    with StepDriver(run_b) as old:
        old.steps(2)
        old.client.stop()
        old.steps()
        assert old.kernel.stop_requested
    ledger_b = read_ledger(run_b)
    run_a, latest = os.fspath(tmp_path / "runA"), os.fspath(tmp_path / "latest")
    os.symlink("runA", latest)
    tr = start_trainer(latest, os.fspath(tmp_path / "trace.jsonl"), steps=100_000,
                       step_delay=0.01)  # fmt: skip
    tr.wait_step(1)
    client = HotClient(latest, source="test")
    assert client.wait(client.opt(lr=0.004), timeout=30)["decision"] == "applied"
    tmp_link = latest + ".new"
    os.symlink("runB", tmp_link)
    os.replace(tmp_link, latest)  # `ln -sfn runB latest`: now latest names the old run
    client_a = HotClient(run_a, source="test")
    cid = client_a.opt(lr=0.002)
    assert client_a.wait(cid, timeout=30)["decision"] == "applied"
    tr.wait_step(tr.last_step() + 2)
    assert tr.proc.poll() is None  # runB's stop was not applied to it
    assert read_ledger(run_b) == ledger_b
    assert [e["params"] for e in read_ledger(run_a)] == [{"lr": 0.004}, {"lr": 0.002}]
    meta = jsonl.read_json(RunPaths(run_a).run_meta)
    assert meta["run_dir"] == os.path.realpath(run_a)
    status = cli(run_a, "status")
    assert status.returncode == 0 and "[running]" in status.stdout, status.stdout


def test_a_second_trainer_on_a_live_run_says_so(
    run_dir: str, tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    first = start_trainer(run_dir, os.fspath(tmp_path / "a.jsonl"), steps=100_000,
                          step_delay=0.01)  # fmt: skip
    first.wait_step(1)
    second = start_trainer(run_dir, os.fspath(tmp_path / "b.jsonl"), steps=100_000,
                           step_delay=0.01)  # fmt: skip
    second.wait_step(1)

    def noted() -> list[dict[str, Any]]:
        return [e for e in read_ledger(run_dir) if e.get("op") == "other_trainer"]

    (note,) = wait_for(noted, timeout=30, what="the ledger's note about the other trainer")
    pid = first.proc.pid
    assert note["other_pid"] == pid and note["decision"] == "noop"
    assert f"another trainer (pid {pid} on this host) is still running" in note["error"]
    status = cli(run_dir, "status")
    assert f"kernel other_trainer -> noop: another trainer (pid {pid}" in status.stdout
    second.kill()
    _, err = second.communicate()
    assert f"hotcb: another trainer (pid {pid} on this host) is still running in" in err
    first.kill()


def test_two_trainers_in_one_run_the_one_that_closes_first_does_not_end_the_run(
    run_dir: str, tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    """`hotcb status` names both live trainers, and the run is over only when the last one
    closes: before, the first to close marked it finished (and `tune accept`, `--wait` …
    refused a run that still trained), and status named only the newer pid."""
    older = StepDriver(run_dir)  # this process: the trainer started first
    older.steps(2)
    newer = start_trainer(run_dir, os.fspath(tmp_path / "b.jsonl"), steps=100_000,
                          step_delay=0.01)  # fmt: skip
    newer.wait_step(1)
    status = cli(run_dir, "status")
    assert f"pid {newer.proc.pid} on" in status.stdout
    assert f"and pid {os.getpid()}, started before it, still runs here" in status.stdout
    older.close()
    status = cli(run_dir, "status")
    assert "[running]" in status.stdout and "finished" not in status.stdout, status.stdout
    assert f"pid {newer.proc.pid} on" in status.stdout and "started before it" not in status.stdout
    newer.kill()

    other = os.fspath(tmp_path / "other")  # the other order: the newer one closes first
    first = start_trainer(other, os.fspath(tmp_path / "c.jsonl"), steps=100_000, step_delay=0.01)
    first.wait_step(1)
    with StepDriver(other) as second:
        second.steps(2)
    status = cli(other, "status")
    assert "[running]" in status.stdout and "finished" not in status.stdout, status.stdout
    assert f"pid {first.proc.pid} on" in status.stdout
    first.kill()


def test_other_ranks_a_copied_run_and_a_closed_run_say_nothing_about_another_trainer(
    run_dir: str, tmp_path: Any, start_trainer: Any, monkeypatch: Any, caplog: Any
) -> None:
    tr = start_trainer(run_dir, os.fspath(tmp_path / "a.jsonl"), steps=100_000, step_delay=0.01)
    tr.wait_step(1)
    monkeypatch.setenv("RANK", "1")  # a rank other than 0 of a distributed run writes no file
    with caplog.at_level(logging.WARNING, logger="hotcb"):
        HotKernel(run_dir, metrics_collector=False).close()
    assert not [r for r in caplog.records if "another trainer" in r.getMessage()]
    assert jsonl.read_json(RunPaths(run_dir).run_meta)["pid"] == tr.proc.pid
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's rank 1, before fit() makes the group
    with caplog.at_level(logging.WARNING, logger="hotcb"):
        HotKernel(run_dir, metrics_collector=False).close()
    assert not [r for r in caplog.records if "another trainer" in r.getMessage()]
    assert jsonl.read_json(RunPaths(run_dir).run_meta)["pid"] == tr.proc.pid
    monkeypatch.delenv("LOCAL_RANK")
    copy = os.fspath(tmp_path / "copy")  # a copy of the live run: its trainer is elsewhere
    os.mkdir(copy)
    for name in ("hotcb.run.json", "hotcb.commands.jsonl", "hotcb.applied.jsonl"):
        shutil.copy(os.path.join(run_dir, name), copy)
    with caplog.at_level(logging.WARNING, logger="hotcb"):
        HotKernel(copy, metrics_collector=False).close()
    assert not [r for r in caplog.records if "another trainer" in r.getMessage()]
    tr.kill()
    finished = os.fspath(tmp_path / "finished")
    done = start_trainer(finished, os.fspath(tmp_path / "b.jsonl"), steps=3)
    assert done.finish()[0] == 0
    with caplog.at_level(logging.WARNING, logger="hotcb"), StepDriver(finished) as drv:
        drv.steps(2)
    assert not [r for r in caplog.records if "another trainer" in r.getMessage()]
    assert not [e for e in read_ledger(finished) if e.get("op") == "other_trainer"]


def test_metrics_that_cannot_be_recorded_say_which_file(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """ "could not record metrics: PermissionError(13, 'Permission denied')" named no file."""
    run_dir = os.fspath(tmp_path / "run")
    os.makedirs(os.path.join(run_dir, "hotcb.metrics.jsonl"))  # in the way of the file
    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    for step in range(3):
        kernel.apply({"step": step, "metrics": {"loss": 1.0}})
    kernel.close()
    said = [r.getMessage() for r in caplog.records if "could not record metrics" in r.getMessage()]
    assert len(said) == 1 and os.path.join(run_dir, "hotcb.metrics.jsonl") in said[0], said


def test_a_forked_child_that_leaves_through_close_leaves_the_run_alone(run_dir: str) -> None:
    """A process forked from the training (a user's own pool) that ends through the loop's
    `finally: kernel.close()` wrote into the parent's live run: a ramp "superseded" that went
    on in the parent, the ledger's seq numbers twice, a heartbeat with the dead child's pid."""
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    client = HotClient(run_dir)
    ramp = client.set_params("opt", {"lr": 0.01}, transition={"steps": 50})
    for step in range(5):
        kernel.apply({"step": step, "optimizer": opt})
    pid = os.fork()
    if pid == 0:  # the child: what a sys.exit() there unwinding through `finally` does
        try:
            kernel.close()
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    for step in range(5, 60):
        kernel.apply({"step": step, "optimizer": opt})
    beat = jsonl.read_json(RunPaths(run_dir).heartbeat)
    kernel.close()
    assert beat["pid"] == os.getpid()
    entries = read_ledger(run_dir)
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(set(seqs))  # one writer
    ramped = [e for e in entries if e["cmd_id"] == ramp]
    assert [e["step"] for e in ramped] == [0, 50]  # its start and its end, nothing between
    assert "superseded" not in json.dumps(ramped), ramped
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_a_torn_last_entry_is_set_aside_when_the_run_starts_again(
    run_dir: str, caplog: Any
) -> None:
    """A trainer killed while writing a ledger entry left half a line; the next life wrote
    its entries after it, and the ledger held an invalid JSON line that a reader parsing
    each line (``json.loads``, pandas) failed on. The torn end goes to
    ``hotcb.applied.jsonl.torn``, with a warning; the command it was recording is applied again
    (its entry never landed) and the ledger is valid JSON lines, one entry per ``seq``."""
    first = StepDriver(run_dir, weights={"a": 1.0}, metrics_collector=False)
    first.steps(3, actions={1: lambda c: c.loss(a=0.5), 2: lambda c: c.loss(a=0.25)})
    first.kernel.close()
    ledger = Path(RunPaths(run_dir).ledger)
    whole = ledger.read_bytes()
    ledger.write_bytes(whole[:-60])  # the last entry (a=0.25), torn
    torn = whole[whole.rfind(b"\n", 0, len(whole) - 1) + 1 : -60]
    with caplog.at_level(logging.WARNING, logger="hotcb"):
        again = StepDriver(run_dir, weights={"a": 0.5}, metrics_collector=False)
        again.steps(2)
        again.kernel.close()
    entries = [json.loads(line) for line in ledger.read_bytes().splitlines()]  # all JSON
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(set(seqs)), seqs
    assert again.weights["a"] == 0.25  # the torn entry's command applied (again)
    assert Path(f"{ledger}.torn").read_bytes() == torn + b"\n"
    assert any("ended with a torn entry" in r.getMessage() for r in caplog.records)
