"""Data sets with object masks, as :func:`~convlens.workflows.evaluation.evaluate` and the audit
read them: :class:`MaskedImages`, toons sets and folders, tuples of tensors; batches of network
inputs, masks and labels; the targets to explain."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from convlens.core.model import Model, Preprocessing
from convlens.techniques.attribution.base import Target

Progress = Callable[[int, int], None]


# -- data -----------------------------------------------------------------------------------------


@dataclass
class MaskedImages:
    """Images with ground-truth masks.

    ``images`` (N, C, H, W): pixels in [0, 1] (RGB, normalised through the model's
    :class:`~convlens.model.Preprocessing`), or network input when ``is_input=True``.
    ``masks``: bool (N, H, W) (the object), or a dict ``{part: (N, H, W) bool}`` whose union is
    the object. ``labels`` (N,) class indices (optional), ``classes`` their names.
    """

    images: torch.Tensor
    masks: torch.Tensor | Mapping[str, torch.Tensor]
    labels: torch.Tensor | None = None
    classes: Sequence[str] | None = None
    is_input: bool = False
    object_name: str = "objects"
    name: str = ""  # where the data came from, for reports

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dim() != 4:
            got = (
                tuple(self.images.shape)
                if isinstance(self.images, torch.Tensor)
                else type(self.images)
            )
            raise ValueError(f"expected images (N, C, H, W), got {got}")
        n, _, h, w = self.images.shape
        parts = self.masks.values() if isinstance(self.masks, Mapping) else [self.masks]
        for mask in parts:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise ValueError("expected bool mask tensors (N, H, W)")
            if tuple(mask.shape) != (n, h, w):
                raise ValueError(
                    f"expected masks (N, H, W) = {(n, h, w)} like the images, got "
                    f"{tuple(mask.shape)}"
                )
        if self.labels is not None and tuple(self.labels.shape) != (n,):
            raise ValueError(f"expected labels ({n},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def mask(self, *parts: str) -> torch.Tensor:
        """(N, H, W) bool: the union of the named parts (all of them, the object, if none)."""
        if not isinstance(self.masks, Mapping):
            if parts:
                raise ValueError(
                    f"these data have one object mask, not named parts; got parts {parts}"
                )
            return self.masks
        names = parts or tuple(self.masks)
        missing = [p for p in names if p not in self.masks]
        if missing:
            raise ValueError(f"expected parts among {', '.join(self.masks)}, got {missing}")
        out = torch.zeros_like(next(iter(self.masks.values())))
        for name in names:
            out |= self.masks[name]
        return out

    def object_mask(self) -> torch.Tensor:
        return self.mask()

    def __getitem__(self, index: slice) -> MaskedImages:
        masks = (
            {k: v[index] for k, v in self.masks.items()}
            if isinstance(self.masks, Mapping)
            else self.masks[index]
        )
        return MaskedImages(
            self.images[index],
            masks,
            None if self.labels is None else self.labels[index],
            self.classes,
            self.is_input,
            self.object_name,
            self.name,
        )


def as_masked(data: Any, *, split: str = "test") -> Any:
    """Data with masks in one of the accepted forms (see the module docstring); a folder is read
    with ``convlens.data.toons.read(folder, split=split)``."""
    if isinstance(data, (str, os.PathLike)):
        folder = Path(data)
        if (folder / "images").is_dir() and (folder / "masks").is_dir():
            return read_mask_folder(folder)
        if not (folder / "index.json").is_file():
            raise FileNotFoundError(
                f"expected a toons folder with index.json, or a folder with images/ and masks/ "
                f"subfolders, got {folder}"
            )
        from convlens.data import toons  # type: ignore[attr-defined]

        return toons.read(folder, split=split)
    if isinstance(data, tuple) and 2 <= len(data) <= 3:
        return MaskedImages(data[0], data[1], data[2] if len(data) == 3 else None)
    needed = ("images", "mask", "object_mask")
    if all(hasattr(data, a) for a in needed):
        return data
    raise ValueError(
        "expected data with masks: a MaskedImages, a ToonSet, a toons folder, or a tuple "
        f"(images, masks[, labels]); got {type(data).__name__}"
    )


MAX_SIDE = 512  # a folder's pictures are resized to one size, at most this on its long side


def read_mask_folder(folder: str | os.PathLike[str]) -> MaskedImages:
    """Your own pictures with their masks: ``folder/images/<name>.<png|jpg|...>`` and
    ``folder/masks/<name>.png`` (the same name; a pixel brighter than mid-grey is the object),
    optionally ``folder/labels.json`` ``{"<name>": "<class name>", ...}`` giving each picture's
    class (otherwise the model's top-1 class is explained).

    Every picture and mask is resized to the first picture's size, at most :data:`MAX_SIDE`
    pixels on its long side (pictures bilinear, masks nearest), as the evaluation resizes them
    to the network input anyway (no crop, so the mask keeps covering the object)."""
    import json

    import numpy as np
    from PIL import Image

    from convlens.core.images import list_images, load_image

    root = Path(folder)
    pictures = list_images(root / "images", recursive=False)
    masks_dir = root / "masks"
    labels_file = root / "labels.json"
    named = json.loads(labels_file.read_text()) if labels_file.is_file() else None
    if named is not None and not isinstance(named, dict):
        raise ValueError(f"expected {labels_file} to map picture names to class names")
    size: tuple[int, int] | None = None
    images, masks, labels = [], [], []
    for path in pictures:
        found = sorted(p for p in masks_dir.glob(f"{path.stem}.*") if p.is_file())
        if not found:
            raise FileNotFoundError(f"no mask for {path.name}: expected masks/{path.stem}.png")
        picture = load_image(path)
        if size is None:
            scale = min(1.0, MAX_SIDE / max(picture.size))
            size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        mask = Image.open(found[0]).convert("L").resize(size, Image.Resampling.NEAREST)
        images.append(np.asarray(picture.resize(size, Image.Resampling.BILINEAR)))
        masks.append(np.asarray(mask) > 127)
        if named is not None:
            if path.stem not in named:
                raise ValueError(f"expected a class for {path.stem} in {labels_file}")
            labels.append(str(named[path.stem]))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    classes = sorted(set(labels)) if labels else None
    return MaskedImages(
        pixels,
        torch.from_numpy(np.stack(masks)),
        torch.tensor([classes.index(c) for c in labels]) if classes else None,
        classes,
        name=str(root),
    )


def describe_data(data: Any, source: str | None = None) -> str:
    """A line naming the data for reports: where it came from, the split, how many images."""
    kind = type(data).__name__
    where = getattr(data, "name", "") or source or ("toons" if kind == "ToonSet" else kind)
    split = getattr(data, "split", None)
    parts = [str(where), f"{split} split" if isinstance(split, str) else "", f"{len(data)} images"]
    return ", ".join(p for p in parts if p)


def _object_name(data: Any) -> str:
    name = getattr(data, "object_name", None)
    if isinstance(name, str):
        return name
    return "characters" if type(data).__name__ == "ToonSet" else "objects"


def network_input(
    model: Model, images: torch.Tensor, masks: torch.Tensor, *, is_input: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels in [0, 1] (N, 3, H, W) and masks (N, H, W) -> network input and masks at the
    input size: normalised by the model's Preprocessing; when its crop fixes another size, both
    are resized to it (pixels bilinear with antialiasing, masks nearest; no crop)."""
    device, dtype = model.device, model.dtype
    if is_input:
        return images.to(device, dtype), masks
    if not isinstance(model.preprocess, Preprocessing):
        raise ValueError(
            "pixel images need the model's Preprocessing to become network input; this model "
            "has a custom preprocess: pass network input (MaskedImages(..., is_input=True))"
        )
    pixels = images.float()
    size = model.preprocess.crop_hw
    if size is not None and tuple(pixels.shape[-2:]) != tuple(size):
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True)
        pixels = pixels.clamp(0, 1)
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return model.preprocess.normalize(pixels).to(device, dtype), masks


