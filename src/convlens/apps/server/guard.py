"""What the explorer checks before a request reaches a panel: an ASGI middleware, so that it
runs before any body is read.

- **Host** (DNS rebinding): a page on another site whose name resolves to 127.0.0.1 reaches
  the server with its own name in ``Host``. Only the names the server is bound to are served
  (``localhost``, ``127.0.0.1`` and ``::1`` for a loopback address; any name when bound to all
  interfaces, where the token guards it), plus ``ServerConfig.allowed_hosts``.
- **Other sites** (cross-site requests): a request to ``/api`` that a browser marks as coming
  from another site (``Sec-Fetch-Site: cross-site`` or ``same-site``), and a state-changing
  request (not GET/HEAD/OPTIONS) whose ``Origin`` is not the server's own, are refused (403).
- **Content type**: a state-changing request must say it sends JSON (``application/json``),
  which a plain HTML form or a "simple" cross-origin request cannot; uploads
  (``POST /api/images``) must be ``multipart/form-data`` (415).
- **Body size**: a declared ``Content-Length`` over the route's limit is refused before a byte
  is read, and a chunked body is counted as it arrives and cut off at the limit (413): at most
  the limit plus one chunk is ever read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UPLOAD_PATH = "/api/images"
JSON_BODY_LIMIT = 64 * 1024  # a job's parameters, a sample's name: never more


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The host names a server bound to ``bound`` answers to (``None``: any name)."""
    bound = bound.strip("[]").lower()
    if bound in ALL_INTERFACES:
        return None
    names = {bound, *(name.strip("[]").lower() for name in extra)}
    if bound in LOOPBACK_NAMES or bound.startswith("127."):
        names |= LOOPBACK_NAMES
    return frozenset(names)


def host_name(value: str) -> str:
    """``example.com`` from ``example.com:8000``, ``::1`` from ``[::1]:8000``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class Guard:
    """The checks above, around the whole app; ``upload_limit`` is the most bytes an upload's
    body may hold (the file plus its multipart framing)."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str] | None, upload_limit: int) -> None:
        self.app = app
        self.hosts = hosts
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            await answer(send, *refusal)
            return
        limit = self.upload_limit if scope["path"] == UPLOAD_PATH else JSON_BODY_LIMIT
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await answer(send, 413, f"request body too large: at most {limit} bytes")
            return
        await self.limited(scope, receive, send, limit)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """``(status, detail)`` when the request is refused before it is read."""
        host = host_name(headers.get("host", ""))
        if self.hosts is not None and host not in self.hosts:
            return 400, (
                f"this server answers to {', '.join(sorted(self.hosts))}, not to the host "
                f"{host[:64]!r} (another site's name pointing here?); open it by its address"
            )
        method = scope["method"]
        site = headers.get("sec-fetch-site", "")
        if scope["path"].startswith("/api") and site in ("cross-site", "same-site"):
            return 403, "requests from other sites are refused: open the explorer's own page"
        if method in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is not None and host_name(urlsplit(origin).netloc) != host:
            return 403, f"requests from another origin ({origin[:64]}) are refused"
        kind = headers.get("content-type", "").partition(";")[0].strip().lower()
        wanted = "multipart/form-data" if scope["path"] == UPLOAD_PATH else "application/json"
        if method in ("POST", "PUT", "PATCH") and kind != wanted:
            return 415, f"expected a {wanted} request body, got {kind or 'no content type'}"
        return None

    async def limited(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """The app with a body counted as it arrives: past ``limit`` it reads nothing more and
        whatever the app answers becomes a 413."""
        read = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal read, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if over:
                if not started:
                    started = True
                    await answer(send, 413, f"request body too large: at most {limit} bytes")
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except Exception:
            if not over:
                raise
        if over and not started:
            await answer(send, 413, f"request body too large: at most {limit} bytes")


async def answer(send: Send, status: int, detail: str) -> None:
    """A JSON answer ``{"detail": ...}`` sent straight from the middleware."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
