// node --test tests/js/ — the pure helpers of the Tune panel (src/hotcb/server/static/tune.js),
// on state documents shaped as the tuner's contract says (RUN/hotcb.tune.json).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { FakeNode, withDocument, withDocumentAsync } from "./fakedom.mjs";
import { panels, tune } from "./static.mjs";

const { acceptTitle, fmtProposal, bracketLine, decisionLabel, decisionWhy, ENABLE_COMMAND, tunerRan, TunePanel, fmtTuneChanges, fmtTuneValues, pendingProposals, trialRows, trialSteps, tuneFacts } = tune;

const STATE = {
  version: 1,
  mode: "suggest",
  objective: "val_loss",
  objective_used: "loss",
  direction: "minimize",
  segment_steps: 200,
  segment_evals: null,
  study: "hotcb-demo",
  storage: "postgresql://bob:***@db/optuna",
  phase: "trial",
  trial: 7,
  segment_start: 1400,
  next_boundary: 1600,
  counts: { segments: 9, kept: 2, rolled_back: 3, proposed: 1, failed: 0 },
  accept_rate: 0.4,
  best: { trial: 5, score: 0.12, values: { opt: { lr: 0.003 } } },
  space: [{ module: "opt", key: "lr", mode: "mult", low: 0.25, high: 4.0, log: true }],
  warnings: ["objective 'val_loss' not logged; scoring 'loss'"],
  trials: [
    { trial: 5, step: 1000, end_step: 1200, changes: { "opt.lr": [0.001, 0.003] }, score: 0.12, decision: "kept" },
    { trial: 6, step: 1200, end_step: 1400, changes: { "opt.lr": [0.003, 0.009] }, score: -0.03, decision: "rolled_back" },
    { trial: 7, step: 1400, end_step: null, changes: { "opt.lr": [0.003, 0.0045] }, score: null, decision: "open" },
  ],
  proposals: [
    { id: "P2", trial: 6, step: 1200, changes: { "opt.lr": [0.003, 0.009] }, state: "rejected" },
    { id: "P3", trial: 8, step: 1600, changes: { "opt.lr": [0.003, 0.0045] }, state: "pending" },
    { id: "P4", trial: 9, step: 1600, changes: { "loss.l2": [0, 0.1] }, state: "pending" },
  ],
  updated: 1764633600.0,
};

