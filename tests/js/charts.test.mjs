// node --test tests/js/ — the pure functions of src/hotcb/server/static/charts.js.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { charts } from "./static.mjs";

const {
  allNonFinite,
  axisLabels,
  ema,
  finiteOrNull,
  isolatedPoints,
  fmtNum,
  globMatch,
  groupMetrics,
  isHigherBetter,
  lossTerm,
  nearMarkers,
  MARKER_GAP_PX,
  repeatedSeries,
  sameValues,
  PALETTE,
  sourceColor,
  sourceLetter,
  SOURCE_COLORS,
} = charts;

/** title → names, as a person reads the charts. */
const shown = (groups) => Object.fromEntries(groups.map((g) => [g.title, g.names]));

describe("fmtNum: numbers on axes, legends and tooltips", () => {
  test("small learning rates in short exponent form", () => {
    assert.equal(fmtNum(0.000123), "1.23e-4");
    assert.equal(fmtNum(1e-4), "1e-4"); // no trailing ".00"
    assert.equal(fmtNum(2.5e-5), "2.5e-5"); // no trailing "0"
    assert.equal(fmtNum(0.00099), "9.9e-4");
    assert.equal(fmtNum(-0.000123), "-1.23e-4");
  });

  test("large numbers in exponent form without '+'", () => {
    assert.equal(fmtNum(100000), "1e5");
    assert.equal(fmtNum(123456), "1.23e5");
    assert.equal(fmtNum(1e21), "1e21");
  });

  test("ordinary numbers: integers as they are, fractions to 4 significant digits", () => {
    assert.equal(fmtNum(0), "0");
    assert.equal(fmtNum(-3), "-3");
    assert.equal(fmtNum(99999), "99999");
    assert.equal(fmtNum(0.001), "0.001");
    assert.equal(fmtNum(0.5), "0.5");
    assert.equal(fmtNum(0.1 + 0.2), "0.3");
    assert.equal(fmtNum(3.14159), "3.142");
    assert.equal(fmtNum(1234.5678), "1235");
    assert.equal(fmtNum(12345.678), "12350");
  });

  test("missing values show a dash; non-numbers as text", () => {
    assert.equal(fmtNum(null), "–");
    assert.equal(fmtNum(undefined), "–");
    assert.equal(fmtNum(NaN), "–");
    assert.equal(fmtNum("warmup"), "warmup");
  });
});

describe("axisLabels: the y axis' tick labels", () => {
  test("a tick a log axis filtered out (null) gets no label, not a dash", () => {
    // a flat lr chart: uPlot's splits around 1e-3, only the decade kept by the filter
    assert.deepEqual(axisLabels([null, null, 1e-3, null, null]), ["", "", "0.001", "", ""]);
    assert.ok(!axisLabels([null, 1e-4, null, 1e-3]).includes("–"));
  });

  test("every kept tick reads like fmtNum", () => {
    assert.deepEqual(axisLabels([0, 0.5, 1e-4, 12345678]), ["0", "0.5", "1e-4", "1.23e7"]);
  });
});

describe("globMatch: fnmatch-like chart.groups patterns", () => {
  test("* matches any run of characters, ? one character", () => {
    assert.ok(globMatch("throughput*", "throughput"));
    assert.ok(globMatch("throughput*", "throughput/samples_per_s"));
    assert.ok(globMatch("*/loss", "train/loss"));
    assert.ok(globMatch("val/acc?", "val/acc5"));
    assert.ok(!globMatch("val/acc?", "val/acc"));
    assert.ok(!globMatch("val/acc?", "val/acc10"));
  });

  test("the whole name must match (anchored)", () => {
    assert.ok(globMatch("loss", "loss"));
    assert.ok(!globMatch("loss", "train/loss"));
    assert.ok(!globMatch("train", "train/loss"));
  });

  test("regex characters in names are literal", () => {
    assert.ok(globMatch("sys.mem", "sys.mem"));
    assert.ok(!globMatch("sys.mem", "sysXmem"));
    assert.ok(globMatch("loss(total)+", "loss(total)+"));
    assert.ok(globMatch("a|b", "a|b"));
    assert.ok(!globMatch("a|b", "a"));
    assert.ok(globMatch("cost$^", "cost$^"));
  });
});

