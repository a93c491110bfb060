// Metric charts: one uPlot chart per metric group, markers for applied changes.
/* global uPlot */

export const PALETTE = [
  "#2563eb", "#e8590c", "#059669", "#9333ea", "#dc2626",
  "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d",
];
// A compared run is never drawn like the main run (solid): each has a dash of its own, and past
// the last dash the dashes come round again in a lighter stroke.
const COMPARE_DASHES = [[6, 4], [2, 3], [10, 3, 2, 3], [1, 5], [12, 6]];

/** How the run at position `ri` of the charts (0: the page's run) is drawn: `dash` (null:
 * solid, the main run's alone) and `alpha` of its stroke. */
export function runStyle(ri) {
  if (ri <= 0) return { dash: null, alpha: 1 };
  const k = ri - 1;
  const round = Math.floor(k / COMPARE_DASHES.length);
  return { dash: COMPARE_DASHES[k % COMPARE_DASHES.length], alpha: Math.max(0.4, 1 - 0.25 * round) };
}

/** The legend swatch's CSS border style for a line's dash (the swatch is a small bordered box). */
export function legendDash(dash) {
  if (!dash || !dash.length) return "solid";
  return dash[0] <= 2 ? "dotted" : "dashed";
}
// Who made a change: markers, knob dots and ledger badges. Dark shades that no metric series
// is drawn in (a tune marker is not the 7th series), and a letter in each marker's dot. Every
// source the kernel and hotcb's own clients write into the ledger is here: people (dashboard,
// cli, python), the automatic controllers (tune, autopilot, ai), and the run's own machinery
// (recipe, resume, kernel, ramp, launch, branch, signal, config, anomaly_guard, lightning).
export const SOURCE_COLORS = {
  dashboard: "#1e3a8a",
  cli: "#7c2d12",
  python: "#14532d",
  autopilot: "#581c87",
  ai: "#831843",
  recipe: "#134e4a",
  tune: "#a16207",
  resume: "#334155",
  kernel: "#1f2937",
  ramp: "#155e75",
  launch: "#3730a3",
  branch: "#3f6212",
  signal: "#991b1b",
  config: "#57534e",
  anomaly_guard: "#9a3412",
  lightning: "#6b21a8",
};
export const SOURCE_LETTERS = {
  dashboard: "D", cli: "C", python: "P", autopilot: "A", ai: "AI", recipe: "R", tune: "T",
  resume: "RS", kernel: "K", ramp: "RP", launch: "L", branch: "B", signal: "S", config: "CF",
  anomaly_guard: "G", lightning: "LT",
};
export const sourceColor = (src) => (Object.hasOwn(SOURCE_COLORS, src) ? SOURCE_COLORS[src] : "#6b7280");
/** A source's letter; one hotcb does not know (a client's own `source`) is its first letter,
 * capitalised; "?" only when the entry names none. */
export const sourceLetter = (src) => {
  if (Object.hasOwn(SOURCE_LETTERS, src)) return SOURCE_LETTERS[src];
  const first = typeof src === "string" ? src.trim().match(/[\p{L}\p{N}]/u) : null;
  return first ? first[0].toUpperCase() : "?";
};

// ----------------------------------------------------------------------------- grouping
const RE_LR = /(^|[/_.@-])(lr|learning_rate)($|[/_.@-])/i;
const RE_ACC = /(acc|accuracy|f1|precision|recall|auc|top\d)/i;
const RE_GRAD = /grad/i;
const RE_LOSS = /(loss|(^|[/_.])(ce|mse|mae|nll|kl|l1|l2|bce|ppl|perplexity)($|[/_.]))/i;

