"""Feature visualization: exact transforms and parameterisations, the objective algebra on
hand-made activations, the loop on hand-built detectors, and what MobileNetV2 and the toon
model's visualizations show."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import Exploding, model_state
from torch import nn

import convlens as cl
from convlens.core.hooks import has_hooks
from convlens.core.model import Preprocessing
from convlens.techniques.visualize import objectives as O
from convlens.techniques.visualize import param as P
from convlens.techniques.visualize import transforms as T

PLAIN = Preprocessing(crop=None, resize=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- transforms: exact on small tensors ---------------------------------------------------------


def test_pad_constant_and_reflect():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out = T.pad(1, value=0.5)(x, gen())
    expected = torch.full((1, 1, 4, 4), 0.5)
    expected[..., 1:3, 1:3] = x
    assert torch.equal(out, expected)
    reflect = T.pad(1, mode="reflect")(x, gen())
    assert reflect[0, 0, 0].tolist() == [4.0, 3.0, 4.0, 3.0]


def test_jitter_is_a_crop_at_the_generators_offsets():
    x = torch.arange(36.0).view(1, 1, 6, 6)
    out = T.jitter(3)(x, gen(5))
    dy, dx = (int(v) for v in torch.randint(3, (2,), generator=gen(5)))
    assert out.shape == (1, 1, 4, 4)
    assert torch.equal(out, x[..., dy : dy + 4, dx : dx + 4])
    assert torch.equal(T.jitter(1)(x, gen()), x)


def test_scale_half_averages_two_by_two_blocks():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = T.scale(0.5)(x)
    expected = x.view(1, 1, 2, 2, 2, 2).mean((3, 5))
    assert torch.allclose(out, expected)
    assert T.scale(1.0)(x) is x
    assert torch.equal(T.random_scale([1.0])(x, gen()), x)


def test_rotate_quarter_turn_equals_rot90_and_zero_is_identity():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    assert torch.allclose(T.rotate(90)(x), torch.rot90(x, 1, dims=(2, 3)), atol=1e-4)
    assert torch.allclose(T.rotate(-90)(x), torch.rot90(x, -1, dims=(2, 3)), atol=1e-4)
    assert T.rotate(0)(x) is x


def test_compose_applies_in_order_and_standard_is_lucents():
    x = torch.ones(1, 3, 20, 20)
    out = T.compose([T.pad(2), T.jitter(3)])(x, gen())
    assert out.shape == (1, 3, 22, 22)
    assert len(T.standard()) == 5
    sizes = {T.compose(T.standard())(torch.rand(1, 3, 64, 64), gen(s)).shape[-1] for s in range(8)}
    assert all(70 <= s <= 85 for s in sizes) and len(sizes) > 1


# -- parameterisations ---------------------------------------------------------------------------


def test_colour_decorrelation_is_the_normalised_lucid_matrix_and_inverts():
    basis = torch.eye(3).view(3, 3, 1, 1)
    rgb = P.decorrelate_colors(basis)[..., 0, 0]  # row k: the colour of basis vector k
    m = P.COLOR_CORRELATION_SVD_SQRT.float()
    m = m / m.norm(dim=0).max()
    assert torch.allclose(rgb, m.t(), atol=1e-6)
    x = torch.randn(2, 3, 4, 5)
    assert torch.allclose(P.recorrelate_colors(P.decorrelate_colors(x)), x, atol=1e-5)


def test_frequency_scale_values():
    s = P.frequency_scale(8, 8)
    assert s.shape == (8, 5)
    assert s[0, 0] == pytest.approx(8.0)  # DC clamped at 1 / max(h, w)
    assert s[0, 1] == pytest.approx(8.0)  # |f| = 1/8
    assert s[1, 1] == pytest.approx(8 / math.sqrt(2), rel=1e-5)
    assert s[4, 4] == pytest.approx(1 / math.sqrt(0.5), rel=1e-5)  # |f| = sqrt(.25 + .25)


@pytest.mark.parametrize("decorrelate", [True, False])
@pytest.mark.parametrize("sigmoid", [True, False])
@pytest.mark.parametrize("hw", [(8, 8), (7, 10)])
def test_fourier_round_trips(decorrelate, sigmoid, hw):
    image = 0.05 + 0.9 * torch.rand(2, 3, *hw, generator=gen(1))
    spectrum = P.fourier_params_for(image, decorrelate=decorrelate, sigmoid=sigmoid)
    params, image_fn = P.fourier((2, 3, *hw), decorrelate=decorrelate, sigmoid=sigmoid)
    assert params[0].shape == spectrum.shape == (2, 3, hw[0], hw[1] // 2 + 1, 2)
    with torch.no_grad():
        params[0].copy_(spectrum)
    assert torch.allclose(image_fn(), image, atol=1e-5)


def test_pixels_round_trip_and_seeded_start():
    image = 0.05 + 0.9 * torch.rand(1, 3, 6, 6, generator=gen(2))
    params, image_fn = P.pixels((1, 3, 6, 6), generator=gen(0))
    with torch.no_grad():
        params[0].copy_(P.pixels_params_for(image))
    assert torch.allclose(image_fn(), image, atol=1e-5)
    a = P.fourier((1, 3, 16, 16), generator=gen(3))[1]()
    b = P.fourier((1, 3, 16, 16), generator=gen(3))[1]()
    assert torch.equal(a, b) and (a - 0.5).abs().max() < 0.05  # near grey at the start
    grey = P.grey_noise((1, 3, 4, 4), generator=gen())[1]()
    assert grey.min() >= 128 / 255 and grey.max() < 148 / 255


# -- objectives on hand-made activations --------------------------------------------------------


@pytest.fixture
def acts() -> dict[str, torch.Tensor]:
    layer = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    image = torch.full((2, 3, 2, 2), 0.5)
    image[1, :, 0, 0] = 1.0
    return {"l": layer, O.IMAGE: image, O.OUTPUT: torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])}


def test_channel_neuron_and_lists(acts):
    a = acts["l"]
    assert torch.equal(O.channel("l", 1)(acts), a[:, 1].flatten(1).mean(1))
    assert torch.equal(O.channel("l:1")(acts), a[:, 1].flatten(1).mean(1))
    listed = O.channel("l", [2, 0])
    assert listed.batch == 2 and listed.labels == ["l:2", "l:0"]
    assert listed(acts).tolist() == [a[0, 2].mean().item(), a[1, 0].mean().item()]
    assert listed.select(slice(1, 2)).labels == ["l:0"]
    assert torch.equal(O.neuron("l", 1)(acts), a[:, 1, 1, 1])
    assert torch.equal(O.neuron("l", 1, x=0, y=1)(acts), a[:, 1, 1, 0])
    assert torch.equal(O.deepdream("l")(acts), a.pow(2).flatten(1).mean(1))
    with pytest.raises(ValueError, match="has 3 channels"):
        O.channel("l", 7)(acts)


def test_arithmetic(acts):
    a, b = O.channel("l", 0), O.l2()
    combined = a - 0.1 * b + 2 * O.deepdream("l") / 4
    expected = a(acts) - 0.1 * b(acts) + 0.5 * O.deepdream("l")(acts)
    assert torch.allclose(combined(acts), expected)
    assert combined.layers == {"l", O.IMAGE}
    assert combined.name == "l:0 - 0.1 * l2 + 0.5 * deepdream(l)"
    assert torch.equal((-a)(acts), -a(acts))
    assert torch.equal(sum([a, a])(acts), 2 * a(acts))  # type: ignore[operator]
    with pytest.raises(ValueError, match="different batches"):
        O.channel("l", [0, 1]) + O.channel("l", [0, 1, 2])
    with pytest.raises(TypeError):
        a * a  # type: ignore[operator]
    assert (O.channel("l", [0, 1]) - O.l2()).select(slice(0, 1)).batch == 1


def test_regularisers_exact(acts):
    image = acts[O.IMAGE]
    assert torch.allclose(O.l2()(acts), torch.tensor([0.0, math.sqrt(3 * 0.25 / 12)]), atol=1e-5)
    assert torch.allclose(O.l1()(acts), torch.tensor([0.0, 3 * 0.5 / 12]))
    # image 1: one corner differs by 0.5 from its right and lower neighbour, in 3 channels
    tv = 3 * 0.5 / 6 + 3 * 0.5 / 6
    assert torch.allclose(O.total_variation()(acts), torch.tensor([0.0, tv]))
    assert O.blur()(acts)[0] < 1e-12 and O.blur()(acts)[1] > 1e-3
    assert image is acts[O.IMAGE]


def test_direction_and_diversity(acts):
    a = acts["l"]
    v = torch.tensor([3.0, 0.0, 4.0])
    expected = (a * (v / 5).view(1, 3, 1, 1)).sum(1).flatten(1).mean(1)
    assert torch.allclose(O.direction("l", v)(acts), expected)
    per_image = O.direction("l", torch.eye(3)[:2])
    assert per_image.batch == 2
    assert torch.allclose(per_image(acts), torch.stack([a[0, 0].mean(), a[1, 1].mean()]))
    same = {"l": torch.ones(3, 2, 2, 2)}
    assert torch.allclose(O.diversity("l")(same), torch.full((3,), -2 / 3))


def test_class_objectives_bind_names(acts):
    model = cl.Model(
        nn.Linear(1, 3), labels=["a", "b", "c"], preprocess=PLAIN, input_size=(3, 4, 4)
    )
    logit = O.class_logit(["c", "a"]).bind(model)
    assert logit.labels == ["c", "a"] and logit(acts).tolist() == [3.0, 0.0]
    p = O.class_probability("b").bind(model)(acts)
    assert torch.allclose(p, acts[O.OUTPUT].softmax(1)[:, 1])
    with pytest.raises(cl.UnknownNameError):
        O.class_logit("zebra").bind(model)


def test_as_objective_names():
    assert O.as_objective("features.14:17").name == "features.14:17"
    assert O.as_objective("features.14").name == "features.14:*"
    with pytest.raises(ValueError, match="expected an objective"):
        O.as_objective(17)  # type: ignore[arg-type]


# -- the loop on hand-built detectors -----------------------------------------------------------


class Detectors(nn.Module):
    """conv1x1 'colour' (channel 0: red minus the mean of green and blue; channel 1: blue),
    conv5x5 'edge' on grey (one oriented kernel), then a head that the objectives never read
    (it raises, so a forward pass that does not stop early fails)."""

    def __init__(self, kernel: torch.Tensor) -> None:
        super().__init__()
        self.colour = nn.Conv2d(3, 2, 1, bias=False)
        self.edge = nn.Conv2d(3, 1, 5, bias=False)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.colour.weight.copy_(
                torch.tensor([[1.0, -0.5, -0.5], [-0.5, -0.5, 1.0]]).view(2, 3, 1, 1)
            )
            self.edge.weight.copy_(kernel.expand(1, 3, 5, 5) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.colour(x)
        self.edge(x)
        raise RuntimeError("the head must not run: featurevis stops at the deepest layer read")


def diagonal_edge() -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
    kernel = torch.tanh(x - y)  # dark below-left, bright above-right of the diagonal
    return kernel - kernel.mean()


def detectors() -> cl.Model:
    return cl.Model(Detectors(diagonal_edge()), preprocess=PLAIN, input_size=(3, 24, 24))


def test_colour_detector_visualization_is_that_colour():
    model = detectors()
    fv = cl.featurevis(model, O.channel("colour", [0, 1]), size=24, steps=60, lr=0.2, frames=4)
    red, blue = fv.pixels[..., 4:-4, 4:-4].mean((2, 3))  # the borders see less of the jitter
    assert red[0] > 0.75 and red[1] < 0.25 and red[2] < 0.25, red
    assert blue[2] > 0.75 and blue[0] < 0.35 and blue[1] < 0.35, blue
    assert (fv.history[-1] > fv.history[0] + 0.15).all()  # the objective rises
    assert fv.history.shape == (60, 2) and fv.frames.shape == (4, 2, 3, 24, 24)


def test_edge_detector_visualization_reproduces_the_kernel():
    model = detectors()
    fv = cl.featurevis(
        model, O.neuron("edge", 0), size=24, steps=80, preset="pixels", transforms="none"
    )
    out_h = 24 - 4
    y0, x0 = out_h // 2, out_h // 2  # the centre neuron sees pixels [y0, y0 + 5)
    patch = fv.pixels[0].mean(0)[y0 : y0 + 5, x0 : x0 + 5]
    kernel = diagonal_edge()
    corr = np.corrcoef(patch.flatten().numpy(), kernel.flatten().numpy())[0, 1]
    assert corr > 0.9, corr
    rises = fv.history[:, 0]
    assert rises[-1] > rises[0] + 1.0


def test_model_left_as_it_was_no_hooks_no_weight_gradients():
    model = detectors()
    model.module.train()
    model.module.colour.weight.requires_grad_(False)
    before = model_state(model.module)
    cl.featurevis(model, O.channel("colour", 0) - 0.1 * O.l2(), size=16, steps=3)
    assert model_state(model.module) == before
    assert has_hooks(model.module) == []
    assert all(p.grad is None for p in model.module.parameters())


def test_errors_inside_leave_no_hooks():
    model = cl.Model(
        Exploding(),
        preprocess=Preprocessing(crop=None, resize=None, mean=(0.0,), std=(1.0,), channels=1),
        input_size=(1, 8, 8),
    )
    before = model_state(model.module)
    with pytest.raises(RuntimeError, match="boom halfway"):
        cl.featurevis(model, O.channel("second", 0), size=8, steps=2)
    assert has_hooks(model.module) == [] and model_state(model.module) == before
    # the objective reads a layer that stops the pass before the error
    fv = cl.featurevis(model, O.channel("first", 1), size=8, steps=2)
    assert fv.pixels.shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="has 2 channels"):
        cl.featurevis(model, O.channel("first", 5), size=8, steps=1)
    assert has_hooks(model.module) == []


def test_seeded_chunked_and_result_api(tmp_path):
    model = detectors()
    a = cl.featurevis(
        model, O.channel("colour", [0, 1, 0, 1, 0]), size=16, steps=4, batch_size=2, seed=3
    )
    b = cl.featurevis(
        model, O.channel("colour", [0, 1, 0, 1, 0]), size=16, steps=4, batch_size=2, seed=3
    )
    c = cl.featurevis(
        model, O.channel("colour", [0, 1, 0, 1, 0]), size=16, steps=4, batch_size=2, seed=4
    )
    assert torch.equal(a.pixels, b.pixels) and not torch.equal(a.pixels, c.pixels)
    assert len(a) == 5 and a.history.shape == (4, 5) and a.settings["batch_size"] == 2
    assert a.labels == ["colour:0", "colour:1", "colour:0", "colour:1", "colour:0"]
    calls = []
    cl.featurevis(model, "colour:1", size=16, steps=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert a.gif()[:4] == b"GIF8"
    assert a._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    assert a.image.size == (16, 16) and len(a.images) == 5
    written = a.save(tmp_path / "fv")
    names = sorted(p.name for p in written)
    assert names[:2] == ["000_colour_0.png", "001_colour_1.png"] and "featurevis.gif" in names
    assert "history.json" in names and "grid.png" in names
    assert a.save(tmp_path / "one.png")[0].is_file()


def test_classic_preset_deprocesses_to_point_one_std():
    fv = cl.featurevis(detectors(), "colour:0", size=16, preset="classic")
    assert fv.history.shape == (40, 1) and fv.settings["optimizer"] == "rms"
    x = fv.pixels[0]
    assert x.mean().item() == pytest.approx(0.5, abs=0.03)
    assert x.std().item() == pytest.approx(0.1, abs=0.03)
    assert fv.history[-1, 0] > fv.history[0, 0]


class FixedSize(nn.Module):
    """conv -> flatten -> linear: only a 12x12 input works."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 12 * 12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def test_fixed_size_network_sees_the_transformed_image_resized():
    torch.manual_seed(0)
    model = cl.Model(FixedSize(), preprocess=PLAIN, input_size=(3, 12, 12), labels=["a", "b", "c"])
    fv = cl.featurevis(model, O.class_logit(["a", "c"]), size=12, steps=20)
    assert fv.pixels.shape == (2, 3, 12, 12) and (fv.history[-1] > fv.history[0]).all()
    conv_only = cl.featurevis(model, "conv:1", size=12, steps=2)  # stops before the dense layer
    assert conv_only.settings["size"] == [12, 12]


