// node --test tests/js/ — the pure helpers of the Analytics panel (src/hotcb/server/static/analytics.js).
import assert from "node:assert/strict";
import { register } from "node:module";
import { test } from "node:test";

register("./static-esm-hooks.mjs", import.meta.url);
const a = await import(new URL("../../src/hotcb/server/static/analytics.js", import.meta.url).href);

test("an autopilot proposal's what-if", () => {
  assert.deepEqual(a.autopilotWhatIf({ id: "P1", action: { name: "lr_mult", params: { factor: 0.5 } } }), {
    knob: "opt.lr",
    factor: 0.5,
    source: "autopilot P1",
  });
  assert.equal(a.autopilotWhatIf({ action: { name: "loss_weight_mult", params: { key: "aux", factor: 2 } } }).knob, "loss.aux");
  assert.equal(a.autopilotWhatIf({ action: { name: "pause", params: {} } }), null);
  assert.equal(a.autopilotWhatIf(null), null);
});

test("a tuner proposal's what-ifs", () => {
  const w = a.tuneWhatIfs({ id: "P3", changes: { "opt.lr": [0.003, 0.0045], "loss.l2": [0, 0.1] } });
  assert.equal(w.length, 1);
  assert.equal(w[0].knob, "opt.lr");
  assert.ok(Math.abs(w[0].factor - 1.5) < 1e-12);
});

test("a typed value's factor and the impact's wording", () => {
  assert.equal(a.typedFactor(0.01, "0.005"), 0.5);
  assert.equal(a.typedFactor(0.01, "0.01"), null);
  assert.equal(a.typedFactor(0, "1"), null);
  assert.equal(a.typedFactor(0.01, "abc"), null);
  assert.equal(a.fmtImpact(Math.log(0.8)), "−20 %");
  assert.equal(a.fmtImpact(Math.log(1.05)), "+5.0 %");
  assert.equal(a.fmtImpact(-0.3, false), "−0.3");
  assert.equal(a.fmtImpact(null), "–");
});

test("scales: log for positive values over a wide range, finite everywhere", () => {
  const s = a.scales([0, 100], [0.01, 1], 400, 200);
  assert.equal(s.log, true);
  assert.ok(s.y(0.01) > s.y(1));
  const flat = a.scales([0, 10], [2, 2], 400, 200);
  assert.ok(Number.isFinite(flat.y(2)) && flat.log === false);
});

test("trainingLosses: the run's training losses, the usual names first, no validation loss", () => {
  const names = ["acc", "val_loss", "loss_cls", "train/loss", "eval/loss", "lr", "test_loss", "loss"];
  assert.deepEqual(a.trainingLosses(names), ["loss", "train/loss", "loss_cls"]);
  assert.deepEqual(a.trainingLosses(names, "loss"), ["train/loss", "loss_cls"]);
  assert.deepEqual(a.trainingLosses(["val/loss", "valid_loss", "validation/loss"]), []);
  assert.deepEqual(a.trainingLosses(undefined), []);
});

// GET …/forecast as the server answers it: a forecast from 8 points on, else a note
const FORECAST_POINTS = { val_loss: 1, loss: 1200, "train/loss": 1200 };
function fakeForecast(asked, points = FORECAST_POINTS, key = "val_loss") {
  return async (metric) => {
    asked.push(metric);
    const m = metric ?? key;
    const n = points[m] ?? 0;
    return n >= 8
      ? { metric: m, points: n, forecast: { median: [1] }, show: true, note: null }
      : { metric: m, points: n, forecast: null, show: false, note: `not enough points for a forecast yet (${n} of at least 8)` };
  };
}

test("pickForecast: after one Evaluate the forecast stays on the training loss", async () => {
  const asked = [];
  const fc = await a.pickForecast(fakeForecast(asked), ["loss", "val_loss", "lr"]);
  assert.equal(fc.metric, "loss");
  assert.ok(fc.forecast && fc.show);
  assert.deepEqual(fc.waitingFor, { metric: "val_loss", points: 1, note: "not enough points for a forecast yet (1 of at least 8)" });
  assert.deepEqual(asked, [null, "loss"]);
});

test("pickForecast: the key metric as soon as it has enough points", async () => {
  const asked = [];
  const fc = await a.pickForecast(fakeForecast(asked, { val_loss: 8, loss: 1200 }), ["loss", "val_loss"]);
  assert.equal(fc.metric, "val_loss");
  assert.equal(fc.waitingFor, undefined);
  assert.deepEqual(asked, [null]);
});

test("pickForecast: a metric picked in the panel is shown as it is, a note included", async () => {
  const asked = [];
  const fc = await a.pickForecast(fakeForecast(asked), ["loss", "val_loss"], "val_loss");
  assert.equal(fc.metric, "val_loss");
  assert.equal(fc.forecast, null);
  assert.deepEqual(asked, ["val_loss"]);
});

test("pickForecast: no training loss to forecast either: the key metric's note", async () => {
  const asked = [];
  const fc = await a.pickForecast(fakeForecast(asked, { val_loss: 1, loss: 3 }), ["loss", "val_loss"]);
  assert.equal(fc.metric, "val_loss");
  assert.match(fc.note, /1 of at least 8/);
  assert.deepEqual(asked, [null, "loss"]);
});

test("an empty trajectory says why: the server's note, else the general reason", () => {
  const one = { steps: [], x: [], y: [], metrics: ["loss"], note: "a trajectory needs two or more metrics with at least 3 finite values that vary; usable here: loss (of 1 logged)" };
  assert.equal(a.emptyTrajectoryNote(one), one.note);
  assert.equal(a.emptyTrajectoryNote({ steps: [], x: [], y: [], metrics: [] }), "needs two or more metrics that vary");
  assert.equal(a.emptyTrajectoryNote(null), "");
});

test("the what-if offers the run's numeric knobs, and none (no made-up lr) for a run without", () => {
  const doc = { actuators: [
    { param_key: "lr", type: "log_float" }, { param_key: "ce", type: "float" },
    { param_key: "amp", type: "bool" }, { param_key: "accum", type: "int" },
  ] };
  assert.deepEqual(a.knobKeys(doc), ["lr", "ce", "accum"]);
  assert.deepEqual(a.knobKeys({ actuators: [] }), []);
  assert.deepEqual(a.knobKeys({}), []);
  assert.match(a.NO_KNOBS, /publishes no knobs/);
});