describe("tuneFacts: the panel's facts, as text", () => {
  test("a suggest-mode tuner that fell back to another objective", () => {
    assert.deepEqual(tuneFacts(STATE), {
      mode: "suggest",
      objective: "val_loss",
      objectiveUsed: "loss",
      fallback: true,
      direction: "↓ minimize",
      directionUsed: "↓ minimize",
      phase: "trial",
      trial: "7",
      next: "step 1600",
      counts: "9 segments · 2 kept · 3 rolled back · 1 proposed · 0 failed",
      acceptRate: "40%",
      best: "trial 5 · score +0.12 · opt.lr = 0.003",
      bracket: null,
    });
  });

  test("trials that moved nothing (at a bound) are counted and labelled apart", () => {
    const counts = { segments: 9, kept: 2, rolled_back: 3, proposed: 0, rejected: 0, expired: 0, failed: 0, unmoved: 4 };
    assert.equal(tuneFacts({ ...STATE, counts }).counts, "9 segments · 2 kept · 3 rolled back · 0 proposed · 4 unmoved · 0 failed");
    assert.equal(decisionLabel("unmoved"), "unmoved (at a bound)");
    const reason = "lr=10 held at its bound: the trial moves nothing (told a score of 0)";
    assert.equal(decisionWhy({ decision: "unmoved", score: 0, detail: { reason } }), reason);
  });

  test("expired proposals are counted apart from failed trials", () => {
    const counts = { segments: 9, kept: 2, rolled_back: 3, proposed: 2, rejected: 0, expired: 1, failed: 0 };
    assert.equal(tuneFacts({ ...STATE, counts }).counts, "9 segments · 2 kept · 3 rolled back · 2 proposed · 1 expired · 0 failed");
  });

  test("a training loss standing in for a maximized objective is minimized", () => {
    const f = tuneFacts({ ...STATE, objective: "val_acc", direction: "maximize", direction_used: "minimize" });
    assert.equal(f.direction, "↑ maximize");
    assert.equal(f.directionUsed, "↓ minimize");
  });

  test("a start bracket: under way, then over, with each round's arms", () => {
    const arms = [{ factor: 1, level: 0.86 }, { factor: 0.25, level: 0.68 }, { factor: 4, level: null }];
    const open = { knob: "opt.lr", round: 1, arm: 2, arms, rounds: [] };
    assert.equal(tuneFacts({ ...STATE, bracket: open }).bracket, "opt.lr round 1 under way (arm ×4)");
    const over = { knob: "opt.lr", round: 1, rounds: [{ round: 1, arms, winner: 0.25 }], ended_at: 155 };
    assert.equal(bracketLine(over), "opt.lr over at step 155, ×0.25 won its last round · round 1: ×1 0.86, ×0.25 0.68, ×4 …");
    // a move won: the run trains on from the weights the bracket began with
    assert.equal(bracketLine({ ...over, back_to_start: true }).split(" · ")[0], "opt.lr over at step 155, ×0.25 won its last round, on from the weights it began with");
    assert.equal(bracketLine({ ...over, reason: "the run was frozen" }).split(" · ")[0], "opt.lr over at step 155 (the run was frozen)");
    // a round cut short (a restart, a disable): the arms it had judged
    const cut = { knob: "opt.lr", round: 2, arms, rounds: [{ round: 1, arms, winner: 0.25 }], ended_at: 230, reason: "a restart from a checkpoint cut the bracket short" };
    assert.equal(bracketLine(cut).split(" · ")[2], "round 2 (cut short): ×1 0.86, ×0.25 0.68, ×4 …");
    // under a scheduler: the lr the round's first arm really began at, not the plan's base
    const moved = { ...over, rounds: [{ round: 1, base: 3e-5, from: 1.8e-4, arms, winner: 0.25 }] };
    assert.equal(bracketLine(moved).split(" · ")[1], "round 1 from 1.8e-4: ×1 0.86, ×0.25 0.68, ×4 …");
    // a level's noise: the margin a move had to win by
    const noisy = { ...over, rounds: [{ round: 1, arms: [{ factor: 1, level: 0.5, noise: 0.1 }], winner: 1 }] };
    assert.equal(bracketLine(noisy).split(" · ")[1], "round 1: ×1 0.5 ±0.05");
    // each round from the lr it began at, as `tune status` says it
    const based = { ...over, rounds: [{ round: 1, base: 0.1, arms, winner: 0.25 }] };
    assert.equal(bracketLine(based).split(" · ")[1], "round 1 from 0.1: ×1 0.86, ×0.25 0.68, ×4 …");
    assert.equal(bracketLine(null), null);
  });

  test("no fallback badge when the objective is the one scored", () => {
    const f = tuneFacts({ ...STATE, objective: "loss", objective_used: "loss", direction: "maximize" });
    assert.equal(f.fallback, false);
    assert.equal(f.direction, "↑ maximize");
    assert.equal(tuneFacts({ ...STATE, objective_used: undefined }).fallback, false);
  });

  test("a fresh tuner: nothing counted, no trial, no best, no boundary", () => {
    const f = tuneFacts({ mode: "observe", phase: "baseline", trial: null, next_boundary: null, best: null });
    assert.equal(f.trial, "–");
    assert.equal(f.next, "–");
    assert.equal(f.best, "none yet");
    assert.equal(f.acceptRate, "–");
    assert.equal(f.counts, "0 segments · 0 kept · 0 rolled back · 0 proposed · 0 failed");
  });

  test("proposals a person turned down are counted as rejected, not failed", () => {
    const f = tuneFacts({ ...STATE, counts: { ...STATE.counts, proposed: 5, rejected: 3 } });
    assert.equal(f.counts, "9 segments · 2 kept · 3 rolled back · 5 proposed · 3 rejected · 0 failed");
  });
});

