// The Tune panel: what the online tuner (hotcb.modules.tune) is doing, read from its state
// file (GET …/tune when a run loads, then "tune" messages over the WebSocket whenever the file
// changes), and its pending proposals, accepted or rejected with the same commands as
// `hotcb tune accept|reject ID`. Pure helpers first (tests/js runs them under node).
import { fmtNum } from "./charts.js";
import { fillPart } from "./lib.js";
import { el, fmtSpread, fmtValue } from "./panels.js";

/** The command that switches the tuner on, as the off line shows it. */
export const ENABLE_COMMAND = "hotcb --dir RUN tune enable --mode suggest";

const DECISIONS = { kept: "kept", rolled_back: "rolled back", failed: "failed", rejected: "rejected", open: "open", replaced: "replaced", unmoved: "unmoved (at a bound)" };

/** A score as `tune status` and `hotcb log` write it: signed (+0.12: better than the trend). */
export function fmtScore(x) {
  return typeof x === "number" && x > 0 ? `+${fmtNum(x)}` : fmtNum(x);
}

/** Why a trial shows as replaced (its row's title). */
const REPLACED_WHY = "judged after the checkpoint this run was resumed from, in the life the resume replaced: the study keeps its score, its change is not in this run";

/** A trial's decision, why: a void or blown-up trial's reason, else the bar a keep had to
 * clear (the threshold plus the noise margin), so a positive score rolled back reads right. */
export function decisionWhy(t) {
  if (t.decision === "replaced") return REPLACED_WHY;
  if (t.undone != null) return `kept, then undone at step ${t.undone} (control undo): no longer in force`;
  const d = t.detail || {};
  if (d.reason) return String(d.reason);
  if (typeof t.score !== "number" || typeof d.needed !== "number") return "";
  const kept = t.decision === "kept";
  const margin = typeof d.margin === "number" ? ` (the threshold plus a noise margin of ${fmtNum(d.margin)})` : "";
  return `score ${fmtScore(t.score)} ${kept ? "beat" : "did not beat"} ${fmtScore(d.needed)}, the bar to keep${margin}`;
}

/** Whether a state document holds a tuner's work: segments scored or trials (it was on). */
export function tunerRan(doc) {
  return Boolean((doc.trials && doc.trials.length) || (doc.counts && doc.counts.segments));
}

/** "opt.lr 0.001 → 0.003, loss.l2 0 → 0.1" from the tuner's `{"opt.lr": [old, new]}`. */
export function fmtTuneChanges(changes) {
  if (!changes || typeof changes !== "object") return "";
  return Object.entries(changes)
    .map(([k, v]) => (Array.isArray(v) && v.length === 2 ? `${k} ${fmtValue(v[0])} → ${fmtValue(v[1])}` : `${k} ${fmtValue(v)}`))
    .join(", ");
}

/** A pending proposal as Accept applies it, as `hotcb tune proposals` says it: a relative move
 * (× or +) applies to the value in force when it lands, so its values are the step it was
 * made at's ("opt.lr ×0.51 on accept (4.87e-4 → 2.46e-4 at step 728)"); the page showed only
 * those values, and an accept many steps later (a schedule moved the lr) applied others. */
export function fmtProposal(p) {
  const moves = p.moves && typeof p.moves === "object" ? p.moves : {};
  return Object.entries(p.changes || {})
    .map(([k, v]) => {
      if (!Array.isArray(v) || v.length !== 2) return `${k} ${fmtValue(v)}`;
      const [old, to] = v;
      const move = moves[k];
      const shown = `${fmtValue(old)} → ${fmtValue(to)}`;
      if (typeof move !== "number" || typeof old !== "number" || typeof to !== "number") return `${k} ${shown}`;
      const at = `(${shown} at step ${p.step ?? "?"})`;
      if (old && Math.abs(to / old - move) <= 1e-6 * Math.abs(move)) return `${k} ×${fmtNum(move)} on accept ${at}`;
      return `${k} ${move >= 0 ? "+" : "−"}${fmtNum(Math.abs(move))} on accept ${at}`;
    })
    .join(", ");
}

