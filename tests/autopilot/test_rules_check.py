"""``hotcb autopilot rules --check F`` and ``hotcb launch --rules F`` as a user runs them: a rules
file of the wrong shape is refused with every problem and its line (exit 2), never a traceback,
and a value that would leave a detector silent for good is refused up front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hotcb.autopilot.detectors import CHOICES, PARAMS
from hotcb.autopilot.rules import load_rules

#: Each problem the probe found, in one file (the line numbers below are this file's).
BROKEN = """\
guard: [1]
rules:
  - id: params_a_list
    when: {detector: plateau, metric: key, params: [1, 2]}
    then: {action: lr_mult, params: {factor: 0.5}}
  - id: then_params_a_string
    when: {detector: nonfinite, metric: train}
    then: {action: lr_mult, params: "factor=0.5"}
  - id: misspelt_direction
    when: {detector: plateau, metric: val_acc, params: {direction: maxmize}}
    then: {action: lr_mult, params: {factor: 0.5}}
  - id: metric_a_list
    when: {detector: divergence, metric: [loss], params: {direction: 1}}
    then: {action: lr_mult, params: {factor: 0.5}}
"""

BROKEN_PROBLEMS = [
    "line 1: guard: expected a mapping {window, tolerance}, got [1]",
    "line 4: rules[0].when.params: expected a mapping {name: value}, got [1, 2]",
    "line 8: rules[1].then.params: expected a mapping {name: value} (e.g. {factor: 0.5}), got "
    "'factor=0.5'",
    "line 10: rules[2].when.params.direction: 'maxmize' is not one of minimize, maximize",
    "line 13: rules[3].when.metric: expected a non-empty string, got ['loss']",
    "line 13: rules[3].when.params.direction: 1 is not one of minimize, maximize",
]

UNKNOWN_KEYS = """\
guard: {window: 5, foo: 1}
rules:
  - id: typos
    when: {detector: plateau, metrc: train, params: {window: 3}}
    then: {action: checkpoint, parms: {}}
"""

UNKNOWN_KEYS_PROBLEMS = [
    "line 1: guard.foo: unknown key; expected one of tolerance, window",
    "line 4: rules[0].when.metrc: unknown key; expected one of detector, metric, params",
    "line 4: rules[0].when.params: plateau needs window > smooth, got window=3, smooth=3: it "
    "would never fire",
    "line 5: rules[0].then.parms: unknown key; expected one of action, params",
]


def _problems(stderr: str, path: Path, count: int) -> list[str]:
    """The problems of the CLI's one error message (``hotcb: error: F has N problem(s):``)."""
    head, *rest = stderr.rstrip("\n").split("\n")
    assert head == f"hotcb: error: {path} has {count} problem(s):", stderr
    return [line.removeprefix("  ") for line in rest]


@pytest.mark.parametrize(
    ("text", "want"), [(BROKEN, BROKEN_PROBLEMS), (UNKNOWN_KEYS, UNKNOWN_KEYS_PROBLEMS)],
    ids=["wrong-shapes-and-choices", "unknown-keys"],
)  # fmt: skip
def test_rules_check_lists_every_problem_with_its_line(
    tmp_path: Path, cli: Any, text: str, want: list[str]
) -> None:
    """``params: [1, 2]`` and ``guard: [1]`` crashed with a traceback (rc 1); ``params:
    "factor=0.5"`` said "dictionary update sequence element #0 …" with no file, line or
    field; ``direction: maxmize``, ``metric: [loss]``, unknown guard/when/then keys and a
    plateau whose window is not above its smoothing passed, and their rules never fired."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    done = cli(None, "autopilot", "rules", "--check", str(rules))
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and not done.stdout, done.stderr
    assert _problems(done.stderr, rules, len(want)) == want


def test_json_rules_duplicate_ids_and_yaml_text_numbers_are_said_plainly(
    tmp_path: Path, cli: Any
) -> None:
    """A ``.json`` rules file listed its problems without lines; an id used twice was missed
    when the second rule had another problem; ``eps: 1e-3`` (text to PyYAML) was refused as
    "got '1e-3'" with no hint why."""
    rules = tmp_path / "rules.json"
    rules.write_text('{\n  "rules": [\n    {"id": "a",\n'
                     '     "when": {"detector": "plateau", "metric": "key"},\n'
                     '     "then": {"action": "lr_mult", "params": {"factor": 9}}}\n  ]\n}\n')  # fmt: skip
    done = cli(None, "autopilot", "rules", "--check", str(rules))
    assert _problems(done.stderr, rules, 1) == [
        "line 5: rules[0].then: lr_mult factor=9 is outside its bounds [0.1, 2]"
    ]
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - id: c\n    when: {detector: plateau, metric: key, params: {eps: 1e-3}}\n"
        "    then: {action: checkpoint}\n"
        "  - id: c\n    when: {detector: plateau, metric: key}\n"
        "    then: {action: lr_mult, params: {factor: 9}}\n"
    )
    done = cli(None, "autopilot", "rules", "--check", str(rules))
    problems = _problems(done.stderr, rules, 3)
    assert problems[0].startswith("line 3: rules[0].when.params.eps: must be float in ")
    assert problems[0].endswith(", got '1e-3' (YAML reads 1e-3 as text: write 1.0e-3)")
    assert problems[1:] == ["line 7: rules[1].then: lr_mult factor=9 is outside its bounds "
                            "[0.1, 2]", "line 5: rules[1].id: 'c' is used twice"]  # fmt: skip


def test_launch_refuses_the_same_rules_file_before_the_training_starts(
    tmp_path: Path, cli: Any
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(BROKEN)
    marker = tmp_path / "trained"
    train = f"open({str(marker)!r}, 'w').close()"
    done = cli(str(tmp_path / "run"), "launch", "--autopilot", "auto", "--rules", str(rules),
               "--", "python", "-c", train)  # fmt: skip
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert _problems(done.stderr, rules, len(BROKEN_PROBLEMS)) == BROKEN_PROBLEMS
    assert not marker.exists()


def test_every_choice_of_a_detector_param_is_accepted(tmp_path: Path) -> None:
    """The choices table covers every ``str`` param, and each of its values passes."""
    for detector, params in PARAMS.items():
        for key, (kind, _lo, _hi) in params.items():
            if kind is not str:
                continue
            for value in CHOICES[key]:
                rules = tmp_path / f"{detector}-{key}-{value}.yaml"
                rules.write_text(
                    f"rules:\n  - id: r\n    when: {{detector: {detector}, params: "
                    f"{{{key}: {value}}}}}\n    then: {{action: checkpoint}}\n"
                )
                (rule,) = load_rules(rules).rules
                assert rule.params == {key: value}


@pytest.mark.parametrize(
    ("given", "hint"),
    [("1e-3", "write 1.0e-3"), ("1.0e9", "write 1.0e+9"), ("5E4", "write 5.0e+4")],
)
def test_the_yaml_number_hint_gives_the_value_as_yaml_reads_it(given: str, hint: str) -> None:
    """``1.0e9`` has its dot: the hint said "write 1.0e-3", which did not apply (YAML wants
    the exponent's sign too). The fix given is the value itself, written so, and it parses."""
    import yaml

    from hotcb._checks import as_text_hint

    said = as_text_hint(given)
    assert said == f" (YAML reads {given} as text: {hint})"
    assert isinstance(yaml.safe_load(hint.removeprefix("write ")), float)
    assert as_text_hint("abc") == as_text_hint(1e-3) == as_text_hint("12") == ""
