"""The tuner as a user drives it: the real ``hotcb`` CLI in its own process against a real
kernel (bad proposal ids, a broken recipe, ``tune status`` once the run is over), and what a
trainer logs reaching the tuner the way Lightning and the HF Trainer log it (a validation
metric repeated on every step, an objective that never comes, segments counted in
evaluations near the run's end)."""

from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Any

import optuna
import pytest
from tune_helpers import Toy, log_level

from hotcb import HotClient
from hotcb.modules.tune import parse_settings
from hotcb.recipe import ledger_to_entries
from hotcb.testing import read_ledger

LR_ONLY = [{"key": "lr", "module": "opt", "mode": "mult", "low": 0.5, "high": 2.0, "max": 10.0}]
#: a storage the run cannot open: a SQLite file in a folder that does not exist
NOWHERE = "sqlite:////nonexistent-hotcb-folder/study.db"

BROKEN = """\
objective: val_loss
direction: sideways
segment_steps: -3
space:
  - key: lr
    module: opt
    mode: mul
    low: 4
    high: 0.25
colour: blue
"""


def _commands(run_dir: str) -> bytes:
    path = os.path.join(run_dir, "hotcb.commands.jsonl")
    if not os.path.exists(path):
        return b""
    with open(path, "rb") as f:
        return f.read()


def _pending(client: HotClient) -> list[dict[str, Any]]:
    return [p for p in client.tune_status().get("proposals", []) if p["state"] == "pending"]


def _first_proposal(toy: Any) -> tuple[Toy, HotClient, dict[str, Any]]:
    """A run whose tuner (suggest mode) has made its first proposal: the run, a client, it."""
    t: Toy = toy(log_level, lr=1e-4)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("suggest", objective="loss", segment_steps=10, seed=1, space=LR_ONLY,
                       sync=True)  # fmt: skip
    t.run(500, until=lambda: bool(_pending(client)))
    (first,) = _pending(client)
    return t, client, first


def test_accept_or_reject_of_an_unknown_or_decided_proposal_is_refused_with_exit_2(
    toy: Any, cli: Any
) -> None:
    t, client, first = _first_proposal(toy)
    run = t.kernel.run_dir
    before = _commands(run)
    for verb, ident in (("accept", "P999"), ("accept", "foo"), ("reject", "P999")):
        out = cli(run, "tune", verb, ident)
        assert out.returncode == 2, (verb, ident, out.stdout, out.stderr)
        assert out.stdout == ""
        (line,) = out.stderr.strip().splitlines()  # one line
        assert f"no proposal {ident!r}" in line and f"pending: {first['id']}" in line
    assert _commands(run) == before  # nothing was sent

    assert cli(run, "tune", "reject", first["id"].lower()).returncode == 0  # p3 is P3
    t.run(100_000, until=lambda: client.tune_status()["proposals"][0]["state"] == "rejected")
    again = cli(run, "tune", "accept", first["id"])
    assert again.returncode == 2
    assert f"proposal {first['id']} is rejected, not pending" in again.stderr
    with pytest.raises(ValueError, match="no proposal 'P999'"):  # the Python client too
        client.tune_accept("P999")
    # a tuner that is not in suggest mode makes no proposals: the refusal says so
    client.tune_enable("active")
    t.run(100_000, until=lambda: client.tune_status()["mode"] == "active")
    out = cli(run, "tune", "accept", "P999")
    assert out.returncode == 2 and "the tuner is active: proposals come in suggest mode" in (
        out.stderr)  # fmt: skip


def test_a_pending_proposal_of_a_finished_run_cannot_be_decided(toy: Any, cli: Any) -> None:
    t, client, first = _first_proposal(toy)
    run = t.kernel.run_dir
    t.kernel.close()
    before = _commands(run)
    for verb in ("accept", "reject"):
        out = cli(run, "tune", verb, first["id"])
        assert out.returncode == 2, (verb, out.stdout, out.stderr)
        assert f"the run finished at step {t.step}: proposal {first['id']} ended" in out.stderr
    assert _commands(run) == before  # nothing queued for a later run to apply
    with pytest.raises(ValueError, match="ended with it"):  # the Python client too
        client.tune_accept(first["id"])
    # and nothing shows it as still pending
    listed = cli(run, "tune", "proposals")
    assert listed.stdout.strip() == f"no pending proposals (the run finished at step {t.step})"
    assert f"{first['id']}  step {first['step']}" in cli(run, "tune", "proposals", "--all").stdout
    st = json.loads(cli(run, "tune", "status", "--json").stdout)
    assert [p["state"] for p in st["proposals"] if p["id"] == first["id"]] == ["ended"]


def test_a_broken_recipe_is_refused_before_anything_is_sent(run_dir: str, cli: Any) -> None:
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "bad.yaml"), "w") as f:
        f.write(BROKEN)
    out = cli(run_dir, "tune", "enable", "--recipe", "bad.yaml")
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [x.strip() for x in out.stderr.strip().splitlines()]
    assert "has 5 problem(s)" in lines[0]
    problems = lines[1:]
    assert [p.split(":")[0] for p in problems] == [
        "line 2", "line 3", "line 7", "line 9", "line 10",
    ]  # fmt: skip  # every problem, in the file's order
    assert "direction: 'sideways'" in problems[0] and "colour: unknown setting" in problems[4]
    # a broken file from elsewhere: its problems name the user's file, and no copy of it
    # is left in the run directory
    outside = os.path.join(os.path.dirname(run_dir), "space.yaml")
    with open(outside, "w") as f:
        f.write(BROKEN)
    out = cli(run_dir, "tune", "enable", "--recipe", outside)
    assert out.returncode == 2 and out.stderr.startswith(f"hotcb: error: {outside} has 5"), (
        out.stderr)  # fmt: skip
    assert not os.path.exists(os.path.join(run_dir, "hotcb.replay"))
    # a file missing from the run directory (the run reads a relative path from there)
    missing = cli(run_dir, "tune", "enable", "--recipe", "nope.yaml")
    assert missing.returncode == 2, missing.stderr
    here = os.path.abspath("nope.yaml")  # (the CLI runs in this test's folder) both places
    assert (f"no recipe file nope.yaml: neither {os.path.join(run_dir, 'nope.yaml')} (a relative "
            f"--recipe is read from the run directory first) nor {here}") in missing.stderr  # fmt: skip
    # a negative seed would fail inside the run (Optuna's sampler): refused here
    seed = cli(run_dir, "tune", "enable", "--seed", "-1")
    assert seed.returncode == 2 and "seed: must be >= 0" in seed.stderr
    assert _commands(run_dir) == b""


def test_every_problem_of_a_recipe_comes_in_one_round(toy: Any, cli: Any) -> None:
    """A recipe with a bad setting, a knob the run does not have and a knob written twice:
    the missing knob and the duplicate came only once the other problems were fixed, and the
    duplicate's own problems only once it was."""
    stderr = _refused_recipe(toy, cli, (
        "direction: sideways\n"
        "space:\n"
        "  - {key: lr, mode: mul, low: 0.5, high: 2}\n"
        "  - {key: dropout, module: custom, mode: set, low: 0.1, high: 0.5}\n"
        "  - {key: lr, low: 3, high: 2}\n"
    ))  # fmt: skip
    problems = [x.strip() for x in stderr.strip().splitlines()[1:]]
    assert [p.split(":")[0] for p in problems] == ["line 1", "line 3", "line 4", "line 5", "line 5"]
    assert "direction: 'sideways'" in problems[0] and "'mul' is not one of" in problems[1]
    assert "custom.dropout: the run has no actuator 'dropout'" in problems[2]
    assert "space[2]: opt.lr appears twice" in problems[3]
    assert "space[2].high: must be greater than low" in problems[4], problems[4]


def _refused_recipe(toy: Any, cli: Any, text: str) -> str:
    """`tune enable --recipe` of ``text`` on a run that has published its actuators (opt lr,
    weight_decay; loss ce): refused with exit 2 and nothing sent; its stderr."""
    t: Toy = toy(log_level, lr=1e-4)
    t.run(2)
    run = t.kernel.run_dir
    with open(os.path.join(run, "space.tune.yaml"), "w") as f:
        f.write(text)
    before = _commands(run)
    out = cli(run, "tune", "enable", "--recipe", "space.tune.yaml")
    assert out.returncode == 2, out.stdout + out.stderr
    assert _commands(run) == before  # nothing sent
    return str(out.stderr)


def test_a_recipe_whose_knobs_the_run_does_not_have_is_refused(toy: Any, cli: Any) -> None:
    """A space of `custom.dropout` and `loss.lr` on a run without them: the enable was sent
    and applied, and the tuner sat `active` for good without one trial (a warning in `tune
    status --json` the only sign). Each is refused with its line in the file."""
    stderr = _refused_recipe(toy, cli, (
        "objective: loss\n"
        "space:\n  - {key: dropout, module: custom, mode: set, low: 0.1, high: 0.5}\n"
        "  - {key: weight_decay, low: 0.5, high: 2}\n"
        "  - key: lr\n    module: loss\n    low: 0.5\n    high: 2\n"
    ))  # fmt: skip
    assert "line 3: custom.dropout: the run has no actuator 'dropout'" in stderr
    assert "line 6: loss.lr: 'lr' is in opt, not loss (module: opt)" in stderr
    assert "opt.weight_decay" not in stderr  # a knob the run has


def test_a_recipe_from_outside_the_run_is_brought_in_and_used(
    toy: Any, cli: Any, tmp_path: Any
) -> None:
    """`--recipe /elsewhere/space.yaml`, or a path relative to where the command runs: the
    trainer reads files inside its run directory only, so the CLI copies the file in (as
    `freeze --recipe` does) and the run tunes what it says. It was sent as given, accepted with
    exit 0, then rejected in the ledger with only `tuner: off` to show for it."""
    t: Toy = toy(log_level, lr=1e-4)
    (tmp_path / "space.yaml").write_text(
        "objective: loss\nsegment_steps: 10\nspace:\n"
        "  - {key: lr, module: opt, mode: mult, low: 0.5, high: 2.0}\n"
    )
    for given, cwd in ((str(tmp_path / "space.yaml"), None), ("space.yaml", str(tmp_path))):
        done = cli(t.kernel.run_dir, "tune", "enable", "--recipe", given, cwd=cwd)
        assert done.returncode == 0, done.stderr
        t.run(100_000, until=lambda: t.ledger("enable")[-1]["decision"] != "scheduled"
              if t.ledger("enable") else False)  # fmt: skip
        t.run(1)
        (enable,) = [e for e in t.ledger("enable") if e["cmd_id"] == done.stdout.split()[-1]]
        # (the same file again, from its folder: the tuner as it is, nothing to change)
        assert enable["decision"] == ("applied" if cwd is None else "noop"), enable
        assert enable["params"]["recipe"].startswith("hotcb.replay/")  # the copy, in the run
        st = HotClient(t.kernel.run_dir).tune_status()
        assert st["mode"] == "active" and st["objective"] == "loss"
        assert [k["key"] for k in st["settings"]["space"]] == ["lr"]


def test_an_enable_that_brings_a_new_space_says_so_and_an_empty_recipe_is_refused(
    toy: Any, cli: Any
) -> None:
    """A new recipe restarts a running tuner's trials: its enable said only `mode: active ->
    active`, as one that changed nothing does. An empty recipe file was taken as no recipe."""
    t: Toy = toy(log_level, lr=1e-4)
    run = t.kernel.run_dir
    HotClient(run).tune_enable("active", objective="loss", segment_steps=10, sync=True)
    t.run(5)
    with open(os.path.join(run, "lr.tune.yaml"), "w") as f:
        f.write("space:\n  - {key: lr, module: opt, mode: mult, low: 0.5, high: 2.0}\n")
    done = cli(run, "tune", "enable", "--recipe", "lr.tune.yaml")
    assert done.returncode == 0, done.stderr
    t.run(2)
    enable = t.ledger("enable")[-1]
    assert enable["changes"]["space"] == {
        "old": "opt.lr mult [0.25, 4], opt.weight_decay mult [0.5, 2]",
        "new": "opt.lr mult [0.5, 2]",
    }
    assert (
        "space: opt.lr mult [0.25, 4], opt.weight_decay mult [0.5, 2] -> opt.lr mult [0.5, 2]"
        in (cli(run, "log").stdout)
    )
    open(os.path.join(run, "empty.yaml"), "w").close()
    before = _commands(run)
    out = cli(run, "tune", "enable", "--recipe", "empty.yaml")
    assert out.returncode == 2 and "the recipe is empty" in out.stderr, out.stderr
    assert _commands(run) == before


