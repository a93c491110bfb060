"""``allowed_code_dirs`` holds for the bytes that run: a ``source_capture`` (in a command, a
replayed recipe, a checkpoint) runs only from a file inside an allowed folder."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from hotcb import HotClient
from hotcb.testing import read_ledger


def _payload(marker: Any) -> bytes:
    return (
        f"with open({os.fspath(marker)!r}, 'a') as f:\n    f.write('ran')\n"
        "class P:\n    def handle(self, event, env):\n        pass\n"
    ).encode()


def _do(kernel: Any, client: HotClient, cid: str, step: int) -> dict[str, Any]:
    kernel.apply({"step": step})
    return client.wait(cid, timeout=5)


def _load(client: HotClient, ident: str, path: str, capture: dict[str, str]) -> str:
    target = {"kind": "python_file", "path": path, "symbol": "P"}
    return client.send("cb", "load", id=ident, target=target, init={}, source_capture=capture)


def test_a_capture_outside_the_allowed_code_dirs_is_refused(kernel_factory, tmp_path):
    """A command names a file of the allowed folder that does not exist, and a capture in the
    run directory (where whoever can append commands can write): refused, also when the
    capture's path reaches it through the allowed folder (a symlink, ``..``)."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    marker = tmp_path / "ran.marker"
    data = _payload(marker)
    sha = hashlib.sha256(data).hexdigest()
    kernel = kernel_factory(allowed_code_dirs=[os.fspath(allowed)])
    client = HotClient(kernel.run_dir)
    notes = tmp_path / "run" / "notes.py"
    notes.write_bytes(data)
    sources = os.path.join(kernel.run_dir, "hotcb.sources")
    os.makedirs(sources, exist_ok=True)
    with open(os.path.join(sources, f"{sha}.py"), "wb") as f:
        f.write(data)
    (allowed / "link.py").symlink_to(notes)
    gone = os.fspath(allowed / "does_not_exist.py")
    paths = ["notes.py", f"hotcb.sources/{sha}.py", os.fspath(allowed / "link.py"),
             os.fspath(allowed / ".." / "run" / "notes.py")]  # fmt: skip
    for step, path in enumerate(paths):
        cid = _load(client, "evil", gone, {"sha256": sha, "path": path})
        entry = _do(kernel, client, cid, step)
        assert entry["decision"] == "rejected", (path, entry)
        err = entry["error"]
        assert "outside the allowed code directories" in err and "allowed_code_dirs" in err, err
        assert sources in err  # how to allow it
    assert not marker.exists()
    assert kernel.module("cb").get("evil") is None


def test_a_capture_inside_the_allowed_code_dirs_still_replays(kernel_factory, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    marker = tmp_path / "ran.marker"
    data = _payload(marker)
    sha = hashlib.sha256(data).hexdigest()
    (allowed / "cb.py").write_bytes(data)
    kernel = kernel_factory(allowed_code_dirs=[os.fspath(allowed)])
    client = HotClient(kernel.run_dir)
    first = _do(
        kernel, client, client.cb_load("a", file=os.fspath(allowed / "cb.py"), symbol="P"), 0
    )
    assert first["decision"] == "applied", first
    # the run's own capture, while the original still has that content: it is that code
    replay = _do(
        kernel, client, _load(client, "b", os.fspath(allowed / "cb.py"), first["source_capture"]), 1
    )
    assert replay["decision"] == "applied", replay
    # a capture kept inside an allowed folder
    (allowed / "kept.py").write_bytes(data)
    os.remove(allowed / "cb.py")
    kept = {"sha256": sha, "path": os.fspath(allowed / "kept.py")}
    entry = _do(kernel, client, _load(client, "c", os.fspath(allowed / "cb.py"), kept), 2)
    assert entry["decision"] == "applied", entry
    # the original gone, the run's captures folder allowed on purpose
    sources = os.path.join(kernel.run_dir, "hotcb.sources")
    k2 = kernel_factory(
        os.fspath(tmp_path / "run2"), allowed_code_dirs=[os.fspath(allowed), sources]
    )
    c2 = HotClient(k2.run_dir)
    entry = _do(k2, c2, _load(c2, "d", os.fspath(allowed / "cb.py"), first["source_capture"]), 0)
    assert entry["decision"] == "rejected"  # run2's captures folder is not run's
    k3 = kernel_factory(allowed_code_dirs=[os.fspath(allowed), sources])
    c3 = HotClient(k3.run_dir)
    entry = _do(k3, c3, _load(c3, "e", os.fspath(allowed / "cb.py"), first["source_capture"]), 3)
    assert entry["decision"] == "applied", entry


def test_a_replayed_recipe_runs_no_capture_outside_the_allowed_code_dirs(
    kernel_factory, tmp_path, cli
):
    """A recipe exported from a run that loaded ``allowed/cb.py``, replayed with ``hotcb
    freeze --recipe`` after that file changed: the freeze copies the captured version into the
    run's ``hotcb.sources/``, and the guard refuses to run it from there."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    marker = tmp_path / "ran.marker"
    (allowed / "cb.py").write_bytes(_payload(marker))
    first = kernel_factory(os.fspath(tmp_path / "first"))
    client = HotClient(first.run_dir)
    loaded = _do(
        first, client, client.cb_load("rec", file=os.fspath(allowed / "cb.py"), symbol="P"), 2
    )
    assert loaded["decision"] == "applied", loaded
    os.remove(marker)
    first.close()
    recipe = os.fspath(tmp_path / "exported.recipe.jsonl")
    done = cli(first.run_dir, "recipe", "export", "--out", recipe)
    assert done.returncode == 0, done.stderr
    (allowed / "cb.py").write_text("class P:\n    def handle(self, event, env):\n        pass\n")

    kernel = kernel_factory(allowed_code_dirs=[os.fspath(allowed)])
    kernel.apply({"step": 0})
    done = cli(kernel.run_dir, "freeze", "--mode", "replay", "--recipe", recipe)
    assert done.returncode == 0, done.stderr
    for step in range(1, 5):
        kernel.apply({"step": step})
    kernel.flush()
    loads = [e for e in read_ledger(kernel.run_dir) if e.get("op") == "load"]
    assert len(loads) == 1 and loads[0]["source"] == "recipe", loads
    assert loads[0]["decision"] == "rejected", loads[0]
    assert "outside the allowed code directories" in loads[0]["error"]
    sha = loaded["source_capture"]["sha256"]
    assert os.path.exists(os.path.join(kernel.run_dir, "hotcb.sources", f"{sha}.py"))
    assert not marker.exists()
