"""The LLM autopilot against a local scripted chat server (the model excluded): the engine's
cost per decision, the time from a reply to the applied change, and a scripted oracle and a
random policy through the same engine on the diverging digits run.

    python benchmarks/ai_autopilot.py            # 3 seeds, ~3-4 min on 2 cores
    python benchmarks/ai_autopilot.py --quick    # 1 seed, short, a temp dir (~1 min)
    python benchmarks/ai_autopilot.py --out DIR  # the report elsewhere

Writes ``<out>/ai_autopilot.md`` and ``<out>/img/ai_autopilot_digits_high.png``. ``--out``
defaults to ``docs/benchmarks``, or a temporary directory with ``--quick``.

No model is asked: :class:`hotcb.testing.chat_server.ScriptedChatServer` answers every call
on 127.0.0.1 through the ``openai`` SDK, from a policy function of the request. Three parts:

1. **Engine cost per decision.** On a run directory of a few thousand metric records (the
   MLP of task 2 below, trained 3000 steps under ``ai_auto``), the medians and p95 over
   repetitions of: building the context (``Autopilot.ai_context()`` and ``messages()``),
   ``parse_reply`` on a one-action reply, ``AIPolicy.start`` (logs the prompt, starts the
   thread), and one ``Autopilot.step()`` that applies a reply that is already back
   (``send_action`` writes the command); beside them, the transport: the SDK's round trip to the
   scripted server, and the call as the engine's thread sees it.
2. **Reply to applied change, live.** A real trainer process
   (``python -m hotcb.testing.trainer --step-delay 0.01``) and the autopilot in this process
   looping ``step()`` every ``interval`` seconds, as ``hotcb autopilot`` does; the time from
   ``replied_at`` (the engine's ``action`` record) to the ledger's ``applied`` entry of the
   command it sent (its ``wall_time``), under two settings.
3. **Policies on the diverging run.** Task 2 of ``benchmarks/autopilot.py`` (the digits MLP at
   lr 1e-1, 10x its good lr, 1200 steps, an evaluation every 10): a fixed lr, the rule
   autopilot (``mode="auto"``), and ``mode="ai_auto"`` with a scripted oracle, a random policy
   and the random policy with the guard switched off, 3 seeds each, driven synchronously after
   each evaluation (the run does not depend on the machine's speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tune import current_lr, fmt, mean_std, revision

from autopilot import TASKS, Result, Trainer, adamw, run_condition  # benchmarks/ is sys.path[0]
from hotcb import HotClient, HotKernel, jsonl
from hotcb.autopilot.ai import AIConfig, messages, parse_reply
from hotcb.autopilot.engine import RECORDS, Autopilot
from hotcb.autopilot.rules import DEFAULT_RULES, Ruleset, load_rules
from hotcb.ledger import iter_entries
from hotcb.runfiles import LEDGER, METRICS
from hotcb.testing.chat_server import ScriptedChatServer

TASK = TASKS[1]  # "2. MLP on digits, lr 10× too high"
EVAL_EVERY = 10  # as benchmarks/autopilot.py
SETTLE = 30  # AIConfig.settle_steps: the guard judges an AI change 30 steps after it
CONDITIONS = ("fixed", "rules", "oracle", "random", "random_noguard")
LABELS = {
    "fixed": "fixed lr (no controller)",
    "rules": "rule autopilot (auto)",
    "oracle": "ai_auto, oracle policy",
    "random": "ai_auto, random policy",
    "random_noguard": "ai_auto, random, guard off",
}
COLORS = {"fixed": "0.45", "rules": "C3", "oracle": "C0", "random": "C1", "random_noguard": "C4"}
Step = dict[str, Any]
Policy = Callable[[dict[str, Any]], Step]


def ai_config(base_url: str, every_steps: int = EVAL_EVERY) -> AIConfig:
    return AIConfig(base_url=base_url, model="scripted", every_steps=every_steps,
                    min_interval_sec=0, settle_steps=SETTLE, budget_usd=1.0)  # fmt: skip


# ------------------------------------------------------------------------------ the policies
def reply(reasoning: str, actions: list[dict[str, Any]], next_check: int | None = None) -> Step:
    return {"json": {"reasoning": reasoning, "actions": actions, "next_check": next_check}}


def lr_mult(factor: float) -> dict[str, Any]:
    return {"action": "lr_mult", "params": {"factor": factor}}


def request_context(body: dict[str, Any]) -> dict[str, Any]:
    """The run state the engine sent: the JSON object in the last message
    (``Run state (JSON):\\n{...}\\nReply with the JSON object.``)."""
    text = str(body["messages"][-1]["content"])
    ctx, _ = json.JSONDecoder().raw_decode(text, text.index("{"))
    return ctx


ORACLE_PATIENCE = 50  # steps without a new best of the key metric before the oracle cuts
ORACLE_FLOOR = 1e-3  # and it never cuts the lr below this fraction of its start


def oracle(body: dict[str, Any]) -> Step:
    """Cut the lr ×0.3 when the training loss diverges or rises, or the key metric has not
    improved for ``ORACLE_PATIENCE`` steps; otherwise nothing. It waits until its last change
    was measured (the context's ``impact``) and stops at ``ORACLE_FLOOR`` × the start lr.
    Written knowing the task (its lr is too high), hence "oracle"."""
    ctx = request_context(body)
    metrics = ctx.get("metrics") or {}
    key = metrics.get(ctx.get("key_metric")) or {}
    train = metrics.get("loss") or {}
    lr = (ctx.get("actuators") or {}).get("opt.lr") or {}
    done = int((ctx.get("steps") or {}).get("done") or 0)
    if any(c.get("source") == "ai" and c.get("impact") == "not measured yet"
           for c in ctx.get("changes") or ()):  # fmt: skip
        return reply("my last change has not been measured yet; waiting", [])
    if lr.get("current", 1.0) <= lr.get("initial", 1.0) * ORACLE_FLOOR:
        return reply("the lr is already far below its start; leaving it", [])
    if train.get("label") in ("diverging", "rising", "non-finite"):
        return reply(f"the training loss is {train['label']}: cutting the lr", [lr_mult(0.3)])
    stale = done - int(key.get("best_step", done))
    if key.get("label") in ("diverging", "rising") or stale >= ORACLE_PATIENCE:
        why = f"{ctx.get('key_metric')} has not improved for {stale} steps ({key.get('label')})"
        return reply(f"{why}: cutting the lr", [lr_mult(0.3)])
    return reply("the key metric is improving; nothing to change", [])


def random_policy(seed: int) -> Policy:
    """Each call, with probability 1/3 each: lr_mult with a factor uniform in [0.1, 2],
    wd_mult with a factor log-uniform in [0.1, 10], or nothing. Seeded: one call per
    evaluation, in order, so a seed always draws the same sequence."""
    rng = random.Random(1000 + seed)

    def policy(body: dict[str, Any]) -> Step:
        u = rng.random()
        if u < 1 / 3:
            return reply("random", [lr_mult(round(rng.uniform(0.1, 2.0), 4))])
        if u < 2 / 3:
            factor = round(10 ** rng.uniform(-1.0, 1.0), 4)
            return reply("random", [{"action": "wd_mult", "params": {"factor": factor}}])
        return reply("random", [])

    return policy


# ------------------------------------------------------------------------------ driving the engine
def decide(pilot: Autopilot, timeout: float = 60.0) -> None:
    """One synchronous round: ``step()``; when it started a call, wait for the reply and
    ``step()`` again to apply it. Whether a call started is read from the call counter, not
    from timing, so a run's decisions do not depend on the machine's speed."""
    ai = pilot.ai
    assert ai is not None
    calls = ai.calls
    pilot.step()
    if ai.calls == calls:
        return
    deadline = time.monotonic() + timeout
    while ai.busy:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no reply from the scripted server in {timeout} s")
        time.sleep(0.0002)
    pilot.step()


def train_ai(
    tr: Trainer, steps: int, run_dir: str, base_url: str, rules: Ruleset | None = None
) -> tuple[HotKernel, Autopilot]:
    """Train ``tr`` under a kernel and ``ai_auto``; the kernel is left open (close it)."""
    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    pilot = Autopilot(run_dir, mode="ai_auto", key_metric="val_loss", rules=rules,
                      ai=ai_config(base_url))  # fmt: skip
    opt, model = tr.opt, tr.run.model

    def on_step(step: int, metrics: dict[str, float]) -> None:
        kernel.apply({"step": step, "optimizer": opt, "model": model, "metrics": metrics})
        if "val_loss" in metrics:
            decide(pilot)

    try:
        tr.train(steps, on_step)
    except BaseException:
        kernel.close()
        raise
    return kernel, pilot


def run_dir_in(tmp: str, name: str) -> str:
    """A run directory alone in its own folder: the engine reads the learnings of the runs
    beside it (project memory), and these runs must not see each other's."""
    parent = os.path.join(tmp, name)
    os.makedirs(parent, exist_ok=True)
    return os.path.join(parent, "run")


# ------------------------------------------------------------------------------ 1. engine cost
@dataclass
class Timing:
    key: str
    part: str  # engine | transport
    what: str
    seconds: list[float]

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.seconds)

    @property
    def p95_ms(self) -> float:
        xs = sorted(self.seconds)
        return 1e3 * xs[min(len(xs) - 1, math.ceil(0.95 * len(xs)) - 1)]


