"""By default the tuner talks to Optuna on a thread of its own: a slow study (a remote
database, a sampler reading thousands of trials) never holds up a training step, and a score
still queued when the process dies is not lost."""

from __future__ import annotations

import copy
import importlib.util
import re
import threading
from typing import Any

import optuna
from tune_helpers import Toy, log_level

from hotcb import HotClient, HotKernel
from hotcb.modules.tune._study import Study
from hotcb.testing import wait_for

LR_ONLY = [{"key": "lr", "module": "opt", "mode": "mult", "low": 0.5, "high": 2.0, "max": 10.0}]


def _trials(run_dir: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="hotcb-run", storage=f"sqlite:///{run_dir}/hotcb.tune.db")
    return study.get_trials(deepcopy=False)


def test_training_goes_on_while_optuna_answers(toy: Any, monkeypatch: Any) -> None:
    """An ask that does not answer leaves the loop stepping at the values in force; the trial
    starts at the first step after the answer lands, and its score reaches the study."""
    gate = threading.Event()
    real_ask = Study.ask

    def slow_ask(self: Study, *args: Any, **kw: Any) -> Any:
        assert threading.current_thread() is not threading.main_thread()
        gate.wait(120)
        return real_ask(self, *args, **kw)

    monkeypatch.setattr(Study, "ask", slow_ask)
    t: Toy = toy(log_level, lr=1e-4)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    HotClient(t.kernel.run_dir).tune_enable(
        "active", objective="loss", segment_steps=10, seed=0, space=LR_ONLY
    )
    t.run(5000, until=lambda: tune() is not None and tune().phase == "asking")
    asked_at = t.step
    t.run(300)  # 300 steps while the study is silent: none waited, none changed the lr
    assert tune().phase == "asking" and t.lr == 1e-4 and not t.ledger("mutate")

    gate.set()
    t.run(100_000, until=lambda: bool(t.ledger("mutate")))
    (mutate,) = t.ledger("mutate")
    assert mutate["decision"] == "applied" and mutate["step"] > asked_at + 300
    trial = mutate["tune"]["trial"]
    t.run(100_000, until=lambda: tune().counts["kept"] + tune().counts["rolled_back"] >= 1)
    wait_for(lambda: _trials(t.kernel.run_dir)[trial].state.is_finished(), timeout=60,
             what=f"trial {trial}'s score to reach the study")  # fmt: skip
    done = _trials(t.kernel.run_dir)[trial]
    assert done.state == optuna.trial.TrialState.COMPLETE and done.value is not None


def test_a_score_still_queued_at_a_checkpoint_is_written_on_resume(
    toy: Any, monkeypatch: Any
) -> None:
    """The process dies with a judged trial's score still in the queue: the run resumed from
    the checkpoint writes that score (COMPLETE), it does not count the trial as failed."""
    t: Toy = toy(lambda lr, _s: 1.0 if lr == 1e-3 else 3.0, lr=1e-3)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    HotClient(t.kernel.run_dir).tune_enable(
        "active", objective="loss", segment_steps=10, seed=0, space=LR_ONLY
    )
    stuck = threading.Event()
    real_tell = Study.tell

    def lost_tell(self: Study, number: int, score: Any, attrs: Any = None) -> None:
        if score is not None:  # the score never lands: the process "dies" first
            stuck.set()
            return
        real_tell(self, number, score, attrs)

    monkeypatch.setattr(Study, "tell", lost_tell)
    t.run(100_000, until=lambda: tune() is not None and tune().counts["rolled_back"] >= 1)
    wait_for(stuck.is_set, timeout=60, what="the score to be handed to the study's thread")
    (row,) = [r for r in tune().trials if r["decision"] == "rolled_back"]
    assert _trials(t.kernel.run_dir)[row["trial"]].state == optuna.trial.TrialState.RUNNING
    checkpoint = t.kernel.state_dict()
    monkeypatch.setattr(Study, "tell", real_tell)

    resumed = HotKernel(t.kernel.run_dir)
    try:
        resumed.load_state_dict(checkpoint)
        done = _trials(t.kernel.run_dir)[row["trial"]]
        assert done.state == optuna.trial.TrialState.COMPLETE
        assert done.value == row["score"]
        assert resumed.module("tune").counts["failed"] == tune().counts["failed"]
    finally:
        resumed.close()


def test_a_study_that_cannot_be_opened_turns_the_tuner_off_with_the_reason(
    toy: Any, tmp_path: Any, cli: Any
) -> None:
    """The study opens on the tuner's thread; a storage that fails there is ledgered with the
    reason and the tuner turns off, while training goes on."""
    t: Toy = toy(log_level, lr=1e-4)
    bad = f"sqlite:///{t.kernel.run_dir}/no/such/dir/study.db"  # (inside: else refused)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            storage=bad)  # fmt: skip
    t.run(100_000, until=lambda: any(e["decision"] == "failed" for e in t.ledger("enable")))
    (failed,) = [e for e in t.ledger("enable") if e["decision"] == "failed"]
    assert "could not open study" in failed["error"] and "no/such/dir" in failed["error"]
    t.run(50)
    st = HotClient(t.kernel.run_dir).tune_status()
    assert st["mode"] == "off" and "could not open study" in st["warnings"][0]
    assert t.lr == 1e-4
    # `tune status` names the enable that was sent (applied first, failed later), not only
    # the entry that says it failed
    (applied,) = [e for e in t.ledger("enable") if e["decision"] == "applied"]
    said = cli(t.kernel.run_dir, "tune", "status").stdout
    assert (
        f"the last tune enable (#{applied['seq']}, step {applied['step']}) failed at "
        f"#{failed['seq']}, step {failed['step']}: could not open study"
    ) in said, said


