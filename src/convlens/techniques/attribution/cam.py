"""Class activation maps: Grad-CAM, Grad-CAM++, Layer-CAM, Eigen-CAM, Score-CAM, guided Grad-CAM.

The CAM is written once (:func:`class_activation_map`)::

    cam[n] = relu(sum_c w[n, c] * A[n, c])          A: the layer's activations (N, C, h, w)

and each variant supplies only its weights ``w``, computed from the activations and, for the
gradient CAMs, ``dA = d score / d A`` (a (N, C) channel weight; Layer-CAM's weight is per
pixel, (N, C, h, w), and broadcasts the same way). One forward pass captures ``A`` through a
scoped hook and ``torch.autograd.grad(score.sum(), A)`` gives ``dA``: no parameter gradients,
no ``.backward()``. ``score`` is the target's raw score (the logit, see
:class:`~convlens.attribution.Target`).

Maps are (N, h, w) at the layer's resolution, float32, not normalised; ``relu=True`` (the
default of every CAM here, as in the papers) keeps only positive evidence, so a map with no
positive evidence is all zeros, never NaN. ``relu=False`` keeps the sign (``settings["signed"]``
is then True). :meth:`~convlens.attribution.Attribution.upsampled` brings a map to the input
size and :meth:`~convlens.attribution.Attribution.normalized` to [0, 1] for display.

Layers
------
``layer=None`` takes :func:`~convlens.attribution.default_layer` (the last layer with a
spatial output; reported in ``Attribution.layer``, and why in ``extras["layer_choice"]``). A
module that runs several times in a forward pass (EfficientNet-Lite's shared ReLU6) offers
each call as a layer, ``name#k``; the default may be one (``_swish#2``, the head's
activation). Any dotted ``named_modules()`` name works;
unknown names raise :class:`~convlens.naming.UnknownNameError` with close matches. Several
layers (a list, or one comma-separated string ``"features.14,features.18"``) are captured in
the same passes; each layer's map is divided by its own peak ``max|map|`` (per image; an all-zero
map stays zero), upsampled bilinearly to the largest of the layer maps and averaged. The result
is still a layer map (N, h, w) at the finest layer's resolution; ``Attribution.layer`` joins the
names with ``+`` and ``extras["layer_maps"]`` keeps every layer's raw map, in order.

Differences from the peers (shown by tests/test_cam.py)
-------------------------------------------------------
- pytorch-grad-cam returns maps ReLU'd, resized to the input with ``cv2.resize`` and min-max
  normalised per image; ours are the raw maps before that. On MobileNetV2 and real photos its
  maps before scaling equal ours within 5e-7 of the peak (Grad-CAM, Grad-CAM++, Layer-CAM,
  Eigen-CAM with ``sign="numpy"``, Score-CAM with ``align_corners=True``); our map
  ``.upsampled()`` and min-max normalised equals its output within 3e-6 (Pearson r 1.0000000).
- pytorch-grad-cam combines several layers by min-max normalising each at the input size,
  averaging and normalising again; ours keeps zero at zero (peak scaling) and stays at the
  layer resolution.
- Score-CAM: masks are upsampled with ``align_corners=False`` by default, as the authors'
  implementation (haofanwang/Score-CAM) and :meth:`Attribution.upsampled`; pytorch-grad-cam
  uses ``UpsamplingBilinear2d`` (``align_corners=True``); ``align_corners=True`` reproduces it.
  The channel scores are the target's raw score and the weights their softmax over channels,
  as in pytorch-grad-cam (the authors' code weights by the target's softmax probability). On
  MobileNetV2's features.6 (28x28 -> 224x224) and chelsea the two upsamplings give maps with
  Pearson r 0.974.
- Eigen-CAM: the sign of a principal component is arbitrary; pytorch-grad-cam keeps whatever
  numpy's LAPACK returns (numpy's OpenBLAS and torch's MKL chose opposite signs for 11 of 20
  (layer, photo) pairs on MobileNetV2), so its map can mark the least active regions: at
  features.17 it does for 3 of the 4 sample photos. Ours orients the component so that the
  projection correlates positively with the summed activations (the map follows where the
  layer fires; at the default layer this agreed with pytorch-grad-cam on all 4 photos);
  ``sign="numpy"`` reproduces pytorch-grad-cam exactly.
- Captum's ``LayerGradCam`` applies no ReLU by default: it equals ours with ``relu=False``
  (bit for bit on MobileNetV2).
- Guided Grad-CAM: Captum's ``GuidedGradCam`` upsamples the Grad-CAM with nearest neighbours;
  ours bilinearly by default; ``interpolation="nearest", relu6=False`` reproduces Captum (bit
  for bit on MobileNetV2, whose ReLU6 Captum does not guide).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from convlens.core.hooks import preserved
from convlens.core.model import Batch, Model
from convlens.core.registry import spec
from convlens.techniques.attribution.base import (
    Attribution,
    TargetSpec,
    batch_size_for,
    chunks,
    make_attribution,
    register,
)
from convlens.techniques.attribution.capture import Captured, LayerSpec, capture, layer_names

Progress = Callable[[int, int], None]
Weights = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# -- the CAM, written once ------------------------------------------------------------------


def class_activation_map(
    activations: torch.Tensor, weights: torch.Tensor, *, relu: bool = True
) -> torch.Tensor:
    """``relu(sum_c w[n, c] * A[n, c])``: (N, h, w) from activations (N, C, h, w) and weights
    (N, C) (one per channel) or (N, C, h, w) (one per channel and pixel, Layer-CAM)."""
    if weights.dim() == 2:
        weights = weights[:, :, None, None]
    cam = (weights * activations).sum(1)
    return cam.clamp(min=0) if relu else cam


# -- the weights of each variant -------------------------------------------------------------


def gradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: the spatial mean of the gradients, (N, C)."""
    return gradients.mean(dim=(2, 3))


