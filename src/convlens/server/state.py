"""The explorer's state: the models it was started with, uploaded pictures, and a bounded cache
of forward passes, in one object the app factory receives (no module globals).

Model code runs in a bounded worker pool, one call per model at a time (a model's hooks and
flags are changed while convlens runs it, so two threads must not share it at once).
"""

from __future__ import annotations

import copy
import hashlib
import io
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image

from convlens.model import Model
from convlens.server.jobs import JobRunner, JobStore, run_task

T = TypeVar("T")

DEFAULT_MODELS = ("mobilenet_v2", "toon-cnn")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PANEL_KINDS = ("conv", "pool")


@dataclass
class ServerConfig:
    """How the explorer runs. ``token`` is required when ``host`` is not a loopback address
    (one is generated when none is given); ``max_upload_mb`` bounds every upload, and
    ``max_pixels`` every decoded picture (decompression bombs are refused before decoding)."""

    models: Sequence[str] = DEFAULT_MODELS
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    data_dir: Path = Path("convlens-data")
    max_upload_mb: float = 10.0
    max_pixels: int = 40_000_000
    workers: int = 2
    cache_mb: float = 512.0
    images_kept: int = 256
    factory: str | None = None

    def __post_init__(self) -> None:
        if self.host not in LOOPBACK and not self.token:
            self.token = secrets.token_urlsafe(18)
        if self.max_upload_mb <= 0:
            raise ValueError(f"expected max_upload_mb > 0, got {self.max_upload_mb}")
        if self.workers < 1:
            raise ValueError(f"expected workers >= 1, got {self.workers}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def model_key(spec: str) -> str:
    """A URL-safe name for a model: the zoo name, or a file's stem."""
    stem = Path(spec).stem if ("/" in spec or "." in Path(spec).name) else spec
    key = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-")
    return key or "model"


@dataclass
class Forward:
    """One forward pass of one picture: the network input, the probabilities, and the
    activation of every panel layer (conv and pool outputs), kept for slider moves."""

    inputs: torch.Tensor
    picture: Image.Image
    probabilities: torch.Tensor
    activations: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        total = self.inputs.numel() * self.inputs.element_size()
        return total + sum(a.numel() * a.element_size() for a in self.activations.values())


class _LRU:
    """An LRU map bounded by a total size (``size_of`` each value) and by count."""

    def __init__(self, budget: float, size_of: Callable[[Any], float], count: int = 10**9):
        self.budget, self.size_of, self.count = budget, size_of, count
        self.items: OrderedDict[Any, Any] = OrderedDict()
        self.used = 0.0
        self.lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            if key not in self.items:
                return None
            self.items.move_to_end(key)
            return self.items[key]

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            if key in self.items:
                self.used -= self.size_of(self.items.pop(key))
            self.items[key] = value
            self.used += self.size_of(value)
            while len(self.items) > 1 and (self.used > self.budget or len(self.items) > self.count):
                _, old = self.items.popitem(last=False)
                self.used -= self.size_of(old)


@dataclass
class ServerState:
    """Everything the app shares between requests."""

    config: ServerConfig
    models: dict[str, Model] = field(default_factory=dict)
    specs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.jobs: JobRunner | None = None
        self.executor = ThreadPoolExecutor(self.config.workers, thread_name_prefix="convlens")
        self.model_locks: dict[str, threading.Lock] = {}
        self.images = _LRU(self.config.images_kept, lambda _v: 1)
        self.forwards = _LRU(self.config.cache_mb * 1024 * 1024, lambda f: f.nbytes)
        self.forward_locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_lock = threading.Lock()

    @classmethod
    def start(cls, config: ServerConfig) -> ServerState:
        """Load every model of ``config`` once (errors name the model that failed)."""
        from convlens.loading import load

        state = cls(config)
        for spec in config.models:
            key = model_key(spec)
            if key in state.models:
                raise ValueError(f"two models would share the name {key!r}: rename one file")
            state.models[key] = load(spec, factory=config.factory)
            state.specs[key] = spec
            state.model_locks[key] = threading.Lock()
        if not state.models:
            raise ValueError("expected at least one model to serve")
        state.jobs = JobRunner(JobStore(config.data_dir), state._run_job)
        return state

    def _run_job(
        self, kind: str, key: str, params: dict[str, Any], folder: Path, progress: Any
    ) -> list[str]:
        # the job works on its own copy, so the model stays free for the page meanwhile
        model = self.run_locked(key, lambda: copy.deepcopy(self.model(key)))
        return run_task(kind, model, params, folder, progress, self.image)

    def close(self) -> None:
        if self.jobs is not None:
            self.jobs.close()
            self.jobs.store.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- pictures ------------------------------------------------------------------------------
    def add_image(self, data: bytes, name: str) -> tuple[str, Image.Image]:
        """Decode and check an upload (size, pixel count, format); its id is its content hash."""
        from convlens.images import load_image

        image = load_image(io.BytesIO(data), max_pixels=self.config.max_pixels)
        image_id = hashlib.sha256(data).hexdigest()[:20]
        self.images.put(image_id, image)
        return image_id, image

    def image(self, image_id: str) -> Image.Image:
        found = self.images.get(image_id)
        if found is None:
            raise LookupError(f"unknown image id {image_id!r}: upload it again")
        return found

    # -- model work ----------------------------------------------------------------------------
    def model(self, key: str) -> Model:
        if key not in self.models:
            from convlens.naming import unknown

            raise unknown("model", key, list(self.models))
        return self.models[key]

    def run_locked(self, key: str, fn: Callable[[], T]) -> T:
        """``fn()`` with the model's lock held (one call per model at a time)."""
        with self.model_locks[key]:
            return fn()

    def panel_layers(self, key: str) -> list[Any]:
        table = self.model(key).layers()
        return [row for row in table if row.kind in PANEL_KINDS and row.spatial]

    def forward(self, key: str, image_id: str) -> Forward:
        """The cached forward pass of a picture, computed once (one pass for predictions and
        every panel layer's activation)."""
        cache_key = (key, image_id)
        found = self.forwards.get(cache_key)
        if found is not None:
            return found
        with self._locks_lock:
            lock = self.forward_locks.setdefault(cache_key, threading.Lock())
        with lock:  # concurrent requests for one picture share one pass
            found = self.forwards.get(cache_key)
            if found is not None:
                return found
            model = self.model(key)
            image = self.image(image_id)
            layers = [row.name for row in self.panel_layers(key)]

            def compute() -> Forward:
                from convlens.hooks import forward_hooks, preserved, recorder

                batch = model.prepare([image])
                kept: dict[str, torch.Tensor] = {}
                module = model.module
                with (
                    preserved(module, out_of_place=True),  # kept outputs stay as they came
                    torch.inference_mode(),
                    forward_hooks(module, layers, recorder(kept, None)),
                ):
                    logits = model.forward(batch.inputs)
                    probs = model.postprocess(logits).float().cpu()
                picture = batch.pictures[0] if len(batch.pictures) else image
                maps = {name: t[0].float().cpu() for name, t in kept.items()}
                return Forward(batch.inputs.cpu(), picture, probs[0], maps)

            result = self.run_locked(key, compute)
            self.forwards.put(cache_key, result)
        with self._locks_lock:
            self.forward_locks.pop(cache_key, None)
        return result
