"""Alerts on synthetic records, deliveries to real local receivers, the config checks."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from typing import Any

import pytest

from hotcb import jsonl
from hotcb.notify import (
    RECORDS,
    Alert,
    Email,
    Notifier,
    NotifyConfig,
    NotifyConfigError,
    Observation,
    Slack,
    Webhook,
    deliver,
    load_notify_config,
    onsets,
    redact_target,
    samples,
)

from .conftest import wait_until


def _rec(step: int, **metrics: Any) -> dict[str, Any]:
    return {"step": step, "metrics": metrics}


def _fire(alert: Alert, rounds: list[Observation]) -> list[list[str]]:
    active, last = False, None
    out, memory = [], {}  # (the alert's state, kept across rounds)
    for obs in rounds:
        found = samples(alert, obs, memory)
        fired, active, last = onsets(found, active, last, alert.cooldown, obs.now)
        out.append([s.message for s in fired])
    return out


# ----------------------------------------------------------------------------- alerts
def test_threshold_fires_once_per_onset_and_respects_cooldown() -> None:
    alert = Alert("hot", "threshold", metric="loss", above=2.0, cooldown=100)
    got = _fire(alert, [
        Observation(0, metrics=[_rec(1, loss=1.0), _rec(2, loss=3.0), _rec(3, loss=4.0)]),
        Observation(10, metrics=[_rec(4, loss=5.0)]),  # still above: no new onset
        Observation(20, metrics=[_rec(5, loss=1.0), _rec(6, loss=3.0)]),  # onset in cooldown
        Observation(200, metrics=[_rec(7, loss=1.0), _rec(8, loss=2.5)]),  # onset after it
    ])  # fmt: skip
    assert [len(r) for r in got] == [1, 0, 0, 1]
    assert "loss=3 at step 2 is above 2" in got[0][0]


def test_below_threshold() -> None:
    alert = Alert("acc", "threshold", metric="acc", below=0.5, cooldown=0)
    assert _fire(alert, [Observation(0, metrics=[_rec(1, acc=0.9), _rec(2, acc=0.1)])]) == [
        ["acc=0.1 at step 2 is below 0.5"]
    ]


def test_nonfinite_on_any_metric_sees_a_nan_inside_a_batch() -> None:
    alert = Alert("nan", "nonfinite", cooldown=0)
    got = _fire(alert, [
        Observation(0, metrics=[_rec(1, loss=1.0), _rec(2, loss=None), _rec(3, loss=1.0)]),
        Observation(1, metrics=[_rec(4, loss=float("nan"))]),
        Observation(2, metrics=[_rec(5, loss=float("inf"))]),  # the same streak
    ])  # fmt: skip
    assert [len(r) for r in got] == [1, 1, 0]
    assert "step 2" in got[0][0]


def test_plateau_reuses_the_detector() -> None:
    alert = Alert("flat", "plateau", metric="val_loss", cooldown=0)
    flat = [(s, 1.0) for s in range(10)]
    falling = [(s, 10.0 - s) for s in range(10)]
    new = [_rec(9, val_loss=1.0)]
    assert samples(alert, Observation(0, metrics=new, series={"val_loss": flat}))[0].active
    assert not samples(alert, Observation(0, metrics=new, series={"val_loss": falling}))[0].active
    assert samples(alert, Observation(0, series={"val_loss": flat})) == []  # nothing new


def test_stale_not_when_ended_or_paused() -> None:
    alert = Alert("stale", "stale", seconds=300, cooldown=0)
    assert _fire(alert, [
        Observation(100, last_metric_time=0),
        Observation(400, last_metric_time=0),
        Observation(500, last_metric_time=0),
        Observation(900, last_metric_time=0, paused=True),
        Observation(1000, last_metric_time=0, ended=True),
    ]) == [[], ["no new metric for 400 s (limit 300 s); the run is neither ended nor paused"],
           [], [], []]  # fmt: skip


def test_a_stale_alert_says_the_step_the_run_stopped_at() -> None:
    """Every other alert's line says its step (``[step N] …``); a stale one did not, though the
    step the run went quiet after is what a person looks up first."""
    alert = Alert("stale", "stale", seconds=300, cooldown=0)
    (sample,) = samples(alert, Observation(400, last_metric_time=0, last_step=1234))
    assert sample.active and sample.step == 1234


def test_crash_fires_once() -> None:
    alert = Alert("crash", "crash")
    got = _fire(alert, [Observation(0), Observation(1, crashed=True), Observation(2, crashed=True)])
    assert [len(r) for r in got] == [0, 1, 0]


def test_a_crash_alert_says_the_step_and_how() -> None:
    """It said only "crashed or killed", with no step, though `hotcb status` knew both."""
    how = "crashed (exit code 3; its process is gone and did not close the run)"
    found = samples(Alert("crash", "crash"), Observation(1, crashed=True, crash=how, last_step=300))
    assert [(s.message, s.step) for s in found] == [
        ("the training process is gone without closing the run, after step 300: " + how, 300)
    ]


def test_a_streak_of_refused_autopilot_actions_alerts_once() -> None:
    """A model asking for the same lr cut at every call while its proposal waited: each
    refusal was an e-mail (eight in 20 s). A streak of them alerts once, until the autopilot
    records something else; then a refusal alerts again."""
    alert = Alert("ap", "autopilot", cooldown=0)
    halve = {"name": "lr_mult", "params": {"factor": 0.5}}
    refused = {"kind": "action", "rule": "ai", "state": "rejected", "asked": "lr_mult(factor=0.5)",
               "reason": "proposal A1 (lr_mult(factor=0.5)) is still pending"}  # fmt: skip
    applied = {"kind": "action", "rule": "ai", "state": "applied", "action": halve}
    rounds = [Observation(0, autopilot=[refused, refused]), Observation(1, autopilot=[refused]),
              Observation(2, autopilot=[applied, refused]), Observation(3, autopilot=[refused])]  # fmt: skip
    got = _fire(alert, rounds)
    said = "autopilot action ai rejected: lr_mult(factor=0.5): proposal A1 (lr_mult(factor=0.5)) is still pending"
    assert got == [[said], [], ["autopilot action ai applied: lr_mult(factor=0.5)", said], []]
    # the model's reply before each refusal (an alert that listens to ai_reply too) is said,
    # and does not make the same refusal news again; another refusal is news
    listens = Alert("ap", "autopilot", cooldown=0, records=("action", "ai_reply"))
    reply = {"kind": "ai_reply", "rule": "ai", "state": "replied", "reason": "halve lr"}
    other = {"kind": "action", "rule": "plateau", "state": "refused", "asked": "wd_mult(factor=2)",
             "reason": "the run is frozen"}  # fmt: skip
    got = _fire(listens, [Observation(0, autopilot=[reply, refused]),
                          Observation(1, autopilot=[reply, refused, other])])  # fmt: skip
    answer = "autopilot ai_reply ai: halve lr"
    assert got == [[answer, said],
                   [answer, "autopilot action plateau refused: wd_mult(factor=2): the run is frozen"]]  # fmt: skip


def test_autopilot_records_each_fire() -> None:
    """Each record an alert of its own, in words a person can act on: a proposal with the id
    to accept (the alert said `proposal ai: …`, no id), an action with what it did (it
    showed the action as a Python dict)."""
    alert = Alert("ap", "autopilot", cooldown=0)
    halve = {"name": "lr_mult", "params": {"factor": 0.5}}
    recs = [
        {"kind": "detection", "rule": "r"},
        {"kind": "action", "rule": "divergence_cut_lr", "step": 5, "state": "applied",
         "action": halve, "reason": "autopilot rule divergence_cut_lr: divergence on loss"},
        {"kind": "proposal", "id": "A2", "rule": "ai", "action": halve,
         "describe": "lr_mult(factor=0.5): the loss is flat"},
        {"kind": "action", "rule": "ai", "step": 9, "state": "rejected",
         "asked": "lr_set(value=-1)", "reason": "lr must be > 0"},
        {"kind": "fallback", "reason": "budget spent"},
    ]  # fmt: skip
    # (the accept line names the run: copied from the project folder, it said ". is a folder
    # of runs")
    (got,) = _fire(alert, [Observation(0, autopilot=recs, run_dir="/home/me/runs/a b")])
    assert got == [
        "autopilot action divergence_cut_lr applied: lr_mult(factor=0.5): divergence on loss",
        "autopilot proposal A2 (rule ai): lr_mult(factor=0.5): the loss is flat; accept: hotcb "
        "--dir '/home/me/runs/a b' autopilot accept A2",
        "autopilot action ai rejected: lr_set(value=-1): lr must be > 0",
        "autopilot fallback: budget spent",
    ]


def test_a_guard_that_kept_a_change_says_what_it_kept() -> None:
    """The alert for a guard that kept a change said only "autopilot guard nan"; an undo said
    why. A kept change says so, with how the key metric moved."""
    alert = Alert("ap", "autopilot", records=("guard",), cooldown=0)
    recs = [
        {"kind": "guard", "rule": "nan", "step": 300, "cmd_id": "01J", "metric": "val_loss",
         "before": 0.5348, "after": 0.4333, "worse_by": -0.19},
        {"kind": "guard", "rule": "plateau_cut_lr", "step": 400, "cmd_id": "01K",
         "before": 0.41, "after": 0.39, "worse_by": -0.0488},  # written before `metric` was
        {"kind": "guard", "rule": "nan", "step": 500, "cmd_id": "01L", "metric": "val_loss",
         "before": 0.4, "after": 0.6, "worse_by": 0.5, "undo_cmd_id": "01M",
         "reason": "autopilot guard: val_loss 0.4 -> 0.6 (+50%) after rule nan; undoing it"},
    ]  # fmt: skip
    (got,) = _fire(alert, [Observation(0, autopilot=recs)])
    assert got == [
        "autopilot guard nan: kept, val_loss 0.5348 -> 0.4333 (-19%)",
        "autopilot guard plateau_cut_lr: kept, 0.41 -> 0.39 (-5%)",
        "autopilot guard nan: autopilot guard: val_loss 0.4 -> 0.6 (+50%) after rule nan; "
        "undoing it",
    ]


# ----------------------------------------------------------------------------- deliveries
def _records(run: str) -> list[dict[str, Any]]:
    return list(jsonl.iter_records(os.path.join(run, RECORDS)))


def test_webhook_and_slack_payloads(receiver: Any) -> None:
    got: list[dict[str, Any]] = []
    event = {"alert": "hot", "message": "loss=3 is above 2", "run": "/x/run7", "step": 2}
    assert deliver(Webhook(f"{receiver.url}/hook?token=s3cret"), event, got.append)
    assert deliver(Slack(f"{receiver.url}/services/T/B/XYZ"), event, got.append)
    assert receiver.bodies("/hook") == [event]
    assert receiver.bodies("/services/T/B/XYZ") == [
        {"text": "[hotcb] run7: hot: loss=3 is above 2"}
    ]
    assert [(r["attempt"], r["status"]) for r in got] == [(1, "ok"), (1, "ok")]
    assert "s3cret" not in json.dumps(got) and "XYZ" not in json.dumps(got)


def test_a_webhook_url_with_a_login_sends_it_as_basic_auth(receiver: Any) -> None:
    """`http://bob:hunter2@host/u` passed `--check`, and every delivery failed: urllib took
    `bob:hunter2@127.0.0.1` for a host name. The login goes as Basic auth now, and is not
    recorded."""
    got: list[dict[str, Any]] = []
    url = receiver.url.replace("http://", "http://bob:hun%40ter2@") + "/u"
    assert deliver(Webhook(url), {"alert": "a"}, got.append, retries=0)
    assert receiver.bodies("/u") == [{"alert": "a"}]
    assert receiver.auth == ["Basic " + base64.b64encode(b"bob:hun@ter2").decode()]
    assert "hun" not in json.dumps(got) and "bob" not in json.dumps(got)


def test_retries_with_backoff_then_ok(receiver: Any) -> None:
    receiver.statuses = [500, 500]
    got: list[dict[str, Any]] = []
    waits: list[float] = []
    ok = deliver(Webhook(f"{receiver.url}/hook"), {"alert": "a"}, got.append, retries=3,
                 backoff=0.5, max_backoff=0.75, sleep=waits.append)  # fmt: skip
    assert ok
    assert [(r["attempt"], r["status"]) for r in got] == [(1, "retry"), (2, "retry"), (3, "ok")]
    assert "HTTP 500" in got[0]["error"]
    assert waits == [0.5, 0.75]  # doubled, then capped


def test_gives_up_and_never_raises() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    got: list[dict[str, Any]] = []
    assert not deliver(Webhook(f"http://127.0.0.1:{port}/x"), {"alert": "a"}, got.append,
                       retries=2, sleep=lambda s: None)  # fmt: skip
    assert [r["status"] for r in got] == ["retry", "retry", "failed"]


def test_email_arrives(smtp_server: Any) -> None:
    host, port, box = smtp_server
    got: list[dict[str, Any]] = []
    mail = Email(host, port, "hotcb@example.com", ("me@example.com",))
    assert deliver(mail, {"alert": "nan", "message": "non-finite loss", "run": "/r/a"}, got.append)
    wait_until(lambda: box.messages)
    msg = box.messages[0]
    assert msg["Subject"] == "[hotcb] a: nan: non-finite loss"
    assert msg["To"] == "me@example.com"
    assert "non-finite loss" in msg.get_payload()
    assert got[0]["target"] == f"smtp://{host}:{port} to me@example.com"


def test_redact_target() -> None:
    assert redact_target("https://u:pw@h.io:8443/a/b?key=1#f") == "https://h.io:8443/a/b"
    assert redact_target("https://hooks.slack.com/services/T/B/X", keep_path=False) == (
        "https://hooks.slack.com/…"
    )


# ----------------------------------------------------------------------------- config
BAD = """\
alerts:
  - id: hot
    kind: threshold
    metric: loss
  - id: hot
    kind: wobble
  - kind: plateau
    metric: val_loss
    window: 1
    colour: red
