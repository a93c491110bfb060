// Side panels: actuator controls, the scheduler, the ledger table.
import { fmtNum, isHigherBetter, sourceColor } from "./charts.js";

const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
};

export function fmtValue(v) {
  if (Array.isArray(v)) return `[${v.map(fmtValue).join(", ")}]`;
  if (typeof v === "number") return fmtNum(v);
  if (v === null || v === undefined) return "–";
  return String(v);
}

export function fmtChanges(changes) {
  if (!changes || typeof changes !== "object") return [];
  return Object.entries(changes).map(([k, ch]) =>
    ch && typeof ch === "object" && "new" in ch
      ? `${k}: ${fmtValue(ch.old)} → ${fmtValue(ch.new)}`
      : `${k}: ${fmtValue(ch)}`,
  );
}

/** Parse text typed for an actuator into the value its type expects (throws on bad input). */
export function parseFor(act, text) {
  const t = String(text).trim();
  switch (act.type) {
    case "bool":
      if (/^(true|1|on|yes)$/i.test(t)) return true;
      if (/^(false|0|off|no)$/i.test(t)) return false;
      throw new Error(`${act.param_key} needs true or false`);
    case "choice": {
      const hit = (act.choices || []).find((c) => String(c) === t);
      if (hit === undefined) throw new Error(`${act.param_key} must be one of ${act.choices.join(", ")}`);
      return hit;
    }
    case "tuple": {
      const parts = t.replace(/^[[(]|[\])]$/g, "").split(/[,\s]+/).filter(Boolean).map(Number);
      if (!parts.length || parts.some((x) => !Number.isFinite(x))) throw new Error(`${act.param_key} needs numbers like 0.9, 0.999`);
      return parts;
    }
    case "int": {
      const n = Number(t);
      if (!Number.isInteger(n)) throw new Error(`${act.param_key} needs an integer`);
      return n;
    }
    default: {
      const n = Number(t);
      if (t === "" || !Number.isFinite(n)) throw new Error(`${act.param_key} needs a number`);
      return n;
    }
  }
}

// ----------------------------------------------------------------------------- controls
const SLIDER_TICKS = 1000;

/** The slider's range: the hard bounds, narrowed to a usable window around the value when they
 * span far more (lr bounds are 1e-10..10; a slider over 11 decades is useless). Typing in the
 * number box still reaches every value within the hard bounds. */
export function softRange(act, value) {
  const ref = Math.abs(Number(value ?? act.initial ?? act.current ?? 1)) || 1;
  if (act.type === "log_float") {
    const lo0 = act.min > 0 ? act.min : ref / 1e6;
    const hi0 = act.max ?? ref * 1e6;
    const lo = Math.max(lo0, Math.min(ref, Number(act.initial) || ref) / 1e3);
    const hi = Math.min(hi0, Math.max(ref, Number(act.initial) || ref) * 1e3);
    return lo < hi ? [lo, hi] : [lo0, hi0];
  }
  const lo = act.min ?? Math.min(0, ref);
  let hi = act.max;
  const init = Math.abs(Number(act.initial ?? ref)) || 1;
  if (hi == null || hi - lo > 100 * Math.max(init, 1)) hi = lo + Math.max(4 * Math.max(init, ref), 1);
  if (act.max != null) hi = Math.min(hi, act.max);
  return [lo, hi];
}

class Control {
  constructor(act, send, answered = () => undefined) {
    this.act = act;
    this.send = send;
    this.answered = answered; // cmd_id → ledger entry already seen (it can beat the POST reply)
    this.sending = null; // {cmd_id, value}
    this.root = el("div", "ctl");
    this.root.dataset.key = act.param_key;
    this.root.dataset.type = act.type;
    const head = el("div", "ctl-head");
    const label = el("label", "ctl-label", act.label || act.param_key);
    label.title = act.description || act.param_key;
    this.applied = el("span", "ctl-applied");
    this.applied.title = "applied value (from the run's ledger)";
    this.status = el("span", "ctl-status");
    head.append(label, this.applied);
    this.root.append(head);
    this.inputs = el("div", "ctl-inputs");
    this.root.append(this.inputs, this.status);
    if (act.description) this.root.title = act.description;
    this.build();
    this.setApplied(act.current);
  }

