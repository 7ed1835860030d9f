"""Class activation maps: hand-computed maps on tiny models, Grad-CAM == CAM on a GAP + linear
head, a slow Score-CAM reference loop, hook hygiene, and parity with pytorch-grad-cam and Captum
on the real MobileNetV2 and real photos."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Exploding, InplaceNet, model_state, tiny_model
from torch import nn

import convlens as cl
from convlens.core.hooks import has_hooks
from convlens.core.model import Preprocessing
from convlens.techniques.attribution import cam
from convlens.techniques.attribution.base import get_method, methods

CAMS = sorted(name for name, info in methods().items() if info.family == "cam")
GREY = Preprocessing(crop=None, resize=None, mean=(0.0,), std=(1.0,), channels=1)


def _has_guided_backprop() -> bool:
    try:
        from convlens.techniques.attribution.gradients import guided_backprop  # noqa: F401
    except ImportError:
        return False
    return True


needs_guided = pytest.mark.skipif(
    not _has_guided_backprop(), reason="convlens.gradients.guided_backprop is not there yet"
)


# -- tiny hand-weighted models -----------------------------------------------------------------


class SquareHead(nn.Module):
    """``feat`` passes the (N, 2, 2, 2) input on; logit k = sum_c W[k, c] * sum_ij A[c, ij]^2 / 2,
    so d logit_k / d A[c, ij] = W[k, c] * A[c, ij]: gradients that vary over the pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.5], [-1.0, -1.0]]))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        a = self.feat(x)
        return self.fc(0.5 * (a * a).sum(dim=(2, 3)))


A0 = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
A1 = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
SQUARE_INPUT = torch.stack([A0, A1])[None]  # (1, 2, 2, 2); the activations at "feat"


def square_model() -> cl.Model:
    return cl.Model(SquareHead(), input_size=(2, 2, 2), labels=["left", "both", "none"])


class SumHead(nn.Module):
    """``feat`` = 1x1 conv with weights (1, -1): A = (x, -x); logit c = sum_ij A[c, ij]."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.feat.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.feat(x).sum(dim=(2, 3))


class Passthrough(nn.Module):
    """``feat`` passes the input on; the logits are the channel means."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat(x).mean(dim=(2, 3)) * self.scale


