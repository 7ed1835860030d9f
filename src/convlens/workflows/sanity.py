"""Sanity checks for saliency maps (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
arXiv:1810.03292): an explanation that barely changes when the model's weights are replaced
by random ones cannot be explaining the model.

Model parameter randomisation, on a COPY of the network (the user's model is never touched):

``mode="cascading"`` (the paper's main test)
    the parametrised layers are re-initialised one after another from the top (the output)
    down, and the method's maps are recomputed after each stage;
``mode="independent"``
    each layer alone is re-initialised (the others keep their trained weights).

Each stage's maps are compared with the trained model's maps, image by image: Spearman rank
correlation of the absolute maps and of the signed maps, and SSIM (Wang et al. 2004, as
``skimage.metrics.structural_similarity`` with its defaults: 7 x 7 uniform window, K1 = 0.01,
K2 = 0.03, sample covariance) of the absolute maps scaled to [0, 1] by their maximum.

Flag (the verdict). Cascading, the default: a method is flagged when the absolute-map rank
correlation with the trained model's map, averaged over the cascade's stages (the area under
the paper's Fig. 2 curve, per image, then over the images), stays above ``threshold`` (default
0.5). ``top_share`` < 1 reads only the stages that randomise that share of the parametrised
layers from the top (at least one). Comparing only after *every* layer is random, as convlens
did before, passes guided backpropagation: randomising the first convolutions changes any
input-gradient map, although the map ignored the top of the network all along (it stays
unchanged while the layers that decide the class are random). Measured on MobileNetV2 (105
parametrised layers, two photos; mean over the cascade / after all 105 are random): guided
backpropagation 0.66 / 0.09 (flagged), Grad-CAM 0.02 / 0.11, saliency 0.18 / -0.03, gradient x
input 0.33 / 0.02 (all pass); over the top 10 % of the layers guided backpropagation scores
0.97. ``final_score`` keeps the similarity after the
whole cascade. Independent mode: the mean over the single-layer randomisations.

Re-initialisation draws from a CPU ``torch.Generator`` seeded with ``seed``: every parameter
tensor of a layer with two or more dimensions (conv, linear weights) from
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (PyTorch's default init bound), the layer's 1-D
tensors (biases) with the same bound, and 1-D tensors of layers without such a weight (norms)
from ``N(0, 1)``. Buffers (BatchNorm running statistics) are kept.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch import nn

from convlens.core import render
from convlens.core.model import Model
from convlens.core.stats import spearman, ssim
from convlens.techniques.attribution.base import (
    Attribution,
    Method,
    Target,
    TargetSpec,
    get_method,
    resolve_target,
)
from convlens.workflows.metrics import input_maps

MODES = ("cascading", "independent")
MEASURES = ("spearman_abs", "spearman", "ssim")
Progress = Callable[[int, int], None]


# -- similarity measures --------------------------------------------------------------------------


def _scaled_abs(maps: torch.Tensor) -> torch.Tensor:
    """|map| / max |map| per map (all-zero maps stay 0)."""
    absolute = maps.double().abs()
    top = absolute.flatten(1).max(1).values
    return absolute / torch.where(top > 0, top, 1.0)[:, None, None]


def similarities(original: torch.Tensor, other: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image similarity of two batches of maps (N, H, W): ``spearman_abs``, ``spearman``
    and ``ssim`` (window: 7, or the largest odd size that fits a smaller map)."""
    win = min(7, min(original.shape[-2:]))
    win = win if win % 2 else win - 1
    result = {
        "spearman_abs": spearman(original.abs(), other.abs()),
        "spearman": spearman(original, other),
    }
    if win >= 3:
        result["ssim"] = ssim(_scaled_abs(original), _scaled_abs(other), win_size=win)
    else:
        result["ssim"] = torch.full((original.shape[0],), math.nan, dtype=torch.float64)
    return result


# -- randomisation ----------------------------------------------------------------------------


def parametrised_layers(model: Model) -> list[str]:
    """Names of the modules that hold parameters themselves, in forward order (the layer table;
    modules the dry run never called come last, in definition order)."""
    own = [
        name
        for name, module in model.module.named_modules()
        if name and any(True for _ in module.parameters(recurse=False))
    ]
    order = {name: i for i, name in enumerate(model.layers().names)}
    return sorted(own, key=lambda name: order.get(name, len(order)))


