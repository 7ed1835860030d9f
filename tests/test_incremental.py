"""Incremental occlusion (Krypton): the same numbers as plain forward passes on hand-built
graphs with every supported operation, on MobileNetV2 and a ResNet-18, at the borders and with
windows larger than the stride, for each fill; the fallbacks; the approximate modes and their
SSIM on a real picture; drill-down's rule on known grids; the user's model left as it was."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import model_state
from torch import nn

import convlens as cl
from convlens.core import stats
from convlens.core.model import Preprocessing
from convlens.techniques.attribution.incremental import Incremental, NotIncremental
from convlens.techniques.attribution.occlusion import _ssim, drill_down, occluded_patches, occlusion

# -- hand-built graphs ------------------------------------------------------------------------


def _randomised(module: nn.Module, seed: int) -> nn.Module:
    """Seeded weights, and batch norms with statistics and affine terms that are not 0 / 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module.eval()


class Branchy(nn.Module):
    """Every box-form operation on a 32 x 32 input: strided, padded, dilated, grouped, depthwise
    and ``"same"`` (even kernel: uneven padding) convolutions, eval batch norm, in-place and
    functional activations, dropout, a residual add, a gate (product of two changed maps),
    ``torch.add(alpha=)``, concatenation, max and average pooling with padding and ceil_mode
    (with and without counting the padding), ``x.size()`` on a box; a flatten + linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.same = nn.Conv2d(16, 8, 4, padding="same")
        self.relu6 = nn.ReLU6(inplace=True)
        self.gate = nn.Conv2d(8, 8, 1)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)  # 16 -> 9
        self.avgpool = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.avgpad = nn.AvgPool2d(2, stride=1, padding=1)  # counts the padding: 5 -> 6
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8 * 6 * 6, 5)
        _randomised(self, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.size(0)
        x = self.act(self.bn(self.stem(x)))  # (8, 16, 16)
        x = x + F.relu(self.dilated(x))
        x = torch.cat([self.grouped(x), self.depthwise(x)], dim=1)
        x = self.relu6(self.same(x))
        x = x * torch.sigmoid(self.gate(x))
        x = self.maxpool(x)  # (8, 9, 9)
        x = torch.add(x, x.relu(), alpha=0.5) - 0.1
        x = F.hardtanh(self.avgpool(x), -1.5, 1.5)  # (8, 5, 5)
        x = self.avgpad(x)  # (8, 6, 6)
        return self.head(self.drop(x.reshape(batch, -1)))


class Squeezed(nn.Module):
    """A squeeze-and-excitation block halfway (its global pool mixes every position, so the
    rest runs in full), functional max / average pooling, then global pooling + linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.squeeze = nn.Conv2d(8, 2, 1)
        self.excite = nn.Conv2d(2, 8, 1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)
        _randomised(self, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv1(x))
        x = F.max_pool2d(self.conv2(x), 2)
        scale = torch.sigmoid(self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(x, 1)))))
        x = self.conv3(x * scale)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _model(module: nn.Module, size: int = 32) -> cl.Model:
    return cl.Model(
        module, preprocess=Preprocessing(crop=None, resize=None), input_size=(3, size, size)
    )


