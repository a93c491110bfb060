"""``DashboardConfig``: every tunable of the dashboard server and page, in one place.

Sources, lowest to highest precedence (the order of :meth:`DashboardConfig.settings_customise_sources`):

1. the defaults below,
2. a YAML file (``hotcb serve --config FILE`` or ``HOTCB_CONFIG=FILE``),
3. environment variables ``HOTCB_<FIELD>`` (nested: ``HOTCB_UI__STALE_AFTER_SEC=10``),
4. CLI flags (passed as keyword arguments).

``GET /api/config`` serves the whole config except the token.

A token is required on every address unless ``no_token`` is set (Jupyter's model): when none is
given (or a blank one), :meth:`DashboardConfig.ensure_token` generates one. ``no_token`` is
refused on an address other than loopback. The token comes from ``HOTCB_TOKEN`` or a
``--token-file`` (:func:`read_token_file`), never from the YAML file: nothing checks who can
read that one, so a ``token`` in it is refused.
"""

from __future__ import annotations

import contextvars
import ipaddress
import os
import secrets
import stat
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from ..runfiles import redact_urls

__all__ = [
    "AutopilotSettings",
    "ChartSettings",
    "DashboardConfig",
    "UISettings",
    "is_loopback",
    "read_token_file",
]

#: The YAML file of the config being built (set by :meth:`DashboardConfig.load`): a context
#: variable so that the path can vary per call while precedence stays in one class method.
_yaml_file: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "hotcb_dashboard_yaml", default=None
)

#: Hard cap on points per series in a history response, whatever the config says.
MAX_POINTS_CAP = 2000


class ChartSettings(BaseModel):
    """How the page draws charts (the server only serves these)."""

    live_max_points: int = Field(5000, ge=100, description="points kept per series in the page")
    log_scale: bool = Field(False, description="start charts with a log y axis")
    smoothing: float = Field(0.0, ge=0.0, le=0.999, description="EMA smoothing of drawn curves")
    key_metric: str = Field("loss", description="metric used for the ledger's impact column")
    impact_window: int = Field(50, ge=1, description="steps before/after a change for impact")
    groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description="chart groups: title -> metric names or fnmatch patterns (empty: by prefix)",
    )


class UISettings(BaseModel):
    """Timers of the page; sent in the WebSocket ``hello`` message."""

    stale_after_sec: float = Field(
        30.0, gt=0, description="a run that wrote nothing for this long is shown as stale"
    )
    reconnect_delay_sec: float = Field(1.0, gt=0, description="first WebSocket reconnect delay")
    reconnect_max_delay_sec: float = Field(10.0, gt=0, description="reconnect back-off cap")
    status_refresh_sec: float = Field(2.0, gt=0, description="REST status refresh in the page")
    chart_refresh_ms: int = Field(250, ge=16, description="how often the page redraws charts")


class AutopilotSettings(BaseModel):
    """The rule autopilot inside the server (``hotcb serve --autopilot MODE``; docs/autopilot.md).
    ``off``: the server runs none (a headless ``hotcb autopilot`` may still run beside it)."""

    mode: Literal["off", "suggest", "auto", "ai_suggest", "ai_auto"] = Field(
        "off",
        description="off: none runs here; suggest: propose; auto: apply and propose; "
        "ai_suggest / ai_auto: the same with an LLM deciding (the rules as its sensors)",
    )
    rules: str | None = Field(None, description="a rules file (default: the rules hotcb ships)")
    key_metric: str = Field("val_loss", description="the metric the autopilot improves")
    direction: Literal["minimize", "maximize"] | None = Field(
        None,
        description="of the key metric (default: from its name: maximize for accuracy, "
        "F1, AUC, BLEU…, else minimize)",
    )
    interval_sec: float = Field(1.0, gt=0, description="seconds between the autopilot's rounds")
    # The LLM autopilot's endpoint: set where the server runs (flags, YAML, HOTCB_ env), never
    # over REST. The key is not a setting: it is read from HOTCB_AI_KEY and kept in memory.
    ai_config: str | None = Field(None, description="an AI settings file (YAML or JSON)")
    ai_base_url: str | None = Field(None, description="OpenAI-compatible base URL")
    ai_model: str | None = Field(None, description="the model to ask")
    ai_budget_usd: float | None = Field(None, ge=0, description="USD per run for the model")


