"""``hotcb notify``: watch a run and deliver its alerts (webhook, Slack, e-mail); and the
``--notify`` flags that ``hotcb autopilot`` and ``hotcb launch`` share (docs/notify.md)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from typing import Any

from ._common import UsageError, ended, require_run_dir, say, seconds, stop_on_sigterm


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "notify",
        help="send alerts about a run (threshold, NaN, plateau, stale, crash, autopilot "
        "actions) to a webhook, Slack or e-mail",
        description="Watch the run until it ends and deliver its alerts; every delivery is "
        "recorded in hotcb.notify.jsonl. With only the quick flags the alerts are: NaN/inf, "
        "a crash, 300 s without a metric, autopilot actions. See docs/notify.md.",
    )
    add_notify_flags(p)
    p.add_argument("--interval", type=seconds, default=1.0,
                   help="seconds between rounds (default 1)")  # fmt: skip
    p.add_argument("--once", action="store_true", help="one round, deliver, then exit")
    p.add_argument("--check", action="store_true", help="check the --notify file and exit")
    p.set_defaults(func=cmd_notify)


def add_notify_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("notifications (docs/notify.md)")
    g.add_argument("--notify", metavar="FILE", help="alerts and deliveries (YAML or JSON)")
    g.add_argument("--notify-webhook", metavar="URL", action="append", default=[],
                   help="POST each alert as JSON to URL (repeatable)")  # fmt: skip
    g.add_argument("--notify-slack", metavar="URL", action="append", default=[],
                   help="post each alert to a Slack-compatible incoming webhook")  # fmt: skip
    g.add_argument("--notify-email", metavar="ADDR", action="append", default=[],
                   help="e-mail each alert to ADDR; the SMTP server from $HOTCB_SMTP_HOST, "
                   "_PORT, _FROM, _USER, _STARTTLS, _CAFILE, _TLS_VERIFY (0: do not verify its "
                   "certificate), the password from $HOTCB_SMTP_PASSWORD")  # fmt: skip


def notify_config(args: argparse.Namespace) -> Any:
    """The NotifyConfig of the flags, or None; a bad file is a usage error with every
    problem."""
    from ..notify import NotifyConfigError, config_from_flags

    try:
        return config_from_flags(args.notify, args.notify_webhook, args.notify_slack,
                                 args.notify_email)  # fmt: skip
    except NotifyConfigError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read --notify {args.notify}: {exc.strerror}") from None


def notify_argv(args: argparse.Namespace) -> list[str]:
    """The flags again, for a helper process (``hotcb launch``); files made absolute."""
    import os

    out: list[str] = []
    if args.notify:
        out += ["--notify", os.path.abspath(args.notify)]
    for flag, values in (("--notify-webhook", args.notify_webhook),
                         ("--notify-slack", args.notify_slack),
                         ("--notify-email", args.notify_email)):  # fmt: skip
        for v in values:
            out += [flag, v]
    return out


def cmd_notify(args: argparse.Namespace) -> int:
    stop_on_sigterm()
    from ..notify import Notifier
    from ..notify._deliveries import SMTP_PASSWORD_ENV

    config = notify_config(args)
    if config is None:
        raise UsageError("give --notify FILE or a quick flag (--notify-webhook, --notify-slack, "
                         "--notify-email)")  # fmt: skip
    if args.check:
        print(f"{len(config.alerts)} alerts ({', '.join(a.id for a in config.alerts)}), "
              f"{len(config.deliveries)} deliveries "
              f"({', '.join(d.target for d in config.deliveries)}); no problems")  # fmt: skip
        for d in config.deliveries:  # a login whose password is not here: every mail fails
            env = getattr(d, "password_env", None) or SMTP_PASSWORD_ENV
            if getattr(d, "user", None) and not os.environ.get(env):
                print(f"hotcb notify: warning: ${env} is not set here: the e-mail to {d.target} "
                      "logs in with it at each delivery (set it where hotcb notify runs)",
                      file=sys.stderr)  # fmt: skip
        return 0
    if not args.once and not os.path.isdir(args.dir):  # started before the run, as autopilot
        try:
            _wait_for_run(args.dir, args.interval)
        except KeyboardInterrupt:
            return 0
    require_run_dir(args.dir)
    notifier = Notifier(args.dir, config)
    print(f"hotcb notify on {notifier.run_dir}: {len(config.alerts)} alerts, "
          f"{len(config.deliveries)} deliveries", flush=True)  # fmt: skip
    try:
        stop = _Stop()
        _ready()
        while True:
            _say(notifier.step())
            if args.once:
                break
            if notifier.ended or stop.asked:  # one last round: the end that stopped it (a
                _say(notifier.step())  # crash, the last NaN) is still sent
                over = ended(args.dir) if notifier.ended else None
                if over is not None:  # (it ended before the first round, too)
                    print(f"hotcb notify: the run {over}; nothing more to watch", flush=True)
                break
            stop.sleep(args.interval)
    except KeyboardInterrupt:  # Ctrl-C: one last round too
        with contextlib.suppress(KeyboardInterrupt):  # a second one: go without it
            _say(notifier.step())
    with contextlib.suppress(KeyboardInterrupt):
        notifier.close(LAST_DELIVERIES_SEC)
    return 1 if args.once and notifier.failed else 0  # a script sees that an alert was lost


class _Stop:
    """SIGTERM (``hotcb launch`` stopping the notifier as the training ends) asks for a stop
    between rounds, never inside one: a round cut short lost what it had read (each record
    is read once) and the alerts it had found, a crash among them. It cuts only the sleep."""

    def __init__(self) -> None:
        self.asked = False
        self._sleeping = False
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: object) -> None:
        self.asked = True
        if self._sleeping:
            raise KeyboardInterrupt

    def sleep(self, seconds: float) -> None:
        self._sleeping = True
        try:
            if not self.asked:
                time.sleep(seconds)
        except KeyboardInterrupt:
            if not self.asked:  # Ctrl-C
                raise
        finally:
            self._sleeping = False


def _ready() -> None:
    """Tell ``hotcb launch`` that a SIGTERM now gets a last round (the file it named in
    ``NOTIFY_READY_ENV``): it waits for this before stopping the notifier."""
    from .._launch import NOTIFY_READY_ENV

    path = os.environ.get(NOTIFY_READY_ENV)
    if path:
        with contextlib.suppress(OSError), open(path, "a"):
            pass


def _wait_for_run(path: str, interval: float) -> None:
    """Until the run directory exists (its trainer's kernel creates it)."""
    print(f"hotcb notify: no run at {os.path.abspath(path)} yet; waiting for it (Ctrl-C stops)",
          flush=True)  # fmt: skip
    while not os.path.isdir(path):
        time.sleep(interval)


#: How long a stopping notifier waits for its last deliveries (``hotcb launch`` waits longer).
LAST_DELIVERIES_SEC = 30.0


def _say(events: list[dict[str, Any]]) -> None:
    for event in events:
        at = f"[step {event['step']}] " if event.get("step") is not None else ""
        say(f"{at}alert {event['alert']}: {event['message']}", flush=True)  # a metric's name
