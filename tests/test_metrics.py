"""Explanation metrics against masks and faithfulness curves: hand-computed values and slow
reference loops."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
from conftest import model_state
from torch import nn

import convlens as cl
from convlens.core import stats
from convlens.core.model import Preprocessing
from convlens.core.references import reference_input
from convlens.techniques.attribution.base import Attribution
from convlens.workflows import metrics as m

PLAIN = Preprocessing(crop=None, resize=None, mean=(0.0,), std=(1.0,), channels=1)
WEIGHTS = torch.tensor([[4.0, 3.0], [2.0, 1.0]])


class Linear2x2(nn.Module):
    """Logits (s, 0) with s = sum(w * x) over a (1, 2, 2) input: every curve is hand-computable
    (the probability of class 0 is sigmoid(s))."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(WEIGHTS.clone().view(1, 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).sum((1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


def linear_model() -> cl.Model:
    return cl.Model(Linear2x2(), preprocess=PLAIN, labels=["s", "zero"], input_size=(1, 2, 2))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def small_model() -> cl.Model:
    rgb = Preprocessing(crop=None, resize=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return cl.Model(SmallCNN(), preprocess=rgb, input_size=(3, 8, 8))


# -- pointing game ----------------------------------------------------------------------------


def test_pointing_game_hand_values():
    maps = torch.zeros(3, 4, 4)
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    maps[0, 1, 1] = 5.0  # maximum inside the mask: hit
    maps[1, 3, 3] = 5.0  # outside: miss
    maps[2, 0, 0] = maps[2, 3, 3] = 5.0  # two tied maxima, one inside
    scores = m.pointing_game(maps, masks)
    assert scores.values.tolist() == [1.0, 0.0, 0.5]
    assert scores.mean == pytest.approx(0.5)
    assert m.pointing_game(maps, masks, ties="any").values.tolist() == [1.0, 0.0, 1.0]
    assert m.pointing_game(maps, masks, ties="first").values.tolist() == [1.0, 0.0, 1.0]
    # a constant map under "share" scores the mask's area fraction, what guessing would
    flat = m.pointing_game(torch.ones(1, 4, 4), masks[:1])
    assert flat.values.item() == pytest.approx(4 / 16)


def _slow_pointing(maps, masks, tolerance):
    """Distance from the first maximum to the nearest mask pixel, pixel by pixel."""
    hits = []
    for one, mask in zip(maps, masks, strict=True):
        flat = int(one.argmax())
        y, x = divmod(flat, one.shape[1])
        best = min(
            math.hypot(y - i, x - j)
            for i in range(mask.shape[0])
            for j in range(mask.shape[1])
            if mask[i, j]
        )
        hits.append(1.0 if best <= tolerance else 0.0)
    return hits


@pytest.mark.parametrize("tolerance", [0, 1, 2.5, 4])
def test_pointing_game_tolerance_matches_a_distance_loop(tolerance):
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(12, 9, 11, generator=g)
    masks = torch.zeros(12, 9, 11, dtype=torch.bool)
    for i in range(12):
        y, x = torch.randint(0, 7, (2,), generator=g).tolist()
        masks[i, y : y + 2, x : x + 3] = True
    got = m.pointing_game(maps, masks, tolerance=tolerance, ties="first").values.tolist()
    assert got == _slow_pointing(maps, masks, tolerance)


def test_attribution_layer_maps_are_upsampled_to_the_input():
    small = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    attribution = Attribution(
        map=small,
        method="gradcam",
        settings={},
        targets=[0],
        target_labels=["a"],
        scores=None,
        layer="conv",
        input_size=(4, 4),
    )
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, 2:] = True  # the top-right quadrant, where the layer map's peak lands
    assert m.pointing_game(attribution, mask).values.item() == 1.0
    up = attribution.upsampled().map
    expected = up.clamp(min=0)[0, :2, 2:].sum() / up.clamp(min=0).sum()
    assert m.energy_in_mask(attribution, mask).values.item() == pytest.approx(float(expected))


# -- energy -----------------------------------------------------------------------------------


