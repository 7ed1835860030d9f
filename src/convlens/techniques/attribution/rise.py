"""RISE (Petsiuk, Das & Saenko 2018, arXiv:1806.07421): the picture under many random smooth
masks, each weighted by the target's score; the masks (:func:`rise_masks`) are shared with
D-RISE for detectors."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from convlens.core.hooks import preserved
from convlens.core.model import Model
from convlens.core.registry import spec
from convlens.techniques.attribution.base import (
    Attribution,
    Target,
    TargetSpec,
    checked_batch_size,
    chunks,
    make_attribution,
    make_generator,
    no_layer,
    register,
    resolve_target,
)
from convlens.techniques.attribution.perturbation import (
    FILLS,
    SCORES,
    Fill,
    Progress,
    check_score,
    fill_for,
    fill_settings,
    preview_extras,
    score_of,
    scores_in_chunks,
)

MASK_BLOCK = 128  # RISE masks drawn (and held) at a time
# the settings' ranges and help, shared with the region RISE of a segmenter
SETTINGS = {
    "masks": spec("random masks", min=1, max=100_000, step=50),
    "cell": spec("mask grid cells per side", min=2, max=256),
    "p": spec("share of cells kept", min=0.01, max=0.99, step=0.01),
    "fill": spec("what covers the masked pixels", choices=FILLS, type="reference"),
    "score": spec("what the perturbation changes", choices=SCORES),
}


@register(
    "rise",
    family="perturbation",
    paper="Petsiuk, Das & Saenko 2018, arXiv:1806.07421",
    description="average of random smooth masks weighted by the target's probability",
    signed=False,
    settings=SETTINGS,
)
def rise(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: str | None = None,
    masks: int = 2000,
    cell: int = 7,
    p: float = 0.5,
    fill: Fill = "zero",
    blur_sigma: float = 8.0,
    score: str = "probability",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    progress: Progress | None = None,
    preview: Callable[[Attribution], None] | None = None,
) -> Attribution:
    """RISE saliency (N, H, W): ``sum_i score_i * M_i / (masks * p)``, the expected score when
    a pixel is kept, divided by ``p``; non-negative for probabilities, in [0, 1] up to sampling
    noise. With ``p = 1`` every pixel holds the unmasked image's score.

    Parameters
    ----------
    masks:
        Number of random masks N.
    cell:
        The grid size s: each mask starts as an s x s binary grid (one cell spans
        ``ceil(H / s)`` pixels).
    p:
        Probability that a grid cell is kept, in (0, 1].
    fill:
        What masked pixels become, as for :func:`occlusion` (``"zero"``: the paper's
        ``mask * input``).
    score:
        ``"probability"`` (after the model's postprocess, default, as in the paper) or
        ``"logit"``.
    seed, generator:
        Where the masks' randomness comes from (one of them; default ``seed=0``).
    batch_size:
        Masked copies per forward pass (default: what fits ``memory_budget_mb``).
    progress:
        Called as ``progress(done, total)`` with the number of masked copies evaluated.
    preview:
        Called part way with first maps (:class:`Attribution`): the same estimate from the
        masks drawn so far, after 128, 256, 512, ... of them (``extras["preview"]``: the share
        of the masks). The map returned is the one a run without a preview gives.
    """
    no_layer("rise", layer)
    batch = model.prepare(images)
    x = batch.inputs
    n, _, height, width = x.shape
    _check_rise(masks, cell, p, min(height, width))
    check_score(score)
    rng, seed_setting = make_generator(seed, generator)
    fill_values = fill_for(model, x, fill, blur_sigma)
    size = checked_batch_size(model, batch_size, memory_budget_mb)
    chosen = resolve_target(model, x, target)

    cell_h, cell_w = math.ceil(height / cell), math.ceil(width / cell)
    up_h = _upsampling_matrix(cell, (cell + 1) * cell_h).to(x.device)
    up_w = _upsampling_matrix(cell, (cell + 1) * cell_w).to(x.device)
    shared_fill = fill_values.dim() < 4 or fill_values.shape[0] == 1
    fill_full = fill_values if shared_fill else fill_values.expand_as(x)
    settings = {
        "masks": masks, "cell": cell, "p": p, "seed": seed_setting,
        **fill_settings(fill, blur_sigma), "score": score, "batch_size": size, "signed": False,
    }  # fmt: skip

    def attribution(saliency: torch.Tensor, extras: dict[str, Any]) -> Attribution:
        return make_attribution(
            saliency, method="rise", settings=settings, model=model, batch=batch,
            target=chosen, scores=logits, extras=extras,
        )  # fmt: skip

    saliency = torch.zeros(n, height, width, dtype=torch.float32, device=x.device)
    done, total = 0, masks * n
    with preserved(model.module):
        logits, _ = scores_in_chunks(model, x, chosen, score, size)
        for block in chunks(masks, MASK_BLOCK):
            count = block.stop - block.start
            grids = (torch.rand((count, cell, cell), generator=rng, device=rng.device) < p).float()
            shift_y = torch.randint(0, cell_h, (count,), generator=rng, device=rng.device)
            shift_x = torch.randint(0, cell_w, (count,), generator=rng, device=rng.device)
            shifts = torch.stack([shift_y, shift_x], 1)
            mask = _masks(grids.to(x.device), shifts.to(x.device), up_h, up_w, (height, width))
            mask = mask.to(x.dtype)
            tick = None if progress is None else functools.partial(_tick, progress, done, total)
            block_scores = _scores_of_block(model, x, mask, fill_full, chosen, score, size, tick)
            done += n * count
            if progress is not None:
                progress(done, total)
            saliency += torch.einsum("nb,bhw->nhw", block_scores.view(n, count), mask.float())
            drawn = block.stop  # a preview after 128, 256, 512, ... masks
            if preview is not None and drawn < masks and drawn & (drawn - 1) == 0:
                preview(attribution(saliency / (drawn * p), preview_extras(drawn / masks, "masks")))
    return attribution(saliency / (masks * p), {})


def _scores_of_block(
    model: Model,
    x: torch.Tensor,
    mask: torch.Tensor,
    fill: torch.Tensor,
    chosen: Target,
    score: str,
    size: int,
    tick: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """(N * B,) the target's score of every picture (N) under every mask (B), ``size`` copies
    per forward pass; ``fill`` is shared (1, C, H, W) or per picture (N, C, H, W); ``tick(k)``
    after each pass but the last, ``k`` copies done (progress, and a cancelled run's stop)."""
    n, count = len(x), len(mask)
    shared = fill.dim() < 4 or fill.shape[0] == 1
    out = torch.empty(n * count, dtype=torch.float32, device=x.device)
    for part in chunks(n * count, size):
        jobs = torch.arange(part.start, part.stop)
        image, which = jobs // count, (jobs % count).to(x.device)
        on_device = image.to(x.device)
        kept = mask[which][:, None]
        fills = fill if shared else fill[on_device]
        copies = x[on_device] * kept + fills * (1 - kept)
        out[part] = score_of(model, copies, chosen.select(image), score)
        if tick is not None and part.stop < n * count:
            tick(part.stop)
    return out


def _tick(progress: Progress, before: int, total: int, done: int) -> None:
    progress(before + done, total)


def _check_rise(masks: Any, cell: Any, p: Any, side: int) -> None:
    if isinstance(masks, bool) or not isinstance(masks, int) or masks < 1:
        raise ValueError(f"expected masks >= 1 (an int), got {masks!r}")
    if isinstance(cell, bool) or not isinstance(cell, int) or not 1 <= cell <= side:
        raise ValueError(f"expected cell (grid cells per side) an int in [1, {side}], got {cell!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"expected a keep probability p in (0, 1], got {p!r}")


def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """RISE masks (B, H, W) in [0, 1] from binary grids (B, s, s) and shifts (B, 2) (rows,
    columns; each less than one cell, ``ceil(H / s)`` pixels): the grids upsampled bilinearly
    to ``(s + 1) * ceil(size / s)`` pixels (pixel centres, mirrored edges, as
    ``skimage.transform.resize(order=1, mode="reflect")``), then cropped at the shift."""
    cell = grids.shape[-1]
    height, width = size
    up_h = _upsampling_matrix(cell, (cell + 1) * math.ceil(height / cell)).to(grids.device)
    up_w = _upsampling_matrix(cell, (cell + 1) * math.ceil(width / cell)).to(grids.device)
    return _masks(grids.float(), shifts, up_h, up_w, size)


def _masks(
    grids: torch.Tensor,
    shifts: torch.Tensor,
    up_h: torch.Tensor,
    up_w: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    height, width = size
    rows = up_h[shifts[:, :1] + torch.arange(height, device=grids.device)]  # (B, H, s)
    cols = up_w[shifts[:, 1:] + torch.arange(width, device=grids.device)]  # (B, W, s)
    return rows @ grids @ cols.transpose(1, 2)


def _upsampling_matrix(cells: int, pixels: int) -> torch.Tensor:
    """(pixels, cells) float32: linear interpolation from ``cells`` samples to ``pixels``
    (pixel-centre coordinates, mirrored about the edge samples)."""
    matrix = torch.zeros(pixels, cells, dtype=torch.float64)
    if cells == 1:
        matrix[:, 0] = 1.0
        return matrix.float()
    source = (torch.arange(pixels, dtype=torch.float64) + 0.5) * (cells / pixels) - 0.5
    source = source.abs()
    source = torch.where(source > cells - 1, 2 * (cells - 1) - source, source)
    low = source.floor().long().clamp(0, cells - 1)
    high = (low + 1).clamp(max=cells - 1)
    frac = source - low
    index = torch.arange(pixels)
    matrix.index_put_((index, low), 1 - frac, accumulate=True)
    matrix.index_put_((index, high), frac, accumulate=True)
    return matrix.float()
