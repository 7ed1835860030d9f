"""Gradient methods: maps built from the gradient of the target's score (its raw logit) with
respect to the input. One backward pass per image, or per interpolation point / noisy copy,
always through ``torch.autograd.grad`` with respect to the input only (no parameter gradients).

Saliency (Simonyan, Vedaldi & Zisserman 2013, "Deep Inside Convolutional Networks",
arXiv:1312.6034): ``absolute=True`` (default) gives ``max_c |dS/dx_c|`` as in the paper,
``absolute=False`` the signed ``sum_c dS/dx_c``; ``channels=True`` keeps (N, C, H, W), which is
Captum's ``Saliency(abs=absolute)`` exactly.

Gradient x input (Shrikumar, Greenside, Shcherbina & Kundaje 2016, arXiv:1605.01713):
``sum_c x_c * dS/dx_c`` (signed); ``channels=True`` is Captum's ``InputXGradient``.

Integrated Gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks",
arXiv:1703.01365): ``(x - b) * sum_k w_k dS/dx(b + a_k (x - b))`` with the points ``a_k`` and
weights ``w_k`` of ``rule``, summed over channels (signed). The rules are Captum's and use
Captum's points (``torch.linspace`` for the Riemann sums, ``numpy``'s Gauss-Legendre nodes) so
parity is exact, with one difference by design: Captum's ``"riemann_trapezoid"`` gives the
weight ``1/n`` to every point and ``1/(2n)`` to the two ends, which sums to ``(n-1)/n``; its
attributions are therefore ours times ``(n-1)/n`` and miss completeness by ``1/n`` of
``f(x) - f(b)`` (2 % at 50 steps). Ours uses the trapezoid rule, ``1/(n-1)`` and ``1/(2(n-1))``.
``extras["delta"]`` is ``f(x) - f(b)`` and ``extras["completeness_error"]``
``|sum(map) - delta|`` per image. The default baseline is a black picture ("black", the input
the model's preprocessing makes of black pixels, not a zero tensor: Captum's default baseline
is the zero tensor, our ``"zero"``).

Guided backpropagation (Springenberg, Dosovitskiy, Brox & Riedmiller 2014, "Striving for
Simplicity: The All Convolutional Net", arXiv:1412.6806): the gradient, except that every
ReLU module also lets only positive gradients through on the way back. Done with forward hooks
that put a tensor hook (``grad.clamp(min=0)``) on each call's output, inside a ``with`` block: no
module is swapped, a ReLU called several times in one forward (ResNet's blocks) gets one hook
per call, and in-place ReLUs work (the hook sits on the output, whose own backward then applies
the ReLU mask). Captum's ``GuidedBackprop`` overrides ``nn.ReLU`` only; MobileNetV2's
activations are ``nn.ReLU6``, so on MobileNetV2 Captum's guided backprop is the plain gradient.
We treat ``nn.ReLU6`` like a ReLU by default (the gradient is clamped at 0 and masked by
``0 < x < 6``); ``relu6=False`` reproduces Captum. ReLUs called as functions (``F.relu``) are
not modules and cannot be hooked (as in Captum). The map keeps its channels, (N, C, H, W).

SmoothGrad (Smilkov, Thorat, Kim, Viégas & Wattenberg 2017, arXiv:1706.03825), SmoothGrad²
(Hooker, Erhan, Kindermans & Kim 2019, arXiv:1806.10758) and VarGrad (Adebayo et al. 2018,
arXiv:1810.03307) are one wrapper, :func:`smoothed`, over any gradient method (Captum's
``NoiseTunnel``): the base method runs on ``samples`` noisy copies ``x + N(0, s^2)`` of each
image, ``s = noise * (max(x) - min(x))`` per image (the paper's noise level), and the maps are
averaged (``kind="mean"``), their squares averaged (``"squared"``) or their variance taken
(``"var"``). Noise is drawn from the generator (seed 0 unless ``seed`` or ``generator`` is
given) exactly as Captum draws it from torch's global one, ``randn(copies, C, H, W) * s`` per
chunk of copies in the order image 0's copies, image 1's copies, ...: with
``torch.manual_seed(seed)``, ``stdevs=s`` and ``nt_samples_batch_size`` equal to our copies per
image per chunk, Captum adds the very same noise. For one image the noise does not depend on
the chunk size; for several images it does (as in Captum).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.core.hooks import forward_hooks, preserved
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

RULES = ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre")
BASELINES = ("black", "zero", "mean", "blur", "noise")
# A backward pass keeps every layer's output and adds a gradient of the same size on the way.
BACKWARD_FACTOR = 2.0

Progress = Callable[[int, int], None]
Baseline = str | float | Sequence[float] | torch.Tensor


# -- shared ------------------------------------------------------------------------------------


def input_gradients(
    model: Model, inputs: torch.Tensor, target: Target
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) gradient of the target's score with respect to ``inputs``, and the (N,)
    scores. ``inputs`` is not changed; the gradient is taken for a fresh leaf copy."""
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = target.score(model.forward(x))
        (grads,) = torch.autograd.grad(scores.sum(), x)
    return grads, scores.detach()


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected {name}=True or False, got {value!r}")
    return value