def test_energy_in_mask_hand_values_ignores_negative_evidence():
    maps = torch.tensor([[[1.0, 3.0], [-5.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]])
    masks = torch.tensor([[[True, False], [True, False]], [[True, True], [True, False]]])
    scores = m.energy_in_mask(maps, masks)
    assert scores.values.tolist() == pytest.approx([1 / 4, 6 / 8])
    assert scores.better == "higher"


def test_errors_say_what_happened():
    maps = torch.rand(2, 4, 4)
    masks = torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"masks of the maps' shape \(2, 4, 4\).*\(2, 4, 5\)"):
        m.pointing_game(maps, torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool masks"):
        m.energy_in_mask(maps, masks.float())
    with pytest.raises(ValueError, match=r"maps \(N, H, W\)"):
        m.energy_in_mask(torch.rand(4, 4), masks)
    empty = masks.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"mask is empty for image\(s\) 1"):
        m.pointing_game(maps, empty)
    negative = maps.clone()
    negative[0] = -1.0
    with pytest.raises(ValueError, match=r"no positive mass.*image\(s\) 0"):
        m.energy_in_mask(negative, masks)
    # empty="nan": those images become NaN, are left out of the mean and counted
    scores = m.energy_in_mask(negative, masks, empty="nan")
    assert math.isnan(scores.values[0]) and scores.values[1] == 1.0
    assert scores.mean == 1.0 and scores.invalid == 1
    with pytest.raises(ValueError, match="ties"):
        m.pointing_game(maps, masks, ties="all")


# -- statistics -------------------------------------------------------------------------------


@pytest.mark.parametrize("df", [1, 2, 3, 7, 30, 499])
def test_t_quantile_matches_scipy(df):
    for p in (0.975, 0.95, 0.6, 0.025):
        assert stats.t_quantile(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), abs=1e-7)


def test_scores_interval_is_the_t_interval():
    values = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.55], dtype=torch.float64)
    low, high = m.Scores("x", values).interval()
    expected = scipy.stats.t.interval(
        0.95, df=4, loc=values.mean().item(), scale=scipy.stats.sem(values.numpy())
    )
    assert (low, high) == pytest.approx(expected, abs=1e-9)
    assert math.isnan(m.Scores("x", values[:1]).interval()[0])


# -- deletion / insertion -------------------------------------------------------------------------


def test_deletion_and_insertion_by_hand_on_a_linear_model():
    model = linear_model()
    x = torch.ones(1, 1, 2, 2)
    maps = WEIGHTS.view(1, 2, 2)  # ranks the pixels 4, 3, 2, 1
    curves = m.deletion(model, x, maps, 0, steps=4, fill="zero", score="logit")
    assert curves.fractions.tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert curves.scores[0].tolist() == [10, 6, 3, 1, 0]
    assert curves.auc.values.item() == pytest.approx(0.25 * (10 / 2 + 6 + 3 + 1 + 0 / 2))
    assert curves.auc.better == "lower"
    grown = m.insertion(model, x, maps, 0, steps=4, fill="zero", score="logit")
    assert grown.scores[0].tolist() == [0, 4, 7, 9, 10]
    assert grown.auc.values.item() == pytest.approx(0.25 * (0 + 4 + 7 + 9 + 10 / 2))
    # the default score is the probability: sigmoid(s) for logits (s, 0)
    prob = m.deletion(model, x, maps, 0, steps=2, fill="zero")
    assert prob.scores[0].tolist() == pytest.approx(torch.sigmoid(torch.tensor([10.0, 3, 0])))
    # a map that ranks the weakest pixels first deletes slower: worse (higher) AUC
    reverse = m.deletion(model, x, -maps, 0, steps=4, fill="zero", score="logit")
    assert reverse.auc.values.item() > curves.auc.values.item()


def _slow_curve(model, x, maps, target, kind, steps, reference, score):
    """One image and one step at a time, pixels changed by an explicit loop."""
    n, _, height, width = x.shape
    out = torch.zeros(n, steps + 1, dtype=torch.float64)
    for i in range(n):
        flat = maps[i].flatten()
        order = sorted(range(flat.numel()), key=lambda k: (-float(flat[k]), k))
        for step in range(steps + 1):
            count = round(step * height * width / steps)
            image = x[i].clone() if kind == "deletion" else reference[i].clone()
            for k in order[:count]:
                r, c = divmod(k, width)
                image[:, r, c] = reference[i][:, r, c] if kind == "deletion" else x[i][:, r, c]
            with torch.no_grad():
                logits = model.forward(image[None])
            values = logits.softmax(1) if score == "probability" else logits
            out[i, step] = float(values[0, target[i]])
    return out