describe("groupMetrics: which chart a metric goes on", () => {
  test("the documented rule (docs/demo.md)", () => {
    const names = ["train/loss", "val/loss", "lr", "lr@head", "train/acc", "grad_norm", "throughput", "sys/mem_gb"];
    assert.deepEqual(shown(groupMetrics(names)), {
      Loss: ["train/loss", "val/loss"],
      Accuracy: ["train/acc"],
      "Learning rate": ["lr", "lr@head"],
      Gradients: ["grad_norm"],
      Other: ["throughput"],
      sys: ["sys/mem_gb"],
    });
  });

  test("charts come in a fixed order: loss, accuracy, lr, gradients, then prefixes by name", () => {
    const groups = groupMetrics(["zeta/x", "grad_norm", "alpha/y", "lr", "val/acc", "train/loss", "misc"]);
    assert.deepEqual(
      groups.map((g) => g.title),
      ["Loss", "Accuracy", "Learning rate", "Gradients", "alpha", "Other", "zeta"],
    );
    assert.deepEqual(
      groups.map((g) => g.key),
      ["loss", "acc", "lr", "grad", "p:alpha", "p:other", "p:zeta"],
    );
  });

  test("metrics of no known kind group under their prefix before '/'", () => {
    assert.deepEqual(shown(groupMetrics(["sys/mem_gb", "sys/gpu_util", "data/queue", "epoch"])), {
      data: ["data/queue"],
      sys: ["sys/mem_gb", "sys/gpu_util"],
      Other: ["epoch"],
    });
  });

  test("learning rates by name part, not by substring", () => {
    const g = shown(groupMetrics(["lr", "opt/lr", "learning_rate", "lr-pg1", "head.lr", "clr_count"]));
    assert.deepEqual(g["Learning rate"], ["lr", "opt/lr", "learning_rate", "lr-pg1", "head.lr"]);
    assert.deepEqual(g.Other, ["clr_count"]);
  });

  test("accuracy-like metrics: acc, f1, precision, recall, auc, top-k", () => {
    const names = ["train/acc", "val/accuracy", "val/f1", "val/precision", "val/recall", "val/auc", "val/top5"];
    assert.deepEqual(shown(groupMetrics(names)), { Accuracy: names });
  });

  test("loss-like metrics: 'loss' anywhere, or a known loss name as a name part", () => {
    const names = ["train/loss", "val/nll", "kl", "recon.mse"];
    assert.deepEqual(shown(groupMetrics(names)), { Loss: names });
    // "kl" inside a word is not a loss
    assert.deepEqual(shown(groupMetrics(["sys/klass"])), { sys: ["sys/klass"] });
  });

  test("more than four losses: one chart per loss term, train and val together", () => {
    const names = ["train/loss", "val/loss", "train/loss_recon", "val/loss_recon", "train/kl", "lr"];
    const groups = groupMetrics(names);
    assert.deepEqual(shown(groups), {
      Loss: ["train/loss", "val/loss"],
      "Loss · kl": ["train/kl"],
      "Loss · recon": ["train/loss_recon", "val/loss_recon"],
      "Learning rate": ["lr"],
    });
    assert.deepEqual(
      groups.map((g) => g.key),
      ["loss:total", "loss:kl", "loss:recon", "lr"],
    );
  });

  test("four losses or fewer stay on one chart", () => {
    const names = ["train/loss", "val/loss", "train/loss_recon", "val/loss_recon"];
    assert.deepEqual(shown(groupMetrics(names)), { Loss: names });
  });

  test("configured groups (title → names or patterns) win over the rule, and come first", () => {
    const names = ["train/loss", "lr", "throughput", "throughput/gpu", "sys/mem_gb"];
    const groups = groupMetrics(names, { Speed: ["throughput*"], Memory: ["sys/mem_gb"], Rates: ["lr"] });
    assert.deepEqual(shown(groups), {
      Memory: ["sys/mem_gb"],
      Rates: ["lr"],
      Speed: ["throughput", "throughput/gpu"],
      Loss: ["train/loss"],
    });
    assert.equal(groups[0].key, "cfg:Memory");
    // an empty or missing pattern list matches nothing
    assert.deepEqual(shown(groupMetrics(["lr"], { Empty: [], Missing: null })), { "Learning rate": ["lr"] });
  });

  test("no metrics: no charts", () => {
    assert.deepEqual(groupMetrics([]), []);
  });
});

