"""``hotcb._trials``: what an undo knows of the tuner's trials, alone and under
torch.distributed, where every rank must decide the same from what it holds (roll-backs are
commands, on every rank; the tuner's keep and void are recorded on rank 0 only)."""

from __future__ import annotations

from typing import Any

from hotcb._trials import TrialView


def _mutate(seq: int, trial: int, old: float, new: float) -> dict[str, Any]:
    return {"seq": seq, "cmd_id": f"m{trial}", "module": "tune", "op": "mutate", "step": seq,
            "changes": {"lr": {"old": old, "new": new}}, "tune": {"trial": trial}}  # fmt: skip


def _set(seq: int, old: float, new: float) -> dict[str, Any]:
    return {"seq": seq, "cmd_id": f"s{seq}", "module": "opt", "op": "set_params", "step": seq,
            "changes": {"lr": {"old": old, "new": new}}}  # fmt: skip


def _view(end: str | None, *, alone: bool) -> tuple[TrialView, dict[str, Any]]:
    """A trial (lr 0.1 -> 0.08) that ended ``end`` (None: open), then a person's set."""
    history = [_mutate(1, 0, 0.1, 0.08), _set(3, 0.08, 0.05)]
    ends = {0: [(2, end)]} if end else {}
    return TrialView(history, ends, alone=alone), history[1]


def test_alone_every_unkept_trial_counts() -> None:
    for end, said in (("rolled_back", "rolled_back"), ("voided", "voided"), (None, "open")):
        view, person = _view(end, alone=True)
        found = view.unkept_under(person, "lr")
        assert found is not None and found.ended == said and found.mutation["seq"] == 1
    view, person = _view("kept", alone=True)
    assert view.unkept_under(person, "lr") is None


def test_under_distributed_only_a_roll_back_counts() -> None:
    """Rank 0 knows of a keep or a void, the other ranks do not: neither counts there, so
    every rank sets the same value."""
    view, person = _view("rolled_back", alone=False)
    found = view.unkept_under(person, "lr")
    assert found is not None and found.ended == "rolled_back"
    for end in ("kept", "voided", None):
        view, person = _view(end, alone=False)
        assert view.unkept_under(person, "lr") is None
        assert view.end(view.history[0]) == "open"


def test_the_value_is_traced_through_an_undo() -> None:
    """The trial's lr, a person's set, its undo (back to the trial's lr), a second set: the
    value the second set found is the trial's."""
    undo = {"seq": 5, "cmd_id": "u", "module": "control", "op": "undo", "step": 5,
            "undo_of": "s3", "changes": {"lr": {"old": 0.05, "new": 0.08}}}  # fmt: skip
    history = [_mutate(1, 0, 0.1, 0.08), _set(3, 0.08, 0.05), undo, _set(6, 0.08, 0.02)]
    view = TrialView(history, {0: [(2, "voided")]})
    found = view.unkept_under(history[3], "lr")
    assert found is not None and found.mutation["cmd_id"] == "m0"
    assert TrialView(history, {}).unkept_under(_set(9, 1, 2), "lr") is None  # not in memory
