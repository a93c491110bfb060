"""Notifications: alert rules over a run's files, delivered to webhooks, Slack and e-mail.

A :class:`Notifier` reads what is new in a run directory (metrics, ledger, autopilot records),
checks the alerts of a :class:`NotifyConfig`, and hands each alert that fires to its deliveries
in a worker thread. Every delivery attempt is recorded in ``hotcb.notify.jsonl``; the cursors and
alert states persist in ``hotcb.notify.state.json``, so a restarted notifier never sends again
what it already sent. :class:`NotifierHost` steps one notifier per live run of a folder in a
thread (``hotcb serve --notify``). See docs/notify.md.
"""

from __future__ import annotations

from ._alerts import Alert, Observation, Sample, onsets, samples
from ._config import NotifyConfig, NotifyConfigError, config_from_flags, load_notify_config
from ._deliveries import Delivery, Email, Slack, Webhook, deliver, redact_target
from ._host import NotifierHost
from ._notifier import RECORDS, STATE, Notifier

__all__ = [
    "RECORDS",
    "STATE",
    "Alert",
    "Delivery",
    "Email",
    "Notifier",
    "NotifierHost",
    "NotifyConfig",
    "NotifyConfigError",
    "Observation",
    "Sample",
    "Slack",
    "Webhook",
    "config_from_flags",
    "deliver",
    "load_notify_config",
    "onsets",
    "redact_target",
    "samples",
]