@pytest.mark.parametrize("kind", ["deletion", "insertion"])
@pytest.mark.parametrize(("fill", "score"), [("blur", "probability"), ("mean", "logit")])
def test_curves_match_a_per_step_loop(kind, fill, score):
    model = small_model()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 8, 8, generator=g)
    maps = torch.randn(3, 8, 8, generator=g)
    maps[0, :2] = 0.0  # ties are broken in row-major order
    target = [0, 2, 1]
    fn = m.deletion if kind == "deletion" else m.insertion
    before = model_state(model.module)
    got = fn(model, x, maps, target, steps=7, fill=fill, blur_sigma=1.5, score=score, batch_size=5)
    assert model_state(model.module) == before
    reference = reference_input(model, x, fill, blur_sigma=1.5, what="fill").expand_as(x)
    expected = _slow_curve(model, x, maps, target, kind, 7, reference, score)
    torch.testing.assert_close(got.scores, expected, rtol=1e-5, atol=1e-6)
    fractions = torch.tensor([round(k * 64 / 7) / 64 for k in range(8)], dtype=torch.float64)
    torch.testing.assert_close(got.auc.values, torch.trapezoid(expected, fractions, dim=1))
    assert got.targets == target


def test_curves_default_to_the_attributions_targets_and_batch_size_does_not_matter():
    model = small_model()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    attribution = cl.explain(model, x, "saliency", target=[1, 2])
    a = m.insertion(model, x, attribution, steps=5, batch_size=1)
    b = m.insertion(model, x, attribution, steps=5, batch_size=64)
    assert a.targets == [1, 2]
    torch.testing.assert_close(a.scores, b.scores)
    with pytest.raises(ValueError, match="steps"):
        m.deletion(model, x, attribution, steps=0)
    with pytest.raises(ValueError, match="one \\(H, W\\)"):
        m.deletion(model, x, torch.rand(2, 4, 4))


def test_pixel_ranks_are_a_stable_descending_order():
    maps = torch.tensor([[[1.0, 3.0], [3.0, 0.0]]])
    assert m.pixel_ranks(maps).tolist() == [[[2, 0], [1, 3]]]


# -- Average Drop / Increase in Confidence --------------------------------------------------------


def test_confidence_change_by_hand():
    model = linear_model()
    x = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 1.0], [-1.0, 1.0]]]])
    maps = torch.tensor([[[2.0, 0.0], [-1.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]]])
    # image 0: s = relu(map) / max = [[1, 0], [0, .5]] -> masked logit 4 + 0.5 = 4.5 (was 10)
    # image 1: s = [[1, 1], [0, 1]] -> masked logit 4 + 3 + 1 = 8 (was 4 + 3 - 2 + 1 = 6)
    result = m.confidence_change(model, x, maps, 0)
    y = torch.sigmoid(torch.tensor([10.0, 6.0], dtype=torch.float64))
    o = torch.sigmoid(torch.tensor([4.5, 8.0], dtype=torch.float64))
    torch.testing.assert_close(result.original, y)
    torch.testing.assert_close(result.masked, o)
    drop0 = float((y[0] - o[0]) / y[0])  # fractions, not the paper's percent
    assert result.average_drop.values.tolist() == pytest.approx([drop0, 0.0], rel=1e-4)
    assert result.increase_in_confidence.values.tolist() == [0.0, 1.0]
    assert result.average_drop.mean == pytest.approx(drop0 / 2, rel=1e-4)
    with pytest.raises(ValueError, match="no positive mass"):
        m.confidence_change(model, x, -maps.abs(), 0)
    with pytest.raises(ValueError, match="probability"):
        m.confidence_change(model, x, maps, 0, score="logit")


def test_t_tail_and_two_sample_test_match_scipy():
    import numpy as np

    stats = scipy.stats
    from convlens.core.stats import t_quantile, t_sf, ttest_ind

    for t, df in [(0.5, 3), (2.0, 18), (5.0, 18), (12.0, 9), (1.0, 1), (30.0, 40), (-1.5, 7)]:
        assert t_sf(t, df) == pytest.approx(float(stats.t.sf(t, df)), rel=1e-8, abs=1e-14)
    assert t_quantile(0.975, 9) == pytest.approx(float(stats.t.ppf(0.975, 9)), rel=1e-8)
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.8, 3.0):
        a, b = rng.normal(0, 1, 10), rng.normal(shift, 1.3, 12)
        expected = stats.ttest_ind(a, b)
        t, p = ttest_ind(a, b)
        assert t == pytest.approx(float(expected.statistic), rel=1e-10)
        assert p == pytest.approx(float(expected.pvalue), rel=1e-7, abs=1e-15)
    t, p = ttest_ind([1, 1, 1], [1, 1])
    assert math.isnan(t) and p == 1.0
    assert ttest_ind([1, 1], [2, 2]) == (-math.inf, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        ttest_ind([1.0], [1.0, 2.0])
