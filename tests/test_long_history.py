"""The autopilot and the notifier started on a run with a long history: more metrics than one
read takes (16 MB), and many changes a person made long ago. What came before they started
fills their windows; they act on where the run is now. Real files in the formats the kernel
writes, read by the real engine and notifier."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hotcb import jsonl
from hotcb.autopilot.engine import RECORDS, Autopilot
from hotcb.notify import Alert, Notifier, NotifyConfig

#: Steps of history: with 24 padding metrics a record is about 400 bytes, so 60000 of them are
#: about 24 MB, more than one read of the autopilot's or the notifier's (16 MB)
STEPS = 60_000
PAD = {f"m{i:02d}": 0.5 for i in range(24)}

PLATEAU_ONLY = """\
rules:
  - id: plateau_cut_lr
    when: {detector: plateau, metric: key}
    then: {action: lr_mult, params: {factor: 0.5}}
    cooldown_steps: 150
    confidence: medium
"""


def write_history(run: str, loss: Any = lambda step: 1.0) -> None:
    """``STEPS`` metric records (``val_loss`` every 10 steps), written before now."""
    os.makedirs(run, exist_ok=True)
    lines = []
    for step in range(STEPS):
        metrics = {"loss": loss(step), **PAD}
        if step % 10 == 0:
            metrics["val_loss"] = loss(step)
        lines.append(json.dumps({"step": step, "wall_time": 100.0 + step * 1e-3,
                                 "metrics": metrics}))  # fmt: skip
    data = ("\n".join(lines) + "\n").encode()
    assert len(data) > 20 << 20, len(data)
    with open(os.path.join(run, "hotcb.metrics.jsonl"), "wb") as f:
        f.write(data)


def test_the_autopilot_reads_a_long_history_before_it_judges_anything(tmp_path: Path) -> None:
    """It read 16 MB a round and ran its rules on each: on a run at step 600000 it cut the lr
    four times in five seconds, each time for a plateau tens of thousands of steps old, and
    its guard kept each cut on values written before it. A person's changes of long ago each
    got a hold record (19995 of them)."""
    run = os.fspath(tmp_path / "run")
    write_history(run)
    ledger = [{"seq": i + 1, "step": 100 * i, "module": "opt", "op": "set_params",
               "decision": "applied", "source": "cli", "cmd_id": f"c{i}",
               "changes": {"lr": {"old": 0.01, "new": 0.01}}} for i in range(300)]  # fmt: skip
    ledger.append({**ledger[-1], "seq": 301, "step": STEPS - 50, "cmd_id": "recent",
                   "changes": {"weight_decay": {"old": 0.0, "new": 0.01}}})  # fmt: skip
    jsonl.append_many(os.path.join(run, "hotcb.applied.jsonl"), ledger)
    rules = tmp_path / "rules.yaml"
    rules.write_text(PLATEAU_ONLY)
    pilot = Autopilot(run, mode="auto", rules=str(rules))
    try:
        out = pilot.step()
    finally:
        pilot.close()
    acted = [r for r in out if r["kind"] in ("action", "proposal", "detection")]
    assert [r["kind"] for r in acted] == ["detection", "action"], acted
    assert acted[0]["evidence"]["last_step"] == STEPS - 10  # the plateau of now
    assert pilot.step_now == STEPS - 1
    holds = [r for r in jsonl.iter_records(os.path.join(run, RECORDS)) if r["kind"] == "hold"]
    assert [h["knob"] for h in holds] == ["opt.weight_decay"], holds  # the one still in force


def test_the_notifier_fires_only_for_what_holds_at_the_end_of_a_long_history(
    tmp_path: Path,
) -> None:
    """Started on a long run, it took only its first read (16 MB) as history: a condition
    that held at the end of that read fired, for a step long gone."""

    def loss(step: int) -> float:  # above 2 around the first read's end, and at the very end
        return 3.0 if 44_000 <= step < 50_000 or step >= STEPS - 5 else 1.0

    run = os.fspath(tmp_path / "run")
    write_history(run, loss)
    alerts = (Alert("hot", "threshold", metric="loss", above=2.0),)
    n = Notifier(run, NotifyConfig(alerts=alerts, deliveries=()), history_before=1000.0)
    try:
        fired = [e for _ in range(4) for e in n.step(now=2000.0)]
    finally:
        n.close()
    assert [(e["alert"], e["step"]) for e in fired] == [("hot", STEPS - 1)], fired
