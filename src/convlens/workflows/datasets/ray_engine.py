"""The Ray engine: actors that each hold one copy of the model, read their batches and run
the model on them; the outputs come back to this process in order (``pip install
"convlens[ray]"``).

Each actor takes ``cpus_per_worker`` CPUs and, when the cluster has GPUs, ``gpus_per_worker``
GPUs (default one; the model is moved to the actor's GPU). An actor reads the next batch in a
second thread while the model runs on the current one (the model itself runs one batch at a
time). At most two batches per actor are in flight, so the driver's memory stays flat.

``address=None`` joins the Ray instance this process already started (``ray.init``) or starts
a local one for the run (stopped afterwards); ``address="auto"`` or ``"ray://host:10001"`` joins
a cluster. The actors import the convlens this process runs (its folder goes first on their
``PYTHONPATH``); on a remote cluster install convlens on the nodes, or pass ``runtime_env``.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from convlens.core.engine import Work, check_cancelled, compute_loaded, load_all


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            'the ray engine needs Ray: pip install "convlens[ray]" (or "ray[data]>=2.9")'
        ) from None
    return ray


class Actor:
    """One model and one work, on one Ray worker (a GPU when it was given one)."""

    def __init__(self, model: Any, work: Work, use_gpu: bool) -> None:
        import torch

        if use_gpu and torch.cuda.is_available():
            model.module.to("cuda")  # this actor's own copy
        self.model = model
        self.work = work
        self.lock = threading.Lock()

    def run(self, items: Sequence[Any]) -> list[Any]:
        loaded = load_all(self.work.loader, items)  # concurrently with the other call's model
        with self.lock:
            return compute_loaded(self.model, self.work, loaded)

    def device(self) -> str:
        return str(self.model.device)


def _convlens_path() -> str:
    """The folder that holds the ``convlens`` package this process imported."""
    import convlens

    return str(Path(convlens.__file__).resolve().parent.parent)


class RayEngine:
    """Ray actors, one model each (see the module docstring).

    ``workers`` actors (default: as many as the cluster has CPUs / ``cpus_per_worker``, or GPUs
    when it has GPUs); ``gpus_per_worker`` ``None`` asks for one GPU per actor when the cluster
    has any, ``0`` for none."""

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float | None = None,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise ValueError(f"expected workers >= 1 (Ray actors), got {workers!r}")
        if not cpus_per_worker > 0:
            raise ValueError(f"expected cpus_per_worker > 0, got {cpus_per_worker!r}")
        if gpus_per_worker is not None and gpus_per_worker < 0:
            raise ValueError(f"expected gpus_per_worker >= 0, got {gpus_per_worker!r}")
        self.workers = workers
        self.address = address
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.runtime_env = runtime_env
        self.last: dict[str, Any] = {}

    def _env(self) -> dict[str, Any]:
        if self.runtime_env is not None:
            return self.runtime_env
        path = os.pathsep.join(p for p in (_convlens_path(), os.environ.get("PYTHONPATH")) if p)
        return {"env_vars": {"PYTHONPATH": path}}

    def _plan(self, ray: Any) -> tuple[int, float]:
        resources = ray.cluster_resources()
        gpus_total = float(resources.get("GPU", 0))
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if gpus_total >= 1 else 0.0
        if self.workers is not None:
            return self.workers, gpus
        by_cpu = int(float(resources.get("CPU", 1)) // self.cpus_per_worker)
        count = int(gpus_total // gpus) if gpus > 0 else by_cpu
        return max(1, count), gpus

    def map(
        self,
        model: Any,
        work: Work,
        batches: Iterable[Sequence[Any]],
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[list[Any]]:
        ray = import_ray()
        started = False
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            started = True
        actors: list[Any] = []
        try:
            count, gpus = self._plan(ray)
            portable = model
            if str(model.device) != "cpu":  # actors without that device could not load it
                portable = copy.deepcopy(model)
                portable.module.cpu()
            model_ref = ray.put(portable)
            remote = ray.remote(Actor).options(
                num_cpus=self.cpus_per_worker,
                num_gpus=gpus,
                max_concurrency=2,
                runtime_env=self._env(),
            )
            actors = [remote.remote(model_ref, work, gpus > 0) for _ in range(count)]
            self.last = {"actors": count, "gpus_per_actor": gpus}
            yield from _in_order(ray, actors, batches, cancelled)
        finally:
            for actor in actors:
                ray.kill(actor)
            if started:
                ray.shutdown()

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "workers": self.workers,
            "address": self.address,
            "cpus_per_worker": self.cpus_per_worker,
            "gpus_per_worker": self.gpus_per_worker,
            **self.last,
        }

    def __repr__(self) -> str:
        return f"RayEngine(workers={self.workers}, address={self.address!r})"


def _in_order(
    ray: Any,
    actors: list[Any],
    batches: Iterable[Sequence[Any]],
    cancelled: Callable[[], bool] | None,
) -> Iterator[list[Any]]:
    """Batch ``i`` goes to actor ``i % n``; at most two batches per actor are in flight; the
    outputs are handed back in batch order."""
    pending: deque[Any] = deque()
    todo = iter(batches)
    sent = 0

    def fill() -> None:
        nonlocal sent
        while len(pending) < 2 * len(actors):
            items = next(todo, None)
            if items is None:
                return
            pending.append(actors[sent % len(actors)].run.remote(list(items)))
            sent += 1

    fill()
    while pending:
        check_cancelled(cancelled)
        outputs = ray.get(pending.popleft())
        fill()
        yield outputs
