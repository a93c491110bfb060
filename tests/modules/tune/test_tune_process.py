"""The tuner in a real trainer process, steered by the real CLI: kill -9 and resume keep the
study's numbering; a trainer without optuna refuses ``tune enable`` with the install line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy

from hotcb import HotClient
from hotcb.testing import read_ledger, trainer_command, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


def read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f.read().split("\n")[:-1] if line.strip()]


def _trials(run_dir: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="hotcb-run", storage=f"sqlite:///{run_dir}/hotcb.tune.db")
    return study.get_trials(deepcopy=False)


def _judged(run_dir: str) -> int:
    st = HotClient(run_dir).tune_status()
    counts = st.get("counts") or {}
    return int(counts.get("kept", 0)) + int(counts.get("rolled_back", 0))


def _stopped_with(pid: int, look: Callable[[], list[int]]) -> list[int]:
    """Stop process ``pid`` (SIGSTOP) and ``look``; what it found, the process left stopped,
    or nothing, the process let go on (SIGCONT)."""
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: _proc_state(pid) in ("T", "t"), 60, what=f"process {pid} stopped")
    found = look()
    if not found:
        os.kill(pid, signal.SIGCONT)
    return found


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:  # "pid (comm) S ...": the state follows the name
        return f.read().rsplit(")", 1)[1].split()[0]


def test_kill_9_and_resume_keep_the_trial_numbering(
    run_dir: str, cli: Any, tmp_path: Any, start_trainer: Any
) -> None:
    trace = os.fspath(tmp_path / "trace.jsonl")
    os.makedirs(run_dir)
    done = cli(run_dir, "tune", "enable", "--mode", "active", "--objective", "loss",
                "--segment-steps", "10", "--seed", "0")  # fmt: skip
    assert done.returncode == 0, done.stderr
    t = start_trainer(run_dir, trace, steps=100_000, step_delay=0.002, checkpoint_at=120)
    ckpt = os.path.join(run_dir, "ckpt_120.pt")

    def crash_point() -> bool:  # after the checkpoint, with trials judged and one open
        if not (os.path.exists(ckpt) and _judged(run_dir) >= 8):
            return False
        return any(tr.state == optuna.trial.TrialState.RUNNING for tr in _trials(run_dir))

    wait_for(crash_point, 240, what="an open trial after the checkpoint")
    t.proc.kill()  # kill -9: no close(); the open trial stays RUNNING in the study
    t.communicate()
    left = HotClient(run_dir).tune_status()  # what the run stopped in, no phase going on
    status = cli(run_dir, "tune", "status").stdout
    stopped_in = (
        rf"; it stopped in trial {left['trial']}[ )]" if left["phase"] == "trial" else r"\)"
    )
    assert re.search(r"phase: none \(the run is over" + stopped_in, status), (left, status)
    before = _trials(run_dir)
    last_before = max(tr.number for tr in before)

    t2 = start_trainer(run_dir, trace + ".2", steps=100_000, step_delay=0.002, resume=ckpt)
    wait_for(lambda: max(tr.number for tr in _trials(run_dir)) >= last_before + 3, 240,
             what="new trials after the resume")  # fmt: skip
    t2.proc.kill()
    t2.communicate()
    after = _trials(run_dir)
    numbers = [tr.number for tr in after]
    assert numbers == list(range(len(after)))  # one numbering, nothing lost or doubled
    old = {tr.number: tr for tr in after if tr.number <= last_before}
    for tr in before:  # what was finished before the crash stays as it was
        if tr.state != optuna.trial.TrialState.RUNNING:
            assert old[tr.number].state == tr.state and old[tr.number].value == tr.value
    was_open = [tr.number for tr in before if tr.state == optuna.trial.TrialState.RUNNING]
    for number in was_open:  # re-evaluated (the checkpoint's open trial) or told FAIL
        assert old[number].state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    # the resumed tuner did not replay the crashed life's tune ops: new trials have new numbers
    mutates = [
        e for e in read_ledger(run_dir) if e.get("op") == "mutate" and e.get("module") == "tune"
    ]
    trial_ids = [e["tune"]["trial"] for e in mutates if e["decision"] == "applied"]
    assert len(trial_ids) == len(set(trial_ids))
    # a trial the crashed life wrote but did not live to apply: not applied by the next one
    for e in mutates:
        if e["decision"] != "applied":
            assert e["decision"] == "noop" and "in an earlier process" in e["error"], e


def test_a_trainer_without_optuna_refuses_tune_enable(
    run_dir: str, cli: Any, tmp_path: Any, request: Any
) -> None:
    """optuna is an extra: without it the trainer ledgers the refusal with the install line,
    and ``tune enable --wait`` exits non-zero and prints it."""
    shadow = tmp_path / "no_optuna"
    (shadow / "optuna").mkdir(parents=True)
    (shadow / "optuna" / "__init__.py").write_text('raise ImportError("No module named optuna")\n')
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), str(ROOT / "src")])
    trace = os.fspath(tmp_path / "trace.jsonl")
    argv = trainer_command(run_dir, trace=trace, steps=100_000, step_delay=0.005)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    request.addfinalizer(lambda: (proc.kill(), proc.communicate()))
    wait_for(lambda: len(read_jsonl(trace)) >= 3, 120, what="the trainer's first steps")
    done = cli(run_dir, "tune", "enable", "--objective", "loss", "--wait", "--timeout", "120")
    assert done.returncode != 0
    assert 'pip install "hotcb[tune]"' in done.stdout + done.stderr
    (entry,) = [e for e in read_ledger(run_dir) if e.get("module") == "tune"]
    assert entry["decision"] == "rejected" and 'pip install "hotcb[tune]"' in entry["error"]
    steps = len(read_jsonl(trace))
    wait_for(lambda: len(read_jsonl(trace)) >= steps + 5, 60, what="training going on")
    assert proc.poll() is None
    assert not os.path.exists(os.path.join(run_dir, "hotcb.tune.db"))
    # and `tune status` later says why the tuner is off, not just that it is
    status = cli(run_dir, "tune", "status").stdout
    assert f"the last tune enable (#{entry['seq']}, step {entry['step']}) was refused" in status
    assert 'pip install "hotcb[tune]"' in status and "tuner: off" in status


def test_cli_status_proposals_accept_and_export(
    run_dir: str, cli: Any, tmp_path: Any, start_trainer: Any
) -> None:
    os.makedirs(run_dir)
    assert cli(run_dir, "tune", "status").stdout.startswith("tuner: off")
    done = cli(run_dir, "tune", "enable", "--mode", "suggest", "--objective", "loss",
                "--segment-steps", "10", "--seed", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    t = start_trainer(run_dir, os.fspath(tmp_path / "trace.jsonl"), steps=100_000, step_delay=0.002)

    def pending() -> list[dict[str, Any]]:
        out = cli(run_dir, "tune", "proposals", "--json")
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []

    (proposal,) = wait_for(pending, 240, what="a proposal")
    listed = cli(run_dir, "tune", "proposals").stdout
    assert proposal["id"] in listed and "opt.lr" in listed
    # the move as an accept applies it, to the lr in force then (the values shown are those of
    # the step it was made at: a proposal accepted much later multiplies another lr)
    move = proposal["moves"]["opt.lr"]
    assert f"opt.lr x{move:.3g} on accept (" in listed and f"at step {proposal['step']})" in listed
    status = cli(run_dir, "tune", "status")
    assert "tuner: suggest" in status.stdout and "objective: loss" in status.stdout
    done = cli(run_dir, "tune", "accept", proposal["id"], "--wait", "--timeout", "120")
    assert done.returncode == 0, done.stderr

    def judged() -> bool:
        st = HotClient(run_dir).tune_status()
        return any(r["trial"] == proposal["trial"] and r["decision"] in ("kept", "rolled_back")
                   for r in st["trials"])  # fmt: skip

    wait_for(judged, 240, what="the accepted trial judged")
    bad = cli(run_dir, "tune", "accept", "P999", "--wait", "--timeout", "120")
    assert bad.returncode != 0 and "no proposal 'P999'" in bad.stdout + bad.stderr
    assert cli(run_dir, "tune", "disable", "--wait", "--timeout", "120").returncode == 0
    t.proc.kill()
    t.communicate()
    out = cli(run_dir, "tune", "export", "--out", os.fspath(tmp_path / "kept.jsonl"))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in (tmp_path / "kept.jsonl").read_text().splitlines()]
    kept = [r for r in HotClient(run_dir).tune_status()["trials"] if r["decision"] == "kept"]
    assert len(lines) - 1 == len(kept)  # a header, then one set_params per kept trial
    for rec in lines[1:]:
        assert rec["module"] == "opt" and rec["op"] == "set_params"


def test_enable_wait_says_whether_the_run_could_open_the_study(
    run_dir: str, cli: Any, tmp_path: Any, start_trainer: Any
) -> None:
    """``tune enable --wait`` printed "applied" and exited 0 for a storage the run then failed
    to open, a few steps later: the user learnt it only from ``tune status``. It now waits
    for the study: the run's refusal and exit 1, or the study it opened."""
    trace = os.fspath(tmp_path / "trace.jsonl")
    start_trainer(run_dir, trace, steps=100_000, step_delay=0.002)
    wait_for(lambda: len(read_jsonl(trace)) >= 3, 120, what="the trainer's first steps")
    nowhere = f"sqlite:///{run_dir}/no/such/dir/study.db"  # (inside: else refused)
    bad = cli(run_dir, "tune", "enable", "--objective", "loss", "--storage", nowhere,
              "--wait", "--timeout", "120")  # fmt: skip
    assert bad.returncode == 1, bad.stdout + bad.stderr
    applied, failed = bad.stdout.splitlines()  # one line each
    assert "tune enable -> applied" in applied
    assert "tune enable -> failed: could not open study" in failed and "no/such/dir" in failed
    good = cli(run_dir, "tune", "enable", "--objective", "loss", "--wait", "--timeout", "120")
    assert good.returncode == 0, good.stdout + good.stderr
    assert (
        good.stdout.splitlines()[-1] == f"study hotcb-run open in sqlite:///{run_dir}/hotcb.tune.db"
    )
    assert HotClient(run_dir).tune_status()["mode"] == "active"
    # the same again: nothing to change, and its study is open (it waited 30 s, then exit 2)
    again = cli(run_dir, "tune", "enable", "--objective", "loss", "--wait", "--timeout", "120")
    assert again.returncode == 0, again.stdout + again.stderr
    said, study = again.stdout.splitlines()
    assert "tune enable -> noop" in said, said
    assert said.endswith(
        ": the tuner runs in active mode with these settings already: nothing to change"
    )
    assert study == f"study hotcb-run open in sqlite:///{run_dir}/hotcb.tune.db"
    # a storage that cannot be a storage is refused before anything is sent
    shape = cli(run_dir, "tune", "enable", "--storage", "shared.db", "--wait")
    assert shape.returncode == 2 and "sqlite:///shared.db" in shape.stderr, shape.stderr
    # (the run's active tuner appends commands of its own meanwhile: none of them is this)
    written = read_jsonl(os.path.join(run_dir, "hotcb.commands.jsonl"))
    assert not [c for c in written if "shared.db" in json.dumps(c)]
    # a paused run opens its study when it trains again: --wait says so instead of timing out
    assert cli(run_dir, "pause", "--wait", "--timeout", "120").returncode == 0
    paused = cli(run_dir, "tune", "enable", "--objective", "loss", "--study", "other", "--wait",
                 "--timeout", "120")  # fmt: skip
    assert paused.returncode == 0, paused.stdout + paused.stderr
    assert "the run is paused; it opens the study when it trains again" in paused.stderr
    status = cli(run_dir, "tune", "status").stdout  # it said nothing of the pause
    assert "run: paused (the tuner waits with it: 'hotcb resume' goes on)" in status, status
    assert cli(run_dir, "resume", "--wait", "--timeout", "120").returncode == 0
    assert "run: paused" not in cli(run_dir, "tune", "status").stdout
    wait_for(lambda: HotClient(run_dir).tune_status().get("study_open"), 120, what="the study")


