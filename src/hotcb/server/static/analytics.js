// The Analytics panel under the metric charts: the key metric's forecast with its band (shown
// only where the model beat the last value and a linear trend on this run's own history; a note
// otherwise), also drawn over that metric's main chart (charts.js setForecast), the what-if band of a proposed change (typed in the controls, an autopilot or
// tuner proposal, or picked here), and the run's trajectory in metric space (PCA).
// It reads GET …/forecast, …/whatif, …/trajectory (docs/analytics.md) and the page's current run
// from window.hotcb (app.js). Pure helpers first (tests/js can run them under node).
import { api, runUrl } from "./api.js";
import { allNonFinite, fmtNum, NON_FINITE } from "./charts.js";
import { runIsOver } from "./lib.js";
import { el } from "./panels.js";

export const HORIZONS = [50, 200, 1000];
const REFRESH_MS = 10000;
const COLORS = {
  history: "#6b7280",
  band: "rgba(37, 99, 235, 0.18)",
  median: "#2563eb",
  whatifBand: "rgba(232, 89, 12, 0.20)",
  whatif: "#e8590c",
  grid: "#e5e7eb",
  text: "#6b7280",
};

/** The training losses a run logs, the first the likeliest ("loss", "train/loss", "train_loss",
 * then any other name with "loss" in it that is no validation, eval or test metric); not `except`. */
export function trainingLosses(names, except = null) {
  const usual = ["loss", "train/loss", "train_loss"];
  const held = /^(val|valid|validation|eval|test)([/_.-]|$)|[/_.-](val|valid|eval|test)([/_.-]|$)/i;
  const others = (names || []).filter((n) => /loss/i.test(n) && !usual.includes(n) && !held.test(n));
  return [...usual.filter((n) => (names || []).includes(n)), ...others].filter((n) => n !== except);
}

/**
 * The forecast the panel shows. `ask(metric)` answers GET …/forecast for `metric` (null: the
 * server's pick, the key metric, e.g. val_loss). The metric picked in the panel (`chosen`) is
 * always what is shown. Otherwise the key metric, once it has a forecast (enough points); until
 * then the run's training loss, when that has one: one Evaluate gives val_loss a single point,
 * and the Loss chart's forecast is not to turn into "not enough points (1 of at least 8)".
 * The answer then says what it stands in for: `waitingFor` {metric, points, note}.
 */
export async function pickForecast(ask, names, chosen = "") {
  if (chosen) return ask(chosen);
  const preferred = await ask(null);
  if (preferred.forecast) return preferred;
  for (const m of trainingLosses(names, preferred.metric)) {
    const fc = await ask(m);
    if (fc.forecast) {
      return { ...fc, waitingFor: { metric: preferred.metric, points: preferred.points ?? 0, note: preferred.note } };
    }
  }
  return preferred;
}

/** knob and factor of an autopilot proposal (`{action: {name, params}}`), or null. */
export function autopilotWhatIf(p) {
  const a = p && p.action;
  if (!a || !a.params || typeof a.params.factor !== "number") return null;
  const knob = { lr_mult: "opt.lr", wd_mult: "opt.weight_decay" }[a.name]
    ?? (a.name === "loss_weight_mult" && a.params.key ? `loss.${a.params.key}` : null);
  return knob ? { knob, factor: a.params.factor, source: `autopilot ${p.id ?? ""}`.trim() } : null;
}

/** knob and factor of each change of a tuner proposal (`{changes: {"opt.lr": [old, new]}}`). */
export function tuneWhatIfs(p) {
  return Object.entries((p && p.changes) || {})
    .filter(([, v]) => Array.isArray(v) && v.length === 2 && v[0] > 0 && v[1] > 0 && v[0] !== v[1])
    .map(([knob, [a, b]]) => ({ knob, factor: b / a, source: `tuner ${p.id ?? ""}`.trim() }));
}

/** The factor a value typed in a control means against the applied value (null: none). */
export function typedFactor(applied, typed) {
  const a = Number(applied);
  const t = Number(typed);
  if (!Number.isFinite(a) || !Number.isFinite(t) || a <= 0 || t <= 0 || a === t) return null;
  return t / a;
}

