"""A run folder another user's training wrote (or made read-only): a command from this user
cannot be written. The CLI said only "[Errno 13] Permission denied" and the dashboard answered
a bare 500 with a traceback in its log; now both say whose file it is and what to do."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from hotcb import HotClient, HotKernel
from hotcb.errors import JournalWriteError

NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root, to act as the OS user 'nobody' on root's run"
)


@pytest.fixture
def roots_run() -> Iterator[str]:
    """A run root's training made, in a folder anyone may read (tmp_path is root's only)."""
    top = tempfile.mkdtemp(prefix="hotcb-shared-")
    os.chmod(top, 0o755)
    run = os.path.join(top, "r")
    kernel = HotKernel(run, poll_interval_sec=0.0)
    kernel.apply({"step": 1, "metrics": {"loss": 1.0}})
    kernel.close()
    yield run
    shutil.rmtree(top)


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_a_command_to_another_users_run_says_whose_file_it_is(roots_run: str) -> None:
    with as_nobody(), pytest.raises(JournalWriteError) as caught:
        HotClient(roots_run).set({"lr": 0.001})
    said = str(caught.value)
    assert "hotcb.commands.jsonl: permission denied (the file belongs to root, mode 0644)" in said
    assert "umask 002" in said and "hotcb serve" in said


def test_the_dashboard_refuses_it_with_a_403_that_says_why(
    roots_run: str, live_server: Any
) -> None:
    srv = live_server(root=os.path.dirname(roots_run))
    with srv.client() as c, as_nobody():  # the server's writes, as a user who may not
        r = c.post("/api/runs/r/commands", json={"module": "control", "op": "pause"})
    assert r.status_code == 403, r.text
    assert "belongs to root" in r.json()["detail"]
