"""``convlens.load``: a model handle from whatever the user has.

Accepted sources, tried in this order:

* a handle (:class:`~convlens.core.model.Model`, :class:`~convlens.core.detector.Detector` or
  :class:`~convlens.core.segmenter.Segmenter`), returned as is with the options applied;
* a ``torch.nn.Module``;
* a file, recognised by its content (the suffix must agree): every format registered in
  :mod:`convlens.core.formats` (TorchScript and ``torch.save`` checkpoints, ``.onnx``, Keras 3
  ``.keras`` / ``.h5``, ``.safetensors`` and ``.npz`` weights with ``factory=``, plugin ``.py``
  files that define a model);
* a zoo name (``"mobilenet_v2"``, ``"toon-detector"``, ``"toon-segmenter"``; see
  :mod:`convlens.core.zoo`);
* a catalogue name: any torchvision classifier, detector or segmenter (``"resnet50"``,
  ``"fasterrcnn_mobilenet_v3_large_fpn"``, ``"resnet50.IMAGENET1K_V1"``) or timm model
  (``"timm:convnext_nano"``), with its weights' own preprocessing and labels; weights from
  torch's hub cache, downloaded into it only when asked (``download=True`` /
  ``CONVLENS_DOWNLOAD=1``, never under ``offline`` / ``CONVLENS_OFFLINE=1``;
  :mod:`convlens.core.zoo.weights`);
* ``"package.module:factory"``, a callable returning a module or a handle.

The handle's task follows from what was found: torchvision's detection networks, our
CenterNet, modules that say ``task = "detect"``, detector checkpoints and zoo detectors come back
as a :class:`~convlens.core.detector.Detector`; torchvision's segmentation networks, our toon
segmentation network, modules that say ``task = "segment"``, segmenter checkpoints and zoo
segmenters as a :class:`~convlens.core.segmenter.Segmenter`; everything else as a classifier
:class:`~convlens.core.model.Model`; ``task=`` forces one. A detector's options are its settings
(:data:`DETECTOR_OPTIONS`), a segmenter's :data:`SEGMENTER_OPTIONS`.

Pickled whole models are refused unless ``trust_pickle=True``: unpickling runs code from the
file. Checkpoints are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from convlens.core import formats, zoo
from convlens.core.architectures import looks_like_factory, resolve_factory
from convlens.core.detector import Detector, is_detection_module
from convlens.core.errors import ModelLoadError, PickleRefusedError
from convlens.core.model import Model
from convlens.core.naming import unknown
from convlens.core.segmenter import Segmenter, is_segmentation_module
from convlens.core.zoo import ModelParts, catalogue
from convlens.core.zoo.weights import Progress

__all__ = ["ModelLoadError", "PickleRefusedError", "load"]

TASKS = ("classify", "detect", "segment")
Handle = Model | Detector | Segmenter
DETECTOR_OPTIONS = (
    "labels",
    "name",
    "score_threshold",
    "iou_threshold",
    "max_detections",
    "layer",
    "input_size",
)
SEGMENTER_OPTIONS = ("labels", "name", "preprocess", "layer", "background")


def load(
    source: Any,
    *,
    factory: str | Callable[[], nn.Module] | None = None,
    trust_pickle: bool = False,
    task: str | None = None,
    download: bool | None = None,
    offline: bool | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> Handle:
    """Load a model handle from ``source`` (see the module docstring for what is accepted).

    ``factory`` builds the network for a weights-only file (``"pkg.mod:fn"`` or a callable).
    ``options`` go to the handle (a classifier's ``preprocess``, ``postprocess``, ``labels``,
    ``name``, ``input_size``; a detector's :data:`DETECTOR_OPTIONS`; a segmenter's
    :data:`SEGMENTER_OPTIONS`) and override what the source says. ``task`` (``classify`` /
    ``detect`` / ``segment``) forces the kind of handle.
    A catalogue model's weights missing from the hub cache are downloaded only with
    ``download=True`` (default: ``CONVLENS_DOWNLOAD``); ``offline=True`` (default:
    ``CONVLENS_OFFLINE``) refuses even then; ``progress(done, total)`` reports a download in
    bytes.
    """
    if task not in (None, *TASKS):
        raise ModelLoadError(f"expected task='classify', 'detect' or 'segment', got {task!r}")
    if isinstance(source, (Model, Detector, Segmenter, nn.Module)):
        return _handle(source, options, task)
    if not isinstance(source, (str, Path)):
        raise TypeError(
            "expected a Model, an nn.Module, a zoo name, a model file or 'pkg.module:factory', "
            f"got {type(source).__name__}"
        )
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        request = formats.LoadRequest(factory, trust_pickle, options)
        return _handle(formats.read(path, request), request.options, task)
    if text in zoo.ZOO:
        return _handle(zoo.load(text), options, task)
    if catalogue.knows(text):
        parts = catalogue.build(text, download=download, offline=offline, progress=progress)
        for note in parts.notes:  # what the preprocessing could not reproduce exactly
            warnings.warn(f"{text}: {note}", stacklevel=2)
        return _from_parts(parts, options, task)
    if looks_like_factory(text):
        return _from_factory(text, options, task)
    if path.suffix.lower() in formats.suffixes():
        raise FileNotFoundError(f"model file {text!r} does not exist")
    raise unknown(
        "model (not a file, a zoo or catalogue name, or 'pkg.module:factory')",
        text,
        [*zoo.names(), *catalogue.torchvision_models.names()],
    )


def _from_parts(parts: ModelParts, options: dict[str, Any], task: str | None) -> Any:
    """The handle of a catalogue model's task, with ``options`` applied."""
    if parts.task == "segment":
        return _segmenter(parts, options, task)
    if parts.task == "detect":
        labels = [str(n) for n in parts.labels] if parts.labels is not None else None
        found: Model | Detector = Detector(parts.module, labels, name=parts.name)
    else:
        found = Model(
            parts.module, preprocess=parts.preprocessing, labels=parts.labels, name=parts.name
        )
    return _handle(found, options, task)


