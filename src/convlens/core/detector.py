"""Detectors: the detector handle, its boxes with labels and scores, the box maths they need
(IoU, NMS) and drawing.

A detector here is any network that follows torchvision's detection convention: in eval
mode, ``module(images)`` takes a list of (3, H, W) tensors in [0, 1] (or an (N, 3, H, W)
batch) and returns one dict per image with ``boxes`` (K, 4) in pixels as (x0, y0, x1, y1),
``labels`` (K,) and ``scores`` (K,). :class:`Detector` wraps one with its class names and the
three settings every user tunes: the score threshold, the IoU threshold of non-maximum
suppression, and the most detections kept. Its ``task`` is ``detect``.

Boxes are in the pixel coordinates of the picture the detector saw, x right and y down, with
x1 > x0 and y1 > y0; a box of zero width or height is degenerate and is dropped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from convlens.core.render import PALETTE, _font, _text_height, to_pil


def check_thresholds(score_threshold: float, iou_threshold: float, max_detections: int) -> None:
    """Refuse settings out of range, saying what was expected."""
    if not 0 <= score_threshold <= 1:
        raise ValueError(f"expected score_threshold in [0, 1], got {score_threshold}")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"expected iou_threshold in (0, 1], got {iou_threshold}")
    if (
        isinstance(max_detections, bool)
        or not isinstance(max_detections, int)
        or max_detections < 1
    ):
        raise ValueError(f"expected max_detections >= 1, got {max_detections!r}")


def _as_boxes(boxes: Any) -> torch.Tensor:
    b = torch.as_tensor(boxes, dtype=torch.float32)
    if b.numel() == 0:
        return b.reshape(0, 4)
    if b.dim() != 2 or b.shape[1] != 4:
        raise ValueError(f"expected boxes (N, 4) as (x0, y0, x1, y1), got {tuple(b.shape)}")
    if not torch.isfinite(b).all():
        raise ValueError("boxes hold NaN or infinite coordinates")
    return b


def box_area(boxes: Any) -> torch.Tensor:
    """(N,) areas; degenerate boxes (x1 <= x0 or y1 <= y0) have area 0."""
    b = _as_boxes(boxes)
    return (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)


def box_iou(a: Any, b: Any) -> torch.Tensor:
    """(N, M) intersection over union of two sets of boxes (0 where the union is empty)."""
    a, b = _as_boxes(a), _as_boxes(b)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp_min(0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def nms(boxes: Any, scores: Any, iou_threshold: float, labels: Any | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the boxes kept, highest score first. A box is
    dropped when its IoU with a kept, higher-scoring box is above ``iou_threshold`` (ties in
    score keep the earlier box). With ``labels``, only boxes of the same class suppress each
    other."""
    b = _as_boxes(boxes)
    s = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    if len(s) != len(b):
        raise ValueError(f"expected one score per box, got {len(s)} scores for {len(b)} boxes")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"expected iou_threshold in (0, 1], got {iou_threshold}")
    if len(b) == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.as_tensor(
        sorted(range(len(s)), key=lambda i: (-float(s[i]), i)), dtype=torch.long
    )
    iou = box_iou(b[order], b[order])
    if labels is not None:
        lab = torch.as_tensor(labels).reshape(-1)[order]
        iou = iou * (lab[:, None] == lab[None, :])
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= iou[i, i + 1 :] <= iou_threshold
    return order[keep]


@dataclass(frozen=True)
class Detection:
    """One box: (x0, y0, x1, y1) in pixels, its class index and name, and its score."""

    box: tuple[float, float, float, float]
    label: int
    name: str
    score: float
    index: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(v, 2) for v in self.box],
            "label": self.label,
            "name": self.name,
            "score": round(self.score, 5),
        }


