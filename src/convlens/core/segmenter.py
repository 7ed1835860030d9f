"""Segmenters: the segmenter handle (task ``segment``), the segmentation of one picture
(class map, probabilities, regions, drawing, JSON) and the segmenter checkpoint format.

A segmenter here is any network that follows torchvision's segmentation convention:
``module(x)`` takes an (N, 3, H, W) batch, normalised as the network wants (the handle's
``preprocess``), and returns ``{"out": (N, K, h, w)}`` logits, optionally with ``"aux"`` (an
auxiliary head used in training, ignored here); a plain (N, K, h, w) tensor is taken too.
Logits smaller than the picture (a stride-8 head) are resized bilinearly to (H, W) first, as
torchvision's own segmentation models do inside their forward.

:class:`Segmenter` wraps such a network with its class names, mirroring
:class:`~convlens.core.detector.Detector` (``module``, ``labels``, ``name``, ``to_input``,
``layer``, ``device``, ``task``); calling it on pictures gives one :class:`Segmentation`
each. Explanations of a class over a region are methods of task ``segment``
(:mod:`convlens.techniques.attribution.segmentation`); intersection over union and the
training head live in :mod:`convlens.workflows`.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from convlens.core.model import Preprocessing
from convlens.core.naming import unknown
from convlens.core.render import PALETTE, _font, _text_height, to_pil

__all__ = [
    "FORMAT",
    "Segmentation",
    "Segmenter",
    "is_segmentation_module",
    "load",
    "save",
    "segmentation_logits",
]

FORMAT = "convlens-segmenter"
PLAIN = Preprocessing(crop=None, resize=None)
"""The default preprocessing: pictures as they come, ImageNet's mean and std (what
torchvision's segmentation weights expect)."""


def segmentation_logits(output: Any, size: Sequence[int] | None = None) -> torch.Tensor:
    """The (N, K, H, W) logits in a segmenter's output: ``output["out"]`` of torchvision's dict
    (``"aux"`` ignored) or the tensor itself; resized bilinearly (``align_corners=False``) to
    ``size`` = (H, W) when given and different."""
    if isinstance(output, Mapping):
        if "out" not in output:
            raise ValueError(
                "expected the segmenter's output dict to hold 'out' (torchvision's convention), "
                f"got keys {sorted(map(str, output))}"
            )
        output = output["out"]
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"expected segmentation logits (N, K, H, W) or {{'out': ...}}, got {got}")
    if size is not None and tuple(output.shape[-2:]) != tuple(size):
        output = F.interpolate(output, size=tuple(size), mode="bilinear", align_corners=False)
    return output


def class_index(labels: Sequence[str] | None, count: int | None, target: Any) -> int:
    """A class index from an index (below ``count`` when known) or a name (any case); unknown
    names list close ones."""
    if isinstance(target, bool) or not isinstance(target, (int, np.integer, str)):
        raise ValueError(f"expected a class index or name, got {target!r}")
    if isinstance(target, str) and not target.strip().isdigit():
        names = [str(n).lower() for n in labels or []]
        if target.strip().lower() not in names:
            raise unknown("class", target, list(labels or []))
        return names.index(target.strip().lower())
    index = int(target)
    if index < 0 or (count is not None and index >= count):
        raise ValueError(f"expected a class index in [0, {count or 'K'}), got {index}")
    return index


def connected_region(mask: torch.Tensor, x: int, y: int) -> torch.Tensor:
    """(H, W) bool: the pixels of ``mask`` connected to (x, y) through their four neighbours
    (empty when (x, y) is outside the mask)."""
    height, width = mask.shape
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"expected a point inside the {width}x{height} picture, got ({x}, {y})")
    inside = mask.bool()
    region = torch.zeros_like(inside)
    region[y, x] = bool(inside[y, x])
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    while True:  # grow by one pixel in each direction until nothing changes
        grown = F.conv2d(region[None, None].float(), cross, padding=1)[0, 0] > 0
        grown &= inside
        if torch.equal(grown, region):
            return region
        region = grown