def test_public_names_survive_submodule_imports():
    import convlens.techniques.visualize.objectives  # noqa: F401

    assert callable(cl.featurevis) and cl.featurevis.__name__ == "featurevis"
    assert cl.objectives is O


# -- real networks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet() -> cl.Model:
    return cl.load("mobilenet_v2")


def _channel_means(model: cl.Model, pixels: torch.Tensor, layer: str) -> torch.Tensor:
    """(N, C) spatial means of ``layer`` for pixels in [0, 1], any size (a plain hook)."""
    from convlens.core.hooks import forward_hooks, preserved

    found: list[torch.Tensor] = []
    with (
        preserved(model.module),
        forward_hooks(model.module, [layer], lambda _n, out: found.append(out.flatten(2).mean(2))),
        torch.inference_mode(),
    ):
        model.module(model.preprocess.normalize(pixels))
    return found[0]


def _best_crop_activations(
    model: cl.Model, layer: str, channels: list[int], size: int
) -> torch.Tensor:
    """(C,) the largest channel mean over ``size`` crops (stride 48) of every bundled photo,
    each resized to a 192 short side, and over the photos as the model sees them (224)."""
    crops, whole = [], []
    for path in cl.samples().values():
        image = cl.load_image(path)
        w, h = image.size
        k = 192 / min(w, h)
        array = np.array(image.resize((round(w * k), round(h * k))))
        picture = torch.from_numpy(array).float().permute(2, 0, 1) / 255
        for y in range(0, picture.shape[1] - size + 1, 48):
            for x in range(0, picture.shape[2] - size + 1, 48):
                crops.append(picture[:, y : y + size, x : x + size])
        seen = np.array(model.preprocess.picture(image))
        whole.append(torch.from_numpy(seen).float().permute(2, 0, 1) / 255)
    best = _channel_means(model, torch.stack(whole), layer)[:, channels].max(0).values
    for batch in torch.stack(crops).split(16):
        means = _channel_means(model, batch, layer)[:, channels]
        best = torch.maximum(best, means.max(0).values)
    return best


