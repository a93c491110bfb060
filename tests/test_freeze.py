"""Freeze modes: prod ignores every external command but ``freeze``; the replay modes let only
the recipe steer; the mode survives in hotcb.freeze.json and in checkpoints."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from hotcb import HotClient
from hotcb.errors import RecipeError
from hotcb.freeze import FreezeMode, FreezeState
from hotcb.recipe import RecipeEntry
from hotcb.testing import StepDriver, read_ledger, wait_for


class Run(StepDriver):
    """An in-process kernel with two loss-weight actuators (``a``, ``b``), stepped by hand."""

    def __init__(self, run_dir: str, freeze: FreezeState | None = None) -> None:
        super().__init__(
            run_dir,
            weights={"a": 1.0, "b": 0.0},
            freeze=freeze,
            metrics_collector=False,
            fsync_ledger=False,
        )


def _recipe(path: Any, *entries: RecipeEntry) -> str:
    with open(path, "w") as f:
        f.write(json.dumps({"v": 1, "kind": "hotcb.recipe", "run": {}}) + "\n")
        for e in entries:
            f.write(json.dumps(e.to_record()) + "\n")
    return os.fspath(path)


def _set_b(step: int, value: float, cmd_id: str) -> RecipeEntry:
    return RecipeEntry(step, "loss", "set_params", params={"b": value}, cmd_id=cmd_id)


def test_freeze_state_round_trips(tmp_path: Any) -> None:
    state = FreezeState(FreezeMode.REPLAY_ADJUSTED, "/r.jsonl", "/a.yaml", 50)
    state.save(os.fspath(tmp_path / "f.json"))
    assert FreezeState.load(os.fspath(tmp_path / "f.json")) == state
    assert FreezeState.load(os.fspath(tmp_path / "missing.json")) == FreezeState()
    assert state.replaying and not state.accepts_live
    assert FreezeState("prod").mode is FreezeMode.PROD


def test_prod_ignores_every_change_but_lets_run_control_through(tmp_path: Any) -> None:
    run = Run(os.fspath(tmp_path / "run"))
    c = run.client
    scheduled = c.send("loss", "set_params", params={"b": 9.0}, at_step=5)
    run.steps()
    assert run.entry(scheduled)["decision"] == "scheduled"
    prod = c.freeze("prod")
    run.steps()
    assert run.entry(prod)["decision"] == "applied"
    assert FreezeState.load(run.kernel.paths.freeze).mode is FreezeMode.PROD
    ids = [
        c.loss(a=0.5),
        c.send("loss", "set_params", params={"b": 1.0}, at_step=3),
        c.cb_load("x", path="hotcb.modules.cb.callbacks", symbol="HeartbeatCallback"),
        c.undo(),
    ]
    run.steps(5)
    for cid in [*ids, scheduled]:  # the one scheduled before prod falls due in prod: ignored
        e = run.entry(cid)
        assert e["decision"] == "ignored_freeze", e
        # said for a person on the page as well as in a shell (it sent them to the CLI only)
        assert e["error"] == ("freeze mode is prod: changes are ignored until it is off "
                              "('hotcb freeze --mode off', or the dashboard's Freeze)")  # fmt: skip
    assert run.weights == {"a": 1.0, "b": 0.0}
    # freeze blocks changes, never the operator's hand on the run (DESIGN.md §6)
    checkpoint = c.checkpoint()
    run.steps()
    assert run.entry(checkpoint)["decision"] == "applied"
    assert not run.kernel.stop_requested
    stop = c.stop()
    run.steps()
    assert run.entry(stop)["decision"] == "applied"
    assert run.kernel.stop_requested

    off = c.freeze("off")
    change = c.loss(a=0.25)
    run.steps()
    assert run.entry(off)["decision"] == "applied"
    assert run.entry(off)["changes"] == {"mode": {"old": "prod", "new": "off"}}
    assert run.entry(change)["decision"] == "applied"
    assert run.weights["a"] == 0.25


def test_a_kernel_started_in_replay_plays_the_recipe_from_the_first_apply(tmp_path: Any) -> None:
    recipe = _recipe(tmp_path / "r.jsonl", _set_b(0, 0.5, "r0"), _set_b(3, 0.75, "r3"))
    run = Run(os.fspath(tmp_path / "run"), FreezeState(FreezeMode.REPLAY, recipe))
    live = run.client.loss(b=9.0)
    run.steps()
    assert run.weights["b"] == 0.5
    # written where `hotcb status` reads the mode (it said "off" while the run replayed)
    assert FreezeState.load(run.kernel.paths.freeze).mode is FreezeMode.REPLAY
    assert run.entry("r0")["step"] == 0 and run.entry("r0")["source"] == "recipe"
    assert run.entry(live)["decision"] == "ignored_freeze"
    run.steps(3)
    assert run.weights["b"] == 0.75 and run.entry("r3")["step"] == 3


def test_a_replay_that_ends_before_its_recipe_says_so(tmp_path: Any, caplog: Any) -> None:
    """A replay's loop shorter than the recipe ended silently, its last entries never applied
    (only ``hotcb status`` still showed the next as if it were to come)."""
    recipe = _recipe(tmp_path / "r.jsonl", _set_b(1, 0.5, "r1"), _set_b(50, 0.75, "r50"),
                     _set_b(60, 0.8, "r60"))  # fmt: skip
    run = Run(os.fspath(tmp_path / "run"), FreezeState(FreezeMode.REPLAY, recipe))
    run.steps(10)
    with caplog.at_level("WARNING", logger="hotcb"):
        run.kernel.close()
    said = [r.getMessage() for r in caplog.records if "replay ended" in r.getMessage()]
    assert said == ["hotcb: the replay ended at step 9 with 2 recipe entries never reached "
                    "(the next: loss set_params at step 50): give the run as many steps as the "
                    "recipe's, or --step-offset to line them up"], said  # fmt: skip


def test_replay_mode_read_from_the_freeze_file(tmp_path: Any) -> None:
    recipe = _recipe(tmp_path / "r.jsonl", _set_b(2, 0.5, "r2"))
    run_dir = os.fspath(tmp_path / "run")
    os.makedirs(run_dir)
    FreezeState(FreezeMode.REPLAY, recipe, step_offset=10).save(
        os.path.join(run_dir, "hotcb.freeze.json")
    )
    run = Run(run_dir)
    run.steps(12)
    assert run.weights["b"] == 0.0
    run.steps()
    assert run.entry("r2")["step"] == 12 and run.weights["b"] == 0.5


def test_freeze_commands_switch_replay_on_and_off(tmp_path: Any) -> None:
    recipe = _recipe(
        tmp_path / "r.jsonl", _set_b(2, 0.5, "r2"), _set_b(6, 0.75, "r6"), _set_b(9, 0.9, "r9")
    )
    run = Run(os.fspath(tmp_path / "run"))
    run.client.freeze("replay", recipe_path=recipe, step_offset=2)
    run.steps(5)
    assert run.entry("r2")["step"] == 4
    again = run.client.freeze("replay", recipe_path=recipe, step_offset=2)
    run.steps()  # the same replay sent again keeps its place: r2 does not fire twice
    assert run.entry(again)["decision"] == "applied"
    off = run.client.freeze("off")
    run.steps(10)  # the rest of the recipe no longer fires
    assert run.entry(off)["decision"] == "applied"
    assert [e["cmd_id"] for e in read_ledger(run.run_dir) if e["source"] == "recipe"] == ["r2"]
    assert run.kernel.freeze.mode is FreezeMode.OFF


def test_a_broken_recipe_rejects_the_freeze_command(tmp_path: Any, cli: Any) -> None:
    run = Run(os.fspath(tmp_path / "run"))
    bad = tmp_path / "run" / "bad.jsonl"
    bad.write_text('{"v":1,"at":{"step":1},"module":"opt","op":"jump"}\n')
    # the client refuses before anything reaches the run ...
    with pytest.raises(RecipeError, match="unknown op 'jump'"):
        run.client.freeze("replay", recipe_path=os.fspath(bad))
    # ... and the kernel rejects a command written by hand
    missing = run.client.send("freeze", "set", mode="replay", recipe_path="none.jsonl")
    broken = run.client.send("freeze", "set", mode="replay", recipe_path="bad.jsonl")
    run.steps()
    assert run.entry(missing)["decision"] == "rejected"
    assert "cannot read recipe" in run.entry(missing)["error"]
    assert run.entry(broken)["decision"] == "rejected"
    assert "line 1: unknown op 'jump'" in run.entry(broken)["error"]
    assert run.kernel.freeze.mode is FreezeMode.OFF  # a rejected freeze changes nothing
    live = run.client.loss(b=0.5)
    run.steps()
    assert run.entry(live)["decision"] == "applied"

    # the CLI refuses before anything reaches the run
    done = cli(run.run_dir, "freeze", "--mode", "replay", "--recipe", os.fspath(bad))
    assert done.returncode == 2 and "unknown op 'jump'" in done.stderr
    done = cli(run.run_dir, "freeze", "--mode", "replay")
    assert done.returncode == 2 and "needs --recipe" in done.stderr
    done = cli(run.run_dir, "freeze", "--mode", "prod", "--recipe", os.fspath(bad))
    assert done.returncode == 2 and "only apply to the replay modes" in done.stderr


def test_a_run_whose_freeze_file_names_a_broken_recipe_keeps_training(tmp_path: Any) -> None:
    run_dir = os.fspath(tmp_path / "run")
    os.makedirs(run_dir)
    FreezeState(FreezeMode.REPLAY, os.fspath(tmp_path / "gone.jsonl")).save(
        os.path.join(run_dir, "hotcb.freeze.json")
    )
    run = Run(run_dir)
    run.steps(3)
    errors = [e for e in read_ledger(run_dir) if e["decision"] == "failed"]
    assert len(errors) == 1 and "cannot start the recipe" in errors[0]["error"]
    off = run.client.freeze("off")  # the way out
    run.steps()
    assert run.entry(off)["decision"] == "applied"
    assert run.kernel.freeze.mode is FreezeMode.OFF


def test_status_shows_the_mode_and_the_next_recipe_entries(tmp_path: Any, cli: Any) -> None:
    recipe = _recipe(
        tmp_path / "r.jsonl", _set_b(1, 0.5, "r1"), _set_b(4, 0.75, "r4"), _set_b(8, 0.9, "r8")
    )
    run = Run(os.fspath(tmp_path / "run"))
    run.client.freeze("replay", recipe_path=recipe)
    run.steps(3)
    run.kernel.flush()
    done = cli(run.run_dir, "status")
    assert done.returncode == 0, done.stderr
    # the client brought the recipe into the run directory, where the trainer may read it,
    # and it is named from there (the run directory can be moved)
    imported = [ln for ln in done.stdout.splitlines() if ln.startswith("freeze   replay recipe=")]
    assert imported and "recipe=hotcb.replay/" in imported[0], done.stdout
    nexts = [line.strip() for line in done.stdout.splitlines() if "next:" in line]
    assert nexts == [
        'next: step 4 (train_step_end): loss set_params {"b": 0.75}',
        'next: step 8 (train_step_end): loss set_params {"b": 0.9}',
    ]
    st = json.loads(cli(run.run_dir, "status", "--json").stdout)
    assert st["freeze"]["mode"] == "replay" and len(st["replay_next"]) == 2


BUNDLED = "hotcb.modules.cb.callbacks"


@pytest.mark.slow
def test_prod_run_ignores_100_commands_and_trains_like_an_unsteered_run(
    tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    torch = pytest.importorskip("torch")
    opts = {"steps": 300, "step_delay": 0.005}
    prod_dir, free_dir = os.fspath(tmp_path / "prod"), os.fspath(tmp_path / "free")
    assert cli(prod_dir, "init").returncode == 0
    done = cli(prod_dir, "freeze", "--mode", "prod")
    assert done.returncode == 0, done.stderr
    prod = start_trainer(
        prod_dir,
        os.fspath(tmp_path / "p.jsonl"),
        save_weights=os.fspath(tmp_path / "wP.pt"),
        ready_file=os.fspath(tmp_path / "ready"),
        **opts,
    )
    free = start_trainer(
        free_dir,
        os.fspath(tmp_path / "f.jsonl"),
        save_weights=os.fspath(tmp_path / "wF.pt"),
        **opts,
    )
    wait_for(lambda: os.path.exists(tmp_path / "ready"), 60, what="the prod run")
    c = HotClient(prod_dir, source="test")
    sent = []
    for i in range(100):
        kind = i % 5
        if kind == 0:
            sent.append(c.opt(lr=0.001 * (i + 1)))
        elif kind == 1:
            sent.append(c.loss(l2=0.01))
        elif kind == 2:
            sent.append(c.send("opt", "set_params", params={"lr": 0.5}, at_step=290))
        elif kind == 3:
            sent.append(c.undo())
        else:  # run control (pause, stop) passes a freeze: tests above cover it
            sent.append(c.cb_load(f"hb{i}", path=BUNDLED, symbol="HeartbeatCallback"))
    wait_for(
        lambda: len([e for e in read_ledger(prod_dir) if e["cmd_id"] in set(sent)]) == 100,
        60,
        what="100 ledger entries",
    )
    decisions = {e["decision"] for e in read_ledger(prod_dir) if e["cmd_id"] in set(sent)}
    assert decisions == {"ignored_freeze"}

    # unfreeze: commands work again (this one leaves the weights alone: weight_decay is 0.0)
    off = c.wait(c.freeze("off"), 30)
    same = c.wait(c.opt(weight_decay=0.0), 30)
    assert off["decision"] == "applied" and same["decision"] == "applied", (off, same)
    for t in (prod, free):
        rc, _, err = t.finish()
        assert rc == 0, err
    wp, wf = torch.load(tmp_path / "wP.pt"), torch.load(tmp_path / "wF.pt")
    assert all(torch.equal(wp[k], wf[k]) for k in wp)


@pytest.mark.parametrize("damage", [b"", b'{"mode": "pro', None],
                         ids=["emptied", "torn", "deleted"])  # fmt: skip
def test_a_damaged_freeze_file_takes_the_mode_from_the_ledger(
    tmp_path: Any, damage: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    """An emptied, torn or deleted ``hotcb.freeze.json`` was read as ``off``: a ``prod`` run
    started again took live changes, silently. The mode comes back from the ledger, said
    once."""
    run_dir = os.fspath(tmp_path / "run")
    first = Run(run_dir)
    prod = first.client.freeze("prod")
    first.steps()
    assert first.entry(prod)["decision"] == "applied"
    first.close()
    if damage is None:
        os.remove(os.path.join(run_dir, "hotcb.freeze.json"))
    else:
        with open(os.path.join(run_dir, "hotcb.freeze.json"), "wb") as f:
            f.write(damage)
    again = Run(run_dir)
    change = again.client.loss(a=0.5)
    again.steps()
    assert again.entry(change)["decision"] == "ignored_freeze" and again.weights["a"] == 1.0
    assert FreezeState.load(again.kernel.paths.freeze).mode is FreezeMode.PROD  # written again
    how = "missing" if damage is None else "unreadable"
    said = [r.getMessage() for r in caplog.records if f"hotcb.freeze.json is {how}" in (
        r.getMessage())]  # fmt: skip
    assert (
        len(said) == 1 and "the freeze mode is prod, from the ledger's last freeze set" in (said[0])
    )
    again.close()


def test_status_reads_an_unknown_freeze_mode_as_the_ledger_s(tmp_path: Any, cli: Any) -> None:
    """A ``hotcb.freeze.json`` holding a mode hotcb does not know broke ``hotcb status``
    (``'weird' is not a valid FreezeMode``) while the run's kernel read the ledger's mode:
    status now says that mode, and why."""
    run_dir = os.fspath(tmp_path / "run")
    first = Run(run_dir)
    first.client.freeze("prod")
    first.steps()
    first.close()
    with open(os.path.join(run_dir, "hotcb.freeze.json"), "w") as f:
        json.dump({"mode": "weird"}, f)
    done = cli(run_dir, "status")
    assert done.returncode == 0, done.stderr
    assert "freeze   prod\n" in done.stdout
    assert "hotcb.freeze.json is unreadable; the freeze mode is prod, from the ledger's last " in (
        done.stdout
    )


def test_a_replay_sent_to_a_run_already_training_catches_up_on_its_ramps(tmp_path: Any) -> None:
    """A freeze sent at step 20 to a run already training, whose recipe ramped b over steps
    2..6 and again over steps 15..25: the first ramp ran again from step 20 to 24, 18 steps off
    the plan. An overdue ramp lands at once; one still under way ends at its planned step."""
    done = RecipeEntry(2, "loss", "set_params", params={"b": 0.5}, cmd_id="r2",
                       transition={"steps": 4})  # fmt: skip
    under_way = RecipeEntry(15, "loss", "set_params", params={"a": 3.0}, cmd_id="r15",
                            transition={"steps": 10})  # fmt: skip
    recipe = _recipe(tmp_path / "r.jsonl", done, under_way)
    run = Run(os.fspath(tmp_path / "run"))
    run.steps(20)
    run.client.freeze("replay", recipe_path=recipe)
    run.steps()  # step 20: the freeze, then what is overdue
    assert run.weights["b"] == 0.5  # the plan's value by now, at once
    first = run.entry("r2")
    assert first["step"] == 20 and not first.get("transition"), first
    ramp = run.entry("r15")
    assert ramp["transition"]["steps"] == 5, ramp  # the 5 steps left of its 10
    run.steps(4)
    assert 1.0 < run.weights["a"] < 3.0
    run.steps()  # step 25: where the recipe's ramp ends
    assert run.weights["a"] == 3.0
