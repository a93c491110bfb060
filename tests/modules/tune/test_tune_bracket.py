"""``start: bracket``: the tuner's first move judged on arms trained from the same weights, in a
real kernel with a real torch model and optimizer (docs/tune.md, "A start bracket")."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from tune_helpers import Toy

from hotcb import HotClient, HotKernel
from hotcb.cli._common import fmt_entry
from hotcb.modules.tune import RecipeError, parse_settings
from hotcb.modules.tune._export import export_kept
from hotcb.recipe import ledger_to_entries
from hotcb.testing import read_ledger

BEST = 1e-3
LR_ONLY = [{"key": "lr", "module": "opt", "mode": "mult", "low": 0.25, "high": 4.0}]


def far_from_best(lr: float, _step: int) -> float:
    """The objective: 1 at lr = BEST, growing with the distance in log space."""
    return 1.0 + abs(math.log(lr / BEST))


Weights = dict[int, list[torch.Tensor]]


def _train(
    run_dir: str, steps: int, *, val_every: int = 0, **enable: Any
) -> tuple[HotKernel, torch.optim.Optimizer, Weights, Weights, Weights]:
    """A real model from 16x too high, a start bracket enabled before step 1 (``enable``: more
    settings), ``loss`` (and ``val_loss`` every ``val_every`` steps) from :func:`far_from_best`.
    The weights after each step's update (``before``), after the kernel applied its commands
    (``after``), and AdamW's state after them (``moments``), by step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=16 * BEST)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    HotClient(run_dir).tune_enable("active", segment_steps=10, seed=0, start="bracket",
                                   space=LR_ONLY, sync=True, **enable)  # fmt: skip
    before: Weights = {}
    after: Weights = {}
    moments: Weights = {}
    for step in range(1, steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        before[step] = [p.detach().clone() for p in model.parameters()]
        value = far_from_best(opt.param_groups[0]["lr"], step)
        metrics = {"loss": value, **({"val_loss": value} if val_every and step % val_every == 0
                                     else {})}  # fmt: skip
        kernel.apply({"step": step, "model": model, "optimizer": opt, "metrics": metrics})
        after[step] = [p.detach().clone() for p in model.parameters()]
        moments[step] = [opt.state[p][k].clone() for p in model.parameters()
                         for k in ("exp_avg", "exp_avg_sq", "step")]  # fmt: skip
    return kernel, opt, before, after, moments


def test_the_bracket_finds_the_lr_and_each_arm_starts_from_the_same_weights(
    tmp_path: Any, cli: Any
) -> None:
    """From 16x too high: x0.25 wins twice, a third x0.25 and then half of it (x0.5) lose, and
    the run goes on at BEST. The first arm starts from the weights of the step the enable was
    applied at (not from those of the step its own command landed at, after more steps at the
    bad lr); every arm after a round's first starts from the weights the round started from,
    bit for bit, and the run goes on at the lr found from the weights the bracket began with:
    the rounds' winners trained at lrs (x0.25, x1/16) that a later round found too high."""
    run_dir = str(tmp_path / "run")
    kernel, opt, before, after, moments = _train(run_dir, 160, objective="loss")
    tune = kernel.module("tune")
    assert tune.phase not in ("bracket", "waiting")  # over
    kernel.close()

    ops = [e for e in read_ledger(run_dir) if e.get("module") == "tune" and e["op"] == "bracket"]
    assert all(e["decision"] == "applied" and e["source"] == "tune" for e in ops)
    arms = [(e["tune"]["bracket"].get("round"), e["tune"]["bracket"].get("factor")) for e in ops]
    assert arms == [(1, 1.0), (1, 0.25), (1, 4.0), (2, 1.0), (2, 0.25), (3, 1.0), (3, 0.25),
                    (4, 1.0), (4, 0.5), (None, None)], arms  # fmt: skip
    settle = ops[-1]
    assert settle["params"]["settle"] and settle["changes"]["lr"]["new"] == pytest.approx(BEST)
    assert settle["params"]["from"] == "first"
    assert opt.param_groups[0]["lr"] == pytest.approx(BEST)

    enabled = next(e["step"] for e in read_ledger(run_dir) if e.get("op") == "enable")
    assert ops[0]["step"] > enabled and ops[0]["tune"]["restored"] == ["model", "optimizer"]
    for got, want in zip(after[ops[0]["step"]], before[enabled], strict=True):
        assert torch.equal(got, want)
    _check_restores(ops, before, after, moments, enabled)
    # what a person reads: `hotcb log`, `tune status`
    assert "bracket round 1, arm x0.25, model and optimizer state restored" in fmt_entry(
        ops[1], run_dir
    )
    ends = [e for e in read_ledger(run_dir) if e.get("op") == "arm"]
    assert len(ends) == 9 and "ended at 2.386, best so far" in fmt_entry(ends[1], run_dir)
    assert "bracket over: lr x0.5 won" not in fmt_entry(settle, run_dir)
    # the whole move from where it began, and the last round's winner (x1 alone read as "the
    # starting lr won")
    assert (
        "bracket over: lr 0.016 -> 0.001 (x0.0625; x1 won the last round), on from the weights "
        "it began with" in fmt_entry(settle, run_dir)
    )
    status = HotClient(run_dir).tune_status()
    rounds = status["bracket"]["rounds"]
    assert [r["winner"] for r in rounds] == [0.25, 0.25, 1.0, 1.0]
    assert status["bracket"]["back_to_start"] is True
    shown = cli(run_dir, "tune", "status").stdout
    assert "x1 won the last round), on from the weights it began with:" in shown, shown
    # over: no arm under way or value in force is left in what status shows
    assert not {"arm", "in_force", "values"} & set(status["bracket"]), status["bracket"]
    # `tune export` carries the lr the bracket settled on
    _path, entries = export_kept(run_dir)
    assert [(e.step, e.module, e.params) for e in entries] == [
        (settle["step"], "opt", {"lr": pytest.approx(BEST)})
    ]
    # so does `recipe export`: the arms are not in it (a replay cannot put weights back)
    recipe = [e for e in ledger_to_entries(read_ledger(run_dir)) if e.step <= settle["step"]]
    assert [(e.step, e.params) for e in recipe] == [(settle["step"], {"lr": pytest.approx(BEST)})]


def _same(got: list[torch.Tensor], want: list[torch.Tensor]) -> bool:
    return all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def _check_restores(
    ops: list[dict[str, Any]], before: Weights, after: Weights, moments: Weights, enabled: int
) -> None:
    """What each bracket op put back: the round's start, the best arm's end, or (the settle
    after a move won) the weights of the step the enable was applied at."""
    start_at = saved_at = None  # the steps whose weights the copies hold
    for e in ops:
        p, at, restored = e["params"], e["step"], e["tune"]["restored"]
        if p.get("save") and p.get("from") != "best":
            saved_at = at  # the closing arm's end (before this op restored anything)
        if p.get("from") == "start":
            assert restored == ["model", "optimizer"] and _same(after[at], after[start_at])
            # the optimizer's moments too, each time: a copy restored twice is the same copy
            assert _same(moments[at], moments[start_at]), e["tune"]["bracket"]
        elif p.get("from") == "best" and not p.get("save"):
            assert restored == ["model", "optimizer"] and _same(after[at], before[saved_at])
        elif p.get("from") == "best":  # the closing arm is the best: nothing to restore
            assert restored == []
        elif p.get("from") == "first":  # the settle, after a move won
            assert p.get("settle") and restored == ["model", "optimizer"]
            assert _same(after[at], before[enabled]) and _same(moments[at], moments[enabled])
        if p.get("snapshot"):
            start_at = at


def test_a_good_lr_wins_its_first_round_and_the_baselines_follow(toy: Any) -> None:
    """At the best lr both moves lose: one round of three arms, then the tuner's baseline
    segments and trials as without a bracket."""
    t: Toy = toy(far_from_best, lr=BEST, model=True, poll=0.0)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            seed=0, start="bracket", space=LR_ONLY, sync=True)  # fmt: skip
    t.run(400, until=lambda: len(t.ledger("mutate")) >= 1)
    ops = t.ledger("bracket")
    assert [e["tune"]["bracket"].get("factor") for e in ops] == [1.0, 0.25, 4.0, None]
    assert ops[-1]["changes"]["lr"]["new"] == BEST
    # the first trial comes after two baseline segments following the bracket
    assert t.ledger("mutate")[0]["step"] >= ops[-1]["step"] + 2 * 10