export function globMatch(pattern, name) {
  const re = new RegExp(
    "^" + pattern.replace(/[.+^${}()|\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".") + "$",
  );
  return re.test(name);
}

/** The loss term of a loss metric: "train/loss_recon" → "recon", "val/loss" → "total". */
export function lossTerm(name) {
  const base = name.split("/").pop();
  const m = base.match(/^loss[_.-](.+)$/i) || base.match(/^(.+)[_.-]loss$/i);
  if (m) return m[1];
  return /^loss$/i.test(base) ? "total" : base;
}

/**
 * Which chart a metric goes on. Configured groups (`chart.groups`: title → names or glob
 * patterns) win; otherwise: learning rate, accuracy-like, gradient, loss-like, then the
 * name's prefix before "/" (or "other"). With more than four loss metrics, losses split into
 * one chart per term (train and val of the same term together).
 */
export function groupMetrics(names, configured = {}) {
  const groups = new Map();
  const add = (key, title, order, name) => {
    if (!groups.has(key)) groups.set(key, { key, title, order, names: [] });
    groups.get(key).names.push(name);
  };
  const losses = names.filter((n) => RE_LOSS.test(n) && !RE_ACC.test(n) && !RE_LR.test(n));
  const splitLoss = losses.length > 4;
  for (const name of names) {
    const conf = Object.entries(configured).find(([, pats]) =>
      (pats || []).some((p) => globMatch(p, name)),
    );
    if (conf) add(`cfg:${conf[0]}`, conf[0], 0, name);
    else if (RE_LR.test(name)) add("lr", "Learning rate", 5, name);
    else if (RE_ACC.test(name)) add("acc", "Accuracy", 4, name);
    else if (RE_GRAD.test(name)) add("grad", "Gradients", 6, name);
    else if (RE_LOSS.test(name)) {
      if (splitLoss) {
        const term = lossTerm(name);
        add(`loss:${term}`, term === "total" ? "Loss" : `Loss · ${term}`, term === "total" ? 1 : 2, name);
      } else add("loss", "Loss", 1, name);
    } else {
      const prefix = name.includes("/") ? name.split("/")[0] : "other";
      add(`p:${prefix}`, prefix === "other" ? "Other" : prefix, 8, name);
    }
  }
  return [...groups.values()].sort((a, b) => a.order - b.order || a.title.localeCompare(b.title));
}

export const isHigherBetter = (name) => RE_ACC.test(name);

// ----------------------------------------------------------------------------- repeats
/** Relative tolerance under which two values are the same value. */
export const SAME_REL = 1e-12;

const sameValue = (x, y, rel) =>
  x === y || (x != null && y != null && Math.abs(x - y) <= rel * Math.max(Math.abs(x), Math.abs(y)));

/**
 * Whether two series ({step, value}, steps ascending) hold the same values at every step they
 * share (at least one; gaps count only against a value). Walks from the newest step back, so
 * two different series part at once.
 */
export function sameValues(a, b, rel = SAME_REL) {
  let i = a.step.length - 1;
  let j = b.step.length - 1;
  let common = 0;
  while (i >= 0 && j >= 0) {
    const sa = a.step[i];
    const sb = b.step[j];
    if (sa > sb) i--;
    else if (sb > sa) j--;
    else {
      if (!sameValue(a.value[i], b.value[j], rel)) return false;
      common++;
      i--;
      j--;
    }
  }
  return common > 0;
}

/**
 * Series that repeat another one (issue #11: "loss" and "loss_cls" while the other loss terms
 * weigh 0): Map name → the name it repeats. `order` is the drawing order, in which the first
 * of equal series is the one drawn; `runs` are the drawn runs' series (Map name → {step,
 * value}). A name repeats an earlier one when every run that has data for it has the same
 * values for both (sameValues). Called again on new data: a series that starts to differ is
 * no longer a repeat.
 */
export function repeatedSeries(order, runs, rel = SAME_REL) {
  const repeats = new Map();
  const kept = [];
  for (const name of order) {
    const withData = runs.filter((r) => r.get(name)?.step.length);
    const twin = withData.length
      ? kept.find((k) => withData.every((r) => r.get(k) && sameValues(r.get(name), r.get(k), rel)))
      : undefined;
    if (twin === undefined) kept.push(name);
    else repeats.set(name, twin);
  }
  return repeats;
}

// ----------------------------------------------------------------------------- formatting
export function fmtNum(v) {
  if (v == null || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) {
    return v.toExponential(2).replace(/\.?0+e/, "e").replace("e+", "e");
  }
  if (Number.isInteger(v)) return String(v);
  return String(Number(v.toPrecision(4)));
}

/** The y axis' tick labels: a tick the axis' filter dropped (null: a log axis labels only its
 * decades) gets no label, not fmtNum's "–" for a missing value. */
export function axisLabels(vals) {
  return vals.map((v) => (v == null ? "" : fmtNum(v)));
}

export function ema(values, alpha) {
  if (!alpha) return values;
  const out = new Array(values.length);
  let acc = null;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v == null) {
      out[i] = null;
      continue;
    }
    acc = acc == null ? v : alpha * acc + (1 - alpha) * v;
    out[i] = acc;
  }
  return out;
}

