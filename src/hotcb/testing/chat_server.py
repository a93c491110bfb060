"""A local chat-completions server that replies from a script: the LLM autopilot's stand-in
for a paid API in tests, benchmarks and dry runs (standard library only).

    with ScriptedChatServer([{"json": {"reasoning": "...", "actions": [], "next_check": 50}}]) as srv:
        ... AIConfig(base_url=srv.base_url, model="scripted") ...

It speaks ``POST {base}/chat/completions`` the way OpenAI-compatible servers do (``choices``,
``usage``) and records every request it gets (path, headers with lower-case names, JSON body) in ``requests``. Each
request takes the next step of the script; past its end the last step repeats. A step is:

- ``{"json": obj}`` or ``{"content": "text"}``: a 200 reply with that message content;
- ``{"status": 429, "retry_after": 0}`` (any status): an error reply;
- ``{"html": "<html>…"}``: a 200 whose body is not JSON (``text/html``: what a wrong
  ``base_url``, a web page instead of the API, answers);
- ``{"hang": seconds}``: no answer for that long (the client times out), then a benign reply;
- ``{"reject_response_format": True}``: a 400 when the request has ``response_format``, else
  the next step's reply.

``policy``, instead of a script: a function from the request's JSON body to a step.

In a step's ``html``, ``content`` and ``message`` text, ``{authorization}`` stands for the
request's Authorization header: what a debug page or a proxy that quotes the request sends back
(the key must not reach any file from there).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["NOTHING", "ScriptedChatServer"]

#: A reply that changes nothing.
NOTHING: dict[str, Any] = {
    "json": {"reasoning": "nothing to change", "actions": [], "next_check": None}
}

Step = Mapping[str, Any]


class ScriptedChatServer:
    def __init__(
        self,
        script: Sequence[Step] = (),
        *,
        policy: Callable[[dict[str, Any]], Step] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.script = list(script) or [NOTHING]
        self.policy = policy
        self.requests: list[dict[str, Any]] = []
        self._i = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each reply waits ~40 ms for a delayed ACK

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                outer._serve(self, body)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.httpd.server_address[0]!s}:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()  # release hanging handlers
        self.httpd.shutdown()
        self.httpd.server_close()

    def _next(self, body: dict[str, Any]) -> Step:
        if self.policy is not None:
            return self.policy(body)
        with self._lock:
            step = self.script[min(self._i, len(self.script) - 1)]
            self._i += 1
        if step.get("reject_response_format"):
            if "response_format" in body:
                return {"status": 400, "message": "response_format is not supported"}
            return self._next(body)
        return step

    def _serve(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        with self._lock:
            headers = {k.lower(): v for k, v in h.headers.items()}
            self.requests.append({"path": h.path, "headers": headers, "body": body})
        step = self._next(body)
        if any("{authorization}" in str(step.get(k, "")) for k in ("html", "content", "message")):
            auth = headers.get("authorization", "")
            step = {k: v.replace("{authorization}", auth) if isinstance(v, str) else v
                    for k, v in step.items()}  # fmt: skip
        if "hang" in step:
            self._stop.wait(float(step["hang"]))
            step = NOTHING
        if "html" in step:
            return _send(h, 200, step["html"], {}, content_type="text/html")
        status = int(step.get("status", 200))
        if status != 200:
            err: dict[str, Any] = {"error": {"message": step.get("message", f"scripted {status}"),
                             "type": "scripted", "code": status}}  # fmt: skip
            extra = {"Retry-After": str(step.get("retry_after", 0))} if status == 429 else {}
            return _send(h, status, err, extra)
        content = step["content"] if "content" in step else json.dumps(step.get("json"))
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages") or ())
        doc: dict[str, Any] = {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "scripted"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt // 4, "completion_tokens": len(content) // 4,
                      "total_tokens": prompt // 4 + len(content) // 4},
        }  # fmt: skip
        _send(h, 200, doc, {})


def _send(
    h: BaseHTTPRequestHandler,
    status: int,
    doc: Any,
    headers: Mapping[str, str],
    content_type: str = "application/json",
) -> None:
    data = doc.encode() if content_type != "application/json" else json.dumps(doc).encode()
    try:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
        pass
