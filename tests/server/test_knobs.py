"""``/api/runs/{run}/knobs``: each knob's value over the run from the kernel's own records
(the ledger's ``changes`` and the actuators file), for a run that logs none of its knobs."""

from __future__ import annotations

import types
from typing import Any

from hotcb import HotClient, HotKernel, loss_actuators, mutable_state
from hotcb.server.tailer import KnobHistory
from hotcb.testing import read_ledger


class Quiet:
    """A real kernel in this process: an optimizer (lr, weight_decay) and a loss weight, and
    metrics that say nothing about either."""

    def __init__(self, path: str) -> None:
        self.opt = types.SimpleNamespace(param_groups=[{"lr": 0.1, "weight_decay": 0.01}])
        self.weights = {"ce": 1.0}
        self.kernel = HotKernel(
            path, poll_interval_sec=0.0, mutable_state=mutable_state(loss_actuators(self.weights))
        )
        self.step = 0

    def advance(self, n: int) -> None:
        for _ in range(n):
            env = {"step": self.step, "optimizer": self.opt, "metrics": {"loss": 1.0}}
            self.kernel.apply(env)
            self.step += 1


def knob(doc: dict[str, Any], key: str) -> dict[str, Any]:
    (k,) = [k for k in doc["knobs"] if k["key"] == key]
    return k


def test_knob_values_over_time(tmp_path: Any, live_server: Any) -> None:
    run = Quiet(str(tmp_path / "r"))
    run.advance(10)
    client = HotClient(str(tmp_path / "r"), source="cli")
    client.set({"lr": 0.05})
    run.advance(10)  # applied at step 10
    client.set({"ce": 2.5, "lr": 0.02})
    run.advance(10)  # applied at step 20
    srv = live_server()
    with srv.client() as c:
        doc = c.get("/api/runs/r/knobs").json()
    assert (doc["first_step"], doc["last_step"]) == (0, 29)
    lr = knob(doc, "lr")
    assert lr["group"] == "opt" and lr["initial"] == 0.1 and lr["current"] == 0.02
    assert lr["points"] == {"step": [0, 10, 20, 29], "value": [0.1, 0.05, 0.02, 0.02]}
    assert [(c["step"], c["old"], c["new"], c["source"]) for c in lr["changes"]] == [
        (10, 0.1, 0.05, "cli"),
        (20, 0.05, 0.02, "cli"),
    ]
    ce = knob(doc, "ce")
    assert ce["group"] == "loss" and ce["points"] == {"step": [0, 20, 29], "value": [1.0, 2.5, 2.5]}
    wd = knob(doc, "weight_decay")  # never changed: a flat line from the start to now
    assert wd["points"] == {"step": [0, 29], "value": [0.01, 0.01]} and wd["changes"] == []

    # an undo is a change of the knob too
    (cmd,) = client.set({"lr": 0.3})
    run.advance(5)
    client.undo(cmd)
    run.advance(5)
    with srv.client() as c:
        lr = knob(c.get("/api/runs/r/knobs").json(), "lr")
    assert lr["points"]["value"][-3:] == [0.3, 0.02, 0.02]
    assert lr["changes"][-1]["undo"] is True and lr["changes"][-1]["new"] == 0.02
    run.kernel.close()


def test_values_a_scheduler_sets_are_seen_from_the_actuators_file(
    tmp_path: Any, live_server: Any
) -> None:
    run = Quiet(str(tmp_path / "r"))
    run.advance(5)
    srv = live_server()
    with srv.client() as c:
        assert knob(c.get("/api/runs/r/knobs").json(), "lr")["points"]["value"][0] == 0.1
        run.opt.param_groups[0]["lr"] = 0.07  # an LR scheduler, outside hotcb
        run.kernel._next_refresh = 0.0  # the kernel's once-a-second refresh is due
        run.advance(5)  # the kernel rewrites the actuators file at step 5
        lr = knob(c.get("/api/runs/r/knobs").json(), "lr")
    assert lr["points"] == {"step": [0, 5, 9], "value": [0.1, 0.07, 0.07]}
    assert lr["changes"] == [] and lr["current"] == 0.07
    run.kernel.close()


