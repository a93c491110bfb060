"""``create_app(config)``: the dashboard's FastAPI application.

The server is one more client of the run directory, like the CLI: it reads the files the kernel
writes and appends commands through :class:`hotcb.client.HotClient`. A background task polls the
files of every run that a page is subscribed to, every ``tail_interval_sec``, and pushes what is
new in one batched message per file and run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .. import __version__
from .auth import SameOriginMiddleware, TokenAuthMiddleware
from .autopilot import AutopilotHost
from .config import DashboardConfig, is_loopback
from .deps import Deps
from .guards import BodyLimitMiddleware, JSONOnlyMiddleware, SecurityHeadersMiddleware
from .hub import Hub
from .logs import install_log_filters
from .routers import (
    create_analytics_router,
    create_autopilot_router,
    create_commands_router,
    create_meta_router,
    create_runs_router,
    create_static_router,
    create_tune_router,
    create_ws_router,
)
from .routers._features import create_features_router
from .runs import RunRegistry, run_dirs
from .tailer import Tailer

if TYPE_CHECKING:
    from ..notify import NotifyConfig

__all__ = ["create_app"]


def _reason(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def create_app(
    config: DashboardConfig | None = None,
    *,
    static_dir: str | None = None,
    notify: NotifyConfig | None = None,
) -> FastAPI:
    """Build the dashboard app for ``config.dir`` (a run or a folder of runs); the page comes
    from ``static_dir`` (default: the package's ``static/`` folder).

    When no token is set and ``config.no_token`` is off, one is generated (``config.token``);
    the caller prints it. uvicorn's loggers get the token-redacting filter. With
    ``config.autopilot.mode`` other than ``off`` the app runs the rule autopilot on every run
    it serves (its rules file is checked here: :class:`hotcb.autopilot.rules.RulesError`).
    With ``notify`` (``hotcb serve --notify``) it runs a notifier on every live run it serves
    (:class:`hotcb.notify.NotifierHost`), stopped with the server.
    """
    config = config or DashboardConfig.load()
    config.ensure_token()
    install_log_filters()
    hub = Hub(config.ws_queue_max)
    autopilot = None
    if config.autopilot.mode != "off":
        root, depth = os.path.realpath(config.dir), config.scan_depth
        autopilot = AutopilotHost(config.autopilot, lambda: run_dirs(root, depth))
    notifier = None
    if notify is not None:
        from ..notify import NotifierHost

        root, depth = os.path.realpath(config.dir), config.scan_depth
        notifier = NotifierHost(notify, lambda: run_dirs(root, depth))
    registry = RunRegistry(config, hub, autopilot)
    deps = Deps(config=config, registry=registry, hub=hub, autopilot=autopilot)
    tailer = Tailer(deps.registry, deps.hub, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tailer.start()
        if autopilot is not None:
            autopilot.start()
        if notifier is not None:
            notifier.start()
        try:
            yield
        finally:
            if autopilot is not None:
                await autopilot.stop()  # after the round in progress
            if notifier is not None:  # after its round; what is queued is delivered first
                await asyncio.to_thread(notifier.stop)
            await tailer.stop()

    app = FastAPI(
        title="hotcb dashboard",
        version=__version__,
        description="Watch and steer hotcb training runs: metrics, ledger, actuators, commands.",
        lifespan=lifespan,
        docs_url=None,  # served by the static router, under its own CSP
        redoc_url=None,
    )
    app.state.deps = deps
    app.state.tailer = tailer  # (white-box checks of its polling)
    app.state.config = config
    app.state.notifier = notifier

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable reason, like the command validator's, instead of pydantic's list.
        return JSONResponse({"detail": _reason(exc)}, status_code=422)

    for factory in (
        create_meta_router,
        create_runs_router,
        create_tune_router,
        create_features_router,
        create_autopilot_router,
        create_commands_router,
        create_ws_router,
        create_analytics_router,
    ):
        app.include_router(factory(deps))
    app.include_router(
        create_static_router(deps, static_dir) if static_dir else create_static_router(deps)
    )
    # Added last = outermost. A request meets: the response headers, the same-origin guard,
    # the token check, the JSON-only rule for writes, the body cap; nothing is read before.
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(JSONOnlyMiddleware)
    app.add_middleware(TokenAuthMiddleware, token=config.token)
    app.add_middleware(
        SameOriginMiddleware,
        loopback=is_loopback(config.host),
        allowed_hosts=frozenset(config.allowed_hosts),
    )
    app.add_middleware(SecurityHeadersMiddleware)
    return app


def app_factory() -> Any:
    """For ``uvicorn --factory hotcb.server.app:app_factory`` (config from env/YAML)."""
    return create_app()
