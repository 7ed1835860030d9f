"""Explaining a segmentation (task ``segment``): which pixels make a segmenter label a region
as class ``k``.

A region ``R`` is a boolean mask (H, W) over the picture, by default every pixel the segmenter
labels ``k``. Its score is the class's logit summed over the region,
``S = sum_{(i, j) in R} y_k[i, j]``, the target of Seg-Grad-CAM (Vinogradova, Dibrov & Myers,
"Towards Interpretable Semantic Segmentation via Gradient-weighted Class Activation Mapping",
AAAI 2020 student abstract, arXiv:2002.11434). Every method here explains ``S`` and registers
under the ``segment`` task, so ``convlens.explain(segmenter, picture, "gradcam",
target="hair")`` finds them as it finds a classifier's methods:

``gradcam`` (Seg-Grad-CAM)
    Grad-CAM's weights ``w_c = mean_ij dS / dA_c[i, j]`` at a layer ``A``; the map
    ``relu(sum_c w_c A_c)``, resized bilinearly to the picture.
``layercam``
    Layer-CAM's per-position weights ``relu(dS / dA)`` (Jiang et al. 2021), the same CAM.
``occlusion``
    The drop of ``S`` when a window of the picture is filled (Zeiler & Fergus 2014).
``rise``
    RISE (Petsiuk et al. 2018): random smooth masks weighted by the region's summed class
    probability (``score="probability"``, default) or summed logit.

They are the classifier methods' own code (:mod:`.cam`, :mod:`.occlusion`, :mod:`.rise`),
reached through a little glue: those take a :class:`~convlens.core.model.Model` whose output
is one tensor and whose target callables see that tensor, and a segmenter's output is
torchvision's dict. :class:`SegmenterModel` is the segmenter as such a Model: its input is the
picture's pixels in [0, 1] (the segmenter's normalisation runs inside, in
:class:`SegmentationLogits`, a module that ``torch.fx`` traces where the network does, so
occlusion runs incrementally there), its output the (N, K, H, W) logits, its postprocess the
softmax over classes; :class:`RegionScore` is the target callable ``S``. Occlusion and RISE
fills are therefore in pixel space (``"zero"`` is black).

Each explanation is a :class:`RegionExplanation`, an
:class:`~convlens.techniques.attribution.base.Explanation` with ``map`` (H, W) at the picture's
size, ``energy_in_mask(mask)`` (the share of positive attribution inside a mask),
``energy_in_region()`` and ``overlay()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from convlens.core import render
from convlens.core.hooks import forward_hooks, preserved
from convlens.core.model import Model, Preprocessing
from convlens.core.render import to_pil
from convlens.core.segmenter import Segmenter, connected_region, segmentation_logits
from convlens.core.tasks import as_segmenter
from convlens.core.util import jsonable
from convlens.techniques.attribution import cam, occlusion, rise
from convlens.techniques.attribution.base import Explanation, get_method, methods, register
from convlens.techniques.attribution.perturbation import Fill, Progress

PAPER = (
    "Vinogradova, Dibrov & Myers 2020, Towards Interpretable Semantic Segmentation via "
    "Gradient-weighted Class Activation Mapping, AAAI student abstract, arXiv:2002.11434"
)
_SCORE = "sum of the class logit over the region"


# -- the glue: a segmenter as a Model of pixels, and the region's score ---------------------------


class SegmentationLogits(nn.Module):
    """Pixels (N, 3, H, W) in [0, 1] -> the segmenter's (N, K, H, W) logits: its normalisation,
    its network, ``"out"`` of torchvision's dict, and (``resize``) a bilinear resize to the
    picture's size. No data-dependent branch, so ``torch.fx`` traces it where it traces the
    network. The network is the segmenter's own module (a child here, nothing copied)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, segmenter: Segmenter, size: tuple[int, int] | None) -> None:
        super().__init__()
        self.network = segmenter.module
        self.size = size
        self.normalize = segmenter.to_input
        pre = segmenter.preprocess
        self.plain = pre.channels == 3
        device = segmenter.device
        self.register_buffer("mean", torch.tensor(pre.mean, device=device).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, device=device).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - self.mean) / self.std if self.plain else self.normalize(pixels)
        output = self.network(x)
        if isinstance(output, Mapping):
            output = output["out"]
        if self.size is not None:
            output = F.interpolate(output, size=self.size, mode="bilinear", align_corners=False)
        return output  # type: ignore[no-any-return]


