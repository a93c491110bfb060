// hotcb dashboard: state, data loading, live updates and wiring. No framework, no build step.
import { api, ApiError, LiveSocket, onUnauthorized, runUrl, sendCommand, takeTokenFromAddress } from "./api.js";
import { Charts, fmtNum, sourceColor } from "./charts.js";
import {
  ago,
  appendRecords as appendSeries,
  lastRecordStep,
  pastStepError,
  runChip,
  runIsOver,
  runListName,
  runPickerText,
  runTree,
  seriesFrom,
  shownStep,
  stepAhead,
} from "./lib.js";
import {
  Controls,
  LedgerTable,
  bigChange,
  boundsError,
  describeEntry,
  fmtValue,
  impactRows,
  parseFor,
  renderPending,
} from "./panels.js";
import { AutopilotPanel } from "./autopilot.js";
import { TunePanel } from "./tune.js";
import { KnobsPanel } from "./knobs.js";

const $ = (id) => document.getElementById(id);
takeTokenFromAddress(); // before the first call to the server
const query = new URLSearchParams(location.search);

// Defaults when /api/config is unreachable or older; the server's config wins.
const DEFAULT_CFG = {
  history_max_points: 2000,
  ledger_limit: 200,
  chart: { live_max_points: 5000, log_scale: false, smoothing: 0, key_metric: "loss", impact_window: 50, groups: {} },
  ui: { stale_after_sec: 30, reconnect_delay_sec: 1, reconnect_max_delay_sec: 10, status_refresh_sec: 2, chart_refresh_ms: 250 },
};

// The chart markers a run keeps: the newest this many applied changes (the server keeps as many)
const MARKERS_MAX = 5000;
let markList = null; // markers(), until a marker comes or goes

const app = {
  cfg: DEFAULT_CFG,
  runs: [],
  runId: null,
  waitingFor: null, // a run named in the address that does not exist yet
  compare: new Set(),
  liveSteps: new Map(), // runId → its step as the live stream last said it (the compare list)
  data: new Map(), // runId → {runId, label, series: Map name → {step, value}, lastStep, lastRecv, loading, buffer}
  ledger: [], // the ledger table's entries: the newest ledgerLimit, then the live ones
  ledgerLimit: 200,
  marks: new Map(), // seq → an entry that applied a change: a chart marker (GET …/markers, live)
  seqs: new Set(),
  undone: new Set(),
  refusedUndo: new Map(), // cmd_id → why the run refused this page's undo of it
  actuators: [],
  status: null,
  runState: null, // the server's words for the run: "running", "finished at step N", "crashed …"
  serverStale: false,
  serverStep: null, // the server's last step of the run: metrics, ledger or the kernel's heartbeat
  offline: false, // the live connection to the server was lost (and is not back yet)
  gone: false, // the server no longer has the run (its folder was deleted or moved): a 404
  goneDelay: 0, // ms until the page asks about a gone run again (doubles up to GONE_MAX_MS)
  inflight: new Set(), // header buttons whose command is not answered yet (see guarded())
  ledgerLocked: null, // why the ledger's Undo and Cancel are disabled (null: they are not)
  authFailed: false, // the server refused this page's token (401): a restart with a new token
  impacts: new Map(),
  impactMetric: null,
  highlightSeq: null,
  dirty: { charts: true, ledger: true },
  generation: 0, // bumped on run switch / reconnect: late responses of an old load are dropped
  loaded: -1, // the generation whose first load has settled
  // the generation in which the WebSocket brought the tuner's / autopilot's document: an
  // answer to the load's own request for it may come later and be older, so it is dropped
  pushed: { tune: -1, autopilot: -1 },
};

// A gone run is asked about again after twice the status interval, then twice as long each
// time, up to this (the runs list, polled every 10 s, also notices it is back)
const GONE_MAX_MS = 30000;
// A header button (Pause/Resume, Checkpoint, Evaluate) stays disabled from the click until the
// run's ledger answers its command, at most this long after the server took it
const ANSWER_WAIT_MS = 10000;

// ----------------------------------------------------------------------------- utilities
/** A message at the bottom left (clear of the Controls column) for `ms`; a click dismisses it.
 * Returns the message's element. */
function toast(text, kind = "info", ms = 5000) {
  const t = document.createElement("div");
  t.className = `toast ${kind}`;
  t.textContent = text;
  t.title = "click to dismiss";
  t.addEventListener("click", () => t.remove());
  $("toasts").append(t);
  setTimeout(() => t.remove(), ms);
  return t;
}

function runLabel(runId) {
  const r = app.runs.find((x) => x.run_id === runId);
  if (r && r.name) return r.name;
  return runId === "." ? "this run" : runId;
}

/** The run's branch point when it is a branch of a run served here: {parent, step}, else null. */
function branchOf(runId) {
  const b = app.runs.find((x) => x.run_id === runId)?.branch;
  return b && b.parent != null ? { parent: b.parent, step: b.step } : null;
}

/** A branch is compared with its parent by default (called when a run is picked). */
function compareWithParent() {
  const b = branchOf(app.runId);
  if (b && b.parent !== app.runId) app.compare.add(b.parent);
}

function setUrl() {
  if (app.runId != null) document.title = `${runLabel(app.runId)} · hotcb`;
  const q = new URLSearchParams(location.search);
  q.delete("token"); // the page keeps it in its storage; never leave it in the address bar
  if (app.runId != null) q.set("run", app.runId);
  if (app.compare.size) q.set("compare", [...app.compare].join(","));
  else q.delete("compare");
  history.replaceState(null, "", `${location.pathname}?${q}`);
}

// ----------------------------------------------------------------------------- metrics data
function newRunData(runId) {
  return { runId, label: runLabel(runId), series: new Map(), lastStep: null, lastRecv: null, loading: true, buffer: [] };
}

function appendRecords(rd, records) {
  if (appendSeries(rd, records, app.cfg.chart.live_max_points || 5000) && rd.runId === app.runId) wentBack(rd.runId);
}

/** The run's steps went back (a restart, a resume from an earlier checkpoint): the changes a
 * gone life made are no markers of this one's curve. The server knows which are (GET …/markers). */
function wentBack(runId) {
  const gen = app.generation;
  api(runUrl(runId, "markers", { limit: MARKERS_MAX }))
    .then((res) => {
      if (gen !== app.generation) return;
      app.marks = new Map();
      markList = null;
      addMarks(res.markers || []);
      app.dirty.charts = true;
    })
    .catch(() => {});
  scheduleKnobs();
}

