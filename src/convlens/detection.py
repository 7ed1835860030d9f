"""Detectors: boxes with labels and scores, the box maths they need (IoU, NMS), drawing, and
mean average precision.

A detector here is any network that follows torchvision's detection convention: in eval
mode, ``module(images)`` takes a list of (3, H, W) tensors in [0, 1] (or an (N, 3, H, W)
batch) and returns one dict per image with ``boxes`` (K, 4) in pixels as (x0, y0, x1, y1),
``labels`` (K,) and ``scores`` (K,). :class:`Detector` wraps one with its class names and the
three settings every user tunes: the score threshold, the IoU threshold of non-maximum
suppression, and the most detections kept.

Boxes are in the pixel coordinates of the picture the detector saw, x right and y down, with
x1 > x0 and y1 > y0; a box of zero width or height is degenerate and is dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from convlens.render import PALETTE, _font, _text_height, to_pil

__all__ = [
    "BoxExplanation",
    "Detection",
    "Detections",
    "Detector",
    "box_cam",
    "box_iou",
    "detect",
    "drise",
    "explain_box",
    "mean_average_precision",
    "nms",
]


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
    ) -> Image.Image:
        """The boxes on the picture: one colour per class, the label and score on a filled tag,
        line width and text scaled to the picture (readable at small sizes); ``highlight``
        draws that box thicker and dims the others."""
        source = picture if picture is not None else self.picture
        if source is None:
            raise ValueError("expected a picture to draw on")
        base = to_pil(source).convert("RGB")
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
            x0, y0, x1, y1 = d.box
            thick = line * 2 if highlight == i else line
            draw.rectangle([x0, y0, x1, y1], outline=rgba, width=thick)
            text = f"{d.name} {d.score:.2f}"
            tw = font.getlength(text)
            ty = y0 - th - 4 if y0 - th - 4 >= 0 else y0
            draw.rectangle([x0, ty, x0 + tw + 6, ty + th + 4], fill=rgba)
            light = sum(colour) / 3 > 150
            draw.text(
                (x0 + 3, ty + 2), text, fill=(0, 0, 0) if light else (255, 255, 255), font=font
            )
        return img

    def save(self, out_dir: str | os.PathLike[str], stem: str = "detections") -> list[Path]:
        """``<stem>.png`` (the boxes drawn) and ``<stem>.json`` in ``out_dir``."""
        from convlens.render import save_png, write_atomic

        folder = Path(os.fspath(out_dir))
        folder.mkdir(parents=True, exist_ok=True)
        paths = [write_atomic(folder / f"{stem}.json", self.to_json().encode())]
        if self.picture is not None:
            paths.insert(0, save_png(self.draw(), folder / f"{stem}.png"))
        return paths

    def _repr_png_(self) -> bytes:
        from convlens.render import png_bytes

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
    from convlens.centernet import CenterNet

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
    CAMs read by default (see :func:`default_box_layer`).
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
    ) -> None:
        check_thresholds(score_threshold, iou_threshold, max_detections)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"expected a detection nn.Module, got {type(module).__name__}")
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
        return (
            f"Detector({self.name!r}, {len(self.labels or [])} classes, "
            f"score>={self.score_threshold}, iou {self.iou_threshold}, max {self.max_detections})"
        )

    def raw(self, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The module's own outputs for (N, 3, H, W) pixels in [0, 1], on the CPU."""
        from convlens.hooks import preserved

        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pictures (N, 3, H, W), got {tuple(pixels.shape)}")
        with preserved(self.module), torch.inference_mode():
            out = self.module(self.to_input(pixels.to(self.device)))
        if not isinstance(out, (list, tuple)) or len(out) != len(pixels):
            raise ValueError(
                "expected the detector to return one dict (boxes, labels, scores) per picture, "
                f"got {type(out).__name__}"
            )
        result = []
        for item in out:
            if not isinstance(item, Mapping) or not {"boxes", "labels", "scores"} <= set(item):
                raise ValueError("expected dicts with boxes, labels and scores from the detector")
            result.append(
                {k: torch.as_tensor(item[k]).detach().cpu() for k in ("boxes", "labels", "scores")}
            )
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
    from convlens.images import load_images, to_tensor

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


def detect(
    detector: Detector | str,
    image: Any,
    *,
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
) -> Detections:
    """The detections in one picture (``detector(...)`` takes many). ``detector``: a
    :class:`Detector` or anything :func:`convlens.load` makes one of (``"toon-detector"``)."""
    if not isinstance(detector, Detector):
        from convlens.loading import load

        handle = load(detector)
        if not isinstance(handle, Detector):
            raise TypeError(f"expected a detector, got the classifier {handle.name!r}")
        detector = handle
    found = detector(
        image,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )
    if len(found) != 1:
        raise ValueError(f"expected one picture, got {len(found)}; call the detector for many")
    return found[0]