def randomize_layer(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise ``module``'s own parameters in place from ``generator`` (see the module
    docstring for the distributions)."""
    params = list(module.named_parameters(recurse=False))
    weights = [p for _, p in params if p.dim() >= 2]
    fan_in = weights[0][0].numel() if weights else None
    with torch.no_grad():
        for _, param in params:
            if param.dim() >= 2:
                bound = 1 / math.sqrt(max(1, param[0].numel()))
                new = torch.rand(param.shape, generator=generator, dtype=torch.float64) * 2 - 1
                new = new * bound
            elif fan_in is not None:
                bound = 1 / math.sqrt(max(1, fan_in))
                new = torch.rand(param.shape, generator=generator, dtype=torch.float64) * 2 - 1
                new = new * bound
            else:
                new = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            param.copy_(new.to(param.dtype))


def _model_copy(model: Model) -> Model:
    clone = copy.deepcopy(model.module)
    labels = model.synonyms
    return Model(
        clone,
        preprocess=model.preprocess,
        postprocess=model.postprocess,
        labels=labels,
        name=f"{model.name} (randomised copy)",
        input_size=model._input_size,
    )


# -- the check -----------------------------------------------------------------------------------


@dataclass
class SanityCheck:
    """The result of :func:`sanity_check`.

    ``stages`` names each stage: ``"original"``, then (cascading) the layer randomised last,
    with every layer above it already random, or (independent) the one layer randomised.
    ``similarity[measure]`` is (stages, N) per image; :meth:`rows` the per-stage means.
    ``maps`` (stages, N, H, W) are the maps at each stage (input resolution). ``score`` is the
    statistic compared with ``threshold``; ``flagged`` says the maps barely depend on the
    weights.
    """

    method: str
    mode: str
    stages: list[str]
    similarity: dict[str, torch.Tensor]
    maps: torch.Tensor
    threshold: float
    score: float
    flagged: bool
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)
    top: int = 0  # cascading: the stages the verdict reads (the top of the network)
    final_score: float = float("nan")  # cascading: after every layer is random

    def rows(self) -> list[dict[str, Any]]:
        """One row per stage: the stage and the mean of each measure over the images."""
        out = []
        for i, stage in enumerate(self.stages):
            row: dict[str, Any] = {"stage": stage}
            for measure in MEASURES:
                value = float(self.similarity[measure][i].mean())
                row[measure] = None if math.isnan(value) else value
            out.append(row)
        return out

    @property
    def verdict(self) -> str:
        layers = len(self.stages) - 1
        if self.mode != "cascading":
            what = "on average over single-layer randomisations"
        elif self.top < layers:
            what = f"over the cascade through the top {self.top} of {layers} parametrised layers"
        else:
            what = "over the whole cascade"
        if self.flagged:
            return (
                f"{self.method} FAILS the sanity check: its maps keep a rank correlation of "
                f"{self.score:.2f} with the trained model's {what} (threshold {self.threshold})"
            )
        return (
            f"{self.method} passes the sanity check: rank correlation {self.score:.2f} {what} "
            f"(threshold {self.threshold})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "mode": self.mode,
            "seed": self.seed,
            "threshold": self.threshold,
            "score": self.score,
            "top": self.top,
            "final_score": None if math.isnan(self.final_score) else self.final_score,
            "flagged": self.flagged,
            "verdict": self.verdict,
            "stages": self.rows(),
            "settings": self.settings,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **({"indent": 1} | kwargs))

    def plot(self, *, width: int = 640, height: int = 360) -> render.Figure:
        """Similarity (y, -1 ... 1) against the stage (x): one line per measure, the threshold
        dashed."""
        return render.Figure(
            _line_plot(
                [self.similarity[m].mean(1).tolist() for m in MEASURES],
                list(MEASURES),
                self.stages,
                threshold=self.threshold,
                size=(width, height),
            ),
            caption=self.verdict,
        )

    def figure(self, index: int = 0) -> render.Figure:
        """Image ``index``'s map at every stage, side by side (each scaled to its own range)."""
        tiles = [render.heatmap(self.maps[s, index].abs(), "jet") for s in range(len(self.stages))]
        picture = render.grid(tiles, ncols=len(tiles), labels=self.stages, tile_size=(96, 96))
        return render.Figure(picture, caption=f"{self.method}: map of image {index} by stage")

    def _repr_png_(self) -> bytes:
        return self.plot()._repr_png_()

    def __repr__(self) -> str:
        return (
            f"SanityCheck({self.method}, {self.mode}, flagged={self.flagged}, "
            f"score={self.score:.3f})"
        )


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]