async function loadMetrics(runId, gen) {
  // a reload (after a reconnect) keeps drawing the old series until the new history is in
  let rd = app.data.get(runId);
  if (!rd) {
    rd = newRunData(runId);
    app.data.set(runId, rd);
  }
  rd.loading = true;
  rd.buffer = [];
  try {
    const { names } = await api(runUrl(runId, "metrics/names"));
    if (gen !== app.generation) return;
    if (names && names.length) {
      const query = { names: names.join(","), max_points: app.cfg.history_max_points };
      // the branch's parent is drawn from the branch step on: its points budget is spent there
      const branch = branchOf(app.runId);
      if (runId !== app.runId && branch?.parent === runId && branch.step != null) query.step_min = branch.step;
      const res = await api(runUrl(runId, "metrics", query));
      if (gen !== app.generation) return;
      rd.series = new Map();
      rd.lastStep = null;
      for (const [name, s] of Object.entries(res.series || {})) {
        rd.series.set(name, { step: [...s.step], value: [...s.value] });
        const last = s.step[s.step.length - 1];
        if (last != null && (rd.lastStep == null || last > rd.lastStep)) rd.lastStep = last;
      }
    }
  } catch (err) {
    if (gen === app.generation) toast(`metrics of ${runLabel(runId)}: ${err.message}`, "bad");
  } finally {
    if (gen === app.generation) {
      rd.loading = false;
      appendRecords(rd, rd.buffer); // live records that arrived while history loaded
      rd.buffer = [];
      app.dirty.charts = true;
    }
  }
}

// ----------------------------------------------------------------------------- ledger
/** Add ledger entries to the table; `live` ones (the socket's: this life's) are chart markers
 * too. A page of the ledger's history is not: GET …/markers says which of it are this life's. */
function addEntries(entries, live = false) {
  let added = false;
  let outOfOrder = false;
  let maxSeq = app.ledger.length ? app.ledger[app.ledger.length - 1].seq ?? 0 : -Infinity;
  for (const e of entries) {
    if (e.seq != null) {
      if (app.seqs.has(e.seq)) continue;
      app.seqs.add(e.seq);
      if (e.seq < maxSeq) outOfOrder = true;
      maxSeq = Math.max(maxSeq, e.seq);
    }
    app.ledger.push(e);
    // (one that left keys a later command had set again took back part of it: Undo stays)
    if (e.undo_of && e.decision === "applied" && !e.set_since) app.undone.add(e.undo_of);
    controls.onEntry(e);
    tunePanel.onEntry(e);
    if (e.module === "freeze" && e.decision === "applied" && e.changes?.mode) setFreeze(e.changes.mode.new);
    if (e.module === "control" && e.decision === "applied" && e.changes?.paused) {
      if (app.status) app.status.paused = e.changes.paused.new;
      pauseSeenAt = statusAsks;
    }
    // after the state it changed: the button it re-enables reads Resume once paused
    answered(e.cmd_id);
    answeredControl(e);
    added = true;
  }
  if (!added) return;
  if (live) addMarks(entries);
  if (outOfOrder) app.ledger.sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0));
  const max = Math.max(5000, app.ledgerLimit);
  if (app.ledger.length > max) app.ledger.splice(0, app.ledger.length - max);
  app.dirty.ledger = true;
  app.dirty.charts = true; // markers
  scheduleStatusRefresh();
  scheduleImpactRefresh();
}

/** Keep `e` as a chart marker when it applied a change at a step: every such entry is marked,
 * not only those the ledger table loaded (its page is the newest ledgerLimit entries). */
function addMark(e) {
  if (e.seq == null || app.marks.has(e.seq)) return false;
  if (e.decision !== "applied" || !e.changes || !Object.keys(e.changes).length || e.step == null) return false;
  app.marks.set(e.seq, e);
  markList = null;
  return true;
}

/** Keep the markers among `entries` (GET …/markers: the whole ledger's newest MARKERS_MAX applied
 * changes; live entries), then only the newest MARKERS_MAX. */
function addMarks(entries) {
  let added = false;
  for (const e of entries) added = addMark(e) || added;
  if (!added) return;
  if (app.marks.size > MARKERS_MAX) {
    const old = [...app.marks.keys()].sort((a, b) => a - b).slice(0, app.marks.size - MARKERS_MAX);
    for (const seq of old) app.marks.delete(seq);
  }
  app.dirty.charts = true;
}

function markers() {
  if (markList) return markList;
  markList = [...app.marks.values()]
    .sort((a, b) => a.seq - b.seq)
    .map((e) => {
      const undo = !!e.undo_of || (e.module === "tune" && e.op === "rollback"); // drawn dashed
      return { seq: e.seq, step: e.step, color: sourceColor(e.source), undo, entry: e };
    });
  return markList;
}

function pendingIds() {
  return new Set((app.status?.pending || []).map((p) => p.cmd_id));
}

// ----------------------------------------------------------------------------- loading
async function loadPrimary(runId, gen, reset) {
  if (reset) {
    app.ledger = [];
    app.marks = new Map();
    markList = null;
    app.seqs = new Set();
    app.undone = new Set();
    app.refusedUndo = new Map();
    app.impacts = new Map();
    app.dirty.ledger = true;
    tunePanel.reset(app.runs.find((r) => r.run_id === runId)?.path);
    autopilotPanel.reset(app.runs.find((r) => r.run_id === runId)?.path);
    knobsPanel.reset();
  }
  const jobs = [
    askStatus(runId).then(([st, ask]) => gen === app.generation && applyStatus(st, ask)),
    api(runUrl(runId, "actuators")).then((res) => {
      if (gen !== app.generation) return;
      app.actuators = res.actuators || [];
      controls.setActuators(app.actuators, res.wall_time);
      fillSchedulerKeys();
    }),
    api(runUrl(runId, "ledger", { limit: app.ledgerLimit })).then((res) => {
      if (gen !== app.generation) return;
      addEntries(res.entries || []);
      // the newest `limit` entries came back: there may be older ones
      $("ledger-older").hidden = (res.entries || []).length < app.ledgerLimit;
    }),
    api(runUrl(runId, "markers", { limit: MARKERS_MAX })).then((res) => {
      if (gen === app.generation) addMarks(res.markers || []);
    }),
    api(runUrl(runId, "tune")).then((doc) => fresh(gen, "tune") && tunePanel.update(doc)),
    api(runUrl(runId, "autopilot")).then((doc) => fresh(gen, "autopilot") && autopilotPanel.update(doc)),
    loadKnobs(runId, gen),
    loadMetrics(runId, gen),
  ];
  const results = await Promise.allSettled(jobs);
  for (const r of results) if (r.status === "rejected") toast(`loading ${runLabel(runId)}: ${r.reason.message}`, "bad");
  if (gen !== app.generation) return;
  app.loaded = gen;
  fillImpactMetrics();
  refreshImpacts();
}

/** Whether a loaded tuner or autopilot document may be shown: the load is the page's current
 * one and the WebSocket has not brought a document since (the server pushes every change). */
const fresh = (gen, kind) => gen === app.generation && app.pushed[kind] !== gen;

async function loadAll({ reset = true } = {}) {
  const gen = ++app.generation;
  if (reset) {
    app.data = new Map();
    app.ledgerLimit = app.cfg.ledger_limit || 200;
  }
  const runIds = [app.runId, ...[...app.compare].filter((r) => r !== app.runId)];
  sock.subscribe(runIds);
  await Promise.all([loadPrimary(app.runId, gen, reset), ...runIds.slice(1).map((r) => loadMetrics(r, gen))]);
}

