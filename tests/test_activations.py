"""Activations and the layer table, checked against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Exploding, InplaceNet, model_state

import convlens as cl
from convlens.core.hooks import has_hooks
from convlens.core.naming import UnknownNameError

# TinyNet's channel 0 sums each 3x3 window of the 0..15 image (zero padding).
WINDOW_SUMS = torch.tensor(
    [[10, 18, 24, 18], [27, 45, 54, 39], [51, 81, 90, 63], [42, 66, 72, 50]], dtype=torch.float32
)


def test_conv_relu_pool_by_hand(tiny, image4):
    acts = cl.activations(tiny, image4, ["conv", "relu", "pool", "gap", "fc"])
    conv = acts["conv"][0]
    assert torch.equal(conv[0], WINDOW_SUMS)
    assert torch.equal(conv[1], -image4[0, 0])  # minus the centre pixel
    assert torch.equal(acts["relu"][0, 1], torch.zeros(4, 4))
    assert torch.equal(acts["pool"][0, 0], torch.tensor([[45.0, 54.0], [81.0, 90.0]]))
    assert acts["gap"].flatten().tolist() == [67.5, 0.0]
    assert acts["fc"].tolist() == [[67.5, 0.0, 67.5]]
    assert torch.equal(acts["conv:1"], -image4[:, 0])


def test_default_captures_every_spatial_layer(tiny, image4):
    acts = cl.activations(tiny, image4)
    assert acts.layers == ["conv", "relu", "pool", "gap"]  # fc and flatten are not maps


def test_inplace_relu_does_not_rewrite_captured_outputs():
    net = InplaceNet()
    with torch.no_grad():
        net.bn.running_mean.fill_(1.0)
    model = cl.Model(net, preprocess=None, input_size=(1, 2, 2))
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    acts = cl.activations(model, x, ["bn", "act"])
    expected_bn = (x - 1.0) / np.sqrt(1.0 + net.bn.eps)
    torch.testing.assert_close(acts["bn"], expected_bn)
    torch.testing.assert_close(acts["act"], expected_bn.clamp(min=0))
    assert float(acts["bn"].min()) < 0  # the in-place ReLU did not reach the copy


class Residual(torch.nn.Module):
    """out = bn(x); out += x (in place, in forward); relu(inplace) -- as ResNet blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(1).eval()
        self.relu = torch.nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(x)
        out += x
        return self.relu(out)


def test_in_place_additions_in_forward_do_not_rewrite_captured_outputs():
    net = Residual()
    with torch.no_grad():
        net.bn.running_mean.fill_(2.0)
    model = cl.Model(net, preprocess=None, input_size=(1, 2, 2))
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    bn_out = (x - 2.0) / np.sqrt(1.0 + net.bn.eps)
    for _ in range(2):  # the first call learns that `bn` needs a copy; the second uses it
        acts = cl.activations(model, x, ["bn", "relu"])
        torch.testing.assert_close(acts["bn"], bn_out)
        torch.testing.assert_close(acts["relu"], (bn_out + x).clamp(min=0))