def test_a_loss_whose_noise_is_larger_than_its_level_is_said_to_keep_nothing(
    toy: Any, cli: Any
) -> None:
    """A loss near zero (an HF run's eval_loss at 1e-4): each segment's noise is larger than
    its level, the bar to keep a trial rises above +1, the most a lower loss can score, and
    the tuner rolled back every trial without a word."""
    t: Toy = toy(lambda _lr, _s: 1e-4, lr=1e-3, noise=4.0)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                              seed=0, space=LR_ONLY, sync=True)  # fmt: skip
    t.run(100_000, until=lambda: len(t.ledger("rollback")) >= 2)
    assert all(e["tune"]["score"] >= -1 for e in t.ledger("rollback"))
    (warning,) = [w for w in HotClient(t.kernel.run_dir).tune_status()["warnings"]
                  if w.startswith("no trial can be kept")]  # fmt: skip
    assert "'loss' is so near zero that its noise is larger than its level" in warning
    assert "no trial can be kept" in cli(t.kernel.run_dir, "tune", "status").stdout


def test_status_of_a_finished_run_shows_no_next_boundary(toy: Any, cli: Any) -> None:
    t: Toy = toy(log_level, lr=1e-4)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                              space=LR_ONLY, sync=True)  # fmt: skip
    t.run(60)
    assert "next boundary" in cli(t.kernel.run_dir, "tune", "status").stdout  # running
    t.kernel.close()
    out = cli(t.kernel.run_dir, "tune", "status")
    assert out.returncode == 0, out.stderr
    assert "run: finished at step 60" in out.stdout
    assert "next boundary" not in out.stdout
    assert "phase: none (the run is over)" in out.stdout, out.stdout  # not "phase: baseline"
    st = json.loads(cli(t.kernel.run_dir, "tune", "status", "--json").stdout)
    assert st["run_over"] == "finished at step 60" and st["next_boundary"] is None


def test_status_says_when_the_tuners_state_file_cannot_be_read(toy: Any, cli: Any) -> None:
    """A damaged ``hotcb.tune.json`` read as ``tuner: off``, exit 0, without a word, beside a
    ledger full of trials."""
    t: Toy = toy(log_level, lr=1e-4)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                              space=LR_ONLY, sync=True)  # fmt: skip
    t.run(30)
    with open(os.path.join(t.kernel.run_dir, "hotcb.tune.json"), "w") as f:
        f.write('{"mode": "act')
    out = cli(t.kernel.run_dir, "tune", "status")
    assert "hotcb.tune.json is not a JSON object the tuner wrote" in out.stderr, out.stderr
    assert "'hotcb log'" in out.stderr
    st = json.loads(cli(t.kernel.run_dir, "tune", "status", "--json").stdout)
    assert "damaged" in st["unreadable"]


def test_disable_keeps_the_summary_in_status(toy: Any, cli: Any) -> None:
    t: Toy = toy(log_level, lr=1e-4)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, space=LR_ONLY, sync=True)
    t.run(500, until=lambda: t.kernel.module("tune").phase == "trial")
    running = cli(t.kernel.run_dir, "tune", "status").stdout
    assert re.search(r"phase: trial   trial \d+ \(opt\.lr [0-9.e-]+ -> [0-9.e-]+\)", running), (
        running
    )
    client.tune_disable()
    t.run(100_000, until=lambda: t.kernel.module("tune").mode == "off")
    out = cli(t.kernel.run_dir, "tune", "status").stdout
    assert out.startswith("tuner: off")
    assert "segments: " in out and "study: hotcb-run" in out  # what it did, still shown


def _run_like_lightning(t: Toy, steps: int, val_every: int, train_key: str = "train_loss") -> None:
    """Lightning's callback_metrics: the last val_loss rides on every training step; a fresh
    one comes with the validation event every ``val_every`` steps. ``train_key``: the name the
    LightningModule logs its training loss under (empty: it logs none)."""
    val: float | None = None
    for _ in range(steps):
        t.step += 1
        loss = t.f(t.lr, t.step) * (1 + t.noise * t.rng.gauss(0, 1))
        metrics: dict[str, float] = {train_key: loss} if train_key else {"acc": 1 / loss}
        if val is not None:
            metrics["val_loss"] = val
        t.kernel.apply({"step": t.step, "optimizer": t.opt, "metrics": metrics})
        if t.step % val_every == 0:
            val = loss * 1.1
            t.kernel.apply({"step": t.step, "metrics": {**metrics, "val_loss": val}},
                           ("val_epoch_end",))  # fmt: skip


def test_a_validation_metric_repeated_on_train_steps_is_one_observation(toy: Any) -> None:
    t: Toy = toy(log_level, lr=1e-4)
    HotClient(t.kernel.run_dir).tune_enable("observe", objective="val_loss", segment_evals=3,
                                              space=LR_ONLY, sync=True)  # fmt: skip
    _run_like_lightning(t, 300, val_every=10)
    tune = t.kernel.module("tune")
    # 30 validations, 3 to a segment: about 10 segments, not one every 3 training steps
    assert 8 <= tune.counts["segments"] <= 10, tune.counts
    status = HotClient(t.kernel.run_dir).tune_status()  # the length in use, not a default
    assert (status["segment_evals"], status["segment_steps"]) == (3, None)


def test_a_segment_of_two_evaluations_has_a_noise_margin(toy: Any, cli: Any) -> None:
    """`--segment-evals 2` (what the docs suggest for a sparse validation): the last half of a
    segment is one value, so the bar to keep a trial used to be the threshold alone (`needed >
    +0`) and any gain of noise was kept. Of one evaluation, no noise can be measured: said."""
    t: Toy = toy(log_level, lr=1e-4)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="val_loss", segment_evals=2, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    _run_like_lightning(t, 80, val_every=10)
    judged = [r for r in client.tune_status()["trials"] if r.get("score") is not None]
    assert judged and all(r["detail"]["margin"] > 0 for r in judged), judged
    assert not client.tune_status()["warnings"]
    client.tune_enable("active", objective="val_loss", segment_evals=1, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    _run_like_lightning(t, 60, val_every=10)
    (warning,) = client.tune_status()["warnings"]
    assert "segments of one value of 'val_loss' have no noise to measure" in warning
    assert "--segment-evals 3 or more" in cli(t.kernel.run_dir, "tune", "status").stdout


def test_an_objective_that_never_comes_is_a_warning_in_status(toy: Any, cli: Any) -> None:
    t: Toy = toy(log_level, lr=1e-4)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="val_los", segment_steps=10, space=LR_ONLY, sync=True)
    _run_like_lightning(t, 40, val_every=10, train_key="")  # no training loss to fall back on
    (warning,) = client.tune_status()["warnings"]
    assert "objective 'val_los' was not logged in 20 steps" in warning
    assert "acc" in warning and "val_loss" in warning
    assert f"warning: {warning}" in cli(t.kernel.run_dir, "tune", "status").stdout
    # counted in evaluations: said at the first validation without it
    client.tune_enable("active", objective="eval_loss", segment_evals=2, space=LR_ONLY,
                       sync=True)  # fmt: skip
    _run_like_lightning(t, 10, val_every=10)
    (warning,) = client.tune_status()["warnings"]
    assert "objective 'eval_loss' was not logged in a validation" in warning
    # counted in evaluations, and no validation ever comes (a bare loop that marks none): said
    # after two segments' worth of steps, not silent for the whole run
    enables = len(t.ledger("enable"))
    client.tune_enable("active", objective="val_loss", space=LR_ONLY, sync=True)
    t.run(100_000, until=lambda: len(t.ledger("enable")) > enables)
    t.run(400)  # two segments of the default 200 steps
    (warning,) = client.tune_status()["warnings"]
    assert "'val_loss' was not logged in 400 steps, and no validation came" in warning


def _tuned_like_lightning(toy: Any, objective: str, steps: int) -> tuple[Toy, dict[str, Any]]:
    """An active tuner (10-step segments) on a LightningModule-like loop for ``steps``: the
    loop and the tuner's status."""
    t: Toy = toy(log_level, lr=1e-4)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective=objective, segment_steps=10, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    _run_like_lightning(t, steps, val_every=10)
    return t, client.tune_status()


def test_lightnings_train_loss_stands_in_for_an_objective_that_never_comes(
    toy: Any, cli: Any
) -> None:
    """A LightningModule that logs `train_loss` (not `loss`): the tuner falls back to it, says
    so, and judges trials on it."""
    t, status = _tuned_like_lightning(toy, "val_los", 200)
    (warning,) = status["warnings"]
    assert "'val_los' was not logged in 20 steps; scoring 'train_loss' instead" in warning
    assert status["objective_used"] == "train_loss"
    assert status["counts"]["kept"] + status["counts"]["rolled_back"] > 0, status["counts"]
    # its segments hold every step's value, not only the one that rides on each validation
    # (it was counted as a validation metric: one value a segment, no noise, then none at all)
    judged = [r for r in status["trials"] if r.get("score") is not None]
    assert all(r["detail"]["noise"] > 0 for r in judged), judged
    assert not [r for r in status["trials"] if r.get("decision") == "failed"]
    assert (
        "objective: train_loss (minimize; asked: val_los, minimize)"
        in cli(t.kernel.run_dir, "tune", "status").stdout
    )


def test_objective_loss_scores_lightnings_train_loss(toy: Any, cli: Any) -> None:
    """`--objective loss` on a LightningModule that logs `train_loss`: scored under that name
    (it warned that nothing was scored for the whole run), as val_loss finds eval_loss."""
    _t, status = _tuned_like_lightning(toy, "loss", 60)
    assert status["objective_used"] == "train_loss"
    assert status["warnings"] == ["objective 'loss' is logged as 'train_loss' by this run: "
                                  "scoring 'train_loss'"]  # fmt: skip
    assert status["counts"]["kept"] + status["counts"]["rolled_back"] > 0, status["counts"]


def test_segments_counted_in_evaluations_still_run_trials_near_the_end(toy: Any) -> None:
    """With --segment-evals the run's end is two segments of evaluations away, not two
    segments of the default 200 steps."""
    t: Toy = toy(log_level, lr=1e-4)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="val_loss", segment_evals=2,
                                              total_steps=600, seed=0, space=LR_ONLY,
                                              sync=True)  # fmt: skip
    _run_like_lightning(t, 600, val_every=10)
    steps = [e["step"] for e in t.ledger("mutate")]
    assert steps and max(steps) > 400, steps
    assert max(steps) <= 600 - 2 * 20 + 1, steps  # none in the last two segments


def test_a_segment_flag_wins_over_the_recipe_s(tmp_path: Any) -> None:
    recipe = {"segment_evals": 2, "objective": "val_loss"}
    settings = parse_settings({"mode": "active", "segment_steps": 50}, recipe)
    assert settings.segment_steps == 50 and settings.segment_evals is None
    settings = parse_settings({"mode": "active"}, recipe)
    assert settings.segment_evals == 2
    assert json.loads(json.dumps(settings.to_dict()))["objective"] == "val_loss"