def clean_scores(model: Model, inputs: torch.Tensor, target: Target, size: int) -> torch.Tensor:
    """(N,) the target's raw score for ``inputs``, ``size`` at a time, forward only."""
    scores = []
    for part in chunks(len(inputs), size):
        with torch.no_grad():
            scores.append(target.select(part).score(model.forward(inputs[part])).float())
    return torch.cat(scores)


# -- saliency, gradient x input -------------------------------------------------------------------


@register(
    "saliency",
    family="gradient",
    paper="Simonyan, Vedaldi & Zisserman 2013, arXiv:1312.6034",
    description="|gradient| of the target score (max over channels); signed with absolute=False",
    settings={"absolute": spec("magnitude of the gradient (max over channels)")},
)
def saliency(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: str | None = None,
    absolute: bool = True,
    channels: bool = False,
) -> Attribution:
    """Vanilla gradient map.

    ``absolute=True``: ``max_c |dS/dx_c|`` (N, H, W), values >= 0, as in the paper.
    ``absolute=False``: ``sum_c dS/dx_c`` (N, H, W), signed. ``channels=True`` returns the
    (N, C, H, W) gradient (``|.|`` if ``absolute``), which is Captum's ``Saliency``.
    ``S`` is the target's raw logit.
    """
    no_layer("saliency", layer)
    absolute, channels = _flag(absolute, "absolute"), _flag(channels, "channels")
    batch = model.prepare(images)
    goal = resolve_target(model, batch.inputs, target)
    with preserved(model.module):
        grads, scores = input_gradients(model, batch.inputs, goal)
    if channels:
        saliency_map = grads.abs() if absolute else grads
    else:
        saliency_map = grads.abs().amax(1) if absolute else grads.sum(1)
    return make_attribution(
        saliency_map,
        method="saliency",
        settings={"signed": not absolute, "absolute": absolute, "channels": channels},
        model=model,
        batch=batch,
        target=goal,
        scores=scores,
    )


@register(
    "gradient_x_input",
    family="gradient",
    paper="Shrikumar, Greenside, Shcherbina & Kundaje 2016, arXiv:1605.01713",
    description="input times gradient, summed over channels (signed)",
    signed=True,
)
def gradient_x_input(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: str | None = None,
    channels: bool = False,
) -> Attribution:
    """``sum_c x_c * dS/dx_c`` (N, H, W), signed; (N, C, H, W) with ``channels=True``
    (Captum's ``InputXGradient``). ``x`` is the network input (after normalisation)."""
    no_layer("gradient_x_input", layer)
    channels = _flag(channels, "channels")
    batch = model.prepare(images)
    goal = resolve_target(model, batch.inputs, target)
    with preserved(model.module):
        grads, scores = input_gradients(model, batch.inputs, goal)
    product = grads * batch.inputs
    return make_attribution(
        product if channels else product.sum(1),
        method="gradient_x_input",
        settings={"signed": True, "channels": channels},
        model=model,
        batch=batch,
        target=goal,
        scores=scores,
    )


# -- integrated gradients --------------------------------------------------------------------------


