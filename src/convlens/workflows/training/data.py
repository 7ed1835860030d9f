"""Image-folder data sets for training, read into memory.

Data layouts (``ROOT`` is what the user passes):

* ``ROOT/train/<class>/*.png`` and ``ROOT/val/<class>/...`` (also ``valid``/``validation``),
  optionally ``ROOT/test/<class>/...``; without a ``val`` folder the training folder is
  split. Other folders (``masks/``) and files (``index.json``) in ``ROOT`` are ignored.
* ``ROOT/<class>/*.png``: one folder of class folders, split into train and validation
  (stratified, seeded; 20 % validation by default).

Every picture is loaded with :mod:`convlens.core.images`, resized and centre-cropped to the
input size with the checkpoint's own :class:`~convlens.core.model.Preprocessing` (so training
and inference see the same pixels) and kept as one ``uint8`` tensor ``(N, 3, H, W)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.core.architectures import cnns
from convlens.core.images import ImageError, list_images, load_image
from convlens.core.model import Preprocessing

VAL_NAMES = ("val", "valid", "validation")


# ---------------------------------------------------------------------------------- data


@dataclass
class ImageSet:
    """Pictures and their class indices, in memory.

    ``pixels`` is ``(N, 3, H, W)`` ``uint8`` (RGB, 0-255); ``targets`` ``(N,)`` ``int64``;
    ``names`` one name per picture (the file path relative to the data root).
    """

    pixels: torch.Tensor
    targets: torch.Tensor
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.pixels.dim() != 4 or self.pixels.shape[1] != 3 or self.pixels.dtype != torch.uint8:
            raise ValueError(
                f"expected pixels (N, 3, H, W) uint8, got {tuple(self.pixels.shape)} "
                f"{self.pixels.dtype}"
            )
        if self.targets.shape != (len(self.pixels),):
            raise ValueError(
                f"expected {len(self.pixels)} targets, got shape {tuple(self.targets.shape)}"
            )
        self.targets = self.targets.long()

    def __len__(self) -> int:
        return len(self.pixels)

    def counts(self, classes: int) -> list[int]:
        """Pictures per class."""
        return torch.bincount(self.targets, minlength=classes).tolist()


@dataclass
class DataSplits:
    """Training, validation and (optional) test pictures with their class names."""

    classes: list[str]
    train: ImageSet
    val: ImageSet | None = None
    test: ImageSet | None = None
    layout: str = "in memory"
    root: str | None = None

    def summary(self) -> dict[str, Any]:
        k = len(self.classes)
        return {
            "root": self.root,
            "layout": self.layout,
            "classes": self.classes,
            "input_size": list(self.train.pixels.shape[2:]),
            **{
                f"{name}_per_class": part.counts(k)
                for name, part in (("train", self.train), ("val", self.val), ("test", self.test))
                if part is not None
            },
        }


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_images(folder: Path) -> bool:
    try:
        return bool(list_images(folder))
    except ImageError:
        return False


def _listing(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, class index) for every picture in ``folder/<class>/``."""
    known = {name: i for i, name in enumerate(classes)}
    found: list[tuple[Path, int]] = []
    for sub in _class_folders(folder):
        if not _has_images(sub):
            continue
        if sub.name not in known:
            raise ValueError(
                f"{sub} is a class the training folder does not have; expected classes "
                f"{', '.join(classes)}"
            )
        found.extend((path, known[sub.name]) for path in list_images(sub))
    if not found:
        raise ImageError(f"no class folders with images in {folder}")
    return found