def test_batches_match_one_pass_and_half_precision(tiny):
    x = torch.randn(7, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    whole = cl.activations(tiny, x, ["conv", "pool"], batch_size=7)
    pieces = cl.activations(tiny, x, ["conv", "pool"], batch_size=3)
    assert torch.equal(whole["conv"], pieces["conv"])
    half = cl.activations(tiny, x, ["conv"], dtype=torch.float16)
    assert half["conv"].dtype == torch.float16
    torch.testing.assert_close(half["conv"].float(), whole["conv"], atol=1e-2, rtol=1e-3)


def test_stream_to_npz_equals_memory(tiny, tmp_path):
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    memory = cl.activations(tiny, x, ["conv", "pool"], batch_size=2)
    target = tmp_path / "acts.npz"
    streamed = cl.activations(tiny, x, ["conv", "pool"], batch_size=2, stream_to=target)
    assert torch.equal(streamed["conv"], memory["conv"])
    assert torch.equal(streamed["pool"], memory["pool"])
    with np.load(target) as npz:
        assert sorted(npz.files) == ["__images__", "conv", "pool"]
        assert np.array_equal(npz["conv"], memory["conv"].numpy())
        assert npz["__images__"].tolist() == [f"image{i}" for i in range(5)]
    assert [p.name for p in tmp_path.iterdir()] == ["acts.npz"]  # no scratch left behind


def test_failed_stream_leaves_nothing(tmp_path):
    model = cl.Model(Exploding(), preprocess=None, input_size=(1, 4, 4))
    with pytest.raises(RuntimeError, match="boom"):
        cl.activations(model, torch.zeros(1, 1, 4, 4), ["first"], stream_to=tmp_path / "a.npz")
    assert list(tmp_path.iterdir()) == []
    assert has_hooks(model.module) == []


def test_progress_callback_counts_pictures(tiny):
    calls = []
    cl.activations(
        tiny,
        torch.zeros(5, 1, 4, 4),
        ["conv"],
        batch_size=2,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_unknown_layer_suggests_close_names(tiny, image4):
    with pytest.raises(UnknownNameError, match=r"unknown layer 'cnov'.*'conv'"):
        cl.activations(tiny, image4, ["cnov"])
    with pytest.raises(ValueError, match="whole channel number"):
        cl.activations(tiny, image4, ["conv:x"])
    acts = cl.activations(tiny, image4, ["conv"])
    with pytest.raises(ValueError, match="has 2 channels, got channel 5"):
        acts["conv:5"]


def test_activations_leave_the_model_unchanged(tiny, image4):
    tiny.module.train()
    tiny.module.fc.weight.requires_grad_(False)
    before = model_state(tiny.module)
    cl.activations(tiny, image4)
    tiny.predict(image4)
    cl.layer_table(tiny)
    assert model_state(tiny.module) == before
    assert has_hooks(tiny.module) == []


def test_grid_and_heatmap_pixels(tiny, image4):
    acts = cl.activations(tiny, image4, ["conv"])
    grid = acts.grid("conv", norm="per_map", tile_size=4, labels=False)
    assert grid.image.width >= 8
    heat = acts.heatmap("conv:0", size=4)
    pixels = np.asarray(heat.image)
    viridis = cl.render.colormap("viridis")
    # top-left of channel 0 is its minimum (10), the centre-right (90) its maximum.
    assert np.abs(pixels[0, 0].astype(int) - viridis[0]).max() <= 1
    assert np.abs(pixels[2, 2].astype(int) - viridis[255]).max() <= 1
    assert "10..90" in heat.caption


def test_save_writes_grids_heatmaps_and_npz(tiny, image4, tmp_path):
    acts = cl.activations(tiny, image4, ["conv", "pool:0"])
    written = acts.save(tmp_path)
    names = sorted(p.name for p in written)
    # a layer named by one channel gets that channel's heatmap, not the whole grid
    assert names == ["activations.npz", "image0__conv.png", "image0__pool_0.png"]
    with np.load(tmp_path / "activations.npz") as npz:
        assert np.array_equal(npz["conv"], acts["conv"].numpy())
        assert npz["__images__"].tolist() == ["image0"]


def test_layer_table_by_hand(tiny):
    table = cl.layer_table(tiny)
    assert table.names == ["conv", "relu", "pool", "gap", "flatten", "fc"]
    shapes = {r.name: r.output_shape for r in table}
    assert shapes == {
        "conv": (1, 2, 4, 4),
        "relu": (1, 2, 4, 4),
        "pool": (1, 2, 2, 2),
        "gap": (1, 2, 1, 1),
        "flatten": (1, 2),
        "fc": (1, 3),
    }
    assert table.get("conv").params == 20 and table.get("fc").params == 9
    assert table.last_spatial().name == "pool"  # gap's 1x1 output is no map
    assert [r.calls for r in table] == [1] * 6
    assert table.total_params == 29
    assert table.filter("conv").names == ["conv"]
    assert table.filter(["pool", "act"]).names == ["relu", "pool", "gap"]
    assert table.spatial().names == ["conv", "relu", "pool", "gap"]
    assert "total parameters: 29" in str(table)
    assert str(table.filter("norm")).endswith("total parameters: 29")
    with pytest.raises(ValueError, match="expected layer kinds"):
        table.filter("convolution")
    with pytest.raises(UnknownNameError, match="did you mean 'pool'"):
        table.get("poool")


def test_last_spatial_layer_skips_reused_modules():
    import torchvision

    table = cl.layer_table(cl.Model(torchvision.models.resnet18()))
    assert table.get("layer4.1.relu").calls == 2  # one ReLU module used twice per block
    assert table.last_spatial().name == "layer4"
    mobilenet = cl.layer_table(cl.Model(torchvision.models.mobilenet_v2()))
    assert mobilenet.last_spatial().name == "features"  # the same tensor as features.18


def test_layer_table_orders_nested_modules_by_call():
    net = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), torch.nn.Flatten()
    )
    table = cl.layer_table(cl.Model(net, input_size=(3, 5, 5)))
    assert table.names == ["0", "0.0", "0.1", "1"]
    assert table.get("0").kind == "block" and table.get("0").params == 4 * 3 * 9 + 4
    assert table.get("1").output_shape == (1, 4 * 3 * 3)


