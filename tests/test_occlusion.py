"""Occlusion and RISE: hand-computed maps, a slow reference loop, parity with Captum's Occlusion
and with the RISE authors' mask upsampling, what each fill puts into the window, batching,
RISE's statistics, bad options, and the user's model left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Exploding, model_state, tiny_model
from torch import nn

import convlens as cl
from convlens.core.hooks import has_hooks
from convlens.core.model import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from convlens.core.references import gaussian_blur
from convlens.techniques.attribution import rise as rise_module
from convlens.techniques.attribution.base import get_method
from convlens.techniques.attribution.occlusion import occlusion
from convlens.techniques.attribution.rise import rise, rise_masks

# -- helpers ------------------------------------------------------------------------------------


def plain(channels: int) -> Preprocessing:
    """Input space = pixel space (no resize, crop or normalisation)."""
    return Preprocessing(
        crop=None, resize=None, mean=(0.0,) * channels, std=(1.0,) * channels, channels=channels
    )


def linear_model(weights: torch.Tensor) -> cl.Model:
    """score = sum(weights * x) (one output, no bias): a window's drop is the window's sum of
    weights * x when the fill is zero."""
    c, h, w = weights.shape
    head = nn.Linear(c * h * w, 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(weights.reshape(1, -1))
    return cl.Model(
        nn.Sequential(nn.Flatten(), head),
        preprocess=plain(c),
        postprocess="none",
        input_size=(c, h, w),
    )


class SmallCNN(nn.Module):
    """A real-ish CNN (conv, batch norm, ReLU, stride, global pool, linear), seeded weights."""

    def __init__(self, channels: int = 3, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, classes)
        with torch.no_grad():
            self.features[3].running_mean.uniform_(-0.1, 0.1)
            self.features[3].running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Recorder(nn.Module):
    """Wraps a network and keeps a copy of every input batch it sees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.inner(x)


def small_cnn(size: int = 12, preprocess: Preprocessing | None = None) -> cl.Model:
    return cl.Model(
        Recorder(SmallCNN()),
        preprocess=preprocess or Preprocessing(crop=None, resize=None),
        input_size=(3, size, size),
    )


def images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def reference_occlusion(
    model: cl.Model,
    x: torch.Tensor,
    targets: list[int],
    window: tuple[int, int],
    stride: tuple[int, int],
    fill: torch.Tensor | None = None,
    score=lambda outputs: outputs,
) -> torch.Tensor:
    """The slow, obvious loop: one forward per image and window position; every pixel gets the
    mean drop of the windows that cover it. Windows start at 0, s, 2s, ... while the previous
    window has not reached the border (so the last one may be cut off)."""
    (wh, ww), (sh, sw) = window, stride
    n, _, height, width = x.shape
    fill = torch.zeros_like(x) if fill is None else fill.expand_as(x)
    module = model.module.eval()
    result = torch.zeros(n, height, width, dtype=torch.float64)
    with torch.no_grad():
        for i in range(n):
            image = x[i : i + 1]
            base = float(score(module(image))[0, targets[i]])
            total = torch.zeros(height, width, dtype=torch.float64)
            count = torch.zeros(height, width, dtype=torch.float64)
            for top in range(0, height - wh + sh, sh):
                for left in range(0, width - ww + sw, sw):
                    occluded = image.clone()
                    rows, cols = slice(top, top + wh), slice(left, left + ww)
                    occluded[0, :, rows, cols] = fill[i, :, rows, cols]
                    drop = base - float(score(module(occluded))[0, targets[i]])
                    total[rows, cols] += drop
                    count[rows, cols] += 1
            result[i] = total / count
    return result.float()


# -- occlusion: hand-computed maps ------------------------------------------------------------


def test_linear_model_by_hand():
    # score = sum of the 3x3 picture 0..8; 2x2 windows at (0,0), (0,1), (1,0), (1,1) drop
    # 0+1+3+4 = 8, 12, 20, 24; a pixel gets the mean over the windows covering it
    x = torch.arange(9.0).view(1, 1, 3, 3)
    result = occlusion(linear_model(torch.ones(1, 3, 3)), x, 0, window=2, stride=1)
    expected = torch.tensor([[[8.0, 10.0, 12.0], [14.0, 16.0, 18.0], [20.0, 22.0, 24.0]]])
    assert torch.equal(result.map, expected)
    assert result.map.shape == (1, 3, 3) and result.method == "occlusion"
    assert result.scores.tolist() == [36.0]


