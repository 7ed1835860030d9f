"""Explaining one detection (task ``detect``): D-RISE and gradient CAMs of the box's score.

Both register in the method table under the ``detect`` task, so ``convlens.explain(detector,
picture, method, target=dets[i])`` finds them as it finds a classifier's methods, and the
faces read their settings from the same table. The result is a :class:`BoxExplanation`, an
:class:`~convlens.techniques.attribution.base.Explanation` like a classifier's
:class:`~convlens.techniques.attribution.base.Attribution`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from convlens.core import render
from convlens.core.detector import Detection, Detections, Detector, _pixels, box_iou
from convlens.core.hooks import forward_hooks, preserved
from convlens.core.naming import unknown
from convlens.core.registry import spec
from convlens.core.render import to_pil
from convlens.core.tasks import detect
from convlens.core.util import jsonable
from convlens.techniques.attribution import cam
from convlens.techniques.attribution.base import (
    Explanation,
    chunks,
    get_method,
    methods,
    no_layer,
    register,
)
from convlens.techniques.attribution.perturbation import preview_extras
from convlens.techniques.attribution.rise import MASK_BLOCK, rise_masks


@dataclass(repr=False)
class BoxExplanation(Explanation):
    """A saliency map (H, W) for one detection: where the pixels are that keep the detector
    finding that box. ``map`` keeps its sign (negative: pixels whose presence hurts it).
    ``extras``: a first map's share of the work (``preview``, of ``preview_of``; see
    :func:`drise`'s ``preview``)."""

    map: torch.Tensor
    target: Detection
    picture: Image.Image
    method: str
    settings: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)

    def energy_in_box(self, box: Sequence[float] | None = None) -> float:
        """Share of the positive attribution inside the target box, or ``box`` (x0, y0, x1, y1)
        (1 = all of it; NaN when nothing is positive)."""
        positive = self.map.clamp_min(0).double()  # float32 sums may put the share above 1
        total = float(positive.sum())
        if total <= 0:
            return math.nan
        x0, y0, x1, y1 = (round(float(v)) for v in (self.target.box if box is None else box))
        return min(1.0, float(positive[max(y0, 0) : y1, max(x0, 0) : x1].sum()) / total)

    def peak(self) -> tuple[int, int]:
        """(x, y) of the largest value."""
        index = int(self.map.argmax())
        return index % self.map.shape[1], index // self.map.shape[1]

    def __len__(self) -> int:
        return 1

    def name(self, index: int = 0) -> str:
        return f"{self.target.name}_{self.target.score:.2f}"

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "map": self.map.numpy(),
            "box": np.array(self.target.box),
            "label": np.array(self.target.label),
            "score": np.array(self.target.score),
        }

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no arrays)."""
        return {
            "method": self.method,
            "settings": jsonable(self.settings),
            "target": {
                "box": [round(float(v), 2) for v in self.target.box],
                "label": self.target.label,
                "name": self.target.name,
                "score": round(float(self.target.score), 5),
            },
            "energy_in_box": jsonable(self.energy_in_box()),
            "peak": list(self.peak()),
            "map_shape": list(self.map.shape),
        }

    def heatmap(self, index: int = 0, **kwargs: Any) -> render.Figure:
        """The map alone (jet, positive part)."""
        self._check(index)
        return render.Figure(render.heatmap(self.map.clamp_min(0), "jet"), self.caption())

    def caption(self, index: int = 0) -> str:
        return f"{self.method} · {self.target.name} {self.target.score:.2f}"

    def _check(self, index: int) -> None:
        if index != 0:
            raise IndexError(f"a box explanation holds one map; got index {index}")

    def overlay(self, index: int = 0, *, alpha: float = 0.5, min_side: int = 384) -> render.Figure:
        """The map (jet, positive part, scaled to its range) over the picture, with the
        target box drawn on top and the colour bar (with the box's score) below. A picture
        shorter than ``min_side`` is enlarged by a whole factor (each pixel a block) first, so
        the label stays small beside what it marks."""
        self._check(index)
        positive = self.map.clamp_min(0).numpy()
        low, high = float(positive.min()), float(positive.max())
        high = high if high > low else low + 1.0
        scale = render.Scale("jet", low, high, f"score {self.target.score:.3g}")
        heat = to_pil(
            render.overlay(
                self.picture, positive, alpha=alpha, norm="absolute", vmin=low, vmax=high
            )
        )
        factor = max(1, math.ceil(min_side / min(heat.size))) if min_side else 1
        if factor > 1:
            heat = heat.resize(
                (heat.width * factor, heat.height * factor), Image.Resampling.NEAREST
            )
        one = Detections(
            torch.tensor([self.target.box]) * factor,
            torch.tensor([self.target.label]),
            torch.tensor([self.target.score]),
            [self.target.name] * (self.target.label + 1),
        )
        return render.Figure(one.draw(heat), self.caption(), scale=scale)

    def __repr__(self) -> str:
        return (
            f"BoxExplanation({self.method}, {self.target.name} {self.target.score:.2f}, "
            f"energy in box {self.energy_in_box():.2f})"
        )


def _similarity(target: Detection, raw: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """Per masked picture, D-RISE's best match to the target: max over its detections of
    IoU x class similarity x objectness. With labels and scores only (no class probability
    vectors), the class similarity of one-hot vectors is 1 for the same label and 0 otherwise,
    and the objectness is the score."""
    box = torch.tensor([target.box])
    out = torch.zeros(len(raw))
    for i, found in enumerate(raw):
        if len(found["scores"]) == 0:
            continue
        same = (found["labels"].reshape(-1) == target.label).float()
        weights = box_iou(box, found["boxes"].float())[0] * same * found["scores"].float()
        out[i] = weights.max()
    return out


@register(
    "drise",
    task="detect",
    family="perturbation",
    paper="Petsiuk et al. 2021, Black-box Explanation of Object Detectors via Saliency Maps "
    "(D-RISE), CVPR, arXiv:2006.03204",
    description="Random masks, each weighted by how well the detector still finds this box. "
    "Needs no gradients (works for any detector); one detector pass per mask.",
    signed=True,
    settings={
        "masks": spec("random masks (more: smoother, slower)", min=1, max=100_000, step=10),
        "cell": spec("mask grid cells per side", min=2, max=256),
        "p": spec("share of cells kept", min=0.01, max=0.99, step=0.05),
        "batch_size": spec("masked copies per detector call", min=1, max=4096, form=False),
        "seed": spec("the same seed gives the same map", min=0, max=2**31 - 1),
    },
)
def drise(
    detector: Detector,
    image: Any,
    target: Detection | int | None = None,
    *,
    layer: str | None = None,
    masks: int = 1000,
    cell: int = 16,
    p: float = 0.5,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    preview: Callable[[BoxExplanation], None] | None = None,
) -> BoxExplanation:
    """D-RISE (Petsiuk et al., CVPR 2021): explain one detection by random masking.

    ``masks`` random binary grids of ``cell`` x ``cell`` cells (each kept with probability
    ``p``), upsampled and shifted as RISE does, multiply the picture; the detector runs on each
    masked copy (its raw outputs, before our thresholds); each mask is weighted by its best
    match to the target (IoU x class x objectness, :func:`_similarity`). The map is the
    weighted average of the masks minus the average weight times the mean mask, so pixels that
    do not matter sit at 0 rather than at a baseline and the share inside the box is
    meaningful. ``target``: a detection or its index among ``detect(detector, image)``. The
    same seed gives the same map, whatever the batch size: masks are drawn 128 at a time, so
    the first ``128 k`` masks of a run are those of a run with ``128 k`` masks. ``preview``
    gets the map of the masks drawn so far after 128, 256, 512, ... of them
    (``extras["preview"]``: their share), each the map of a run with that many masks.
    """
    no_layer("drise", layer)
    if masks < 1 or cell < 1 or not 0 < p < 1 or batch_size < 1:
        raise ValueError(
            f"expected masks >= 1, cell >= 1, p in (0, 1), batch_size >= 1; got {masks}, "
            f"{cell}, {p}, {batch_size}"
        )
    pixels, pictures = _pixels(image)
    if len(pixels) != 1:
        raise ValueError(f"expected one picture, got {len(pixels)}")
    target = _resolve_box(detector, pixels, target)
    height, width = pixels.shape[-2:]
    settings = {"masks": masks, "cell": cell, "p": p, "seed": seed}
    gen = torch.Generator().manual_seed(seed)
    step = (math.ceil(height / cell), math.ceil(width / cell))
    total = torch.zeros(height, width, dtype=torch.float64)
    weighted = torch.zeros(height, width, dtype=torch.float64)
    weight_sum = 0.0

    def explanation(drawn: int, extras: dict[str, Any]) -> BoxExplanation:
        saliency = (weighted - weight_sum * total / drawn) / drawn
        return BoxExplanation(
            saliency.float(), target, pictures[0], "drise", dict(settings), extras
        )

    for block in chunks(masks, MASK_BLOCK):  # drawn a block at a time: see above
        count = block.stop - block.start
        grids = (torch.rand(count, cell, cell, generator=gen) < p).float()
        shifts = torch.stack([torch.randint(side, (count,), generator=gen) for side in step], 1)
        for part in chunks(count, batch_size):
            m = rise_masks(grids[part], shifts[part], (height, width))
            w = _similarity(target, detector.raw(pixels * m.unsqueeze(1)))
            weighted += torch.einsum("n,nhw->hw", w.double(), m.double())
            total += m.double().sum(0)
            weight_sum += float(w.sum())
            if progress is not None:
                progress(block.start + part.stop, masks)
        drawn = block.stop
        if preview is not None and drawn < masks and drawn & (drawn - 1) == 0:
            preview(explanation(drawn, preview_extras(drawn / masks, "masks")))
    return explanation(masks, {})


# -- explaining one box: gradient CAMs -------------------------------------------------------------


def default_box_layer(detector: Detector) -> str:
    """The layer box CAMs read when none is given: the detector's own ``layer``; else, for a
    network with a ``backbone`` (torchvision's detectors, our CenterNet), the last stage of
    ``backbone.body`` (the feature extractor under a feature pyramid) or the backbone itself."""
    if detector.layer is not None:
        return detector.layer
    modules = dict(detector.module.named_modules())
    body = modules.get("backbone.body")
    if body is not None:
        children = [name for name, _ in body.named_children()]
        if children:
            return f"backbone.body.{children[-1]}"
    if "backbone" in modules:
        return "backbone"
    raise ValueError(
        f"{detector.name} has no backbone to take a layer from; pass layer= (one of its "
        f"modules with an (N, C, h, w) output, e.g. {list(modules)[-3:]})"
    )


def _match_found(
    target: Detection, boxes: torch.Tensor, labels: torch.Tensor, min_iou: float
) -> int:
    """Index of the detection that is ``target`` again: same class, largest IoU (>= min_iou)."""
    if len(boxes) == 0:
        raise ValueError(f"the detector found nothing where {target.name} {target.box} was")
    box = torch.tensor([target.box])
    overlap = box_iou(box, boxes.detach().float().cpu())[0]
    overlap = overlap * (labels.detach().cpu().reshape(-1) == target.label)
    best = int(overlap.argmax())
    if float(overlap[best]) < min_iou:
        raise ValueError(
            f"the detector finds no {target.name} box with IoU >= {min_iou} against "
            f"{tuple(round(v, 1) for v in target.box)} (best {float(overlap[best]):.2f}); "
            "was the target detected on this picture?"
        )
    return best


def box_cam(
    detector: Detector,
    image: Any,
    target: Detection | int,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    min_iou: float = 0.5,
) -> BoxExplanation:
    """A gradient CAM of one detection's score.

    The detector runs once with gradients; the target is the output detection of the same
    class that overlaps ``target`` most (IoU >= ``min_iou``; before thresholds and NMS), and
    its score is differentiated with respect to ``layer``'s output (default:
    :func:`default_box_layer`). ``method``: ``gradcam`` (channel weights = the spatial mean of
    the gradient) or ``layercam`` (the positive gradient at each position). A detector's box
    score depends on a few positions of the layer, and Grad-CAM's mean turns that into class
    weights that light every object of the class: on crowd toons, boxes whose class appears
    once peak on their own character, two of one class cannot be told apart. Layer-CAM keeps
    the gradient's position and separates them. (Grad-CAM++'s closed form is left out: with
    a gradient at one position its weights no longer follow the gradient.)
    The map is ``relu(sum_c w_c A_c)``, resized bilinearly to the picture; a detector that
    pads its input (torchvision's R-CNNs) has the padding cut off first. Detectors whose
    scores leave torch (MTCNN's cascade) have no gradient: use ``drise``.
    """

    weights_of = {"gradcam": cam.gradcam_weights, "layercam": cam.layercam_weights}
    if method not in weights_of:
        raise unknown("box CAM method", method, list(weights_of))
    if not 0 < min_iou <= 1:
        raise ValueError(f"expected min_iou in (0, 1], got {min_iou}")
    pixels, pictures = _pixels(image)
    if len(pixels) != 1:
        raise ValueError(f"expected one picture, got {len(pixels)}")
    target = _resolve_box(detector, pixels, target)
    name = layer or default_box_layer(detector)
    captured: list[torch.Tensor] = []
    padded: list[tuple[tuple[int, int], tuple[int, int]]] = []

    def keep(layer_name: str, output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"box CAMs need a layer with an (N, C, h, w) output; {layer_name!r} returned {got}"
            )
        captured.append(output)
        return output.clone()  # in-place layers downstream leave the captured tensor alone

    def sizes(_name: str, output: Any) -> None:
        # torchvision's GeneralizedRCNNTransform returns (ImageList, targets): the resized
        # size of each picture and the padded batch
        first = output[0] if isinstance(output, tuple) else output
        if hasattr(first, "image_sizes") and hasattr(first, "tensors"):
            padded.append((tuple(first.image_sizes[0]), tuple(first.tensors.shape[-2:])))

    transform = ["transform"] if "transform" in dict(detector.module.named_children()) else []
    with preserved(detector.module), torch.inference_mode(False), torch.enable_grad():
        x = pixels.to(detector.device).clone().requires_grad_(True)
        with (
            forward_hooks(detector.module, [name], keep),
            forward_hooks(detector.module, transform, sizes),
        ):
            fitted, back = detector.fit(x)  # the size the detector was trained at
            out = detector.module(detector.to_input(fitted))
        if len(captured) != 1:
            how = "did not run" if not captured else f"ran {len(captured)} times"
            raise ValueError(f"layer {name!r} {how} in one pass; box CAMs need a layer run once")
        found = out[0]
        boxes = found["boxes"] * back.to(found["boxes"])  # in the picture's pixels
        best = _match_found(target, boxes, found["labels"], min_iou)
        score = found["scores"][best]
        if not isinstance(score, torch.Tensor) or not score.requires_grad:
            raise ValueError(
                f"{detector.name}'s scores carry no gradient (its pipeline leaves torch), so "
                "gradient CAMs cannot explain it; use method='drise'"
            )
        (grad,) = torch.autograd.grad(score, captured[0], allow_unused=True)
    activations = captured[0].detach()
    if grad is None:
        grad = torch.zeros_like(activations)
    weights = weights_of[method](activations, grad.detach())
    heat = cam.class_activation_map(activations, weights)[0].float().cpu()
    if padded:
        (rh, rw), (ph, pw) = padded[0]
        h, w = heat.shape
        heat = heat[: max(1, round(h * rh / ph)), : max(1, round(w * rw / pw))]
    height, width = pixels.shape[-2:]
    heat = torch.nn.functional.interpolate(
        heat[None, None], size=(height, width), mode="bilinear", align_corners=False
    )[0, 0]
    return BoxExplanation(
        heat,
        target,
        pictures[0],
        method,
        {"layer": name, "min_iou": min_iou, "score": round(float(score.detach()), 5)},
    )


_BOX_CAM_PAPERS = {
    "gradcam": "Selvaraju et al. 2017, Grad-CAM, arXiv:1610.02391",
    "layercam": "Jiang et al. 2021, LayerCAM, IEEE TIP 30, doi:10.1109/TIP.2021.3089943",
}
_MIN_IOU = spec("how closely the box is re-found", min=0.05, max=1.0, step=0.05)


@register(
    "gradcam",
    task="detect",
    family="cam",
    paper=_BOX_CAM_PAPERS["gradcam"],
    description="Gradient of the box's score at a layer, averaged over positions into channel "
    "weights. Fast, but it lights every object of the box's class: it cannot tell two "
    "characters of the same class apart (use Layer-CAM for that).",
    needs_layer=True,
    settings={"min_iou": _MIN_IOU},
)
def box_gradcam(
    detector: Detector,
    image: Any,
    target: Detection | int | None = None,
    *,
    layer: str | None = None,
    min_iou: float = 0.5,
) -> BoxExplanation:
    """Grad-CAM of one detection's score (:func:`box_cam`)."""
    return box_cam(detector, image, _needed(target), method="gradcam", layer=layer, min_iou=min_iou)


@register(
    "layercam",
    task="detect",
    family="cam",
    paper=_BOX_CAM_PAPERS["layercam"],
    description="The positive gradient of the box's score, position by position, weights the "
    "layer's activations: it keeps where the box is, so it separates two characters of the "
    "same class. Fast.",
    needs_layer=True,
    settings={"min_iou": _MIN_IOU},
)
def box_layercam(
    detector: Detector,
    image: Any,
    target: Detection | int | None = None,
    *,
    layer: str | None = None,
    min_iou: float = 0.5,
) -> BoxExplanation:
    """Layer-CAM of one detection's score (:func:`box_cam`)."""
    return box_cam(
        detector, image, _needed(target), method="layercam", layer=layer, min_iou=min_iou
    )


def _needed(target: Any) -> Any:
    if target is None:
        raise ValueError("expected target= a detection (e.g. dets[1]) or its index")
    return target


def _resolve_box(detector: Detector, pixels: torch.Tensor, target: Any) -> Detection:
    """A :class:`Detection` from a detection, or its index among the detector's findings."""
    if isinstance(target, Detection):
        return target
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise ValueError(
            f"expected a detection (e.g. dets[1]) or its index as the target, got {target!r}"
        )
    found = detect(detector, pixels)
    if not -len(found) <= target < len(found):
        raise ValueError(f"expected a detection index below {len(found)}, got {target}")
    return found[int(target)]


def explain_box(
    detector: Detector, image: Any, target: Any, method: str = "drise", **options: Any
) -> BoxExplanation:
    """One detection explained by a ``detect`` method (:func:`box_methods`): D-RISE (no
    gradients needed) or a gradient CAM of its score. ``target``: a :class:`Detection`
    (``dets[1]``) or its index among the detections on ``image``."""
    return get_method(method, "detect").fn(detector, image, _needed(target), **options)  # type: ignore[no-any-return]


def box_methods() -> list[str]:
    """The names of the methods that explain one box."""
    return list(methods("detect"))