@dataclass
class Detections(Sequence[Detection]):
    """The detections in one picture, highest score first."""

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    names: list[str] | None = None
    picture: Image.Image | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, i: int) -> Detection:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"detection {i} of {len(self)}")
        i = i % len(self)
        label = int(self.labels[i])
        return Detection(
            tuple(float(v) for v in self.boxes[i]),  # type: ignore[arg-type]
            label,
            self.name(label),
            float(self.scores[i]),
            i,
        )

    def name(self, label: int) -> str:
        if self.names is not None and 0 <= label < len(self.names):
            return str(self.names[label])
        return str(label)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [d.to_dict() for d in self]

    def to_json(self) -> str:
        return json.dumps({"settings": self.settings, "detections": self.to_dicts()}, indent=1)

    def draw(
        self,
        picture: Any = None,
        *,
        highlight: int | None = None,
        width: int | None = None,
        font_size: int | None = None,
        min_side: int = 0,
    ) -> Image.Image:
        """The boxes on the picture: one colour per class, the label and score on a filled tag,
        line width and text scaled to the picture (readable at small sizes); ``highlight``
        draws that box thicker and dims the others. Boxes are clipped to the picture, tags kept
        inside it. A picture shorter than ``min_side`` is first enlarged by a whole factor
        (each pixel a block), so that the tags fit beside what they mark."""
        source = picture if picture is not None else self.picture
        if source is None:
            raise ValueError("expected a picture to draw on")
        base = to_pil(source).convert("RGB")
        factor = max(1, math.ceil(min_side / min(base.size))) if min_side else 1
        if factor > 1:
            size = (base.width * factor, base.height * factor)
            base = base.resize(size, Image.Resampling.NEAREST)
        img = base.copy()
        side = min(img.size)
        line = width or max(2, round(side / 160))
        font = _font(font_size or max(11, round(side / 32)))
        th = _text_height(font)
        draw = ImageDraw.Draw(img, "RGBA")
        order = list(range(len(self)))
        if highlight is not None:
            order = [i for i in order if i != highlight] + [highlight]
        for i in order:
            d = self[i]
            colour = PALETTE[d.label % len(PALETTE)]
            dim = highlight is not None and i != highlight
            rgba = (*colour, 110 if dim else 255)
            x0, y0, x1, y1 = (
                min(max(v * factor, 0.0), float(limit - 1))
                for v, limit in zip(d.box, (img.width, img.height) * 2, strict=True)
            )
            thick = line * 2 if highlight == i else line
            draw.rectangle([x0, y0, max(x1, x0), max(y1, y0)], outline=rgba, width=thick)
            text = f"{d.name} {d.score:.2f}"
            tw = font.getlength(text)
            ty = y0 - th - 4 if y0 - th - 4 >= 0 else y0
            x0 = max(0.0, min(x0, img.width - tw - 6))  # the tag stays inside the picture
            draw.rectangle([x0, ty, x0 + tw + 6, ty + th + 4], fill=rgba)
            light = sum(colour) / 3 > 150
            draw.text(
                (x0 + 3, ty + 2), text, fill=(0, 0, 0) if light else (255, 255, 255), font=font
            )
        return img

    def save(
        self, out_dir: str | os.PathLike[str], stem: str = "detections", *, min_side: int = 384
    ) -> list[Path]:
        """``<stem>.png`` (the boxes drawn, the picture enlarged to at least ``min_side`` pixels
        so the tags are readable) and ``<stem>.json`` in ``out_dir``."""
        from convlens.core.render import save_png, write_atomic

        folder = Path(os.fspath(out_dir))
        folder.mkdir(parents=True, exist_ok=True)
        paths = [write_atomic(folder / f"{stem}.json", self.to_json().encode())]
        if self.picture is not None:
            paths.insert(0, save_png(self.draw(min_side=min_side), folder / f"{stem}.png"))
        return paths

    def _repr_png_(self) -> bytes:
        from convlens.core.render import png_bytes

        return png_bytes(self.draw())

    def __repr__(self) -> str:
        shown = ", ".join(f"{d.name} {d.score:.2f}" for d in list(self)[:5])
        more = f", +{len(self) - 5}" if len(self) > 5 else ""
        return f"Detections({len(self)}: {shown}{more})"


