"""Is a segmenter right, and are its explanations? Intersection over union per class (pooled
over every pixel, the PASCAL VOC / Cityscapes way), the share of each region explanation that
falls on the explained part's true mask (:func:`region_energy`), and
:func:`evaluate_segmenter`, which ``convlens evaluate`` calls for a segmenter."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.core.segmenter import Segmenter
from convlens.techniques.attribution.segmentation import explain_region, region_methods

__all__ = [
    "SegmenterEvaluation",
    "confusion_matrix",
    "evaluate_segmenter",
    "iou_scores",
    "region_energy",
    "segmentation_scores",
]


def confusion_matrix(
    predicted: torch.Tensor, truth: torch.Tensor, num_classes: int, *, ignore: int | None = None
) -> torch.Tensor:
    """(K, K) int64 pixel counts: row = true class, column = predicted class, over class maps
    of any matching shape (pixels whose truth is ``ignore`` are left out)."""
    if predicted.shape != truth.shape:
        raise ValueError(
            f"expected class maps of one shape, got {tuple(predicted.shape)} predicted and "
            f"{tuple(truth.shape)} true"
        )
    p, t = predicted.reshape(-1).long().cpu(), truth.reshape(-1).long().cpu()
    if ignore is not None:
        keep = t != ignore
        p, t = p[keep], t[keep]
    for what, values in (("predicted", p), ("true", t)):
        if len(values) and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(f"{what} classes outside [0, {num_classes})")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes**2)
    return counts.view(num_classes, num_classes)


def iou_scores(confusion: torch.Tensor) -> torch.Tensor:
    """(K,) float64 intersection over union of each class from a confusion matrix, pooled over
    every pixel counted; NaN for a class absent from both the truth and the prediction."""
    c = confusion.double()
    inter = c.diagonal()
    union = c.sum(0) + c.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, math.nan))


def segmentation_scores(
    segmenter: Segmenter,
    pixels: torch.Tensor,
    truth: torch.Tensor,
    *,
    batch_size: int = 32,
    predicted: torch.Tensor | None = None,
) -> dict[str, Any]:
    """IoU per class, mean IoU (over classes present), mean IoU without the background class
    (``miou_foreground``) and pixel accuracy of ``segmenter`` on pictures (N, 3, H, W) (uint8,
    or floats in [0, 1]) with true class maps (N, H, W). ``predicted``: the class maps when
    already computed."""
    if predicted is None:
        predicted = segmenter.class_maps(pixels, batch_size=batch_size)
    count = len(segmenter.labels) if segmenter.labels else int(predicted.max()) + 1
    count = max(count, int(truth.max()) + 1)
    confusion = confusion_matrix(predicted, truth, count)
    iou = iou_scores(confusion)
    names = [segmenter.label(k) for k in range(count)]
    foreground = [k for k in range(count) if k != segmenter.background]
    return {
        "iou": {names[k]: float(iou[k]) for k in range(count)},
        "miou": float(np.nanmean(iou.numpy())),
        "miou_foreground": float(np.nanmean(iou[foreground].numpy())),
        "pixel_accuracy": float(confusion.diagonal().sum()) / max(1, int(confusion.sum())),
        "pixels": int(confusion.sum()),
    }


def region_energy(
    segmenter: Segmenter,
    pixels: torch.Tensor,
    truth: torch.Tensor,
    methods: Sequence[str] = ("gradcam", "layercam"),
    *,
    classes: Sequence[int] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    predicted: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Explanations checked against true class maps: for each picture (N, 3, H, W) and each
    class ``k`` of ``classes`` (default: all but the background) that the segmenter labels
    somewhere in it, explain ``k`` over its predicted region with each method and measure the
    share of positive attribution inside the true mask of ``k`` (``own``), inside the true masks
    of the other non-background classes (``other_parts``) and in the true background
    (``background``); ``area`` is the share of the picture the true mask of ``k`` covers (what a
    uniform map would score as ``own``).

    Returns ``{method: {"empty": n, class name: {"own", "other_parts", "background", "area":
    means, "own_values": per region, "own_std", "count", "absent_in_truth"}}}``. Left out:
    predicted regions of a class the picture's truth does not hold (a false region has no own
    part; counted in ``"absent_in_truth"``) and maps with no positive value (``"empty"``)."""
    if pixels.dim() != 4 or truth.shape != (pixels.shape[0], *pixels.shape[2:]):
        raise ValueError(
            f"expected pictures (N, 3, H, W) and true class maps (N, H, W), got "
            f"{tuple(pixels.shape)} and {tuple(truth.shape)}"
        )
    pixels = pixels if pixels.is_floating_point() else pixels.float() / 255
    if predicted is None:
        predicted = segmenter.class_maps(pixels)
    count = len(segmenter.labels) if segmenter.labels else int(predicted.max()) + 1
    chosen = list(classes) if classes is not None else [
        k for k in range(count) if k != segmenter.background
    ]  # fmt: skip
    options = dict(options or {})
    rows: dict[str, dict[int, list[tuple[float, float, float, float]]]] = {
        m: {k: [] for k in chosen} for m in methods
    }
    empty = {m: 0 for m in methods}
    absent = {k: 0 for k in chosen}
    for i in range(len(pixels)):
        for k in chosen:
            region, own = predicted[i] == k, truth[i] == k
            if not bool(region.any()):
                continue
            if not bool(own.any()):  # a region the truth does not have: no own part to hit
                absent[k] += 1
                continue
            background = (
                truth[i] == segmenter.background
                if segmenter.background is not None
                else torch.zeros_like(own)
            )
            others = ~own & ~background
            for m in methods:
                found = explain_region(
                    segmenter, pixels[i], k, m, region=region, **dict(options.get(m, {}))
                )
                share = found.energy_in_mask(own)
                if math.isnan(share):
                    empty[m] += 1
                    continue
                area = float(own.float().mean())
                shares = (share, found.energy_in_mask(others), found.energy_in_mask(background))
                rows[m][k].append((*shares, area))
        if progress is not None:
            progress(i + 1, len(pixels))
    return {m: {"empty": empty[m], **_summary(segmenter, rows[m], absent)} for m in methods}


