// Side panels: actuator controls, the scheduler, the ledger table.
import { fmtNum, isHigherBetter, sourceColor } from "./charts.js";

/** A new element with a class and text (text only: data never goes through innerHTML). */
export const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
};

/** " ±spread" for a level and its relative noise (a bracket arm's), to two significant digits
 * as `hotcb log` and `tune status` print it; "" without noise. */
export function fmtSpread(noise, level) {
  const spread = Math.abs((noise || 0) * level);
  return spread > 0 ? ` ±${Number(spread.toPrecision(2))}` : "";
}

export function fmtValue(v) {
  // its strings quoted: ["0", "2"] (FeatureCapture's patterns) read as the numbers [0, 2]
  if (Array.isArray(v)) return `[${v.map((x) => (typeof x === "string" ? JSON.stringify(x) : fmtValue(x))).join(", ")}]`;
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
      const words = t.replace(/^[[(]|[\])]$/g, "").split(/[,\s]+/).filter(Boolean);
      const parts = words.map(decimal);
      if (!parts.length || parts.some((x) => !Number.isFinite(x))) throw new Error(`${act.param_key} needs numbers like 0.9, 0.999`);
      return parts;
    }
    case "int": {
      const n = decimal(t);
      if (!Number.isInteger(n)) throw new Error(`${act.param_key} needs an integer`);
      return n;
    }
    default: {
      const n = decimal(t);
      if (Number.isNaN(n)) throw new Error(`${act.param_key} needs a number`);
      if (!Number.isFinite(n)) throw new Error(`${act.param_key}: ${t} is too large a number`);
      return n;
    }
  }
}

/** `t` as a decimal number (`3e-4`, `.5`, `-2`), NaN for anything else: `Number()` also read
 * `0x10` as 16, `0b1` as 1 and an empty text as 0. */
function decimal(t) {
  return /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(t) ? Number(t) : NaN;
}

// ----------------------------------------------------------------------------- controls
const SLIDER_TICKS = 1000;
/** A log slider spans this many decades either side of the applied value (÷100 … ×100). */
export const LOG_WINDOW_DECADES = 2;
/** Keyboard steps on a slider are sent once no further key came for this long (or on blur). */
export const KEY_SETTLE_MS = 500;
/** A change to more than this many times the applied value (or less than 1/this) asks first. */
export const CONFIRM_FACTOR = 10;

/** The slider's range. A log slider (lr: hard bounds 1e-10..10, eleven decades) spans a window
 * of ÷10^decades … ×10^decades around the applied value, clamped to the hard bounds, so a drag
 * is a controlled change; the "wider" button adds a decade each way, and the window follows the
 * value after each change. A linear slider keeps its hard bounds, narrowed to a few times the
 * value when they span far more. Typing in the number box still reaches every value within the
 * hard bounds. */
export function softRange(act, value, decades = LOG_WINDOW_DECADES) {
  const ref = Math.abs(Number(value ?? act.current ?? act.initial ?? 1)) || 1;
  if (act.type === "log_float") {
    const lo0 = act.min > 0 ? act.min : 0;
    const hi0 = act.max > 0 ? act.max : Infinity;
    const f = 10 ** decades;
    const lo = Math.max(lo0, ref / f);
    const hi = Math.min(hi0, ref * f);
    if (lo < hi) return [lo, hi];
    return [lo0 || ref / f, Number.isFinite(hi0) ? hi0 : ref * f];
  }
  const lo = act.min ?? Math.min(0, ref);
  let hi = act.max;
  const init = Math.abs(Number(act.initial ?? ref)) || 1;
  if (hi == null || hi - lo > 100 * Math.max(init, 1)) hi = lo + Math.max(4 * Math.max(init, ref), 1);
  if (act.max != null) hi = Math.min(hi, act.max);
  return [lo, hi];
}

/** Whether the log window `[lo, hi]` already reaches both hard bounds (nothing left to widen). */
export function windowAtBounds(act, [lo, hi]) {
  const lo0 = act.min > 0 ? act.min : 0;
  const hi0 = act.max > 0 ? act.max : Infinity;
  return lo <= lo0 && hi >= hi0;
}

/** A change from `old` to `next` big enough to ask about first: "×100", "÷50", "to 0", "×−330"
 * (the sign flips too); null for a smaller one, or when either is not a number or the old value
 * is 0 (no scale to judge). */
