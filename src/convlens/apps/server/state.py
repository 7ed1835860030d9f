"""The explorer's state: the models it was started with (classifiers and detectors), uploaded
pictures, and bounded caches of forward passes, detections and box explanations, in one object
the app factory receives (no module globals).

Model code runs in a bounded worker pool, one call per model at a time (a model's hooks and
flags are changed while convlens runs it, so two threads must not share it at once).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from PIL import Image

from convlens.apps.server import job_kinds
from convlens.apps.server.forms import DRISE_BUDGET, MAX_DETECTIONS, box_form, box_methods
from convlens.apps.server.jobs import JobRunner, JobStore
from convlens.core.detector import Detection, Detections, Detector
from convlens.core.errors import WrongTaskError
from convlens.core.model import Model
from convlens.core.segmenter import Segmenter
from convlens.techniques.attribution.detection import BoxExplanation

T = TypeVar("T")

DEFAULT_MODELS = ("mobilenet_v2", "toon-cnn", "toon-detector")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PANEL_KINDS = ("conv", "pool")
MB = 1024 * 1024


MIN_TOKEN = 16


@dataclass
class ServerConfig:
    """How the explorer runs, and every bound on what it holds.

    ``token`` is required when ``host`` is not a loopback address (one is generated when none
    is given; one given must have at least 16 characters); only the names of ``host`` (and
    ``allowed_hosts``) are answered. ``max_upload_mb`` bounds every upload, and ``max_pixels``
    every decoded picture (decompression bombs are refused before decoding; a decoded picture
    holds 3 bytes a pixel). Detectors see the upload itself, unresized: ``max_detect_pixels``
    bounds what they take. Memory: decoded pictures are kept up to ``images_mb``, forward
    passes (the input and every panel layer's activation) up to ``cache_mb``, explanations up
    to ``explain_cache_mb``; at most ``max_queued_jobs`` jobs wait or run, and finished jobs'
    results are kept up to ``jobs_mb`` on disk and ``jobs_kept`` records (oldest removed
    first)."""

    models: Sequence[str] = DEFAULT_MODELS
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    data_dir: Path = Path("convlens-data")
    max_upload_mb: float = 10.0
    max_pixels: int = 40_000_000
    max_detect_pixels: int = 2048 * 2048
    workers: int = 2
    images_mb: float = 256.0
    cache_mb: float = 512.0
    explain_cache_mb: float = 64.0
    max_queued_jobs: int = 8
    jobs_mb: float = 1024.0
    jobs_kept: int = 200
    allowed_hosts: Sequence[str] = ()
    factory: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < MIN_TOKEN:
            raise ValueError(
                f"expected a token of at least {MIN_TOKEN} characters, got {len(self.token)} "
                "(leave it out to have one generated)"
            )
        if self.host not in LOOPBACK and not self.token:
            self.token = secrets.token_urlsafe(18)
        for name in ("max_upload_mb", "images_mb", "cache_mb", "explain_cache_mb", "jobs_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"expected {name} > 0, got {getattr(self, name)}")
        for name in ("workers", "max_queued_jobs", "jobs_kept", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")
        if self.max_pixels * 3 > self.images_mb * MB:
            raise ValueError(
                f"images_mb={self.images_mb:g} cannot hold one picture of max_pixels="
                f"{self.max_pixels} (3 bytes a pixel): raise images_mb or lower max_pixels"
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def picture_bytes(image: Image.Image) -> int:
    """What a decoded picture holds in memory (PIL keeps 3 or 4 bytes a pixel)."""
    return image.width * image.height * len(image.getbands()) + 1024


def explanation_bytes(result: Any) -> int:
    """What an explanation holds: its map, and the pictures it keeps for overlays."""
    size = result.map.numel() * result.map.element_size() + 4096
    pictures = getattr(result, "pictures", None)
    if isinstance(pictures, list):
        size += sum(picture_bytes(p) for p in pictures if isinstance(p, Image.Image))
    return int(size)


def model_key(spec: str) -> str:
    """A URL-safe name for a model: the zoo name, or a file's stem."""
    stem = Path(spec).stem if ("/" in spec or "." in Path(spec).name) else spec
    key = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-")
    return key or "model"


def crowd_samples() -> dict[str, bytes]:
    """Two crowd toon frames as PNG bytes (made in memory, nothing read from or written to
    disk), so the detection panel has something to show: each holds two characters of one
    class beside a third, where Layer-CAM and Grad-CAM differ."""
    from convlens.core.render import png_bytes
    from convlens.data import toons

    frames = toons.generate(11, variant="crowd", split="test", seed=5, size=128)
    return {f"crowd-{k}": png_bytes(frames.pixels[i]) for k, i in enumerate((3, 10), start=1)}


def map_layers(detector: Detector) -> list[str]:
    """The detector's layers a box CAM can read: an (N, C, h, w) output, run once in a pass
    (one dry pass on a blank 128 x 128 picture), in the order they return."""
    from convlens.core.hooks import forward_hooks, preserved

    calls: dict[str, int] = {}

    def seen(name: str, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            calls[name] = calls.get(name, 0) + 1
        else:
            calls[name] = 2  # no map: never offered

    names = [name for name, _ in detector.module.named_modules() if name]
    blank = torch.zeros(1, 3, 128, 128, device=detector.device)
    with (
        preserved(detector.module),
        torch.inference_mode(),
        forward_hooks(detector.module, names, seen),
    ):
        detector.module(detector.to_input(blank))
    return [name for name, count in calls.items() if count == 1]


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
        total = self.inputs.numel() * self.inputs.element_size() + picture_bytes(self.picture)
        return total + sum(a.numel() * a.element_size() for a in self.activations.values())


class _LRU:
    """An LRU map bounded by a total size in bytes (``size_of`` each value): the least recently
    used entries go first, and a value larger than the whole budget is not kept at all."""

    def __init__(self, budget: float, size_of: Callable[[Any], float]):
        self.budget, self.size_of = budget, size_of
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
        size = self.size_of(value)
        with self.lock:
            if key in self.items:
                self.used -= self.size_of(self.items.pop(key))
            if size > self.budget:
                return
            self.items[key] = value
            self.used += size
            while self.used > self.budget:
                _, old = self.items.popitem(last=False)
                self.used -= self.size_of(old)


@dataclass
class ServerState:
    """Everything the app shares between requests."""

    config: ServerConfig
    models: dict[str, Model | Detector | Segmenter] = field(default_factory=dict)
    specs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.jobs: JobRunner | None = None
        # model work, and a few threads more for what waits inside (a detector's lock)
        self.executor = ThreadPoolExecutor(self.config.workers + 4, thread_name_prefix="convlens")
        self.runs: dict[str, Any] = {}  # the requests' model work in progress, by run id
        self.model_locks: dict[str, threading.Lock] = {}
        # the long lane: a classifier's own copy and lock for its many-pass explanations
        self.long_lanes: dict[str, tuple[Model, threading.Lock]] = {}
        config = self.config
        self.images = _LRU(config.images_mb * MB, picture_bytes)
        self.forwards = _LRU(config.cache_mb * MB, lambda f: f.nbytes)
        self.forward_locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_lock = threading.Lock()
        # detections per (model, picture, thresholds): (Detections, seconds); about 100 bytes
        # a box, at most MAX_DETECTIONS boxes
        self.found = _LRU(16 * MB, lambda v: 4096 + 128 * len(v[0]))
        # explanations: box explanations per (model, picture, box, method, options) and a
        # classifier's per (model, picture, method, target, layer, options): (result, seconds)
        self.explained = _LRU(config.explain_cache_mb * MB, lambda v: explanation_bytes(v[0]))
        self.box_layers: dict[str, list[str]] = {}  # detector -> layers a box CAM can read
        self.samples: dict[str, bytes] = {}  # generated sample pictures by name (PNG)

    @classmethod
    def start(cls, config: ServerConfig) -> ServerState:
        """Load every model of ``config`` once (errors name the model that failed): classifiers
        and detectors alike. A detector whose package is missing (``mtcnn-faces`` needs
        facenet-pytorch) fails here, with the install hint, only when it is asked for."""
        from convlens.core.loading import load
        from convlens.techniques.attribution.detection import default_box_layer

        state = cls(config)
        for spec in config.models:
            key = model_key(spec)
            if key in state.models:
                raise ValueError(f"two models would share the name {key!r}: rename one file")
            try:
                handle = load(spec, factory=config.factory)
            except ImportError as err:
                raise ImportError(f"cannot serve {spec!r}: {err}") from None
            state.models[key] = handle
            state.specs[key] = spec
            state.model_locks[key] = threading.Lock()
            if handle.task == "detect":
                detector = state.detector(key)
                try:
                    default = default_box_layer(detector)
                except ValueError:
                    continue  # no layer to read (MTCNN's cascade): D-RISE only
                try:
                    layers = map_layers(detector)
                except Exception:  # a detector the blank picture does not suit: its default
                    layers = []
                state.box_layers[key] = layers if default in layers else [*layers, default]
        if not state.models:
            raise ValueError("expected at least one model to serve")
        state.samples = crowd_samples()
        state.jobs = JobRunner(
            JobStore(config.data_dir),
            state._run_job,
            max_queued=config.max_queued_jobs,
            max_bytes=config.jobs_mb * MB,
            max_kept=config.jobs_kept,
        )
        return state

    def _run_job(
        self,
        kind: str,
        key: str,
        params: dict[str, Any],
        folder: Path,
        progress: Any,
        note: Any = lambda text: None,
    ) -> list[str]:
        # the job works on its own copy, so the model stays free for the page meanwhile
        model = self.run_locked(key, lambda: copy.deepcopy(self.classifier(key, "jobs")))
        return job_kinds.run(kind, model, params, folder, progress, self.image, note)

    def close(self) -> None:
        if self.jobs is not None:
            self.jobs.close()
            self.jobs.store.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- pictures ------------------------------------------------------------------------------
    def add_image(self, data: bytes, name: str) -> tuple[str, Image.Image]:
        """Decode and check an upload (size, pixel count, format); its id is its content hash."""
        from convlens.core.images import load_image

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
    def model(self, key: str) -> Model | Detector | Segmenter:
        if key not in self.models:
            from convlens.core.naming import unknown

            raise unknown("model", key, list(self.models))
        return self.models[key]

    def task(self, key: str) -> str:
        """The handle's task: ``"classify"`` or ``"detect"``."""
        return str(self.model(key).task)

    def classifier(self, key: str, what: str = "this panel") -> Model:
        """The classifier ``key``; a detector is refused, saying where its panels are."""
        handle = self.model(key)
        if handle.task != "classify":
            kind, panel = (
                ("detector", "detections")
                if handle.task == "detect"
                else ("segmenter", "segmentation")
            )
            raise WrongTaskError(
                f"{key!r} is a {kind}: expected a classifier for {what} (served: "
                f"{self._of('classify')}); a {kind}'s panel is "
                f"/api/models/{key}/images/<id>/{panel}"
            )
        return cast(Model, handle)

    def detector(self, key: str) -> Detector:
        """The detector ``key``; a classifier is refused, naming the detectors served."""
        handle = self.model(key)
        if handle.task != "detect":
            raise WrongTaskError(
                f"{key!r} is a classifier: expected a detector for detections (served: "
                f"{self._of('detect')}); a classifier's panels are predictions, activations "
                "and explain"
            )
        return cast(Detector, handle)

    def _of(self, task: str) -> str:
        names = [key for key in self.models if self.task(key) == task]
        return ", ".join(names) if names else "none"

    def box_methods(self, key: str) -> list[str]:
        """The box explanations ``key`` supports: gradient CAMs need a layer to read."""
        return [m for m in box_methods() if m == "drise" or key in self.box_layers]

    def model_lock(self, key: str) -> threading.Lock:
        """The lock of model ``key`` (one call per model at a time); unknown models: 404."""
        self.model(key)
        return self.model_locks[key]

    def long_lane(self, key: str) -> tuple[Model, threading.Lock]:
        """Classifier ``key``'s long lane: a copy of the model with a lock of its own, where the
        many-pass explanations (those that report progress: occlusion, RISE, Score-CAM, IG,
        SmoothGrad) run, so that predictions, activations and one-pass maps never queue behind
        them. Made on first use (one more copy of the weights per classifier); the caller holds
        the model's own lock while it is made, so no hook of a running call is copied."""
        with self._locks_lock:
            if key not in self.long_lanes:
                self.long_lanes[key] = (copy.deepcopy(self.classifier(key)), threading.Lock())
            return self.long_lanes[key]

    def run_locked(self, key: str, fn: Callable[[], T]) -> T:
        """``fn()`` with the model's lock held (one call per model at a time)."""
        with self.model_lock(key):
            return fn()

    def panel_layers(self, key: str) -> list[Any]:
        table = self.classifier(key).layers()
        return [row for row in table if row.kind in PANEL_KINDS and row.spatial]

    def forward(self, key: str, image_id: str, *, locked: bool = False) -> Forward:
        """The cached forward pass of a picture, computed once (one pass for predictions and
        every panel layer's activation); ``locked``: the caller holds the model's lock."""
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
            model = self.classifier(key)
            image = self.image(image_id)
            layers = [row.name for row in self.panel_layers(key)]

            def compute() -> Forward:
                from convlens.core.hooks import forward_hooks, preserved, recorder

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

            result = compute() if locked else self.run_locked(key, compute)
            self.forwards.put(cache_key, result)
        with self._locks_lock:
            self.forward_locks.pop(cache_key, None)
        return result

    def picture(self, key: str, image_id: str) -> Image.Image:
        """The picture as ``key`` sees it: a classifier's resized and cropped input, or, for a
        detector, the upload itself (box coordinates are in its pixels)."""
        if self.task(key) == "detect":
            return self.image(image_id)
        return self.forward(key, image_id).picture

    # -- detectors -------------------------------------------------------------------------------
    def thresholds(
        self,
        key: str,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> tuple[float, float, int]:
        """The detection settings of a request (the detector's own where not given), checked."""
        from convlens.core.detector import check_thresholds

        detector = self.detector(key)
        score = detector.score_threshold if score_threshold is None else float(score_threshold)
        iou = detector.iou_threshold if iou_threshold is None else float(iou_threshold)
        most = detector.max_detections if max_detections is None else max_detections
        check_thresholds(score, iou, most)
        if most > MAX_DETECTIONS:
            raise ValueError(f"expected max_detections in [1, {MAX_DETECTIONS}], got {most}")
        return score, iou, most

    def detector_picture(self, image_id: str) -> Image.Image:
        """An upload a detector can take whole (at most ``max_detect_pixels``)."""
        image = self.image(image_id)
        limit = self.config.max_detect_pixels
        if image.width * image.height > limit:
            raise ValueError(
                f"expected a picture of at most {limit} pixels for a detector (it sees the "
                f"picture unresized), got {image.width}x{image.height}: scale it down"
            )
        return image

    def detections(
        self, key: str, image_id: str, thresholds: tuple[float, float, int]
    ) -> tuple[Detections, float]:
        """The detections on a picture and the seconds they took, cached per (model, picture,
        thresholds); computed in the caller's thread under the model's lock."""
        from convlens.core.tasks import detect

        detector = self.detector(key)
        image = self.detector_picture(image_id)
        cache_key = (key, image_id, *thresholds)
        found = self.found.get(cache_key)
        if found is not None:
            return found

        def compute() -> tuple[Detections, float]:
            again = self.found.get(cache_key)  # a request that waited for the lock
            if again is not None:
                return again
            start = time.perf_counter()
            score, iou, most = thresholds
            result = detect(
                detector, image, score_threshold=score, iou_threshold=iou, max_detections=most
            )
            entry = (result, time.perf_counter() - start)
            self.found.put(cache_key, entry)
            return entry

        return self.run_locked(key, compute)

    def drise_batch(self, image: Image.Image) -> int:
        """D-RISE's masked copies per detector call: 32, fewer for large pictures."""
        return max(1, min(32, 2**21 // (image.width * image.height)))

    def _box_request(
        self, key: str, image_id: str, target: Detection, method: str, options: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """A box explanation's options as it runs (D-RISE: its masks checked against the
        picture's size, its batch) and its cache key: (model, picture, box, class, method,
        options), so changing a threshold that keeps the box reuses the map."""
        options = dict(options)
        if method == "drise":
            image = self.detector_picture(image_id)
            masks = int(options.get("masks", box_form("drise").setting("masks").default))
            pixels = image.width * image.height
            if masks * pixels > DRISE_BUDGET:
                raise ValueError(
                    f"D-RISE on a {image.width}x{image.height} picture takes at most "
                    f"{max(1, DRISE_BUDGET // pixels)} masks (masks x pixels <= {DRISE_BUDGET}); "
                    f"got masks={masks}"
                )
            options["masks"] = masks
            options["batch_size"] = self.drise_batch(image)
        items = tuple(sorted(options.items()))
        return options, (key, image_id, target.box, target.label, method, items)

    def cached_box(
        self, key: str, image_id: str, target: Detection, method: str, options: dict[str, Any]
    ) -> tuple[BoxExplanation, float, bool] | None:
        """The cached explanation of a box (see :meth:`explain_box`), or ``None``."""
        _, cache_key = self._box_request(key, image_id, target, method, options)
        found = self.explained.get(cache_key)
        if found is None:
            return None
        return dataclasses.replace(found[0], target=target), found[1], True

    def explain_box(
        self,
        key: str,
        image_id: str,
        target: Detection,
        method: str,
        options: dict[str, Any],
        extra: dict[str, Any] | None = None,
        *,
        locked: bool = False,
    ) -> tuple[BoxExplanation, float, bool]:
        """One detection explained (``options`` parsed by the method's form): the explanation,
        the seconds it took, and whether it came from the cache (:meth:`cached_box`).
        ``extra``: what the explorer adds to the method's call
        (:func:`~convlens.apps.server.web.run_extras`: D-RISE's progress, where a cancelled
        :class:`Run` stops, freeing the model for the next request, and its previews); the
        options win over it. ``locked``: the caller holds the model's lock."""
        from convlens.techniques.attribution.detection import explain_box

        detector = self.detector(key)
        image = self.detector_picture(image_id)
        options, cache_key = self._box_request(key, image_id, target, method, options)

        def compute() -> tuple[BoxExplanation, float, bool]:
            again = self.cached_box(key, image_id, target, method, options)
            if again is not None:
                return again
            start = time.perf_counter()
            result = explain_box(detector, image, target, method, **{**(extra or {}), **options})
            if "batch_size" in options:
                result.settings["batch_size"] = options["batch_size"]
            seconds = time.perf_counter() - start
            self.explained.put(cache_key, (result, seconds))
            return result, seconds, False

        return compute() if locked else self.run_locked(key, compute)
