"""Run files are created as the umask says: a folder a group shares (umask 002) works for
every member."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hotcb import HotClient, HotKernel
from hotcb.runfiles import RunPaths


def test_run_files_follow_the_umask_for_a_group_shared_folder(tmp_path: Path) -> None:
    """With ``umask 002`` (a folder a group shares) the commands file, the ledger and the
    metrics were still created ``0644``: a colleague's ``hotcb set`` failed with Permission
    denied, and a trainer of theirs in the run lost its ledger entries."""
    run = os.fspath(tmp_path / "run")
    old = os.umask(0o002)
    try:
        kernel = HotKernel(run, poll_interval_sec=0.0)
        HotClient(run).set({"w": 2.0})
        kernel.apply({"step": 1, "metrics": {"loss": 1.0}})
        kernel.close()
    finally:
        os.umask(old)
    paths = RunPaths(run)
    for path in (paths.commands, paths.ledger, paths.metrics):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o664, path