def _pictures(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_same_map(fast: cl.Attribution, plain: cl.Attribution) -> None:
    """The issue's identity: max |difference| <= 1e-4 of the plain map's peak."""
    peak = float(plain.map.abs().max())
    assert peak > 0
    assert float((fast.map - plain.map).abs().max()) <= 1e-4 * peak
    assert fast.extras["incremental"] == "incremental"
    assert plain.extras["incremental"] == "plain (incremental=False)"


def _both(model: cl.Model, x: torch.Tensor, target, **options) -> tuple:
    fast = occlusion(model, x, target, incremental=True, **options)
    plain = occlusion(model, x, target, incremental=False, **options)
    return fast, plain


# -- the engine against plain forward passes -------------------------------------------------


@pytest.mark.parametrize("tight", [True, False], ids=["cut", "shifted"])
@pytest.mark.parametrize("make", [Branchy, Squeezed])
def test_engine_equals_the_network_on_occluded_copies(make, tight):
    module = make()
    x = _pictures(2)
    engine = Incremental(module, x, tight=tight)
    # windows at each corner, across borders (cut off), larger than any stride, 2 pictures
    corners = torch.tensor([[0, 0], [0, 27], [27, 0], [30, 29], [13, 7], [5, 18], [31, 31]])
    images = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    fills = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    starts, patches = occluded_patches(x, fills, images, corners, (7, 6))
    copies = x[images].clone()
    for b, (top, left) in enumerate(corners.tolist()):
        copies[b, :, top : top + 7, left : left + 6] = fills[
            images[b], :, top : top + 7, left : left + 6
        ]
    for rows in (slice(None), [0, 1, 3, 6]):  # every window; the border windows alone
        with torch.no_grad():
            expected = module(copies[rows])
        got = engine(images[rows], starts[rows], patches[rows])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(engine.clean_output, module(x).detach(), atol=1e-5, rtol=1e-5)
    # the boxes stay boxes up to where a layer mixes every position: the flatten + linear head,
    # or the squeeze-and-excitation's global pool (and its product with the boxed map)
    expected = ["reshape"] if make is Branchy else ["adaptive_avg_pool2d", "mul"]
    assert engine.full_from == expected


def test_boxes_cut_at_the_border_cost_fewer_operations_and_give_the_same_output():
    """On the CPU a batch's boxes are cut where the map ends (``tight``): windows in a corner
    then run fewer operations than the same boxes shifted inside the map, with the same
    output; a central window's boxes are the same either way."""
    from torch.utils.flop_counter import FlopCounterMode

    module, x = Branchy(), _pictures(1)
    cut, shifted = Incremental(module, x), Incremental(module, x, tight=False)
    assert cut.tight and not shifted.tight  # the CPU's default
    fills = torch.zeros(1, 3, 32, 32)
    for corners, fewer in (([[0, 0], [1, 0], [0, 1]], True), ([[12, 12], [13, 12]], False)):
        images = torch.zeros(len(corners), dtype=torch.long)
        box = occluded_patches(x, fills, images, torch.tensor(corners), (7, 6))
        counted = []
        for engine in (cut, shifted):
            with FlopCounterMode(display=False) as flops:
                counted.append((engine(images, *box), flops.get_total_flops()))
        torch.testing.assert_close(counted[0][0], counted[1][0], atol=1e-5, rtol=1e-5)
        assert (counted[0][1] < counted[1][1]) if fewer else (counted[0][1] == counted[1][1])


@pytest.mark.parametrize("fill", ["zero", "mean", "blur", (0.9, 0.2, 0.1)])
def test_branchy_graph_equals_plain_occlusion_for_each_fill(fill):
    model = _model(Branchy())
    # window 7 x 6 moved by 4 x 3: larger than the stride, the last row of windows cut off
    fast, plain = _both(model, _pictures(2), [1, 3], window=(7, 6), stride=(4, 3), fill=fill)
    assert fast.extras["windows"] == (8, 10)
    assert_same_map(fast, plain)
    torch.testing.assert_close(
        fast.extras["window_drops"], plain.extras["window_drops"], atol=1e-4, rtol=0
    )


def test_squeeze_excitation_graph_equals_plain_occlusion():
    fast, plain = _both(
        _model(Squeezed()), _pictures(1), 2, window=9, stride=5, fill="blur", blur_sigma=2.0
    )
    assert_same_map(fast, plain)


def test_probability_scores_and_batch_sizes_change_nothing():
    model = _model(Branchy())
    x = _pictures(2, seed=4)
    plain = occlusion(model, x, [0, 4], window=5, stride=4, score="probability", incremental=False)
    calls: list[tuple[int, int]] = []
    for size in (1, 7, None):
        fast = occlusion(
            model, x, [0, 4], window=5, stride=4, score="probability", batch_size=size,
            incremental=True, progress=lambda done, total: calls.append((done, total)),
        )  # fmt: skip
        assert_same_map(fast, plain)
        if size is not None:
            assert fast.settings["batch_size"] == size
    assert calls[-1] == (128, 128) and calls[0] == (1, 128)


def test_the_default_batch_comes_from_the_engines_memory_budget():
    model = _model(Branchy())
    engine = Incremental(model.module.eval(), _pictures(1))
    per_window = engine.bytes_per_window((5, 5))
    assert 0 < per_window < 2 * 4 * (3 + 8 + 8 + 16 + 8 + 8) * 32 * 32  # less than full copies
    assert engine.batch_size((5, 5), per_window * 10 / 2**20) == 10
    result = occlusion(model, _pictures(1), 0, window=5, stride=4, memory_budget_mb=1e-6)
    assert result.settings["batch_size"] == 1


# -- real networks ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet() -> cl.Model:
    return cl.load("mobilenet_v2")


def test_mobilenet_v2_equals_plain_occlusion(mobilenet):
    model = cl.Model(mobilenet.module, input_size=(3, 64, 64))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 4 - 2
    # windows 16 every 12: overlapping, the last ones cut off at the border (48 + 16 = 64 fits,
    # 60 + 16 does not for stride 15)
    for stride, fill in ((12, "zero"), (15, "mean")):
        fast, plain = _both(model, x, 281, window=16, stride=stride, fill=fill)
        assert_same_map(fast, plain)


def test_resnet18_equals_plain_occlusion():
    torch.manual_seed(0)
    model = cl.Model(torchvision.models.resnet18().eval(), input_size=(3, 64, 64))
    x = _pictures(1, 64, seed=6)
    fast, plain = _both(model, x, 7, window=20, stride=11, fill=(0.5, 0.5, 0.5))
    assert_same_map(fast, plain)


# -- fallbacks ---------------------------------------------------------------------------------


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 100:  # data-dependent control flow: torch.fx cannot follow it
            x = -x
        return self.head(self.conv(x).mean((2, 3)))


class Overwriting(nn.Module):
    """An in-place ReLU whose input is read again afterwards (eager semantics matter)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = y.relu_()
        return self.head((y + z).mean((2, 3)))


class Mixing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3 * 32 * 32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (Untraceable, "torch.fx cannot trace Untraceable: TraceError"),
        (Overwriting, "relu_ overwrites conv, which add reads later"),
        (Mixing, "the input goes straight into flatten, which mixes positions"),
    ],
)
def test_what_cannot_run_incrementally_falls_back_with_a_notice(make, why):
    model = _model(make())
    x = _pictures(1)
    plain = occlusion(model, x, 1, window=8, stride=8, incremental=False)
    with pytest.warns(UserWarning, match="occlusion ran plain forward passes") as caught:
        forced = occlusion(model, x, 1, window=8, stride=8, incremental=True)
    assert len(caught) == 1 and why in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = occlusion(model, x, 1, window=8, stride=8)  # "auto": a notice, no warning
    for result in (forced, auto):
        assert (
            result.extras["incremental"].startswith("plain: ")
            and why in result.extras["incremental"]
        )
        assert torch.equal(result.map, plain.map)
    with pytest.raises(NotIncremental, match=why.split(":")[0]):
        Incremental(make().eval(), x)


def test_the_users_model_is_left_as_it_was():
    module = Branchy().train()
    module.stem.weight.requires_grad_(False)
    model = _model(module)
    model.layers()  # the layer table's dry run (in the module's mode) is not occlusion's doing
    before = model_state(module)
    occlusion(model, _pictures(1), 0, window=8, stride=8, incremental=True)
    assert model_state(module) == before  # weights, training flags, requires_grad, inplace


# -- approximate modes ------------------------------------------------------------------------


def test_drill_down_interpolates_the_coarse_grid_and_refines_the_largest():
    # a grid that is linear in row and column: interpolation is exact, so every estimate holds
    n, nh, nw = 2, 9, 7
    truth = torch.arange(nh, dtype=torch.float64)[:, None] * 3 - torch.arange(nw)[None, :] * 2
    truth = torch.stack([truth, -truth])
    asked: list[torch.Tensor] = []

    def evaluate(jobs: torch.Tensor) -> torch.Tensor:
        asked.append(jobs)
        return truth.flatten()[jobs]

    values, done = drill_down(evaluate, (n, nh, nw), factor=4, fraction=0.0)
    torch.testing.assert_close(values, truth)
    coarse = torch.zeros(nh, nw, dtype=torch.bool)
    coarse[torch.tensor([0, 4, 8])[:, None], torch.tensor([0, 4, 6])] = True  # + last row, column
    assert torch.equal(done, coarse.expand(n, nh, nw)) and len(asked) == 1
    # a bump the coarse grid misses is found where the estimate is largest: fraction 1 is exact
    bumpy = truth.clone()
    bumpy[:, 2, 2] += 100
    values, done = drill_down(lambda jobs: bumpy.flatten()[jobs], (n, nh, nw), 4, 1.0)
    assert done.all() and torch.equal(values, bumpy)
    # a peak at a coarse window: the windows of the coarse cells around it (where those cells
    # vary) are refined first; 0.3 of the 43 remaining windows: those 12, and one more
    peaked = torch.zeros(1, nh, nw, dtype=torch.float64)
    peaked[0, 4, 4] = 100.0
    values, done = drill_down(lambda jobs: peaked.flatten()[jobs], (1, nh, nw), 2, 0.3)
    assert int(done.sum()) == 20 + 13
    assert done[0, 2:6, 2:6].all() and not done[0, 7, 1]
    assert torch.equal(values[0, 2:6, 2:6], peaked[0, 2:6, 2:6])


def test_a_preview_comes_first_and_leaves_the_map_as_it_is():
    # the explorer shows the coarse pass while the rest computes (issue 16): every second row
    # and column of windows first, exact there; the finished map is the one without a preview
    model, x = _model(_randomised(Branchy(), 3)), _pictures(2, seed=4)
    seen: list[cl.Attribution] = []
    done: list[tuple[int, int]] = []
    plain = occlusion(model, x, 1, window=6, stride=3)  # 10 x 10 windows per picture
    shown = occlusion(
        model, x, 1, window=6, stride=3, preview=seen.append,
        progress=lambda d, t: done.append((d, t)),
    )  # fmt: skip
    torch.testing.assert_close(
        shown.map, plain.map, rtol=0, atol=1e-5 * float(plain.map.abs().max())
    )
    assert "preview" not in shown.extras and "evaluated" not in shown.extras
    coarsest, first = seen
    assert coarsest.extras["preview"] == 16 / 100  # rows and columns 0, 4, 8 and the last
    assert first.extras["preview"] == 36 / 100  # 0, 2, 4, 6, 8 and the last: no window twice
    assert max(done) == (2 * 100, 2 * 100)  # windows computed, counted: none twice
    torch.testing.assert_close(
        coarsest.extras["window_drops"][:, ::4, ::4], first.extras["window_drops"][:, ::4, ::4]
    )
    coarse = first.extras["window_drops"][:, ::2, ::2]
    torch.testing.assert_close(coarse, shown.extras["window_drops"][:, ::2, ::2], rtol=0, atol=1e-5)
    # between them, the mean of the two computed neighbours
    middle = first.extras["window_drops"][:, 1, ::2]
    torch.testing.assert_close(middle, (coarse[:, 0] + coarse[:, 1]) / 2)
    assert first.map.shape == shown.map.shape and not torch.equal(first.map, shown.map)
    # a grid under 3 x 3 windows gets no preview; an approximate drill-down previews its own
    # coarse pass
    occlusion(model, x[:1], 1, window=16, stride=16, preview=seen.append)  # 2 x 2
    assert len(seen) == 2
    drilled = occlusion(
        model, x[:1], 1, window=6, stride=3, approximate="drilldown", preview=seen.append
    )
    assert seen[-1].extras["preview"] == 0.36 and drilled.extras["evaluated"] > 0.36


def test_approximate_modes_report_ssim_to_the_exact_map_on_a_real_picture(mobilenet):
    small = cl.Model(
        mobilenet.module, preprocess=Preprocessing(crop=112, resize=128), labels=mobilenet.labels
    )
    picture = cl.sample("chelsea")
    exact = occlusion(small, picture, window=16, stride=8)  # 13 x 13 windows
    assert exact.extras["incremental"] == "incremental" and "ssim" not in exact.extras
    # drill-down refining 80 % of the windows the coarse grid left: SSIM >= 0.9 to the exact map
    drilled = occlusion(
        small, picture, window=16, stride=8, approximate="drilldown", drill_fraction=0.8,
        exact_ssim=True,
    )  # fmt: skip
    (ssim,) = drilled.extras["ssim"]
    assert 0.9 <= ssim < 1.0 and not torch.equal(drilled.map, exact.map)
    assert drilled.settings["approximate"] == "drilldown"
    assert drilled.extras["evaluated"] == (49 + math.ceil(0.8 * 120)) / 169  # 7 x 7 coarse first
    # the reported SSIM is the SSIM of the two maps (signed, the exact map's range)
    span = float(exact.map.max() - exact.map.min())
    expected = stats.ssim(drilled.map.double(), exact.map.double(), data_range=span)
    assert ssim == pytest.approx(float(expected[0]), abs=1e-9)
    # the projective-field cap: MobileNetV2's fields cover its last 7 x 7 and 4 x 4 maps; a cap
    # of 0.8 (the 6 of 7 positions around each window) keeps the map (SSIM 0.97), 0.5 (4 of 7,
    # 2 of 4) does not (SSIM 0.08); from 0.86 every box is whole and the map exact
    capped = occlusion(small, picture, window=16, stride=8, approximate="cap", cap=0.8)
    assert 0.95 < _ssim(capped.map[0].double(), exact.map[0].double()) < 1.0
    halved = occlusion(small, picture, window=16, stride=8, approximate="cap", cap=0.5)
    assert _ssim(halved.map[0].double(), exact.map[0].double()) < 0.3
    whole = occlusion(small, picture, window=16, stride=8, approximate="cap", cap=0.86)
    assert float((whole.map - exact.map).abs().max()) <= 1e-4 * float(exact.map.abs().max())
    assert whole.extras["ssim"] is None and capped.extras["ssim"] is None  # only when asked


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"incremental": "yes"}, "expected incremental True, False or 'auto', got 'yes'"),
        ({"approximate": "fast"}, "expected approximate None, 'drilldown' or 'cap', got 'fast'"),
        ({"cap": 0.5}, "cap is a setting of approximate='cap', got None"),
        (
            {"approximate": "cap", "drill_factor": 2},
            "drill_factor is a setting of approximate='drilldown'",
        ),
        ({"approximate": "cap", "cap": 0}, r"expected cap in \(0, 1\]"),
        ({"approximate": "cap", "cap": "big"}, "expected cap in .*, got 'big'"),
        ({"approximate": "cap", "incremental": False}, "caps incremental inference"),
        ({"approximate": "drilldown", "drill_factor": 1}, "expected drill_factor >= 2"),
        ({"approximate": "drilldown", "drill_fraction": 2}, r"expected drill_fraction in \[0, 1\]"),
    ],
)
def test_bad_fast_options(options, message):
    with pytest.raises(ValueError, match=message):
        occlusion(_model(Branchy()), _pictures(1), 0, window=8, stride=8, **options)


def test_a_cap_that_cannot_apply_says_so():
    model = _model(Untraceable())
    with pytest.warns(UserWarning, match="the cap is not applied"):
        result = occlusion(model, _pictures(1), 0, window=8, stride=8, approximate="cap")
    assert result.extras["incremental"].startswith("plain: torch.fx cannot trace")


def test_a_capped_box_keeps_the_part_around_its_window():
    # 16 x 16 -> 4 x 4 (stride 4), then a 3 x 3 convolution; an 8 x 8 window at the bottom
    # right changes rows and columns 2-3 of the first map, so the second map's box would be
    # 5 x 5 before the border cuts it to the whole 4 x 4; a cap of 0.75 keeps 3 of 4 rows and
    # columns: those around the window's centre (1-3), not the middle of the cut box (0-2)
    net = _randomised(
        nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, 1, 1)),
        seed=5,
    )
    picture = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    zero, corner = torch.zeros(1, dtype=torch.long), torch.tensor([[8, 8]])
    starts, patches = occluded_patches(picture, torch.zeros_like(picture), zero, corner, (8, 8))
    capped = Incremental(net, picture, cap=0.75)(zero, starts, patches)
    occluded = picture.clone()
    occluded[..., 8:, 8:] = 0
    with torch.inference_mode():
        exact, clean = net(occluded), net(picture)
    changed = (capped - clean).abs().amax(1)[0] > 0
    assert changed[1:, 1:].all() and not changed[0].any() and not changed[:, 0].any()
    # the exact change lies in the kept part, so here the capped output is the exact one
    torch.testing.assert_close(capped, exact, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(exact[..., 3, 3], clean[..., 3, 3])


# -- CUDA ---------------------------------------------------------------------------------------


@pytest.fixture
def fp32_convolutions():
    """cuDNN's TF32 convolutions (PyTorch's default) round every product to 10 bits, so that
    plain occlusion itself moves by about 1e-2 of its peak: compare in float32."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_windows_run_on_the_device(fp32_convolutions):
    module = Branchy().cuda()
    model = cl.Model(
        module, preprocess=Preprocessing(crop=None, resize=None), input_size=(3, 32, 32)
    )
    x = _pictures(2).cuda()
    fast, plain = _both(model, x, [1, 2], window=7, stride=3, fill="blur")
    assert_same_map(fast, plain)
    assert fast.map.device.type == "cpu" and x.is_cuda
    engine = Incremental(module, x)
    assert engine.batch_size((7, 7), None) == 256  # sized from the device's free memory


def test_tracing_leaves_networks_in_other_threads_alone():
    # torch.fx patches nn.Module.__call__ for the whole process while it traces; a network run
    # meanwhile in another thread (the explorer's other lane, a job) must run as usual
    import threading
    import time

    class Slow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(0.5)  # runs while fx traces: the other thread keeps working
            return self.conv(x).relu()

    other = _randomised(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)), 7)
    picture = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        expected = other(picture)
    failures: list[BaseException] = []
    runs = 0
    started, stop = threading.Event(), threading.Event()

    def run_other() -> None:
        nonlocal runs
        started.set()
        while not stop.is_set():
            try:
                with torch.inference_mode():
                    torch.testing.assert_close(other(picture), expected)
                runs += 1
            except BaseException as error:  # reported below
                failures.append(error)
                return

    thread = threading.Thread(target=run_other)
    thread.start()
    started.wait()
    try:
        engine = Incremental(_randomised(Slow(), 9), picture)
    finally:
        stop.set()
        thread.join()
    assert failures == [] and runs > 0
    assert engine.clean_output.shape == (1, 4, 12, 12)