def _class_softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=1)


class SegmenterModel(Model):
    """A :class:`~convlens.core.segmenter.Segmenter` as a :class:`~convlens.core.model.Model`
    for the classifier methods: input (N, 3, H, W) pixels in [0, 1], output the (N, K, H, W)
    logits (:class:`SegmentationLogits`, also ``forward_module``, the module occlusion's
    incremental engine traces), postprocess the softmax over classes (dim 1). Layer names are
    the segmenter module's own."""

    def __init__(self, segmenter: Segmenter, size: tuple[int, int], resize: bool = False) -> None:
        super().__init__(
            segmenter.module,
            preprocess=Preprocessing(crop=None, resize=None, mean=(0.0,) * 3, std=(1.0,) * 3),
            postprocess=_class_softmax,
            labels=segmenter.labels,
            name=segmenter.name,
            input_size=(3, *size),
        )
        self.forward_module = SegmentationLogits(segmenter, size if resize else None)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_module(inputs)  # type: ignore[no-any-return]

    __call__ = forward


class RegionScore:
    """The target callable ``S = sum over the region of the class's output``: (N, K, H, W)
    outputs (logits, or probabilities after the postprocess) -> (N,) scores."""

    def __init__(self, index: int, region: torch.Tensor, name: str | None = None) -> None:
        self.index = index
        self.region = region.bool()
        self.__name__ = f"{name or f'class {index}'} over {int(self.region.sum())} pixels"

    def __call__(self, outputs: torch.Tensor) -> torch.Tensor:
        if outputs.dim() != 4 or tuple(outputs.shape[-2:]) != tuple(self.region.shape):
            raise ValueError(
                f"expected (N, K, {self.region.shape[0]}, {self.region.shape[1]}) outputs, "
                f"got {tuple(outputs.shape)}"
            )
        mask = self.region.to(device=outputs.device, dtype=outputs.dtype)
        return (outputs[:, self.index] * mask).sum(dim=(1, 2))


# -- the result ----------------------------------------------------------------------------------


