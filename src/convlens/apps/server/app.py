"""The explorer's FastAPI app: ``create_app(state)`` builds it around an explicit
:class:`~convlens.apps.server.state.ServerState`.

The app holds only what is app-wide: the token guard and security headers, the mapping of
errors to 4xx answers, the page and its static files, and the routers of the server's
catalog (``/api/health``, ``/api/models``) and of every panel (:mod:`.panels`), each a JSON or
PNG endpoint under ``/api`` described in the generated OpenAPI document at ``/openapi.json``.
Bad input gets a 4xx with ``{"detail": "..."}`` saying what was expected (a classifier's panel
asked of a detector too, and the reverse); the only files served are the page's own
(``static/``) and, through the image panel, the bundled sample photos by name.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from convlens.apps.server import catalog, panels
from convlens.apps.server.guard import Guard, allowed_hosts
from convlens.apps.server.jobs import Cancelled, QueueFull
from convlens.apps.server.state import ServerState

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_COOKIE = "convlens_token"
UPLOAD_FRAMING = 64 * 1024  # an upload's multipart framing around the file
CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'"


def create_app(state: ServerState) -> FastAPI:
    """The app over ``state`` (models already loaded)."""
    app = FastAPI(
        title="convlens explorer",
        description="What a convolutional network sees, and why it decides: every panel of "
        "the explorer as a JSON or PNG endpoint.",
        version="1",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: nothing here fetches the internet
        redoc_url=None,
    )
    app.state.convlens = state
    _map_errors(app)
    _guard(app, state.config.token)
    config = state.config
    app.add_middleware(
        Guard,
        hosts=allowed_hosts(config.host, config.allowed_hosts),
        upload_limit=config.max_upload_bytes + UPLOAD_FRAMING,
    )
    _page(app, state.config.token)
    app.include_router(catalog.router(state))
    for router in panels.routers(state):
        app.include_router(router)
    return app


def _map_errors(app: FastAPI) -> None:
    """Every error a request can meet, as a 4xx answer ``{"detail": "..."}``."""
    from convlens.core.images import ImageError
    from convlens.core.naming import UnknownNameError

    def answer(status: int, detail: Callable[[Exception], str] = str) -> Any:
        async def handler(_request: Request, err: Exception) -> JSONResponse:
            return JSONResponse({"detail": shortened(detail(err))}, status_code=status)

        return handler

    async def invalid(_request: Request, err: Exception) -> JSONResponse:
        # FastAPI's own 422 echoes every input it refused: only their place and the reason
        assert isinstance(err, RequestValidationError)
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', '')}"
            for e in err.errors()[:5]
        ]
        return JSONResponse({"detail": shortened("; ".join(problems))}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(QueueFull, answer(429))
    app.add_exception_handler(UnknownNameError, answer(404))
    app.add_exception_handler(LookupError, answer(404, lambda err: str(err).strip("'\"")))
    app.add_exception_handler(ImageError, answer(415))
    app.add_exception_handler(ValueError, answer(422))
    # the client went away: nobody reads this answer (499: nginx's "client closed request")
    app.add_exception_handler(Cancelled, answer(499))
    # torch raises RuntimeError for inputs a network cannot take (shapes, sizes)
    app.add_exception_handler(
        RuntimeError, answer(422, lambda err: f"the model could not run this request: {err}")
    )


def shortened(detail: str, most: int = 500) -> str:
    """An error's text, cut to ``most`` characters (a request's own huge values are never
    sent back whole)."""
    return detail if len(detail) <= most else detail[: most - 12] + " ... (cut)"


def _guard(app: FastAPI, token: str | None) -> None:
    """The access token (when the server has one) on every request but ``/health``, and the
    security headers on every answer."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Any:
        if token is not None and request.url.path != "/health":
            given = (
                request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                or request.cookies.get(TOKEN_COOKIE, "")
                or request.query_params.get("token", "")
            )
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse(
                    {"detail": "this server needs its token: open the address it printed"},
                    status_code=401,
                )
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = CSP
        return response


def _page(app: FastAPI, token: str | None) -> None:
    """The page, its static files (the shell, ``lib/`` and one module per panel), the panel
    list the page mounts, and the liveness check."""

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        if token is not None and request.query_params.get("token"):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/panels", include_in_schema=False)  # the page's own plumbing, as "/" is
    async def page_panels() -> list[dict[str, str]]:
        return [{"name": n, "module": f"/static/panels/{n}.js"} for n in panels.PANELS]

    @app.get("/health", include_in_schema=False)
    async def alive() -> dict[str, str]:  # open to all: says nothing about the models
        return {"status": "ok"}