export function bigChange(old, next, factor = CONFIRM_FACTOR) {
  if (typeof old !== "number" || typeof next !== "number") return null;
  if (!Number.isFinite(old) || !Number.isFinite(next) || old === 0) return null;
  if (next === 0) return "to 0";
  const r = Math.abs(next / old);
  const sign = next / old < 0 ? "−" : "";
  const fmt = (x) => String(Number(x.toPrecision(2)));
  if (r > factor) return `×${sign}${fmt(r)}`;
  if (r < 1 / factor) return `÷${sign}${fmt(1 / r)}`;
  return null;
}

/** A number as the kernel writes it in its messages (Python's `{x:g}`: six significant digits,
 * so a bound of 0.999999 does not read as 1). */
export function fmtG(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) return String(x);
  if (x === 0) return "0";
  const exp = Math.floor(Math.log10(Math.abs(Number(x.toPrecision(6)))));
  if (exp < -4 || exp >= 6) {
    const [m, e] = x.toExponential(5).split("e");
    const n = Number(e);
    return `${m.replace(/\.?0+$/, "")}e${n < 0 ? "-" : "+"}${String(Math.abs(n)).padStart(2, "0")}`;
  }
  return String(Number(x.toPrecision(6)));
}

/** Why `value` is outside the actuator's hard bounds (its `min`/`max`, each element of a
 * tuple), in the kernel's words: "lr=-1 is below the minimum 1e-10 for actuator 'lr'"; null
 * when it is within them (or the actuator has none). The page says it before anything else:
 * the run would refuse the value anyway. */
export function boundsError(act, value) {
  const key = act.param_key;
  const check = (v, what) => {
    if (typeof v !== "number") return null;
    if (act.min != null && v < act.min) return `${what}=${fmtG(v)} is below the minimum ${fmtG(act.min)} for actuator '${key}'`;
    if (act.max != null && v > act.max) return `${what}=${fmtG(v)} is above the maximum ${fmtG(act.max)} for actuator '${key}'`;
    return null;
  };
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const err = check(value[i], `${key}[${i}]`);
      if (err) return err;
    }
    return null;
  }
  return check(value, key);
}