def test_a_storage_that_cannot_be_opened_turns_the_tuner_off_at_once(toy: Any) -> None:
    """Not two baseline segments later: ``tune status`` and the ledger say so within the
    steps it takes the tuner's thread to try."""
    t: Toy = toy(log_level, lr=1e-4)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10_000,
                       storage=NOWHERE, space=LR_ONLY)  # fmt: skip
    deadline = time.monotonic() + 60
    while not [e for e in t.ledger("enable") if e["decision"] == "failed"]:
        assert time.monotonic() < deadline, t.ledger()
        t.run(1)
        time.sleep(0.005)  # a step's pace; the tuner's thread opens the study meanwhile
    assert t.step < 20_000
    (failed,) = [e for e in t.ledger("enable") if e["decision"] == "failed"]
    assert NOWHERE in failed["error"]
    status = client.tune_status()
    assert status["mode"] == "off" and any(NOWHERE in w for w in status["warnings"])


def test_a_storage_that_cannot_be_opened_leaves_a_running_tuner_in_its_study(toy: Any) -> None:
    """A mistyped URL sent to a tuner that is on does not end it: the enable's failure is in
    the ledger and ``tune status``, and the tuner goes on in the study it was in."""
    t: Toy = toy(log_level, lr=1e-4)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, space=LR_ONLY)
    t.run(100_000, until=lambda: client.tune_status().get("study_open") is True)
    study = client.tune_status()["study"]
    client.tune_enable(storage=NOWHERE, segment_steps=12)
    deadline = time.monotonic() + 60
    while not [e for e in t.ledger("enable") if e["decision"] == "failed"]:
        assert time.monotonic() < deadline, t.ledger()
        t.run(1)
        time.sleep(0.005)  # a step's pace; the tuner's thread tries the storage meanwhile
    (failed,) = [e for e in t.ledger("enable") if e["decision"] == "failed"]
    assert NOWHERE in failed["error"]
    status = client.tune_status()
    assert status["mode"] == "active" and status["study"] == study
    assert status["segment_steps"] == 12  # the enable's other settings are in force
    assert NOWHERE not in status["storage"]
    (warning,) = [w for w in status["warnings"] if NOWHERE in w]
    assert f"the tuner goes on in its study {study!r}" in warning
    done = status["counts"]["kept"] + status["counts"]["rolled_back"]
    t.run(100_000, until=lambda: (lambda c: c["kept"] + c["rolled_back"])(
        client.tune_status()["counts"]) >= done + 2)  # fmt: skip


def test_enables_queued_before_the_run_starts_fall_back_to_the_study_still_opening(
    toy: Any, tmp_path: Any
) -> None:
    """Three enables sent before the first step (the last with a storage that cannot be
    opened) are read at once, while the first studies still open: the tuner goes on in the one
    the enable before named, as it does when it is already on (it turned off, and that one's
    database was never made)."""
    t: Toy = toy(log_level, lr=1e-4, allowed_roots=[tmp_path])
    client = HotClient(t.kernel.run_dir)
    db = tmp_path / "rel.db"
    client.tune_enable("active", objective="loss", segment_steps=10, space=LR_ONLY)
    client.tune_enable(storage=f"sqlite:///{db}")
    client.tune_enable(storage=NOWHERE)
    t.run(100_000, until=lambda: client.tune_status().get("study_open") is True)
    status = client.tune_status()
    assert status["mode"] == "active" and db.exists()
    assert status["storage"] == f"sqlite:///{db}"
    (failed,) = [e for e in t.ledger("enable") if e["decision"] == "failed"]
    assert NOWHERE in failed["error"]
    # `hotcb log` says where each enable moved the study (it said only "mode: active -> active")
    moved = [
        e["changes"]["storage"] for e in t.ledger("enable") if "storage" in (e.get("changes") or {})
    ]
    default = f"sqlite:///{os.path.join(t.kernel.run_dir, 'hotcb.tune.db')}"
    assert moved[0] == {"old": default, "new": f"sqlite:///{db}"}
    t.run(100_000, until=lambda: client.tune_status()["counts"]["rolled_back"]
          + client.tune_status()["counts"]["kept"] >= 1)  # fmt: skip


def test_a_run_that_counts_from_1_ends_on_its_total_without_a_past_warning(toy: Any) -> None:
    """The HF Trainer counts steps from 1: its last step is total_steps, where a segment of
    evaluations may end. That is the run's end, not past it (status said "the run is past its
    total_steps … --total-steps N gives the run's real length", for the real length)."""
    t: Toy = toy(log_level, lr=1e-4, poll=0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="val_loss", segment_evals=2, total_steps=100,
                       space=LR_ONLY, sync=True)  # fmt: skip
    t.run(100, val_every=10)  # steps 1 … 100, a boundary at 100
    assert not [w for w in client.tune_status()["warnings"] if "past its total_steps" in w]
    t.run(20, val_every=10)  # past it (the run was extended without telling the tuner): said
    assert [w for w in client.tune_status()["warnings"] if "past its total_steps" in w]


def test_observe_shows_levels_and_an_empty_export_says_so(toy: Any, cli: Any) -> None:
    t: Toy = toy(log_level, lr=1e-4)
    HotClient(t.kernel.run_dir).tune_enable("observe", objective="loss", segment_steps=10,
                                              space=LR_ONLY, sync=True)  # fmt: skip
    t.run(100_000, until=lambda: t.kernel.module("tune").counts["segments"] >= 3)
    out = cli(t.kernel.run_dir, "tune", "export")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("hotcb.tune.recipe.jsonl")
    assert "kept no change" in out.stderr
    # observe mode scores segments: their levels are in `tune status`
    levels = HotClient(t.kernel.run_dir).tune_status()["levels"]
    assert len(levels) >= 2 and all(p["level"] > 0 for p in levels)
    assert re.search(
        r"levels: [0-9.]+ \(step \d+\)", cli(t.kernel.run_dir, "tune", "status").stdout
    )


def test_switching_from_suggest_to_active_expires_the_pending_proposals(toy: Any, cli: Any) -> None:
    """A proposal nobody answered must not hold the tuner in active mode: switching modes
    expires it (its trial is told FAIL) and trials start again."""
    t: Toy = toy(log_level, lr=1e-4)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("suggest", objective="loss", segment_steps=10, space=LR_ONLY, sync=True)
    t.run(500, until=lambda: bool(_pending(client)))
    (waiting,) = _pending(client)
    client.tune_enable("active", objective="loss", segment_steps=10, space=LR_ONLY, sync=True)
    tune = t.kernel.module("tune")
    # the switch lands at a poll (every 50 ms): a deadline in steps, not 500 fast ones
    t.run(100_000, until=lambda: tune.mode == "active" and tune.phase == "trial")
    assert tune.phase == "trial", "no trial started after the switch to active"
    st = client.tune_status()
    assert [p["state"] for p in st["proposals"] if p["id"] == waiting["id"]] == ["expired"]
    assert not _pending(client)
    assert "expired: 1   failed: 0" in cli(t.kernel.run_dir, "tune", "status").stdout


def test_the_log_names_each_tune_entry_s_proposal_trial_and_score(toy: Any, cli: Any) -> None:
    t: Toy = toy(log_level, lr=1e-4)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("suggest", objective="loss", segment_steps=10, space=LR_ONLY, sync=True)
    t.run(500, until=lambda: bool(_pending(client)))
    (p,) = _pending(client)
    client.tune_accept(p["id"])

    def judged() -> bool:  # a keep is recorded at once; a roll-back is a command, a step later
        t.kernel.flush()
        return any(e.get("op") in ("keep", "rollback") for e in read_ledger(t.kernel.run_dir))

    t.run(100_000, until=judged)  # the accept lands at a poll: a deadline, not 500 steps
    out = cli(t.kernel.run_dir, "log", "-n", "0").stdout
    trial = f"trial {p['trial']}"
    assert f"tune propose -> applied [{p['id']}, {trial}]" in out, out
    assert f"tune accept -> applied [{p['id']}, {trial}]" in out, out
    num = r"[-+][0-9.e-]+"
    assert re.search(rf"tune (keep|rollback) -> applied .*\[{trial}, score {num}, needed > {num}\]",
                     out), out  # fmt: skip


def test_falling_back_to_loss_is_the_only_warning(toy: Any) -> None:
    """Scoring ``loss`` instead of a ``val_loss`` that never comes is said once; the stand-in
    is not then reported as missing itself."""
    t: Toy = toy(log_level, lr=1e-4)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="val_loss", segment_steps=10,
                                              space=LR_ONLY, sync=True)  # fmt: skip
    t.run(60)
    (warning,) = t.kernel.module("tune").warnings
    assert warning.startswith("objective 'val_loss' was not logged in 20 steps; scoring 'loss'")


def test_an_accepted_proposal_multiplies_the_lr_in_force_when_it_is_accepted(toy: Any) -> None:
    """A proposal is a move (lr × m): accepted after a person set another lr, it multiplies
    that lr; it does not put back the value it showed when it was proposed."""
    t, client, first = _first_proposal(toy)
    move = next(r for r in client.tune_status()["trials"] if r["trial"] == first["trial"])
    factor = move["sampled"]["opt.lr"]
    client.opt(lr=5e-4)
    t.run(100_000, until=lambda: t.lr == 5e-4)
    client.tune_accept(first["id"])
    t.run(100_000, until=lambda: bool(t.ledger("mutate")))
    (mutate,) = t.ledger("mutate")
    assert mutate["changes"]["lr"]["old"] == pytest.approx(5e-4)
    assert mutate["changes"]["lr"]["new"] == pytest.approx(5e-4 * factor)


def test_a_mutation_multiplies_the_lr_a_scheduler_has_in_force(toy: Any) -> None:
    """Active mode with an LR scheduler moving lr every step: each trial multiplies the lr of
    the step it lands on by what the sampler drew (the kernel's own view of lr is refreshed
    only now and then)."""
    import torch

    t: Toy = toy(log_level, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(t.opt, lambda s: 0.995**s)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    for _ in range(300):
        t.step += 1
        loss = t.f(t.lr, t.step) * (1 + t.noise * t.rng.gauss(0, 1))
        t.opt.step()  # no gradients: moves nothing, keeps the scheduler's order
        sched.step()
        t.kernel.apply({"step": t.step, "optimizer": t.opt, "scheduler": sched,
                        "metrics": {"loss": loss}})  # fmt: skip
    sampled = {r["trial"]: r["sampled"]["opt.lr"] for r in client.tune_status()["trials"]}
    mutates = t.ledger("mutate")
    assert len(mutates) >= 3
    for m in mutates:
        lr = m["changes"]["lr"]
        assert lr["new"] / lr["old"] == pytest.approx(sampled[m["tune"]["trial"]], rel=1e-6), m


def test_a_person_s_undo_of_a_kept_trial_is_exported_and_replayed(toy: Any, cli: Any) -> None:
    """`undo` of a tuner mutation: the run's recipe undoes the set_params the mutation became
    (it named the bare command id, which the replay rejected), `tune export` leaves it out, and
    a replay ends at the lr the run ended at."""
    from hotcb.modules.tune._export import export_kept
    from hotcb.recipe import export_recipe

    t: Toy = toy(log_level, lr=1e-3)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=3, space=LR_ONLY,
                       sync=True)  # fmt: skip
    t.run(2000, until=lambda: bool(t.ledger("keep")))
    client.tune_disable()
    t.run(100_000, until=lambda: t.kernel.module("tune").mode == "off")
    kept = t.ledger("keep")[0]["tune"]["trial"]
    (mutate,) = [m for m in t.ledger("mutate") if m["tune"]["trial"] == kept]
    client.undo(mutate["cmd_id"])
    t.run(100_000, until=lambda: any(e.get("op") == "undo" for e in read_ledger(t.kernel.run_dir)))
    t.run(5)
    end_lr = t.lr
    assert end_lr == pytest.approx(mutate["changes"]["lr"]["old"])
    # tune status said the trial was kept, and nothing of the undo
    st = json.loads(cli(t.kernel.run_dir, "tune", "status", "--json").stdout)
    (row,) = [r for r in st["trials"] if r["trial"] == kept]
    assert row["decision"] == "kept" and row["undone"] == read_ledger(t.kernel.run_dir)[-1]["step"]
    assert st["counts"]["undone"] == 1
    assert "undone: 1 of the kept" in cli(t.kernel.run_dir, "tune", "status").stdout
    path, entries = export_recipe(t.kernel.run_dir)
    undos = [e for e in entries if e.op == "undo"]
    assert [u.params for u in undos] == [{"cmd_id": f"{mutate['cmd_id']}.opt"}]
    assert f"{mutate['cmd_id']}.opt" in {e.cmd_id for e in entries}
    _, only_kept = export_kept(t.kernel.run_dir, os.path.join(t.kernel.run_dir, "k.jsonl"))
    assert mutate["cmd_id"] + ".opt" not in {e.cmd_id for e in only_kept}

    replay: Toy = toy(log_level, name="replay", lr=1e-3)
    HotClient(replay.kernel.run_dir).freeze("replay", recipe_path=path)
    replay.run(t.step)
    assert replay.lr == pytest.approx(end_lr)
    undone = [e for e in read_ledger(replay.kernel.run_dir) if e.get("op") == "undo"]
    assert [e["decision"] for e in undone] == ["applied"], undone