class GapNet(nn.Module):
    """Two convolutions, global average pooling and a linear layer: the network of CAM."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1)
        )
        self.act = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gap(self.act(self.features(x))).flatten(1))


def _close(actual: torch.Tensor, expected: torch.Tensor | list, tol: float = 1e-5) -> None:
    torch.testing.assert_close(
        actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=tol, atol=tol
    )


# -- hand-computed maps ------------------------------------------------------------------------


def test_gradcam_by_hand():
    model = square_model()
    # class "left", W = (1, -1): dA = (A0, -A1), weights = means (6/4, -4/4)
    left = cam.gradcam(model, SQUARE_INPUT, "left")
    _close(left.map[0], [[0.0, 3.0], [0.0, 3.5]])  # relu(1.5 A0 - A1)
    raw = cam.gradcam(model, SQUARE_INPUT, "left", relu=False)
    _close(raw.map[0], [[-0.5, 3.0], [-1.0, 3.5]])
    assert left.layer == "feat" and left.settings == {
        "layer": "feat",
        "relu": True,
        "signed": False,
    }
    assert raw.settings["signed"] is True
    # class "both", W = (0.5, 0.5): weights (0.75, 0.5)
    both = cam.gradcam(model, SQUARE_INPUT, "both")
    _close(both.map[0], [[1.75, 1.5], [0.5, 2.75]])
    # the raw logit, not a probability, is what is explained and reported
    _close(both.scores, [0.25 * (1 + 4 + 9) + 0.25 * (4 + 1 + 1)])


def test_gradcam_plusplus_by_hand():
    model = square_model()
    # alpha = g^2 / (2 g^2 + S g^3) = 1 / (2 + S g) where g != 0; w = sum relu(g) * alpha
    left = cam.gradcam_plusplus(model, SQUARE_INPUT, "left")  # ch 0: g = A0, S = 6; ch 1: g <= 0
    w0 = 1 / 8 + 2 / 14 + 3 / 20
    _close(left.map[0], w0 * A0)
    both = cam.gradcam_plusplus(model, SQUARE_INPUT, "both")  # g = A / 2; S = 6 and 4
    w0 = 0.5 / 5 + 1.0 / 8 + 1.5 / 11
    w1 = 1.0 / 6 + 0.5 / 4 + 0.5 / 4
    _close(both.map[0], w0 * A0 + w1 * A1)


def test_xgradcam_by_hand():
    model = square_model()
    # w_c = sum_ij A_c g_c / sum_ij A_c; "left": g = (A0, -A1), sums 6 and 4
    left = cam.xgradcam(model, SQUARE_INPUT, "left")
    _close(left.map[0], (A0 * (14 / 6) - A1 * (6 / 4)).clamp(min=0))
    # "both": g = (A0, A1) / 2
    both = cam.xgradcam(model, SQUARE_INPUT, "both")
    _close(both.map[0], A0 * (7 / 6) + A1 * (3 / 4))
    assert left.layer == "feat" and left.method == "xgradcam"


def test_layercam_by_hand():
    model = square_model()
    _close(cam.layercam(model, SQUARE_INPUT, "left").map[0], A0 * A0)  # relu(A0) A0 + relu(-A1) A1
    _close(cam.layercam(model, SQUARE_INPUT, "both").map[0], 0.5 * (A0 * A0 + A1 * A1))


def test_eigencam_by_hand():
    model = cl.Model(Passthrough(), input_size=(2, 2, 2))
    # centred: ch 0 = [[2, -2], [0, 0]], ch 1 = [[0, 0], [1, -1]]; covariance diag(8, 2),
    # first component (1, 0); the summed activations [[5, 1], [4, 2]] fix the sign: +
    x = torch.tensor([[[4.0, 0.0], [2.0, 2.0]], [[1.0, 1.0], [2.0, 0.0]]])[None]
    raw = cam.eigencam(model, x, relu=False)
    _close(raw.map[0], [[2.0, -2.0], [0.0, 0.0]])
    _close(cam.eigencam(model, x).map[0], [[2.0, 0.0], [0.0, 0.0]])
    assert raw.targets == [0]  # class-agnostic: the target only labels the map
    by_numpy = cam.eigencam(model, x, relu=False, sign="numpy").map[0]
    assert torch.allclose(by_numpy, raw.map[0]) or torch.allclose(by_numpy, -raw.map[0])


def test_eigencam_sign_follows_the_activations():
    model = cl.Model(Passthrough(), input_size=(8, 5, 5))
    x = torch.rand(3, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    raw = cam.eigencam(model, x, relu=False).map
    lapack = cam.eigencam(model, x, relu=False, sign="numpy").map
    for ours, theirs, activations in zip(raw, lapack, x, strict=True):
        assert float((ours * activations.sum(0)).sum()) > 0
        sign = 1.0 if float((ours * theirs).sum()) > 0 else -1.0
        _close(ours, sign * theirs, 1e-4)


def test_scorecam_by_hand():
    model = cl.Model(SumHead(), preprocess=GREY, input_size=(1, 2, 2))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]
    # masks (x - 1) / 3 and (4 - x) / 3; class 0 scores sum(x * mask) = 20/3 and 10/3;
    # weights softmax(20/3, 10/3); map relu(w0 x - w1 x) = tanh(5/3) x
    for align_corners in (False, True):
        result = cam.scorecam(model, x, 0, align_corners=align_corners)
        _close(result.map[0], math.tanh(5 / 3) * x[0, 0])
    # class 1 (scores -20/3, -10/3) is all negative evidence
    assert torch.equal(cam.scorecam(model, x, 1).map, torch.zeros(1, 2, 2))
    _close(cam.scorecam(model, x, 1, relu=False).map[0], -math.tanh(5 / 3) * x[0, 0])


def _scorecam_reference(
    model: cl.Model, x: torch.Tensor, layer: str, target: int, channels: int | None = None
):
    """The slow obvious loop: one image, one channel, one forward at a time; with
    ``channels=k``, only each image's k channels of highest mean activation, the others
    weighted 0."""
    module = model.module
    kept: list[torch.Tensor] = []
    handle = module.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: kept.append(out.detach().clone())
    )
    with torch.no_grad():
        module(x)
    handle.remove()
    activations = kept[0]
    maps = []
    for n in range(x.shape[0]):
        means = [float(activations[n, c].mean()) for c in range(activations.shape[1])]
        order = sorted(range(len(means)), key=lambda c: -means[c])
        kept = sorted(order[:channels]) if channels is not None else list(range(len(means)))
        scores = []
        for c in kept:
            m = F.interpolate(activations[n, c][None, None], size=x.shape[-2:], mode="bilinear")[
                0, 0
            ]
            m = (m - m.min()) / (m.max() - m.min() + 1e-8)
            with torch.no_grad():
                scores.append(module(x[n : n + 1] * m)[0, target])
        weights = torch.softmax(torch.stack(scores), 0)
        maps.append(torch.relu((weights[:, None, None] * activations[n, kept]).sum(0)))
    return torch.stack(maps)


def test_scorecam_equals_a_slow_loop_and_batches_the_masked_copies():
    model = tiny_model()
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    expected = _scorecam_reference(model, x, "pool", 2)
    seen: list[int] = []
    handle = model.module.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].shape[0]))
    reported: list[tuple[int, int]] = []
    try:
        result = cam.scorecam(
            model,
            x,
            2,
            layer="pool",
            batch_size=3,
            progress=lambda done, total: reported.append((done, total)),
        )
    finally:
        handle.remove()
    _close(result.map, expected)
    # one capture pass of the 2 images, then 2 images x 2 channels in chunks of at most 3
    assert seen == [2, 3, 1]
    assert reported == [(3, 4), (4, 4)]
    assert result.settings["batch_size"] == 3
    _close(cam.scorecam(model, x, 2, layer="pool", batch_size=64).map, expected)


def _gapnet_model() -> cl.Model:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = GapNet()
    return cl.Model(net, input_size=(3, 8, 8))


def test_scorecam_with_every_channel_is_the_exact_method():
    """``channels`` >= the layer's 6 channels takes the exact path: the same map, bit for bit."""
    model = _gapnet_model()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    exact = cam.scorecam(model, x, 4, layer="act")
    _close(exact.map, _scorecam_reference(model, x, "act", 4))
    for channels in (6, 7, 1000):
        assert torch.equal(cam.scorecam(model, x, 4, layer="act", channels=channels).map, exact.map)
    assert exact.settings["channels"] is None