class Control {
  constructor(act, send, answered = () => undefined) {
    this.act = act;
    this.send = send;
    this.answered = answered; // cmd_id → ledger entry already seen (it can beat the POST reply)
    this.sending = null; // {cmd_id, value}
    this.decades = LOG_WINDOW_DECADES;
    this.dragging = false; // a pointer holds the slider
    this.keyed = false; // the slider's next change event comes from a key
    this.keyTimer = null; // keyboard steps waiting to be sent as one command
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
    this.root.append(this.inputs);
    if (act.description) this.root.title = act.description;
    this.build();
    if (this.windowRow) this.root.append(this.windowRow);
    this.root.append(this.status);
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
      this.buildBox();
      return;
    }
    const numeric = ["float", "int", "log_float"].includes(a.type);
    if (numeric && (a.type === "log_float" || a.min != null || a.max != null)) this.buildSlider();
    this.num = el("input", "num");
    this.num.setAttribute("inputmode", "decimal");
    this.buildBox();
  }

  /** The number box (a tuple's text box too) sends on Enter only. Escape, or leaving the box
   * without Enter (a click elsewhere, Tab), sends nothing and puts the applied value back: the
   * box's `change` event, which a blur fires too, is not a request to send. */
  buildBox() {
    this.num.setAttribute("aria-label", `${this.act.param_key} value`);
    this.num.addEventListener("input", () => this.clearError()); // the next edit retires an error
    this.num.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.isComposing) {
        ev.preventDefault();
        this.commitText(this.num.value);
      } else if (ev.key === "Escape") {
        this.restoreBox();
        this.num.blur();
      }
    });
    this.num.addEventListener("blur", () => {
      if (!this.asking) this.restoreBox(); // a confirm() dialog takes the focus: not a leave
    });
    this.inputs.append(this.num);
  }

  /** The number box shows the applied value again (what was typed is dropped, unsent). */
  restoreBox() {
    if (!this.idle()) return; // the slider's gesture writes the box
    this.num.value = this.value == null ? "" : fmtValue(this.value);
  }

  /** The slider sends one command per gesture: a drag on release (`change`, not `input`),
   * keyboard steps once no key came for KEY_SETTLE_MS (or when it loses focus). */
  buildSlider() {
    const a = this.act;
    this.range = el("input", "range");
    this.range.type = "range";
    this.range.min = 0;
    this.range.max = SLIDER_TICKS;
    this.range.step = 1;
    this.range.setAttribute("aria-label", a.param_key);
    this.range.addEventListener("input", () => {
      this.clearError();
      this.num.value = fmtValue(this.fromSlider(Number(this.range.value)));
    });
    this.range.addEventListener("pointerdown", () => {
      this.dragging = true;
      this.keyed = false;
      clearTimeout(this.keyTimer);
      this.keyTimer = null;
      const up = () => {
        window.removeEventListener("pointerup", up);
        window.removeEventListener("pointercancel", up);
        this.dragging = false;
      };
      window.addEventListener("pointerup", up);
      window.addEventListener("pointercancel", up);
    });
    this.range.addEventListener("keydown", (ev) => {
      if (!ev.altKey && !ev.ctrlKey && !ev.metaKey && ev.key !== "Tab") this.keyed = true;
    });
    this.range.addEventListener("change", () => {
      if (this.keyed) {
        this.keyed = false;
        clearTimeout(this.keyTimer);
        this.keyTimer = setTimeout(() => this.flushKeys(), KEY_SETTLE_MS);
      } else {
        this.commitSlider();
      }
    });
    this.range.addEventListener("blur", () => {
      if (this.keyTimer) this.flushKeys();
    });
    this.inputs.append(this.range);
    // the window's ends, and (log sliders) a button that widens it
    this.windowRow = el("div", "ctl-window");
    this.loLabel = el("span", "win-lo");
    this.hiLabel = el("span", "win-hi");
    this.windowRow.append(this.loLabel);
    if (a.type === "log_float") {
      this.wider = el("button", "btn tiny ghost wider-btn", "wider");
      this.wider.type = "button";
      this.wider.title = "widen the slider's range ten times each way";
      this.wider.addEventListener("click", () => this.widen());
      this.windowRow.append(this.wider);
    }
    this.windowRow.append(this.hiLabel);
  }

  /** Nobody is moving the slider and no keyboard steps wait to be sent. */
  idle() {
    return !this.dragging && !this.keyTimer;
  }

  flushKeys() {
    clearTimeout(this.keyTimer);
    this.keyTimer = null;
    this.commitSlider();
  }

  commitSlider() {
    this.dragging = false; // a change ends the gesture, whichever event comes first
    const v = this.fromSlider(Number(this.range.value));
    if (v === this.value) {
      this.sync(true);
      return;
    }
    this.commit(v);
  }

  widen() {
    if (!this.rangeBounds || windowAtBounds(this.act, this.rangeBounds)) return;
    this.decades += 1;
    this.setWindow(softRange(this.act, this.value, this.decades));
    if (typeof this.value === "number") this.range.value = this.toSlider(this.value);
  }

  setWindow(bounds) {
    this.rangeBounds = bounds;
    // short, unless that would misread a bound (0.999999 is not 1)
    const label = (b) => (Number(fmtValue(b)) === Number(b.toPrecision(6)) ? fmtValue(b) : fmtG(b));
    this.loLabel.textContent = label(bounds[0]);
    this.hiLabel.textContent = label(bounds[1]);
    this.windowRow.title = `the slider spans ${fmtValue(bounds[0])} … ${fmtValue(bounds[1])}; type a value for anything else`;
    if (this.wider) this.wider.disabled = windowAtBounds(this.act, bounds) || this.act.state === "disabled";
  }

  fromSlider(tick) {
    const [lo, hi] = this.rangeBounds;
    const f = tick / SLIDER_TICKS;
    let v;
    if (this.act.type === "log_float") v = 10 ** (Math.log10(lo) + f * (Math.log10(hi) - Math.log10(lo)));
    else v = lo + f * (hi - lo);
    if (this.act.type === "int") return Math.round(v);
    // three digits, kept within the window: its ends are what the bounds allow (a beta2
    // slider's end, 0.999999, rounded to 1 and was refused)
    if (tick <= 0) return lo;
    if (tick >= SLIDER_TICKS) return hi;
    return Math.min(hi, Math.max(lo, Number(v.toPrecision(3))));
  }

  toSlider(v) {
    const [lo, hi] = this.rangeBounds;
    let f;
    if (this.act.type === "log_float") f = (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo));
    else f = (v - lo) / (hi - lo || 1);
    return Math.round(Math.max(0, Math.min(1, f)) * SLIDER_TICKS);
  }

  commitText(text) {
    // Enter on the value shown, unedited (or typed as it is): nothing to send. The box shows
    // the applied value rounded (0.0009877 as 9.88e-4), so sending it moved the knob by the
    // rounding, and an equal value was a no-op command ledgered "applied"
    const shown = this.value == null ? null : fmtValue(this.value);
    if (shown !== null && text.trim() === shown) {
      this.unchanged(shown);
      return;
    }
    let v;
    try {
      v = parseFor(this.act, text);
    } catch (err) {
      this.showError(err.message);
      this.sync(true);
      return;
    }
    if (JSON.stringify(v) === JSON.stringify(this.value)) {
      this.unchanged(shown);
      return;
    }
    this.commit(v);
  }

  /** Nothing sent: the value in force is the one asked for. */
  unchanged(shown) {
    this.showStatus(`unchanged: ${this.act.param_key} is ${shown}`, "", 4000);
    this.sync(true);
  }

  async commit(value) {
    const key = this.act.param_key;
    if (this.over) {
      this.showStatus(`not sent: ${this.overWhy || "the run is over"}, nothing would apply it`, "", 4000);
      this.sync(true);
      return;
    }
    // a value the run would refuse is refused here, before any "big change?" question
    const outside = boundsError(this.act, value);
    if (outside) {
      this.showError(outside);
      this.sync(true);
      return;
    }
    const big = bigChange(this.value, value);
    if (big && !this.ask(`Change ${key} from ${fmtValue(this.value)} to ${fmtValue(value)} (${big})?`)) {
      this.showStatus(`not sent: ${key} stays ${fmtValue(this.value)}`, "", 4000);
      this.sync(true);
      return;
    }
    this.showStatus(`${fmtValue(value)} sent…`, "sending");
    this.root.classList.add("is-sending");
    try {
      const cmdId = await this.send(this.act, value);
      this.sending = { cmd_id: cmdId, value };
      this.lastSent = this.sending;
      this.sent = (this.sent || 0) + 1;
      const early = this.answered(cmdId);
      if (early) this.resolve(early);
    } catch (err) {
      this.root.classList.remove("is-sending");
      this.showError(err.message);
      this.sync(true);
    }
  }

  /** The browser's confirmation; the box's blur while it is open is not the user leaving. */
  ask(text) {
    this.asking = true;
    try {
      return window.confirm(text);
    } finally {
      this.asking = false;
    }
  }

  /** The ledger answered one of our commands. */
  resolve(entry) {
    if (!this.sending || entry.cmd_id !== this.sending.cmd_id) return false;
    this.sending = null;
    this.root.classList.remove("is-sending");
    if (entry.decision === "applied") this.showStatus(`applied at step ${entry.step}`, "ok", 4000);
    else if (entry.decision === "scheduled") this.showStatus(`scheduled for step ${entry.at_step}`, "ok", 4000);
    else this.showError(`${entry.decision}: ${entry.error || "no reason given"}`, 10000);
    this.sync(true);
    return true;
  }

  showStatus(text, kind, clearAfter) {
    clearTimeout(this.statusTimer);
    this.error = false;
    this.status.textContent = text;
    this.status.className = `ctl-status ${kind || ""}`;
    if (clearAfter) {
      this.statusTimer = setTimeout(() => {
        this.status.textContent = "";
        this.status.className = "ctl-status";
      }, clearAfter);
    }
  }

  /** An error about the value the user gave (unreadable, out of bounds, refused): it stays
   * until the next edit of the control (clearError) or the next status. */
  showError(text, clearAfter) {
    this.showStatus(text, "bad", clearAfter);
    this.error = true;
  }

  clearError() {
    if (this.error) this.showStatus("", "");
  }

  /** The run is over (or its folder is gone, `why` says which): nothing would apply a change,
   * so none can be sent. A gone run's number box is disabled too: no what-if is asked of a run
   * the server no longer has. */
  setOver(over, why = "the run is over", gone = false) {
    this.over = over;
    this.overWhy = why;
    this.gone = !!over && gone;
    this.lock();
    this.root.title = over ? `${why}: nothing would apply a change` : "";
  }

  /** Disabled actuator: nothing works. Run over: only the number box stays, to ask the
   *  what-if of a value (typing sends nothing; commit() refuses). Run gone: nothing at all. */
  lock() {
    const disabled = this.act.state === "disabled";
    for (const inp of this.root.querySelectorAll("input, select, button")) {
      inp.disabled = disabled || (!!this.over && (inp !== this.num || !!this.gone));
    }
  }

  /** `at`: when the run recorded the value (a ledger entry's or the actuators file's
   *  wall_time). The two arrive on separate channels, and a page loads the file before the
   *  ledger: an older record never replaces a newer one (a finished run's last lr change
   *  is older than the value its scheduler left in the file). */
  setApplied(value, at) {
    if (at != null) {
      if (this.appliedAt != null && at < this.appliedAt) return;
      this.appliedAt = at;
    }
    this.value = value;
    this.applied.textContent = fmtValue(value);
    this.sync();
  }

  /** `docAt`: when the actuators file was written (its wall_time). */
  update(act, docAt) {
    const disabled = act.state === "disabled";
    this.act = { ...this.act, ...act };
    this.root.classList.toggle("disabled", disabled);
    this.lock();
    if (disabled) this.showStatus(`disabled: ${act.last_error || "too many failures"}`, "bad");
    const stale = docAt != null && this.appliedAt != null && docAt < this.appliedAt;
    if (!this.sending && !stale) this.setApplied(act.current, docAt);
    else if (this.wider && !disabled && this.rangeBounds) this.wider.disabled = windowAtBounds(this.act, this.rangeBounds);
  }

  /** Show the applied value in the inputs (unless the user is typing in them, or moving the
   * slider; `force` after the run answered a send, so a refused value never stays on screen).
   * A log slider's window is centred on the applied value again. */
  sync(force = false) {
    const v = this.value;
    const focused = force ? null : document.activeElement;
    if (this.box) this.box.checked = !!v;
    if (this.select && focused !== this.select) this.select.value = String(v);
    if (this.num && focused !== this.num && this.idle()) this.num.value = v == null ? "" : fmtValue(v);
    if (!this.range || !this.idle()) return;
    if (typeof v === "number") {
      const log = this.act.type === "log_float";
      const outside = !this.rangeBounds || v < this.rangeBounds[0] || v > this.rangeBounds[1];
      if (outside || (log && !this.sending)) this.setWindow(softRange(this.act, v, this.decades));
      if (!this.sending) this.range.value = this.toSlider(v);
    } else if (!this.rangeBounds) {
      this.setWindow(softRange(this.act, this.act.initial, this.decades));
    }
  }
}

