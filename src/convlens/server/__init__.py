"""The explorer: a local web app over the library (``convlens serve``).

``create_app(ServerState.start(ServerConfig(...)))`` builds the FastAPI app; see
``docs/architecture.md`` for how an upload becomes a rendered map.
"""

from convlens.server.app import create_app
from convlens.server.state import ServerConfig, ServerState

__all__ = ["ServerConfig", "ServerState", "create_app"]