def test_a_command_on_the_lr_during_the_bracket_ends_it_and_keeps_the_persons_value(
    toy: Any,
) -> None:
    t: Toy = toy(far_from_best, lr=16 * BEST, model=True, poll=0.0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, start="bracket",
                       space=LR_ONLY, sync=True)  # fmt: skip
    t.run(5)  # inside the first arm
    assert t.kernel.module("tune").phase == "bracket"
    client.set_params("opt", {"lr": 3e-3})
    t.run(200, until=lambda: any(e["params"].get("settle") for e in t.ledger("bracket")))
    settle = t.ledger("bracket")[-1]
    assert (
        settle["params"]["settle"]
        and "opt.lr set by a command" in settle["tune"]["bracket"]["reason"]
    )
    assert t.lr == 3e-3
    assert len(t.ledger("bracket")) == 2  # the first arm, the end: no other arm ran
    # the person's value is theirs: not a change `tune export` files as the tuner's
    assert export_kept(t.kernel.run_dir)[1] == []
    assert any("opt.lr set by a command" in w for w in client.tune_status()["warnings"])


def test_a_disable_during_the_bracket_puts_the_rounds_lr_back(toy: Any) -> None:
    t: Toy = toy(far_from_best, lr=16 * BEST, model=True, poll=0.0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, start="bracket",
                       space=LR_ONLY, sync=True)  # fmt: skip
    t.run(200, until=lambda: len(t.ledger("bracket")) == 3)  # the third arm: lr x4
    assert t.lr == pytest.approx(64 * BEST)
    client.tune_disable()
    t.run(20)
    assert t.lr == pytest.approx(16 * BEST)  # the round's lr; the arm's weights stay
    tune = t.kernel.module("tune")
    assert tune.mode == "off" and tune.bracket is None and tune._bracket_snaps == {}