def _segmenter(parts: ModelParts, options: dict[str, Any], task: str | None) -> Segmenter:
    """A segmentation network's handle (task ``segment``): the one place where a catalogue's
    ``(module, preprocessing, labels)`` becomes it, with the user's ``options``. The weights'
    preprocessing (torchvision's ``SemanticSegmentation``: the shorter side resized, no crop,
    mean and std) is the segmenter's; the first class (``__background__``) its background."""
    if task not in (None, "segment"):
        raise ModelLoadError(f"{parts.name} is a segmentation network; task={task!r} was asked for")
    labels = [n if isinstance(n, str) else n[0] for n in parts.labels or []] or None
    found = Segmenter(parts.module, labels, name=parts.name, preprocess=parts.preprocessing)
    return _as_segmenter(found, options)


def _handle(found: Any, options: dict[str, Any], task: str | None) -> Handle:
    """The handle for what a source gave, with ``options`` applied."""
    detects = isinstance(found, Detector) or (
        isinstance(found, nn.Module) and is_detection_module(found)
    )
    segments = isinstance(found, Segmenter) or (
        isinstance(found, nn.Module) and is_segmentation_module(found)
    )
    if task == "detect" or (task is None and detects):
        return _as_detector(found, options)
    if task == "segment" or (task is None and segments):
        return _as_segmenter(found, options)
    if isinstance(found, (Detector, Segmenter)):
        raise ModelLoadError(
            f"{found.name!r} is a {found.task} handle; task={task!r} was asked for"
        )
    if isinstance(found, Model):
        return _with_options(found, options)
    if isinstance(found, nn.Module):
        return Model(found, **options)
    raise ModelLoadError(f"expected a model, got {type(found).__name__}")


def _as_detector(source: Any, options: dict[str, Any]) -> Detector:
    """A :class:`~convlens.core.detector.Detector` from a Detector, a Model's network or a
    detection module, with ``options`` (:data:`DETECTOR_OPTIONS`) as its settings."""
    return _task_handle(Detector, "detector", DETECTOR_OPTIONS, source, options, ("to_input",))


def _as_segmenter(source: Any, options: dict[str, Any]) -> Segmenter:
    """A :class:`~convlens.core.segmenter.Segmenter` from a Segmenter, a Model's network or a
    segmentation module, with ``options`` (:data:`SEGMENTER_OPTIONS`) as its settings."""
    return _task_handle(Segmenter, "segmenter", SEGMENTER_OPTIONS, source, options)


def _task_handle(
    kind: Any,
    what: str,
    allowed: Sequence[str],
    source: Any,
    options: dict[str, Any],
    kept: Sequence[str] = (),
) -> Any:
    """A ``kind`` handle (Detector, Segmenter) made from one, from a Model's network or from a
    bare module (its ``labels`` attribute, if any, as the class names), with ``options``
    (names in ``allowed``, each also an attribute of the handle) replacing its settings;
    ``kept`` are further attributes carried over unchanged."""
    unknown_options = sorted(set(options) - set(allowed))
    if unknown_options:
        raise ModelLoadError(
            f"a {what} takes the options {', '.join(allowed)}; got {', '.join(unknown_options)}"
        )
    if isinstance(source, Model):
        source = source.module
    if isinstance(source, nn.Module):
        names = getattr(source, "labels", None)
        labels = list(names) if isinstance(names, list | tuple) else None
        source = kind(source, labels, name=type(source).__name__)
    if not isinstance(source, kind):
        raise ModelLoadError(f"expected a {what}, got {type(source).__name__}")
    if not options:
        return source
    settings = {name: getattr(source, name) for name in allowed} | options
    labels = settings.pop("labels")
    return kind(source.module, labels, **{k: getattr(source, k) for k in kept}, **settings)


def _with_options(model: Model, options: dict[str, Any]) -> Model:
    if not options:
        return model
    keep: dict[str, Any] = {
        "preprocess": model.preprocess,
        "postprocess": model.postprocess,
        "labels": model.synonyms,
        "name": model.name,
        "input_size": model._input_size,
    }
    keep.update(options)
    return Model(model.module, **keep)


def _from_factory(spec: str, options: dict[str, Any], task: str | None) -> Handle:
    built = resolve_factory(spec)()
    if isinstance(built, nn.Module) and not is_detection_module(built) and task != "detect":
        options.setdefault("name", spec)
    if not isinstance(built, (Model, Detector, Segmenter, nn.Module)):
        raise ModelLoadError(
            f"factory {spec!r} returned {type(built).__name__}, expected an nn.Module or a Model"
        )
    return _handle(built, options, task)
