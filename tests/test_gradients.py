"""Gradient methods: hand-computed maps on tiny models, axioms (saliency of a linear model is its
weights, IG completeness), a slow Integrated Gradients loop, hook hygiene, and parity with
Captum on the real MobileNetV2 and real photos (and a random-init ResNet-18 for guided
backpropagation)."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Exploding, model_state
from torch import nn

import convlens as cl
from convlens.core.hooks import has_hooks
from convlens.core.model import Preprocessing
from convlens.techniques.attribution import gradients
from convlens.techniques.attribution.base import get_method, methods
from convlens.techniques.attribution.gradients import (
    baseline_inputs,
    gradient_x_input,
    guided_backprop,
    integrated_gradients,
    integration_points,
    saliency,
)
from convlens.techniques.attribution.smoothgrad import smoothed, smoothgrad

GREY = Preprocessing(crop=None, resize=None, mean=(0.0,), std=(1.0,), channels=1)
# A normalisation where a black picture is far from the zero tensor.
SKEWED = Preprocessing(crop=None, resize=None, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
RULES = gradients.RULES


# -- tiny hand-weighted models ---------------------------------------------------------------------


def linear_model() -> cl.Model:
    """logits = W x + b on a (3, 2, 2) input; W[k] = (k + 1) * (-1.5, -1.25, ..., 1.25)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with torch.no_grad():
        row = torch.arange(12, dtype=torch.float32) * 0.25 - 1.5
        net[1].weight.copy_(torch.stack([row, 2 * row, 3 * row]))
        net[1].bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    return cl.Model(net, preprocess=SKEWED, input_size=(3, 2, 2))


X_LIN = torch.tensor(
    [
        [[[0.5, -1.0], [2.0, 0.25]], [[-0.5, 1.5], [0.0, 1.0]], [[3.0, -2.0], [0.75, -0.25]]],
        [[[1.0, 1.0], [-1.0, 0.0]], [[2.0, -3.0], [0.5, 0.5]], [[0.0, 1.25], [-0.75, 2.0]]],
    ]
)


