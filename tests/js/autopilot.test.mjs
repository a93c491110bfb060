// node --test tests/js/ — the pure helpers of the Autopilot panel (src/hotcb/server/static/
// autopilot.js), on documents shaped as GET /api/runs/{run}/autopilot answers them.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { autopilot } from "./static.mjs";

const {
  autopilotFacts,
  evidenceRows,
  fmtAction,
  isOff,
  kindLabel,
  metricName,
  NOT_HERE,
  pendingProposals,
  recentRows,
  recordKey,
  recordLine,
  ruleLine,
  START_COMMAND,
  STOPPED_AFTER_SEC,
  switchTitle,
} = autopilot;

const PLATEAU = {
  id: "plateau_cut_lr",
  when: { detector: "plateau", metric: "key", params: {} },
  then: { action: "lr_mult", params: { factor: 0.5 } },
  cooldown_steps: 150,
  confidence: "medium",
  enabled: true,
  enabled_in_file: true,
};
const SPIKE = {
  id: "spike_checkpoint",
  when: { detector: "spike", metric: "train", params: { z: 6 } },
  then: { action: "checkpoint", params: {} },
  cooldown_steps: 500,
  confidence: "low",
  enabled: false,
  enabled_in_file: false,
};
const DETECTION = {
  kind: "detection",
  rule: "plateau_cut_lr",
  detector: "plateau",
  metric: "val_loss",
  step: 1200,
  severity: 2,
  evidence: { n: 8, first: 0.41, last: 0.4102, improvement: 0.0, direction: "minimize", window: [1193, 1200] },
  describe: "plateau on val_loss: 0.0% better over the last 8 values (steps 1193-1200), below 1.0%",
  mode: "auto",
  wall_time: 1764633600.5,
};
const DOC = {
  mode: "auto",
  key_metric: "val_loss",
  direction: "minimize",
  rules: [PLATEAU, SPIKE],
  rules_path: "/home/me/rules.yaml",
  in_server: true,
  ran: true,
  step: 1210,
  updated: 1764633601.0,
  recent: [
    DETECTION,
    {
      kind: "action",
      rule: "plateau_cut_lr",
      step: 1200,
      state: "applied",
      action: { name: "lr_mult", params: { factor: 0.5 } },
      cmd_ids: ["01J"],
      reason: "autopilot rule plateau_cut_lr: plateau on val_loss …",
    },
    { kind: "guard", rule: "plateau_cut_lr", step: 1260, cmd_id: "01J", before: 0.41, after: 0.39, worse_by: -0.0488 },
  ],
  pending: [
    {
      kind: "proposal",
      id: "A3",
      rule: "overfitting_more_weight_decay",
      step: 1300,
      action: { name: "wd_mult", params: { factor: 2 } },
      describe: "wd_mult(factor=2) because overfitting …",
      state: "pending",
    },
  ],
};

describe("isOff: the one-line panel", () => {
  test("never ran and not run here: off", () => {
    assert.equal(isOff({ mode: "off", ran: false, in_server: false, rules: [PLATEAU] }), true);
    assert.equal(isOff(null), true);
    assert.equal(isOff({}), true);
  });
  test("a headless autopilot that ran, or one in this server, or an off mode that ran: on", () => {
    assert.equal(isOff({ mode: "suggest", ran: true, in_server: false }), false);
    assert.equal(isOff({ mode: "suggest", ran: false, in_server: true }), false);
    assert.equal(isOff({ mode: "off", ran: true, in_server: false }), false);
  });
  test("the off line names a command to start one", () => {
    assert.equal(START_COMMAND, "hotcb --dir RUN autopilot --mode suggest");
  });
});

describe("rules in words", () => {
  test("the key metric and the training loss are named", () => {
    assert.equal(metricName("key", "val_loss"), "val_loss (key)");
    assert.equal(metricName("key", null), "the key metric");
    assert.equal(metricName("train", "val_loss"), "the training loss");
    assert.equal(metricName("grad_norm", "val_loss"), "grad_norm");
  });
  test("when → then", () => {
    assert.equal(ruleLine(PLATEAU, "val_loss"), "plateau on val_loss (key) → lr_mult(factor=0.5)");
    assert.equal(ruleLine(SPIKE, "val_loss"), "spike on the training loss → checkpoint()");
  });
  test("actions of proposals (name) and of rules (action)", () => {
    assert.equal(fmtAction({ name: "loss_weight_set", params: { key: "l2", value: 0.1 } }), "loss_weight_set(key=l2, value=0.1)");
    assert.equal(fmtAction({ action: "pause" }), "pause()");
    assert.equal(fmtAction(null), "–");
  });
  test("a switch says why it cannot be used", () => {
    assert.equal(switchTitle(PLATEAU, { in_server: false }), NOT_HERE);
    assert.equal(NOT_HERE, "the autopilot does not run in this server; use hotcb autopilot with a rules file");
    assert.match(switchTitle(SPIKE, { in_server: true }), /off in its rules file/);
    assert.equal(switchTitle(PLATEAU, { in_server: true }), "switch plateau_cut_lr off");
    assert.equal(switchTitle({ ...PLATEAU, enabled: false }, { in_server: true }), "switch plateau_cut_lr on");
  });
});