def gradcam_plusplus_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Eq. 19 of the paper, the closed form for an exponential score, as
    pytorch-grad-cam computes it): ``alpha = g^2 / (2 g^2 + sum_ij A * g^3 + 1e-6)`` where
    ``g != 0`` (else 0), ``w = sum_ij relu(g) * alpha``; (N, C)."""
    g2 = gradients * gradients
    g3 = g2 * gradients
    total = activations.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + total * g3 + 1e-6)
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    positive = torch.where(gradients > 0, gradients * alpha, torch.zeros_like(alpha))
    return positive.sum(dim=(2, 3))


def xgradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM: ``w[n, c] = sum_ij A[n, c, i, j] / (sum_ij A[n, c] + 1e-7) * g[n, c, i, j]``,
    the gradient averaged with the activations as weights (N, C)."""
    total = activations.sum(dim=(2, 3), keepdim=True)
    return (gradients * activations / (total + 1e-7)).sum(dim=(2, 3))


def layercam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Layer-CAM: the positive gradient at every pixel, (N, C, h, w) (not a channel weight)."""
    return gradients.clamp(min=0)


def eigencam_weights(activations: torch.Tensor, sign: str = "activation") -> torch.Tensor:
    """Eigen-CAM: the first right singular vector ``v`` (N, C) of each image's centred
    activations ``X = A - mean_ij A`` as a (h*w, C) matrix; the map is ``relu(X @ v)``, i.e.
    :func:`class_activation_map` of the centred activations with weights ``v``.

    ``sign="activation"`` orients ``v`` so that ``X @ v`` correlates positively with the summed
    activations ``sum_c A``; ``sign="numpy"`` keeps the sign that ``numpy.linalg.svd``
    (``full_matrices=True``, float32, on the CPU) returns, exactly as pytorch-grad-cam.
    """
    n, c, h, w = activations.shape
    x = activations.float().reshape(n, c, h * w).transpose(1, 2)
    x = x - x.mean(dim=1, keepdim=True)
    if sign == "numpy":
        rows = [np.linalg.svd(m.detach().cpu().numpy(), full_matrices=True)[2][0] for m in x]
        return torch.from_numpy(np.stack(rows)).to(activations.device, activations.dtype)
    v = torch.linalg.svd(x, full_matrices=False).Vh[:, 0, :]
    projection = (x @ v.unsqueeze(-1)).squeeze(-1)
    agreement = (projection * activations.float().sum(1).reshape(n, h * w)).sum(1)
    v = torch.where((agreement < 0).unsqueeze(1), -v, v)
    return v.to(activations.dtype)


# -- assembling the result ------------------------------------------------------------------


def _combine(maps: list[torch.Tensor]) -> torch.Tensor:
    """Several layer maps (N, h_l, w_l) -> one (N, h, w) at the largest of them: each divided
    by its own peak ``max|map|`` per image (zero maps stay zero), upsampled bilinearly
    (``align_corners=False``) and averaged."""
    size = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    scaled = []
    for m in maps:
        peak = m.abs().amax(dim=(1, 2), keepdim=True)
        m = m / torch.where(peak > 0, peak, torch.ones_like(peak))
        if tuple(m.shape[-2:]) != size:
            m = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
            m = m.squeeze(1)
        scaled.append(m)
    return torch.stack(scaled).mean(0)


def _result(
    maps: list[torch.Tensor],
    *,
    method: str,
    settings: dict[str, Any],
    model: Model,
    batch: Batch,
    captured: Captured,
    extras: dict[str, Any] | None = None,
) -> Attribution:
    layers = captured.layers
    extras = dict(extras or {})
    if captured.note:
        extras["layer_choice"] = captured.note
    if len(layers) == 1:
        attribution_map = maps[0]
        settings = {"layer": layers[0], **settings}
    else:
        attribution_map = _combine(maps)
        settings = {
            "layer": list(layers),
            "combine": "mean of peak-scaled maps at the largest layer map",
            **settings,
        }
        extras["layer_maps"] = [m.detach().float().cpu() for m in maps]
    return make_attribution(
        attribution_map,
        method=method,
        settings=settings,
        model=model,
        batch=batch,
        target=captured.target,
        scores=captured.scores,
        layer="+".join(layers),
        extras=extras,
    )


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected {name}=True or False, got {value!r}")
    return value


def _gradient_maps(
    model: Model,
    batch: Batch,
    target: TargetSpec,
    layers: list[str],
    weights: Weights,
    *,
    relu: bool,
    note: str | None = None,
) -> tuple[list[torch.Tensor], Captured]:
    captured = capture(model, batch, target, layers, gradients=True, note=note)
    assert captured.gradients is not None
    maps = [
        class_activation_map(a, weights(a, g), relu=relu)
        for a, g in zip(captured.activations, captured.gradients, strict=True)
    ]
    return maps, captured


def _gradient_cam(
    method: str,
    weights: Weights,
    model: Model,
    images: Any,
    target: TargetSpec,
    layer: LayerSpec,
    relu: bool,
) -> Attribution:
    relu = _check_bool("relu", relu)
    batch = model.prepare(images)
    layers, note = layer_names(model, layer)
    maps, captured = _gradient_maps(model, batch, target, layers, weights, relu=relu, note=note)
    settings = {"relu": relu, "signed": not relu}
    return _result(
        maps, method=method, settings=settings, model=model, batch=batch, captured=captured
    )


# -- the methods ---------------------------------------------------------------------------

_PAPER_GRADCAM = (
    "Selvaraju et al. 2017, Grad-CAM: Visual Explanations from Deep Networks via "
    "Gradient-based Localization, arXiv:1610.02391"
)


@register(
    "gradcam",
    family="cam",
    paper=_PAPER_GRADCAM,
    description="Layer activations weighted by the spatial mean of the target's gradient",
    needs_layer=True,
)
def gradcam(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: LayerSpec = None,
    relu: bool = True,
) -> Attribution:
    """Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391).

    ``w[n, c] = mean_ij d score / d A[n, c, i, j]``; map ``relu(sum_c w * A)``, (N, h, w) at
    the layer's resolution. The final ReLU is kept by default (``relu=True``, as in the paper
    and pytorch-grad-cam): values >= 0, all zeros (never NaN) when nothing speaks for the
    target. ``relu=False`` keeps the sign (Captum's ``LayerGradCam`` default). On a network
    ending in global average pooling + linear it is classic CAM (Zhou et al. 2016,
    arXiv:1512.04150) divided by h*w.
    """
    return _gradient_cam("gradcam", gradcam_weights, model, images, target, layer, relu)


@register(
    "gradcam++",
    family="cam",
    paper=(
        "Chattopadhay et al. 2018, Grad-CAM++: Generalized Gradient-based Visual Explanations "
        "for Deep Convolutional Networks, arXiv:1710.11063"
    ),
    description="Grad-CAM with pixel-wise weighting of the positive gradients",
    needs_layer=True,
)
def gradcam_plusplus(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: LayerSpec = None,
    relu: bool = True,
) -> Attribution:
    """Grad-CAM++ (Chattopadhay et al. 2018, arXiv:1710.11063), with the weights of
    :func:`gradcam_plusplus_weights` (pytorch-grad-cam's formula: the paper's closed form from
    first-order gradients of the raw score, the constant factor exp(score) dropped).
    (N, h, w), values >= 0 with ``relu=True`` (default)."""
    return _gradient_cam("gradcam++", gradcam_plusplus_weights, model, images, target, layer, relu)


@register(
    "layercam",
    family="cam",
    paper=(
        "Jiang et al. 2021, LayerCAM: Exploring Hierarchical Class Activation Maps for "
        "Localization, IEEE TIP 30, doi:10.1109/TIP.2021.3089943"
    ),
    description="Activations weighted pixel by pixel by the positive gradient",
    needs_layer=True,
)
def layercam(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: LayerSpec = None,
    relu: bool = True,
) -> Attribution:
    """Layer-CAM (Jiang et al. 2021): ``relu(sum_c relu(dA) * A)``, (N, h, w).

    Not a channel-weight method: the weight is per pixel (``relu(dA)``, (N, C, h, w)), applied
    by the same :func:`class_activation_map`. Works at shallow layers too, where Grad-CAM's
    averaged weights blur. Values >= 0 with ``relu=True`` (default)."""
    return _gradient_cam("layercam", layercam_weights, model, images, target, layer, relu)


@register(
    "xgradcam",
    family="cam",
    paper="Fu et al. 2020, Axiom-based Grad-CAM: Towards Accurate Visualization and "
    "Explanation of CNNs, BMVC, arXiv:2008.02312",
    description="Grad-CAM whose channel weights average the gradient weighted by the "
    "activations (sensitivity and conservation axioms)",
    needs_layer=True,
)
def xgradcam(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: LayerSpec = None,
    relu: bool = True,
) -> Attribution:
    """XGrad-CAM (Fu et al. 2020, arXiv:2008.02312): Grad-CAM with
    :func:`xgradcam_weights`; (N, h, w) at the layer's resolution, >= 0 with ``relu=True``."""
    return _gradient_cam("xgradcam", xgradcam_weights, model, images, target, layer, relu)


@register(
    "eigencam",
    family="cam",
    paper=(
        "Muhammad & Yeasin 2020, Eigen-CAM: Class Activation Map using Principal Components, "
        "arXiv:2008.00299"
    ),
    description="First principal component of the layer's activations (class-agnostic)",
    needs_layer=True,
    settings={"sign": spec("how the component's sign is chosen", choices=("activation", "numpy"))},
)
def eigencam(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: LayerSpec = None,
    relu: bool = True,
    sign: str = "activation",
) -> Attribution:
    """Eigen-CAM (Muhammad & Yeasin 2020, arXiv:2008.00299): the projection of each pixel's
    centred activation vector on the first principal component, ``relu(X @ v)``, (N, h, w).

    No gradients and no class: ``target`` only labels the result (and its score). The SVD runs
    per image on the centred (h*w, C) matrix, as pytorch-grad-cam. ``sign`` fixes the
    component's arbitrary sign (see :func:`eigencam_weights`): ``"activation"`` (default) or
    ``"numpy"`` (pytorch-grad-cam's, exactly).
    """
    relu = _check_bool("relu", relu)
    if sign not in ("activation", "numpy"):
        raise ValueError(f"expected sign 'activation' or 'numpy', got {sign!r}")
    batch = model.prepare(images)
    layers, note = layer_names(model, layer)
    captured = capture(model, batch, target, layers, gradients=False, note=note)
    maps = []
    for a in captured.activations:
        centred = a - a.mean(dim=(2, 3), keepdim=True)
        maps.append(class_activation_map(centred, eigencam_weights(a, sign), relu=relu))
    settings = {"relu": relu, "sign": sign, "signed": not relu}
    return _result(
        maps, method="eigencam", settings=settings, model=model, batch=batch, captured=captured
    )


@register(
    "scorecam",
    family="cam",
    paper=(
        "Wang et al. 2020, Score-CAM: Score-Weighted Visual Explanations for Convolutional "
        "Neural Networks, arXiv:1910.01279"
    ),
    description="Activations weighted by the score of the input masked with each channel",
    needs_layer=True,
    settings={
        "align_corners": spec("align corners when upsampling the masks"),
        "channels": spec(
            "mask with only this many channels, those with the highest mean activation "
            "(faster, an approximation: the others get weight 0); none: every channel, exact",
            type="int",
            min=1,
        ),
    },
)
def scorecam(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: LayerSpec = None,
    relu: bool = True,
    align_corners: bool = False,
    channels: int | None = None,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    progress: Progress | None = None,
) -> Attribution:
    """Score-CAM (Wang et al. 2020, arXiv:1910.01279), as pytorch-grad-cam computes it.

    For each channel ``c``: upsample ``A[n, c]`` to the input size (bilinear,
    ``align_corners``; ``True`` is pytorch-grad-cam's ``UpsamplingBilinear2d``), min-max
    normalise it to a mask in [0, 1] (``(m - min) / (max - min + 1e-8)``), multiply the input,
    and take the target's raw score; ``w[n] = softmax_c(scores)``; map ``relu(sum_c w * A)``,
    (N, h, w), values >= 0 with ``relu=True`` (default).

    One forward per (image, channel) pair, ``batch_size`` masked copies at a time (default:
    as many as fit ``memory_budget_mb``, see :func:`~convlens.attribution.batch_size_for`);
    only one chunk of masked copies exists at any time. ``progress(done, total)`` is called
    after each chunk.

    ``channels=k`` is a speed setting, not part of the paper: per image, only the ``k``
    channels with the highest mean activation ``mean_ij A[n, c]`` are masked and scored, the
    softmax runs over those ``k`` scores, and every other channel gets weight 0, so the cost is
    ``k`` forward passes per image instead of ``C``. It approximates Score-CAM (a channel
    that is weak on average but whose mask scores high is missed); ``None`` (default) or
    ``k >= C`` is the exact method. At MobileNetV2's default layer (1,280 channels) ``k=64``
    is 20 times fewer passes, and the map keeps its shape (Pearson r 0.97 and 0.99 with the
    exact map on the astronaut and chelsea samples) while its values grow (the softmax spreads
    over ``k`` scores, not ``C``): compare such maps on their own scales.
    """
    relu = _check_bool("relu", relu)
    align_corners = _check_bool("align_corners", align_corners)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"expected batch_size a whole number >= 1, got {batch_size!r}")
    if channels is not None and (
        isinstance(channels, bool) or not isinstance(channels, int) or channels < 1
    ):
        raise ValueError(f"expected channels a whole number >= 1 or None, got {channels!r}")
    batch = model.prepare(images)
    layers, note = layer_names(model, layer)
    captured = capture(model, batch, target, layers, gradients=False, note=note)
    size = batch_size or batch_size_for(model, memory_budget_mb)
    height, width = batch.inputs.shape[-2:]
    kept = [
        a.shape[1] if channels is None else min(channels, a.shape[1]) for a in captured.activations
    ]
    total = sum(a.shape[0] * k for a, k in zip(captured.activations, kept, strict=True))
    done = 0
    maps = []
    for a, c in zip(captured.activations, kept, strict=True):
        n, _, h, w = a.shape
        chosen = _strongest_channels(a, c)
        flat = a if chosen is None else a.gather(1, chosen[:, :, None, None].expand(n, c, h, w))
        flat = flat.reshape(n * c, 1, h, w)
        repeated = captured.target.repeat(c)
        parts = []
        with preserved(model.module), torch.inference_mode():
            for part in chunks(n * c, size):
                masks = F.interpolate(
                    flat[part], size=(height, width), mode="bilinear", align_corners=align_corners
                )
                low = masks.amin(dim=(2, 3), keepdim=True)
                high = masks.amax(dim=(2, 3), keepdim=True)
                masks = (masks - low) / (high - low + 1e-8)
                owners = torch.arange(part.start, part.stop, device=a.device) // c
                outputs = model.forward(batch.inputs[owners] * masks)
                index = torch.arange(part.start, part.stop)
                parts.append(repeated.select(index).score(outputs).float())
                done += part.stop - part.start
                if progress is not None:
                    progress(done, total)
        scores = torch.cat(parts).clone()  # a normal tensor again, outside inference mode
        weights = scores.view(n, c).softmax(dim=1).to(a.dtype)
        if chosen is not None:  # the channels left out weigh 0
            weights = torch.zeros(n, a.shape[1], dtype=a.dtype, device=a.device).scatter(
                1, chosen, weights
            )
        maps.append(class_activation_map(a, weights, relu=relu))
    settings = {
        "relu": relu,
        "align_corners": align_corners,
        "channels": channels,
        "batch_size": size,
        "signed": not relu,
    }
    return _result(
        maps, method="scorecam", settings=settings, model=model, batch=batch, captured=captured
    )