@dataclass(repr=False)
class RegionExplanation(Explanation):
    """A map (H, W) at the picture's size of where the evidence lies for labelling ``region``
    (H, W, bool) as class ``target`` (its name: ``label``). ``map`` keeps its sign (occlusion:
    negative where covering a window raises the score). ``layer_map``: the CAM at the layer's
    resolution (CAMs only). ``score``: the region's score ``S`` on the unperturbed picture.
    ``extras``: a first map's share of the work (``preview``, of ``preview_of``; see
    :func:`region_occlusion`'s ``preview``)."""

    map: torch.Tensor
    region: torch.Tensor
    target: int
    label: str
    picture: Image.Image
    method: str
    settings: dict[str, Any]
    score: float
    layer_map: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def energy_in_mask(self, mask: Any) -> float:
        """Share of the positive attribution inside ``mask`` (H, W, bool): 1 = all of it; NaN
        when nothing is positive."""
        inside = torch.as_tensor(np.asarray(mask)).bool()
        if tuple(inside.shape) != tuple(self.map.shape):
            raise ValueError(
                f"expected a mask of the map's shape {tuple(self.map.shape)}, got "
                f"{tuple(inside.shape)}"
            )
        positive = self.map.clamp_min(0).double()
        total = float(positive.sum())
        if total <= 0:
            return math.nan
        return float(positive[inside].sum()) / total

    def energy_in_region(self) -> float:
        """:meth:`energy_in_mask` of the explained region itself."""
        return self.energy_in_mask(self.region)

    def peak(self) -> tuple[int, int]:
        """(x, y) of the largest value."""
        index = int(self.map.argmax())
        return index % self.map.shape[1], index // self.map.shape[1]

    def __len__(self) -> int:
        return 1

    def name(self, index: int = 0) -> str:
        return f"{self.label}_{int(self.region.sum())}px"

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "map": self.map.numpy(),
            "region": self.region.numpy(),
            "target": np.array(self.target),
        }
        if self.layer_map is not None:
            out["layer_map"] = self.layer_map.numpy()
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no arrays)."""
        return {
            "method": self.method,
            "settings": jsonable(self.settings),
            "target": self.target,
            "label": self.label,
            "region_pixels": int(self.region.sum()),
            "score": round(self.score, 5),
            "energy_in_region": jsonable(self.energy_in_region()),
            "peak": list(self.peak()),
            "map_shape": list(self.map.shape),
        }

    def caption(self, index: int = 0) -> str:
        return f"{self.method} · {self.label} ({int(self.region.sum())} px)"

    def heatmap(self, index: int = 0, **kwargs: Any) -> render.Figure:
        """The map alone (jet, positive part)."""
        self._check(index)
        return render.Figure(render.heatmap(self.map.clamp_min(0), "jet"), self.caption())

    def overlay(
        self, index: int = 0, *, alpha: float = 0.5, min_side: int = 384, outline: bool = True
    ) -> render.Figure:
        """The map's positive part (jet, scaled to its maximum) over the picture, with the
        explained region's outline in white. A picture shorter than ``min_side`` is enlarged by
        a whole factor (each pixel a block) first."""
        self._check(index)
        heat = to_pil(render.overlay(self.picture, self.map.clamp_min(0).numpy(), alpha=alpha))
        factor = max(1, math.ceil(min_side / min(heat.size))) if min_side else 1
        region = self.region.numpy()
        if factor > 1:
            heat = heat.resize(
                (heat.width * factor, heat.height * factor), Image.Resampling.NEAREST
            )
            region = np.kron(region, np.ones((factor, factor), bool))
        if outline:
            edge = np.zeros_like(region)
            edge[1:] |= region[1:] != region[:-1]
            edge[:-1] |= region[:-1] != region[1:]
            edge[:, 1:] |= region[:, 1:] != region[:, :-1]
            edge[:, :-1] |= region[:, :-1] != region[:, 1:]
            pixels = np.array(heat)
            pixels[edge & region] = 255
            heat = Image.fromarray(pixels)
        return render.Figure(heat, self.caption())

    def _check(self, index: int) -> None:
        if index != 0:
            raise IndexError(f"a region explanation holds one map; got index {index}")

    def __repr__(self) -> str:
        return (
            f"RegionExplanation({self.method}, {self.label} over {int(self.region.sum())} px, "
            f"energy in region {self.energy_in_region():.2f})"
        )


# -- one picture, one region ---------------------------------------------------------------------


@dataclass
class _Problem:
    pixels: torch.Tensor  # (1, 3, H, W) in [0, 1]
    picture: Image.Image
    index: int
    label: str
    region: torch.Tensor  # (H, W) bool
    model: SegmenterModel
    score: RegionScore


def _problem(segmenter: Any, image: Any, target: Any, region: Any) -> _Problem:
    """The picture, the class and the region to explain, checked (one inference pass: the
    class count, the default region, and whether the logits need resizing)."""
    segmenter = as_segmenter(segmenter)
    pixels, pictures = segmenter.prepare(image)
    if len(pixels) != 1:
        raise ValueError(f"expected one picture, got {len(pixels)}")
    size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    with preserved(segmenter.module), torch.inference_mode():
        raw = segmenter.module(segmenter.to_input(pixels.to(segmenter.device)))
    logits = segmentation_logits(raw, size).float().cpu()
    coarse = tuple(segmentation_logits(raw).shape[-2:]) != size
    class_map = logits[0].argmax(0)
    point = _spec(region, 2)
    if target is None and point is not None:
        target = int(class_map[point[1], point[0]]) if _inside(point, size) else 0
    if target is None:
        raise ValueError("expected target= the class to explain (an index or a name)")
    index = segmenter.class_index(target, logits.shape[1])
    if index >= logits.shape[1]:
        raise ValueError(f"expected a class index below {logits.shape[1]}, got {index}")
    label = segmenter.label(index)
    mask = region_mask(region, class_map, index, label)
    model = SegmenterModel(segmenter, size, resize=coarse)
    return _Problem(pixels, pictures[0], index, label, mask, model, RegionScore(index, mask, label))


def _spec(region: Any, length: int) -> tuple[int, ...] | None:
    """``region`` as ``length`` integers when it is a point (2) or a box (4), else ``None``."""
    if not isinstance(region, (tuple, list)) or len(region) != length:
        return None
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in region):
        return tuple(int(v) for v in region)
    return None


def _inside(point: tuple[int, ...], size: tuple[int, int]) -> bool:
    return 0 <= point[0] < size[1] and 0 <= point[1] < size[0]


def region_mask(region: Any, class_map: torch.Tensor, index: int, label: str) -> torch.Tensor:
    """(H, W) bool: the region a ``region=`` spec stands for, given the predicted ``class_map``
    (H, W) and the explained class ``index``:

    * ``None``: every pixel labelled ``index``;
    * a point ``(x, y)``: the connected region (4-neighbours) of pixels labelled ``index``
      holding it (one character's hair in a crowd: a click on it);
    * a box ``(x0, y0, x1, y1)`` (pixels, ``x1``/``y1`` excluded): the pixels labelled
      ``index`` inside it;
    * a boolean mask (H, W): itself.
    """
    size = (int(class_map.shape[0]), int(class_map.shape[1]))
    labelled = class_map == index
    point, box = _spec(region, 2), _spec(region, 4)
    if region is None:
        mask = labelled
    elif point is not None:
        if not _inside(point, size):
            raise ValueError(
                f"expected a point inside the {size[1]}x{size[0]} picture, got {point}"
            )
        mask = connected_region(labelled, point[0], point[1])
        if not bool(mask.any()):
            found = int(class_map[point[1], point[0]])
            raise ValueError(f"the pixel at {point} is labelled class {found}, not {label!r}")
    elif box is not None:
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= size[1] and 0 <= y0 < y1 <= size[0]):
            raise ValueError(
                f"expected a box (x0, y0, x1, y1) inside {size[1]}x{size[0]}, got {box}"
            )
        mask = torch.zeros_like(labelled)
        mask[y0:y1, x0:x1] = labelled[y0:y1, x0:x1]
    else:
        mask = torch.as_tensor(np.asarray(region))
        if mask.dtype != torch.bool or tuple(mask.shape) != size:
            raise ValueError(
                f"expected region a boolean mask of the picture's size {size}, a point (x, y) or "
                f"a box (x0, y0, x1, y1), got {mask.dtype} {tuple(mask.shape)}"
            )
        return mask
    if not bool(mask.any()):
        raise ValueError(
            f"no pixel of this region is labelled {label!r}; give region= a mask (H, W) to "
            "explain the class over"
        )
    return mask


def default_segment_layer(segmenter: Segmenter) -> str:
    """The layer region CAMs read when none is given: the segmenter's own ``layer`` (the toon
    segmenter's is ``dec2``); else, for torchvision's segmentation models, the last stage of
    the ``backbone`` (the feature map the head reads: ``backbone.16`` of the MobileNetV3
    models, ``backbone.layer4`` of the ResNets)."""
    if segmenter.layer is not None:
        return segmenter.layer
    modules = dict(segmenter.module.named_modules())
    backbone = modules.get("backbone")
    if backbone is not None:
        children = [name for name, _ in backbone.named_children()]
        if children:
            return f"backbone.{children[-1]}"
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    raise ValueError(
        f"{segmenter.name} names no default layer and has no backbone; pass layer= (a module "
        f"with an (N, C, h, w) output, e.g. {convs[-3:]})"
    )


def map_layers(segmenter: Segmenter, size: int = 128) -> list[str]:
    """The segmenter's layers a region CAM can read: an (N, C, h, w) output, run once in a
    pass (one dry pass on a blank ``size`` x ``size`` picture), in the order they return."""
    calls: dict[str, int] = {}

    def seen(name: str, output: Any) -> None:
        one_map = isinstance(output, torch.Tensor) and output.dim() == 4
        calls[name] = calls.get(name, 0) + 1 if one_map else 2  # no map: never offered

    names = [name for name, _ in segmenter.module.named_modules() if name]
    blank = torch.zeros(1, 3, size, size, device=segmenter.device)
    with (
        preserved(segmenter.module),
        torch.inference_mode(),
        forward_hooks(segmenter.module, names, seen),
    ):
        segmenter.module(segmenter.to_input(blank))
    return [name for name, count in calls.items() if count == 1]


def _cam(
    method: str,
    weights: Callable[..., Any],
    segmenter: Any,
    image: Any,
    target: Any,
    region: Any,
    layer: str | None,
    relu: bool,
) -> RegionExplanation:
    """A gradient CAM of the region's score, at the layer's resolution and resized to the
    picture."""
    problem = _problem(segmenter, image, target, region)
    name = layer or default_segment_layer(as_segmenter(segmenter))
    found = weights(problem.model, problem.pixels, problem.score, layer=name, relu=relu)
    layer_map = found.map[0]
    upsampled = F.interpolate(
        layer_map[None, None].float(), size=problem.region.shape, mode="bilinear",
        align_corners=False,
    )[0, 0]  # fmt: skip
    assert found.scores is not None
    return RegionExplanation(
        upsampled,
        problem.region,
        problem.index,
        problem.label,
        problem.picture,
        method,
        {"layer": name, "relu": relu, "score": _SCORE},
        float(found.scores[0]),
        layer_map,
    )


# -- the methods ---------------------------------------------------------------------------------


@register(
    "gradcam",
    task="segment",
    family="cam",
    paper=PAPER,
    description="Seg-Grad-CAM: the layer's channels weighted by the spatial mean of the "
    "gradient of the class's logit summed over the region. Fast; at the toon segmenter's "
    "dec2 most of it lies on the explained part.",
    needs_layer=True,
    aliases=("seg_gradcam", "seg-grad-cam"),
)
def seg_gradcam(
    segmenter: Segmenter,
    images: Any,
    target: int | str | None = None,
    *,
    layer: str | None = None,
    region: Any = None,
    relu: bool = True,
) -> RegionExplanation:
    """Seg-Grad-CAM (Vinogradova et al. 2020, arXiv:2002.11434) of class ``target`` (index or
    name) over ``region`` (H, W, bool; default: the pixels the segmenter labels ``target``) in
    one picture: Grad-CAM of ``S = sum_R y_target`` at ``layer`` (default:
    :func:`default_segment_layer`), ``w_c = mean_ij dS/dA_c``, ``relu(sum_c w_c A_c)`` at the
    layer's resolution (``layer_map``), resized bilinearly to the picture (``map``). One
    forward pass and one ``autograd.grad`` (:func:`~.cam.gradcam`)."""
    return _cam("gradcam", cam.gradcam, segmenter, images, target, region, layer, relu)


@register(
    "layercam",
    task="segment",
    family="cam",
    paper="Jiang et al. 2021, LayerCAM, IEEE TIP 30, doi:10.1109/TIP.2021.3089943; for "
    "segmentation as in " + PAPER,
    description="Layer-CAM of the region's score: the positive gradient at each position "
    "weights the activations, so the map keeps to where the region's evidence is. Fast.",
    needs_layer=True,
    aliases=("seg_layercam", "seg-layer-cam"),
)
def seg_layercam(
    segmenter: Segmenter,
    images: Any,
    target: int | str | None = None,
    *,
    layer: str | None = None,
    region: Any = None,
    relu: bool = True,
) -> RegionExplanation:
    """Layer-CAM (Jiang et al. 2021) of the region score ``S`` (as :func:`seg_gradcam`): the
    weight of each channel at each position is ``relu(dS/dA)``, so the map keeps where the
    gradient is (at the last layers, inside and near the region)."""
    return _cam("layercam", cam.layercam, segmenter, images, target, region, layer, relu)


def _perturbed(name: str, found: Any, problem: _Problem) -> RegionExplanation:
    assert found.scores is not None
    settings = {k: v for k, v in found.settings.items() if k != "signed"}
    if "incremental" in found.extras:
        settings["path"] = found.extras["incremental"]
    return RegionExplanation(
        found.map[0],
        problem.region,
        problem.index,
        problem.label,
        problem.picture,
        name,
        settings,
        float(found.scores[0]),
        extras={k: v for k, v in found.extras.items() if k in ("preview", "preview_of")},
    )


def _previews(
    name: str, preview: Callable[[RegionExplanation], None] | None, problem: _Problem
) -> Callable[[Any], None] | None:
    """The classifier method's ``preview`` callback, handing ``preview`` each first map as a
    :class:`RegionExplanation` of the region (``None`` without one)."""
    if preview is None:
        return None
    return lambda found: preview(_perturbed(name, found, problem))


@register(
    "occlusion",
    task="segment",
    family="perturbation",
    paper="Zeiler & Fergus 2014, arXiv:1311.2901 (of the region's score)",
    description="The drop of the region's summed class score when a window of the picture "
    "is covered, averaged per pixel. Incremental where the network traces.",
    signed=True,
    settings=occlusion.SETTINGS,
)
def region_occlusion(
    segmenter: Segmenter,
    images: Any,
    target: int | str | None = None,
    *,
    layer: str | None = None,
    region: Any = None,
    window: int = 16,
    stride: int = 8,
    fill: Fill = "zero",
    blur_sigma: float = 8.0,
    score: str = "logit",
    incremental: bool | str = "auto",
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    progress: Progress | None = None,
    preview: Callable[[RegionExplanation], None] | None = None,
) -> RegionExplanation:
    """Occlusion (:func:`~.occlusion.occlusion`) of the region score: for each pixel, the mean
    over the windows covering it of ``S(picture) - S(picture with the window filled)``. Fills
    are in pixel space (``"zero"`` and ``"black"``: black; ``"mean"``, ``"blur"``, an (r, g, b)
    colour in [0, 1]); ``score="probability"`` sums the class probability over the region.
    Networks that ``torch.fx`` traces run incrementally (``settings["path"]`` says which ran).
    ``preview`` gets first maps while it runs, as occlusion's (every 4th, then every 2nd row
    and column of windows; ``extras["preview"]``: their share); the map returned is the same."""
    if layer is not None:
        raise ValueError(f"occlusion explains the picture and takes no layer, got {layer!r}")
    problem = _problem(segmenter, images, target, region)
    found = occlusion.occlusion(
        problem.model, problem.pixels, problem.score, window=window, stride=stride, fill=fill,
        blur_sigma=blur_sigma, score=score, incremental=incremental, batch_size=batch_size,
        memory_budget_mb=memory_budget_mb, progress=progress,
        preview=_previews("occlusion", preview, problem),
    )  # fmt: skip
    return _perturbed("occlusion", found, problem)


@register(
    "rise",
    task="segment",
    family="perturbation",
    paper="Petsiuk, Das & Saenko 2018, arXiv:1806.07421 (of the region's score)",
    description="Random smooth masks, each weighted by the class probability summed over the "
    "region in the masked picture. No gradients needed.",
    signed=False,
    settings=rise.SETTINGS,
)
def region_rise(
    segmenter: Segmenter,
    images: Any,
    target: int | str | None = None,
    *,
    layer: str | None = None,
    region: Any = None,
    masks: int = 1000,
    cell: int = 8,
    p: float = 0.5,
    fill: Fill = "zero",
    blur_sigma: float = 8.0,
    score: str = "probability",
    seed: int = 0,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    progress: Progress | None = None,
    preview: Callable[[RegionExplanation], None] | None = None,
) -> RegionExplanation:
    """RISE (Petsiuk et al. 2018, :func:`~.rise.rise`) of the region score: random ``cell`` x
    ``cell`` masks (cells kept with probability ``p``) weighted by ``S`` of the masked picture,
    here the class probability summed over the region (``score``), divided by ``masks * p``.
    Pixels that do not matter sit at the average score, not at 0, so
    :meth:`RegionExplanation.energy_in_mask` of RISE maps includes that floor. ``preview``
    gets the estimate after 128, 256, 512, ... masks (each the map of a run with that many)."""
    if layer is not None:
        raise ValueError(f"rise explains the picture and takes no layer, got {layer!r}")
    problem = _problem(segmenter, images, target, region)
    found = rise.rise(
        problem.model, problem.pixels, problem.score, masks=masks, cell=cell, p=p, fill=fill,
        blur_sigma=blur_sigma, score=score, seed=seed, batch_size=batch_size,
        memory_budget_mb=memory_budget_mb, progress=progress,
        preview=_previews("rise", preview, problem),
    )  # fmt: skip
    return _perturbed("rise", found, problem)


def explain_region(
    segmenter: Any,
    image: Any,
    target: int | str,
    method: str = "gradcam",
    *,
    region: Any = None,
    **options: Any,
) -> RegionExplanation:
    """Class ``target`` over ``region`` (default: the pixels labelled ``target``) in one picture,
    explained by a ``segment`` method (:func:`region_methods`; ``gradcam`` is Seg-Grad-CAM);
    ``options`` go to the method (``layer=``, ``window=``, ``masks=``, ...)."""
    info = get_method(method, "segment")
    return info.fn(segmenter, image, target, region=region, **options)  # type: ignore[no-any-return]


def region_methods() -> list[str]:
    """The names of the methods that explain a region."""
    return list(methods("segment"))