/** The Controls panel's line when it has no control to show. */
export const EMPTY_CONTROLS = {
  waiting: "No actuators yet: they appear when the run has started.",
  none: "This run exposes no actuators (yet): they appear when it publishes some.",
  over: "No actuators: this run published none, and it is over.",
  gone: "No actuators: the run's folder is no longer on disk.",
};

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

  /** What the panel says before the run's actuators are known (a run was just picked). */
  reset() {
    this.signature = "";
    this.loaded = false;
    this.controls.clear();
    this.root.textContent = "";
    this.empty = el("p", "muted ctl-empty", EMPTY_CONTROLS.waiting);
    this.root.append(this.empty);
    this.note.textContent = "";
  }

  /** The line of a run without actuators: one that is over published none, and never will. */
  emptyText() {
    if (!this.loaded) return EMPTY_CONTROLS.waiting;
    if (!this.over) return EMPTY_CONTROLS.none;
    return this.gone ? EMPTY_CONTROLS.gone : EMPTY_CONTROLS.over;
  }

  setActuators(list, docAt) {
    const sig = list.map((a) => `${a.group}:${a.param_key}:${a.type}`).join("|");
    const first = !this.loaded;
    this.loaded = true;
    if (sig !== this.signature || (first && !list.length)) {
      this.signature = sig;
      this.controls.clear();
      this.root.textContent = "";
      if (!list.length) {
        this.empty = el("p", "muted ctl-empty", this.emptyText());
        this.root.append(this.empty);
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
    for (const a of list) this.controls.get(a.param_key)?.update(a, docAt);
    if (this.over) for (const c of this.controls.values()) c.setOver(true, this.overWhy(), this.gone);
    this.note.textContent = list.length ? `${list.length} from the run` : "";
  }

  /** The run is over (finished, stopped, crashed), or `gone` (its folder is no longer on
   * disk): every control is disabled, saying why. */
  setOver(over, gone = false) {
    if (over === !!this.over && gone === !!this.gone) return;
    this.over = over;
    this.gone = gone;
    for (const c of this.controls.values()) c.setOver(over, this.overWhy(), gone);
    if (!this.controls.size && this.empty && this.loaded) this.empty.textContent = this.emptyText();
  }

  overWhy() {
    return this.gone ? "the run's folder is no longer on disk" : "the run is over";
  }

  /** A ledger entry: confirm our sends; take applied values from its changes. */
  onEntry(entry) {
    this.answered.set(entry.cmd_id, entry);
    if (this.answered.size > 500) this.answered.delete(this.answered.keys().next().value);
    // values first, then the answer to our send: the box then shows the applied value (a
    // ramp's command names its target, reached at its end: the actuators file has its moves)
    if (entry.decision === "applied" && entry.changes && !entry.transition) {
      for (const [k, ch] of Object.entries(entry.changes)) {
        const c = this.controls.get(k);
        const ours = c && (!c.sending || c.sending.cmd_id === entry.cmd_id);
        if (ours && ch && typeof ch === "object" && "new" in ch) c.setApplied(ch.new, entry.wall_time);
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
      window: c.rangeBounds || null,
      decades: c.range ? c.decades : null,
      slider: c.range ? Number(c.range.value) : null,
      idle: c.idle(),
      sent: c.sent || 0,
      disabled: !!c.over || c.act.state === "disabled",
      sendable: !c.over && c.act.state !== "disabled",
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

const VALUE_MODULES = new Set(["opt", "loss", "custom"]);
const TUNER_VALUE_OPS = new Set(["mutate", "rollback"]);

/** Whether an entry's module and op set actuator values: opt, loss, custom, the tuner's
 * mutations and rollbacks, and a start bracket's moves that kept the weights (one that put
 * weights back has no impact to measure: the loss before it belongs to other weights). */
const setsValues = (e) =>
  VALUE_MODULES.has(e.module) ||
  (e.module === "tune" && (TUNER_VALUE_OPS.has(e.op) || (e.op === "bracket" && !(e.tune?.restored ?? []).length)));

/** The settle's winner: the lr from where the bracket began to where it settled, and the move
 * that won the last round ("×1" alone read as "the starting lr won"), as `hotcb log` says it. */
function bracketWon(w) {
  const { began, value, factor } = w;
  if (typeof began === "number" && typeof value === "number" && began > 0) {
    if (Math.abs(value / began - 1) < 1e-9) return "bracket over: lr ×1 won (the lr it began at)";
    return `bracket over: lr ${fmtValue(began)} → ${fmtValue(value)} (×${fmtNum(value / began)}; ×${fmtNum(factor)} won the last round)`;
  }
  return `bracket over: lr ×${fmtNum(factor)} won`;
}

/** A start bracket's entry (docs/tune.md) in words, as `hotcb log` says it; null for others. */
export function bracketFacts(b) {
  if (!b || typeof b !== "object") return null;
  const facts = [];
  if (b.settle) facts.push(b.winner ? bracketWon(b.winner) : "bracket over");
  if (b.settle && b.back_to_start) facts.push("on from the weights it began with");
  else if (typeof b.level === "number")
    facts.push(`bracket round ${b.round}: lr ${fmtValue(b.value)} (×${fmtNum(b.factor)}) ended at ${fmtNum(b.level)}${fmtSpread(b.noise, b.level)}${b.best ? ", best so far" : ""}`);
  else if (b.round != null) facts.push(`bracket round ${b.round}, arm ×${fmtNum(b.factor ?? 1)}`);
  for (const k of ["reason", "trouble"]) if (b[k]) facts.push(String(b[k]));
  return facts.join(" · ");
}

/** Whether a ledger entry changed values a trajectory depends on: applied, with `changes`, of
 * module opt, loss or custom or a tuner mutation or rollback, or an undo of such an entry
 * (`byCmd`: cmd_id → entry; an undo whose target is not loaded counts when it changed only
 * actuator keys). Pause, resume, freeze, checkpoints and callbacks change no value. */
export function isValueChange(e, byCmd = new Map(), actuatorKeys = null) {
  if (e.decision !== "applied" || e.step == null) return false;
  if (!e.changes || typeof e.changes !== "object" || !Object.keys(e.changes).length) return false;
  if (e.undo_of) {
    const target = byCmd.get(e.undo_of);
    if (target) return setsValues(target);
    return !!actuatorKeys && Object.keys(e.changes).every((k) => actuatorKeys.has(k));
  }
  return setsValues(e);
}

/** The impact column's rule: Map seq → the seq whose impact the row shows. Only value changes
 * (isValueChange) are in it, and one per step: every value change of a step points to the last
 * one of that step (highest seq), which alone shows the measured impact. */
export function impactRows(entries, actuatorKeys = null) {
  const byCmd = new Map();
  for (const e of entries) if (e.cmd_id && !e.undo_of && !byCmd.has(e.cmd_id)) byCmd.set(e.cmd_id, e);
  const last = new Map(); // step → seq
  const changes = [];
  for (const e of entries) {
    if (e.seq == null || !isValueChange(e, byCmd, actuatorKeys)) continue;
    changes.push(e);
    if (!last.has(e.step) || e.seq > last.get(e.step)) last.set(e.step, e.seq);
  }
  return new Map(changes.map((e) => [e.seq, last.get(e.step)]));
}

/** For each change whose impact is measured (`shown`, from impactRows), the first later one
 * inside its `window` steps after: its "after" mean holds that change's effect too (an lr
 * change at 299 read +4042 % from a loss weight ×5000 at 329). `seq → that change's entry`. */
export function mixedWithin(entries, shown, window, replaced = new Map()) {
  const out = new Map();
  if (!(window > 0)) return out;
  // by step (then seq): each change's next one is found by a binary search, not a scan (a
  // tuner's long ledger is rendered every second)
  const measured = entries
    .filter((e) => shown.get(e.seq) === e.seq && !replaced.has(e.seq) && Number.isFinite(e.step))
    .sort((a, b) => a.step - b.step || a.seq - b.seq);
  for (const e of measured) {
    let lo = 0;
    let hi = measured.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (measured[mid].step <= e.step) lo = mid + 1;
      else hi = mid;
    }
    const next = measured[lo];
    if (next && next.step <= e.step + window) out.set(e.seq, next);
  }
  return out;
}

/** The entries a later resume left behind (they ran in the life it replaced, killed after
 * its checkpoint), `seq → the resume's seq`, as `hotcb log` says it ("#a..#b ran in the life
 * it replaced"): their changes are in no curve of the life that goes on, which re-applied the
 * commands among them as entries of its own. The checkpoint's own entry stays. */
export function replacedByResume(entries) {
  const out = new Map();
  for (const r of entries) {
    const came = r.module === "kernel" && r.op === "resume" ? r.resumed_from : null;
    if (!came || typeof came !== "object") continue;
    const at = came.seq;
    const last = came.last ?? (r.seq ?? 0) - 1;
    if (!Number.isInteger(at) || !Number.isInteger(last)) continue;
    for (const e of entries) {
      if (!(e.seq > at && e.seq <= last) || out.has(e.seq)) continue;
      const saved = e.module === "control" && e.op === "checkpoint" && e.decision === "applied" && e.step === came.step;
      if (!saved) out.set(e.seq, r.seq);
    }
  }
  return out;
}

export function describeEntry(e) {
  const what = [e.module, e.op].filter(Boolean).join(" ") + (e.id ? ` ${e.id}` : "");
  const lines = fmtChanges(e.changes);
  const came = e.module === "kernel" && e.op === "resume" ? e.resumed_from : null;
  if (came && typeof came === "object") {
    const last = came.last ?? (e.seq ?? 0) - 1;
    const gone = Number.isInteger(came.seq) && Number.isInteger(last) && last > came.seq ? `; #${came.seq + 1}..#${last} ran in the life it replaced` : "";
    lines.push(`from the checkpoint at step ${came.step ?? "?"}${gone}`);
  }
  if (e.tune && typeof e.tune === "object") {
    const t = e.tune;
    const parts = [
      bracketFacts(t.bracket),
      t.trial != null && `trial ${t.trial}`,
      t.score != null && `score ${fmtNum(t.score)}`,
      t.decision,
      (t.restored ?? []).length > 0 && `${t.restored.join(" and ")} state restored`,
    ];
    if (parts.some(Boolean)) lines.push(parts.filter(Boolean).join(" · "));
  }
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

/** The ledger's count label: "230 entries", or "200 of 244 entries loaded" when the ledger
 * holds more (`total`, the server's count) than the page loaded. */
export function ledgerCount(loaded, total = null) {
  if (total != null && total > loaded) return `${loaded} of ${total} entries loaded`;
  return loaded ? `${loaded} entries` : "";
}

export class LedgerTable {
  /** actions: {undo(entry), cancel(entry)} */
  constructor(body, count, actions) {
    this.body = body;
    this.count = count;
    this.actions = actions;
  }

  /** `total`: how many entries the ledger holds (the server's count), when more than are
   * loaded here: the count says "200 of 244 entries loaded". */
  /** `locked`: why nothing can be sent (the run is over, the server unreachable): Undo and
   * Cancel are disabled with it as their tooltip. */
  render(entries, { impacts, metric, undone, refused = new Map(), pendingIds, maxRows = 300, highlightSeq, actuatorKeys = null, total = null, locked = null, window = 0 }) {
    this.body.textContent = "";
    const shown = impactRows(entries, actuatorKeys);
    const replaced = replacedByResume(entries);
    const mixed = mixedWithin(entries, shown, window, replaced);
    const rows = entries.slice(-maxRows).reverse();
    this.count.textContent = ledgerCount(entries.length, total);
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
      // why a controller (the autopilot, its guard) sent it: the rule and its evidence
      if (typeof e.reason === "string" && e.reason) change.append(el("div", "entry-reason muted", e.reason));
      tr.append(change);
      const dec = el("td", "decision");
      dec.append(el("span", `dec dec-${e.decision}`, e.decision));
      if (e.error) dec.append(el("div", "reason", e.error));
      tr.append(dec);
      const hasChanges = e.changes && Object.keys(e.changes).length;
      const impactOf = shown.get(e.seq);
      const gone = replaced.get(e.seq);
      if (gone != null) {
        // a killed life's: its impact would read the curve of the life that replaced it
        tr.classList.add("replaced");
        const td = el("td", "impact");
        if (hasChanges) td.append(el("span", "muted small", `ran in the life #${gone} replaced`));
        td.title = `the run resumed from an earlier checkpoint at #${gone}: this entry's life was left behind`;
        tr.append(td);
      } else if (impactOf === e.seq) {
        const td = impactCell(impacts.get(e.seq), metric);
        const next = mixed.get(e.seq);
        if (next && td.children.length) td.append(el("div", "muted small mixed", `with #${next.seq} at step ${next.step} in its window`));
        tr.append(td);
      }
      else if (impactOf != null) {
        const td = el("td", "impact");
        td.append(el("span", "muted small same-step", `see #${impactOf}`));
        td.title = `one impact per step: the changes of step ${e.step} are measured together, on #${impactOf}`;
        tr.append(td);
      } else tr.append(el("td", "impact"));
      const act = el("td", "row-actions");
      // the tuner keeps or rolls back its own changes (accept / reject, or disable it)
      const undoable =
        gone == null && e.decision === "applied" && hasChanges && !e.undo_of && !["control", "freeze", "tune"].includes(e.module);
      if (undoable && undone.has(e.cmd_id)) act.append(el("span", "muted small", "undone"));
      else if (undoable && refused.has(e.cmd_id)) {
        // the run refused its undo (a change of a life before a restart): not offered again
        const s = el("span", "muted small undo-refused", "can't undo");
        s.title = refused.get(e.cmd_id);
        act.append(s);
      } else if (undoable) {
        const b = el("button", "btn tiny undo-btn", "Undo");
        b.title = locked || "restore the old values";
        b.disabled = !!locked;
        b.addEventListener("click", () => this.actions.undo(e, b));
        act.append(b);
      } else if (e.decision === "scheduled" && pendingIds.has(e.cmd_id)) {
        const b = el("button", "btn tiny cancel-btn", "Cancel");
        if (locked) b.title = locked;
        b.disabled = !!locked;
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
