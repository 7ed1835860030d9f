"""What the panels' routers share: model work off the event loop, PNG answers, and the query
options of a request.

Model work runs in the state's bounded worker pool, never on the event loop; with a model's
key it holds that model's lock (a model's hooks and flags change while convlens runs it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from fastapi.responses import Response

if TYPE_CHECKING:
    from convlens.apps.server.state import ServerState

T = TypeVar("T")
PNG = "image/png"
NO_STORE = {"Cache-Control": "no-store"}


async def work(state: ServerState, key: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` in the worker pool (holding the model's lock when ``key`` is a model)."""
    loop = asyncio.get_running_loop()
    call = (lambda: state.run_locked(key, fn)) if key is not None else fn
    return await loop.run_in_executor(state.executor, call)


def png(image: Any) -> Response:
    """A picture (PIL, array, Figure) as a PNG answer that the browser does not cache."""
    from convlens.core.render import png_bytes

    return Response(png_bytes(image), media_type=PNG, headers=NO_STORE)


def options(request: Request, *skip: str) -> dict[str, str]:
    """The request's query parameters but the access token and the names in ``skip``."""
    return {k: v for k, v in request.query_params.items() if k not in (*skip, "token")}


def layer_dict(row: Any) -> dict[str, Any]:
    """A layer with a map (a row of the layer table) as the page's menus show it."""
    return {
        "name": row.name,
        "kind": row.kind,
        "channels": int(row.output_shape[1]),
        "shape": list(row.output_shape[1:]),
    }
