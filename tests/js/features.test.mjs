// node --test tests/js/ — the pure helpers of the Activations panel
// (src/hotcb/server/static/features.js): colours, row scales, number format.
import assert from "node:assert/strict";
import { test } from "node:test";

const features = await import(new URL("../../src/hotcb/server/static/features.js", import.meta.url).href);
const { colour, fmt, rowRange, scale, STATS } = features;

test("the statistics are the recorder's, in its order", () => {
  assert.deepEqual(STATS, ["mean", "std", "max_abs", "dead", "norm"]);
});

test("each row on its own scale, dead on 0…1, gaps ignored", () => {
  assert.deepEqual(rowRange([3, null, 1, 2], "mean"), [1, 3]);
  assert.deepEqual(rowRange([0.2, 0.4], "dead"), [0, 1]);
  assert.equal(rowRange([null, null], "std"), null);
  assert.equal(scale(2, [1, 3]), 0.5);
  assert.equal(scale(5, [5, 5]), 0.5); // a flat row is mid-colour
  assert.equal(scale(null, [1, 3]), null);
});

test("colours: viridis ends, grey for no value", () => {
  assert.equal(colour(0), "rgb(68,1,84)");
  assert.equal(colour(1), "rgb(253,231,37)");
  assert.equal(colour(7), "rgb(253,231,37)"); // clamped
  assert.equal(colour(null), "rgb(229,231,235)");
});

test("numbers", () => {
  assert.equal(fmt(0.123456), "0.1235");
  assert.equal(fmt(1e-5), "1.00e-5");
  assert.equal(fmt(null), "–");
});