/** What Accept does with a proposal: its relative moves (`moves`, `{"opt.lr": 0.44}`) apply
 * to the values in force when it lands, at the run's next step, so the values it was proposed
 * with may have moved (a schedule); a knob without a move is set to its value. */
export function acceptTitle(p) {
  const moves = p.moves && typeof p.moves === "object" ? p.moves : {};
  const parts = Object.entries(p.changes || {}).map(([k, v]) => {
    const to = Array.isArray(v) ? v[1] : v;
    return typeof moves[k] === "number" ? `${k} ×${fmtNum(moves[k])}` : `${k} = ${fmtValue(to)}`;
  });
  const when = fmtTuneChanges(p.changes);
  return `apply at the run's next step: ${parts.join(", ")} of the values then in force${when ? ` (${when} when proposed)` : ""}`;
}

/** "opt.lr = 0.003" from `{"opt": {"lr": 0.003}}` (the values of the best trial). */
export function fmtTuneValues(values) {
  if (!values || typeof values !== "object") return "";
  return Object.entries(values)
    .flatMap(([m, kv]) =>
      kv && typeof kv === "object" && !Array.isArray(kv)
        ? Object.entries(kv).map(([k, v]) => `${m}.${k} = ${fmtValue(v)}`)
        : [`${m} = ${fmtValue(kv)}`],
    )
    .join(", ");
}

/** A round's arms, each with its level ± its noise (a move wins only by more than the two
 * arms' noise); "…" for one not judged. */
function armsText(arms) {
  return (arms || [])
    .map((a) => `×${fmtNum(a.factor)} ${a.level == null ? "…" : `${fmtNum(a.level)}${fmtSpread(a.noise, a.level)}`}`)
    .join(", ");
}

/** The start bracket (`start: bracket`, docs/tune.md) in a line: how it stands or ended, and
 * each round's arms with the level each ended at; null without one. */
export function bracketLine(b) {
  if (!b || typeof b !== "object") return null;
  // each round from the lr it began at (as `tune status` says: "round 2 from 0.025"): the lr
  // in force when its first arm landed, the plan's base before that was recorded
  const from = (r) => {
    const at = typeof r.from === "number" ? r.from : r.base;
    return typeof at === "number" ? ` from ${fmtNum(at)}` : "";
  };
  const rounds = (b.rounds || []).map(
    (r) => `round ${r.round}${from(r)}: ${armsText(r.arms)}`,
  );
  if (b.ended_at != null && b.reason && !(b.rounds || []).some((r) => r.round === b.round))
    rounds.push(`round ${b.round} (cut short): ${armsText(b.arms)}`);
  const last = (b.rounds || []).at(-1);
  const arm = (b.arms || [])[b.arm];
  const how =
    b.ended_at != null
      ? `over at step ${b.ended_at}${b.reason ? ` (${b.reason})` : last ? `, ×${fmtNum(last.winner)} won its last round` : ""}${b.back_to_start ? ", on from the weights it began with" : ""}`
      : `round ${b.round} under way${arm ? ` (arm ×${fmtNum(arm.factor)})` : ""}`;
  return [`${b.knob ?? "lr"} ${how}`, ...rounds].join(" · ");
}

const arrow = (d) => (d === "maximize" ? "↑ maximize" : d === "minimize" ? "↓ minimize" : "");

/** What the panel says about a state document, as text. */
export function tuneFacts(doc) {
  const c = doc.counts || {};
  const best = doc.best;
  const used = doc.objective_used ?? doc.objective;
  return {
    mode: doc.mode || "off",
    objective: doc.objective ?? used ?? "–",
    objectiveUsed: used ?? "–",
    fallback: doc.objective != null && used != null && used !== doc.objective,
    direction: arrow(doc.direction),
    // a training loss standing in is minimized whatever the objective asked
    directionUsed: arrow(doc.direction_used ?? doc.direction),
    phase: doc.phase || "–",
    trial: doc.trial == null ? "–" : String(doc.trial),
    next: doc.next_boundary == null ? "–" : `step ${doc.next_boundary}`,
    counts: [
      `${c.segments ?? 0} segments`,
      `${c.kept ?? 0} kept`,
      `${c.rolled_back ?? 0} rolled back`,
      `${c.proposed ?? 0} proposed`,
      ...(c.rejected ? [`${c.rejected} rejected`] : []), // proposals a person turned down
      ...(c.expired ? [`${c.expired} expired`] : []), // left unanswered by a re-enable or disable
      ...(c.unmoved ? [`${c.unmoved} unmoved`] : []), // every knob held at its bound: told 0
      `${c.failed ?? 0} failed`,
    ].join(" · "),
    acceptRate: typeof doc.accept_rate === "number" ? `${Math.round(doc.accept_rate * 100)}%` : "–",
    best: best
      ? [`trial ${best.trial ?? "?"}`, `score ${fmtScore(best.score)}`, fmtTuneValues(best.values)].filter(Boolean).join(" · ")
      : "none yet",
    bracket: bracketLine(doc.bracket),
  };
}

