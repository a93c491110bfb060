"""What ``hotcb bench`` says while it runs and in its report: the tuner with no room for a
trial, a partial bench's header and plurals, the actions column of a single seed, and the
progress bar between runs (in process, on tiny runs of the digits MLP)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")


def _md_row(md: str, label: str) -> list[str]:
    """The cells of the task table's row for ``label`` in report.md."""
    (line,) = [ln for ln in md.splitlines() if ln.startswith(f"| {label}")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_tuner_without_room_for_a_trial_is_warned_about(tmp_path: Path) -> None:
    """digits_mlp evaluates every 10 steps; a run this short gets segments of one evaluation
    (10 steps). The tuner watches two baseline segments and starts a trial only when it and
    one segment after it fit: 41 steps at least. At 40 it makes none, and the bench says so up
    front and in the report; at 41 it makes one (sync, the bench's default: it does not depend
    on Optuna's speed; without it the run ended before the study opened), and the bench says
    nothing."""
    pytest.importorskip("optuna")
    from hotcb.bench.report import write_report
    from hotcb.bench.runner import Settings, load_bench, run_bench

    said: dict[int, list[str]] = {}
    for steps in (40, 41):
        out = tmp_path / f"s{steps}"
        s = Settings(tasks=["digits_mlp"], conditions=["fixed", "tune"], steps=steps,
                     out=os.fspath(out), progress=False)  # fmt: skip  # sync: the default
        said[steps] = []
        run_bench(s, log=said[steps].append)
        write_report(os.fspath(out))
    _, runs = load_bench(os.fspath(tmp_path / "s40"))
    assert [r["notes"]["actions"] for r in runs if r["condition"] == "tune"] == [0]
    (warning,) = said[40]
    assert warning.startswith("hotcb bench: warning: tune: no room for a trial on digits_mlp "
                              "at 40 steps")  # fmt: skip
    assert "two baseline segments of 10 steps" in warning
    assert "at least 41 steps (--steps 41)" in warning
    meta = json.loads((tmp_path / "s40/bench.json").read_text())
    assert [w["min_steps"] for w in meta["warnings"]] == [41]
    md = (tmp_path / "s40/report.md").read_text()
    assert "Warnings:\n\n- tune: no room for a trial on digits_mlp at 40 steps" in md
    assert ("- Warning: hotcb tune had no room for a trial on digits_mlp at 40 steps "
            "(segments of 10 steps: it needs at least 41), so it made none") in md  # fmt: skip
    _, runs = load_bench(os.fspath(tmp_path / "s41"))
    assert [r["notes"]["actions"] for r in runs if r["condition"] == "tune"] == [1]
    assert said[41] == []
    assert "Warning" not in (tmp_path / "s41/report.md").read_text()


def test_short_runs_get_shorter_segments_so_the_tuner_has_trials() -> None:
    """5 evaluations a segment, fewer when the run cannot hold 8 of them: CIFAR-10's default
    2000 steps at an evaluation every 100 had segments of 500 and no room for one trial."""
    from hotcb.bench.runner import Settings, tune_min_steps, tune_segment
    from hotcb.bench.tasks import Task

    def task(total: int, every: int) -> Task:
        return Task("t", "t", total, every, 0.1, object)

    def settings(**kw: Any) -> Settings:
        return Settings(tasks=["t"], conditions=["tune"], **kw)

    cifar, digits = task(2000, 100), task(1200, 10)
    assert tune_segment(settings(), cifar) == 200 and tune_min_steps(200) <= 2000
    assert tune_segment(settings(), digits) == 50  # the benchmark's own, unchanged
    assert tune_segment(settings(steps=200), digits) == 20
    assert tune_segment(settings(segment_steps=300), cifar) == 300


def test_a_partial_report_says_what_ran_in_the_right_number(tmp_path: Path) -> None:
    """Interrupted in seed 1 of 2, after the three runs of seed 0: the header says which seeds
    ran, one seed's actions are counts (no mean, no spread), and one replay is one run."""
    from hotcb.bench.report import write_report
    from hotcb.bench.runner import Runner, Settings, run_bench

    calls = {"n": 0}
    real_run = Runner.run

    def run_then_interrupt(self: Any, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_run(self, *args)

    out = tmp_path / "out"
    s = Settings(tasks=["digits_mlp"], conditions=["fixed", "autopilot", "replay"], seeds=2,
                 steps=20, out=os.fspath(out), progress=False)  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Runner, "run", run_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_bench(s, log=lambda msg: None)
    meta = json.loads((out / "bench.json").read_text())
    assert meta["interrupted_after_runs"] == 3
    write_report(os.fspath(out))
    md = (out / "report.md").read_text()
    assert "Seeds 0, 1 planned, seed 0 ran;" in md
    assert "INTERRUPTED after 3 runs: a partial bench" in md
    actions = _md_row(md, "hotcb autopilot (rules)")[5]
    assert re.fullmatch(r"\d+ \(\d+\)", actions), actions  # not "0.0 (0.0)"
    assert "on its 1 run (" in md and "on all 1 runs" not in md
    assert re.search(r"\(\d+ recipe entr(y|ies) replayed\)", md)
    assert not (out / "runs/digits_mlp/fixed/s1").exists()  # the half run: discarded


def test_several_seeds_show_the_actions_spread(tmp_path: Path) -> None:
    from hotcb.bench.report import table

    def run(seed: int, actions: int, undone: int) -> dict[str, Any]:
        final = {"final_val_loss": 0.5, "final_val_acc": 0.9, "best_val_loss": 0.4,
                 "final_lr": 0.01}  # fmt: skip
        return {"task": "t", "condition": "autopilot", "seed": seed, "final": final,
                "seconds": 1.0, "notes": {"actions": actions, "undone": undone}}  # fmt: skip

    _, rows = table({"autopilot": [run(0, 1, 0), run(1, 3, 1)]})
    assert rows[0][5] == "2.0 ± 1.4 (0.5)"
    _, rows = table({"autopilot": [run(0, 2, 1)]})
    assert rows[0][5] == "2 (1)"


def test_the_progress_bar_forgets_the_last_run_when_the_next_starts(
    tmp_path: Path, capsys: Any
) -> None:
    """tqdm redraws the bar when the description names the next run: its postfix must not
    still show the finished run's "step 20/20, val loss …" then."""
    pytest.importorskip("tqdm")
    from hotcb.bench.runner import Settings, run_bench

    s = Settings(tasks=["digits_mlp"], conditions=["fixed", "cosine"], steps=20,
                 out=os.fspath(tmp_path / "out"), progress=True)  # fmt: skip
    run_bench(s, log=lambda msg: None)
    drawn = re.split(r"[\r\n]", capsys.readouterr().err)
    first_run = [d for d in drawn if "digits_mlp · fixed · seed 0" in d]
    assert any("step 20/20, val loss" in d for d in first_run), first_run  # it was shown
    second = next(d for d in drawn if "digits_mlp · cosine · seed 0" in d)
    assert "val loss" not in second, second


def _runs(*finals: float) -> list[dict[str, Any]]:
    return [{"final": {"final_val_loss": v}} for v in finals]


def test_a_lead_within_the_seeds_spread_is_said_either_way() -> None:
    """A baseline's lead inside the seeds' spread was said to be so; hotcb's was not ("ends
    below every baseline (0.317 ± 0.070)" against a baseline at 0.367 ± 0.044)."""
    from hotcb.bench.report import verdicts

    near = verdicts("t", {"plateau": _runs(0.41, 0.32), "autopilot": _runs(0.39, 0.24)})
    assert near == ["hotcb autopilot (rules) ends below every baseline on t (0.315 ± 0.106) "
                    "(ahead of ReduceLROnPlateau by less than the seeds' spread)."], near  # fmt: skip
    clear = verdicts("t", {"plateau": _runs(0.41, 0.40), "autopilot": _runs(0.20, 0.21)})
    assert clear == ["hotcb autopilot (rules) ends below every baseline on t (0.205 ± 0.007)."]
    behind = verdicts("t", {"plateau": _runs(0.30, 0.31), "autopilot": _runs(0.40, 0.41)})
    assert behind == ["ReduceLROnPlateau beats hotcb autopilot (rules) on t: final val loss "
                      "0.305 ± 0.007 vs 0.405 ± 0.007."]  # fmt: skip