def test_a_scheduler_before_the_server_started_is_charted_from_the_kernels_record(
    tmp_path: Any, live_server: Any
) -> None:
    """An LR scheduler moves lr three times before any server watches (the demo's warm-up):
    the kernel's refresh appends each move to hotcb.knobs.jsonl, so a server started later
    charts them at their steps, not as one jump at the step it first saw."""
    run = Quiet(str(tmp_path / "r"))
    for lr in (0.05, 0.02, 0.01):
        run.advance(5)
        run.opt.param_groups[0]["lr"] = lr  # an LR scheduler, outside hotcb
        run.kernel._next_refresh = 0.0  # the kernel's once-a-second refresh is due
    run.advance(5)
    srv = live_server()
    with srv.client() as c:
        lr_knob = knob(c.get("/api/runs/r/knobs").json(), "lr")
    assert lr_knob["points"] == {"step": [0, 5, 10, 15, 19], "value": [0.1, 0.05, 0.02, 0.01, 0.01]}
    run.kernel.close()


def test_a_scheduler_s_last_moves_before_close_are_the_finished_run_s_values(
    tmp_path: Any, live_server: Any
) -> None:
    """The refresh runs once a second; a run that ends within that second still leaves the
    value its scheduler set in the actuators file (the page's knob) and the knob's record."""
    run = Quiet(str(tmp_path / "r"))
    run.advance(5)
    run.opt.param_groups[0]["lr"] = 0.004  # an LR scheduler, after the last refresh
    run.advance(3)
    run.kernel.close()
    srv = live_server()
    with srv.client() as c:
        lr = knob(c.get("/api/runs/r/knobs").json(), "lr")
        (act,) = [a for a in c.get("/api/runs/r/actuators").json()["actuators"]
                  if a["param_key"] == "lr"]  # fmt: skip
    assert act["current"] == 0.004 and lr["current"] == 0.004
    assert lr["points"]["value"][-1] == 0.004


def test_knob_history_keeps_numbers_of_actuator_changes() -> None:
    h = KnobHistory()
    h.add({"decision": "applied", "module": "opt", "step": 3, "cmd_id": "a", "seq": 1,
           "changes": {"lr": {"old": 0.1, "new": 0.2}, "betas": {"old": [0.9, 0.99], "new": [0.8, 0.9]}}})  # fmt: skip
    h.add(
        {
            "decision": "failed",
            "module": "opt",
            "step": 4,
            "changes": {"lr": {"old": 0.2, "new": 9}},
        }
    )
    h.add({"decision": "applied", "module": "control", "op": "extend", "step": 5,
           "changes": {"max_steps": {"old": 100, "new": 200}}})  # fmt: skip
    h.add({"decision": "applied", "module": "control", "op": "undo", "undo_of": "a", "step": 6,
           "changes": {"lr": {"old": 0.2, "new": 0.1}}})  # fmt: skip
    assert [(c["key"], c["step"], c["new"], c["undo"]) for c in h.changes] == [
        ("lr", 3, 0.2, False),
        ("lr", 6, 0.1, True),
    ]


def test_the_tuners_changes_are_changes_of_the_knobs(tmp_path: Any, live_server: Any) -> None:
    """The online tuner's trials, roll-backs and bracket arms are ledger changes of lr and
    weight decay like any other: the knob chart has them (after a restart of the server too),
    and an enable's settings (its segment length) are not knobs."""
    run = Quiet(str(tmp_path / "r"))
    client = HotClient(str(tmp_path / "r"), source="cli")
    client.tune_enable("active", objective="loss", segment_steps=5, seed=0, sync=True)
    run.advance(2)
    client.tune_enable(segment_steps=6)  # a setting changed: a number in the ledger, no knob
    run.advance(80)
    tuned = [e for e in read_ledger(str(tmp_path / "r")) if e.get("module") == "tune" and e.get("changes")
             and e["op"] in ("mutate", "rollback")]  # fmt: skip
    assert len(tuned) >= 2
    srv = live_server()
    with srv.client() as c:
        doc = c.get("/api/runs/r/knobs").json()
    assert "segment_steps" not in {k["key"] for k in doc["knobs"]}
    for key in ("lr", "weight_decay"):
        marks = [(c["step"], c["op"], c["new"]) for c in knob(doc, key)["changes"]]
        assert marks == [(e["step"], e["op"], e["changes"][key]["new"]) for e in tuned], key
        assert all(c["source"] == "tune" for c in knob(doc, key)["changes"])
    run.kernel.close()