def _batches(
    model: Model,
    data: Any,
    parts: Sequence[str] | None,
    batch_size: int,
    limit: int | None,
) -> Any:
    """(start, inputs, masks, labels) per chunk of ``batch_size`` images."""
    total = len(data) if limit is None else min(limit, len(data))
    images = data.images
    masks_all = data.mask(*parts) if parts else data.object_mask()
    labels = _model_labels(model, data)
    is_input = bool(getattr(data, "is_input", False))
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        inputs, masks = network_input(
            model, images[start:stop], masks_all[start:stop], is_input=is_input
        )
        yield (
            start,
            inputs,
            masks.to(torch.bool),
            None if labels is None else torch.as_tensor(labels[start:stop]).long(),
        )


def _model_labels(model: Model, data: Any) -> torch.Tensor | None:
    """The data's labels in the model's class numbering. When the model knows every class
    name of the data, by name (a model trained on image folders numbers its classes
    alphabetically, a data set may not); when it knows none of them, the indices as they
    are; a partial match is an error, since either reading would be a guess."""
    from convlens.core.naming import UnknownNameError

    labels = getattr(data, "labels", None)
    if labels is None:
        return None
    labels = torch.as_tensor(labels).long()
    names = [str(name) for name in getattr(data, "classes", None) or []]
    if not names or model.labels is None:
        return labels
    indices: list[int] = []
    for name in names:
        with contextlib.suppress(UnknownNameError, ValueError):
            indices.append(model.class_index(name))
    if not indices:
        return labels
    if len(indices) < len(names):
        raise ValueError(
            f"the model knows only some of the data's classes ({', '.join(names)}); its "
            f"classes are {', '.join(model.labels)}: rename them so they match, or give "
            "target= explicitly"
        )
    return torch.tensor(indices)[labels]


def _targets(
    model: Model, inputs: torch.Tensor, labels: torch.Tensor | None, target: Any
) -> Target:
    """``target=None``: the true labels when the data have them, else top-1; ``"predicted"``:
    top-1; anything else as :func:`~convlens.attribution.resolve_target`."""
    from convlens.techniques.attribution.base import resolve_target

    if target is None and labels is not None:
        return Target(labels.cpu(), description="label")
    if target == "predicted" or target is None:
        return resolve_target(model, inputs, None)
    return resolve_target(model, inputs, target)


def _check_count(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected {what} >= 1 (an int), got {value!r}")