/** The status requests sent (`ask` numbers them), and how many had been sent when the ledger
 * last said the run paused or resumed: an answer to one sent before that says a pause state
 * the ledger has since overtaken (Resume came back as "Resume" for a moment, and a click on it
 * sent another resume). */
let statusAsks = 0;
let pauseSeenAt = 0;

async function askStatus(runId) {
  const ask = ++statusAsks;
  return [await api(runUrl(runId, "status")), ask];
}

function applyStatus(st, ask = statusAsks) {
  if (ask <= pauseSeenAt && app.status) st = { ...st, paused: app.status.paused };
  app.status = st;
  app.serverStale = !!st.stale;
  app.serverStep = st.last_step ?? null;
  if (st.state !== undefined) app.runState = st.state;
  if (st.freeze) setFreeze(st.freeze.mode ?? st.freeze);
  if (st.actuators && Array.isArray(st.actuators) && !app.actuators.length) {
    app.actuators = st.actuators;
    controls.setActuators(app.actuators);
    fillSchedulerKeys();
  }
  renderPending($("pending"), st.pending || [], cancelScheduled);
  app.dirty.ledger = true;
  renderFacts();
}

let statusTimer = null; // the next refreshStatus(), while one is scheduled
function scheduleStatusRefresh(delay = 150) {
  clearTimeout(statusTimer);
  statusTimer = setTimeout(refreshStatus, delay);
}

async function refreshStatus() {
  clearTimeout(statusTimer);
  statusTimer = null;
  const gen = app.generation;
  const runId = app.runId;
  if (runId == null) return;
  try {
    const [st, ask] = await askStatus(runId);
    if (app.offline) serverAnswered();
    if (gen === app.generation && app.gone) runBack();
    else if (gen === app.generation) applyStatus(st, ask);
  } catch (err) {
    // a 404: the server has no such run any more; anything else: the connection pill says it
    if (gen === app.generation && err instanceof ApiError && err.status === 404) runGone();
  }
  if (statusTimer != null) return; // one was scheduled meanwhile: the polling goes on from it
  const every = (app.cfg.ui.status_refresh_sec || 2) * 1000;
  statusTimer = setTimeout(refreshStatus, app.gone ? app.goneDelay : every);
}

/** The page thought its server gone (the WebSocket closed) and an HTTP call got an answer: the
 * server is back. The page says so now and reconnects the WebSocket at once, not when its
 * back-off (up to ui.reconnect_max_delay_sec) runs out. */
function serverAnswered() {
  app.offline = false;
  sock?.reconnectNow(); // its "connecting" state renders the page
  renderFacts();
}

/** The server answered 404 for the run the page shows: its folder was deleted (or moved). The
 * page says so, sends nothing, and asks about it less and less often. */
function runGone() {
  const every = (app.cfg.ui.status_refresh_sec || 2) * 1000;
  app.goneDelay = app.gone ? Math.min(GONE_MAX_MS, app.goneDelay * 2) : Math.min(GONE_MAX_MS, 2 * every);
  if (app.gone) return;
  app.gone = true;
  refreshRuns(); // the picker keeps the run, marked gone
  renderFacts();
}

/** A gone run is on disk again (a trainer started in its folder): everything is loaded anew. */
function runBack() {
  app.gone = false;
  app.goneDelay = 0;
  toast(`${runLabel(app.runId)} is back on disk: reloading it`, "info", 4000);
  refreshRuns();
  loadAll();
  renderFacts();
}

// ----------------------------------------------------------------------------- impact
let impactTimer = null;
function scheduleImpactRefresh(delay = 1000) {
  if (impactTimer) return;
  impactTimer = setTimeout(() => {
    impactTimer = null;
    refreshImpacts();
  }, delay);
}

async function refreshImpacts() {
  const metric = app.impactMetric;
  if (!metric || !markers().length) return;
  const gen = app.generation;
  try {
    // the changes of the entries the page holds (from the oldest on), not every change of a
    // long run
    const since = app.ledger.length ? app.ledger[0].seq : null;
    const res = await api(runUrl(app.runId, "impact", { metric, window: $("impact-window").value || app.cfg.chart.impact_window, ...(since != null ? { since } : {}) }));
    if (gen !== app.generation || metric !== app.impactMetric) return;
    app.impacts = new Map((res.impacts || []).map((i) => [i.seq, i]));
    app.dirty.ledger = true;
  } catch {
    /* shown as "–" */
  }
}

function fillImpactMetrics() {
  const sel = $("impact-metric");
  const names = [...(app.data.get(app.runId)?.series.keys() || [])];
  const key = app.cfg.chart.key_metric;
  const preferred = [key, `train/${key}`, `val/${key}`, "train/loss", "loss", "val/loss"].find((n) => names.includes(n));
  const pick = app.impactMetric && names.includes(app.impactMetric) ? app.impactMetric : preferred || names[0] || null;
  const have = [...sel.options].map((o) => o.value).join("|");
  if (have !== names.join("|")) {
    sel.textContent = "";
    for (const n of names) sel.append(new Option(n, n));
  }
  if (pick) sel.value = pick;
  if (pick !== app.impactMetric) {
    app.impactMetric = pick;
    refreshImpacts();
  }
}

// ----------------------------------------------------------------------------- commands
async function send(cmd, what) {
  try {
    const res = await sendCommand(app.runId, cmd);
    // the run is over: the command waits for the next run in the folder (the server says so)
    if (res.warning) toast(`${what}: ${res.warning}`, "warn", 10000);
    return res.cmd_id;
  } catch (err) {
    const msg = err instanceof ApiError ? err.message : `server unreachable (${err.message})`;
    toast(`${what}: ${msg}`, "bad", 8000);
    throw new Error(msg);
  }
}

const sendActuator = (act, value) =>
  send({ module: act.group, op: "set_params", params: { [act.param_key]: value } }, `set ${act.param_key}`);

/** The run's ledger entry for command `cmdId`, if the page has it: on a loaded machine the run's
 * answer can reach the page (over the WebSocket) before the server's reply to the send did. */
const answerOf = (cmdId) => app.ledger.find((e) => e.cmd_id === cmdId);

async function control(op, params) {
  if (app.runId == null) return null;
  const id = await send({ module: "control", op, params: params || {} }, op).catch(() => null);
  if (id) {
    toast(`${op} sent`, "info", 2500);
    sentControls.set(id, { op, params });
    const early = answerOf(id);
    if (early) answeredControl(early);
  }
  return id;
}

/** The run control commands this page sent, cmd_id → {op, params}, until the ledger answers
 * them: an Undo the run refused (a change of a life before this one) said "sent…" and then
 * nothing, and its button came back for the same refusal. */
const sentControls = new Map();

/** `e` answers a run control command of this page's: say so when the run did not do it. */
function answeredControl(e) {
  const sent = sentControls.get(e.cmd_id);
  if (sent === undefined) return;
  sentControls.delete(e.cmd_id);
  if (!["rejected", "failed", "ignored_freeze"].includes(e.decision)) return;
  toast(`${sent.op}: ${e.decision}: ${e.error || "no reason given"}`, "bad", 10000);
  // (one a freeze ignored can be sent again once the freeze is lifted: its Undo stays)
  if (sent.op === "undo" && sent.params?.cmd_id && e.decision !== "ignored_freeze") app.refusedUndo.set(sent.params.cmd_id, e.error || e.decision);
}

