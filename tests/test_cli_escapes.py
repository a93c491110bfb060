"""Terminal escape codes in a run's files never reach the terminal of whoever reads the run
with ``hotcb`` (real subprocesses on a real run directory, written by a real kernel and by
hand, as someone who can write the run's files would). ``hotcb log`` and ``hotcb status``
printed a command's ``source`` and ``reason``, ids, errors and metric names raw: a line in
the commands file could clear the screen, print a fake line, set the window title or fill
the clipboard (OSC 52) of the person reading the ledger."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pytest
import torch

from hotcb import HotKernel
from hotcb.autopilot.engine import RECORDS, STATE
from hotcb.cli._common import term_safe
from hotcb.runfiles import RunPaths

#: Set the title, clear the screen, a fake green line, fill the clipboard (OSC 52), a CSI in
#: its C1 form, DEL, and a carriage return that would print over the line.
EVIL = (
    "\x1b]0;pwned\x07\x1b[2J\x1b[1;32mAll good: run healthy\x1b[0m"
    "\x1b]52;c;ZWNobyBwd25lZA==\x07\x9b31m\x7f\rFAKE"
)
#: What a terminal would act on: none of it may reach stdout or stderr.
RAW = ("\x1b", "\x07", "\x9b", "\x7f", "\r")
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J"  # EVIL as the CLI writes it: escaped, as repr does


def _append(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:  # json.dumps escapes them; the file's reader gives them back
        f.write(json.dumps(record) + "\n")


def _clean(text: str) -> None:
    for ch in RAW:
        assert ch not in text, f"{ch!r} reached the terminal: {text!r}"


@pytest.fixture
def hostile_run(run_dir: str) -> str:
    """A bare loop's run whose commands file, ledger and metrics hold escape codes: one
    command applied (its source and reason), one rejected (its error names the key), a metric
    named with them, and a ledger line and a metrics line written by hand."""
    paths = RunPaths(run_dir)
    os.makedirs(run_dir)
    _append(paths.commands, {"cmd_id": "C1", "module": "opt", "op": "set_params",
                             "params": {"lr": 0.05}, "source": EVIL, "reason": EVIL})  # fmt: skip
    _append(paths.commands, {"cmd_id": "C2", "module": "opt", "op": "set_params",
                             "params": {"nope" + EVIL: 1.0}, "source": "cli"})  # fmt: skip
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=0.1)
    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    try:
        for step in range(3):
            loss = ((w - 1) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            kernel.apply({"step": step, "optimizer": opt,
                          "metrics": {"loss" + EVIL: loss.item(), "val_loss": loss.item()}})  # fmt: skip
    finally:
        kernel.close()
    _append(paths.ledger, {"v": 1, "seq": 99, "step": 3, "event": "train_step_end",
                           "wall_time": 0.0, "cmd_id": "H" + EVIL, "source": EVIL,
                           "module": "cb", "op": "enable", "id": "cb" + EVIL,
                           "decision": "failed", "error": "RuntimeError: " + EVIL})  # fmt: skip
    _append(paths.metrics, {"step": 4, "wall_time": 0.0, "metrics": {"acc" + EVIL: "x" + EVIL}})
    return run_dir


def test_log_shows_escape_codes_escaped(hostile_run: str, cli: Any) -> None:
    done = cli(hostile_run, "log")
    assert done.returncode == 0, done.stderr
    _clean(done.stdout + done.stderr)
    lines = done.stdout.splitlines()
    applied = next(ln for ln in lines if "applied (lr: 0.1 -> 0.05)" in ln)
    assert applied.startswith(f"#1 step 0 [{SHOWN}") and f"(why: {SHOWN}" in applied
    rejected = next(ln for ln in lines if "-> rejected" in ln)
    assert '"nope\\u001b]0;pwned' in rejected, rejected  # its params, as JSON
    by_hand = next(ln for ln in lines if ln.startswith("#99 "))
    assert f"[{SHOWN}" in by_hand and f"cb enable cb{SHOWN}" in by_hand
    assert f": RuntimeError: {SHOWN}" in by_hand and "\\r" + "FAKE" in by_hand
    as_json = cli(hostile_run, "log", "--json")  # exact: JSON escapes them itself
    assert as_json.returncode == 0, as_json.stderr
    _clean(as_json.stdout)
    entries = [json.loads(ln) for ln in as_json.stdout.splitlines()]
    assert entries[0]["source"] == EVIL and entries[0]["reason"] == EVIL
    assert entries[-1]["error"] == "RuntimeError: " + EVIL


def test_status_shows_escape_codes_escaped(hostile_run: str, cli: Any) -> None:
    with open(os.path.join(hostile_run, STATE), "w") as f:  # an autopilot's line in status
        json.dump({"mode": "suggest" + EVIL, "key_metric": "loss" + EVIL, "step": 3}, f)
    done = cli(hostile_run, "status", "-n", "20")
    assert done.returncode == 0, done.stderr
    _clean(done.stdout + done.stderr)
    assert "metrics  step 4 " in done.stdout and f"acc{SHOWN}" in done.stdout  # by hand
    assert f"autopilot suggest{SHOWN}" in done.stdout
    assert f"  #1 step 0 [{SHOWN}" in done.stdout
    as_json = cli(hostile_run, "status", "--json").stdout
    _clean(as_json)  # JSON escapes them itself: exact, and safe
    assert json.loads(as_json)["last_metrics"]["metrics"] == {"acc" + EVIL: "x" + EVIL}


def test_status_shows_a_bare_loops_metric_names_escaped(run_dir: str, cli: Any) -> None:
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=0.1)
    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    try:
        for step in range(2):
            kernel.apply({"step": step, "optimizer": opt, "metrics": {"loss" + EVIL: 1.0}})
    finally:
        kernel.close()
    done = cli(run_dir, "status")
    assert done.returncode == 0, done.stderr
    _clean(done.stdout)
    assert "metrics  step 1 " in done.stdout and f"loss{SHOWN}" in done.stdout


def test_autopilot_status_and_proposals_show_records_escaped(run_dir: str, cli: Any) -> None:
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, STATE), "w") as f:
        json.dump({"mode": "suggest", "key_metric": "loss" + EVIL, "direction": "minimize",
                   "step": 7, "logged": ["acc" + EVIL]}, f)  # fmt: skip
    _append(os.path.join(run_dir, RECORDS), {"kind": "detection", "step": 7,
                                             "rule": "r" + EVIL, "describe": EVIL})  # fmt: skip
    _append(os.path.join(run_dir, RECORDS), {"kind": "proposal", "step": 7, "id": "A1",
                                             "rule": "r", "state": "pending",
                                             "describe": "cut" + EVIL})  # fmt: skip
    for argv in (("autopilot", "status"), ("autopilot", "proposals", "--all")):
        done = cli(run_dir, *argv)
        assert done.returncode == 0, done.stderr
        _clean(done.stdout + done.stderr)
        assert SHOWN in done.stdout, (argv, done.stdout)


def test_a_recipe_patch_template_shows_escape_codes_escaped(run_dir: str, cli: Any) -> None:
    """A recipe (shared, or exported from a run) whose entry names a callback with escape
    codes: the template printed to the terminal shows them escaped."""
    os.makedirs(run_dir)
    recipe = os.path.join(run_dir, "evil.recipe.jsonl")
    with open(recipe, "w") as f:
        f.write(json.dumps({"v": 1, "kind": "hotcb.recipe", "run": {}, "exported_at": 1.0}))
        f.write("\n" + json.dumps({"v": 1, "at": {"step": 3, "event": "train_step_end"},
                                   "module": "cb", "op": "enable", "id": "cb" + EVIL}) + "\n")  # fmt: skip
    done = cli(run_dir, "recipe", "patch-template", "--recipe", recipe)
    assert done.returncode == 0, done.stderr
    _clean(done.stdout + done.stderr)
    assert f"# line 2: step 3 (train_step_end): cb enable cb{SHOWN}" in done.stdout


def test_notify_prints_an_alert_on_a_metric_named_with_escape_codes_escaped(
    run_dir: str, cli: Any, tmp_path: Any
) -> None:
    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    try:
        for step in range(3):
            kernel.apply({"step": step, "metrics": {"loss" + EVIL: 1.0 if step < 2 else math.nan}})
    finally:
        kernel.close()
    config = (
        tmp_path / "notify.yaml"
    )  # a delivery that fails at once: the alert line is what counts
    config.write_text("alerts:\n  - {id: nan, kind: nonfinite}\ndeliveries:\n"
                      '  - {type: webhook, url: "http://127.0.0.1:9/hook"}\nretries: 0\n')  # fmt: skip
    done = cli(run_dir, "notify", "--notify", str(config), "--once")
    assert done.returncode == 1, done.stderr  # the delivery failed: --once says so
    _clean(done.stdout + done.stderr)
    assert f"[step 2] alert nan: non-finite loss{SHOWN}" in done.stdout, done.stdout


def test_term_safe_escapes_controls_and_keeps_text() -> None:
    assert term_safe("a\x00b\x1bc\td\ne\x7ff\x85g\x9fh") == (
        "a\\x00b\\x1bc\\td\\ne\\x7ff\\x85g\\x9fh"
    )
    ordinary = "lr: 0.1 → 0.05 ±2e-3 … über 学习率 \u00a0 ✓"
    assert term_safe(ordinary) == ordinary
    # a right-to-left override in a metric name reordered the rest of the status line
    assert term_safe("acc\u202egnp.exe\u2066x\u200f") == "acc\\u202egnp.exe\\u2066x\\u200f"
    assert term_safe("损失 שלום") == "损失 שלום"  # right-to-left text itself is text
    assert term_safe(term_safe(EVIL)) == term_safe(EVIL)  # once is enough, twice is the same


def test_a_list_of_strings_keeps_its_quotes() -> None:
    """FeatureCapture's patterns ["0", "2"] read in `hotcb log` as the numbers [0, 2]."""
    from hotcb.cli._common import fmt_value

    assert fmt_value(["0", "2"]) == '["0", "2"]'
    assert fmt_value([0.9, 0.999]) == "[0.9, 0.999]" and fmt_value("adamw") == "adamw"
    assert fmt_value(["a\x1b[31m"]) == '["a\\u001b[31m"]'  # (json escapes the control)