@pytest.mark.slow
def test_mobilenet_visualizations_beat_every_photo_crop(mobilenet):
    layer, channels = "features.14", [3, 17, 60, 101]
    fv = cl.featurevis(mobilenet, O.channel(layer, channels), size=128, steps=48, frames=0)
    assert has_hooks(mobilenet.module) == []
    best = _best_crop_activations(mobilenet, layer, channels, 128)
    ratio = fv.scores / best
    print(
        "activation ratio visualization / best photo crop:",
        dict(zip(channels, ratio.tolist(), strict=True)),
    )
    assert (ratio > 1.0).all(), ratio


HAIR_HUE = {"cassidy": 0.14, "james": 0.62, "jessie": 0.0}


def hair_shares(pixels: torch.Tensor) -> dict[str, float]:
    """Share of saturated pixels within 0.06 of each class's hair hue (HSV)."""
    import colorsys

    rgb = pixels.permute(1, 2, 0).reshape(-1, 3).numpy()
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    vivid = (hsv[:, 1] > 0.35) & (hsv[:, 2] > 0.25)
    shares = {}
    for name, hue in HAIR_HUE.items():
        d = np.abs(hsv[:, 0] - hue)
        shares[name] = float((vivid & (np.minimum(d, 1 - d) < 0.06)).mean())
    return shares