const waiting = new Map(); // cmd_id → the callback that re-enables its header button

/** The ledger has an entry for `cmdId`: the button that sent it works again. */
function answered(cmdId) {
  const done = cmdId != null && waiting.get(cmdId);
  if (done) done();
}

/** A header button's command, one at a time: the button is disabled from the click until the
 * run's ledger answers the command (at most ANSWER_WAIT_MS after the server took it; at once
 * when the send failed), so a double click sends one command, and Pause turns into Resume
 * before it can be pressed again; the second click of a double click never sends (a trainer
 * can answer between the two). `op` is read at the click (Pause or Resume). */
function guarded(btnId, op) {
  return async (ev) => {
    // the second click of a double click (its `detail` counts the clicks) is part of the first
    if (app.inflight.has(btnId) || ev?.detail > 1) return;
    app.inflight.add(btnId);
    $(btnId).disabled = true;
    const release = () => {
      app.inflight.delete(btnId);
      renderFacts();
    };
    const id = await control(typeof op === "function" ? op() : op);
    if (id == null || answerOf(id)) {
      release();
      return;
    }
    const timer = setTimeout(() => done(), ANSWER_WAIT_MS);
    const done = () => {
      clearTimeout(timer);
      waiting.delete(id);
      release();
    };
    waiting.set(id, done);
  };
}

function undoEntry(entry, btn) {
  btn.disabled = true;
  btn.textContent = "sent…";
  control("undo", { cmd_id: entry.cmd_id });
}

/** Accept or reject a tuner proposal: the command `hotcb tune accept|reject ID` writes. */
const decideProposal = (op, p) => send({ module: "tune", op, params: { id: p.id } }, `tune ${op} ${p.id}`);

/** Accept or reject an autopilot proposal (the server runs `hotcb autopilot accept|reject`). */
async function decideAutopilot(p, decision) {
  const url = runUrl(app.runId, `autopilot/proposals/${encodeURIComponent(p.id)}`);
  try {
    const rec = await api(url, { method: "POST", body: { decision } });
    toast(`${p.id} ${rec.state}`, "info", 2500);
    return rec;
  } catch (err) {
    const msg = err instanceof ApiError ? err.message : `server unreachable (${err.message})`;
    toast(`autopilot ${decision} ${p.id}: ${msg}`, "bad", 8000);
    throw new Error(msg);
  }
}

/** Switch a rule of the autopilot this server runs on or off. */
async function setAutopilotRule(rule, enabled) {
  const url = runUrl(app.runId, `autopilot/rules/${encodeURIComponent(rule.id)}`);
  try {
    return await api(url, { method: "POST", body: { enabled } });
  } catch (err) {
    const msg = err instanceof ApiError ? err.message : `server unreachable (${err.message})`;
    toast(`rule ${rule.id}: ${msg}`, "bad", 8000);
    throw new Error(msg);
  }
}

function cancelScheduled(p, btn) {
  btn.disabled = true;
  btn.textContent = "sent…";
  control("cancel", { cmd_id: p.cmd_id });
}

function setFreeze(mode) {
  if (typeof mode === "string") $("freeze-select").value = mode;
  app.freezeMode = mode;
  renderFacts();
}

// ----------------------------------------------------------------------------- scheduler
function fillSchedulerKeys() {
  const sel = $("sched-key");
  const keep = sel.value;
  const keys = app.actuators.map((a) => a.param_key).join("|");
  if ([...sel.options].map((o) => o.value).join("|") === keys) {
    updateSchedPlaceholder(); // same parameters: leave the select alone (it may be open)
    return;
  }
  sel.textContent = "";
  for (const a of app.actuators) sel.append(new Option(`${a.param_key} (${a.group})`, a.param_key));
  if (keep) sel.value = keep;
  updateSchedPlaceholder();
}

/** Default "at step" for the scheduler: a round step a little ahead of the run. */
function suggestedStep() {
  return stepAhead(currentStep() ?? 0);
}

function updateSchedPlaceholder() {
  const a = app.actuators.find((x) => x.param_key === $("sched-key").value);
  $("sched-value").placeholder = a ? `now ${fmtValue(a.current)}` : "value";
}

async function submitSchedule(ev) {
  ev.preventDefault();
  const a = app.actuators.find((x) => x.param_key === $("sched-key").value);
  if (!a) return;
  let value;
  try {
    value = parseFor(a, $("sched-value").value);
  } catch (err) {
    toast(err.message, "bad");
    return;
  }
  const outside = boundsError(a, value);
  if (outside) {
    toast(outside, "bad", 8000);
    return;
  }
  const typed = $("sched-step").value.trim();
  const atStep = typed === "" ? suggestedStep() : Number(typed);
  if (!Number.isInteger(atStep) || atStep < 0) {
    toast("at step must be a whole number", "bad");
    return;
  }
  // the kernel applies a command whose step has passed at once: not what "queue" promises
  const passed = pastStepError(atStep, currentStep(), a.param_key);
  if (passed) {
    toast(passed, "bad", 8000);
    return;
  }
  const big = bigChange(a.current, value);
  if (big && !window.confirm(`Schedule ${a.param_key} = ${fmtValue(value)} (now ${fmtValue(a.current)}, ${big})?`)) return;
  const id = await send(
    { module: a.group, op: "set_params", params: { [a.param_key]: value }, at_step: atStep },
    "schedule",
  ).catch(() => null);
  if (id) {
    toast(`${a.param_key} = ${fmtValue(value)} queued for step ${atStep}`, "info", 3000);
    $("sched-value").value = "";
  }
}

// ----------------------------------------------------------------------------- header facts
function isPaused() {
  return !!app.status?.paused;
}

/** The run is over (see runIsOver): nothing will act on commands any more. */
function isOver() {
  return runIsOver(app.runState);
}

function noRunsText() {
  // a server that refused this page's token listed no runs: that says nothing of its folder
  if (app.authFailed) return `${AUTH_TEXT}; its runs show here once the browser holds the token`;
  const dir = app.cfg.dir || "the served folder";
  return `no runs yet under ${dir}: start a script with HotKernel(run_dir=…) inside it`;
}

/** What the chart area says while no run is shown. */
function noChartsText() {
  if (app.authFailed) return `${AUTH_TEXT}. The runs show here once the browser holds the token.`;
  if (app.waitingFor != null) return `Waiting for run ${app.waitingFor} to start: it appears here by itself.`;
  return "No runs yet: the first run started under the served folder appears here by itself.";
}

/** The run's step now: the newest of the charted metrics and the server's (which counts the
 * kernel's heartbeat). Both follow the run back when it resumes from an earlier checkpoint. */
function currentStep() {
  const rd = app.data.get(app.runId);
  const steps = [rd?.lastStep, app.serverStep, app.status?.last_metrics?.step].filter((s) => typeof s === "number");
  return steps.length ? Math.max(...steps) : null;
}

