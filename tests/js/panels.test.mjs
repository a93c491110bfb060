// node --test tests/js/ — the pure functions of src/hotcb/server/static/panels.js.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { FakeNode, withDocument } from "./fakedom.mjs";
import { panels } from "./static.mjs";

const {
  bigChange,
  boundsError,
  describeEntry,
  fmtChanges,
  fmtValue,
  impactRows,
  isValueChange,
  ledgerCount,
  parseFor,
  replacedByResume,
  mixedWithin,
  softRange,
  windowAtBounds,
  LedgerTable,
} = panels;

describe("fmtValue: actuator values as the panels show them", () => {
  test("numbers like fmtNum, tuples in brackets, missing as a dash", () => {
    assert.equal(fmtValue(0.000123), "1.23e-4");
    assert.equal(fmtValue(32), "32");
    assert.equal(fmtValue([0.9, 0.999]), "[0.9, 0.999]");
    assert.equal(fmtValue([]), "[]");
    assert.equal(fmtValue(["0", "2"]), '["0", "2"]'); // strings in a list keep their quotes
    assert.equal(fmtValue(true), "true");
    assert.equal(fmtValue("adamw"), "adamw");
    assert.equal(fmtValue(null), "–");
    assert.equal(fmtValue(undefined), "–");
  });
});

describe("fmtChanges: a ledger entry's changes, one line each", () => {
  test("old → new, or the bare value", () => {
    assert.deepEqual(fmtChanges({ lr: { old: 0.001, new: 0.0001 }, betas: { old: [0.9, 0.99], new: [0.9, 0.999] } }), [
      "lr: 0.001 → 1e-4",
      "betas: [0.9, 0.99] → [0.9, 0.999]",
    ]);
    assert.deepEqual(fmtChanges({ paused: { old: false, new: true }, steps: 3 }), ["paused: false → true", "steps: 3"]);
  });

  test("no changes: no lines", () => {
    assert.deepEqual(fmtChanges(null), []);
    assert.deepEqual(fmtChanges(undefined), []);
    assert.deepEqual(fmtChanges("changed"), []);
    assert.deepEqual(fmtChanges({}), []);
  });
});

describe("describeEntry: the tooltip and ledger text of an entry", () => {
  test("module, op and id; then the changes", () => {
    const e = { module: "opt", op: "set_params", changes: { lr: { old: 1e-3, new: 5e-4 } } };
    assert.deepEqual(describeEntry(e), { what: "opt set_params", lines: ["lr: 0.001 → 5e-4"] });
  });

  test("a checkpoint names the file it saved", () => {
    assert.deepEqual(describeEntry({ module: "control", op: "checkpoint", checkpoint: "ckpt/step_100.pt" }), {
      what: "control checkpoint",
      lines: ["saved ckpt/step_100.pt"],
    });
  });

  test("without changes (scheduled, rejected) the requested params are shown", () => {
    const e = { module: "loss", op: "set_params", id: "weights", params: { recon: 1.5, betas: [1, 2] } };
    assert.deepEqual(describeEntry(e), { what: "loss set_params weights", lines: ["recon=1.5, betas=[1,2]"] });
    assert.deepEqual(describeEntry({ module: "control", op: "pause", params: {} }), { what: "control pause", lines: [] });
  });

  test("a start bracket's arm, its end and the bracket's end say what hotcb log says", () => {
    const arm = {
      module: "tune", op: "bracket", decision: "applied", step: 53, seq: 4,
      changes: { lr: { old: 0.1, new: 0.025 } },
      tune: { bracket: { round: 1, arm: 1, factor: 0.25 }, restored: ["model", "optimizer"] },
    };
    assert.deepEqual(describeEntry(arm).lines, ["lr: 0.1 → 0.025", "bracket round 1, arm ×0.25 · model and optimizer state restored"]);
    const end = { module: "tune", op: "arm", tune: { bracket: { round: 1, factor: 0.25, value: 0.025, level: 0.6768, best: true } } };
    assert.deepEqual(describeEntry(end).lines, ["bracket round 1: lr 0.025 (×0.25) ended at 0.6768, best so far"]);
    const noisy = { ...end, tune: { bracket: { ...end.tune.bracket, noise: 0.2 } } };
    assert.deepEqual(describeEntry(noisy).lines, ["bracket round 1: lr 0.025 (×0.25) ended at 0.6768 ±0.14, best so far"]);
    const over = { module: "tune", op: "bracket", tune: { bracket: { settle: true, winner: { factor: 0.5 } } } };
    assert.deepEqual(describeEntry(over).lines, ["bracket over: lr ×0.5 won"]);
    // the whole move from where the bracket began ("×1" alone read as "the starting lr won")
    const moved = { ...over, tune: { bracket: { settle: true, winner: { factor: 1, value: 0.001, began: 0.016 } } } };
    assert.deepEqual(describeEntry(moved).lines, ["bracket over: lr 0.016 → 0.001 (×0.0625; ×1 won the last round)"]);
    const stayed = { ...over, tune: { bracket: { settle: true, winner: { factor: 1, value: 0.01, began: 0.01 } } } };
    assert.deepEqual(describeEntry(stayed).lines, ["bracket over: lr ×1 won (the lr it began at)"]);
    const back = { ...over, tune: { bracket: { ...over.tune.bracket, back_to_start: true }, restored: ["model", "optimizer"] } };
    assert.deepEqual(describeEntry(back).lines, ["bracket over: lr ×0.5 won · on from the weights it began with · model and optimizer state restored"]);
    // a move that put weights back has no impact of its own: the loss before it is of other weights
    assert.equal(isValueChange(arm), false);
    assert.equal(isValueChange({ ...arm, tune: { ...arm.tune, restored: [] } }), true);
  });
});