  build() {
    const a = this.act;
    const commit = (v) => this.commit(v);
    if (a.type === "bool") {
      const lab = el("label", "switch");
      this.box = el("input");
      this.box.type = "checkbox";
      this.box.addEventListener("change", () => commit(this.box.checked));
      lab.append(this.box, el("span", "slider-knob"));
      this.inputs.append(lab);
      return;
    }
    if (a.type === "choice") {
      this.select = el("select", "ctl-select");
      for (const c of a.choices || []) {
        const o = el("option", null, String(c));
        o.value = String(c);
        this.select.append(o);
      }
      this.select.addEventListener("change", () => commit(parseFor(a, this.select.value)));
      this.inputs.append(this.select);
      return;
    }
    if (a.type === "tuple") {
      this.num = el("input", "num wide");
      this.num.addEventListener("change", () => this.commitText(this.num.value));
      this.inputs.append(this.num);
      return;
    }
    const numeric = ["float", "int", "log_float"].includes(a.type);
    if (numeric && (a.type === "log_float" || a.min != null || a.max != null)) {
      this.range = el("input", "range");
      this.range.type = "range";
      this.range.min = 0;
      this.range.max = SLIDER_TICKS;
      this.range.step = 1;
      this.range.setAttribute("aria-label", a.param_key);
      this.range.addEventListener("input", () => {
        this.num.value = fmtValue(this.fromSlider(Number(this.range.value)));
      });
      this.range.addEventListener("change", () => commit(this.fromSlider(Number(this.range.value))));
      this.inputs.append(this.range);
    }
    this.num = el("input", "num");
    this.num.setAttribute("inputmode", "decimal");
    this.num.setAttribute("aria-label", `${a.param_key} value`);
    this.num.addEventListener("change", () => this.commitText(this.num.value));
    this.num.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") {
        this.sync();
        this.num.blur();
      }
    });
    this.inputs.append(this.num);
  }

  fromSlider(tick) {
    const [lo, hi] = this.rangeBounds;
    const f = tick / SLIDER_TICKS;
    let v;
    if (this.act.type === "log_float") v = 10 ** (Math.log10(lo) + f * (Math.log10(hi) - Math.log10(lo)));
    else v = lo + f * (hi - lo);
    if (this.act.type === "int") return Math.round(v);
    return Number(v.toPrecision(3));
  }

  toSlider(v) {
    const [lo, hi] = this.rangeBounds;
    let f;
    if (this.act.type === "log_float") f = (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo));
    else f = (v - lo) / (hi - lo || 1);
    return Math.round(Math.max(0, Math.min(1, f)) * SLIDER_TICKS);
  }

  commitText(text) {
    let v;
    try {
      v = parseFor(this.act, text);
    } catch (err) {
      this.showStatus(err.message, "bad");
      this.sync(true);
      return;
    }
    this.commit(v);
  }

  async commit(value) {
    this.showStatus(`${fmtValue(value)} sent…`, "sending");
    this.root.classList.add("is-sending");
    try {
      const cmdId = await this.send(this.act, value);
      this.sending = { cmd_id: cmdId, value };
      this.lastSent = this.sending;
      const early = this.answered(cmdId);
      if (early) this.resolve(early);
    } catch (err) {
      this.root.classList.remove("is-sending");
      this.showStatus(err.message, "bad");
      this.sync(true);
    }
  }

  /** The ledger answered one of our commands. */
  resolve(entry) {
    if (!this.sending || entry.cmd_id !== this.sending.cmd_id) return false;
    this.sending = null;
    this.root.classList.remove("is-sending");
    if (entry.decision === "applied") this.showStatus(`applied at step ${entry.step}`, "ok", 4000);
    else if (entry.decision === "scheduled") this.showStatus(`scheduled for step ${entry.at_step}`, "ok", 4000);
    else this.showStatus(`${entry.decision}: ${entry.error || "no reason given"}`, "bad", 10000);
    this.sync(true);
    return true;
  }

  showStatus(text, kind, clearAfter) {
    clearTimeout(this.statusTimer);
    this.status.textContent = text;
    this.status.className = `ctl-status ${kind || ""}`;
    if (clearAfter) {
      this.statusTimer = setTimeout(() => {
        this.status.textContent = "";
        this.status.className = "ctl-status";
      }, clearAfter);
    }
  }

  setApplied(value, step) {
    if (step != null) this.appliedStep = step;
    this.value = value;
    this.applied.textContent = fmtValue(value);
    this.sync();
  }

  /** `docStep`: the step the actuators file was written at. A file older than the ledger entry
   *  that last set this value (the two arrive on separate channels) must not undo it. */
  update(act, docStep) {
    const disabled = act.state === "disabled";
    this.act = { ...this.act, ...act };
    this.root.classList.toggle("disabled", disabled);
    for (const inp of this.root.querySelectorAll("input, select")) inp.disabled = disabled;
    if (disabled) this.showStatus(`disabled: ${act.last_error || "too many failures"}`, "bad");
    const stale = docStep != null && this.appliedStep != null && docStep < this.appliedStep;
    if (!this.sending && !stale) this.setApplied(act.current);
  }

  /** Show the applied value in the inputs (unless the user is typing in them; `force` after
   * the run answered a send, so a refused value never stays on screen). */
  sync(force = false) {
    const v = this.value;
    const focused = force ? null : document.activeElement;
    if (this.box) this.box.checked = !!v;
    if (this.select && focused !== this.select) this.select.value = String(v);
    if (this.num && focused !== this.num) this.num.value = v == null ? "" : fmtValue(v);
    if (this.range && typeof v === "number") {
      if (!this.rangeBounds || v < this.rangeBounds[0] || v > this.rangeBounds[1]) this.rangeBounds = softRange(this.act, v);
      if (focused !== this.range || !this.sending) this.range.value = this.toSlider(v);
    } else if (this.range && !this.rangeBounds) {
      this.rangeBounds = softRange(this.act, this.act.initial);
    }
  }
}