const AUTH_TEXT = "401: this server needs a token: open the URL it printed (…/?token=…)";
// a token given and refused: a mistyped one, or the server restarted with a new one
const AUTH_REFUSED_TEXT = "401: the server refused this page's token (a mistyped one, or the server restarted with a new token): open the URL it printed (…/?token=…)";
const GONE_TITLE = "the run's folder is no longer on disk (deleted or moved): nothing can be sent to it";
const STEER_BUTTONS = ["btn-pause", "btn-checkpoint", "btn-evaluate", "btn-stop", "sched-submit"];

/** A run button's tooltip: why it is disabled, else its own (kept in data-title). */
function explain(btn, why) {
  if (btn.dataset.title === undefined) btn.dataset.title = btn.title;
  btn.title = why || btn.dataset.title;
}

function renderFacts() {
  const noRun = app.runId == null;
  const rd = app.data.get(app.runId);
  const step = currentStep();
  $("step").textContent = step == null ? "–" : step;
  const chip = $("state-chip");
  // the server has no such run any more (its folder was deleted): nothing of it is live
  const gone = !noRun && app.gone;
  const stale = !noRun && !gone && isStale();
  const over = !noRun && !gone && isOver();
  const paused = !noRun && !over && !gone && isPaused();
  // the server is gone (a launch's dashboard stops with its training): the state is a memory
  const offline = !noRun && app.offline;
  const freeze = app.freezeMode && app.freezeMode !== "off" && !gone ? ` · freeze ${app.freezeMode}` : "";
  const { text: state, cls, seen } = runChip({ noRun, over, paused, stale, offline, gone, runState: app.runState, step });
  chip.textContent = noRun && app.authFailed ? "401 · needs the token" : state + freeze;
  chip.title = noRun ? noRunsText() : gone ? GONE_TITLE : state + freeze;
  chip.className = `chip ${cls}`;
  // nothing to steer: no run at all, one that is over or gone, or no server to send to
  const why = offline ? "the dashboard's server is unreachable: nothing can be sent" : gone ? GONE_TITLE : "";
  for (const id of STEER_BUTTONS) {
    // (Pause or Resume: not before the page knows which)
    $(id).disabled = noRun || over || offline || gone || app.inflight.has(id) || (id === "btn-pause" && !app.status);
    explain($(id), why);
  }
  // a ledger's Undo and Cancel send commands too: nothing would act on them either
  const locked = noRun || over || offline || gone ? why || `the run is over (${app.runState}): nothing would apply it` : null;
  if (app.ledgerLocked !== locked) {
    app.ledgerLocked = locked;
    renderLedger();
  }
  tunePanel.setOver(over || gone);
  autopilotPanel.setOver(over || gone);
  controls.setOver(over || gone, gone);
  knobsPanel.setOver(over);
  // the recipe of a run that is over is still useful; a gone run's is gone with it
  $("recipe-link").disabled = noRun || gone;
  // no kernel reads a freeze mode once the run is over: disabled like Stop (and while offline)
  const freezeSel = $("freeze-select");
  freezeSel.disabled = noRun || over || offline || gone;
  const freezeWhy = over ? `the run is over (${app.runState}): nothing would read a freeze mode` : why;
  if (freezeWhy) freezeSel.title = freezeWhy;
  else freezeSel.removeAttribute("title"); // the label's tooltip says what the modes do
  $("btn-pause").textContent = paused ? "Resume" : "Pause";
  $("btn-pause").classList.toggle("primary", paused);
  const nb = $("norun-banner");
  nb.hidden = !noRun;
  if (noRun) {
    nb.textContent = noRunsText();
    $("charts-empty").textContent = noChartsText();
  }
  const pb = $("paused-banner");
  pb.hidden = !paused || offline;
  if (paused) pb.textContent = `Paused at step ${step ?? "?"}: training waits at its next safe point until you press Resume.`;
  const sb = $("stale-banner");
  sb.hidden = !offline && !gone && (!stale || paused);
  if (gone && !offline) {
    sb.textContent =
      `The folder of ${runLabel(app.runId)} is no longer on disk (deleted or moved); it was last seen at step ${step ?? "–"}. ` +
      `Nothing can be sent to it. The page checks again every ${Math.round(app.goneDelay / 1000)} s and ` +
      "shows the run again if a trainer starts in its folder.";
  } else if (offline) {
    sb.textContent = app.authFailed
      ? `The dashboard's server refused this page (${AUTH_TEXT}); the page reconnects by itself once the browser has the new token.`
      : `Disconnected from the dashboard's server: ${runLabel(app.runId)} was last seen ${seen}. ` +
        "The page reconnects by itself when the server is back (hotcb launch --serve stops it when training ends).";
  } else if (stale && !paused) {
    const last = rd?.lastRecv ? (Date.now() - rd.lastRecv) / 1000 : null;
    const when = last != null ? ` for ${ago(last)}` : "";
    const why = over
      ? `the run is over (${app.runState}).`
      : "the run may have finished, crashed or stopped logging; the page updates again as soon as it writes.";
    sb.textContent = `No new metrics from ${runLabel(app.runId)}${when} (last step ${step ?? "–"}): ${why}`;
  }
}

function isStale() {
  if (app.gone) return false; // the chip says gone; nothing polls a run that is not there
  const rd = app.data.get(app.runId);
  const limit = (app.cfg.ui.stale_after_sec || 30) * 1000;
  // alive when the server saw a sign of life (a metric, a ledger entry or the kernel's
  // heartbeat) or this page received metrics lately: a run that logs no metrics is not stale.
  // Without a server (app.offline) this is what the page saw last; the chip says so.
  if (!app.serverStale) return false;
  if (rd && rd.lastRecv) return Date.now() - rd.lastRecv > limit;
  return true;
}

// ----------------------------------------------------------------------------- runs
async function refreshRuns() {
  try {
    const { runs } = await api("/api/runs");
    app.runs = runs || [];
  } catch {
    return;
  }
  const sel = $("run-select");
  // branches right under their parent, indented, "branch of <parent> at step S"
  const opts = runTree(app.runs).map(({ run: r, depth, label }) => {
    const text = `${"\u00a0\u00a0\u00a0".repeat(depth)}${depth ? "↳ " : ""}${runPickerText(r)}${label ? ` (${label})` : ""}`;
    return { text, value: r.run_id, depth };
  });
  // the run shown, once its folder is gone, stays in the picker (it is not listed any more)
  const shown = app.runId != null && !app.runs.some((r) => r.run_id === app.runId);
  if (shown) opts.push({ text: `${runPickerText({ run_id: app.runId })} (no longer on disk)`, value: app.runId, depth: 0 });
  // a gone run listed again: ask about it now rather than at the next (backed-off) poll
  if (app.gone && !shown) scheduleStatusRefresh(0);
  if ([...sel.options].map((o) => o.value + o.text).join("|") !== opts.map((o) => o.value + o.text).join("|")) {
    sel.textContent = "";
    for (const o of opts) {
      const opt = new Option(o.text, o.value);
      opt.dataset.depth = String(o.depth);
      sel.append(opt);
    }
  }
  if (app.runId != null) sel.value = app.runId;
  renderCompareList();
}