def test_scorecam_with_fewer_channels_matches_a_slow_loop():
    """k < C: per image the k channels of highest mean activation, softmax over their scores,
    the others weighted 0 (a slow reference loop); k = 1 is that one channel's activation."""
    model = _gapnet_model()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    reported: list[tuple[int, int]] = []
    for channels in (1, 2, 4):
        reported.clear()
        result = cam.scorecam(
            model,
            x,
            4,
            layer="act",
            channels=channels,
            batch_size=3,
            progress=lambda done, total: reported.append((done, total)),
        )
        _close(result.map, _scorecam_reference(model, x, "act", 4, channels=channels))
        assert reported[-1] == (2 * channels, 2 * channels)  # 2 images x k masked passes
        assert result.settings["channels"] == channels
    activations = cl.activations(model, x, "act")["act"]
    strongest = activations.mean(dim=(2, 3)).argmax(dim=1)
    one = cam.scorecam(model, x, 4, layer="act", channels=1).map
    for n in range(2):  # softmax of one score is 1: the map is that channel, ReLU'd
        _close(one[n], activations[n, strongest[n]].clamp(min=0))
    # the approximation differs from the exact map (else the test shows nothing)
    assert not torch.allclose(
        cam.scorecam(model, x, 4, layer="act", channels=2).map,
        cam.scorecam(model, x, 4, layer="act").map,
    )


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_scorecam_refuses_a_bad_channel_count(tiny, image4, bad):
    with pytest.raises(ValueError, match="channels"):
        cam.scorecam(tiny, image4, channels=bad)


