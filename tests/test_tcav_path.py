"""The local test's path (issue 17): the class logit's gradient at a layer integrated along the
straight path from a zero map to the picture's activation, checked against a slow reference
loop and the completeness axiom, and the verdicts it gives on fresh toons where the gradient
at the picture was wrong (cassidy's yellow at ``pool1``)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import convlens as cl
from convlens.data import toons
from convlens.techniques.concepts import collect, local


class Skip(nn.Module):
    """A residual block whose skip starts *before* the layer ``body``: the network cannot take
    a wider batch at ``body`` than at its input (the path falls back to a repeated input); and
    ``body`` starts with an in-place ReLU, which changes the output of ``conv`` in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1))
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.head(self.act(self.body(h) + h))


def _skip_model() -> cl.Model:
    torch.manual_seed(0)
    pre = cl.Preprocessing(resize=None, crop=None)
    return cl.Model(Skip().eval(), preprocess=pre, labels=["a", "b"], input_size=(3, 6, 6))


def _at(model: cl.Model, x: torch.Tensor, layer: str, value: torch.Tensor | None, target: int):
    """The class logit with ``layer``'s output replaced by ``value`` (None: as it is), and its
    gradient there: the slow reference, one path point per pass."""
    from convlens.core.hooks import forward_hooks

    seen: dict[str, torch.Tensor] = {}

    def swap(_name, out):
        seen["v"] = (out if value is None else value).detach().clone().requires_grad_(True)
        return seen["v"].clone()

    with forward_hooks(model.module, [layer], swap):
        logit = model.module(x)[:, target]
    (grad,) = torch.autograd.grad(logit.sum(), seen["v"])
    return logit.detach(), grad, seen["v"].detach()


@pytest.mark.parametrize(
    "layers", [["conv"], ["body"], ["act"], ["conv", "act"], ["act", "conv", "body"]]
)
@pytest.mark.parametrize("values", [collect.PATH_VALUES, 1])  # all points in one pass / one each
def test_integrated_gradient_equals_a_loop_over_the_path(layers, values, monkeypatch):
    """IG(a) = (1 / K) sum_k grad f(alpha_k a), alpha_k = (k + 1/2) / K, one pass per point and
    layer in the reference. One stacked pass serves ``conv`` and ``act`` together (the
    in-place ReLU after ``conv`` works on a copy); ``body``, whose skip connection starts
    before it, cannot be stacked and runs on a repeated input; the same numbers either way,
    and in passes of one point each."""
    monkeypatch.setattr(collect, "PATH_VALUES", values)
    model = _skip_model()
    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    K = 6
    got = collect._integrated(model, x, layers, 1, K)
    for layer in layers:
        _, _, a = _at(model, x, layer, None, 1)
        expected = sum(_at(model, x, layer, (k + 0.5) / K * a, 1)[1] for k in range(K)) / K
        torch.testing.assert_close(got[f"{layer}:grad"], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[f"{layer}:act"], a)
    if "body" in layers:
        with pytest.raises(collect._Unstackable):
            collect._stacked(model.module, x, layers, 1, K)
    else:
        collect._stacked(model.module, x, layers, 1, K)  # one pass, no fallback


def test_integrated_gradient_is_complete():
    """Completeness (Sundararajan et al. 2017): IG(a) . a = f(a) - f(0) at the layer, up to the
    midpoint rule's error (the network is piecewise linear, 400 points)."""
    model = _skip_model()
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    got = collect._integrated(model, x, ["body"], 0, 400)
    f_a, _, a = _at(model, x, "body", None, 0)
    f_0, _, _ = _at(model, x, "body", torch.zeros_like(a), 0)
    total = (got["body:grad"] * a).flatten(1).sum(1)
    torch.testing.assert_close(total, f_a - f_0, rtol=1e-2, atol=1e-3)


def test_steps_are_checked_and_recorded():
    model = _skip_model()
    g = torch.Generator().manual_seed(3)
    sets = {"up": torch.rand(6, 3, 6, 6, generator=g) + 1}
    randoms = {f"random_{k}": torch.rand(6, 3, 6, 6, generator=g) for k in range(3)}
    kw = dict(random=randoms, layers="body", n_random=3, permutations=99)
    with pytest.raises(ValueError, match="steps >= 0"):
        cl.tcav(model, "a", torch.rand(4, 3, 6, 6), sets, steps=-1, **kw)
    for steps in (0, local.STEPS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = cl.tcav(model, "a", torch.rand(4, 3, 6, 6, generator=g), sets, steps=steps, **kw)
        assert res.settings["steps"] == steps and res.settings["path"] == local.path_text(steps)


@pytest.mark.slow
def test_cassidys_yellow_is_found_at_pool1_and_a_posing_random_set_is_not():
    """Fresh toons (seed 6262, used nowhere else), the README's set sizes (100 per concept, 10
    random sets of 100, 30 target pictures), pool1, the default test: painting cassidy's hair
    yellow raises her logit by 6 (the intervention), and the integrated derivative finds it,
    far beyond the null (measured z +74); "dark" (blue, black: after one convolution they look
    alike in the dark parts of the character) is not found, nor are a random set posing as a
    concept and green (no character's colour). With ``steps=0`` (the gradient at the picture,
    the statistic before) yellow is missed (z -0.4) and blue (z +4.1) and black (+2.6) come
    out positive, which the intervention contradicts (blue -1.15, black 0)."""
    seed, layer = 6262, "pool1"
    model = cl.load("toon-cnn")
    names = ("yellow", "blue", "black", "green")
    concepts = {c: toons.concept_images(c, 100, seed=seed) for c in names}
    concepts["posing"] = toons.concept_images("random_10", 100, seed=seed)
    randoms = {
        f"random_{k}": toons.concept_images(f"random_{k}", 100, seed=seed) for k in range(10)
    }
    data = toons.generate(90, split="test", seed=seed)
    targets = [p for p, n in zip(data.pixels, data.label_names, strict=True) if n == "cassidy"]
    kw = dict(random=randoms, layers=layer, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cl.tcav(model, "cassidy", targets, concepts, **kw)
        first_order = cl.tcav(model, "cassidy", targets, concepts, steps=0, **kw)
    yellow = res.row("yellow", layer)
    assert yellow["significant"] and yellow["direction"] == "+" and yellow["z"] > 20, res
    for name in ("blue", "black", "green", "posing"):
        assert not res.row(name, layer)["significant"], res
    assert res.row("posing", layer)["p"] > 0.05, res
    assert not first_order.row("yellow", layer)["significant"], first_order
    for name in ("blue", "black"):
        row = first_order.row(name, layer)
        assert row["significant"] and row["direction"] == "+", first_order
