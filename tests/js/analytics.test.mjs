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
