"""Is a detector right? COCO-style average precision and mAP, the every-object-found rate, and
:func:`evaluate_detector` (mAP plus each box explanation's energy in its ground-truth box over
a folder), which ``convlens.evaluate`` calls for a detector."""

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

from convlens.core.detector import Detections, Detector, _as_boxes, box_iou
from convlens.techniques.attribution.detection import box_methods, explain_box


def average_precision(scores: torch.Tensor, matched: torch.Tensor, positives: int) -> float:
    """COCO's 101-point interpolated AP from detections sorted any way: ``matched`` (bool)
    says whether each detection is a true positive; ``positives`` counts the ground truths."""
    if positives == 0:
        return math.nan
    order = torch.argsort(scores, descending=True, stable=True)
    tp = matched[order].double().cumsum(0)
    fp = (~matched[order]).double().cumsum(0)
    recall = tp / positives
    precision = tp / (tp + fp).clamp_min(1)
    # precision envelope, then sampled at recall 0, 0.01, ..., 1
    envelope = precision.flip(0).cummax(0).values.flip(0)
    points = torch.linspace(0, 1, 101, dtype=torch.float64)
    idx = torch.searchsorted(recall, points, right=False)
    sampled = (
        torch.where(idx < len(envelope), envelope[idx.clamp(max=max(len(envelope) - 1, 0))], 0.0)
        if len(envelope)
        else torch.zeros(101, dtype=torch.float64)
    )
    return float(sampled.mean())