/** A compare list's row: a checkbox that adds `runId` to the charts or takes it off. */
function compareItem(runId, text, depth) {
  const lab = document.createElement("label");
  lab.className = "compare-item";
  lab.dataset.depth = String(depth);
  if (depth) lab.style.paddingLeft = `${depth * 1.2}em`;
  const cb = document.createElement("input");
  cb.type = "checkbox";
  cb.value = runId;
  cb.checked = app.compare.has(runId);
  cb.addEventListener("change", () => {
    if (cb.checked) app.compare.add(runId);
    else app.compare.delete(runId);
    setUrl();
    onCompareChange(runId, cb.checked);
  });
  lab.append(cb, document.createTextNode(` ${text}`));
  return lab;
}

function renderCompareList() {
  const box = $("compare-list");
  box.textContent = "";
  const others = runTree(app.runs).filter((t) => t.run.run_id !== app.runId);
  // a compared run whose folder went: still listed, so its curves can be taken off the charts
  const listed = new Set(others.map((t) => t.run.run_id));
  const gone = [...app.compare].filter((id) => id !== app.runId && !listed.has(id));
  if (!others.length && !gone.length) {
    box.innerHTML = '<p class="muted">no other runs under the served folder</p>';
  }
  for (const id of gone) {
    const lab = compareItem(id, `${id} (no longer on disk)`, 0);
    lab.classList.add("compare-gone");
    box.append(lab);
  }
  for (const { run: r, depth, label } of others) {
    const lab = compareItem(r.run_id, runListName(r), depth);
    const stepEl = document.createElement("span"); // filled by renderCompareSteps
    stepEl.className = "muted small compare-step";
    stepEl.dataset.run = r.run_id;
    lab.append(stepEl);
    if (label) {
      const s = document.createElement("span");
      s.className = "muted small branch-label";
      s.textContent = ` ${label}`;
      lab.append(s);
    }
    box.append(lab);
  }
  $("compare-count").textContent = app.compare.size ? `(${app.compare.size})` : "";
  renderCompareSteps();
}

/** The compare list's steps: live for the runs the page watches (each metric record and
 * status the server pushes), the runs list's (polled every 10 s) for the others. */
function renderCompareSteps() {
  for (const s of $("compare-list").querySelectorAll(".compare-step")) {
    const run = app.runs.find((r) => r.run_id === s.dataset.run);
    const watched = s.dataset.run === app.runId || app.compare.has(s.dataset.run);
    const step = run ? shownStep(run, app.liveSteps.get(s.dataset.run), watched) : null;
    const text = step == null ? "" : ` step ${step}`;
    if (s.textContent !== text) s.textContent = text;
  }
}

function onCompareChange(runId, on) {
  sock.subscribe([app.runId, ...app.compare]);
  $("compare-count").textContent = app.compare.size ? `(${app.compare.size})` : "";
  if (on) loadMetrics(runId, app.generation);
  else app.data.delete(runId);
  app.dirty.charts = true;
}

function pickInitialRun() {
  const wanted = query.get("run");
  if (wanted != null && app.runs.some((r) => r.run_id === wanted)) return wanted;
  if (wanted != null) return wanted; // may not be listed yet (a run that is just starting)
  const sorted = [...app.runs].sort((a, b) => (b.last_wall_time || 0) - (a.last_wall_time || 0));
  return sorted[0]?.run_id ?? null;
}

// ----------------------------------------------------------------------------- live socket
function onMessage(msg) {
  switch (msg.type) {
    case "metrics": {
      const last = lastRecordStep(msg.records);
      if (last != null) app.liveSteps.set(msg.run, last);
      const rd = app.data.get(msg.run);
      if (!rd) return;
      rd.lastRecv = Date.now();
      if (rd.loading) rd.buffer.push(...(msg.records || []));
      else appendRecords(rd, msg.records || []);
      app.dirty.charts = true;
      break;
    }
    case "ledger":
      if (msg.run === app.runId) {
        addEntries(msg.entries || [], true);
        if ((msg.entries || []).some((e) => e.changes && e.decision === "applied")) scheduleKnobs();
      }
      break;
    case "actuators":
      if (msg.run === app.runId && msg.doc) {
        app.actuators = msg.doc.actuators || [];
        controls.setActuators(app.actuators, msg.doc.wall_time);
        fillSchedulerKeys();
        scheduleKnobs();
      }
      break;
    case "tune":
      if (msg.run !== app.runId) break;
      app.pushed.tune = app.generation;
      tunePanel.update(msg.doc);
      break;
    case "autopilot":
      if (msg.run !== app.runId) break;
      app.pushed.autopilot = app.generation;
      autopilotPanel.update(msg.doc);
      break;
    case "error":
      // "no run 'r' under …": a (re)subscription to a run whose folder is gone
      if (msg.run != null && msg.run === app.runId) scheduleStatusRefresh(0);
      break;
    case "status":
      if (typeof msg.last_step === "number") app.liveSteps.set(msg.run, msg.last_step);
      if (msg.run === app.runId) {
        app.serverStale = !!msg.stale;
        app.serverStep = msg.last_step ?? app.serverStep;
        if (msg.state !== undefined) app.runState = msg.state;
      }
      break;
    default:
      break;
  }
}

function onSocketState(state, info) {
  const pill = $("conn");
  pill.className = `conn ${state}`;
  const label = pill.querySelector("span");
  if (state === "open") {
    const wasRefused = app.authFailed;
    app.offline = false;
    app.authFailed = false; // the browser holds a token the server takes
    document.body.classList.remove("auth-failed");
    authToast?.remove(); // its advice is followed: the page has a connection again
    authToast = null;
    label.textContent = "live";
    if (info.reconnect) {
      // the server restarted (or the network blinked): history may have moved on; reload it
      toast("reconnected: reloading history", "info", 2500);
      refreshRuns().then(() => app.runId != null && loadAll({ reset: false }));
    } else if (wasRefused) {
      pickUpRuns(); // the token came (another tab opened the printed URL): the runs, now
    }
  } else if (state === "closed") {
    app.offline = true;
    clearTimeout(knobsTimer); // nothing to ask while the server is away (the status poll notices its return)
    knobsTimer = null;
    label.textContent = `${app.authFailed ? "401" : "offline"} · retry in ${Math.round(info.delay / 100) / 10}s`;
    checkAuth();
  } else {
    label.textContent = "connecting…";
  }
  renderFacts();
}

/** A refused WebSocket says nothing about why: ask the REST API, whose 401 says it (the server
 * came back with another token). api() reports a 401 to authNeeded(). */
let authCheck = null;
function checkAuth() {
  authCheck ??= api("/api/config")
    .then(() => {
      app.authFailed = false;
      document.body.classList.remove("auth-failed");
    })
    .catch(() => {
      /* a 401 went to authNeeded(); no answer at all: the server is down */
    })
    .finally(() => {
      authCheck = null;
      renderFacts();
    });
}

let authToast = null;
/** The server refused the page's token (401), on the first load or after a restart with a new
 * token: say so once, until a connection works again. */