def test_undo_of_a_kept_trial_a_later_kept_trial_moved_on_leaves_the_later_value(
    toy: Any,
) -> None:
    """`undo` of the first of two kept trials on the lr put back the lr from before the first,
    wiping the second trial's kept move too. Nothing of the first is in force any more: the
    undo leaves the lr, and says which trial set it since."""
    t: Toy = toy(log_level, lr=1e-3)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=3, space=LR_ONLY,
                       sync=True)  # fmt: skip
    t.run(20_000, until=lambda: len(t.ledger("keep")) >= 2)
    client.tune_disable()
    t.run(100_000, until=lambda: t.kernel.module("tune").mode == "off")
    first, second = (k["tune"]["trial"] for k in t.ledger("keep")[:2])
    mutates = {m["tune"]["trial"]: m for m in t.ledger("mutate")}
    client.undo(mutates[first]["cmd_id"])
    t.run(100_000, until=lambda: any(e.get("op") == "undo" for e in read_ledger(t.kernel.run_dir)))
    t.run(1)
    (undo,) = [e for e in read_ledger(t.kernel.run_dir) if e.get("op") == "undo"]
    assert undo["decision"] == "noop", undo
    assert t.lr == pytest.approx(mutates[second]["changes"]["lr"]["new"])  # the second's, kept
    assert undo["set_since"]["lr"]["cmd_id"] == mutates[second]["cmd_id"]
    assert undo["error"].startswith(f"lr was set again since (#{mutates[second]['seq']} at step ")


def test_tune_export_after_a_new_study_keeps_only_the_kept_trials_of_each(toy: Any) -> None:
    """A tuner moved to another study mid-run (`tune enable --study NAME`) numbers its trials
    from 0 again: `tune export` pairs each keep with its own trial's mutation, not with every
    mutation of that number (it exported the new study's rolled-back trials whose numbers had
    been kept in the old one, and a replay played changes the tuner had thrown away)."""
    from hotcb.modules.tune._export import kept_entries

    t: Toy = toy(log_level, lr=1e-4)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    t.run(5000, until=lambda: len(t.ledger("keep")) >= 2)
    kept_a = {e["tune"]["trial"] for e in t.ledger("keep")}
    mutates_a = {m["tune"]["trial"]: m["cmd_id"] for m in t.ledger("mutate")}
    client.tune_enable(study="b")
    at = t.lr
    t.f = lambda lr, _step: 1.0 + 50 * abs(math.log(lr / at))  # now every move does harm
    before = len(t.ledger("mutate"))

    def b_numbers() -> set[int]:
        return {m["tune"]["trial"] for m in t.ledger("mutate")[before:]}

    t.run(20_000, until=lambda: kept_a <= b_numbers() and not t.kernel.module("tune").trial)
    assert len(t.ledger("keep")) == len(kept_a)  # none of the new study's is kept
    exported = {str(e.cmd_id).rsplit(".", 1)[0] for e in kept_entries(read_ledger(
        t.kernel.run_dir)) if e.cmd_id}  # fmt: skip
    assert exported == {mutates_a[n] for n in kept_a}
    # `tune status`: each study's trials in rows of their own (one row held both studies'
    # changes of a number), the old study's named
    rows = client.tune_status()["trials"]
    for n in kept_a:
        (old,) = [r for r in rows if r["trial"] == n and r.get("study")]
        (new,) = [r for r in rows if r["trial"] == n and not r.get("study")]
        assert (old["decision"], new["decision"]) == ("kept", "rolled_back")
        assert old["study"] == f"hotcb-{os.path.basename(t.kernel.run_dir)}"


def test_a_replay_of_the_exported_recipe_follows_the_tuned_run_under_a_scheduler(
    toy: Any,
) -> None:
    """A trial's move (lr × m) lands on the lr of the step it is applied at, which a scheduler
    moved since the trial was drawn: the recipe holds the lr the run really got, so a replay
    of `recipe export` has the run's lr at every step (it was up to 5 % off)."""
    from hotcb.recipe import export_recipe

    t: Toy = toy(log_level, lr=1e-3, decay=0.995)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            seed=1, space=LR_ONLY)  # fmt: skip
    t.run(100_000, until=lambda: len(t.ledger("mutate")) >= 4)
    t.run(20)
    moved = [m for m in t.ledger("mutate")
             if m["changes"]["lr"]["new"] != m["params"]["values"]["opt"]["lr"]]  # fmt: skip
    assert moved, "no trial landed after the scheduler moved the lr"
    path, _ = export_recipe(t.kernel.run_dir)
    replay: Toy = toy(log_level, name="replay", lr=1e-3, decay=0.995)
    HotClient(replay.kernel.run_dir).freeze("replay", recipe_path=path)
    replay.run(t.step)
    assert replay.lrs == pytest.approx(t.lrs, rel=1e-9)


