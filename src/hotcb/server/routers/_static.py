"""The page: ``GET /`` serves ``static/index.html``, ``/static/*`` the files beside it, and
``/docs`` the API reference (:mod:`hotcb.server.apidoc`: no script, nothing from elsewhere)."""

from __future__ import annotations

import os

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response

from ..apidoc import ICON_SVG, render
from ..deps import Deps

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "static")

_MISSING = (
    "hotcb dashboard server is running, but the page is not installed "
    f"({STATIC_DIR} is missing). The API is at /docs."
)


def create_static_router(deps: Deps, static_dir: str = STATIC_DIR) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    root = os.path.realpath(static_dir)

    @router.get("/")
    @router.get("/index.html")
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

    @router.get("/docs")
    def api_docs(request: Request) -> Response:
        # rendered on each ask (rare): it names the address it was asked at
        page = render(request.app.openapi(), str(request.base_url))
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @router.get("/favicon.ico")
    def favicon() -> Response:  # what a browser asks for beside a JSON answer
        return Response(ICON_SVG, media_type="image/svg+xml")

    return router