export class Controls {
  /** send(act, value) → Promise<cmd_id> */
  constructor(root, note, send) {
    this.root = root;
    this.note = note;
    this.send = send;
    this.controls = new Map();
    this.signature = "";
    this.answered = new Map(); // recent ledger entries by cmd_id (bounded)
  }

  setActuators(list, docStep) {
    const sig = list.map((a) => `${a.group}:${a.param_key}:${a.type}`).join("|");
    if (sig !== this.signature) {
      this.signature = sig;
      this.controls.clear();
      this.root.textContent = "";
      if (!list.length) {
        this.root.append(el("p", "muted", "This run exposes no actuators."));
      }
      const groups = new Map();
      for (const a of list) {
        if (!groups.has(a.group)) groups.set(a.group, []);
        groups.get(a.group).push(a);
      }
      const titles = { opt: "Optimizer", loss: "Loss weights", custom: "Custom" };
      for (const [g, acts] of groups) {
        const box = el("div", "ctl-group");
        box.dataset.group = g;
        box.append(el("h4", null, titles[g] || g));
        for (const a of acts) {
          const c = new Control(a, this.send, (id) => this.answered.get(id));
          this.controls.set(a.param_key, c);
          box.append(c.root);
        }
        this.root.append(box);
      }
    }
    for (const a of list) this.controls.get(a.param_key)?.update(a, docStep);
    this.note.textContent = list.length ? `${list.length} from the run` : "";
  }

  /** A ledger entry: confirm our sends; take applied values from its changes. */
  onEntry(entry) {
    this.answered.set(entry.cmd_id, entry);
    if (this.answered.size > 500) this.answered.delete(this.answered.keys().next().value);
    // values first, then the answer to our send: the box then shows the applied value
    if (entry.decision === "applied" && entry.changes) {
      for (const [k, ch] of Object.entries(entry.changes)) {
        const c = this.controls.get(k);
        const ours = c && (!c.sending || c.sending.cmd_id === entry.cmd_id);
        if (ours && ch && typeof ch === "object" && "new" in ch) c.setApplied(ch.new, entry.step);
      }
    }
    for (const c of this.controls.values()) c.resolve(entry);
  }

  debug() {
    return [...this.controls.values()].map((c) => ({
      key: c.act.param_key,
      type: c.act.type,
      group: c.act.group,
      applied: c.value,
      sending: c.sending,
      lastSent: c.lastSent || null,
      status: c.status.textContent,
    }));
  }
}

// ----------------------------------------------------------------------------- ledger table
function impactCell(imp, metric) {
  const td = el("td", "impact");
  if (!imp) return td;
  const b = imp.before || {};
  const a = imp.after || {};
  if (b.mean == null || a.mean == null) {
    td.append(el("span", "muted", a.n != null && b.n != null ? `collecting… (${a.n || 0} after)` : "–"));
    return td;
  }
  const higher = isHigherBetter(metric);
  const delta = b.mean ? (a.mean - b.mean) / Math.abs(b.mean) : 0;
  const better = higher ? delta > 0 : delta < 0;
  const mean = el("span", `imp-mean ${Math.abs(delta) < 0.005 ? "" : better ? "good" : "bad"}`);
  mean.textContent = `${fmtNum(b.mean)} → ${fmtNum(a.mean)} (${delta >= 0 ? "+" : "−"}${Math.abs(delta * 100).toFixed(1)}%)`;
  const slope = el("span", "imp-slope muted", ` · slope ${fmtNum(b.slope)} → ${fmtNum(a.slope)}`);
  td.title = `${metric}: mean over ${b.n} steps before vs ${a.n} after`;
  td.append(mean, slope);
  return td;
}

