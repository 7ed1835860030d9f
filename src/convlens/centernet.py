"""A small single-stage, anchor-free detector (CenterNet, Zhou et al. 2019, "Objects as
Points"), sized to train on a CPU in minutes: the toon detector.

The network predicts, on a grid of stride 8, one heat map per class (the object's centre is a
peak), the box's width and height, and the centre's sub-cell offset. In eval mode it decodes
its own output into torchvision's detection convention (one dict of ``boxes``, ``labels``,
``scores`` per picture, before any threshold or NMS, which :class:`~convlens.detection.Detector`
applies), so every detector tool here takes it as it takes any other.

:func:`train_detector` fits it on toons ``crowd`` frames (or any pictures with boxes) with
box-aware augmentation (horizontal flips; shifts and zooms that move the boxes with the
picture), Adam, the same seed habits as the classifier trainer, and a checkpoint read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 8
FORMAT = "convlens-centernet"


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class CenterNet(nn.Module):
    """Backbone of four conv blocks (strides 2, 2, 2, 1), then three 1x1 heads: ``heatmap``
    (classes), ``size`` (w, h in pixels / 64) and ``offset`` (x, y within the cell).

    ``forward`` in training mode returns the raw head outputs; in eval mode the decoded
    detections: the ``top_k`` highest local maxima (3x3) of the class heat maps."""

    def __init__(self, num_classes: int, width: int = 48, top_k: int = 20) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.top_k = top_k
        self.width = width
        self.backbone = nn.Sequential(
            _block(3, width // 2, 2),
            _block(width // 2, width, 2),
            _block(width, width * 2, 2),
            _block(width * 2, width * 2, 1),
        )
        self.heatmap = nn.Conv2d(width * 2, num_classes, 1)
        self.size = nn.Conv2d(width * 2, 2, 1)
        self.offset = nn.Conv2d(width * 2, 2, 1)
        with torch.no_grad():  # start with a low prior for "centre here" (focal-loss habit)
            assert self.heatmap.bias is not None
            nn.init.constant_(self.heatmap.bias, -2.19)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.backbone(x)
        return {"heatmap": self.heatmap(f), "size": self.size(f), "offset": self.offset(f)}

    def forward(self, images: Any) -> Any:
        x = torch.stack(list(images)) if isinstance(images, (list, tuple)) else images
        out = self.heads(x)
        if self.training:
            return out
        return decode(out, self.top_k)


def decode(out: dict[str, torch.Tensor], top_k: int) -> list[dict[str, torch.Tensor]]:
    """Head outputs -> per picture the ``top_k`` peaks as boxes (pixels), labels, scores."""
    heat = torch.sigmoid(out["heatmap"])
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    n, c, h, w = heat.shape
    scores, index = peaks.flatten(1).topk(min(top_k, c * h * w))
    labels = index // (h * w)
    cell = index % (h * w)
    cy, cx = (cell // w).float(), (cell % w).float()
    size = out["size"].flatten(2)  # (N, 2, h*w)
    offset = out["offset"].flatten(2)
    gather = cell.unsqueeze(1).expand(-1, 2, -1)
    wh = size.gather(2, gather).clamp_min(0) * 64.0
    off = offset.gather(2, gather)
    x = (cx + off[:, 0]) * STRIDE
    y = (cy + off[:, 1]) * STRIDE
    boxes = torch.stack(
        [x - wh[:, 0] / 2, y - wh[:, 1] / 2, x + wh[:, 0] / 2, y + wh[:, 1] / 2], -1
    )
    return [{"boxes": boxes[i], "labels": labels[i], "scores": scores[i]} for i in range(n)]


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


def augment(
    pixels: torch.Tensor,
    boxes: list[list[tuple[int, float, float, float, float]]],
    gen: torch.Generator,
) -> tuple[torch.Tensor, list[list[tuple[int, float, float, float, float]]]]:
    """Box-aware augmentation of a batch (N, 3, H, W): a horizontal flip (half the pictures)
    and a zoom of 0.8-1.2 with a shift, applied to the picture and its boxes together (boxes
    clipped to the picture; ones left under 4 pixels dropped)."""
    n, _, h, w = pixels.shape
    flip = torch.rand(n, generator=gen) < 0.5
    zoom = 0.8 + 0.4 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.3  # of the picture's size
    out = pixels.clone()
    out[flip] = out[flip].flip(-1)
    # output pixel u maps to input (u - c - shift) / zoom + c in normalised coordinates
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / zoom
    theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = -shift * 2 / zoom.unsqueeze(1)
    grid = F.affine_grid(theta, list(out.shape), align_corners=False)
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


# -- training -------------------------------------------------------------------------------------


def train_detector(
    pixels: torch.Tensor,
    boxes: list[list[tuple[int, float, float, float, float]]],
    classes: Sequence[str],
    *,
    val: tuple[torch.Tensor, list[list[tuple[int, float, float, float, float]]]] | None = None,
    epochs: int = 12,
    batch_size: int = 32,
    lr: float = 2e-3,
    width: int = 48,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[CenterNet, dict[str, Any]]:
    """Fit a :class:`CenterNet` on pictures (N, 3, H, W) in [0, 1] with boxes per picture.
    Keeps the weights of the epoch with the best validation mAP@0.5 (when ``val`` is given);
    writes ``out/model.pt`` (a ``convlens-centernet`` checkpoint) and ``out/metrics.json``."""
    from convlens.detection import Detector, mean_average_precision

    if pixels.dim() != 4 or len(pixels) != len(boxes):
        raise ValueError(
            f"expected pictures (N, 3, H, W) and one box list each, got {tuple(pixels.shape)} "
            f"and {len(boxes)} lists"
        )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = CenterNet(len(classes), width=width)
    torch.random.set_rng_state(state)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(pixels) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    size = (pixels.shape[2], pixels.shape[3])
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(pixels), generator=gen)
        total, count, start = 0.0, 0, time.perf_counter()
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            x, b = augment(pixels[idx], [boxes[int(i)] for i in idx], gen)
            value = loss(model.heads(x), targets(b, len(classes), size))
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            schedule.step()
            total += float(value.detach()) * len(idx)
            count += len(idx)
        record = {"epoch": epoch + 1, "loss": total / count, "seconds": time.perf_counter() - start}
        if val is not None:
            model.eval()
            detector = Detector(model, list(classes), score_threshold=0.3)
            found = []
            for v in range(0, len(val[0]), 64):
                found += detector(val[0][v : v + 64])
            truths = [([bx[1:] for bx in pic], [bx[0] for bx in pic]) for pic in val[1]]
            record["val_map50"] = mean_average_precision(found, truths)["map"]
            if best is None or record["val_map50"] > best[0]:
                best = (record["val_map50"], {k: v.clone() for k, v in model.state_dict().items()})
        history.append(record)
        if progress is not None:
            progress(json.dumps(record))
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    metrics = {"history": history, "best_val_map50": best[0] if best else None, "seed": seed}
    if out is not None:
        folder = Path(os.fspath(out))
        folder.mkdir(parents=True, exist_ok=True)
        save(model, classes, folder / "model.pt")
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return model, metrics


def save(model: CenterNet, classes: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """A checkpoint of tensors and plain data only (read with ``weights_only=True``)."""
    import io

    from convlens.render import write_atomic

    buffer = io.BytesIO()
    torch.save(
        {
            "format": FORMAT,
            "version": 1,
            "classes": list(classes),
            "width": model.width,
            "top_k": model.top_k,
            "state_dict": model.state_dict(),
        },
        buffer,
    )
    return write_atomic(path, buffer.getvalue())


def load(path: str | os.PathLike[str]) -> tuple[CenterNet, list[str]]:
    """The network and its class names from a :func:`save` checkpoint."""
    data = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint")
    classes = list(data["classes"])
    model = CenterNet(len(classes), width=int(data["width"]), top_k=int(data["top_k"]))
    model.load_state_dict(data["state_dict"], strict=True)
    return model.eval(), classes


def toon_frames(
    n: int, *, split: str = "train", seed: int = 0, size: int = 128
) -> tuple[torch.Tensor, list[list[tuple[int, float, float, float, float]]]]:
    """``crowd`` toon frames as (N, 3, size, size) pixels and per-frame boxes."""
    from convlens.data import toons

    data = toons.generate(n, variant="crowd", split=split, seed=seed, size=size)
    pixels = torch.as_tensor(np.asarray(data.pixels)).permute(0, 3, 1, 2).float() / 255
    boxes = [[(int(b[0]), *map(float, b[1:])) for b in frame] for frame in data.boxes]
    return pixels, boxes  # type: ignore[return-value]