def test_a_ramp_is_charted_as_it_moves_and_the_actuators_file_follows_it(
    tmp_path: Any, live_server: Any
) -> None:
    """``set lr=… --ramp 10``: the chart jumped to the target at the ramp's first step and
    back to the start at its last, the actuators file (the page's control, ``hotcb status``)
    kept the start value to the end: the ramp's moves were recorded nowhere."""
    run = Quiet(str(tmp_path / "r"))
    run.advance(5)
    HotClient(str(tmp_path / "r"), source="cli").send(
        "opt", "set_params", params={"lr": 0.6}, transition={"steps": 10}
    )
    srv = live_server()
    with srv.client() as c:
        for _ in range(5):  # to step 9: the ramp, applied at step 5, is halfway
            run.kernel._stream.ramp_flush = 0.0  # its once-a-second record is due
            run.advance(1)
        mid = knob(c.get("/api/runs/r/knobs").json(), "lr")
        (act,) = [a for a in c.get("/api/runs/r/actuators").json()["actuators"]
                  if a["param_key"] == "lr"]  # fmt: skip
        assert act["current"] == run.opt.param_groups[0]["lr"] == mid["current"]
        assert (act["state"], act["ramp_target"]) == ("ramping", 0.6)  # hotcb status says so
        assert 0.1 < act["current"] < 0.6
        ramped = [v for s, v in zip(mid["points"]["step"], mid["points"]["value"], strict=True)
                  if s >= 5]  # fmt: skip
        assert max(ramped) < 0.6 and ramped == sorted(ramped) and len(set(ramped)) >= 3, mid
        run.advance(10)
        done = knob(c.get("/api/runs/r/knobs").json(), "lr")
    assert done["current"] == 0.6 and done["points"]["value"][-1] == 0.6
    run.kernel.close()


def test_the_actuators_a_deleted_run_published_are_not_taken_back() -> None:
    """Its folder deleted file by file, a run's actuators file went first: the server pushed
    an empty document and the page dropped every control (a CI run caught the page with none
    to show disabled). What the run published stays; a file written again is read anew."""
    import json
    import os
    import tempfile

    from hotcb.server.tailer import ActuatorsWatch

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "hotcb.actuators.json")
        with open(path, "w") as f:
            json.dump({"actuators": [{"param_key": "lr"}]}, f)
        watch = ActuatorsWatch(path)
        assert watch.update() is True
        os.remove(path)
        assert watch.update() is False and watch.doc["actuators"] == [{"param_key": "lr"}]
        with open(path, "w") as f:
            json.dump({"actuators": [{"param_key": "wd"}]}, f)
        assert watch.update() is True and watch.doc["actuators"] == [{"param_key": "wd"}]


def test_a_knob_set_at_every_step_is_sent_thinned_with_its_spikes(
    tmp_path: Any, live_server: Any
) -> None:
    """A controller that sets lr at every step: the answer stays small (it is fetched again
    after each change) and the line keeps its extremes; the newest changes are listed and
    all are counted."""
    from hotcb.server.runs import KNOB_CHANGES, KNOB_POINTS

    run = Quiet(str(tmp_path / "r"))
    client = HotClient(str(tmp_path / "r"), source="cli")
    run.advance(1)
    n = KNOB_POINTS + KNOB_CHANGES
    for i in range(n):
        lr = 5.0 if i == 1234 else 0.01 + 0.001 * (i % 7)
        client.set({"lr": lr})
        run.advance(1)
    srv = live_server()
    with srv.client() as c:
        lr_knob = knob(c.get("/api/runs/r/knobs").json(), "lr")
    steps, values = lr_knob["points"]["step"], lr_knob["points"]["value"]
    assert len(steps) <= KNOB_POINTS and steps == sorted(steps)
    assert (steps[0], values[0]) == (0, 0.1) and values[-1] == lr_knob["current"]
    assert 5.0 in values and min(values) == 0.01  # the spike and the floor are still drawn
    assert lr_knob["changes_total"] == n and len(lr_knob["changes"]) == KNOB_CHANGES
    assert [c["step"] for c in lr_knob["changes"]] == list(range(n - KNOB_CHANGES + 1, n + 1))
    run.kernel.close()


