"""The API reference at ``/docs``: the app's OpenAPI description as one static HTML page.

It takes the place of FastAPI's Swagger UI, which loads its scripts from a CDN: any script on
the dashboard's origin can read the token the page keeps in its storage, so none may come
from elsewhere. This page runs no script at all and loads only ``/static/apidoc.css``, under
the dashboard's own Content-Security-Policy. To try a call, copy its ``curl`` line.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any
from urllib.parse import quote

__all__ = ["ICON_SVG", "render"]

_LITERAL = re.compile(r"``(.+?)``", re.S)
_METHODS = ("get", "post", "put", "patch", "delete")
#: The dashboard's icon (index.html's): inline on this page, and at /favicon.ico.
ICON_SVG = (
    "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>"
    "<circle cx='8' cy='8' r='7' fill='#e8590c'/></svg>"
)
_ICON = "data:image/svg+xml," + quote(ICON_SVG)


def _text(doc: str) -> str:
    """Docstring text as paragraphs; ``literal`` becomes ``<code>``."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", doc or "") if p.strip()]
    return "".join(
        "<p>" + _LITERAL.sub(r"<code>\1</code>", html.escape(" ".join(p.split()))) + "</p>"
        for p in paras
    )


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))


def _type(schema: dict[str, Any]) -> str:
    """A schema in a few words: ``integer ≥ 4``, ``list of number``, ``Cmd``; ``null`` is left
    out of a choice (a parameter that may be left out says so by not being required)."""
    if "$ref" in schema:
        return _ref_name(schema["$ref"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            kinds = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return " or ".join(_type(s) for s in kinds)
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return "list of " + _type(schema.get("items", {}))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "object of " + _type(schema["additionalProperties"])
    bounds = [f"{sign} {schema[k]}" for k, sign in _BOUNDS if k in schema]
    return " ".join([str(kind), *bounds])


def _row(name: str, where: str, required: bool, schema: dict[str, Any], doc: str) -> str:
    default = schema.get("default")
    cells = [
        f"<code>{html.escape(name)}</code>" + (" <em>required</em>" if required else ""),
        html.escape(where),
        html.escape(_type(schema)),
        "" if default is None else f"<code>{html.escape(json.dumps(default))}</code>",
        html.escape(doc or schema.get("description", "")),
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _table(rows: list[str]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("name", "in", "type", "default", "about"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _body_schema(op: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON request body's schema, its ``$ref`` resolved; ``None`` for no body."""
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return None
    schema: dict[str, Any] = content["application/json"].get("schema", {})
    if "$ref" in schema:
        schema = schemas.get(_ref_name(schema["$ref"]), {})
    return schema


def _example(schema: dict[str, Any]) -> Any:
    """A body to send: the schema's own example, else its required fields with placeholders."""
    if schema.get("examples"):
        return schema["examples"][0]
    placeholder = {"boolean": True, "integer": 0, "number": 0.0, "array": [], "object": {}}
    props = schema.get("properties", {})
    out = {}
    for name in schema.get("required", props):
        prop = props.get(name, {})
        if "default" in prop:
            out[name] = prop["default"]
        elif prop.get("enum"):
            out[name] = prop["enum"][0]
        else:
            out[name] = placeholder.get(prop.get("type", ""), f"<{name}>")
    return out


def _curl(method: str, path: str, op: dict[str, Any], body: Any) -> str:
    """A line to paste: ``$RUN`` for the run id, ``<name>`` for other parameters it needs."""
    url = re.sub(r"\{(\w+)\}", lambda m: "$RUN" if m[1] == "run_id" else f"<{m[1]}>", path)
    needed = [
        p["name"] for p in op.get("parameters", ()) if p.get("in") == "query" and p.get("required")
    ]
    if needed:
        url += "?" + "&".join(f"{n}=<{n}>" for n in needed)
    auth = '-H "Authorization: Bearer $HOTCB_TOKEN"'
    address = f'"${{HOTCB_URL%/}}{url}"'
    if method == "get":
        return f"curl {auth} {address}"
    data = json.dumps(body, separators=(",", ":")).replace("'", "'\\''")
    return (
        f"curl -X {method.upper()} {auth} -H 'Content-Type: application/json' -d '{data}' {address}"
    )


def _operation(method: str, path: str, op: dict[str, Any], schemas: dict[str, Any]) -> str:
    rows = [
        _row(
            p["name"],
            p.get("in", ""),
            p.get("required", False),
            p.get("schema", {}),
            p.get("description", ""),
        )
        for p in op.get("parameters", ())
    ]
    body = _body_schema(op, schemas)
    example = None
    if body is not None:
        needed = set(body.get("required", ()))
        rows += [
            _row(name, "body", name in needed, prop, "")
            for name, prop in body.get("properties", {}).items()
        ]
        example = _example(body)
    answers = ", ".join(
        f"{html.escape(code)} {html.escape(r.get('description', ''))}"
        for code, r in op.get("responses", {}).items()
    )
    shown = (
        ""
        if example is None
        else f"<p>body, for example: <code>{html.escape(json.dumps(example))}</code></p>"
    )
    return (
        f'<section id="{_anchor(method, path)}"><h3><span class="method {method}">'
        f"{method.upper()}</span> <code>{html.escape(path)}</code></h3>"
        f"<p class=summary>{html.escape(op.get('summary', ''))}</p>{_text(op.get('description', ''))}"
        f"{_table(rows)}{shown}<p class=answers>answers: {answers}</p>"
        f"<pre>{html.escape(_curl(method, path, op, example))}</pre></section>"
    )


def _anchor(method: str, path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")


def render(spec: dict[str, Any], base_url: str) -> str:
    """The whole page for an OpenAPI ``spec`` (``app.openapi()``), served at ``base_url``."""
    info = spec.get("info", {})
    schemas = spec.get("components", {}).get("schemas", {})
    by_tag: dict[str, list[str]] = {}
    toc: dict[str, list[str]] = {}
    for path, ops in spec.get("paths", {}).items():
        for method in _METHODS:
            if method in ops:
                op = ops[method]
                tag = (op.get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append(_operation(method, path, op, schemas))
                toc.setdefault(tag, []).append(
                    f'<li><a href="#{_anchor(method, path)}">{method.upper()} '
                    f"{html.escape(path)}</a></li>"
                )
    title = html.escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    contents = "".join(f"<h4>{html.escape(t)}</h4><ul>{''.join(v)}</ul>" for t, v in toc.items())
    sections = "".join(f"<h2>{html.escape(t)}</h2>{''.join(v)}" for t, v in by_tag.items())
    setup = f"export HOTCB_URL={base_url.rstrip('/')} HOTCB_TOKEN=<the token> RUN=<a run id>"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{title} · API</title>"
        f'<link rel=icon href="{_ICON}">'
        '<link rel=stylesheet href="/static/apidoc.css"></head><body>'
        f"<h1>{title}: the API</h1>{_text(info.get('description', ''))}"
        "<p>Every call but <code>GET /api/health</code> needs the token the server printed, "
        "as <code>Authorization: Bearer &lt;token&gt;</code> (401 without it). Each route ends "
        "in a <code>curl</code> line to paste once the shell holds the address, the token and "
        "a run id (the <code>run_id</code> of <code>GET /api/runs</code>, percent-encoded "
        "where it holds a space, <code>#</code>, <code>?</code> or <code>%</code>: "
        "<code>my%20run</code>; <code>.</code> when the served folder is itself the run); "
        "replace any other <code>&lt;name&gt;</code>. "
        'The same description, machine-readable: <a href="/openapi.json">/openapi.json</a>.'
        f"</p><pre>{html.escape(setup)}</pre>"
        f"<nav>{contents}</nav>{sections}</body></html>"
    )
