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