/** "−20 %" from an impact (log space: a ratio; else a difference in the metric's units). */
export function fmtImpact(impact, logSpace = true) {
  if (impact == null) return "–";
  if (!logSpace) return `${impact >= 0 ? "+" : "−"}${fmtNum(Math.abs(impact))}`;
  const pct = (Math.exp(impact) - 1) * 100;
  return `${pct >= 0 ? "+" : "−"}${Math.abs(pct).toFixed(Math.abs(pct) < 10 ? 1 : 0)} %`;
}

/** What the what-if's knob select says for a run that publishes no numeric knob. */
export const NO_KNOBS = "this run publishes no knobs to ask about";

/** The what-if's knobs in an actuators document: its numeric actuators' keys (none: []). */
export function knobKeys(doc) {
  return ((doc && doc.actuators) || [])
    .filter((a) => ["float", "log_float", "int"].includes(String(a.type).toLowerCase()))
    .map((a) => a.param_key)
    .filter(Boolean);
}

/** What the trajectory panel says when there is nothing to draw: the server's reason (a run
 * that logs one metric has no trajectory), or, from an older server, the general one. */
export function emptyTrajectoryNote(t) {
  if (!t) return "";
  return t.note || "needs two or more metrics that vary";
}

/** Linear (or log) scales over the points given, with a little headroom. */
export function scales(xs, ys, width, height, pad = 28) {
  const fx = xs.filter(Number.isFinite);
  const fy = ys.filter(Number.isFinite);
  const x0 = Math.min(...fx);
  const x1 = Math.max(...fx);
  const pos = fy.length > 0 && fy.every((v) => v > 0);
  const log = pos && Math.max(...fy) / Math.min(...fy) > 20;
  const t = (v) => (log ? Math.log10(v) : v);
  let y0 = Math.min(...fy.map(t));
  let y1 = Math.max(...fy.map(t));
  if (y1 - y0 < 1e-12) {
    const d = Math.abs(y0) * 0.1 || 1;
    y0 -= d;
    y1 += d;
  }
  const head = (y1 - y0) * 0.06;
  y0 -= head;
  y1 += head;
  return {
    log,
    x: (v) => pad + ((v - x0) / (x1 - x0 || 1)) * (width - pad - 8),
    y: (v) => height - 16 - ((t(v) - y0) / (y1 - y0)) * (height - 24),
    y0,
    y1,
  };
}

// ------------------------------------------------------------------------------- drawing
function canvas(h) {
  const c = el("canvas");
  c.height = h;
  c.style.width = "100%";
  c.style.height = `${h}px`;
  c.style.display = "block";
  return c;
}