def test_scorecam_channels_is_a_registered_setting():
    setting = next(s for s in get_method("scorecam").settings if s.name == "channels")
    assert (setting.type, setting.default, setting.min, setting.optional) == ("int", None, 1, True)
    assert "approximation" in setting.help
    assert setting.parse("16") == 16 and setting.parse("none") is None
    with pytest.raises(ValueError):
        setting.parse("0")


def test_gradcam_is_cam_on_a_gap_linear_head():
    """Zhou et al. 2016: CAM_k = sum_c W[k, c] A_c; Grad-CAM's weights are W[k, c] / (h w)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = GapNet()
    model = cl.Model(net, input_size=(3, 8, 8))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    targets = [1, 4]
    with torch.no_grad():
        activations = net.act(net.features(x))  # (2, 6, 4, 4)
        classic = torch.einsum("kc,nchw->nkhw", net.fc.weight, activations)
        classic = classic[torch.arange(2), torch.tensor(targets)]
    raw = cam.gradcam(model, x, targets, layer="act", relu=False)
    torch.testing.assert_close(raw.map * 16, classic, rtol=1e-6, atol=1e-6)
    kept = cam.gradcam(model, x, targets, layer="act")
    torch.testing.assert_close(kept.map * 16, classic.clamp(min=0), rtol=1e-6, atol=1e-6)


# -- negative evidence, targets, layers --------------------------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_all_negative_evidence_gives_zeros_not_nan(method):
    model = square_model()
    result = get_method(method).fn(model, SQUARE_INPUT, "none")  # W = (-1, -1)
    assert torch.equal(result.map, torch.zeros(1, 2, 2))
    for normalized in (result.normalized(), result.normalized(mode="shared")):
        assert not np.isnan(normalized).any() and (normalized == 0).all()
    combined = get_method(method).fn(model, SQUARE_INPUT, "none", layer=["feat", "feat"])
    assert torch.equal(combined.map, torch.zeros(1, 2, 2))
    raw = get_method(method).fn(model, SQUARE_INPUT, "none", relu=False)
    assert not np.isnan(raw.normalized()).any() and not torch.isnan(raw.upsampled().map).any()


def test_callable_target_and_top1_in_one_pass():
    model = square_model()
    # score = logit 0 - logit 1: dA = (1 - 0.5) A0 and (-1 - 0.5) A1, weights (0.75, -1.5)
    result = cam.gradcam(model, SQUARE_INPUT, lambda out: out[:, 0] - out[:, 1], relu=False)
    _close(result.map[0], 0.75 * A0 - 1.5 * A1)
    assert result.targets is None
    model.module.calls = 0
    top = cam.gradcam(model, SQUARE_INPUT)  # top-1 read from the same forward pass
    assert model.module.calls == 1
    assert top.targets == [1] and top.target_labels == ["both"]


def test_default_layer_is_reported(tiny, image4):
    result = cam.gradcam(tiny, image4)
    assert result.layer == "pool" and result.settings["layer"] == "pool"
    assert tuple(result.map.shape) == (1, 2, 2)  # a layer map, not upsampled


def test_unknown_and_unusable_layers(tiny, image4):
    with pytest.raises(cl.UnknownNameError, match="did you mean 'pool'"):
        cam.gradcam(tiny, image4, layer="pol")
    with pytest.raises(ValueError, match="whole layer"):
        cam.gradcam(tiny, image4, layer="pool:1")
    with pytest.raises(ValueError, match=r"spatial \(N, C, h, w\) output; 'fc' returned \(1, 3\)"):
        cam.gradcam(tiny, image4, layer="fc")
    with pytest.raises(ValueError, match="expected a layer name"):
        cam.gradcam(tiny, image4, layer=[3])
    with pytest.raises(ValueError, match="relu=True or False"):
        cam.gradcam(tiny, image4, relu="yes")
    with pytest.raises(ValueError, match="batch_size"):
        cam.scorecam(tiny, image4, batch_size=0)
    with pytest.raises(ValueError, match="sign 'activation' or 'numpy'"):
        cam.eigencam(tiny, image4, sign="lapack")


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.unused = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.relu(self.conv(x))).mean(dim=(2, 3)))


def test_layers_that_run_twice_or_never():
    model = cl.Model(Twice(), preprocess=GREY, input_size=(1, 4, 4))
    x = torch.ones(1, 1, 4, 4)
    with pytest.raises(ValueError, match="'relu' ran 2 times"):
        cam.gradcam(model, x, layer="relu")
    with pytest.raises(ValueError, match="'unused' did not run"):
        cam.gradcam(model, x, layer="unused")
    assert not has_hooks(model.module)


def test_several_layers_are_peak_scaled_and_averaged_at_the_finest_map(tiny):
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    conv = cam.gradcam(tiny, x, 2, layer="conv").map  # (2, 4, 4)
    pool = cam.gradcam(tiny, x, 2, layer="pool").map  # (2, 2, 2)

    def peak(m):
        top = m.amax(dim=(1, 2), keepdim=True)
        return m / torch.where(top > 0, top, torch.ones_like(top))

    up = F.interpolate(peak(pool)[:, None], size=(4, 4), mode="bilinear", align_corners=False)
    expected = (peak(conv) + up[:, 0]) / 2
    for spec in (["conv", "pool"], "conv, pool"):
        combined = cam.gradcam(tiny, x, 2, layer=spec)
        _close(combined.map, expected)
        assert combined.layer == "conv+pool" and combined.settings["layer"] == ["conv", "pool"]
        _close(combined.extras["layer_maps"][0], conv)
        _close(combined.extras["layer_maps"][1], pool)
    assert cam.gradcam(tiny, x, 2, layer=["pool", "pool"]).layer == "pool"  # duplicates merge


def test_captured_output_is_not_overwritten_by_inplace_layers():
    """InplaceNet's ReLU(inplace=True) overwrites the BatchNorm output; the CAM must see the
    BatchNorm output itself, negative values included."""
    net = InplaceNet()
    model = cl.Model(net, preprocess=GREY, input_size=(1, 3, 3))
    x = torch.linspace(-1, 1, 9).view(1, 1, 3, 3)
    before = model_state(net)
    result = cam.gradcam(model, x, 1, layer="bn", relu=False)
    with torch.no_grad():
        bn = net.bn(net.conv(x))[0, 0]
    # d logit_1 / d bn = W[1, 0] / 9 where bn > 0 (the ReLU), else 0
    weight = float(net.head[2].weight[1, 0].detach()) / 9 * float((bn > 0).float().mean())
    _close(result.map[0], weight * bn)
    assert (bn < 0).any() and model_state(net) == before


def test_frozen_parameters_and_no_grad_callers(tiny, image4):
    expected = cam.gradcam(tiny, image4, 2, relu=False).map
    for p in tiny.module.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        _close(cam.gradcam(tiny, image4, 2, relu=False).map, expected)
    with torch.inference_mode():
        made_here = image4.clone()  # an inference tensor
        _close(cam.gradcam(tiny, made_here, 2, relu=False).map, expected)
    assert not any(p.requires_grad for p in tiny.module.parameters())


# -- hook hygiene ------------------------------------------------------------------------------


def test_every_cam_method_is_registered():
    assert set(CAMS) == {
        "eigencam",
        "gradcam",
        "gradcam++",
        "guided_gradcam",
        "layercam",
        "scorecam",
        "xgradcam",
    }
    for name in CAMS:
        assert methods()[name].needs_layer


@pytest.mark.parametrize("method", CAMS)
def test_no_hooks_left_and_model_unchanged(method, image4):
    if method == "guided_gradcam" and not _has_guided_backprop():
        pytest.skip("convlens.gradients.guided_backprop is not there yet")
    fn = get_method(method).fn
    model = tiny_model()
    model.module.train()
    model.module.fc.weight.requires_grad_(False)
    before = model_state(model.module)
    result = fn(model, image4, 2)
    assert not torch.isnan(result.map).any() and not result.map.is_inference()
    assert not has_hooks(model.module)
    assert model_state(model.module) == before
    assert all(p.grad is None for p in model.module.parameters())

    exploding = cl.Model(Exploding(), preprocess=GREY, input_size=(1, 4, 4))
    exploding.module.train()
    before = model_state(exploding.module)
    with pytest.raises(RuntimeError, match="boom halfway"):
        fn(exploding, image4, 0, layer="first")
    assert not has_hooks(exploding.module)
    assert model_state(exploding.module) == before


@needs_guided
def test_guided_gradcam_is_guided_backprop_times_the_upsampled_gradcam(tiny):
    from convlens.techniques.attribution.gradients import guided_backprop

    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    result = cam.guided_gradcam(tiny, x, 2)
    grad_cam = cam.gradcam(tiny, x, 2).upsampled().map  # (2, 4, 4), bilinear
    guided = guided_backprop(tiny, x, 2).map  # (2, 1, 4, 4)
    _close(result.map, guided * grad_cam[:, None])
    assert tuple(result.map.shape) == (2, 1, 4, 4) and result.settings["signed"] is True
    assert result.layer == "pool" and result.targets == [2, 2]


# -- parity with pytorch-grad-cam and Captum on MobileNetV2 ------------------------------------


@pytest.fixture(scope="module")
def mobilenet():
    return cl.load("mobilenet_v2")


@pytest.fixture(scope="module")
def photos(mobilenet):
    return mobilenet.prepare([cl.sample("chelsea"), cl.sample("coffee")])


def _pytorch_grad_cam(cls, model, inputs, layer, targets, **attributes):
    """pytorch-grad-cam's raw map (before its ReLU and scaling) and its final output."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    raw: list[np.ndarray] = []
    with cls(model.module, [model.module.get_submodule(layer)]) as method:
        for key, value in attributes.items():
            setattr(method, key, value)
        inner = method.get_cam_image

        def keep(*args, **kwargs):
            raw.append(inner(*args, **kwargs))
            return raw[-1]

        method.get_cam_image = keep
        final = method(inputs, [ClassifierOutputTarget(t) for t in targets])
    model.module.zero_grad(set_to_none=True)  # it calls .backward()
    return np.maximum(raw[0], 0), final


