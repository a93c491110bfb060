"""``hotcb serve``: the live dashboard for a run directory or a folder of runs."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any
from urllib.parse import urlencode

from ._common import DIRECTION_DEFAULT


class _TokenFlagGone(argparse.Action):
    """``--token T`` is refused, without echoing T: a command line is visible in ``ps``."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.error(
            "--token is not accepted (other users can read a command line with 'ps'); "
            "put the token in $HOTCB_TOKEN or in a file for --token-file (chmod 600)"
        )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        allow_abbrev=False,  # "--token" must not pass for "--token-file"
        help="start the live dashboard (http://127.0.0.1:8421)",
        description="Serve the dashboard for --dir (a run directory or a folder of runs). "
        "Settings: defaults < --config YAML < HOTCB_* env < these flags. A token is required "
        "on every address (Jupyter's model): give it in $HOTCB_TOKEN or --token-file, or let "
        "the server generate one; the URL printed at start carries it once, then the page "
        "keeps it in its own browser storage (never a cookie). Scripts send 'Authorization: Bearer <token>'. With --notify "
        "(or a quick --notify-* flag) the server also sends each live run's alerts "
        "(docs/notify.md).",
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8421; 0: any free)")
    p.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="read the access token from FILE (mode 600; default: $HOTCB_TOKEN, else a token "
        "is generated). There is no --token flag: a command line shows in 'ps'",
    )
    p.add_argument("--token", nargs="?", action=_TokenFlagGone, help=argparse.SUPPRESS)
    p.add_argument(
        "--no-token",
        action="store_true",
        default=None,
        help="serve without a token (loopback only): any local user can then drive the runs",
    )
    p.add_argument(
        "--allowed-root",
        action="append",
        default=None,
        metavar="DIR",
        help="a folder that paths in requests (recipes, checkpoints) may point into, besides "
        "the run's own directory (repeatable)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=None,
        metavar="N",
        help="largest request body accepted (default 1048576)",
    )
    p.add_argument("--config", default=None, help="YAML file with DashboardConfig fields")
    p.add_argument(
        "--allow-code-load",
        action="store_true",
        default=None,
        help="let the dashboard send `cb load` (code loading) commands",
    )
    p.add_argument(
        "--autopilot",
        choices=("off", "suggest", "auto", "ai_suggest", "ai_auto"),
        default=None,
        metavar="MODE",
        help="run the autopilot on every run served: off (default), suggest (propose; "
        "accept on the page), auto (apply high- and medium-confidence actions), ai_suggest / "
        "ai_auto (an LLM proposes / applies; see --ai-*)",
    )
    p.add_argument(
        "--autopilot-rules",
        default=None,
        metavar="FILE",
        help="the autopilot's rules file (default: the rules hotcb ships)",
    )
    p.add_argument(
        "--key-metric", default=None, help="the metric the autopilot improves (default val_loss)"
    )
    p.add_argument(
        "--direction",
        choices=("minimize", "maximize"),
        default=None,
        help=f"of the key metric ({DIRECTION_DEFAULT})",
    )
    from ._autopilot import add_ai_flags

    add_ai_flags(p)
    from ._notify import add_notify_flags

    add_notify_flags(p)  # a notifier on every run served, in the server process
    p.add_argument("--log-level", default="warning", type=str.lower,
                   choices=("critical", "error", "warning", "info", "debug", "trace"),
                   help="uvicorn log level (default warning)")  # fmt: skip
    p.set_defaults(func=_serve)


def build_config(args: argparse.Namespace) -> Any:
    """The DashboardConfig for these flags (``--dir`` only counts when given explicitly or
    through ``HOTCB_DIR``, which the global option already reads)."""
    from ..server import require_dashboard

    require_dashboard()
    from ..server.config import DashboardConfig, read_token_file

    token = read_token_file(args.token_file) if args.token_file else None
    rules = os.path.abspath(args.autopilot_rules) if args.autopilot_rules else None
    autopilot = {
        k: v
        for k, v in (("mode", args.autopilot), ("rules", rules), ("key_metric", args.key_metric),
                     ("direction", args.direction),
                     ("ai_config", args.ai_config and os.path.abspath(args.ai_config)),
                     ("ai_base_url", args.ai_base_url), ("ai_model", args.ai_model),
                     ("ai_budget_usd", args.ai_budget))
        if v is not None
    }  # fmt: skip
    roots = [os.path.abspath(r) for r in args.allowed_root] if args.allowed_root else None
    return DashboardConfig.load(
        args.config,
        dir=os.path.abspath(args.dir),
        host=args.host,
        port=args.port,
        token=token,
        no_token=args.no_token,
        allowed_roots=roots,
        max_body_bytes=args.max_body_bytes,
        allow_code_load=args.allow_code_load,
        autopilot=autopilot or None,
    )