def _strongest_channels(activations: torch.Tensor, k: int) -> torch.Tensor | None:
    """The ``k`` channels of each image with the highest mean activation, (N, k) indices,
    strongest first; ``None`` when ``k`` takes every channel (the exact Score-CAM)."""
    if k >= activations.shape[1]:
        return None
    return activations.float().mean(dim=(2, 3)).topk(k, dim=1).indices


@register(
    "guided_gradcam",
    family="cam",
    paper=(f"{_PAPER_GRADCAM}; guided backpropagation: Springenberg et al. 2014, arXiv:1412.6806"),
    description="Guided backpropagation masked by the upsampled Grad-CAM",
    needs_layer=True,
    signed=True,
    settings={
        "interpolation": spec("how the CAM is upsampled", choices=("bilinear", "nearest")),
        "relu6": spec("guide ReLU6 as a ReLU (False: as Captum)"),
    },
)
def guided_gradcam(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: LayerSpec = None,
    interpolation: str = "bilinear",
    relu6: bool = True,
) -> Attribution:
    """Guided Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391): guided backpropagation
    (:func:`convlens.gradients.guided_backprop`, (N, C, H, W)) times the Grad-CAM map (ReLU
    kept) upsampled to the input size.

    Returns an input-space (N, C, H, W) map with its sign (as Captum's ``GuidedGradCam`` and
    the paper's colour pictures; :meth:`Attribution.maps2d` sums the channels for display).
    ``interpolation`` upsamples the Grad-CAM: ``"bilinear"`` (default, ``align_corners=False``)
    or ``"nearest"`` (Captum's default). ``relu6`` goes to guided backpropagation
    (``relu6=False`` is Captum's, which guides ``nn.ReLU`` only). The Grad-CAM layer map is in
    ``extras["gradcam"]`` (several layers: combined as the module docstring says).
    """
    from convlens.techniques.attribution.gradients import guided_backprop

    relu6 = _check_bool("relu6", relu6)
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"expected interpolation 'bilinear' or 'nearest', got {interpolation!r}")
    batch = model.prepare(images)
    layers, note = layer_names(model, layer)
    maps, captured = _gradient_maps(
        model, batch, target, layers, gradcam_weights, relu=True, note=note
    )
    grad_cam = maps[0] if len(maps) == 1 else _combine(maps)
    resolved = captured.target
    spec: TargetSpec = resolved.indices if resolved.indices is not None else resolved.fn
    guided = guided_backprop(model, batch, spec, relu6=relu6)
    gradients = guided.map.to(maps[0].device)
    if gradients.dim() != 4:
        raise ValueError(
            f"expected (N, C, H, W) gradients from guided backpropagation, got "
            f"{tuple(gradients.shape)}"
        )
    kwargs = {"align_corners": False} if interpolation == "bilinear" else {}
    upsampled = F.interpolate(
        grad_cam.unsqueeze(1).float(), size=gradients.shape[-2:], mode=interpolation, **kwargs
    )
    return make_attribution(
        gradients * upsampled,
        method="guided_gradcam",
        settings={
            "layer": layers[0] if len(layers) == 1 else list(layers),
            "interpolation": interpolation,
            "relu6": relu6,
            "signed": True,
        },
        model=model,
        batch=batch,
        target=resolved,
        scores=captured.scores,
        layer="+".join(layers),
        extras={"gradcam": grad_cam.detach().float().cpu()}
        | ({"layer_choice": note} if note else {}),
    )
