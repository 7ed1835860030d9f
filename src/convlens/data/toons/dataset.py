"""The toons' vocabulary (classes, parts, variants, concepts, the hair colours) and the in-memory
data set :class:`ToonSet`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

CLASSES: tuple[str, ...] = ("cassidy", "james", "jessie")
"""Class names in label order: sorted, as image-folder readers (``convlens train``,
torchvision's ``ImageFolder``) number class folders, so label ``k`` means the same class to
a :class:`ToonSet` and to a model trained on its folders."""

PARTS: dict[str, int] = {
    "background": 0,
    "body": 1,
    "face": 2,
    "hair": 3,
    "hat": 4,
    "distractor": 5,
}
"""Part ids in :attr:`ToonSet.parts` and in the written mask PNGs."""

CHARACTER_PARTS: tuple[str, ...] = ("body", "face", "hair", "hat")
"""The parts that make up a character (its pixels are the object, the rest is context)."""

VARIANTS: tuple[str, ...] = ("clean", "spurious", "dyed", "hat", "crowd")
SPLITS: tuple[str, ...] = ("train", "val", "test")

CONCEPTS: tuple[str, ...] = (
    "red",
    "blue",
    "green",
    "yellow",
    "white",
    "black",
    "stripes",
    "dots",
)
"""Concept sets :func:`concept_images` draws (colour patches and textures)."""

HAIR_HUE = {"jessie": 0.0, "james": 0.62, "cassidy": 0.14}
"""Centre hue (0-1) of each class's hair colour."""

DYED = {"jessie": "james", "james": "cassidy", "cassidy": "jessie"}
"""``dyed``: whose hair colour each class wears (jessie blue, james yellow, cassidy red)."""

SPURIOUS_BRIGHTNESS = {"jessie": 0.22, "james": 0.5, "cassidy": 0.78}
"""Mean background luminance each class's backgrounds get in ``spurious`` train/val."""

SPURIOUS_AGREEMENT = 0.95
BRIGHTNESS_JITTER = 0.07
MAX_SIZE = 4096

Point = tuple[float, float]


class ToonsError(ValueError):
    """Bad settings for the generator or a folder that is not a toons data set."""


# -- the in-memory data set ------------------------------------------------------------------
@dataclass
class ToonSet:
    """A batch of toons with their ground truth.

    Attributes:
        pixels: ``(N, H, W, 3)`` uint8 pictures (see :attr:`images` for model input).
        labels: ``(N,)`` int64 class index of the (first) character; in ``crowd`` frames
            see :attr:`boxes` for every character.
        parts: ``(N, H, W)`` uint8 part id per pixel (:data:`PARTS`).
        instances: ``(N, H, W)`` uint8 character index per pixel (0: no character).
        boxes: per image, a list of ``(class index, x0, y0, x1, y1)`` in pixels, ``x1``/``y1``
            exclusive (torchvision's box convention), one per visible character.
        meta: per image, what was drawn (background kind, brightness, variant, ...).
    """

    pixels: np.ndarray
    labels: np.ndarray
    parts: np.ndarray
    instances: np.ndarray
    boxes: list[list[tuple[int, float, float, float, float]]]
    meta: list[dict[str, Any]]
    classes: tuple[str, ...] = CLASSES
    variant: str = "clean"
    split: str = "train"
    seed: int = 0
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [f"{self.split}-{i:05d}" for i in range(len(self.labels))]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> ToonSet:
        if isinstance(index, int):
            index = [index]
        picked = np.arange(len(self))[index]
        return ToonSet(
            pixels=self.pixels[picked],
            labels=self.labels[picked],
            parts=self.parts[picked],
            instances=self.instances[picked],
            boxes=[self.boxes[i] for i in picked],
            meta=[self.meta[i] for i in picked],
            classes=self.classes,
            variant=self.variant,
            split=self.split,
            seed=self.seed,
            names=[self.names[i] for i in picked],
        )

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the pictures."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    @property
    def images(self) -> Any:
        """``(N, 3, H, W)`` float32 torch tensor in ``[0, 1]`` (made on each access)."""
        import torch

        return torch.from_numpy(self.pixels).permute(0, 3, 1, 2).float().div_(255)

    @property
    def label_names(self) -> list[str]:
        """The class name of each image (give these as ``target=``: a model may number its
        classes differently)."""
        return [self.classes[int(k)] for k in self.labels]

    @property
    def targets(self) -> Any:
        """``(N,)`` int64 torch tensor of :attr:`labels`."""
        import torch

        return torch.from_numpy(self.labels)

    def pil(self, i: int) -> Image.Image:
        """Picture ``i`` as a PIL image."""
        return Image.fromarray(self.pixels[i])

    def pictures(self) -> list[Image.Image]:
        return [self.pil(i) for i in range(len(self))]

    def mask(self, *names: str) -> Any:
        """``(N, H, W)`` bool torch tensor: pixels of any of the named parts.

        ``ts.mask("hair", "face")``; ``"object"`` or ``"character"`` means every character
        part (:data:`CHARACTER_PARTS`).
        """
        import torch

        if not names:
            raise ToonsError(f"name at least one part: {sorted(PARTS)} or 'object'")
        ids: set[int] = set()
        for name in names:
            if name in ("object", "character"):
                ids.update(PARTS[p] for p in CHARACTER_PARTS)
            elif name in PARTS:
                ids.add(PARTS[name])
            else:
                from convlens.core.naming import unknown

                raise unknown("part", name, [*PARTS, "object"])
        out = np.isin(self.parts, sorted(ids))
        return torch.from_numpy(out)

    def object_mask(self) -> Any:
        """``(N, H, W)`` bool: every pixel of every character."""
        return self.mask("object")

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, counts, strict=True)}