describe("changes and values", () => {
  test("old → new per key, as the tuner writes them", () => {
    assert.equal(fmtTuneChanges({ "opt.lr": [0.001, 0.003] }), "opt.lr 0.001 → 0.003");
    assert.equal(fmtTuneChanges({ "opt.lr": [1e-4, 2e-4], "loss.l2": [0, 0.1] }), "opt.lr 1e-4 → 2e-4, loss.l2 0 → 0.1");
    assert.equal(fmtTuneChanges(null), "");
  });

  test("a trial's values, module by module", () => {
    assert.equal(fmtTuneValues({ opt: { lr: 0.003, weight_decay: 0.01 } }), "opt.lr = 0.003, opt.weight_decay = 0.01");
    assert.equal(fmtTuneValues({ opt: { lr: 0.003 }, loss: { l2: 0.1 } }), "opt.lr = 0.003, loss.l2 = 0.1");
    assert.equal(fmtTuneValues(undefined), "");
  });
});

describe("proposals and trials, newest first", () => {
  test("only pending proposals wait for a person", () => {
    assert.deepEqual(
      pendingProposals(STATE).map((p) => p.id),
      ["P4", "P3"],
    );
    assert.deepEqual(pendingProposals({ mode: "suggest" }), []);
  });

  test("the trials table starts with the open trial", () => {
    assert.deepEqual(
      trialRows(STATE).map((t) => t.trial),
      [7, 6, 5],
    );
    assert.deepEqual(
      trialRows(STATE).map((t) => decisionLabel(t.decision)),
      ["open", "rolled back", "kept"],
    );
  });

  test("a trial of a life a resume replaced says so, and what that life decided", () => {
    assert.equal(decisionLabel("replaced", "kept"), "replaced (was kept)");
    assert.equal(decisionLabel("replaced", "rolled_back"), "replaced (was rolled back)");
    assert.equal(decisionLabel("replaced"), "replaced");
    assert.equal(decisionLabel("kept", "rolled_back"), "kept"); // `was` only for a replaced one
  });

  test("a kept trial a person undid says so, and when", () => {
    assert.equal(decisionLabel("kept", undefined, 412), "kept, undone");
    assert.equal(decisionLabel("rolled_back", undefined, 412), "rolled back");
    assert.match(decisionWhy({ decision: "kept", score: 0.2, undone: 412 }), /undone at step 412/);
  });

  test("the documents are not changed", () => {
    const before = JSON.stringify(STATE);
    pendingProposals(STATE);
    trialRows(STATE);
    tuneFacts(STATE);
    assert.equal(JSON.stringify(STATE), before);
  });
});

describe("the off line", () => {
  test("says how to switch the tuner on", () => {
    assert.equal(ENABLE_COMMAND, "hotcb --dir RUN tune enable --mode suggest");
  });

  test("a tuner switched off after it ran keeps its counts and trials on show", () => {
    withDocument(() => {
      const card = new FakeNode("section");
      const panel = new TunePanel(card, { decide: async () => "01J" });
      panel.update({ ...STATE, mode: "off", phase: "off", trial: null, next_boundary: null });
      assert.equal(tunerRan(panel.doc), true);
      assert.equal(card.find("tune-off").length, 1); // the off line, with how to enable it again
      assert.equal(card.find("tune-body")[0].hidden, false);
      assert.equal(card.find("tune-dec-kept").length, 1); // its trials
      assert.match(card.find("tune-facts")[0].textContent, /2 kept · 3 rolled back/);
    });
  });

  test("a refusal the run wrote before the send's reply came back is said", async () => {
    await withDocumentAsync(async () => {
      const card = new FakeNode("section");
      let reply;
      const ledger = []; // the page's ledger
      const answerOf = (id) => ledger.find((e) => e.cmd_id === id);
      const panel = new TunePanel(card, { decide: () => new Promise((resolve) => (reply = resolve)), answerOf });
      panel.update(STATE);
      const sending = panel.send("accept", { id: "P3" });
      // the run read the command and refused it; the WebSocket brought that first
      const entry = { module: "tune", op: "accept", cmd_id: "01J", decision: "rejected", error: "proposal P3 expired" };
      ledger.push(entry);
      panel.onEntry(entry);
      reply("01J");
      await sending;
      assert.equal(panel.sent.get("P3").error, "accept rejected: proposal P3 expired");
      const errors = card.find("tune-error").map((n) => n.textContent);
      assert.deepEqual(errors, ["P3: accept rejected: proposal P3 expired"]);
      assert.equal(card.find("tune-accept")[0].disabled, false); // it can be sent again
    });
  });

  test("a tuner never switched on shows the off line alone", () => {
    withDocument(() => {
      const card = new FakeNode("section");
      const panel = new TunePanel(card, { decide: async () => "01J" });
      panel.update({ mode: "off" });
      assert.equal(tunerRan(panel.doc), false);
      assert.equal(card.find("tune-body")[0].hidden, true);
    });
  });
});

