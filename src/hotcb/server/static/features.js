// The Activations panel: per-layer heat strips over time from the run's activation capture
// (hotcb.features.FeatureCapture → RUN/hotcb.features.jsonl → GET …/features?stat=S). One row
// per captured layer, one column per capture step, coloured by the chosen statistic (each row on
// its own scale, "dead" on 0…1). It follows the page's run selector and refreshes every few
// seconds while the page is visible. Pure helpers first (tests/js can run them under node).
import { api, runUrl } from "./api.js";

export const STATS = ["mean", "std", "max_abs", "dead", "norm"];
const STAT_LABELS = { mean: "mean", std: "std", max_abs: "max |x|", dead: "dead fraction", norm: "L2 norm" };
export const LOAD_COMMAND =
  'hotcb --dir RUN cb load feats --path hotcb.features --symbol FeatureCapture --init \'patterns=["*"]\' every=100';
const REFRESH_MS = 3000;

// viridis, 9 stops
const STOPS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];

/** The colour of t in [0, 1] as "rgb(r,g,b)"; null (no value) is light grey. */
export function colour(t) {
  if (t == null || !Number.isFinite(t)) return "rgb(229,231,235)";
  const x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const f = x - i;
  const [a, b] = [STOPS[i], STOPS[i + 1]];
  const c = a.map((v, k) => Math.round(v + (b[k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

/** [lo, hi] of a row's finite values (the fixed 0…1 for "dead"); null when it has none. */
export function rowRange(values, stat) {
  if (stat === "dead") return [0, 1];
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v == null || !Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo <= hi ? [lo, hi] : null;
}

/** v scaled into [0, 1] on [lo, hi] (the middle when the row is flat). */
export function scale(v, range) {
  if (v == null || !Number.isFinite(v) || !range) return null;
  const [lo, hi] = range;
  return hi > lo ? (v - lo) / (hi - lo) : 0.5;
}

export function fmt(v) {
  if (v == null || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}


export class FeaturesPanel {
  constructor(root) {
    this.root = root;
    this.runId = null;
    this.stat = "mean";
    this.doc = null;
    this.error = null;
    this.gen = 0;
    this.loading = false;
    // its own stylesheet (the page's CSP allows no inline style)
    document.head.append(el("link", { rel: "stylesheet", href: "/static/features.css" }));
    root.classList.add("feat-card");
    this.select = el("select", { id: "features-stat", "aria-label": "activation statistic" });
    for (const s of STATS) this.select.append(el("option", { value: s }, STAT_LABELS[s]));
    this.select.addEventListener("change", () => {
      this.stat = this.select.value;
      this.refresh();
    });
    this.note = el("span", { class: "muted small", id: "features-note" });
    this.statField = el("label", { class: "field small" }, el("span", {}, "colour by"), this.select);
    this.body = el("div", { id: "features-body" });
    root.replaceChildren(
      el("div", { class: "card-head" }, el("h2", {}, "Activations"), this.note,
        el("div", { class: "spacer" }), this.statField),
      this.body,
    );
    this.renderOff();
  }

  currentRun() {
    const sel = document.getElementById("run-select");
    return sel && sel.value !== "" ? sel.value : null;
  }

  async refresh() {
    const runId = this.currentRun();
    if (runId !== this.runId) {
      this.runId = runId;
      this.doc = null;
    }
    const app = globalThis.window?.hotcb?.app;
    // its folder is gone, or the server is (the page's status poll notices its return)
    if (runId == null || app?.gone || app?.offline) return;
    const gen = ++this.gen;
    this.loading = true;
    try {
      const doc = await api(runUrl(runId, "features", { stat: this.stat, max_points: 500 }));
      if (gen !== this.gen) return;
      this.doc = doc;
      this.error = null;
      this.render();
    } catch (err) {
      if (gen !== this.gen) return;
      this.error = String(err.message || err);
      this.note.textContent = `could not read activations: ${this.error}`;
    } finally {
      if (gen === this.gen) this.loading = false;
    }
  }

  renderOff() {
    this.root.classList.add("off");
    this.statField.hidden = true;
    this.note.replaceChildren("no activation capture in this run — turn it on with ", el("code", {}, LOAD_COMMAND));
    this.body.replaceChildren();
  }

  render() {
    const doc = this.doc;
    if (!doc || !doc.layers || !doc.layers.length || !doc.steps.length) {
      this.renderOff();
      return;
    }
    this.root.classList.remove("off");
    this.statField.hidden = false;
    const steps = doc.steps;
    this.note.textContent = `${doc.layers.length} layers · ${doc.captures} captures · steps ${steps[0]}–${steps[steps.length - 1]} · ${doc.stat === "dead" ? "scale 0 … 1" : "each row on its own scale"}`;
    const rows = el("div", { class: "feat-rows" });
    const draws = [];
    doc.layers.forEach((name, i) => {
      const values = doc.values[i] || [];
      const range = rowRange(values, doc.stat);
      const canvas = el("canvas", { class: "feat-strip", "data-layer": name });
      const row = el("div", { class: "feat-row", "data-layer": name },
        el("span", { class: "feat-name", title: name }, name),
        canvas,
        el("span", { class: "feat-range" }, range ? `${fmt(range[0])} … ${fmt(range[1])}` : "no values"));
      rows.append(row);
      canvas.addEventListener("mousemove", (ev) => {
        const r = canvas.getBoundingClientRect();
        const k = Math.min(steps.length - 1, Math.max(0, Math.floor(((ev.clientX - r.left) / r.width) * steps.length)));
        canvas.title = `${name} · step ${steps[k]} · ${STAT_LABELS[doc.stat]} ${fmt(values[k])}`;
      });
      draws.push([canvas, values, range]);
    });
    const axis = el("div", { class: "feat-axis" }, el("span", {}, "layer"),
      el("span", { class: "ends" }, el("span", {}, `step ${steps[0]}`), el("span", {}, `step ${steps[steps.length - 1]}`)),
      el("span", {}, doc.stat === "dead" ? "fraction" : "row min … max"));
    this.body.replaceChildren(rows, axis);
    // draw once laid out (the canvas width is the row's)
    for (const [canvas, values, range] of draws) this.draw(canvas, values, range);
  }

  draw(canvas, values, range) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d");
    const n = values.length;
    for (let k = 0; k < n; k++) {
      const x0 = Math.floor((k * w) / n);
      const x1 = Math.max(x0 + 1, Math.floor(((k + 1) * w) / n));
      ctx.fillStyle = colour(scale(values[k], range));
      ctx.fillRect(x0, 0, x1 - x0, h);
    }
  }

  debug() {
    const doc = this.doc;
    return {
      run: this.runId,
      stat: this.stat,
      off: this.root.classList.contains("off"),
      layers: doc ? doc.layers : [],
      steps: doc ? doc.steps.length : 0,
      rows: [...this.root.querySelectorAll(".feat-row")].map((r) => r.dataset.layer),
      error: this.error,
    };
  }
}

function start() {
  const root = document.getElementById("features-card");
  if (!root) return;
  const panel = new FeaturesPanel(root);
  window.hotcbFeatures = panel;
  let last = 0;
  const tick = (now = Date.now()) => {
    // at once when the page switched runs, else every REFRESH_MS while the page is visible
    if (document.hidden || (panel.currentRun() === panel.runId && now - last < REFRESH_MS)) return;
    last = now;
    panel.refresh();
  };
  document.getElementById("run-select")?.addEventListener("change", () => setTimeout(tick, 0));
  setInterval(tick, 500);
}

if (typeof document !== "undefined") {
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
}
