"""Is the explanation right? Metrics of attribution maps against ground-truth masks and against
the model itself.

Against masks (``masks``: bool (N, H, W) at the input resolution, True on the object):

:func:`pointing_game`
    Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop" (arXiv:1608.00507):
    a hit when the map's maximum lies inside the mask, or within ``tolerance`` pixels of it
    (the paper uses 15 pixels). Several pixels sharing the maximum are handled by ``ties``.
:func:`energy_in_mask`
    Wang et al. 2020, "Score-CAM" (arXiv:1910.01279), the energy-based pointing game: the share
    of the map's POSITIVE mass inside the mask, ``sum(relu(map) * mask) / sum(relu(map))``.

Against the model (faithfulness; the score is the target's PROBABILITY after the model's
postprocess, ``score="logit"`` for the raw output):

:func:`deletion` and :func:`insertion`
    Petsiuk, Das & Saenko 2018, "RISE" (arXiv:1806.07421): pixels ranked by the map (highest
    first) are removed (replaced by ``fill``) or inserted (into a blurred image) in ``steps``
    chunks; the curve is the score after each chunk and its area under the curve (trapezoid
    over the fraction of pixels changed, in [0, 1] for probabilities) summarises it. A good map
    has a LOW deletion AUC and a HIGH insertion AUC.
:func:`confidence_change`
    Chattopadhay et al. 2018, "Grad-CAM++" (arXiv:1710.11063): the image masked by the
    explanation map (``x * s + fill * (1 - s)``, ``s = relu(map) / max relu(map)``); Average
    Drop ``max(0, Y - O) / Y`` (lower is better) and Increase in Confidence ``[O > Y]``
    (higher is better), Y the score of the image, O of the masked image: fractions in [0, 1]
    like every other score here (the paper prints them x 100, in percent).

Every function returns per-image values in a :class:`Scores` (mean and a 95 % Student-t
confidence interval over the images). Maps are an :class:`~convlens.attribution.Attribution`
(its map upsampled to the input, channels summed) or a tensor (N, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from convlens.core.hooks import preserved
from convlens.core.model import Model
from convlens.core.references import reference_input, reference_setting
from convlens.core.stats import t_interval
from convlens.techniques.attribution.base import (
    Attribution,
    Target,
    TargetSpec,
    checked_batch_size,
    chunks,
    resolve_target,
)

Maps = Attribution | torch.Tensor
Progress = Callable[[int, int], None]
FILLS = ("zero", "black", "mean", "blur")
SCORES = ("probability", "logit")
EMPTY = ("raise", "nan")
TIES = ("share", "any", "first")


# -- results ------------------------------------------------------------------------------------


@dataclass
class Scores:
    """One metric's per-image values and their summary.

    ``values`` is (N,) float64 on the CPU; NaN marks an image the metric is undefined for
    (an empty mask or a map without positive mass, with ``empty="nan"``); those are left out of
    :attr:`mean` and :meth:`interval` and counted in :attr:`invalid`. ``better`` says whether
    ``"higher"`` or ``"lower"`` values mean a better explanation.
    """

    name: str
    values: torch.Tensor
    better: str = "higher"
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.values.numel())

    @property
    def valid(self) -> torch.Tensor:
        return self.values[~torch.isnan(self.values)]

    @property
    def invalid(self) -> int:
        return int(torch.isnan(self.values).sum())

    @property
    def mean(self) -> float:
        valid = self.valid
        return float(valid.mean()) if valid.numel() else math.nan

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The Student-t confidence interval of the mean, ``mean +- t * sd / sqrt(n)`` with
        ``n - 1`` degrees of freedom (NaN with fewer than two valid images)."""
        return t_interval(self.valid, level)

    def summary(self, level: float = 0.95) -> dict[str, Any]:
        low, high = self.interval(level)
        return {
            "metric": self.name,
            "mean": _num(self.mean),
            "low": _num(low),
            "high": _num(high),
            "n": len(self) - self.invalid,
            "invalid": self.invalid,
            "better": self.better,
        }

    def __repr__(self) -> str:
        low, high = self.interval()
        return (
            f"Scores({self.name}: {self.mean:.4g} [{low:.4g}, {high:.4g}] over "
            f"{len(self) - self.invalid} image(s), {self.better} is better)"
        )