// ----------------------------------------------------------------------------- gaps
// The metrics file records a NaN or an infinite value as null (the server sends null too): the
// charts leave a gap there. A step a series has no record for (val_loss every 25 steps drawn
// with a loss logged every step, another run compared) is not a gap: uPlot.join() leaves
// `undefined` there, which the line bridges; only null breaks it (series' spanGaps: false).

/** The values with every non-finite number (a NaN that came as a number) as null: a gap. */
export function finiteOrNull(values) {
  return values.every((v) => v == null || Number.isFinite(v)) ? values : values.map((v) => (v == null || Number.isFinite(v) ? v : null));
}

/** Whether a series has values but none of them finite (every value NaN or inf): nothing to
 * draw, and its legend says why. */
export function allNonFinite(values) {
  return values.length > 0 && !values.some((v) => v != null && Number.isFinite(v));
}

/** What a legend says of a series whose every value is NaN or inf. */
export const NON_FINITE = "every value NaN or inf";

/**
 * The indices (within `i0`…`i1`) of values no line reaches: a finite value between two gaps
 * (or a gap and either end of the series), skipping the steps the series has no record for
 * (`undefined`). A line needs two points, so these are drawn as dots; null when there is none.
 */
export function isolatedPoints(ys, i0 = 0, i1 = ys.length - 1) {
  const defined = (i, dir) => {
    for (let j = i + dir; j >= 0 && j < ys.length; j += dir) if (ys[j] !== undefined) return j;
    return -1;
  };
  const out = [];
  for (let i = Math.max(0, i0); i <= Math.min(ys.length - 1, i1); i++) {
    if (ys[i] == null) continue;
    const p = defined(i, -1);
    if (p >= 0 && ys[p] !== null) continue;
    const n = defined(i, 1);
    if (n >= 0 && ys[n] !== null) continue;
    out.push(i);
  }
  return out.length ? out : null;
}