describe("the ledger's view of the tuner's entries", () => {
  const mutate = {
    seq: 12,
    step: 1400,
    module: "tune",
    op: "mutate",
    source: "tune",
    decision: "applied",
    changes: { lr: { old: 0.003, new: 0.0045 } },
    tune: { trial: 7, score: null, decision: "open" },
  };

  test("a mutation or rollback is a value change (its impact is measured)", () => {
    assert.equal(panels.isValueChange(mutate), true);
    assert.equal(panels.isValueChange({ ...mutate, op: "rollback" }), true);
    assert.equal(panels.isValueChange({ ...mutate, op: "accept", changes: {} }), false);
    assert.equal(panels.isValueChange({ ...mutate, op: "enable" }), false);
  });

  test("its description says the trial and the decision", () => {
    const { what, lines } = panels.describeEntry({ ...mutate, tune: { trial: 7, score: -0.03, decision: "rolled_back" } });
    assert.equal(what, "tune mutate");
    assert.deepEqual(lines, ["lr: 0.003 → 0.0045", "trial 7 · score -0.03 · rolled_back"]);
  });
});

describe("the trials table", () => {
  test("a trial's decision says why in its tooltip (a void trial, a blow-up)", () => {
    withDocument(() => {
      const card = new FakeNode("section");
      const panel = new TunePanel(card, { decide: async () => "01J" });
      const reason = "opt.lr set by a command during the trial: not judged";
      const trials = [...STATE.trials, { trial: 8, step: 1600, end_step: 1700, score: null, decision: "failed", detail: { reason } }];
      panel.update({ ...STATE, trials });
      const labels = card.find("tune-dec-failed");
      assert.equal(labels.length, 1);
      assert.equal(labels[0].title, reason);
      assert.equal(card.find("tune-dec-kept")[0].title, "");
    });
  });
});

describe("trialSteps: a trial's segment, or the step it was proposed at", () => {
  test("a judged trial, an open one, a rejected proposal, a row without its proposal", () => {
    assert.deepEqual(trialSteps(STATE, STATE.trials[0]), { text: "1000–1200", title: "" });
    assert.deepEqual(trialSteps(STATE, STATE.trials[2]), { text: "1400…", title: "" });
    const rejected = { trial: 8, step: null, decision: "rejected" }; // P3's trial, never applied
    assert.deepEqual(trialSteps(STATE, rejected), { text: "1600", title: "proposed at step 1600" });
    assert.deepEqual(trialSteps(STATE, { trial: 42, step: null, decision: "failed" }), { text: "", title: "" });
  });
});

describe("decisionWhy: a judged trial's tooltip", () => {
  test("a positive score rolled back says the bar it missed", () => {
    const t = { trial: 3, score: 0.103, decision: "rolled_back", detail: { margin: 0.15, needed: 0.15 } };
    assert.equal(decisionWhy(t), "score +0.103 did not beat +0.15, the bar to keep (the threshold plus a noise margin of 0.15)");
  });
  test("a keep says the bar it beat; a trial without the bar says nothing", () => {
    const t = { trial: 4, score: 0.3, decision: "kept", detail: { margin: 0.05, needed: 0.05 } };
    assert.match(decisionWhy(t), /^score \+0\.3 beat \+0\.05, the bar to keep/);
    assert.equal(decisionWhy({ trial: 5, score: 0.1, decision: "kept" }), "");
  });
});

