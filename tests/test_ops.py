"""hotcb.ops: command records, their validation, and the messages a person acts on."""

from __future__ import annotations

from typing import Any

import pytest

from hotcb.errors import CommandError
from hotcb.ops import HotOp, command_to_hotop, make_command, new_cmd_id


def rec(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cmd_id": "c1",
        "module": "opt",
        "op": "set_params",
        "params": {"lr": 0.1},
    }
    base.update(fields)
    return base


def test_a_valid_record_becomes_a_typed_op() -> None:
    op = command_to_hotop(
        rec(source="cli", at_step=40, transition={"steps": 10, "shape": "cosine"}, ts=1.5),
        cursor=123,
    )
    assert isinstance(op, HotOp)
    assert (op.module, op.op, op.cmd_id, op.params, op.source) == (
        "opt",
        "set_params",
        "c1",
        {"lr": 0.1},
        "cli",
    )
    assert op.at_step == 40 and op.cursor == 123 and op.ts == 1.5
    assert op.transition is not None and op.transition.to_dict() == {"steps": 10, "shape": "cosine"}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([1, 2], "a command must be a JSON object, got list"),
        (rec(module="nope"), "unknown module 'nope'; expected one of cb, control, custom"),
        (rec(op="explode"), "unknown op 'explode' for module 'opt'; expected one of set_params"),
        (rec(module=3), "'module' must be a string"),
        (rec(params={"lr": float("nan")}), "params.lr is nan; send a finite number"),
        (rec(params={"betas": [0.9, float("inf")]}), "params.betas[1] is inf"),
        (rec(params=[1]), "'params' must be an object"),
        (rec(params={}), "opt set_params needs at least one parameter"),
        (rec(at_step=-1), "'at_step' must be an integer >= 0, got -1"),
        (rec(at_step=True), "'at_step' must be an integer >= 0"),
        (rec(at_step=2**63), "'at_step' must be at most 9223372036854775807 (2**63 - 1)"),
        (rec(transition={"steps": 0}), "transition.steps must be an integer >= 1"),
        (rec(transition={"steps": 10**30}), "transition.steps must be at most 9223372036854775807"),
        (rec(reason="\ud800"), "a command's text must be valid Unicode: it holds a lone surrogate"),
        (rec(transition={"steps": 5, "shape": "zigzag"}), "transition.shape must be one of"),
        (rec(enabled="yes"), "'enabled' must be true or false"),
        (rec(module="cb", op="load", id="x"), "cb load needs 'target'"),
        (rec(module="cb", op="enable"), "cb enable needs 'id'"),
        (
            rec(module="cb", op="load", id="x", target={"kind": "zip", "path": "a", "symbol": "B"}),
            "target.kind must be one of python_path, python_file",
        ),
        (rec(module="control", op="cancel", params={}), "control cancel needs params.cmd_id"),
        (rec(module="control", op="extend", params={"to_step": -1}), "params.to_step must be >= 0"),
        (
            rec(module="control", op="extend", params={"to_step": 2**63}),
            "params.to_step must be at most 9223372036854775807 (2**63 - 1) in size",
        ),
        (
            rec(module="control", op="extend", params={"steps": -(2**64)}),
            "params.steps must be at most 9223372036854775807",
        ),
        (rec(module="control", op="undo", params={"cmd_id": 5}), "params.cmd_id must be a string"),
        (rec(module="freeze", op="set", mode="frozen"), "freeze mode must be one of off, prod"),
        (
            rec(module="control", op="pause", params={}, transition={"steps": 3}),
            "'transition' applies to opt/loss/custom set_params",
        ),
        (rec(cmd_id=""), "'cmd_id' must be a non-empty string"),
    ],
)
def test_invalid_records_are_refused_with_an_actionable_reason(record: Any, message: str) -> None:
    with pytest.raises(CommandError) as info:
        command_to_hotop(record)
    assert message in str(info.value)


def test_a_hand_written_line_without_cmd_id_gets_the_fallback_id() -> None:
    record = rec()
    del record["cmd_id"]
    assert command_to_hotop(record, fallback_id="@512").cmd_id == "@512"
    with pytest.raises(CommandError, match="'cmd_id' must be a non-empty string"):
        command_to_hotop(record)


def test_upstream_fields_are_kept_in_extra_and_round_trip() -> None:
    op = command_to_hotop(rec(module="freeze", op="set", params={}, mode="replay", recipe_path="r"))
    assert op.extra == {"mode": "replay", "recipe_path": "r"}
    again = command_to_hotop(op.to_record())
    assert again == op


def test_make_command_builds_a_complete_validated_record() -> None:
    r = make_command("loss", "set_params", source="test", params={"aux": 0.5}, at_step=7)
    assert r["module"] == "loss" and r["params"] == {"aux": 0.5} and r["at_step"] == 7
    assert r["source"] == "test" and isinstance(r["ts"], float) and len(r["cmd_id"]) == 26
    assert command_to_hotop(r).cmd_id == r["cmd_id"]
    with pytest.raises(CommandError, match="unknown op"):
        make_command("loss", "set")


def test_cmd_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_cmd_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 26 for i in ids)
    first, later = ids[0], new_cmd_id()
    assert first[:10] <= later[:10]  # the leading 10 chars are the millisecond clock


def test_unknown_fields_are_rejected_with_the_known_ones() -> None:
    with pytest.raises(CommandError, match=r"unknown command field\(s\) 'payload'.*params"):
        command_to_hotop(rec(payload="x" * 1000))


def test_a_callback_symbol_is_one_attribute_name() -> None:
    target = {"kind": "python_path", "path": "hotcb.kernel", "symbol": "os.system"}
    with pytest.raises(CommandError, match="one attribute name"):
        command_to_hotop(rec(module="cb", op="load", id="x", params={}, target=target))
    target["symbol"] = "__class__"
    with pytest.raises(CommandError, match="one attribute name"):
        command_to_hotop(rec(module="cb", op="load", id="x", params={}, target=target))


def test_a_command_over_the_size_cap_is_refused_before_it_is_written() -> None:
    with pytest.raises(CommandError, match="more than the 65536 accepted"):
        make_command("cb", "set_params", id="x", params={"blob": "x" * 70_000})


def test_a_reason_travels_with_the_command_into_the_ledger(tmp_path: Any) -> None:
    """A controller says why (the autopilot's rule and evidence); the ledger keeps it."""
    from hotcb import HotClient, HotKernel
    from hotcb.testing import read_ledger

    op = command_to_hotop(make_command("control", "pause", reason="autopilot rule x: plateau"))
    assert op.extra["reason"] == "autopilot rule x: plateau"
    with pytest.raises(CommandError, match="'reason' must be a string of at most 2000"):
        command_to_hotop(make_command("control", "pause", reason="x" * 2001))
    with pytest.raises(CommandError, match="'reason' must be a string"):
        command_to_hotop(make_command("control", "pause", reason=3))
    kernel = HotKernel(tmp_path / "run")
    HotClient(tmp_path / "run").send("control", "checkpoint", reason="because")
    kernel.apply({"step": 1})
    kernel.close()
    (entry,) = read_ledger(tmp_path / "run")
    assert entry["reason"] == "because"
