"""Sanity checks (Adebayo et al. 2018): the similarity measures against scipy / scikit-image,
the randomisation on a copy, and the verdicts: an edge detector that ignores the model is
flagged, Grad-CAM passes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from conftest import model_state
from skimage.metrics import structural_similarity
from torch import nn

import convlens as cl
from convlens.core import stats
from convlens.core.model import Preprocessing
from convlens.techniques.attribution.base import (
    make_attribution,
    register,
    resolve_target,
    unregister,
)
from convlens.workflows import sanity

# -- measures -------------------------------------------------------------------------------------


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(5, 6, 7, generator=g) * 4).round()  # many ties
    b = a + torch.randn(5, 6, 7, generator=g)
    got = stats.spearman(a, b)
    for i in range(5):
        expected = scipy.stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0]
        assert float(got[i]) == pytest.approx(expected, abs=1e-12)
    ranks = stats.average_ranks(a.flatten(1))
    np.testing.assert_allclose(ranks[0].numpy(), scipy.stats.rankdata(a[0].flatten().numpy()))


def test_spearman_of_constant_maps_is_defined():
    a = torch.rand(2, 4, 4)
    flat = torch.zeros(2, 4, 4)
    assert stats.spearman(a, flat).tolist() == [0.0, 0.0]
    assert stats.spearman(flat, flat).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("win_size", [7, 5])
def test_ssim_matches_skimage(win_size):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 16, 20, generator=g)
    b = (a + 0.3 * torch.rand(3, 16, 20, generator=g)).clamp(0, 1)
    b[2] = torch.rand(16, 20, generator=g)
    got = stats.ssim(a, b, win_size=win_size)
    for i in range(3):
        expected = structural_similarity(
            a[i].double().numpy(), b[i].double().numpy(), data_range=1.0, win_size=win_size
        )
        assert float(got[i]) == pytest.approx(expected, abs=1e-10)
    assert stats.ssim(a, a).tolist() == pytest.approx([1.0] * 3)
    with pytest.raises(ValueError, match="win_size"):
        stats.ssim(a, b, win_size=4)


# -- a small trained network ----------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))))


def squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise pictures (16 x 16) with a bright (class 0) or dark (class 1) square somewhere."""
    g = torch.Generator().manual_seed(seed)
    images = 0.5 + 0.1 * torch.randn(n, 3, 16, 16, generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    for i in range(n):
        y, x = torch.randint(0, 11, (2,), generator=g).tolist()
        images[i, :, y : y + 5, x : x + 5] = 1.0 if labels[i] == 0 else 0.0
    return images.clamp(0, 1), labels


PLAIN = Preprocessing(crop=None, resize=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def trained() -> cl.Model:
    torch.manual_seed(0)
    net = Net()
    images, labels = squares(128, 0)
    inputs = PLAIN.normalize(images)
    optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(60):
        optimiser.zero_grad()
        F.cross_entropy(net(inputs), labels).backward()
        optimiser.step()
    net.eval()
    return cl.Model(net, preprocess=PLAIN, labels=["bright", "dark"], input_size=(3, 16, 16))


def sobel_edges(model, images, target=None, *, layer=None, **options):
    """A broken 'explanation': the input's edge magnitude, whatever the model."""
    batch = model.prepare(images)
    grey = batch.inputs.mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    chosen = resolve_target(model, batch.inputs, target)
    return make_attribution(
        (gx**2 + gy**2).sqrt()[:, 0],
        method="sobel",
        settings={},
        model=model,
        batch=batch,
        target=chosen,
        scores=None,
    )


def test_trained_model_learned_the_task(trained):
    images, labels = squares(64, 1)
    predicted = trained.probabilities(PLAIN.normalize(images)).argmax(1)
    assert (predicted == labels).float().mean() > 0.9


def test_gradcam_passes_and_the_model_is_left_alone(trained):
    images, _ = squares(8, 2)
    before = model_state(trained.module)
    check = sanity.sanity_check(trained, PLAIN.normalize(images), "gradcam")
    assert model_state(trained.module) == before
    assert check.stages == ["original", "fc", "conv2", "conv1"]
    assert check.rows()[0]["spearman_abs"] == pytest.approx(1.0)
    assert check.rows()[0]["ssim"] == pytest.approx(1.0)
    assert not check.flagged, check.rows()
    assert check.score < 0.5
    assert "passes" in check.verdict
    assert check.maps.shape == (4, 8, 16, 16)


def test_edge_detector_is_flagged_as_a_callable_and_registered(trained):
    images, _ = squares(8, 3)
    check = sanity.sanity_check(trained, PLAIN.normalize(images), sobel_edges)
    assert check.flagged
    assert check.score == pytest.approx(1.0)
    assert "FAILS" in check.verdict
    register("sobel_test_only", family="gradient", paper="-", description="edges")(sobel_edges)
    try:
        again = sanity.sanity_check(
            trained, PLAIN.normalize(images), "sobel_test_only", mode="independent"
        )
    finally:
        unregister("sobel_test_only")
    assert again.flagged and again.mode == "independent"


def test_independent_mode_restores_each_layer_and_seeds_repeat(trained):
    images, _ = squares(4, 4)
    x = PLAIN.normalize(images)
    one = sanity.sanity_check(trained, x, "saliency", mode="independent", seed=7)
    two = sanity.sanity_check(trained, x, "saliency", mode="independent", seed=7)
    torch.testing.assert_close(one.maps, two.maps)
    # layers=["conv1"]: the maps of the trained net with conv1 alone re-drawn from the seed
    only = sanity.sanity_check(trained, x, "saliency", layers=["conv1"], seed=7)
    first = Net()
    first.load_state_dict(trained.module.state_dict())
    sanity.randomize_layer(first.conv1, torch.Generator().manual_seed(7))
    handle = cl.Model(first, preprocess=PLAIN, input_size=(3, 16, 16))
    expected = cl.explain(handle, x, "saliency", target=resolve_target(trained, x, None)).map
    torch.testing.assert_close(only.maps[1], expected)
    with pytest.raises(ValueError, match="parametrised layers"):
        sanity.sanity_check(trained, x, "saliency", layers=["act1"])


def test_randomize_layer_bounds():
    conv = nn.Conv2d(4, 2, 3)
    sanity.randomize_layer(conv, torch.Generator().manual_seed(0))
    bound = 1 / 6  # 1 / sqrt(4 * 3 * 3)
    assert conv.weight.abs().max() <= bound and conv.bias.abs().max() <= bound
    assert conv.weight.std() > bound / 4


def test_result_table_json_and_plot(trained, tmp_path):
    images, _ = squares(4, 5)
    check = sanity.sanity_check(trained, PLAIN.normalize(images), "gradcam")
    data = json.loads(check.to_json())
    assert data["flagged"] is False and len(data["stages"]) == 4
    assert set(data["stages"][0]) == {"stage", "spearman_abs", "spearman", "ssim"}
    figure = check.plot()
    assert figure.size == (640, 360)
    assert figure.save(tmp_path / "sanity.png").read_bytes()[:4] == b"\x89PNG"
    assert check.figure(0).size[0] > 4 * 96
    assert check._repr_png_()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_mobilenet_verdicts_follow_the_paper():
    """On MobileNetV2, the default cascading verdict flags guided backpropagation (its maps
    ignore the randomised top of the network) and passes Grad-CAM, saliency and IG."""
    model = cl.load("mobilenet_v2")
    photo = [cl.sample("chelsea")]
    scores = {}
    for method, options in [
        ("guided_backprop", {}),
        ("gradcam", {}),
        ("saliency", {}),
        ("integrated_gradients", {"steps": 2}),
    ]:
        check = cl.sanity_check(model, photo, method, **options)
        assert check.top == len(check.stages) - 1 > 100  # every parametrised layer, top first
        scores[method] = (check.score, check.flagged)
    assert scores["guided_backprop"][1] and scores["guided_backprop"][0] > 0.6, scores
    for method in ("gradcam", "saliency", "integrated_gradients"):
        assert not scores[method][1] and scores[method][0] < 0.45, scores