def integration_points(rule: str, steps: int) -> tuple[list[float], list[float]]:
    """The points ``a_k`` in [0, 1] and weights ``w_k`` of a quadrature ``rule`` with ``steps``
    points: ``integral_0^1 g(a) da ~ sum_k w_k g(a_k)``.

    The points are Captum's (``torch.linspace`` in float32 for the Riemann sums, the
    Gauss-Legendre nodes of ``numpy.polynomial.legendre.leggauss``); the weights too, except
    for ``riemann_trapezoid`` whose weights here sum to 1 (see the module docstring).
    """
    if rule not in RULES:
        raise ValueError(f"expected rule among {', '.join(map(repr, RULES))}, got {rule!r}")
    least = 2 if rule == "riemann_trapezoid" else 1
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < least:
        raise ValueError(f"expected steps >= {least} for rule {rule!r}, got {steps!r}")
    n = steps
    if rule == "gausslegendre":
        nodes, gauss_weights = np.polynomial.legendre.leggauss(n)
        return [float(a) for a in 0.5 * (1 + nodes)], [float(w) for w in 0.5 * gauss_weights]
    if rule == "riemann_trapezoid":
        alphas = torch.linspace(0, 1, n).tolist()
        weights = [1 / (n - 1)] * n
        weights[0] /= 2
        weights[-1] /= 2
        return alphas, weights
    start, end = {
        "riemann_left": (0.0, 1 - 1 / n),
        "riemann_right": (1 / n, 1.0),
        "riemann_middle": (1 / (2 * n), 1 - 1 / (2 * n)),
    }[rule]
    return torch.linspace(start, end, n).tolist(), [1 / n] * n