describe("a shared study", () => {
  test("the head says what other runs had put in it when this run joined", () => {
    withDocument(() => {
      const card = new FakeNode("section");
      const panel = new TunePanel(card, { decide: async () => "01J" });
      panel.update({ ...STATE, study: "s", study_joined: { trials: 11, runs: 1, best: 0.183 } });
      const [study] = card.find("tune-study");
      assert.equal(study.textContent, "s · shared: 11 trials of 1 other run when this run joined");
      assert.ok(study.title.endsWith("the best shown is this run's, theirs scored +0.183"), study.title);
    });
  });
});

describe("what the panel says once", () => {
  test("a stand-in scored the way the objective asked: the badge says the direction, once", () => {
    withDocument(() => {
      const card = new FakeNode("section");
      const panel = new TunePanel(card, { decide: async () => "01J" });
      panel.update(STATE); // val_loss asked, loss scored: both minimized
      const line = () => card.find("tune-facts")[0].children[1].textContent; // the objective's dd
      assert.equal(line(), "val_loss scoring loss ↓ minimize");
      panel.update({ ...STATE, objective: "val_acc", direction: "maximize", direction_used: "minimize" });
      assert.equal(line(), "val_acc scoring loss ↓ minimize ↑ maximize");
    });
  });

  test("Accept's tooltip: the moves land on the values in force at the next step", () => {
    const p = { id: "P3", changes: { "opt.lr": [0.00144, 0.000632], "custom.drop": [0.1, 0.3] }, moves: { "opt.lr": 0.439 } };
    assert.equal(
      acceptTitle(p),
      "apply at the run's next step: opt.lr ×0.439, custom.drop = 0.3 of the values then in force (opt.lr 0.00144 → 6.32e-4, custom.drop 0.1 → 0.3 when proposed)",
    );
  });
});

describe("fmtProposal: a proposal as Accept applies it", () => {
  test("a relative move says it is one, with the values of the step it was made at", () => {
    const p = { id: "P1", step: 728, changes: { "opt.lr": [4.87e-4, 2.46e-4], "custom.drop": [0.1, 0.3], "loss.aux": [0.5, 0.7] }, moves: { "opt.lr": 2.46e-4 / 4.87e-4, "loss.aux": 0.2 } };
    assert.equal(
      fmtProposal(p),
      "opt.lr ×0.5051 on accept (4.87e-4 → 2.46e-4 at step 728), custom.drop 0.1 → 0.3, loss.aux +0.2 on accept (0.5 → 0.7 at step 728)",
    );
  });
});

describe("a run that is over", () => {
  test("its proposals cannot be answered: Accept and Reject are disabled, and say why", () => {
    withDocument(() => {
      const card = new FakeNode("section");
      const panel = new TunePanel(card, { decide: async () => "01J" });
      panel.update({ ...STATE, trials: [...STATE.trials, { trial: 8, step: 1550, decision: "proposed" }] });
      const buttons = () => [...card.find("tune-accept"), ...card.find("tune-reject")];
      assert.equal(buttons().length, 4); // P3 and P4 are pending
      assert.ok(card.find("dec").some((n) => n.textContent === "proposed"));
      assert.ok(buttons().every((b) => !b.disabled));
      const phase = () => card.find("tune-phase")[0].textContent;
      assert.ok(phase().endsWith("next boundary step 1600"), phase());
      panel.setOver(true);
      assert.ok(buttons().every((b) => b.disabled && b.title === "the run is over: nothing would apply it"));
      assert.equal(card.find("tune-proposals")[0].children[0].textContent, "proposals the run left pending (ended with it) (2)");
      // no phase nor next boundary for a run that is over (its last state file names them)
      assert.equal(phase(), "idle: the run is over (until it is started again)");
      // the trials its pending proposals opened ended with it
      const decisions = card.find("dec").map((n) => n.textContent);
      assert.ok(decisions.includes("ended") && !decisions.includes("proposed"), decisions.join());
      assert.equal(panel.debug().over, true);
      panel.setOver(false); // a resumed run
      assert.ok(buttons().every((b) => !b.disabled));
    });
  });
});