def test_segments_that_pass_while_the_study_opens_are_said(toy: Any, monkeypatch: Any) -> None:
    """A short run can end before Optuna is imported and its storage opened: `tune status`
    says why no trial came instead of showing baseline after baseline."""
    gate = threading.Event()
    real_init = Study.__init__

    def slow_open(self: Study, *args: Any, **kw: Any) -> None:
        gate.wait(120)
        real_init(self, *args, **kw)

    monkeypatch.setattr(Study, "__init__", slow_open)
    t: Toy = toy(log_level, lr=1e-4)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, space=LR_ONLY)
    t.run(60)  # two baseline segments, then boundaries where a trial was due
    gate.set()
    (note,) = client.tune_status()["warnings"]
    said = re.fullmatch(
        r"no trial while the study was opening \((\d+) segment boundaries, the last at step "
        r"(\d+)\): importing Optuna and opening its storage takes a few seconds", note
    )  # fmt: skip
    assert said and int(said[1]) >= 3 and 40 < int(said[2]) <= 60, note
    t.run(100_000, until=lambda: bool(t.ledger("mutate")))  # then trials start


def test_trials_a_replaced_life_judged_after_the_checkpoint_are_listed_as_replaced(
    toy: Any, cli: Any
) -> None:
    """The run goes on past a checkpoint, judges more trials, then dies; resumed from that
    checkpoint, its status lists those trials (the study holds their real scores) as replaced,
    with what that life decided, instead of leaving a gap in the numbering."""
    t: Toy = toy(log_level, lr=1e-4)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            seed=0, space=LR_ONLY, sync=True)  # fmt: skip
    judged = lambda: tune().counts["kept"] + tune().counts["rolled_back"]  # noqa: E731
    t.run(100_000, until=lambda: tune() is not None and judged() >= 1)
    checkpoint = t.kernel.state_dict()
    frozen = copy.deepcopy(checkpoint)
    known = {r["trial"] for r in tune().trials}
    t.run(100_000, until=lambda: judged() >= 4)  # the life a crash will replace
    assert checkpoint == frozen  # a snapshot: what came after is not in it
    lost = {r["trial"]: r for r in tune().trials
            if r["trial"] not in known and r["decision"] in ("kept", "rolled_back")}  # fmt: skip
    assert len(lost) >= 3

    resumed = HotKernel(t.kernel.run_dir)
    try:
        resumed.load_state_dict(checkpoint)
        rows = {r["trial"]: r for r in resumed.module("tune").trials}  # what status lists
        for number, row in lost.items():
            assert rows[number]["decision"] == "replaced"
            assert rows[number]["was"] == row["decision"]
            assert rows[number]["score"] == row["score"]
            assert rows[number]["step"] == row["step"]
        assert sorted(rows) == list(range(len(rows)))  # no gap in the numbering
        counts = resumed.module("tune").counts  # the run's own: what the checkpoint holds
        assert counts["kept"] + counts["rolled_back"] == 1
        # `tune status` counts them too (only --json listed them)
        out = cli(t.kernel.run_dir, "tune", "status").stdout
        assert f"replaced: {len(lost)} (by a resume)" in out, out
    finally:
        resumed.close()


def test_a_storage_whose_driver_is_missing_says_what_to_install(toy: Any) -> None:
    """`--storage postgresql://…` in an environment without psycopg2: Optuna says only "Failed
    to import DB access module"; the ledger and `tune status` say which package to install."""
    assert importlib.util.find_spec("psycopg2") is None, "the test needs psycopg2 missing"
    t: Toy = toy(log_level, lr=1e-4)
    url = "postgresql://bob:secret@127.0.0.1:1/optuna"
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", storage=url)
    t.run(100_000, until=lambda: any(e["decision"] == "failed" for e in t.ledger("enable")))
    (failed,) = [e for e in t.ledger("enable") if e["decision"] == "failed"]
    assert "pip install psycopg2-binary" in failed["error"], failed["error"]
    assert "secret" not in failed["error"]


def test_a_trial_judged_in_both_lives_says_which_score_the_study_keeps(
    toy: Any, tmp_path: Any
) -> None:
    """A checkpoint inside a trial, the trial judged after it, a crash, a resume from the
    checkpoint: the resumed life judges the trial again and acts on its own score, which `tune
    status` showed while the study kept the first life's (a probe: -0.0652 against -0.0863)."""
    t: Toy = toy(log_level, lr=1e-4)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    HotClient(t.kernel.run_dir).tune_enable(
        "active", objective="loss", segment_steps=10, seed=0, space=LR_ONLY, sync=True
    )
    t.run(100_000, until=lambda: tune() is not None and tune().phase == "trial")
    number = tune().trial["number"]
    checkpoint = copy.deepcopy(t.kernel.state_dict())
    t.run(100_000, until=lambda: tune().trial is None or tune().trial["number"] != number)
    first = _trials(t.kernel.run_dir)[number]
    assert first.state.is_finished()

    resumed = HotKernel(t.kernel.run_dir)
    try:
        resumed.load_state_dict(checkpoint)
        (row,) = [r for r in resumed.module("tune").trials if r["trial"] == number]
        assert row["study_score"] == first.value
        assert "the study keeps that score" in row["note"]
        st = HotClient(t.kernel.run_dir).tune_status()
        (shown,) = [r for r in st["trials"] if r["trial"] == number]
        assert shown["study_score"] == first.value
    finally:
        resumed.close()
    assert _trials(t.kernel.run_dir)[number].value == first.value  # told once
