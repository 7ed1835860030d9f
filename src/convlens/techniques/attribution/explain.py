"""``convlens.explain``: the one entry point for every explanation, whatever the task.

The handle's task (``classify`` or ``detect``, :mod:`convlens.core.tasks`) picks the method
table; the method's function does the rest. A classifier's methods explain a class for each
picture of a batch and return an :class:`~convlens.techniques.attribution.base.Attribution`;
a detector's explain one box and return a
:class:`~convlens.techniques.attribution.detection.BoxExplanation`; both are
:class:`~convlens.techniques.attribution.base.Explanation` s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from convlens.core.model import Batch, Model
from convlens.core.tasks import as_handle
from convlens.techniques.attribution.base import (
    Explanation,
    Target,
    TargetSpec,
    get_method,
)


def explain(
    model: Any,
    images: Any,
    method: str = "gradcam",
    target: TargetSpec = None,
    *,
    classes: Sequence[int | str] | None = None,
    **options: Any,
) -> Explanation:
    """Explain ``images`` with the registered ``method`` of the model's task (see
    :func:`~convlens.techniques.attribution.base.methods`).

    ``model`` is a handle or anything :func:`convlens.load` takes. For a classifier, ``target``
    is ``None`` (top-1), a class index or label, one per image, or a callable on the output;
    ``classes=["tabby", "tiger cat"]`` explains every image for each of several classes in one
    batched call (N x len(classes) maps, image-major, named ``"<image>:<class>"``). For a
    detector, ``target`` is one detection (``dets[1]``) or its index, and the result explains
    that box. ``options`` go to the method (``layer=``, ``steps=``, ``window=``...).
    """
    handle = as_handle(model)
    info = get_method(method, handle.task)
    if classes is None:
        return info.fn(handle, images, target, **options)  # type: ignore[no-any-return]
    if not isinstance(handle, Model):
        raise ValueError("a detector explains one box: give target=, not classes=")
    if target is not None:
        raise ValueError("give either target= or classes=, not both")
    return info.fn(handle, *_per_class(handle, images, classes), **options)  # type: ignore[no-any-return]


def _per_class(
    handle: Model, images: Any, classes: Sequence[int | str] | int | str
) -> tuple[Batch, Target]:
    """Every picture repeated once per class, and the matching per-picture targets."""
    if isinstance(classes, (str, int)):
        classes = [classes]
    indices = [handle.class_index(c) for c in classes]
    batch = handle.prepare(images)
    count = len(indices)
    expanded = Batch(
        [f"{name}:{handle.label(k)}" for name in batch.names for k in indices],
        batch.inputs.repeat_interleave(count, dim=0),
        [p for p in batch.pictures for _ in range(count)],
    )
    per_image = Target(torch.tensor(indices * len(batch), dtype=torch.long), description="classes")
    return expanded, per_image
