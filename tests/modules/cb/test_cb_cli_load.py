"""``hotcb cb load``'s arguments: ``--init`` values and the id, in any order; help for every
flag; the events docs/callbacks.md says the adapters send are the ones they send."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from hotcb import HotClient

CB = """
class S:
    def __init__(self, k=0, j=0, z=0):
        self.k, self.j, self.z = k, j, z

    def handle(self, event, env):
        pass
"""
ROOT = Path(__file__).resolve().parents[3]


def _commands(run_dir: str) -> list[dict[str, Any]]:
    with open(os.path.join(run_dir, "hotcb.commands.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_an_id_after_the_init_values_is_the_id(kernel_factory, write_cb, cli):
    kernel = kernel_factory()
    path = write_cb(CB)
    base = ["cb", "load", "--file", path, "--symbol", "S"]
    for args in (
        [*base, "--init", "k=1", "myid"],  # argparse gave "myid" to --init
        [*base, "--init", "k=1", "--init", "j=2", "z=3", "two"],  # repeated, and several
        ["cb", "load", "old", *base[2:], "--init", "k=1", "j=2"],  # the usage of before
    ):
        done = cli(kernel.run_dir, *args)
        assert done.returncode == 0, (args, done.stderr)
    got = [(c["id"], c["init"]) for c in _commands(kernel.run_dir)]
    assert got == [("myid", {"k": 1}), ("two", {"k": 1, "j": 2, "z": 3}),
                   ("old", {"k": 1, "j": 2})]  # fmt: skip
    kernel.apply({"step": 0})
    client = HotClient(kernel.run_dir)
    assert [client.wait(c["cmd_id"], timeout=5)["decision"] for c in _commands(kernel.run_dir)] == [
        "applied"
    ] * 3
    done = cli(kernel.run_dir, *base, "--init", "k=1")
    assert done.returncode == 2 and "needs the callback's id" in done.stderr
    done = cli(kernel.run_dir, "cb", "load", "x", *base[2:], "--init", "k=1", "y")
    assert done.returncode == 2 and "expected key=value, got 'y'" in done.stderr


def test_cb_load_help_explains_every_flag(cli):
    done = cli(None, "cb", "load", "--help")
    assert done.returncode == 0
    for flag in ("--enabled", "--disabled", "--symbol"):  # help text on the flag's line
        assert re.search(rf"^\s+{flag}( [A-Z]+)?\s+\w", done.stdout, re.M), flag
    assert "--init may be repeated" in " ".join(done.stdout.split())


def test_the_events_the_docs_name_are_the_adapters(cli):
    doc = (ROOT / "docs" / "callbacks.md").read_text()
    sentence = doc[doc.index("`handle(event, env)` is called") :].split("`env` is what")[0]
    named = set(re.findall(r"`([a-z_]+_(?:start|end))`", sentence))
    adapters = "".join(p.read_text() for p in (ROOT / "src" / "hotcb" / "adapters").glob("*.py"))
    sent = set(re.findall(r'"([a-z_]+_(?:start|end))"', adapters))
    assert named and named <= sent | {"train_step_end"}, named - sent