@dataclass
class Segmentation:
    """The segmentation of one picture.

    ``class_map``: (H, W) long, the most probable class of every pixel. ``probabilities``:
    (K, H, W) float32, the softmax over classes of the logits. ``labels``: class names by
    index; ``picture``: the picture as the segmenter saw it (RGB, (W, H)); ``background``:
    the class not drawn (``None``: draw every class).
    """

    class_map: torch.Tensor
    probabilities: torch.Tensor
    labels: list[str] | None = None
    picture: Image.Image | None = None
    background: int | None = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.probabilities.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.class_map.shape[0]), int(self.class_map.shape[1])

    def name(self, index: int) -> str:
        if self.labels is not None and 0 <= index < len(self.labels):
            return str(self.labels[index])
        return str(index)

    def class_index(self, target: int | str) -> int:
        return class_index(self.labels, self.num_classes, target)

    def mask(self, target: int | str) -> torch.Tensor:
        """(H, W) bool: the pixels predicted as class ``target`` (index or name)."""
        return self.class_map == self.class_index(target)

    def region_at(self, x: int, y: int) -> tuple[int, torch.Tensor]:
        """The class at pixel (x, y) and its connected region there (H, W, bool): one
        character's hair in a crowd, where :meth:`mask` holds every character's."""
        height, width = self.size
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(
                f"expected a point inside the {width}x{height} picture, got ({x}, {y})"
            )
        index = int(self.class_map[y, x])
        return index, connected_region(self.class_map == index, x, y)

    def shares(self) -> dict[str, float]:
        """Share of the picture's pixels predicted as each class, by name."""
        counts = torch.bincount(self.class_map.reshape(-1), minlength=self.num_classes)
        total = max(1, self.class_map.numel())
        return {self.name(k): float(counts[k]) / total for k in range(self.num_classes)}

    def present(self) -> list[int]:
        """The classes that hold at least one pixel, background included."""
        return [int(k) for k in torch.unique(self.class_map).tolist()]

    def to_dict(self) -> dict[str, Any]:
        counts = torch.bincount(self.class_map.reshape(-1), minlength=self.num_classes)
        classes = []
        for k in range(self.num_classes):
            inside = self.class_map == k
            mean = float(self.probabilities[k][inside].mean()) if int(counts[k]) else None
            classes.append(
                {
                    "index": k,
                    "name": self.name(k),
                    "pixels": int(counts[k]),
                    "share": round(float(counts[k]) / max(1, self.class_map.numel()), 5),
                    "mean_probability": round(mean, 5) if mean is not None else None,
                }
            )
        return {"size": list(self.size), "classes": classes, "settings": self.settings}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def colours(self) -> dict[int, tuple[int, int, int]]:
        """The colour of each class in :meth:`draw` (tab10, by class index)."""
        return {k: PALETTE[k % len(PALETTE)] for k in range(self.num_classes)}

    def draw(
        self,
        picture: Any = None,
        *,
        alpha: float = 0.55,
        min_side: int = 384,
        legend: bool = True,
        highlight: int | None = None,
        font_size: int | None = None,
    ) -> Image.Image:
        """The predicted classes as coloured masks over the picture (``alpha`` of the colour,
        the background class left clear), with the outline of each region and, under the
        picture, a legend of the classes present with their share of the pixels. A picture
        shorter than ``min_side`` is enlarged by a whole factor (each pixel a block) first;
        ``highlight``: only that class painted, the others left clear."""
        if not 0 <= alpha <= 1:
            raise ValueError(f"expected alpha in [0, 1], got {alpha}")
        source = picture if picture is not None else self.picture
        if source is None:
            raise ValueError("expected a picture to draw on")
        base = to_pil(source).convert("RGB")
        if base.size != (self.size[1], self.size[0]):
            base = base.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        classes = self.class_map.numpy()
        colours = self.colours()
        lut = np.array([colours[k] for k in range(self.num_classes)], np.float64)
        img = np.asarray(base, np.float64)
        painted = classes != (self.background if self.background is not None else -1)
        if highlight is not None:
            painted &= classes == highlight
        mixed = np.where(painted[..., None], (1 - alpha) * img + alpha * lut[classes], img)
        edge = np.zeros_like(painted)
        edge[:-1] |= classes[:-1] != classes[1:]
        edge[:, :-1] |= classes[:, :-1] != classes[:, 1:]
        mixed = np.where((edge & painted)[..., None], lut[classes], mixed)
        out = Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))
        factor = max(1, math.ceil(min_side / min(out.size))) if min_side else 1
        if factor > 1:
            out = out.resize((out.width * factor, out.height * factor), Image.Resampling.NEAREST)
        return self._with_legend(out, font_size) if legend else out

    def _with_legend(self, out: Image.Image, font_size: int | None) -> Image.Image:
        """``out`` above a legend: a swatch and the share of the pixels of each class shown."""
        colours, shares = self.colours(), self.shares()
        shown = [k for k in self.present() if k != self.background]
        items = [(colours[k], f"{self.name(k)} {shares[self.name(k)]:.1%}") for k in shown]
        if not items:
            items = [((127, 127, 127), "nothing but background")]
        font = _font(font_size or max(11, round(min(out.size) / 28)))
        th = _text_height(font)
        pad = max(4, th // 3)
        rows: list[list[tuple[tuple[int, int, int], str]]] = [[]]
        x: float = pad
        for colour, text in items:
            width = th + pad + font.getlength(text) + 2 * pad
            if rows[-1] and x + width > out.width:
                rows.append([])
                x = pad
            rows[-1].append((colour, text))
            x += width
        canvas = Image.new("RGB", (out.width, out.height + len(rows) * (th + pad) + pad), "white")
        canvas.paste(out, (0, 0))
        draw = ImageDraw.Draw(canvas)
        y = out.height + pad
        for row in rows:
            x = float(pad)
            for colour, text in row:
                draw.rectangle([x, y, x + th, y + th], fill=colour)
                draw.text((x + th + pad, y), text, fill=(0, 0, 0), font=font)
                x += th + pad + font.getlength(text) + 2 * pad
            y += th + pad
        return canvas

    def save(self, out_dir: str | os.PathLike[str], stem: str = "segmentation") -> list[Path]:
        """``<stem>.png`` (the masks drawn, with the legend), ``<stem>.classes.png`` (the class
        map as 8-bit class indices) and ``<stem>.json`` in ``out_dir``."""
        from convlens.core.render import save_png, write_atomic

        folder = Path(os.fspath(out_dir))
        folder.mkdir(parents=True, exist_ok=True)
        paths = [write_atomic(folder / f"{stem}.json", self.to_json().encode())]
        if self.num_classes <= 256:
            classes = Image.fromarray(self.class_map.numpy().astype(np.uint8))
            paths.insert(0, save_png(classes, folder / f"{stem}.classes.png"))
        if self.picture is not None:
            paths.insert(0, save_png(self.draw(), folder / f"{stem}.png"))
        return paths

    def _repr_png_(self) -> bytes:
        from convlens.core.render import png_bytes

        return png_bytes(self.draw())

    def __repr__(self) -> str:
        shares = self.shares()
        shown = ", ".join(
            f"{self.name(k)} {shares[self.name(k)]:.1%}"
            for k in self.present()
            if k != self.background
        )
        return f"Segmentation({self.size[0]}x{self.size[1]}: {shown or 'background only'})"


def is_segmentation_module(module: torch.nn.Module) -> bool:
    """Whether a network is a segmenter by what it is: one of torchvision's segmentation
    models (FCN, DeepLabV3, LR-ASPP), our toon segmentation network, or a module that says
    ``task = "segment"``."""
    kind = type(module).__module__
    return kind.startswith("torchvision.models.segmentation") or (
        getattr(module, "task", None) == "segment"
    )


class Segmenter:
    """A segmentation network with its class names and preprocessing.

    ``module``: torchvision's convention (see the module docstring). ``labels``: class names by
    index. ``preprocess``: a :class:`~convlens.core.model.Preprocessing`: how a picture is
    resized or cropped (none by default) and normalised (ImageNet's mean and std by default,
    what torchvision's segmentation weights expect); pixels given as a tensor are taken as
    they are. ``layer``: the layer region CAMs read by default. ``background``: the class
    index left clear in drawings and left out of the foreground mean IoU (``None``: none).
    """

    task = "segment"

    def __init__(
        self,
        module: torch.nn.Module,
        labels: Sequence[str] | None = None,
        *,
        name: str = "segmenter",
        preprocess: Preprocessing | None = None,
        layer: str | None = None,
        background: int | None = 0,
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"expected a segmentation nn.Module, got {type(module).__name__}")
        if background is not None and (isinstance(background, bool) or background < 0):
            raise ValueError(f"expected background a class index or None, got {background!r}")
        if preprocess is not None and not isinstance(preprocess, Preprocessing):
            raise TypeError(f"expected a Preprocessing, got {type(preprocess).__name__}")
        self.module = module
        self.labels = [str(n) for n in labels] if labels is not None else None
        self.name = name
        self.preprocess = preprocess or PLAIN
        self.layer = layer
        self.background = background

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"Segmenter({self.name!r}, {len(self.labels or [])} classes)"

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) pixels in [0, 1] -> what the network takes (normalised)."""
        return self.preprocess.normalize(pixels)

    def label(self, index: int) -> str:
        if self.labels is not None and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)

    def class_index(self, target: int | str, count: int | None = None) -> int:
        """A class index from an index or a name; ``count``: the number of classes when the
        segmenter has no labels to count."""
        return class_index(self.labels, len(self.labels) if self.labels else count, target)

    def prepare(self, images: Any) -> tuple[torch.Tensor, list[Image.Image]]:
        """(N, 3, H, W) pixels in [0, 1] on the CPU and the pictures as the segmenter sees
        them, from paths, PIL, arrays (resized / cropped by ``preprocess``) or pixels (taken
        as they are; integers are divided by 255)."""
        from convlens.core.images import load_images, to_tensor

        if isinstance(images, torch.Tensor):
            x = images.unsqueeze(0) if images.dim() == 3 else images
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(
                    f"expected pixels (N, 3, H, W) in [0, 1], got {tuple(images.shape)}"
                )
            x = x.detach().float().cpu() if x.is_floating_point() else x.float().cpu() / 255
            return x, [to_pil(p) for p in x.clamp(0, 1)]
        pictures = [self.preprocess.picture(im) for _, im in load_images(images)]
        sizes = {p.size for p in pictures}
        if len(sizes) > 1:
            raise ValueError(f"expected pictures of one size in a batch, got {sorted(sizes)}")
        return torch.stack([to_tensor(p) for p in pictures]), pictures

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W) logits for pixels (N, 3, H, W) in [0, 1], with gradients when the
        caller records them (no inference mode, no eval switch: see :meth:`raw`)."""
        return segmentation_logits(self.module(self.to_input(pixels)), pixels.shape[-2:])

    def raw(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W) logits on the CPU for (N, 3, H, W) pixels in [0, 1], in eval and
        inference mode (the module's flags come back as they were)."""
        from convlens.core.hooks import preserved

        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pictures (N, 3, H, W), got {tuple(pixels.shape)}")
        with preserved(self.module), torch.inference_mode():
            out = self.logits(pixels.to(self.device))
        if self.labels is not None and out.shape[1] != len(self.labels):
            raise ValueError(
                f"{self.name} gives {out.shape[1]} class maps but has {len(self.labels)} labels"
            )
        return out.float().cpu()

    def class_maps(self, images: Any, *, batch_size: int = 32) -> torch.Tensor:
        """(N, H, W) long: the predicted class of every pixel, ``batch_size`` pictures at a
        time (no probabilities kept: for scoring many pictures)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size!r}")
        pixels, _ = (
            (images if images.is_floating_point() else images.float() / 255, [])
            if isinstance(images, torch.Tensor) and images.dim() == 4
            else self.prepare(images)
        )
        parts = [
            self.raw(pixels[s : s + batch_size]).argmax(1)
            for s in range(0, len(pixels), batch_size)
        ]
        return torch.cat(parts)

    def __call__(self, images: Any) -> list[Segmentation]:
        """One :class:`Segmentation` per picture (paths, PIL, arrays, or (N, 3, H, W) pixels
        in [0, 1])."""
        pixels, pictures = self.prepare(images)
        logits = self.raw(pixels)
        probabilities = logits.softmax(1)
        return [
            Segmentation(
                logits[i].argmax(0),
                probabilities[i],
                self.labels,
                pictures[i],
                self.background,
                {"segmenter": self.name},
            )
            for i in range(len(pixels))
        ]


# -- checkpoints -------------------------------------------------------------------------------


def save(
    module: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    architecture: Mapping[str, Any],
    classes: Sequence[str],
    preprocess: Preprocessing,
    layer: str | None = None,
    background: int | None = 0,
    name: str = "segmenter",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """A checkpoint of tensors and plain data only (read with ``weights_only=True``): the
    architecture's registered name and options (``{"name": "toon_segnet", ...}``, rebuilt by
    :func:`convlens.core.architectures.build`), the state dict, the class names, the
    normalisation (mean and std; a segmenter checkpoint keeps the picture's size), the default
    layer and the background class."""
    from convlens.core.render import write_atomic

    if preprocess.resize is not None or preprocess.crop is not None:
        raise ValueError("a segmenter checkpoint keeps the picture's size: no resize or crop")
    buffer = io.BytesIO()
    torch.save(
        {
            "format": FORMAT,
            "version": 1,
            "architecture": dict(architecture),
            "classes": list(classes),
            "preprocess": {"mean": list(preprocess.mean), "std": list(preprocess.std)},
            "layer": layer,
            "background": background,
            "name": name,
            "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
            "extra": json.loads(json.dumps(dict(extra or {}))),
        },
        buffer,
    )
    return write_atomic(path, buffer.getvalue())


def from_content(content: Mapping[str, Any], path: str | os.PathLike[str]) -> Segmenter:
    """The :class:`Segmenter` of a loaded :func:`save` checkpoint (the network rebuilt from
    its registered architecture, its weights filled in strictly)."""
    from convlens.core import architectures
    from convlens.core.errors import ModelLoadError

    if content.get("format") != FORMAT or content.get("version") != 1:
        raise ModelLoadError(f"{path} is not a {FORMAT} checkpoint of version 1")
    try:
        options = dict(content["architecture"])
        module = architectures.build(options.pop("name"), **options)
        module.load_state_dict(content["state_dict"], strict=True)
        pre = content["preprocess"]
        preprocess = Preprocessing(
            crop=None, resize=None, mean=tuple(pre["mean"]), std=tuple(pre["std"])
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"{path} is a broken {FORMAT} checkpoint: {err}") from None
    return Segmenter(
        module.eval(),
        list(content["classes"]),
        name=str(content.get("name") or Path(os.fspath(path)).stem),
        preprocess=preprocess,
        layer=content.get("layer"),
        background=content.get("background", 0),
    )


def load(path: str | os.PathLike[str]) -> Segmenter:
    """The :class:`Segmenter` in a :func:`save` checkpoint (read with ``weights_only=True``)."""
    content = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(content, Mapping):
        raise ValueError(f"{path} is not a {FORMAT} checkpoint")
    return from_content(content, path)