def baseline_inputs(
    model: Model,
    inputs: torch.Tensor,
    baseline: Baseline,
    *,
    blur_sigma: float = 10.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The (N, C, H, W) baseline for ``inputs`` in input space (the vocabulary of
    :mod:`convlens.references`: ``"black"`` by default, ``"zero"``, ``"mean"``, ``"blur"``,
    ``"noise"``, a colour, a number or a tensor)."""
    reference = reference_input(
        model,
        inputs,
        baseline,
        what="baseline",
        names=BASELINES,
        blur_sigma=blur_sigma,
        generator=generator,
    )
    return reference.expand_as(inputs).clone()


@register(
    "integrated_gradients",
    family="gradient",
    paper="Sundararajan, Taly & Yan 2017, arXiv:1703.01365",
    description="path integral of gradients from a baseline (black picture by default), "
    "with the completeness error",
    signed=True,
    settings={
        "steps": spec("integration steps", min=2, max=1000),
        "rule": spec("integration rule", choices=RULES),
        "baseline": spec("the picture the path starts from", choices=BASELINES, type="reference"),
    },
)
def integrated_gradients(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: str | None = None,
    steps: int = 50,
    rule: str = "gausslegendre",
    baseline: Baseline = "black",
    blur_sigma: float = 10.0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    channels: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    progress: Progress | None = None,
) -> Attribution:
    """Integrated Gradients (N, H, W), summed over channels, signed; (N, C, H, W) with
    ``channels=True`` (Captum's ``IntegratedGradients``, same points and weights, except for the
    trapezoid rule's weights: see the module docstring).

    Parameters
    ----------
    steps, rule:
        Number of points on the straight path and the quadrature: ``"gausslegendre"`` (default,
        as Captum), ``"riemann_trapezoid"``, ``"riemann_left"``, ``"riemann_right"``,
        ``"riemann_middle"``.
    baseline:
        ``"black"`` (default), ``"zero"``, ``"mean"``, ``"blur"`` (``blur_sigma`` pixels),
        ``"noise"`` (uniform pixel noise from ``seed`` / ``generator``), a colour, a number or
        a tensor: see :func:`baseline_inputs`.
    batch_size:
        Path points per forward pass (default: what fits ``memory_budget_mb``); the points are
        made chunk by chunk, never all at once.
    progress:
        Called as ``progress(done, total)`` with the number of path points evaluated.

    ``extras``: ``delta`` (N,) ``f(x) - f(baseline)``, ``completeness_error`` (N,)
    ``|sum(attributions) - delta|`` and ``baseline_scores`` (N,) ``f(baseline)``.
    """
    no_layer("integrated_gradients", layer)
    channels = _flag(channels, "channels")
    alphas, weights = integration_points(rule, steps)
    size = checked_batch_size(model, batch_size, memory_budget_mb, factor=BACKWARD_FACTOR)
    batch = model.prepare(images)
    goal = resolve_target(model, batch.inputs, target)
    x = batch.inputs.detach()
    settings: dict[str, Any] = {
        "signed": True,
        "steps": steps,
        "rule": rule,
        "baseline": reference_setting(baseline),
        "channels": channels,
    }
    gen: torch.Generator | None = None
    if isinstance(baseline, str) and baseline == "noise":
        gen, settings["seed"] = make_generator(seed, generator, x.device)
    if isinstance(baseline, str) and baseline == "blur":
        settings["blur_sigma"] = blur_sigma
    base = baseline_inputs(model, x, baseline, blur_sigma=blur_sigma, generator=gen)
    with preserved(model.module):
        scores = clean_scores(model, x, goal, size)
        baseline_scores = clean_scores(model, base, goal, size)
        total = _path_integral(model, x, base, goal, alphas, weights, size, progress)
    attributions = total * (x - base).float()
    delta = scores - baseline_scores
    error = (attributions.double().sum(dim=(1, 2, 3)) - delta.double()).abs().float()
    return make_attribution(
        attributions if channels else attributions.sum(1),
        method="integrated_gradients",
        settings=settings,
        model=model,
        batch=batch,
        target=goal,
        scores=scores,
        extras={
            "delta": delta.cpu(),
            "completeness_error": error.cpu(),
            "baseline_scores": baseline_scores.cpu(),
        },
    )


def _path_integral(
    model: Model,
    x: torch.Tensor,
    base: torch.Tensor,
    goal: Target,
    alphas: list[float],
    weights: list[float],
    size: int,
    progress: Progress | None,
) -> torch.Tensor:
    """``sum_k w_k * grad f(base + a_k (x - base))`` (N, C, H, W), float32: the path points
    made and differentiated ``size`` at a time, several images' points per pass when they fit."""
    n, steps = len(x), len(alphas)
    alpha = torch.tensor(alphas, dtype=torch.float32).to(x.device, x.dtype)
    weight = torch.tensor(weights, dtype=torch.float32).to(x.device)
    total = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    group = min(n, size)
    per_image = max(1, size // group)
    done, work = 0, n * steps
    for images_part in chunks(n, group):
        origin = base[images_part].unsqueeze(1)
        path = (x[images_part] - base[images_part]).unsqueeze(1)
        count = len(origin)
        for steps_part in chunks(steps, per_image):
            k = steps_part.stop - steps_part.start
            a = alpha[steps_part].view(1, k, 1, 1, 1)
            points = (origin + a * path).reshape(count * k, *x.shape[1:])
            grads, _ = input_gradients(model, points, goal.select(images_part).repeat(k))
            grads = grads.view(count, k, *x.shape[1:]).float()
            total[images_part] += (grads * weight[steps_part].view(1, k, 1, 1, 1)).sum(1)
            done += count * k
            if progress is not None:
                progress(done, work)
    return total


# -- guided backpropagation ----------------------------------------------------------------


def _positive_gradient(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


@register(
    "guided_backprop",
    family="gradient",
    paper="Springenberg, Dosovitskiy, Brox & Riedmiller 2014, arXiv:1412.6806",
    description="gradient with only positive gradients passed back through every ReLU "
    "(channels kept)",
    signed=True,
    settings={"relu6": spec("guide ReLU6 as a ReLU (False: as Captum)")},
)
def guided_backprop(
    model: Model,
    images: Any,
    target: TargetSpec = None,
    *,
    layer: str | None = None,
    relu6: bool = True,
) -> Attribution:
    """Guided backpropagation (N, C, H, W), signed (mostly positive; channels kept, as it is
    shown as a colour image). Every ``nn.ReLU`` module (and ``nn.ReLU6`` unless
    ``relu6=False``, which is what Captum does) passes back ``mask * max(grad, 0)``, where
    ``mask`` is the activation's own derivative. Hooks live only for the call."""
    no_layer("guided_backprop", layer)
    relu6 = _flag(relu6, "relu6")
    kinds: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6) if relu6 else (nn.ReLU,)
    batch = model.prepare(images)
    goal = resolve_target(model, batch.inputs, target)
    # a module called several times appears once here, and its hook fires at every call
    names = [name for name, m in model.module.named_modules() if isinstance(m, kinds)]

    def guide(_name: str, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(_positive_gradient)

    with preserved(model.module), forward_hooks(model.module, names, guide):
        grads, scores = input_gradients(model, batch.inputs, goal)
    return make_attribution(
        grads,
        method="guided_backprop",
        settings={"signed": True, "relu6": relu6, "relus": len(names)},
        model=model,
        batch=batch,
        target=goal,
        scores=scores,
    )
