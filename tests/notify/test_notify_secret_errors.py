"""A delivery's secrets stay out of what the notifier records and logs. The ``target`` was
redacted, but the error text went whole to ``RUN/hotcb.notify.jsonl`` (0644) and stderr: a
webhook URL with a stray space recorded ``'/hook?token=SECRET&x=1 2'``, a header value with
a trailing line break (a YAML ``|`` block) ``Invalid header value b'Bearer SECRET\\n'``. The
notify config now refuses both, with their lines; and any error text is scrubbed of the
delivery's secrets before it is written, as a second layer."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import pytest

from hotcb import HotKernel, jsonl
from hotcb.notify import RECORDS, Alert, Email, Notifier, NotifyConfig, Slack, Webhook
from hotcb.notify._deliveries import scrub_secrets

SECRETS = ("QSECRET", "HDRSECRET", "SLACKSECRET", "PWSECRET")

BAD = """\
alerts:
  - {id: nan, kind: nonfinite}
deliveries:
  - type: webhook
    url: "{url}/hook?token=QSECRET&x=1 2"
    headers:
      Authorization: |
        Bearer HDRSECRET
      X-Team: ml
  - type: slack
    url: "{url}/services/T0/B0/SLACKSECRET\\n"
"""


def test_config_refuses_a_url_with_whitespace_and_a_header_with_a_line_break(
    tmp_path: Any, cli: Any
) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text(BAD.replace("{url}", "https://example.com"))
    done = cli(None, "notify", "--notify", os.fspath(path), "--check")
    assert done.returncode == 2, done
    assert "line 5: deliveries[0].url: a space at character 43: a URL holds no whitespace" in (
        done.stderr
    ), done.stderr
    header = ("line 7: deliveries[0].headers.Authorization: a line break (LF) at character 17 "
              "of the value: a header value holds no control character")  # fmt: skip
    assert header in done.stderr, done.stderr
    assert "line 11: deliveries[1].url: a line break (LF) at character" in done.stderr
    assert "X-Team" not in done.stderr  # a good header is no problem
    for secret in SECRETS:  # the problem says where, never what
        assert secret not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("X-Token", "abc\r\nX-Injected: 1", "a carriage return (CR) at character 4 of the value"),
        ("X-Token", "abc\x1b[2J", "the control character '\\x1b' at character 4 of the value"),
        ("X Token", "abc", "a space in the header name"),
        ("X-Token:", "abc", "a ':' in the header name"),
    ],
)
def test_config_refuses_control_characters_in_header_names_and_values(
    tmp_path: Any, cli: Any, name: str, value: str, problem: str
) -> None:
    path = tmp_path / "notify.json"
    hook = {"type": "webhook", "url": "https://example.com/hook", "headers": {name: value}}
    path.write_text(json.dumps({"deliveries": [hook]}))
    done = cli(None, "notify", "--notify", os.fspath(path), "--check")
    assert done.returncode == 2 and f"deliveries[0].headers.{name}: {problem}" in done.stderr, (
        done.stderr
    )


def test_a_quick_flag_url_with_a_space_is_refused_without_echoing_it(cli: Any) -> None:
    done = cli(None, "notify", "--notify-webhook", "https://example.com/h?token=QSECRET&x=1 2",
               "--check")  # fmt: skip
    assert done.returncode == 2
    assert "a space at character 40: a URL holds no whitespace" in done.stderr, done.stderr
    assert "QSECRET" not in done.stderr


def test_delivery_errors_hold_no_secret(
    run_dir: str, receiver: Any, caplog: Any, capsys: Any
) -> None:
    """Deliveries the config would refuse (built in code, as a second layer): their errors,
    in the records file and on stderr, hold no secret; a good delivery with a token in its
    URL still goes through."""
    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    try:
        for step in range(3):
            kernel.apply({"step": step, "metrics": {"loss": 1.0 if step < 2 else math.nan}})
    finally:
        kernel.close()
    base = receiver.url.replace("://", "://me:PWSECRET@")
    deliveries = (
        Webhook(f"{receiver.url}/ok?token=QSECRET"),  # delivered: nothing to scrub
        Webhook(f"{base}/hook?token=QSECRET&x=1 2"),
        Webhook(f"{receiver.url}/hook", {"Authorization": "Bearer HDRSECRET\n"}),
        Slack(f"{receiver.url}/services/T0/B0/SLACKSECRET 2"),
    )
    config = NotifyConfig(alerts=(Alert("nan", "nonfinite"),), deliveries=deliveries,
                          retries=1, backoff=0.0)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hotcb.notify"):
        notifier = Notifier(run_dir, config)
        notifier.step()
        assert notifier.close(30)
    assert len(receiver.wait_for("/ok", 1)) == 1
    records = list(jsonl.iter_records(os.path.join(run_dir, RECORDS)))
    failed = [r for r in records if r.get("kind") == "delivery" and r["status"] != "ok"]
    assert len(failed) == 6, records  # 3 deliveries, 2 attempts each
    errors = " ".join(r["error"] for r in failed)
    assert "InvalidURL" in errors and "Invalid header value" in errors and "***" in errors
    with open(os.path.join(run_dir, RECORDS)) as f:
        written = f.read()
    said = caplog.text + capsys.readouterr().err
    assert said.count("failed after 2 attempt(s)") == 3, said
    for secret in SECRETS:
        assert secret not in written, written
        assert secret not in said, said


def test_scrub_secrets_hides_every_form_a_secret_takes(monkeypatch: Any) -> None:
    hook = Webhook("https://me:p%40ssWORD@h.example/hook?api-key=QSECRET",
                   {"Authorization": "Bearer HDRSECRET\n", "X-Team": "ml"})  # fmt: skip
    text = (
        "Bearer HDRSECRET\\n b'Bearer HDRSECRET\\n' HDRSECRET QSECRET p%40ssWORD p@ssWORD "
        "bWU6cEBzc1dPUkQ= ml team"
    )  # fmt: skip (the Basic auth of me:p@ssWORD)
    scrubbed = scrub_secrets(text, hook)
    for secret in ("HDRSECRET", "QSECRET", "ssWORD", "bWU6cEBzc1dPUkQ="):
        assert secret not in scrubbed, scrubbed
    assert scrubbed.endswith(" ml team")  # too short to be a secret: left
    monkeypatch.setenv("HOTCB_SMTP_PASSWORD", "SMTPSECRET")
    mail = Email("smtp.example", 587, "a@example", ("b@example",), starttls=True, user="me")
    said = scrub_secrets("535 auth failed for AG1lAFNNVFBTRUNSRVQ= SMTPSECRET", mail)
    assert said == "535 auth failed for *** ***"  # AUTH PLAIN's base64 and the password