deliveries:
  - type: email
    host: smtp.example.com
    from: a@example.com
    to: me@example.com
    password: hunter2
  - type: webhook
    url: ftp://nope
retries: -1
"""


def test_bad_config_lists_every_problem_with_its_line(tmp_path: Any) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text(BAD)
    with pytest.raises(NotifyConfigError) as err:
        load_notify_config(path)
    problems = err.value.problems
    assert problems == [
        "line 2: alerts[0].above: give above: or below: (or both)",
        "line 6: alerts[1].kind: 'wobble' is not one of threshold, nonfinite, plateau, stale, "
        "crash, autopilot",
        "line 10: alerts[2].colour: unknown key for a plateau alert (expected cooldown, "
        "direction, eps, id, metric, smooth, window)",
        "line 9: alerts[2].window: must be in [3, 1000], got 1",
        "line 16: deliveries[0].password: a password does not belong in the file: put it in an "
        "environment variable and name it with password_env:",
        "line 18: deliveries[1].url: expected an http:// or https:// URL, got one with scheme 'ftp'",
        # an entry with another problem still holds its id (this one was missed)
        "line 5: alerts[1].id: 'hot' is used twice",
        "line 19: retries: must be >= 0, got -1",
    ]


def test_retries_above_ten_are_a_problem_not_quietly_ten(tmp_path: Any, cli: Any) -> None:
    """``retries: 50`` was cut to 10 while ``--check`` said the file had no problems."""
    path = tmp_path / "notify.yaml"
    path.write_text('deliveries:\n  - {type: webhook, url: "http://127.0.0.1:9/x"}\nretries: 50\n')
    done = cli(None, "notify", "--notify", os.fspath(path), "--check")
    assert done.returncode == 2 and "line 3: retries: must be <= 10, got 50" in done.stderr


def test_good_config(tmp_path: Any) -> None:
    path = tmp_path / "notify.json"
    path.write_text(json.dumps({
        "alerts": [{"id": "hot", "kind": "threshold", "metric": "loss", "above": 2}],
        "deliveries": [{"type": "slack", "url": "https://hooks.example/s/1"},
                       {"type": "email", "host": "h", "port": 2525, "from": "a@b.c",
                        "to": ["x@y.z"], "starttls": True, "user": "u",
                        "password_env": "MY_SMTP_PW"}],
        "retries": 2, "backoff": 0.1,
    }))  # fmt: skip
    cfg = load_notify_config(path)
    assert [a.id for a in cfg.alerts] == ["hot"]
    assert cfg.deliveries[1] == Email("h", 2525, "a@b.c", ("x@y.z",), starttls=True, user="u",
                                      password_env="MY_SMTP_PW")  # fmt: skip
    assert (cfg.retries, cfg.backoff) == (2, 0.1)


# ----------------------------------------------------------------------------- the notifier
def _run(tmp_path: Any) -> str:
    run = str(tmp_path / "run")
    os.makedirs(run)
    jsonl.write_json_atomic(os.path.join(run, "hotcb.run.json"), {"started": 0.0})
    return run


def test_notifier_delivers_records_and_never_resends_after_restart(
    tmp_path: Any, receiver: Any
) -> None:
    run = _run(tmp_path)
    metrics = os.path.join(run, "hotcb.metrics.jsonl")
    cfg = NotifyConfig(alerts=(Alert("hot", "threshold", metric="loss", above=2.0),),
                       deliveries=(Webhook(f"{receiver.url}/hook"),))  # fmt: skip
    jsonl.append(metrics, _rec(1, loss=1.0))
    jsonl.append(metrics, _rec(2, loss=3.0))
    n = Notifier(run, cfg)
    assert [e["alert"] for e in n.step(now=1000.0)] == ["hot"]
    assert n.close(timeout=30)
    assert receiver.bodies("/hook")[0]["message"] == "loss=3 at step 2 is above 2"
    again = Notifier(run, cfg)  # a restart: the cursor and the alert state come back
    assert again.step(now=1001.0) == []
    jsonl.append(metrics, _rec(3, loss=1.0))
    jsonl.append(metrics, _rec(4, loss=9.0))
    assert again.step(now=1002.0) == []  # a new onset, inside the 300 s cooldown
    again.close()
    kinds = [(r["kind"], r.get("status")) for r in _records(run)]
    assert kinds == [("alert", None), ("delivery", "ok")]


def test_a_hung_endpoint_holds_up_only_its_own_alerts_and_is_reported_at_close(
    tmp_path: Any, receiver: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Deliveries went through one worker in turn: a webhook that accepts and never answers
    held every other channel's alert for its time-outs and retries (48 s late in a probe),
    and an alert still queued when the notifier stopped vanished without a word."""
    import hotcb.notify._deliveries as deliveries

    monkeypatch.setattr(deliveries, "_TIMEOUT", 600.0)  # it hangs for the whole test
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen(8)  # accepted by the kernel, never answered
        hung = f"http://127.0.0.1:{hang.getsockname()[1]}/hang"
        run = _run(tmp_path)
        jsonl.append(os.path.join(run, "hotcb.metrics.jsonl"), _rec(1, loss=3.0))
        cfg = NotifyConfig(alerts=(Alert("hot", "threshold", metric="loss", above=2.0),),
                           deliveries=(Webhook(hung), Webhook(f"{receiver.url}/good")),
                           retries=0)  # fmt: skip
        n = Notifier(run, cfg)
        assert [e["alert"] for e in n.step(now=1000.0)] == ["hot"]
        (body,) = receiver.wait_for("/good", 1, timeout=60)  # while the first one still hangs
        assert body["alert"] == "hot"
        with caplog.at_level("WARNING", logger="hotcb.notify"):
            assert not n.close(timeout=0.5)
    deliveries_of = {r["target"]: r for r in _records(run) if r["kind"] == "delivery"}
    assert deliveries_of[f"{receiver.url}/good"]["status"] == "ok"
    failed = deliveries_of[hung]
    assert failed["status"] == "failed" and "not delivered: the notifier stopped" in failed["error"]
    assert f"alert hot to {failed['target']} failed: not delivered" in caplog.text


