// Pure helpers of the page (no DOM, no page state): metric series and small formatting.
// app.js imports them; tests/js imports them under node (`node --test tests/js/`).

/** Keep a series bounded: past the limit, the points older than the newest `limit / 2` go
 * into `limit / 4` buckets of equal step width, each kept as its min and max, so spikes survive
 * and old history keeps an even share of the points however often this runs (the server
 * downsamples history the same way). The first point stays. Changes `s` ({step, value}) in
 * place. */
export function compact(s, limit) {
  if (s.step.length <= limit) return;
  const cut = s.step.length - Math.floor(limit / 2);
  const buckets = Math.max(1, Math.floor(limit / 4));
  const first = s.step[0];
  const span = s.step[cut - 1] - first + 1;
  const steps = [first];
  const vals = [s.value[0]];
  let i = 1;
  while (i < cut) {
    const b = Math.floor(((s.step[i] - first) * buckets) / span);
    let lo = -1;
    let hi = -1;
    const from = i;
    for (; i < cut && Math.floor(((s.step[i] - first) * buckets) / span) === b; i++) {
      const v = s.value[i];
      if (v == null) continue;
      if (lo < 0 || v < s.value[lo]) lo = i;
      if (hi < 0 || v > s.value[hi]) hi = i;
    }
    if (lo < 0) lo = hi = from; // a bucket of gaps keeps one
    for (const j of lo === hi ? [lo] : lo < hi ? [lo, hi] : [hi, lo]) {
      steps.push(s.step[j]);
      vals.push(s.value[j]);
    }
  }
  s.step = steps.concat(s.step.slice(cut));
  s.value = vals.concat(s.value.slice(cut));
}

/** Append live metric records ({step, metrics: {name: value}}) to a run's series
 * (`rd.series`: Map name → {step, value}); a series longer than 1.5 × `limit` is compacted.
 * `rd.lastStep` is the step of the newest record, as the server counts it: a step that goes
 * back is a new life of the run (resumed from an earlier checkpoint), and the run is there
 * now, not at the highest step it ever reached. Returns whether a step went back. */
export function appendRecords(rd, records, limit) {
  let wentBack = false;
  for (const rec of records) {
    const step = rec.step;
    if (typeof step !== "number") continue;
    for (const [name, value] of Object.entries(rec.metrics || {})) {
      let s = rd.series.get(name);
      if (!s) {
        s = { step: [], value: [] };
        rd.series.set(name, s);
      }
      const n = s.step.length;
      if (n && step <= s.step[n - 1]) {
        if (step === s.step[n - 1]) {
          s.value[n - 1] = value;
          continue;
        }
        // the run went back (resumed from a checkpoint): drop the steps it will redo
        wentBack = true;
        let k = n;
        while (k && s.step[k - 1] >= step) k--;
        s.step.length = k;
        s.value.length = k;
      }
      s.step.push(step);
      s.value.push(value);
      if (s.step.length > limit * 1.5) compact(s, limit);
    }
    rd.lastStep = step;
  }
  return wentBack;
}

/** A duration in words: "45 s", "3 min", "2.5 h". */
export function ago(sec) {
  if (sec < 90) return `${Math.round(sec)} s`;
  if (sec < 5400) return `${Math.round(sec / 60)} min`;
  return `${(sec / 3600).toFixed(1)} h`;
}

/** Default "at step" for the scheduler: a round step a little ahead of `step`. */
export function stepAhead(step) {
  return Math.ceil((step + 200) / 100) * 100;
}

/** Why a change cannot be queued for `atStep` while the run is at `step`: the kernel applies
 * a command whose step has passed at once, so "queued for step 10" at step 3575 would be
 * untrue. null when `atStep` is still ahead (or the run's step is unknown). */
export function pastStepError(atStep, step, key) {
  if (typeof step !== "number" || atStep > step) return null;
  const now = key ? `change ${key} under Controls to set it now` : "use Controls to set it now";
  return `step ${atStep} has passed (the run is at step ${step}): ${now}, or pick a later step`;
}

/** Whether the server's words for a run say it is over: its script closed it, its process
 * died, a launched training exited before it opened its kernel, or the folder is a copy of a
 * live run's (its trainer writes to the original). Nothing will act on commands any more. */
export function runIsOver(runState) {
  return typeof runState === "string" && /^(finished at step|stopped at step|crashed|interrupted|ended before|copied or moved here|closed before)/.test(runState);
}

/** The chip of a run whose folder the server no longer finds (deleted or moved). */
export const GONE_CHIP = "gone (no longer on disk)";