describe("autopilotFacts: the head", () => {
  test("in this server", () => {
    assert.deepEqual(autopilotFacts(DOC, DOC.updated + 1), {
      mode: "auto",
      key: "val_loss",
      direction: "↓ minimize",
      where: "runs in this server",
      step: "1210",
      rulesOn: 1,
      rules: 2,
    });
  });
  test("headless: running, or stopped once it has not written for a while", () => {
    const now = DOC.updated + 5;
    assert.equal(autopilotFacts({ ...DOC, in_server: false }, now).where, "runs outside this server (hotcb autopilot)");
    assert.equal(autopilotFacts({ ...DOC, in_server: false }, DOC.updated + STOPPED_AFTER_SEC + 12).where, "stopped (last round 42 s ago)");
    // this server's own autopilot is running whatever the clock says (an ended run has no rounds)
    assert.equal(autopilotFacts(DOC, DOC.updated + 3600).where, "runs in this server");
  });

  test("never ran", () => {
    const never = autopilotFacts({ mode: "off", ran: false, in_server: false, step: null, direction: "maximize" });
    assert.equal(never.where, "not running");
    assert.equal(never.step, "–");
    assert.equal(never.direction, "↑ maximize");
    assert.equal(autopilotFacts({ step: -1 }).step, "–"); // a state file before any metric
  });
});

describe("records", () => {
  test("newest first; pending proposals only", () => {
    assert.deepEqual(recentRows(DOC).map((r) => r.kind), ["guard", "action", "detection"]);
    assert.deepEqual(pendingProposals(DOC).map((p) => p.id), ["A3"]);
    assert.deepEqual(pendingProposals({ pending: [{ id: "A1", state: "accepted" }, { id: "A2" }, null] }).map((p) => p.id), ["A2"]);
    assert.deepEqual(recentRows({}), []);
  });
  test("one line per kind", () => {
    const [guard, action, detection] = recentRows(DOC);
    assert.equal(recordLine(detection), DETECTION.describe);
    assert.equal(recordLine(action), "lr_mult(factor=0.5) applied");
    assert.equal(recordLine({ kind: "action", state: "refused", reason: "the run publishes no numeric opt.lr to change" }),
      "refused: the run publishes no numeric opt.lr to change");
    assert.equal(recordLine(guard), "kept: 0.41 → 0.39 (−4.9%)");
    assert.equal(recordLine({ kind: "guard", reason: "autopilot guard: val_loss 0.4 -> 0.5 …; undoing it" }),
      "autopilot guard: val_loss 0.4 -> 0.5 …; undoing it");
    assert.equal(recordLine({ kind: "hold", knob: "opt.lr", reason: "dashboard changed opt.lr at step 5" }),
      "dashboard changed opt.lr at step 5");
    assert.deepEqual(["detection", "action", "guard", "skipped", "hold", "other"].map(kindLabel),
      ["detected", "acted", "guard", "skipped", "hold", "other"]);
  });
  test("the evidence, as rows of text", () => {
    assert.deepEqual(evidenceRows(DETECTION), [
      ["n", "8"],
      ["first", "0.41"],
      ["last", "0.4102"],
      ["improvement", "0"],
      ["direction", "minimize"],
      ["window", "[1193, 1200]"],
    ]);
    assert.deepEqual(evidenceRows({ kind: "hold" }), []);
    assert.deepEqual(evidenceRows({ evidence: { nested: { a: 1 } } }), [["nested", '{"a":1}']]);
  });
  test("a record's key is stable across documents", () => {
    assert.equal(recordKey(DETECTION), recordKey({ ...DETECTION }));
    assert.notEqual(recordKey(DETECTION), recordKey({ ...DETECTION, wall_time: 1 }));
  });
});