def _summary(
    segmenter: Segmenter,
    rows: dict[int, list[tuple[float, float, float, float]]],
    absent: dict[int, int],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, found in rows.items():
        values = np.array(found, dtype=np.float64).reshape(-1, 4)
        mean = values.mean(0) if len(values) else np.full(4, math.nan)
        out[segmenter.label(k)] = {
            "own": float(mean[0]),
            "own_std": float(values[:, 0].std()) if len(values) else math.nan,
            "other_parts": float(mean[1]),
            "background": float(mean[2]),
            "area": float(mean[3]),
            "count": len(values),
            "absent_in_truth": absent[k],
            "own_values": [float(v) for v in values[:, 0]],
        }
    return out


# -- evaluating a segmenter on a data set ---------------------------------------------------------


@dataclass
class SegmenterEvaluation:
    """A segmenter scored on pictures with class maps: ``segmentation`` (IoU per class, mean
    IoU with and without the background, pixel accuracy) and, per explanation method and
    class, the share of its positive attribution on the explained part's own true mask
    (:func:`region_energy`), with a Student-t interval of the mean over regions."""

    segmentation: dict[str, Any]
    energy: dict[str, Any]
    pictures: int
    level: float = 0.95
    settings: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One row per method and class: own-mask energy (mean, interval), the other parts,
        the background, the part's area and the regions counted."""
        from convlens.workflows.metrics import Scores

        out = []
        for method, per_class in self.energy.items():
            for name, row in per_class.items():
                if name == "empty":
                    continue
                scores = Scores("energy_in_own_part", torch.tensor(row["own_values"]).double())
                low, high = scores.interval(self.level)
                out.append(
                    {
                        "method": method,
                        "class": name,
                        "own": _num(row["own"]),
                        "low": _num(low),
                        "high": _num(high),
                        "other_parts": _num(row["other_parts"]),
                        "background": _num(row["background"]),
                        "area": _num(row["area"]),
                        "regions": row["count"],
                        "absent_in_truth": row["absent_in_truth"],
                    }
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "segment",
            "pictures": self.pictures,
            "segmentation": self.segmentation,
            "explanations": self.rows(),
            "empty_maps": {m: row["empty"] for m, row in self.energy.items()},
            "interval": f"Student-t {self.level:.0%} interval of the mean over regions",
            "settings": self.settings,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **({"indent": 1} | kwargs))

    def save(self, path: str | os.PathLike[str]) -> Path:
        from convlens.core.render import write_atomic

        return write_atomic(path, self.to_json().encode("utf-8"))

    def __str__(self) -> str:
        s = self.segmentation
        lines = [
            f"{self.pictures} pictures: mean IoU {s['miou_foreground']:.3f} without the "
            f"background ({s['miou']:.3f} with it) · pixel accuracy {s['pixel_accuracy']:.3f}",
            "IoU per class: " + ", ".join(f"{k} {v:.3f}" for k, v in s["iou"].items()),
        ]
        for row in self.rows():
            half = "" if row["low"] is None else f" ± {(row['high'] - row['low']) / 2:.3f}"
            lines.append(
                f"{row['method']} of {row['class']} ({row['regions']} regions): energy in own "
                f"part {_fmt(row['own'])}{half} · other parts {_fmt(row['other_parts'])} · "
                f"background {_fmt(row['background'])} (the part covers {_fmt(row['area'])})"
            )
        return "\n".join(lines)


def _num(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def evaluate_segmenter(
    segmenter: Segmenter,
    data: Any,
    methods: Sequence[str] = (),
    *,
    split: str = "test",
    n: int | None = None,
    batch_size: int = 32,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    level: float = 0.95,
    progress: Callable[[int, int], None] | None = None,
) -> SegmenterEvaluation:
    """Score ``segmenter`` on pictures with class maps: a toons folder (its part masks as
    :data:`~convlens.data.toons.SEGMENT_CLASSES`; a folder of toons folders reads each, in name
    order) or ``(pixels (N, 3, H, W), class maps (N, H, W))``: :func:`segmentation_scores` over
    the first ``n`` pictures and, with ``methods`` (:func:`region_methods`), every class region
    explained and scored by :func:`region_energy`. ``options``: per-method options
    (``{"rise": {"masks": 500}}``)."""
    if isinstance(data, (str, os.PathLike)):
        from convlens.data import toons

        part = toons.read_segmentation(data, split)
        if part is None:
            raise ValueError(f"{data} has no {split!r} split")
        pixels, truth = part
    else:
        pixels, truth = data
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"expected n >= 1, got {n!r}")
        pixels, truth = pixels[:n], truth[:n]
    if len(pixels) == 0:
        raise ValueError("the data set is empty")
    unknown_methods = [name for name in methods if name not in region_methods()]
    if unknown_methods:
        from convlens.core.naming import unknown

        raise unknown("segmentation explanation method", unknown_methods[0], region_methods())
    pixels = pixels if pixels.is_floating_point() else pixels.float() / 255
    predicted = segmenter.class_maps(pixels, batch_size=batch_size)
    scores = segmentation_scores(segmenter, pixels, truth, predicted=predicted)
    energy = (
        region_energy(
            segmenter,
            pixels,
            truth,
            methods,
            options=options,
            predicted=predicted,
            progress=progress,
        )
        if methods
        else {}
    )
    settings = {
        "segmenter": segmenter.name,
        "layer": segmenter.layer,
        "methods": list(methods),
        "options": {k: dict(v) for k, v in (options or {}).items()},
        "split": split if isinstance(data, (str, os.PathLike)) else None,
    }
    return SegmenterEvaluation(scores, energy, len(pixels), level, settings)