def test_a_scheduler_s_moves_of_a_life_the_run_left_leave_the_knob(
    tmp_path: Any, live_server: Any
) -> None:
    """A trainer killed and started again in its folder: the Knobs panel kept the lr its
    scheduler had set in the gone life (steps the new life never reached, its axis out to the
    old life's end), and after a restart from step 0 it missed the new life's own moves until
    they passed the old life's last step. Now it holds the life that goes on: after a resume,
    the moves up to its checkpoint and the new life's; after a restart, the new life's."""

    def life(lr: float, start: int, steps: int, moves: dict[int, float], state: Any = None) -> Any:
        run = Quiet(str(tmp_path / "r"))  # left unclosed: the process died
        run.opt.param_groups[0]["lr"], run.step = lr, start
        if state is not None:
            run.kernel.load_state_dict(state)
        saved = None
        for _ in range(steps):
            if run.step in moves:
                run.opt.param_groups[0]["lr"] = moves[run.step]  # an LR scheduler
                run.kernel._next_refresh = 0.0  # the kernel's once-a-second refresh is due
            run.advance(1)
            if run.step == start + 15:
                saved = run.kernel.state_dict()
        return saved

    def lr_points(c: Any) -> list[tuple[int, float]]:
        points = knob(c.get("/api/runs/r/knobs").json(), "lr")["points"]
        return list(zip(points["step"], points["value"], strict=True))

    checkpoint = life(0.1, 0, 40, {10: 0.05, 25: 0.02})
    with live_server().client() as c:
        assert lr_points(c) == [(0, 0.1), (10, 0.05), (25, 0.02), (39, 0.02)]
        life(0.05, 15, 10, {}, state=checkpoint)  # resumed at step 15, killed at step 24
        assert lr_points(c) == [(0, 0.1), (10, 0.05), (24, 0.05)]
        life(0.1, 0, 8, {3: 0.07})  # from step 0 again, no checkpoint
        assert lr_points(c) == [(0, 0.1), (3, 0.07), (7, 0.07)]


def test_the_knob_starts_at_the_runs_first_value_when_a_scheduler_moved_it_before_a_change(
    tmp_path: Any, live_server: Any
) -> None:
    """A scheduler moved lr from 0.1 to 0.05, then a person set 0.03: the line started at the
    change's old value (0.05 from step 0), not the run's first one, which the actuators file
    holds (and, for a resumed run, its checkpoint)."""
    run = Quiet(str(tmp_path / "r"))
    run.advance(5)
    run.opt.param_groups[0]["lr"] = 0.05  # an LR scheduler, outside hotcb
    run.kernel._next_refresh = 0.0  # the kernel's once-a-second refresh is due
    run.advance(5)
    HotClient(str(tmp_path / "r"), source="cli").set({"lr": 0.03})
    run.advance(5)  # applied at step 10
    run.kernel.close()
    with live_server().client() as c:
        lr = knob(c.get("/api/runs/r/knobs").json(), "lr")
    assert lr["initial"] == 0.1
    assert lr["points"] == {"step": [0, 5, 10, 14], "value": [0.1, 0.05, 0.03, 0.03]}