describe("lossTerm: the loss term a split loss chart is named after", () => {
  test("prefix and suffix forms; plain 'loss' is the total", () => {
    assert.equal(lossTerm("train/loss_recon"), "recon");
    assert.equal(lossTerm("val/loss-recon"), "recon");
    assert.equal(lossTerm("train/cls_loss"), "cls");
    assert.equal(lossTerm("val/loss"), "total");
    assert.equal(lossTerm("LOSS"), "total");
    assert.equal(lossTerm("train/kl"), "kl");
  });
});

describe("isHigherBetter: which way an impact counts as better", () => {
  test("accuracy-like up, everything else down", () => {
    assert.equal(isHigherBetter("val/acc"), true);
    assert.equal(isHigherBetter("val/top1"), true);
    assert.equal(isHigherBetter("val/loss"), false);
    assert.equal(isHigherBetter("lr"), false);
  });
});

describe("ema: the smoothing menu", () => {
  test("exponential moving average; factor 0 leaves the values alone", () => {
    assert.deepEqual(ema([1, 3, 5], 0.5), [1, 2, 3.5]);
    const raw = [1, 2, 3];
    assert.equal(ema(raw, 0), raw);
  });

  test("gaps stay gaps and do not reset the average", () => {
    assert.deepEqual(ema([1, null, 3, 5], 0.5), [1, null, 2, 3.5]);
    assert.deepEqual(ema([null, 4, 8], 0.5), [null, 4, 6]);
  });
});

describe("sourceColor: marker and badge colour by who made the change", () => {
  test("the automatic controllers have their own colours", () => {
    for (const src of ["tune", "autopilot", "ai"]) {
      assert.ok(SOURCE_COLORS[src], src);
      assert.equal(sourceColor(src), SOURCE_COLORS[src]);
      assert.notEqual(sourceColor(src), sourceColor("dashboard"));
    }
  });

  test("each known source has its own colour; unknown ones are grey", () => {
    const colours = Object.keys(SOURCE_COLORS).map(sourceColor);
    assert.equal(new Set(colours).size, colours.length);
    assert.equal(sourceColor("dashboard"), SOURCE_COLORS.dashboard);
    assert.equal(sourceColor("someone-else"), "#6b7280");
    assert.equal(sourceColor(undefined), "#6b7280");
  });

  test("no source is drawn in a metric series' colour, and each has its letter", () => {
    for (const [src, colour] of Object.entries(SOURCE_COLORS)) {
      assert.ok(!PALETTE.includes(colour), `${src} ${colour} is a series colour`);
      assert.notEqual(sourceLetter(src), "?", src);
    }
    const letters = Object.keys(SOURCE_COLORS).map(sourceLetter);
    assert.equal(new Set(letters).size, letters.length);
    assert.equal(sourceLetter("tune"), "T");
  });

  test("every source the kernel and hotcb's clients write has its own letter and colour", () => {
    // the ledger's `source` values written in src/hotcb (a `resume` marker was a grey "?")
    const written = ["dashboard", "cli", "python", "recipe", "resume", "kernel", "ramp", "tune",
      "autopilot", "ai", "launch", "branch", "signal", "config", "anomaly_guard", "lightning"];
    for (const src of written) {
      assert.ok(Object.hasOwn(SOURCE_COLORS, src), `${src} has no colour`);
      assert.notEqual(sourceColor(src), "#6b7280", src);
      assert.ok(/^[A-Z]{1,2}$/.test(sourceLetter(src)), `${src}: ${sourceLetter(src)}`);
    }
    assert.equal(sourceLetter("resume"), "RS");
    assert.equal(sourceLetter("kernel"), "K");
  });

  test("an unknown source is its first letter, grey; '?' only for none", () => {
    assert.equal(sourceLetter("someone-else"), "S");
    assert.equal(sourceLetter("my_sweeper"), "M");
    assert.equal(sourceLetter("  _x"), "X");
    assert.equal(sourceColor("my_sweeper"), "#6b7280");
    assert.equal(sourceColor("constructor"), "#6b7280"); // not Object's own
    assert.equal(sourceLetter("constructor"), "C");
    assert.equal(sourceLetter(undefined), "?");
    assert.equal(sourceLetter(""), "?");
    assert.equal(sourceLetter(null), "?");
  });
});

const series = (steps, values) => ({ step: steps, value: values });
const runOf = (obj) => new Map(Object.entries(obj));