def test_cb_list_shows_escape_codes_escaped(run_dir: str, cli: Any) -> None:
    """`cb list` printed a callback's id, target and errors from the ledger raw."""
    paths = RunPaths(run_dir)
    os.makedirs(run_dir)
    _append(paths.ledger, {"v": 1, "seq": 1, "step": 0, "event": "train_step_end",
                           "wall_time": 0.0, "cmd_id": "L1", "source": "cli", "module": "cb",
                           "op": "load", "id": "cb" + EVIL, "decision": "applied",
                           "target": {"kind": "python_file", "path": "x.py" + EVIL,
                                      "symbol": "S"}})  # fmt: skip
    _append(paths.ledger, {"v": 1, "seq": 2, "step": 1, "event": "train_step_end",
                           "wall_time": 0.0, "module": "cb", "op": "warning",
                           "id": "cb" + EVIL, "decision": "noop", "error": EVIL})  # fmt: skip
    done = cli(run_dir, "cb", "list")
    assert done.returncode == 0, done.stderr
    _clean(done.stdout + done.stderr)
    assert f"warning: {SHOWN}" in done.stdout, done.stdout


def test_tune_status_and_proposals_show_the_state_files_text_escaped(
    run_dir: str, cli: Any
) -> None:
    """`tune status` printed the tuner's state file (warnings, study, proposal ids) raw."""
    paths = RunPaths(run_dir)
    os.makedirs(run_dir)
    with open(paths.tune, "w") as f:
        json.dump({"mode": "suggest", "objective": "loss", "phase": "baseline",
                   "study": "s" + EVIL, "storage": "sqlite:///x.db", "warnings": [EVIL],
                   "counts": {"segments": 1}, "trials": [],
                   "proposals": [{"id": "P1" + EVIL, "step": 3, "trial": 0,
                                  "state": "pending", "changes": {}}]}, f)  # fmt: skip
    for args in (("tune", "status"), ("tune", "proposals")):
        done = cli(run_dir, *args)
        assert done.returncode == 0, done.stderr
        _clean(done.stdout + done.stderr)
        assert SHOWN in done.stdout, done.stdout