def test_last_window_is_cut_off_by_the_border():
    # a 1x5 row 1..5, window 2, stride 2: windows [0, 2), [2, 4), [4, 5) drop 3, 7, 5
    x = torch.arange(1.0, 6.0).view(1, 1, 1, 5)
    model = linear_model(torch.ones(1, 1, 5))
    result = occlusion(model, x, 0, window=(1, 2), stride=(1, 2))
    assert result.map.tolist() == [[[3.0, 3.0, 7.0, 7.0, 5.0]]]
    assert result.extras["windows"] == (1, 3)
    assert result.extras["window_drops"].tolist() == [[[3.0, 7.0, 5.0]]]
    # window 3, stride 1: drops 6, 9, 12 averaged over 1, 2, 3, 2, 1 windows
    result = occlusion(model, x, 0, window=(1, 3), stride=1)
    assert result.map.tolist() == [[[6.0, 7.5, 9.0, 10.5, 12.0]]]


def test_window_spans_all_channels_and_keeps_the_sign():
    # channel 0 counts for the target, channel 1 against: occluding a pixel drops x0 - x1
    x = torch.tensor([[[[1.0, 2.0]], [[3.0, 5.0]], [[7.0, 11.0]]]])
    weights = torch.tensor([[[1.0, 1.0]], [[-1.0, -1.0]], [[0.0, 0.0]]])
    result = occlusion(linear_model(weights), x, 0, window=1, stride=1)
    assert result.map.tolist() == [[[-2.0, -3.0]]]
    assert result.settings["signed"] is True


def test_whole_image_window_and_a_fill_equal_to_the_input():
    model = small_cnn()
    x = images(2, 3, 12, 12)
    whole = occlusion(model, x, [1, 3], window=12, stride=5)
    module = model.module.eval()
    logits, blank = module(x).detach(), module(torch.zeros_like(x)).detach()
    for i, k in enumerate([1, 3]):
        expected = torch.full((12, 12), float(logits[i, k] - blank[i, k]))
        torch.testing.assert_close(whole.map[i], expected, atol=1e-6, rtol=0)
    # replacing the input by itself changes nothing: every drop is exactly 0 with plain forward
    # passes, and 0 up to float rounding with incremental inference (the default)
    same = occlusion(model, x, [1, 3], window=4, stride=2, fill=x.clone(), incremental=False)
    assert torch.equal(same.map, torch.zeros(2, 12, 12))
    same = occlusion(model, x, [1, 3], window=4, stride=2, fill=x.clone())
    assert same.extras["incremental"] == "incremental"
    torch.testing.assert_close(same.map, torch.zeros(2, 12, 12), atol=1e-6, rtol=0)


# -- occlusion: the slow reference loop and Captum ----------------------------------------------


@pytest.mark.parametrize(
    ("window", "stride"), [((2, 2), (1, 1)), ((3, 3), (2, 2)), ((4, 2), (3, 1))]
)
def test_equals_the_reference_loop_on_the_tiny_model(window, stride):
    model = tiny_model()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    result = occlusion(model, x, [0, 2], window=window, stride=stride)
    expected = reference_occlusion(model, x, [0, 2], window, stride)
    torch.testing.assert_close(result.map, expected, atol=1e-6, rtol=0)


def test_equals_the_reference_loop_on_a_small_cnn_with_each_fill_and_score():
    model = small_cnn(14)
    x = images(2, 3, 14, 14, seed=3)
    kwargs = {"window": (5, 4), "stride": (3, 3)}
    cases = [("zero", None), ("mean", x.mean((2, 3), keepdim=True)), (0.7, torch.tensor(0.7))]
    for fill, fill_tensor in cases:
        result = occlusion(model, x, [1, 4], fill=fill, **kwargs)
        expected = reference_occlusion(model, x, [1, 4], (5, 4), (3, 3), fill_tensor)
        torch.testing.assert_close(result.map, expected, atol=1e-6, rtol=0)
    probability = occlusion(model, x, [1, 4], score="probability", **kwargs)
    expected = reference_occlusion(
        model, x, [1, 4], (5, 4), (3, 3), score=lambda out: out.softmax(1)
    )
    torch.testing.assert_close(probability.map, expected, atol=1e-6, rtol=0)
    assert probability.settings["score"] == "probability"


