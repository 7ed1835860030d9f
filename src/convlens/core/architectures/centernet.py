"""The toon detector's network: a small single-stage, anchor-free detector (CenterNet, Zhou et
al. 2019, "Objects as Points"), sized to train on a CPU in minutes, and its checkpoint format.

The network predicts, on a grid of stride 8, one heat map per class (the object's centre is a
peak), the box's width and height, and the centre's sub-cell offset. In eval mode it decodes
its own output into torchvision's detection convention (one dict of ``boxes``, ``labels``,
``scores`` per picture, before any threshold or NMS, which
:class:`~convlens.core.detector.Detector` applies), so every detector tool here takes it as it
takes any other. Training (targets, focal loss, box-aware augmentation) is in
:mod:`convlens.workflows.training.detect`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def save(model: CenterNet, classes: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """A checkpoint of tensors and plain data only (read with ``weights_only=True``)."""
    import io

    from convlens.core.render import write_atomic

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
    return from_content(data, path)


def from_content(data: Any, path: str | os.PathLike[str]) -> tuple[CenterNet, list[str]]:
    """The network and its class names from a loaded :func:`save` checkpoint."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint")
    classes = list(data["classes"])
    model = CenterNet(len(classes), width=int(data["width"]), top_k=int(data["top_k"]))
    model.load_state_dict(data["state_dict"], strict=True)
    return model.eval(), classes
