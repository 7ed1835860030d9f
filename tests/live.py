"""A real explorer for the tests that need one: ``served`` starts ``convlens serve``'s app on a
free loopback port in a thread (uvicorn), ``chromium_tab`` opens a headless Debian chromium tab
on it (Playwright) and fails the test if the page raised a script error."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(models: list[str], data_dir: Path, **config: Any) -> Iterator[tuple[Any, int]]:
    """(the server's state, its port) while the app serves ``models`` on 127.0.0.1."""
    import uvicorn

    from convlens.apps.server import ServerConfig, ServerState, create_app

    port = free_port()
    state = ServerState.start(ServerConfig(models=models, port=port, data_dir=data_dir, **config))
    server = uvicorn.Server(
        uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > end:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        yield state, port
    finally:
        server.should_exit = True
        thread.join(10)
        state.close()


@contextlib.contextmanager
def chromium_tab(url: str) -> Iterator[Any]:
    """A headless chromium tab at ``url``; no script error may have happened on it by the end.
    ``bypass_csp``: the page forbids eval, which Playwright's ``wait_for_function`` needs."""
    import playwright.sync_api as playwright_api

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda err: errors.append(str(err)))
        tab.goto(url)
        yield tab
        browser.close()
        assert errors == [], errors
