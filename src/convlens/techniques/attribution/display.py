"""How an attribution is drawn: which values (signed, |map| or positive part), on what scale,
with its colour bar and the target's score.

Every map is drawn on a stated scale, :class:`~convlens.core.render.Scale`: by default its own
range (after clipping pixel-level maps to their 1st..99th percentile), ``scale="shared"`` one
range over all maps of a result (pictures stay comparable), or ``scale=(vmin, vmax)``, for
instance :func:`shared_scale` of several results (methods stay comparable; only meaningful
between maps in the same units, such as one method on several targets or models). A map
drawn on its own range always fills the colour map, however weak the evidence; the score
beside the bar says how strongly the model believes in the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from convlens.core import render

ScaleSpec = str | tuple[float, float] | None


def display_maps(result: Any, sign: str | None) -> tuple[torch.Tensor, bool]:
    """The (N, H, W) maps of ``result`` as drawn with ``sign``, and whether they are drawn
    signed (``Attribution._display``)."""
    drawn: tuple[torch.Tensor, bool] = result._display(sign)
    return drawn


def value_range(
    maps: Sequence[Any], *, signed: bool, clip_percentile: float | None = None
) -> tuple[float, float]:
    """``(vmin, vmax)`` over all ``maps`` (each clipped to its ``[p, 100 - p]`` percentiles
    first when ``clip_percentile=p``); symmetric about 0 when ``signed``. A constant map gets
    a range one unit wide (``(-1, 1)`` signed), so it is drawn in one colour, never NaN."""
    lows, highs = [], []
    for m in maps:
        x = np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m, np.float64)
        if clip_percentile:
            low, high = np.percentile(x, [clip_percentile, 100.0 - clip_percentile])
        else:
            low, high = x.min(), x.max()
        lows.append(float(low))
        highs.append(float(high))
    if not lows:
        raise ValueError("expected at least one map to take a scale from")
    low, high = min(lows), max(highs)
    if signed:
        most = max(abs(low), abs(high)) or 1.0
        return -most, most
    return (low, high) if high > low else (low, low + 1.0)


def shared_scale(
    *results: Any, sign: str | None = None, clip_percentile: float | None = None
) -> tuple[float, float]:
    """One ``(vmin, vmax)`` over every map of ``results`` (as each would be drawn with
    ``sign``), to pass as ``overlay(i, scale=...)`` so that equal values get equal colours."""
    signed = False
    maps: list[torch.Tensor] = []
    for result in results:
        drawn, is_signed = display_maps(result, sign)
        signed |= is_signed
        maps.extend(drawn)
    return value_range(maps, signed=signed, clip_percentile=clip_percentile)


def _scale(
    result: Any,
    index: int,
    drawn: torch.Tensor,
    maps: torch.Tensor,
    signed: bool,
    spec: ScaleSpec,
    clip_percentile: float | None,
    cmap: str,
) -> render.Scale:
    """The scale of map ``index``: ``drawn`` is that map as drawn, ``maps`` all of them."""
    if spec is None:
        low, high = value_range([drawn], signed=signed, clip_percentile=clip_percentile)
    elif spec == "shared":
        low, high = value_range(list(maps), signed=signed, clip_percentile=clip_percentile)
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        low, high = float(spec[0]), float(spec[1])
        if signed:
            low, high = -max(abs(low), abs(high)), max(abs(low), abs(high))
        if not high > low:
            raise ValueError(f"expected a scale (vmin, vmax) with vmax > vmin, got {spec!r}")
    else:
        raise ValueError(f"expected scale None, 'shared' or (vmin, vmax), got {spec!r}")
    note = ""
    if result.scores is not None:
        note = f"score {float(result.scores[index]):.3g}"
    return render.Scale(cmap, low, high, note)


def draw_overlay(
    result: Any,
    index: int,
    *,
    alpha: float,
    cmap: str | None,
    sign: str | None,
    clip_percentile: float | None,
    scale: ScaleSpec,
) -> render.Figure:
    """:meth:`Attribution.overlay`."""
    if not result.pictures:
        raise ValueError("this attribution has no pictures to overlay (input was a tensor?)")
    if clip_percentile is None and not result.is_layer_map:
        clip_percentile = 1.0
    maps, signed = display_maps(result, sign)
    height, width = result.pictures[index].size[::-1]
    up = replace(result, map=maps[index : index + 1]).upsampled((height, width)).map[0]
    cmap = cmap or ("coolwarm" if signed else "jet")
    shown = _scale(result, index, up, maps, signed, scale, clip_percentile, cmap)
    picture = render.overlay(
        result.pictures[index],
        up,
        alpha=alpha,
        cmap=cmap,
        norm="absolute",
        vmin=shown.vmin,
        vmax=shown.vmax,
        signed=signed,
    )
    return render.Figure(picture, caption=result.caption(index), scale=shown)


def draw_heatmap(
    result: Any, index: int, *, cmap: str | None, sign: str | None, scale: ScaleSpec
) -> render.Figure:
    """:meth:`Attribution.heatmap`."""
    maps, signed = display_maps(result, sign)
    cmap = cmap or ("coolwarm" if signed else "jet")
    shown = _scale(result, index, maps[index], maps, signed, scale, None, cmap)
    picture = render.heatmap(
        maps[index], cmap, norm="absolute", vmin=shown.vmin, vmax=shown.vmax, signed=signed
    )
    return render.Figure(picture, caption=result.caption(index), scale=shown)
