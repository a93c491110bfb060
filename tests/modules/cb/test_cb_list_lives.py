"""``cb list`` after the trainer starts again in its run directory: a restart without the
checkpoint has none of the old callbacks, a restart that restores it keeps them."""

from __future__ import annotations

import json
from typing import Any

from hotcb import HotClient, HotKernel

CB = """
class C:
    def handle(self, event, env):
        pass
"""


def _kernel(run_dir: str) -> HotKernel:
    return HotKernel(run_dir, poll_interval_sec=0.0, fsync_ledger=False)


def _states(cli: Any, run_dir: str) -> dict[str, str]:
    done = cli(run_dir, "cb", "list", "--json")
    assert done.returncode == 0, done.stderr
    return {c["id"]: c["state"] for c in json.loads(done.stdout)}


def test_cb_list_follows_the_trainers_lives(run_dir, write_cb, cli):
    path = write_cb(CB)
    first = _kernel(run_dir)
    client = HotClient(run_dir)
    cid = client.cb_load("v", file=path, symbol="C")
    first.apply({"step": 0})
    assert client.wait(cid, timeout=5)["decision"] == "applied"
    state = first.state_dict()
    first.close()
    assert _states(cli, run_dir) == {"v": "enabled"}  # the run ended: its last life's

    restored = _kernel(run_dir)  # a new life that restores the checkpoint (nothing after it)
    restored.load_state_dict(state)
    restored.apply({"step": 1})
    restored.flush()
    assert _states(cli, run_dir) == {"v": "enabled"}
    restored.close()

    fresh = _kernel(run_dir)  # a new life without the checkpoint: no callbacks
    fresh.apply({"step": 0})
    fresh.flush()
    assert _states(cli, run_dir) == {"v": "not loaded"}
    listing = cli(run_dir, "cb", "list")
    assert "not loaded" in listing.stdout and "without restoring a checkpoint" in listing.stdout
    cid = client.cb("disable", "v")  # what the trainer says agrees
    fresh.apply({"step": 1})
    assert "no callback 'v' is loaded" in client.wait(cid, timeout=5)["error"]
    cid = client.cb_load("v", file=path, symbol="C")  # loaded again in this life
    fresh.apply({"step": 2})
    assert client.wait(cid, timeout=5)["decision"] == "applied"
    assert _states(cli, run_dir) == {"v": "enabled"}
    fresh.close()
