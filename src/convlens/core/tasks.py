"""The tasks a model handle can have, and the front doors that need one of them.

A handle is a :class:`~convlens.core.model.Model` (task ``classify``) or a
:class:`~convlens.core.detector.Detector` (task ``detect``); both carry ``task``, ``name``,
``module``, ``labels`` and ``device``. Code that takes only one task asks for it here
(:func:`as_model`, :func:`as_detector`), so a wrong one is refused with a pointer to what takes
it, and anything :func:`convlens.load` accepts (a name, a file, a module) works too.
"""

from __future__ import annotations

from typing import Any

from convlens.core.detector import Detections, Detector
from convlens.core.errors import ModelLoadError, WrongTaskError
from convlens.core.loading import TASKS, Handle, load
from convlens.core.model import Model

__all__ = ["TASKS", "Handle", "as_detector", "as_handle", "as_model", "detect", "load_classifier"]


def as_handle(model: Any) -> Handle:
    """A handle of any task from anything :func:`convlens.load` takes."""
    return model if isinstance(model, (Model, Detector)) else load(model)


def load_classifier(source: Any, **kwargs: Any) -> Model:
    """:func:`convlens.load`, for code that takes classifiers: a detector is refused with a
    pointer to
    what takes detectors."""
    handle = load(source, **kwargs)
    if not isinstance(handle, Model):
        raise ModelLoadError(
            f"{handle.name!r} is a detector; this takes a classifier. Detectors work with "
            "convlens.detect, convlens.explain (target=a box) and convlens.evaluate; on the "
            "command line with `convlens detect DETECTOR IMAGE --explain drise|gradcam|layercam` "
            "and `convlens evaluate`"
        )
    return handle


def as_model(model: Any) -> Model:
    """A classifier handle from anything :func:`load` takes (a Model is returned as is)."""
    return model if isinstance(model, Model) else load_classifier(model)


def as_detector(model: Any) -> Detector:
    """A detector handle from anything :func:`convlens.load` takes."""
    handle = as_handle(model)
    if not isinstance(handle, Detector):
        raise WrongTaskError(f"expected a detector, got the classifier {handle.name!r}")
    return handle


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
