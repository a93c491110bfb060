// The Autopilot panel: the rule autopilot of the run (docs/autopilot.md), read from its files
// by the server (GET …/autopilot when a run loads, then "autopilot" messages over the WebSocket
// whenever they change): its mode and key metric, its rules with on/off switches, what it
// detected and did (with the evidence), and its pending proposals with Accept and Reject. With
// the LLM autopilot (modes ai_suggest / ai_auto): the model, its calls and spend, a fallback to
// the rules, and the model's reasoning beside each of its proposals and decisions (always as
// text: a reply is the model's words, never markup).
// Pure helpers first (tests/js runs them under node).
import { fmtNum } from "./charts.js";
import { ago, fillPart } from "./lib.js";
import { el, fmtValue } from "./panels.js";

/** How to start an autopilot, as the off line shows it. */
export const START_COMMAND = "hotcb --dir RUN autopilot --mode suggest";
export const SERVE_COMMAND = "hotcb serve --autopilot suggest";
/** The server's answer to a rule switch when the autopilot runs elsewhere (or nowhere). */
export const NOT_HERE = "the autopilot does not run in this server; use hotcb autopilot with a rules file";

/** An autopilot outside this server whose last round is older than this is shown as stopped. */
export const STOPPED_AFTER_SEC = 30;

const KINDS = {
  detection: "detected",
  action: "acted",
  guard: "guard",
  skipped: "skipped",
  hold: "hold",
  ai_reply: "AI reply",
  fallback: "fallback",
  decision: "decided",
};

const MODE_TITLE =
  "autopilot mode: suggest proposes, auto applies high- and medium-confidence actions, off only reads; " +
  "ai_suggest / ai_auto: an LLM proposes / applies, the rules its sensors";

/** Whether the panel is one line: no autopilot ever ran on the run and none runs here. */
export const isOff = (doc) => !doc || ((doc.mode || "off") === "off" && !doc.ran && !doc.in_server);

/** A rule's metric in words: `key` is the key metric, `train` the training loss. */
export function metricName(metric, keyMetric) {
  if (metric === "key" || metric == null) return keyMetric ? `${keyMetric} (key)` : "the key metric";
  if (metric === "train") return "the training loss";
  return String(metric);
}

/** "lr_mult(factor=0.5)" from `{"name": "lr_mult", "params": {"factor": 0.5}}` (a proposal's
 * action) or `{"action": "lr_mult", "params": …}` (a rule's `then`). */
export function fmtAction(a) {
  if (!a || typeof a !== "object") return "–";
  const name = a.name ?? a.action ?? "?";
  const args = Object.entries(a.params || {})
    .map(([k, v]) => `${k}=${fmtValue(v)}`)
    .join(", ");
  return `${name}(${args})`;
}

/** "plateau on val_loss (key) → lr_mult(factor=0.5)". */
export function ruleLine(rule, keyMetric) {
  const when = rule.when || {};
  return `${when.detector ?? "?"} on ${metricName(when.metric, keyMetric)} → ${fmtAction(rule.then)}`;
}

/** The title of a rule's switch: what it does, or why it cannot be used here. */
export function switchTitle(rule, doc) {
  if (!doc.in_server) return NOT_HERE;
  if (rule.enabled_in_file === false) return `${rule.id} is off in its rules file (enabled: false); switch it on there`;
  return rule.enabled ? `switch ${rule.id} off` : `switch ${rule.id} on`;
}

/** "$0.0012": an amount spent or left (four decimals: a call costs fractions of a cent). */
export function usd(x) {
  return typeof x === "number" && Number.isFinite(x) ? `$${x.toFixed(4)}` : "$?";
}

/** "$1.00": a budget (two decimals, more only when it has them). */
export function budgetUsd(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) return "$?";
  const short = x.toFixed(2);
  return Math.abs(Number(short) - x) < 1e-9 ? `$${short}` : `$${x.toFixed(4)}`;
}