def test_a_checkpoint_on_a_trial_s_boundary_lists_that_trial_replaced(toy: Any) -> None:
    """A checkpoint saved while the tuner waits for its mutation to land (the HF Trainer saves
    on the segment boundary when save_steps is a multiple of it): the life that died applied
    and judged that trial. Resumed, its row is `replaced`, as the later ones are (it stayed
    `proposed` for good, its score in the study unexplained)."""
    first: Toy = toy(log_level, lr=1e-3, poll=0)
    client = HotClient(first.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    tune = first.kernel.module("tune")
    first.run(2000, until=lambda: bool(tune.waiting) and tune.waiting["kind"] == "mutate")
    number, state = tune.waiting["trial"], first.kernel.state_dict()
    first.run(2000, until=lambda: any(e["op"] in ("keep", "rollback")
                                      and e["tune"].get("trial") == number
                                      for e in first.ledger()))  # fmt: skip
    first.kernel.close()
    again: Toy = toy(log_level, lr=1e-3, poll=0)  # the same run directory, a new process
    again.kernel.load_state_dict(state)
    again.step = state["step"]
    again.run(5)
    (row,) = [r for r in client.tune_status()["trials"] if r["trial"] == number]
    assert row["decision"] == "replaced" and row["was"] in ("kept", "rolled_back"), row


def test_a_resumed_run_exports_only_the_trials_of_its_current_life(toy: Any, cli: Any) -> None:
    """Resumed from a checkpoint, the run's tuner makes new trials; those the earlier life made
    after the checkpoint are not re-applied, so `recipe export` and `tune export` leave them
    out (a replay of both lives' trials diverged from the run), and `hotcb status` marks
    them."""
    from hotcb.modules.tune._export import kept_entries
    from hotcb.recipe import export_recipe

    first: Toy = toy(log_level, lr=1e-3)
    client = HotClient(first.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    first.run(60)
    state = first.kernel.state_dict()
    first.run(120)  # the life the resume replaces: trials after the checkpoint
    first.kernel.close()
    old_last = read_ledger(first.kernel.run_dir)[-1]["seq"]
    old = {e["cmd_id"] for e in read_ledger(first.kernel.run_dir)
           if e.get("module") == "tune" and e["op"] in ("mutate", "rollback")
           and e["seq"] > state["seq"]}  # fmt: skip
    assert old

    again: Toy = toy(log_level, lr=1e-3)  # the same run directory, a new process
    again.kernel.load_state_dict(state)
    again.step = first.step - 120
    again.run(120)
    again.kernel.close()
    ledger = read_ledger(again.kernel.run_dir)
    (marker,) = [e for e in ledger if e.get("op") == "resume" and e.get("module") == "kernel"]
    assert marker["resumed_from"] == {"step": state["step"], "seq": state["seq"],
                                      "last": old_last}  # the dead life's last entry  # fmt: skip
    new = {e["cmd_id"] for e in ledger if e.get("module") == "tune"
           and e["op"] in ("mutate", "rollback") and e["seq"] > marker["seq"]}  # fmt: skip
    assert new
    _, entries = export_recipe(again.kernel.run_dir)
    exported = {str(e.cmd_id).rsplit(".", 1)[0] for e in entries if e.cmd_id}
    assert not exported & old and new <= exported
    kept = {str(e.cmd_id).rsplit(".", 1)[0] for e in kept_entries(ledger) if e.cmd_id}
    assert not kept & old

    out = cli(again.kernel.run_dir, "status", "-n", str(len(ledger)))
    assert out.returncode == 0, out.stderr
    lines = {int(m.group(1)): line for line in out.stdout.splitlines()
             if (m := re.match(r"\s+#(\d+) ", line))}  # fmt: skip
    replaced = {e["seq"] for e in ledger if state["seq"] < e["seq"] < marker["seq"]}
    assert replaced and set(lines) == {e["seq"] for e in ledger}
    for seq, line in lines.items():
        assert line.endswith(f"(replaced: the run resumed at #{marker['seq']})") == (
            seq in replaced), line  # fmt: skip
    assert (
        f"from the checkpoint at step {state['step']}; #{state['seq'] + 1}.."
        f"#{marker['seq'] - 1} ran in the life it replaced"
    ) in lines[marker["seq"]]


def test_tuning_loss_weights_on_the_training_loss_is_warned(tmp_path: Any, cli: Any) -> None:
    """The training loss is the sum the loss weights scale: scored on it, a lower weight always
    wins (a tuner run this way drove a digits run's aux weight to 0.003 and rolled back every
    raise with scores like -17). ``tune status`` says so, whether the user asked for ``loss``
    or the tuner fell back to it."""
    from hotcb import HotKernel, loss_actuators

    weights = {"ce": 1.0, "aux": 0.5}
    kernel = HotKernel(str(tmp_path / "run"), mutable_state=loss_actuators(weights),
                       poll_interval_sec=0)  # fmt: skip
    space = [{"key": "aux", "module": "loss", "mode": "set", "low": 0.0, "high": 1.0,
              "log": False}]  # fmt: skip
    client = HotClient(kernel.run_dir)
    step = 0

    def train(steps: int, val: bool) -> None:
        nonlocal step
        for _ in range(steps):
            step += 1
            metrics = {"loss": weights["ce"] * 0.5 + weights["aux"] * 0.2}
            if val and step % 10 == 0:
                metrics["val_loss"] = 0.6
            kernel.apply({"step": step, "metrics": metrics})

    try:
        client.tune_enable("observe", objective="val_loss", segment_steps=10, space=space,
                           sync=True)  # fmt: skip
        train(30, val=True)
        st = client.tune_status()
        assert st["mode"] == "observe" and st["warnings"] == []  # val_loss: not what they scale
        client.tune_enable("observe", objective="loss", segment_steps=10, space=space, sync=True)
        train(5, val=True)
        (warning,) = client.tune_status()["warnings"]
        assert "scoring the training loss 'loss' while tuning loss weights (aux)" in warning
        assert "--objective val_loss" in warning
        client.tune_enable("observe", objective="val_loss", segment_steps=10, space=space,
                           sync=True)  # fmt: skip
        train(40, val=False)  # no val_loss comes: the tuner scores `loss` instead
        fallback, weights_note = client.tune_status()["warnings"]
        assert fallback.startswith("objective 'val_loss' was not logged")
        assert "while tuning loss weights (aux)" in weights_note
        assert "while tuning loss weights" in cli(kernel.run_dir, "tune", "status").stdout
        # a weight the run does not have (the docs' example recipe, whose `ce` a run with
        # `ce_weight` lacks, got both warnings): sent as a queued enable is, before the run
        # publishes its knobs, the run refuses it, as `tune enable` does once it can check
        other = [*space, {"key": "ce_weight", "module": "loss", "mode": "set", "low": 0.0,
                          "high": 1.0, "log": False}]  # fmt: skip
        sent = client.send("tune", "enable", params={"mode": "observe", "objective": "loss",
                           "segment_steps": 10, "space": other, "sync": True})  # fmt: skip
        train(5, val=True)
        refused = client.wait(sent, timeout=30)
        assert refused["decision"] == "rejected", refused
        assert "loss.ce_weight: the run has no actuator 'ce_weight'" in refused["error"]
        assert client.tune_status()["settings"]["objective"] == "val_loss"  # as it was
    finally:
        kernel.close()


def test_trials_go_on_when_extend_moves_a_bare_loop_s_horizon(tmp_path: Any) -> None:
    """A bare loop passes the ``max_steps`` it started with and trains while ``kernel.max_steps``
    says (as examples/bare_loop.py does). ``hotcb extend`` moves the kernel's horizon; the
    tuner read the loop's and stopped starting trials two segments before the old end, for
    the whole extension."""
    import torch

    from hotcb import HotKernel

    kernel = HotKernel(str(tmp_path / "run"), poll_interval_sec=0)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1e-3)
    client = HotClient(kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=20, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    kernel.max_steps = 400
    step = 0
    try:
        while step + 1 < (kernel.max_steps or 0):
            step += 1
            if step == 100:
                client.extend(steps=600)
            lr = float(opt.param_groups[0]["lr"])
            env = {"step": step, "optimizer": opt, "metrics": {"loss": log_level(lr, step)},
                   "max_steps": 400}  # fmt: skip
            kernel.apply(env)
    finally:
        kernel.close()
    assert step == 999  # the loop trained to the extended horizon
    mutates = [e["step"] for e in read_ledger(kernel.run_dir)
               if e.get("module") == "tune" and e.get("op") == "mutate"]  # fmt: skip
    assert mutates and max(mutates) > 600, mutates  # trials went on past the old end (400)
    assert max(mutates) <= 1000 - 2 * 20, mutates  # and stopped two segments before the new one


def test_a_restart_without_a_checkpoint_reopens_the_study_with_the_url_it_was_given(
    tmp_path: Any,
) -> None:
    """A run restarted without a checkpoint turns the tuner on again from ``hotcb.tune.json``,
    whose storage URL has its password redacted: it reopened the study as ``user:***@``. The
    URL comes from the ``tune enable`` command the state file names."""
    from hotcb import HotKernel, jsonl

    run = os.fspath(tmp_path / "run")
    url = "postgresql://ann:s3cr3t@127.0.0.1:1/optuna"
    first = HotKernel(run, poll_interval_sec=0)
    cmd_id = HotClient(run).tune_enable("observe", objective="loss", storage=url)
    first.apply({"step": 1, "metrics": {"loss": 1.0}})
    first.close()
    assert next(e["cmd_id"] for e in read_ledger(run) if e.get("op") == "enable") == cmd_id
    # the state file as a tuner whose study opened leaves it (here the driver is missing)
    state = jsonl.read_json(os.path.join(run, "hotcb.tune.json"))
    assert state["enable_cmd"] == cmd_id and "s3cr3t" not in json.dumps(state)
    jsonl.write_json_atomic(os.path.join(run, "hotcb.tune.json"), {**state, "mode": "observe"})
    second = HotKernel(run, poll_interval_sec=0)  # a new life: no checkpoint to resume from
    try:
        second.apply({"step": 1, "metrics": {"loss": 1.0}})
        tuner = second.module("tune")
        assert tuner.settings.storage == url  # type: ignore[attr-defined]
    finally:
        second.close()
    resumed = [e for e in read_ledger(run) if e.get("source") == "resume"]
    assert [e["op"] for e in resumed] == ["enable"]  # turned on again, not the command replayed
    with open(os.path.join(run, "hotcb.tune.json")) as f:
        assert "s3cr3t" not in f.read()


def test_a_restart_with_an_unreadable_tuner_state_says_the_tuner_is_off(tmp_path: Any) -> None:
    """An emptied ``hotcb.tune.json`` left the tuner off after a restart without a checkpoint,
    and nothing said so: a failed ``tune enable`` entry says why and what to send."""
    from hotcb import HotKernel

    run = os.fspath(tmp_path / "run")
    first = HotKernel(run, poll_interval_sec=0)
    HotClient(run).tune_enable("observe", objective="loss")
    first.apply({"step": 1, "metrics": {"loss": 1.0}})
    first.close()
    open(os.path.join(run, "hotcb.tune.json"), "w").close()  # emptied
    second = HotKernel(run, poll_interval_sec=0)
    second.apply({"step": 1, "metrics": {"loss": 1.0}})
    second.close()
    (failed,) = [
        e for e in read_ledger(run) if e.get("op") == "enable" and e["decision"] == "failed"
    ]
    assert "hotcb.tune.json is unreadable" in failed["error"] and "tune enable" in failed["error"]


@pytest.mark.parametrize("last", ["enable", "disable"])
def test_a_restart_after_the_tuner_state_was_deleted_says_the_tuner_is_off(
    tmp_path: Any, last: str
) -> None:
    """A deleted ``hotcb.tune.json`` left the tuner off after a restart, silently (an emptied
    one said so). When the ledger says the tuner was on, the failed entry says it is off now;
    a tuner turned off before says nothing."""
    from hotcb import HotKernel

    run = os.fspath(tmp_path / "run")
    first = HotKernel(run, poll_interval_sec=0)
    HotClient(run).tune_enable("observe", objective="loss")
    first.apply({"step": 1, "metrics": {"loss": 1.0}})
    if last == "disable":
        HotClient(run).tune_disable()
        first.apply({"step": 2, "metrics": {"loss": 1.0}})
    first.close()
    os.unlink(os.path.join(run, "hotcb.tune.json"))
    second = HotKernel(run, poll_interval_sec=0)
    second.apply({"step": 3, "metrics": {"loss": 1.0}})
    second.close()
    failed = [e for e in read_ledger(run) if e.get("op") == "enable" and e["decision"] == "failed"]
    if last == "disable":
        assert failed == []
        return
    assert len(failed) == 1, failed
    assert "hotcb.tune.json is missing (deleted?)" in failed[0]["error"]
    assert "tune enable" in failed[0]["error"]


def test_a_branch_goes_on_in_its_parent_s_study(toy: Any) -> None:
    """``hotcb branch`` starts a run in another directory from the parent's checkpoint. Its
    tuner opened the study of its own directory (a new one, numbered from 0) under trials the
    checkpoint still refers to: "could not record trial 6: trial 6 is not in study". It goes
    on in the parent's study, its trials after the parent's, marked as its own."""
    import optuna

    parent: Toy = toy(log_level, name="parent", lr=1e-3)
    HotClient(parent.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                                 seed=0, space=LR_ONLY, sync=True)  # fmt: skip
    tuner: Any = parent.kernel.module("tune")
    parent.run(500, until=lambda: parent.step > 60 and tuner.trial is not None)
    state = parent.kernel.state_dict()  # with a trial open
    at = parent.step
    assert state["modules"]["tune"]["trial"] is not None
    parent.run(120)  # the parent trains on: its own trials after the checkpoint
    parent.kernel.close()

    child: Toy = toy(log_level, name="child", lr=1e-3)
    child.kernel.load_state_dict(state)
    child.step = at
    child.run(150)
    child.kernel.close()
    status = HotClient(child.kernel.run_dir).tune_status()
    assert status["study"] == "hotcb-parent" and not status["warnings"], status["warnings"]
    assert not os.path.exists(os.path.join(child.kernel.run_dir, "hotcb.tune.db"))
    study = optuna.load_study(
        study_name="hotcb-parent", storage=f"sqlite:///{parent.kernel.run_dir}/hotcb.tune.db"
    )
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(len(trials)))
    runs = [t.user_attrs.get("run") for t in trials]
    ours = [t for t in trials if t.user_attrs.get("run") == child.kernel.run_dir]
    assert ours and runs.index(child.kernel.run_dir) > 0  # after the parent's
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ours[:-1])


def test_a_frozen_run_gets_its_trial_taken_back_and_no_new_one(toy: Any) -> None:
    """``freeze --mode prod`` (the run takes no changes) during a trial: the tuner's roll-back
    was refused, which left the trial's lr in force, and every later trial was sent, refused
    and waited out (200 steps each, "the mutate command was not applied"). The roll-back now
    passes the freeze; no trial starts while frozen, and ``tune status`` says why."""
    t: Toy = toy(log_level, lr=1e-3)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    tuner: Any = t.kernel.module("tune")

    # a trial that lowers the lr: log_level scores it worse, so it is rolled back
    def lowering() -> bool:
        trial = tuner.trial
        return trial is not None and t.lr < 0.95 * trial["before"]["opt"]["lr"]

    t.run(2000, until=lowering)
    assert lowering(), "no trial lowered the lr"
    number, lr_before = tuner.trial["number"], tuner.trial["before"]["opt"]["lr"]
    client.freeze("prod")
    t.run(20_000, until=lambda: any(w.startswith("the run's freeze") for w in tuner.warnings))
    t.run(300)  # 30 segment boundaries while frozen
    entries = t.ledger()
    (rollback,) = [e for e in entries if e["op"] == "rollback" and e["tune"]["trial"] == number]
    assert rollback["decision"] == "applied" and t.lr == pytest.approx(lr_before)
    assert not [e for e in entries if e["decision"] == "ignored_freeze"], entries
    (note,) = client.tune_status()["warnings"]
    assert note == "the run's freeze mode is prod: no trial until 'hotcb freeze --mode off'"
    # the pass is the tuner's own: a roll-back someone else writes is refused like any change
    from hotcb import jsonl
    from hotcb.ops import make_command

    forged = make_command("tune", "rollback", source="cli",
                          params={"trial": number, "values": {"opt": {"lr": 0.5}}})  # fmt: skip
    jsonl.append(os.path.join(t.kernel.run_dir, "hotcb.commands.jsonl"), forged)
    t.run(20_000, until=lambda: any(e["cmd_id"] == forged["cmd_id"] for e in t.ledger()))
    (refused,) = [e for e in t.ledger() if e["cmd_id"] == forged["cmd_id"]]
    assert refused["decision"] == "ignored_freeze" and t.lr == pytest.approx(lr_before)
    client.freeze("off")
    before = len([e for e in t.ledger() if e["op"] == "mutate"])
    t.run(20_000, until=lambda: len([e for e in t.ledger() if e["op"] == "mutate"]) > before)
    assert len([e for e in t.ledger() if e["op"] == "mutate"]) > before  # trials again
    assert client.tune_status()["warnings"] == []