# -- the detector zoo ------------------------------------------------------------------------------


class MTCNNFaces(torch.nn.Module):
    """MTCNN (Zhang et al. 2016), the real weights shipped in ``facenet-pytorch``, behind
    torchvision's detection convention: pictures in [0, 1] in, one dict of face boxes, labels
    (0, "face") and probabilities out. The three networks' weights are read with
    ``torch.load(weights_only=True)``; the cascade is facenet-pytorch's ``detect_face``."""

    def __init__(self, min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7)):
        super().__init__()
        from facenet_pytorch.models import mtcnn as fm

        folder = Path(fm.__file__).resolve().parent.parent / "data"
        self.pnet, self.rnet, self.onet = fm.PNet(False), fm.RNet(False), fm.ONet(False)
        for net, name in ((self.pnet, "pnet"), (self.rnet, "rnet"), (self.onet, "onet")):
            path = folder / f"{name}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"MTCNN weights missing: {path} (facenet-pytorch)")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.min_face_size = min_face_size
        self.thresholds = list(thresholds)
        self.eval()

    def forward(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        from facenet_pytorch.models.utils.detect_face import detect_face

        batch = torch.stack(list(images)).permute(0, 2, 3, 1) * 255  # (N, H, W, 3) in 0..255
        device = next(self.pnet.parameters()).device
        found, _points = detect_face(
            batch,
            self.min_face_size,
            self.pnet,
            self.rnet,
            self.onet,
            self.thresholds,
            0.709,
            device,
        )
        out = []
        for boxes in found:
            b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 5)
            out.append(
                {
                    "boxes": b[:, :4],
                    "labels": torch.zeros(len(b), dtype=torch.long),
                    "scores": b[:, 4],
                }
            )
        return out