def test_a_resumed_run_s_knob_holds_the_checkpoint_s_value_from_its_step(
    tmp_path: Any, live_server: Any
) -> None:
    """A scheduler moved lr just before the checkpoint (between two of the kernel's
    once-a-second looks), and the life that saved it went on: after the resume the line held
    the gone life's older value from the checkpoint's step until the scheduler moved again."""
    run = Quiet(str(tmp_path / "r"))
    run.advance(10)
    run.opt.param_groups[0]["lr"] = 0.05  # a scheduler: seen by the kernel's refresh
    run.kernel._next_refresh = 0.0
    run.advance(4)
    run.opt.param_groups[0]["lr"] = 0.04  # moved again, before the next look
    run.advance(1)
    saved = run.kernel.state_dict()  # the checkpoint, after step 14
    run.advance(10)  # the life goes on, then dies
    again = Quiet(str(tmp_path / "r"))
    again.opt.param_groups[0]["lr"], again.step = 0.04, 15
    again.kernel.load_state_dict(saved)
    again.advance(5)
    with live_server().client() as c:
        lr = knob(c.get("/api/runs/r/knobs").json(), "lr")
    points = list(zip(lr["points"]["step"], lr["points"]["value"], strict=True))
    assert points[:3] == [(0, 0.1), (10, 0.05), (14, 0.04)], points


def _branch_and_run(runs: Any, parent: Quiet, child_lr: float, **set_params: Any) -> None:
    """Checkpoint ``parent`` (run ``runs/p``) where it is, close it, branch ``runs/c`` from
    there (``set_params``), and train the child 5 steps from the checkpoint (its lr
    ``child_lr``)."""
    from hotcb.branch import branch

    saved: dict[str, Any] = {}

    def save(path: str | None = None) -> str:
        path = path or str(runs / "p" / "ckpt.pt")
        saved["state"] = parent.kernel.state_dict()
        with open(path, "w") as f:
            f.write("a checkpoint")
        return path

    HotClient(str(runs / "p"), source="cli").checkpoint()
    parent.kernel.apply({"step": parent.step, "optimizer": parent.opt, "save_checkpoint": save})
    parent.kernel.close()
    info = branch(str(runs / "p"), str(runs / "c"), source=parent.step,
                  set_params=set_params or None)  # fmt: skip
    child = Quiet(str(runs / "c"))
    child.opt.param_groups[0]["lr"], child.step = child_lr, info["step"] + 1
    child.kernel.load_state_dict(saved["state"])
    child.advance(5)
    child.kernel.close()


def test_a_branch_s_knob_starts_at_its_root_s_first_value(tmp_path: Any, live_server: Any) -> None:
    """A branch's line began at its first inherited change (step 5 of its parent), with that
    change's value: the lr the parent started with (0.1, steps 0-4) was not drawn."""
    runs = tmp_path / "runs"
    parent = Quiet(str(runs / "p"))
    parent.advance(5)
    HotClient(str(runs / "p"), source="cli").set({"lr": 0.05})
    parent.advance(5)  # applied at step 5
    _branch_and_run(runs, parent, 0.05)
    with live_server(str(runs)).client() as c:
        lr = knob(c.get("/api/runs/c/knobs").json(), "lr")
    assert lr["points"]["step"][:2] == [0, 5] and lr["points"]["value"][:2] == [0.1, 0.05], lr


def test_a_branch_s_knob_follows_its_parent_s_schedule_before_the_branch(
    tmp_path: Any, live_server: Any
) -> None:
    """The parent's LR scheduler moved lr before the branch step: the branch's line held the
    root's first value flat out to the branch step (a cosine drawn as a constant), since its
    own record starts at its checkpoint. It follows the parent's line up to there now."""
    runs = tmp_path / "runs"
    parent = Quiet(str(runs / "p"))
    for lr in (0.08, 0.06):
        parent.advance(4)
        parent.opt.param_groups[0]["lr"] = lr  # an LR scheduler, outside hotcb
        parent.kernel._next_refresh = 0.0  # the kernel's once-a-second refresh is due
    parent.advance(2)
    _branch_and_run(runs, parent, 0.06, lr=0.02)
    with live_server(str(runs)).client() as c:
        lr = knob(c.get("/api/runs/c/knobs").json(), "lr")
    points = list(zip(lr["points"]["step"], lr["points"]["value"], strict=True))
    assert points[:3] == [(0, 0.1), (4, 0.08), (8, 0.06)], points
    assert points[-1][1] == 0.02, points