/** "$0.0012 spent of $1.00, $0.9988 left" from the LLM policy's state (`doc.ai`). */
export function aiCost(ai) {
  const spent = typeof ai.spent_usd === "number" ? ai.spent_usd : 0;
  const left = typeof ai.left_usd === "number" ? ai.left_usd
    : typeof ai.budget_usd === "number" ? Math.max(0, ai.budget_usd - spent) : null;
  return `${usd(spent)} spent of ${budgetUsd(ai.budget_usd)}, ${usd(left)} left`;
}

/** What the LLM line says, as text (`doc.ai`: the policy's model, base URL, calls, spend,
 * budget, failures, fallback; null when no LLM ever ran on the run). */
export function aiFacts(ai) {
  if (!ai || typeof ai !== "object") return null;
  const calls = Number(ai.calls) || 0;
  const failures = Number(ai.failures) || 0;
  return {
    model: ai.model ?? "?",
    baseUrl: ai.base_url ?? "?",
    calls: `${calls} call${calls === 1 ? "" : "s"}`,
    cost: aiCost(ai),
    priceUnknown: ai.price_known === false ? "price unknown: counted as $0" : null,
    busy: !!ai.in_flight && !ai.fallback,
    failures: failures && !ai.fallback ? `${failures} failed in a row` : null,
    next: ai.next_check_step != null && !ai.fallback ? `next look at step ${ai.next_check_step}` : null,
    fallback: ai.fallback ? `fallen back to the rules: ${ai.fallback}` : null,
  };
}

/** Whether a record or proposal is the LLM's (its replies, its actions, its proposals). */
export const isAIRecord = (r) => !!r && (r.rule === "ai" || r.kind === "ai_reply" || r.source === "ai");

/** The model's reasoning behind an AI record or proposal, as plain text (null: none). */
export function reasoningOf(r) {
  if (!isAIRecord(r) || typeof r.reasoning !== "string") return null;
  return r.reasoning.trim() ? r.reasoning : null;
}

/** What the model asked for, in words (a rejected AI action's `asked`: its own words, or the
 * raw action it sent). */
function askedText(asked) {
  if (typeof asked === "string") return asked;
  if (asked && typeof asked === "object" && !Array.isArray(asked) && (asked.name != null || asked.action != null)) {
    return fmtAction(asked);
  }
  return JSON.stringify(asked);
}

/** What the panel's head says, as text; `now` in seconds since the epoch (an autopilot outside
 * this server that has not written for STOPPED_AFTER_SEC is shown as stopped). */
export function autopilotFacts(doc, now = Date.now() / 1000) {
  const d = doc || {};
  const dir = d.direction === "maximize" ? "↑ maximize" : d.direction === "minimize" ? "↓ minimize" : "";
  const since = typeof d.updated === "number" ? Math.max(0, now - d.updated) : null;
  let where;
  if (d.in_server) where = "runs in this server";
  else if (d.ran && since != null && since > STOPPED_AFTER_SEC) where = `stopped (last round ${ago(since)} ago)`;
  else if (d.ran) where = "runs outside this server (hotcb autopilot)";
  else where = "not running";
  return {
    mode: d.mode || "off",
    key: d.key_metric || "–",
    direction: dir,
    where,
    step: d.step == null || d.step < 0 ? "–" : String(d.step),
    rulesOn: (d.rules || []).filter((r) => r.enabled).length,
    rules: (d.rules || []).length,
    keyNote: keyNote(d),
  };
}

/** Where the key metric comes from: another name the run logs it under, or nowhere yet. */
function keyNote(d) {
  const used = d.key_logged_as;
  if (used && used !== d.key_metric) return { text: `logged as ${used}`, warn: false };
  if (d.ran && !used && (d.logged || []).length) {
    return {
      text: `not logged by this run (it logs ${d.logged.join(", ")}): the rules on it wait for it`,
      warn: true,
    };
  }
  return null;
}

/** The proposals waiting for a decision, oldest first. */
export function pendingProposals(doc) {
  return ((doc && doc.pending) || []).filter((p) => p && p.id != null && (p.state ?? "pending") === "pending");
}

/** The recent records, newest first. */
export function recentRows(doc) {
  return ((doc && doc.recent) || []).filter((r) => r && typeof r === "object").reverse();
}

/** Who a record is of, as its row shows it: the rule, the knob held, or the LLM. */
export const recordWho = (r) => r.rule ?? r.knob ?? (r.kind === "ai_reply" || r.kind === "fallback" ? "ai" : "");

