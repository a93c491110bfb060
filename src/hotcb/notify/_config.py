"""The notify file: ``alerts: [...]`` and ``deliveries: [...]`` (YAML or JSON), checked with
every problem and its line; and the quick flags' config (``--notify-webhook`` …)."""

from __future__ import annotations

import os
import re
import unicodedata
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._checks import Checker, CheckError, parse_document
from ..autopilot.detectors import CHOICES, PARAMS
from ..autopilot.engine import RECORD_KINDS
from ._alerts import AUTOPILOT_KINDS, KINDS, Alert
from ._deliveries import SMTP_PASSWORD_ENV, Delivery, Email, Slack, Webhook

__all__ = ["DEFAULT_ALERTS", "NotifyConfig", "NotifyConfigError", "config_from_flags",
           "load_notify_config"]  # fmt: skip

#: Environment variables for the SMTP server of ``--notify-email`` (and an ``email`` delivery
#: that names no host).
SMTP_ENV = {
    "host": "HOTCB_SMTP_HOST",
    "port": "HOTCB_SMTP_PORT",
    "from": "HOTCB_SMTP_FROM",
    "user": "HOTCB_SMTP_USER",
    "starttls": "HOTCB_SMTP_STARTTLS",
    "cafile": "HOTCB_SMTP_CAFILE",
    "tls_verify": "HOTCB_SMTP_TLS_VERIFY",
}

#: The alerts of a config given by flags alone: NaN/inf, a crash, 300 s without a metric,
#: and the autopilot's actions, proposals and fallbacks.
DEFAULT_ALERTS = (
    Alert("nonfinite", "nonfinite"),
    Alert("crash", "crash"),
    Alert("stale", "stale", seconds=300.0),
    Alert("autopilot", "autopilot", cooldown=0.0),
)


class NotifyConfigError(CheckError):
    """A notify file with problems (each with its line)."""


@dataclass(frozen=True)
class NotifyConfig:
    """Alerts, deliveries, and how deliveries retry: up to ``retries`` more attempts after a
    failure, waiting ``backoff`` seconds, doubled each time, at most ``max_backoff``."""

    alerts: tuple[Alert, ...] = DEFAULT_ALERTS
    deliveries: tuple[Delivery, ...] = ()
    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0
    path: str | None = field(default=None, compare=False)

    def with_deliveries(self, extra: Sequence[Delivery]) -> NotifyConfig:
        return NotifyConfig(self.alerts, (*self.deliveries, *extra), self.retries, self.backoff,
                            self.max_backoff, self.path)  # fmt: skip


def load_notify_config(path: str | os.PathLike[str]) -> NotifyConfig:
    """Read and check a notify file; :class:`NotifyConfigError` lists every problem."""
    path = os.fspath(path)
    with open(path) as f:
        text = f.read()
    doc, lines = parse_document(text, path, NotifyConfigError)
    return check_notify_config(doc, lines, path)


def check_notify_config(doc: Any, lines: Mapping[str, int], path: str) -> NotifyConfig:
    c = Checker(lines)
    if not isinstance(doc, Mapping):
        raise NotifyConfigError(path, ["expected a mapping with alerts: and deliveries:"])
    for key in doc:
        if key not in ("alerts", "deliveries", "retries", "backoff", "max_backoff"):
            c.add(str(key), "unknown key (expected alerts, deliveries, retries, backoff, "
                            "max_backoff)")  # fmt: skip
    alerts = _items(c, doc, "alerts", _alert)
    base = os.path.dirname(os.path.abspath(path))  # a relative cafile: next to the file
    deliveries = _items(c, doc, "deliveries", lambda c, d, w: _delivery(c, d, w, base))
    # from the file's own entries: one with another problem still holds its id, and the
    # index is the file's (``alerts`` keeps only the entries that passed)
    listed = doc.get("alerts")
    raw: list[Any] = listed if isinstance(listed, list) else []
    seen: set[str] = set()
    for i, a in enumerate(raw):
        aid = a.get("id") if isinstance(a, Mapping) else None
        if isinstance(aid, str) and aid in seen:
            c.add(f"alerts[{i}].id", f"{aid!r} is used twice")
        elif isinstance(aid, str):
            seen.add(aid)
    if not deliveries and "deliveries" not in doc:
        c.add("deliveries", "missing: give at least one delivery (webhook, slack or email)")
    retries = c.number(doc, "retries", "retries", integer=True, minimum=0, maximum=10)
    backoff = c.number(doc, "backoff", "backoff", minimum=0)
    max_backoff = c.number(doc, "max_backoff", "max_backoff", minimum=0)
    if c.problems:
        raise NotifyConfigError(path, c.problems)
    return NotifyConfig(
        tuple(alerts) if "alerts" in doc else DEFAULT_ALERTS,
        tuple(deliveries),
        3 if retries is None else int(retries),
        1.0 if backoff is None else float(backoff),
        30.0 if max_backoff is None else float(max_backoff),
        path,
    )


