"""The segmentation head of the training loop (:mod:`.loop`): pictures with per-pixel class
maps, augmentation that moves the maps with the pictures, random crops, pixel-wise
cross-entropy, Adam with weight decay and a one-cycle schedule, the weights of the best
validation mean IoU kept. :func:`train_segmenter` is its front door and :func:`train_folder`
is ``convlens train DATA --task segment`` (the toons' part masks as classes: background, hair,
face, body; :mod:`convlens.data.toons.segmentation`).

The recipe is the one the shipped toon segmenter was first trained with (a stand-alone trainer
on the ``seg`` branch): the same seed gives the same weights bit for bit on the CPU with the
same number of threads (``tests/test_segmentation.py`` checks the streams and the loss).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlens.core import architectures
from convlens.core.model import Preprocessing
from convlens.core.segmenter import Segmenter, save
from convlens.workflows.segmentation_eval import segmentation_scores
from convlens.workflows.training.loop import Head, Plan, Seeds, TrainResult, device_of, fit

__all__ = [
    "MaskAugmentation",
    "SegmenterHead",
    "augment_with_masks",
    "random_crops",
    "seeds",
    "train_folder",
    "train_segmenter",
]

DEFAULT_LAYERS = {"toon_segnet": "dec2"}
"""The layer region CAMs read by default, per architecture: for ``toon_segnet`` the stride-4
decoder stage, the coarsest whose Seg-Grad-CAM maps sit on the explained part (measured:
``data/models/toon-segmenter.json``, ``energy_by_layer``)."""


def seeds(seed: int) -> Seeds:
    """The segmenter's streams: weights ``seed``; one generator seeded ``seed + 1`` for the
    order, the augmentation and the crops, its draws interleaved; a held-out validation share
    ``seed + 3``."""
    return Seeds(seed, weights=seed, order=seed + 1, augment=seed + 1, split=seed + 3)


# -- augmentation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskAugmentation:
    """Geometric augmentation applied to a picture and its class map together: a horizontal
    ``flip`` (half the pictures), a zoom by a factor in [1 - ``zoom``, 1 + ``zoom``], a turn by
    up to ``rotation`` degrees and a shift of up to ``shift`` of the picture's size each way.
    Pictures are resampled bilinearly, class maps by nearest neighbour, both with the border
    repeated (the class of an edge pixel goes with its colour)."""

    flip: bool = True
    zoom: float = 0.2
    shift: float = 0.15
    rotation: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.zoom < 1 or not 0 <= self.shift < 1 or not 0 <= self.rotation <= 180:
            raise ValueError(
                f"expected zoom and shift in [0, 1) and rotation in [0, 180], got "
                f"zoom={self.zoom}, shift={self.shift}, rotation={self.rotation}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def augment_with_masks(
    pixels: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    settings: MaskAugmentation | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment pictures (N, C, H, W) (float) and class maps (N, H, W) (long) with the same
    random flip, zoom, turn and shift per picture (see :class:`MaskAugmentation`). The same
    draws are made whatever the settings, so a seed gives the same stream."""
    settings = settings or MaskAugmentation()
    if pixels.dim() != 4 or masks.shape != (pixels.shape[0], *pixels.shape[2:]):
        raise ValueError(
            f"expected pictures (N, C, H, W) and class maps (N, H, W), got "
            f"{tuple(pixels.shape)} and {tuple(masks.shape)}"
        )
    n, channels, h, w = pixels.shape
    flip = (torch.rand(n, generator=generator) < 0.5) & settings.flip
    zoom = 1 + (torch.rand(n, generator=generator) * 2 - 1) * settings.zoom
    angle = torch.deg2rad((torch.rand(n, generator=generator) * 2 - 1) * settings.rotation)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * settings.shift
    # output pixel u shows input R^-1 (u - 2 shift) / zoom in affine_grid's units
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    theta[:, :, 2] = -(theta[:, :, :2] @ (2 * shift).unsqueeze(-1)).squeeze(-1)
    grid = F.affine_grid(theta, [n, channels, h, w], align_corners=False).to(pixels.device)
    out = F.grid_sample(
        pixels.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    moved = F.grid_sample(
        masks.unsqueeze(1).float(), grid, mode="nearest", padding_mode="border", align_corners=False
    )
    moved_masks = moved.squeeze(1).round().long()
    flip = flip.to(pixels.device)
    out = torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)
    moved_masks = torch.where(flip.view(n, 1, 1), moved_masks.flip(-1), moved_masks)
    return out, moved_masks