function authNeeded(presented = false) {
  if (app.authFailed) return;
  app.authFailed = true;
  // the panels have nothing of the run: dimmed, they do not read as "not started yet"
  document.body.classList.add("auth-failed");
  // longer than other messages (a minute, or until a connection works again): it says what to
  // do, and that takes opening another URL
  authToast = toast(presented ? AUTH_REFUSED_TEXT : AUTH_TEXT, "bad", 60000);
  const label = $("conn").querySelector("span");
  label.textContent = label.textContent.replace(/^offline/, "401");
  renderFacts();
}

// ----------------------------------------------------------------------------- tooltips
function showTip(m, ev) {
  const tip = $("tip");
  if (!m) {
    tip.hidden = true;
    return;
  }
  const e = m.entry;
  const { what, lines } = describeEntry(e);
  tip.innerHTML = "";
  const head = document.createElement("div");
  head.className = "tip-head";
  head.textContent = `step ${e.step} · ${e.source || "?"} · ${what}`;
  tip.append(head);
  for (const l of lines) {
    const d = document.createElement("div");
    d.className = "tip-line";
    d.textContent = l;
    tip.append(d);
  }
  if (typeof e.reason === "string" && e.reason) {
    const d = document.createElement("div");
    d.className = "tip-reason";
    d.textContent = e.reason;
    tip.append(d);
  }
  if (m.nearby) {
    const d = document.createElement("div");
    d.className = "tip-line muted";
    d.textContent = `and ${m.nearby} earlier change${m.nearby > 1 ? "s" : ""} within a few pixels: zoom in (drag) to tell them apart`;
    tip.append(d);
  }
  const own = impactRows(markers().map((x) => x.entry), actuatorKeys()).get(e.seq) === e.seq;
  const imp = own ? app.impacts.get(e.seq) : null;
  if (imp && imp.before?.mean != null && imp.after?.mean != null) {
    const d = document.createElement("div");
    d.className = "tip-line muted";
    d.textContent = `${app.impactMetric}: ${fmtNum(imp.before.mean)} → ${fmtNum(imp.after.mean)}`;
    tip.append(d);
  }
  tip.hidden = false;
  const x = Math.min(window.innerWidth - tip.offsetWidth - 8, ev.clientX + 12);
  const y = Math.min(window.innerHeight - tip.offsetHeight - 8, ev.clientY + 12);
  tip.style.left = `${x}px`;
  tip.style.top = `${y}px`;
}

function focusEntry(m) {
  app.highlightSeq = m.seq;
  app.dirty.ledger = true;
  renderLedger();
  const row = document.querySelector(`#ledger-body tr[data-seq="${m.seq}"]`);
  if (row) row.scrollIntoView({ behavior: "smooth", block: "center" });
}

// ----------------------------------------------------------------------------- render loop
const charts = new Charts($("charts"), $("charts-empty"), {
  primary: () => app.runId,
  onMarkerHover: showTip,
  onMarkerClick: focusEntry,
});
const controls = new Controls($("controls"), $("controls-note"), sendActuator);
const knobsPanel = new KnobsPanel($("knobs-card"));
let knobsTimer = null;

/** The knobs' values over the run (GET …/knobs), for the Knobs panel. */
async function loadKnobs(runId, gen) {
  const doc = await api(runUrl(runId, "knobs"));
  if (gen === app.generation) knobsPanel.update(doc);
}

/** Fetch the knobs again soon (after a change or a new actuators file; coalesced). */
function scheduleKnobs(delay = 500) {
  if (knobsTimer != null || app.runId == null) return;
  knobsTimer = setTimeout(() => {
    knobsTimer = null;
    if (app.runId != null) loadKnobs(app.runId, app.generation).catch(() => {});
  }, delay);
}

const tunePanel = new TunePanel($("tune-card"), { decide: decideProposal, answerOf });
const autopilotPanel = new AutopilotPanel($("autopilot-card"), { decide: decideAutopilot, setRule: setAutopilotRule });
const ledgerTable = new LedgerTable($("ledger-body"), $("ledger-count"), { undo: undoEntry, cancel: cancelScheduled });

function renderCharts() {
  const branch = branchOf(app.runId);
  const runs = [app.runId, ...app.compare]
    .filter((r) => app.data.has(r))
    .map((r) => {
      const rd = app.data.get(r);
      rd.label = runLabel(r);
      // a branch's parent is drawn from the branch point on: before it the two are one run
      if (r !== app.runId && branch && r === branch.parent && branch.step != null) {
        return { ...rd, label: `${rd.label} (parent)`, series: seriesFrom(rd.series, branch.step) };
      }
      return rd;
    });
  charts.render(runs, markers());
  const names = app.data.get(app.runId)?.series.size || 0;
  if (names !== $("impact-metric").options.length) fillImpactMetrics();
}

async function loadOlderEntries() {
  app.ledgerLimit = Math.min(app.ledgerLimit * 4, app.cfg.ledger_max_entries || 50000);
  const gen = app.generation;
  try {
    const res = await api(runUrl(app.runId, "ledger", { limit: app.ledgerLimit }));
    if (gen !== app.generation) return;
    addEntries(res.entries || []);
    $("ledger-older").hidden = (res.entries || []).length < app.ledgerLimit;
  } catch (err) {
    toast(`ledger: ${err.message}`, "bad");
  }
}

function actuatorKeys() {
  return new Set(app.actuators.map((a) => a.param_key));
}

function renderLedger() {
  ledgerTable.render(app.ledger, {
    maxRows: Math.max(300, app.ledgerLimit || 0),
    impacts: app.impacts,
    metric: app.impactMetric,
    undone: app.undone,
    refused: app.refusedUndo,
    pendingIds: pendingIds(),
    highlightSeq: app.highlightSeq,
    actuatorKeys: actuatorKeys(),
    total: app.status?.ledger_entries ?? null,
    locked: app.ledgerLocked,
    window: Number($("impact-window").value) || app.cfg.chart.impact_window,
  });
}

function tick() {
  $("sched-step").placeholder = String(suggestedStep());
  if (app.dirty.charts) {
    app.dirty.charts = false;
    renderCharts();
  }
  if (app.dirty.ledger) {
    app.dirty.ledger = false;
    renderLedger();
  }
  renderFacts();
  renderCompareSteps();
}

// ----------------------------------------------------------------------------- wiring
let sock;