def _line_plot(
    series: Sequence[Sequence[float]],
    names: Sequence[str],
    ticks: Sequence[str],
    *,
    threshold: float | None,
    size: tuple[int, int],
) -> Image.Image:
    """A small line chart drawn with PIL: y from -1 to 1, one x position per tick."""
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 48, 16, 16, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    count = max(1, len(ticks) - 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + plot_w * i / count, top + plot_h * (1 - (v + 1) / 2)

    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=(120, 120, 120))
    for v in (-1.0, -0.5, 0.0, 0.5, 1.0):
        _, y = xy(0, v)
        draw.line([left, y, left + plot_w, y], fill=(230, 230, 230))
        draw.text((6, y - 6), f"{v:+.1f}", fill=(0, 0, 0))
    if threshold is not None:
        _, y = xy(0, threshold)
        for dash in range(left, left + plot_w, 8):
            draw.line([dash, y, min(dash + 4, left + plot_w), y], fill=(200, 0, 0))
    for i, tick in enumerate(ticks):
        tick_x, _ = xy(i, -1)
        draw.text((tick_x - 4, top + plot_h + 4 + 10 * (i % 3)), tick[:14], fill=(0, 0, 0))
    for k, (values, name) in enumerate(zip(series, names, strict=True)):
        colour = _COLOURS[k % len(_COLOURS)]
        points = [xy(i, v) for i, v in enumerate(values) if not math.isnan(v)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.text((left + 8 + 110 * k, height - 18), name, fill=colour)
    return image


def _method(method: str | Method) -> tuple[str, Method, bool]:
    if callable(method):
        return getattr(method, "__name__", "method"), method, False
    info = get_method(method)
    return info.name, info.fn, info.needs_layer


def _cascade(
    model: Model,
    order: list[str],
    maps_of: Callable[[Model], torch.Tensor],
    mode: str,
    seed: int,
    progress: Progress | None,
) -> tuple[list[torch.Tensor], list[str]]:
    """The maps of the trained model and after each randomisation stage, on a copy."""
    total = len(order) + 1
    original = maps_of(model)
    if progress is not None:
        progress(1, total)
    stages, all_maps = ["original"], [original]
    clone = _model_copy(model)
    modules = dict(clone.module.named_modules())
    generator = torch.Generator().manual_seed(seed)
    for k, layer in enumerate(order):
        saved = {n: p.detach().clone() for n, p in modules[layer].named_parameters(recurse=False)}
        randomize_layer(modules[layer], generator)
        all_maps.append(maps_of(clone))
        stages.append(layer)
        if mode == "independent":
            with torch.no_grad():
                for n, p in modules[layer].named_parameters(recurse=False):
                    p.copy_(saved[n])
        if progress is not None:
            progress(k + 2, total)
    return all_maps, stages


def sanity_check(
    model: Model,
    images: Any,
    method: str | Method = "gradcam",
    target: TargetSpec = None,
    *,
    mode: str = "cascading",
    layers: Sequence[str] | None = None,
    seed: int = 0,
    threshold: float = 0.5,
    top_share: float = 1.0,
    progress: Progress | None = None,
    **options: Any,
) -> SanityCheck:
    """Model parameter randomisation test (Adebayo et al. 2018) of ``method`` on ``images``.

    ``method`` is a registered name (``"gradcam"``) or any function with the method signature
    ``fn(model, images, target, **options) -> Attribution``; ``options`` go to it. The targets
    are fixed on the trained model (``None``: its top-1) and kept for every stage. ``layers``
    limits (and orders, top first) the layers randomised; default: every parametrised layer,
    from the output down. ``progress(done, total)`` counts stages. See the module docstring
    for the measures, the initialisation and the flag (``top_share``: the share of the
    parametrised layers, from the top, whose cascade stages the cascading verdict reads).
    """
    from convlens.core.tasks import as_model

    model = as_model(model)
    if mode not in MODES:
        raise ValueError(f"expected mode among {', '.join(map(repr, MODES))}, got {mode!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"expected a threshold in [-1, 1], got {threshold!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"expected an int seed, got {seed!r}")
    if (
        isinstance(top_share, bool)
        or not isinstance(top_share, (int, float))
        or not 0 < top_share <= 1
    ):
        raise ValueError(f"expected top_share in (0, 1], got {top_share!r}")
    name, fn, needs_layer = _method(method)
    batch = model.prepare(images)
    if needs_layer and options.get("layer") is None:
        from convlens.techniques.attribution.base import default_layer

        options["layer"] = default_layer(model)
    available = parametrised_layers(model)
    if layers is None:
        order = available[::-1]
    else:
        unknown = [layer for layer in layers if layer not in available]
        if unknown:
            raise ValueError(
                f"expected parametrised layers among {', '.join(available)}, got {unknown}"
            )
        order = list(layers)
    if not order:
        raise ValueError("the model has no parametrised layers to randomise")
    chosen = resolve_target(model, batch.inputs, target)
    fixed = Target(chosen.indices, chosen.fn, chosen.description)

    def maps_of(handle: Model) -> torch.Tensor:
        result = fn(handle, batch.inputs, fixed, **options)
        if not isinstance(result, Attribution):
            raise ValueError(f"expected the method to return an Attribution, got {type(result)}")
        return input_maps(result, tuple(batch.inputs.shape[-2:])).double()  # type: ignore[arg-type]

    all_maps, stages = _cascade(model, order, maps_of, mode, seed, progress)
    stacked = torch.stack(all_maps)
    measures = {m: [] for m in MEASURES}  # type: dict[str, list[torch.Tensor]]
    for stage_maps in all_maps:
        values = similarities(all_maps[0], stage_maps)
        for m in MEASURES:
            measures[m].append(values[m])
    similarity = {m: torch.stack(v) for m, v in measures.items()}
    rank = similarity["spearman_abs"]
    top = max(1, round(top_share * len(available))) if mode == "cascading" else 0
    score = float(rank[1 : 1 + top].mean()) if mode == "cascading" else float(rank[1:].mean())
    return SanityCheck(
        method=name,
        mode=mode,
        stages=stages,
        similarity=similarity,
        maps=stacked.float(),
        threshold=float(threshold),
        score=score,
        flagged=bool(score > threshold),
        seed=seed,
        settings={k: v for k, v in options.items() if isinstance(v, (str, int, float, bool))},
        top=min(top, len(order)),
        final_score=float(rank[-1].mean()) if mode == "cascading" else math.nan,
    )
