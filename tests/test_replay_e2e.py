"""A live-steered run, exported as a recipe, replayed by a second run that nobody steers.

Run A (a real trainer process, fixed seed, CPU) is steered from this test process: an lr change,
a ramped lr change, a loss weight change, a callback loaded from a file that is then edited and
reloaded. Run B replays A's recipe: same applied sequence, same callback versions at the same
steps, bit-identical final weights. Run C replays it through an overlay that drops one entry and
shifts another, and follows the adjusted plan.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hotcb import HotClient
from hotcb.testing import read_ledger, wait_for

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

CALLBACK = """
import os


class StepRecorder:
    \"\"\"Writes "<version> <step>" to cb_trace.txt in the run directory at every step.\"\"\"

    def on_load(self, env):
        self.path = os.path.join(env["hotcb"].run_dir, "cb_trace.txt")

    def handle(self, event, env):
        with open(self.path, "a") as f:
            f.write("{version} %d\\n" % env["step"])
"""

STEPS = 250
TRAINER = {"steps": STEPS, "step_delay": 0.005, "no_code_load": False}


def _applied(run_dir: str) -> list[tuple[Any, ...]]:
    """(step, module, op, params) of every applied entry but freeze changes: the trajectory."""
    return [
        (e["step"], e["module"], e["op"], json.dumps(e["params"], sort_keys=True), e.get("id"))
        for e in read_ledger(run_dir)
        if e["decision"] == "applied" and e["module"] != "freeze"
    ]


def _weights_equal(a: str, b: str) -> bool:
    wa, wb = torch.load(a), torch.load(b)
    assert wa.keys() == wb.keys()
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def _cb_trace(run_dir: str) -> list[str]:
    with open(os.path.join(run_dir, "cb_trace.txt")) as f:
        return f.read().split("\n")[:-1]


@pytest.fixture(scope="module")
def steered(tmp_path_factory: Any, trainer_class: Any, cli: Any) -> dict[str, Any]:
    """Run A, steered live, and its exported recipe (shared by the replay tests)."""
    Trainer, hotcb_cli = trainer_class, cli

    root = tmp_path_factory.mktemp("replay")
    a_dir = os.fspath(root / "A")
    cb_file = root / "recorder.py"
    cb_file.write_text(CALLBACK.format(version="v1"))
    a = Trainer(
        a_dir,
        os.fspath(root / "a_trace.jsonl"),
        save_weights=os.fspath(root / "wA.pt"),
        ready_file=os.fspath(root / "a_ready"),
        **TRAINER,
    )
    try:
        wait_for(lambda: os.path.exists(root / "a_ready"), 60, what="run A started")
        c = HotClient(a_dir, source="test")
        sent = [
            c.opt(lr=0.004),
            c.loss(l2=1e-4),
            c.cb_load("rec", file=os.fspath(cb_file), symbol="StepRecorder"),
        ]
        for cid in sent:
            assert c.wait(cid, 30)["decision"] == "applied"
        a.wait_step(a.last_step() + 20)
        cb_file.write_text(CALLBACK.format(version="v2"))  # the user edits the file...
        reload = c.cb_load("rec", file=os.fspath(cb_file), symbol="StepRecorder")  # ...reloads
        assert c.wait(reload, 30)["decision"] == "applied"
        ramp = c.send("opt", "set_params", params={"lr": 0.001}, transition={"steps": 10})
        assert c.wait(ramp, 30)["decision"] == "applied"
        assert a.finish()[0] == 0
    finally:
        a.kill()
    ledger = read_ledger(a_dir)
    assert ledger[-1]["step"] < STEPS - 1, "run A ended before all changes landed: slow machine?"
    loads = [e for e in ledger if e["module"] == "cb" and e["op"] == "load"]
    assert [e["decision"] for e in loads] == ["applied", "applied"]
    assert loads[0]["source_capture"]["sha256"] != loads[1]["source_capture"]["sha256"]
    done = hotcb_cli(a_dir, "recipe", "export")
    assert done.returncode == 0, done.stderr
    recipe = os.path.join(a_dir, "hotcb.recipe.jsonl")
    return {"root": root, "a_dir": a_dir, "recipe": recipe, "wA": os.fspath(root / "wA.pt")}


OVERLAY = """\
version: 1
patches:
  - match: {{module: loss, op: set_params, has_param: l2}}
    drop: true
  - match: {{module: opt, at_step: {step}, nth: 0}}
    shift_step: 15
