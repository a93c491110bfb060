"""``/api/health`` and ``/api/config``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ... import __version__
from ..deps import Deps


def create_meta_router(deps: Deps) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["meta"])

    @router.get("/health")
    def health() -> dict[str, Any]:
        """Liveness probe; public even when a token is in force."""
        return {"ok": True, "version": __version__}

    @router.get("/config")
    def config() -> dict[str, Any]:
        """The dashboard config (every tunable), without the token."""
        return deps.config.public()

    return router