/** Proposals still waiting for a person, newest first. */
export function pendingProposals(doc) {
  return (doc.proposals || []).filter((p) => p && p.state === "pending" && p.id != null).reverse();
}

/** The trials table's rows, newest first. */
export function trialRows(doc) {
  return (doc.trials || []).filter((t) => t && typeof t === "object").reverse();
}

/** What a trial changes: its own `changes` once applied, else (proposed, rejected, expired)
 * those of its proposal, which the tuner keeps in `proposals`. */
export function trialChanges(doc, t) {
  if (t.changes && Object.keys(t.changes).length) return t.changes;
  const p = (doc.proposals || []).find((q) => q && q.trial != null && q.trial === t.trial);
  return p?.changes ?? null;
}

/** A trial's steps for the table: its segment (`1200–1400`, `1400…` while open), else (a
 * proposal never applied: pending, rejected, expired) the step it was proposed at. */
export function trialSteps(doc, t) {
  if (t.step != null) return { text: t.end_step == null ? `${t.step}…` : `${t.step}–${t.end_step}`, title: "" };
  const p = (doc.proposals || []).find((q) => q && q.trial != null && q.trial === t.trial);
  return p?.step == null ? { text: "", title: "" } : { text: String(p.step), title: `proposed at step ${p.step}` };
}

/** Ledger decisions of a `tune enable` that left the tuner as it was. */
const REFUSED = new Set(["rejected", "failed", "ignored_freeze"]);

/** How many answers refused after their proposal left the list are shown (newest kept). */
const MAX_REFUSED = 3;
/** How many answers sent from here wait for the run's verdict after their proposal left. */
const MAX_AWAY = 20;

/** "rolled back"; a trial of a replaced life: "replaced (was kept)". */
export const decisionLabel = (d, was, undone) => {
  const label = DECISIONS[d] || String(d ?? "–");
  if (d === "kept" && undone != null) return `${label}, undone`;
  return d === "replaced" && was ? `${label} (was ${DECISIONS[was] || was})` : label;
};

