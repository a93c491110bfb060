"""REST and WebSocket routers, each built by a ``create_*_router(deps)`` factory."""

from ._analytics import create_analytics_router
from ._autopilot import create_autopilot_router
from ._commands import create_commands_router
from ._meta import create_meta_router
from ._runs import create_runs_router
from ._static import create_static_router
from ._tune import create_tune_router
from ._ws import create_ws_router

__all__ = [
    "create_analytics_router",
    "create_autopilot_router",
    "create_commands_router",
    "create_meta_router",
    "create_runs_router",
    "create_static_router",
    "create_tune_router",
    "create_ws_router",
]
