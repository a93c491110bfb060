"""E-mail over STARTTLS with a login, against a real SMTP server (aiosmtpd) that requires both:
a self-signed certificate made here (``cryptography``), AUTH PLAIN and AUTH LOGIN, the
password only from the environment."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hotcb.notify import Email, config_from_flags, deliver, load_notify_config
from hotcb.notify._config import NotifyConfigError

USER, PASSWORD = "trainer", "s3cret-pw"


def _self_signed(folder: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 / localhost and its key, both PEM; their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hotcb test SMTP")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


class Mailbox:
    """The messages the server accepted."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        from email import message_from_bytes

        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@dataclass
class TLSServer:
    host: str
    port: int
    cafile: str
    box: Mailbox
    logins: list[tuple[str, str, str]] = field(default_factory=list)  # mechanism, user, password


def _start(folder: Path, exclude: list[str]) -> Iterator[TLSServer]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    cert, key = _self_signed(folder)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = TLSServer("127.0.0.1", port, cert, Mailbox())

    def authenticator(smtp: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        login, password = data.login.decode(), data.password.decode()
        server.logins.append((mechanism, login, password))
        # handled=False: the server answers (235, or 535 on a failure)
        return AuthResult(success=(login, password) == (USER, PASSWORD), handled=False)

    ctl = Controller(
        server.box,
        hostname="127.0.0.1",
        port=port,
        tls_context=tls,
        require_starttls=True,  # nothing but EHLO/STARTTLS before TLS
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticator,
        auth_exclude_mechanism=exclude,
    )
    ctl.start()
    try:
        yield server
    finally:
        ctl.stop()


@pytest.fixture(params=["PLAIN", "LOGIN"])
def tls_server(request: Any, tmp_path: Path) -> Iterator[TLSServer]:
    """An SMTP server that requires STARTTLS and a login, offering one AUTH mechanism."""
    exclude = [m for m in ("PLAIN", "LOGIN") if m != request.param]
    yield from _start(tmp_path, exclude)


def _records(delivery: Any) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deliver(delivery, {"alert": "loss_high", "message": "loss=9", "run": "/r/exp1"}, got.append,
            retries=0)  # fmt: skip
    return got


def test_starttls_and_login_with_the_server_certificate_as_ca(
    tls_server: TLSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_SMTP_PW", PASSWORD)
    mail = Email(tls_server.host, tls_server.port, "hotcb@example.com", ("me@example.com",),
                 starttls=True, user=USER, password_env="MY_SMTP_PW",
                 cafile=tls_server.cafile)  # fmt: skip
    (rec,) = _records(mail)
    assert rec["status"] == "ok", rec
    (msg,) = tls_server.box.messages
    assert msg["Subject"] == "[hotcb] exp1: loss_high: loss=9"
    ((mechanism, user, password),) = tls_server.logins
    assert (user, password) == (USER, PASSWORD) and mechanism in ("PLAIN", "LOGIN")


def test_a_self_signed_certificate_is_refused_unless_trusted_or_verification_is_off(
    tls_server: TLSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTCB_SMTP_PASSWORD", PASSWORD)
    base = dict(starttls=True, user=USER)  # the password from $HOTCB_SMTP_PASSWORD (default)
    untrusted = Email(tls_server.host, tls_server.port, "a@b.c", ("me@example.com",), **base)
    (rec,) = _records(untrusted)
    assert rec["status"] == "failed" and "CERTIFICATE_VERIFY_FAILED" in rec["error"]
    assert tls_server.logins == []  # the password was never sent to an unverified server

    insecure = Email(tls_server.host, tls_server.port, "a@b.c", ("me@example.com",),
                     tls_verify=False, **base)  # fmt: skip
    assert _records(insecure)[0]["status"] == "ok"
    assert len(tls_server.box.messages) == 1


def test_a_wrong_or_missing_password_is_recorded_and_never_shown(
    tls_server: TLSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    mail = Email(tls_server.host, tls_server.port, "a@b.c", ("me@example.com",), starttls=True,
                 user=USER, password_env="MY_SMTP_PW", cafile=tls_server.cafile)  # fmt: skip
    monkeypatch.delenv("MY_SMTP_PW", raising=False)
    (rec,) = _records(mail)
    assert rec["status"] == "failed" and "$MY_SMTP_PW is not set" in rec["error"]
    monkeypatch.setenv("MY_SMTP_PW", "wrong-pw")
    (rec,) = _records(mail)
    assert rec["status"] == "failed" and "SMTPAuthenticationError" in rec["error"]
    assert "wrong-pw" not in json.dumps(rec) and tls_server.box.messages == []


def test_a_login_without_starttls_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTCB_SMTP_PASSWORD", PASSWORD)
    mail = Email("127.0.0.1", 9, "a@b.c", ("me@example.com",), user=USER)
    (rec,) = _records(mail)  # refused before any connection
    assert rec["status"] == "failed" and "unencrypted" in rec["error"]


def test_the_file_and_the_flags_configure_tls(
    tmp_path: Path, tls_server: TLSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "notify.json"
    cfg.write_text(json.dumps({"deliveries": [{
        "type": "email", "host": tls_server.host, "port": tls_server.port, "from": "a@b.c",
        "to": "me@example.com", "starttls": True, "user": USER,
        "cafile": Path(tls_server.cafile).name,  # relative: next to the file
    }]}))  # fmt: skip
    monkeypatch.setenv("HOTCB_SMTP_PASSWORD", PASSWORD)
    (mail,) = load_notify_config(cfg).deliveries
    assert mail.cafile == tls_server.cafile and mail.tls_verify and mail.password_env is None
    assert _records(mail)[0]["status"] == "ok"

    for key, value in (("HOST", tls_server.host), ("PORT", str(tls_server.port)),
                       ("FROM", "a@b.c"), ("USER", USER), ("STARTTLS", "1"),
                       ("TLS_VERIFY", "0")):  # fmt: skip
        monkeypatch.setenv(f"HOTCB_SMTP_{key}", value)
    config = config_from_flags(None, emails=["me@example.com"])
    assert config is not None
    (mail,) = config.deliveries
    assert not mail.tls_verify and mail.password_env == "HOTCB_SMTP_PASSWORD"
    assert _records(mail)[0]["status"] == "ok"
    assert len(tls_server.box.messages) == 2


def test_a_login_without_starttls_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "notify.json"
    cfg.write_text(json.dumps({"deliveries": [{
        "type": "email", "host": "h", "from": "a@b.c", "to": "me@example.com", "user": USER,
        "cafile": "missing.pem"}]}))  # fmt: skip
    with pytest.raises(NotifyConfigError) as err:
        load_notify_config(cfg)
    text = str(err.value)
    assert "deliveries[0].user: a login needs starttls: true" in text
    assert "deliveries[0].cafile: no such file" in text
    monkeypatch.setenv("HOTCB_SMTP_HOST", "h")
    monkeypatch.setenv("HOTCB_SMTP_FROM", "a@b.c")
    monkeypatch.setenv("HOTCB_SMTP_USER", USER)
    with pytest.raises(NotifyConfigError, match="a login needs STARTTLS"):
        config_from_flags(None, emails=["me@example.com"])


def test_check_warns_of_a_login_password_that_is_not_set(tmp_path: Path, cli: Any) -> None:
    """`notify --check` said "no problems" for a login whose password variable was not set;
    every alert then failed at delivery (`$UNSET_PW_VAR is not set`)."""
    cfg = tmp_path / "notify.json"
    cfg.write_text(json.dumps({"deliveries": [{
        "type": "email", "host": "h", "from": "a@b.c", "to": "me@example.com", "user": USER,
        "starttls": True, "password_env": "UNSET_PW_VAR_FOR_TEST"}]}))  # fmt: skip
    done = cli(None, "notify", "--notify", str(cfg), "--check")
    assert done.returncode == 0, done.stderr
    assert "$UNSET_PW_VAR_FOR_TEST is not set here" in done.stderr, done.stderr