/**
 * The header's state chip: `{text, cls, seen}`. `state`: the run's last known state in words
 * ("running", "paused", "stale", "finished at step N" …); `gone`: the server answers 404 for
 * the run (its folder was deleted), whatever it said before; `offline`: the page lost its
 * server (`hotcb launch --serve` stops it when training ends), so that state is only what was
 * last seen: "disconnected — last seen running at step N".
 */
export function runChip({ noRun = false, over = false, paused = false, stale = false, offline = false, gone = false, runState = null, step = null }) {
  if (noRun) return { text: "no runs", cls: "none", seen: null };
  let text = paused ? "paused" : stale ? "stale" : "running";
  let cls = paused ? "paused" : stale ? "stale" : "live";
  if (gone) [text, cls] = [GONE_CHIP, "gone"];
  else if (over) [text, cls] = [runState, runState.startsWith("crashed") ? "crashed" : "ended"];
  if (!offline) return { text, cls, seen: null };
  const seen = over || gone ? text : `${text} at step ${step ?? "?"}`;
  return { text: `disconnected — last seen ${seen}`, cls: "offline", seen };
}

/**
 * Refill part `name` of a panel (`panel.parts[name]`, a DOM box) with `make()`, only when
 * `key` differs from the last fill (`panel.keys`): a state file rewritten every round must not
 * replace the buttons under the mouse.
 */
export function fillPart(panel, name, key, make) {
  const sig = JSON.stringify(key);
  if (panel.keys[name] === sig) return;
  panel.keys[name] = sig;
  const box = panel.parts[name];
  box.textContent = "";
  box.append(...make());
}

/** "branch of <parent> at step S" for a run of /api/runs with `branch` ({parent, parent_path,
 * step}); "" for a run that is no branch. A parent outside the served folder is named by the
 * last part of its path. */
export function branchLabel(run) {
  const b = run?.branch;
  if (!b) return "";
  const parent = b.parent ?? (b.parent_path || "?").replace(/[\\/]+$/, "").split(/[\\/]/).pop();
  return b.step != null ? `branch of ${parent} at step ${b.step}` : `branch of ${parent}`;
}

/** What the run picker calls a run of /api/runs: its id, and its name when that differs
 * ("sweep/a — baseline"). A run served as its own folder (`hotcb serve --dir RUN`) has the id
 * ".", which says nothing: its name alone. */
export function runPickerText(run) {
  const id = run?.run_id;
  if (id === "." || id === "" || id == null) return run?.name || "this run";
  return run.name && run.name !== id ? `${id} — ${run.name}` : id;
}

/** What the compare list calls a run: its id, or its name for the run at the served root ("."). */
export function runListName(run) {
  const id = run?.run_id;
  return id === "." || id === "" || id == null ? run?.name || "this run" : id;
}

/** The step of the newest record of a live `metrics` message (null: none has a step). */
export function lastRecordStep(records) {
  for (let i = (records || []).length - 1; i >= 0; i--) {
    if (typeof records[i]?.step === "number") return records[i].step;
  }
  return null;
}

/** The step the compare list shows for a run of /api/runs: while the page watches the run
 * (it is drawn), what the live stream last said (`live`: its newest metric record or status),
 * which the runs list (polled every 10 s) lags behind; else the list's `last_step`. */
export function shownStep(run, live, watched) {
  if (watched && typeof live === "number") return live;
  return typeof run?.last_step === "number" ? run.last_step : null;
}

/**
 * The runs of /api/runs as a tree, flattened for a list: each branch right under its parent
 * (children in the order they came), `depth` levels in. A run whose parent is not in the list
 * (or a loop of parents) is a root. Returns [{run, depth, label}], `label` from branchLabel.
 */
export function runTree(runs) {
  const ids = new Set(runs.map((r) => r.run_id));
  const children = new Map();
  const roots = [];
  for (const r of runs) {
    const p = r.branch?.parent;
    if (p != null && p !== r.run_id && ids.has(p)) {
      if (!children.has(p)) children.set(p, []);
      children.get(p).push(r);
    } else roots.push(r);
  }
  const out = [];
  const seen = new Set();
  const visit = (r, depth) => {
    if (seen.has(r.run_id)) return;
    seen.add(r.run_id);
    out.push({ run: r, depth, label: branchLabel(r) });
    for (const c of children.get(r.run_id) || []) visit(c, depth + 1);
  };
  for (const r of roots) visit(r, 0);
  for (const r of runs) visit(r, 0); // runs in a loop of parents: nobody reached them
  return out;
}

/** A run's series (Map name → {step, value}) from step `from` on, for drawing a branch's
 * parent only where the two can be compared. */
export function seriesFrom(series, from) {
  const out = new Map();
  for (const [name, s] of series) {
    let i = 0;
    while (i < s.step.length && s.step[i] < from) i++;
    out.set(name, i ? { step: s.step.slice(i), value: s.value.slice(i) } : s);
  }
  return out;
}
