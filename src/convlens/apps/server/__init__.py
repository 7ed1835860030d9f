"""The explorer: a local web app over the library (``convlens serve``).

``create_app(ServerState.start(ServerConfig(...)))`` builds the FastAPI app; see
``docs/architecture.md`` for how an upload becomes a rendered map. The state and jobs modules
need no web framework; ``create_app`` needs the ``serve`` extra (FastAPI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from convlens.apps.server.state import ServerConfig, ServerState

__all__ = ["ServerConfig", "ServerState", "create_app"]

if TYPE_CHECKING:
    from convlens.apps.server.app import create_app


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from convlens.apps.server.app import create_app

        return create_app
    raise AttributeError(f"module 'convlens.apps.server' has no attribute {name!r}")
