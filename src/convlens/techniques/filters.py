"""What the filters of a conv layer look like: their weights, drawn.

- A layer whose filters see RGB (the first layer) is drawn as one colour patch per filter:
  the ``(3, kh, kw)`` weights shown as an RGB image, ``0.5 + 0.5 * w / scale`` per channel, so
  grey is 0, and a red patch is a filter that wants red.
- Deeper layers: ``view="channels"`` draws each filter's ``in_channels`` slices as a row of
  grey tiles (one row per filter), ``view="mean"`` reduces each filter over its input channels
  to one ``(kh, kw)`` map, ``view="norm"`` shows the L2 norm over input channels (how strongly
  each tap listens, whatever the sign).
- ``scale="shared"``: one scale for the whole layer (``max |w|`` over all shown filters), so
  filters compare with each other; ``scale="per_filter"``: each filter by its own ``max |w|``,
  so every pattern is visible. The scale is written on the picture.

Only the first ``max_filters`` filters (64 by default) are drawn; the weights are read, never
changed, and no forward pass is run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from convlens.core import render
from convlens.core.model import Model
from convlens.core.naming import get_layer, parse_layer

__all__ = ["SCALES", "VIEWS", "FilterView", "filter_weights"]

VIEWS = ("auto", "rgb", "channels", "mean", "norm")
SCALES = ("shared", "per_filter")


@dataclass
class FilterView:
    """The drawn filters of one layer.

    ``weights`` is the ``(F, C, kh, kw)`` float32 CPU copy of the filters shown; ``figure`` the
    labelled grid; ``tiles`` one picture per filter (enlarged); ``view`` and ``scale`` what was
    drawn and how; ``scales`` the ``max |w|`` used for each filter (all equal for
    ``"shared"``).
    """

    layer: str
    weights: torch.Tensor
    view: str
    scale: str
    scales: list[float]
    figure: render.Figure
    tiles: list[Image.Image]

    @property
    def image(self) -> Image.Image:
        return self.figure.image

    def save(self, path: str | os.PathLike[str]) -> Path:
        """The grid as PNG (``path`` a .png file or a folder, which gets ``<layer>.png``)."""
        target = Path(path)
        if target.suffix.lower() != ".png":
            target = target / f"{self.layer}.png"
        return self.figure.save(target)

    def _repr_png_(self) -> bytes:
        return self.figure._repr_png_()

    def __repr__(self) -> str:
        f, c, kh, kw = self.weights.shape
        return f"FilterView({self.layer!r}, {f} filters {c}x{kh}x{kw}, {self.view}, {self.scale})"


def _conv_weight(module: nn.Module, layer: str) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
        raise ValueError(
            f"expected a conv layer with a (F, C, kh, kw) weight, got {type(module).__name__} "
            f"{layer!r} with weight {shape}; name the conv inside a block, e.g. 'features.0.0'"
        )
    w = weight.detach().float().cpu()
    if isinstance(module, nn.ConvTranspose2d):
        w = w.transpose(0, 1)
    return w


def filter_weights(
    model: Model | nn.Module,
    layer: str,
    *,
    view: str = "auto",
    scale: str = "shared",
    max_filters: int = 64,
    tile: int = 32,
    ncols: int | None = None,
) -> FilterView:
    """Draw the filters of conv layer ``layer`` (``"features.0.0"``; ``"layer:7"`` for one
    filter).

    ``view``: ``"auto"`` (``"rgb"`` when the filters have 3 input channels, else
    ``"channels"`` up to 16 input channels and ``"mean"`` above), ``"rgb"``, ``"channels"``,
    ``"mean"`` or ``"norm"``; ``scale``: ``"shared"`` or ``"per_filter"``; ``tile``: the side
    in pixels of each drawn kernel (nearest-neighbour enlargement, so taps stay square).
    """
    module = model.module if isinstance(model, Model) else model
    ref = parse_layer(layer)
    weight = _conv_weight(get_layer(module, ref.name), ref.name)
    if view not in VIEWS:
        raise ValueError(f"expected view among {VIEWS}, got {view!r}")
    if scale not in SCALES:
        raise ValueError(f"expected scale among {SCALES}, got {scale!r}")
    if max_filters < 1:
        raise ValueError(f"expected max_filters >= 1, got {max_filters}")
    if ref.channel is not None:
        if not 0 <= ref.channel < weight.shape[0]:
            raise ValueError(
                f"layer {ref.name!r} has {weight.shape[0]} filters, got filter {ref.channel}"
            )
        indices = [ref.channel]
    else:
        indices = list(range(min(max_filters, weight.shape[0])))
    w = weight[indices]
    in_channels = w.shape[1]
    if view == "auto":
        view = "rgb" if in_channels == 3 else ("channels" if in_channels <= 16 else "mean")
    if view == "rgb" and in_channels != 3:
        raise ValueError(f"view='rgb' needs filters over 3 input channels, got {in_channels}")

    if view == "mean":
        shown = w.mean(1, keepdim=True)
    elif view == "norm":
        shown = w.pow(2).sum(1, keepdim=True).sqrt()
    else:
        shown = w
    peak = shown.abs().flatten(1).amax(1).clamp_min(1e-12)
    if scale == "shared":
        peak = torch.full_like(peak, float(peak.max()))
    scales = [float(v) for v in peak]

    tiles = [_tile(shown[i], view, scales[i], tile) for i in range(len(indices))]
    labels = [
        str(index) if scale == "shared" else f"{index} ±{s:.2g}"
        for index, s in zip(indices, scales, strict=True)
    ]

    if ncols is None:
        ncols = 1 if view == "channels" and len(tiles) > 1 and in_channels > 4 else None
        if ncols is None:
            ncols = math.ceil(math.sqrt(len(tiles)))
    what = {
        "rgb": "RGB patches (grey = 0)",
        "channels": "one tile per input channel (grey = 0, white +, black -)",
        "mean": "mean over input channels (blue -, red +)",
        "norm": "L2 norm over input channels",
    }[view]
    how = (
        f"shared scale ±{scales[0]:.3g}"
        if scale == "shared"
        else "each filter scaled to its own max |w|"
    )
    if view == "norm":
        how = how.replace("±", "0..")
    title = f"{ref.name}: {weight.shape[0]} filters {tuple(weight.shape[1:])}; {what}; {how}"
    picture = render.grid(tiles, ncols=ncols, labels=labels, title=title)
    return FilterView(
        layer=ref.name,
        weights=w.clone(),
        view=view,
        scale=scale,
        scales=scales,
        figure=render.Figure(picture, caption=title),
        tiles=tiles,
    )


def _tile(f: torch.Tensor, view: str, s: float, tile: int) -> Image.Image:
    """One filter (C, k, k) drawn as ``view`` at the scale ``s`` (its largest |w| shown)."""
    if view == "rgb":
        return _enlarge(render.to_pil((0.5 + 0.5 * f / s).clamp(0, 1)), tile)
    if view == "norm":
        return _enlarge(render.heatmap(f[0], "magma", norm="absolute", vmin=0, vmax=s), tile)
    if view == "mean":
        heat = render.heatmap(f[0], "coolwarm", norm="absolute", vmin=-s, vmax=s, signed=True)
        return _enlarge(heat, tile)
    row = [
        _enlarge(render.heatmap(f[c], "gray", norm="absolute", vmin=-s, vmax=s), tile)
        for c in range(f.shape[0])
    ]
    return render.grid(row, ncols=len(row), pad=1, background=(200, 200, 200))


def _enlarge(image: Image.Image, tile: int) -> Image.Image:
    w, h = image.size
    factor = max(1, round(tile / max(w, h)))
    return image.resize((w * factor, h * factor), Image.Resampling.NEAREST)