def test_notifier_sees_pause_and_autopilot(tmp_path: Any) -> None:
    run = _run(tmp_path)
    jsonl.append(os.path.join(run, "hotcb.metrics.jsonl"), _rec(1, loss=1.0))
    os.utime(os.path.join(run, "hotcb.metrics.jsonl"), (0, 0))
    jsonl.append(os.path.join(run, "hotcb.applied.jsonl"),
                 {"module": "control", "op": "pause", "decision": "applied", "step": 1})  # fmt: skip
    jsonl.append(os.path.join(run, "hotcb.autopilot.jsonl"),
                 {"kind": "action", "rule": "lr_drop", "action": "opt.lr *= 0.5"})  # fmt: skip
    cfg = NotifyConfig(deliveries=())  # the default alerts
    n = Notifier(run, cfg)
    fired = n.step(now=10_000.0)
    assert [e["alert"] for e in fired] == ["autopilot"]  # stale is quiet: the run is paused
    n.close()


def test_a_pause_of_an_earlier_life_does_not_quiet_the_stale_alert(tmp_path: Any) -> None:
    """A run paused, killed and started again: a new kernel starts unpaused, but the notifier
    took the old pause as the run's state and never said that the new life went quiet."""
    run = _run(tmp_path)
    metrics = os.path.join(run, "hotcb.metrics.jsonl")
    jsonl.append(metrics, _rec(1, loss=1.0))
    os.utime(metrics, (0, 0))
    jsonl.append(os.path.join(run, "hotcb.applied.jsonl"),
                 {"module": "control", "op": "pause", "decision": "applied", "step": 1,
                  "wall_time": 5.0})  # fmt: skip
    cfg = NotifyConfig(alerts=(Alert("stale", "stale", seconds=300.0),), deliveries=())
    n = Notifier(run, cfg)
    assert n.step(now=10_000.0) == []  # paused: quiet
    n.close()
    # its kernel started again after the pause (hotcb.run.json), then the run went quiet; the
    # notifier restarted too: the pause's time comes back from its state file
    jsonl.write_json_atomic(os.path.join(run, "hotcb.run.json"), {"started": 50.0})
    n = Notifier(run, cfg)
    assert [e["alert"] for e in n.step(now=10_000.0)] == ["stale"]
    n.close()