def _items(c: Checker, doc: Mapping[str, Any], key: str, one: Any) -> list[Any]:
    items = doc.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        c.add(key, f"expected a list, got {type(items).__name__}")
        return []
    out = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            c.add(where, f"expected a mapping, got {item!r}")
            continue
        before = len(c.problems)
        built = one(c, item, where)
        if built is not None and len(c.problems) == before:
            out.append(built)
    return out


_ALERT_KEYS = {
    "threshold": {"metric", "above", "below"},
    "nonfinite": {"metric"},
    "plateau": {"metric", *PARAMS["plateau"]},
    "stale": {"seconds"},
    "crash": set(),
    "autopilot": {"records"},
}


def _alert(c: Checker, a: Mapping[str, Any], where: str) -> Alert | None:
    kind = c.choice(a, "kind", f"{where}.kind", KINDS)
    if "kind" not in a:
        c.add(f"{where}.kind", f"missing (one of {', '.join(KINDS)})")
    aid = c.string(a, "id", f"{where}.id")
    if kind is None:
        return None
    for key in a:
        if key not in {"id", "kind", "cooldown", *_ALERT_KEYS[kind]}:
            c.add(f"{where}.{key}", f"unknown key for a {kind} alert (expected "
                  f"{', '.join(sorted({'id', 'cooldown', *_ALERT_KEYS[kind]}))})")  # fmt: skip
    metric = c.string(a, "metric", f"{where}.metric")
    if kind in ("threshold", "plateau") and "metric" not in a:
        c.add(f"{where}.metric", f"missing: a {kind} alert watches one metric")
    above = c.number(a, "above", f"{where}.above")
    below = c.number(a, "below", f"{where}.below")
    if kind == "threshold" and "above" not in a and "below" not in a:
        c.add(f"{where}.above", "give above: or below: (or both)")
    seconds = c.number(a, "seconds", f"{where}.seconds", minimum=1)
    cooldown = c.number(a, "cooldown", f"{where}.cooldown", minimum=0)
    records = _records(c, a.get("records", list(AUTOPILOT_KINDS)), f"{where}.records")
    params = {k: a[k] for k in PARAMS["plateau"] if k in a} if kind == "plateau" else {}
    for k, v in params.items():
        typ, lo, hi = PARAMS["plateau"][k]
        if typ is str:
            c.choice(params, k, f"{where}.{k}", CHOICES[k])
        elif c.number(params, k, f"{where}.{k}", integer=typ is int) is not None and (
            (lo is not None and v < lo) or (hi is not None and v > hi)
        ):
            c.add(f"{where}.{k}", f"must be in [{lo:g}, {hi:g}], got {v!r}")
    return Alert(
        id=aid or kind,
        kind=kind,
        metric=metric,
        above=None if above is None else float(above),
        below=None if below is None else float(below),
        seconds=300.0 if seconds is None else float(seconds),
        cooldown=(0.0 if kind == "autopilot" else 300.0) if cooldown is None else float(cooldown),
        records=tuple(records),
        params=params,
    )


def _records(c: Checker, records: Any, where: str) -> list[str]:
    """The autopilot record kinds an ``autopilot`` alert reports: a misspelt one would match
    no record, and the alert would stay silent for good."""
    if not isinstance(records, list) or not records:
        c.add(where, f"expected a non-empty list of record kinds ({', '.join(RECORD_KINDS)}), "
                     f"got {records!r}")  # fmt: skip
        return []
    for i, kind in enumerate(records):
        if kind not in RECORD_KINDS:
            c.add(f"{where}[{i}]", f"{kind!r} is not one of {', '.join(RECORD_KINDS)}")
    return [r for r in records if r in RECORD_KINDS]


_DELIVERY_KEYS = {
    "webhook": {"url", "headers"},
    "slack": {"url"},
    "email": {
        "host",
        "port",
        "from",
        "to",
        "starttls",
        "user",
        "password_env",
        "cafile",
        "tls_verify",
        "timeout",
    },
}


def _delivery(c: Checker, d: Mapping[str, Any], where: str, base: str) -> Delivery | None:
    kind = c.choice(d, "type", f"{where}.type", tuple(_DELIVERY_KEYS))
    if "type" not in d:
        c.add(f"{where}.type", "missing (webhook, slack or email)")
    for key in d:
        if "password" in str(key).lower() and key != "password_env":
            c.add(f"{where}.{key}", "a password does not belong in the file: put it in an "
                  "environment variable and name it with password_env:")  # fmt: skip
        elif kind is not None and key not in {"type", *_DELIVERY_KEYS[kind]}:
            c.add(f"{where}.{key}", f"unknown key for a {kind} delivery (expected "
                  f"{', '.join(sorted(_DELIVERY_KEYS[kind]))})")  # fmt: skip
    if kind in ("webhook", "slack"):
        url = c.string(d, "url", f"{where}.url")
        if url is None and "url" not in d:
            c.add(f"{where}.url", "missing")
        elif url is not None and (problem := _url_problem(url)):
            c.add(f"{where}.url", problem)
        headers = _headers(c, d, where)
        if url is None:
            return None
        return Webhook(url, headers) if kind == "webhook" else Slack(url)
    if kind == "email":
        return _email(c, d, where, base)
    return None