def _captum(module: nn.Module, x: torch.Tensor, target, window, stride) -> torch.Tensor:
    from captum.attr import Occlusion

    c = x.shape[1]
    return Occlusion(module.eval()).attribute(
        x,
        sliding_window_shapes=(c, *window),
        strides=(c, *stride),
        target=target,
        perturbations_per_eval=8,
    )


def test_equals_captum_on_small_models():
    pytest.importorskip("captum")
    tiny = tiny_model()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    theirs = _captum(tiny.module, x, [2, 1], (3, 3), (2, 2))
    # Captum gives (N, C, H, W) with one value on all channels; we give it once: (N, H, W)
    assert torch.equal(theirs, theirs[:, :1].expand_as(theirs))
    ours = occlusion(tiny, x, [2, 1], window=3, stride=2).map
    torch.testing.assert_close(ours, theirs[:, 0], atol=1e-6, rtol=0)
    cnn = small_cnn(13)
    x = images(2, 3, 13, 13, seed=4)
    theirs = _captum(cnn.module, x, [0, 3], (4, 5), (3, 2))
    assert torch.equal(theirs, theirs[:, :1].expand_as(theirs))
    ours = occlusion(cnn, x, [0, 3], window=(4, 5), stride=(3, 2)).map
    torch.testing.assert_close(ours, theirs[:, 0], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def mobilenet() -> cl.Model:
    return cl.load("mobilenet_v2")


@pytest.mark.slow
def test_equals_captum_on_mobilenet_v2(mobilenet):
    # 64 x 64 windows every 48 pixels on the full 224 x 224 input: 5 x 5 windows that overlap,
    # the last row and column cut off at the border (192 + 64 > 224)
    pytest.importorskip("captum")
    batch = mobilenet.prepare(cl.sample("chelsea"))
    ours = occlusion(mobilenet, batch, "tabby cat", window=64, stride=48)
    theirs = _captum(mobilenet.module, batch.inputs, ours.targets, (64, 64), (48, 48))[:, 0]
    assert ours.extras["windows"] == (5, 5)
    assert float(theirs.abs().max()) > 1.0  # a real signal, not a flat map
    # the drops are differences of logits near 17 (float32 step 2e-6); batches of another
    # size round differently. Measured: max |difference| 2e-6 (one thread; 0 with two),
    # values up to 2.7, Pearson r = 1 - 2e-14.
    torch.testing.assert_close(ours.map, theirs, atol=5e-5, rtol=0)
    assert np.corrcoef(ours.map.flatten(), theirs.flatten())[0, 1] > 0.99999


@pytest.mark.slow
def test_equals_captum_with_the_picasso_settings(mobilenet):
    # window 16, stride 8 on the central 96 x 96 of chelsea's input (11 x 11 = 121 windows;
    # the full 224 x 224 has 729, see benchmarks/)
    pytest.importorskip("captum")
    crop = cl.Model(mobilenet.module, preprocess=mobilenet.preprocess, input_size=(3, 96, 96))
    x = mobilenet.prepare(cl.sample("chelsea")).inputs[..., 64:160, 64:160]
    ours = occlusion(crop, x, mobilenet.class_index("tabby cat"), window=16, stride=8)
    theirs = _captum(mobilenet.module, x, ours.targets, (16, 16), (8, 8))[:, 0]
    assert ours.extras["windows"] == (11, 11)
    assert float(theirs.abs().max()) > 1.0
    # measured: max |difference| 1.9e-5 with one thread, 1.1e-5 with two, for values up to
    # 3.9 and logits near 15 (Pearson r = 1 - 5e-12)
    torch.testing.assert_close(ours.map, theirs, atol=5e-5, rtol=0)
    assert np.corrcoef(ours.map.flatten(), theirs.flatten())[0, 1] > 0.99999


# -- occlusion: fills ---------------------------------------------------------------------------


def _window_copy(model: cl.Model, x: torch.Tensor, fill, **options) -> torch.Tensor:
    """The copy the network saw with the first window (rows 0-3, columns 0-3) filled."""
    recorder = model.module
    recorder.seen.clear()
    occlusion(
        model, x, 0, window=4, stride=4, fill=fill, batch_size=64, incremental=False, **options
    )
    original, copies = recorder.seen  # the unperturbed batch, then all 4 windows at once
    assert torch.equal(original, x) and copies.shape == (4, 3, 8, 8)
    first = copies[0]
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[:4, :4] = False
    assert torch.equal(first[:, outside], x[0][:, outside])  # only the window changes
    return first[:, :4, :4]


def test_each_fill_puts_what_it_says_into_the_window():
    model = small_cnn(8)  # ImageNet normalisation
    x = images(1, 3, 8, 8, seed=5)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    window = {
        "zero": torch.zeros(3, 4, 4),
        "black": (-mean / std).expand(3, 4, 4),
        "mean": x[0].mean((1, 2), keepdim=True).expand(3, 4, 4),
        (1.0, 0.5, 0.0): ((torch.tensor([1.0, 0.5, 0.0]).view(3, 1, 1) - mean) / std).expand(
            3, 4, 4
        ),
        0.25: torch.full((3, 4, 4), 0.25),
    }
    for fill, expected in window.items():
        torch.testing.assert_close(_window_copy(model, x, fill), expected, atol=1e-6, rtol=0)
    custom = images(1, 3, 8, 8, seed=6)
    assert torch.equal(_window_copy(model, x, custom), custom[0, :, :4, :4])
    blurred = _window_copy(model, x, "blur", blur_sigma=1.5)
    assert torch.equal(blurred, gaussian_blur(x, 1.5)[0, :, :4, :4])
    # colours go through the model's own preprocessing: a grey model sees the luma
    grey = tiny_model()
    grey.module = Recorder(grey.module)
    x1 = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    occlusion(
        grey, x1, 0, window=2, stride=2, fill=(1.0, 1.0, 0.0), batch_size=64, incremental=False
    )
    torch.testing.assert_close(grey.module.seen[1][0, 0, :2, :2], torch.full((2, 2), 0.886))


def test_blur_is_scipys_gaussian_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = images(2, 3, 9, 11, seed=7)
    for sigma in (0.8, 1.5, 8.0):  # 8.0: a kernel (49 taps) wider than the image
        expected = np.stack(
            [
                [ndimage.gaussian_filter(c, sigma, mode="nearest", truncate=3.0) for c in im]
                for im in x.double().numpy()
            ]
        )
        np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), expected, atol=1e-6)
    # blurring a constant picture leaves it constant
    flat = torch.full((1, 3, 5, 5), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)