def test_a_run_started_again_after_a_day_is_not_stale_before_its_first_metric(
    tmp_path: Any,
) -> None:
    """`hotcb launch --notify …` into a run whose last metric is a day old: before the new
    training's first step (a slow import), the alert said "no new metric for 86400 s". The
    quiet time counts from the new life's start when that is later."""
    run = _run(tmp_path)
    metrics = os.path.join(run, "hotcb.metrics.jsonl")
    jsonl.append(metrics, _rec(1, loss=1.0))
    os.utime(metrics, (0, 0))  # the earlier life's last metric
    jsonl.write_json_atomic(os.path.join(run, "hotcb.run.json"), {"started": 9_900.0})
    cfg = NotifyConfig(alerts=(Alert("stale", "stale", seconds=300.0),), deliveries=())
    n = Notifier(run, cfg)
    assert n.step(now=10_000.0) == []  # 100 s since it started again
    (quiet,) = n.step(now=10_300.0)  # and then quiet for 400 s
    assert quiet["alert"] == "stale" and quiet["message"].startswith(
        "no new metric for 400 s since it started (limit 300 s)"
    ), quiet
    n.close()


def test_a_long_pause_is_no_silence_once_the_run_resumes(tmp_path: Any) -> None:
    """A run paused for longer than the stale alert's limit, then resumed: the alert fired
    between the resume and the first metric after it ("no new metric for 7 s (limit 3 s)"),
    the pause counted as silence. The quiet time counts from the later of the last metric and
    the resume (its ledger time)."""
    from hotcb import HotClient, HotKernel

    run = str(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0.0, pause_poll_sec=0.01)
    kernel.apply({"step": 0, "metrics": {"loss": 1.0}})
    n = Notifier(run, NotifyConfig(alerts=(Alert("quiet", "stale", seconds=300.0),),
                                   deliveries=()))  # fmt: skip
    client = HotClient(run, source="test")
    client.pause()
    trainer = threading.Thread(target=kernel.apply, args=({"step": 1},), daemon=True)
    trainer.start()  # held in the pause
    try:
        ledger = os.path.join(run, "hotcb.applied.jsonl")

        def applied(op: str) -> dict[str, Any] | None:
            return next((e for e in jsonl.iter_records(ledger)
                         if e.get("op") == op and e.get("decision") == "applied"), None)  # fmt: skip

        wait_until(lambda: applied("pause"), 60)
        assert n.step(now=time.time() + 10_000) == []  # paused: quiet
        client.resume()
    finally:
        client.resume()
        trainer.join(60)
    resumed = float(applied("resume")["wall_time"])  # type: ignore[index]
    metrics = os.path.join(run, "hotcb.metrics.jsonl")
    os.utime(metrics, (resumed - 600, resumed - 600))  # the last metric came before the pause
    assert n.step(now=resumed + 10) == []  # 10 s since the resume, not 610 s of silence
    fired = n.step(now=resumed + 301)
    assert [e["message"] for e in fired] == [
        "no new metric for 301 s since the resume (limit 300 s); the run is neither ended nor "
        "paused"
    ]
    n.close()
    kernel.close()


