"""Where the dashboard's token may come from: ``HOTCB_TOKEN`` or ``--token-file`` (owner-only),
never a YAML config file (``--config`` / ``HOTCB_CONFIG``), whose permissions nothing checks;
and a blank ``HOTCB_TOKEN`` is no token (one is generated) rather than a token of spaces. Each
against the real ``hotcb serve`` command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

ENV = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}


def _serve_once(root: Any, *args: str, env: dict[str, str] | None = None) -> Any:
    """``hotcb --dir ROOT serve --port 0 ARGS`` for a config that is refused before it binds."""
    return subprocess.run(
        [sys.executable, "-m", "hotcb", "--dir", os.fspath(root), "serve", "--port", "0", *args],
        capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=60,
    )  # fmt: skip


def test_a_token_in_the_yaml_config_is_refused(tmp_path: Any, make_run: Any) -> None:
    """A ``token:`` in a config file was taken without a look at who can read the file (a
    ``--token-file`` that others can read is refused). Both ways of naming the file are
    refused, with one line that names the two places a token may come from."""
    make_run(tmp_path / "runs" / "r")
    config = tmp_path / "dash.yaml"
    config.write_text("port: 9001\ntoken: yaml-t0ken-value\n")
    config.chmod(0o644)
    for done in (
        _serve_once(tmp_path / "runs", "--config", str(config)),
        _serve_once(tmp_path / "runs", env={"HOTCB_CONFIG": str(config)}),
    ):
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert f"the dashboard config file {config} sets 'token'" in line
        assert "$HOTCB_TOKEN" in line and "--token-file" in line
        assert "yaml-t0ken-value" not in done.stdout + done.stderr


@pytest.mark.parametrize("blank", [" ", "   ", "\t\n"])
def test_a_blank_hotcb_token_is_no_token(
    tmp_path: Any, serve: Any, make_run: Any, blank: str
) -> None:
    """``HOTCB_TOKEN=" "`` was the token: anyone who sent ``?token=%20`` got in. Blank is now empty: a token is generated and printed, as with no HOTCB_TOKEN."""
    make_run(tmp_path / "runs" / "r")
    srv = serve(tmp_path / "runs", env={"HOTCB_TOKEN": blank})
    (token,) = re.findall(r"\?token=(\S+)", srv.stdout())
    assert token.strip() and len(token) >= 20
    assert httpx.get(srv.url + "/api/runs", headers={"Authorization": "Bearer " + token}).is_success
    # a header cannot end in blanks (httpx refuses to send one); ?token= can hold them
    for wrong in (blank, " ", ""):
        r = httpx.get(srv.url + "/api/runs", params={"token": wrong})
        assert r.status_code == 401, repr(wrong)
    assert httpx.get(srv.url + "/api/runs", headers={"Authorization": "Bearer"}).status_code == 401


def test_hotcb_token_is_stripped_like_a_token_file(
    tmp_path: Any, serve: Any, make_run: Any
) -> None:
    """``HOTCB_TOKEN="$(cat file)"`` or an editor's newline: the token is what is between the
    blanks, as ``--token-file`` reads it."""
    make_run(tmp_path / "runs" / "r")
    srv = serve(tmp_path / "runs", env={"HOTCB_TOKEN": "  env-t0ken-value\n"})
    assert srv.stdout().count("?token=env-t0ken-value\n") == 1
    r = httpx.get(srv.url + "/api/runs", headers={"Authorization": "Bearer env-t0ken-value"})
    assert r.status_code == 200


def test_a_token_that_is_not_printable_ascii_is_refused_unshown(tmp_path: Any) -> None:
    """A token travels in an HTTP header, where ``tök€`` arrives differently from every client
    (the page's fetch cannot send it at all): ``hotcb serve`` refuses it (exit 2), naming where
    it came from, and without printing the token."""
    env = {**os.environ, "HOTCB_TOKEN": "s3cret-tök€"}
    out = subprocess.run(
        [sys.executable, "-m", "hotcb", "--dir", os.fspath(tmp_path), "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert out.stderr.startswith("hotcb: error: HOTCB_TOKEN: the token must be printable ASCII")
    assert "s3cret" not in out.stdout + out.stderr
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-tök€\n", encoding="utf-8")
    token_file.chmod(0o600)
    del env["HOTCB_TOKEN"]
    out = subprocess.run(
        [sys.executable, "-m", "hotcb", "--dir", os.fspath(tmp_path), "serve", "--port", "0",
         "--token-file", os.fspath(token_file)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "--token-file: the token must be printable ASCII" in out.stderr
    assert "s3cret" not in out.stdout + out.stderr


def test_a_short_token_of_ones_own_is_warned_about(
    tmp_path: Any, serve: Any, make_run: Any
) -> None:
    """``HOTCB_TOKEN=abc123`` protects little: the server says so at start (it still runs,
    with that token); a long one, or the generated one, gets no such warning."""
    make_run(tmp_path / "runs" / "r")
    srv = serve(tmp_path / "runs", env={"HOTCB_TOKEN": "abc123"})
    (warning,) = [line for line in srv.stderr().splitlines() if "warning" in line]
    assert "the token is 6 characters long" in warning and "token_urlsafe" in warning
    assert "abc123" not in srv.stderr()
    r = httpx.get(srv.url + "/api/runs", headers={"Authorization": "Bearer abc123"})
    assert r.status_code == 200
    srv.stop()
    srv = serve(tmp_path / "runs", env={"HOTCB_TOKEN": "a-long-enough-t0ken-of-mine"})
    assert "warning" not in srv.stderr()
    srv.stop()
    assert "warning" not in serve(tmp_path / "runs").stderr()