def _split(
    listing: list[tuple[Path, int]], fraction: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Stratified split: ``round(fraction * n)`` pictures of every class go to validation
    (at least one when the class has two or more), chosen by a generator seeded with ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"expected a validation fraction in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    train: list[tuple[Path, int]] = []
    val: list[tuple[Path, int]] = []
    for k in sorted({label for _, label in listing}):
        members = [item for item in listing if item[1] == k]
        order = torch.randperm(len(members), generator=generator).tolist()
        n_val = round(fraction * len(members))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        chosen = set(order[:n_val])
        for i, item in enumerate(members):
            (val if i in chosen else train).append(item)
    return train, val


def _read(
    listing: list[tuple[Path, int]],
    root: Path,
    preprocess: Preprocessing,
    progress: Callable[[int, int], None] | None,
) -> ImageSet:
    height, width = preprocess.input_shape()[1:]
    pixels = torch.empty((len(listing), 3, height, width), dtype=torch.uint8)

    def one(path: Path) -> np.ndarray:
        picture = preprocess.picture(load_image(path))
        array = np.array(picture, dtype=np.uint8)  # a writable copy
        if array.shape != (height, width, 3):
            raise ImageError(f"{path}: expected {height}x{width} after resizing, got {array.shape}")
        return array

    # PIL releases the GIL while decoding and resizing, so a few threads overlap the files.
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, array in enumerate(pool.map(one, [path for path, _ in listing])):
            pixels[i] = torch.from_numpy(array).permute(2, 0, 1)
            if progress is not None and (i + 1) % 64 == 0:
                progress(i + 1, len(listing))
    if progress is not None:
        progress(len(listing), len(listing))
    targets = torch.tensor([label for _, label in listing], dtype=torch.long)
    names = [str(path.relative_to(root)) for path, _ in listing]
    return ImageSet(pixels, targets, names)


def load_folder(
    root: str | os.PathLike[str],
    *,
    input_size: int | tuple[int, int] = 128,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> DataSplits:
    """Read an image-folder data set (see the module docstring for the layouts) into memory.

    Pictures are resized (shorter side) and centre-cropped to ``input_size`` (H or (H, W))
    with bilinear resampling. The split of a single folder is stratified and seeded.
    ``progress(done, total)`` is called while files are read.
    """
    base = Path(os.fspath(root)).expanduser()
    if not base.exists():
        raise FileNotFoundError(f"data folder {str(base)!r} does not exist")
    if not base.is_dir():
        raise ValueError(f"{base} is not a folder; expected ROOT/train/<class>/ or ROOT/<class>/")
    height, width = cnns.pair(input_size, "input_size")
    preprocess = picture_preprocessing((height, width))
    train_dir = base / "train"
    val_dir = next((base / n for n in VAL_NAMES if (base / n).is_dir()), None)
    test_dir = base / "test"
    if train_dir.is_dir():
        classes = [p.name for p in _class_folders(train_dir)]
        if len(classes) < 2:
            raise ValueError(f"expected at least 2 class folders in {train_dir}, got {classes}")
        train_list = _listing(train_dir, classes)
        if val_dir is not None:
            val_list = _listing(val_dir, classes)
            layout = f"train/ and {val_dir.name}/ folders"
        else:
            train_list, val_list = _split(train_list, val_fraction, seed)
            layout = f"train/ folder split {1 - val_fraction:.0%}/{val_fraction:.0%}"
        test_list = _listing(test_dir, classes) if test_dir.is_dir() else []
    else:
        classes = [p.name for p in _class_folders(base) if _has_images(p)]
        if len(classes) < 2:
            raise ValueError(
                f"expected ROOT/train/<class>/ or at least 2 class folders in {base}, got {classes}"
            )
        train_list, val_list = _split(_listing(base, classes), val_fraction, seed)
        test_list = []
        layout = f"class folders split {1 - val_fraction:.0%}/{val_fraction:.0%}"
    total = len(train_list) + len(val_list) + len(test_list)
    offset = 0

    def part(listing: list[tuple[Path, int]]) -> ImageSet:
        nonlocal offset
        start = offset

        def report(done: int, _count: int) -> None:
            if progress is not None:
                progress(start + done, total)

        offset += len(listing)
        return _read(listing, base, preprocess, report)

    return DataSplits(
        classes=classes,
        train=part(train_list),
        val=part(val_list) if val_list else None,
        test=part(test_list) if test_list else None,
        layout=layout,
        root=str(base),
    )


def picture_preprocessing(
    size: tuple[int, int],
    channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Preprocessing:
    """The preprocessing of a trained network: resize the shorter side to ``min(size)``,
    centre-crop to ``size`` (H, W), normalise by ``mean`` / ``std`` (default: none), RGB or grey
    (``channels``)."""
    height, width = size
    return Preprocessing(
        crop=(height, width),
        resize=min(height, width),
        mean=tuple(mean) if mean is not None else (0.0,) * channels,
        std=tuple(std) if std is not None else (1.0,) * channels,
        channels=channels,
    )


def pixel_statistics(pixels: torch.Tensor, channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of pictures in [0, 1] (luma when grey),
    rounded to 4 decimals, computed in chunks so no float copy of the whole set exists."""
    plain = picture_preprocessing(tuple(pixels.shape[2:]), channels)  # type: ignore[arg-type]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(pixels), 256):
        x = plain.normalize(pixels[start : start + 256].float() / 255).double()
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    count = len(pixels) * pixels.shape[2] * pixels.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]
