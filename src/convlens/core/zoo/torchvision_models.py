"""torchvision's catalogue: every classification, detection and segmentation builder with its
weights enum (``torchvision.models.list_models``), by name.

A name is a builder's (``resnet50``), optionally with a weights tag (``resnet50.IMAGENET1K_V1``;
default: the enum's ``DEFAULT``). The network is made by torchvision's own builder with those
weights, so every change torchvision makes for them (the class count, Inception-v3's
``transform_input``, the detectors' batch-norm ``eps``, DenseNet's old key names) is made here
too; only the file is read by us: from the hub cache (:func:`.weights.fetch`), with
``torch.load(weights_only=True)``, strictly. The preprocessing is the weights' own
``transforms()``:

========================  ====================================================================
torchvision preset        :class:`~convlens.core.model.Preprocessing`
========================  ====================================================================
``ImageClassification``   ``crop=crop_size``, ``resize=resize_size`` (shorter side),
                          ``mean``, ``std``, ``interpolation`` (bilinear / bicubic / nearest)
``SemanticSegmentation``  ``crop=None``, ``resize=resize_size``, ``mean``, ``std``,
                          ``interpolation``
``ObjectDetection``       none: the detector takes pictures in [0, 1] (its own transform
                          resizes and normalises inside the network)
========================  ====================================================================

Labels are ``weights.meta["categories"]``; the ImageNet-1k list becomes convlens's
``data/imagenet_classes.txt`` (the same names, in the same order, with WordNet's synonyms).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import torch

from convlens.core.model import Preprocessing
from convlens.core.naming import unknown
from convlens.core.zoo.parts import CatalogueEntry, ModelParts
from convlens.core.zoo.registry import _torchvision, imagenet_classes
from convlens.core.zoo.weights import OfflineError, Progress, WeightsFile, fetch

_SECTIONS = (("classify", ""), ("detect", "detection"), ("segment", "segmentation"))
_READING = threading.Lock()


@cache
def _tasks() -> dict[str, str]:
    """Every builder name -> its task."""
    try:
        torchvision = _torchvision()
    except ImportError:
        return {}
    models = torchvision.models
    found: dict[str, str] = {}
    for task, section in _SECTIONS:
        module = getattr(models, section) if section else models
        for name in models.list_models(module=module):
            found[name] = task
    return found


def names(task: str | None = None) -> list[str]:
    return sorted(n for n, t in _tasks().items() if task is None or t == task)


def _split(name: str) -> tuple[str, str | None]:
    arch, _, tag = name.partition(".")
    return arch, tag or None


def knows(name: str) -> bool:
    return _split(name)[0] in _tasks()


def _weights(name: str) -> Any:
    """The weights enum member a name asks for (its tag, else ``DEFAULT``)."""
    arch, tag = _split(name)
    if arch not in _tasks():
        raise unknown("torchvision model", arch, names())
    enum = _torchvision().models.get_model_weights(arch)
    if tag is None:
        return enum.DEFAULT
    members = [m.name for m in enum]
    if tag not in members:
        raise unknown(f"weights of {arch}", tag, members)
    return enum[tag]


def _metric(weights: Any) -> str:
    """The weights' headline figure (``ImageNet-1K acc@1 80.9``)."""
    for dataset, values in weights.meta.get("_metrics", {}).items():
        for key, value in values.items():
            return f"{dataset} {key} {value:.1f}"
    return ""


def entry(name: str) -> CatalogueEntry:
    weights = _weights(name)
    arch, _ = _split(name)
    metric = _metric(weights)
    return CatalogueEntry(
        name=name,
        task=_tasks()[arch],
        source="torchvision",
        description=f"{weights.name}" + (f", {metric}" if metric else ""),
        weights=WeightsFile.from_url(weights.url, size_mb=weights.meta.get("_file_size")),
    )


def entries() -> list[CatalogueEntry]:
    return [entry(n) for n in names()]


def preprocessing(weights: Any) -> Preprocessing | None:
    """The weights' ``transforms()`` as a :class:`Preprocessing` (``None`` for detectors)."""
    preset = weights.transforms()
    kind = type(preset).__name__
    if kind == "ObjectDetection":
        return None
    resize = getattr(preset, "resize_size", None)
    crop = getattr(preset, "crop_size", None)
    if kind not in ("ImageClassification", "SemanticSegmentation"):
        raise ValueError(f"expected a classification or segmentation preset, got {kind}")
    return Preprocessing(
        crop=int(crop[0]) if crop else None,
        resize=int(resize[0]) if resize else None,
        mean=tuple(float(v) for v in preset.mean),
        std=tuple(float(v) for v in preset.std),
        interpolation=preset.interpolation.value,
    )


def labels(weights: Any) -> list[str] | list[list[str]] | None:
    """``meta["categories"]``; ImageNet-1k's as convlens's names with synonyms."""
    categories = weights.meta.get("categories")
    if categories is None:
        return None
    imagenet = imagenet_classes()
    if len(categories) == len(imagenet) and all(
        c == names[0] for c, names in zip(categories, imagenet, strict=True)
    ):
        return [list(names) for names in imagenet]
    return list(categories)


@contextmanager
def _reading_from(weights: Any, path: Path) -> Iterator[None]:
    """Inside the block, ``weights.get_state_dict()`` (what torchvision's builders call) reads
    the file already fetched to ``path`` with ``torch.load(weights_only=True)``: torchvision's
    own loader unpickles with ``weights_only=False`` and would download. Any other weights of
    the same enum are refused, never fetched. One builder at a time."""
    kind = type(weights)
    own = kind.__dict__.get("get_state_dict")

    def read(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self is not weights:
            raise OfflineError(f"torchvision asked for {self} building {weights}: not fetched")
        return torch.load(path, map_location="cpu", weights_only=True)

    with _READING:
        kind.get_state_dict = read
        try:
            yield
        finally:
            if own is None:
                del kind.get_state_dict
            else:
                kind.get_state_dict = own


def build(
    name: str,
    *,
    download: bool | None = None,
    offline: bool | None = None,
    progress: Progress | None = None,
) -> ModelParts:
    """torchvision's network for ``name`` with its weights (see the module docstring)."""
    weights = _weights(name)
    arch, _ = _split(name)
    file = WeightsFile.from_url(weights.url, size_mb=weights.meta.get("_file_size"))
    path = fetch(file, download=download, offline=offline, progress=progress, what=name)
    builder = _torchvision().models.get_model_builder(arch)
    with _reading_from(weights, path):
        module = builder(weights=weights, progress=False)
    module.eval()
    return ModelParts(
        name=name,
        module=module,
        preprocessing=preprocessing(weights),
        labels=labels(weights),
        task=_tasks()[arch],
        source="torchvision",
        weights=path,
    )
