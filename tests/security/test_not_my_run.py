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


def test_recipe_export_of_a_run_this_user_may_not_write_says_to_use_out(
    roots_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It failed naming a temporary file the user never heard of
    (``hotcb.recipe.jsonl.tmp.d2a2…``)."""
    from hotcb.cli import main

    HotClient(roots_run).set({"lr": 0.001})  # (as root: something in the ledger to export)
    kernel = HotKernel(roots_run, poll_interval_sec=0.0)
    kernel.apply({"step": 2})
    kernel.close()
    out = os.path.join(os.path.dirname(roots_run), "elsewhere.jsonl")
    assert main(["--dir", roots_run, "recipe", "export", "--out", out]) == 0  # (imports it all)
    capsys.readouterr()
    with as_nobody():  # (Python's own files may be root's only: nothing is imported as nobody)
        code = main(["--dir", roots_run, "recipe", "export"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{roots_run}/hotcb.recipe.jsonl: Permission denied" in err and "--out FILE" in err
    assert ".tmp." not in err


def test_a_private_launch_log_of_another_user_is_refused_with_the_reason(roots_run: str) -> None:
    """A second user's ``hotcb launch`` into a run another user launched: the log is private
    to its owner (0600), and the open failed with a bare PermissionError before the check that
    explains it."""
    from hotcb._launch import _open_log
    from hotcb.jsonl import RunFileRefusedError

    path = os.path.join(roots_run, "hotcb.launch.log")
    _open_log(path).close()  # root's launch
    with as_nobody(), pytest.raises(RunFileRefusedError, match=r"another user's file \(uid 0\)"):
        _open_log(path)
