"""``hotcb serve``: the live dashboard for a run directory or a folder of runs."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="start the live dashboard (http://127.0.0.1:8421)",
        description="Serve the dashboard for --dir (a run directory or a folder of runs). "
        "Settings: defaults < --config YAML < HOTCB_* env < these flags. Binding an address "
        "other than loopback requires a token (generated and printed when not given).",
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8421; 0: any free)")
    p.add_argument("--token", default=None, help="access token (default: $HOTCB_TOKEN)")
    p.add_argument("--config", default=None, help="YAML file with DashboardConfig fields")
    p.add_argument(
        "--allow-code-load",
        action="store_true",
        default=None,
        help="let the dashboard send `cb load` (code loading) commands",
    )
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    p.set_defaults(func=_serve)


def build_config(args: argparse.Namespace) -> Any:
    """The DashboardConfig for these flags (``--dir`` only counts when given explicitly or
    through ``HOTCB_DIR``, which the global option already reads)."""
    from ..server import require_dashboard

    require_dashboard()
    from ..server.config import DashboardConfig

    return DashboardConfig.load(
        args.config,
        dir=os.path.abspath(args.dir),
        host=args.host,
        port=args.port,
        token=args.token,
        allow_code_load=args.allow_code_load,
    )


def _serve(args: argparse.Namespace) -> int:
    config = build_config(args)
    if not os.path.isdir(config.dir):
        from . import CliError

        raise CliError(f"--dir {config.dir} is not a directory")
    generated = config.ensure_token()
    import socket

    import uvicorn

    from ..server.app import create_app

    app = create_app(config)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))  # bind first so --port 0 can print the real port
    except OSError as exc:
        sock.close()
        from . import CliError

        raise CliError(
            f"cannot listen on {config.host}:{config.port} ({exc.strerror}); "
            "is another server running there? pick another --port (0: any free port)"
        ) from None
    port = sock.getsockname()[1]
    shown = f"[{config.host}]" if family == socket.AF_INET6 else config.host
    url = f"http://{shown}:{port}/"
    if config.token:
        url += f"?token={config.token}"
    if generated:
        print(f"hotcb: binding {config.host} needs a token; generated one: {config.token}")
    print(f"hotcb dashboard for {config.dir}: {url}", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level=args.log_level, ws="websockets-sansio", lifespan="on")
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    sys.stdout.flush()
    return 0
