"""What the panels' routers share: model work off the event loop (cancelled when its client
leaves), PNG answers, and the query options of a request.

Model work runs in the state's worker pool, never on the event loop. Work on a model waits
for that model's lock on the event loop, not in a worker (a model's hooks and flags change
while convlens runs it, so one call at a time), so a request queued behind a long explanation
holds no thread. Long work is a :class:`Run`: its progress can be read at ``/api/runs/{id}``
while it goes, and once its client has gone (the page chose another method, the tab closed)
or someone cancels it, it stops at its next progress report, or before it starts.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from fastapi.responses import Response

from convlens.apps.server.jobs import Cancelled

if TYPE_CHECKING:
    from convlens.apps.server.state import Forward, ServerState

T = TypeVar("T")
PNG = "image/png"
NO_STORE = {"Cache-Control": "no-store"}
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
POLL_S = 0.01  # how often a request waiting for a model's lock looks again
EXPLORER_BATCH = 32  # copies per batch of the perturbation and sampling methods in the explorer
# how a panel draws a run's first map: (PNG bytes, headers) from it and the request's query
DrawPreview = Callable[[Any, Mapping[str, str]], tuple[bytes, dict[str, str]]]


@dataclass
class Run:
    """One request's model work: its progress (``done`` of ``total``), whether it is waiting
    for the model or running, how long it waited and computed (seconds), a first result shown
    while it goes (``preview``, from methods that give one, with ``previews`` counting them,
    drawn by its panel's ``draw``; ``None``: as the explanation panel draws its maps), and
    ``cancelled``, which stops it at its next :meth:`progress` call."""

    what: str
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: int = 0
    total: int = 0
    status: str = "waiting"
    waited: float = 0.0
    computed: float = 0.0
    preview: Any = None
    previews: int = 0
    draw: DrawPreview | None = None

    def progress(self, done: int, total: int) -> None:
        """The methods' ``progress`` callback: records it, and raises :class:`Cancelled` once
        the run is cancelled."""
        self.done, self.total = int(done), int(total)
        self.check()

    def show(self, result: Any) -> None:
        """The methods' ``preview`` callback: keeps the latest first map for the page to
        fetch (``/api/runs/{id}/preview.png``); a cancelled run stops here too."""
        self.preview, self.previews = result, self.previews + 1
        self.check()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled(f"{self.what} was cancelled (its request was given up)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "status": self.status,
            "done": self.done,
            "total": self.total,
            "waited_ms": round(self.waited * 1000),
            "preview": self.previews,
        }


async def work(
    state: ServerState,
    key: str | None,
    fn: Callable[[], T],
    run: Run | None = None,
    lock: threading.Lock | None = None,
) -> T:
    """``fn()`` in the worker pool; with a model ``key``, holding that model's lock (waited for
    here, on the event loop), or ``lock`` when given (the model's long lane). With a ``run``,
    nothing starts once it is cancelled, and its waiting and computing times are recorded."""
    loop = asyncio.get_running_loop()
    if key is None:
        return await loop.run_in_executor(state.executor, fn)
    lock = lock or state.model_lock(key)
    start = time.perf_counter()
    while not lock.acquire(blocking=False):
        if run is not None:
            run.check()
        await asyncio.sleep(POLL_S)

    def locked() -> T:
        try:
            began = time.perf_counter()
            if run is not None:
                run.waited = began - start
                run.check()
                run.status = "running"
            try:
                return fn()
            finally:
                if run is not None:
                    run.computed = time.perf_counter() - began
        finally:
            lock.release()

    try:
        future = loop.run_in_executor(state.executor, locked)
    except BaseException:
        lock.release()
        raise
    return await future


async def cancellable(
    state: ServerState,
    request: Request,
    key: str,
    what: str,
    fn: Callable[[Run], T],
    lock: threading.Lock | None = None,
) -> tuple[T, Run]:
    """``fn(run)`` on model ``key`` (under ``lock`` when given, see :func:`work`) as a
    :class:`Run` (``fn`` passes ``run.progress`` to the method): listed under the request's
    ``run`` query parameter while it goes, and cancelled once the client disconnects."""
    run = Run(what)
    run_id = request.query_params.get("run", "")
    if run_id and not RUN_ID.fullmatch(run_id):
        raise ValueError("expected run as 1-64 letters, digits, '-' or '_'")
    if run_id:
        state.runs[run_id] = run
    watcher = asyncio.ensure_future(_watch(request, run.cancelled))
    try:
        return await work(state, key, lambda: fn(run), run, lock), run
    finally:
        watcher.cancel()
        if run_id and state.runs.get(run_id) is run:
            del state.runs[run_id]


async def lane(state: ServerState, key: str, fn: Any) -> tuple[Any, threading.Lock | None]:
    """The classifier a method ``fn`` runs on, and the lock to hold (``None``: the model's own):
    a method that runs many passes (it reports progress) runs on the model's long lane
    (:meth:`ServerState.long_lane`), made under the model's own lock on first use."""
    if "progress" not in inspect.signature(fn).parameters:
        return state.classifier(key), None
    return await work(state, key, lambda: state.long_lane(key))


def run_extras(fn: Any, settings: dict[str, Any], run: Run) -> dict[str, Any]:
    """What the explorer adds to a method's call: its progress (read at ``/api/runs/{id}``,
    and where a cancelled run stops), its preview where it gives one (a first map, fetched at
    ``/api/runs/{id}/preview.png`` while the run goes on), and small batches when the request
    sets none, so that a run whose client has gone stops within a moment."""
    accepted = inspect.signature(fn).parameters
    extra: dict[str, Any] = {"progress": run.progress} if "progress" in accepted else {}
    if "preview" in accepted:
        extra["preview"] = run.show
    if "batch_size" in accepted and "batch_size" not in settings:
        extra["batch_size"] = EXPLORER_BATCH
    return extra


async def _watch(request: Request, cancelled: threading.Event) -> None:
    """Set ``cancelled`` once the client has gone (``Request.is_disconnected`` misses it behind
    a middleware, so the messages are read here)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancelled.set()


async def forward(state: ServerState, key: str, image_id: str, run: Run | None = None) -> Forward:
    """The cached forward pass of a picture (computed once, under the model's lock)."""
    found = state.forwards.get((key, image_id))
    if found is not None:
        return found
    state.classifier(key)
    state.image(image_id)  # unknown pictures: 404 before any waiting
    return await work(state, key, lambda: state.forward(key, image_id, locked=True), run)


def png(image: Any) -> Response:
    """A picture (PIL, array, Figure) as a PNG answer that the browser does not cache."""
    from convlens.core.render import png_bytes

    return Response(png_bytes(image), media_type=PNG, headers=NO_STORE)


def options(request: Request, *skip: str) -> dict[str, str]:
    """The request's query parameters but the access token, the run id and ``skip``."""
    return {k: v for k, v in request.query_params.items() if k not in (*skip, "token", "run")}


def layer_dict(row: Any) -> dict[str, Any]:
    """A layer with a map (a row of the layer table) as the page's menus show it."""
    return {
        "name": row.name,
        "kind": row.kind,
        "channels": int(row.output_shape[1]),
        "shape": list(row.output_shape[1:]),
    }