def _toon_detector() -> Detector:
    from convlens import centernet

    folder = Path(__file__).resolve().parent / "data" / "models"
    path = folder / "toon-detector.pt"
    record = json.loads((folder / "toon-detector.json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        raise ValueError(f"{path} does not match its record (sha256 {digest[:12]}...)")
    module, classes = centernet.load(path)
    return Detector(
        module,
        classes,
        name="toon-detector",
        score_threshold=0.3,
        to_input=lambda x: x,
        layer="backbone",
    )


DETECTORS: dict[str, tuple[str, Callable[[], Detector]]] = {
    "mtcnn-faces": (
        "MTCNN face detector, facenet-pytorch's weights (offline)",
        lambda: Detector(MTCNNFaces(), ["face"], name="mtcnn-faces", score_threshold=0.9),
    ),
    "toon-detector": (
        "CenterNet on crowd toons, trained by tools/make_toon_detector.py (shipped)",
        _toon_detector,
    ),
}


def load_detector(name: str) -> Detector:
    """A detector from the zoo by name, or a ``convlens-centernet`` checkpoint file (read with
    ``weights_only=True``)."""
    if name not in DETECTORS:
        path = Path(os.path.expanduser(name))
        if path.suffix in (".pt", ".pth") and path.is_file():
            from convlens import centernet

            module, classes = centernet.load(path)
            return Detector(module, classes, name=path.stem, to_input=lambda x: x, layer="backbone")
        from convlens.naming import unknown

        raise unknown("detector", name, list(DETECTORS))
    try:
        return DETECTORS[name][1]()
    except ImportError as err:
        raise ImportError(
            f"{name} needs facenet-pytorch: pip install --no-deps facenet-pytorch==2.6.0 ({err})"
        ) from None


# -- explaining one box: D-RISE ------------------------------------------------------------------


@dataclass
class BoxExplanation:
    """A saliency map (H, W) for one detection: where the pixels are that keep the detector
    finding that box. ``map`` keeps its sign (negative: pixels whose presence hurts it)."""

    map: torch.Tensor
    target: Detection
    picture: Image.Image
    method: str
    settings: dict[str, Any]

    def energy_in_box(self, box: Sequence[float] | None = None) -> float:
        """Share of the positive attribution inside the target box, or ``box`` (x0, y0, x1, y1)
        (1 = all of it; NaN when nothing is positive)."""
        positive = self.map.clamp_min(0)
        total = float(positive.sum())
        if total <= 0:
            return math.nan
        x0, y0, x1, y1 = (round(float(v)) for v in (self.target.box if box is None else box))
        return float(positive[max(y0, 0) : y1, max(x0, 0) : x1].sum()) / total

    def peak(self) -> tuple[int, int]:
        """(x, y) of the largest value."""
        index = int(self.map.argmax())
        return index % self.map.shape[1], index // self.map.shape[1]

    def overlay(self, *, alpha: float = 0.5, min_side: int = 384) -> Image.Image:
        """The map (jet, positive part, scaled to its maximum) over the picture, with the
        target box drawn on top. A picture shorter than ``min_side`` is enlarged by a whole
        factor (each pixel a block) first, so the label stays small beside what it marks."""
        from convlens import render

        heat = to_pil(render.overlay(self.picture, self.map.clamp_min(0).numpy(), alpha=alpha))
        factor = max(1, math.ceil(min_side / min(heat.size))) if min_side else 1
        if factor > 1:
            heat = heat.resize(
                (heat.width * factor, heat.height * factor), Image.Resampling.NEAREST
            )
        one = Detections(
            torch.tensor([self.target.box]) * factor,
            torch.tensor([self.target.label]),
            torch.tensor([self.target.score]),
            [self.target.name] * (self.target.label + 1),
        )
        return one.draw(heat)

    def _repr_png_(self) -> bytes:
        from convlens.render import png_bytes

        return png_bytes(self.overlay())

    def __repr__(self) -> str:
        return (
            f"BoxExplanation({self.method}, {self.target.name} {self.target.score:.2f}, "
            f"energy in box {self.energy_in_box():.2f})"
        )


def _similarity(target: Detection, raw: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """Per masked picture, D-RISE's best match to the target: max over its detections of
    IoU x class similarity x objectness. With labels and scores only (no class probability
    vectors), the class similarity of one-hot vectors is 1 for the same label and 0 otherwise,
    and the objectness is the score."""
    box = torch.tensor([target.box])
    out = torch.zeros(len(raw))
    for i, found in enumerate(raw):
        if len(found["scores"]) == 0:
            continue
        same = (found["labels"].reshape(-1) == target.label).float()
        weights = box_iou(box, found["boxes"].float())[0] * same * found["scores"].float()
        out[i] = weights.max()
    return out


def drise(
    detector: Detector,
    image: Any,
    target: Detection | int,
    *,
    masks: int = 1000,
    cell: int = 16,
    p: float = 0.5,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> BoxExplanation:
    """D-RISE (Petsiuk et al., CVPR 2021): explain one detection by random masking.

    ``masks`` random binary grids of ``cell`` x ``cell`` cells (each kept with probability
    ``p``), upsampled and shifted as RISE does, multiply the picture; the detector runs on each
    masked copy (its raw outputs, before our thresholds); each mask is weighted by its best
    match to the target (IoU x class x objectness, :func:`_similarity`). The map is the
    weighted average of the masks minus the average weight times the mean mask, so pixels that
    do not matter sit at 0 rather than at a baseline and the share inside the box is
    meaningful. ``target``: a detection or its index among ``detect(detector, image)``. The
    same seed gives the same map.
    """
    from convlens.occlusion import rise_masks

    if masks < 1 or cell < 1 or not 0 < p < 1 or batch_size < 1:
        raise ValueError(
            f"expected masks >= 1, cell >= 1, p in (0, 1), batch_size >= 1; got {masks}, "
            f"{cell}, {p}, {batch_size}"
        )
    pixels, pictures = _pixels(image)
    if len(pixels) != 1:
        raise ValueError(f"expected one picture, got {len(pixels)}")
    target = _resolve_box(detector, pixels, target)
    height, width = pixels.shape[-2:]
    # every mask's grid and shift drawn up front, so a seed gives the same masks (and map)
    # whatever the batch size
    gen = torch.Generator().manual_seed(seed)
    step = (math.ceil(height / cell), math.ceil(width / cell))
    all_grids = (torch.rand(masks, cell, cell, generator=gen) < p).float()
    all_shifts = torch.stack(
        [
            torch.randint(step[0], (masks,), generator=gen),
            torch.randint(step[1], (masks,), generator=gen),
        ],
        dim=1,
    )
    total = torch.zeros(height, width, dtype=torch.float64)
    weighted = torch.zeros(height, width, dtype=torch.float64)
    weight_sum = 0.0
    done = 0
    while done < masks:
        n = min(batch_size, masks - done)
        grids, shifts = all_grids[done : done + n], all_shifts[done : done + n]
        m = rise_masks(grids, shifts, (height, width))
        w = _similarity(target, detector.raw(pixels * m.unsqueeze(1)))
        weighted += torch.einsum("n,nhw->hw", w.double(), m.double())
        total += m.double().sum(0)
        weight_sum += float(w.sum())
        done += n
        if progress is not None:
            progress(done, masks)
    saliency = (weighted - weight_sum * total / masks) / masks
    return BoxExplanation(
        saliency.float(),
        target,
        pictures[0],
        "drise",
        {"masks": masks, "cell": cell, "p": p, "seed": seed},
    )


# -- explaining one box: gradient CAMs -------------------------------------------------------------

BOX_CAMS = ("gradcam", "layercam")
BOX_METHODS = ("drise", *BOX_CAMS)


def default_box_layer(detector: Detector) -> str:
    """The layer box CAMs read when none is given: the detector's own ``layer``; else, for a
    network with a ``backbone`` (torchvision's detectors, our CenterNet), the last stage of
    ``backbone.body`` (the feature extractor under a feature pyramid) or the backbone itself."""
    if detector.layer is not None:
        return detector.layer
    modules = dict(detector.module.named_modules())
    body = modules.get("backbone.body")
    if body is not None:
        children = [name for name, _ in body.named_children()]
        if children:
            return f"backbone.body.{children[-1]}"
    if "backbone" in modules:
        return "backbone"
    raise ValueError(
        f"{detector.name} has no backbone to take a layer from; pass layer= (one of its "
        f"modules with an (N, C, h, w) output, e.g. {list(modules)[-3:]})"
    )


def _match_found(
    target: Detection, boxes: torch.Tensor, labels: torch.Tensor, min_iou: float
) -> int:
    """Index of the detection that is ``target`` again: same class, largest IoU (>= min_iou)."""
    if len(boxes) == 0:
        raise ValueError(f"the detector found nothing where {target.name} {target.box} was")
    box = torch.tensor([target.box])
    overlap = box_iou(box, boxes.detach().float().cpu())[0]
    overlap = overlap * (labels.detach().cpu().reshape(-1) == target.label)
    best = int(overlap.argmax())
    if float(overlap[best]) < min_iou:
        raise ValueError(
            f"the detector finds no {target.name} box with IoU >= {min_iou} against "
            f"{tuple(round(v, 1) for v in target.box)} (best {float(overlap[best]):.2f}); "
            "was the target detected on this picture?"
        )
    return best


def box_cam(
    detector: Detector,
    image: Any,
    target: Detection | int,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    min_iou: float = 0.5,
) -> BoxExplanation:
    """A gradient CAM of one detection's score.

    The detector runs once with gradients; the target is the output detection of the same
    class that overlaps ``target`` most (IoU >= ``min_iou``; before thresholds and NMS), and
    its score is differentiated with respect to ``layer``'s output (default:
    :func:`default_box_layer`). ``method``: ``gradcam`` (channel weights = the spatial mean of
    the gradient) or ``layercam`` (the positive gradient at each position). A detector's box
    score depends on a few positions of the layer, and Grad-CAM's mean turns that into class
    weights that light every object of the class: on crowd toons, boxes whose class appears
    once peak on their own character, two of one class cannot be told apart. Layer-CAM keeps
    the gradient's position and separates them. (Grad-CAM++'s closed form is left out: with
    a gradient at one position its weights no longer follow the gradient.)
    The map is ``relu(sum_c w_c A_c)``, resized bilinearly to the picture; a detector that
    pads its input (torchvision's R-CNNs) has the padding cut off first. Detectors whose
    scores leave torch (MTCNN's cascade) have no gradient: use ``drise``.
    """
    from convlens import cam
    from convlens.hooks import forward_hooks, preserved

    weights_of = {"gradcam": cam.gradcam_weights, "layercam": cam.layercam_weights}
    if method not in weights_of:
        from convlens.naming import unknown

        raise unknown("box CAM method", method, list(weights_of))
    if not 0 < min_iou <= 1:
        raise ValueError(f"expected min_iou in (0, 1], got {min_iou}")
    pixels, pictures = _pixels(image)
    if len(pixels) != 1:
        raise ValueError(f"expected one picture, got {len(pixels)}")
    target = _resolve_box(detector, pixels, target)
    name = layer or default_box_layer(detector)
    captured: list[torch.Tensor] = []
    padded: list[tuple[tuple[int, int], tuple[int, int]]] = []

    def keep(layer_name: str, output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"box CAMs need a layer with an (N, C, h, w) output; {layer_name!r} returned {got}"
            )
        captured.append(output)
        return output.clone()  # in-place layers downstream leave the captured tensor alone

    def sizes(_name: str, output: Any) -> None:
        # torchvision's GeneralizedRCNNTransform returns (ImageList, targets): the resized
        # size of each picture and the padded batch
        first = output[0] if isinstance(output, tuple) else output
        if hasattr(first, "image_sizes") and hasattr(first, "tensors"):
            padded.append((tuple(first.image_sizes[0]), tuple(first.tensors.shape[-2:])))

    transform = ["transform"] if "transform" in dict(detector.module.named_children()) else []
    with preserved(detector.module), torch.inference_mode(False), torch.enable_grad():
        x = pixels.to(detector.device).clone().requires_grad_(True)
        with (
            forward_hooks(detector.module, [name], keep),
            forward_hooks(detector.module, transform, sizes),
        ):
            out = detector.module(detector.to_input(x))
        if len(captured) != 1:
            how = "did not run" if not captured else f"ran {len(captured)} times"
            raise ValueError(f"layer {name!r} {how} in one pass; box CAMs need a layer run once")
        found = out[0]
        best = _match_found(target, found["boxes"], found["labels"], min_iou)
        score = found["scores"][best]
        if not isinstance(score, torch.Tensor) or not score.requires_grad:
            raise ValueError(
                f"{detector.name}'s scores carry no gradient (its pipeline leaves torch), so "
                "gradient CAMs cannot explain it; use method='drise'"
            )
        (grad,) = torch.autograd.grad(score, captured[0], allow_unused=True)
    activations = captured[0].detach()
    if grad is None:
        grad = torch.zeros_like(activations)
    weights = weights_of[method](activations, grad.detach())
    heat = cam.class_activation_map(activations, weights)[0].float().cpu()
    if padded:
        (rh, rw), (ph, pw) = padded[0]
        h, w = heat.shape
        heat = heat[: max(1, round(h * rh / ph)), : max(1, round(w * rw / pw))]
    height, width = pixels.shape[-2:]
    heat = torch.nn.functional.interpolate(
        heat[None, None], size=(height, width), mode="bilinear", align_corners=False
    )[0, 0]
    return BoxExplanation(
        heat,
        target,
        pictures[0],
        method,
        {"layer": name, "min_iou": min_iou, "score": round(float(score.detach()), 5)},
    )


def _resolve_box(detector: Detector, pixels: torch.Tensor, target: Any) -> Detection:
    """A :class:`Detection` from a detection, or its index among the detector's findings."""
    if isinstance(target, Detection):
        return target
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise ValueError(
            f"expected a detection (e.g. dets[1]) or its index as the target, got {target!r}"
        )
    found = detect(detector, pixels)
    if not -len(found) <= target < len(found):
        raise ValueError(f"expected a detection index below {len(found)}, got {target}")
    return found[int(target)]


def explain_box(
    detector: Detector, image: Any, target: Any, method: str = "drise", **options: Any
) -> BoxExplanation:
    """One detection explained by ``method`` (:data:`BOX_METHODS`): D-RISE (:func:`drise`,
    no gradients needed) or a gradient CAM of its score (:func:`box_cam`). ``target``: a
    :class:`Detection` (``dets[1]``) or its index among the detections on ``image``."""
    if target is None:
        raise ValueError("expected target= a detection (e.g. dets[1]) or its index")
    if method == "drise":
        return drise(detector, image, target, **options)
    if method in BOX_CAMS:
        return box_cam(detector, image, target, method=method, **options)
    from convlens.naming import unknown

    raise unknown("detection explanation method", method, list(BOX_METHODS))


# -- mean average precision ----------------------------------------------------------------------


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
        from convlens.render import write_atomic

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
    ``methods`` (:data:`BOX_METHODS`), every detection that matches a ground-truth box (same
    class, IoU >= 0.5) is explained, and scored by the share of positive attribution inside
    that ground-truth box (``energy_in_box``) and whether the map's peak lies in it
    (``pointing``). ``options``: per-method options (``{"drise": {"masks": 500}}``)."""
    from convlens import metrics as m

    if isinstance(data, (str, os.PathLike)):
        from convlens.centernet import read_boxes

        part = read_boxes(data, split)
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
    unknown_methods = [name for name in methods if name not in BOX_METHODS]
    if unknown_methods:
        from convlens.naming import unknown

        raise unknown("detection explanation method", unknown_methods[0], list(BOX_METHODS))
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