def random_crops(
    pixels: torch.Tensor, masks: torch.Tensor, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``size`` x ``size`` window of each picture (N, C, H, W) and the same window of
    its class map (N, H, W), the corners drawn from ``generator``."""
    n, _, h, w = pixels.shape
    top = torch.randint(0, h - size + 1, (n,), generator=generator).tolist()
    left = torch.randint(0, w - size + 1, (n,), generator=generator).tolist()
    return (
        torch.stack(
            [p[:, t : t + size, s : s + size] for p, t, s in zip(pixels, top, left, strict=True)]
        ),
        torch.stack(
            [m[t : t + size, s : s + size] for m, t, s in zip(masks, top, left, strict=True)]
        ),
    )


# -- data ---------------------------------------------------------------------------------------

Part = tuple[torch.Tensor, torch.Tensor]


def pixel_statistics(pixels: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 pictures (N, 3, H, W) in float64,
    rounded to 4 decimals."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(pixels), 256):
        x = pixels[start : start + 256].double() / 255
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    count = len(pixels) * pixels.shape[2] * pixels.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _checked(pixels: torch.Tensor, masks: torch.Tensor, classes: int, what: str) -> Part:
    """The pictures as uint8 and their class maps, checked."""
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected {what} pictures (N, 3, H, W), got {tuple(pixels.shape)}")
    if pixels.dtype != torch.uint8:
        pixels = (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if masks.shape != (pixels.shape[0], *pixels.shape[2:]):
        raise ValueError(
            f"expected one (H, W) class map per {what} picture, got {tuple(masks.shape)} for "
            f"pictures {tuple(pixels.shape)}"
        )
    if masks.numel() and (int(masks.min()) < 0 or int(masks.max()) >= classes):
        raise ValueError(f"{what} class maps hold classes outside [0, {classes})")
    return pixels, masks.long()


# -- the head ----------------------------------------------------------------------------------


class SegmenterHead(Head):
    """Class maps from pictures (N, 3, H, W) with per-pixel classes (N, H, W): pixel-wise
    cross-entropy (plus ``aux_weight`` times that of ``"aux"`` when the network has one),
    :class:`MaskAugmentation` (``None``: off), optional random crops (the network is fully
    convolutional; validation sees whole pictures), inputs normalised by the training
    pictures' per-channel statistics, Adam with a one-cycle schedule, the weights of the best
    validation mean IoU over the non-background classes (``val_miou``) kept."""

    task = "segment"
    loss_key = "loss"
    monitor = "val_miou"
    higher_is_better = True
    optimizer = "adam, one-cycle"

    def __init__(
        self,
        train: Part,
        classes: Sequence[str],
        *,
        val: Part | None,
        test: Part | None,
        architecture: str,
        options: dict[str, Any],
        augmentation: MaskAugmentation | None,
        crop: int | None,
        aux_weight: float,
        layer: str | None,
        background: int | None,
    ) -> None:
        self.classes = list(classes)
        self.pixels, self.masks = _checked(*train, len(self.classes), "training")
        self.val = _checked(*val, len(self.classes), "validation") if val is not None else None
        self.test = _checked(*test, len(self.classes), "test") if test is not None else None
        side = min(self.pixels.shape[2:])
        if crop is not None and (
            isinstance(crop, bool) or not isinstance(crop, int) or not 8 <= crop <= side
        ):
            raise ValueError(f"expected crop an int in [8, {side}], got {crop!r}")
        if not aux_weight >= 0:
            raise ValueError(f"expected aux_weight >= 0, got {aux_weight}")
        self.augmentation, self.crop, self.aux_weight = augmentation, crop, aux_weight
        self.architecture = architecture
        self.options = architectures.config(architecture, num_classes=len(self.classes), **options)
        self.record = {"name": architecture, **self.options}
        mean, std = pixel_statistics(self.pixels)
        self.preprocess = Preprocessing(crop=None, resize=None, mean=mean, std=std)
        self.layer = layer if layer is not None else DEFAULT_LAYERS.get(architecture)
        self.background = background
        self.train_size = len(self.pixels)
        self.network = {"architecture": self.record, "preprocess": self.preprocess.to_dict()}
        self.sampling = {
            "augment": augmentation.to_dict() if augmentation is not None else None,
            "crop": crop,
            "aux_weight": aux_weight,
            "loss": "pixel-wise cross-entropy",
        }
        self.data = {
            "classes": self.classes,
            "train": len(self.pixels),
            "val": len(self.val[0]) if self.val is not None else 0,
            "test": len(self.test[0]) if self.test is not None else 0,
            "size": list(self.pixels.shape[2:]),
        }

    def build(self, device: torch.device) -> nn.Module:
        return architectures.build(self.architecture, **self.options).to(device)

    def schedule(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        lr = optimizer.defaults["lr"]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)

    def train_step(
        self, module: nn.Module, index: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        device = device_of(module)
        x = self.pixels[index].to(device).float() / 255
        y = self.masks[index].to(device)
        if self.augmentation is not None:
            x, y = augment_with_masks(x, y, generator, self.augmentation)
        if self.crop is not None:
            x, y = random_crops(x, y, self.crop, generator)
        output = module(self.preprocess.normalize(x))
        logits = output["out"] if isinstance(output, dict) else output
        loss = F.cross_entropy(logits, y)
        if isinstance(output, dict) and "aux" in output and self.aux_weight > 0:
            loss = loss + self.aux_weight * F.cross_entropy(output["aux"], y)
        with torch.no_grad():
            hits = (logits.argmax(1) == y).float().mean((1, 2)).sum()
        return loss, {"train_pixel_accuracy": float(hits)}

    def handle(self, module: nn.Module) -> Segmenter:
        return Segmenter(
            module.cpu().eval(), self.classes, name="segmenter", preprocess=self.preprocess,
            layer=self.layer, background=self.background,
        )  # fmt: skip

    def _scores(self, module: nn.Module, part: Part) -> dict[str, Any]:
        segmenter = Segmenter(
            module, self.classes, preprocess=self.preprocess, background=self.background
        )
        return segmentation_scores(segmenter, part[0].float() / 255, part[1])

    def validate(self, module: nn.Module) -> dict[str, float] | None:
        if self.val is None:
            return None
        scores = self._scores(module, self.val)
        per_class = {f"val_iou_{name}": value for name, value in scores["iou"].items()}
        return {"val_miou": scores["miou_foreground"], **per_class}

    def describe(self, row: dict[str, Any]) -> str:
        return f" · val mIoU {row['val_miou']:.3f}" if "val_miou" in row else ""

    def final(self, module: nn.Module) -> dict[str, Any]:
        if self.test is None:
            return {}
        scores = self._scores(module, self.test)
        return {
            "test_miou": scores["miou_foreground"],
            "test_miou_with_background": scores["miou"],
            "test_iou": scores["iou"],
            "test_pixel_accuracy": scores["pixel_accuracy"],
        }

    def save(self, module: nn.Module, path: Path, record: dict[str, Any]) -> Path:
        return save(
            module.cpu(), path, architecture=self.record, classes=self.classes,
            preprocess=self.preprocess, layer=self.layer, background=self.background,
        )  # fmt: skip


def train_segmenter(
    pixels: torch.Tensor,
    masks: torch.Tensor,
    classes: Sequence[str],
    *,
    val: Part | None = None,
    test: Part | None = None,
    architecture: str = "toon_segnet",
    options: dict[str, Any] | None = None,
    epochs: int = 12,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    aux_weight: float = 0.4,
    seed: int = 0,
    augment: bool | MaskAugmentation = True,
    crop: int | None = 96,
    early_stopping: int | None = None,
    layer: str | None = None,
    background: int | None = 0,
    filters: str | Sequence[str] | None = None,
    snapshot_every: int = 0,
    tensorboard: bool = False,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: Callable[[Any], None] | None = None,
    command: Sequence[str] | None = None,
) -> TrainResult:
    """Fit ``architectures.build(architecture, num_classes=len(classes), **options)``, a network
    in torchvision's segmentation convention, on pictures (N, 3, H, W) (uint8, or floats in
    [0, 1]) and class maps (N, H, W) (indices into ``classes``) in the one training loop, with
    :class:`SegmenterHead` (see it for the loss, augmentation, crops and what is kept) and the
    loop's habits (seeded weights, order and augmentation: :func:`seeds`; progress events,
    TensorBoard scalars, filter snapshots, early stopping after ``early_stopping`` epochs
    without a better validation mean IoU).

    With ``out``: ``out/model.pt`` (a ``convlens-segmenter`` checkpoint that ``convlens.load``
    reads with ``weights_only=True``; ``layer``: its default CAM layer, see
    :data:`DEFAULT_LAYERS`) and ``out/metrics.json``. Returns the
    :class:`~.loop.TrainResult` whose ``model`` is the
    :class:`~convlens.core.segmenter.Segmenter` (best weights, eval mode, CPU).
    """
    started = time.perf_counter()
    plan = Plan(
        epochs=epochs, batch_size=batch_size, lr=lr, seeds=seeds(seed),
        early_stopping=early_stopping, filters=filters, snapshot_every=snapshot_every,
        tensorboard=tensorboard, device=torch.device(device), threads=threads,
        weight_decay=weight_decay,
    )  # fmt: skip
    augmentation = augment if isinstance(augment, MaskAugmentation) else MaskAugmentation()
    head = SegmenterHead(
        (pixels, masks), classes, val=val, test=test, architecture=architecture,
        options=dict(options or {}), augmentation=augmentation if augment is not False else None,
        crop=crop, aux_weight=aux_weight, layer=layer, background=background,
    )  # fmt: skip
    return fit(head, plan, out, progress=progress, command=command, started=started)


def train_folder(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    **options: Any,
) -> TrainResult:
    """:func:`train_segmenter` on a toons folder's part masks (``convlens train DATA --task
    segment``): DATA is a toons folder, or a folder of toons folders read in name order (one
    per variant); the ``train`` split, the ``val`` split (or a seeded ``val_fraction`` of train
    when there is none) and the ``test`` split for the final scores. Classes:
    :data:`~convlens.data.toons.SEGMENT_CLASSES`."""
    from convlens.data import toons

    train = toons.read_segmentation(data, "train")
    if train is None:
        raise ValueError(f"{data} has no train split; expected toons folders with train/")
    pixels, masks = train
    val = toons.read_segmentation(data, "val")
    if val is None:
        if not 0 < val_fraction < 1:
            raise ValueError(f"expected val_fraction in (0, 1), got {val_fraction}")
        split = torch.Generator().manual_seed(seeds(seed).split)
        order = torch.randperm(len(pixels), generator=split)
        cut = max(1, round(len(pixels) * val_fraction))
        val = (pixels[order[:cut]], masks[order[:cut]])
        pixels, masks = pixels[order[cut:]], masks[order[cut:]]
    test = toons.read_segmentation(data, "test")
    return train_segmenter(
        pixels, masks, toons.SEGMENT_CLASSES, val=val, test=test, seed=seed, out=out, **options
    )
