"""Network filesystems: detected cheaply, and a writer on another host is warned."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from hotcb import HotClient, HotKernel
from hotcb.runfiles import filesystem_type, is_network_fs


def test_filesystem_type_picks_the_longest_mount_point(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "server:/export /mnt/shared nfs4 rw 0 0\n"
        "tmpfs /mnt/shared/tmp tmpfs rw 0 0\n"
    )
    assert filesystem_type("/home/me/run", str(mounts)) == "ext4"
    assert filesystem_type("/mnt/shared/runs/a", str(mounts)) == "nfs4"
    assert filesystem_type("/mnt/shared/tmp/x", str(mounts)) == "tmpfs"
    assert filesystem_type("/mnt/sharedother", str(mounts)) == "ext4"
    assert filesystem_type("/x", str(tmp_path / "missing")) is None
    assert is_network_fs("nfs4") and is_network_fs("cifs") and not is_network_fs("ext4")


def test_kernel_records_its_filesystem(tmp_path: Path) -> None:
    kernel = HotKernel(tmp_path, metrics_collector=False)
    kernel.apply({"step": 0})
    kernel.close()
    meta = json.loads((tmp_path / "hotcb.run.json").read_text())
    assert meta["filesystem"] == filesystem_type(str(tmp_path))
    assert meta["host"] == socket.gethostname()


def test_a_writer_on_another_host_of_an_nfs_run_is_warned_once(tmp_path: Path) -> None:
    (tmp_path / "hotcb.run.json").write_text(
        json.dumps({"host": "trainer-node-7", "filesystem": "nfs4"})
    )
    client = HotClient(tmp_path)
    with pytest.warns(RuntimeWarning, match="trains on trainer-node-7.*hotcb serve"):
        client.opt(lr=1e-3)
    client.opt(lr=2e-3)  # once per client: no second warning (warnings are errors here)
    assert len((tmp_path / "hotcb.commands.jsonl").read_text().splitlines()) == 2


def test_a_local_writer_is_not_warned(tmp_path: Path) -> None:
    (tmp_path / "hotcb.run.json").write_text(
        json.dumps({"host": socket.gethostname(), "filesystem": "nfs4"})
    )
    HotClient(tmp_path).opt(lr=1e-3)  # any warning would fail the test (filterwarnings=error)


def test_status_warns_about_a_network_filesystem(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "hotcb.run.json").write_text(
        json.dumps({"host": "trainer-node-7", "filesystem": "nfs4", "pid": 1})
    )
    out = cli(str(tmp_path), "status").stdout
    assert "on nfs4: send commands from trainer-node-7 or through 'hotcb serve' there" in out
