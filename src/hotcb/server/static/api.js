// REST and WebSocket access to the hotcb server. The only module that knows URLs.
//
// The access token: opening the printed URL (`/?token=T`) is answered with a redirect to
// `/#token=T`; takeTokenFromAddress() takes it out of the address, and once the server has
// taken it, it is kept in this origin's localStorage (the origin includes the port: a page on
// another port of the host cannot read it). fetch() sends it as `Authorization: Bearer`, the
// WebSocket as the subprotocol `hotcb.token.<hex>`: no URL here carries it, and no cookie does
// (browsers send a host's cookies to every port of it).

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

function detailText(detail) {
  if (detail == null) return null;
  if (typeof detail === "string") return detail;
  // FastAPI validation errors: [{loc, msg, ...}]
  if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return JSON.stringify(detail);
}

const TOKEN_KEY = "hotcb.token";
// A token from the address is only tried until the server has taken it: any site can send the
// browser to `/#token=junk`, and a stored token that works must not be replaced by that.
let candidate = null;
let pageToken = null; // where the storage is off (a sandbox): this page's own copy

/** Take `#token=T` out of the address (the server's redirect of the printed URL puts it
 * there); other parts of the fragment stay. The page tries it first; it is stored once the
 * server takes it (judge). */
export function takeTokenFromAddress() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const t = hash.get("token");
  if (t == null) return;
  hash.delete("token");
  if (t) candidate = t;
  const rest = hash.toString();
  history.replaceState(history.state, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
}

function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

/** The token to present: one from the address not yet judged, else the newest stored one
 * (another tab may have stored a new one since), else this page's copy, else null (a server
 * without a token). */
function currentToken() {
  return candidate ?? storedToken() ?? pageToken;
}

/** What the server's answer to a call that needs the token says of a candidate: taken (2xx),
 * it is stored for every tab; refused (401), it is dropped. */
function judge(token, res) {
  if (token !== candidate) return;
  if (res.status === 401) {
    candidate = null;
  } else if (res.ok) {
    candidate = null;
    pageToken = token;
    try {
      localStorage.setItem(TOKEN_KEY, token);
    } catch {
      /* storage off: this page keeps its copy */
    }
  }
}

const hex = (text) => Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, "0")).join("");

/** The WebSocket's subprotocols: `hotcb`, which the server accepts, and the token beside it. */
function socketProtocols() {
  const t = currentToken();
  return t ? ["hotcb", `hotcb.token.${hex(t)}`] : ["hotcb"];
}

let unauthorized = () => {};

/** `fn(presented)` is called on every 401: the server does not take the page's token (a
 * restart with a new one; `presented`: the page had one), or wants one the page lacks. A
 * refused WebSocket cannot say so itself; a REST call can. */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

/** fetch() on the page's origin; JSON in and out; non-2xx raises ApiError with the server's
 * reason (and a 401 also goes to the onUnauthorized handler). */
export async function api(path, { method = "GET", body, raw = false } = {}, retried = false) {
  const token = currentToken();
  const res = await call(path, method, body, token);
  if (path !== "/api/health") judge(token, res); // /api/health answers anyone
  if (res.status === 401 && !retried && currentToken() !== token) {
    // refused with a token since dropped (the address's) or replaced (by another tab): again
    return api(path, { method, body, raw }, true);
  }
  if (!res.ok) {
    let detail = null;
    try {
      detail = detailText((await res.json()).detail);
    } catch {
      /* not JSON */
    }
    if (res.status === 401) unauthorized(token != null);
    throw new ApiError(res.status, detail || `${res.status} ${res.statusText}`);
  }
  return raw ? res : res.json();
}

function call(path, method, body, token) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  return fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
}

/** URL path of a run: `/api/runs/<run_id>/<suffix>`. The run at the served root has the id
 * "."; browsers drop "." (and "%2E") path segments, so the server answers that run at
 * `/api/runs/<suffix>` and the segment is left out. */
export const runUrl = (runId, suffix, query) => {
  const seg = runId === "." || runId === "" || runId == null
    ? ""
    : `${runId.split("/").map(encodeURIComponent).join("/")}/`;
  let url = `/api/runs/${seg}${suffix}`;
  if (query) {
    const q = new URLSearchParams(query).toString();
    if (q) url += `?${q}`;
  }
  return url;
};

export const sendCommand = (runId, cmd) =>
  api(runUrl(runId, "commands"), { method: "POST", body: cmd });

/**
 * One WebSocket for the page, reconnecting with exponential back-off. `onMessage(msg)` gets
 * every JSON message; `onState(state, info)` gets "open" | "closed" | "connecting".
 * After a reconnect the caller re-subscribes and re-fetches history (in onState("open")).
 * A browser does not tell why a handshake failed (a server down, or a 401 for a token it no
 * longer takes): on "closed" the caller asks the REST API, whose answer says.
 */
export class LiveSocket {
  constructor({ onMessage, onState, delayMs = 1000, maxDelayMs = 10000 }) {
    this.onMessage = onMessage;
    this.onState = onState;
    this.delayMs = delayMs;
    this.maxDelayMs = maxDelayMs;
    this.attempt = 0;
    this.ws = null;
    this.subscribed = [];
    this.timer = null;
    this.opens = 0;
  }

  url() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    return `${proto}//${location.host}/ws`;
  }

  connect() {
    clearTimeout(this.timer);
    this.onState("connecting", { attempt: this.attempt });
    let ws;
    try {
      ws = new WebSocket(this.url(), socketProtocols());
    } catch {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.opens += 1;
      if (this.subscribed.length) this.send({ subscribe: this.subscribed });
      this.onState("open", { reconnect: this.opens > 1 });
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.onMessage(msg);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.retry();
    };
    ws.onerror = () => ws.close();
  }

  retry() {
    const delay = Math.min(this.maxDelayMs, this.delayMs * 2 ** this.attempt);
    this.attempt += 1;
    this.onState("closed", { delay });
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, delay);
  }

  /** The server answered over HTTP while the socket waits out its back-off: connect now (and
   * from the first delay again on failure). True when a connection was started. */
  reconnectNow() {
    if (this.ws || this.timer == null) return false; // open or opening, or never connected
    clearTimeout(this.timer);
    this.timer = null;
    this.attempt = 0;
    this.connect();
    return true;
  }

  subscribe(runIds) {
    this.subscribed = [...runIds];
    this.send({ subscribe: this.subscribed });
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
  }

  get connected() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }
}
