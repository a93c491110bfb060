"""Shared fixtures and helpers for hotcb's tests (kept small: other test folders import them).

- ``run_dir``: a fresh run directory (a ``str``) under pytest's tmp_path.
- ``cli(run_dir, *args)``: run the real ``hotcb`` command in a subprocess.
- ``start_trainer(run_dir, trace, **options)``: start the real trainer process
  (``python -m hotcb.testing.trainer``) as a :class:`Trainer` (trace reading, waiting on a
  step); it is killed at the end of the test if still running.
- In CI (``CI`` set), a skip fails the session unless ``ALLOWED_SKIPS`` or an
  ``@pytest.mark.allow_skip(reason=...)`` marker allows it (``_skip_guard.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from _skip_guard import install as install_skip_guard
from hotcb.testing import trainer_command, wait_for

#: Skips that may pass in CI, as ``(pattern of the skip reason, why it is fine)``; every other
#: skip fails a CI session (``_skip_guard.py``): what a test needs must be installed there.
ALLOWED_SKIPS: tuple[tuple[str, str], ...] = (
    (
        r"^needs root to run the attacker as the OS user 'nobody'",
        "the attacker must be another OS user, and only root can switch to one; CI runners "
        "are usually not root (tests/security/test_dashboard_token.py)",
    ),
    (
        r"^mounting a tmpfs needs root on Linux",
        "a full disk is simulated with a tiny tmpfs, which only root on Linux can mount; the "
        "RLIMIT_FSIZE tests cover the same paths everywhere (tests/security/test_journal.py)",
    ),
    (
        r"^cannot mount a tmpfs here",
        "root in a container without CAP_SYS_ADMIN cannot mount either (same tests)",
    ),
    (
        r"^CIFAR-10 not present locally",
        "for a future test on CIFAR-10: the data set is never downloaded by the tests",
    ),
)

#: Environment for subprocesses: never inherit a run directory from the developer's shell.
SUBPROCESS_ENV = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}


def pytest_configure(config: pytest.Config) -> None:
    install_skip_guard(config, ALLOWED_SKIPS)


@pytest.fixture
def small_fs(tmp_path: Any) -> Iterator[str]:
    """A 256 KiB tmpfs (root on Linux only; skipped where it cannot be mounted)."""
    mnt = os.fspath(tmp_path / "small_fs")
    os.mkdir(mnt)
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux (RLIMIT_FSIZE tests cover the rest)")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)


@pytest.fixture
def run_dir(tmp_path: Any) -> str:
    """A fresh, not yet created run directory."""
    return os.fspath(tmp_path / "run")


def hotcb_cli(
    run_dir: str | None, *args: str, timeout: float = 60, cwd: str | None = None
) -> subprocess.CompletedProcess:
    """``hotcb --dir RUN ARGS...`` as a real subprocess (in ``cwd``: a relative ``RUN`` is
    taken from there); returns the completed process."""
    argv = [sys.executable, "-m", "hotcb"]
    if run_dir is not None:
        argv += ["--dir", run_dir]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=timeout, env=SUBPROCESS_ENV, cwd=cwd
    )


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` (missing file: empty)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


class Trainer:
    """The real trainer in a subprocess, with its per-step trace."""

    def __init__(self, run_dir: str, trace: str, **options: Any) -> None:
        self.run_dir = run_dir
        self.trace = trace
        options.setdefault("no_code_load", True)
        self.argv = trainer_command(run_dir, trace=trace, **options)
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=SUBPROCESS_ENV,
        )
        self._out: tuple[str, str] | None = None

    def steps(self) -> list[dict[str, Any]]:
        return read_jsonl(self.trace)

    def last_step(self) -> int:
        rows = self.steps()
        return rows[-1]["step"] if rows else -1

    def wait_step(self, step: int, timeout: float = 60) -> None:
        """Block until the trainer has traced ``step`` (fail fast if it died)."""

        def reached() -> bool:
            if self.proc.poll() is not None and self.last_step() < step:
                raise AssertionError(f"trainer exited early:\n{self.communicate()[1][-3000:]}")
            return self.last_step() >= step

        wait_for(reached, timeout, what=f"trainer step {step}")

    def communicate(self, timeout: float = 120) -> tuple[str, str]:
        if self._out is None:
            self._out = self.proc.communicate(timeout=timeout)
        return self._out

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        out, err = self.communicate(timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.communicate()


@pytest.fixture
def start_trainer() -> Iterator[Any]:
    """``start_trainer(run_dir, trace, **trainer_options) -> Trainer``; every trainer still
    running when the test ends is killed."""
    started: list[Trainer] = []

    def start(run_dir: str, trace: str, **options: Any) -> Trainer:
        t = Trainer(run_dir, trace, **options)
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill()


@pytest.fixture(scope="session")
def trainer_class() -> type[Trainer]:
    """The :class:`Trainer` process wrapper, for module-scoped fixtures that start their own."""
    return Trainer


@pytest.fixture(scope="session")
def cli() -> Any:
    """The :func:`hotcb_cli` runner, as a fixture (test folders need not import conftest)."""
    return hotcb_cli