def _num(value: float) -> float | None:
    return None if math.isnan(value) else value


# -- inputs -----------------------------------------------------------------------------------


def input_maps(maps: Maps, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(N, H, W) float maps at the input resolution: an Attribution's map upsampled
    (bilinear) to its input size with channels summed, or a tensor (N, H, W) as it is."""
    if isinstance(maps, Attribution):
        return maps.upsampled(size).maps2d().float()
    if not isinstance(maps, torch.Tensor):
        raise ValueError(f"expected an Attribution or an (N, H, W) tensor, got {type(maps)}")
    if maps.dim() != 3:
        raise ValueError(f"expected maps (N, H, W), got {tuple(maps.shape)}")
    if not maps.is_floating_point():
        maps = maps.float()
    return maps.detach()


def _checked_masks(masks: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    if not isinstance(masks, torch.Tensor):
        raise ValueError(f"expected bool masks (N, H, W) as a tensor, got {type(masks)}")
    if masks.dtype != torch.bool:
        raise ValueError(f"expected bool masks (N, H, W), got dtype {masks.dtype}")
    if tuple(masks.shape) != tuple(maps.shape):
        raise ValueError(
            f"expected masks of the maps' shape {tuple(maps.shape)} (N, H, W at the input "
            f"resolution), got {tuple(masks.shape)}"
        )
    return masks.to(maps.device)


def _check_empty(empty: str) -> None:
    if empty not in EMPTY:
        raise ValueError(f"expected empty 'raise' or 'nan', got {empty!r}")


def _undefined(
    bad: torch.Tensor, empty: str, what: str, values: torch.Tensor, fix: str
) -> torch.Tensor:
    """NaN where ``bad`` (empty='nan') or a ValueError naming the images (empty='raise')."""
    if not bool(bad.any()):
        return values
    if empty == "raise":
        which = bad.nonzero().flatten().tolist()
        shown = ", ".join(map(str, which[:10])) + (" ..." if len(which) > 10 else "")
        raise ValueError(f"{what} for image(s) {shown} ({len(which)} in all); {fix}")
    return torch.where(bad, torch.full_like(values, math.nan), values)


# -- against masks ----------------------------------------------------------------------------


def _disk(radius: float) -> torch.Tensor:
    r = math.floor(radius)
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2


def dilate(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """(N, H, W) bool: pixels within Euclidean distance ``radius`` of a True pixel."""
    if radius <= 0:
        return masks
    disk = _disk(radius).to(masks.device, torch.float32)
    r = disk.shape[-1] // 2
    hits = F.conv2d(masks[:, None].float(), disk[None, None], padding=r)
    return hits[:, 0] > 0.5


def pointing_game(
    maps: Maps,
    masks: torch.Tensor,
    *,
    tolerance: float = 0.0,
    ties: str = "share",
    empty: str = "raise",
) -> Scores:
    """The pointing game (Zhang et al. 2016): 1 when the map's maximum falls inside the mask
    (or within ``tolerance`` pixels of it, Euclidean; the paper uses 15), else 0.

    ``ties`` decides when several pixels share the maximum: ``"share"`` (default) scores the
    fraction of them that hit (so a constant map scores the mask's share of the image, what
    guessing would), ``"any"`` counts a hit if one of them does, ``"first"`` takes the first in
    row-major order (``argmax``). A map with one maximum scores 0 or 1 whatever ``ties`` is.
    An empty mask raises (``empty="nan"``: NaN for that image, left out of the mean).
    """
    values_maps = input_maps(maps)
    masks = _checked_masks(masks, values_maps)
    _check_empty(empty)
    if ties not in TIES:
        raise ValueError(f"expected ties among {', '.join(map(repr, TIES))}, got {ties!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise ValueError(f"expected tolerance >= 0 (pixels), got {tolerance!r}")
    n = values_maps.shape[0]
    targets = dilate(masks, float(tolerance)).reshape(n, -1)
    flat = values_maps.reshape(n, -1)
    if torch.isnan(flat).any():
        raise ValueError("the maps contain NaN")
    top = flat == flat.max(1, keepdim=True).values
    if ties == "share":
        hits = (top & targets).sum(1).double() / top.sum(1).double()
    elif ties == "any":
        hits = (top & targets).any(1).double()
    else:
        hits = targets.gather(1, flat.argmax(1, keepdim=True)).squeeze(1).double()
    hits = _undefined(
        ~masks.reshape(n, -1).any(1),
        empty,
        "the mask is empty",
        hits,
        "the pointing game needs an object to point at (empty='nan' skips such images)",
    )
    return Scores(
        "pointing_game",
        hits.cpu(),
        "higher",
        {"tolerance": float(tolerance), "ties": ties},
    )


def energy_in_mask(maps: Maps, masks: torch.Tensor, *, empty: str = "raise") -> Scores:
    """Share of the map's positive mass inside the mask (Wang et al. 2020's energy-based
    pointing game), in [0, 1]: ``sum(relu(map) * mask) / sum(relu(map))``. Negative evidence is
    ignored. A map with no positive mass, or an empty mask, raises (``empty="nan"``: NaN for
    those images, left out of the mean)."""
    values_maps = input_maps(maps)
    masks = _checked_masks(masks, values_maps)
    _check_empty(empty)
    n = values_maps.shape[0]
    positive = values_maps.double().clamp(min=0).reshape(n, -1)
    total = positive.sum(1)
    inside = (positive * masks.reshape(n, -1)).sum(1)
    share = inside / torch.where(total > 0, total, torch.ones_like(total))
    share = _undefined(
        ~masks.reshape(n, -1).any(1),
        empty,
        "the mask is empty",
        share,
        "energy in the mask needs an object (empty='nan' skips such images)",
    )
    share = _undefined(
        ~(total > 0),
        empty,
        "the map has no positive mass (all values <= 0)",
        share,
        "nothing in it speaks for the target, so no share can be taken "
        "(empty='nan' skips such images)",
    )
    return Scores("energy_in_mask", share.cpu(), "higher")


# -- faithfulness -----------------------------------------------------------------------------


@dataclass
class Curves:
    """Deletion or insertion curves.

    ``fractions`` (S + 1,) is the share of pixels changed after each step (0 ... 1),
    ``scores`` (N, S + 1) the target's score there, ``auc`` the per-image trapezoid area over
    ``fractions`` (a :class:`Scores`).
    """

    kind: str
    fractions: torch.Tensor
    scores: torch.Tensor
    auc: Scores
    targets: list[int] | None
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "fractions": self.fractions.tolist(),
            "mean_curve": self.scores.mean(0).tolist(),
            "auc": self.auc.summary(),
            "settings": self.settings,
        }


def _check_choice(value: Any, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ValueError(f"expected {what} among {', '.join(map(repr, choices))}, got {value!r}")


def _check_steps(steps: Any, pixels: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= pixels:
        raise ValueError(
            f"expected steps an int in [1, {pixels}] (pixels per image), got {steps!r}"
        )
    return steps


def _target_for(model: Model, x: torch.Tensor, maps: Maps, target: TargetSpec) -> Target:
    """The explained targets: given, else the Attribution's own, else top-1."""
    if target is None and isinstance(maps, Attribution) and maps.targets is not None:
        return Target(torch.tensor(maps.targets, dtype=torch.long), description="explained")
    return resolve_target(model, x, target)