/** A stable key of a record (its kind, rule, step and time), to keep its evidence open. */
export const recordKey = (r) => [r.kind, r.rule ?? r.knob ?? "", r.step ?? "", r.wall_time ?? ""].join("|");

export const kindLabel = (k) => KINDS[k] || String(k ?? "–");

/** The one line of a record: a detection's description, an action, a guard check, a skip. */
export function recordLine(r) {
  switch (r.kind) {
    case "detection":
      return r.describe || `${r.detector ?? "?"} on ${r.metric ?? "?"}`;
    case "action":
      if (r.state === "applied") return `${fmtAction(r.action)} applied`;
      if (r.asked !== undefined) return `${r.state ?? "?"}: ${askedText(r.asked)} — ${r.reason || "?"}`;
      return `${r.state ?? "?"}: ${r.reason || fmtAction(r.action)}`;
    case "ai_reply": {
      const call = `call ${r.call ?? "?"}`;
      if (r.state === "replied") return typeof r.cost_usd === "number" && r.cost_usd > 0 ? `${call} replied (${usd(r.cost_usd)})` : `${call} replied`;
      return `${call} ${r.state ?? "?"}: ${r.reason || r.error_kind || "?"}`;
    }
    case "guard": {
      if (r.reason) return r.reason;
      const pct = typeof r.worse_by === "number" ? ` (${r.worse_by >= 0 ? "+" : "−"}${Math.abs(r.worse_by * 100).toFixed(1)}%)` : "";
      return `kept: ${fmtNum(r.before)} → ${fmtNum(r.after)}${pct}`;
    }
    case "decision": // accepted or rejected by a person, superseded by an automatic change, or expired
      return `${r.id ?? "?"} ${r.state ?? "?"}${r.reason ? `: ${r.reason}` : r.by ? ` (${r.by})` : ""}`;
    default:
      return r.reason || "";
  }
}

/** The evidence (or, without one, the record's other fields) as [name, text] rows. */
export function evidenceRows(r) {
  const src = r.evidence && typeof r.evidence === "object" ? r.evidence : null;
  if (!src) return [];
  return Object.entries(src).map(([k, v]) => [k, v !== null && typeof v === "object" && !Array.isArray(v) ? JSON.stringify(v) : fmtValue(v)]);
}

/** The title of a proposal's Accept button: what it sends, as whom and why. */
export function acceptTitle(p) {
  const why = p.rule === "ai" ? "the model's reasoning" : `rule ${p.rule}`;
  return `send ${fmtAction(p.action)} now (source ${p.source ?? "autopilot"}, reason: ${why})`;
}