def test_a_restart_without_a_checkpoint_keeps_when_the_run_joined_and_what_it_left_open(
    tmp_path: Any, cli: Any, start_trainer: Any
) -> None:
    """Two runs share a study; the second is killed -9 with a trial open and started again
    from scratch (no checkpoint). Its `study_joined` moved to the restart (counting the
    first run's trials told since), and the trial the crash left open was told FAIL and
    counted, with no row and no ledger entry."""
    storage, runs = f"sqlite:///{tmp_path / 'shared.db'}", []
    for name in ("first", "second"):
        run = os.fspath(tmp_path / name)
        os.makedirs(run)
        done = cli(run, "tune", "enable", "--mode", "active", "--objective", "loss",
                   "--segment-steps", "10", "--seed", "0", "--storage", storage,
                   "--study", "s")  # fmt: skip
        assert done.returncode == 0, done.stderr
        runs.append(run)
    first, second = runs
    start_trainer(
        first,
        os.fspath(tmp_path / "first.jsonl"),
        steps=100_000,
        step_delay=0.002,
        allowed_root=tmp_path,
    )  # the study's folder (docs/tune.md)
    wait_for(lambda: _judged(first) >= 3, 240, what="the first run's trials")
    t = start_trainer(second, os.fspath(tmp_path / "second.jsonl"), steps=100_000,
                      step_delay=0.002, allowed_root=tmp_path)  # fmt: skip
    wait_for(lambda: HotClient(second).tune_status().get("study_joined"), 240,
             what="the second run to join the study")  # fmt: skip
    joined = HotClient(second).tune_status()["study_joined"]
    study = optuna.load_study(study_name="s", storage=storage)

    def open_in_second() -> list[int]:  # once the first has told more since the join
        try:
            trials = study.get_trials(deepcopy=False)
        except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
            # locked by the trainer, stopped in a write
            return []
        told = [
            tr for tr in trials if tr.user_attrs.get("run") != second and tr.state.is_finished()
        ]
        if len(told) <= joined["trials"]:
            return []
        return [tr.number for tr in trials if tr.user_attrs.get("run") == second
                and tr.state == optuna.trial.TrialState.RUNNING]  # fmt: skip

    # the trainer is stopped while its study is read: a trial seen open and then told by the
    # running trainer before the kill landed left nothing open for the restart to find
    (left_open,) = wait_for(lambda: _stopped_with(t.proc.pid, open_in_second), 240,
                            what="an open trial of the second run")  # fmt: skip
    t.proc.kill()  # kill -9: nothing closes the trial
    t.communicate()
    start_trainer(
        second,
        os.fspath(tmp_path / "second2.jsonl"),
        steps=100_000,
        step_delay=0.002,
        allowed_root=tmp_path,
    )
    why = "left open by a process of this run that ended before judging it (a kill or a crash): told FAIL"

    def voided() -> list[dict[str, Any]]:
        return [e for e in read_ledger(second) if e.get("op") == "void"
                and (e.get("tune") or {}).get("trial") == left_open]  # fmt: skip

    (void,) = wait_for(voided, 240, what="the restart's ledger entry for the open trial")
    assert void["tune"]["reason"] == why
    st = HotClient(second).tune_status()
    assert st["study_joined"] == joined  # when it first joined, not the restart
    (row,) = [r for r in st["trials"] if r["trial"] == left_open]
    assert row["decision"] == "failed" and row["detail"]["reason"] == why
    assert st["counts"]["failed"] == 1
    assert study.trials[left_open].state == optuna.trial.TrialState.FAIL