@dataclass
class Cost:
    timings: list[Timing]
    reps: int
    sizes: dict[str, Any]


ACT = reply("val_loss stalled: cutting the lr by half, then checking again in 50 steps",
            [lr_mult(0.5)], 50)  # fmt: skip


def engine_cost(tmp: str, steps: int, reps: int) -> Cost:
    """Train ``steps`` steps under ``ai_auto`` with the oracle, then time the engine's parts
    on that run directory (the kernel still open, the run not ended)."""
    run = TASK.make(0)
    tr = Trainer(run, adamw(run, TASK))
    run_dir = run_dir_in(tmp, "cost")
    with ScriptedChatServer(policy=oracle) as srv:
        kernel, pilot = train_ai(tr, steps, run_dir, srv.base_url)
        try:
            srv.policy = lambda body: ACT  # every call from here on: one lr_mult
            timings = time_engine(pilot, reps) + time_transport(srv, pilot, reps)
        finally:
            kernel.close()
    msgs = messages(pilot.ai_context())
    sizes = {
        "metric records": count_lines(os.path.join(run_dir, METRICS)),
        "autopilot records": count_lines(os.path.join(run_dir, RECORDS)),
        "ledger entries": count_lines(os.path.join(run_dir, LEDGER)),
        "prompt characters": sum(len(m["content"]) for m in msgs),
        "context characters": len(msgs[-1]["content"]),
        "steps": steps,
    }
    return Cost(timings, reps, sizes)