def test_a_run_joining_a_shared_study_says_what_the_others_put_in_it(
    toy: Any, cli: Any, tmp_path: Any
) -> None:
    """A second run in a study the first filled: its trials are numbered after the first's,
    and `tune status` showed only its own best, with nothing saying that the study held
    another run's trials (a probe: "best: trial 11" while the first run's trial 6 scored
    higher)."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    first: Toy = toy(log_level, name="first", lr=1e-5, allowed_roots=[tmp_path])
    HotClient(first.kernel.run_dir).tune_enable(
        "active", objective="loss", segment_steps=10, seed=0, storage=storage, study="s",
        space=LR_ONLY, sync=True,
    )  # fmt: skip
    first.run(100_000, until=lambda: len(first.ledger("keep") + first.ledger("rollback")) >= 4)
    theirs = optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)
    theirs = [t for t in theirs if t.state.is_finished()]  # told: an open trial is not yet one
    best = max(t.value for t in theirs if t.value is not None)
    second: Toy = toy(log_level, name="second", lr=1e-5, allowed_roots=[tmp_path])
    client = HotClient(second.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=1, storage=storage,
                       study="s", space=LR_ONLY, sync=True)  # fmt: skip
    second.run(2)
    joined = client.tune_status()["study_joined"]
    assert joined == {"trials": len(theirs), "runs": 1, "best": pytest.approx(best)}
    out = cli(second.kernel.run_dir, "tune", "status").stdout
    assert (
        f"(shared: {len(theirs)} trials of 1 other run when this run joined, their best score {best:+.3f})"
        in out
    ), out
    # the first run joined an empty study: nothing to say
    assert HotClient(first.kernel.run_dir).tune_status()["study_joined"] is None
    # the first goes on; the second, switched to another mode, opens the study again: it
    # joined when it joined (the count grew with the first's trials since)
    first.run(100_000, until=lambda: len(first.ledger("keep") + first.ledger("rollback")) >= 7)
    client.tune_enable("suggest")
    second.run(100_000, until=lambda: second.kernel.module("tune").mode == "suggest"
               and second.kernel.module("tune").study is not None)  # fmt: skip
    second.run(2)
    assert client.tune_status()["study_joined"] == joined


def test_enable_on_a_tuner_that_is_on_changes_only_what_it_names(
    toy: Any, cli: Any, tmp_path: Any
) -> None:
    """`tune enable --mode suggest` on a running tuner switches the mode; the objective, its
    direction, the segment, the space and the shared study stay (a switch went back to
    val_loss, 200 steps and the run's own SQLite study, mixing two objectives in one)."""
    t: Toy = toy(log_level, lr=1e-4, allowed_roots=[tmp_path])
    run = t.kernel.run_dir
    client = HotClient(run)
    storage = f"journal:{tmp_path / 'shared.journal'}"
    client.tune_enable("active", objective="loss", direction="minimize", segment_steps=10,
                       space=LR_ONLY, storage=storage, study="shared", sync=True)  # fmt: skip
    tune = t.kernel.module("tune")
    t.run(100_000, until=lambda: tune.mode == "active")

    assert cli(run, "tune", "enable", "--mode", "suggest").returncode == 0
    t.run(100_000, until=lambda: tune.mode == "suggest")
    st = client.tune_status()
    assert (st["objective"], st["direction"], st["segment_steps"]) == ("loss", "minimize", 10)
    assert (st["study"], st["storage"]) == ("shared", storage)
    assert [k["key"] for k in st["space"]] == ["lr"] and st["settings"]["sync"] is True

    # a flag changes its setting only; one way of counting segments replaces the other
    assert cli(run, "tune", "enable", "--segment-evals", "2").returncode == 0
    t.run(100_000, until=lambda: tune.settings.segment_evals == 2)
    st = client.tune_status()
    assert st["mode"] == "suggest" and st["objective"] == "loss" and st["study"] == "shared"

    # from off, an enable starts from the defaults again
    client.tune_disable()
    t.run(100_000, until=lambda: tune.mode == "off")
    client.tune_enable(objective="loss", sync=True)
    t.run(100_000, until=lambda: tune.mode != "off")
    st = client.tune_status()
    assert (st["mode"], st["segment_steps"], st["study"]) == ("active", 200, "hotcb-run")


def test_a_move_past_the_actuator_s_bound_is_clamped_not_refused(toy: Any) -> None:
    """A recipe's knob without a `max`, on an lr near the actuator's maximum (10), with a
    sampler that only goes up: each move stops at the maximum. A move past it was refused by
    the actuator, the trial failed, and the sampler asked for it again at every boundary."""
    t: Toy = toy(log_level, lr=6.0)
    client = HotClient(t.kernel.run_dir)
    up = [{"key": "lr", "module": "opt", "mode": "mult", "low": 1.5, "high": 3.0}]
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, space=up, sync=True)
    t.run(5_000, until=lambda: len(t.ledger("unmoved")) >= 3)
    mutates = t.ledger("mutate")
    assert mutates and [e["decision"] for e in mutates] == ["applied"] * len(mutates), mutates
    assert all(e["changes"]["lr"]["new"] <= 10.0 for e in mutates if e.get("changes"))
    assert mutates[0]["changes"]["lr"]["new"] == 10.0
    assert max(t.lrs) == 10.0
    # held there, a move up moves nothing: told 0, not refused (nor applied as 10 -> 10)
    assert len(t.ledger("unmoved")) >= 3 and client.tune_status()["counts"]["failed"] == 0


def test_an_enable_sent_before_the_run_starts_shows_as_queued(tmp_path: Any, cli: Any) -> None:
    """`tune enable` written before the trainer starts (as `hotcb init` suggests): `tune
    status` said only "tuner: off (… tune enable …)", telling the user to do what they had
    just done; `--wait` timed out with "is the run alive?"."""
    run = os.fspath(tmp_path / "run")
    assert cli(run, "init").returncode == 0
    done = cli(run, "tune", "enable", "--mode", "active")
    assert done.returncode == 0, done.stderr
    cid = done.stdout.strip()
    st = cli(run, "tune", "status").stdout
    assert (f"queued: tune enable --mode active ({cid}) waits in the commands file until the "
            "run starts") in st, st  # fmt: skip
    assert "tuner: off\n" in st and "tune enable --mode active|suggest" not in st, st
    assert json.loads(cli(run, "tune", "status", "--json").stdout)["queued"]["cmd_id"] == cid
    waited = cli(run, "tune", "enable", "--mode", "suggest", "--wait", "--timeout", "1")
    assert waited.returncode == 3  # not handled yet: neither refused (1) nor a usage error (2)
    assert "hotcb: the run has not started; waiting up to 1s for it" in waited.stderr
    assert "the run has not started (no trainer has opened this directory)" in waited.stderr
    nowhere = cli(os.fspath(tmp_path / "nowhere"), "tune", "accept", "P1")
    assert nowhere.returncode == 2 and "no run directory at" in nowhere.stderr, nowhere.stderr


def _inside_a_trial(toy: Any, space: list[dict[str, Any]]) -> tuple[Toy, HotClient, Any, Any]:
    """A run polling every step, its tuner (long segments over ``space``) 5 steps into a trial:
    the run, a client, the tuner, the trial."""
    t: Toy = toy(log_level, lr=1e-3, weight_decay=0.01, poll=0.0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=400, seed=0, space=space,
                       sync=True)  # fmt: skip
    tune = t.kernel.module("tune")
    t.run(100_000, until=lambda: tune.trial is not None and t.step > tune.trial["step"] + 5)
    assert tune.trial is not None
    return t, client, tune, tune.trial


def _failed_with(client: HotClient, number: int, reason: str) -> None:
    """Trial ``number`` is failed in `tune status` with ``reason``, and FAIL in the study."""
    import optuna

    st = client.tune_status()
    row = next(r for r in st["trials"] if r["trial"] == number)
    assert row["decision"] == "failed" and reason in row["detail"]["reason"], row
    study = optuna.load_study(study_name=st["study"], storage=st["storage"])
    assert study.trials[number].state == optuna.trial.TrialState.FAIL


def test_a_person_s_change_during_a_trial_voids_it_and_stays(toy: Any, cli: Any) -> None:
    """`hotcb set lr=…` in the middle of a trial that moved lr and weight decay: the trial is
    not judged (Optuna hears FAIL, not a score the person's change earned), the person's lr
    stays, and the trial's weight decay goes back. Before, the trial was kept or rolled back
    on that score, and a roll-back scaled the person's lr by the trial's ratio."""
    space = [*LR_ONLY, {"key": "weight_decay", "module": "opt", "mode": "mult", "low": 0.5,
                        "high": 2.0, "max": 1.0}]  # fmt: skip
    t, client, tune, trial = _inside_a_trial(toy, space)
    number, wd_before = trial["number"], trial["before"]["opt"]["weight_decay"]
    (cmd,) = client.set({"lr": 0.05})
    t.run(100_000, until=lambda: t.lr == 0.05)
    assert [e["step"] for e in read_ledger(t.kernel.run_dir) if e["cmd_id"] == cmd] == [t.step]
    assert tune.trial is not None and tune.trial["number"] == number  # landed inside the trial
    t.run(100_000, until=lambda: tune.phase != "trial" and tune.waiting is None)

    (void,) = t.ledger("void")
    assert void["tune"]["trial"] == number and "opt.lr" in void["tune"]["reason"]
    assert not [e for e in t.ledger("keep") if e["tune"]["trial"] == number]
    (back,) = [e for e in t.ledger("rollback") if e["params"]["trial"] == number]
    assert set(back["changes"]) == {"weight_decay"}  # the trial's other knob goes back
    assert t.opt.param_groups[0]["weight_decay"] == wd_before
    assert t.lr == 0.05  # the person's value, untouched
    _failed_with(client, number, "set by a command")
    log = cli(t.kernel.run_dir, "log").stdout
    assert f"tune void -> applied [trial {number}, opt.lr set by a command during" in log


def test_undo_passes_over_the_tuner_s_roll_back(toy: Any) -> None:
    """A person's lr voided a trial and the tuner rolled the trial's weight decay back; then
    `hotcb undo`. It undid the roll-back (the failed trial's weight decay came back, with no
    trial to judge it, in what the tuner took for a baseline). A plain undo now passes over
    the tuner's roll-backs, enables and disables, and the mutations it rolled back: it undoes
    the person's command. Undoing a roll-back by its id is refused, with what to do."""
    space = [*LR_ONLY, {"key": "weight_decay", "module": "opt", "mode": "mult", "low": 0.5,
                        "high": 2.0, "max": 1.0}]  # fmt: skip
    t, client, tune, trial = _inside_a_trial(toy, space)
    number, wd_before = trial["number"], trial["before"]["opt"]["weight_decay"]
    (cmd,) = client.set({"lr": 0.05})
    t.run(100_000, until=lambda: tune.phase != "trial" and tune.waiting is None)
    (back,) = [e for e in t.ledger("rollback") if e["params"]["trial"] == number]
    client.tune_disable()
    t.run(100_000, until=lambda: tune.mode == "off")
    undo = client.undo()
    t.run(100_000, until=lambda: any(e["cmd_id"] == undo for e in read_ledger(t.kernel.run_dir)))
    (done,) = [e for e in read_ledger(t.kernel.run_dir) if e["cmd_id"] == undo]
    assert done["decision"] == "applied" and done["undo_of"] == cmd, done
    assert t.opt.param_groups[0]["weight_decay"] == wd_before  # the roll-back stands
    again = client.undo(back["cmd_id"])
    t.run(100_000, until=lambda: any(e["cmd_id"] == again for e in read_ledger(t.kernel.run_dir)))
    (refused,) = [e for e in read_ledger(t.kernel.run_dir) if e["cmd_id"] == again]
    assert (
        refused["decision"] == "rejected"
        and "a tuner roll-back is not undone" in (refused["error"])
    ), refused
    assert t.opt.param_groups[0]["weight_decay"] == wd_before


def test_a_relative_change_during_a_trial_keeps_its_factor_not_the_trial_s(toy: Any) -> None:
    """The autopilot halves lr (a factor of the lr in force: `relative_to`) in the middle of
    a trial that had moved lr: the trial is voided, and "the command's value stays" kept the
    unjudged trial's move inside it for good (×0.148 net, not ×0.5). The roll-back now takes
    the trial's own factor back from it: lr ends at half its value before the trial."""
    space = [*LR_ONLY, {"key": "weight_decay", "module": "opt", "mode": "mult", "low": 0.5,
                        "high": 2.0, "max": 1.0}]  # fmt: skip
    t, _, tune, trial = _inside_a_trial(toy, space)
    number = trial["number"]
    lr_before, wd_before = trial["before"]["opt"]["lr"], trial["before"]["opt"]["weight_decay"]
    now = t.lr
    assert now != lr_before  # the trial moved lr
    autopilot = HotClient(t.kernel.run_dir, source="autopilot")
    autopilot.set_params("opt", {"lr": now * 0.5}, relative_to={"lr": now})
    t.run(100_000, until=lambda: tune.phase != "trial" and tune.waiting is None)
    (void,) = t.ledger("void")
    assert void["tune"]["trial"] == number
    (back,) = [e for e in t.ledger("rollback") if e["params"]["trial"] == number]
    assert back["tune"]["rescaled"] == {"opt.lr": pytest.approx(lr_before / now)}
    assert "opt.lr: the trial's x" in back["tune"]["reason"]
    assert t.lr == pytest.approx(lr_before * 0.5, rel=1e-9)  # the cut, on the value before
    assert t.opt.param_groups[0]["weight_decay"] == wd_before
    replayed = [e.params["lr"] for e in ledger_to_entries(read_ledger(t.kernel.run_dir),
                t.kernel.run_dir) if "lr" in e.params]  # fmt: skip
    assert replayed[-1] == pytest.approx(lr_before * 0.5, rel=1e-9)  # a replay does the same