def test_a_restart_from_a_checkpoint_inside_the_bracket_goes_back_to_the_rounds_lr(
    toy: Any, cli: Any
) -> None:
    t: Toy = toy(far_from_best, lr=16 * BEST, model=True, poll=0.0)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            seed=0, start="bracket", space=LR_ONLY, sync=True)  # fmt: skip
    t.run(200, until=lambda: len(t.ledger("bracket")) == 3)
    state = t.kernel.state_dict()
    t.kernel.close()
    again: Toy = toy(far_from_best, name="run", lr=64 * BEST, model=True, poll=0.0)
    again.step = t.step
    again.kernel.load_state_dict(state)
    again.run(5)
    settle = again.ledger("bracket")[-1]
    assert settle["params"]["settle"] and "restart" in settle["tune"]["bracket"]["reason"]
    assert again.lr == pytest.approx(16 * BEST)
    # `tune status` (and the Tune panel) still shows the bracket, and why it ended
    shown = HotClient(again.kernel.run_dir).tune_status()["bracket"]
    assert "restart" in shown["reason"] and shown["rounds"] == []
    assert shown["ended_at"] == settle["step"]  # where it ended: in this life, not at the arm
    # and the round it cut, with the arms it had judged
    out = cli(again.kernel.run_dir, "tune", "status").stdout
    assert re.search(r"round 1 from 0\.016, cut short: x1 [\d.]+ ±[\d.]+, x0\.25 [\d.]+ ±[\d.]+, x4 …",
                     out), out  # fmt: skip


def test_no_model_in_env_means_no_bracket_and_status_says_why(toy: Any) -> None:
    t: Toy = toy(far_from_best, lr=16 * BEST, poll=0.0)  # env without "model"
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, start="bracket",
                       space=LR_ONLY, sync=True)  # fmt: skip
    t.run(100, until=lambda: len(t.ledger("mutate")) >= 1)
    (first,) = t.ledger("bracket")  # the first arm found no model: the bracket ended there
    assert "needs the model in env" in first["tune"]["bracket"]["trouble"]
    assert any("needs the model in env" in w for w in client.tune_status()["warnings"])
    assert t.ledger("mutate")  # the tuner went on as without a bracket


