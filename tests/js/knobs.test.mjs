// node --test tests/js/ — the pure helpers of the Knobs panel (src/hotcb/server/static/knobs.js),
// on documents shaped as GET /api/runs/{run}/knobs answers.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

const knobs = await import(new URL("../../src/hotcb/server/static/knobs.js", import.meta.url).href);
const { changeLines, emptyKnobsText, EMPTY_KNOBS, flatRange, knobData } = knobs;

const LR = {
  key: "lr",
  points: { step: [0, 10, 20, 29], value: [0.1, 0.05, 0.02, 0.02] },
  changes: [
    { step: 10, old: 0.1, new: 0.05, source: "cli", undo: false },
    { step: 20, old: 0.05, new: 0.02, source: "dashboard", undo: false },
  ],
};

test("knobData marks the applied changes on the step function", () => {
  assert.deepEqual(knobData(LR), [
    [0, 10, 20, 29],
    [0.1, 0.05, 0.02, 0.02],
    [null, 0.05, 0.02, null],
  ]);
});

test("a change that set the value the knob had still gets a point and a mark", () => {
  const k = { points: { step: [0, 9], value: [1, 1] }, changes: [{ step: 4, old: 1, new: 1, source: "cli" }] };
  assert.deepEqual(knobData(k), [
    [0, 4, 9],
    [1, 1, 1],
    [null, 1, null],
  ]);
});

test("changeLines: newest first, with who made them", () => {
  assert.deepEqual(changeLines(LR), ["step 20: 0.05 → 0.02 (dashboard)", "step 10: 0.1 → 0.05 (cli)"]);
  assert.deepEqual(changeLines({ changes: [{ step: 3, old: null, new: 2, source: "cli", undo: true }] }), ["step 3: ? → 2 (cli, undo)"]);
});

test("flatRange pads a knob that never moved", () => {
  assert.deepEqual(flatRange(null, 0, 0), [-1, 1]);
  assert.deepEqual(flatRange(null, 2, 2), [1, 3]);
  const [lo, hi] = flatRange(null, 1, 3);
  assert.ok(lo < 1 && hi > 3);
});

test("flatRange keeps a change in the 7th digit a flat line, a real change across the chart", () => {
  const [lo, hi] = flatRange(null, 1.0, 1.0000001);
  assert.ok((1.0000001 - 1.0) / (hi - lo) < 0.01, `${lo} ${hi}`); // under 1 % of the height
  const [lo2, hi2] = flatRange(null, 0.5, 1.0);
  assert.ok((1.0 - 0.5) / (hi2 - lo2) > 0.8, `${lo2} ${hi2}`);
  const [lo3, hi3] = flatRange(null, 0, 1e-4); // an l2 weight switched on: fills the chart
  assert.ok(1e-4 / (hi3 - lo3) > 0.8 && lo3 < 0 && hi3 > 1e-4);
});

test("a run without knobs: 'not yet' while it runs or loads, 'none' once it is over", () => {
  assert.equal(emptyKnobsText(false, false), EMPTY_KNOBS.waiting);
  assert.equal(emptyKnobsText(false, true), EMPTY_KNOBS.waiting); // its knobs are not loaded yet
  assert.equal(emptyKnobsText(true, false), EMPTY_KNOBS.waiting);
  assert.equal(emptyKnobsText(true, true), "No knobs: this run published none, and it is over.");
});

test("a log lr axis labels a few decades only, so its labels never overlap", () => {
  // uPlot's log splits for lr 1e-10 … 10: every 1, 2, …, 9 × 10^k
  const splits = [];
  for (let e = -10; e <= 1; e++) for (let m = 1; m <= 9; m++) splits.push(Number(`${m}e${e}`));
  const ticks = knobs.thinLogTicks(splits);
  const shown = ticks.filter((v) => v != null);
  assert.ok(shown.length >= 2 && shown.length <= 4, String(shown));
  for (const v of shown) assert.ok(Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9, String(v));
  assert.equal(ticks.length, splits.length); // a filter: same length, null where dropped
  // a narrow span keeps each of its decades
  assert.deepEqual(knobs.thinLogTicks([1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 1e-2]), [1e-4, null, null, 1e-3, null, 1e-2]);
});

describe("a knob whose line the server thinned", () => {
  test("each listed change is drawn at the value it set, not at the last kept point's", () => {
    // points kept at 0, 10 and 20 only; changes at 11..14 (their own points thinned away)
    const knob = {
      points: { step: [0, 10, 20], value: [0.5, 0.9, 0.1] },
      changes: [11, 12, 13, 14].map((step) => ({ step, new: step / 100, old: null })),
    };
    const [steps, values, marks] = knobData(knob);
    assert.deepEqual(steps, [0, 10, 11, 12, 13, 14, 20]);
    assert.deepEqual(values, [0.5, 0.9, 0.11, 0.12, 0.13, 0.14, 0.1]);
    assert.deepEqual(marks, [null, null, 0.11, 0.12, 0.13, 0.14, null]);
  });
  test("a ramp's start with no point of its own holds the value in force there", () => {
    const knob = { points: { step: [0, 30], value: [0.5, 0.2] }, changes: [{ step: 10, new: 0.2, old: 0.5, ramp: true }] };
    assert.deepEqual(knobData(knob)[1], [0.5, 0.5, 0.2]);
  });
});