class DashboardConfig(BaseSettings):
    """Settings of ``hotcb serve``: defaults → YAML → ``HOTCB_*`` env → CLI flags."""

    model_config = SettingsConfigDict(
        env_prefix="HOTCB_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    dir: str = Field(".", description="a run directory or a folder of runs")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8421, ge=0, le=65535)
    token: str | None = Field(
        None,
        exclude=True,
        repr=False,
        description="access token (default: generated at start); never served",
    )
    no_token: bool = Field(
        False,
        description="serve without a token (loopback only): any local user can then drive the runs",
    )
    allowed_roots: list[str] = Field(
        default_factory=list,
        description="folders besides each run's directory that paths in requests may point into",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="largest request body accepted (413 above it)"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="extra Host names accepted when bound to loopback (e.g. behind a proxy)",
    )
    allow_code_load: bool = Field(
        False, description="let the dashboard send `cb load` (code loading) commands"
    )
    tail_interval_sec: float = Field(0.05, gt=0, description="how often watched files are polled")
    status_interval_sec: float = Field(1.0, gt=0, description="period of WS status messages")
    scan_depth: int = Field(2, ge=0, le=5, description="how deep to look for run directories")
    max_loaded_runs: int = Field(
        20, ge=1, description="runs whose index stays in memory when no page watches them"
    )
    history_max_points: int = Field(
        MAX_POINTS_CAP,
        ge=10,
        le=MAX_POINTS_CAP,
        description="default and cap of points per series in a history response",
    )
    ledger_limit: int = Field(200, ge=1, description="default number of ledger entries returned")
    ledger_max_entries: int = Field(
        50_000, ge=100, description="ledger entries kept in memory per run"
    )
    push_max_records: int = Field(
        5000, ge=1, description="most records in one WS message (older ones are dropped)"
    )
    ws_queue_max: int = Field(
        1000, ge=1, description="messages queued per client before it is disconnected as slow"
    )
    chart: ChartSettings = Field(default_factory=ChartSettings)
    ui: UISettings = Field(default_factory=UISettings)
    autopilot: AutopilotSettings = Field(default_factory=AutopilotSettings)

    @field_validator("token")
    @classmethod
    def _blank_token_is_none(cls, v: str | None) -> str | None:
        # surrounding blanks are no part of a token (read_token_file strips them too); a blank
        # HOTCB_TOKEN is an empty one: a token is generated
        token = (v or "").strip() or None
        if token and not all(" " <= c <= "~" for c in token):
            raise ValueError(
                "the token must be printable ASCII (letters, digits, punctuation): it travels "
                "in an HTTP header, where other characters do not arrive the same from every "
                "client; choose another, or let 'hotcb serve' generate one"
            )
        return token

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: CLI flags (init kwargs) > HOTCB_* env > YAML file > field defaults.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_path = _yaml_file.get() or os.environ.get("HOTCB_CONFIG")
        if yaml_path:
            if not os.path.isfile(yaml_path):
                raise FileNotFoundError(f"dashboard config file not found: {yaml_path}")
            yaml_source = _yaml_source(settings_cls, yaml_path)
            _refuse_token_in(yaml_path, yaml_source.yaml_data)
            _refuse_unknown(yaml_path, yaml_source.yaml_data, settings_cls)
            sources.append(yaml_source)
        return tuple(sources)

    @classmethod
    def load(cls, yaml_file: str | None = None, **cli: Any) -> DashboardConfig:
        """Build the config from every source; ``cli`` holds only the flags the user gave
        (``None`` values are dropped so they do not hide env or YAML values)."""
        flags = {k: v for k, v in cli.items() if v is not None}
        reset = _yaml_file.set(yaml_file)
        try:
            return cls(**flags)
        finally:
            _yaml_file.reset(reset)

    # -- security --------------------------------------------------------------------------
    @property
    def needs_token(self) -> bool:
        """A token is required unless ``no_token`` was asked for (on loopback only)."""
        return not self.no_token

    def ensure_token(self) -> bool:
        """Generate a token when none was given and ``no_token`` is off; return True when one
        was generated. Raise ``ValueError`` for ``no_token`` on an address other than
        loopback, or together with a token."""
        if self.no_token:
            if not is_loopback(self.host):
                raise ValueError(
                    f"--no-token (no_token) is refused when binding {self.host}: anyone who can "
                    "reach that address could drive the runs; keep the token (or bind 127.0.0.1)"
                )
            if self.token:
                raise ValueError(
                    "--no-token (no_token) was given together with a token (HOTCB_TOKEN or "
                    "--token-file); pick one"
                )
            return False
        if self.token:
            return False
        self.token = secrets.token_urlsafe(24)
        return True

    def public(self) -> dict[str, Any]:
        """The config as JSON, without the token, and with the credentials of its URLs (the
        LLM endpoint's ``user:password@``, an ``?api-key=``) redacted."""
        doc: dict[str, Any] = redact_urls(self.model_dump(mode="json", exclude={"token"}))
        return doc


def _yaml_source(settings_cls: type[BaseSettings], path: str) -> YamlConfigSettingsSource:
    """The YAML file's settings; ``ValueError`` (one line) for a file that is not YAML or not
    a mapping of settings (a traceback from the YAML parser or from pydantic-settings)."""
    import yaml

    try:
        source = YamlConfigSettingsSource(settings_cls, yaml_file=path)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"the dashboard config file {path} is not valid YAML{at}: {why}") from None
    except (TypeError, ValueError):  # a list, a string: merged as if a mapping
        source = None
    if source is None or not isinstance(source.yaml_data, dict):
        raise ValueError(f"the dashboard config file {path} must be a mapping of settings "
                         "('port: 8421', …)")  # fmt: skip
    return source


