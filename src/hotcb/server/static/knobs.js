// The Knobs panel: each knob's value over the run (lr, weight decay, loss weights, …) from the
// kernel's own records (GET …/knobs: the ledger's applied changes and the actuators file), so
// it is charted even when the run logs none of them. One small stepped chart per knob; the
// applied changes are marked with a dot in the colour of who made them, and listed under it.
/* global uPlot */
import { fmtNum, sourceColor } from "./charts.js";

/** uPlot data of one knob: [steps, values, the value at each applied change, else null]. */
export function knobData(knob) {
  const points = knob.points.step;
  const have = new Set(points);
  // a change that left no point of its own (it set the value the knob had, or its point was
  // thinned away): add one to mark it, with the value it set (the last change at its step; a
  // ramp's start holds the value in force there). One merge of two sorted lists: a knob set at
  // every step has as many changes as points
  const set = new Map();
  for (const c of knob.changes || []) if (!have.has(c.step)) set.set(c.step, c.ramp || typeof c.new !== "number" ? null : c.new);
  const extra = [...set.keys()].sort((a, b) => a - b);
  const steps = [];
  const values = [];
  for (let i = 0, j = 0; i < points.length || j < extra.length; ) {
    if (j >= extra.length || (i < points.length && points[i] < extra[j])) {
      steps.push(points[i]);
      values.push(knob.points.value[i++]);
    } else {
      const v = set.get(extra[j]);
      steps.push(extra[j]);
      values.push(v ?? (values.length ? values[values.length - 1] : null));
      j++;
    }
  }
  const changed = new Set((knob.changes || []).map((c) => c.step));
  return [steps, values, steps.map((s, i) => (changed.has(s) ? values[i] : null))];
}

/** The ticks a knob's log y axis labels (a uPlot axis filter: null drops one): the decades
 * only (1e-4, 1e-3, …, not 2e-4, 3e-4), and of those at most `most`, evenly spaced, so the
 * labels of a 96 px chart never overlap. */
export function thinLogTicks(splits, most = 4) {
  const decade = (v) => v > 0 && Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9;
  const kept = splits.map((v, i) => (decade(v) ? i : -1)).filter((i) => i >= 0);
  const every = Math.max(1, Math.ceil(kept.length / most));
  const show = new Set(kept.filter((_, k) => k % every === 0));
  return splits.map((v, i) => (show.has(i) ? v : null));
}

/** The y range of a knob's chart: the values with a margin, never narrower than 5 % of their
 * size (a change in the 7th digit stays a flat line, not a step across the chart), and around
 * the value for a knob that never moved. */
export function flatRange(u, min, max) {
  if (min == null || max == null) return [0, 1];
  if (min !== max) {
    const pad = Math.max((max - min) * 0.1, Math.max(Math.abs(min), Math.abs(max)) * 0.05);
    return [min - pad, max + pad];
  }
  const pad = Math.abs(min) * 0.5 || 1;
  return [min - pad, max + pad];
}

/** "step 10: 0.1 → 0.05 (cli)" for each change, newest first, at most `limit`. */
export function changeLines(knob, limit = 4) {
  return (knob.changes || [])
    .slice(-limit)
    .reverse()
    .map((c) => `step ${c.step}: ${c.old == null ? "?" : fmtNum(c.old)} → ${fmtNum(c.new)} (${c.source || "?"}${c.undo ? ", undo" : ""})`);
}

/** The Knobs panel's line when it has no knob to draw. */
export const EMPTY_KNOBS = {
  waiting: "No knobs yet: they appear when the run has started.",
  over: "No knobs: this run published none, and it is over.",
};

/** What the panel says without knobs: `loaded` (the run's answer came), `over` (the run is
 * over, so none will come). */
export function emptyKnobsText(loaded, over) {
  return loaded && over ? EMPTY_KNOBS.over : EMPTY_KNOBS.waiting;
}

export class KnobsPanel {
  constructor(card) {
    this.card = card;
    this.doc = null;
    this.over = false;
    this.plots = new Map(); // key -> {plot, el, sig}
    card.innerHTML = `
      <div class="card-head"><h2>Knobs</h2>
        <span class="muted small">values from the ledger and the actuators file · ● an applied change</span></div>
      <div class="knobs"><p class="muted knobs-empty"></p></div>`;
    this.body = card.querySelector(".knobs");
    this.renderEmpty();
  }