describe("ledgerCount: the ledger table's count says what is loaded of how many", () => {
  test("the page's entries, and the ledger's total when it holds more", () => {
    assert.equal(ledgerCount(230, 244), "230 of 244 entries loaded");
    assert.equal(ledgerCount(244, 244), "244 entries");
    assert.equal(ledgerCount(12, null), "12 entries");
    assert.equal(ledgerCount(12, 10), "12 entries"); // the count lags the live entries a moment
    assert.equal(ledgerCount(0, null), "");
    assert.equal(ledgerCount(0, 5), "0 of 5 entries loaded");
  });
});

describe("parseFor: typed text → the value an actuator's type expects", () => {
  test("numbers (float, log_float) accept exponent form; blank or junk throw", () => {
    assert.equal(parseFor({ type: "log_float", param_key: "lr" }, " 1e-4 "), 1e-4);
    assert.equal(parseFor({ type: "float", param_key: "wd" }, "0.05"), 0.05);
    assert.throws(() => parseFor({ type: "float", param_key: "wd" }, ""), /wd needs a number/);
    assert.throws(() => parseFor({ type: "float", param_key: "wd" }, "abc"), /wd needs a number/);
    assert.throws(() => parseFor({ type: "float", param_key: "wd" }, "Infinity"), /needs a number/);
    // JavaScript's own number syntax is not a number a person types: 0x10 became lr=16
    for (const t of ["0x10", "0b1", "0o7", "1_000", "1e"]) {
      assert.throws(() => parseFor({ type: "log_float", param_key: "lr" }, t), /lr needs a number/, t);
    }
    assert.throws(() => parseFor({ type: "float", param_key: "wd" }, "1e400"), /wd: 1e400 is too large a number/);
    assert.equal(parseFor({ type: "float", param_key: "wd" }, "-.5"), -0.5);
    assert.throws(() => parseFor({ type: "int", param_key: "accum" }, "0x4"), /accum needs an integer/);
    assert.deepEqual(parseFor({ type: "tuple", param_key: "betas" }, "(0.9, 0.999)"), [0.9, 0.999]);
    assert.throws(() => parseFor({ type: "tuple", param_key: "betas" }, "0x1, 0.9"), /betas needs numbers/);
  });

  test("int refuses fractions", () => {
    assert.equal(parseFor({ type: "int", param_key: "accum" }, "4"), 4);
    assert.throws(() => parseFor({ type: "int", param_key: "accum" }, "3.5"), /accum needs an integer/);
  });

  test("bool accepts true/false words in any case", () => {
    const act = { type: "bool", param_key: "clip_grad" };
    for (const t of ["true", "1", "ON", "yes"]) assert.equal(parseFor(act, t), true, t);
    for (const t of ["false", "0", "off", "No"]) assert.equal(parseFor(act, t), false, t);
    assert.throws(() => parseFor(act, "maybe"), /clip_grad needs true or false/);
  });

  test("choice returns the listed value itself (a number stays a number)", () => {
    const act = { type: "choice", param_key: "batch_size", choices: [16, 32, 64] };
    assert.equal(parseFor(act, "32"), 32);
    assert.throws(() => parseFor(act, "48"), /batch_size must be one of 16, 32, 64/);
  });

  test("tuple takes commas or spaces, with or without brackets", () => {
    const act = { type: "tuple", param_key: "betas" };
    assert.deepEqual(parseFor(act, "0.9, 0.999"), [0.9, 0.999]);
    assert.deepEqual(parseFor(act, "(0.9 0.999)"), [0.9, 0.999]);
    assert.deepEqual(parseFor(act, "[0.9,0.999]"), [0.9, 0.999]);
    assert.throws(() => parseFor(act, "0.9, x"), /betas needs numbers/);
    assert.throws(() => parseFor(act, "()"), /betas needs numbers/);
  });
});