def _as_pytorch_grad_cam_scales(result) -> np.ndarray:
    """Our map as pytorch-grad-cam shows it: upsampled to the input and min-max normalised."""
    up = result.upsampled().map
    low = up.amin(dim=(1, 2), keepdim=True)
    high = up.amax(dim=(1, 2), keepdim=True)
    return ((up - low) / (high - low + 1e-7)).numpy()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


PARITY = [
    ("GradCAM", cam.gradcam, "features.18", {}, {}),
    ("GradCAMPlusPlus", cam.gradcam_plusplus, "features.18", {}, {}),
    ("LayerCAM", cam.layercam, "features.14", {}, {}),
    ("XGradCAM", cam.xgradcam, "features.18", {}, {}),
    ("EigenCAM", cam.eigencam, "features.18", {"sign": "numpy"}, {}),
    # Score-CAM makes one forward pass per channel: a 32-channel layer keeps the test short
    ("ScoreCAM", cam.scorecam, "features.6", {"align_corners": True}, {"batch_size": 32}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("peer", "ours", "layer", "options", "attributes"), PARITY)
def test_parity_with_pytorch_grad_cam(mobilenet, photos, peer, ours, layer, options, attributes):
    """Before its scaling, pytorch-grad-cam's maps equal ours within 1e-5 of the peak (measured:
    at most 5e-7); after it (cv2 resize, min-max), ours upsampled and min-max normalised agree
    within 1e-5 (measured: at most 3e-6), Pearson r > 0.99999 (measured: 1.0000000)."""
    import pytorch_grad_cam

    batch = photos if peer != "ScoreCAM" else mobilenet.prepare(cl.sample("chelsea"))
    result = ours(mobilenet, batch, layer=layer, **options)
    raw, final = _pytorch_grad_cam(
        getattr(pytorch_grad_cam, peer),
        mobilenet,
        batch.inputs,
        layer,
        result.targets,
        **attributes,
    )
    assert result.targets[0] == 285  # Egyptian cat
    peak = float(np.abs(raw).max())
    np.testing.assert_allclose(result.map.numpy(), raw, rtol=0, atol=1e-5 * peak)
    scaled = _as_pytorch_grad_cam_scales(result)
    np.testing.assert_allclose(scaled, final, rtol=0, atol=1e-5)
    assert _pearson(scaled, final) > 0.99999


@pytest.mark.slow
def test_default_layer_is_the_one_pytorch_grad_cam_users_pass(mobilenet, photos):
    """pytorch-grad-cam users pass ``model.features[-1]``; our default, ``features``, returns
    the same tensor."""
    default = cam.gradcam(mobilenet, photos)
    assert default.layer == "features"
    torch.testing.assert_close(default.map, cam.gradcam(mobilenet, photos, layer="features.18").map)


@pytest.mark.slow
def test_eigencam_sign_differs_from_pytorch_grad_cam_only_where_lapack_flips(mobilenet, photos):
    """pytorch-grad-cam keeps numpy's arbitrary SVD sign; ours follows the activations. Up to
    that sign the maps are the same; at the default layer both photos agree outright."""
    from pytorch_grad_cam import EigenCAM

    for layer in ("features.18", "features.17"):
        result = cam.eigencam(mobilenet, photos, layer=layer, relu=False)
        theirs = cam.eigencam(mobilenet, photos, layer=layer, relu=False, sign="numpy").map
        for ours, lapack in zip(result.map, theirs, strict=True):
            sign = 1.0 if float((ours * lapack).sum()) > 0 else -1.0
            torch.testing.assert_close(
                ours, sign * lapack, rtol=0, atol=1e-4 * float(ours.abs().max())
            )
        if layer == "features.18":
            kept, _ = _pytorch_grad_cam(EigenCAM, mobilenet, photos.inputs, layer, result.targets)
            np.testing.assert_allclose(
                cam.eigencam(mobilenet, photos, layer=layer).map.numpy(),
                kept,
                rtol=0,
                atol=1e-5 * float(kept.max()),
            )


def test_scorecam_upsampling_differs_from_pytorch_grad_cam_by_design():
    """pytorch-grad-cam upsamples the masks with ``UpsamplingBilinear2d`` (align_corners=True);
    ours by default as the authors' code (False). ``align_corners=True`` reproduces it within
    float error; the default differs (on MobileNetV2's features.6 and chelsea: Pearson r 0.974)."""
    from pytorch_grad_cam import ScoreCAM

    model = tiny_model()
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    same = cam.scorecam(model, x, 2, layer="pool", align_corners=True)
    raw, _ = _pytorch_grad_cam(ScoreCAM, model, x, "pool", same.targets)
    np.testing.assert_allclose(same.map.numpy(), raw, rtol=1e-5, atol=1e-6)
    default = cam.scorecam(model, x, 2, layer="pool").map.numpy()
    assert np.abs(default - raw).max() > 1e-3


@pytest.mark.slow
def test_parity_with_captum_layer_gradcam(mobilenet, photos):
    """Captum's LayerGradCam keeps the sign (no ReLU) by default: ours with relu=False, within
    1e-5 of the peak (measured: bit for bit). Each photo is explained for the other's class,
    so there is negative evidence to keep."""
    from captum.attr import LayerGradCam

    ours = cam.gradcam(mobilenet, photos, [967, 285], layer="features.18", relu=False)
    captum = LayerGradCam(mobilenet.module, mobilenet.module.features[18]).attribute(
        photos.inputs, target=torch.tensor(ours.targets)
    )
    mobilenet.module.zero_grad(set_to_none=True)
    captum = captum.detach()
    peak = float(captum.abs().max())
    torch.testing.assert_close(ours.map, captum[:, 0], rtol=0, atol=1e-5 * peak)
    assert (ours.map < 0).any()  # the sign is kept


@pytest.mark.slow
@needs_guided
def test_parity_with_captum_guided_gradcam(mobilenet, photos):
    """Captum guides nn.ReLU only (MobileNetV2 has ReLU6) and upsamples nearest: with the same
    settings the maps are equal (measured: bit for bit)."""
    from captum.attr import GuidedGradCam

    ours = cam.guided_gradcam(
        mobilenet, photos, layer="features.18", interpolation="nearest", relu6=False
    )
    captum = GuidedGradCam(mobilenet.module, mobilenet.module.features[18]).attribute(
        photos.inputs, target=torch.tensor(ours.targets)
    )
    mobilenet.module.zero_grad(set_to_none=True)
    peak = float(captum.abs().max())
    torch.testing.assert_close(ours.map, captum.detach(), rtol=0, atol=1e-5 * peak)