def test_a_bracket_needs_an_lr_knob_in_mult_mode() -> None:
    space = [{"key": "weight_decay", "module": "opt", "mode": "mult", "low": 0.5, "high": 2}]
    with pytest.raises(RecipeError, match="bracket moves the lr"):
        parse_settings({"start": "bracket", "space": space})
    with pytest.raises(RecipeError, match="start"):
        parse_settings({"start": "sideways"})
    assert parse_settings({"start": "bracket"}).start == "bracket"  # the default space has lr


def test_under_an_lr_scheduler_the_arms_move_the_schedule(toy: Any) -> None:
    """With an ExponentialLR, each arm is a ratio of the lr in force when it lands (x0.25 of
    where the schedule has brought the first arm's lr, not of the lr the round began at), so
    the bracket never sets the schedule back."""
    t: Toy = toy(far_from_best, lr=16 * BEST, model=True, poll=0.0, decay=0.99)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            seed=0, start="bracket", space=LR_ONLY, sync=True)  # fmt: skip
    t.run(200, until=lambda: len(t.ledger("bracket")) >= 4)
    ops = t.ledger("bracket")
    moves = [e["changes"]["lr"]["new"] / e["changes"]["lr"]["old"] for e in ops[1:4]]
    # x0.25 after x1; x4 after x0.25 (x16); back to the winner x0.25 after x4 (x1/16)
    assert moves == [pytest.approx(0.25), pytest.approx(16.0), pytest.approx(1 / 16)], moves
    # the schedule went on decaying through the arms: the winner's lr is below where its arm began
    assert ops[3]["changes"]["lr"]["new"] < ops[1]["changes"]["lr"]["new"]
    # `tune status` says the lr each arm really began at, as the ledger does (it showed the
    # plan's values, from an lr the schedule had already moved: 80x off in a warm-up)
    (r1, *_) = HotClient(t.kernel.run_dir).tune_status()["bracket"]["rounds"]
    began = [a["at"] for a in r1["arms"]]
    assert began[1:] == [pytest.approx(e["changes"]["lr"]["new"]) for e in ops[1:3]], began
    assert r1["from"] == began[0] and r1["from"] < r1["base"], r1


def test_an_objective_that_is_not_logged_gives_way_to_the_training_loss_in_the_first_arm(
    toy: Any,
) -> None:
    """The default objective (val_loss) and a loop that logs only ``loss``: the first arm
    sees no value, so the training loss stands in from then and the bracket starts again, each
    arm scored (it had scored the first arm NaN, a loss, and moved the lr on no evidence)."""
    t: Toy = toy(far_from_best, lr=BEST, model=True, poll=0.0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", segment_steps=10, seed=0, start="bracket", space=LR_ONLY,
                       sync=True)  # fmt: skip
    t.run(400, until=lambda: any(e["params"].get("settle") for e in t.ledger("bracket")))
    ops = t.ledger("bracket")
    assert [e["tune"]["bracket"].get("factor") for e in ops] == [1.0, 1.0, 0.25, 4.0, None]
    # the restart says why in `hotcb log`, where it read as the same arm twice
    assert fmt_entry(ops[1], t.kernel.run_dir).endswith(
        "[bracket round 1, arm x1, 'val_loss' was not logged in the first arm: 'loss' stands "
        "in, and the bracket starts again]"
    ), fmt_entry(ops[1], t.kernel.run_dir)
    ends = t.ledger("arm")
    assert [e["tune"]["bracket"]["factor"] for e in ends] == [1.0, 0.25, 4.0]
    assert all(math.isfinite(e["tune"]["bracket"]["level"]) for e in ends)
    assert t.lr == BEST  # x1 won: the lr was right
    status = client.tune_status()
    assert status["objective_used"] == "loss"
    assert any("not logged in the bracket's first arm; scoring 'loss'" in w
               for w in status["warnings"])  # fmt: skip