def test_started_mid_run_old_points_set_the_state_and_only_what_still_holds_fires(
    tmp_path: Any,
) -> None:
    """`hotcb notify` started on a run that is going: a NaN and an autopilot action from before
    it started are history; a loss above its threshold now fires once, for the latest point;
    what comes after the start fires as usual."""
    run = _run(tmp_path)
    metrics = os.path.join(run, "hotcb.metrics.jsonl")
    for step, loss in [(1, 1.0), (2, float("nan")), (3, 1.0), (4, 3.0), (5, 3.5)]:
        jsonl.append(metrics, {**_rec(step, loss=loss), "wall_time": 100.0 + step})
    jsonl.append(os.path.join(run, "hotcb.autopilot.jsonl"),
                 {"kind": "action", "rule": "lr_drop", "wall_time": 101.0})  # fmt: skip
    alerts = (Alert("hot", "threshold", metric="loss", above=2.0),
              Alert("nan", "nonfinite", cooldown=0.0), Alert("ap", "autopilot"))  # fmt: skip
    n = Notifier(run, NotifyConfig(alerts=alerts, deliveries=()), history_before=200.0)
    fired = n.step(now=1000.0)
    assert [(e["alert"], e["step"], e["message"]) for e in fired] == [
        ("hot", 5, "loss=3.5 at step 5 is above 2")
    ]
    jsonl.append(metrics, {**_rec(6, loss=float("inf")), "wall_time": 300.0})
    assert [(e["alert"], e["step"]) for e in n.step(now=1001.0)] == [("nan", 6)]
    n.close()
    # a restart is not a fresh start: nothing is history, nothing fires again
    jsonl.append(metrics, {**_rec(7, loss=1.0), "wall_time": 50.0})
    again = Notifier(run, NotifyConfig(alerts=alerts, deliveries=()))
    assert again.step(now=1002.0) == []
    jsonl.append(metrics, {**_rec(8, loss=float("nan")), "wall_time": 60.0})
    assert [e["alert"] for e in again.step(now=1003.0)] == ["nan"]
    again.close()


