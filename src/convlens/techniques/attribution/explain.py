"""``convlens.explain``: the one entry point for every explanation, whatever the task.

The handle's task (``classify``, ``detect`` or ``segment``, :mod:`convlens.core.tasks`) picks
the method table; the method's function does the rest. A classifier's methods explain a class
for each picture of a batch and return an
:class:`~convlens.techniques.attribution.base.Attribution`; a detector's explain one box and
return a :class:`~convlens.techniques.attribution.detection.BoxExplanation`; a segmenter's
explain a class over a region and return a
:class:`~convlens.techniques.attribution.segmentation.RegionExplanation`; all are
:class:`~convlens.techniques.attribution.base.Explanation` s.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from convlens.core.model import Batch, Model, count_pictures
from convlens.core.tasks import as_handle
from convlens.techniques.attribution.base import (
    Attribution,
    Explanation,
    MethodInfo,
    Target,
    TargetSpec,
    batch_size_for,
    get_method,
)
from convlens.techniques.attribution.gradients import BACKWARD_FACTOR


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
    that box; for a segmenter, ``target`` is a class (index or name) and ``region=`` a boolean
    mask (H, W) (default: every pixel labelled that class). ``options`` go to the method
    (``layer=``, ``steps=``, ``window=``...).

    Many pictures are explained in chunks that fit the memory budget (a CPU's cache, or half
    a GPU's free memory), read from disk chunk by chunk: 128 pictures at once cost a CPU about
    three times as much per picture as chunks of 8. Methods that size their own batches (they
    take ``batch_size``: Integrated Gradients, SmoothGrad, occlusion, RISE, Score-CAM) get
    every picture at once, so their random draws do not depend on the chunking.
    """
    handle = as_handle(model)
    info = get_method(method, handle.task)
    if not isinstance(handle, Model):
        if classes is not None:
            raise ValueError(
                "a detector explains one box and a segmenter one region: give target=, not classes="
            )
        return info.fn(handle, images, target, **options)  # type: ignore[no-any-return]
    if classes is not None:
        if target is not None:
            raise ValueError("give either target= or classes=, not both")
        images, target = _per_class(handle, images, classes)
    size = picture_chunk(handle, info, options)
    total = count_pictures(images)
    if size is None or total <= size:
        return info.fn(handle, images, target, **options)  # type: ignore[no-any-return]
    targets = _per_picture(target, total)
    parts: list[Attribution] = []
    done = 0
    for batch in handle.batches(images, size):
        chosen = targets(done, len(batch))
        parts.append(info.fn(handle, batch, chosen, **options))
        done += len(batch)
    return Attribution.concat(parts)


def picture_chunk(handle: Model, info: MethodInfo, options: dict[str, Any]) -> int | None:
    """Pictures per call of a method, or ``None`` for every picture at once (methods that
    size their own batches of copies)."""
    params = inspect.signature(info.fn).parameters
    if "batch_size" in params or info.open_options:
        return None
    return batch_size_for(handle, options.get("memory_budget_mb"), factor=BACKWARD_FACTOR)


def _per_picture(target: TargetSpec, total: int) -> Callable[[int, int], TargetSpec]:
    """The targets of pictures ``start .. start + count`` of ``total``."""
    if isinstance(target, Target):
        if target.indices is not None and len(target.indices) != total:
            raise ValueError(f"expected one target per image ({total}), got {len(target.indices)}")
        return lambda start, count: target.select(slice(start, start + count))
    if target is None or (callable(target) and not isinstance(target, torch.Tensor)):
        return lambda start, count: target
    if isinstance(target, (int, np.integer, str)):
        return lambda start, count: target
    items = target.tolist() if isinstance(target, torch.Tensor) else list(target)
    if len(items) != total:
        raise ValueError(f"expected one target per image ({total}), got {len(items)}")
    return lambda start, count: items[start : start + count]


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
