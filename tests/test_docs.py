"""The README's code runs: a quickstart that does not work is worse than none."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_readme_quickstart_trains_and_is_steerable(tmp_path: Path) -> None:
    quickstart = next(b for b in _python_blocks(README.read_text()) if "HotKernel(" in b)
    # Shorter run; the steering command is queued before the loop starts so it must be applied.
    code = quickstart.replace("10_000", "60")
    run_dir = tmp_path / "runs" / "exp1"
    run_dir.mkdir(parents=True)
    (run_dir / "hotcb.commands.jsonl").write_text(
        json.dumps(
            {
                "cmd_id": "readme-1",
                "module": "opt",
                "op": "set_params",
                "params": {"lr": 5e-4},
                "at_step": 10,
            }
        )
        + "\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"},
    )
    assert result.returncode == 0, result.stderr
    ledger = [
        json.loads(line) for line in (run_dir / "hotcb.applied.jsonl").read_text().splitlines()
    ]
    applied = [e for e in ledger if e["cmd_id"] == "readme-1" and e["decision"] == "applied"]
    assert len(applied) == 1 and applied[0]["step"] == 10
    assert applied[0]["changes"]["lr"]["new"] == 5e-4
    metrics = (run_dir / "hotcb.metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 60


@pytest.mark.slow
def test_bare_loop_example_trains_and_obeys_the_cli(tmp_path: Path) -> None:
    """README set-up: `python examples/bare_loop.py` steered by `hotcb set` from outside."""
    run_dir = tmp_path / "digits"
    example = README.parent / "examples" / "bare_loop.py"
    hotcb = [sys.executable, "-m", "hotcb", "--dir", str(run_dir)]
    made = subprocess.run([*hotcb, "init"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr  # a command can wait for a run not started yet
    sent = subprocess.run(
        [*hotcb, "set", "aux_weight=0.0", "lr=2e-3", "--at-step", "20"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    result = subprocess.run(
        [sys.executable, str(example), "--run-dir", str(run_dir), "--steps", "60"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "done: loss" in result.stdout
    log = subprocess.run([*hotcb, "log", "-n", "0"], capture_output=True, text=True, timeout=60)
    applied = [line for line in log.stdout.splitlines() if "-> applied" in line]
    assert any("aux_weight: 0.0001 -> 0" in line and "step 20" in line for line in applied), (
        log.stdout
    )
    assert any("lr:" in line and "-> 0.002" in line and "step 20" in line for line in applied), (
        log.stdout
    )


def test_security_doc_names_only_tests_that_exist() -> None:
    """docs/security.md lists the test that holds each promise: each must be a real test."""
    root = README.parent
    text = (root / "docs" / "security.md").read_text()
    named = set(re.findall(r"(test_[a-z0-9_]+)`", text))
    assert len(named) > 20
    defined = {
        m
        for path in (root / "tests").rglob("test_*.py")
        for m in re.findall(r"^def (test_[a-z0-9_]+)", path.read_text(), flags=re.M)
    }
    assert named <= defined, sorted(named - defined)
