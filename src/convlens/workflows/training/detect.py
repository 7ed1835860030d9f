"""The detector head of the training loop (:mod:`.loop`), for the toon detector
(:class:`~convlens.core.architectures.centernet.CenterNet`): heat-map targets and focal loss,
box-aware augmentation (horizontal flips; shifts and zooms that move the boxes with the picture),
mAP@0.5 on the validation pictures; :func:`train_detector` is its front door (the loop gives it
the classifier's habits: seeds, progress events, TensorBoard, filter snapshots, best-validation
weights, early stopping) and :func:`train_folder` is ``convlens train DATA --task detect``."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from convlens.core.architectures.centernet import STRIDE, CenterNet, save
from convlens.core.detector import Detector
from convlens.data import toons
from convlens.workflows.detection_eval import detection_scores
from convlens.workflows.training.loop import Head, Plan, Seeds, device_of, fit

# -- targets and loss ----------------------------------------------------------------------------


def _radius(w: float, h: float) -> float:
    """A Gaussian radius (in cells) that grows with the box, as CenterNet's (simplified)."""
    return max(0.5, 0.15 * math.sqrt(w * h) / STRIDE)


def targets(
    boxes: Sequence[Sequence[tuple[int, float, float, float, float]]],
    num_classes: int,
    size: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """Training targets on the stride-8 grid from per-picture (class, x0, y0, x1, y1) boxes."""
    h, w = size[0] // STRIDE, size[1] // STRIDE
    n = len(boxes)
    heat = torch.zeros(n, num_classes, h, w)
    wh = torch.zeros(n, 2, h, w)
    off = torch.zeros(n, 2, h, w)
    mask = torch.zeros(n, h, w)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    for i, picture in enumerate(boxes):
        for cls, x0, y0, x1, y1 in picture:
            bw, bh = x1 - x0, y1 - y0
            if bw <= 1 or bh <= 1:
                continue
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
            sigma = _radius(bw, bh)
            g = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
            heat[i, int(cls)] = torch.maximum(heat[i, int(cls)], g)
            wh[i, :, iy, ix] = torch.tensor([bw / 64.0, bh / 64.0])
            off[i, :, iy, ix] = torch.tensor([cx - ix, cy - iy])
            mask[i, iy, ix] = 1
    return {"heatmap": heat, "size": wh, "offset": off, "mask": mask}


def loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the heat maps plus L1 on size and offset at
    the centres (size weighted 1, offset 1), each normalised by the number of objects."""
    pred = torch.sigmoid(out["heatmap"]).clamp(1e-4, 1 - 1e-4)
    gt = target["heatmap"]
    pos = gt.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - gt) ** 4 * neg
    count = pos.sum().clamp_min(1)
    focal = -(pos_loss.sum() + neg_loss.sum()) / count
    m = target["mask"].unsqueeze(1)
    size_l1 = (F.l1_loss(out["size"] * m, target["size"] * m, reduction="sum")) / count
    off_l1 = (F.l1_loss(out["offset"] * m, target["offset"] * m, reduction="sum")) / count
    return focal + size_l1 + off_l1


# -- augmentation -------------------------------------------------------------------------------

Boxes = list[list[tuple[int, float, float, float, float]]]


@dataclass(frozen=True)
class BoxAugmentation:
    """Box-aware augmentation: a horizontal ``flip`` (half the pictures), a zoom by a factor
    in [1 - ``zoom``, 1 + ``zoom``] and a shift of up to ``shift`` of the picture's size each
    way, applied to the picture and its boxes together."""

    flip: bool = True
    zoom: float = 0.2
    shift: float = 0.15

    def __post_init__(self) -> None:
        if not 0 <= self.zoom < 1 or not 0 <= self.shift < 1:
            raise ValueError(
                f"expected zoom and shift in [0, 1), got zoom={self.zoom}, shift={self.shift}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"flip": self.flip, "zoom": self.zoom, "shift": self.shift}


def augment_batch(
    pixels: torch.Tensor,
    boxes: Boxes,
    gen: torch.Generator,
    settings: BoxAugmentation | None = None,
) -> tuple[torch.Tensor, Boxes]:
    """Box-aware augmentation of a batch (N, 3, H, W) (see :class:`BoxAugmentation`; boxes
    are clipped to the picture and ones left under 4 pixels dropped). The same draws are
    made whatever the settings, so a seed gives the same stream."""
    settings = settings or BoxAugmentation()
    n, _, h, w = pixels.shape
    flip = (torch.rand(n, generator=gen) < 0.5) & settings.flip
    zoom = (1 - settings.zoom) + (2 * settings.zoom) * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * (2 * settings.shift)  # of the size
    out = pixels.clone()
    out[flip] = out[flip].flip(-1)
    # output pixel u maps to input (u - c - shift) / zoom + c in normalised coordinates
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / zoom
    theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = -shift * 2 / zoom.unsqueeze(1)
    grid = F.affine_grid(theta, list(out.shape), align_corners=False).to(out.device)
    out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    moved = []
    for i, picture in enumerate(boxes):
        kept = []
        for cls, x0, y0, x1, y1 in picture:
            if flip[i]:
                x0, x1 = w - x1, w - x0
            z, sx, sy = float(zoom[i]), float(shift[i, 0]) * w, float(shift[i, 1]) * h
            nx0, nx1 = (x0 - w / 2) * z + w / 2 + sx, (x1 - w / 2) * z + w / 2 + sx
            ny0, ny1 = (y0 - h / 2) * z + h / 2 + sy, (y1 - h / 2) * z + h / 2 + sy
            nx0, nx1 = max(0.0, nx0), min(float(w), nx1)
            ny0, ny1 = max(0.0, ny0), min(float(h), ny1)
            if nx1 - nx0 >= 4 and ny1 - ny0 >= 4:
                kept.append((cls, nx0, ny0, nx1, ny1))
        moved.append(kept)
    return out, moved


# -- the head ------------------------------------------------------------------------------------

TOP_K = 20  # detections a CenterNet decodes per picture (before thresholds and NMS)
SCORE_THRESHOLD = 0.3  # the detections mAP is measured on, in validation and test


def seeds(seed: int) -> Seeds:
    """The detector's streams: weights ``seed``; one generator seeded ``seed`` for the order
    and the augmentation; a held-out validation share ``seed + 17``."""
    return Seeds(seed, weights=seed, order=seed, augment=seed, split=seed + 17)


def _check_boxes(pixels: torch.Tensor, boxes: Boxes, classes: Sequence[str], what: str) -> None:
    if pixels.dim() != 4 or pixels.shape[1] != 3 or len(pixels) != len(boxes):
        raise ValueError(
            f"expected {what} pictures (N, 3, H, W) and one box list each, got "
            f"{tuple(pixels.shape)} and {len(boxes)} lists"
        )
    if pixels.shape[2] % STRIDE or pixels.shape[3] % STRIDE:
        raise ValueError(
            f"expected picture sides divisible by {STRIDE}, got {tuple(pixels.shape[2:])}"
        )
    for frame in boxes:
        for cls, *_ in frame:
            if not 0 <= int(cls) < len(classes):
                raise ValueError(f"a {what} box has class {cls}, expected 0..{len(classes) - 1}")


class DetectorHead(Head):
    """Boxes from pictures (N, 3, H, W) in [0, 1] with per-picture ``(class, x0, y0, x1, y1)``
    boxes: CenterNet targets and focal loss (:func:`targets`, :func:`loss`), box-aware
    augmentation (``None``: off), Adam with a one-cycle schedule, the weights of the best
    validation mAP@0.5 kept; the test split's mAP, all-found rate and AP per class at the end."""

    task = "detect"
    loss_key = "loss"  # the detector's history has always called its training loss so
    monitor = "val_map50"
    higher_is_better = True
    optimizer = "adam, one-cycle"

    def __init__(
        self,
        pixels: torch.Tensor,
        boxes: Boxes,
        classes: Sequence[str],
        *,
        val: tuple[torch.Tensor, Boxes] | None,
        test: tuple[torch.Tensor, Boxes] | None,
        width: int,
        augmentation: BoxAugmentation | None,
    ) -> None:
        self.pixels, self.boxes, self.classes = pixels, boxes, list(classes)
        self.val, self.test = val, test
        self.width = width
        self.augmentation = augmentation
        self.size = (pixels.shape[2], pixels.shape[3])
        self.train_size = len(pixels)
        self.network = {"architecture": {"name": "centernet", "width": width, "top_k": TOP_K}}
        self.sampling = {"augment": augmentation.to_dict() if augmentation else None}
        self.data = {
            "classes": self.classes,
            "train": len(pixels),
            "val": len(val[0]) if val is not None else 0,
            "test": len(test[0]) if test is not None else 0,
            "size": list(self.size),
        }

    def build(self, device: torch.device) -> nn.Module:
        return CenterNet(len(self.classes), width=self.width, top_k=TOP_K).to(device)

    def schedule(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        lr = optimizer.defaults["lr"]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)

    def train_step(
        self, module: nn.Module, index: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x, b = self.pixels[index], [self.boxes[int(i)] for i in index]
        if self.augmentation is not None:
            x, b = augment_batch(x, b, generator, self.augmentation)
        device = device_of(module)
        goal = {k: v.to(device) for k, v in targets(b, len(self.classes), self.size).items()}
        return loss(cast(CenterNet, module).heads(x.to(device)), goal), {}

    def _scores(self, module: nn.Module, part: tuple[torch.Tensor, Boxes]) -> dict[str, Any]:
        return detection_scores(
            Detector(module, self.classes, score_threshold=SCORE_THRESHOLD), *part
        )

    def validate(self, module: nn.Module) -> dict[str, float] | None:
        if self.val is None:
            return None
        scores = self._scores(module, self.val)
        return {"val_map50": scores["map50"], "val_map50_95": scores["map50_95"]}

    def describe(self, row: dict[str, Any]) -> str:
        if "val_map50" not in row:
            return ""
        return f" · val mAP@0.5 {row['val_map50']:.3f} · mAP@0.5:0.95 {row['val_map50_95']:.3f}"

    def final(self, module: nn.Module) -> dict[str, Any]:
        if self.test is None:
            return {}
        return {f"test_{k}": v for k, v in self._scores(module, self.test).items()}

    def handle(self, module: nn.Module) -> nn.Module:
        return module.cpu()

    def save(self, module: nn.Module, path: Path, record: dict[str, Any]) -> Path:
        return save(cast(CenterNet, module.cpu()), self.classes, path)


def train_detector(
    pixels: torch.Tensor,
    boxes: Boxes,
    classes: Sequence[str],
    *,
    val: tuple[torch.Tensor, Boxes] | None = None,
    test: tuple[torch.Tensor, Boxes] | None = None,
    epochs: int = 12,
    batch_size: int = 32,
    lr: float = 2e-3,
    width: int = 48,
    seed: int = 0,
    augment: bool | BoxAugmentation = True,
    early_stopping: int | None = None,
    filters: str | Sequence[str] | None = None,
    snapshot_every: int = 0,
    tensorboard: bool = False,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: Callable[[Any], None] | None = None,
    command: Sequence[str] | None = None,
) -> tuple[CenterNet, dict[str, Any]]:
    """Fit a :class:`CenterNet` on pictures (N, 3, H, W) in [0, 1] with per-picture boxes
    ``(class, x0, y0, x1, y1)`` in the one training loop (:mod:`.loop`), with the classifier's
    habits (:func:`~.classify.train`): Adam with a one-cycle schedule, seeded weights, order
    and augmentation (box-aware, :class:`BoxAugmentation`), after every epoch the validation
    mAP@0.5 and mAP@0.5:0.95, the weights of the best validation mAP@0.5 kept, early stopping
    after ``early_stopping`` epochs without a better one, :class:`~.loop.TrainEvent`
    progress, TensorBoard scalars and filter snapshots (``filters``, ``snapshot_every``).

    With ``out``: ``out/model.pt`` (a ``convlens-centernet`` checkpoint that
    ``convlens.load`` reads with ``weights_only=True``), ``out/metrics.json`` (history,
    settings, the command, and with ``test`` the final test mAP and all-found rate),
    ``out/tensorboard/`` and ``out/filters/<layer>.gif``. Returns the network (eval mode,
    best weights) and the metrics.
    """
    started = time.perf_counter()
    _check_boxes(pixels, boxes, classes, "training")
    for part, what in ((val, "validation"), (test, "test")):
        if part is not None:
            _check_boxes(part[0], part[1], classes, what)
    plan = Plan(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seeds=seeds(seed),
        early_stopping=early_stopping,
        filters=filters,
        snapshot_every=snapshot_every,
        tensorboard=tensorboard,
        device=torch.device(device),
        threads=threads,
    )
    if width < 2:
        raise ValueError(f"expected width >= 2, got {width}")
    augmentation = augment if isinstance(augment, BoxAugmentation) else BoxAugmentation()
    head = DetectorHead(
        pixels,
        boxes,
        classes,
        val=val,
        test=test,
        width=width,
        augmentation=augmentation if augment is not False else None,
    )
    result = fit(head, plan, out, progress=progress, command=command, started=started)
    return result.model, result.metrics


def train_folder(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    **options: Any,
) -> tuple[CenterNet, dict[str, Any]]:
    """:func:`train_detector` on a folder with boxes (``convlens train DATA --task detect``):
    its ``train`` split, its ``val`` split (or a seeded ``val_fraction`` of train when it has
    none) and its ``test`` split for the final scores."""
    train = toons.read_boxes(data, "train")
    if train is None:
        raise ValueError(f"{data} has no train split; expected train/ (and val/, test/) frames")
    pixels, boxes, classes = train
    if not any(boxes):
        raise ValueError(f"{data}: the training pictures have no boxes; is it a crowd folder?")
    val_part = toons.read_boxes(data, "val")
    if val_part is None:
        if not 0 < val_fraction < 1:
            raise ValueError(f"expected val_fraction in (0, 1), got {val_fraction}")
        split = torch.Generator().manual_seed(seeds(seed).split)
        order = torch.randperm(len(pixels), generator=split)
        cut = max(1, round(len(pixels) * val_fraction))
        held, kept = order[:cut], order[cut:]
        val = (pixels[held], [boxes[int(i)] for i in held])
        pixels, boxes = pixels[kept], [boxes[int(i)] for i in kept]
    else:
        val = val_part[:2]
    test_part = toons.read_boxes(data, "test")
    test = test_part[:2] if test_part is not None else None
    return train_detector(pixels, boxes, classes, val=val, test=test, seed=seed, out=out, **options)