def test_colour_fills_need_the_models_normalisation():
    model = cl.Model(SmallCNN(), preprocess=lambda pictures: torch.zeros(1), input_size=(3, 8, 8))
    x = images(1, 3, 8, 8)
    with pytest.raises(ValueError, match="needs the model's Preprocessing"):
        occlusion(model, x, 0, window=4, stride=4, fill="black")
    occlusion(model, x, 0, window=4, stride=4, fill="zero")  # zero needs none


# -- occlusion: batching ---------------------------------------------------------------------------


def test_batch_size_changes_nothing_and_bounds_every_forward():
    model = small_cnn(12)
    x = images(2, 3, 12, 12, seed=8)
    maps = {}
    for size in (1, 7, 64):
        model.module.seen.clear()
        result = occlusion(model, x, [0, 2], window=4, stride=3, batch_size=size, incremental=False)
        batches = [len(b) for b in model.module.seen]
        # 2 unperturbed images + 2 images x 4 x 4 windows, never more than `size` at once
        assert sum(batches) == 2 + 2 * 16 and max(batches) <= size
        assert result.settings["batch_size"] == size
        maps[size] = result.map
    torch.testing.assert_close(maps[1], maps[7], atol=1e-6, rtol=0)
    torch.testing.assert_close(maps[1], maps[64], atol=1e-6, rtol=0)


def test_default_batch_size_comes_from_the_memory_budget_and_progress_is_reported():
    model = small_cnn(12)
    x = images(1, 3, 12, 12)
    calls: list[tuple[int, int]] = []
    result = occlusion(
        model,
        x,
        0,
        window=6,
        stride=6,
        memory_budget_mb=1e-6,
        progress=lambda done, total: calls.append((done, total)),
        incremental=False,
    )
    assert result.settings["batch_size"] == 1
    assert {len(b) for b in model.module.seen} == {1}
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