describe("softRange: the slider's window", () => {
  const close = (a, b) => Math.abs(a - b) <= 1e-12 * Math.abs(b);

  test("log slider: ÷100 … ×100 around the value, within the hard bounds", () => {
    const lr = { type: "log_float", min: 1e-10, max: 10, initial: 1e-3 };
    const [lo, hi] = softRange(lr, 1.09e-3);
    assert.ok(close(lo, 1.09e-5) && close(hi, 0.109), `[${lo}, ${hi}]`);
    // the window follows the value, not the initial one
    const [lo1, hi1] = softRange(lr, 1e-6);
    assert.ok(close(lo1, 1e-8) && close(hi1, 1e-4), `[${lo1}, ${hi1}]`);
    // near a hard bound the window stops there
    assert.deepEqual(softRange({ type: "log_float", min: 1e-5, max: 0.1, initial: 1e-3 }, 1e-3), [1e-5, 0.1]);
    assert.deepEqual(softRange(lr, 10), [0.1, 10]);
  });

  test("log slider: wider windows add a decade each way, up to the hard bounds", () => {
    const lr = { type: "log_float", min: 1e-10, max: 10, initial: 1e-3 };
    const [lo, hi] = softRange(lr, 1e-3, 3);
    assert.ok(close(lo, 1e-6) && close(hi, 1), `[${lo}, ${hi}]`);
    assert.equal(windowAtBounds(lr, [lo, hi]), false);
    const all = softRange(lr, 1e-3, 9);
    assert.deepEqual(all, [1e-10, 10]);
    assert.equal(windowAtBounds(lr, all), true);
  });

  test("log slider without bounds: the window alone", () => {
    const [lo, hi] = softRange({ type: "log_float" }, 0.5);
    assert.ok(close(lo, 0.005) && close(hi, 50), `[${lo}, ${hi}]`);
    assert.equal(windowAtBounds({ type: "log_float" }, [lo, hi]), false);
  });

  test("linear slider: the hard bounds when they are usable", () => {
    assert.deepEqual(softRange({ type: "float", min: 0, max: 1, initial: 0.1 }, 0.1), [0, 1]);
  });

  test("linear slider: bounds far wider than the value narrow to a few times it", () => {
    assert.deepEqual(softRange({ type: "float", min: 0, max: 1e6, initial: 0.5 }, 0.5), [0, 2]);
    assert.deepEqual(softRange({ type: "int", initial: 32 }, 32), [0, 128]);
  });

  test("the window always contains the value", () => {
    for (const [act, v] of [
      [{ type: "log_float", min: 1e-10, max: 10, initial: 1e-3 }, 0.5],
      [{ type: "log_float", min: 1e-10, max: 10, initial: 1e-3 }, 1e-8],
      [{ type: "float", min: 0, max: 1e6, initial: 0.5 }, 7],
      [{ type: "int", initial: 32 }, 500],
    ]) {
      const [lo, hi] = softRange(act, v);
      assert.ok(lo <= v && v <= hi, `${JSON.stringify(act)} ${v}: [${lo}, ${hi}]`);
    }
  });
});