describe("sameValues: two series that hold the same values", () => {
  test("equal at every common step, within 1e-12 relative", () => {
    const a = series([0, 1, 2, 3], [1, 0.5, 0.25, 0.125]);
    assert.ok(sameValues(a, series([0, 1, 2, 3], [1, 0.5, 0.25, 0.125])));
    assert.ok(sameValues(a, series([0, 1, 2, 3], [1, 0.5 * (1 + 5e-13), 0.25, 0.125])));
    assert.ok(!sameValues(a, series([0, 1, 2, 3], [1, 0.5 * (1 + 1e-9), 0.25, 0.125])));
    assert.ok(!sameValues(a, series([0, 1, 2, 3], [1, 0.5, 0.25, 0.126])));
  });

  test("only the steps both have count; none in common is not the same", () => {
    const train = series([0, 1, 2, 3, 4], [5, 4, 3, 2, 1]);
    assert.ok(sameValues(train, series([2, 4, 6], [3, 1, 99])));
    assert.ok(!sameValues(train, series([10, 11], [5, 4])));
    assert.ok(!sameValues(train, series([], [])));
  });

  test("gaps (null) match only gaps; zeros match zeros", () => {
    assert.ok(sameValues(series([0, 1], [null, 0]), series([0, 1], [null, 0])));
    assert.ok(!sameValues(series([0, 1], [null, 0]), series([0, 1], [0, 0])));
    assert.ok(!sameValues(series([0], [0]), series([0], [1e-300])));
  });
});

describe("repeatedSeries: a series equal to another is not drawn twice (issue #11)", () => {
  // the demo without --golden while the l2 weight is 0: the loss is the cls term
  const demo = () =>
    runOf({
      "train/loss": series([0, 1, 2], [2.3, 2.1, 1.9]),
      "train/loss_cls": series([0, 1, 2], [2.3, 2.1, 1.9]),
      "train/loss_l2": series([0, 1, 2], [0.04, 0.041, 0.042]),
      "val/loss": series([2], [2.0]),
      "val/loss_cls": series([2], [2.0]),
    });
  const order = ["train/loss", "val/loss", "train/loss_cls", "val/loss_cls", "train/loss_l2"];

  test("the later of two equal series repeats the earlier one, in drawing order", () => {
    assert.deepEqual(
      [...repeatedSeries(order, [demo()])],
      [
        ["train/loss_cls", "train/loss"],
        ["val/loss_cls", "val/loss"],
      ],
    );
    // the drawing order decides which one is drawn
    const flipped = ["train/loss_cls", "train/loss", "val/loss", "val/loss_cls", "train/loss_l2"];
    assert.deepEqual(Object.fromEntries(repeatedSeries(flipped, [demo()])), {
      "train/loss": "train/loss_cls",
      "val/loss_cls": "val/loss",
    });
  });

  test("the whole 'Loss · cls' chart goes: every series of its group repeats another", () => {
    const groups = groupMetrics(order);
    assert.deepEqual(
      groups.map((g) => g.title),
      ["Loss", "Loss · cls", "Loss · l2"],
    );
    const repeats = repeatedSeries(groups.flatMap((g) => g.names), [demo()]);
    const drawn = groups.filter((g) => g.names.some((n) => !repeats.has(n))).map((g) => g.title);
    assert.deepEqual(drawn, ["Loss", "Loss · l2"]);
  });

  test("a series that starts to differ is drawn again", () => {
    const run = demo();
    run.get("train/loss").step.push(3);
    run.get("train/loss").value.push(1.95); // l2 weighs 0.1 from step 3
    run.get("train/loss_cls").step.push(3);
    run.get("train/loss_cls").value.push(1.8);
    assert.deepEqual(Object.fromEntries(repeatedSeries(order, [run])), { "val/loss_cls": "val/loss" });
  });

  test("equal series chain to the first one drawn", () => {
    const run = runOf({ a: series([0], [1]), b: series([0], [1]), c: series([0], [1]) });
    assert.deepEqual(Object.fromEntries(repeatedSeries(["a", "b", "c"], [run])), { b: "a", c: "a" });
  });

  test("with runs compared, a repeat must repeat in every run that has it", () => {
    const other = runOf({
      "train/loss": series([0, 1], [3, 2]),
      "train/loss_cls": series([0, 1], [2.5, 1.5]),
    });
    const repeats = repeatedSeries(order, [demo(), other]);
    assert.equal(repeats.has("train/loss_cls"), false);
    assert.equal(repeats.get("val/loss_cls"), "val/loss"); // the other run has no val metrics
  });

  test("series without data repeat nothing and hide nothing", () => {
    const run = runOf({ a: series([], []), b: series([], []), c: series([0], [1]) });
    assert.deepEqual([...repeatedSeries(["a", "b", "c"], [run])], []);
  });
});

