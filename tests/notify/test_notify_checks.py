"""``hotcb notify`` refuses up front what would leave it silent or spinning: an ``autopilot``
alert naming record kinds the autopilot never writes, and an ``--interval`` that is not a
positive number of seconds."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

import hotcb.autopilot.engine as engine
from hotcb.autopilot.engine import RECORD_KINDS

DELIVERY = '  - {type: webhook, url: "https://example.com/hotcb"}\n'


def _notify_file(tmp_path: Path, records: str) -> Path:
    path = tmp_path / "notify.yaml"
    path.write_text(f"alerts:\n  - {{id: pilot, kind: autopilot, records: {records}}}\n"
                    f"deliveries:\n{DELIVERY}")  # fmt: skip
    return path


def test_check_refuses_misspelt_autopilot_record_kinds(tmp_path: Path, cli: Any) -> None:
    """``records: [actoin, propsal]`` passed ``--check`` (rc 0), and the alert never fired:
    no record of the autopilot has such a kind."""
    path = _notify_file(tmp_path, "[actoin, propsal]")
    done = cli(None, "notify", "--notify", os.fspath(path), "--check")
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    kinds = ", ".join(RECORD_KINDS)
    assert done.stderr.splitlines() == [
        f"hotcb: error: {path} has 2 problem(s):",
        f"  line 2: alerts[0].records[0]: 'actoin' is not one of {kinds}",
        f"  line 2: alerts[0].records[1]: 'propsal' is not one of {kinds}",
    ], done.stderr


def test_check_accepts_every_kind_the_autopilot_writes(tmp_path: Path, cli: Any) -> None:
    path = _notify_file(tmp_path, f"[{', '.join(RECORD_KINDS)}]")
    done = cli(None, "notify", "--notify", os.fspath(path), "--check")
    assert done.returncode == 0, done.stderr
    assert "no problems" in done.stdout


def test_record_kinds_name_every_kind_the_engine_writes() -> None:
    """The list the check uses is the engine's own: a kind it writes and the list misses
    would be refused in a notify file."""
    source = Path(engine.__file__).read_text()
    written = set(re.findall(r'"kind": "([a-z_]+)"', source))
    assert written and written <= set(RECORD_KINDS), written - set(RECORD_KINDS)


@pytest.mark.parametrize("interval", ["-1", "0", "nan"])
def test_a_non_positive_interval_is_a_usage_error(tmp_path: Path, cli: Any, interval: str) -> None:
    """``--interval -1`` started, then died with ``sleep length must be non-negative``;
    ``--interval 0`` spun a core while it waited for the run."""
    done = cli(os.fspath(tmp_path / "not-yet"), "notify", "--notify-webhook",
               "https://example.com/hotcb", "--interval", interval, timeout=30)  # fmt: skip
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith(
        f"hotcb notify: error: argument --interval: must be a number of seconds > 0, got {interval}"
    ), done.stderr
    assert not done.stdout  # it never started waiting