def test_a_person_s_change_during_a_trial_voids_it_after_a_resume_too(toy: Any) -> None:
    """A person's lr during a trial, then a checkpoint, the process killed and the run resumed
    from it: the resumed tuner judged the trial (the command is before the checkpoint, so no
    resume re-queues it, and which knobs commands had set was not in the checkpoint) and
    rolled the person's lr back. It voids the trial, as the life that died would have."""
    space = [*LR_ONLY, {"key": "weight_decay", "module": "opt", "mode": "mult", "low": 0.5,
                        "high": 2.0, "max": 1.0}]  # fmt: skip
    t, client, tune, trial = _inside_a_trial(toy, space)
    number, wd_before = trial["number"], trial["before"]["opt"]["weight_decay"]
    client.set({"lr": 0.05})
    t.run(100_000, until=lambda: t.lr == 0.05)
    state, step = t.kernel.state_dict(), t.step
    assert tune.trial is not None and tune.trial["number"] == number  # still open
    t.kernel.close()  # the life that dies at the checkpoint

    again: Toy = toy(log_level, lr=1e-3, weight_decay=0.01, poll=0.0)  # a new process
    again.kernel.load_state_dict(state)
    again.step = step
    resumed = again.kernel.module("tune")
    again.run(100_000, until=lambda: resumed.trial is None and resumed.waiting is None
              and resumed.phase != "trial")  # fmt: skip
    voids = [e for e in again.ledger("void") if e["tune"]["trial"] == number]
    assert voids and "opt.lr set by a command" in voids[-1]["tune"]["reason"], voids
    assert again.lr == 0.05  # the person's value
    assert again.opt.param_groups[0]["weight_decay"] == wd_before  # the trial's other knob


def test_a_trial_a_killed_life_left_open_says_why_it_failed(toy: Any, cli: Any) -> None:
    """Resumed from a checkpoint taken before a trial that the killed process then opened: the
    study's trial is told FAIL, and its row said only "failed", with no step and no reason.
    Its ``tune void`` entry comes before the ``kernel resume`` one, at the checkpoint's step,
    and the recipe export read it as a restart without a checkpoint."""
    t: Toy = toy(log_level, lr=1e-3, poll=0.0)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10, seed=0,
                                              space=LR_ONLY, sync=True)  # fmt: skip
    tune = t.kernel.module("tune")
    t.run(100_000, until=lambda: len(tune.history) >= 2 and tune.trial is None)
    state, step = t.kernel.state_dict(), t.step
    t.run(100_000, until=lambda: tune.trial is not None)  # opened after the checkpoint
    number = tune.trial["number"]  # the process is killed here: nothing closes the trial

    again: Toy = toy(log_level, lr=1e-3, poll=0.0)
    again.kernel.load_state_dict(state)
    again.step = step
    again.run(1)
    row = next(r for r in HotClient(again.kernel.run_dir).tune_status()["trials"]
               if r["trial"] == number)  # fmt: skip
    assert row["decision"] == "failed", row
    assert row["detail"]["reason"].startswith("opened after the checkpoint this run resumed "
                                              "from, by a process that ended"), row  # fmt: skip
    # and in the ledger, as after a restart without a checkpoint (`hotcb log` lists it)
    (void,) = [e for e in again.ledger("void") if e["tune"]["trial"] == number]
    assert void["tune"]["reason"] == row["detail"]["reason"]
    done = cli(again.kernel.run_dir, "recipe", "export")
    assert done.returncode == 0 and "restarted without a checkpoint" not in done.stderr, done


def test_a_person_s_set_after_a_relative_change_is_not_rescaled(toy: Any) -> None:
    """A trial voided by a relative change (its factor to take back), then a person's own
    `set lr=0.005` read in the same poll as that roll-back, just before it: the roll-back
    multiplied the person's value by the trial's inverse factor (0.005 became 0.02)."""
    t, client, tune, trial = _inside_a_trial(toy, LR_ONLY)
    number, now = trial["number"], t.lr
    autopilot = HotClient(t.kernel.run_dir, source="autopilot")
    autopilot.set_params("opt", {"lr": now * 0.5}, relative_to={"lr": now})
    t.run(100_000, until=lambda: t.lr == pytest.approx(now * 0.5))
    client.tune_disable()  # applied first: its roll-back is written after the person's set
    client.set({"lr": 0.005})
    t.run(100_000, until=lambda: tune.mode == "off" and tune.waiting is None)
    (back,) = [e for e in t.ledger("rollback") if e["params"]["trial"] == number]
    assert "rescale" in back["params"] and not back.get("changes"), back
    assert back["tune"]["left"] == ["opt.lr"] and "rescaled" not in back["tune"]
    assert t.lr == 0.005


def test_undoing_the_open_trial_s_mutation_says_why_it_failed(toy: Any) -> None:
    """`hotcb undo` of the open trial's mutation: the trial failed with no ledger entry and no
    reason in `tune status` (end_step and detail empty)."""
    t, client, tune, trial = _inside_a_trial(toy, LR_ONLY)
    number = trial["number"]
    client.undo(trial["cmd_id"])
    t.run(100_000, until=lambda: tune.trial is None)
    (void,) = t.ledger("void")
    assert void["tune"] == {"trial": number,
                            "reason": "its mutation was undone (control undo): not judged"}  # fmt: skip
    row = next(r for r in client.tune_status()["trials"] if r["trial"] == number)
    assert row["decision"] == "failed" and row["end_step"] is not None
    assert row["detail"]["reason"] == void["tune"]["reason"]


def test_a_change_of_another_knob_during_a_trial_voids_it_too(toy: Any) -> None:
    """The trial moves lr; a person sets weight decay meanwhile: the segment measures both, so
    the trial is not judged; its lr goes back, the person's weight decay stays."""
    t, client, tune, trial = _inside_a_trial(toy, LR_ONLY)
    number, lr_before = trial["number"], trial["before"]["opt"]["lr"]
    client.set({"weight_decay": 0.2})
    t.run(100_000, until=lambda: t.opt.param_groups[0]["weight_decay"] == 0.2)
    assert tune.trial is not None and tune.trial["number"] == number
    t.run(100_000, until=lambda: tune.phase != "trial" and tune.waiting is None)
    (void,) = t.ledger("void")
    assert void["tune"]["trial"] == number and "opt.weight_decay" in void["tune"]["reason"]
    (back,) = [e for e in t.ledger("rollback") if e["params"]["trial"] == number]
    assert set(back["changes"]) == {"lr"} and t.lr == lr_before
    assert t.opt.param_groups[0]["weight_decay"] == 0.2


def test_a_person_s_change_that_lands_with_the_roll_back_stays(toy: Any, cli: Any) -> None:
    """A person's `set lr` written just before the tuner's roll-back, read in the same poll
    (the tuner had judged the trial, or been disabled, before it arrived): the roll-back came
    after it and put the trial's old lr back over it, silently. Now the roll-back leaves lr as
    the command set it, says so, and takes back the trial's other knob; the recipe replays
    the same."""
    space = [*LR_ONLY, {"key": "weight_decay", "module": "opt", "mode": "mult", "low": 0.5,
                        "high": 2.0, "max": 1.0}]  # fmt: skip
    t, client, tune, trial = _inside_a_trial(toy, space)
    number, wd_before = trial["number"], trial["before"]["opt"]["weight_decay"]
    client.tune_disable()  # applied first: it writes the roll-back, after the person's set
    (cmd,) = client.set({"lr": 0.05})
    t.run(100_000, until=lambda: tune.mode == "off" and tune.waiting is None)
    entries = read_ledger(t.kernel.run_dir)
    (back,) = [e for e in t.ledger("rollback") if e["params"]["trial"] == number]
    (person,) = [e for e in entries if e["cmd_id"] == cmd]
    assert person["seq"] < back["seq"]  # the race: the person's set came first
    assert set(back["changes"]) == {"weight_decay"} and back["tune"]["left"] == ["opt.lr"]
    assert t.lr == 0.05 and t.opt.param_groups[0]["weight_decay"] == wd_before
    log = cli(t.kernel.run_dir, "log").stdout
    assert "opt.lr left as a command set it after the trial began" in log, log
    replayed = [e.params["lr"] for e in ledger_to_entries(entries, t.kernel.run_dir)
                if "lr" in e.params]  # fmt: skip
    assert replayed[-1] == 0.05  # a replay ends on the person's lr too, not the trial's old one


def test_a_command_just_before_a_trial_s_mutation_cancels_it(toy: Any) -> None:
    """A person's weight decay, written just before the trial's lr mutation and applied at
    its step, before it: the trial would be judged on both changes against a trend the
    person's broke. The mutation is not applied (Optuna hears FAIL), the person's value
    stays, and no segment is spent on a trial that cannot be judged."""
    t: Toy = toy(log_level, lr=1e-3, weight_decay=0.01, poll=0.0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=40, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    tune = t.kernel.module("tune")
    submit, sent = tune._submit, []

    def person_first(op: str, params: dict[str, Any], step: int) -> None:
        if op == "mutate" and not sent:  # written just before the tuner's mutation
            sent.extend(client.set({"weight_decay": 0.02}))
        submit(op, params, step)

    tune._submit = person_first
    t.run(100_000, until=lambda: bool(tune.trials) and tune.trials[0]["decision"] == "failed")
    row = tune.trials[0]
    mutate = next(e for e in t.ledger("mutate") if e["params"]["trial"] == row["trial"])
    (person,) = [e for e in read_ledger(t.kernel.run_dir) if e["cmd_id"] == sent[0]]
    assert (person["step"], person["seq"] + 1) == (mutate["step"], mutate["seq"])
    assert mutate["decision"] == "noop" and "changed opt.weight_decay" in mutate["error"]
    assert t.lr == 1e-3 and t.opt.param_groups[0]["weight_decay"] == 0.02
    _failed_with(client, row["trial"], "a command changed opt.weight_decay after this trial")


def test_disable_during_a_trial_takes_its_change_back(toy: Any, cli: Any) -> None:
    """`tune disable` in the middle of a trial: the trial is not judged (Optuna hears FAIL) and
    its change goes back, so what the tuner leaves in force is what it kept, which `tune
    export` replays. Before, the trial's untested lr and weight decay stayed in force with the
    tuner off, and the export left them out."""
    space = [*LR_ONLY, {"key": "weight_decay", "module": "opt", "mode": "mult", "low": 0.5,
                        "high": 2.0, "max": 1.0}]  # fmt: skip
    t, client, tune, trial = _inside_a_trial(toy, space)
    number, before = trial["number"], trial["before"]["opt"]
    assert (t.lr, t.opt.param_groups[0]["weight_decay"]) != (before["lr"], before["weight_decay"])
    client.tune_disable()
    t.run(100_000, until=lambda: tune.mode == "off" and tune.waiting is None)
    (back,) = [e for e in t.ledger("rollback") if e["params"]["trial"] == number]
    assert back["decision"] == "applied" and "disabled during the trial" in back["tune"]["reason"]
    assert t.lr == before["lr"] and t.opt.param_groups[0]["weight_decay"] == before["weight_decay"]
    assert tune.phase == "off"
    _failed_with(client, number, "disabled during the trial")
    log = cli(t.kernel.run_dir, "log").stdout
    assert f"[trial {number}, the tuner was disabled during the trial: not judged]" in log, log
    t.run(50)  # off: nothing more from the tuner
    assert [e["params"]["trial"] for e in t.ledger("mutate")] == [number]
    status = cli(t.kernel.run_dir, "status").stdout  # hotcb status names the run's tuner
    assert re.search(r"^tuner    off: 0 kept, \d+ rolled back, 1 failed \('hotcb tune status'\)$",
                     status, re.M), status  # fmt: skip


def test_disable_during_a_trial_keeps_a_person_s_value(toy: Any) -> None:
    """A person set lr during the trial, then turned the tuner off: their lr stays."""
    t, client, tune, trial = _inside_a_trial(toy, LR_ONLY)
    client.set({"lr": 0.05})
    t.run(100_000, until=lambda: t.lr == 0.05)
    client.tune_disable()
    t.run(100_000, until=lambda: tune.mode == "off" and tune.waiting is None)
    assert t.lr == 0.05
    assert not [e for e in t.ledger("rollback") if e["params"]["trial"] == trial["number"]]


def test_a_tuner_s_mutation_that_lands_after_a_disable_is_refused(toy: Any) -> None:
    """The tuner wrote its next mutation just as a person's disable, written earlier, was on
    its way: the mutation comes after the disable and is refused, not applied by a tuner that
    is off (it would stay in force, never judged)."""
    t: Toy = toy(log_level, lr=1e-3)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, space=LR_ONLY, sync=True)
    t.run(30)
    client.tune_disable()
    late = HotClient(t.kernel.run_dir, source="tune").send(
        "tune", "mutate", params={"trial": 99, "values": {"opt": {"lr": 0.5}}}
    )
    t.run(100_000, until=lambda: any(e["cmd_id"] == late for e in read_ledger(t.kernel.run_dir)))
    (e,) = [e for e in read_ledger(t.kernel.run_dir) if e["cmd_id"] == late]
    assert e["decision"] == "rejected" and "disabled before this trial began" in e["error"]
    assert t.lr != 0.5


