"""The tasks a model handle can have, and the front doors that need one of them.

A handle is a :class:`~convlens.core.model.Model` (task ``classify``), a
:class:`~convlens.core.detector.Detector` (task ``detect``) or a
:class:`~convlens.core.segmenter.Segmenter` (task ``segment``); all carry ``task``, ``name``,
``module``, ``labels`` and ``device``. Code that takes only one task asks for it here
(:func:`as_model`, :func:`as_detector`, :func:`as_segmenter`), so a wrong one is refused with a
pointer to what takes it, and anything :func:`convlens.load` accepts (a name, a file, a module)
works too.
"""

from __future__ import annotations

from typing import Any

from convlens.core.detector import Detections, Detector
from convlens.core.errors import ModelLoadError, WrongTaskError
from convlens.core.loading import TASKS, Handle, load
from convlens.core.model import Model
from convlens.core.segmenter import Segmentation, Segmenter

__all__ = [
    "TASKS",
    "Handle",
    "as_detector",
    "as_handle",
    "as_model",
    "as_segmenter",
    "detect",
    "load_classifier",
    "segment",
]

# what takes a handle of each task, for the refusals
_TAKES = {
    "detect": "Detectors work with convlens.detect, convlens.explain (target=a box) and "
    "convlens.evaluate; on the command line with `convlens detect DETECTOR IMAGE --explain "
    "drise|gradcam|layercam` and `convlens evaluate`",
    "segment": "Segmenters work with convlens.segment, convlens.explain (target=a class, "
    "region=a mask) and convlens.evaluate; on the command line with `convlens segment "
    "SEGMENTER IMAGE --explain gradcam|layercam|occlusion|rise` and `convlens evaluate`",
}


def as_handle(model: Any) -> Handle:
    """A handle of any task from anything :func:`convlens.load` takes."""
    return model if isinstance(model, (Model, Detector, Segmenter)) else load(model)


def load_classifier(source: Any, **kwargs: Any) -> Model:
    """:func:`convlens.load`, for code that takes classifiers: a detector or a segmenter is
    refused with a pointer to what takes it."""
    handle = load(source, **kwargs)
    if not isinstance(handle, Model):
        what = "detector" if handle.task == "detect" else "segmenter"
        raise ModelLoadError(
            f"{handle.name!r} is a {what}; this takes a classifier. {_TAKES[handle.task]}"
        )
    return handle


def as_model(model: Any) -> Model:
    """A classifier handle from anything :func:`load` takes (a Model is returned as is)."""
    return model if isinstance(model, Model) else load_classifier(model)


def as_detector(model: Any) -> Detector:
    """A detector handle from anything :func:`convlens.load` takes."""
    handle = as_handle(model)
    if not isinstance(handle, Detector):
        raise WrongTaskError(f"expected a detector, got the {_kind(handle)} {handle.name!r}")
    return handle


def as_segmenter(model: Any) -> Segmenter:
    """A segmenter handle from anything :func:`convlens.load` takes."""
    handle = as_handle(model)
    if not isinstance(handle, Segmenter):
        raise WrongTaskError(f"expected a segmenter, got the {_kind(handle)} {handle.name!r}")
    return handle


def _kind(handle: Handle) -> str:
    return {"classify": "classifier", "detect": "detector", "segment": "segmenter"}[handle.task]


def detect(
    detector: Detector | str,
    image: Any,
    *,
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
) -> Detections:
    """The detections in one picture (``detector(...)`` takes many). ``detector``: a
    :class:`Detector` or anything :func:`convlens.load` makes one of (``"toon-detector"``)."""
    detector = as_detector(detector)
    found = detector(
        image,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )
    if len(found) != 1:
        raise ValueError(f"expected one picture, got {len(found)}; call the detector for many")
    return found[0]


def segment(segmenter: Segmenter | str, image: Any) -> Segmentation:
    """The segmentation of one picture (``segmenter(...)`` takes many): its class map,
    probabilities, ``mask("hair")``, ``region_at(x, y)`` and ``draw()``. ``segmenter``: a
    :class:`Segmenter` or anything :func:`convlens.load` makes one of (``"toon-segmenter"``)."""
    found = as_segmenter(segmenter)(image)
    if len(found) != 1:
        raise ValueError(f"expected one picture, got {len(found)}; call the segmenter for many")
    return found[0]