def test_other_settings_for_a_tuner_that_is_on_do_not_start_another_bracket(toy: Any) -> None:
    t: Toy = toy(far_from_best, lr=BEST, model=True, poll=0.0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, start="bracket",
                       space=LR_ONLY, sync=True)  # fmt: skip
    t.run(400, until=lambda: any(e["params"].get("settle") for e in t.ledger("bracket")))
    count = len(t.ledger("bracket"))
    client.tune_enable(segment_steps=12)  # a new segment length, the tuner as it is otherwise
    t.run(100)
    assert len(t.ledger("bracket")) == count


@pytest.mark.parametrize("during", ["baseline", "trial"])
def test_switching_a_running_tuner_to_a_start_bracket_begins_one(toy: Any, during: str) -> None:
    """`tune enable --start bracket` on a tuner that started with baselines: a bracket, in a
    baseline segment at once, and in a trial once the trial's change is taken back (it began
    only in a baseline). The enable's ledger entry says what changed besides the mode."""
    t: Toy = toy(far_from_best, lr=BEST, model=True, poll=0.0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    tune = t.kernel.module("tune")
    t.run(1000, until=lambda: tune.phase == during and len(t.ledger("mutate")) >= 1)
    client.tune_enable("active", start="bracket")
    t.run(300, until=lambda: len(t.ledger("bracket")) >= 2)
    enable = t.ledger("enable")[-1]
    assert enable["changes"] == {"start": {"old": "baseline", "new": "bracket"}}
    first = t.ledger("bracket")[0]
    assert first["tune"]["bracket"] == {"round": 1, "arm": 0, "factor": 1.0}
    if during == "trial":  # the open trial was taken back before the bracket's first arm
        (back,) = [e for e in t.ledger("rollback") if e["step"] >= enable["step"]]
        assert "enabled again" in back["tune"]["reason"]
        assert back["step"] < first["step"]
    else:
        assert first["step"] == enable["step"] + 1


def test_a_bracket_in_suggest_mode_is_not_started_and_status_says_so(toy: Any) -> None:
    t: Toy = toy(far_from_best, lr=BEST, model=True, poll=0.0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("suggest", objective="loss", segment_steps=10, start="bracket",
                       space=LR_ONLY, sync=True)  # fmt: skip
    t.run(30)
    assert not t.ledger("bracket")
    assert (
        "start: bracket runs in active mode only: none in suggest mode"
        in client.tune_status()["warnings"]
    )
    # made active later (`tune enable --mode active`): the bracket it asked for begins then
    # (it never ran, and the warning that said so went away)
    client.tune_enable("active")
    t.run(30)
    first = t.ledger("bracket")[0]
    assert first["tune"]["bracket"] == {"round": 1, "arm": 0, "factor": 1.0}
    assert first["step"] == t.ledger("enable")[-1]["step"] + 1


@pytest.mark.parametrize("jitter", [0.0, 0.3])
def test_a_move_wins_its_arm_only_by_more_than_the_noise(toy: Any, cli: Any, jitter: float) -> None:
    """A lower lr is a little better (0.028 at x0.25). Without noise that moves the lr; with a
    loss that wanders by up to +-0.3 from step to step the gain is inside the arms' noise: a near
    tie goes to the lr in force, and the run goes on at it."""

    def slightly_lower(lr: float, step: int) -> float:
        return 2.0 + 0.02 * math.log(lr / BEST) + jitter * (step % 5 - 2) / 2

    t: Toy = toy(slightly_lower, lr=BEST, model=True, poll=0.0)
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            seed=0, start="bracket", space=LR_ONLY, sync=True)  # fmt: skip
    t.run(400, until=lambda: any(e["params"].get("settle") for e in t.ledger("bracket")))
    settle = t.ledger("bracket")[-1]
    round_1 = HotClient(t.kernel.run_dir).tune_status()["bracket"]["rounds"][0]
    levels = {a["factor"]: a["level"] for a in round_1["arms"]}
    assert levels[0.25] < levels[1.0] < levels[4.0]  # the lower lr ended lower, both times
    if jitter:
        assert round_1["winner"] == 1.0 and settle["changes"]["lr"]["new"] == BEST
        # `tune status` shows the noise that held the move back
        out = cli(t.kernel.run_dir, "tune", "status").stdout
        assert re.search(r"round 1 from 0\.001: x1 [\d.]+ ±[\d.]+, x0\.25 [\d.]+ ±", out), out
        # and `hotcb log`, at each arm's end
        ends = [fmt_entry(e, t.kernel.run_dir) for e in t.ledger("arm")]
        assert re.search(r"\(x0\.25\) ended at [\d.]+ ±[\d.]+\]$", ends[1]), ends
    else:
        assert round_1["winner"] == 0.25
        assert settle["changes"]["lr"]["new"] < BEST


def test_a_bracket_started_again_for_the_training_loss_goes_back_to_its_new_start(
    tmp_path: Any,
) -> None:
    """`val_loss` never logged in the first arm: the bracket starts again with `loss` standing
    in, from the weights of that step; a move that wins goes back to those, not to the
    enable's (the steps between were the first arm's, unscored)."""
    run_dir = str(tmp_path / "run")
    kernel, _opt, _before, after, _moments = _train(run_dir, 200)
    kernel.close()
    ops = [e for e in read_ledger(run_dir) if e.get("module") == "tune" and e["op"] == "bracket"]
    (again,) = [e for e in ops if "starts again" in e["tune"]["bracket"].get("reason", "")]
    settle = ops[-1]
    assert settle["params"]["settle"] and settle["params"]["from"] == "first"
    assert _same(after[settle["step"]], after[again["step"]])
    assert not _same(after[again["step"]], after[again["step"] - 5])  # (they do differ)


def test_a_run_too_short_for_its_bracket_begins_none_or_ends_it_at_its_end(
    tmp_path: Any, cli: Any
) -> None:
    """A loop that gives its length (`max_steps` in env): a bracket that cannot fit is not
    begun, as the docs say (the check saw no length at an enable). One that does not give it:
    the run's end closes the bracket, said in the ledger and `tune status`, its copies freed
    (it stayed "under way" for good)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    for name, env in (("known", {"max_steps": 60}), ("unknown", {})):
        run_dir = str(tmp_path / name)
        opt = torch.optim.AdamW(model.parameters(), lr=16 * BEST)
        kernel = HotKernel(run_dir, poll_interval_sec=0.0)
        HotClient(run_dir).tune_enable("active", objective="loss", segment_steps=10, seed=0,
                                       start="bracket", space=LR_ONLY, sync=True)  # fmt: skip
        for step in range(1, 60):
            lr = opt.param_groups[0]["lr"]
            kernel.apply({"step": step, "model": model, "optimizer": opt, **env,
                          "metrics": {"loss": far_from_best(lr, step)}})  # fmt: skip
        tune = kernel.module("tune")
        kernel.close()
        status = HotClient(run_dir).tune_status()
        if env:
            assert not [e for e in read_ledger(run_dir) if e["op"] == "bracket"]
            assert any("bracket needs up to 9 segments" in w for w in status["warnings"])
            continue
        assert tune._bracket_snaps == {} and tune.bracket is None
        assert status["bracket"]["reason"] == "the run ended during the bracket"
        end = [e for e in read_ledger(run_dir) if e["op"] == "bracket"][-1]
        assert end["decision"] == "noop"
        assert "the run ended during the bracket" in fmt_entry(end, run_dir)
        assert "round 2 under way" not in cli(run_dir, "tune", "status").stdout


def test_an_enable_that_begins_no_bracket_keeps_no_copy(tmp_path: Any) -> None:
    """Other settings for a tuner whose bracket is over: no bracket begins, and every rank
    kept a copy of the model and its optimizer state for the rest of the run (only the leader
    ever dropped it)."""
    run_dir = str(tmp_path / "run")
    kernel, opt, *_ = _train(run_dir, 160, objective="loss")
    tune = kernel.module("tune")
    assert tune.bracket is None and tune._bracket_snaps == {}
    HotClient(run_dir).tune_enable(segment_steps=12)
    model = torch.nn.Linear(4, 1)
    kernel.apply({"step": 160, "model": model, "optimizer": opt, "metrics": {"loss": 1.0}})
    assert tune._bracket_snaps == {}
    kernel.close()