def count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def time_engine(pilot: Autopilot, reps: int) -> list[Timing]:
    ai = pilot.ai
    assert ai is not None
    text = json.dumps(ACT["json"])
    ctx_t, parse_t, start_t, call_t, apply_t, idle_t = ([] for _ in range(6))
    for i in range(reps + 5):  # the first 5: warm-up, not counted
        keep = i >= 5
        t0 = time.perf_counter()
        msgs = messages(pilot.ai_context())
        t1 = time.perf_counter()
        parse_reply(text, max_actions=ai.config.max_actions)
        t2 = time.perf_counter()
        ai.start(msgs, pilot.step_now, "benchmark")
        t3 = time.perf_counter()
        pilot.guard = None  # the same step each time: let every reply apply (one at a time
        # is the guard's rule in a real run, where the last change would still be judged)
        while ai.busy:
            time.sleep(0.0002)
        t4 = time.perf_counter()
        out = pilot.step()
        t5 = time.perf_counter()
        if not any(r.get("kind") == "action" and r.get("state") == "applied" for r in out):
            raise RuntimeError(f"the reply was not applied: {out}")
        pilot.step()  # nothing new: an idle round
        t6 = time.perf_counter()
        if keep:
            for xs, dt in ((ctx_t, t1 - t0), (parse_t, t2 - t1), (start_t, t3 - t2),
                           (call_t, t4 - t3), (apply_t, t5 - t4), (idle_t, t6 - t5)):  # fmt: skip
                xs.append(dt)
    times = {"context": ctx_t, "parse": parse_t, "start": start_t, "apply": apply_t,
             "idle": idle_t, "call": call_t}  # fmt: skip
    return [Timing(key, part, what, times[key]) for key, part, what in ENGINE_ROWS]


ENGINE_ROWS = (
    ("context", "engine", "build the context: `ai_context()` + `messages()`"),
    ("parse", "engine", "`parse_reply` (one lr_mult action)"),
    ("start", "engine", "`AIPolicy.start`: log the prompt, save the state, start the thread"),
    ("apply", "engine", "`Autopilot.step()` applying a ready reply (`send_action` writes the "
     "command)"),
    ("idle", "engine", "`Autopilot.step()` with nothing new (an idle round, for reference)"),
    ("call", "transport", "the call in the engine's thread: `start()` returned → reply read "
     "(SDK round trip, `parse_reply`, the response logged)"),
)  # fmt: skip


def time_transport(srv: ScriptedChatServer, pilot: Autopilot, reps: int) -> list[Timing]:
    """The openai SDK's round trip to the scripted server alone (the same request the engine
    sends, ``response_format`` included), without and with Nagle's algorithm on the server's
    sockets (the server writes a reply's headers and body in two writes; with Nagle on, the
    second waits for the client's delayed ACK, ~40 ms on Linux)."""
    import openai

    from hotcb.autopilot.ai import REPLY_SCHEMA

    msgs = messages(pilot.ai_context())
    schema = {"name": "hotcb_decision", "schema": REPLY_SCHEMA, "strict": False}
    out = []
    for nodelay in (False, True):
        srv.httpd.RequestHandlerClass.disable_nagle_algorithm = nodelay  # type: ignore[attr-defined]
        client = openai.OpenAI(base_url=srv.base_url, api_key="no-key", max_retries=0)
        seconds = []
        for i in range(reps + 5):
            t0 = time.perf_counter()
            client.chat.completions.create(
                model="scripted", messages=msgs, temperature=0.2,  # type: ignore[arg-type]
                response_format={"type": "json_schema", "json_schema": schema},  # type: ignore[typeddict-item]
            )  # fmt: skip
            if i >= 5:
                seconds.append(time.perf_counter() - t0)
        client.close()
        what = ("openai SDK round trip to the scripted server (direct), the server as shipped "
                "(TCP_NODELAY)" if nodelay else "the same without TCP_NODELAY "
                "(`disable_nagle_algorithm = False`): a delayed ACK per reply")  # fmt: skip
        out.append(Timing("sdk_nodelay" if nodelay else "sdk", "transport", what, seconds))
    srv.httpd.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
    return out


# ------------------------------------------------------------------------------ 2. latency
@dataclass(frozen=True)
class LiveSetting:
    name: str
    interval: float  # seconds between the autopilot's rounds
    poll: float  # the trainer kernel's poll_interval_sec
    every_steps: int


LIVE = (
    LiveSetting("defaults: autopilot round 1 s, kernel poll 0.05 s", 1.0, 0.05, 20),
    LiveSetting("tight: autopilot round 0.1 s, kernel poll every step", 0.1, 0.0, 20),
)


@dataclass
class Latency:
    setting: LiveSetting
    total: list[float]  # replied_at -> ledger applied
    to_command: list[float]  # replied_at -> the action record (command written)
    to_applied: list[float]  # the action record -> ledger applied
    steps_per_sec: float
    unmatched: int


def alternating() -> Policy:
    """lr ×0.8, then ×1.25, and so on: an action every call, the lr staying near its start."""
    n = [0]

    def policy(body: dict[str, Any]) -> Step:
        n[0] += 1
        return reply("latency probe", [lr_mult(0.8 if n[0] % 2 else 1.25)])

    return policy


