"""Perturbation methods: occlusion and RISE. The network is only run forward (no gradients),
on perturbed copies of the input, in batches of at most ``batch_size`` copies.

Occlusion (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks",
arXiv:1311.2901; the Picasso settings: a 16 x 16 window moved by 8 pixels). A window
covering all channels slides over the input; inside it the input is replaced by ``fill``.
Each pixel's value is the average, over the windows that cover it, of

    score(original) - score(occluded)

so positive values mark evidence for the target. This is exactly Captum's ``Occlusion``
(``sliding_window_shapes=(C, h, w)``, ``strides=(C, sh, sw)``): windows start at
``0, s, 2s, ...`` as long as ``start - s < H - h``, so the last window in a direction may be cut
off by the border, and ``fill="zero"`` is Captum's default baseline (0 in input space). Two
differences by design: Captum returns (N, C, H, W) with the same value on every channel, we
return that value once, (N, H, W); and the score is the raw logit by default, the probability
with ``score="probability"`` (Zeiler & Fergus plot the probability of the correct class).

RISE (Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling for Explanation of Black-box
Models", arXiv:1806.07421). ``masks`` random masks M_i: an s x s binary grid (each cell kept
with probability ``p``) is upsampled bilinearly to ``(s + 1) * ceil(H / s)`` pixels and cropped
at a random shift of less than one cell; the masked input is ``x * M_i + fill * (1 - M_i)``
(``fill="zero"`` is the paper's ``masks * x`` on the normalised input). The map is

    S = sum_i score_i * M_i / (masks * p)

with ``score_i`` the target's probability (softmax, as in the paper; ``score="logit"`` is
available). The upsampling reproduces the authors' code (``skimage.transform.resize``,
``order=1, mode="reflect"``: pixel-centre coordinates, edges mirrored). Masks are drawn in blocks
of :data:`MASK_BLOCK` from the generator, so a seed gives the same masks whatever the batch
size, and never more than one block is held in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from convlens.core.hooks import preserved
from convlens.core.model import Model
from convlens.core.references import reference_input, reference_setting
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

FILLS = ("zero", "black", "mean", "blur")
SCORES = ("logit", "probability")
MASK_BLOCK = 128  # RISE masks drawn (and held) at a time

Fill = str | float | Sequence[float] | torch.Tensor
Progress = Callable[[int, int], None]


# -- occlusion ---------------------------------------------------------------------------------


@register(
    "occlusion",
    family="perturbation",
    paper="Zeiler & Fergus 2014, arXiv:1311.2901",
    description="score drop when a sliding window is covered, averaged per pixel",
    signed=True,
    settings={
        "window": spec("occluding square, pixels", min=1, max=4096),
        "stride": spec("step of the window, pixels", min=1, max=4096),
        "fill": spec("what covers the occluded pixels", choices=FILLS, type="reference"),
        "score": spec("what the perturbation changes", choices=SCORES),
    },
)
def occlusion(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: str | None = None,
    window: int | tuple[int, int] = 16,
    stride: int | tuple[int, int] = 8,
    fill: Fill = "zero",
    blur_sigma: float = 8.0,
    score: str = "logit",
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    progress: Progress | None = None,
) -> Attribution:
    """Occlusion map (N, H, W): for each pixel, the mean over the windows covering it of
    ``score(original) - score(occluded)`` (positive = the covered region was evidence for the
    target). Identical to Captum's ``Occlusion`` with a window spanning all channels.

    Parameters
    ----------
    window, stride:
        Window size and step in pixels, an int or (height, width). The stride may not exceed
        the window (pixels would be skipped); the last window may be cut off by the border.
    fill:
        What replaces the input inside the window: ``"zero"`` (0 in input space, Captum's
        default), ``"black"`` (a black picture, normalised by the model's
        :class:`Preprocessing`), ``"mean"`` (the image's per-channel mean), ``"blur"`` (the
        image blurred with a Gaussian of ``blur_sigma`` pixels), an ``(r, g, b)`` colour in
        [0, 1] (normalised by the model's :class:`Preprocessing`), a number (that value in input
        space) or a tensor broadcastable to the input (N, C, H, W).
    score:
        ``"logit"`` (the raw output, default) or ``"probability"`` (after the model's
        postprocess, e.g. softmax).
    batch_size:
        Perturbed copies per forward pass (default: what fits ``memory_budget_mb``).
    progress:
        Called as ``progress(done, total)`` with the number of perturbed copies evaluated.

    ``extras``: ``windows`` (rows, columns of window positions) and ``window_drops``
    (N, rows, columns), the score drop of each window (Zeiler & Fergus's coarse map).
    ``scores`` holds the unperturbed logits whatever ``score`` is.
    """
    no_layer("occlusion", layer)
    batch = model.prepare(images)
    x = batch.inputs
    n, _, height, width = x.shape
    wh, ww = _pair(window, "window")
    sh, sw = _pair(stride, "stride")
    _check_window(wh, sh, height, "height")
    _check_window(ww, sw, width, "width")
    _check_score(score)
    fill_values = _fill_values(model, x, fill, blur_sigma)
    size = checked_batch_size(model, batch_size, memory_budget_mb)
    chosen = resolve_target(model, x, target)

    rows = _cover(height, wh, sh, x.device)  # (nh, H) which rows each window position covers
    cols = _cover(width, ww, sw, x.device)  # (nw, W)
    nh, nw = len(rows), len(cols)
    per_image = nh * nw
    total = n * per_image
    # a fill shared by all images broadcasts; a per-image fill (mean, blur, ...) is gathered
    shared_fill = fill_values.dim() < 4 or fill_values.shape[0] == 1
    fill_full = fill_values if shared_fill else fill_values.expand_as(x)
    occluded = torch.empty(total, dtype=torch.float32, device=x.device)
    with preserved(model.module):
        logits, original = _scores_in_chunks(model, x, chosen, score, size)
        for part in chunks(total, size):
            jobs = torch.arange(part.start, part.stop)
            image, position = jobs // per_image, (jobs % per_image).to(x.device)
            on_device = image.to(x.device)
            inside = rows[position // nw][:, :, None] & cols[position % nw][:, None, :]
            fills = fill_full if shared_fill else fill_full[on_device]
            copies = torch.where(inside[:, None], fills, x[on_device])
            occluded[part] = _score(model, copies, chosen.select(image), score)
            if progress is not None:
                progress(part.stop, total)
    drops = original.cpu().double()[:, None, None] - occluded.cpu().double().view(n, nh, nw)
    rows64, cols64 = rows.cpu().double(), cols.cpu().double()
    sums = rows64.T @ drops @ cols64  # (N, H, W): the drops of every window covering a pixel
    counts = rows64.sum(0)[:, None] * cols64.sum(0)[None, :]
    settings = {
        "window": (wh, ww),
        "stride": (sh, sw),
        "fill": reference_setting(fill),
        "score": score,
        "batch_size": size,
        "signed": True,
    }
    if isinstance(fill, str) and fill == "blur":
        settings["blur_sigma"] = blur_sigma
    return make_attribution(
        sums / counts,
        method="occlusion",
        settings=settings,
        model=model,
        batch=batch,
        target=chosen,
        scores=logits,
        extras={"windows": (nh, nw), "window_drops": drops.float()},
    )


def _cover(size: int, window: int, stride: int, device: torch.device) -> torch.Tensor:
    """(positions, size) bool: window k covers ``[k * stride, k * stride + window)``, cut at the
    border; ``ceil((size - window) / stride) + 1`` positions (Captum's rule)."""
    count = math.ceil((size - window) / stride) + 1
    starts = torch.arange(count, device=device)[:, None] * stride
    pixels = torch.arange(size, device=device)[None, :]
    return (pixels >= starts) & (pixels < starts + window)


def _check_window(window: int, stride: int, size: int, axis: str) -> None:
    if window > size:
        raise ValueError(
            f"expected a window no larger than the image, got {window} > {size} ({axis})"
        )
    if stride > window and window < size:
        raise ValueError(
            f"expected a stride no larger than the window, got stride {stride} > window {window} "
            f"({axis}): pixels between windows would never be occluded"
        )


# -- RISE --------------------------------------------------------------------------------------


@register(
    "rise",
    family="perturbation",
    paper="Petsiuk, Das & Saenko 2018, arXiv:1806.07421",
    description="average of random smooth masks weighted by the target's probability",
    signed=False,
    settings={
        "masks": spec("random masks", min=1, max=100_000, step=50),
        "cell": spec("mask grid cells per side", min=2, max=256),
        "p": spec("share of cells kept", min=0.01, max=0.99, step=0.01),
        "fill": spec("what covers the masked pixels", choices=FILLS, type="reference"),
        "score": spec("what the perturbation changes", choices=SCORES),
    },
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
    """
    no_layer("rise", layer)
    batch = model.prepare(images)
    x = batch.inputs
    n, _, height, width = x.shape
    if isinstance(masks, bool) or not isinstance(masks, int) or masks < 1:
        raise ValueError(f"expected masks >= 1 (an int), got {masks!r}")
    if isinstance(cell, bool) or not isinstance(cell, int) or not 1 <= cell <= min(height, width):
        raise ValueError(
            f"expected cell (grid cells per side) an int in [1, {min(height, width)}], got {cell!r}"
        )
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"expected a keep probability p in (0, 1], got {p!r}")
    _check_score(score)
    rng, seed_setting = make_generator(seed, generator)
    fill_values = _fill_values(model, x, fill, blur_sigma)
    size = checked_batch_size(model, batch_size, memory_budget_mb)
    chosen = resolve_target(model, x, target)

    cell_h, cell_w = math.ceil(height / cell), math.ceil(width / cell)
    up_h = _upsampling_matrix(cell, (cell + 1) * cell_h).to(x.device)
    up_w = _upsampling_matrix(cell, (cell + 1) * cell_w).to(x.device)
    shared_fill = fill_values.dim() < 4 or fill_values.shape[0] == 1
    fill_full = fill_values if shared_fill else fill_values.expand_as(x)
    saliency = torch.zeros(n, height, width, dtype=torch.float32, device=x.device)
    done, total = 0, masks * n
    with preserved(model.module):
        logits, _ = _scores_in_chunks(model, x, chosen, score, size)
        for block in chunks(masks, MASK_BLOCK):
            count = block.stop - block.start
            grids = (torch.rand((count, cell, cell), generator=rng, device=rng.device) < p).float()
            shift_y = torch.randint(0, cell_h, (count,), generator=rng, device=rng.device)
            shift_x = torch.randint(0, cell_w, (count,), generator=rng, device=rng.device)
            shifts = torch.stack([shift_y, shift_x], 1)
            mask = _masks(grids.to(x.device), shifts.to(x.device), up_h, up_w, (height, width))
            mask = mask.to(x.dtype)
            block_scores = torch.empty(n * count, dtype=torch.float32, device=x.device)
            for part in chunks(n * count, size):
                jobs = torch.arange(part.start, part.stop)
                image, which = jobs // count, (jobs % count).to(x.device)
                on_device = image.to(x.device)
                kept = mask[which][:, None]
                fills = fill_full if shared_fill else fill_full[on_device]
                copies = x[on_device] * kept + fills * (1 - kept)
                block_scores[part] = _score(model, copies, chosen.select(image), score)
                done += part.stop - part.start
                if progress is not None:
                    progress(done, total)
            saliency += torch.einsum("nb,bhw->nhw", block_scores.view(n, count), mask.float())
    settings = {
        "masks": masks,
        "cell": cell,
        "p": p,
        "seed": seed_setting,
        "fill": reference_setting(fill),
        "score": score,
        "batch_size": size,
        "signed": False,
    }
    if isinstance(fill, str) and fill == "blur":
        settings["blur_sigma"] = blur_sigma
    return make_attribution(
        saliency / (masks * p),
        method="rise",
        settings=settings,
        model=model,
        batch=batch,
        target=chosen,
        scores=logits,
    )


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


# -- shared ------------------------------------------------------------------------------------


def _check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"expected score {' or '.join(map(repr, SCORES))}, got {score!r}")


def _pair(value: Any, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else value
    if (
        isinstance(value, bool)
        or not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair)
    ):
        raise ValueError(f"expected {name} >= 1, an int or (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def _score(model: Model, inputs: torch.Tensor, target: Target, kind: str) -> torch.Tensor:
    """(B,) the target's score (``kind``) for a batch, forward only."""
    with torch.inference_mode():
        outputs = model.forward(inputs)
        if kind == "probability":
            outputs = model.postprocess(outputs)
        return target.score(outputs).float()


def _scores_in_chunks(
    model: Model, inputs: torch.Tensor, target: Target, kind: str, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) raw logits and (N,) ``kind`` scores of the unperturbed images, ``size`` at a time."""
    logits, scores = [], []
    for part in chunks(len(inputs), size):
        with torch.inference_mode():
            outputs = model.forward(inputs[part])
            chosen = target.select(part)
            logits.append(chosen.score(outputs).float())
            if kind == "probability":
                scores.append(chosen.score(model.postprocess(outputs)).float())
    raw = torch.cat(logits).clone()
    return raw, (torch.cat(scores).clone() if scores else raw)


def _fill_values(model: Model, inputs: torch.Tensor, fill: Any, blur_sigma: float) -> torch.Tensor:
    """What perturbed pixels become, in input space, broadcastable to ``inputs``."""
    return reference_input(model, inputs, fill, what="fill", names=FILLS, blur_sigma=blur_sigma)
