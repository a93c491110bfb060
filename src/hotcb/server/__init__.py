"""The hotcb dashboard server (extra ``dashboard``: FastAPI + uvicorn).

``hotcb serve --dir RUN_OR_RUNS`` runs it; :func:`create_app` builds the app for embedding.
Imported lazily: ``import hotcb`` never imports FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DashboardConfig", "create_app", "require_dashboard"]


def require_dashboard() -> None:
    """Raise an ImportError that says how to install the extra when FastAPI/uvicorn are missing."""
    try:
        import fastapi  # noqa: F401
        import pydantic_settings  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"the dashboard needs FastAPI and uvicorn ({exc.name} is missing): "
            'pip install "hotcb[dashboard]"'
        ) from exc


def __getattr__(name: str) -> Any:
    if name == "create_app":
        require_dashboard()
        from .app import create_app

        return create_app
    if name == "DashboardConfig":
        require_dashboard()
        from .config import DashboardConfig

        return DashboardConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