def select(
    boxes: Any,
    labels: Any,
    scores: Any,
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> torch.Tensor:
    """Indices kept after dropping degenerate boxes and low scores, class-wise NMS and the
    cap, highest score first."""
    check_thresholds(score_threshold, iou_threshold, max_detections)
    b = _as_boxes(boxes)
    s = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    lab = torch.as_tensor(labels).reshape(-1)
    if not len(b) == len(s) == len(lab):
        raise ValueError(
            f"expected as many boxes, labels and scores, got {len(b)}, {len(lab)}, {len(s)}"
        )
    ok = torch.nonzero((box_area(b) > 0) & (s >= score_threshold)).reshape(-1)
    kept = nms(b[ok], s[ok], iou_threshold, labels=lab[ok])
    return ok[kept][:max_detections]


def is_detection_module(module: torch.nn.Module) -> bool:
    """Whether a network is a detector by what it is: one of torchvision's detection models
    (R-CNNs, RetinaNet, FCOS, SSD, ...), our CenterNet, or a module that says
    ``task = "detect"``."""
    from convlens.core.architectures.centernet import CenterNet

    kind = type(module).__module__
    return (
        isinstance(module, CenterNet)
        or kind.startswith("torchvision.models.detection")
        or getattr(module, "task", None) == "detect"
    )


class Detector:
    """A detection network with its class names, preprocessing and settings.

    ``module``: torchvision's convention (see the module docstring). ``labels``: class names by
    index. ``to_input``: pictures in [0, 1] (N, 3, H, W) -> what the module takes (default:
    a list of (3, H, W) tensors, as torchvision's detectors want). ``layer``: the layer box
    CAMs read by default (see :func:`default_box_layer`). ``input_size``: (H, W) (or (3, H, W),
    as for a classifier) the network
    was trained at, for a network that finds objects only at the scale it was trained on (the
    toon detector: 128 x 128); pictures of another size are resized to it (bilinear,
    antialiased) and the boxes mapped back to the picture's pixels. ``None`` (default): the
    network takes pictures as they come (torchvision's detectors resize inside).
    """

    task = "detect"

    def __init__(
        self,
        module: torch.nn.Module,
        labels: Sequence[str] | None = None,
        *,
        name: str = "detector",
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        to_input: Callable[[torch.Tensor], Any] | None = None,
        layer: str | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        check_thresholds(score_threshold, iou_threshold, max_detections)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"expected a detection nn.Module, got {type(module).__name__}")
        if input_size is not None:
            size = tuple(input_size)
            if len(size) == 3 and size[0] == 3:  # (3, H, W), as a classifier's Model states it
                size = size[1:]
            if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
                raise ValueError(
                    f"expected input_size as (height, width) or (3, height, width), got "
                    f"{input_size!r}"
                )
            input_size = (size[0], size[1])
        self.input_size = input_size
        self.module = module
        self.labels = list(labels) if labels is not None else None
        self.name = name
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        self.to_input = to_input or (lambda x: list(x))
        self.layer = layer

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    def __repr__(self) -> str:
        size = f", input {self.input_size[0]}x{self.input_size[1]}" if self.input_size else ""
        return (
            f"Detector({self.name!r}, {len(self.labels or [])} classes, "
            f"score>={self.score_threshold}, iou {self.iou_threshold}, max {self.max_detections}"
            f"{size})"
        )

    def fit(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) pixels resized to ``input_size`` (as they are without one, or when they
        have it already; differentiable), and the (4,) factors (x, y, x, y) that take boxes
        found on them back to the given pictures' pixels."""
        height, width = pixels.shape[-2:]
        if self.input_size is None or (height, width) == self.input_size:
            return pixels, torch.ones(4)
        h, w = self.input_size
        resized = torch.nn.functional.interpolate(
            pixels, size=(h, w), mode="bilinear", align_corners=False, antialias=True
        )
        return resized, torch.tensor([width / w, height / h, width / w, height / h])

    def raw(self, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The module's own outputs for (N, 3, H, W) pixels in [0, 1], on the CPU."""
        from convlens.core.hooks import preserved

        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pictures (N, 3, H, W), got {tuple(pixels.shape)}")
        with preserved(self.module), torch.inference_mode():
            fitted, back = self.fit(pixels.to(self.device))
            out = self.module(self.to_input(fitted))
        if not isinstance(out, (list, tuple)) or len(out) != len(pixels):
            raise ValueError(
                "expected the detector to return one dict (boxes, labels, scores) per picture, "
                f"got {type(out).__name__}"
            )
        result = []
        for item in out:
            if not isinstance(item, Mapping) or not {"boxes", "labels", "scores"} <= set(item):
                raise ValueError("expected dicts with boxes, labels and scores from the detector")
            found = {
                k: torch.as_tensor(item[k]).detach().cpu() for k in ("boxes", "labels", "scores")
            }
            if back.ne(1).any():
                found["boxes"] = found["boxes"] * back.to(found["boxes"].dtype)
            result.append(found)
        return result

    def __call__(
        self,
        images: Any,
        *,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> list[Detections]:
        """Detections for each picture (paths, PIL, arrays, or (N, 3, H, W) pixels in [0, 1])."""
        score = self.score_threshold if score_threshold is None else score_threshold
        iou = self.iou_threshold if iou_threshold is None else iou_threshold
        most = self.max_detections if max_detections is None else max_detections
        check_thresholds(score, iou, most)
        settings: dict[str, Any] = {
            "score_threshold": score,
            "iou_threshold": iou,
            "max_detections": most,
        }
        pixels, pictures = _pixels(images)
        out = []
        for raw, picture in zip(self.raw(pixels), pictures, strict=True):
            keep = select(
                raw["boxes"],
                raw["labels"],
                raw["scores"],
                score_threshold=score,
                iou_threshold=iou,
                max_detections=most,
            )
            out.append(
                Detections(
                    raw["boxes"].float()[keep],
                    raw["labels"].long()[keep],
                    raw["scores"].float()[keep],
                    self.labels,
                    picture,
                    dict(settings),
                )
            )
        return out


def _pixels(images: Any) -> tuple[torch.Tensor, list[Image.Image]]:
    """(N, 3, H, W) pixels in [0, 1] and the pictures, from anything pictures come as."""
    from convlens.core.images import load_images, to_tensor

    if isinstance(images, torch.Tensor):
        x = images.unsqueeze(0) if images.dim() == 3 else images
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected pixels (N, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        return x.float(), [to_pil(p) for p in x]
    pictures = [im for _, im in load_images(images)]
    sizes = {p.size for p in pictures}
    if len(sizes) > 1:
        raise ValueError(f"expected pictures of one size in a batch, got {sorted(sizes)}")
    return torch.stack([to_tensor(p) for p in pictures]), pictures