def small_cnn(seed: int = 0) -> cl.Model:
    """A small nonlinear CNN with random weights (two ReLUs, max pool, GAP, linear)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    return cl.Model(net.eval(), preprocess=SKEWED, input_size=(3, 8, 8))


X_CNN = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


class TwoLayer(nn.Module):
    """x (2,) -> relu(W1 x) (3,) -> relu(W2 h) (2,) -> w3 . h (1,), by hand:

    x = (1, 2): W1 x = (1, 2, -1), mask (1, 1, 0); W2 h = (-1, 1), mask (0, 1); y = 2.
    Plain gradient: (3, 2) -> (0, 2) -> W2^T (6, -2, 2) -> (6, -2, 0) -> W1^T (6, -2).
    Guided: (3, 2) clamped (3, 2) -> (0, 2) -> (6, -2, 2) clamped and masked (6, 0, 0) -> (6, 0).
    ``mode``: "separate" ReLUs, one ReLU module "reused" for both layers, or "inplace" (reused
    and in place).
    """

    def __init__(self, mode: str = "separate") -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.l1 = nn.Linear(2, 3, bias=False)
        self.l2 = nn.Linear(3, 2, bias=False)
        self.l3 = nn.Linear(2, 1, bias=False)
        self.relu1 = nn.ReLU(inplace=mode == "inplace")
        self.relu2 = self.relu1 if mode in ("reused", "inplace") else nn.ReLU()
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
            self.l2.weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [3.0, -1.0, 1.0]]))
            self.l3.weight.copy_(torch.tensor([[3.0, 2.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(self.relu2(self.l2(self.relu1(self.l1(self.flatten(x))))))


X_TWO = torch.tensor([[[[1.0, 2.0]]]])  # (1, 1, 1, 2)


def grey_model(net: nn.Module, size: tuple[int, int, int]) -> cl.Model:
    return cl.Model(net, preprocess=GREY, input_size=size)


# -- saliency and gradient x input -----------------------------------------------------------------


def test_saliency_of_a_linear_model_is_its_weights():
    model = linear_model()
    weights = model.module[1].weight.detach().view(3, 3, 2, 2)
    for k in range(3):
        raw = saliency(model, X_LIN, k, absolute=False, channels=True)
        assert torch.equal(raw.map, weights[k].expand(2, -1, -1, -1))
        assert raw.settings == {"signed": True, "absolute": False, "channels": True}
        assert torch.equal(saliency(model, X_LIN, k, channels=True).map[0], weights[k].abs())
        # the paper's map: max over channels of |w|; signed: the sum over channels
        assert torch.equal(saliency(model, X_LIN, k).map[1], weights[k].abs().amax(0))
        assert torch.equal(saliency(model, X_LIN, k, absolute=False).map[0], weights[k].sum(0))
    result = saliency(model, X_LIN, [0, 2])
    assert result.targets == [0, 2] and result.settings["signed"] is False
    expected_scores = torch.stack([model.module(X_LIN)[0, 0], model.module(X_LIN)[1, 2]]).detach()
    torch.testing.assert_close(result.scores, expected_scores)


def test_gradient_x_input_of_a_linear_model_is_w_times_x():
    model = linear_model()
    weights = model.module[1].weight.detach().view(3, 3, 2, 2)
    result = gradient_x_input(model, X_LIN, 1, channels=True)
    assert torch.equal(result.map, weights[1] * X_LIN)
    summed = gradient_x_input(model, X_LIN, 1)
    assert torch.equal(summed.map, (weights[1] * X_LIN).sum(1))
    assert summed.settings["signed"] is True
    # the alias people type
    torch.testing.assert_close(cl.explain(model, X_LIN, "gxi", 1).map, summed.map)


def test_saliency_of_the_tiny_net_by_hand(tiny, image4):
    """TinyNet: logit 0 = mean over the 2x2 max-pool winners of the 3x3 window sums. On the
    ramp 4i + j a full window beats one cut by the border, so each pool cell's winner is its
    pixel nearest the centre: (1, 1), (1, 2), (2, 1), (2, 2) (window sums 45, 54, 81, 90).
    Each pixel gets 1/4 for every winning window covering it."""
    result = saliency(tiny, image4, 0, absolute=False)
    cover = torch.zeros(4, 4)
    for i, j in [(1, 1), (1, 2), (2, 1), (2, 2)]:
        cover[i - 1 : i + 2, j - 1 : j + 2] += 0.25
    torch.testing.assert_close(result.map[0], cover)


# -- integrated gradients --------------------------------------------------------------------------


def test_integration_points_are_captums_except_the_trapezoid_weights():
    from captum.attr._utils.approximation_methods import approximation_parameters

    for rule in RULES:
        for steps in (2, 7, 50):
            alphas, weights = integration_points(rule, steps)
            captum_weights, captum_alphas = approximation_parameters(rule)
            assert alphas == captum_alphas(steps), rule
            assert sum(weights) == pytest.approx(1.0, abs=1e-12), rule
            if rule == "riemann_trapezoid":
                # Captum's weights are ours times (n - 1) / n: they sum to (n - 1) / n
                np.testing.assert_allclose(
                    captum_weights(steps), np.array(weights) * (steps - 1) / steps, rtol=1e-12
                )
                assert sum(captum_weights(steps)) == pytest.approx((steps - 1) / steps)
            else:
                assert weights == captum_weights(steps), rule
    assert integration_points("riemann_right", 1) == ([1.0], [1.0])
    with pytest.raises(ValueError, match=r"expected rule among .* got 'simpson'"):
        integration_points("simpson", 8)
    with pytest.raises(ValueError, match=r"expected steps >= 2 for rule 'riemann_trapezoid'"):
        integration_points("riemann_trapezoid", 1)
    with pytest.raises(ValueError, match="expected steps >= 1"):
        integration_points("gausslegendre", 0)


@pytest.mark.parametrize("rule", RULES)
def test_ig_of_a_linear_model_is_input_minus_baseline_times_weights(rule):
    """The gradient is w everywhere, so IG = (x - b) * w for any rule and any number of steps
    (up to float32 rounding of the weights' sum), and completeness holds."""
    from captum.attr import IntegratedGradients

    model = linear_model()
    w = model.module[1].weight.detach().view(3, 3, 2, 2)[2]
    black = -torch.tensor(SKEWED.mean).view(1, 3, 1, 1) / torch.tensor(SKEWED.std).view(1, 3, 1, 1)
    torch.testing.assert_close(baseline_inputs(model, X_LIN, "black"), black.expand_as(X_LIN))
    for steps in (2, 3, 17):
        result = integrated_gradients(
            model, X_LIN, 2, steps=steps, rule=rule, channels=True, batch_size=3
        )
        torch.testing.assert_close(result.map, (X_LIN - black) * w, rtol=1e-6, atol=1e-6)
        delta = ((X_LIN - black) * w).sum(dim=(1, 2, 3))
        torch.testing.assert_close(result.extras["delta"], delta, rtol=1e-6, atol=1e-5)
        assert result.extras["completeness_error"].max() < 1e-4
        if rule == "riemann_trapezoid":  # Captum's trapezoid misses 1/n of the difference
            captum = IntegratedGradients(model.module).attribute(
                X_LIN, baselines=black, target=2, n_steps=steps, method=rule
            )
            torch.testing.assert_close(
                captum, result.map * (steps - 1) / steps, rtol=1e-6, atol=1e-6
            )


def test_ig_of_a_relu_toy_by_hand():
    """f(x) = relu(x1 + x2 - 1), x = (1, 3), baseline 0: the path a * x is active for a > 1/4,
    so IG = (1 - 1/4) * x = (0.75, 2.25) (sum 3 = f(x) - f(0)). The points are binary fractions,
    so each rule's sum is exact: right and middle (4 points) hit 3 of 4 active points ->
    (0.75, 2.25); left (0, .25, .5, .75) hits 2 -> (0.5, 1.5); the trapezoid (0, .25, ..., 1,
    weights 1/8, 1/4, 1/4, 1/4, 1/8) gets 1/4 + 1/4 + 1/8 = 5/8 -> (0.625, 1.875). At a = 1/4
    the ReLU's input is exactly 0, where PyTorch's derivative is 0."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 1), nn.ReLU())
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 1.0]]))
        net[1].bias.fill_(-1.0)
    model = grey_model(net, (1, 1, 2))
    x = torch.tensor([[[[1.0, 3.0]]]])
    expected = {
        ("riemann_right", 4): [0.75, 2.25],
        ("riemann_middle", 4): [0.75, 2.25],
        ("riemann_left", 4): [0.5, 1.5],
        ("riemann_trapezoid", 5): [0.625, 1.875],
    }
    for (rule, steps), values in expected.items():
        result = integrated_gradients(model, x, 0, steps=steps, rule=rule, baseline="zero")
        assert result.map[0, 0].tolist() == values, rule
        assert result.extras["delta"].tolist() == [3.0]
        assert result.extras["completeness_error"].item() == pytest.approx(3 - sum(values))


def test_ig_completeness_on_a_small_cnn_at_64_steps():
    """sum(IG) = f(x) - f(b) within 1e-3 at 64 steps (measured: at most 6e-4 for an output
    change of 0.16 to 0.17), and the reported error is that difference."""
    model = small_cnn()
    for rule in ("gausslegendre", "riemann_trapezoid"):
        for baseline in ("black", "zero", "blur"):
            result = integrated_gradients(
                model, X_CNN, 3, steps=64, rule=rule, baseline=baseline, channels=True
            )
            total = result.map.double().sum(dim=(1, 2, 3))
            delta = result.extras["delta"].double()
            error = (total - delta).abs()
            assert error.max() < 1e-3, (rule, baseline, error)
            torch.testing.assert_close(
                result.extras["completeness_error"].double(), error, rtol=1e-4, atol=1e-7
            )
            torch.testing.assert_close(
                result.extras["baseline_scores"],
                model.module(baseline_inputs(model, X_CNN, baseline))[:, 3].detach(),
            )
            if baseline == "black":
                assert delta.abs().min() > 0.15, "a test where the output changes"
                few = integrated_gradients(model, X_CNN, 3, steps=4, rule=rule)
                assert (few.extras["completeness_error"] > error.float()).all()


def _slow_ig(model, x, target, baseline, rule, steps):
    """The obvious loop: one image, one point, one gradient at a time, in float64 sums."""
    alphas, weights = integration_points(rule, steps)
    out = torch.zeros(x.shape, dtype=torch.float64)
    for i in range(len(x)):
        for a, w in zip(alphas, weights, strict=True):
            point = (baseline[i] + a * (x[i] - baseline[i])).unsqueeze(0).requires_grad_(True)
            score = model.module(point)[0, target[i]]
            (grad,) = torch.autograd.grad(score, point)
            out[i] += w * grad[0].double()
    return (out * (x - baseline).double()).float()


@pytest.mark.parametrize("rule", ["riemann_right", "riemann_trapezoid", "gausslegendre"])
def test_ig_equals_a_slow_riemann_loop(rule):
    model = small_cnn()
    baseline = baseline_inputs(model, X_CNN, "noise", generator=torch.Generator().manual_seed(5))
    expected = _slow_ig(model, X_CNN, [1, 3], baseline, rule, 10)
    for batch_size in (1, 3, 64):  # chunks across steps and images
        result = integrated_gradients(
            model,
            X_CNN,
            [1, 3],
            steps=10,
            rule=rule,
            baseline=baseline,
            channels=True,
            batch_size=batch_size,
        )
        torch.testing.assert_close(result.map, expected, rtol=1e-5, atol=1e-6)
    assert result.settings["baseline"] == "tensor(2, 3, 8, 8)"


def test_ig_baselines_and_settings():
    model = small_cnn()
    x = X_CNN
    torch.testing.assert_close(baseline_inputs(model, x, "zeros"), torch.zeros_like(x))
    mean = baseline_inputs(model, x, "mean")
    torch.testing.assert_close(mean[:, :, 3, 5], x.mean(dim=(2, 3)))
    flat = torch.full_like(x, 0.7)
    torch.testing.assert_close(baseline_inputs(model, flat, "blur", blur_sigma=3), flat)
    blurred = baseline_inputs(model, x, "blur", blur_sigma=1.5)
    assert blurred.std() < x.std() / 2
    noise = baseline_inputs(model, x, "noise", generator=torch.Generator().manual_seed(3))
    pixels = noise * torch.tensor(SKEWED.std).view(1, 3, 1, 1) + torch.tensor(SKEWED.mean).view(
        1, 3, 1, 1
    )
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6 and pixels.std() > 0.2
    red = baseline_inputs(model, x, (1.0, 0.0, 0.0))
    torch.testing.assert_close(red[0, :, 0, 0], torch.tensor([2.5, -1.6, -0.6]))
    torch.testing.assert_close(baseline_inputs(model, x, 0.5), torch.full_like(x, 0.5))

    a = integrated_gradients(model, x, 0, steps=4, baseline="noise", seed=7)
    b = integrated_gradients(model, x, 0, steps=4, baseline="noise", seed=7)
    c = integrated_gradients(model, x, 0, steps=4, baseline="noise", seed=8)
    assert torch.equal(a.map, b.map) and not torch.equal(a.map, c.map)
    assert a.settings == {
        "signed": True,
        "steps": 4,
        "rule": "gausslegendre",
        "baseline": "noise",
        "channels": False,
        "seed": 7,
    }
    assert integrated_gradients(model, x, 0, steps=4, baseline="blur").settings["blur_sigma"] == 10
    json.dumps(a.summary())
    calls = []
    integrated_gradients(model, x, 0, steps=5, batch_size=4, progress=lambda d, t: calls.append(d))
    assert calls[-1] == 10 and calls == sorted(calls)
    # the "ig" alias
    assert torch.equal(
        cl.explain(model, x, "ig", 0, steps=4).map,
        integrated_gradients(model, x, 0, steps=4).map,
    )


def test_ig_rejects_bad_options():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"expected baseline among 'black', 'zero'.*got 'white'"):
        integrated_gradients(model, X_CNN, 0, baseline="white")
    with pytest.raises(ValueError, match=r"does not broadcast to the input \(2, 3, 8, 8\)"):
        integrated_gradients(model, X_CNN, 0, baseline=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="expected blur_sigma > 0"):
        integrated_gradients(model, X_CNN, 0, baseline="blur", blur_sigma=0)
    with pytest.raises(ValueError, match="expected batch_size >= 1"):
        integrated_gradients(model, X_CNN, 0, batch_size=0)
    with pytest.raises(ValueError, match="takes no layer"):
        integrated_gradients(model, X_CNN, 0, layer="0")
    custom = cl.Model(model.module, preprocess=lambda ims: torch.zeros(1), input_size=(3, 8, 8))
    with pytest.raises(ValueError, match="custom preprocess: use baseline='zero'"):
        integrated_gradients(custom, X_CNN, 0, steps=2)
    with pytest.raises(ValueError, match="expected channels=True or False"):
        saliency(model, X_CNN, 0, channels="yes")


# -- guided backpropagation ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["separate", "reused", "inplace"])
def test_guided_backprop_by_hand(mode):
    model = grey_model(TwoLayer(mode), (1, 1, 2))
    before = model_state(model.module)
    guided = guided_backprop(model, X_TWO, 0)
    assert guided.map.shape == (1, 1, 1, 2)
    assert guided.map.flatten().tolist() == [6.0, 0.0]
    assert guided.settings == {
        "signed": True,
        "relu6": True,
        "relus": 1 if mode != "separate" else 2,
    }
    plain = saliency(model, X_TWO, 0, absolute=False, channels=True)
    assert plain.map.flatten().tolist() == [6.0, -2.0]
    assert model_state(model.module) == before and not has_hooks(model.module)


def test_guided_backprop_matches_captum_on_the_hand_nets():
    from captum.attr import GuidedBackprop

    for mode in ("separate", "reused", "inplace"):
        net = TwoLayer(mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            captum = GuidedBackprop(net).attribute(X_TWO.clone(), target=0)
        assert captum.flatten().tolist() == [6.0, 0.0], mode


def test_guided_backprop_relu6():
    """relu(W1 x) -> ReLU6 -> w2: x = (1, 2), W1 x = (1, 2, 8): ReLU6 mask (1, 1, 0) (saturated
    above 6); w2 = (2, -3, 5): plain gradient (2, -3, 0) -> W1^T (2, -3); guided (2, 0, 0) ->
    (2, 0). Captum leaves ReLU6 alone (the plain gradient), as ``relu6=False`` does."""
    from captum.attr import GuidedBackprop

    net = nn.Sequential(
        nn.Flatten(), nn.Linear(2, 3, bias=False), nn.ReLU6(inplace=True), nn.Linear(3, 1)
    )
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [4.0, 2.0]]))
        net[3].weight.copy_(torch.tensor([[2.0, -3.0, 5.0]]))
    model = grey_model(net, (1, 1, 2))
    assert guided_backprop(model, X_TWO, 0).map.flatten().tolist() == [2.0, 0.0]
    assert guided_backprop(model, X_TWO, 0, relu6=False).map.flatten().tolist() == [2.0, -3.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = GuidedBackprop(net).attribute(X_TWO.clone(), target=0)
    assert captum.flatten().tolist() == [2.0, -3.0]


# -- SmoothGrad, SmoothGrad², VarGrad --------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "options"),
    [
        ("saliency", {"absolute": False}),
        ("saliency", {}),
        ("gradient_x_input", {"channels": True}),
        ("integrated_gradients", {"steps": 4, "baseline": "blur"}),
        ("guided_backprop", {}),
    ],
)
def test_smoothgrad_without_noise_is_the_base_method(base, options):
    model = small_cnn()
    plain = get_method(base).fn(model, X_CNN, [0, 2], **options)
    smooth = smoothgrad(
        model, X_CNN, [0, 2], base=base, noise=0.0, samples=3, batch_size=4, **options
    )
    if base == "integrated_gradients":  # the steps are summed in other chunks
        torch.testing.assert_close(smooth.map, plain.map, rtol=1e-5, atol=1e-8)
    else:
        assert torch.equal(smooth.map, plain.map)
    assert smooth.settings["signed"] == plain.settings["signed"]
    assert {k: v for k, v in smooth.settings.items() if k in plain.settings} == plain.settings
    var = smoothgrad(model, X_CNN, [0, 2], base=base, noise=0.0, samples=3, kind="var", **options)
    assert torch.equal(var.map, torch.zeros_like(plain.map))
    if base == "integrated_gradients":
        torch.testing.assert_close(
            smooth.extras["completeness_error"], plain.extras["completeness_error"]
        )


def test_smoothgrad_on_a_linear_model():
    """Saliency of a linear model is w at every noisy copy: SmoothGrad is w, SmoothGrad² is w²
    and VarGrad is exactly 0. Gradient x input is w * (x + e): its mean is w * (x + mean(e)),
    with e the noise drawn from the generator, randn(copies, C, H, W) * 0.2 * (max - min)."""
    model = linear_model()
    w = model.module[1].weight.detach().view(3, 3, 2, 2)[1]
    options = {"noise": 0.2, "samples": 5, "base": "saliency", "absolute": False, "channels": True}
    mean = smoothgrad(model, X_LIN, 1, **options)
    torch.testing.assert_close(mean.map, w.expand(2, -1, -1, -1))
    squared = smoothgrad(model, X_LIN, 1, kind="squared", **options)
    torch.testing.assert_close(squared.map, (w * w).expand(2, -1, -1, -1))
    var = smoothgrad(model, X_LIN, 1, kind="var", **options)
    assert torch.equal(var.map, torch.zeros(2, 3, 2, 2))
    assert not var.settings["signed"] and mean.settings["signed"]

    result = smoothgrad(
        model, X_LIN, 1, base="gradient_x_input", channels=True, noise=0.2, samples=5, seed=3
    )
    std = 0.2 * (X_LIN.amax(dim=(1, 2, 3)) - X_LIN.amin(dim=(1, 2, 3)))
    torch.testing.assert_close(result.extras["noise_std"], std)
    # the default batch size holds all 10 copies in one chunk: image 0's 5, then image 1's
    draw = torch.randn((10, 3, 2, 2), generator=torch.Generator().manual_seed(3))
    noisy = X_LIN.repeat_interleave(5, dim=0) + draw * std.repeat_interleave(5).view(-1, 1, 1, 1)
    expected = (w * noisy).view(2, 5, 3, 2, 2).mean(1)
    torch.testing.assert_close(result.map, expected)
    assert result.settings["seed"] == 3 and result.settings["base"] == "gradient_x_input"


def test_smoothgrad_seeds_generators_and_composition():
    model = small_cnn()
    a = smoothgrad(model, X_CNN, 1, samples=4, seed=11)
    b = smoothgrad(model, X_CNN, 1, samples=4, generator=torch.Generator().manual_seed(11))
    c = smoothgrad(model, X_CNN, 1, samples=4, seed=12)
    assert torch.equal(a.map, b.map) and not torch.equal(a.map, c.map)
    assert b.settings["seed"] == "generator"
    # for one image the noise does not depend on the chunk size
    one = X_CNN[:1]
    whole = smoothgrad(model, one, 1, samples=5, batch_size=5, seed=2)
    pieces = smoothgrad(model, one, 1, samples=5, batch_size=2, seed=2)
    torch.testing.assert_close(whole.map, pieces.map)
    # smoothed(...) wraps any method function the same way
    wrapped = smoothed(gradient_x_input)
    torch.testing.assert_close(
        wrapped(model, X_CNN, 1, samples=3, seed=4).map,
        smoothgrad(model, X_CNN, 1, base="gradient_x_input", samples=3, seed=4).map,
    )
    assert smoothed("ig")(model, X_CNN, 1, samples=2, steps=3).settings["steps"] == 3
    calls = []
    smoothgrad(model, X_CNN, 1, samples=3, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6)
    json.dumps(a.summary())


def test_smoothgrad_rejects_bad_options():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"expected kind among 'mean', 'squared', 'var'"):
        smoothgrad(model, X_CNN, 0, kind="max")
    with pytest.raises(ValueError, match="expected samples >= 1"):
        smoothgrad(model, X_CNN, 0, samples=0)
    with pytest.raises(ValueError, match="expected noise >= 0"):
        smoothgrad(model, X_CNN, 0, noise=-0.1)
    with pytest.raises(ValueError, match="expected base among the gradient methods"):
        smoothgrad(model, X_CNN, 0, base="occlusion")
    with pytest.raises(ValueError, match="expected a seed or a generator, got both"):
        smoothgrad(model, X_CNN, 0, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="unexpected keyword argument 'stepz'"):
        smoothgrad(model, X_CNN, 0, base="integrated_gradients", stepz=3)


def test_registry_entries():
    table = methods()
    for name in ("saliency", "gradient_x_input", "integrated_gradients", "guided_backprop"):
        assert table[name].family == "gradient" and "arXiv:" in table[name].paper
    assert table["smoothgrad"].family == "gradient"
    assert get_method("ig").name == "integrated_gradients"


# -- hook hygiene ----------------------------------------------------------------------------------


class ExplodingReLU(nn.Module):
    """Conv -> in-place ReLU (hooked by guided backprop) -> raises."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.act6 = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.act6(self.act(self.conv(x)))
        raise RuntimeError("boom halfway")


CALLS = {
    "saliency": {},
    "gradient_x_input": {},
    "integrated_gradients": {"steps": 3},
    "guided_backprop": {},
    "smoothgrad": {"samples": 2},
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("net", [Exploding, ExplodingReLU])
def test_no_hooks_and_no_changes_when_the_forward_raises(name, net):
    module = net().train()
    model = grey_model(module, (1, 4, 4))
    before = model_state(module)
    with pytest.raises(RuntimeError, match="boom halfway"):
        get_method(name).fn(model, torch.rand(2, 1, 4, 4), 0, **CALLS[name])
    assert has_hooks(module) == []
    assert model_state(module) == before and module.training


def test_methods_leave_a_working_model_unchanged():
    model = small_cnn()
    model.module.train()
    model.module[0].weight.requires_grad_(False)
    before = model_state(model.module)
    x = X_CNN.clone()
    for name, options in CALLS.items():
        get_method(name).fn(model, x, 0, **options)
        assert has_hooks(model.module) == [] and model_state(model.module) == before, name
    assert torch.equal(x, X_CNN) and not x.requires_grad
    assert all(p.grad is None for p in model.module.parameters())


# -- parity with Captum on the real MobileNetV2 and real photos ------------------------------------


@pytest.fixture(scope="module")
def mobilenet():
    return cl.load("mobilenet_v2")


@pytest.fixture(scope="module")
def photos(mobilenet):
    return mobilenet.prepare([cl.sample("chelsea"), cl.sample("coffee")])


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten().numpy(), b.detach().double().flatten().numpy()
    return float(np.corrcoef(a, b)[0, 1])


def _close(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float) -> None:
    """Equal within ``tolerance`` of the peak, and Pearson r >= 0.9999."""
    theirs = theirs.detach().float()
    peak = float(theirs.abs().max())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=tolerance * peak)
    assert _pearson(ours, theirs) >= 0.9999


@pytest.mark.slow
def test_parity_saliency_and_input_x_gradient(mobilenet, photos):
    """Same graph, same backward: identical (measured max difference 0)."""
    from captum.attr import InputXGradient, Saliency

    net, x = mobilenet.module, photos.inputs
    result = saliency(mobilenet, photos, absolute=False, channels=True)
    assert result.targets == [285, 967]  # Egyptian cat, espresso
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signed = Saliency(net).attribute(x.clone(), target=result.targets, abs=False)
        product = InputXGradient(net).attribute(x.clone(), target=result.targets)
    _close(result.map, signed, 1e-6)
    _close(saliency(mobilenet, photos).map, signed.abs().amax(1), 1e-6)
    _close(gradient_x_input(mobilenet, photos).map, product.sum(1), 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("rule", "count"), [("gausslegendre", 2), ("riemann_trapezoid", 1)])
def test_parity_integrated_gradients(mobilenet, photos, rule, count):
    """Same baseline tensor, points and weights: within 1e-5 of the peak (measured 1e-7),
    except that Captum's trapezoid is ours times (n - 1) / n."""
    from captum.attr import IntegratedGradients

    steps, x = 4, photos.inputs[:count]
    result = integrated_gradients(mobilenet, x, steps=steps, rule=rule, channels=True)
    black = baseline_inputs(mobilenet, x, "black")
    captum, delta = IntegratedGradients(mobilenet.module).attribute(
        x.clone(),
        baselines=black,
        target=result.targets,
        n_steps=steps,
        method=rule,
        return_convergence_delta=True,
    )
    scale = (steps - 1) / steps if rule == "riemann_trapezoid" else 1.0
    _close(result.map * scale, captum, 1e-5)
    if rule == "gausslegendre":  # Captum's delta: sum(attributions) - (f(x) - f(b))
        torch.testing.assert_close(
            result.extras["completeness_error"], delta.abs().float(), rtol=1e-3, atol=1e-3
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "nt_type", "base", "options", "captum_options"),
    [
        ("mean", "smoothgrad", "saliency", {"channels": True}, {"abs": True}),
        ("squared", "smoothgrad_sq", "gradient_x_input", {"channels": True}, {}),
        ("var", "vargrad", "saliency", {"channels": True, "absolute": False}, {"abs": False}),
    ],
)
def test_parity_noise_tunnel_with_the_same_noise(
    mobilenet, photos, kind, nt_type, base, options, captum_options
):
    """Captum draws ``torch.normal(0, stdev)`` from torch's global generator, per chunk of
    ``nt_samples_batch_size`` copies, image by image: seeding the global generator with our seed
    and passing our per-image standard deviation gives Captum the very noise we add. One photo
    (Captum takes one standard deviation for the whole batch); within 1e-5 of the peak (VarGrad:
    1e-4, a difference of squares; measured: at most 4e-7 of the peak)."""
    from captum.attr import InputXGradient, NoiseTunnel, Saliency

    chelsea = photos.inputs[:1]
    result = smoothgrad(
        mobilenet, chelsea, 285, base=base, kind=kind, samples=5, batch_size=2, seed=5, **options
    )
    peer = Saliency if base == "saliency" else InputXGradient
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = NoiseTunnel(peer(mobilenet.module)).attribute(
            chelsea.clone(),
            nt_type=nt_type,
            nt_samples=5,
            nt_samples_batch_size=2,  # chunks of 2, 2 and 1 copies, as ours
            stdevs=float(result.extras["noise_std"][0]),
            target=285,
            **captum_options,
        )
    _close(result.map, captum, 1e-4 if kind == "var" else 1e-5)


