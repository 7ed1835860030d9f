"""The model handle: a network plus the three hooks a user may supply.

``preprocess`` turns pictures into the network's input tensor, ``postprocess`` turns the raw
output into probabilities, and ``labels`` decode class indices (the Picasso idea). Everything
else in convlens takes a :class:`Model`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from convlens.core.images import ImageError, list_images, load_images, to_tensor
from convlens.core.naming import UnknownNameError, close_matches

MAX_RESIZED_PIXELS = 4096 * 4096
"""Cap on the pixels of a resized picture (before the crop): resizing the short side of a
picture with an extreme aspect ratio (an 8000 x 1 strip) to 256 would make hundreds of
megapixels from a few bytes, so :meth:`Preprocessing.picture` refuses it instead."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@dataclass(frozen=True)
class Preprocessing:
    """Picture -> input tensor: resize the shorter side, centre-crop, scale to [0, 1], normalise.

    This reproduces torchvision's ``ImageClassification`` preset exactly on PIL images
    (PIL resampling, ``round`` for the crop offset), so the zoo's models see what they saw in
    training. ``resize=None`` skips the resize and ``crop=None`` the crop; ``channels=1`` gives
    grey input (ITU-R 601 luma of the RGB picture).
    """

    crop: int | tuple[int, int] | None = 224
    resize: int | None = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    channels: int = 3

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ValueError(
                f"expected interpolation among {sorted(_RESAMPLE)}, got {self.interpolation!r}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"expected channels 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"expected {self.channels} mean and std values, got {len(self.mean)} and "
                f"{len(self.std)}"
            )

    @property
    def crop_hw(self) -> tuple[int, int] | None:
        if self.crop is None:
            return None
        return (self.crop, self.crop) if isinstance(self.crop, int) else tuple(self.crop)  # type: ignore[return-value]

    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the network input, when the crop fixes it."""
        hw = self.crop_hw or ((self.resize, self.resize) if self.resize else None)
        if hw is None:
            raise ValueError("this preprocessing keeps the picture's size; give input_size")
        return (self.channels, *hw)

    def picture(self, image: Image.Image) -> Image.Image:
        """The RGB picture the network sees (resized and cropped, not normalised).

        A resize that would make more than :data:`MAX_RESIZED_PIXELS` pixels (a picture whose
        aspect ratio is extreme) raises :class:`~convlens.core.images.ImageError`."""
        if self.resize is not None:
            w, h = image.size
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.resize * long / short)
            size = (self.resize, new_long) if w <= h else (new_long, self.resize)
            if size[0] * size[1] > MAX_RESIZED_PIXELS:
                raise ImageError(
                    f"expected a picture whose aspect ratio is at most "
                    f"{MAX_RESIZED_PIXELS // self.resize**2}:1, got {w}x{h}: resizing its "
                    f"short side to {self.resize} would make {size[0]}x{size[1]} pixels; "
                    "crop it first"
                )
            if size != image.size:
                image = image.resize(size, _RESAMPLE[self.interpolation])
        hw = self.crop_hw
        if hw is not None:
            ch, cw = hw
            w, h = image.size
            if w < cw or h < ch:  # pad like torchvision's center_crop
                padded = Image.new("RGB", (max(w, cw), max(h, ch)))
                padded.paste(image, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
                image, (w, h) = padded, padded.size
            top = round((h - ch) / 2.0)
            left = round((w - cw) / 2.0)
            image = image.crop((left, top, left + cw, top + ch))
        return image

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) pixels in [0, 1] -> network input."""
        if self.channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=pixels.dtype, device=pixels.device)
            pixels = (pixels * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        return (pixels - mean) / std

    def denormalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """Network input -> (N, 3, H, W) pixels in [0, 1] (for display)."""
        mean = torch.tensor(self.mean, dtype=inputs.dtype, device=inputs.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=inputs.dtype, device=inputs.device).view(1, -1, 1, 1)
        pixels = (inputs * std + mean).clamp(0, 1)
        return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB images -> (N, C, H, W) network input."""
        return self.inputs([self.picture(im) for im in images])

    def inputs(self, pictures: Sequence[Image.Image]) -> torch.Tensor:
        """Pictures already resized and cropped (see :meth:`picture`) -> network input."""
        sizes = {p.size for p in pictures}
        if len(sizes) > 1:
            raise ValueError(
                f"expected pictures of one size after preprocessing, got sizes {sorted(sizes)}; "
                "set a crop size"
            )
        return self.normalize(torch.stack([to_tensor(p) for p in pictures]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "crop": self.crop,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "channels": self.channels,
        }


@dataclass
class Batch:
    """Pictures prepared for a model.

    ``inputs`` is the (N, C, H, W) network input on the model's device; ``pictures`` the RGB
    pictures as the network sees them (after resize and crop, before normalisation), for
    overlays; ``names`` one display name per picture.
    """

    names: list[str]
    inputs: torch.Tensor
    pictures: Sequence[Image.Image]

    def __len__(self) -> int:
        return len(self.names)


class _Pictures(Sequence[Image.Image]):
    """The pictures behind an input tensor, made only when someone looks (for overlays)."""

    def __init__(self, inputs: torch.Tensor, preprocess: Preprocessing) -> None:
        self.inputs = inputs
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return _Pictures(self.inputs[index], self.preprocess)
        from convlens.core.render import to_pil

        pixels = self.preprocess.denormalize(self.inputs[index : index + 1].detach().float())
        return to_pil(pixels[0].cpu())


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


Postprocess = Callable[[torch.Tensor], torch.Tensor]


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=-1)


def _sigmoid(logits: torch.Tensor) -> torch.Tensor:
    return logits.sigmoid()


class Model:
    """A network and how to talk to it.

    Parameters
    ----------
    module:
        Any ``torch.nn.Module`` that maps (N, C, H, W) to (N, K) scores.
    preprocess:
        A :class:`Preprocessing` config (default: ImageNet, 224 crop of a 256 resize), or a
        callable ``list[PIL.Image] -> (N, C, H, W) tensor`` (then give ``input_size``).
    postprocess:
        ``"softmax"`` (default), ``"sigmoid"`` (multi-label), ``"none"`` (the output already
        holds probabilities) or a callable ``(N, K) logits -> (N, K) probabilities``.
    labels:
        Class names by index. Each entry is a name or a list of synonyms (the first is shown).
    name:
        A display name.
    input_size:
        (C, H, W) when ``preprocess`` is a callable.

    Device and dtype always come from the module's parameters. The handle's ``task`` is
    ``classify`` (a detector's is ``detect``: :class:`~convlens.core.detector.Detector`).
    """

    task = "classify"

    def __init__(
        self,
        module: nn.Module,
        *,
        preprocess: Preprocessing | Callable[[list[Image.Image]], torch.Tensor] | None = None,
        postprocess: str | Postprocess = "softmax",
        labels: Sequence[str | Sequence[str]] | None = None,
        name: str | None = None,
        input_size: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.preprocess = preprocess if preprocess is not None else Preprocessing()
        if isinstance(postprocess, str):
            table: dict[str, Postprocess] = {
                "softmax": _softmax,
                "sigmoid": _sigmoid,
                "none": lambda t: t,
            }
            if postprocess not in table:
                raise ValueError(
                    f"expected postprocess 'softmax', 'sigmoid', 'none' or a callable, "
                    f"got {postprocess!r}"
                )
            self.postprocess_name = postprocess
            self.postprocess: Postprocess = table[postprocess]
        else:
            self.postprocess_name = getattr(postprocess, "__name__", "custom")
            self.postprocess = postprocess
        self.synonyms: list[list[str]] | None = (
            [[entry] if isinstance(entry, str) else list(entry) for entry in labels]
            if labels is not None
            else None
        )
        self.name = name or type(module).__name__
        self._input_size = tuple(input_size) if input_size is not None else None
        self._layer_table: Any = None
        # per network: whether it was found to take an input size other than input_shape
        self._sizes: tuple[nn.Module, dict[tuple[int, int], bool]] | None = None

    # -- what the network is -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return _device_dtype(self.module)[0]

    @property
    def dtype(self) -> torch.dtype:
        return _device_dtype(self.module)[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one network input."""
        if self._input_size is not None:
            return self._input_size
        if isinstance(self.preprocess, Preprocessing):
            return self.preprocess.input_shape()
        raise ValueError("a custom preprocess needs input_size=(C, H, W) on the Model")

    @property
    def labels(self) -> list[str] | None:
        """One display name per class, or ``None`` when the model has no labels."""
        return [names[0] for names in self.synonyms] if self.synonyms is not None else None

    def __repr__(self) -> str:
        classes = f", {len(self.synonyms)} labels" if self.synonyms else ""
        return f"Model({self.name!r}, input {self.input_shape}{classes}, device={self.device})"

    # -- classes -------------------------------------------------------------------------
    def label(self, index: int) -> str:
        """The display name of class ``index`` (``"class 7"`` without labels)."""
        if self.synonyms is None or not 0 <= index < len(self.synonyms):
            return f"class {index}"
        return self.synonyms[index][0]

    def class_index(self, target: int | str) -> int:
        """A class index from an index or a name; a name may be any synonym, any case.

        Unknown names raise :class:`UnknownNameError` listing the closest labels; a name that
        several classes share raises ``ValueError`` listing their indices.
        """
        if isinstance(target, bool) or not isinstance(target, (int, np.integer, str)):
            raise TypeError(f"expected a class index or name, got {type(target).__name__}")
        if not isinstance(target, str) or target.strip().lstrip("-").isdigit():
            index = int(target)
            count = len(self.synonyms) if self.synonyms is not None else None
            if index < 0 or (count is not None and index >= count):
                raise ValueError(f"expected a class index in [0, {count}), got {index}")
            return index
        if self.synonyms is None:
            raise ValueError(f"this model has no labels; name classes by index, got {target!r}")
        wanted = target.strip().lower()
        hits = [i for i, names in enumerate(self.synonyms) if wanted in (n.lower() for n in names)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            choices = ", ".join(f"{i} ({self.synonyms[i][0]})" for i in hits)
            raise ValueError(f"class name {target!r} is ambiguous: {choices}; use the index")
        every = [n for names in self.synonyms for n in names]
        near = close_matches(target, every)
        hint = f"; closest labels: {', '.join(repr(n) for n in near)}" if near else ""
        raise UnknownNameError(f"unknown class {target!r}{hint}")

    # -- running the network ---------------------------------------------------------------
    def prepare(self, images: Any) -> Batch:
        """Pictures (paths, folders, PIL, arrays) or an input tensor -> a :class:`Batch`.

        A ``torch.Tensor`` is taken to be network input already ((C, H, W) or (N, C, H, W));
        everything else is a picture and goes through ``preprocess``.
        """
        if isinstance(images, Batch):
            return images
        if isinstance(images, torch.Tensor):
            inputs = images.unsqueeze(0) if images.dim() == 3 else images
            if inputs.dim() != 4:
                raise ValueError(
                    f"expected an input tensor (C, H, W) or (N, C, H, W), got {tuple(images.shape)}"
                )
            self._check_input(inputs)
            device, dtype = _device_dtype(self.module)
            inputs = inputs.to(device, dtype)
            pictures: Sequence[Image.Image] = []
            if isinstance(self.preprocess, Preprocessing):
                pictures = _Pictures(inputs, self.preprocess)
            return Batch([f"image{i}" for i in range(len(inputs))], inputs, pictures)
        named = load_images(images)
        names = [n for n, _ in named]
        raw = [im for _, im in named]
        if isinstance(self.preprocess, Preprocessing):
            pictures = []
            for name, im in named:
                try:
                    pictures.append(self.preprocess.picture(im))
                except ImageError as err:
                    raise ImageError(f"{name}: {err}") from None
            inputs = self.preprocess.inputs(pictures)
        else:
            pictures = raw
            inputs = self.preprocess(raw)
            if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
                got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
                raise ValueError(f"preprocess must return an (N, C, H, W) tensor, got {got}")
        return Batch(names, inputs.to(self.device, self.dtype), pictures)

    def batches(self, images: Any, batch_size: int) -> Iterator[Batch]:
        """:meth:`prepare` in chunks of ``batch_size`` pictures, reading files only as needed
        (memory stays at one batch for folders and lists of files)."""
        if isinstance(images, (torch.Tensor, Batch)):
            batch = self.prepare(images)
            for start in range(0, len(batch), batch_size):
                stop = start + batch_size
                yield Batch(
                    batch.names[start:stop], batch.inputs[start:stop], batch.pictures[start:stop]
                )
            return
        sources = _expand_sources(images)
        for start in range(0, len(sources), batch_size):
            yield self.prepare(sources[start : start + batch_size])

    def _check_input(self, inputs: torch.Tensor) -> None:
        try:
            expected = self.input_shape
        except ValueError:
            return
        size = (int(inputs.shape[2]), int(inputs.shape[3]))
        same_size = size == tuple(expected[1:])
        if inputs.shape[1] == expected[0] and same_size:
            return
        size_free = same_size or self.accepts_size(size)
        if inputs.shape[1] == expected[0] and size_free:
            return
        want = f"(N, {expected[0]}, H, W)" if size_free else f"(N, {', '.join(map(str, expected))})"
        raise ValueError(f"expected input of shape {want}, got {tuple(inputs.shape)}")

    def accepts_size(self, size: tuple[int, int]) -> bool:
        """Whether the network takes (H, W) inputs of ``size`` besides its own
        :attr:`input_shape`: decided by what it does, not by its module types (torchvision
        pools with a function, not a module): one trial forward pass of a zero picture at
        ``size`` and one at the own size, in eval and inference mode; it does when both run
        and give outputs of the same shape. Remembered per size."""
        if self._sizes is None or self._sizes[0] is not self.module:
            self._sizes = (self.module, {})
        known = self._sizes[1]
        if size not in known:
            known[size] = _same_output_shape(self, size)
        return known[size]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Raw network output (logits) for an input tensor. A network that returns its
        auxiliary heads beside the logits in training mode (torchvision's Inception-v3 and
        GoogLeNet: a named tuple with ``logits``) gives the logits."""
        out = self.module(inputs)
        logits = getattr(out, "logits", None) if isinstance(out, tuple) else None
        return logits if isinstance(logits, torch.Tensor) else out

    __call__ = forward

    def probabilities(self, images: Any) -> torch.Tensor:
        """(N, K) class probabilities, computed in inference mode, on the CPU."""
        from convlens.core.hooks import preserved

        batch = self.prepare(images)
        with preserved(self.module), torch.inference_mode():
            return self.postprocess(self.forward(batch.inputs)).float().cpu()

    def predict(self, images: Any, *, top: int = 5) -> Prediction:
        """Top-``top`` classes for every picture, as a :class:`Prediction`."""
        from convlens.core.hooks import preserved

        if top < 1:
            raise ValueError(f"expected top >= 1, got {top}")
        batch = self.prepare(images)
        with preserved(self.module), torch.inference_mode():
            logits = self.forward(batch.inputs)
            if logits.dim() != 2:
                raise ValueError(
                    f"expected the model to return (N, K) class scores, got {tuple(logits.shape)}"
                )
            probs = self.postprocess(logits).float().cpu()
        return Prediction(self, batch.names, probs, min(top, probs.shape[1]))

    def channels_last(self) -> set[str]:
        """The layers that compute in (N, H, W, C) (from the layer table, built only when the
        network has layers that can make such a region)."""
        from convlens.core.layers import may_run_channels_last

        if self._layer_table is None and not may_run_channels_last(self.module):
            return set()
        try:
            return set(self.layers().channels_last())
        except ValueError:  # no input size to make the table with: layers as they come
            return set()

    def layers(self, kinds: str | Sequence[str] | None = None) -> Any:
        """The :class:`~convlens.layers.LayerTable` (built once per handle), optionally filtered."""
        from convlens.core.layers import layer_table

        if self._layer_table is None:
            self._layer_table = layer_table(self)
        return self._layer_table.filter(kinds) if kinds else self._layer_table


def _expand_sources(images: Any) -> list[Any]:
    """A flat list of single picture sources: folders listed, lists flattened, array batches
    kept whole (they are split by :func:`~convlens.images.load_images`)."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        return list(list_images(images))
    if isinstance(images, (list, tuple)):
        return [item for source in images for item in _expand_sources(source)]
    return [images]


def count_pictures(images: Any) -> int:
    """How many pictures ``images`` holds, without decoding any."""
    if isinstance(images, Batch):
        return len(images)
    if isinstance(images, torch.Tensor):
        return 1 if images.dim() == 3 else len(images)
    total = 0
    for source in _expand_sources(images):
        is_batch = isinstance(source, np.ndarray) and (
            source.ndim == 4 or (source.ndim == 3 and source.shape[-1] not in (1, 3, 4))
        )
        total += len(source) if is_batch else 1
    return total


def _same_output_shape(model: Model, size: tuple[int, int]) -> bool:
    """Whether ``model``'s network gives outputs of one shape at its own input size and at
    ``size`` (a refusal to run at ``size`` is a no)."""
    from convlens.core.hooks import first_tensor, preserved

    channels, *own = model.input_shape
    device, dtype = _device_dtype(model.module)
    shapes = []
    for hw in (tuple(own), size):
        x = torch.zeros((1, channels, *hw), device=device, dtype=dtype)
        try:
            with preserved(model.module), torch.inference_mode():
                out = first_tensor(model.forward(x))
        except (RuntimeError, ValueError):
            return False
        if out is None:
            return False
        shapes.append(tuple(out.shape))
    return shapes[0] == shapes[1]


@dataclass
class Prediction:
    """Class probabilities for a batch of pictures.

    ``probabilities`` is (N, K) on the CPU; ``top`` the number of classes shown per picture.
    """

    model: Model
    names: list[str]
    probabilities: torch.Tensor
    top: int = 5
    _top: tuple[torch.Tensor, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        values, indices = self.probabilities.topk(self.top, dim=1)
        self._top = (values, indices)

    def __len__(self) -> int:
        return len(self.names)

    def topk(self, i: int = 0) -> list[tuple[int, str, float]]:
        """``(index, label, probability)`` of the top classes of picture ``i``, best first."""
        values, indices = self._top
        return [
            (int(k), self.model.label(int(k)), float(v))
            for v, k in zip(values[i], indices[i], strict=True)
        ]

    @property
    def classes(self) -> list[int]:
        """The top-1 class index of every picture."""
        return [int(k) for k in self._top[1][:, 0]]

    @property
    def labels(self) -> list[str]:
        """The top-1 label of every picture."""
        return [self.model.label(k) for k in self.classes]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [
            {
                "image": name,
                "top": [
                    {"class": k, "label": label, "probability": p} for k, label, p in self.topk(i)
                ],
            }
            for i, name in enumerate(self.names)
        ]

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{self.names[i]}: {self.topk(i)[0][1]} {self.topk(i)[0][2]:.1%}"
            for i in range(min(3, len(self)))
        )
        more = f", ... ({len(self)} pictures)" if len(self) > 3 else ""
        return f"Prediction({self.model.name}; {shown}{more})"

    def __str__(self) -> str:
        lines = []
        for i, name in enumerate(self.names):
            lines.append(name)
            for k, label, p in self.topk(i):
                lines.append(f"  {p:7.2%}  {label} ({k})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        parts = []
        for i, name in enumerate(self.names):
            rows = "".join(
                f"<tr><td>{escape(label)}</td><td style='text-align:right'>{k}</td>"
                f"<td><div style='background:#4c72b0;height:0.8em;"
                f"width:{max(1, math.ceil(p * 120))}px'></div></td>"
                f"<td style='text-align:right'>{p:.2%}</td></tr>"
                for k, label, p in self.topk(i)
            )
            parts.append(
                f"<table><caption style='text-align:left'><b>{escape(name)}</b></caption>"
                f"<tr><th>class</th><th>index</th><th></th><th>probability</th></tr>{rows}</table>"
            )
        return "".join(parts)