@pytest.mark.slow
def test_toon_class_visualizations_and_hair_colour():
    """The toon CNN tells the characters apart by hair colour: what it wants to see for each
    class (softmax probability, the discriminative objective) holds that colour. Measured on
    the shipped model (seeds 0-2): jessie's image holds the most red of the three (at its
    edges), cassidy's the most yellow (1.6-3.7x the others'), and blue is the one hair hue of
    james's image. Blue is not his alone: jessie's and cassidy's images hold more blue than
    their own hair hue, so "dominated by its hair colour" holds for james only."""
    model = cl.load("toon-cnn")
    classes = ["cassidy", "james", "jessie"]
    fv = cl.featurevis(model, O.class_probability(classes), steps=128, frames=0)
    assert (fv.history[-1] > fv.history[0]).all() and (fv.scores > 0.9).all(), fv.scores
    shares = {c: hair_shares(p) for c, p in zip(classes, fv.pixels, strict=True)}
    print("hair-hue shares per class visualization:", shares)
    red, yellow = "jessie", "cassidy"
    assert shares[red][red] > 2 * max(shares[c][red] for c in classes if c != red)
    assert shares[yellow][yellow] > 1.5 * max(shares[c][yellow] for c in classes if c != yellow)
    james = shares["james"]
    assert james["james"] > 2 * max(james["cassidy"], james["jessie"]), james