function wire() {
  $("run-select").addEventListener("change", (ev) => {
    app.runId = ev.target.value;
    app.compare.delete(app.runId);
    compareWithParent();
    app.actuators = [];
    app.status = null;
    app.runState = null;
    app.gone = false;
    scheduleStatusRefresh((app.cfg.ui.status_refresh_sec || 2) * 1000); // its pace (a gone run's was slower)
    for (const done of [...waiting.values()]) done();
    controls.reset();
    setUrl();
    renderCompareList();
    loadAll();
  });
  $("btn-pause").addEventListener("click", guarded("btn-pause", () => (isPaused() ? "resume" : "pause")));
  $("btn-checkpoint").addEventListener("click", guarded("btn-checkpoint", "checkpoint"));
  $("btn-evaluate").addEventListener("click", guarded("btn-evaluate", "evaluate"));
  $("btn-stop").addEventListener("click", () => {
    if (window.confirm(`Stop ${runLabel(app.runId)} at its next safe point?`)) control("stop");
  });
  $("freeze-select").addEventListener("change", async (ev) => {
    const mode = ev.target.value;
    try {
      await api(runUrl(app.runId, "freeze"), { method: "POST", body: { mode } });
      toast(`freeze ${mode} sent`, "info", 2500);
    } catch (err) {
      toast(`freeze: ${err.message}`, "bad", 8000);
    }
    if (app.freezeMode) ev.target.value = app.freezeMode; // shows the applied mode until the ledger confirms
  });
  $("recipe-link").addEventListener("click", async (ev) => {
    ev.preventDefault();
    try {
      const res = await api(runUrl(app.runId, "recipe"), { raw: true });
      const blob = await res.blob();
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = "hotcb.recipe.jsonl";
      document.body.append(a);
      a.click();
      setTimeout(() => {
        URL.revokeObjectURL(a.href);
        a.remove();
      }, 1000);
    } catch (err) {
      toast(`recipe: ${err.message}`, "bad");
    }
  });
  $("sched-form").addEventListener("submit", submitSchedule);
  $("sched-key").addEventListener("change", updateSchedPlaceholder);
  $("impact-metric").addEventListener("change", (ev) => {
    app.impactMetric = ev.target.value;
    app.impacts = new Map();
    app.dirty.ledger = true;
    refreshImpacts();
  });
  $("impact-window").addEventListener("change", () => refreshImpacts());
  $("ledger-older").addEventListener("click", loadOlderEntries);
  $("smoothing").addEventListener("change", (ev) => {
    charts.opts.smoothing = Number(ev.target.value);
    app.dirty.charts = true;
  });
  document.addEventListener("scroll", () => showTip(null), { passive: true });
  // a marker redrawn under the pointer (a live chart) is a new element: the old one's
  // mouseleave never comes, and the tooltip stayed up wherever the pointer went
  document.addEventListener("pointermove", (ev) => {
    if (!$("tip").hidden && !ev.target?.closest?.(".marker")) showTip(null);
  }, { passive: true });
}

async function main() {
  onUnauthorized(authNeeded);
  try {
    const cfg = await api("/api/config");
    app.cfg = {
      ...DEFAULT_CFG,
      ...cfg,
      chart: { ...DEFAULT_CFG.chart, ...(cfg.chart || {}) },
      ui: { ...DEFAULT_CFG.ui, ...(cfg.ui || {}) },
    };
  } catch {
    /* a 401 went to authNeeded(); otherwise the defaults serve */
  }
  charts.opts.logDefault = app.cfg.chart.log_scale;
  charts.opts.smoothing = app.cfg.chart.smoothing;
  const smooth = $("smoothing");
  if (app.cfg.chart.smoothing && ![...smooth.options].some((o) => Number(o.value) === app.cfg.chart.smoothing)) {
    smooth.append(new Option(String(app.cfg.chart.smoothing), String(app.cfg.chart.smoothing)));
  }
  smooth.value = String(app.cfg.chart.smoothing || 0);
  charts.opts.groups = app.cfg.chart.groups;
  $("impact-window").value = app.cfg.chart.impact_window;
  for (const c of (query.get("compare") || "").split(",").filter(Boolean)) app.compare.add(c);
  sock = new LiveSocket({
    onMessage,
    onState: onSocketState,
    delayMs: app.cfg.ui.reconnect_delay_sec * 1000,
    maxDelayMs: app.cfg.ui.reconnect_max_delay_sec * 1000,
  });
  wire();
  await refreshRuns();
  app.runId = pickInitialRun();
  // a run named in the address that does not exist yet (its trainer is starting): waited for,
  // with no run selected meanwhile (nothing asks the server about a run it does not have)
  app.waitingFor = app.runId != null && !listed(app.runId) ? app.runId : null;
  if (app.waitingFor != null) app.runId = null;
  if (app.waitingFor != null) {
    $("charts-empty").textContent = noChartsText();
    setUrl();
    renderFacts();
  } else if (app.runId == null) {
    $("charts-empty").textContent = noChartsText();
    renderFacts();
  } else {
    app.compare.delete(app.runId);
    if (!query.has("compare")) compareWithParent();
    $("run-select").value = app.runId;
    setUrl();
    renderCompareList();
    sock.subscribe([app.runId, ...app.compare]);
    loadAll();
    scheduleStatusRefresh(2000);
  }
  sock.connect();
  setInterval(tick, app.cfg.ui.chart_refresh_ms || 250);
  setInterval(pickUpRuns, 10000);
  // neither while the run is gone nor while the server is (the status poll notices its return)
  setInterval(() => {
    if (!isStale() && !app.gone && !app.offline) scheduleImpactRefresh(0);
  }, 5000);
  setInterval(() => autopilotPanel.tick(), 5000);
  setInterval(() => {
    if (!isStale() && !app.gone && !app.offline) scheduleKnobs(0); // the lines reach the run's last step
  }, 5000);
}

const listed = (id) => app.runs.some((r) => r.run_id === id);

/** The runs list again; the run the page waits for (or the first, when it shows none) is
 * shown once it is listed. */
async function pickUpRuns() {
  const had = app.runId;
  await refreshRuns();
  const wanted = app.waitingFor;
  if (wanted != null ? listed(wanted) : had == null && app.runs.length) {
    app.runId = wanted ?? pickInitialRun();
    app.waitingFor = null;
    app.compare.delete(app.runId);
    if (!query.has("compare")) compareWithParent();
    $("charts-empty").textContent = "Waiting for metrics…";
    $("run-select").value = app.runId;
    renderCompareList();
    setUrl();
    loadAll();
    scheduleStatusRefresh();
  }
}

// A hook for tests and curious users: what the page currently shows.
window.hotcb = {
  app,
  charts, // analytics.js draws the forecast over the key metric's chart (setForecast)
  debug() {
    return {
      run: app.runId,
      waitingFor: app.waitingFor,
      compare: [...app.compare],
      connected: !!sock?.connected,
      offline: app.offline,
      authFailed: app.authFailed,
      gone: app.gone,
      loaded: app.loaded === app.generation,
      goneDelay: app.gone ? app.goneDelay : null,
      inflight: [...app.inflight],
      chip: $("state-chip").textContent,
      stepShown: $("step").textContent,
      step: app.data.get(app.runId)?.lastStep ?? null,
      stale: isStale(),
      paused: isPaused(),
      state: app.runState,
      over: isOver(),
      charts: charts.debug(),
      markers: markers().map((m) => ({ seq: m.seq, step: m.step, source: m.entry.source, color: m.color, changes: m.entry.changes })),
      ledger: app.ledger.length,
      controls: controls.debug(),
      tune: tunePanel.debug(),
      autopilot: autopilotPanel.debug(),
      knobs: knobsPanel.debug(),
      pending: app.status?.pending || [],
      impactMetric: app.impactMetric,
      impacts: app.impacts.size,
    };
  },
};

main();