@pytest.mark.slow
def test_parity_guided_backprop_on_resnet18():
    """torchvision's ResNet-18 (random weights) reuses one in-place ``nn.ReLU`` twice per block:
    identical to Captum (measured max difference 0)."""
    import torchvision
    from captum.attr import GuidedBackprop

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    model = cl.Model(net)
    batch = model.prepare(cl.sample("chelsea"))
    result = guided_backprop(model, batch, 3)
    assert result.settings["relus"] == 9  # the stem's and one per block
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = GuidedBackprop(net).attribute(batch.inputs.clone(), target=3)
    _close(result.map, captum, 1e-6)
    assert not torch.allclose(
        result.map, saliency(model, batch, 3, absolute=False, channels=True).map
    )


class _ReLU6AsReLU(nn.ReLU):
    """ReLU6 dressed as an ``nn.ReLU`` so Captum's GuidedBackprop hooks it (test only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x, inplace=self.inplace)


@pytest.mark.slow
def test_guided_backprop_on_mobilenet_v2_differs_from_captum_by_design(mobilenet, photos):
    """MobileNetV2's activations are ReLU6, which Captum's GuidedBackprop does not touch: its map
    is the plain gradient, and ours with ``relu6=False``. Our default guides ReLU6 too, which is
    what Captum gives once ReLU6 is disguised as an ``nn.ReLU`` (in a copy of the network)."""
    from captum.attr import GuidedBackprop

    x = photos.inputs[:1]
    ours = guided_backprop(mobilenet, x, 285)
    as_captum = guided_backprop(mobilenet, x, 285, relu6=False)  # no hook: the plain gradient
    assert ours.settings["relus"] == 35 and as_captum.settings["relus"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = GuidedBackprop(mobilenet.module).attribute(x.clone(), target=285)
        disguised = copy.deepcopy(mobilenet.module)
        for name, module in list(disguised.named_modules()):
            if isinstance(module, nn.ReLU6):
                parent, _, child = name.rpartition(".")
                setattr(disguised.get_submodule(parent), child, _ReLU6AsReLU(inplace=True))
        captum_relu6 = GuidedBackprop(disguised).attribute(x.clone(), target=285)
    _close(as_captum.map, captum, 1e-6)
    _close(ours.map, captum_relu6, 1e-6)
    assert _pearson(ours.map, captum) < 0.9