def _match(
    det: Detections, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, label: int, iou: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Greedy matching (highest score first) of one class in one picture."""
    mine = torch.nonzero(det.labels == label).reshape(-1)
    truth = torch.nonzero(gt_labels == label).reshape(-1)
    scores = det.scores[mine]
    matched = torch.zeros(len(mine), dtype=torch.bool)
    if len(mine) and len(truth):
        overlaps = box_iou(det.boxes[mine], gt_boxes[truth])
        taken = torch.zeros(len(truth), dtype=torch.bool)
        for k in torch.argsort(scores, descending=True, stable=True).tolist():
            candidates = overlaps[k].clone()
            candidates[taken] = -1
            best = int(candidates.argmax())
            if float(candidates[best]) >= iou:
                matched[k] = True
                taken[best] = True
    return scores, matched, len(truth)


def mean_average_precision(
    detections: Sequence[Detections],
    truths: Sequence[tuple[Any, Any]],
    *,
    iou_thresholds: Sequence[float] = (0.5,),
) -> dict[str, Any]:
    """mAP over pictures: ``truths[i]`` = (boxes (G, 4), labels (G,)) of picture ``i``. Per class
    and IoU threshold, COCO's 101-point AP of the detections pooled over pictures; mAP is the
    mean over classes that have ground truth, then over thresholds. Returns ``{"map": ...,
    "per_iou": {0.5: ...}, "per_class": {label: AP at the first threshold}}``."""
    if len(detections) != len(truths):
        raise ValueError(f"expected one truth per picture, got {len(truths)} for {len(detections)}")
    gts = [(_as_boxes(b), torch.as_tensor(lab, dtype=torch.long).reshape(-1)) for b, lab in truths]
    classes = sorted(
        {int(c) for _, lab in gts for c in lab} | {int(c) for d in detections for c in d.labels}
    )
    per_iou: dict[float, float] = {}
    per_class: dict[int, float] = {}
    for t, iou in enumerate(iou_thresholds):
        aps = []
        for label in classes:
            parts = [
                _match(d, b, lab, label, iou) for d, (b, lab) in zip(detections, gts, strict=True)
            ]
            positives = sum(p[2] for p in parts)
            if positives == 0:
                continue
            ap = average_precision(
                torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), positives
            )
            aps.append(ap)
            if t == 0:
                per_class[label] = ap
        per_iou[float(iou)] = float(np.mean(aps)) if aps else math.nan
    return {
        "map": float(np.mean(list(per_iou.values()))),
        "per_iou": per_iou,
        "per_class": per_class,
    }


COCO_IOUS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def all_found(
    detections: Sequence[Detections], truths: Sequence[tuple[Any, Any]], *, iou: float = 0.5
) -> float:
    """Share of pictures in which every ground-truth box is matched by a detection of its
    class with IoU >= ``iou`` (a crowded frame counts only when no character is missed)."""
    if len(detections) != len(truths) or not truths:
        raise ValueError(f"expected one truth per picture, got {len(truths)} for {len(detections)}")
    complete = 0
    for det, (boxes, labels) in zip(detections, truths, strict=True):
        gt = _as_boxes(boxes)
        same = torch.as_tensor(labels).reshape(-1, 1) == det.labels.reshape(1, -1)
        complete += bool(((box_iou(gt, det.boxes) >= iou) & same).any(1).all())
    return complete / len(truths)


def detect_all(
    detector: Detector, pixels: torch.Tensor, *, batch_size: int = 64
) -> list[Detections]:
    """The detections of many pictures (N, 3, H, W), ``batch_size`` at a time."""
    found: list[Detections] = []
    for start in range(0, len(pixels), batch_size):
        found += detector(pixels[start : start + batch_size])
    return found


def detection_scores(
    detector: Detector,
    pixels: torch.Tensor,
    boxes: Sequence[Sequence[Any]],
    *,
    batch_size: int = 64,
    found: Sequence[Detections] | None = None,
) -> dict[str, Any]:
    """mAP@0.5, mAP@0.5:0.95 (COCO's ten IoUs), the share of pictures with every object found
    (IoU 0.5, right class) and AP@0.5 per class of ``detector`` on pictures (N, 3, H, W) in
    [0, 1] with per-picture ground truth ``(class, x0, y0, x1, y1)``. ``found``: the
    detections of those pictures when already computed (else the detector runs)."""
    if found is None:
        found = detect_all(detector, pixels, batch_size=batch_size)
    truths = [([b[1:] for b in frame], [b[0] for b in frame]) for frame in boxes]
    coco = mean_average_precision(found, truths, iou_thresholds=COCO_IOUS)
    names = detector.labels or []
    return {
        "map50": coco["per_iou"][0.5],
        "map50_95": coco["map"],
        "all_found": all_found(found, truths),
        "per_class_ap50": {
            names[k] if 0 <= k < len(names) else str(k): v for k, v in coco["per_class"].items()
        },
    }


# -- evaluating a detector on a data set ---------------------------------------------------------


@dataclass
class DetectorEvaluation:
    """A detector scored on pictures with boxes: ``detection`` (mAP@0.5, mAP@0.5:0.95,
    all-found rate, AP per class) and, per explanation method, ``energy_in_box`` and
    ``pointing`` (:class:`~convlens.metrics.Scores` over the explained boxes)."""

    detection: dict[str, Any]
    explanations: dict[str, dict[str, Any]]
    frames: int
    boxes_explained: int
    level: float = 0.95
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for method, scores in self.explanations.items():
            for metric, values in scores.items():
                rows.append({"method": method, **values.summary(self.level)})
                rows[-1]["metric"] = metric
        return {
            "task": "detect",
            "frames": self.frames,
            "detection": self.detection,
            "boxes_explained": self.boxes_explained,
            "explanations": rows,
            "interval": f"Student-t {self.level:.0%} interval of the mean over boxes",
            "settings": self.settings,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **({"indent": 1} | kwargs))

    def save(self, path: str | os.PathLike[str]) -> Path:
        from convlens.core.render import write_atomic

        return write_atomic(path, self.to_json().encode("utf-8"))

    def __str__(self) -> str:
        d = self.detection
        lines = [
            f"{self.frames} frames: mAP@0.5 {d['map50']:.3f} · mAP@0.5:0.95 {d['map50_95']:.3f}"
            f" · every object found in {d['all_found']:.1%} of frames",
            "AP@0.5 per class: "
            + ", ".join(f"{k} {v:.3f}" for k, v in d["per_class_ap50"].items()),
        ]
        for method, scores in self.explanations.items():
            cells = []
            for metric, values in scores.items():
                low, high = values.interval(self.level)
                half = "" if math.isnan(low) else f" ± {(high - low) / 2:.3f}"
                cells.append(f"{metric} {values.mean:.3f}{half}")
            lines.append(f"{method} ({self.boxes_explained} boxes): " + " · ".join(cells))
        return "\n".join(lines)


def evaluate_detector(
    detector: Detector,
    data: Any,
    methods: Sequence[str] = (),
    *,
    split: str = "test",
    n: int | None = None,
    batch_size: int = 64,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    level: float = 0.95,
    progress: Callable[[int, int], None] | None = None,
) -> DetectorEvaluation:
    """Score ``detector`` on pictures with boxes: a folder (``split`` of a toons-style
    folder, e.g. ``convlens toons make --variant crowd``) or ``(pixels (N, 3, H, W) in [0, 1],
    boxes)``. Detection: :func:`detection_scores` over the first ``n`` pictures. With
    ``methods`` (:func:`box_methods`), every detection that matches a ground-truth box (same
    class, IoU >= 0.5) is explained, and scored by the share of positive attribution inside
    that ground-truth box (``energy_in_box``) and whether the map's peak lies in it
    (``pointing``). ``options``: per-method options (``{"drise": {"masks": 500}}``)."""
    from convlens.workflows import metrics as m

    if isinstance(data, (str, os.PathLike)):
        from convlens.data import toons

        part = toons.read_boxes(data, split)
        if part is None:
            raise ValueError(f"{data} has no {split!r} split")
        pixels, boxes = part[0], part[1]
    else:
        pixels, boxes = data
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"expected n >= 1, got {n!r}")
        pixels, boxes = pixels[:n], list(boxes)[:n]
    if len(pixels) == 0:
        raise ValueError("the data set is empty")
    unknown_methods = [name for name in methods if name not in box_methods()]
    if unknown_methods:
        from convlens.core.naming import unknown

        raise unknown("detection explanation method", unknown_methods[0], box_methods())
    options = dict(options or {})
    found = detect_all(detector, pixels, batch_size=batch_size)
    scores = detection_scores(detector, pixels, boxes, found=found)
    energy: dict[str, list[float]] = {name: [] for name in methods}
    pointing: dict[str, list[float]] = {name: [] for name in methods}
    explained = 0
    total = len(pixels) * len(methods)
    for i, (frame, dets) in enumerate(zip(boxes, found, strict=True)):
        truth = _as_boxes([b[1:] for b in frame])
        labels = torch.as_tensor([int(b[0]) for b in frame], dtype=torch.long)
        for k in range(len(dets)):
            det = dets[k]
            if len(truth) == 0:
                break
            overlap = box_iou(torch.tensor([det.box]), truth)[0] * (labels == det.label)
            best = int(overlap.argmax())
            if float(overlap[best]) < 0.5:
                continue
            explained += 1
            x0, y0, x1, y1 = (float(v) for v in truth[best])
            for name in methods:
                result = explain_box(detector, pixels[i], det, name, **dict(options.get(name, {})))
                energy[name].append(result.energy_in_box((x0, y0, x1, y1)))
                px, py = result.peak()
                pointing[name].append(float(x0 <= px < x1 and y0 <= py < y1))
        if progress is not None:
            progress((i + 1) * len(methods), total)
    explanations = {
        name: {
            "energy_in_box": m.Scores(
                "energy_in_box", torch.tensor(energy[name], dtype=torch.float64)
            ),
            "pointing": m.Scores("pointing", torch.tensor(pointing[name], dtype=torch.float64)),
        }
        for name in methods
    }
    return DetectorEvaluation(
        scores,
        explanations,
        len(pixels),
        explained,
        level,
        {
            "detector": detector.name,
            "score_threshold": detector.score_threshold,
            "iou_threshold": detector.iou_threshold,
            "max_detections": detector.max_detections,
            "methods": list(methods),
            "options": {k: dict(v) for k, v in options.items()},
            "split": split if isinstance(data, (str, os.PathLike)) else None,
        },
    )
