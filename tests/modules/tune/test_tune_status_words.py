"""What ``tune status`` says is what happened: why no trial can be kept, and which rate it
shows (docs/tune.md)."""

from __future__ import annotations

import json
import re
from typing import Any

from tune_helpers import Toy, log_level

from hotcb import HotClient

LR_ONLY = [{"key": "lr", "module": "opt", "mode": "mult", "low": 0.5, "high": 2.0, "max": 10.0}]
NO_KEEP = "no trial can be kept"


def test_a_bar_above_one_after_a_jump_of_the_level_says_the_trend_missed(
    toy: Any, cli: Any
) -> None:
    """After a blow-up the level jumps ten-fold: the trend misses the next segment left alone,
    and the bar to keep a trial rises above +1. The loss is at 10, not near zero: the warning
    said "so near zero that its noise is larger than its level" (a probe: a val_loss of 4.8)."""
    blown = [False]
    t: Toy = toy(lambda _lr, _s: 10.0 if blown[0] else 1.0, lr=1e-3)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            seed=0, space=LR_ONLY, sync=True)  # fmt: skip
    t.run(1000, until=lambda: tune() is not None and tune().counts["kept"]
          + tune().counts["rolled_back"] >= 1)  # fmt: skip
    blown[0] = True
    said = lambda: [w for w in tune().warnings if w.startswith(NO_KEEP)]  # noqa: E731
    t.run(1000, until=lambda: bool(said()))
    (warning,) = said()
    assert "near zero that its noise" not in warning, warning
    assert re.search(r"the trend missed the segments left alone by \d+% \(levels .*10", warning)
    assert "'loss' is not near zero" in warning and "its level jumped" in warning, warning
    assert "the bar comes down as segments left alone follow the trend again" in warning
    assert warning in cli(t.kernel.run_dir, "tune", "status").stdout


def test_status_says_kept_of_judged_and_accepted_against_rejected(toy: Any, cli: Any) -> None:
    """Suggest mode: `proposed: 2 rejected: 1 … accept rate: 100%` read as every proposal
    accepted; the rate is of trials kept among those judged. `tune status` names it so and
    counts the proposals accepted beside those rejected; `--json` keeps `accept_rate`."""
    t: Toy = toy(log_level, lr=1e-4, poll=0)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("suggest", objective="loss", segment_steps=10, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    t.run(1000, until=lambda: tune() is not None and len(tune().proposals) == 1)
    client.tune_reject(tune().proposals[0]["id"])
    t.run(1000, until=lambda: len(tune().proposals) == 2)
    client.tune_accept(tune().proposals[1]["id"])
    t.run(1000, until=lambda: tune().counts["kept"] + tune().counts["rolled_back"] == 1)
    t.kernel.flush()

    st = json.loads(cli(t.kernel.run_dir, "tune", "status", "--json").stdout)
    kept = st["counts"]["kept"]
    assert st["counts"]["accepted"] == 1 and st["counts"]["rejected"] == 1
    assert st["judged"] == 1 and st["kept_rate"] == st["accept_rate"] == kept
    out = cli(t.kernel.run_dir, "tune", "status").stdout
    assert "accept rate" not in out, out
    # (a kept trial is followed by the next proposal at once: it may be pending)
    said = r"proposed: \d+   accepted: 1   rejected: 1   (pending: 1   )?failed"
    assert re.search(said, out), out
    assert f"kept rate: {kept:.0%} ({kept} of 1 judged)" in out, out


def test_a_refused_enables_problems_are_said_a_line_each(toy: Any, cli: Any) -> None:
    """The run's refusal of a ``tune enable`` lists a recipe's problems one per line; ``tune
    status`` printed them joined by a literal ``\\n``."""
    t: Toy = toy(log_level, lr=1e-4)
    sent = HotClient(t.kernel.run_dir).send("tune", "enable", params={"mode": "active",
                                            "segment_steps": -5, "objective": "loss"})  # fmt: skip
    t.run(5)
    (entry,) = [e for e in t.ledger("enable") if e["cmd_id"] == sent]
    assert entry["decision"] == "rejected" and "\n" in entry["error"], entry
    said = cli(t.kernel.run_dir, "tune", "status").stdout
    assert "\\n" not in said and "was refused by the run: tune enable has 1 problem(s):\n" in said
    assert "segment_steps" in said.split("problem(s):\n", 1)[1].splitlines()[0]