def _one_line(exc: ValueError, args: argparse.Namespace | None = None) -> str:
    """A settings error as the CLI says errors: ``--port: less than or equal to 65535, got
    99999`` (pydantic's own text spans lines and ends in a link), named where it came from:
    the flag, the ``HOTCB_`` variable or the ``--config`` file (a file's value was named as a
    flag that does not exist, ``--ui.stale-after-sec``)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    said = []
    for e in errors():
        where = _setting_source([str(p) for p in e.get("loc") or ()], args)
        msg = str(e.get("msg") or "invalid").removeprefix("Input should be ").removeprefix(
            "Value error, ")  # fmt: skip
        secret = [str(p) for p in e.get("loc") or ()] == ["token"]  # never echoed
        said.append(f"{where}: {msg}" if secret else f"{where}: {msg}, got {e.get('input')!r}")
    return "; ".join(said) or str(exc)


def _setting_source(loc: list[str], args: argparse.Namespace | None) -> str:
    """``--port`` for a flag given, ``HOTCB_UI__STALE_AFTER_SEC`` for a variable set, else
    ``ui.stale_after_sec in FILE`` (the ``--config`` file)."""
    flag = "--" + ".".join(loc).replace("_", "-")
    if loc == ["token"]:  # no such flag: HOTCB_TOKEN or --token-file
        return "--token-file" if getattr(args, "token_file", None) else "HOTCB_TOKEN"
    if args is None:
        return flag
    if len(loc) == 1 and getattr(args, loc[0], None) not in (None, False):
        return flag
    env = "HOTCB_" + "__".join(loc).upper()
    if env in os.environ:
        return env
    config = getattr(args, "config", None) or os.environ.get("HOTCB_CONFIG")
    return f"{'.'.join(loc)} in {config}" if config else flag


#: A token given by the user shorter than this is warned about (a generated one has 32).
SHORT_TOKEN = 16


def _warnings(config: Any, generated: bool = True) -> list[str]:
    out = []
    if config.token and not generated and len(config.token) < SHORT_TOKEN:
        out.append(
            f"hotcb: warning: the token is {len(config.token)} characters long: short enough "
            "to guess; give a long random one (python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'), or let 'hotcb serve' make one"
        )
    if config.no_token:
        out.append(
            f"hotcb: warning: --no-token: any local user can pause, change or stop the runs "
            f"under {config.dir}"
        )
    if config.allow_code_load:
        who = "any local user" if config.no_token else "anyone holding the token"
        out.append(f"hotcb: warning: code loading is ON: {who} can run code in the trainer")
    return out


def _serve(args: argparse.Namespace) -> int:
    from . import CliError

    try:
        config = build_config(args)
    except ValueError as exc:  # pydantic's ValidationError is one: one line per bad setting
        raise CliError(_one_line(exc, args)) from None
    if not os.path.isdir(config.dir):
        raise CliError(f"--dir {config.dir} is not a directory")
    generated = config.ensure_token()  # ValueError (one line, exit 2): --no-token off loopback
    from ._notify import notify_config

    notify = notify_config(args)  # a bad --notify file: every problem, exit 2
    import socket

    import uvicorn

    from ..metrics import guess_direction
    from ..server.app import create_app
    from ..server.logs import install_log_filters

    app = create_app(config, notify=notify)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))  # bind first so --port 0 can print the real port
    except OSError as exc:
        sock.close()
        import errno

        hint = ("is another server running there? pick another --port (0: any free port)"
                if exc.errno == errno.EADDRINUSE else
                f"is --host {config.host} an address of this machine? (127.0.0.1: this "
                "machine only, 0.0.0.0: every interface)")  # fmt: skip
        raise CliError(
            f"cannot listen on {config.host}:{config.port} ({exc.strerror}); {hint}"
        ) from None
    port = sock.getsockname()[1]
    # the one place the token is printed; encoded, so "&", "#" or "+" in a chosen one survive
    query = "?" + urlencode({"token": config.token}) if config.token else ""
    everywhere = config.host in ("0.0.0.0", "::")  # a URL with 0.0.0.0 opens nothing
    shown = "127.0.0.1" if everywhere else config.host
    shown = f"[{shown}]" if ":" in shown else shown
    for line in _warnings(config, generated):
        print(line, file=sys.stderr)
    print(f"hotcb dashboard for {config.dir}: http://{shown}:{port}/{query}", flush=True)
    if everywhere:
        print(f"listening on every address: from another machine, "
              f"http://{socket.gethostname()}:{port}/{query}", flush=True)  # fmt: skip
    if config.autopilot.mode != "off":
        ap = config.autopilot
        print(f"hotcb autopilot ({ap.mode}) on every run served; key metric {ap.key_metric} "
              f"({ap.direction or guess_direction(ap.key_metric)}); rules: {ap.rules or 'the shipped rules'}", flush=True)  # fmt: skip
    if notify is not None:
        print(f"hotcb notify on every live run served: {len(notify.alerts)} alerts "
              f"({', '.join(a.id for a in notify.alerts)}) to "
              f"{', '.join(d.target for d in notify.deliveries) or 'no delivery'}; "
              "records in each run's hotcb.notify.jsonl", flush=True)  # fmt: skip
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=args.log_level,
            ws="websockets-sansio",
            ws_max_size=config.max_body_bytes,
            lifespan="on",
        )
    )
    install_log_filters()  # again after uvicorn's logging set-up (it keeps filters; be sure)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    sys.stdout.flush()
    return 0