/** "#2563eb" → "rgba(37, 99, 235, a)". */
export function withAlpha(hex, a) {
  const n = parseInt(String(hex).slice(1, 7), 16);
  return Number.isNaN(n) ? hex : `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
}

/** uPlot's band (a fill between the forecast's high and low series), when there is one. */
function forecastBands(series) {
  const hi = series.findIndex((s) => s.forecast === "hi");
  const lo = series.findIndex((s) => s.forecast === "lo");
  return hi >= 0 && lo >= 0 ? [{ series: [hi + 1, lo + 1], fill: withAlpha(series[hi].color, 0.16) }] : [];
}

// ----------------------------------------------------------------------------- one chart
/** Marker spacing on a chart, in pixels: closer ones are drawn as one. */
export const MARKER_GAP_PX = 6;

/** The markers to draw between steps `min` and `max` (`toPx(step)`: where a step is drawn):
 * of those within `gap` pixels of each other, the newest only, with `nearby` the count of the
 * others it stands for. 5000 changes on a 900 px chart were 5000 full-height lines: one block
 * that hid the curves. */
export function nearMarkers(markers, min, max, toPx, gap = MARKER_GAP_PX) {
  const inRange = markers.filter((m) => m.step >= min && m.step <= max).sort((a, b) => a.step - b.step || a.seq - b.seq);
  const out = [];
  let anchor = -Infinity;
  for (const m of inRange) {
    const px = toPx(m.step);
    const last = out[out.length - 1];
    if (last && px - anchor < gap) {
      out[out.length - 1] = { marker: m, nearby: last.nearby + 1 }; // the newer one stands for both
    } else {
      out.push({ marker: m, nearby: 0 });
      anchor = px;
    }
  }
  return out;
}

class ChartCard {
  constructor(parent, group, opts) {
    this.group = group;
    this.opts = opts;
    this.log = !!opts.logDefault || group.key === "lr";
    this.zoomed = false;
    this.series = []; // [{label, color, dash, runId, name}]
    this.data = null;
    this.markers = [];
    this.plot = null;

    this.el = document.createElement("div");
    this.el.className = "chart-card";
    this.el.dataset.group = group.key;
    this.el.innerHTML = `
      <div class="chart-head">
        <h3></h3>
        <span class="chart-note muted small" hidden></span>
        <div class="chart-tools">
          <label class="toggle small" title="logarithmic y axis"><input type="checkbox" class="log-toggle"> log</label>
          <button class="icon-btn reset-zoom" title="reset zoom" disabled>⟲</button>
        </div>
      </div>
      <div class="chart-body"></div>`;
    this.el.querySelector("h3").textContent = group.title;
    this.body = this.el.querySelector(".chart-body");
    this.noteEl = this.el.querySelector(".chart-note");
    const logBox = this.el.querySelector(".log-toggle");
    logBox.checked = this.log;
    logBox.addEventListener("change", () => {
      this.log = logBox.checked;
      if (this.raw) this.data = this.forAxis(this.raw); // a finished run gets no new data
      this.rebuild();
    });
    this.resetBtn = this.el.querySelector(".reset-zoom");
    this.resetBtn.addEventListener("click", () => this.resetZoom());
    parent.appendChild(this.el);
  }

  resetZoom() {
    this.zoomed = false;
    this.resetBtn.disabled = true;
    if (this.plot && this.data) this.plot.setData(this.data, true);
  }

  width() {
    return Math.max(240, Math.floor(this.body.clientWidth || this.el.clientWidth - 24 || 480));
  }

  rebuild() {
    // a rebuild (a series came or went, a run went stale, the log toggle) keeps a person's zoom
    const kept = this.zoomed && this.plot ? { min: this.plot.scales.x.min, max: this.plot.scales.x.max } : null;
    if (this.plot) this.plot.destroy();
    this.plot = null;
    if (!this.series.length) return;
    const card = this;
    // on a log axis, label and grid only the decades (1e-4, 1e-3, …)
    const decades = this.log
      ? { filter: (u, splits) => splits.map((v) => (Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9 ? v : null)) }
      : {};
    const opts = {
      width: this.width(),
      height: 210,
      scales: { x: { time: false }, y: this.log ? { distr: 3 } : { auto: true } },
      series: [
        { label: "step", value: (u, v) => (v == null ? "–" : v) },
        ...this.series.map((s) => ({
          label: s.label,
          stroke: s.forecast === "lo" || s.forecast === "hi" ? withAlpha(s.color, 0.45) : s.alpha < 1 ? withAlpha(s.color, s.alpha) : s.color,
          width: s.forecast ? 1.2 : s.runId === this.opts.primary() ? 1.6 : 1.2,
          dash: s.dash || undefined,
          // a null is a non-finite value (a gap); `undefined` (no record at that step) is bridged
          spanGaps: !!s.forecast,
          points: {
            show: false,
            filter: (u, si, show) => (show || s.forecast ? null : isolatedPoints(u.data[si], ...(u.series[0].idxs || []))),
          },
          value: (u, v) => fmtNum(v),
        })),
      ],
      axes: [
        { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e5e7eb" } },
        {
          stroke: "#6b7280",
          size: 56,
          grid: { stroke: "#eef0f3", ...decades },
          ticks: { stroke: "#e5e7eb", ...decades },
          values: (u, vals) => (card.yLabels = axisLabels(vals)), // kept for debug()
          ...decades,
        },
      ],
      bands: forecastBands(this.series),
      cursor: { drag: { x: true, y: false, setScale: true }, points: { size: 6 } },
      // the swatch shows the line's dash: a compared run's series is told from the run's own
      legend: { live: true, markers: { width: 2, dash: (u, i) => legendDash(card.series[i - 1]?.dash) } },
      hooks: {
        setSelect: [
          (u) => {
            if (u.select.width > 2) {
              card.zoomed = true;
              card.resetBtn.disabled = false;
            }
          },
        ],
        draw: [(u) => card.drawMarkers(u)],
      },
    };
    this.plot = new uPlot(opts, this.data || [[]], this.body);
    if (kept) this.plot.setScale("x", kept);
    this.plot.over.addEventListener("dblclick", () => this.resetZoom());
  }

  /** Replace the series list (rebuilds the chart when labels changed) and the data. */
  update(series, data, markers, note = "") {
    this.noteEl.textContent = note;
    this.noteEl.hidden = !note;
    // (one way of writing both: with `alpha` on one side only they never matched, and every
    // tick rebuilt the chart: a zoom snapped back, every marker element was made again)
    const sigOf = (list) => list.map((s) => s.label + s.color + (s.dash || "") + (s.alpha ?? "")).join("|");
    const sig = sigOf(series);
    const prevSig = sigOf(this.series);
    this.series = series;
    this.markers = markers;
    this.raw = data;
    this.data = this.forAxis(data);
    if (!this.plot || sig !== prevSig) this.rebuild();
    else this.plot.setData(this.data, !this.zoomed);
  }

  /** The data as the y axis can draw it: on a log axis a value ≤ 0 is a gap (null); a step
   * without a record stays undefined (bridged). */
  forAxis(data) {
    if (!this.log) return data;
    const pos = (v) => (v === undefined || (v != null && v > 0) ? v : null);
    return data.map((col, i) => (i === 0 ? col : col.map(pos)));
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: this.width(), height: 210 });
  }

  drawMarkers(u) {
    // marker elements are kept across redraws (4 per second while live), so a hovered marker
    // stays the same element and its tooltip behaves
    let layer = u.over.querySelector(".markers");
    if (!layer) {
      layer = document.createElement("div");
      layer.className = "markers";
      u.over.appendChild(layer);
      this.markerEls = new Map();
    }
    const { min, max } = u.scales.x;
    const seen = new Set();
    const shown = min == null || max == null ? [] : nearMarkers(this.markers, min, max, (s) => u.valToPos(s, "x"));
    for (const { marker: m, nearby } of shown) {
      seen.add(m.seq);
      let el = this.markerEls.get(m.seq);
      if (!el) {
        el = document.createElement("div");
        el.className = "marker" + (m.undo ? " undo" : "");
        el.style.setProperty("--mc", m.color);
        el.dataset.src = sourceLetter(m.entry?.source);
        el.dataset.seq = m.seq;
        el.addEventListener("mouseenter", (ev) => this.opts.onMarkerHover(el.marker, ev));
        el.addEventListener("mousemove", (ev) => this.opts.onMarkerHover(el.marker, ev));
        el.addEventListener("mouseleave", () => this.opts.onMarkerHover(null));
        el.addEventListener("click", () => this.opts.onMarkerClick(el.marker));
        layer.appendChild(el);
        this.markerEls.set(m.seq, el);
      }
      el.marker = nearby ? { ...m, nearby } : m;
      el.classList.toggle("many", nearby > 0);
      el.style.left = `${u.valToPos(m.step, "x")}px`;
    }
    for (const [seq, el] of this.markerEls) {
      if (!seen.has(seq)) {
        el.remove();
        this.markerEls.delete(seq);
      }
    }
  }

  /** The forecast drawn here: points past the last logged step, the band, the x axis' end. */
  forecastDebug(d) {
    const i = this.series.findIndex((s) => s.forecast === "median");
    if (i < 0) return null;
    const logged = this.series.map((s, k) => (s.forecast ? -1 : k)).filter((k) => k >= 0);
    let last = -Infinity;
    d[0].forEach((x, j) => {
      if (logged.some((k) => d[k + 1]?.[j] != null)) last = Math.max(last, x);
    });
    const ahead = d[0].filter((x, j) => x > last && d[i + 1]?.[j] != null);
    return {
      label: this.series[i].label,
      labels: this.series.filter((s) => s.forecast).map((s) => s.label),
      lastLogged: last,
      pointsAhead: ahead.length,
      end: ahead.length ? ahead[ahead.length - 1] : null,
      bands: this.plot ? (this.plot.bands || []).length : 0,
      xMax: this.plot ? this.plot.scales.x.max : null,
    };
  }

  destroy() {
    if (this.plot) this.plot.destroy();
    this.el.remove();
  }

  debug() {
    const d = this.data || [[]];
    return {
      key: this.group.key,
      title: this.group.title,
      log: this.log,
      yLabels: this.yLabels || [],
      zoomed: this.zoomed,
      xRange: this.plot ? [this.plot.scales.x.min, this.plot.scales.x.max] : null,
      canvas: !!this.el.querySelector("canvas"),
      series: this.series
        .map((s, i) => ({
          label: s.label,
          run: s.runId,
          metric: s.name,
          same: s.same || [],
          points: (d[i + 1] || []).filter((v) => v != null).length,
          gaps: (d[i + 1] || []).filter((v) => v === null).length, // non-finite values
          nonFinite: !!s.nonFinite,
          spanGaps: this.plot ? this.plot.series[i + 1].spanGaps : null,
          gapsDrawn: this.plot?.series[i + 1]._paths?.gaps?.length ?? 0, // where the line breaks
          dots: (this.plot?.series[i + 1].points.filter(this.plot, i + 1, false) || []).length,
        }))
        .filter((_, i) => !this.series[i].forecast), // the forecast's are under `forecast`
      markers: this.markers.length,
      markersDrawn: this.el.querySelectorAll(".marker").length,
      forecast: this.forecastDebug(d),
      note: this.noteEl.hidden ? "" : this.noteEl.textContent,
    };
  }
}

// ----------------------------------------------------------------------------- all charts
export class Charts {
  /**
   * opts: primary() → primary run id; onMarkerHover(marker|null, event); onMarkerClick(marker);
   * logDefault; smoothing (EMA factor); groups (configured groups).
   */
  constructor(root, emptyEl, opts) {
    this.root = root;
    this.emptyEl = emptyEl;
    this.opts = opts;
    this.cards = new Map();
    this.forecast = null;
    this.resizeObs = new ResizeObserver(() => {
      for (const c of this.cards.values()) c.resize();
    });
    this.resizeObs.observe(root);
  }

  /**
   * The primary run's forecast drawn over its metric's chart (analytics.js): {run, metric,
   * steps, median, lo, hi, last_step, last_value, quantiles} continues the curve to the right
   * with its band; {run, metric, note} shows the note in that chart's head; null: nothing.
   */
  setForecast(fc) {
    this.forecast = fc;
  }

  /**
   * runs: [{runId, label, series: Map name → {step, value}}], primary first.
   * markers: [{seq, step, color, undo, entry}] for the primary run.
   */
  render(runs, markers) {
    const primary = runs[0];
    const names = primary ? [...primary.series.keys()] : [];
    for (const r of runs.slice(1)) for (const n of r.series.keys()) if (!names.includes(n)) names.push(n);
    const grouped = groupMetrics(names, this.opts.groups || {});
    // a series equal to one drawn before it is not drawn again: the drawn one's legend says so
    const repeats = repeatedSeries(grouped.flatMap((g) => g.names), runs.map((r) => r.series));
    const same = new Map(); // drawn name → the names it stands for
    for (const [name, twin] of repeats) same.set(twin, [...(same.get(twin) || []), name]);
    const groups = grouped.filter((g) => g.names.some((n) => !repeats.has(n)));
    this.emptyEl.hidden = groups.length > 0;
    const keep = new Set(groups.map((g) => g.key));
    for (const [k, c] of this.cards) {
      if (!keep.has(k)) {
        c.destroy();
        this.cards.delete(k);
      }
    }
    groups.forEach((g, gi) => {
      let card = this.cards.get(g.key);
      if (!card) {
        card = new ChartCard(this.root, g, this.opts);
        this.cards.set(g.key, card);
      }
      // keep DOM order = group order
      if (this.root.children[gi + 1] !== card.el) this.root.insertBefore(card.el, this.root.children[gi + 1] || null);
      const series = [];
      const tables = [];
      const empty = []; // series with no finite value: the chart's note names them
      runs.forEach((run, ri) => {
        g.names.forEach((name, ni) => {
          const s = run.series.get(name);
          if (!s || !s.step.length || repeats.has(name)) return;
          const twins = (same.get(name) || []).filter((t) => run.series.get(t)?.step.length);
          const label = ri === 0 ? name : `${run.label} · ${name}`;
          const values = finiteOrNull(s.value);
          const nonFinite = allNonFinite(values);
          if (nonFinite) empty.push(label);
          const says = [twins.length ? `= ${twins.join(", ")}` : "", nonFinite ? NON_FINITE : ""].filter(Boolean);
          series.push({
            label: says.length ? `${label} (${says.join("; ")})` : label,
            color: PALETTE[ni % PALETTE.length],
            ...runStyle(ri),
            runId: run.runId,
            name,
            same: twins,
            nonFinite,
          });
          tables.push([s.step, ema(values, this.opts.smoothing || 0)]);
        });
      });
      const fc = this.forecast;
      let note = "";
      if (fc && primary && fc.run === primary.runId && g.names.includes(fc.metric) && !repeats.has(fc.metric)) {
        if (fc.steps && fc.steps.length && primary.series.get(fc.metric)?.step.length) {
          const color = PALETTE[g.names.indexOf(fc.metric) % PALETTE.length];
          const [qlo, qhi] = (fc.quantiles || [0.1, 0.9]).map((q) => `${Math.round(q * 100)} %`);
          const base = { color, runId: primary.runId, name: fc.metric, same: [] };
          series.push(
            { ...base, label: `${fc.metric} forecast`, dash: [6, 4], forecast: "median" },
            { ...base, label: `forecast ${qlo}`, dash: null, forecast: "lo" },
            { ...base, label: `forecast ${qhi}`, dash: null, forecast: "hi" },
          );
          const x = [fc.last_step, ...fc.steps];
          const from = (col) => [fc.last_value, ...col];
          tables.push([x, from(fc.median), from(fc.lo), from(fc.hi)]);
        } else if (fc.note) note = fc.note;
      }
      if (empty.length) note = [`${empty.join(", ")}: ${NON_FINITE}, nothing to draw`, note].filter(Boolean).join(" · ");
      const data = tables.length ? uPlot.join(tables) : [[]];
      card.update(series, data, markers, note);
    });
  }

  debug() {
    return [...this.cards.values()].map((c) => c.debug());
  }
}
