"""The tuner's pure parts: recipe checking (every problem, with its line) and segment scores."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hotcb.modules.tune import DEFAULT_SPACE, RecipeError, load_recipe, parse_settings
from hotcb.modules.tune._score import Segment, expected_level, level, score_segment

BROKEN = """\
objective: val_loss
direction: sideways
segment_steps: 0
space:
  - key: lr
    mode: mul
    low: 0.25
    high: 4
  - key: l2
    module: loss
    low: 2
    high: 1
  - module: opt
    low: -1
    high: 1
    log: true
  - key: weight_decay
    low: 0.5
    high: 2
    prior: 3
    min: 0.1
    max: 0.01
colour: blue
"""


def test_a_broken_recipe_lists_every_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "hotcb.tune.yaml"
    path.write_text(BROKEN)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    problems = info.value.problems
    expected = [
        "line 2: direction: 'sideways' is not one of minimize, maximize",
        "line 3: segment_steps: must be >= 1, got 0",
        "line 6: space[0].mode: 'mul' is not one of mult, set, delta",
        "line 12: space[1].high: must be greater than low (2), got 1",
        "line 13: space[2].key: missing: the actuator's name, e.g. lr",
        "line 14: space[2].low: a log-scale range must be positive, got -1",
        "line 20: space[3].prior: must lie in [low, high] = [0.5, 2], got 3",
        "line 22: space[3].max: must be at least min (0.1), got 0.01",
        "line 23: colour: unknown setting",
    ]
    for want in expected:
        assert any(p.startswith(want) for p in problems), (want, problems)
    assert len(problems) == len(expected)
    assert str(path) in str(info.value)


def test_a_recipe_cannot_choose_the_mode_or_name_another_recipe(tmp_path: Path) -> None:
    """``recipe: other.yaml`` in a recipe was accepted and never read, and the list of the
    settings a file may hold offered ``mode`` and ``recipe``, which it refuses."""
    path = tmp_path / "hotcb.tune.yaml"
    path.write_text("recipe: other.yaml\nsegment_steps: 30\nmode: active\ncolour: red\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    first, second, third = info.value.problems
    assert first.startswith("line 1: recipe: a recipe cannot name another recipe")
    assert second.startswith("line 3: mode: the mode is chosen by 'tune enable --mode'")
    assert third.startswith("line 4: colour: unknown setting; expected one of abort, ")
    assert "mode" not in third.split(", ") and " recipe," not in third


def test_a_recipe_that_does_not_parse_says_where(tmp_path: Path) -> None:
    path = tmp_path / "hotcb.tune.yaml"
    path.write_text("space:\n  - key: lr\n   low: [1\n")
    with pytest.raises(RecipeError, match=r"line \d+: not valid YAML"):
        load_recipe(path)


def test_a_good_recipe_overrides_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "hotcb.tune.yaml"
    path.write_text(
        "objective: val_acc\ndirection: maximize\nsegment_evals: 2\n"
        "space:\n  - {key: ce, module: loss, mode: set, low: 0.5, high: 2, log: false}\n"
    )
    settings = parse_settings({"mode": "suggest"}, load_recipe(path))
    assert (settings.mode, settings.objective, settings.direction) == (
        "suggest",
        "val_acc",
        "maximize",
    )
    assert settings.segment_evals == 2
    (knob,) = settings.space
    assert (knob.name, knob.mode, knob.log) == ("loss.ce", "set", False)
    assert parse_settings({}).space == DEFAULT_SPACE  # lr x[0.25, 4], weight decay x[0.5, 2]
    assert [k.name for k in DEFAULT_SPACE] == ["opt.lr", "opt.weight_decay"]


def test_risk_narrows_or_frees_a_knob() -> None:
    lr = DEFAULT_SPACE[0]
    low = lr.scaled("low")
    assert low.low == pytest.approx(0.5) and low.high == pytest.approx(2.0)
    assert lr.scaled("medium") == lr
    assert lr.target(1e-3, 4.0) == pytest.approx(4e-3)
    assert lr.target(5.0, 4.0) == 10.0  # clamped to the knob's max


def test_level_is_robust_and_nan_aware() -> None:
    assert level([10, 9, 1, 2, 3]) == 2  # the median of the last half
    assert math.isnan(level([1.0, math.nan]))
    assert math.isnan(level([]))


def test_the_expectation_follows_the_power_law_trend() -> None:
    history = [(100.0, 1.0), (200.0, 0.8)]
    # a power law through both points, extrapolated to step 300
    want = 0.8 * (300 / 200) ** (math.log(0.8) / math.log(2))
    assert expected_level(history, 300.0, 1.0) == pytest.approx(want)
    assert expected_level(history[:1], 300.0, 1.0) == 1.0
    # bounded: a steep fall is not extrapolated beyond half the last level
    assert expected_level([(1.0, 100.0), (2.0, 1.0)], 1000.0, 1.0) == 0.5


def test_a_segment_is_scored_against_the_trend() -> None:
    history = [(100.0, 1.0), (200.0, 0.8)]
    expected = expected_level(history, 300.0, 1.0)
    better = Segment(291, list(range(291, 310)), [expected * 0.9] * 19)
    score, detail = score_segment(better, history, "minimize")
    assert score == pytest.approx(0.1) and detail["expected"] == pytest.approx(expected)
    worse = Segment(291, list(range(291, 310)), [expected * 1.2] * 19)
    assert score_segment(worse, history, "minimize")[0] == pytest.approx(-0.2)
    assert score_segment(better, history, "maximize")[0] < 0  # the same values, other way
    nan = Segment(291, [291, 292], [0.5, math.nan])
    assert score_segment(nan, history, "minimize")[0] == -1.0
    # -1 is the worst score: a level 2.5x off the trend scores no lower than a NaN
    awful = Segment(291, list(range(291, 310)), [expected * 3.5] * 19)
    score, detail = score_segment(awful, history, "minimize")
    assert score == -1.0 and detail["raw"] == pytest.approx(-2.5)
    spiky = Segment(291, list(range(291, 299)), [expected * 0.9] * 7 + [expected * 10])
    assert "spike" in score_segment(spiky, history, "minimize")[1]


def test_a_maximized_objective_is_penalised_for_a_fall_not_for_its_level() -> None:
    """An accuracy 1 % above a flat trend scores about +0.01, with no spike (every value of
    0.9 used to count as one: below 3x the expectation, so no trial could be kept); a fall to
    under a third of the expectation is one."""
    history = [(100.0, 0.90), (150.0, 0.90)]
    better = Segment(200, [225, 250, 275, 300], [0.90, 0.91, 0.91, 0.91])
    score, detail = score_segment(better, history, "maximize")
    assert score == pytest.approx(0.0111, abs=1e-3) and "spike" not in detail, detail
    collapse = Segment(200, [225, 250, 275, 300], [0.90, 0.25, 0.91, 0.91])
    score, detail = score_segment(collapse, history, "maximize")
    assert detail["spike"] == 0.25 and score == pytest.approx(0.0111 - 0.25, abs=1e-3)


def test_noise_is_the_standard_error_of_the_level() -> None:
    from hotcb.modules.tune._score import noise

    assert noise([1.0] * 10, 1.0) == 0.0
    wobbly = [1.0, 1.2, 0.8, 1.2, 0.8, 1.2, 0.8, 1.2]
    assert noise(wobbly, 1.0) == pytest.approx(0.2 * 1.4826 / 2)
    assert noise([5.0], 5.0) == 0.0
    # a last half of one value: the whole segment's spread (two evaluations to a segment)
    assert noise([1.0, 1.2], 1.1) == pytest.approx(0.1 * 1.4826 / 1.1 / math.sqrt(2))


def test_storage_passwords_are_redacted() -> None:
    from hotcb.modules.tune._study import redact

    assert redact("postgresql://hotcb:s3cret@db:5432/hpo") == "postgresql://hotcb:***@db:5432/hpo"
    assert redact("mysql://u:p@ss/w@rd@host/db") == "mysql://u:***@host/db"  # '@' and '/' in it
    assert redact("sqlite:////runs/a/hotcb.tune.db") == "sqlite:////runs/a/hotcb.tune.db"
    assert redact(None) is None


def test_a_trial_is_told_once_when_a_resumed_life_judges_it_again(tmp_path: Path) -> None:
    """A run resumed from a checkpoint taken inside a trial its earlier life already judged
    judges it again: the study keeps the first answer, and the second is no error."""
    pytest.importorskip("optuna")
    from hotcb.modules.tune._study import Study

    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = Study(url, "s", "runA", seed=0, startup_trials=1)
    number, _ = first.ask(list(DEFAULT_SPACE), prior_first=False)
    assert first.tell(number, 0.25, {"life": 1}) is True
    again = Study(url, "s", "runA", seed=0, startup_trials=1)  # the resumed process
    assert again.tell(number, -0.5, {"life": 2}) is False
    assert again.tell(number, None) is False
    (trial,) = again.study.get_trials()
    assert (trial.state.name, trial.value, trial.user_attrs["hotcb"]) == ("COMPLETE", 0.25,
                                                                          {"life": 1})  # fmt: skip


def test_a_seeded_sampler_goes_on_after_the_studys_trials_instead_of_drawing_them_again(
    tmp_path: Path,
) -> None:
    """``tune enable --seed 3``, resumed in its start-up trials: the new process's sampler drew
    the first life's points again (lr x1.1512 and weight decay 0.013345, scored and rolled back
    at step 42, proposed again at step 126). A fresh study with that seed still draws the same
    points: a seed stays reproducible."""
    pytest.importorskip("optuna")
    from hotcb.modules.tune._study import Study

    knobs = list(DEFAULT_SPACE)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = Study(url, "s", "runA", seed=3, startup_trials=5)
    drawn = []
    for score in (0.1, -0.2):
        number, params = first.ask(knobs, prior_first=False)
        first.tell(number, score)
        drawn.append(params)
    resumed = Study(url, "s", "runA", seed=3, startup_trials=5)  # the resumed process
    _, params = resumed.ask(knobs, prior_first=False)
    assert params not in drawn, params
    again = Study(f"sqlite:///{tmp_path / 'other.db'}", "s", "runB", seed=3, startup_trials=5)
    assert again.ask(knobs, prior_first=False)[1] == drawn[0]


def test_runs_started_together_on_a_shared_study_with_one_seed_draw_their_own_points(
    tmp_path: Path,
) -> None:
    """A sweep's runs, each with ``--study sweep --seed 1``, opened the new study at the same
    moment (none held a trial yet): each drew the same start-up points, three of five trials
    of each run wasted. The run's name is mixed into a shared study's seed; a run that opens
    it again (a restart) draws as it did."""
    pytest.importorskip("optuna")
    from hotcb.modules.tune._study import Study

    knobs = list(DEFAULT_SPACE)
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    a = Study(url, "sweep", "/runs/a", seed=1, startup_trials=5, shared=True)
    b = Study(url, "sweep", "/runs/b", seed=1, startup_trials=5, shared=True)
    drawn_a, drawn_b = a.ask(knobs, prior_first=False)[1], b.ask(knobs, prior_first=False)[1]
    assert drawn_a != drawn_b, (drawn_a, drawn_b)
    alone = Study(f"sqlite:///{tmp_path / 'other.db'}", "sweep", "/runs/a", seed=1,
                  startup_trials=5, shared=True)  # fmt: skip
    assert alone.ask(knobs, prior_first=False)[1] == drawn_a  # still reproducible


def test_the_blow_up_line_is_above_every_step_before_and_ignores_a_nan_step() -> None:
    from hotcb.modules.tune._module import _blow_up_line

    calm = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95]
    assert _blow_up_line(calm, 1.0) == 2.0  # twice the median
    spiky = [0.08, 0.09, 0.3, 0.07, 0.085, 0.08]
    assert _blow_up_line(spiky, 1.0) == 0.3  # the highest step before: batch noise, not harm
    assert _blow_up_line([*calm, math.nan], 1.0) == 2.0
    assert _blow_up_line([math.nan, math.inf, 1.0, 1.0], 1.0) is None  # too little to judge


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///study.db",
        "sqlite:////abs/study.db",
        "postgresql+psycopg2://u@h/db",
        "mysql+pymysql://u@h/db",
        "journal:s.log",
        "runs/s.journal",
    ],
)
def test_a_storage_url_of_any_kind_optuna_takes_passes_the_check(url: str) -> None:
    assert parse_settings({"storage": url}).storage == url


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("shared.db", "write sqlite:///shared.db"),
        ("postgres://ann:s3cret@db/tune", "write postgresql://ann:***@db/tune"),
        ("journal:", "journal:PATH"),
        ("sqlite://", "write sqlite:///PATH for a file"),
        ("sqlite:///:memory:", "in the training process's memory"),
        ("foo://bar", "Optuna cannot keep a study in foo://"),
        ("redis://:s3cret@cache:6379/0", "Optuna cannot keep a study in redis://"),
    ],
)
def test_a_storage_that_cannot_be_one_is_refused_with_the_fix(url: str, said: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_settings({"storage": url})
    assert said in str(info.value) and "s3cret" not in str(info.value)


def test_a_key_given_twice_and_both_segments_are_refused(tmp_path: Path) -> None:
    """YAML keeps the last of two `space:` lists: the first one's problems went unseen. And a
    file with both segment_steps and segment_evals (the flags are exclusive) passed."""
    path = tmp_path / "hotcb.tune.yaml"
    path.write_text("space:\n  - {key: lr, modul: opt}\nobjective: loss\nspace: []\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.problems == [
        "line 4: 'space' is given twice (first at line 1); a YAML file keeps only the last"
    ]
    path.write_text("segment_steps: 20\nsegment_evals: 2\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.problems == ["line 2: segment_evals: give segment_steps or segment_evals, "
                                   "not both"]  # fmt: skip
