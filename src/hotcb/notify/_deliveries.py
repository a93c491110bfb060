"""Deliveries: a JSON webhook, a Slack-compatible webhook, e-mail over SMTP; and
:func:`deliver`, which retries with bounded exponential back-off, records every attempt and
never raises."""

from __future__ import annotations

import base64
import json
import logging
import os
import smtplib
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

from ..runfiles import url_secrets

__all__ = ["SMTP_PASSWORD_ENV", "Delivery", "Email", "Slack", "Webhook", "deliver",
           "redact_target", "scrub_secrets"]  # fmt: skip

_TIMEOUT = 10.0

log = logging.getLogger("hotcb.notify")


class DeliveryError(Exception):
    """A delivery attempt that did not go through (a non-2xx answer, a refused login …)."""


class Delivery(Protocol):
    """Sends one alert event; raises on failure (:func:`deliver` catches and retries)."""

    @property
    def target(self) -> str:
        """Where it goes, safe to record: no credentials, no query secrets."""
        ...

    def send(self, event: Mapping[str, Any]) -> None: ...


def redact_target(url: str, *, keep_path: bool = True) -> str:
    """``url`` without user, password, query and fragment (and without its path when
    ``keep_path`` is false: a Slack webhook's path is its secret)."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    try:
        port: int | str | None = u.port
    except ValueError:  # not a port (checked when the config is read): shown as not one
        port = "?"
    if port is not None:
        host = f"{host}:{port}"
    path = u.path if keep_path else ("/…" if u.path not in ("", "/") else "")
    return urllib.parse.urlunsplit((u.scheme, host, path, "", ""))


def _text(event: Mapping[str, Any]) -> str:
    run = os.path.basename(str(event.get("run") or "").rstrip("/")) or "run"
    return f"[hotcb] {run}: {event.get('alert')}: {event.get('message')}"


def _login(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without ``user:password@``, and the Basic auth header that carries them instead
    (urllib resolves ``user:password@host`` as a host name: every delivery failed)."""
    u = urllib.parse.urlsplit(url)
    if u.username is None:
        return url, {}
    host = u.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if u.port is not None:
        host = f"{host}:{u.port}"
    login = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
    token = base64.b64encode(login.encode()).decode()
    bare = urllib.parse.urlunsplit((u.scheme, host, u.path, u.query, u.fragment))
    return bare, {"Authorization": f"Basic {token}"}


def _post(url: str, body: dict[str, Any], headers: Mapping[str, str]) -> None:
    data = json.dumps(body, default=str).encode()
    url, auth = _login(url)
    if any(k.lower() == "authorization" for k in headers):  # the file's own header wins
        auth = {}
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **auth,
                                          **headers})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DeliveryError(f"HTTP {exc.code} {exc.reason}") from None


