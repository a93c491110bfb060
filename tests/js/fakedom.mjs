// A minimal stand-in for the page's document, for node tests of the panels: enough for a panel
// to render, and an innerHTML that throws, so a test proves text goes into the page as text
// nodes only. `withDocument(fn)` runs fn with it installed as globalThis.document.
export class FakeNode {
  constructor(tag) {
    this.tagName = tag.toUpperCase();
    this.children = [];
    this.dataset = {};
    this.attributes = {};
    this.listeners = {};
    this.className = "";
    this.title = "";
    this.hidden = false;
    this.style = { setProperty: (k, v) => (this.style[k] = v) };
    const classes = new Set();
    this.classList = {
      toggle: (c, on) => ((on ?? !classes.has(c)) ? classes.add(c) : classes.delete(c)),
      contains: (c) => classes.has(c),
      add: (...cs) => cs.forEach((c) => classes.add(c)),
      remove: (...cs) => cs.forEach((c) => classes.delete(c)),
    };
  }
  set textContent(text) {
    this.children = text === "" ? [] : [String(text)];
  }
  get textContent() {
    return this.children.map((c) => (typeof c === "string" ? c : c.textContent)).join("");
  }
  set innerHTML(_) {
    throw new Error("the panel must not set innerHTML");
  }
  append(...nodes) {
    for (const n of nodes) this.children.push(typeof n === "string" ? n : n);
  }
  setAttribute(k, v) {
    this.attributes[k] = String(v);
  }
  addEventListener(type, fn) {
    (this.listeners[type] ||= []).push(fn);
  }
  /** Run the listeners of `type` with an event made of `props` (key, …) and a preventDefault. */
  dispatch(type, props = {}) {
    const ev = { type, target: this, defaultPrevented: false, ...props };
    ev.preventDefault = () => (ev.defaultPrevented = true);
    for (const fn of this.listeners[type] || []) fn(ev);
    return ev;
  }
  /** As a browser does: losing the focus fires `blur` (and `change` when the value was edited
   * since the focus came: the page must not take that for a request to send). */
  blur() {
    this.dispatch("change");
    this.dispatch("blur");
  }
  *walk() {
    yield this;
    for (const c of this.children) if (typeof c !== "string") yield* c.walk();
  }
  /** Tag names only ("input, select, button"), as the panels ask. */
  querySelectorAll(selector) {
    const tags = selector.split(",").map((t) => t.trim().toUpperCase());
    return [...this.walk()].filter((n) => n !== this && tags.includes(n.tagName));
  }
  find(cls) {
    return [...this.walk()].filter((n) => ` ${n.className} `.includes(` ${cls} `));
  }
}

/** Run ``fn()`` with a fake ``document`` (its elements are FakeNodes); returns what fn returns. */
export function withDocument(fn) {
  globalThis.document = { createElement: (tag) => new FakeNode(tag) };
  try {
    return fn();
  } finally {
    delete globalThis.document;
  }
}

/** withDocument for an async `fn`: the document stays until its promise settles. */
export async function withDocumentAsync(fn) {
  globalThis.document = { createElement: (tag) => new FakeNode(tag) };
  try {
    return await fn();
  } finally {
    delete globalThis.document;
  }
}
