"""The on-disk formats stay stable: a command record, a ledger entry and hotcb.actuators.json
are compared, key order included, with golden files in tests/golden/.

Values that change from run to run (times, ids, byte offsets, paths) are replaced by a type
marker such as ``"<float>"`` before comparing, so their presence and type are still checked.
A deliberate format change bumps ``FORMAT_VERSION`` (the ``v`` field) and regenerates the files:

    HOTCB_UPDATE_GOLDEN=1 pytest tests/test_golden_formats.py
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch

from hotcb import HotClient, HotKernel, jsonl, loss_actuators, mutable_state
from hotcb.runfiles import FORMAT_VERSION, RunPaths
from hotcb.testing import TinyMLP, read_ledger

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
VOLATILE = {"ts", "wall_time", "cmd_id", "cursor"}


def normalize(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: (f"<{type(v).__name__}>" if k in VOLATILE else normalize(v)) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [normalize(v) for v in obj]
    return obj


def check(name: str, actual: Any) -> None:
    path = os.path.join(GOLDEN, name)
    got = normalize(actual)
    if os.environ.get("HOTCB_UPDATE_GOLDEN"):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            json.dump(got, f, indent=2)
            f.write("\n")
    with open(path) as f:
        want = json.load(f)
    assert json.dumps(got, indent=1) == json.dumps(want, indent=1)  # key order matters too


@pytest.fixture
def steered_run(run_dir: str) -> RunPaths:
    opt = torch.optim.AdamW(TinyMLP().parameters(), lr=0.01, weight_decay=0.0)
    weights = {"ce": 1.0, "terms": {"distill": True}}
    kernel = HotKernel(
        run_dir, poll_interval_sec=0, mutable_state=mutable_state(loss_actuators(weights))
    )
    kernel.apply({"step": 0, "optimizer": opt})
    HotClient(run_dir, source="cli").opt(lr=0.002)
    kernel.apply({"step": 1, "optimizer": opt})
    kernel.close()
    return kernel.paths


def test_format_version_is_1() -> None:
    assert FORMAT_VERSION == 1  # changing it means regenerating the golden files, on purpose


def test_command_record_format(steered_run: RunPaths) -> None:
    (record,) = jsonl.iter_records(steered_run.commands)
    assert record["v"] == FORMAT_VERSION
    check("command.json", record)


def test_ledger_entry_format(steered_run: RunPaths) -> None:
    (entry,) = read_ledger(steered_run.root)
    assert entry["v"] == FORMAT_VERSION
    assert entry["cursor"] == os.path.getsize(steered_run.commands)
    check("ledger_entry.json", entry)


def test_actuators_file_format(steered_run: RunPaths) -> None:
    doc = jsonl.read_json(steered_run.actuators)
    assert doc["v"] == FORMAT_VERSION and doc["step"] == 1
    check("actuators.json", doc)
