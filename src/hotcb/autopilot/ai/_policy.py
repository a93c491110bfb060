"""The LLM policy: when to ask the model, the call itself (off the caller's thread), its cost,
its failures, the fallback to the rules, and the run's memory for the next runs.

The engine (:class:`hotcb.autopilot.engine.Autopilot`) owns the run: it builds the context,
asks :meth:`AIPolicy.due` whether to call, :meth:`AIPolicy.start` s the call, and applies what
:meth:`AIPolicy.poll` hands back. A call runs in a daemon thread, so a hung endpoint never
blocks a round of the autopilot, the dashboard's event loop, or the training.

Files (DESIGN §3): every prompt, response, usage, cost, error and decision goes to
``hotcb.ai.jsonl``; the spend, the failures, the fallback and this run's learnings to
``hotcb.ai.state.json`` (replaced atomically). The key is never in either: it lives in this
process's memory, is sent only to the configured base URL (by the ``openai`` SDK), and is
scrubbed from any error text before that text is written anywhere. The base URL itself is
written and shown redacted (:func:`hotcb.runfiles.redact_url`: a ``user:password@`` or an
``?api-key=`` in it is a credential too); only the call gets it whole.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ... import jsonl
from ...runfiles import redact_url, url_secrets
from ._config import KEY_ENV, AIConfig
from ._context import REPLY_SCHEMA
from ._prices import cost_usd
from ._reply import MalformedReply, Reply, kept, parse_reply, reply_text, token_counts

__all__ = ["AI_LOG", "AI_STATE", "AIPolicy", "Outcome", "project_memory"]

log = logging.getLogger("hotcb.autopilot.ai")

AI_LOG = "hotcb.ai.jsonl"
AI_STATE = "hotcb.ai.state.json"
_PER_RUN_LEARNINGS = 3
#: The longest wait after failed calls, however many in a row (the wait doubles after each).
MAX_BACKOFF_SEC = 600.0
#: What of a call is written: a response's text, a body that is not JSON, an error's text (a
#: 30 MB reply grew the AI log by 30 MB a call). The reasoning is kept shorter (``kept``).
_TEXT_KEPT = 20_000
_BODY_KEPT = 2000
_ERROR_KEPT = 2000


@dataclass
class Outcome:
    """What a finished call gave: a reply to act on, or nothing (``error`` says why)."""

    call: int
    step: int
    reply: Reply | None = None
    error: str | None = None
    kind: str | None = None  # timeout, rate_limit, connection, status, malformed, ...
    cost_usd: float = 0.0
    replied_at: float = 0.0  # time.time() when the reply arrived


def _import_openai() -> Any:
    try:
        import openai
    except ImportError:
        raise ImportError(
            'the LLM autopilot needs the openai SDK: pip install "hotcb[ai]"'
        ) from None
    return openai


def _url_credentials(url: str) -> list[str]:
    """The secrets of ``url`` as they may turn up in text: its password and secret parameters
    (:func:`~hotcb.runfiles.url_secrets`), and the Basic ``Authorization`` that its
    ``user:password@`` becomes (an endpoint's error page may quote the request's headers)."""
    found = url_secrets(url)
    u = urllib.parse.urlsplit(url)
    if u.password:
        password = urllib.parse.unquote(u.password)
        login = f"{urllib.parse.unquote(u.username or '')}:{password}"
        found += [password, base64.b64encode(login.encode()).decode()]
    return found


def _endpoint(url: str) -> tuple[str, dict[str, str]]:
    """``url`` as the SDK takes it: the base URL without its query, and the query's parameters
    (``?api-key=…``, how some gateways take their key), which the SDK sends with every request.
    Left in the base URL, the query came before the request's path (the SDK appends the path
    to the base URL as text: ``/v1/?api-key=Kchat/completions``)."""
    u = urllib.parse.urlsplit(url)
    if not u.query:
        return url, {}
    base = urllib.parse.urlunsplit(u._replace(query="", fragment=""))
    return base, dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))


class AIPolicy:
    """One run's LLM policy. ``key``: the endpoint's key (default: ``HOTCB_AI_KEY``)."""

    def __init__(self, run_dir: str, config: AIConfig, *, key: str | None = None) -> None:
        self.openai = _import_openai()
        self.run_dir = run_dir
        self.config = config
        self._key = key if key is not None else os.environ.get(KEY_ENV, "")
        self._log_path = os.path.join(run_dir, AI_LOG)
        self._state_path = os.path.join(run_dir, AI_STATE)
        st = jsonl.read_json(self._state_path, {}) or {}
        st = st if isinstance(st, dict) else {}
        self.calls = int(st.get("calls", 0))
        self.spent = float(st.get("spent_usd", 0.0))
        self.tokens = dict(st.get("tokens") or {"prompt": 0, "completion": 0})
        self.failures = int(st.get("failures", 0))
        self.fallback: str | None = st.get("fallback")
        self.structured = st.get("structured", config.structured != "off")
        self.last_call_step = int(st.get("last_call_step", -1))
        self.next_check_step: int | None = st.get("next_check_step")
        self.learnings: list[str] = list(st.get("learnings") or ())
        self.summarized = bool(st.get("summarized", False))
        self.price_known = cost_usd(config.model, 0, 0, config.prices) is not None
        #: The base URL as files and pages show it (the call alone gets it whole).
        self.shown_url = redact_url(config.base_url)
        self._secrets = [s for s in _url_credentials(config.base_url) if len(s) >= 4]
        self._last_call_time = 0.0  # monotonic; a restarted autopilot may call at once
        self._backoff_until = 0.0
        self._backoffs = 0  # failed calls in a row that backed off (a malformed reply does not)
        self._client: Any = None
        self._thread: threading.Thread | None = None
        #: (call, step) of the call waiting for its reply; None once it came or was abandoned
        self._asking: tuple[int, int] | None = None
        self._done: Outcome | None = None
        # reentrant: a reply is read under it (close() waits for that, or abandons the call)
        self._lock = threading.RLock()
        if self.fallback is not None:  # an earlier autopilot's: this one may have a new budget,
            # limit or endpoint (restored, the model stayed off for good, without a word)
            self.write("model_again", reason=f"a new autopilot asks the model again (the rules "
                       f"had taken over: {self.fallback})")  # fmt: skip
            log.warning("hotcb AI autopilot: the rules had taken over (%s); asking the model "
                        "again", self.fallback)  # fmt: skip
            self.fallback, self.failures = None, 0
            self.save()

    # ------------------------------------------------------------------ when
    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the call in flight (at most ``timeout`` s); whether none is in flight now."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.busy

    def due(self, step: int, detected: bool) -> str | None:
        """Why to call the model now (a detection, the cadence, the step it asked for), or
        None. Never while a call is in flight, during a back-off, more often than the minimum
        interval, without new data, or once the rules took over (the budget check is here)."""
        if self.fallback is not None or self.busy or self._done is not None:
            return None
        if self.spent >= self.config.budget_usd:
            self.fall_back(f"the budget of ${self.config.budget_usd:g} is spent "
                           f"(${self.spent:.4f} in {self.calls} calls)")  # fmt: skip
            return None
        now = time.monotonic()
        if step <= self.last_call_step or now < self._backoff_until:
            return None
        if self._last_call_time and now - self._last_call_time < self.config.min_interval_sec:
            return None
        if self.next_check_step is not None and step >= self.next_check_step:
            return f"the model asked to look again at step {self.next_check_step}"
        if detected:
            return "a detector fired"
        start = max(self.last_call_step, 0)
        if step >= start + self.config.every_steps:
            return f"every {self.config.every_steps} steps"
        return None

    def went_back(self, step: int) -> None:
        """The run's steps went back to ``step`` (a resume, a restart): the calls of the gone
        steps no longer space the next one, nor does a look-again the model asked for there
        (no call came until the new life passed the old life's last call, a NaN in between
        handled by nobody)."""
        if self.last_call_step >= step:
            self.last_call_step = step
            self.next_check_step = None
        self.save()

    # ------------------------------------------------------------------ the call
    def start(self, messages: Sequence[Mapping[str, str]], step: int, why: str) -> int:
        """Send ``messages`` in a background thread; the call's number."""
        self.calls += 1
        call = self.calls
        self.last_call_step = step
        self.next_check_step = None
        self._last_call_time = time.monotonic()
        self.write("call", call=call, step=step, why=why, model=self.config.model,
                   base_url=self.shown_url, messages=list(messages))  # fmt: skip
        self._asking = (call, step)
        self._thread = threading.Thread(
            target=self._worker,
            args=(list(messages), call, step),
            name=f"hotcb-ai-{call}",
            daemon=True,  # a hung endpoint never holds the process at exit
        )
        self._thread.start()
        self.save()
        return call

    def _client_now(self) -> Any:
        if self._client is None:
            # base_url always given: the SDK would otherwise read OPENAI_BASE_URL, and the key
            # must go to the configured endpoint only
            base_url, query = _endpoint(self.config.base_url)
            self._client = self.openai.OpenAI(
                base_url=base_url, api_key=self._key or "no-key", default_query=query or None,
                timeout=self.config.timeout_sec, max_retries=self.config.max_retries,
            )  # fmt: skip
        return self._client

    def _create(self, messages: list[dict[str, str]]) -> Any:
        kwargs: dict[str, Any] = {"model": self.config.model, "messages": messages,
                                  "temperature": self.config.temperature}  # fmt: skip
        if self.structured:
            schema = {"name": "hotcb_decision", "schema": REPLY_SCHEMA, "strict": False}
            try:
                return self._client_now().chat.completions.create(
                    **kwargs, response_format={"type": "json_schema", "json_schema": schema}
                )
            except (self.openai.BadRequestError, self.openai.UnprocessableEntityError) as exc:
                if self.config.structured == "on":
                    raise
                # the server does not take response_format: plain replies from now on
                self.structured = False
                self.write("structured_off", reason=self.scrub(str(exc))[:500])
        return self._client_now().chat.completions.create(**kwargs)

    def _worker(self, messages: list[dict[str, str]], call: int, step: int) -> None:
        t0 = time.monotonic()
        outcome = Outcome(call=call, step=step)
        resp: Any = None
        try:
            resp = self._create(messages)
        except json.JSONDecodeError as exc:  # a body sent as JSON that is not: read as the text
            resp = exc.doc
        except Exception as exc:  # every failure is an outcome, never a dead thread
            outcome.kind, outcome.error = self._classify(exc), self._describe(exc)
        with self._lock:
            if self._asking is not None:  # else close() abandoned the call: nothing to read
                self._finish(outcome, resp, t0)

    def _finish(self, outcome: Outcome, resp: Any, t0: float) -> None:
        if outcome.error is None:
            outcome.replied_at = time.time()
            try:
                self._read(resp, outcome, time.monotonic() - t0)
            except Exception as exc:  # a reply no check foresaw: a failed call all the same
                outcome.reply, outcome.kind = None, "malformed"
                outcome.error = f"the reply could not be read: {type(exc).__name__}: {exc}"
        if outcome.error is not None:  # every error text, whatever path made it, once more
            outcome.error = kept(self.scrub(outcome.error), _ERROR_KEPT)
        self._done, self._asking = outcome, None

    def _read(self, resp: Any, outcome: Outcome, latency: float) -> None:
        if isinstance(resp, (str, bytes)):  # the SDK hands over a body that is not JSON as is
            # (a debug page or a proxy may quote the request, key and all)
            body = self.scrub(resp.decode(errors="replace") if isinstance(resp, bytes) else resp)
            self.write("response", call=outcome.call, text=kept(body, _BODY_KEPT), usage={},
                       cost_usd=0.0, latency_sec=round(latency, 4))  # fmt: skip
            outcome.kind = "malformed"
            outcome.error = (
                f"the endpoint did not answer with JSON ({' '.join(body[:120].split())!r}): is "
                f"base_url ({self.shown_url}) the API's address, usually ending in /v1?"
            )
            return
        prompt, completion, note = token_counts(getattr(resp, "usage", None), self.scrub)
        cost = cost_usd(self.config.model, prompt, completion, self.config.prices) or 0.0
        outcome.cost_usd = cost
        text: str | None = None
        try:
            text = self.scrub(reply_text(resp, self.scrub))  # reasoning, errors quote it
        except MalformedReply as exc:
            outcome.kind, outcome.error = "malformed", str(exc)
        usage_note = {"usage_note": note} if note else {}
        self.write("response", call=outcome.call, text=kept(text or "", _TEXT_KEPT),
                   usage={"prompt_tokens": prompt, "completion_tokens": completion},
                   **usage_note, cost_usd=cost, latency_sec=round(latency, 4))  # fmt: skip
        with self._lock:
            self.spent += cost
            self.tokens["prompt"] = self.tokens.get("prompt", 0) + prompt
            self.tokens["completion"] = self.tokens.get("completion", 0) + completion
        if text is None:
            return
        try:
            outcome.reply = parse_reply(text, max_actions=self.config.max_actions)
        except MalformedReply as exc:
            outcome.kind, outcome.error = "malformed", str(exc)

    def _describe(self, exc: BaseException) -> str:
        """A failed call in words; one that reached no server names the address it tried
        (redacted) and why it failed there."""
        text = f"{type(exc).__name__}: {exc}"
        o = self.openai
        if isinstance(exc, o.APIConnectionError) and not isinstance(exc, o.APITimeoutError):
            cause = exc.__cause__
            why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
            text += f"{why} calling {self.shown_url}: is the server up, at that address?"
        return text

    def _classify(self, exc: BaseException) -> str:
        o = self.openai
        if isinstance(exc, o.APITimeoutError):
            return "timeout"
        if isinstance(exc, o.RateLimitError):
            return "rate_limit"
        if isinstance(exc, o.APIConnectionError):
            return "connection"
        if isinstance(exc, o.APIStatusError):
            return f"status_{exc.status_code}"
        return "error"

    def poll(self) -> Outcome | None:
        """The finished call's outcome, once; None while none finished. A failure counts
        toward the fallback and backs off (doubling); a reply resets the count."""
        with self._lock:
            outcome, self._done = self._done, None
        if outcome is None:
            return None
        if outcome.error is None:
            self.failures = self._backoffs = 0
        else:
            self.failures += 1
            wait = 0.0
            if outcome.kind != "malformed":  # a bad reply is retried at the next cadence
                self._backoffs += 1  # (only these double the wait: 7 bad replies made 64x)
                wait = min(self.config.backoff_sec * 2 ** (self._backoffs - 1),
                           max(self.config.backoff_sec, MAX_BACKOFF_SEC))  # fmt: skip
                self._backoff_until = time.monotonic() + wait
            self.write("error", call=outcome.call, step=outcome.step, error_kind=outcome.kind,
                       error=outcome.error, failures=self.failures,
                       backoff_sec=wait)  # fmt: skip
            if self.failures >= self.config.max_failures:
                self.fall_back(f"{self.failures} failed calls in a row (last: {outcome.kind}: "
                               f"{outcome.error[:200]})")  # fmt: skip
        self.save()
        return outcome

    def heed(self, outcome: Outcome) -> None:
        """The reply of ``outcome`` is acted on: the step the model asked to look again at, and
        its learning, are kept. Not for one that came too late (the run ended, or went back
        since it was asked): its learning went into the run's memory all the same."""
        reply = outcome.reply
        if reply is None:
            return
        if reply.next_check is not None:
            self.next_check_step = outcome.step + reply.next_check
        if reply.learning and not self.summarized:
            self.learnings = [*self.learnings, reply.learning][-_PER_RUN_LEARNINGS:]
        self.save()

    # ------------------------------------------------------------------ fallback, records
    def fall_back(self, reason: str) -> None:
        """The rules take over for the rest of the run (recorded)."""
        if self.fallback is None:
            self.fallback = reason
            self.write("fallback", reason=reason)
            log.warning("hotcb AI autopilot: %s; the rules take over", reason)
            self.save()

    def scrub(self, text: str) -> str:
        """``text`` without the key and the base URL's secrets (an error message may quote
        the request)."""
        if self._key and len(self._key) >= 4:
            text = text.replace(self._key, "[key]")
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def write(self, kind: str, **fields: Any) -> None:
        jsonl.append(self._log_path, {"kind": kind, "wall_time": time.time(), **fields})

    def status(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "base_url": self.shown_url, "model": cfg.model, "calls": self.calls,
            "spent_usd": round(self.spent, 6), "budget_usd": cfg.budget_usd,
            "left_usd": round(max(0.0, cfg.budget_usd - self.spent), 6),
            "price_known": self.price_known, "tokens": dict(self.tokens),
            "failures": self.failures, "fallback": self.fallback, "structured": self.structured,
            "last_call_step": self.last_call_step, "next_check_step": self.next_check_step,
            "in_flight": self._asking is not None,
        }  # fmt: skip

    def save(self) -> None:
        with self._lock:
            state = {"v": 1, **self.status(), "learnings": self.learnings,
                     "summarized": self.summarized,
                     "settings": {**self.config.public(), "base_url": self.shown_url},
                     "updated": time.time()}  # fmt: skip
        jsonl.write_json_atomic(self._state_path, state)

    def close(self) -> tuple[int, int, str] | None:
        """The autopilot stops: a call still waiting for its reply is abandoned (an ``error``
        record of kind ``abandoned``; a reply that comes later is not read), and so is a reply
        that came and was not acted on yet; the state says no call is in flight. ``(call,
        step, why)`` of the abandoned call, or None."""
        with self._lock:  # a reply being read now is read to the end first
            asking, self._asking = self._asking, None
            done, self._done = self._done, None
            out: tuple[int, int, str] | None = None
            if asking is not None:
                call, step = asking
                self.write("error", call=call, step=step, error_kind="abandoned",
                           error="the autopilot stopped before the model answered",
                           failures=self.failures, backoff_sec=0.0)  # fmt: skip
                out = (call, step, "the autopilot stopped before the model answered")
            elif done is not None:  # (it left no word of what became of it)
                what = "the model's reply" if done.error is None else f"the call's {done.kind}"
                out = (done.call, done.step, f"the autopilot stopped before it acted on {what}")
            self.save()
        return out

    def finish(self, learnings: Sequence[str]) -> None:
        """The run ended: keep a few learnings for the project's next runs (once)."""
        if self.summarized:
            return
        self.learnings = (list(learnings) + self.learnings)[:_PER_RUN_LEARNINGS]
        self.summarized = True
        self.write("learnings", learnings=self.learnings)
        self.save()


def project_memory(run_dir: str, limit: int) -> list[str]:
    """Learnings of this project's finished runs (the other runs beside ``run_dir``), newest
    run first, at most ``limit``."""
    if limit <= 0:
        return []
    parent = os.path.dirname(os.path.abspath(run_dir))
    found: list[tuple[float, str, list[str]]] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    for name in names:
        other = os.path.join(parent, name)
        if other == os.path.abspath(run_dir) or not os.path.isdir(other):
            continue  # this run, or a file beside the runs
        st = jsonl.read_json(os.path.join(other, AI_STATE), None)
        if isinstance(st, dict) and st.get("summarized") and st.get("learnings"):
            found.append((float(st.get("updated") or 0), name, [str(x) for x in st["learnings"]]))
    out: list[str] = []
    for _, name, learnings in sorted(found, reverse=True):
        out += [f"run {name}: {text}" for text in learnings]
    return out[:limit]
