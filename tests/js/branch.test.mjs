// node --test tests/js/ — the run tree of the run selector (src/hotcb/server/static/lib.js):
// branches right under their parent, indented, labelled; a parent drawn from the branch point.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { lib } from "./static.mjs";

const { branchLabel, runTree, seriesFrom } = lib;

const run = (run_id, parent, step) => ({
  run_id,
  branch: parent === undefined ? null : { parent, parent_path: `/abs/${parent ?? "gone"}`, step },
});
const flat = (tree) => tree.map((t) => [t.run.run_id, t.depth, t.label]);

describe("runTree: branches under their parent", () => {
  test("children follow their parent, deeper by one, in their own order", () => {
    const runs = [run("a"), run("a-lr", "a", 300), run("b"), run("a-lr-wd", "a-lr", 500), run("a-bs", "a", 100)];
    assert.deepEqual(flat(runTree(runs)), [
      ["a", 0, ""],
      ["a-lr", 1, "branch of a at step 300"],
      ["a-lr-wd", 2, "branch of a-lr at step 500"],
      ["a-bs", 1, "branch of a at step 100"],
      ["b", 0, ""],
    ]);
  });

  test("a child listed before its parent still comes after it", () => {
    assert.deepEqual(flat(runTree([run("0-child", "z", 7), run("z")])), [
      ["z", 0, ""],
      ["0-child", 1, "branch of z at step 7"],
    ]);
  });

  test("a parent outside the list: a root, named by its path", () => {
    assert.deepEqual(flat(runTree([run("c", null, 40)])), [["c", 0, "branch of gone at step 40"]]);
    assert.deepEqual(flat(runTree([run("d", "elsewhere", 40)])), [["d", 0, "branch of elsewhere at step 40"]]);
  });

  test("a loop of parents neither hangs nor drops a run", () => {
    const tree = runTree([run("x", "y", 1), run("y", "x", 2), run("self", "self", 3)]);
    assert.deepEqual(tree.map((t) => t.run.run_id).sort(), ["self", "x", "y"]);
  });

  test("branchLabel: no branch, no label; an unknown step is left out", () => {
    assert.equal(branchLabel({ run_id: "a" }), "");
    assert.equal(branchLabel({ run_id: "a", branch: { parent: "p", step: null } }), "branch of p");
  });
});

describe("seriesFrom: a parent from the branch step on", () => {
  test("steps before `from` are dropped, the rest kept", () => {
    const series = new Map([
      ["loss", { step: [0, 10, 20, 30], value: [4, 3, 2, 1] }],
      ["late", { step: [25, 35], value: [9, 8] }],
    ]);
    const out = seriesFrom(series, 20);
    assert.deepEqual(out.get("loss"), { step: [20, 30], value: [2, 1] });
    assert.deepEqual(out.get("late"), { step: [25, 35], value: [9, 8] });
    assert.deepEqual(series.get("loss").step, [0, 10, 20, 30]); // the original is untouched
  });
});