def live_latency(tmp: str, setting: LiveSetting, decisions: int) -> Latency:
    run_dir = run_dir_in(tmp, f"live-{setting.interval:g}")
    ready = os.path.dirname(run_dir) + ".ready"  # not beside the run (project memory)
    cmd = [sys.executable, "-m", "hotcb.testing.trainer", "--run-dir", run_dir, "--steps",
           "1000000", "--step-delay", "0.01", "--poll-interval", str(setting.poll),
           "--ready-file", ready]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.exists(ready) or proc.poll() is not None, 120)
        if proc.poll() is not None:
            raise RuntimeError(f"the trainer exited: {proc.stderr.read() if proc.stderr else ''}")
        with ScriptedChatServer(policy=alternating()) as srv:
            pilot = Autopilot(run_dir, mode="ai_auto", key_metric="loss",
                              ai=ai_config(srv.base_url, setting.every_steps))  # fmt: skip
            deadline = time.monotonic() + 30 + 3 * decisions * setting.interval
            while applied_actions(pilot.run_dir) < decisions and time.monotonic() < deadline:
                pilot.step()
                time.sleep(setting.interval)
            HotClient(run_dir, source="benchmark", create=False).send("control", "stop")
            proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    return match_latency(run_dir, setting)


def wait_for(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s")
        time.sleep(0.05)


def applied_actions(run_dir: str) -> int:
    return len(ai_actions(run_dir))


def ai_actions(run_dir: str) -> list[dict[str, Any]]:
    return [r for r in jsonl.iter_records(os.path.join(run_dir, RECORDS))
            if r.get("kind") == "action" and r.get("state") == "applied"]  # fmt: skip


def match_latency(run_dir: str, setting: LiveSetting) -> Latency:
    """Each applied AI action against the ledger's applied entry of its command."""
    applied = {e["cmd_id"]: e for e in iter_entries(os.path.join(run_dir, LEDGER))
               if e.get("decision") == "applied"}  # fmt: skip
    total, to_command, to_applied = [], [], []
    unmatched = 0
    for a in ai_actions(run_dir):
        entry = next((applied[c] for c in a.get("cmd_ids") or () if c in applied), None)
        if entry is None or not a.get("replied_at"):
            unmatched += 1  # sent just before the stop: never applied
            continue
        total.append(entry["wall_time"] - a["replied_at"])
        to_command.append(a["wall_time"] - a["replied_at"])
        to_applied.append(entry["wall_time"] - a["wall_time"])
    metrics = list(jsonl.iter_records(os.path.join(run_dir, METRICS)))
    span = metrics[-1]["wall_time"] - metrics[0]["wall_time"] if len(metrics) > 1 else 0.0
    rate = (metrics[-1]["step"] - metrics[0]["step"]) / span if span > 0 else math.nan
    return Latency(setting, total, to_command, to_applied, rate, unmatched)


# ------------------------------------------------------------------------------ 3. the policies
@dataclass
class Outcome:
    """One condition, one seed: the training result and what the controller did."""

    result: Result
    calls: int = 0
    applied: dict[str, int] = field(default_factory=dict)  # action name -> count
    rejected: int = 0
    guards: int = 0  # guard checks
    undos: int = 0  # guard undos (records with undo_cmd_id)
    undos_applied: int = 0  # the ledger's applied undo entries
    wd: list[tuple[int, float]] = field(default_factory=list)  # weight decay set, from the ledger

    @property
    def condition(self) -> str:
        return self.result.condition

    @property
    def n_applied(self) -> int:
        return sum(self.applied.values())


def run_policy(condition: str, seed: int, tmp: str, total_steps: int) -> Outcome:
    task = dataclasses.replace(TASK, total_steps=total_steps)
    if condition in ("fixed", "rules"):
        runs_dir = os.path.join(tmp, f"rules-s{seed}")
        res = run_condition(task, "fixed" if condition == "fixed" else "autopilot", seed,
                            runs_dir, DEFAULT_RULES)  # fmt: skip
        out = Outcome(dataclasses.replace(res, condition=condition))
        run_dir = os.path.join(runs_dir, f"{task.key}-s{seed}")
        return tally(out, run_dir) if condition == "rules" else out
    t0 = time.perf_counter()
    run = task.make(seed)
    tr = Trainer(run, adamw(run, task))
    run_dir = run_dir_in(tmp, f"{condition}-s{seed}")
    policy = oracle if condition == "oracle" else random_policy(seed)
    rules = None
    if condition == "random_noguard":  # the guard still judges, but never undoes
        rules = dataclasses.replace(load_rules(None), guard_tolerance=1e9)
    with ScriptedChatServer(policy=policy) as srv:
        kernel, _ = train_ai(tr, task.total_steps, run_dir, srv.base_url, rules)
        kernel.close()
    loss, acc = tr.evaluate()
    records = list(jsonl.iter_records(os.path.join(run_dir, RECORDS)))
    res = Result(condition, seed, loss, acc, current_lr(tr.opt), time.perf_counter() - t0,
                 tr.curve, tr.lrs, records)  # fmt: skip
    return tally(Outcome(res), run_dir)


def tally(out: Outcome, run_dir: str) -> Outcome:
    for r in out.result.records:
        kind = r.get("kind")
        if kind == "ai_reply":
            out.calls += 1
        elif kind == "action" and r.get("state") == "applied":
            name = (r.get("action") or {}).get("name", "?")
            out.applied[name] = out.applied.get(name, 0) + 1
        elif kind == "action":
            out.rejected += 1
        elif kind == "guard":
            out.guards += 1
            out.undos += bool(r.get("undo_cmd_id"))
    for e in iter_entries(os.path.join(run_dir, LEDGER)):
        if e.get("decision") != "applied":
            continue
        out.undos_applied += e.get("module") == "control" and e.get("op") == "undo"
        change = (e.get("changes") or {}).get("weight_decay")
        if isinstance(change, dict) and isinstance(change.get("new"), (int, float)):
            out.wd.append((int(e.get("step") or 0), float(change["new"])))
    return out


CHANCE = 0.15  # val accuracy at or below this: the model guesses (chance is 0.10)


def collapse(r: Result) -> int | None:
    """The evaluation step from which the val accuracy stays at chance to the end, or None."""
    step = None
    for s, _, acc in reversed(r.curve):
        if acc > CHANCE:
            break
        step = s
    return step


def compare_policies(seeds: list[int], tmp: str, total_steps: int) -> list[Outcome]:
    todo = [(s, c) for s in seeds for c in CONDITIONS]
    out = []
    for i, (seed, cond) in enumerate(todo, 1):
        o = run_policy(cond, seed, tmp, total_steps)
        out.append(o)
        r = o.result
        print(f"[{i:>2}/{len(todo)}] seed {seed} {cond:<15} val loss {r.val_loss:.4f}  acc "
              f"{r.val_acc:.3f}  lr_end {r.final_lr:.2e}  calls {o.calls:>3}  actions "
              f"{o.n_applied:>3}  guard {o.guards}/{o.undos} undone  ({r.seconds:.1f} s)",
              flush=True)  # fmt: skip
    return out


# ------------------------------------------------------------------------------ the report
def ms(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def cost_table(cost: Cost) -> list[str]:
    lines = ["| part | what | median (ms) | p95 (ms) |", "|---|---|---|---|"]
    for t in cost.timings:
        lines.append(f"| {t.part} | {t.what} | {ms(t.median_ms)} | {ms(t.p95_ms)} |")
    return lines


def cost_summary(cost: Cost) -> list[str]:
    t = {x.key: x.median_ms for x in cost.timings}
    ctx, parse, start, apply = (t[k] for k in ("context", "parse", "start", "apply"))
    return [
        f"- The engine's own work per decision, model and transport excluded: "
        f"**{ctx + parse + start + apply:.1f} ms** (medians: context {ctx:.1f} + parse "
        f"{parse:.2f} + `start` {start:.1f} + the round that applies the reply {apply:.1f}), "
        f"on a run of {cost.sizes['metric records']} metric records. The SDK's round trip to "
        f"the scripted server on the same machine takes {t['sdk_nodelay']:.1f} ms (the "
        f"server sets TCP_NODELAY; without it, {t['sdk']:.1f} ms, a delayed ACK per reply).",
    ]


def latency_table(lat: list[Latency]) -> list[str]:
    lines = [
        "| setting | decisions | reply → applied: median (s) | max (s) | reply → command "
        "written: median | command → applied: median (max) | trainer steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in lat:
        if not x.total:
            lines.append(f"| {x.setting.name} | 0 | — | — | — | — | {x.steps_per_sec:.0f} |")
            continue
        lines.append(
            f"| {x.setting.name} | {len(x.total)} | {statistics.median(x.total):.3f} | "
            f"{max(x.total):.3f} | {statistics.median(x.to_command):.3f} | "
            f"{statistics.median(x.to_applied):.3f} ({max(x.to_applied):.3f}) | "
            f"{x.steps_per_sec:.0f} |"
        )
    return lines


def policy_table(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "| condition | final val loss | val accuracy | AI calls | actions applied (lr / wd) "
        "| rejected | guard checks | guard undos (applied in ledger) | lr at end (median) "
        "| s / run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cond, os_ in by_condition(outcomes).items():
        rs = [o.result for o in os_]
        calls = f"{avg(o.calls for o in os_):.0f}" if cond not in ("fixed", "rules") else "—"
        acts = "—"
        if cond != "fixed":
            acts = (f"{avg(o.n_applied for o in os_):.1f} ({avg(o.applied.get('lr_mult', 0) for o in os_):.1f} / "
                    f"{avg(o.applied.get('wd_mult', 0) for o in os_):.1f})")  # fmt: skip
        cells = [
            LABELS[cond], fmt([r.val_loss for r in rs]), fmt([r.val_acc for r in rs]), calls,
            acts, "—" if cond == "fixed" else f"{avg(o.rejected for o in os_):.1f}",
            "—" if cond == "fixed" else f"{avg(o.guards for o in os_):.1f}",
            "—" if cond == "fixed" else
            f"{avg(o.undos for o in os_):.1f} ({avg(o.undos_applied for o in os_):.1f})",
            f"{statistics.median(r.final_lr for r in rs):.2e}",
            f"{avg(r.seconds for r in rs):.1f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def seed_table(outcomes: list[Outcome]) -> list[str]:
    g = by_condition(outcomes)
    conds = list(g)
    lines = ["| seed | " + " | ".join(LABELS[c] for c in conds) + " |",
             "|---" * (len(conds) + 1) + "|"]  # fmt: skip
    for seed in sorted({o.result.seed for o in outcomes}):
        row = [next((f"{o.result.val_loss:.3f}" for o in g[c] if o.result.seed == seed), "—")
               for c in conds]  # fmt: skip
        lines.append(f"| {seed} | " + " | ".join(row) + " |")
    return lines


def avg(xs: Any) -> float:
    return statistics.fmean(list(xs))


def by_condition(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    out: dict[str, list[Outcome]] = {}
    for o in outcomes:
        out.setdefault(o.condition, []).append(o)
    return out


def loss_of(g: dict[str, list[Outcome]], cond: str) -> list[float]:
    return [o.result.val_loss for o in g[cond]]


def paired(g: dict[str, list[Outcome]], a: str, b: str) -> tuple[int, int]:
    """On how many seeds ``a`` ends below ``b`` (same seed: same init and batches)."""
    other = {o.result.seed: o.result.val_loss for o in g[b]}
    pairs = [o.result.val_loss < other[o.result.seed] for o in g[a] if o.result.seed in other]
    return sum(pairs), len(pairs)


def versus(g: dict[str, list[Outcome]], a: str, b: str) -> str:
    (ma, sa), (mb, sb) = mean_std(loss_of(g, a)), mean_std(loss_of(g, b))
    lower, n = paired(g, a, b)
    noise = ", less than the seeds' spread" if abs(ma - mb) < max(sa, sb) else ""
    word = "lower" if ma < mb else "higher"
    return (f"{LABELS[a]} ends {word} than {LABELS[b]}: {ma:.3f} vs {mb:.3f} "
            f"({ma / mb - 1:+.0%}{noise}; lower on {lower} of {n} seeds)")  # fmt: skip


def verdicts(outcomes: list[Outcome]) -> list[str]:
    g = by_condition(outcomes)
    best = min(g, key=lambda c: statistics.fmean(loss_of(g, c)))
    out = [f"- Lowest mean final val loss: **{LABELS[best]}** "
           f"({statistics.fmean(loss_of(g, best)):.3f})."]  # fmt: skip
    for a, b in (("oracle", "rules"), ("oracle", "fixed"), ("random", "fixed"),
                 ("random", "random_noguard"), ("rules", "fixed")):  # fmt: skip
        if a in g and b in g:
            out.append(f"- {versus(g, a, b)}.")
    if "random" in g and "fixed" in g:
        (m_r, _), (m_f, _) = mean_std(loss_of(g, "random")), mean_std(loss_of(g, "fixed"))
        worse, n = len(g["random"]) - paired(g, "random", "fixed")[0], len(g["random"])
        verdict = ("**The guard does not contain the random policy here**" if m_r > m_f
                   else "The random policy behind the guard does no harm here")  # fmt: skip
        out.append(f"- {verdict}: it ends at {m_r:.3f} against the fixed lr's {m_f:.3f} "
                   f"(worse on {worse} of {n} seeds).")  # fmt: skip
    if "random" in g:
        out += random_story(g["random"])
    return out


def random_story(rnd: list[Outcome]) -> list[str]:
    """What happened to the random policy's runs, and what its guard did."""
    acts, guards, undos = (sum(f(o) for o in rnd) for f in
                           (lambda o: o.n_applied, lambda o: o.guards, lambda o: o.undos))  # fmt: skip
    out = [
        f"- The guard on the random policy: {acts} random actions applied over {len(rnd)} "
        f"runs; the guard judged {guards} of them and undid {undos}. It judges one change at "
        f"a time, {SETTLE} steps + 5 evaluations after it, and the model's knob changes are "
        "refused meanwhile (so each change is judged on its own), and for twice the settle "
        "time after an undo. An undo puts back the value from before the judged change; it "
        "does not restore the weights."
    ]
    for o in rnd:
        r = o.result
        at = collapse(r)
        if at is None:
            out.append(f"  - seed {r.seed}: never at chance; final val loss {r.val_loss:.3f}.")
            continue
        lr_max = max(lr for st, lr in r.lrs if st <= at)
        wd_max = max((w for st, w in o.wd if st <= at), default=0.01)
        out.append(
            f"  - seed {r.seed}: val accuracy at chance (≤ {CHANCE}) from step {at} to the "
            f"end; before that the lr had reached {lr_max:.2g} (start 0.1) and the weight decay "
            f"{wd_max:.2g} (start 0.01). The network does not come back: reverting a knob does "
            "not restore the weights."
        )
    return out


def guard_table(o: Outcome) -> list[str]:
    """Every guard verdict of one run: the change it watched and what the lr did meanwhile."""
    r = o.result
    acts = {(a.get("cmd_ids") or [None])[0]: a for a in r.records
            if a.get("kind") == "action" and a.get("state") == "applied"}  # fmt: skip
    lines = [
        "| judged at step | change watched | lr then → when judged | val loss before → after "
        "(worse by) | verdict |",
        "|---|---|---|---|---|",
    ]
    for g in (x for x in r.records if x.get("kind") == "guard"):
        a = acts.get(g.get("cmd_id")) or {}
        what = a.get("action") or {}
        params = ", ".join(f"{k}={v}" for k, v in (what.get("params") or {}).items())
        step = int(a.get("step", 0))
        lr_then = next((lr for st, lr in r.lrs if st > step), r.final_lr)
        lr_now = next((lr for st, lr in r.lrs if st >= int(g["step"])), r.final_lr)
        lines.append(
            f"| {g['step']} | step {step}: {what.get('name', '?')}({params}) | {lr_then:.2g} → "
            f"{lr_now:.2g} | {g['before']:.3f} → {g['after']:.3f} ({g['worse_by']:+.0%}) | "
            f"{'**undone**' if g.get('undo_cmd_id') else 'kept'} |"
        )
    return lines


def setup_text(cost: Cost, meta: dict[str, Any]) -> str:
    s, total_steps, seeds = cost.sizes, meta["total_steps"], meta["seeds"]
    calls = total_steps // EVAL_EVERY
    return f"""\
All AI conditions use `AIConfig(base_url=<scripted server>, model="scripted", \
every_steps={EVAL_EVERY}, min_interval_sec=0, settle_steps={SETTLE}, budget_usd=1.0)`, every \
other setting at its default (the model name is priced at 0, so the budget is never spent), and \
the default rules as sensors (`ai_auto`: the rules detect, the model decides, the guard of \
`default_rules.yaml` judges: 5 evaluations, undo when 10 % worse).

**Part 1** runs on the MLP of part 3 trained {s["steps"]} steps under `ai_auto` with the oracle: \
{s["metric records"]} metric records, {s["autopilot records"]} autopilot records and \
{s["ledger entries"]} ledger entries before the timing starts; the prompt is \
{s["prompt characters"]} characters (the run state {s["context characters"]}). Each of \
{cost.reps} repetitions (after 5 not counted): build the context; parse a one-action reply; \
`AIPolicy.start` a call to the scripted server (which now always answers `lr_mult(0.5)`); wait \
for it; time the `step()` that applies it (poll, check, `send_action` writes the command to \
`hotcb.commands.jsonl`, the records, the state file); then one more `step()` with nothing new. \
Training does not go on meanwhile, so the commands pile up unapplied; the guard is disarmed \
before each repetition, so each reply is applied (in a run, the model's knob changes wait \
while the guard judges the last one). The SDK rows send the same request (with `response_format`) with a bare \
`openai.OpenAI(max_retries=0)`.

**Part 2**: `python -m hotcb.testing.trainer --run-dir RUN --steps 1000000 --step-delay 0.01 \
--poll-interval P` in its own process (the TinyMLP on digits, AdamW lr 1e-2, `loss` and `lr` \
logged every step); this process runs `Autopilot(RUN, mode="ai_auto", key_metric="loss")` with \
`every_steps=20` and loops `step(); sleep(interval)` as `hotcb autopilot --interval` does; the \
server answers every call with lr ×0.8, then ×1.25, alternately. When enough actions were \
applied the benchmark sends `control stop`. "reply → applied" is the ledger entry's `wall_time` \
minus the `action` record's `replied_at` (both `time.time()` on this machine); the two columns \
after it split it at the `action` record's own `wall_time`, written right after `send_action`.

**Part 3**: task 2 of `benchmarks/autopilot.py`: the 64-128-128-10 MLP on digits with AdamW at \
lr 1e-1 (10× its good lr), {total_steps} steps, an evaluation (val loss, accuracy) every \
{EVAL_EVERY} steps, seeds {", ".join(map(str, seeds))} (init and batch order). A real `HotKernel(run, \
poll_interval_sec=0)` in a bare loop, `kernel.apply` after every step; after each evaluation's \
`apply` one synchronous round: `step()`, and when it started a call, wait until `ai.busy` is \
False and `step()` again, which applies the reply; the kernel applies it at the next step. So \
the model is asked once per evaluation ({calls} times a run), and the runs do not depend on the \
machine's speed.

| condition | what it is |
|---|---|
| fixed lr (no controller) | lr 1e-1 throughout (`benchmarks/autopilot.py`'s `fixed`) |
| rule autopilot (auto) | `Autopilot(mode="auto")` with the default rules (`benchmarks/autopilot.py`'s `autopilot`) |
| ai_auto, oracle policy | reads the run state from the request; waits while its last change shows `impact: "not measured yet"`; cuts the lr ×0.3 when the training loss is labelled diverging, rising or non-finite, or the key metric is labelled diverging/rising or has no new best for {ORACLE_PATIENCE} steps; never below {ORACLE_FLOOR:g} × the start lr; else no action. Written knowing this task, hence "oracle" |
| ai_auto, random policy | each call, 1/3 each: `lr_mult` with factor uniform in [0.1, 2], `wd_mult` with factor log-uniform in [0.1, 10], or nothing (seeded per run) |
| ai_auto, random, guard off | the same draws with the guard's tolerance at 1e9: it still judges (and so still holds the model to one change at a time), never undoes |

On the random policy's lr: a factor uniform in [0.1, 2] has a geometric mean of 0.86 \
(on average the lr drifts down) but a log spread of 0.71 per draw, so in some runs the lr first \
climbs several-fold; the lr actuator itself allows up to 10, and the action bounds are per \
call, not per run.
"""


def write_report(out: str, cost: Cost, lat: list[Latency], outcomes: list[Outcome],
                 meta: dict[str, Any]) -> str:  # fmt: skip
    lines = [
        "# LLM autopilot benchmark",
        "",
        f"Generated by `{meta['command']}`; do not edit by hand. hotcb's LLM autopilot "
        "(`ai_auto`) against a local scripted chat-completions server "
        "(`hotcb.testing.chat_server.ScriptedChatServer`), so no model is measured: what the "
        "engine costs per decision, how long a reply takes to become an applied change, and "
        "what the same engine does with a good and a random policy behind it.",
        "",
        f"Machine: {os.cpu_count()} CPU cores (shared, noisy), torch {torch.__version__} on 1 "
        f"thread; hotcb {meta['revision']}; the whole benchmark took {meta['wall'] / 60:.1f} "
        "min.",
        "",
        "## Summary",
        "",
        *cost_summary(cost),
        *latency_summary(lat),
        *verdicts(outcomes),
        "",
        "## Setup",
        "",
        setup_text(cost, meta),
        "## 1. The engine's cost per decision (model excluded)",
        "",
        f"{cost.reps} repetitions each.",
        "",
        *cost_table(cost),
        "",
        "## 2. Reply to applied change, live",
        "",
        *latency_table(lat),
        "",
        *latency_text(),
        "",
        "## 3. Oracle, random, rules and a fixed lr on the diverging run",
        "",
        "Mean ± std over seeds of the validation loss and accuracy after the last step; the "
        "counts are means per run.",
        "",
        *policy_table(outcomes),
        "",
        "Final val loss per seed:",
        "",
        *seed_table(outcomes),
        "",
        "The verdicts are in the summary at the top.",
        "",
        *guard_section(outcomes),
        "![val loss and lr per condition](img/ai_autopilot_digits_high.png)",
    ]
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "ai_autopilot.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def guard_section(outcomes: list[Outcome]) -> list[str]:
    rnd = sorted(by_condition(outcomes).get("random") or [], key=lambda o: o.result.seed)
    if not rnd:
        return []
    return [
        f"What the guard judged on the random policy, seed {rnd[0].result.seed} (from "
        "`hotcb.autopilot.jsonl`, records of kind `guard`):",
        "",
        *guard_table(rnd[0]),
        "",
    ]


def latency_summary(lat: list[Latency]) -> list[str]:
    out = []
    for x in lat:
        if x.total:
            out.append(
                f"- Reply → applied change ({x.setting.name}): median "
                f"{statistics.median(x.total):.3f} s, max {max(x.total):.3f} s over "
                f"{len(x.total)} decisions; bounded by the round interval plus a kernel poll."
            )
    return out


def latency_text() -> list[str]:
    return [
        "What bounds it: a reply that arrives in the engine's thread waits for the autopilot's "
        "next round (`step()`; `hotcb autopilot --interval`, 1 s by default) to be checked and "
        'written to `hotcb.commands.jsonl` — up to one round interval, the "reply → command '
        "written\" column. The trainer's kernel then reads the commands file at the first "
        "`apply()` after its poll interval has passed (`HotKernel(poll_interval_sec=0.05)` by "
        "default; 0 reads every step) and applies the change at that step's end — at most a "
        "poll interval plus a training step (here ~12 ms, 10 of them `--step-delay`), the "
        '"command → applied" column. A reply therefore takes at most about one round '
        "interval + one poll interval + one step to reach the optimizer; the engine's own "
        "milliseconds (part 1) are small beside either.",
    ]


# ------------------------------------------------------------------------------ the plot
def plot(out: str, outcomes: list[Outcome]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.join(out, "img"), exist_ok=True)
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(12, 4.2))
    for cond, os_ in by_condition(outcomes).items():
        rs = [o.result for o in os_]
        n = min(len(r.curve) for r in rs)
        xs = [p[0] for p in rs[0].curve[:n]]
        ys = [statistics.fmean(r.curve[i][1] for r in rs) for i in range(n)]
        ax_loss.plot(xs, ys, color=COLORS[cond], lw=1.2, label=LABELS[cond])
        for i, r in enumerate(rs):
            ax_lr.plot(*zip(*r.lrs, strict=True), color=COLORS[cond], lw=0.9, alpha=0.7,
                       label=LABELS[cond] if i == 0 else None)  # fmt: skip
    ax_loss.set(title="val loss (mean over seeds)", yscale="log", xlabel="step")
    ax_lr.set(title="lr (every seed)", yscale="log", xlabel="step")
    for ax in (ax_loss, ax_lr):
        ax.legend(fontsize=7)
    fig.suptitle(f"{TASK.title}: AI policies through the same engine")
    fig.tight_layout()
    path = os.path.join(out, "img", "ai_autopilot_digits_high.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, short runs (smoke test)")
    ap.add_argument("--out", help="report folder (default docs/benchmarks; --quick: a temp dir)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # small models: threads cost more than they give on 2 cores
    seeds, total, cost_steps, reps, decisions = [0, 1, 2], TASK.total_steps, 3000, 200, 15
    if args.quick:
        seeds, total, cost_steps, reps, decisions = [0], TASK.total_steps // 4, 600, 30, 4
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = args.out or (tempfile.mkdtemp(prefix="hotcb-ai-autopilot-bench-") if args.quick
                       else os.path.join(here, "docs", "benchmarks"))  # fmt: skip
    command = "python benchmarks/ai_autopilot.py" + (" --quick" if args.quick else "")
    meta = {"command": command, "revision": revision(), "total_steps": total, "seeds": seeds}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hotcb-ai-autopilot-runs-") as tmp:
        print(f"1. engine cost: {cost_steps} training steps, then {reps} repetitions", flush=True)
        cost = engine_cost(tmp, cost_steps, reps)
        print("\n".join(cost_table(cost)), flush=True)
        lat = []
        for setting in LIVE:
            print(f"\n2. live latency, {setting.name}", flush=True)
            lat.append(live_latency(tmp, setting, decisions))
        print("\n".join(latency_table(lat)), flush=True)
        print("\n3. policies on the diverging digits run", flush=True)
        outcomes = compare_policies(seeds, tmp, total)
    meta["wall"] = time.perf_counter() - t0
    print("\n" + "\n".join([*policy_table(outcomes), "", *seed_table(outcomes), "",
                            *guard_section(outcomes), *verdicts(outcomes)]))  # fmt: skip
    plot(out, outcomes)
    path = write_report(out, cost, lat, outcomes, meta)
    print(f"\nwall time {meta['wall']:.0f} s; report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
