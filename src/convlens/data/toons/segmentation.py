"""Toons for segmentation: the part masks as class maps, drawn in memory or read from toons
folders.

The segmentation classes (:data:`SEGMENT_CLASSES`) are ``background``, ``hair``, ``face`` and
``body``. A toon's ``hat`` and the ``distractor`` shapes count as background: a hat is not one
of the three parts (in the ``hat`` variant it hides the hair entirely, so no pixel is hair),
and a distractor is no part of any character. A segmenter therefore has to tell hair from a
hat and from a red, blue or yellow shape nearby, by shape and place rather than colour alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convlens.data.toons.dataset import PARTS, ToonsError
from convlens.data.toons.folders import read
from convlens.data.toons.scenes import generate

SEGMENT_CLASSES: tuple[str, ...] = ("background", "hair", "face", "body")
"""The toon segmenter's classes, in index order (background first, as torchvision's)."""

PART_TO_CLASS = {"background": 0, "body": 3, "face": 2, "hair": 1, "hat": 0, "distractor": 0}
"""Each toon part's segmentation class (an index into :data:`SEGMENT_CLASSES`)."""


def class_map(parts: Any) -> Any:
    """Toon part ids (:data:`~convlens.data.toons.PARTS`, any shape) -> (long tensor)
    :data:`SEGMENT_CLASSES` indices: hair, face and body kept, hat and distractors folded into
    background."""
    import torch

    table = torch.zeros(max(PARTS.values()) + 1, dtype=torch.long)
    for part, index in PARTS.items():
        table[index] = PART_TO_CLASS[part]
    return table[torch.as_tensor(np.asarray(parts)).long()]


def _as_tensors(pixels: np.ndarray, parts: np.ndarray) -> tuple[Any, Any]:
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2), class_map(parts)


def segmentation_data(
    n: int,
    *,
    variants: Sequence[str] = ("clean", "hat", "crowd"),
    split: str = "train",
    seed: int = 0,
    size: int = 128,
) -> tuple[Any, Any]:
    """``n`` toons shared evenly among ``variants`` (the first ones get the remainder):
    (n, 3, size, size) uint8 pictures and (n, size, size) long class maps (:func:`class_map`),
    variant by variant in the order given. Folders written by ``convlens toons make --variant
    V --seed S`` hold the same pictures (:func:`read_segmentation`)."""
    import torch

    if not variants:
        raise ToonsError("expected at least one toon variant")
    counts = [n // len(variants) + (i < n % len(variants)) for i in range(len(variants))]
    pixels, maps = [], []
    for variant, count in zip(variants, counts, strict=True):
        if count == 0:
            continue
        data = generate(count, split=split, seed=seed, variant=variant, size=size)
        x, y = _as_tensors(data.pixels, data.parts)
        pixels.append(x)
        maps.append(y)
    return torch.cat(pixels).contiguous(), torch.cat(maps)


def toons_folders(folder: str | os.PathLike[str]) -> list[Path]:
    """The toons folders ``folder`` stands for: itself when it holds an ``index.json``, else
    its subfolders that do, in name order (several variants side by side); none is an
    error."""
    root = Path(os.fspath(folder)).expanduser()
    if (root / "index.json").is_file():
        return [root]
    found = (
        sorted(p for p in root.iterdir() if (p / "index.json").is_file()) if root.is_dir() else []
    )
    if not found:
        raise ToonsError(
            f"{root} is not a toons folder: expected an index.json in it, or subfolders that "
            "have one (`convlens toons make`)"
        )
    return found


def read_segmentation(
    folder: str | os.PathLike[str], split: str, *, limit: int | None = None
) -> tuple[Any, Any] | None:
    """(N, 3, H, W) uint8 pictures and (N, H, W) long class maps of one split of a toons folder,
    or of every toons folder inside ``folder`` in name order (:func:`toons_folders`);
    ``None`` when none of them has that split. ``limit``: at most that many pictures."""
    import torch

    pixels, maps = [], []
    for root in toons_folders(folder):
        try:
            data = read(root, split=split)
        except ToonsError as err:
            if "has no images in split" in str(err):
                continue
            raise
        x, y = _as_tensors(data.pixels, data.parts)
        pixels.append(x)
        maps.append(y)
    if not pixels:
        return None
    x, y = torch.cat(pixels).contiguous(), torch.cat(maps)
    return (x[:limit], y[:limit]) if limit else (x, y)