def _scores(model: Model, inputs: torch.Tensor, target: Target, kind: str) -> torch.Tensor:
    with torch.inference_mode():
        outputs = model.forward(inputs)
        if kind == "probability":
            outputs = model.postprocess(outputs)
        return target.score(outputs).double()


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) long: each pixel's place when the map is sorted highest first (0 = the
    highest); ties keep row-major order (a stable sort)."""
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    order = torch.sort(-flat, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(n, -1))
    return ranks.view_as(maps)


def step_counts(pixels: int, steps: int) -> torch.Tensor:
    """(steps + 1,) how many pixels are changed after each step: ``round(k * pixels / steps)``
    (chunks differ by at most one pixel)."""
    return torch.tensor([round(k * pixels / steps) for k in range(steps + 1)], dtype=torch.long)


def deletion(
    model: Model,
    images: Any,
    maps: Maps,
    target: TargetSpec = None,
    *,
    steps: int = 50,
    fill: Any = "zero",
    blur_sigma: float = 5.0,
    score: str = "probability",
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    progress: Progress | None = None,
) -> Curves:
    """The deletion curve (Petsiuk et al. 2018): the most important pixels first are replaced by
    ``fill`` (the paper's default: ``"zero"``, the zero input), ``steps`` chunks of
    ``H * W / steps`` pixels; all channels of a pixel at once. Lower AUC = more faithful.

    ``images`` are what the maps explain (a Batch, input tensor or pictures); ``target``
    defaults to the Attribution's targets (else top-1). ``fill`` is any reference of
    :mod:`convlens.references` (``"zero"``, ``"black"``, ``"mean"``, ``"blur"`` with
    ``blur_sigma`` pixels, a colour, a number, a tensor). Every perturbed copy of every step and
    image is pushed through the model in batches of ``batch_size`` copies (default: what fits
    ``memory_budget_mb``); ``progress(done, total)`` counts copies.
    """
    return _curves(
        "deletion", model, images, maps, target, steps, fill, blur_sigma, score, batch_size,
        memory_budget_mb, progress,
    )  # fmt: skip


def insertion(
    model: Model,
    images: Any,
    maps: Maps,
    target: TargetSpec = None,
    *,
    steps: int = 50,
    fill: Any = "blur",
    blur_sigma: float = 5.0,
    score: str = "probability",
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    progress: Progress | None = None,
) -> Curves:
    """The insertion curve (Petsiuk et al. 2018): starting from ``fill`` (the paper's: the image
    blurred, here a Gaussian of ``blur_sigma`` = 5 pixels truncated at 3 sigma; the paper's
    kernel is 11 pixels wide), the most important pixels first are put back, ``steps`` chunks.
    Higher AUC = more faithful. Other arguments as :func:`deletion`."""
    return _curves(
        "insertion", model, images, maps, target, steps, fill, blur_sigma, score, batch_size,
        memory_budget_mb, progress,
    )  # fmt: skip


def _curves(
    kind: str,
    model: Model,
    images: Any,
    maps: Maps,
    target: TargetSpec,
    steps: int,
    fill: Any,
    blur_sigma: float,
    score: str,
    batch_size: int | None,
    memory_budget_mb: float | None,
    progress: Progress | None,
) -> Curves:
    batch = model.prepare(images)
    x = batch.inputs
    n, _, height, width = x.shape
    values = input_maps(maps, (height, width))
    if values.shape != (n, height, width):
        raise ValueError(
            f"expected one (H, W) = {(height, width)} map per image ({n}), got maps "
            f"{tuple(values.shape)}"
        )
    _check_choice(score, SCORES, "score")
    pixels = height * width
    steps = _check_steps(steps, pixels)
    reference = reference_input(
        model, x, fill, what="fill", names=FILLS, blur_sigma=blur_sigma
    ).expand_as(x)
    size = checked_batch_size(model, batch_size, memory_budget_mb)
    chosen = _target_for(model, x, maps, target)
    ranks = pixel_ranks(values.to(x.device))
    counts = step_counts(pixels, steps).to(x.device)
    per_image = steps + 1
    total = n * per_image
    out = torch.empty(total, dtype=torch.float64)
    with preserved(model.module):
        for part in chunks(total, size):
            jobs = torch.arange(part.start, part.stop)
            image, step = jobs // per_image, jobs % per_image
            on_device = image.to(x.device)
            changed = ranks[on_device] < counts[step.to(x.device)][:, None, None]  # (B, H, W)
            if kind == "deletion":
                copies = torch.where(changed[:, None], reference[on_device], x[on_device])
            else:
                copies = torch.where(changed[:, None], x[on_device], reference[on_device])
            out[part] = _scores(model, copies, chosen.select(image), score).cpu()
            if progress is not None:
                progress(part.stop, total)
    curve = out.view(n, per_image)
    fractions = counts.cpu().double() / pixels
    auc = torch.trapezoid(curve, fractions, dim=1)
    settings: dict[str, Any] = {
        "steps": steps,
        "fill": reference_setting(fill),
        "score": score,
        "batch_size": size,
    }
    if isinstance(fill, str) and fill == "blur":
        settings["blur_sigma"] = blur_sigma
    better = "lower" if kind == "deletion" else "higher"
    return Curves(
        kind,
        fractions,
        curve,
        Scores(kind, auc, better, settings),
        chosen.indices.tolist() if chosen.indices is not None else None,
        settings,
    )


@dataclass
class ConfidenceChange:
    """Grad-CAM++'s confidence metrics: ``average_drop`` and ``increase_in_confidence``
    (:class:`Scores`, fractions in [0, 1]), ``original`` and ``masked`` (N,) the scores."""

    average_drop: Scores
    increase_in_confidence: Scores
    original: torch.Tensor
    masked: torch.Tensor


def explanation_masks(maps: torch.Tensor, *, empty: str = "raise") -> torch.Tensor:
    """(N, H, W) in [0, 1]: each map's positive part divided by its maximum (Grad-CAM++'s
    explanation map before it multiplies the image). Maps without positive mass raise
    (``empty="nan"``: NaN masks for them)."""
    _check_empty(empty)
    positive = maps.double().clamp(min=0)
    top = positive.flatten(1).max(1).values
    bad = ~(top > 0)
    scaled = positive / torch.where(bad, torch.ones_like(top), top)[:, None, None]
    if bool(bad.any()):
        flags = _undefined(
            bad,
            empty,
            "the map has no positive mass (all values <= 0)",
            torch.zeros_like(top),
            "the image cannot be masked by it (empty='nan' skips such images)",
        )
        scaled = torch.where(torch.isnan(flags)[:, None, None], math.nan, scaled)
    return scaled


def confidence_change(
    model: Model,
    images: Any,
    maps: Maps,
    target: TargetSpec = None,
    *,
    fill: Any = "zero",
    blur_sigma: float = 5.0,
    score: str = "probability",
    empty: str = "raise",
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
) -> ConfidenceChange:
    """Average Drop and Increase in Confidence (Chattopadhay et al. 2018, Grad-CAM++).

    The masked image is ``x * s + fill * (1 - s)`` with ``s = relu(map) / max relu(map)``;
    ``fill="zero"`` multiplies the network input by ``s`` (the paper multiplied the picture,
    i.e. ``fill="black"``). With Y the image's score and O the masked image's:
    ``average_drop = max(0, Y - O) / Y`` (lower is better) and
    ``increase_in_confidence = [O > Y]`` (higher is better); their means are the paper's
    numbers divided by 100 (fractions, like the other scores). Score: the target's probability
    (``score="logit"`` is unusual here: a negative Y makes the drop meaningless, so it raises).
    """
    _check_choice(score, SCORES, "score")
    _check_empty(empty)
    if score == "logit":
        raise ValueError(
            "Average Drop divides by the score, which must be positive: use score='probability'"
        )
    batch = model.prepare(images)
    x = batch.inputs
    n, _, height, width = x.shape
    values = input_maps(maps, (height, width))
    if values.shape != (n, height, width):
        raise ValueError(
            f"expected one (H, W) = {(height, width)} map per image ({n}), got maps "
            f"{tuple(values.shape)}"
        )
    weights = explanation_masks(values, empty=empty)
    bad = torch.isnan(weights.flatten(1)[:, 0])
    weights = torch.nan_to_num(weights, nan=0.0).to(x.device, x.dtype)[:, None]
    reference = reference_input(model, x, fill, what="fill", names=FILLS, blur_sigma=blur_sigma)
    size = checked_batch_size(model, batch_size, memory_budget_mb)
    chosen = _target_for(model, x, maps, target)
    original = torch.empty(n, dtype=torch.float64)
    masked = torch.empty(n, dtype=torch.float64)
    with preserved(model.module):
        for part in chunks(n, size):
            sub = x[part]
            ref = reference if reference.shape[0] == 1 or reference.dim() < 4 else reference[part]
            copies = sub * weights[part] + ref * (1 - weights[part])
            original[part] = _scores(model, sub, chosen.select(part), score).cpu()
            masked[part] = _scores(model, copies, chosen.select(part), score).cpu()
    drop = (original - masked).clamp(min=0) / original
    rise = (masked > original).double()
    drop = torch.where(bad, math.nan, drop)
    rise = torch.where(bad, math.nan, rise)
    settings = {"fill": reference_setting(fill), "score": score}
    return ConfidenceChange(
        Scores("average_drop", drop, "lower", settings),
        Scores("increase_in_confidence", rise, "higher", settings),
        original,
        masked,
    )
