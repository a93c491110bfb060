// node --test tests/js/ — the pure functions of src/hotcb/server/static/lib.js: the bounded
// live series (downsampling), appending live records, small formatting.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { lib } from "./static.mjs";

const {
  ago,
  appendRecords,
  compact,
  lastRecordStep,
  pastStepError,
  runChip,
  runListName,
  runPickerText,
  shownStep,
  stepAhead,
} = lib;

const series = (values, first = 0) => ({ step: values.map((_, i) => first + i), value: [...values] });
const runData = () => ({ series: new Map(), lastStep: null });
const increasing = (xs) => xs.every((x, i) => i === 0 || x > xs[i - 1]);

describe("compact: a live series past its limit", () => {
  test("under the limit nothing changes", () => {
    const s = series([3, 1, 2]);
    compact(s, 3);
    assert.deepEqual(s, series([3, 1, 2]));
  });

  test("the newest limit/2 points stay point for point; older ones become min/max per bucket", () => {
    const values = Array.from({ length: 20 }, (_, i) => i);
    values[5] = 100; // a spike
    values[6] = -100; // and a dip, in the same bucket
    const s = series(values);
    compact(s, 10); // 15 older points: the first, then 2 buckets (steps 1-7, 8-14)
    assert.deepEqual(s.step, [0, 5, 6, 8, 14, 15, 16, 17, 18, 19]);
    assert.deepEqual(s.value, [0, 100, -100, 8, 14, 15, 16, 17, 18, 19]);
  });

  test("a bucket whose min and max are one point keeps it once", () => {
    const s = series([5, 5, 5, 5, 1, 2, 3, 4, 9, 9]);
    compact(s, 8); // buckets: steps 1-2 (5, 5), steps 3-5 (5, 1, 2)
    assert.deepEqual(s.step, [0, 1, 3, 4, 6, 7, 8, 9]);
  });

  test("gaps (null) are never picked as a bucket's min or max; a bucket of gaps stays one gap", () => {
    const s = series([2, null, null, null, null, null, null, 1, 3, null, 4, 5, 6, 7, 8, 9, 10, 11]);
    compact(s, 10); // buckets: steps 1-6 (all gaps), steps 7-12
    assert.deepEqual(s.step.slice(0, 4), [0, 1, 7, 12]);
    assert.deepEqual(s.value.slice(0, 4), [2, null, 1, 6]);
  });

  test("min/max pairs come out in step order", () => {
    const s = series([0, 9, 5, 1, 5, 1, 5, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    compact(s, 10); // buckets: steps 1-5 (max first), steps 6-10 (min first)
    assert.deepEqual(s.step.slice(0, 5), [0, 1, 3, 7, 8]);
    assert.deepEqual(s.value.slice(0, 5), [0, 9, 1, 0, 9]);
  });

  test("however often it runs, old history keeps an even share of the points", () => {
    const s = { step: [], value: [] };
    for (let step = 0; step < 20_000; step++) {
      s.step.push(step);
      s.value.push(1 / (1 + step));
      if (s.step.length > 150) compact(s, 100);
    }
    const quarters = [0, 1, 2, 3].map((q) => s.step.filter((x) => x >= q * 4750 && x < (q + 1) * 4750).length);
    assert.ok(Math.min(...quarters) >= 5, `points per quarter of the old history: ${quarters}`);
    assert.ok(increasing(s.step));
  });
});

describe("appendRecords: live metric records into a run's series", () => {
  test("one series per metric name, in step order; lastStep follows the run", () => {
    const rd = runData();
    appendRecords(rd, [
      { step: 0, metrics: { "train/loss": 2.0, lr: 1e-3 } },
      { step: 1, metrics: { "train/loss": 1.8 } },
      { step: 2, metrics: { "train/loss": 1.7, "val/loss": 1.9 } },
    ], 100);
    assert.deepEqual([...rd.series.keys()], ["train/loss", "lr", "val/loss"]);
    assert.deepEqual(rd.series.get("train/loss"), { step: [0, 1, 2], value: [2.0, 1.8, 1.7] });
    assert.deepEqual(rd.series.get("val/loss"), { step: [2], value: [1.9] });
    assert.equal(rd.lastStep, 2);
  });

  test("a repeated step replaces its value", () => {
    const rd = runData();
    appendRecords(rd, [{ step: 5, metrics: { loss: 1 } }, { step: 5, metrics: { loss: 0.5 } }], 100);
    assert.deepEqual(rd.series.get("loss"), { step: [5], value: [0.5] });
  });

  test("a run resumed from a checkpoint drops the steps it redoes, and says it went back", () => {
    const rd = runData();
    assert.equal(appendRecords(rd, Array.from({ length: 10 }, (_, i) => ({ step: i, metrics: { loss: 10 - i } })), 100), false);
    // went back (the page then asks the server which markers are of this life), then on
    assert.equal(appendRecords(rd, [{ step: 6, metrics: { loss: 0.25 } }, { step: 7, metrics: { loss: 0.2 } }], 100), true);
    assert.deepEqual(rd.series.get("loss").step, [0, 1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(rd.series.get("loss").value.slice(-3), [5, 0.25, 0.2]);
  });

  test("lastStep follows a run resumed from an earlier checkpoint back (a new life)", () => {
    const rd = runData();
    appendRecords(rd, [{ step: 5226, metrics: { loss: 0.3 } }, { step: 5227, metrics: { loss: 0.29 } }], 100);
    assert.equal(rd.lastStep, 5227);
    // the trainer died at 5227 and resumed from its checkpoint at 2320: the run is at 2321 now
    appendRecords(rd, [{ step: 2321, metrics: { loss: 0.5 } }], 100);
    assert.equal(rd.lastStep, 2321);
    assert.equal(stepAhead(rd.lastStep), 2600); // the scheduler's default follows it
    appendRecords(rd, [{ step: 2322, metrics: { loss: 0.49 } }], 100);
    assert.equal(rd.lastStep, 2322);
    assert.deepEqual(rd.series.get("loss").step, [2321, 2322]); // the abandoned steps are gone
  });

  test("records without a numeric step or metrics are skipped", () => {
    const rd = runData();
    appendRecords(rd, [{ metrics: { loss: 1 } }, { step: "3", metrics: { loss: 1 } }, { step: 4 }], 100);
    assert.equal(rd.series.size, 0);
    assert.equal(rd.lastStep, 4);
  });

  /** `n` steps of a falling loss, appended 250 at a time as the socket delivers them; `at`:
   * step → value overrides. Returns the series and the longest it ever was. */
  function longRun(n, limit, at = {}) {
    const rd = runData();
    let longest = 0;
    for (let start = 0; start < n; start += 250) {
      const recs = [];
      for (let step = start; step < Math.min(n, start + 250); step++) {
        recs.push({ step, metrics: { loss: step in at ? at[step] : 2 / (1 + step * 1e-3) } });
      }
      appendRecords(rd, recs, limit);
      longest = Math.max(longest, rd.series.get("loss").step.length);
    }
    return { rd, s: rd.series.get("loss"), longest };
  }

  test("a long run stays bounded; the newest points stay; its spike and dip survive", () => {
    const limit = 1000;
    const n = 100_000;
    const { rd, s, longest } = longRun(n, limit, { 31_337: 1e3, 77_777: -5 });
    assert.ok(longest <= limit * 1.5, `grew to ${longest} points`);
    assert.ok(s.step.length >= limit / 2, `${s.step.length} points`);
    assert.equal(s.step.length, s.value.length);
    assert.ok(increasing(s.step), "steps stay in order, each once");
    assert.equal(s.step.at(-1), n - 1);
    assert.equal(rd.lastStep, n - 1);
    assert.deepEqual(s.step.slice(-limit / 2), Array.from({ length: limit / 2 }, (_, i) => n - limit / 2 + i));
    assert.equal(s.value[s.step.indexOf(31_337)], 1e3);
    assert.equal(Math.max(...s.value), 1e3);
    assert.equal(s.value[s.step.indexOf(77_777)], -5);
    assert.equal(Math.min(...s.value), -5);
  });

  test("a falling loss keeps its first point (the curve starts where the run did)", () => {
    const { s } = longRun(100_000, 1000);
    assert.equal(s.step[0], 0);
    assert.equal(s.value[0], 2);
  });

  // Compaction used to halve the oldest half again each time, so the resolution of old data
  // decayed geometrically: after 100,000 steps steps 0..96,254 were 2 points, and the chart of
  // a page left open showed the start of the run as one straight line.
  test("older history keeps a share of the points (not only the newest few thousand steps)", () => {
    const { s } = longRun(100_000, 1000);
    const firstHalf = s.step.filter((step) => step < 50_000).length;
    assert.ok(firstHalf >= 100, `the first 50,000 steps kept ${firstHalf} points`);
  });
});

describe("ago: how long since the last metric (stale banner)", () => {
  test("seconds, then minutes, then hours", () => {
    assert.equal(ago(0), "0 s");
    assert.equal(ago(42.4), "42 s");
    assert.equal(ago(89), "89 s");
    assert.equal(ago(90), "2 min");
    assert.equal(ago(600), "10 min");
    assert.equal(ago(5399), "90 min");
    assert.equal(ago(5400), "1.5 h");
    assert.equal(ago(36_000), "10.0 h");
  });
});

describe("stepAhead: the scheduler's default 'at step'", () => {
  test("a round hundred at least 200 steps ahead", () => {
    assert.equal(stepAhead(0), 200);
    assert.equal(stepAhead(1234), 1500);
    assert.equal(stepAhead(1300), 1500);
    assert.equal(stepAhead(1301), 1600);
    for (const step of [0, 17, 999, 123_456]) {
      const at = stepAhead(step);
      assert.ok(at >= step + 200 && at % 100 === 0, `${step} → ${at}`);
    }
  });
});

describe("pastStepError: a change cannot be queued for a step the run has passed", () => {
  test("a step at or behind the run is refused, saying where the run is and what to do", () => {
    assert.equal(
      pastStepError(10, 3575, "lr"),
      "step 10 has passed (the run is at step 3575): change lr under Controls to set it now, or pick a later step",
    );
    assert.match(pastStepError(3575, 3575, "lr"), /^step 3575 has passed/);
    assert.match(pastStepError(0, 1), /use Controls to set it now/);
  });

  test("a step ahead of the run, or a run whose step is unknown: nothing to say", () => {
    assert.equal(pastStepError(3576, 3575, "lr"), null);
    assert.equal(pastStepError(10, null, "lr"), null);
    assert.equal(pastStepError(10, undefined, "lr"), null);
  });
});

describe("runChip: the header's state chip", () => {
  test("connected: the run's state", () => {
    assert.deepEqual(runChip({ step: 12 }), { text: "running", cls: "live", seen: null });
    assert.equal(runChip({ paused: true }).text, "paused");
    assert.equal(runChip({ stale: true }).cls, "stale");
    assert.deepEqual(runChip({ over: true, runState: "crashed (its process is gone)" }).cls, "crashed");
    assert.equal(runChip({ over: true, runState: "finished at step 9" }).text, "finished at step 9");
    assert.equal(runChip({ noRun: true, offline: true }).text, "no runs");
  });

  test("disconnected: never 'running', only what was last seen and where", () => {
    const chip = runChip({ offline: true, step: 3575 });
    assert.deepEqual(chip, {
      text: "disconnected — last seen running at step 3575",
      cls: "offline",
      seen: "running at step 3575",
    });
    assert.equal(runChip({ offline: true, paused: true, step: 7 }).text, "disconnected — last seen paused at step 7");
    assert.equal(runChip({ offline: true }).text, "disconnected — last seen running at step ?");
    assert.equal(
      runChip({ offline: true, over: true, runState: "finished at step 9", step: 9 }).text,
      "disconnected — last seen finished at step 9",
    );
  });

  test("a run whose folder is gone says so, whatever the server said of it before", () => {
    assert.deepEqual(runChip({ gone: true, step: 120 }), { text: "gone (no longer on disk)", cls: "gone", seen: null });
    assert.equal(runChip({ gone: true, stale: true, paused: true }).text, "gone (no longer on disk)");
    assert.equal(runChip({ gone: true, over: true, runState: "finished at step 9" }).text, "gone (no longer on disk)");
    assert.equal(runChip({ gone: true, offline: true, step: 5 }).text, "disconnected — last seen gone (no longer on disk)");
  });
});

describe("runPickerText / runListName: what the run picker and the compare list call a run", () => {
  test("a run served as its own folder (id '.') is called by its name, not '. — name'", () => {
    const root = { run_id: ".", name: "exp3" };
    assert.equal(runPickerText(root), "exp3");
    assert.equal(runListName(root), "exp3");
    assert.equal(runPickerText({ run_id: ".", name: null }), "this run");
  });

  test("a run under the folder: its id, and its name when that differs", () => {
    assert.equal(runPickerText({ run_id: "sweep/a", name: "baseline" }), "sweep/a — baseline");
    assert.equal(runPickerText({ run_id: "live", name: "live" }), "live");
    assert.equal(runPickerText({ run_id: "live" }), "live");
    assert.equal(runListName({ run_id: "sweep/a", name: "baseline" }), "sweep/a");
  });
});

describe("shownStep / lastRecordStep: the compare list's step follows a watched run live", () => {
  test("the newest record's step of a live metrics message", () => {
    assert.equal(lastRecordStep([{ step: 967, metrics: {} }, { step: 1203, metrics: {} }]), 1203);
    assert.equal(lastRecordStep([{ step: 5 }, { metrics: {} }]), 5);
    assert.equal(lastRecordStep([]), null);
    assert.equal(lastRecordStep(undefined), null);
  });

  test("a watched run: the live step, not the runs list's (polled, behind)", () => {
    const run = { run_id: "sweep/a", last_step: 967 };
    assert.equal(shownStep(run, 1203, true), 1203);
    assert.equal(shownStep(run, 120, true), 120); // resumed from an earlier checkpoint: back
    assert.equal(shownStep(run, undefined, true), 967); // nothing pushed yet
  });

  test("a run the page does not watch: the runs list's step (nothing is pushed for it)", () => {
    assert.equal(shownStep({ run_id: "sweep/a", last_step: 967 }, 1203, false), 967);
    assert.equal(shownStep({ run_id: "sweep/a", last_step: null }, undefined, false), null);
  });
});

describe("runIsOver", () => {
  test("the server's words for a run that is over", () => {
    for (const said of ["finished at step 599", "stopped at step 12", "crashed (exit code 1; …)",
      "interrupted by SIGINT (…)", "interrupted at step 728",
      "ended before it started (its training exited with code 2)",
      "copied or moved here from /r while its trainer (pid 7) ran there: nothing trains in this directory",
      "closed before its first step"]) {
      assert.equal(lib.runIsOver(said), true, said);
    }
    for (const said of ["running", "paused", "idle", "not started", "not started (a branch of /r at step 30)",
      "not started (its kernel is open in pid 7: no step yet)", null]) {
      assert.equal(lib.runIsOver(said), false, String(said));
    }
  });
});