# -- RISE ------------------------------------------------------------------------------------------


def test_rise_masks_match_the_authors_upsampling():
    # the authors' generate_masks: resize(grid, (s + 1) * cell_size, order=1, mode="reflect",
    # anti_aliasing=False)[x:x + H, y:y + W] with scikit-image
    transform = pytest.importorskip("skimage.transform")
    g = torch.Generator().manual_seed(1)
    for s, height, width in [(7, 224, 224), (3, 10, 13), (2, 4, 4), (5, 5, 5), (1, 6, 3)]:
        grids = (torch.rand(5, s, s, generator=g) < 0.5).float()
        ch, cw = -(-height // s), -(-width // s)
        shifts = torch.stack(
            [torch.randint(0, ch, (5,), generator=g), torch.randint(0, cw, (5,), generator=g)], 1
        )
        expected = np.stack(
            [
                transform.resize(
                    grid.numpy(),
                    ((s + 1) * ch, (s + 1) * cw),
                    order=1,
                    mode="reflect",
                    anti_aliasing=False,
                )[dy : dy + height, dx : dx + width]
                for grid, (dy, dx) in zip(grids, shifts.tolist(), strict=True)
            ]
        )
        masks = rise_masks(grids, shifts, (height, width))
        np.testing.assert_allclose(masks.numpy(), expected, atol=1e-6)


def test_rise_is_the_score_weighted_mean_of_its_masks():
    # a linear score on a positive picture: recover each mask from what the network saw
    weights = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(0)) - 0.3
    model = linear_model(weights)
    model.module = Recorder(model.module)
    x = 0.5 + torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    result = rise(model, x, 0, masks=40, cell=3, p=0.4, seed=5, batch_size=64)
    copies = torch.cat(model.module.seen[1:])  # after the unperturbed image
    masks = copies[:, 0] / x[0, 0]
    scores = (copies[:, 0] * weights[0]).sum((1, 2))
    expected = (scores[:, None, None] * masks).sum(0) / (40 * 0.4)
    torch.testing.assert_close(result.map[0], expected, atol=1e-5, rtol=1e-5)
    assert result.settings == {
        "masks": 40,
        "cell": 3,
        "p": 0.4,
        "seed": 5,
        "fill": "zero",
        "score": "probability",
        "batch_size": 64,
        "signed": False,
    }


def test_rise_with_every_cell_kept_gives_the_score_everywhere():
    # p = 1: every mask is all ones, so the map is masks * prob / (masks * 1) = prob
    model = tiny_model()
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    result = rise(model, x, 2, masks=5, cell=2, p=1.0)
    probability = model.module(x).softmax(1)[0, 2].item()
    torch.testing.assert_close(result.map, torch.full((1, 4, 4), probability), atol=1e-6, rtol=0)
    logit = rise(model, x, 2, masks=5, cell=2, p=1.0, score="logit")
    torch.testing.assert_close(logit.map, torch.full((1, 4, 4), result.scores[0].item()))


