"""The engines a data set run (or ``cl.activations(..., engine=)``) runs on.

``local`` (:class:`LocalEngine`, the default)
    pictures are read and decoded in worker processes while this process runs the model on
    the batches already read: at most ``prefetch`` batches are in flight, so memory stays flat
    however large the data set; the model is the caller's (on its device), never copied.
``ray`` (:class:`~convlens.workflows.datasets.ray_engine.RayEngine`)
    Ray actors, one copy of the model each (a GPU each when the cluster has GPUs), reading and
    computing their batches; joins a running cluster with ``address``. Needs ``convlens[ray]``.
``serial`` (:class:`~convlens.core.engine.SerialEngine`)
    everything in this process, one batch after another (the reference).

All three return the same outputs in the same order (the tests hold them to it).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from convlens.core.engine import (
    Engine,
    SerialEngine,
    Work,
    check_cancelled,
    compute_loaded,
    load_all,
)

ENGINES = ("local", "ray", "serial")

_LOADER: Callable[[Any], Any] | None = None


def _set_loader(loader: Callable[[Any], Any], nice: int) -> None:
    global _LOADER
    _LOADER = loader
    if nice and hasattr(os, "nice"):
        os.nice(nice)


def _load_batch(items: Sequence[Any]) -> list[Any]:
    assert _LOADER is not None, "the decoding worker was started without a loader"
    return load_all(_LOADER, items)


def default_workers() -> int:
    """Decoding processes for the local engine: one per core the model does not need, at least
    one, at most four (decoding a batch costs a fraction of running the model on it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cores or 2) - 1))


def default_start_method() -> str:
    """``fork`` where there is one (Linux: instant, and scripts need no ``__main__`` guard; the
    workers only read and decode pictures, never touch torch), else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    return "fork" if sys.platform.startswith("linux") and "fork" in methods else "spawn"


class LocalEngine:
    """Decoding in ``workers`` processes (``0``: in this process), the model in this one.

    ``prefetch`` batches (default ``2 * workers + 1``) are read ahead of the model. ``nice``
    (0..19) lowers the decoding workers' priority, so that on a machine with few cores they
    do not take the model's core while it computes. Worker
    processes are started once per :meth:`map` (``start_method``, see
    :func:`default_start_method`; with ``spawn`` a script needs the usual
    ``if __name__ == "__main__":`` guard) and stopped on every exit path."""

    name = "local"

    def __init__(
        self,
        workers: int | None = None,
        *,
        prefetch: int | None = None,
        start_method: str | None = None,
        nice: int = 0,
    ) -> None:
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
        ):
            raise ValueError(f"expected workers >= 0 (decoding processes), got {workers!r}")
        if prefetch is not None and (
            isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1
        ):
            raise ValueError(f"expected prefetch >= 1 (batches read ahead), got {prefetch!r}")
        if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
            raise ValueError(f"expected nice in 0..19 (decoding workers' niceness), got {nice!r}")
        methods = multiprocessing.get_all_start_methods()
        if start_method is not None and start_method not in methods:
            raise ValueError(f"expected start_method among {methods}, got {start_method!r}")
        self.workers = default_workers() if workers is None else workers
        self.prefetch = prefetch if prefetch is not None else 2 * self.workers + 1
        self.start_method = start_method or default_start_method()
        self.nice = nice

    def map(
        self,
        model: Any,
        work: Work,
        batches: Iterable[Sequence[Any]],
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[list[Any]]:
        if self.workers == 0:
            yield from SerialEngine().map(model, work, batches, cancelled=cancelled)
            return
        pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context(self.start_method),
            initializer=_set_loader,
            initargs=(work.loader, self.nice),
        )
        pending: deque[Future[list[Any]]] = deque()
        todo = iter(batches)

        def fill() -> None:
            while len(pending) < self.prefetch:
                items = next(todo, None)
                if items is None:
                    return
                pending.append(pool.submit(_load_batch, list(items)))

        try:
            fill()
            while pending:
                check_cancelled(cancelled)
                loaded = pending.popleft().result()
                fill()  # the next batches are read while the model runs on this one
                yield compute_loaded(model, work, loaded)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "workers": self.workers,
            "prefetch": self.prefetch,
            "start_method": self.start_method,
            "nice": self.nice,
        }

    def __repr__(self) -> str:
        return f"LocalEngine(workers={self.workers}, prefetch={self.prefetch})"


def engine(name: str | Engine = "local", **options: Any) -> Engine:
    """An engine by name: ``"local"`` (options ``workers``, ``prefetch``, ``start_method``,
    ``nice``), ``"ray"`` (options
    ``workers``, ``address``, ``gpus_per_worker``, ``cpus_per_worker``, ``runtime_env``) or
    ``"serial"``; an engine object is returned as it is."""
    if not isinstance(name, str):
        if options:
            raise ValueError("engine options go with an engine name, not an engine object")
        if not isinstance(name, Engine):
            raise ValueError(f"expected an engine name {ENGINES} or an Engine, got {name!r}")
        return name
    if name == "local":
        return LocalEngine(**options)
    if name == "ray":
        from convlens.workflows.datasets.ray_engine import RayEngine

        return RayEngine(**options)
    if name == "serial":
        if options:
            raise ValueError(f"the serial engine takes no options, got {sorted(options)}")
        return SerialEngine()
    raise ValueError(f"expected an engine among {', '.join(ENGINES)}, got {name!r}")