describe("bigChange: a change to ask about first", () => {
  test("more than ×10 or less than ÷10 of the applied value", () => {
    assert.equal(bigChange(1e-3, 0.1), "×100");
    assert.equal(bigChange(1e-3, 1e-5), "÷100");
    assert.equal(bigChange(1e-3, 1.5e-2), "×15");
    assert.equal(bigChange(0.3, 0), "to 0");
  });

  test("within ×10 either way: no question", () => {
    assert.equal(bigChange(1e-3, 1e-2), null);
    assert.equal(bigChange(1e-3, 1e-4), null);
    assert.equal(bigChange(1e-3, 5.61e-4), null);
    assert.equal(bigChange(0.3, -1), null); // a sign change of the same size
  });

  test("a big change that flips the sign says so", () => {
    assert.equal(bigChange(3e-3, -1), "×−330");
    assert.equal(bigChange(1, -1e-3), "÷−1000");
  });

  test("nothing to judge against: no question", () => {
    assert.equal(bigChange(0, 5), null);
    assert.equal(bigChange(undefined, 5), null);
    assert.equal(bigChange(true, false), null);
    assert.equal(bigChange([0.9, 0.99], [0.5, 0.9]), null);
  });
});

describe("impactRows: which ledger rows show an impact", () => {
  const e = (seq, step, module, op, extra = {}) => ({
    seq,
    step,
    module,
    op,
    cmd_id: `c${seq}`,
    decision: "applied",
    changes: { x: { old: 1, new: 2 } },
    ...extra,
  });

  test("value changes only: not pause, resume, freeze or callbacks", () => {
    const entries = [
      e(1, 10, "control", "pause", { changes: { paused: { old: false, new: true } } }),
      e(2, 10, "control", "resume", { changes: { paused: { old: true, new: false } } }),
      e(3, 20, "freeze", "set", { changes: { mode: { old: "off", new: "prod" } } }),
      e(4, 30, "cb", "set_params", { id: "ema" }),
      e(5, 40, "opt", "set_params"),
      e(6, 50, "loss", "set_params"),
      e(7, 60, "custom", "set_params"),
      e(8, 70, "opt", "set_params", { decision: "rejected", changes: undefined }),
      e(9, 80, "opt", "set_params", { decision: "scheduled", changes: undefined }),
    ];
    assert.deepEqual([...impactRows(entries)], [
      [5, 5],
      [6, 6],
      [7, 7],
    ]);
  });

  test("once per step: on the last value change of that step", () => {
    const entries = [
      e(1, 100, "opt", "set_params"),
      e(2, 100, "control", "pause", { changes: { paused: { old: false, new: true } } }),
      e(3, 100, "opt", "set_params"),
      e(4, 100, "loss", "set_params"),
      e(5, 101, "opt", "set_params"),
    ];
    assert.deepEqual([...impactRows(entries)], [
      [1, 4],
      [3, 4],
      [4, 4],
      [5, 5],
    ]);
  });

  test("an undo of a value change is one; an undo of anything else is not", () => {
    const entries = [
      e(1, 10, "opt", "set_params"),
      e(2, 20, "cb", "set_params"),
      e(3, 30, "control", "undo", { undo_of: "c1" }),
      e(4, 40, "control", "undo", { undo_of: "c2" }),
    ];
    assert.deepEqual([...impactRows(entries).keys()], [1, 3]);
  });

  test("an undo whose target is not loaded counts when it changed only actuator keys", () => {
    const undo = e(9, 90, "control", "undo", { undo_of: "gone", changes: { lr: { old: 1, new: 2 } } });
    assert.equal(isValueChange(undo, new Map(), new Set(["lr"])), true);
    assert.equal(isValueChange(undo, new Map(), new Set(["momentum"])), false);
    assert.equal(isValueChange(undo, new Map(), null), false);
  });
});

