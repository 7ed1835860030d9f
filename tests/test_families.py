"""Modern CNN families from both catalogues, randomly initialised (no download): the layer
table, CAMs, activations, gradients, feature visualization and TCAV on ConvNeXt, RegNet,
EfficientNetV2, DenseNet, Inception-v3, VGG and ResNet, from torchvision and from timm.

For every family: shapes, no hook left, the model as it was (weights hash, training flags,
``requires_grad``), dropout and stochastic depth off (a model left in training mode explains
the same twice); Grad-CAM equals classic CAM (Zhou et al. 2016) where the head is global
average pooling + linear (closed form: ``relu=False`` Grad-CAM x h*w = ``W[c] . A``); the
gradient reaches the input. Inputs are small and not square, so a transposed map would show.

A module reused in one forward pass (EfficientNet-Lite0's ReLU6) is one layer per call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from conftest import model_state
from torch import nn

import convlens as cl
from convlens.core.hooks import forward_hooks, has_hooks

torchvision = pytest.importorskip("torchvision")


@dataclass(frozen=True)
class Family:
    source: str  # torchvision or timm
    name: str
    size: tuple[int, int]  # (H, W) of the input
    layer: str  # the expected default layer
    head: Callable[[nn.Module], nn.Linear] | None  # the linear of a GAP + linear head


def _tv_head(attr: str) -> Callable[[nn.Module], nn.Linear]:
    def head(module: nn.Module) -> nn.Linear:
        found = module.get_submodule(attr)
        assert isinstance(found, nn.Linear)
        return found

    return head


def _timm_head(module: nn.Module) -> nn.Linear:
    found = module.get_classifier()  # type: ignore[operator]
    assert isinstance(found, nn.Linear)
    return found


FAMILIES = [
    # ConvNeXt: the classifier starts with a LayerNorm2d, so no closed form
    Family("torchvision", "convnext_tiny", (64, 96), "features", None),
    Family("torchvision", "regnet_y_400mf", (64, 96), "trunk_output", _tv_head("fc")),
    Family("torchvision", "efficientnet_v2_s", (64, 96), "features", _tv_head("classifier.1")),
    # DenseNet applies its last ReLU as a function (not hookable) before pooling: no closed form
    Family("torchvision", "densenet121", (64, 96), "features", None),
    Family("torchvision", "inception_v3", (107, 139), "Mixed_7c", _tv_head("fc")),
    Family("torchvision", "vgg11", (64, 96), "avgpool", None),
    Family("torchvision", "resnet18", (64, 96), "layer4", _tv_head("fc")),
    Family("timm", "convnext_atto", (64, 96), "norm_pre", None),
    Family("timm", "regnetx_002", (64, 96), "final_conv", _timm_head),
    Family("timm", "tf_efficientnetv2_b0", (64, 96), "bn2", _timm_head),
    Family("timm", "densenet121", (64, 96), "features", _timm_head),
    Family("timm", "inception_v3", (107, 139), "Mixed_7c", _timm_head),
    Family("timm", "vgg11", (64, 96), "features", None),
    Family("timm", "resnet18", (64, 96), "layer4", _timm_head),
]


def build(family: Family) -> nn.Module:
    torch.manual_seed(0)
    if family.source == "timm":
        timm = pytest.importorskip("timm")
        # VGG's pre-logits 7x7 convolution to 4096 channels is 100M parameters: 256 will do
        options = {"mlp_ratio": 1 / 16} if family.name.startswith("vgg") else {}
        return timm.create_model(family.name, **options)
    options = {}
    if family.name == "inception_v3":
        options = {"aux_logits": True, "init_weights": False}
    elif family.name.startswith("vgg"):
        options = {"init_weights": False}
    return torchvision.models.get_model(family.name, **options)


@pytest.fixture(params=FAMILIES, ids=lambda f: f"{f.source}-{f.name}")
def family(request) -> tuple[Family, cl.Model, torch.Tensor]:
    spec: Family = request.param
    module = build(spec)
    module.train()  # as a user may leave it: every method must run it in eval mode
    height, width = spec.size
    model = cl.Model(module, preprocess=cl.Preprocessing(crop=(height, width), resize=None))
    inputs = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1))
    return spec, model, inputs


@pytest.mark.filterwarnings("ignore:CAVs of")  # random pictures make no separable concept
def test_family(family):
    spec, model, x = family
    module = model.module
    before = model_state(module)
    h, w = spec.size

    table = model.layers()
    default = table.last_spatial()
    assert default.name == spec.layer
    assert all(m.training for m in module.modules())  # the table left it in training mode

    cam = cl.explain(model, x, "gradcam", target=3, relu=False)
    assert (
        cam.layer == spec.layer
        and "last layer with a spatial output" in (cam.extras["layer_choice"])
    )
    _, channels, ch, cw = default.output_shape
    assert cam.map.shape == (2, ch, cw) and torch.isfinite(cam.map).all()
    # the input is wider than high, so a transposed map would show (VGG's adaptive pool
    # resamples every map to 7x7)
    assert ch < cw or spec.layer == "avgpool"
    again = cl.explain(model, x, "gradcam", target=3, relu=False)
    torch.testing.assert_close(again.map, cam.map, rtol=0, atol=0)  # no dropout, no drop path

    layercam = cl.explain(model, x, "layercam", target=3)
    assert layercam.map.shape == (2, ch, cw) and (layercam.map >= 0).all()

    acts = cl.activations(model, x, [spec.layer])
    activation = acts[spec.layer]
    assert activation.shape == (2, channels, ch, cw)
    if spec.head is not None:
        weights = spec.head(module).weight[3].detach()
        classic = torch.einsum("c,nchw->nhw", weights, activation.float())
        torch.testing.assert_close(
            cam.map * (ch * cw), classic, rtol=1e-4, atol=1e-5 * float(classic.abs().max())
        )

    saliency = cl.explain(model, x, "saliency", target=3)
    assert saliency.map.shape == (2, h, w)
    assert torch.isfinite(saliency.map).all() and (saliency.map.flatten(1).amax(1) > 0).all()

    vis = cl.featurevis(model, f"{spec.layer}:0", size=(h, w), steps=2, preset="pixels")
    assert vis.pixels.shape == (1, 3, h, w) and torch.isfinite(vis.scores).all()

    concept = {"stripes": torch.randn(6, 3, h, w, generator=torch.Generator().manual_seed(2))}
    randoms = {
        f"random_{k}": torch.randn(6, 3, h, w, generator=torch.Generator().manual_seed(3 + k))
        for k in range(2)
    }
    result = cl.tcav(model, 3, x, concept, random=randoms, layers=spec.layer, n_random=2)
    assert ("stripes", spec.layer) in result.runs

    assert has_hooks(module) == []
    assert model_state(module) == before


def test_convnext_channels_last_layers_are_captured_as_nchw():
    """torchvision's ConvNeXt runs its norm and MLP on (N, H, W, C) between two Permutes and
    keeps layer scale as a bare parameter: the table shows those layers as (N, C, H, W) with a
    note, and every capture hands them over as (N, C, H, W)."""
    module = torchvision.models.convnext_tiny().eval()
    model = cl.Model(module, preprocess=cl.Preprocessing(crop=(64, 96), resize=None))
    table = model.layers()
    inside = table.get("features.1.0.block.3")  # the first Linear of the MLP
    assert inside.type == "Linear" and inside.channels_last
    assert inside.output_shape == (1, 384, 16, 24)
    assert "channels-last" in inside.note and "channels-last" in str(table)
    assert not table.get("features.1.0.block.0").channels_last  # the depthwise conv
    assert not table.get("features.1.0.block.6").channels_last  # after the second Permute
    assert table.get("features.1.0").own == ("layer_scale",)
    assert "layer_scale" in table.get("features.1.0").note
    assert {r["channels_last"] for r in table.to_dicts()} == {True, False}

    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    raw: dict[str, torch.Tensor] = {}
    with forward_hooks(module, ["features.1.0.block.3"], lambda n, out: raw.setdefault(n, out)):
        module(x)
    expected = raw["features.1.0.block.3"].permute(0, 3, 1, 2)  # (1, 16, 24, 384) -> NCHW
    cam = cl.explain(model, x, "gradcam", layer="features.1.0.block.3", target=0)
    assert cam.map.shape == (1, 16, 24)
    seen: dict[str, torch.Tensor] = {}
    with forward_hooks(
        module,
        ["features.1.0.block.3"],
        lambda n, out: seen.setdefault(n, out),
        channels_last=model.channels_last(),
    ):
        out = module(x)
    torch.testing.assert_close(seen["features.1.0.block.3"], expected)
    torch.testing.assert_close(out, module(x))  # the network itself saw its own layout
    vis = cl.featurevis(model, "features.1.0.block.3:383", size=(64, 96), steps=2, preset="pixels")
    assert torch.isfinite(vis.scores).all()  # channel 383 exists only as (N, C, H, W)
    assert has_hooks(module) == []


def test_timm_batchnorm_act_is_one_layer_after_its_activation():
    timm = pytest.importorskip("timm")
    module = timm.create_model("tf_efficientnetv2_b0").eval()
    model = cl.Model(module, preprocess=cl.Preprocessing(crop=(64, 96), resize=None))
    row = model.layers().get("bn2")
    assert row.kind == "norm" and row.norm_act and "after the activation" in row.note
    acts = cl.activations(model, torch.randn(1, 3, 64, 96), ["conv_head", "bn2"])
    bn = module.bn2
    normed = torch.nn.functional.batch_norm(
        acts["conv_head"], bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
    )
    torch.testing.assert_close(acts["bn2"], torch.nn.functional.silu(normed))


# -- a module called twice in one forward pass ---------------------------------------------------


class SharedAct(nn.Module):
    """A stem and a head that share one ReLU6 module (as EfficientNet-Lite does), then global
    average pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU6()
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.bn(self.head(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_a_reused_module_is_one_layer_per_call():
    torch.manual_seed(0)
    module = SharedAct().eval()
    model = cl.Model(
        module,
        preprocess=cl.Preprocessing(crop=(6, 8), resize=None, mean=(0,), std=(1,), channels=1),
    )
    table = model.layers()
    assert table.get("act").calls == 2 and "act#1" in table.get("act").note
    assert [r.name for r in table if r.name.startswith("act")] == ["act", "act#1", "act#2"]
    assert table.get("act#1").output_shape == (1, 3, 6, 8)
    assert table.get("act#2").output_shape == (1, 4, 6, 8)
    assert table.names.index("act#2") > table.names.index("bn")

    x = torch.randn(2, 1, 6, 8, generator=torch.Generator().manual_seed(1))
    cam = cl.explain(model, x, "gradcam", target=1, relu=False)
    assert cam.layer == "act#2"  # the activation users mean, not the norm before it
    assert "act is one module that runs 2 times" in cam.extras["layer_choice"]
    explicit = cl.explain(model, x, "gradcam", target=1, relu=False, layer="act#2")
    torch.testing.assert_close(cam.map, explicit.map)
    post = torch.relu(module.bn(module.head(torch.clamp(module.stem(x), 0, 6)))).clamp(max=6)
    classic = torch.einsum("c,nchw->nhw", module.fc.weight[1].detach(), post.detach())
    torch.testing.assert_close(cam.map * 48, classic, rtol=1e-5, atol=1e-6)

    acts = cl.activations(model, x, ["act#1", "act#2", "act:0"])
    torch.testing.assert_close(acts["act#1"], torch.clamp(module.stem(x), 0, 6).detach())
    torch.testing.assert_close(acts["act#2"], post.detach())
    with pytest.raises(ValueError, match=r"ran 2 times.*act#1 \.\. act#2"):
        cl.explain(model, x, "gradcam", layer="act")
    with pytest.raises(ValueError, match="call number"):
        cl.parse_layer("act#0")
    assert cl.parse_layer("act#2:3") == cl.naming.LayerRef("act#2", 3)
    assert has_hooks(module) == []