@dataclass(frozen=True)
class Webhook:
    """POST the alert event as JSON."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return redact_target(self.url)

    def send(self, event: Mapping[str, Any]) -> None:
        _post(self.url, dict(event), self.headers)


@dataclass(frozen=True)
class Slack:
    """POST ``{"text": ...}`` (Slack incoming webhooks, Mattermost, Discord's /slack)."""

    url: str

    @property
    def target(self) -> str:
        return redact_target(self.url, keep_path=False)

    def send(self, event: Mapping[str, Any]) -> None:
        _post(self.url, {"text": _text(event)}, {})


#: Where an e-mail delivery with a ``user`` and no ``password_env`` reads the SMTP password.
SMTP_PASSWORD_ENV = "HOTCB_SMTP_PASSWORD"


@dataclass(frozen=True)
class Email:
    """E-mail over SMTP.

    With ``starttls`` the connection turns to TLS before anything else is said, and the
    server's certificate is verified against the system's CAs, or against ``cafile`` (a PEM
    file: a private CA, a self-signed server); ``tls_verify=False`` skips the verification
    (tests, a trusted network: the password is then safe from a passive eavesdropper only).
    With ``user``, the client logs in (AUTH PLAIN or LOGIN, whichever the server offers) with
    the password from the environment variable ``password_env`` (default
    ``HOTCB_SMTP_PASSWORD``), never from a file; only over STARTTLS, never in clear text."""

    host: str
    port: int
    sender: str
    to: tuple[str, ...]
    starttls: bool = False
    user: str | None = None
    password_env: str | None = None
    cafile: str | None = None
    tls_verify: bool = True
    timeout: float = _TIMEOUT

    @property
    def target(self) -> str:
        return f"smtp://{self.host}:{self.port} to {', '.join(self.to)}"

    def tls_context(self) -> ssl.SSLContext:
        """The context STARTTLS uses: certificates verified (system CAs or ``cafile``) unless
        ``tls_verify`` is off."""
        ctx = ssl.create_default_context(cafile=self.cafile)
        if not self.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def send(self, event: Mapping[str, Any]) -> None:
        msg = EmailMessage()
        msg["Subject"] = _text(event)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg.set_content(
            f"{event.get('message')}\n\n{json.dumps(dict(event), indent=2, default=str)}\n"
        )
        password = None
        if self.user:
            if not self.starttls:
                raise DeliveryError(f"refusing to send the SMTP password for {self.user} "
                                    "unencrypted: set starttls")  # fmt: skip
            env = self.password_env or SMTP_PASSWORD_ENV
            password = os.environ.get(env)
            if password is None:
                raise DeliveryError(f"${env} is not set (the SMTP password for {self.user})")
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls(context=self.tls_context())
            if self.user and password is not None:
                smtp.login(self.user, password)
            smtp.send_message(msg)


def _secrets(delivery: Delivery) -> list[str]:
    """What ``delivery`` holds that must not be recorded: its URL's secrets (the query's
    tokens, the login's password, as written and decoded, and the Basic auth made of it; a
    Slack URL's path), its header values (whole and word by word), its SMTP password (and
    the AUTH PLAIN and LOGIN forms of it)."""
    found: list[str] = []
    url = getattr(delivery, "url", None)
    if isinstance(url, str):
        found += url_secrets(url)
        try:
            u = urllib.parse.urlsplit(url)
            user, password = u.username, u.password
        except ValueError:  # a malformed netloc: the whole URL, then
            found.append(url)
            u, user, password = None, None, None
        if password is not None:
            found += [password, urllib.parse.unquote(password)]
        if user is not None:  # as _login sends them
            login = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password or '')}"
            found.append(base64.b64encode(login.encode()).decode())
        if isinstance(delivery, Slack) and u is not None and u.path not in ("", "/"):
            found += [u.path, *u.path.strip("/").split("/")[1:]]  # /services/T/B/SECRET
    headers = getattr(delivery, "headers", None)
    if isinstance(headers, Mapping):
        for value in headers.values():
            found += [str(value), *str(value).split()]  # "Bearer TOKEN\n": TOKEN on its own
    if isinstance(delivery, Email) and delivery.user:
        password = os.environ.get(delivery.password_env or SMTP_PASSWORD_ENV)
        if password:
            plain = f"\0{delivery.user}\0{password}".encode()
            found += [password, base64.b64encode(plain).decode(),
                      base64.b64encode(password.encode()).decode()]  # fmt: skip
    return found


def scrub_secrets(text: str, delivery: Delivery) -> str:
    """``text`` (a delivery's error) with every secret of ``delivery`` replaced by ``***``:
    as written, stripped, and as an error quotes it (``repr`` of the text or of its bytes,
    percent-encoded). ``target`` is redacted already; an error can quote the request (a URL
    with a stray space, a header value with a line break) and went whole to
    ``hotcb.notify.jsonl`` and stderr. Secrets under 4 characters are left (they would
    garble the text; such a secret is no secret)."""
    forms: set[str] = set()
    for secret in _secrets(delivery):
        for s in (secret, secret.strip()):
            forms.update((s, repr(s)[1:-1], repr(s.encode())[2:-1], urllib.parse.quote(s)))
    for form in sorted((f for f in forms if len(f) >= 4), key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def deliver(
    delivery: Delivery,
    event: Mapping[str, Any],
    record: Callable[[dict[str, Any]], None],
    *,
    retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Send ``event`` through ``delivery``; on failure wait ``backoff`` seconds (doubling, at
    most ``max_backoff``) and try again, ``retries`` times at most. Every attempt goes to
    ``record`` (``status``: ``ok``, ``retry`` or ``failed``). A delivery that finally failed
    is also logged (a warning on ``hotcb.notify``: one line on stderr in the CLI), with its
    channel and the reason. True when it went through; never raises."""
    target = delivery.target
    for attempt in range(1, retries + 2):
        try:
            delivery.send(event)
        except Exception as exc:  # whatever a user's endpoint does is recorded
            last = attempt > retries
            # without the delivery's secrets: the error may quote its URL or a header
            error = scrub_secrets(f"{type(exc).__name__}: {exc}", delivery)
            record({"kind": "delivery", "alert": event.get("alert"), "target": target,
                    "attempt": attempt, "status": "failed" if last else "retry",
                    "error": error})  # fmt: skip
            if last:
                log.warning("hotcb notify: the %s delivery of alert %s to %s failed after %d "
                            "attempt(s): %s", type(delivery).__name__.lower(),
                            event.get("alert"), target, attempt,
                            error.replace("\n", " "))  # fmt: skip
                return False
            sleep(min(max_backoff, backoff * 2 ** (attempt - 1)))
        else:
            record({"kind": "delivery", "alert": event.get("alert"), "target": target,
                    "attempt": attempt, "status": "ok", "error": None})  # fmt: skip
            return True
    return False  # pragma: no cover - the loop returns
