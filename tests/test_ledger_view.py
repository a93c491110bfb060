"""LedgerView: the one reducer of a ledger that the kernel, the CLI and the server all ask."""

from __future__ import annotations

from typing import Any

from hotcb.ledger import LedgerView, new_entry


def e(seq: int, **fields: Any) -> dict[str, Any]:
    fields.setdefault("step", seq)
    fields.setdefault("wall_time", 1000.0 + seq)
    return new_entry(seq=seq, **fields)


def test_pending_control_and_last_step_and_duplicates_skipped() -> None:
    view = LedgerView()
    entries = [
        e(1, cmd_id="s", module="opt", op="set_params", decision="scheduled"),
        e(2, cmd_id="p", module="control", op="pause", decision="applied"),
        e(2, cmd_id="p", module="control", op="pause", decision="applied"),  # written twice
        e(3, cmd_id="x", module="control", op="stop", decision="ignored_freeze"),
    ]
    added = [view.add(x) for x in entries]
    assert added == [True, True, False, True]
    assert list(view.pending) == ["s"] and view.paused and not view.stopped
    assert view.last_step == 3 and len(view.entries) == 3
    view.add(e(4, cmd_id="s", module="opt", op="set_params", decision="applied"))
    view.add(e(5, cmd_id="r", module="control", op="resume", decision="applied"))
    assert view.pending == {} and not view.paused
    assert view.run_state(1005.0, now=1010.0, stale_after=30) == "running"
    assert view.run_state(1005.0, now=1100.0, stale_after=30) == "idle"
    assert view.run_state(None, now=1100.0) == "not started"
    view.add(e(6, cmd_id="q", module="control", op="stop", decision="applied"))
    assert view.run_state(1006.0, now=1006.0) == "stopped"


def test_callbacks_follow_loads_errors_toggles_and_undo() -> None:
    view = LedgerView()
    target = {"kind": "python_path", "path": "m", "symbol": "C"}
    for x in [
        e(1, cmd_id="l", module="cb", op="load", id="a", decision="applied", target=target,
          source_capture={"sha256": "abc", "path": "p"}),
        e(2, cmd_id="bad", module="cb", op="load", id="b", decision="rejected", error="nope"),
        e(3, cmd_id="sp", module="cb", op="set_params", id="a", decision="applied",
          params={"k": 1}),
        e(4, cmd_id="d", module="cb", op="disable", id="a", decision="applied"),
        e(5, module="cb", op="callback_error", id="a", decision="failed", error="boom",
          suppressed=2),
        e(6, cmd_id="u", module="control", op="undo", decision="applied", undo_of="d",
          changes={"enabled": {"old": False, "new": True}}),
    ]:  # fmt: skip
        view.add(x)
    a, b = view.callback_list()
    assert a["id"] == "a" and a["state"] == "enabled" and a["sha256"] == "abc"
    assert a["params"] == {"k": 1} and a["errors"] == 3 and a["last_error"] == "boom"
    assert b == {**b, "state": "load failed", "last_error": "nope"}
    view.add(e(7, cmd_id="un", module="cb", op="unload", id="a", decision="applied"))
    assert [c["id"] for c in view.callback_list()] == ["b"]


def test_the_checkpoint_a_resume_came_from_is_not_replaced() -> None:
    """The checkpoint's state is taken before its own ledger entry gets a seq, so the entry
    follows the resume's `resumed_from.seq`: it was listed as replaced (`hotcb status`) and
    dropped from the live entries, though its life goes on from it."""
    from hotcb.ledger import live_entries, replaced_by_resume

    def entry(seq: int, step: int, module: str, op: str, **kw: Any) -> dict[str, Any]:
        return {"seq": seq, "step": step, "module": module, "op": op, "decision": "applied",
                **kw}  # fmt: skip

    rows = [
        entry(4, 120, "opt", "set_params"),
        entry(5, 132, "control", "checkpoint", checkpoint="checkpoint_132.pt"),
        entry(6, 150, "opt", "set_params"),
        entry(7, 190, "control", "checkpoint", checkpoint="checkpoint_190.pt"),
        entry(8, 132, "kernel", "resume", decision="noop", resumed_from={"step": 132, "seq": 4}),
    ]
    assert sorted(replaced_by_resume(rows)) == [6, 7]
    assert [e["seq"] for e in live_entries(rows)] == [4, 5, 8]


def test_callback_list_shows_the_last_failed_load_and_no_stale_problem() -> None:
    view = LedgerView()
    t1 = {"kind": "python_path", "path": "m", "symbol": "Nope"}
    t2 = {"kind": "python_path", "path": "os", "symbol": "system"}
    for x in [
        e(1, cmd_id="l1", module="cb", op="load", id="x", decision="failed", target=t1,
          error="no Nope"),
        e(2, cmd_id="l2", module="cb", op="load", id="x", decision="rejected", target=t2,
          error="no system"),
        e(3, cmd_id="l3", module="cb", op="load", id="a", decision="applied", target=t1),
        e(4, cmd_id="s1", module="cb", op="set_params", id="a", decision="rejected",
          params={"k": "abc"}, error="k must be an integer"),
    ]:  # fmt: skip
        view.add(x)
    x, a = view.callback_list()
    assert x == {**x, "state": "load failed", "target": t2, "step": 2, "last_error": "no system"}
    assert a["last_error"] == "k must be an integer"
    view.add(e(5, cmd_id="s2", module="cb", op="set_params", id="a", decision="applied",
               params={"k": 3}))  # fmt: skip
    assert view.callback_list()[1] == {**a, "params": {"k": 3}, "last_error": None, "step": 5}
    # a suppressed-errors report at an unload adds its count, no error of its own
    view.add(e(6, module="cb", op="callback_error", id="a", decision="failed", error="boom",
               suppressed=4, flushed_on="disable"))  # fmt: skip
    assert view.callback_list()[1]["errors"] == 4


def test_callback_list_forgets_what_a_resume_superseded() -> None:
    view = LedgerView()
    target = {"kind": "python_path", "path": "m", "symbol": "C"}
    for x in [
        e(1, cmd_id="l", module="cb", op="load", id="a", decision="applied", target=target),
        e(2, cmd_id="d", module="cb", op="disable", id="a", decision="applied"),
        # the life after the checkpoint at seq 2, abandoned
        e(3, cmd_id="s", module="cb", op="set_params", id="a", decision="rejected",
          error="bad"),
        e(4, module="cb", op="callback_error", id="a", decision="failed", error="boom"),
        e(5, cmd_id="b", module="cb", op="load", id="b", decision="failed", error="no b"),
        e(6, cmd_id="u", module="control", op="undo", decision="applied", undo_of="d",
          changes={"enabled": {"old": False, "new": True}}),
        e(7, module="kernel", op="resume", decision="noop", resumed_from={"step": 2, "seq": 2}),
    ]:  # fmt: skip
        view.add(x)
    (a,) = view.callback_list()
    assert a == {**a, "state": "disabled", "errors": 0, "last_error": None, "step": 2}
    # the resumed life goes on from there
    view.add(e(8, cmd_id="u2", module="control", op="undo", decision="applied", undo_of="d",
               changes={"enabled": {"old": False, "new": True}}))  # fmt: skip
    assert view.callback_list()[0]["state"] == "enabled"