/** A POSIX shell word for `path` (quoted when it needs to be). */
function shellWord(path) {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${String(path).replace(/'/g, `'\\''`)}'`;
}

export class AutopilotPanel {
  /** decide(proposal, "accept"|"reject") → Promise<decision record>; setRule(rule, enabled)
   * → Promise; both reject with the server's reason. */
  constructor(card, { decide, setRule }) {
    this.card = card;
    this.decide = decide;
    this.setRule = setRule;
    this.doc = { mode: "off" };
    this.runPath = null;
    this.over = false; // the run ended: its proposals can no longer be answered
    this.sig = null;
    this.sent = new Map(); // proposal id → {decision, done, error}
    this.switching = new Map(); // rule id → {enabled, error}
    this.open = new Set(); // recordKey of records whose evidence is shown
  }

  /** Whether the run is over (finished, stopped, crashed): Accept and Reject are disabled. */
  setOver(over) {
    if (this.over === !!over) return;
    this.over = !!over;
    if (this.parts) this.render();
  }

  /** A new run was picked: forget what was shown and sent. */
  reset(runPath) {
    this.runPath = runPath || null;
    this.sent.clear();
    this.switching.clear();
    this.open.clear();
    this.sig = null;
    this.update({ mode: "off" });
  }

  /** A document from the server; the panel is rebuilt only where it changed. */
  update(doc) {
    this.doc = doc && typeof doc === "object" ? doc : { mode: "off" };
    const sig = JSON.stringify(this.doc);
    if (sig === this.sig) return;
    this.sig = sig;
    // a proposal no longer pending was answered: its buttons go with it
    const pending = new Set(pendingProposals(this.doc).map((p) => String(p.id)));
    for (const id of [...this.sent.keys()]) if (!pending.has(id)) this.sent.delete(id);
    // a switch the autopilot now shows as asked is done
    for (const [id, s] of [...this.switching]) {
      const rule = (this.doc.rules || []).find((r) => r.id === id);
      if (!s.error && rule && rule.enabled === s.enabled) this.switching.delete(id);
    }
    this.render();
  }

  async sendDecision(p, decision) {
    const id = String(p.id);
    this.sent.set(id, { decision, done: false, error: null });
    this.render();
    try {
      await this.decide(p, decision);
      const s = this.sent.get(id);
      if (s) s.done = true;
    } catch (err) {
      this.sent.set(id, { decision, done: false, error: err.message });
    }
    this.render();
  }

  async toggle(rule, enabled) {
    this.switching.set(rule.id, { enabled, error: null });
    this.render();
    try {
      await this.setRule(rule, enabled);
    } catch (err) {
      this.switching.set(rule.id, { enabled, error: err.message });
    }
    this.render();
  }

  render() {
    const doc = this.doc;
    const off = isOff(doc);
    if (!this.parts) this.build();
    this.card.classList.toggle("off", off);
    this.parts.body.hidden = off;
    this.tick();
    if (off) return;
    this.parts.ai.hidden = !aiFacts(doc.ai);
    this.fill("ai", [doc.ai], () => this.aiLine(doc.ai));
    this.fill("rules", [doc.rules, doc.in_server, doc.key_metric, [...this.switching]], () => [this.rules(doc)]);
    this.fill("proposals", [pendingProposals(doc), doc.mode, [...this.sent], this.over], () => [this.proposals(doc)]);
    this.noteOpen();
    this.fill("recent", [doc.recent], () => [this.recent(doc)]);
  }

  /** What evidence is open now, read before the list is redrawn: a click opens a <details> at
   * once, but its "toggle" event comes in a later task (a redraw between closed it again). */
  noteOpen() {
    for (const d of this.parts.recent.querySelectorAll("details")) {
      if (d.open) this.open.add(d.dataset.key);
      else this.open.delete(d.dataset.key);
    }
  }

  /** The head again (the page calls it every few seconds: an autopilot outside this server
   * that stopped writing is shown as stopped, although no file changed). */
  tick() {
    if (!this.parts) return;
    const doc = this.doc;
    const off = isOff(doc);
    const f = autopilotFacts(doc);
    this.fill("head", [off, f, doc.rules_path, this.runPath], () => this.head(doc, f, off));
  }

  build() {
    this.card.textContent = "";
    const parts = {
      head: el("div", "card-head"),
      body: el("div", "ap-body"),
      ai: el("div", "ap-ai-box"),
      rules: el("div", "ap-rules-box"),
      proposals: el("div", "ap-proposals-box"),
      recent: el("div", "ap-recent-box"),
    };
    const side = el("div", "ap-side");
    side.append(parts.rules, parts.proposals);
    parts.body.append(parts.ai, side, parts.recent);
    this.card.append(parts.head, parts.body);
    this.parts = parts;
    this.keys = {};
  }

  fill(name, key, make) {
    fillPart(this, name, key, make);
  }

  head(doc, f, off) {
    const out = [el("h2", null, "Autopilot")];
    if (off) return [...out, this.offLine()];
    const mode = el("span", `chip ap-mode mode-${f.mode}`, f.mode);
    mode.title = MODE_TITLE;
    const key = el("span", "muted small ap-key");
    key.append("key metric ", el("code", null, f.key), f.direction ? ` ${f.direction}` : "");
    if (f.keyNote) key.append(el("span", `ap-key-note${f.keyNote.warn ? " warn" : ""}`, ` · ${f.keyNote.text}`));
    const where = el("span", `muted small ap-where ${doc.in_server ? "here" : "elsewhere"}`, `${f.where} · step ${f.step}`);
    where.title = doc.in_server
      ? "this server runs the autopilot (hotcb serve --autopilot): its rules can be switched here"
      : NOT_HERE;
    out.push(mode, key, where);
    if (doc.rules_path) {
      const rules = el("span", "muted small ap-rules-path", doc.rules_path.split("/").pop());
      rules.title = `rules: ${doc.rules_path}`;
      out.push(el("div", "spacer"), rules);
    }
    return out;
  }

  /** The LLM policy: model and endpoint, calls, spend and budget; its fallback to the rules. */
  aiLine(ai) {
    const f = aiFacts(ai);
    if (!f) return [];
    const line = el("div", "ap-ai small");
    const what = el("span", "ap-ai-what");
    what.append("LLM ", el("code", "ap-ai-model", f.model), " at ", el("code", "ap-ai-url", f.baseUrl));
    what.title = `the model the autopilot asks, at ${f.baseUrl} (set where the autopilot runs: --ai-* flags or --ai-config)`;
    line.append(what, el("span", "ap-ai-calls muted", f.calls), el("span", "ap-ai-cost", f.cost));
    if (f.priceUnknown) {
      const note = el("span", "ap-ai-price muted", f.priceUnknown);
      note.title = `no price known for ${f.model}: add it under prices in the AI config file`;
      line.append(note);
    }
    if (f.failures) line.append(el("span", "ap-ai-failures", f.failures));
    if (f.busy) line.append(el("span", "ap-ai-busy muted", "asking the model…"));
    if (f.next) line.append(el("span", "ap-ai-next muted", f.next));
    const out = [line];
    if (f.fallback) out.push(el("div", "ap-ai-fallback small", f.fallback));
    return out;
  }

  offLine() {
    const line = el("span", "ap-off muted small", "autopilot off — start it with ");
    line.append(el("code", null, START_COMMAND), " or ", el("code", null, SERVE_COMMAND));
    line.title = this.runPath ? START_COMMAND.replace("RUN", shellWord(this.runPath)) : START_COMMAND;
    return line;
  }

  rules(doc) {
    const box = el("div", "ap-rules");
    const list = doc.rules || [];
    box.append(el("h4", null, `rules (${list.filter((r) => r.enabled).length} of ${list.length} on)`));
    const ul = el("ul", "ap-rule-list");
    for (const r of list) {
      const li = el("li", `ap-rule${r.enabled ? "" : " is-off"}`);
      li.dataset.rule = r.id;
      const sw = el("label", "switch");
      const box2 = el("input");
      box2.type = "checkbox";
      box2.setAttribute("aria-label", `rule ${r.id}`);
      const s = this.switching.get(r.id);
      box2.checked = s && !s.error ? s.enabled : !!r.enabled;
      box2.disabled = !doc.in_server || (s && !s.error) || (r.enabled_in_file === false && !r.enabled);
      sw.title = switchTitle(r, doc);
      box2.addEventListener("change", () => this.toggle(r, box2.checked));
      sw.append(box2, el("span", "slider-knob"));
      const text = el("div", "ap-rule-text");
      text.append(el("span", "ap-rule-id", r.id), el("span", "ap-rule-what", ruleLine(r, doc.key_metric)));
      const meta = el("span", "muted small ap-rule-meta", `${r.confidence ?? "?"} · cooldown ${r.cooldown_steps ?? "?"}`);
      meta.title = "confidence (auto mode applies high and medium, proposes low) and steps before it may act again";
      li.append(sw, text, meta);
      ul.append(li);
      if (s?.error) ul.append(el("li", "ap-error small", `${r.id}: ${s.error}`));
    }
    box.append(ul);
    return box;
  }

  proposals(doc) {
    const box = el("div", "ap-proposals");
    const pending = pendingProposals(doc);
    // a run that is over applies nothing: its proposals ended with it (Reject clears them)
    const head = this.over && pending.length
      ? `proposals the run left pending (${pending.length}, ended with it)`
      : pending.length ? `pending proposals (${pending.length})` : "pending proposals";
    box.append(el("h4", null, head));
    const ul = el("ul", "pending");
    if (!pending.length) ul.append(el("li", "muted", doc.mode === "off" ? "none (the autopilot is off)" : "none"));
    for (const p of pending) {
      const id = String(p.id);
      const li = el("li", "ap-proposal");
      li.dataset.id = id;
      const what = el("span", "what", fmtAction(p.action));
      what.title = p.describe || "";
      // the step it was proposed at, in sight: its evidence is that old (the header has now)
      const at = el("span", "num-col small ap-proposed-at", p.step == null ? "" : `step ${p.step}`);
      li.append(el("span", "at", id), at, what);
      li.title = `${id} (${p.rule}) at step ${p.step ?? "?"}: ${p.describe || ""}`;
      const sent = this.sent.get(id);
      const busy = !!sent && !sent.error;
      const buttons = [
        ["accept", "Accept", "btn tiny primary ap-accept", acceptTitle(p)],
        ["reject", "Reject", "btn tiny ap-reject", "drop this proposal"],
      ];
      for (const [decision, label, cls, title] of buttons) {
        const b = el("button", cls, busy && sent.decision === decision ? "sent…" : label);
        b.type = "button";
        b.title = title;
        // over: nothing would apply an accept; a reject still clears the proposal
        b.disabled = busy || (this.over && decision === "accept");
        if (this.over) b.title = decision === "accept" ? "the run is over: nothing would apply it" : "clear this proposal: the run is over";
        b.addEventListener("click", () => this.sendDecision(p, decision));
        li.append(b);
      }
      ul.append(li);
      const why = reasoningOf(p);
      if (why) ul.append(el("li", "ap-because ap-reasoning muted small", why));
      else if (p.describe) ul.append(el("li", "ap-because muted small", p.describe));
      if (sent?.error) ul.append(el("li", "ap-error small", `${id}: ${sent.error}`));
    }
    box.append(ul);
    return box;
  }

  recent(doc) {
    const wrap = el("div", "ap-recent");
    const rows = recentRows(doc);
    wrap.append(el("h4", null, "recent detections and actions"));
    const list = el("ul", "ap-recent-list");
    list.id = "ap-recent";
    if (!rows.length) list.append(el("li", "muted", doc.mode === "off" ? "nothing (the autopilot is off)" : "nothing detected yet"));
    for (const r of rows) {
      const li = el("li", `ap-rec ap-kind-${r.kind}`);
      const key = recordKey(r);
      li.dataset.kind = r.kind;
      li.dataset.rule = r.rule ?? r.knob ?? "";
      const head = el("div", "ap-rec-head");
      head.append(
        el("span", "num-col", r.step == null ? "" : `step ${r.step}`),
        el("span", `dec ap-dec-${r.kind}${r.state ? ` ap-state-${r.state}` : ""}`, kindLabel(r.kind)),
        el("span", "ap-rec-rule", recordWho(r)),
      );
      const line = recordLine(r);
      const ev = evidenceRows(r);
      if (ev.length) {
        const det = el("details", "ap-evidence");
        det.dataset.key = key;
        det.open = this.open.has(key);
        det.addEventListener("toggle", () => (det.open ? this.open.add(key) : this.open.delete(key)));
        const sum = el("summary", "ap-describe", line);
        const dl = el("dl", "ap-evidence-list");
        for (const [k, v] of ev) dl.append(el("dt", null, k), el("dd", null, v));
        det.append(sum, dl);
        li.append(head, det);
      } else {
        li.append(head, el("div", "ap-describe", line));
      }
      const why = reasoningOf(r);
      if (why) li.append(el("div", "ap-reasoning", why));
      list.append(li);
    }
    wrap.append(list);
    return wrap;
  }

  debug() {
    const doc = this.doc;
    return {
      mode: doc.mode || "off",
      off: isOff(doc),
      inServer: !!doc.in_server,
      rules: Object.fromEntries((doc.rules || []).map((r) => [r.id, !!r.enabled])),
      pending: pendingProposals(doc).map((p) => String(p.id)),
      over: this.over,
      recent: recentRows(doc).map((r) => `${r.kind}:${r.rule ?? r.knob ?? ""}`),
      ai: aiFacts(doc.ai),
      sent: Object.fromEntries([...this.sent].map(([id, s]) => [id, { ...s }])),
      switching: Object.fromEntries([...this.switching].map(([id, s]) => [id, { ...s }])),
    };
  }
}