describe("gaps: a NaN or inf (null) breaks the line, a step without a record does not", () => {
  test("finiteOrNull: a non-finite number becomes a gap; the same array when there is none", () => {
    const clean = [1, null, 2];
    assert.equal(finiteOrNull(clean), clean);
    assert.deepEqual(finiteOrNull([1, NaN, Infinity, -Infinity, 2, null]), [1, null, null, null, 2, null]);
  });

  test("allNonFinite: values, none of them finite", () => {
    assert.equal(allNonFinite([null, null, NaN]), true);
    assert.equal(allNonFinite([null, 3]), false);
    assert.equal(allNonFinite([]), false); // no values at all is not this
  });

  test("isolatedPoints: a value no line reaches (between gaps, or alone) is drawn as a dot", () => {
    assert.equal(isolatedPoints([1, 2, 3]), null);
    assert.deepEqual(isolatedPoints([1, null, 2, null, 3, 4]), [0, 2]);
    assert.deepEqual(isolatedPoints([null, 5, null]), [1]);
    assert.deepEqual(isolatedPoints([undefined, 7, undefined]), [1]); // a series of one point
    // steps without a record (undefined: another series' steps) are skipped, not gaps
    assert.equal(isolatedPoints([1, undefined, undefined, 2]), null);
    assert.deepEqual(isolatedPoints([null, undefined, 1, undefined, null, 2, 3]), [2]);
    // within the visible range only, its neighbours outside it counted
    assert.deepEqual(isolatedPoints([1, null, 2, null, 3, null], 2, 5), [2, 4]);
    assert.equal(isolatedPoints([1, 2, null], 1, 1), null);
  });
});

test("a compared run is never drawn like the main run, and its legend swatch shows its dash", () => {
  const { runStyle, legendDash } = charts;
  assert.deepEqual(runStyle(0), { dash: null, alpha: 1 });
  const seen = new Set([JSON.stringify(runStyle(0))]);
  for (let ri = 1; ri <= 12; ri++) {
    const st = runStyle(ri);
    assert.ok(Array.isArray(st.dash) && st.dash.length, `run ${ri} is solid`);
    assert.ok(!seen.has(JSON.stringify(st)), `run ${ri} looks like an earlier run`);
    seen.add(JSON.stringify(st));
  }
  assert.equal(legendDash(null), "solid");
  assert.equal(legendDash([6, 4]), "dashed");
  assert.equal(legendDash([2, 3]), "dotted");
  for (let ri = 1; ri <= 12; ri++) assert.notEqual(legendDash(runStyle(ri).dash), "solid");
});

describe("markers close together on a chart", () => {
  const mk = (step, seq = step) => ({ step, seq });
  test("5000 changes on 900 px are drawn at least a gap apart, each standing for the ones it hides", () => {
    const markers = Array.from({ length: 5000 }, (_, i) => mk(i));
    const toPx = (s) => (s * 900) / 5000;
    const shown = nearMarkers(markers, 0, 4999, toPx);
    assert.ok(shown.length <= 900 / MARKER_GAP_PX + 1, `${shown.length}`);
    assert.equal(shown.reduce((n, s) => n + 1 + s.nearby, 0), 5000); // none lost
    assert.equal(shown[shown.length - 1].marker.seq, 4999); // the newest stands for its group
    for (let i = 1; i < shown.length; i++) assert.ok(toPx(shown[i].marker.step) - toPx(shown[i - 1].marker.step) > 0);
  });
  test("markers far apart are all drawn alone; those out of range are not drawn", () => {
    const shown = nearMarkers([mk(10), mk(500), mk(300), mk(2000)], 0, 1000, (s) => s);
    assert.deepEqual(shown.map((s) => [s.marker.step, s.nearby]), [[10, 0], [300, 0], [500, 0]]);
  });
  test("two changes at one step: one marker, the later, standing for the other", () => {
    const shown = nearMarkers([mk(40, 7), mk(40, 6)], 0, 100, (s) => s * 9);
    assert.deepEqual(shown.map((s) => [s.marker.seq, s.nearby]), [[7, 1]]);
  });
});
