"""A run directory written with ``~`` (quoted in a shell, in ``HOTCB_DIR``, or in Python) is the
one in the home directory: the trainer made a folder literally named ``~`` in the working
directory, and the CLI looked for the run there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hotcb import HotClient, HotKernel


def test_a_run_dir_under_home_written_with_a_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", os.fspath(home))
    monkeypatch.chdir(work)
    kernel = HotKernel("~/runs/a", poll_interval_sec=0.0)
    HotClient("~/runs/a").set({"w": 1.0})
    kernel.apply({"step": 1, "metrics": {"loss": 0.5}})
    kernel.close()
    assert kernel.run_dir == os.fspath(home / "runs" / "a")
    assert not (work / "~").exists()
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    env["HOME"] = os.fspath(home)
    for argv, extra in ((["--dir", "~/runs/a"], {}), ([], {"HOTCB_DIR": "~/runs/a"})):
        done = subprocess.run([sys.executable, "-m", "hotcb", *argv, "status"], cwd=work,
                              env={**env, **extra}, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"{home}/runs/a  [finished at step 1]" in done.stdout, done.stdout
    assert not (work / "~").exists()


def test_file_options_written_with_a_tilde_are_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--recipe=~/r.jsonl``, ``--out=~/x`` (a shell expands no ``~`` after ``=``): the CLI
    looked for ``./~/r.jsonl``, or said there is no folder ``./~``."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", os.fspath(home))
    kernel = HotKernel(os.fspath(work / "run"), poll_interval_sec=0.0)
    HotClient(os.fspath(work / "run")).set({"w": 1.0})
    kernel.apply({"step": 1, "metrics": {"loss": 0.5}})
    kernel.close()
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    env["HOME"] = os.fspath(home)

    def hotcb(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hotcb", "--dir", "run", *argv], cwd=work,
                              env=env, capture_output=True, text=True, timeout=60)  # fmt: skip

    done = hotcb("recipe", "export", "--out=~/r.jsonl")
    assert done.returncode == 0, done.stderr
    assert (home / "r.jsonl").exists() and not (work / "~").exists()
    done = hotcb("recipe", "validate", "--recipe=~/r.jsonl")
    assert done.returncode == 0, done.stderr
