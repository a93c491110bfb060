// node --test tests/js/ — the pure helpers of the Autopilot panel (src/hotcb/server/static/
// autopilot.js), on documents shaped as GET /api/runs/{run}/autopilot answers them.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { FakeNode, withDocument } from "./fakedom.mjs";
import { autopilot } from "./static.mjs";

const {
  acceptTitle,
  aiCost,
  aiFacts,
  AutopilotPanel,
  autopilotFacts,
  budgetUsd,
  evidenceRows,
  fmtAction,
  isAIRecord,
  isOff,
  kindLabel,
  metricName,
  NOT_HERE,
  pendingProposals,
  reasoningOf,
  recentRows,
  recordKey,
  recordLine,
  recordWho,
  ruleLine,
  START_COMMAND,
  STOPPED_AFTER_SEC,
  switchTitle,
  usd,
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
      keyNote: null,
    });
  });

  test("the key metric under another name, or not logged at all", () => {
    const hf = autopilotFacts({ ...DOC, key_logged_as: "eval_loss" });
    assert.deepEqual(hf.keyNote, { text: "logged as eval_loss", warn: false });
    const none = autopilotFacts({ ...DOC, key_logged_as: null, logged: ["loss", "lr"] });
    assert.deepEqual(none.keyNote, {
      text: "not logged by this run (it logs loss, lr): the rules on it wait for it",
      warn: true,
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
    assert.equal(recordLine({ kind: "decision", id: "A1", state: "superseded", reason: "rule x changed opt.lr itself at step 150" }),
      "A1 superseded: rule x changed opt.lr itself at step 150");
    assert.equal(recordLine({ kind: "decision", id: "A2", state: "accepted", by: "cli" }), "A2 accepted (cli)");
    assert.equal(kindLabel("decision"), "decided");
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

// ------------------------------------------------------------------------------ the LLM autopilot
// Records shaped as the engine writes them (hotcb.autopilot.jsonl) and `ai` as the server reads it
// from hotcb.ai.state.json.
const AI = {
  base_url: "http://127.0.0.1:8099/v1",
  model: "scripted",
  calls: 3,
  spent_usd: 0.0012,
  budget_usd: 1.0,
  left_usd: 0.9988,
  price_known: true,
  failures: 0,
  fallback: null,
  in_flight: false,
  next_check_step: null,
};
const XSS = 'loss flat; <img src=x onerror="window.pwned=1"> & "quotes"';
const AI_REPLY = { kind: "ai_reply", call: 3, step: 410, state: "replied", reasoning: "the loss has been flat for 200 steps", cost_usd: 0.0004, mode: "ai_auto", wall_time: 1764633700.1 };
const AI_FAILED = { kind: "ai_reply", call: 4, step: 610, state: "failed", error_kind: "timeout", reason: "no action: APITimeoutError: Request timed out.", mode: "ai_auto" };
const AI_ACTION = {
  kind: "action",
  rule: "ai",
  step: 412,
  state: "applied",
  action: { name: "lr_mult", params: { factor: 0.5 } },
  cmd_ids: ["01K"],
  reason: "ai (call 3): the loss has been flat for 200 steps",
  reasoning: "the loss has been flat for 200 steps",
  call: 3,
  mode: "ai_auto",
};
const AI_REJECTED = { kind: "action", rule: "ai", step: 412, state: "rejected", call: 3, asked: { name: "lr_mult", params: { factor: 40 } }, reason: "factor=40 is above the maximum 10", mode: "ai_auto" };
const FALLBACK = { kind: "fallback", step: 900, reason: "LLM autopilot: the budget of $1 is spent ($1.0003 in 9 calls); the rules take over", mode: "ai_auto" };
const AI_PROPOSAL = {
  kind: "proposal",
  id: "A4",
  rule: "ai",
  source: "ai",
  step: 500,
  action: { name: "wd_mult", params: { factor: 2 } },
  reasoning: XSS,
  describe: `wd_mult(factor=2): ${XSS}`.slice(0, 400),
  state: "pending",
  call: 5,
};

describe("the LLM line", () => {
  test("amounts: four decimals spent and left, a budget in cents", () => {
    assert.equal(usd(0.0012), "$0.0012");
    assert.equal(usd(0), "$0.0000");
    assert.equal(usd(null), "$?");
    assert.equal(budgetUsd(1), "$1.00");
    assert.equal(budgetUsd(0.5), "$0.50");
    assert.equal(budgetUsd(0.125), "$0.1250");
    assert.equal(budgetUsd(undefined), "$?");
  });
  test("spent of the budget, and what is left", () => {
    assert.equal(aiCost(AI), "$0.0012 spent of $1.00, $0.9988 left");
    // without left_usd (an older state file): the budget less what was spent
    assert.equal(aiCost({ spent_usd: 0.25, budget_usd: 2 }), "$0.2500 spent of $2.00, $1.7500 left");
    assert.equal(aiCost({ spent_usd: 3, budget_usd: 2 }), "$3.0000 spent of $2.00, $0.0000 left");
  });
  test("model, endpoint, calls, cost", () => {
    assert.deepEqual(aiFacts(AI), {
      model: "scripted",
      baseUrl: "http://127.0.0.1:8099/v1",
      calls: "3 calls",
      cost: "$0.0012 spent of $1.00, $0.9988 left",
      priceUnknown: null,
      busy: false,
      failures: null,
      next: null,
      fallback: null,
    });
    assert.equal(aiFacts({ ...AI, calls: 1 }).calls, "1 call");
    assert.equal(aiFacts({ ...AI, calls: 0 }).calls, "0 calls");
    assert.equal(aiFacts(null), null);
    assert.equal(aiFacts(undefined), null);
  });
  test("an unknown price, a call in flight, failures, the step it asked to look again", () => {
    const f = aiFacts({ ...AI, price_known: false, spent_usd: 0, left_usd: 1, in_flight: true, failures: 2, next_check_step: 800 });
    assert.equal(f.cost, "$0.0000 spent of $1.00, $1.0000 left");
    assert.equal(f.priceUnknown, "price unknown: counted as $0");
    assert.equal(f.busy, true);
    assert.equal(f.failures, "2 failed in a row");
    assert.equal(f.next, "next look at step 800");
  });
  test("fallen back to the rules: the reason, and nothing about the next call", () => {
    const reason = "3 failed calls in a row (last: timeout: APITimeoutError: Request timed out.)";
    const f = aiFacts({ ...AI, fallback: reason, failures: 3, in_flight: true, next_check_step: 900 });
    assert.equal(f.fallback, `fallen back to the rules: ${reason}`);
    assert.equal(f.busy, false);
    assert.equal(f.failures, null);
    assert.equal(f.next, null);
  });
});

describe("the LLM's records and proposals", () => {
  test("which are the LLM's", () => {
    assert.deepEqual([AI_REPLY, AI_ACTION, AI_REJECTED, AI_PROPOSAL, FALLBACK].map(isAIRecord), [true, true, true, true, false]);
    assert.deepEqual([DETECTION, DOC.recent[1], DOC.pending[0], null].map(isAIRecord), [false, false, false, false]);
  });
  test("their reasoning, as the model wrote it (text, never markup)", () => {
    assert.equal(reasoningOf(AI_REPLY), "the loss has been flat for 200 steps");
    assert.equal(reasoningOf(AI_ACTION), "the loss has been flat for 200 steps");
    assert.equal(reasoningOf(AI_PROPOSAL), XSS); // unchanged: the page puts it in as text
    assert.equal(reasoningOf(AI_REJECTED), null);
    assert.equal(reasoningOf({ ...AI_REPLY, reasoning: "  " }), null);
    // a rule's record never shows a reasoning, whatever fields it has
    assert.equal(reasoningOf({ ...DOC.recent[1], reasoning: "x" }), null);
  });
  test("one line per record", () => {
    assert.equal(recordLine(AI_REPLY), "call 3 replied ($0.0004)");
    assert.equal(recordLine({ ...AI_REPLY, cost_usd: 0 }), "call 3 replied");
    assert.equal(recordLine(AI_FAILED), "call 4 failed: no action: APITimeoutError: Request timed out.");
    assert.equal(recordLine(AI_ACTION), "lr_mult(factor=0.5) applied");
    assert.equal(recordLine(AI_REJECTED), "rejected: lr_mult(factor=40) — factor=40 is above the maximum 10");
    assert.equal(recordLine({ ...AI_REJECTED, asked: "lr_mult(factor=0.5)", reason: "a person changed opt.lr; held until step 600" }),
      "rejected: lr_mult(factor=0.5) — a person changed opt.lr; held until step 600");
    assert.equal(recordLine({ ...AI_REJECTED, asked: { name: 7 }, reason: "no such action" }), "rejected: 7() — no such action");
    assert.equal(recordLine({ ...AI_REJECTED, asked: [1, 2], reason: "expected an object" }), "rejected: [1,2] — expected an object");
    assert.equal(recordLine(FALLBACK), FALLBACK.reason);
    assert.deepEqual(["ai_reply", "fallback"].map(kindLabel), ["AI reply", "fallback"]);
    assert.deepEqual([AI_REPLY, AI_ACTION, FALLBACK, DOC.recent[1], { kind: "hold", knob: "opt.lr" }].map(recordWho),
      ["ai", "ai", "ai", "plateau_cut_lr", "opt.lr"]);
  });
  test("Accept says what it sends, as whom and why", () => {
    assert.equal(acceptTitle(AI_PROPOSAL), "send wd_mult(factor=2) now (source ai, reason: the model's reasoning)");
    assert.equal(acceptTitle(DOC.pending[0]), "send wd_mult(factor=2) now (source autopilot, reason: rule overfitting_more_weight_decay)");
  });
});

// ------------------------------------------------------------------------------ rendering
// The panel in a fake document (./fakedom.mjs).
function rendered(doc) {
  const created = [];
  globalThis.document = {
    createElement: (tag) => {
      const n = new FakeNode(tag);
      created.push(n.tagName);
      return n;
    },
  };
  try {
    const card = new FakeNode("section");
    const panel = new AutopilotPanel(card, { decide: async () => ({}), setRule: async () => ({}) });
    panel.update(doc);
    return { card, created, panel };
  } finally {
    delete globalThis.document;
  }
}

describe("the panel with the LLM autopilot", () => {
  const AI_DOC = {
    ...DOC,
    mode: "ai_auto",
    ai: AI,
    recent: [AI_REPLY, { ...AI_ACTION, reasoning: XSS }, AI_REJECTED],
    pending: [AI_PROPOSAL],
  };
  test("the LLM line: model, endpoint, calls, cost", () => {
    const { card } = rendered(AI_DOC);
    const [box] = card.find("ap-ai-box");
    assert.equal(box.hidden, false);
    assert.equal(card.find("ap-ai-what")[0].textContent, "LLM scripted at http://127.0.0.1:8099/v1");
    assert.equal(card.find("ap-ai-calls")[0].textContent, "3 calls");
    assert.equal(card.find("ap-ai-cost")[0].textContent, "$0.0012 spent of $1.00, $0.9988 left");
    assert.deepEqual(card.find("ap-ai-price"), []);
    assert.deepEqual(card.find("ap-ai-fallback"), []);
  });
  test("an unknown price and a fallback are said", () => {
    const { card } = rendered({ ...AI_DOC, ai: { ...AI, price_known: false, fallback: "the budget of $1 is spent" } });
    assert.equal(card.find("ap-ai-price")[0].textContent, "price unknown: counted as $0");
    assert.equal(card.find("ap-ai-fallback")[0].textContent, "fallen back to the rules: the budget of $1 is spent");
  });
  test("without an LLM the line is hidden and empty", () => {
    const { card, panel } = rendered(DOC);
    const [box] = card.find("ap-ai-box");
    assert.equal(box.hidden, true);
    assert.equal(box.children.length, 0);
    assert.equal(panel.debug().ai, null);
    assert.deepEqual(card.find("ap-reasoning"), []);
  });
  test("the reasoning of each AI proposal and decision, as text: no element comes of it", () => {
    const { card, created, panel } = rendered(AI_DOC);
    assert.ok(!created.includes("IMG"), created.join(","));
    const reasons = card.find("ap-reasoning").map((n) => n.textContent);
    // the proposal's, then the recent records' (newest first: the rejected action has none)
    assert.deepEqual(reasons, [XSS, XSS, "the loss has been flat for 200 steps"]);
    for (const n of card.find("ap-reasoning")) assert.deepEqual(n.children, [n.textContent]);
    const [because] = card.find("ap-because");
    assert.equal(because.textContent, XSS);
    assert.equal(panel.debug().ai.model, "scripted");
    assert.deepEqual(panel.debug().recent, ["action:ai", "action:ai", "ai_reply:"]);
  });
});

describe("a run that is over", () => {
  test("its proposals cannot be accepted (Accept is disabled and says why) but can be cleared", () => {
    withDocument(() => {
      const card = new FakeNode("section");
      const panel = new AutopilotPanel(card, { decide: async () => ({}), setRule: async () => ({}) });
      panel.update(DOC);
      const buttons = () => [...card.find("ap-accept"), ...card.find("ap-reject")];
      assert.equal(buttons().length, 2);
      assert.ok(buttons().every((b) => !b.disabled));
      panel.setOver(true);
      const [accept] = card.find("ap-accept");
      const [reject] = card.find("ap-reject");
      assert.ok(accept.disabled && accept.title === "the run is over: nothing would apply it");
      // the server's refusal of an accept says "reject it to clear it": Reject stays on
      assert.ok(!reject.disabled && reject.title === "clear this proposal: the run is over");
      const [head] = card.find("ap-proposals")[0].children;
      assert.match(head.textContent, /^proposals the run left pending \(1, ended with it\)$/);
      assert.equal(panel.debug().over, true);
      panel.setOver(false); // a resumed run
      assert.ok(buttons().every((b) => !b.disabled));
    });
  });
});

describe("the evidence a person opened", () => {
  test("stays open through a redraw that comes before its toggle event", () => {
    withDocument(() => {
      const card = new FakeNode("section");
      const panel = new AutopilotPanel(card, { decide: async () => ({}), setRule: async () => ({}) });
      panel.update(DOC);
      const [opened] = card.find("ap-evidence");
      opened.open = true; // a click opens it now; the browser fires "toggle" in a later task
      const newer = { kind: "detection", rule: "spike_checkpoint", step: 1300, evidence: { n: 3 } };
      panel.update({ ...DOC, recent: [...DOC.recent, newer] });
      const shown = card.find("ap-evidence").map((d) => [d.dataset.key, d.open]);
      assert.deepEqual(shown, [
        ["detection|spike_checkpoint|1300|", false],
        [opened.dataset.key, true],
      ]);
    });
  });
});