def test_notify_on_a_run_that_is_over_says_so(tmp_path: Any, receiver: Any, cli: Any) -> None:
    """`hotcb notify` on a finished run made its round and exited 0 without a word."""
    from hotcb import HotKernel

    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run)
    kernel.apply({"step": 0, "metrics": {"loss": 1.0}})
    kernel.close()
    done = cli(run, "notify", "--notify-webhook", f"{receiver.url}/hook", "--interval", "0.1")
    assert done.returncode == 0, done.stderr
    assert "hotcb notify: the run finished at step 0; nothing more to watch" in done.stdout


def test_a_loop_that_an_error_ended_through_close_is_a_crash(tmp_path: Any) -> None:
    """`try: ... finally: kernel.close()` closes the run when the user's code raises: the
    process is gone and did close it, so the crash alert said nothing."""
    from hotcb import HotKernel

    run = os.fspath(tmp_path / "run")

    def train() -> None:
        with HotKernel(run) as kernel:
            for step in range(5):
                kernel.apply({"step": step, "metrics": {"loss": 1.0}})
            raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        train()
    n = Notifier(run, NotifyConfig(alerts=(Alert("crash", "crash"),), deliveries=()))
    (fired,) = n.step()
    n.close()
    assert fired["message"] == ("the training crashed at step 4 (RuntimeError: CUDA out of memory)")