function fit(c) {
  const ratio = window.devicePixelRatio || 1;
  const w = Math.max(200, c.clientWidth || 600);
  const h = parseInt(c.style.height, 10);
  c.width = Math.round(w * ratio);
  c.height = Math.round(h * ratio);
  const ctx = c.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

function band(ctx, s, steps, lo, hi, color) {
  const idx = steps.map((_, i) => i).filter((i) => lo[i] != null && hi[i] != null);
  if (!idx.length) return;
  ctx.beginPath();
  idx.forEach((i, k) => (k ? ctx.lineTo(s.x(steps[i]), s.y(hi[i])) : ctx.moveTo(s.x(steps[i]), s.y(hi[i]))));
  for (const i of [...idx].reverse()) ctx.lineTo(s.x(steps[i]), s.y(lo[i]));
  ctx.closePath();
  ctx.fillStyle = color;
  ctx.fill();
}

function line(ctx, s, steps, values, color, dash = []) {
  ctx.beginPath();
  let on = false;
  steps.forEach((x, i) => {
    const v = values[i];
    if (v == null || !Number.isFinite(v)) {
      on = false;
      return;
    }
    if (on) ctx.lineTo(s.x(x), s.y(v));
    else ctx.moveTo(s.x(x), s.y(v));
    on = true;
  });
  ctx.setLineDash(dash);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.stroke();
  ctx.setLineDash([]);
}

// ------------------------------------------------------------------------------- the panel
export class AnalyticsPanel {
  constructor(root) {
    this.root = root;
    this.run = null;
    this.metric = ""; // the metric shown
    this.chosen = ""; // the metric picked in the panel ("": the key metric, as soon as it can)
    this.horizon = 200;
    this.forecast = null;
    this.history = null;
    this.whatif = null;
    this.traj = null;
    this.proposals = [];
    this.errors = 0;
    this.build();
  }

  build() {
    const r = this.root;
    r.textContent = "";
    r.style.marginTop = "14px";
    const head = el("div", "card-head");
    head.append(el("h2", null, "Forecast & what-if"));
    this.summary = el("span", "muted small");
    head.append(this.summary, el("div", "spacer"));
    const mLab = el("label", "field small");
    this.metricSel = el("select");
    this.metricSel.setAttribute("aria-label", "forecast metric");
    mLab.append(el("span", null, "metric"), this.metricSel);
    const hLab = el("label", "field small");
    this.horizonSel = el("select");
    this.horizonSel.setAttribute("aria-label", "forecast horizon");
    for (const h of HORIZONS) this.horizonSel.append(new Option(`${h} steps`, String(h)));
    this.horizonSel.value = String(this.horizon);
    hLab.append(el("span", null, "ahead"), this.horizonSel);
    head.append(mLab, hLab);
    r.append(head);

    const body = el("div", "analytics-body");
    body.style.display = "grid";
    body.style.gridTemplateColumns = "minmax(0, 2fr) minmax(0, 1fr)";
    body.style.gap = "14px";
    const left = el("div");
    this.fcCanvas = canvas(190);
    this.fcCanvas.id = "forecast-canvas";
    this.note = el("p", "muted small analytics-note");
    this.note.id = "forecast-note";
    this.note.style.margin = "4px 0 0";
    this.bt = el("p", "muted small");
    this.bt.id = "forecast-backtest";
    this.bt.style.margin = "2px 0 0";

    const form = el("form", "whatif-form");
    form.id = "whatif-form";
    form.setAttribute("autocomplete", "off");
    form.style.display = "flex";
    form.style.gap = "8px";
    form.style.alignItems = "center";
    form.style.marginTop = "8px";
    form.style.flexWrap = "wrap";
    this.knobSel = el("select");
    this.knobSel.id = "whatif-knob";
    this.knobSel.setAttribute("aria-label", "what-if knob");
    this.factorIn = el("input", "num");
    this.factorIn.id = "whatif-factor";
    this.factorIn.setAttribute("aria-label", "what-if factor");
    this.factorIn.setAttribute("inputmode", "decimal");
    this.factorIn.value = "0.5";
    this.factorIn.style.width = "70px";
    const go = el("button", "btn tiny", "what if?");
    go.type = "submit";
    form.append(el("span", "muted small", "what if"), this.knobSel, el("span", "muted small", "×"), this.factorIn, go);
    this.props = el("span", "small whatif-proposals");
    this.props.style.display = "inline-flex";
    this.props.style.gap = "6px";
    form.append(this.props);
    this.wiText = el("p", "small whatif-result");
    this.wiText.id = "whatif-result";
    this.wiText.style.margin = "4px 0 0";
    left.append(this.fcCanvas, this.note, this.bt, form, this.wiText);

    const right = el("div");
    right.append(el("h4", null, "trajectory in metric space"));
    this.trCanvas = canvas(170);
    this.trCanvas.id = "trajectory-canvas";
    this.trNote = el("p", "muted small");
    this.trNote.id = "trajectory-note";
    this.trNote.style.margin = "4px 0 0";
    right.append(this.trCanvas, this.trNote);
    body.append(left, right);
    r.append(body);

    this.metricSel.addEventListener("change", () => {
      this.metric = this.chosen = this.metricSel.value;
      this.whatif = null;
      this.refresh();
    });
    this.horizonSel.addEventListener("change", () => {
      this.horizon = Number(this.horizonSel.value);
      this.refresh();
    });
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.askWhatIf(this.knobSel.value, Number(this.factorIn.value), "typed here");
    });
    window.addEventListener("resize", () => this.draw());
  }

  /** The page's run (app.js), or null before it picked one. */
  pageRun() {
    const app = window.hotcb && window.hotcb.app;
    return app && app.runId != null ? app.runId : null;
  }

  /** Nothing of what was shown for the run before: its forecast (and the overlay on its
   * chart), history, what-if, knobs, proposals' buttons and trajectory. On a switch of runs,
   * and when a gone run comes back (a new trainer in its folder: a new life, new answers). */
  reset(run) {
    this.run = run;
    this.metric = this.chosen = "";
    this.forecast = this.history = this.whatif = this.traj = null;
    this.factorIn.value = "";
    this.proposals = [];
    this.props.textContent = "";
    this.knobSel.textContent = "";
    this.knobSig = this.metricSig = null;
    this.metricSel.textContent = "";
    this.note.textContent = "";
    this.errors = 0;
    this.render();
  }

  /** The page's run changed, or came back from gone: start over for it, at once. */
  follow() {
    const run = this.pageRun();
    const gone = !!window.hotcb?.app?.gone;
    const back = this.gone && !gone;
    this.gone = gone;
    if (run === this.run && !back) return;
    this.reset(run);
    this.refresh();
  }

  start() {
    setInterval(() => this.follow(), 500);
    document.getElementById("run-select")?.addEventListener("change", () => setTimeout(() => this.follow(), 0));
    setInterval(() => {
      if (!window.hotcb?.app?.offline) this.refresh(); // no server: nothing to ask
    }, REFRESH_MS);
    // a value typed in a control (not sent yet) asks what it would do
    const controls = document.getElementById("controls");
    if (controls) {
      controls.addEventListener("input", (ev) => {
        const ctl = ev.target.closest && ev.target.closest(".ctl");
        if (!ctl || !ctl.dataset.key || ev.target.type === "range") return;
        const key = ctl.dataset.key;
        const applied = (window.hotcb.debug().controls || []).find((c) => c.key === key)?.applied;
        const f = typedFactor(applied, ev.target.value);
        clearTimeout(this.typedTimer);
        if (f != null) this.typedTimer = setTimeout(() => this.askWhatIf(key, f, "typed in the controls"), 400);
      });
    }
  }

  async refresh() {
    const run = this.run;
    if (run == null || globalThis.window?.hotcb?.app?.gone) return; // its folder is gone: nothing to ask
    try {
      const names = (await api(runUrl(run, "metrics/names"))).names || [];
      if (run !== this.run) return;
      this.fillMetrics(names);
      const horizon = this.horizon;
      const ask = (metric) => api(runUrl(run, "forecast", { horizon, ...(metric ? { metric } : {}) }));
      const fc = await pickForecast(ask, names, this.chosen);
      if (run !== this.run) return;
      const last = fc.forecast ? fc.forecast.last_step : null;
      const from = last == null ? "" : String(Math.max(0, last - 3 * this.horizon));
      const h = await api(runUrl(run, "metrics", { names: fc.metric, max_points: 400, step_min: from }));
      if (run !== this.run) return;
      // the forecast, its history and what the panel says change together (no await between)
      this.forecast = fc;
      this.metric = fc.metric;
      this.metricSel.value = fc.metric;
      this.history = h.series[fc.metric] || { step: [], value: [] };
      this.render();
      // each answer below is dropped when the page moved to another run meanwhile
      if (!(await this.refreshKnobs(run))) return;
      if (!(await this.refreshProposals(run))) return;
      if (this.whatif) await this.askWhatIf(this.whatif.knob, this.whatif.factor, this.whatif.from, false);
      const traj = await api(runUrl(run, "trajectory", { max_points: 400 }));
      if (run !== this.run) return;
      this.traj = traj;
      this.errors = 0;
    } catch (err) {
      if (run !== this.run) return; // the last run's failure: not this one's to show
      this.errors += 1;
      if (err && err.status === 404) {
        this.forecast = null;
        this.note.textContent = err.message;
      } else if (this.errors === 1) {
        console.warn("analytics:", err && err.message);
      }
    }
    this.render();
  }

  fillMetrics(names) {
    const sig = names.join("|");
    if (sig === this.metricSig) return;
    this.metricSig = sig;
    const keep = this.metricSel.value;
    this.metricSel.textContent = "";
    for (const n of names) this.metricSel.append(new Option(n, n));
    if (names.includes(keep)) this.metricSel.value = keep;
  }

  /** The what-if's knobs: the run's numeric actuators; none offered (and the panel says so)
   * for a run that publishes none. False when the page moved to another run meanwhile. */
  async refreshKnobs(run) {
    const doc = await api(runUrl(run, "actuators"));
    if (run !== this.run) return false;
    const list = knobKeys(doc);
    this.noKnobs = !list.length;
    const sig = list.join("|");
    if (sig === this.knobSig) return true;
    this.knobSig = sig;
    const keep = this.knobSel.value;
    this.knobSel.textContent = "";
    if (!list.length) this.knobSel.append(new Option(NO_KNOBS, ""));
    for (const k of list) this.knobSel.append(new Option(k, k));
    if (list.includes(keep)) this.knobSel.value = keep;
    this.knobSel.disabled = this.factorIn.disabled = !list.length;
    this.knobSel.title = list.length ? "" : NO_KNOBS;
    return true;
  }

  /** The pending proposals' what-if buttons. False when the page moved to another run. */
  async refreshProposals(run) {
    const out = [];
    // a run that is over applies no proposal: what it left pending ended with it
    const over = runIsOver(window.hotcb?.app?.runState);
    try {
      const ap = await api(runUrl(run, "autopilot"));
      for (const p of over ? [] : ap.pending || []) {
        if ((p.state ?? "pending") !== "pending") continue;
        const w = autopilotWhatIf(p);
        if (w) out.push(w);
      }
    } catch {
      /* no autopilot here */
    }
    try {
      const tu = await api(runUrl(run, "tune"));
      for (const p of over ? [] : tu.proposals || []) if (p && p.state === "pending") out.push(...tuneWhatIfs(p));
    } catch {
      /* no tuner here */
    }
    if (run !== this.run) return false;
    this.proposals = out;
    this.props.textContent = "";
    for (const w of out.slice(0, 4)) {
      const b = el("button", "btn tiny ghost", `${w.source}: ${w.knob} ×${fmtNum(w.factor)}`);
      b.type = "button";
      b.title = "what would this proposal do?";
      b.addEventListener("click", () => this.askWhatIf(w.knob, w.factor, w.source));
      this.props.append(b);
    }
    if (out.length && !this.whatif) await this.askWhatIf(out[0].knob, out[0].factor, out[0].source, false);
    return run === this.run;
  }

  async askWhatIf(knob, factor, from, render = true) {
    const run = this.run;
    if (run != null && !knob && this.noKnobs && from === "typed here") {
      this.wiText.textContent = NO_KNOBS;
      return;
    }
    if (run == null || !knob || !(factor > 0) || factor === 1) {
      this.wiText.textContent = "a what-if needs a knob and a factor other than 1";
      return;
    }
    if (from !== "typed here") {
      if (![...this.knobSel.options].some((o) => o.value === knob)) this.knobSel.append(new Option(knob, knob));
      this.knobSel.value = knob;
      this.factorIn.value = String(Number(factor.toPrecision(4)));
    }
    try {
      const q = { knob, factor, horizon: this.horizon, ...(this.metric ? { metric: this.metric } : {}) };
      const d = await api(runUrl(run, "whatif", q));
      if (run !== this.run) return;
      this.whatif = { ...d, from };
    } catch (err) {
      if (run !== this.run) return;
      this.whatif = { knob, factor, from, note: err.message, band: null, similar: [] };
    }
    if (render) this.render();
  }

  /** The forecast (or the note) over the metric's main chart: app.js's charts redraw it. */
  publish() {
    const page = window.hotcb;
    if (!page || !page.charts || !page.app) return;
    const fc = this.forecast;
    const f = fc && fc.forecast;
    let overlay = null;
    if (fc && fc.show && f) {
      overlay = { run: this.run, metric: fc.metric, ...f };
    } else if (fc && fc.note) {
      overlay = { run: this.run, metric: fc.metric, note: fc.note };
    }
    const sig = overlay ? `${overlay.run}|${overlay.metric}|${overlay.last_step}|${this.horizon}|${overlay.note || ""}|${(f && f.median.length) || 0}` : "";
    if (sig === this.publishedSig) return;
    this.publishedSig = sig;
    page.charts.setForecast(overlay);
    page.app.dirty.charts = true;
  }

  render() {
    this.publish();
    const fc = this.forecast;
    if (!fc) {
      this.summary.textContent = "";
      this.bt.textContent = "";
      this.draw();
      return;
    }
    const f = fc.forecast;
    const end = f ? f.median.length - 1 : -1;
    const wait = fc.waitingFor;
    const later = wait ? ` · ${wait.metric} once it has enough points (${wait.points} so far)` : "";
    this.summary.textContent = (fc.show && f
      ? `${fc.metric} in ${this.horizon} steps: ${fmtNum(f.median[end])} (${fmtNum(f.lo[end])}–${fmtNum(f.hi[end])}, 10–90 %)`
      : "") + later;
    this.note.textContent = fc.show ? "" : fc.note || "";
    this.note.hidden = !!fc.show;
    const m = fc.backtest && fc.backtest.mae;
    const n = f ? f.calibrated_on || 0 : 0;
    const how = !f ? "" : n ? ` · band calibrated on their ${n} errors` : " · band from the fit's residuals (too few past forecasts to calibrate)";
    this.bt.textContent = m && fc.backtest.origins
      ? `backtest on this run (${fc.backtest.origins} forecasts, ${this.horizon} steps ahead), mean abs. error: model ${fmtNum(m.model)} · last value ${fmtNum(m.last_value)} · linear trend ${fmtNum(m.linear)}${how}`
      : "";
    const w = this.whatif;
    if (!w) this.wiText.textContent = "";
    else if (w.note) this.wiText.textContent = `${w.knob} ×${fmtNum(w.factor)} (${w.from}): ${w.note}`;
    else if (w.band) {
      const e = w.band.median.length - 1;
      const sims = w.similar.map((s) => `${s.run === fc.run ? "" : `${s.run} `}step ${s.step} ×${fmtNum(s.factor)} ${fmtImpact(s.impact, s.log_space)}`);
      this.wiText.textContent =
        `${w.knob} ×${fmtNum(w.factor)} (${w.from}): ${fc.metric} in ${this.horizon} steps ≈ ${fmtNum(w.band.median[e])} ` +
        `(${fmtNum(w.band.lo[e])}–${fmtNum(w.band.hi[e])}), from ${w.similar.length} similar change${w.similar.length === 1 ? "" : "s"}: ${sims.join(", ")}`;
    }
    this.draw();
  }

  draw() {
    this.drawForecast();
    this.drawTrajectory();
  }

  drawForecast() {
    const { ctx, w, h } = fit(this.fcCanvas);
    const fc = this.forecast;
    const hist = this.history;
    // as on the metric charts: a NaN or inf (null here) is a gap in the line (line() breaks
    // there), and a metric with no finite value at all says so instead of an empty chart
    const nothing = !fc || !hist || !hist.step.length || allNonFinite(hist.value);
    this.empty = !fc ? "waiting for metrics…" : !hist || !hist.step.length ? "no history yet" : nothing ? `${fc.metric}: ${NON_FINITE} so far, nothing to draw` : "";
    if (nothing) {
      ctx.fillStyle = COLORS.text;
      ctx.font = "12px system-ui, sans-serif";
      ctx.fillText(this.empty, 12, 20);
      return;
    }
    const f = fc.forecast;
    const wi = this.whatif && this.whatif.band ? this.whatif.band : null;
    const xs = [...hist.step];
    const ys = [...hist.value];
    if (f && fc.show) {
      xs.push(...f.steps);
      ys.push(...f.lo, ...f.hi);
    }
    if (wi && fc.show) ys.push(...wi.lo, ...wi.hi);
    if (f && !fc.show) xs.push(f.last_step + this.horizon);
    const s = scales(xs, ys, w, h);
    ctx.strokeStyle = COLORS.grid;
    ctx.beginPath();
    ctx.moveTo(s.x(f ? f.last_step : xs[xs.length - 1]), 4);
    ctx.lineTo(s.x(f ? f.last_step : xs[xs.length - 1]), h - 16);
    ctx.stroke();
    if (f && fc.show) {
      band(ctx, s, f.steps, f.lo, f.hi, COLORS.band);
      if (wi) band(ctx, s, wi.steps, wi.lo, wi.hi, COLORS.whatifBand);
    }
    line(ctx, s, hist.step, hist.value, COLORS.history);
    if (f && fc.show) {
      line(ctx, s, [f.last_step, ...f.steps], [f.last_value, ...f.median], COLORS.median, [5, 3]);
      if (wi) line(ctx, s, [f.last_step, ...wi.steps], [f.last_value, ...wi.median], COLORS.whatif, [5, 3]);
    }
    ctx.fillStyle = COLORS.text;
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText(`${fc.metric}${s.log ? " (log)" : ""}`, s.x(xs[0]), 12);
    ctx.fillText(String(Math.round(Math.min(...xs))), s.x(Math.min(...xs)), h - 3);
    const right = String(Math.round(Math.max(...xs)));
    ctx.fillText(right, w - 8 - ctx.measureText(right).width, h - 3);
  }

  drawTrajectory() {
    const { ctx, w, h } = fit(this.trCanvas);
    const t = this.traj;
    if (!t || !t.x || t.x.length < 2) {
      this.trNote.textContent = emptyTrajectoryNote(t);
      return;
    }
    const s = scales(t.x, t.y, w, h, 12);
    const n = t.x.length;
    ctx.strokeStyle = COLORS.grid;
    ctx.beginPath();
    t.x.forEach((x, i) => (i ? ctx.lineTo(s.x(x), s.y(t.y[i])) : ctx.moveTo(s.x(x), s.y(t.y[i]))));
    ctx.stroke();
    t.x.forEach((x, i) => {
      const k = i / Math.max(1, n - 1); // early → late: light blue → orange
      ctx.fillStyle = `rgb(${Math.round(37 + k * 195)}, ${Math.round(99 - k * 10)}, ${Math.round(235 - k * 223)})`;
      ctx.beginPath();
      ctx.arc(s.x(x), s.y(t.y[i]), i === n - 1 ? 4 : 2, 0, 2 * Math.PI);
      ctx.fill();
    });
    const ex = t.explained ? ` · ${t.explained.map((v) => `${Math.round(v * 100)} %`).join(" + ")} of the variance` : "";
    // a metric that went NaN or inf ends the trajectory: the server's note says which, and where
    const cut = t.note ? ` · ${t.note}` : "";
    this.trNote.textContent = `${t.method.toUpperCase()} of ${t.metrics.join(", ")}${ex} · steps ${t.steps[0]}–${t.steps[n - 1]} (blue → orange)${cut}`;
  }

  debug() {
    const fc = this.forecast;
    return {
      run: this.run,
      metric: this.metric,
      chosen: this.chosen,
      waitingFor: fc && fc.waitingFor ? fc.waitingFor.metric : null,
      horizon: this.horizon,
      show: !!(fc && fc.show),
      note: fc ? fc.note : null,
      noteShown: !this.note.hidden && this.note.textContent,
      band: fc && fc.forecast ? fc.forecast.band : null,
      calibratedOn: fc && fc.forecast ? fc.forecast.calibrated_on : 0,
      bandPoints: fc && fc.show && fc.forecast ? fc.forecast.steps.length : 0,
      backtest: fc ? fc.backtest : null,
      whatif: this.whatif ? { knob: this.whatif.knob, factor: this.whatif.factor, from: this.whatif.from, note: this.whatif.note ?? null, similar: (this.whatif.similar || []).length, band: !!this.whatif.band } : null,
      proposals: this.proposals,
      knobs: [...this.knobSel.options].map((o) => o.value).filter(Boolean),
      trajectoryNote: this.trNote.textContent,
      trajectory: this.traj && this.traj.x ? this.traj.x.length : 0,
      empty: this.empty || "", // what the forecast chart says instead of a curve
      gaps: this.history ? this.history.value.filter((v) => v === null).length : 0,
    };
  }
}

const root = typeof document !== "undefined" ? document.getElementById("analytics-card") : null;
if (root) {
  const panel = new AnalyticsPanel(root);
  window.hotcbAnalytics = panel;
  panel.start();
}