describe("Controls: the applied value is the newest the run recorded", () => {
  const lr = (current) => ({ param_key: "lr", type: "log_float", group: "opt", current, initial: 0.1 });
  // `at` stands for both the step and the wall_time
  const change = (at, value) => ({
    cmd_id: `c${at}`,
    decision: "applied",
    step: at,
    wall_time: at,
    changes: { lr: { old: 0.1, new: value } },
  });
  const shown = (controls) => controls.debug()[0].applied;
  const controls = () => new panels.Controls(new FakeNode("div"), new FakeNode("span"), async () => "id");

  test("a change older than the actuators file does not replace it (a scheduler moved the lr since)", () => {
    withDocument(() => {
      const c = controls();
      c.setActuators([lr(7e-4)], 200); // the page loads the file first ...
      c.onEntry(change(100, 0.05)); // ... then the ledger
      assert.equal(shown(c), 7e-4);
    });
  });

  test("a change newer than the file shows, and a file older than it does not undo it", () => {
    withDocument(() => {
      const c = controls();
      c.setActuators([lr(7e-4)], 200);
      c.onEntry(change(300, 0.05));
      assert.equal(shown(c), 0.05);
      c.setActuators([lr(7e-4)], 250); // written before the change, arriving after it
      assert.equal(shown(c), 0.05);
      c.setActuators([lr(0.04)], 350);
      assert.equal(shown(c), 0.04);
    });
  });
});

describe("boundsError: a value outside the actuator's hard bounds, in the kernel's words", () => {
  const lr = { param_key: "lr", type: "log_float", min: 1e-10, max: 10 };
  test("below the minimum, above the maximum", () => {
    assert.equal(boundsError(lr, -1), "lr=-1 is below the minimum 1e-10 for actuator 'lr'");
    assert.equal(boundsError(lr, 0), "lr=0 is below the minimum 1e-10 for actuator 'lr'");
    assert.equal(boundsError(lr, 20), "lr=20 is above the maximum 10 for actuator 'lr'");
  });

  test("within the bounds, or no bounds: nothing to say", () => {
    assert.equal(boundsError(lr, 1e-3), null);
    assert.equal(boundsError(lr, 10), null);
    assert.equal(boundsError({ param_key: "x", type: "float", min: null, max: null }, -1e9), null);
    assert.equal(boundsError({ param_key: "b", type: "bool" }, true), null);
  });

  test("each element of a tuple", () => {
    const betas = { param_key: "betas", type: "tuple", min: 0, max: 1 };
    assert.equal(boundsError(betas, [0.9, 0.999]), null);
    assert.equal(boundsError(betas, [0.9, 1.5]), "betas[1]=1.5 is above the maximum 1 for actuator 'betas'");
  });
});

describe("Control: a value the page knows is wrong is refused at once, and the error goes with the next edit", () => {
  const lr = { param_key: "lr", type: "log_float", group: "opt", current: 3e-3, initial: 3e-3, min: 1e-10, max: 10 };
  /** A Controls with the lr control; `window.confirm` and the sends are recorded. */
  function setup(fn) {
    const asked = [];
    const sent = [];
    globalThis.window = {
      confirm: (text) => {
        asked.push(text);
        return false;
      },
    };
    try {
      withDocument(() => {
        const controls = new panels.Controls(new FakeNode("div"), new FakeNode("span"), async (act, v) => {
          sent.push(v);
          return "id";
        });
        controls.setActuators([lr], 1);
        const c = controls.controls.get("lr");
        const status = () => c.status.textContent;
        const type = (text) => {
          c.num.value = text;
          for (const f of c.num.listeners.input || []) f();
        };
        const enter = () => c.num.dispatch("keydown", { key: "Enter" });
        fn({ c, status, type, enter, asked, sent });
      });
    } finally {
      delete globalThis.window;
    }
  }

  for (const [text, why] of [
    ["-1", "lr=-1 is below the minimum 1e-10 for actuator 'lr'"],
    ["0", "lr=0 is below the minimum 1e-10 for actuator 'lr'"],
    ["100", "lr=100 is above the maximum 10 for actuator 'lr'"],
  ]) {
    test(`lr=${text}: the bound's error, without a "big change?" question first`, () => {
      setup(({ status, type, enter, asked, sent }) => {
        type(text);
        enter();
        assert.deepEqual(asked, []);
        assert.deepEqual(sent, []);
        assert.equal(status(), why);
      });
    });
  }

  test("a big change within the bounds still asks first", () => {
    setup(({ status, type, enter, asked, sent }) => {
      type("0.5");
      enter();
      assert.equal(asked.length, 1);
      assert.match(asked[0], /×170/);
      assert.deepEqual(sent, []);
      assert.match(status(), /^not sent/);
    });
  });

  test("an error under the control clears on the next edit", () => {
    setup(({ c, status, type, enter }) => {
      type("abc");
      enter();
      assert.equal(status(), "lr needs a number");
      type("2");
      assert.equal(status(), "");
      type("-1");
      enter();
      assert.match(status(), /below the minimum/);
      type("0.003");
      assert.equal(status(), "");
      // the slider too
      type("abc");
      enter();
      for (const f of c.range.listeners.input || []) f();
      assert.equal(status(), "");
    });
  });

  test("an edit leaves a status that is no error alone", () => {
    setup(({ c, status, type }) => {
      c.showStatus("applied at step 5", "ok");
      type("0.002");
      assert.equal(status(), "applied at step 5");
    });
  });
});

