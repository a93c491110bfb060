"""Helpers for the adapter tests: real subprocesses that write commands, trace readers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
#: Subprocesses must not inherit a run directory from the developer's shell.
ENV = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
ENV["PYTHONFAULTHANDLER"] = "1"  # a trainer (a DDP rank) that aborts says where


def load_example(name: str) -> Any:
    """The module of ``examples/<name>.py`` (its ``build()``, its LightningModule …)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` (missing file: empty)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


# A controller in its own process: waits until the trainer has reached a step (it reads the
# metrics file, like the dashboard does), sends each command with HotClient and waits for its
# ledger entry; one JSON line per command on stdout.
CONTROLLER = r"""
import json, sys
from hotcb import HotClient
from hotcb.testing import wait_for, read_ledger
import hotcb.jsonl as jsonl, os
run_dir, plan = sys.argv[1], json.loads(sys.argv[2])
client = HotClient(run_dir, source="test-controller")
metrics = os.path.join(run_dir, "hotcb.metrics.jsonl")
def step():
    last = jsonl.read_last(metrics, 1) if os.path.exists(metrics) else []
    return last[0]["step"] if last else -1
for item in plan:
    start = step()
    wait_for(lambda: step() >= max(item.get("after_step", 0), start + 1), 60, what="trainer step")
    cid = client.send(item["module"], item["op"], **item.get("fields", {}))
    entry = client.wait(cid, timeout=60) if item.get("wait", True) else None
    print(json.dumps({"cmd_id": cid, "entry": entry}), flush=True)
"""


class Controller:
    """A controller process that sends ``plan`` (list of ``{module, op, fields, after_step}``)."""

    def __init__(self, run_dir: str, plan: list[dict[str, Any]]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONTROLLER, run_dir, json.dumps(plan)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )

    def results(self, timeout: float = 120) -> list[dict[str, Any]]:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"controller failed:\n{err[-3000:]}"
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def controller() -> Iterator[Any]:
    """``controller(run_dir, plan) -> Controller``; killed at the end of the test if running."""
    started: list[Controller] = []

    def start(run_dir: str, plan: list[dict[str, Any]]) -> Controller:
        c = Controller(run_dir, plan)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()