export function describeEntry(e) {
  const what = [e.module, e.op].filter(Boolean).join(" ") + (e.id ? ` ${e.id}` : "");
  const lines = fmtChanges(e.changes);
  if (e.checkpoint) lines.push(`saved ${e.checkpoint}`);
  if (!lines.length && e.params && Object.keys(e.params).length) {
    lines.push(
      Object.entries(e.params)
        .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : fmtValue(v)}`)
        .join(", "),
    );
  }
  return { what, lines };
}

export class LedgerTable {
  /** actions: {undo(entry), cancel(entry)} */
  constructor(body, count, actions) {
    this.body = body;
    this.count = count;
    this.actions = actions;
  }

  render(entries, { impacts, metric, undone, pendingIds, maxRows = 300, highlightSeq }) {
    this.body.textContent = "";
    const rows = entries.slice(-maxRows).reverse();
    this.count.textContent = entries.length ? `${entries.length} entries` : "";
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "muted", "no entries yet");
      td.colSpan = 7;
      tr.append(td);
      this.body.append(tr);
      return;
    }
    for (const e of rows) {
      const tr = el("tr", `dec-${e.decision}`);
      tr.dataset.seq = e.seq;
      tr.dataset.cmd = e.cmd_id || "";
      if (highlightSeq === e.seq) tr.classList.add("highlight");
      tr.append(el("td", "num-col", e.seq ?? ""), el("td", "num-col", e.step ?? ""));
      const src = el("td");
      const badge = el("span", "src", e.source || "?");
      badge.style.setProperty("--sc", sourceColor(e.source));
      src.append(badge);
      tr.append(src);
      const { what, lines } = describeEntry(e);
      const change = el("td", "change");
      change.append(el("span", "what", what));
      for (const l of lines) change.append(el("div", "delta", l));
      if (e.decision === "scheduled" && e.at_step != null) change.append(el("div", "muted small", `at step ${e.at_step}`));
      if (e.undo_of) change.append(el("div", "muted small", `undo of ${String(e.undo_of).slice(0, 10)}`));
      tr.append(change);
      const dec = el("td", "decision");
      dec.append(el("span", `dec dec-${e.decision}`, e.decision));
      if (e.error) dec.append(el("div", "reason", e.error));
      tr.append(dec);
      const hasChanges = e.changes && Object.keys(e.changes).length;
      tr.append(hasChanges && e.decision === "applied" ? impactCell(impacts.get(e.seq), metric) : el("td"));
      const act = el("td", "row-actions");
      const undoable =
        e.decision === "applied" && hasChanges && !e.undo_of && !["control", "freeze"].includes(e.module);
      if (undoable && undone.has(e.cmd_id)) act.append(el("span", "muted small", "undone"));
      else if (undoable) {
        const b = el("button", "btn tiny undo-btn", "Undo");
        b.title = "restore the old values";
        b.addEventListener("click", () => this.actions.undo(e, b));
        act.append(b);
      } else if (e.decision === "scheduled" && pendingIds.has(e.cmd_id)) {
        const b = el("button", "btn tiny cancel-btn", "Cancel");
        b.addEventListener("click", () => this.actions.cancel(e, b));
        act.append(b);
      }
      tr.append(act);
      this.body.append(tr);
    }
  }
}

// ----------------------------------------------------------------------------- pending list
export function renderPending(ul, pending, cancel) {
  ul.textContent = "";
  if (!pending.length) {
    ul.append(el("li", "muted", "nothing pending"));
    return;
  }
  for (const p of [...pending].sort((a, b) => a.at_step - b.at_step)) {
    const li = el("li", "pending-item");
    li.dataset.cmd = p.cmd_id;
    const params = Object.entries(p.params || {})
      .map(([k, v]) => `${k} = ${fmtValue(v)}`)
      .join(", ");
    li.append(el("span", "at", `step ${p.at_step}`), el("span", "what", `${p.module} ${params || p.op}`));
    const b = el("button", "btn tiny", "Cancel");
    b.addEventListener("click", () => cancel(p, b));
    li.append(b);
    ul.append(li);
  }
}