class RegionMean(nn.Module):
    """Output (N, 1): the mean intensity of rows 2-7, columns 8-13 of a 16 x 16 picture."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 2:8, 8:14].mean((1, 2, 3))[:, None]


def test_rise_is_higher_where_the_score_comes_from():
    model = cl.Model(RegionMean(), preprocess=plain(1), postprocess="none", input_size=(1, 16, 16))
    result = rise(model, torch.ones(1, 1, 16, 16), 0, masks=600, cell=4, p=0.5, seed=0)
    saliency = result.map[0]
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[2:8, 8:14] = True
    assert saliency[inside].mean() > saliency[~inside].mean() + 0.1
    assert saliency[inside].min() > saliency[12:, :4].max()  # the far corner
    row, col = divmod(int(saliency.argmax()), 16)
    assert inside[row, col]


def test_rise_masks_keep_the_asked_fraction():
    # with a picture of ones and a zero fill, what the network sees is the masks themselves
    model = cl.Model(
        Recorder(RegionMean()), preprocess=plain(1), postprocess="none", input_size=(1, 16, 16)
    )
    rise(model, torch.ones(1, 1, 16, 16), 0, masks=1000, cell=4, p=0.3, seed=1, batch_size=500)
    masks = torch.cat(model.module.seen[1:])[:, 0]
    assert masks.shape == (1000, 16, 16)
    assert float(masks.min()) >= 0.0 and float(masks.max()) <= 1.0
    assert abs(float(masks.mean()) - 0.3) < 0.02  # the mean's std is ~0.004
    # the masks are smooth: neighbours differ by at most one cell's slope (1 / 4 per pixel)
    assert float((masks[:, :, 1:] - masks[:, :, :-1]).abs().max()) <= 0.25 + 1e-6


def test_rise_is_deterministic_with_a_seed_and_a_generator():
    model = small_cnn(12)
    x = images(2, 3, 12, 12, seed=9)
    options = {"masks": 150, "cell": 3, "p": 0.5}
    first = rise(model, x, [0, 1], seed=3, **options).map
    assert torch.equal(first, rise(model, x, [0, 1], seed=3, **options).map)
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(first, rise(model, x, [0, 1], generator=generator, **options).map)
    assert not torch.equal(first, rise(model, x, [0, 1], seed=4, **options).map)
    default = rise(model, x, [0, 1], **options)
    assert default.settings["seed"] == 0
    assert torch.equal(default.map, rise(model, x, [0, 1], seed=0, **options).map)


def test_rise_previews_are_the_runs_on_the_first_masks():
    # the masks come in blocks from the seed, so the preview after 128 (256) masks is the map
    # of a run of 128 (256) masks; the finished map does not change
    model = small_cnn(12)
    x = images(2, 3, 12, 12, seed=9)
    options = {"cell": 3, "p": 0.5, "seed": 3}
    seen: list[cl.Attribution] = []
    done = rise(model, x, [0, 1], masks=300, preview=seen.append, **options)
    assert torch.equal(done.map, rise(model, x, [0, 1], masks=300, **options).map)
    assert [a.extras["preview"] for a in seen] == [128 / 300, 256 / 300]
    assert "preview" not in done.extras
    for first, masks in zip(seen, (128, 256), strict=True):
        torch.testing.assert_close(first.map, rise(model, x, [0, 1], masks=masks, **options).map)
        assert first.extras["preview_of"] == "masks"


def test_rise_batch_size_changes_nothing_and_bounds_every_forward(monkeypatch):
    # masks are drawn in blocks (16 here): 40 masks cross two block edges
    monkeypatch.setattr(rise_module, "MASK_BLOCK", 16)
    model = small_cnn(12)
    x = images(2, 3, 12, 12, seed=10)
    maps = {}
    for size in (1, 7, 64):
        model.module.seen.clear()
        result = rise(model, x, [3, 4], masks=40, cell=3, seed=2, batch_size=size)
        batches = [len(b) for b in model.module.seen]
        assert sum(batches) == 2 + 2 * 40 and max(batches) <= size
        maps[size] = result.map
    torch.testing.assert_close(maps[1], maps[7], atol=1e-6, rtol=0)
    torch.testing.assert_close(maps[1], maps[64], atol=1e-6, rtol=0)


def test_rise_fill_replaces_the_masked_part():
    model = small_cnn(8)
    x = images(1, 3, 8, 8, seed=11)
    rise(model, x, 0, masks=4, cell=2, fill="mean", seed=0, batch_size=64)
    copies = model.module.seen[1]
    mean = x.mean((2, 3), keepdim=True)
    masks = rise_masks(*_first_block(4, 2, 0.5, 0, (8, 8)), (8, 8))[:, None]
    torch.testing.assert_close(copies, x * masks + mean * (1 - masks))


def _first_block(count: int, cell: int, p: float, seed: int, size: tuple[int, int]):
    """The grids and shifts rise() draws first for a seed (grids, then row and column shifts)."""
    g = torch.Generator().manual_seed(seed)
    grids = (torch.rand((count, cell, cell), generator=g) < p).float()
    rows = torch.randint(0, -(-size[0] // cell), (count,), generator=g)
    cols = torch.randint(0, -(-size[1] // cell), (count,), generator=g)
    return grids, torch.stack([rows, cols], 1)


# -- bad options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window": 5}, r"window no larger than the image, got 5 > 4 \(height\)"),
        ({"window": (2, 6)}, r"got 6 > 4 \(width\)"),
        ({"stride": 0}, r"expected stride >= 1, an int or \(height, width\), got 0"),
        ({"window": 2, "stride": 3}, r"stride no larger than the window, got stride 3 > window 2"),
        ({"window": (2, 0)}, r"expected window >= 1.*got \(2, 0\)"),
        ({"window": "big"}, "expected window >= 1"),
        ({"window": (1, 2, 3)}, "expected window >= 1"),
        ({"fill": "purple"}, r"expected fill among 'zero', 'black', 'mean', 'blur'.*got 'purple'"),
        ({"fill": (0, 0, 300)}, r"three values in \[0, 1\].*got \(0, 0, 300\)"),
        ({"fill": torch.zeros(3, 4, 4)}, r"shape \(3, 4, 4\) does not broadcast"),
        ({"fill": None}, "got NoneType"),
        ({"fill": "blur", "blur_sigma": 0}, "expected blur_sigma > 0"),
        ({"score": "prob"}, "expected score 'logit' or 'probability', got 'prob'"),
        ({"batch_size": 0}, r"expected batch_size >= 1 \(copies per forward pass\), got 0"),
        ({"layer": "conv"}, "takes no layer, got layer='conv'"),
    ],
)
def test_bad_occlusion_options(options, message):
    model = tiny_model()
    model.module = Recorder(model.module)
    options = {"window": 2, "stride": 1, **options}
    with pytest.raises(ValueError, match=message):
        occlusion(model, torch.rand(1, 1, 4, 4), 0, **options)
    assert model.module.seen == []  # checked before any forward pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"p": 0}, r"expected a keep probability p in \(0, 1\], got 0"),
        ({"p": 1.5}, r"p in \(0, 1\], got 1.5"),
        ({"p": -0.1}, r"p in \(0, 1\], got -0.1"),
        ({"masks": 0}, "expected masks >= 1"),
        ({"cell": 0}, r"expected cell \(grid cells per side\) an int in \[1, 4\], got 0"),
        ({"cell": 5}, r"in \[1, 4\], got 5"),
        ({"seed": 1, "generator": torch.Generator()}, "expected a seed or a generator, got both"),
        ({"fill": "sepia"}, "got 'sepia'"),
        ({"score": "softmax"}, "got 'softmax'"),
    ],
)
def test_bad_rise_options(options, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        rise(model, torch.rand(1, 1, 4, 4), 0, **{"masks": 4, "cell": 2, **options})


# -- registry, hygiene ----------------------------------------------------------------------


def test_registered_as_perturbation_methods():
    occ, ris = get_method("occlusion"), get_method("rise")
    assert (occ.family, occ.signed, occ.needs_layer) == ("perturbation", True, False)
    assert (ris.family, ris.signed, ris.needs_layer) == ("perturbation", False, False)
    assert "1311.2901" in occ.paper and "1806.07421" in ris.paper
    model = tiny_model()
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    direct = occlusion(model, x, "gamma", window=2, stride=1)
    assert torch.equal(
        cl.explain(model, x, "occlusion", "gamma", window=2, stride=1).map, direct.map
    )
    assert direct.target_labels == ["gamma"]


@pytest.mark.parametrize(
    "method",
    [
        lambda m, x: occlusion(m, x, 0, window=2, stride=1, fill="blur", batch_size=3),
        lambda m, x: rise(m, x, 0, masks=6, cell=2, batch_size=4),
    ],
    ids=["occlusion", "rise"],
)
@pytest.mark.parametrize("make", [tiny_model, Exploding], ids=["working", "raising"])
def test_model_and_input_left_as_they_were(method, make):
    model = make() if make is tiny_model else cl.Model(make(), input_size=(1, 4, 4))
    model.module.train()
    next(model.module.parameters()).requires_grad_(False)
    before = model_state(model.module)
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    kept = x.clone()
    try:
        method(model, x)
    except RuntimeError as err:
        assert "boom halfway" in str(err)
    assert has_hooks(model.module) == []
    assert model_state(model.module) == before
    assert all(p.grad is None for p in model.module.parameters())
    assert torch.equal(x, kept)