def _refuse_unknown(path: str, doc: Any, model: type[BaseModel]) -> None:
    """Every key of the file is a setting: a misspelt one was ignored, and its default
    silently stayed in force."""
    unknown = _unknown_keys(doc, model, "")
    if unknown:
        raise ValueError(f"the dashboard config file {path} has unknown settings: "
                         f"{', '.join(unknown)} (docs/dashboard.md lists them)")  # fmt: skip


def _unknown_keys(doc: Any, model: type[BaseModel], prefix: str) -> list[str]:
    import difflib

    unknown: list[str] = []
    for key, value in doc.items() if isinstance(doc, dict) else ():
        field = model.model_fields.get(str(key))
        if field is None:
            near = difflib.get_close_matches(str(key), list(model.model_fields), n=1)
            unknown.append(f"{prefix}{key}" + (f" (did you mean {prefix}{near[0]}?)" if near
                                               else ""))  # fmt: skip
            continue
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            unknown += _unknown_keys(value, inner, f"{prefix}{key}.")
    return unknown


def _refuse_token_in(path: str, doc: Any) -> None:
    """A config file is no place for the token: nothing checks who can read it (a token file
    must be ``chmod 600``), and it is often shared or committed."""
    if isinstance(doc, dict) and any(str(k).lower() == "token" for k in doc):
        raise ValueError(
            f"the dashboard config file {path} sets 'token': a token is not read from a config "
            "file; remove it and give it in $HOTCB_TOKEN or in a file for --token-file "
            "(chmod 600)"
        )


def read_token_file(path: str) -> str:
    """The token kept in ``path`` (surrounding whitespace stripped). The file must be readable
    by its owner only (``chmod 600``): a token that other users can read protects nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8") as f:
        mode = os.fstat(f.fileno()).st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(
                f"the token file {path} is open to group/others (mode "
                f"{stat.S_IMODE(mode):04o}); run 'chmod 600 {path}' and start again"
            )
        token = f.read().strip()
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
