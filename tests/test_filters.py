"""Filter-weight views: exact colours and scales on a hand-set conv, MobileNetV2's first layer,
and the `convlens filters` / `convlens featurevis` commands."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import model_state
from torch import nn
from typer.testing import CliRunner

import convlens as cl
from convlens.apps.cli import app


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rgb = nn.Conv2d(3, 2, 2, bias=False)
        self.deep = nn.Conv2d(2, 2, 2, bias=False)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.rgb.weight.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0] * 3).view(1, 3, 2, 2))
            self.rgb.weight[1] = 0.25  # a second, weaker filter
            self.deep.weight.copy_(torch.arange(16.0).view(2, 2, 2, 2) - 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.deep(self.rgb(x)).mean((2, 3)))


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_rgb_patches_shared_scale_exact():
    module = TwoConvs()
    before = model_state(module)
    view = cl.filter_weights(module, "rgb", tile=2)
    assert view.view == "rgb" and view.scale == "shared" and view.scales == [1.0, 1.0]
    w = module.rgb.weight.detach()
    expected = np.rint(np.clip(0.5 + 0.5 * w[0].permute(1, 2, 0).numpy(), 0, 1) * 255)
    assert np.array_equal(pixels(view.tiles[0]), expected)
    weak = np.rint((0.5 + 0.5 * 0.25) * 255)
    assert (pixels(view.tiles[1]) == weak).all()  # the weak filter looks weak
    assert "shared scale ±1" in view.figure.caption
    assert model_state(module) == before


def test_per_filter_scale_and_one_filter():
    view = cl.filter_weights(TwoConvs(), "rgb", scale="per_filter", tile=2)
    assert view.scales == [1.0, 0.25]
    assert (pixels(view.tiles[1]) == 255).all()  # 0.25 is this filter's own maximum
    assert "each filter scaled to its own max" in view.figure.caption
    one = cl.filter_weights(TwoConvs(), "rgb:1")
    assert one.weights.shape == (1, 3, 2, 2) and len(one.tiles) == 1


def test_deeper_layer_views():
    module = TwoConvs()
    channels = cl.filter_weights(module, "deep", tile=2)
    assert channels.view == "channels" and channels.scales == [8.0, 8.0]
    assert channels.tiles[0].width > 2 * channels.tiles[0].height - 2  # two input channels
    mean = cl.filter_weights(module, "deep", view="mean")
    w = module.deep.weight.detach()
    assert mean.scales[0] == pytest.approx(float(w.mean(1).abs().max()))
    norm = cl.filter_weights(module, "deep", view="norm", scale="per_filter")
    assert norm.scales == pytest.approx(w.pow(2).sum(1).sqrt().flatten(1).amax(1).tolist())


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="expected a conv layer"):
        cl.filter_weights(TwoConvs(), "fc")
    with pytest.raises(ValueError, match="view='rgb' needs"):
        cl.filter_weights(TwoConvs(), "deep", view="rgb")
    with pytest.raises(ValueError, match="expected view"):
        cl.filter_weights(TwoConvs(), "rgb", view="fancy")
    with pytest.raises(ValueError, match="has 2 filters"):
        cl.filter_weights(TwoConvs(), "rgb:5")
    with pytest.raises(cl.UnknownNameError):
        cl.filter_weights(TwoConvs(), "rbg")


def test_mobilenet_first_layer_is_drawn_as_colour_patches(tmp_path):
    model = cl.load("mobilenet_v2")
    view = cl.filter_weights(model, "features.0.0")
    assert view.view == "rgb" and view.weights.shape == (32, 3, 3, 3) and len(view.tiles) == 32
    colourful = [float(np.asarray(t, dtype=float).std(axis=2).mean()) for t in view.tiles]
    assert max(colourful) > 5  # some filters want one colour more than the others
    assert view.save(tmp_path).name == "features.0.0.png"


runner = CliRunner()


def test_cli_filters_and_featurevis(tmp_path):
    result = runner.invoke(
        app, ["filters", "toon-cnn", "--layer", "conv1,conv2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "conv1.png").is_file() and (tmp_path / "conv2.png").is_file()
    out = tmp_path / "fv"
    result = runner.invoke(
        app,
        [
            "featurevis",
            "toon-cnn",
            "--layer",
            "conv2",
            "--channels",
            "0-2,5",
            "--steps",
            "4",
            "--size",
            "32",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.glob("*.png")} == {
        "grid.png",
        "conv2_0.png",
        "conv2_1.png",
        "conv2_2.png",
        "conv2_5.png",
    }
    result = runner.invoke(
        app,
        [
            "featurevis",
            "toon-cnn",
            "--class",
            "jessie",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "c"),
        ],
    )
    assert result.exit_code == 0 and (tmp_path / "c" / "jessie.png").is_file(), result.output
    bad = runner.invoke(app, ["featurevis", "toon-cnn", "--class", "zorro", "--steps", "2"])
    assert bad.exit_code == 2 and "unknown class" in bad.output
    both = runner.invoke(app, ["featurevis", "toon-cnn", "--steps", "2"])
    assert both.exit_code == 2 and "--layer" in both.output
    channels = runner.invoke(app, ["featurevis", "toon-cnn", "--layer", "conv1", "--channels", "x"])
    assert channels.exit_code == 2 and "0-63" in channels.output
