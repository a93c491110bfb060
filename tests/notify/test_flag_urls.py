"""The quick flags' URLs and addresses are checked like a notify file's (exit 2, the same
message), and a delivery that finally failed says so on stderr."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import pytest

from hotcb import HotKernel, jsonl
from hotcb.notify import RECORDS, NotifyConfigError, Webhook, config_from_flags, deliver

#: What a URL that is no http(s) URL is told; the URL itself is not echoed (a typo's login,
#: token or Slack path went to the terminal and CI logs).
NO_SCHEME = "expected an http:// or https:// URL, got one with no scheme"
FTP = "expected an http:// or https:// URL, got one with scheme 'ftp'"
NO_HOST = "expected an http:// or https:// URL with a host, got one with none"


@pytest.mark.parametrize(
    ("flag", "url", "problem"),
    [("--notify-webhook", "ftp://x", FTP), ("--notify-webhook", "notaurl", NO_SCHEME),
     ("--notify-slack", "ftp://x", FTP), ("--notify-slack", "https://", NO_HOST),
     ("--notify-webhook", "htps://me:s3cret@host/hook?token=abc",
      "expected an http:// or https:// URL, got one with scheme 'htps'"),
     ("--notify-webhook", "https;//me:s3cret@host/hook?next=https://x", NO_SCHEME),
     # accepted, the crash alert's delivery died on it ("Port out of range 0-65535")
     ("--notify-slack", "http://me:s3cret@127.0.0.1:99999/x",
      "the URL's port is not a number from 0 to 65535")],
)  # fmt: skip
def test_a_bad_flag_url_is_refused_like_the_same_url_in_a_file(
    tmp_path: Any, cli: Any, flag: str, url: str, problem: str
) -> None:
    kind = flag.removeprefix("--notify-")
    cfg = tmp_path / "notify.json"
    cfg.write_text(json.dumps({"deliveries": [{"type": kind, "url": url}]}))
    in_file = cli(None, "notify", "--notify", str(cfg), "--check")
    assert in_file.returncode == 2, in_file.stdout + in_file.stderr
    assert problem in in_file.stderr

    by_flag = cli(None, "notify", flag, url, "--check")
    assert by_flag.returncode == 2, by_flag.stdout + by_flag.stderr
    assert "no problems" not in by_flag.stdout
    assert f"{flag} has 1 problem(s):\n  {problem}" in by_flag.stderr
    assert "Traceback" not in by_flag.stderr
    assert "s3cret" not in by_flag.stderr + in_file.stderr


def test_a_bad_flag_url_is_refused_before_any_round(tmp_path: Any, cli: Any) -> None:
    """``--once`` with a URL that cannot be delivered to: refused up front, nothing recorded
    as if it went out; ``hotcb launch`` refuses it before starting the training."""
    run = str(tmp_path / "run")
    _nan_run(run)
    done = cli(run, "notify", "--notify-webhook", "notaurl", "--once")
    assert done.returncode == 2, done.stdout + done.stderr
    assert NO_SCHEME in done.stderr
    assert "alert" not in done.stdout
    assert not os.path.exists(os.path.join(run, RECORDS))

    marker = tmp_path / "trained"
    launched = cli(str(tmp_path / "launched"), "launch", "--notify-slack", "ftp://x", "--",
                   sys.executable, "-c", f"open({str(marker)!r}, 'w')")  # fmt: skip
    assert launched.returncode == 2, launched.stdout + launched.stderr
    assert FTP in launched.stderr
    assert not marker.exists()


def test_every_bad_flag_is_listed() -> None:
    with pytest.raises(NotifyConfigError) as err:
        config_from_flags(None, ["https://ok.example/h", "ftp://x"], ["notaurl"], ["nobody"])
    assert err.value.problems == [
        f"--notify-webhook: {FTP}",
        f"--notify-slack: {NO_SCHEME}",
        "--notify-email: expected an address (name@host), got 'nobody'",
    ]
    config = config_from_flags(None, ["http://127.0.0.1:8/h"], ["https://hooks.example/T/B"])
    assert config is not None and len(config.deliveries) == 2


def test_a_delivery_that_finally_failed_says_so_on_stderr(
    tmp_path: Any, cli: Any, receiver: Any
) -> None:
    """Every attempt answered 500: the console gets one line with the channel, the target and
    the reason (the records had it already), and ``--once`` exits 1 (it exited 0: a script
    could not tell that the alert was lost)."""
    receiver.statuses = [500] * 8
    run = str(tmp_path / "run")
    _nan_run(run)
    cfg = tmp_path / "notify.json"
    cfg.write_text(json.dumps({
        "deliveries": [{"type": "webhook", "url": f"{receiver.url}/hook"},
                       {"type": "slack", "url": f"{receiver.url}/services/T/B/X"}],
        "retries": 1, "backoff": 0,
    }))  # fmt: skip
    done = cli(run, "notify", "--notify", str(cfg), "--once")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "alert nonfinite" in done.stdout
    lines = sorted(line for line in done.stderr.splitlines() if line.strip())  # in parallel
    assert lines == sorted(
        [
            f"hotcb notify: the webhook delivery of alert nonfinite to {receiver.url}/hook failed "
            "after 2 attempt(s): DeliveryError: HTTP 500 Internal Server Error",
            f"hotcb notify: the slack delivery of alert nonfinite to {receiver.url}/… failed "
            "after 2 attempt(s): DeliveryError: HTTP 500 Internal Server Error",
        ]
    ), done.stderr
    failed = [r for r in jsonl.iter_records(os.path.join(run, RECORDS))
              if r.get("kind") == "delivery" and r["status"] == "failed"]  # fmt: skip
    assert len(failed) == 2


def test_deliver_logs_a_final_failure_once(receiver: Any, caplog: Any) -> None:
    receiver.statuses = [500, 500, 200]
    records: list[dict[str, Any]] = []
    hook = Webhook(f"{receiver.url}/hook")
    with caplog.at_level(logging.WARNING, logger="hotcb.notify"):
        assert not deliver(hook, {"alert": "a"}, records.append, retries=1, backoff=0)
        assert deliver(hook, {"alert": "b"}, records.append, retries=1, backoff=0)
    assert [r["status"] for r in records] == ["retry", "failed", "ok"]
    assert [r.getMessage() for r in caplog.records] == [
        f"hotcb notify: the webhook delivery of alert a to {receiver.url}/hook failed after 2 "
        "attempt(s): DeliveryError: HTTP 500 Internal Server Error"
    ]


def _nan_run(run: str) -> None:
    """A closed run whose last loss is NaN: ``hotcb notify`` fires ``nonfinite`` on it."""
    k = HotKernel(run)
    for s in range(3):
        k.apply({"step": s, "metrics": {"loss": float("nan") if s == 2 else 1.0}})
    k.close()