def _reference_capture(module: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The obviously-correct way: clone every 4-D output the moment it is produced."""
    out: dict[str, torch.Tensor] = {}

    def keep(name: str, output: object) -> None:  # returns None: the output stays as it is
        if isinstance(output, torch.Tensor) and output.dim() == 4 and name not in out:
            out[name] = output.detach().clone()

    handles = [
        m.register_forward_hook(lambda _m, _i, o, n=n: keep(n, o))
        for n, m in module.named_modules()
        if n
    ]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return out


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_every_layer_equals_a_clone_everything_reference(arch):
    """Real torchvision networks: in-place ReLUs, `out += identity`, nested blocks."""
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = _reference_capture(net, x)
    for _ in range(2):  # learning call, then the call that uses what was learnt
        acts = cl.activations(cl.Model(net, input_size=(3, 64, 64)), x)
        assert acts.layers == list(expected)
        for name, tensor in expected.items():
            assert torch.equal(acts[name], tensor), name


class ChannelsLastNet(torch.nn.Module):
    """A conv, then a region in (N, H, W, C) as ConvNeXt has (Permute, Linear, Permute back),
    global average pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops.misc import Permute

        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.to_last = Permute([0, 2, 3, 1])
        self.mix = torch.nn.Linear(4, 5)
        self.to_first = Permute([0, 3, 1, 2])
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.to_first(self.mix(self.to_last(self.conv(x))))
        return self.head(y.mean(dim=(2, 3)))


def test_channels_last_layers_come_as_nchw_in_every_capture():
    """activations() (in memory and on an engine) and the gradient pass hand a channels-last
    layer over as (N, C, H, W): the Linear's output permuted, its gradient equal to the head's
    weight over H*W at every position."""
    pytest.importorskip("torchvision")
    from PIL import Image

    from convlens.core.engine import SerialEngine
    from convlens.techniques.activations import layer_batches

    torch.manual_seed(0)
    net = ChannelsLastNet().eval()
    model = cl.Model(net, preprocess=cl.Preprocessing(crop=8, resize=None))
    assert "mix" in model.channels_last()
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    x = model.prepare([picture]).inputs
    expected = net.mix(net.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    acts = cl.activations(model, x, ["mix", "conv"])
    assert acts["mix"].shape == (1, 5, 8, 8)
    torch.testing.assert_close(acts["mix"], expected.detach())
    on_engine = cl.activations(model, [picture], ["mix"], engine=SerialEngine())
    torch.testing.assert_close(on_engine["mix"], expected.detach())
    ((_, grads),) = layer_batches(model, [picture], "mix", engine=SerialEngine(), gradient_of=2)
    assert grads["mix"].shape == (1, 5, 8, 8)
    want = (net.head.weight[2] / 64).detach().view(1, 5, 1, 1).expand(1, 5, 8, 8)
    torch.testing.assert_close(grads["mix"], want)
    assert has_hooks(net) == []