/** The control of `act` (a big change confirmed), `type(text)` as the user types, and what
 * was sent. */
function withControl(act, fn) {
  const sent = [];
  globalThis.window = { confirm: () => true };
  try {
    withDocument(() => {
      const controls = new panels.Controls(new FakeNode("div"), new FakeNode("span"), async (a, v) => {
        sent.push(v);
        return `id${sent.length}`;
      });
      controls.setActuators([act], 1);
      const c = controls.controls.get(act.param_key);
      const type = (text) => {
        c.num.value = text;
        c.num.dispatch("input");
      };
      fn({ c, type, sent, controls });
    });
  } finally {
    delete globalThis.window;
  }
}

describe("Control: a slider's ends are values its bounds allow, and a bound reads as the kernel writes it", () => {
  const beta2 = { param_key: "beta2", type: "float", group: "opt", current: 0.999, initial: 0.999, min: 0, max: 0.999999 };

  test("beta2's slider at its right end sends 0.999999, not a 1 the bound refuses", () => {
    withControl(beta2, ({ c, sent }) => {
      c.range.value = String(c.range.max);
      c.range.dispatch("change");
      assert.equal(c.status.textContent.includes("above the maximum"), false, c.status.textContent);
      assert.deepEqual(sent, [0.999999]);
      assert.equal(c.hiLabel.textContent, "0.999999");
    });
  });

  test("a ramp's command does not show its target as applied: the ramp has not moved yet", () => {
    withDocument(() => {
      const lr = { param_key: "lr", type: "log_float", group: "opt", current: 1e-3, initial: 1e-3, min: 1e-10, max: 10 };
      const controls = new panels.Controls(new FakeNode("div"), new FakeNode("span"), async () => "id");
      controls.setActuators([lr], 1);
      const c = controls.controls.get("lr");
      controls.onEntry({ cmd_id: "r1", decision: "applied", step: 5, transition: { steps: 300 }, changes: { lr: { old: 1e-3, new: 1e-2 } } });
      assert.equal(c.value, 1e-3);
      controls.onEntry({ cmd_id: "r1", decision: "applied", step: 305, source: "ramp", changes: { lr: { old: 1e-3, new: 1e-2 } } });
      assert.equal(c.value, 1e-2);
    });
  });

  test("a value just over 0.999999 is refused in words that do not contradict themselves", () => {
    assert.equal(boundsError(beta2, 1), "beta2=1 is above the maximum 0.999999 for actuator 'beta2'");
    assert.equal(boundsError(beta2, 0.9999995), "beta2=1 is above the maximum 0.999999 for actuator 'beta2'");
    assert.equal(boundsError({ param_key: "lr", min: 1e-10, max: 10 }, 1e-11), "lr=1e-11 is below the minimum 1e-10 for actuator 'lr'");
  });
});