def test_a_running_tuner_given_a_new_objective_takes_its_direction(toy: Any, cli: Any) -> None:
    """On val_loss (minimize), `tune enable --objective val_acc` also turns the direction
    round; `--mode suggest` alone leaves it as it is."""
    t: Toy = toy(lambda lr, _s: 1.0, lr=1e-3)
    run = t.kernel.run_dir
    HotClient(run).tune_enable("active", objective="loss", segment_steps=10, sync=True)
    t.run(5)
    said = cli(run, "tune", "enable", "--objective", "val_acc")
    assert said.returncode == 0 and "val_acc is maximized (from its name" in said.stderr
    t.run(100_000, until=lambda: t.kernel.module("tune").settings.objective == "val_acc")
    assert t.kernel.module("tune").settings.direction == "maximize"
    assert cli(run, "tune", "enable", "--mode", "suggest").returncode == 0
    t.run(100_000, until=lambda: t.kernel.module("tune").settings.mode == "suggest")
    st = json.loads(cli(run, "tune", "status", "--json").stdout)
    assert (st["objective"], st["direction"]) == ("val_acc", "maximize")


def test_a_trial_whose_segment_saw_no_value_is_void_not_the_worst_score(toy: Any, cli: Any) -> None:
    """The objective comes every 70 steps, segments are 30 (the HF Trainer logs its loss every
    500 steps by default): a trial whose segment saw no value is not judged (Optuna was told
    -1, the worst score, for a move nothing measured), and `tune status` says why segments
    see none and what to do."""
    t: Toy = toy(lambda lr, _s: 1.0, lr=1e-3, train_key="acc")  # no training loss to fall back on
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="val_loss", segment_steps=30, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    tune = t.kernel.module("tune")
    t.run(3000, until=lambda: tune.counts["failed"] + tune.counts["rolled_back"] > 0, val_every=70)
    (void,) = t.ledger("void")
    number = void["tune"]["trial"]
    assert re.fullmatch(r"no value of 'val_loss' came in the trial's \d+ steps: not judged",
                        void["tune"]["reason"]), void  # fmt: skip
    t.run(100_000, until=lambda: t.kernel.module("tune").waiting is None)
    (back,) = [e for e in t.ledger("rollback") if e["params"]["trial"] == number]
    assert back["decision"] == "applied" and t.lr == 1e-3
    _failed_with(client, number, "no value of 'val_loss'")
    status = cli(t.kernel.run_dir, "tune", "status").stdout
    assert "'val_loss' came 70 steps after its last value, more than a segment (30 steps)" in (
        status)  # fmt: skip
    assert "--segment-evals 1" in status


def test_a_mistyped_objective_is_named_beside_the_stand_in(toy: Any) -> None:
    """`--objective val_los`: the training loss stood in after two segments with "--objective
    picks another", though the run logs val_loss; the warning names it now."""
    t: Toy = toy(lambda lr, _s: 1.0, lr=1e-3)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="val_los", segment_steps=10, space=LR_ONLY, sync=True)
    t.run(40, val_every=5)
    warnings = client.tune_status()["warnings"]
    assert ("objective 'val_los' was not logged in 20 steps; scoring 'loss' instead (did you "
            "mean 'val_loss'? the run logs it: --objective val_loss)") in warnings, warnings  # fmt: skip


def test_a_total_steps_the_run_is_past_is_said(toy: Any) -> None:
    """`tune enable --total-steps 10` at step 30: no trial ever started, and nothing said so."""
    t: Toy = toy(lambda lr, _s: 1.0, lr=1e-3, poll=0.0)
    t.run(30)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, space=LR_ONLY,
                       total_steps=10, sync=True)  # fmt: skip
    t.run(60)
    assert not t.ledger("mutate")
    warnings = client.tune_status()["warnings"]
    assert any(w.startswith("the run is past its total_steps (10): no trial starts")
               for w in warnings), warnings  # fmt: skip


def test_the_nothing_is_scored_warning_goes_when_a_stand_in_comes(toy: Any) -> None:
    """No metric for two segments (`nothing is scored`), then the training loss arrives and
    the tuner scores it: `tune status` no longer says nothing is scored."""
    t: Toy = toy(lambda lr, _s: 1.0, lr=1e-3)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", segment_steps=10, space=LR_ONLY, sync=True)
    for step in range(1, 26):  # a run that logs nothing yet
        t.kernel.apply({"step": step, "optimizer": t.opt, "metrics": {}})
    t.step = 25
    tune = t.kernel.module("tune")
    assert any(w.endswith("nothing is scored: --objective picks another") for w in tune.warnings)
    t.run(25)  # now `loss`, every step (and a boundary, where the state is written)
    warnings = client.tune_status()["warnings"]
    assert tune.objective_used == "loss"
    assert not [w for w in warnings if "nothing is scored" in w], warnings
    assert any("scoring 'loss' instead" in w for w in warnings), warnings


def test_a_trial_that_moves_nothing_is_told_0_without_spending_a_segment(
    toy: Any, cli: Any
) -> None:
    """lr at the actuator's maximum (10) and a space that only goes up: every trial is lr
    10 → 10. Each was applied and judged on a segment of its own (noise, sometimes kept);
    now it is told a score of 0 at once, and the next one is asked for at the same step."""
    t: Toy = toy(log_level, lr=10.0)
    client = HotClient(t.kernel.run_dir)
    up = [{"key": "lr", "module": "opt", "mode": "mult", "low": 1.5, "high": 3.0}]
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, space=up, sync=True)
    t.run(200)
    assert t.ledger("mutate") == [] and t.ledger("keep") == []
    unmoved = t.ledger("unmoved")
    assert len(unmoved) >= 6, t.ledger()
    assert all(e["tune"]["score"] == 0.0 for e in unmoved)
    assert unmoved[0]["tune"]["reason"].startswith("opt.lr=10 held at its bound")
    steps = [e["step"] for e in unmoved]
    assert steps[:3] == [steps[0]] * 3  # three at one boundary, then a baseline segment
    assert steps[3] > steps[0]
    st = client.tune_status()
    assert st["counts"]["unmoved"] == len(unmoved)
    assert {r["decision"] for r in st["trials"]} == {"unmoved"}
    import optuna

    study = optuna.load_study(study_name=st["study"], storage=st["storage"])
    told = [tr for tr in study.trials if tr.number in {e["tune"]["trial"] for e in unmoved}]
    assert {(tr.state.name, tr.value) for tr in told} == {("COMPLETE", 0.0)}
    out = cli(t.kernel.run_dir, "tune", "status").stdout
    assert f"unmoved: {len(unmoved)} (at a bound, told 0)" in out, out
    assert "held at its bound" in cli(t.kernel.run_dir, "log").stdout
    assert t.lrs[-1] == 10.0


def test_proposal_ids_go_on_after_a_restart_without_a_checkpoint(toy: Any, cli: Any) -> None:
    """Suggest mode, P1 pending, the trainer started again from scratch: the new life's
    first proposal was P1 again, so a person's `tune accept P1`, meant for the move shown
    before, accepted another."""
    t: Toy = toy(log_level, lr=1e-3)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("suggest", objective="loss", segment_steps=10, seed=0, sync=True)
    t.run(1_000, until=lambda: bool(t.ledger("propose")))
    (first,) = t.ledger("propose")
    assert first["tune"]["proposal"] == "P1"
    t.kernel.close()
    again: Toy = toy(log_level, lr=1e-3)  # the same run directory, no load_state_dict
    again.run(1_000, until=lambda: len(again.ledger("propose")) >= 2)
    later = again.ledger("propose")[1]
    assert later["tune"]["proposal"] == "P2", later
    accepted = cli(t.kernel.run_dir, "tune", "accept", "P1")
    assert accepted.returncode != 0 and "no proposal 'P1'" in accepted.stderr, accepted


def test_trials_that_move_nothing_wait_a_segment_after_three_also_when_asked_in_the_background(
    toy: Any,
) -> None:
    """Optuna's answer on its own thread lands steps after the ask: counted per step, the cap
    of three never held, and a tuner held at a bound asked for a trial every few steps."""
    t: Toy = toy(log_level, lr=10.0)
    client = HotClient(t.kernel.run_dir)
    up = [{"key": "lr", "module": "opt", "mode": "mult", "low": 1.5, "high": 3.0}]
    # segments long next to the answer's lag (this loop's steps take no time: a few hundred)
    client.tune_enable("active", objective="loss", segment_steps=2000, seed=0, space=up)
    t.run(100_000, until=lambda: len(t.ledger("unmoved")) >= 12)
    steps = [e["step"] for e in t.ledger("unmoved")]
    # every fourth comes after a baseline segment
    assert all(steps[i + 3] - steps[i] >= 2000 for i in range(0, len(steps) - 3, 3)), steps
    assert t.ledger("mutate") == []


def test_a_moved_run_started_again_goes_on_in_its_study(toy: Any, tmp_path: Any) -> None:
    """`mv runs/a runs/b`, then the trainer started in runs/b without a checkpoint: the default
    study is named after the run directory, and the tuner turned on again in a new study
    (`hotcb-b`), trial numbers from 0 under the kept file's trials."""
    t: Toy = toy(log_level, name="a", lr=1e-3)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            seed=0, sync=True)  # fmt: skip
    t.run(1_000, until=lambda: len(t.ledger("mutate")) >= 2)
    before = [e["tune"]["trial"] for e in t.ledger("mutate")]
    t.kernel.close()
    os.rename(tmp_path / "a", tmp_path / "b")
    again: Toy = toy(log_level, name="b", lr=1e-3)  # no load_state_dict
    again.run(1_000, until=lambda: len(again.ledger("mutate")) > len(before))
    status = HotClient(again.kernel.run_dir).tune_status()
    assert status["study"] == "hotcb-a", status["study"]
    after = [e["tune"]["trial"] for e in again.ledger("mutate")][len(before) :]
    assert after[0] > max(before), (before, after)