  reset() {
    for (const { plot } of this.plots.values()) plot.destroy();
    this.plots.clear();
    this.doc = null;
    this.body.innerHTML = '<p class="muted knobs-empty"></p>';
    this.renderEmpty();
  }

  /** The run is over: a run without knobs will not publish any. */
  setOver(over) {
    if (over === this.over) return;
    this.over = over;
    this.renderEmpty();
  }

  renderEmpty() {
    const empty = this.body.querySelector("p.knobs-empty");
    if (empty) empty.textContent = emptyKnobsText(this.doc != null, this.over);
  }

  update(doc) {
    this.doc = doc;
    const knobs = (doc && doc.knobs) || [];
    if (!knobs.length) {
      this.renderEmpty();
      return;
    }
    const empty = this.body.querySelector("p.knobs-empty");
    if (empty) empty.remove();
    const keys = new Set(knobs.map((k) => k.key));
    for (const [key, entry] of this.plots) {
      if (!keys.has(key)) {
        entry.plot.destroy();
        entry.el.remove();
        this.plots.delete(key);
      }
    }
    for (const knob of knobs) this.draw(knob);
  }

  draw(knob) {
    const data = knobData(knob);
    const vals = data[1].filter((v) => v != null);
    const lo = Math.min(...vals);
    const hi = Math.max(...vals);
    // a log axis only where the values span decades (lr 1e-4 … 1e-1), else a plain one
    const log = knob.type === "log_float" && lo > 0 && hi / lo >= 20;
    const color = sourceColor(knob.changes?.length ? knob.changes[knob.changes.length - 1].source : "");
    let entry = this.plots.get(knob.key);
    const sig = `${log}`;
    if (!entry || entry.sig !== sig) {
      if (entry) {
        entry.plot.destroy();
        entry.el.remove();
      }
      const el = document.createElement("div");
      el.className = "knob";
      el.dataset.key = knob.key;
      el.innerHTML = `<div class="knob-head"><b></b> <span class="muted small knob-now"></span></div><div class="knob-chart"></div><ul class="knob-changes muted small"></ul>`;
      el.querySelector("b").textContent = knob.label || knob.key;
      this.body.appendChild(el);
      const chart = el.querySelector(".knob-chart");
      const thin = log ? { filter: (u, splits) => thinLogTicks(splits) } : {};
      const opts = {
        width: Math.max(220, chart.clientWidth || this.body.clientWidth - 16 || 360),
        height: 96,
        scales: { x: { time: false }, y: log ? { distr: 3 } : { range: flatRange } },
        legend: { show: false },
        cursor: { points: { size: 5 } },
        series: [
          {},
          { label: knob.key, stroke: "#2563eb", width: 1.5, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false }, spanGaps: true },
          { label: "change", stroke: color, fill: color, paths: () => null, points: { show: true, size: 8, fill: color, stroke: "#fff" } },
        ],
        axes: [
          { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, ticks: { show: false }, size: 22 },
          {
            stroke: "#6b7280",
            grid: { stroke: "#eef0f3", ...thin },
            ticks: { show: false },
            size: 56,
            values: (u, vals) => vals.map((v) => (v == null ? "" : fmtNum(v))),
            ...thin,
          },
        ],
      };
      entry = { el, sig, plot: new uPlot(opts, data, chart) };
      this.plots.set(knob.key, entry);
    } else {
      entry.plot.setData(data);
    }
    entry.el.querySelector(".knob-now").textContent = knob.current == null ? "" : `now ${fmtNum(knob.current)}`;
    const list = entry.el.querySelector(".knob-changes");
    list.replaceChildren(
      ...changeLines(knob).map((t) => {
        const li = document.createElement("li");
        li.textContent = t;
        return li;
      }),
    );
  }

  debug() {
    return ((this.doc && this.doc.knobs) || []).map((k) => ({
      key: k.key,
      steps: k.points.step,
      values: k.points.value,
      changes: (k.changes || []).map((c) => ({ step: c.step, old: c.old, new: c.new, source: c.source })),
      drawn: !!this.plots.get(k.key)?.el.querySelector("canvas"),
      marks: knobData(k)[2].filter((v) => v != null).length,
    }));
  }
}