def test_adam_matches_torch():
    from convlens.techniques.visualize.ascent import _Adam

    torch.manual_seed(0)
    ours = torch.randn(2, 3)
    theirs = ours.clone().requires_grad_(True)
    reference = torch.optim.Adam([theirs], lr=0.05)
    adam = _Adam([ours], 0.05)
    for _ in range(5):
        g = torch.randn(2, 3)
        theirs.grad = g.clone()
        reference.step()
        adam.step([g])
    assert torch.allclose(ours, theirs.detach(), atol=1e-6)


@pytest.mark.slow
def test_demo_panel(tmp_path):
    from convlens.apps.demo import featurevis_panel
    from convlens.core.report import Report

    model = cl.load("toon-cnn")
    report = Report("panel")
    featurevis_panel(report, model, tmp_path, {})
    written = sorted(p.name for p in (tmp_path / "featurevis").glob("*.png"))
    assert written == ["conv2.png", "filters_conv1.png", "toon-cnn_classes.png"], written
    assert "What the filters respond to" in report.html()


def test_folded_batchnorm_same_numbers_and_restores():
    from torchvision.models import mobilenet_v2

    from convlens.core.hooks import folded_batchnorm, forward_hooks

    torch.manual_seed(0)
    net = mobilenet_v2(num_classes=10).eval()
    for m in net.modules():  # non-trivial statistics, as trained weights have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.rand(2, 3, 64, 64)
    seen: dict[str, torch.Tensor] = {}
    watched = ["features.3.conv.0.0", "features.3.conv.0.1", "features.3.conv.3"]

    def keep(name, out):
        seen[name] = out

    net.requires_grad_(False)
    with forward_hooks(net, watched, keep):
        expected = net(x)
    reference = dict(seen)
    with (
        folded_batchnorm(net, keep=["features.3.conv.0.0"]) as folded,
        forward_hooks(net, watched, keep),
    ):
        got = net(x)
    # 52 Conv2d-BatchNorm2d pairs in MobileNetV2, one kept unfolded (its output is read)
    assert folded == 51
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    for name in watched:  # the kept conv, its BN, a folded BN (seen through its hook)
        scale = float(reference[name].abs().max())
        torch.testing.assert_close(seen[name], reference[name], rtol=1e-4, atol=1e-5 * scale)
    assert all("forward" not in vars(m) for m in net.modules())
    # weights that want gradients are never folded
    with folded_batchnorm(net) as folded:
        assert folded == 52
    net.features[0][0].weight.requires_grad_(True)
    with folded_batchnorm(net) as folded:
        assert folded == 51
    net.requires_grad_(True)
    with folded_batchnorm(net) as folded:
        assert folded == 0


def test_networks_that_refuse_channels_last_still_run():
    """The loop feeds oneDNN channels-last input on the CPU; a network whose ``.view`` needs
    the default layout is run as it comes instead (and remembered)."""
    from convlens.core.hooks import _NCHW_ONLY

    class ViewNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 16 * 16, 2)

        def forward(self, x):
            h = self.conv(x)
            return self.fc(h.view(h.size(0), -1))

    torch.manual_seed(0)
    model = cl.Model(
        ViewNet(), preprocess=cl.Preprocessing(resize=None, crop=None), input_size=(3, 16, 16)
    )
    with pytest.raises(RuntimeError):
        model.module(torch.rand(1, 3, 16, 16).contiguous(memory_format=torch.channels_last))
    fv = cl.featurevis(model, O.class_logit(0), size=16, steps=16, frames=0)
    assert model.module in _NCHW_ONLY
    assert fv.history[-1, 0] > fv.history[0, 0]
