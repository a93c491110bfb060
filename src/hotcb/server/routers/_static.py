"""The page: ``GET /`` serves ``static/index.html``, ``/static/*`` the files beside it, and
``/docs`` the OpenAPI browser."""

from __future__ import annotations

import base64
import hashlib
import os
import re

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response

from ..deps import Deps

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "static")

_MISSING = (
    "hotcb dashboard server is running, but the page is not installed "
    f"({STATIC_DIR} is missing). The API is at /docs."
)
_CDN = "https://cdn.jsdelivr.net"


def _docs_page() -> tuple[str, str]:
    """FastAPI's Swagger UI page with a CSP of its own: the dashboard's policy plus the CDN
    it loads from and the hash of its one inline script (nothing else inline may run)."""
    page = get_swagger_ui_html(openapi_url="/openapi.json", title="hotcb dashboard API")
    html = bytes(page.body).decode()
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    ]
    csp = (
        f"default-src 'self'; script-src 'self' {_CDN} {' '.join(hashes)}; "
        f"style-src 'self' {_CDN} 'unsafe-inline'; img-src 'self' data: {_CDN} "
        "https://fastapi.tiangolo.com; connect-src 'self'; frame-ancestors 'self'; "
        "base-uri 'none'; form-action 'self'; object-src 'none'"
    )
    return html, csp


def create_static_router(deps: Deps, static_dir: str = STATIC_DIR) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    root = os.path.realpath(static_dir)

    @router.get("/")
    def index() -> Response:
        page = os.path.join(root, "index.html")
        if not os.path.isfile(page):
            return PlainTextResponse(_MISSING)
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    @router.get("/static/{path:path}")
    def static(path: str) -> Response:
        full = os.path.realpath(os.path.join(root, path))
        if not full.startswith(root + os.sep) or not os.path.isfile(full):
            if not os.path.isdir(root):
                return PlainTextResponse(_MISSING, status_code=404)
            raise HTTPException(status_code=404, detail=f"no static file {path!r}")
        return FileResponse(full, headers={"Cache-Control": "no-cache"})

    docs_html, docs_csp = _docs_page()

    @router.get("/docs")
    def api_docs() -> Response:
        return HTMLResponse(docs_html, headers={"Content-Security-Policy": docs_csp})

    return router