"""


@pytest.fixture(scope="module")
def replays(steered: dict[str, Any], trainer_class: Any, cli: Any) -> dict[str, Any]:
    """Runs B (replay) and C (replay_adjusted) of A's recipe, started together, unsteered."""
    Trainer, hotcb_cli = trainer_class, cli

    root = steered["root"]
    recipe = [json.loads(line) for line in Path(steered["recipe"]).read_text().splitlines()][1:]
    lr_first = next(e for e in recipe if e["module"] == "opt")
    overlay = os.fspath(root / "hotcb.adjust.yaml")
    with open(overlay, "w") as f:
        f.write(OVERLAY.format(step=lr_first["at"]["step"]))
    b_dir, c_dir = os.fspath(root / "B"), os.fspath(root / "C")
    done = hotcb_cli(b_dir, "freeze", "--mode", "replay", "--recipe", steered["recipe"])
    assert done.returncode == 0, done.stderr
    done = hotcb_cli(
        c_dir, "freeze", "--mode", "replay_adjusted", "--recipe", steered["recipe"],
        "--adjust", overlay,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    runs = [
        Trainer(d, os.fspath(root / f"{n}_trace.jsonl"), save_weights=os.fspath(root / f"w{n}.pt"),
                **TRAINER)
        for n, d in (("B", b_dir), ("C", c_dir))
    ]  # fmt: skip
    try:
        for t in runs:
            rc, _, err = t.finish()
            assert rc == 0, err
    finally:
        for t in runs:
            t.kill()
    return {
        "B": b_dir, "C": c_dir, "wB": os.fspath(root / "wB.pt"), "wC": os.fspath(root / "wC.pt"),
        "recipe": recipe, "lr_first": lr_first, "overlay": overlay,
        "c_trace": os.fspath(root / "C_trace.jsonl"),
    }  # fmt: skip


def test_replay_reproduces_the_steered_run(
    steered: dict[str, Any], replays: dict[str, Any], cli: Any
) -> None:
    a_dir, b_dir = steered["a_dir"], replays["B"]
    assert _applied(b_dir) == _applied(a_dir)
    replayed = [e for e in read_ledger(b_dir) if e["module"] != "freeze"]
    assert {e["source"] for e in replayed if e["decision"] == "applied"} == {"recipe", "ramp"}
    # the callback ran from the captured sources: v1, then v2 from the reload's step on, even
    # though recorder.py now holds v2 only
    assert _cb_trace(b_dir) == _cb_trace(a_dir)
    assert any(line.startswith("v1 ") for line in _cb_trace(b_dir))
    assert _weights_equal(steered["wA"], replays["wB"])

    status = cli(b_dir, "status")
    assert status.returncode == 0, status.stderr
    assert "freeze   replay" in status.stdout
    assert "recipe done" in status.stdout


def test_adjusted_replay_follows_the_overlay(
    steered: dict[str, Any], replays: dict[str, Any], cli: Any
) -> None:
    recipe, lr_first = replays["recipe"], replays["lr_first"]
    valid = cli(
        None, "recipe", "validate", "--recipe", steered["recipe"], "--adjust", replays["overlay"]
    )
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert f"ok: {len(recipe)} entries, {len(recipe) - 1} after" in valid.stdout

    expected = []
    for e in recipe:
        if e["module"] == "loss":
            continue
        step = e["at"]["step"] + (15 if e is lr_first else 0)
        expected.append((step, e["module"], e["op"], json.dumps(e["params"], sort_keys=True)))
    expected.sort(key=lambda t: t[0])
    c_ledger = read_ledger(replays["C"])
    got = [
        (e["step"], e["module"], e["op"], json.dumps(e["params"], sort_keys=True))
        for e in c_ledger
        if e["source"] == "recipe"
    ]
    assert got == expected
    assert all(e["decision"] == "applied" for e in c_ledger if e["source"] == "recipe")
    trace = [json.loads(line) for line in Path(replays["c_trace"]).read_text().splitlines()]
    assert all(row["weights"]["l2"] == 0.0 for row in trace)  # the dropped change never happened
    shifted = lr_first["at"]["step"] + 15
    assert trace[shifted - 1]["lr"] != lr_first["params"]["lr"]
    assert trace[shifted]["lr"] == pytest.approx(lr_first["params"]["lr"])
    assert not _weights_equal(steered["wA"], replays["wC"])
