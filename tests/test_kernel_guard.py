"""The last line of defence: a bug inside hotcb's own apply() path never reaches the loop."""

from __future__ import annotations

import json

import pytest

from hotcb import HotKernel


def test_internal_error_is_ledgered_and_training_continues(tmp_path, monkeypatch, caplog) -> None:
    kernel = HotKernel(tmp_path, poll_interval_sec=0, metrics_collector=False)
    calls = {"n": 0}

    def broken_read() -> list:
        calls["n"] += 1
        raise RuntimeError("simulated bug while reading commands")

    monkeypatch.setattr(kernel._intake, "read", broken_read)
    for step in range(5):
        kernel.apply({"step": step})  # must not raise
    kernel.close()
    assert calls["n"] == 5
    entries = [
        json.loads(line) for line in (tmp_path / "hotcb.applied.jsonl").read_text().splitlines()
    ]
    assert [e["op"] for e in entries] == ["internal_error"] * 5
    assert entries[0]["decision"] == "failed"
    assert "simulated bug" in entries[0]["error"]
    assert "Traceback" in entries[0]["traceback"]
    # logged with its traceback once, not once per step
    assert sum("internal error" in r.message for r in caplog.records) == 1


def test_missing_step_is_a_warning_not_a_crash(tmp_path, caplog) -> None:
    kernel = HotKernel(tmp_path, metrics_collector=False)
    kernel.apply({"loss": 1.0})
    kernel.apply({"loss": 1.0})
    kernel.close()
    assert sum("needs env['step']" in r.message for r in caplog.records) == 1


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