def _headers(c: Checker, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A webhook's ``headers``, each name and value checked (a line break in a value went to
    the delivery's error text, the token with it)."""
    headers = d.get("headers") or {}
    if not isinstance(headers, Mapping):
        c.add(f"{where}.headers", "expected a mapping of header names to values")
        return {}
    for name, value in headers.items():
        if problem := _header_problem(str(name), value):
            c.add(f"{where}.headers.{name}", problem)
    return dict(headers)


def _email(c: Checker, d: Mapping[str, Any], where: str, base: str) -> Email | None:
    env = os.environ
    host = c.string(d, "host", f"{where}.host") or env.get(SMTP_ENV["host"])
    port = c.number(d, "port", f"{where}.port", integer=True, minimum=1)
    sender = c.string(d, "from", f"{where}.from") or env.get(SMTP_ENV["from"])
    to = d.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to or not all(isinstance(t, str) and "@" in t for t in to):
        c.add(f"{where}.to", f"expected an address or a list of addresses, got {to!r}")
        to = []
    if host is None:
        c.add(f"{where}.host", f"missing (or set ${SMTP_ENV['host']})")
    if sender is None:
        c.add(f"{where}.from", f"missing (or set ${SMTP_ENV['from']})")
    starttls = _flag(c, d, "starttls", where, False)
    tls_verify = _flag(c, d, "tls_verify", where, True)
    user = c.string(d, "user", f"{where}.user")
    password_env = c.string(d, "password_env", f"{where}.password_env")
    if user is not None and not starttls:
        c.add(f"{where}.user", "a login needs starttls: true (the password never goes "
              "unencrypted)")  # fmt: skip
    cafile = c.string(d, "cafile", f"{where}.cafile")
    if cafile is not None:
        cafile = os.path.join(base, os.path.expanduser(cafile))
        if not os.path.isfile(cafile):
            c.add(f"{where}.cafile", f"no such file: {cafile}")
    timeout = c.number(d, "timeout", f"{where}.timeout", minimum=1)
    if host is None or sender is None or not to:
        return None
    return Email(host, int(port or env.get(SMTP_ENV["port"]) or 25), sender, tuple(to),
                 starttls=starttls, user=user, password_env=password_env, cafile=cafile,
                 tls_verify=tls_verify,
                 timeout=10.0 if timeout is None else float(timeout))  # fmt: skip


#: A URL's scheme, as RFC 3986 spells one (what comes before ``://`` is echoed only then:
#: ``https;//me:s3cret@host`` has none).
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def _url_problem(url: str) -> str | None:
    """What is wrong with a webhook's URL (not http:// or https://, no host); None when
    nothing is. The file and the quick flags say the same."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:  # a malformed netloc ("http://[x")
        parts, host = None, None
    # the URL is not echoed: a typo's login, token or Slack path went to the terminal
    if not url.lower().startswith(("http://", "https://")):
        scheme = _SCHEME.match(url)
        got = f"scheme {scheme.group(1)[:20]!r}" if scheme else "no scheme"
        return f"expected an http:// or https:// URL, got one with {got}"
    if not host:
        return "expected an http:// or https:// URL with a host, got one with none"
    try:
        port_ok = parts is None or parts.port is None or parts.port >= 0
    except ValueError:  # ":99999", ":abc": the delivery failed on it when the alert came
        port_ok = False
    if not port_ok:
        return "the URL's port is not a number from 0 to 65535"
    stray = _stray(url, space=True)
    if stray is not None:  # the URL is not echoed: it may hold a token (or be one: Slack's)
        return (f"{stray[1]} at character {stray[0] + 1}: a URL holds no whitespace or control "
                "character (a stray space or line break? percent-encode a space as %20)")  # fmt: skip
    return None


def _header_problem(name: str, value: Any) -> str | None:
    """What is wrong with a webhook header: a control character in its name or value (a YAML
    ``|`` block ends the value with a line break), whitespace or ``:`` in its name; None when
    nothing is. The value is not echoed: it is often a token."""
    stray = _stray(name, space=True)
    if stray is not None or ":" in name or not name:
        what = stray[1] if stray is not None else "a ':'" if name else "nothing"
        return f"{what} in the header name: expected a name such as X-Team"
    stray = _stray(str(value), space=False)
    if stray is not None:
        return (f"{stray[1]} at character {stray[0] + 1} of the value: a header value holds no "
                "control character (a YAML | block ends it with a line break: write the value "
                "on the name's line)")  # fmt: skip
    return None


#: How a stray character is named in a problem: the usual ones by name.
_NAMED = {"\n": "a line break (LF)", "\r": "a carriage return (CR)", "\t": "a tab", " ": "a space"}


def _stray(text: str, *, space: bool) -> tuple[int, str] | None:
    """Where the first control character of ``text`` (C0, DEL, C1) is, or with ``space`` its
    first whitespace too, and what it is (``a line break (LF)``, ``the control character
    '\\x1b'``); None when there is none."""
    for i, ch in enumerate(text):
        control = unicodedata.category(ch) == "Cc"
        if control or (space and ch.isspace()):
            kind = "control character" if control else "whitespace"
            return i, _NAMED.get(ch) or f"the {kind} {ch!r}"
    return None


def _flag(c: Checker, d: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        c.add(f"{where}.{key}", f"expected true or false, got {value!r}")
        return default
    return value


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise NotifyConfigError("--notify-email", [f"${name}={value!r}: expected 1/true or 0/false"])


def config_from_flags(
    notify: str | None,
    webhooks: Sequence[str] = (),
    slacks: Sequence[str] = (),
    emails: Sequence[str] = (),
) -> NotifyConfig | None:
    """The config of ``--notify FILE`` plus the quick flags' deliveries; None when neither
    is given. With flags only, the alerts are :data:`DEFAULT_ALERTS`; ``--notify-email``
    reads its SMTP server from ``HOTCB_SMTP_HOST``, ``_PORT`` (25), ``_FROM``, ``_USER``,
    ``_STARTTLS`` (1/true), ``_CAFILE``, ``_TLS_VERIFY`` (0/false: do not verify the server's
    certificate) and the password from ``HOTCB_SMTP_PASSWORD``. A URL or an address is
    checked as in a file: :class:`NotifyConfigError` lists every bad one."""
    if notify is None and not (webhooks or slacks or emails):
        return None
    _check_flags(webhooks, slacks, emails)
    extra: list[Delivery] = [Webhook(u) for u in webhooks] + [Slack(u) for u in slacks]
    if emails:
        env = os.environ
        host, sender = env.get(SMTP_ENV["host"]), env.get(SMTP_ENV["from"])
        if not host or not sender:
            raise NotifyConfigError("--notify-email", [
                f"needs ${SMTP_ENV['host']} and ${SMTP_ENV['from']} (the SMTP server and the "
                "sender address); or use an email delivery in a --notify file"])  # fmt: skip
        port = env.get(SMTP_ENV["port"]) or "25"
        if not port.isdigit():
            raise NotifyConfigError("--notify-email", [f"${SMTP_ENV['port']}={port!r} is not "
                                                       "a port number"])  # fmt: skip
        tls = _env_flag(SMTP_ENV["starttls"], False)
        user = env.get(SMTP_ENV["user"]) or None
        if user and not tls:
            raise NotifyConfigError("--notify-email", [
                f"${SMTP_ENV['user']} is set but ${SMTP_ENV['starttls']} is not: a login needs "
                "STARTTLS (the password never goes unencrypted)"])  # fmt: skip
        cafile = env.get(SMTP_ENV["cafile"]) or None
        if cafile is not None and not os.path.isfile(cafile):
            raise NotifyConfigError("--notify-email", [f"${SMTP_ENV['cafile']}: no such file: "
                                                       f"{cafile}"])  # fmt: skip
        extra.append(Email(host, int(port), sender, tuple(emails), starttls=tls, user=user,
                           password_env=SMTP_PASSWORD_ENV,
                           cafile=cafile and os.path.abspath(cafile),
                           tls_verify=_env_flag(SMTP_ENV["tls_verify"], True)))  # fmt: skip
    base = load_notify_config(notify) if notify is not None else NotifyConfig()
    return base.with_deliveries(extra)


def _check_flags(webhooks: Sequence[str], slacks: Sequence[str], emails: Sequence[str]) -> None:
    """Every bad URL or address of the quick flags, in one :class:`NotifyConfigError`."""
    found: list[tuple[str, str]] = []
    for flag, urls in (("--notify-webhook", webhooks), ("--notify-slack", slacks)):
        found += [(flag, p) for p in map(_url_problem, urls) if p]
    found += [("--notify-email", f"expected an address (name@host), got {a!r}")
              for a in emails if "@" not in a]  # fmt: skip
    if found:
        flags = list(dict.fromkeys(flag for flag, _ in found))
        several = len(flags) > 1
        raise NotifyConfigError("/".join(flags),
                                [f"{flag}: {p}" if several else p for flag, p in found])  # fmt: skip