describe("Control: a number box sends on Enter only; Escape or leaving it sends nothing", () => {
  const ce = { param_key: "ce", type: "float", group: "loss", current: 1, initial: 1, min: 0, max: null };
  const betas = { param_key: "betas", type: "tuple", group: "opt", current: [0.9, 0.999], initial: [0.9, 0.999], min: 0, max: 1 };
  const setup = withControl;

  for (const [act, typed, applied, want] of [
    [ce, "0.3", "1", 0.3],
    [betas, "0.8, 0.99", "[0.9, 0.999]", [0.8, 0.99]],
  ]) {
    test(`${act.type}: Escape puts the applied value back and sends nothing`, () => {
      setup(act, ({ c, type, sent }) => {
        type(typed);
        c.num.dispatch("keydown", { key: "Escape" }); // the handler blurs the box (change, blur)
        assert.deepEqual(sent, []);
        assert.equal(c.num.value, applied);
      });
    });

    test(`${act.type}: leaving the box without Enter sends nothing and shows the applied value`, () => {
      setup(act, ({ c, type, sent }) => {
        type(typed);
        c.num.blur(); // a click elsewhere, or Tab
        assert.deepEqual(sent, []);
        assert.equal(c.num.value, applied);
      });
    });

    test(`${act.type}: Enter sends the typed value, once`, () => {
      setup(act, ({ c, type, sent }) => {
        type(typed);
        const ev = c.num.dispatch("keydown", { key: "Enter" });
        assert.equal(ev.defaultPrevented, true);
        assert.deepEqual(sent, [want]); // commit() sends before its first await
        c.num.blur(); // leaving the box afterwards sends nothing more
        assert.deepEqual(sent, [want]);
      });
    });
  }

  test("a gone run: every input is disabled, the number box too, and Enter sends nothing", () => {
    setup(ce, ({ c, type, sent, controls }) => {
      controls.setOver(true, false); // over: the number box stays, for a what-if
      assert.equal(c.num.disabled, false);
      controls.setOver(true, true); // gone: nothing to ask or send
      const inputs = c.root.querySelectorAll("input, select, button");
      assert.ok(inputs.length >= 1 && inputs.includes(c.num));
      assert.deepEqual(inputs.filter((i) => !i.disabled), []);
      type("0.3");
      c.num.dispatch("keydown", { key: "Enter" });
      assert.deepEqual(sent, []);
      controls.setOver(false, false); // back on disk
      assert.equal(c.num.disabled, false);
    });
  });

  test("other keys send nothing", () => {
    setup(ce, ({ c, type, sent }) => {
      type("0.5");
      for (const key of ["Tab", "a", "ArrowUp", "Shift"]) c.num.dispatch("keydown", { key });
      assert.deepEqual(sent, []);
    });
  });
});

describe("Controls: a run without actuators", () => {
  const text = (root) => root.textContent;
  const setup = () => {
    const root = new FakeNode("div");
    return { root, controls: new panels.Controls(root, new FakeNode("span"), async () => "id") };
  };

  test("a run that is over published none: it says so, whichever of the two answers came first", () => {
    withDocument(() => {
      const { root, controls } = setup();
      controls.setOver(true); // the status said "finished at step N" first
      controls.setActuators([], 1);
      assert.equal(text(root), "No actuators: this run published none, and it is over.");
    });
    withDocument(() => {
      const { root, controls } = setup();
      controls.setActuators([], 1);
      assert.equal(text(root), panels.EMPTY_CONTROLS.none);
      controls.setOver(true);
      assert.equal(text(root), "No actuators: this run published none, and it is over.");
    });
  });

  test("a run whose folder is gone says that instead; a picked run waits for its answer", () => {
    withDocument(() => {
      const { root, controls } = setup();
      controls.setActuators([], 1);
      controls.setOver(true, true);
      assert.equal(text(root), "No actuators: the run's folder is no longer on disk.");
      controls.reset(); // another run was picked
      assert.equal(text(root), "No actuators yet: they appear when the run has started.");
      controls.setOver(false);
      controls.setActuators([{ param_key: "ce", type: "float", group: "loss", current: 1 }], 1);
      assert.equal(controls.controls.size, 1);
    });
  });
});

