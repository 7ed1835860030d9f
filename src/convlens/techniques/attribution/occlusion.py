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

Fast occlusion (Krypton: Nakandala, Kumar & Papakonstantinou, SIGMOD 2019, "Incremental and
Approximate Inference for Faster Occlusion-based Deep CNN Explanations"). By default
(``incremental="auto"``) a network that ``torch.fx`` traces runs incrementally
(:mod:`convlens.incremental`): once on the clean picture, then for each window only the boxes
of each layer's output that the window changes. That is the plain map up to float rounding
(max difference <= 1e-4 of its peak), whatever the fill, since every fill (blur too) changes
the picture inside the window only. Elsewhere plain forward passes run, and
``extras["incremental"]`` says why (``incremental=True`` also warns). Two approximate modes,
off by default: ``approximate="drilldown"`` computes every ``drill_factor``-th (2) row and
column of windows, interpolates the others, then computes the ``drill_fraction`` (0.5) of them
whose coarse neighbours differ most (:func:`drill_down`); ``approximate="cap"`` stops each
changed box at ``cap`` (0.5) of its map's side (Krypton's projective-field threshold; clean
values outside). ``exact_ssim=True`` reports their SSIM to the exact map (signed maps, the
exact map's range as data range). RISE has no incremental path: its masks change every pixel.

Previews (``preview=``, the explorer's first maps): an exact occlusion given a ``preview``
callback computes every 4th row and column of windows first, then every 2nd, then the rest,
and hands over the map after each coarse pass (computed windows exact, the others
interpolated), so a first map comes after 9 % of the work at 16/8 on 224 px; RISE hands over
its estimate after 128, 256, 512, ... masks. Neither changes the map finally returned.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
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
    no_layer,
    register,
    resolve_target,
)
from convlens.techniques.attribution.incremental import (
    Incremental,
    NotIncremental,
)
from convlens.techniques.attribution.perturbation import (
    FILLS,
    SCORES,
    Fill,
    check_score,
    fill_for,
    fill_settings,
    pair,
    preview_extras,
    scored,
    scores_in_chunks,
)

Progress = Callable[[int, int], None]


# -- occlusion ---------------------------------------------------------------------------------


# the approximate modes and their settings' defaults
APPROXIMATE = {"drilldown": {"drill_factor": 2, "drill_fraction": 0.5}, "cap": {"cap": 0.5}}

# the settings' ranges and help, shared with the region occlusion of a segmenter
SETTINGS = {
    "window": spec("occluding square, pixels", min=1, max=4096),
    "stride": spec("step of the window, pixels", min=1, max=4096),
    "fill": spec("what covers the occluded pixels", choices=FILLS, type="reference"),
    "score": spec("what the perturbation changes", choices=SCORES),
    "incremental": spec(
        "incremental inference (recompute only what a window changes): auto where the network "
        "traces, true, or false for plain batches"
    ),
}


@register(
    "occlusion",
    family="perturbation",
    paper="Zeiler & Fergus 2014, arXiv:1311.2901",
    description="score drop when a sliding window is covered, averaged per pixel",
    signed=True,
    settings={
        **SETTINGS,
        "approximate": spec(
            "approximate mode (faster, not the exact map): drilldown computes a coarse grid of "
            "windows, then the windows where it varies most; cap limits how far a window's "
            "change may grow in each layer; none is exact",
            choices=tuple(APPROXIMATE),
        ),
        "cap": spec(
            "cap mode: the share of each layer's map a window's change may cover (default 0.5)",
            type="float",
            min=0.01,
            max=1,
            step=0.01,
        ),
        "drill_factor": spec(
            "drilldown mode: the coarse grid takes every n-th row and column of windows "
            "(default 2)",
            type="int",
            min=2,
            max=64,
        ),
        "drill_fraction": spec(
            "drilldown mode: the share of the other windows computed, where the coarse grid "
            "varies most (default 0.5)",
            type="float",
            min=0,
            max=1,
            step=0.05,
        ),
        "exact_ssim": spec("with an approximate mode, also run the exact map for its SSIM"),
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
    incremental: bool | str = "auto",
    approximate: str | None = None,
    cap: float | None = None,
    drill_factor: int | None = None,
    drill_fraction: float | None = None,
    exact_ssim: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    progress: Progress | None = None,
    preview: Callable[[Attribution], None] | None = None,
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
    incremental, approximate, cap, drill_factor, drill_fraction, exact_ssim:
        How the windows are computed (module docstring): ``incremental="auto"`` (default),
        ``True`` (warns where it falls back) or ``False``; ``approximate=None`` (exact, default),
        ``"drilldown"`` or ``"cap"``; ``exact_ssim=True`` also runs the exact map for the SSIM.
    batch_size:
        Copies (windows) per forward pass (default: what fits ``memory_budget_mb``; for
        incremental runs their own, smaller, needs, on CUDA the device's free memory).
    progress:
        Called as ``progress(done, total)`` with the number of perturbed copies evaluated.
    preview:
        Called part way with first maps (:class:`Attribution`), coarse to fine: every fourth
        row and column of windows computed (on grids of at least 9 x 9 windows), then every
        second, the others interpolated between them as in the drill-down's coarse pass
        (``extras["preview"]``: the share of windows computed). Each grid holds the one before,
        so no window runs twice, and the map returned is the one a run without a preview
        gives. Grids under 3 x 3 windows get none; an approximate drill-down previews its own
        coarse pass.

    ``extras``: ``windows`` (rows, columns of window positions) and ``window_drops``
    (N, rows, columns), the score drop of each window (Zeiler & Fergus's coarse map);
    ``incremental`` (``"incremental"`` or ``"plain: <why>"``); with ``approximate``, ``ssim``
    (or None) and ``evaluated`` (the share of windows computed).
    ``scores`` holds the unperturbed logits whatever ``score`` is.
    """
    no_layer("occlusion", layer)
    batch = model.prepare(images)
    x = batch.inputs
    height, width = x.shape[-2:]
    wh, ww = pair(window, "window")
    sh, sw = pair(stride, "stride")
    _check_window(wh, sh, height, "height")
    _check_window(ww, sw, width, "width")
    check_score(score)
    fast = _fast_options(incremental, approximate, cap, drill_factor, drill_fraction)
    fill_values = fill_for(model, x, fill, blur_sigma)
    size = checked_batch_size(model, batch_size, memory_budget_mb)
    chosen = resolve_target(model, x, target)

    occluder = _Occluder(
        model, x, fill_values, (wh, ww), (sh, sw), chosen, score, size, incremental,
        fast.get("cap"), batch_size is not None, memory_budget_mb, progress=progress,
    )  # fmt: skip
    settings = {
        "window": (wh, ww), "stride": (sh, sw), **fill_settings(fill, blur_sigma),
        "score": score, "signed": True, **fast,
    }  # fmt: skip
    with preserved(model.module):
        logits, original = scores_in_chunks(model, x, chosen, score, size)
        occluder.logits = logits
        result = functools.partial(_result, occluder, settings, batch)
        coarse = None
        if preview is not None:  # the coarse passes' maps, told apart by extras["preview"]
            coarse = lambda d, done: preview(  # noqa: E731
                result(d, preview_extras(float(done.double().mean()), "windows"))
            )
        drops, extras = _window_drops(occluder, original, fast, exact_ssim, coarse)
    return result(drops, extras)


def _result(
    occluder: _Occluder, settings: dict[str, Any], batch: Any, drops: torch.Tensor, extras: Any
) -> Attribution:
    """The occlusion map of the window drops (N, rows, columns), as an :class:`Attribution`."""
    return make_attribution(
        _spread(drops, occluder.rows, occluder.cols),
        method="occlusion",
        settings={**settings, "batch_size": occluder.size},
        model=occluder.model,
        batch=batch,
        target=occluder.target,
        scores=occluder.logits,
        extras={"windows": tuple(drops.shape[1:]), "window_drops": drops.float(), **extras},
    )


def _spread(drops: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(N, H, W) float64: each pixel's mean of the drops (N, nh, nw) of the windows covering it."""
    rows64, cols64 = rows.cpu().double(), cols.cpu().double()
    sums = rows64.T @ drops @ cols64  # (N, H, W): the drops of every window covering a pixel
    counts = rows64.sum(0)[:, None] * cols64.sum(0)[None, :]
    return sums / counts


@dataclass
class _Occluder:
    """The scores of occluded copies, by window: plain forward passes of whole copies, or
    incremental inference (:class:`~convlens.incremental.Incremental`, one per picture) that
    recomputes only what each window changes, where the network allows it (``notice`` says
    which ran, and why not)."""

    model: Model
    inputs: torch.Tensor  # (N, C, H, W)
    fills: torch.Tensor  # broadcastable to the inputs
    window: tuple[int, int]
    stride: tuple[int, int]
    target: Target
    score: str
    size: int  # copies per forward pass
    incremental: bool | str = "auto"
    cap: float | None = None  # Krypton's projective-field threshold (approximate)
    sized: bool = False  # the caller gave the batch size
    budget: float | None = None  # MiB for incremental batches (None: the engine's default)
    logits: torch.Tensor | None = None  # (N,) the clean logits, to check the traced graph
    progress: Progress | None = None
    notice: str = ""
    done: int = 0
    engine: tuple[int, Incremental] | None = None

    def __post_init__(self) -> None:
        height, width = self.inputs.shape[-2:]
        self.rows = _cover(height, self.window[0], self.stride[0], self.inputs.device)
        self.cols = _cover(width, self.window[1], self.stride[1], self.inputs.device)
        shared = self.fills.dim() < 4 or self.fills.shape[0] == 1
        self.fills = self.fills.expand_as(self.inputs[:1] if shared else self.inputs)

    def scores(self, jobs: torch.Tensor) -> torch.Tensor:
        """(J,) float32 scores of the copies ``jobs`` (J,) long, image-major window indices
        ``image * nh * nw + row * nw + column``, at most ``size`` copies per pass (one picture
        per pass when incremental)."""
        per_image = len(self.rows) * len(self.cols)
        out = torch.empty(len(jobs), dtype=torch.float32, device=self.inputs.device)
        images = jobs // per_image
        groups = images.unique().tolist() if self.incremental is not False else [None]
        for image in groups:
            picked = torch.arange(len(jobs)) if image is None else torch.nonzero(images == image)
            picked = picked.reshape(-1)
            engine = None if image is None else self._engine(image)
            for part in chunks(len(picked), self.size):
                which = picked[part]
                padded, batch = which, min(self.size, len(picked))
                if engine is not None and self.inputs.is_cuda and len(which) < batch:
                    # one batch shape on a GPU, so cuDNN plans its convolutions once: the last
                    # batch is filled up with copies of its last window
                    padded = torch.cat([which, which[-1:].expand(batch - len(which))])
                scores = self._chunk(jobs[padded], images[padded], engine)
                out[which.to(out.device)] = scores[: len(which)]
                self.done += len(which)
                if self.progress is not None:
                    self.progress(self.done, len(self.inputs) * per_image)
        return out

    def _chunk(
        self, jobs: torch.Tensor, images: torch.Tensor, engine: Incremental | None
    ) -> torch.Tensor:
        """(B,) scores of one batch of copies: whole copies through the network, or each
        window's changed box through the picture's engine."""
        x, nw = self.inputs, len(self.cols)
        position, on_device = (jobs % (len(self.rows) * nw)).to(x.device), images.to(x.device)
        if engine is None:
            fills = self.fills[on_device] if len(self.fills) > 1 else self.fills
            inside = self.rows[position // nw][:, :, None] & self.cols[position % nw][:, None, :]
            with torch.inference_mode():
                outputs = self.model.forward(torch.where(inside[:, None], fills, x[on_device]))
        else:
            image, zero = int(images[0]), torch.zeros_like(position)
            corners = torch.stack([position // nw, position % nw], 1) * torch.tensor(
                self.stride, device=x.device
            )
            fill = self.fills[image : image + 1] if len(self.fills) > 1 else self.fills
            patch = occluded_patches(x[image : image + 1], fill, zero, corners, self.window)
            outputs = engine(zero, *patch)
        return scored(self.model, outputs, self.target.select(images), self.score)

    def _engine(self, image: int) -> Incremental | None:
        """The incremental engine of picture ``image`` (built once), or None where the plain
        path runs (``notice`` says why; a warning too when ``incremental=True`` or a cap was
        asked for)."""
        if self.engine is not None and self.engine[0] == image:
            return self.engine[1]
        if self.notice.startswith("plain"):
            return None
        try:
            # the module whose forward is model.forward (a segmenter's glue has its own)
            network = getattr(self.model, "forward_module", self.model.module)
            engine = Incremental(network, self.inputs[image : image + 1], cap=self.cap)
            clean = self.target.select(torch.tensor([image])).score(engine.clean_output).float()
            assert self.logits is not None
            expected = self.logits[image : image + 1]
            if not torch.allclose(
                clean, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())
            ):
                raise NotIncremental("the traced graph does not reproduce the model's output")
        except NotIncremental as reason:
            self.notice, self.engine = f"plain: {reason}", None
            if self.incremental is True or self.cap is not None:
                lost = "; the cap is not applied (exact map)" if self.cap is not None else ""
                warnings.warn(f"occlusion ran plain forward passes: {reason}{lost}", stacklevel=4)
            return None
        self.notice, self.engine = "incremental", (image, engine)
        if not self.sized:
            self.size = engine.batch_size(self.window, self.budget)
        return engine


def _window_drops(
    occluder: _Occluder,
    original: torch.Tensor,
    fast: dict[str, Any],
    exact_ssim: bool,
    on_coarse: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """(N, nh, nw) float64 score drops of every window (exact, or as ``fast`` approximates
    them) and the result's extras: which path ran, and for an approximate mode the share of
    windows computed and, with ``exact_ssim``, the SSIM to the exact map. ``on_coarse(drops,
    computed)`` is called with the coarse passes' drops (see :func:`drill_down`): an exact run
    given it computes every fourth, then every second row and column of windows first, then
    the rest."""
    n, nh, nw = len(original), len(occluder.rows), len(occluder.cols)
    clean = original.cpu().double()

    def drops_of(jobs: torch.Tensor) -> torch.Tensor:
        return clean[jobs // (nh * nw)] - occluder.scores(jobs).cpu().double()

    extras: dict[str, Any] = {}
    coarse_first = on_coarse is not None and min(nh, nw) >= 3
    if fast.get("approximate") == "drilldown" or coarse_first:
        factor, fraction = fast.get("drill_factor", 2), fast.get("drill_fraction", 1.0)
        # an exact run's preview: every 4th row and column of windows, then every 2nd
        coarser = (4,) if not fast and min(nh, nw) >= 9 else ()
        drops, done = drill_down(drops_of, (n, nh, nw), factor, fraction, on_coarse, coarser)
        if fast:
            extras["evaluated"] = float(done.double().mean())
        if occluder.progress is not None:
            occluder.progress(n * nh * nw, n * nh * nw)
    else:
        drops = drops_of(torch.arange(n * nh * nw)).view(n, nh, nw)
        if fast:
            extras["evaluated"] = 1.0
    extras["incremental"] = occluder.notice or "plain (incremental=False)"
    if fast:
        extras["ssim"] = None
    if fast and exact_ssim:
        exact = replace(occluder, cap=None, progress=None, notice="", engine=None)
        exact_drops = (
            clean[:, None, None]
            - exact.scores(torch.arange(n * nh * nw)).view(n, nh, nw).cpu().double()
        )
        approximate = _spread(drops, occluder.rows, occluder.cols)
        reference = _spread(exact_drops, occluder.rows, occluder.cols)
        extras["ssim"] = [_ssim(a, r) for a, r in zip(approximate, reference, strict=True)]
    return drops, extras


def _ssim(approximate: torch.Tensor, exact: torch.Tensor) -> float:
    """SSIM (7 x 7 window, or the largest odd one that fits) of two (H, W) maps, with the exact
    map's value range as data range."""
    from convlens.core.stats import ssim

    win = min(7, *exact.shape)
    win = win if win % 2 else win - 1
    span = float(exact.max() - exact.min()) or 1.0
    return float(ssim(approximate[None], exact[None], data_range=span, win_size=win)[0])


def drill_down(
    evaluate: Callable[[torch.Tensor], torch.Tensor],
    grid: tuple[int, int, int],
    factor: int,
    fraction: float,
    on_coarse: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    coarser: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Krypton's adaptive drill-down on a grid of windows (approximate; exact with
    ``fraction=1``, which computes every window, the coarse ones first).

    ``evaluate(jobs)`` gives the (J,) results of the windows ``jobs`` (J,) long, indices into
    the flattened ``grid`` (N, rows, columns). First every ``factor``-th row and column of
    windows is evaluated (plus the last row and column); the others get the bilinear
    interpolation of those. Then, per picture, the ``fraction`` of the remaining windows whose
    coarse cell varies most (the range of the four coarse results around them: the peaks and
    edges of every high region, where interpolation is least trustworthy) is evaluated exactly.
    ``on_coarse(values, evaluated)`` is called with the coarse pass's results, before the rest;
    with ``coarser`` factors (multiples of ``factor``, largest first), their grids run first,
    each followed by ``on_coarse`` (a progressive preview: each grid holds the one before).
    Returns the results (N, rows, columns) float64 and which were evaluated (bool).
    """
    n, nh, nw = grid
    done = torch.zeros(n, nh, nw, dtype=torch.bool)
    values = torch.zeros(n, nh, nw, dtype=torch.float64)
    for level in (*coarser, factor):  # each grid holds the coarser ones: only new windows run
        coarse_rows, coarse_cols = _coarse(nh, level), _coarse(nw, level)
        lattice = torch.zeros_like(done)
        lattice[:, coarse_rows[:, None], coarse_cols[None, :]] = True
        first = (lattice & ~done).flatten().nonzero().squeeze(1)
        values.view(-1)[first] = evaluate(first).double().cpu()
        done |= lattice
        coarse = values[:, coarse_rows[:, None], coarse_cols[None, :]]
        estimate = _interpolation(coarse_rows, nh) @ coarse @ _interpolation(coarse_cols, nw).T
        values = torch.where(done, values, estimate)
        if on_coarse is not None:
            on_coarse(values.clone(), done.clone())
    (top, bottom), (left, right) = _cells(coarse_rows, nh), _cells(coarse_cols, nw)
    corners = torch.stack([coarse[:, r][:, :, c] for r in (top, bottom) for c in (left, right)])
    spread = corners.amax(0) - corners.amin(0)  # (N, rows, columns)
    picks = []
    for i in range(n):
        candidates = torch.nonzero(~done[i].flatten()).squeeze(1)
        order = spread[i].flatten()[candidates].argsort(descending=True, stable=True)
        picks.append(candidates[order[: math.ceil(fraction * len(candidates))]] + i * nh * nw)
    second = torch.cat(picks)
    if len(second):
        values.view(-1)[second] = evaluate(second).double().cpu()
        done.view(-1)[second] = True
    return values, done


def _cells(picked: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each index of ``range(count)``, the positions in ``picked`` of the coarse indices
    on either side of it."""
    last = len(picked) - 1
    low = (torch.searchsorted(picked, torch.arange(count), right=True) - 1).clamp(
        0, max(last - 1, 0)
    )
    return low, (low + 1).clamp(max=last)


def _coarse(count: int, factor: int) -> torch.Tensor:
    """Every ``factor``-th index of ``range(count)``, and the last one."""
    picked = list(range(0, count, factor))
    if picked[-1] != count - 1:
        picked.append(count - 1)
    return torch.tensor(picked)


def _interpolation(picked: torch.Tensor, count: int) -> torch.Tensor:
    """(count, len(picked)) float64: linear interpolation from the picked indices to all."""
    low, high = _cells(picked, count)
    span = (picked[high] - picked[low]).clamp(min=1).double()
    share = ((torch.arange(count) - picked[low]).double() / span).clamp(0, 1)
    matrix = torch.zeros(count, len(picked), dtype=torch.float64)
    matrix.index_put_((torch.arange(count), low), 1 - share, accumulate=True)
    matrix.index_put_((torch.arange(count), high), share, accumulate=True)
    return matrix


def _fast_options(
    incremental: Any, approximate: Any, cap: Any, drill_factor: Any, drill_fraction: Any
) -> dict[str, Any]:
    """The approximate mode's settings ({} when exact), checked; defaults filled in."""
    if incremental not in (True, False, "auto") or not isinstance(incremental, (bool, str)):
        raise ValueError(f"expected incremental True, False or 'auto', got {incremental!r}")
    if approximate is not None and approximate not in APPROXIMATE:
        raise ValueError(f"expected approximate None, 'drilldown' or 'cap', got {approximate!r}")
    given = {"cap": cap, "drill_factor": drill_factor, "drill_fraction": drill_fraction}
    for name, value in given.items():
        mode = next(m for m, names in APPROXIMATE.items() if name in names)
        if value is not None and mode != approximate:
            raise ValueError(f"{name} is a setting of approximate={mode!r}, got {approximate!r}")
    if approximate is None:
        return {}
    if approximate == "cap" and incremental is False:
        raise ValueError("approximate='cap' caps incremental inference; got incremental=False")
    options = {k: v if given[k] is None else given[k] for k, v in APPROXIMATE[approximate].items()}
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "cap": (lambda v: 0 < v <= 1, "in (0, 1] (a share of each map's side)"),
        "drill_factor": (lambda v: isinstance(v, int) and v >= 2, ">= 2 (an int)"),
        "drill_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    }
    for name, value in options.items():
        fits, expected = checks[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not fits(value):
            raise ValueError(f"expected {name} {expected}, got {value!r}")
    return {"approximate": approximate, **options}


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


def occluded_patches(
    inputs: torch.Tensor,
    fills: torch.Tensor,
    images: torch.Tensor,
    corners: torch.Tensor,
    window: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The changed box of each occluded copy, for :class:`Incremental`.

    ``inputs`` (N, C, H, W); ``fills`` what the window puts in, (N or 1, C, H, W) (expanded
    views are fine); ``images`` (B,) long; ``corners`` (B, 2) long, each window's top-left
    corner (a window may run past the bottom / right border, where it is cut off). Returns
    ``starts`` (B, 2), the boxes of size ``window`` shifted inside the picture, and
    ``patches`` (B, C, h, w): the fill inside the window, the input elsewhere in the box.
    """
    height, width = inputs.shape[-2:]
    device = inputs.device
    limit = torch.tensor([height - window[0], width - window[1]], device=device)
    starts = torch.minimum(corners, limit)
    rows = starts[:, :1] + torch.arange(window[0], device=device)  # (B, h)
    cols = starts[:, 1:] + torch.arange(window[1], device=device)  # (B, w)
    inside = ((rows >= corners[:, :1]) & (rows < corners[:, :1] + window[0]))[:, :, None] & (
        (cols >= corners[:, 1:]) & (cols < corners[:, 1:] + window[1])
    )[:, None, :]
    where_rows, where_cols = rows[:, :, None], cols[:, None, :]
    clean = inputs[images[:, None, None], :, where_rows, where_cols]  # (B, h, w, C)
    fill_images = images if fills.shape[0] > 1 else torch.zeros_like(images)
    filled = fills[fill_images[:, None, None], :, where_rows, where_cols]
    patches = torch.where(inside[..., None], filled, clean).permute(0, 3, 1, 2).contiguous()
    return starts, patches