/** A POSIX shell word for `path` (quoted when it needs to be). */
function shellWord(path) {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${String(path).replace(/'/g, `'\\''`)}'`;
}

export class TunePanel {
  /** decide(op, proposal) → Promise<cmd_id>, rejecting with the reason (`op`: accept|reject);
   * answerOf(cmd_id) → the run's ledger entry for it the page already holds, if any (on a
   * loaded machine one can come over the WebSocket before the reply to the POST that sent it). */
  constructor(card, { decide, answerOf = () => undefined }) {
    this.card = card;
    this.decide = decide;
    this.answerOf = answerOf;
    this.doc = { mode: "off" };
    this.runPath = null;
    this.over = false; // the run ended: its proposals can no longer be answered
    this.sig = null;
    this.sent = new Map(); // proposal id → {id, op, cmdId, error, done (the run applied it)}
    // answers sent from here whose proposal left the list before the run's verdict came
    // (the same records; cmdId null while the POST is in flight)
    this.away = new Set();
    this.refused = []; // "P3: accept rejected: proposal P3 is rejected, not pending", newest last
    this.enable = null; // the newest `tune enable`/`tune disable` ledger entry seen
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
    this.away.clear();
    this.refused = [];
    this.enable = null;
    this.sig = null;
    this.update({ mode: "off" });
  }

  /** A state document from the server; the panel is rebuilt only when it changed. */
  update(doc) {
    this.doc = doc && typeof doc === "object" ? doc : { mode: "off" };
    const sig = JSON.stringify(this.doc);
    if (sig === this.sig) return;
    this.sig = sig;
    // a proposal that is no longer pending has been answered: its buttons go with it. An
    // answer sent from here may still be refused (someone answered first, from the CLI or
    // another page): it waits, out of sight, for the run's verdict
    const pending = new Set(pendingProposals(this.doc).map((p) => String(p.id)));
    for (const [id, s] of [...this.sent]) {
      if (pending.has(id)) continue;
      this.sent.delete(id);
      if (s.error) this.refuse(id, s.error);
      else if (!s.done) this.away.add(s);
    }
    while (this.away.size > MAX_AWAY) this.away.delete(this.away.values().next().value);
    this.render();
  }

  /** A ledger entry: the answer to an accept or reject sent from here, or the tuner switched
   * on or off (a refused `tune enable` is what the off line then says). */
  onEntry(e) {
    if (e.module !== "tune") return;
    if (e.op === "enable" || e.op === "disable") {
      if (e.decision !== "applied" && !REFUSED.has(e.decision)) return; // scheduled, noop
      if (this.enable == null || (e.seq ?? 0) >= (this.enable.seq ?? 0)) this.enable = e;
      if ((this.doc.mode || "off") === "off") this.render(); // the off line says a refusal
      return;
    }
    if (!["accept", "reject"].includes(e.op) || e.cmd_id == null) return;
    const why = `${e.op} ${e.decision}: ${e.error || "no reason given"}`;
    for (const s of this.away) {
      if (s.cmdId !== e.cmd_id) continue;
      this.away.delete(s);
      if (e.decision !== "applied") this.refuse(s.id, why);
    }
    for (const s of this.sent.values()) {
      if (s.cmdId !== e.cmd_id) continue;
      s.done = e.decision === "applied";
      if (s.done) continue;
      s.error = why;
      this.render();
    }
  }

  /** An answer refused after its proposal left the list: said under the proposals. */
  refuse(id, why) {
    this.refused = [...this.refused, `${id}: ${why}`].slice(-MAX_REFUSED);
    this.render();
  }

  async send(op, p) {
    const id = String(p.id);
    const s = { id, op, cmdId: null, error: null, done: false };
    this.sent.set(id, s);
    this.render();
    try {
      s.cmdId = await this.decide(op, p);
      const early = this.answerOf(s.cmdId);
      if (early) this.onEntry(early);
    } catch (err) {
      s.error = err.message;
      if (this.away.delete(s)) this.refuse(id, err.message);
      else this.render();
    }
  }

  /** Each part of the panel is rebuilt only when what it shows changed: a tuner that rewrites
   * its state every few steps (a new boundary) leaves the proposals' buttons alone. */
  render() {
    const doc = this.doc;
    const off = (doc.mode || "off") === "off";
    // never on: the off line alone; switched off after it ran: what it did stays on show
    const neverOn = off && !tunerRan(doc);
    const f = tuneFacts(doc);
    if (!this.parts) this.build();
    this.card.classList.toggle("off", off);
    this.parts.body.hidden = neverOn;
    const headKey = [off, doc.error, f.mode, f.phase, f.trial, f.next, doc.study, doc.storage, doc.study_joined, this.runPath,
      off && this.refusedEnable(), this.over];
    this.fill("head", headKey, () => this.head(doc, f, off));
    if (neverOn) return;
    this.fill("facts", [f, doc.warnings], () => [this.facts(f), ...this.warnings(doc)]);
    this.fill("proposals", [pendingProposals(doc), doc.mode, [...this.sent], this.refused, this.over], () => [this.proposals(doc)]);
    this.fill("trials", [doc.trials, doc.proposals, this.over], () => [this.trials(doc)]);
  }

  build() {
    this.card.textContent = "";
    const parts = {
      head: el("div", "card-head"),
      body: el("div", "tune-body"),
      facts: el("div", "tune-facts-box"),
      proposals: el("div", "tune-proposals-box"),
      trials: el("div", "tune-trials-box"),
    };
    const side = el("div", "tune-side");
    side.append(parts.facts, parts.proposals);
    parts.body.append(side, parts.trials);
    this.card.append(parts.head, parts.body);
    this.parts = parts;
    this.keys = {};
  }

  fill(name, key, make) {
    fillPart(this, name, key, make);
  }

  head(doc, f, off) {
    const out = [el("h2", null, "Tune")];
    if (off) return [...out, this.offLine(doc)];
    const mode = el("span", `chip tune-mode mode-${f.mode}`, f.mode);
    mode.title = "tuner mode: observe scores only, suggest proposes, active applies";
    // a run that is over has no next boundary, whatever its last state file said
    // nor a phase: the tuner is idle until the run is started again (as `tune status` says)
    const phase = this.over
      ? "idle: the run is over (until it is started again)"
      : `phase ${f.phase} · trial ${f.trial} · next boundary ${f.next}`;
    out.push(mode, el("span", "muted small tune-phase", phase));
    if (doc.study) {
      const joined = doc.study_joined;
      const shared = joined && typeof joined === "object"
        ? ` · shared: ${joined.trials} trials of ${joined.runs} other run${joined.runs === 1 ? "" : "s"} when this run joined`
        : "";
      const study = el("span", "muted small tune-study", `${doc.study}${shared}`);
      study.title = (doc.storage ? `study ${doc.study} in ${doc.storage}` : `study ${doc.study}`)
        + (shared ? `; the best shown is this run's${joined.best != null ? `, theirs scored ${fmtScore(joined.best)}` : ""}` : "");
      out.push(el("div", "spacer"), study);
    }
    return out;
  }

  /** The newest `tune enable` when the run refused it (optuna missing, a storage that could
   * not be opened, a broken recipe) and nothing switched the tuner on or off since. */
  refusedEnable() {
    const e = this.enable;
    if (!e || e.op !== "enable" || !REFUSED.has(e.decision)) return null;
    return { step: e.step ?? null, decision: e.decision.replace(/_/g, " "), error: e.error || "no reason given" };
  }

  offLine(doc) {
    if (doc.error) return el("span", "tune-off tune-error small", doc.error);
    const refused = this.refusedEnable();
    if (refused) {
      const at = refused.step == null ? "" : ` at step ${refused.step}`;
      const text = `tuner off — tune enable ${refused.decision}${at}: ${refused.error}`;
      const line = el("span", "tune-off tune-error tune-refused small", text);
      line.title = text;
      return line;
    }
    const line = el("span", "tune-off muted small", "tuner off — enable with ");
    line.append(el("code", null, ENABLE_COMMAND));
    if (this.runPath) line.title = ENABLE_COMMAND.replace("RUN", shellWord(this.runPath));
    return line;
  }

  facts(f) {
    const dl = el("dl", "tune-facts");
    const row = (name, ...content) => {
      const dd = el("dd");
      dd.append(...content);
      dl.append(el("dt", null, name), dd);
      return dd;
    };
    const obj = row("objective", el("code", "tune-objective", f.objective));
    if (f.fallback) {
      const badge = el("span", "badge warn tune-fallback", `scoring ${f.objectiveUsed} ${f.directionUsed}`);
      badge.title = `'${f.objective}' was asked for; the tuner scores '${f.objectiveUsed}'`;
      obj.append(" ", badge);
    }
    // the direction asked for, unless the badge just said it (a stand-in scored the same way)
    if (f.direction && !(f.fallback && f.direction === f.directionUsed)) obj.append(" ", el("span", "muted small", f.direction));
    row("counts", f.counts).classList.add("tune-counts");
    const rate = row("kept rate", f.acceptRate);
    rate.classList.add("tune-rate");
    rate.title = "trials kept ÷ trials judged (kept or rolled back on their score)";
    row("best", f.best).classList.add("tune-best");
    if (f.bracket) row("bracket", f.bracket).classList.add("tune-bracket");
    return dl;
  }

  warnings(doc) {
    const list = (doc.warnings || []).filter((w) => typeof w === "string" && w);
    if (!list.length) return [];
    const ul = el("ul", "tune-warnings");
    for (const w of list) ul.append(el("li", null, w));
    return [ul];
  }

  proposals(doc) {
    const box = el("div", "tune-proposals");
    const pending = pendingProposals(doc);
    // a run that is over: what it left pending ended with it (as `tune proposals` says)
    const title = this.over ? "proposals the run left pending (ended with it)" : "pending proposals";
    box.append(el("h4", null, pending.length ? `${title} (${pending.length})` : "pending proposals"));
    const ul = el("ul", "pending");
    // "none yet" only before the first: after proposals were decided, none is waiting
    const none = (doc.proposals || []).length ? "none" : "none yet";
    if (!pending.length) ul.append(el("li", "muted", doc.mode === "suggest" ? none : "none (proposals come in suggest mode)"));
    for (const p of pending) {
      const id = String(p.id);
      const li = el("li", "tune-proposal");
      li.dataset.id = id;
      const change = fmtProposal(p);
      li.append(el("span", "at", id), el("span", "what", change || "–"));
      li.title = `${id}: trial ${p.trial ?? "?"}, proposed at step ${p.step ?? "?"}`;
      const sent = this.sent.get(id);
      const buttons = [
        ["accept", "Accept", "btn tiny primary tune-accept", acceptTitle(p)],
        ["reject", "Reject", "btn tiny tune-reject", "drop this proposal"],
      ];
      for (const [op, label, cls, title] of buttons) {
        const b = el("button", cls, sent && !sent.error && sent.op === op ? "sent…" : label);
        b.type = "button";
        b.title = title;
        b.disabled = this.over || (!!sent && !sent.error);
        if (this.over) b.title = "the run is over: nothing would apply it";
        b.addEventListener("click", () => this.send(op, p));
        li.append(b);
      }
      ul.append(li);
      if (sent?.error) ul.append(el("li", "tune-error small", `${id}: ${sent.error}`));
    }
    this.refused.forEach((text, i) => {
      const li = el("li", "tune-error tune-refused-answer small", text);
      const close = el("button", "btn tiny tune-dismiss", "×");
      close.type = "button";
      close.title = "dismiss";
      close.addEventListener("click", () => {
        this.refused = this.refused.filter((_, j) => j !== i);
        this.render();
      });
      li.append(" ", close);
      ul.append(li);
    });
    box.append(ul);
    return box;
  }

  trials(doc) {
    const wrap = el("div", "table-wrap tune-trials-wrap");
    const table = el("table", "ledger tune-trials");
    const head = el("tr");
    for (const h of ["trial", "step", "change", "score", "decision"]) head.append(el("th", null, h));
    const thead = el("thead");
    thead.append(head);
    const body = el("tbody");
    body.id = "tune-trials";
    const rows = trialRows(doc);
    if (!rows.length) {
      const td = el("td", "muted", "no trials yet");
      td.colSpan = 5;
      const tr = el("tr");
      tr.append(td);
      body.append(tr);
    }
    for (const t of rows) {
      const tr = el("tr");
      tr.dataset.trial = t.trial ?? "";
      const steps = trialSteps(doc, t);
      const at = el("td", "num-col", steps.text);
      at.title = steps.title;
      tr.append(el("td", "num-col", t.trial ?? ""), at);
      tr.append(el("td", "delta", fmtTuneChanges(trialChanges(doc, t)) || "–"));
      tr.append(el("td", "num-col tune-score", fmtScore(t.score)));
      const dec = el("td");
      // a proposal the run left pending ended with it (as `tune proposals` says)
      const ended = this.over && t.decision === "proposed";
      const label = ended
        ? el("span", "dec tune-dec-ended", "ended")
        : el("span", `dec tune-dec-${t.decision}`, decisionLabel(t.decision, t.was, t.undone));
      label.title = ended ? "proposed, and still pending when the run ended: nothing applied it" : decisionWhy(t);
      dec.append(label);
      tr.append(dec);
      body.append(tr);
    }
    table.append(thead, body);
    wrap.append(table);
    return wrap;
  }

  debug() {
    const doc = this.doc;
    return {
      mode: doc.mode || "off",
      error: doc.error || null,
      pending: pendingProposals(doc).map((p) => String(p.id)),
      over: this.over,
      trials: trialRows(doc).map((t) => t.trial),
      sent: Object.fromEntries([...this.sent].map(([id, s]) => [id, { ...s }])),
      refused: [...this.refused],
      enableRefused: this.refusedEnable(),
    };
  }
}