describe("a resume's replaced life in the ledger table", () => {
  // #1 a change, #2 the checkpoint at step 401, #3 a change and #4 a trial of the life killed
  // after it, #5 the resume from that checkpoint, #6 the change re-applied by the resume
  const entries = [
    { seq: 1, step: 300, module: "opt", op: "set_params", decision: "applied", cmd_id: "a", changes: { lr: { old: 0.001, new: 0.002 } } },
    { seq: 2, step: 401, module: "control", op: "checkpoint", decision: "applied", cmd_id: "c" },
    { seq: 3, step: 597, module: "opt", op: "set_params", decision: "applied", cmd_id: "b", changes: { lr: { old: 0.002, new: 5e-4 } } },
    { seq: 4, step: 1372, module: "tune", op: "mutate", decision: "applied", cmd_id: "t", changes: { lr: { old: 5e-4, new: 2e-4 } } },
    { seq: 5, step: 401, module: "kernel", op: "resume", decision: "noop", resumed_from: { step: 401, seq: 1, last: 4 } },
    { seq: 6, step: 597, module: "opt", op: "set_params", decision: "applied", cmd_id: "b", source: "resume", changes: { lr: { old: 0.002, new: 5e-4 } } },
  ];

  test("the entries of the killed life are its, the checkpoint's own entry is not", () => {
    assert.deepEqual([...replacedByResume(entries)], [[3, 5], [4, 5]]);
  });

  test("the resume says what it replaced, as `hotcb log` does", () => {
    assert.deepEqual(describeEntry(entries[4]).lines, ["from the checkpoint at step 401; #2..#4 ran in the life it replaced"]);
  });

  test("a replaced change shows no impact and offers no Undo; the re-applied one does", () => {
    withDocument(() => {
      const body = new FakeNode("tbody");
      const table = new LedgerTable(body, new FakeNode("span"), { undo() {}, cancel() {} });
      const impacts = new Map([3, 6, 1].map((seq) => [seq, { before: { mean: 1.4, n: 50 }, after: { mean: 1.3, n: 50 } }]));
      table.render(entries, { impacts, metric: "loss", undone: new Set(), pendingIds: new Set() });
      const row = (seq) => body.children.find((tr) => tr.dataset.seq === seq);
      for (const seq of [3, 4]) {
        assert.ok(row(seq).classList.contains("replaced"));
        assert.equal(row(seq).find("undo-btn").length, 0);
        assert.match(row(seq).find("impact")[0].textContent, /ran in the life #5 replaced/);
      }
      assert.equal(row(6).find("undo-btn").length, 1);
      assert.match(row(6).find("impact")[0].textContent, /1\.4 → 1\.3/);
      assert.equal(row(1).find("undo-btn").length, 1);
    });
  });
});

describe("mixedWithin: a change whose impact window holds a later one", () => {
  test("the first later measured change within the window, of this life", () => {
    const e = (seq, step, key = "lr") => ({ seq, step, module: "opt", op: "set_params", decision: "applied", cmd_id: `c${seq}`, changes: { [key]: { old: 1, new: 2 } } });
    const entries = [e(1, 299), e(2, 329, "aux_weight"), e(3, 500), e(4, 700)];
    const shown = impactRows(entries);
    const mixed = mixedWithin(entries, shown, 50);
    assert.deepEqual([...mixed].map(([seq, x]) => [seq, x.seq]), [[1, 2]]);
    assert.equal(mixedWithin(entries, shown, 0).size, 0);
    assert.equal(mixedWithin(entries, shown, 50, new Map([[2, 9]])).size, 0); // #2 was replaced
  });

  test("a long tuner ledger: each change's next one, whatever order the entries came in", () => {
    const e = (seq, step) => ({ seq, step, module: "opt", op: "set_params", decision: "applied", cmd_id: `c${seq}`, changes: { lr: { old: 1, new: 2 } } });
    const entries = Array.from({ length: 3000 }, (_, i) => e(i + 1, 100 * i + (i % 2 ? 30 : 0)));
    const shown = impactRows(entries);
    const mixed = mixedWithin([...entries].reverse(), shown, 50);
    // an odd change lands 130 steps after the even one before it, an even one 70 after an odd one
    assert.equal(mixed.size, 0);
    const wide = mixedWithin([...entries].reverse(), shown, 130);
    assert.equal(wide.size, 2999);
    assert.equal(wide.get(1).seq, 2);
    assert.equal(wide.get(2999).seq, 3000);
  });
});
