"""The model handle: preprocessing, classes, predictions."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

import convlens as cl
from convlens.core.model import Preprocessing


def test_predict_softmax_by_hand(tiny, image4):
    prediction = tiny.predict(image4 * 0.01, top=3)
    # pooled channel 0 is 0.675, channel 1 is 0: logits (0.675, 0, 0.675)
    e = math.exp(0.675)
    expected = [e / (2 * e + 1), 1 / (2 * e + 1), e / (2 * e + 1)]
    torch.testing.assert_close(prediction.probabilities[0], torch.tensor(expected))
    top = prediction.topk(0)
    assert [label for _, label, _ in top][2] == "beta"
    assert {label for _, label, _ in top[:2]} == {"alpha", "gamma"}
    assert prediction.to_dicts()[0]["image"] == "image0"
    assert "beta" in str(prediction) and "<table>" in prediction._repr_html_()


def test_sigmoid_and_custom_postprocess(image4):
    from conftest import GREY, TinyNet

    multi = cl.Model(TinyNet(), preprocess=GREY, postprocess="sigmoid", input_size=(1, 4, 4))
    probs = multi.probabilities(image4 * 0.01)
    torch.testing.assert_close(probs[0], torch.sigmoid(torch.tensor([0.675, 0.0, 0.675])))
    doubled = cl.Model(
        TinyNet(), preprocess=GREY, postprocess=lambda t: t * 2, input_size=(1, 4, 4)
    )
    torch.testing.assert_close(doubled.probabilities(image4)[0], torch.tensor([135.0, 0.0, 135.0]))
    with pytest.raises(ValueError, match="expected postprocess"):
        cl.Model(TinyNet(), postprocess="softmx")


def test_class_names(tiny):
    assert tiny.class_index(1) == 1
    assert tiny.class_index("beta") == 1
    assert tiny.class_index("THIRD") == 2  # any synonym, any case
    assert tiny.class_index("2") == 2
    assert tiny.label(2) == "gamma"
    with pytest.raises(cl.UnknownNameError, match=r"unknown class 'gama'.*'gamma'"):
        tiny.class_index("gama")
    with pytest.raises(ValueError, match=r"class index in \[0, 3\), got 3"):
        tiny.class_index(3)
    ambiguous = cl.Model(torch.nn.Linear(2, 2), labels=["crane", "crane"], input_size=(2, 1, 1))
    with pytest.raises(ValueError, match="ambiguous: 0 .crane., 1 .crane."):
        ambiguous.class_index("crane")


def test_imagenet_labels_have_synonyms():
    from convlens.core.zoo import imagenet_classes

    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[281] == ("tabby", "tabby cat")
    assert classes[285][0] == "Egyptian cat"


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (224, 224), (500, 257), (100, 80)])
def test_preprocessing_matches_torchvision_exactly(size):
    from torchvision.models import MobileNet_V2_Weights

    generator = torch.Generator().manual_seed(sum(size))
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy())
    ours = Preprocessing(crop=224, resize=256)([image])
    theirs = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()(image).unsqueeze(0)
    assert ours.shape == theirs.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_denormalize_inverts_normalize():
    prep = Preprocessing()
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(prep.denormalize(prep.normalize(pixels)), pixels)


def test_grey_preprocessing_uses_luma():
    prep = Preprocessing(crop=None, resize=None, mean=(0.5,), std=(0.5,), channels=1)
    image = Image.new("RGB", (2, 2), (255, 0, 0))
    out = prep([image])
    torch.testing.assert_close(out, torch.full((1, 1, 2, 2), (0.299 - 0.5) / 0.5))


def test_input_tensor_checks(tiny):
    with pytest.raises(
        ValueError, match=r"expected input of shape \(N, 1, H, W\), got \(1, 3, 4, 4\)"
    ):
        tiny.prepare(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"expected an input tensor"):
        tiny.prepare(torch.zeros(4, 4))
    fixed = cl.Model(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)), input_size=(3, 2, 2)
    )
    with pytest.raises(ValueError, match=r"\(N, 3, 2, 2\), got \(1, 3, 4, 4\)"):
        fixed.prepare(torch.zeros(1, 3, 4, 4))
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        cl.Model("not a module")  # type: ignore[arg-type]


def test_pictures_go_through_preprocess(tmp_path):
    model = cl.Model(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()))
    path = tmp_path / "red.png"
    Image.new("RGB", (300, 260), (255, 0, 0)).save(path)
    batch = model.prepare([path, path])
    assert batch.names == ["red", "red_2"]
    assert batch.inputs.shape == (2, 3, 224, 224)
    assert batch.pictures[0].size == (224, 224)
    expected = (
        torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(cl.model.IMAGENET_MEAN)
    ) / torch.tensor(cl.model.IMAGENET_STD)
    torch.testing.assert_close(model.probabilities(path)[0], expected.softmax(0))


def test_device_and_dtype_come_from_the_module():
    module = torch.nn.Conv2d(3, 2, 1).to(torch.float64)
    model = cl.Model(module, input_size=(3, 4, 4))
    assert model.dtype == torch.float64 and model.device == torch.device("cpu")
    assert model.prepare(torch.zeros(1, 3, 4, 4)).inputs.dtype == torch.float64


def test_preprocessing_bounds_what_it_makes_not_only_the_pixels_read(tmp_path):
    """An 8000 x 1 strip (85 bytes as a PNG) would become 256 x 2,048,000 pixels (1.5 GB) once
    its short side is resized: refused before any resize, naming the picture (issue 18)."""
    from convlens.core.model import MAX_RESIZED_PIXELS

    strip = Image.new("RGB", (8000, 1), (200, 10, 10))
    strip.save(tmp_path / "strip.png", optimize=True)
    assert (tmp_path / "strip.png").stat().st_size < 120
    model = cl.Model(torch.nn.Conv2d(3, 1, 1))  # ImageNet preprocessing: resize 256, crop 224
    with pytest.raises(cl.ImageError, match=r"strip: .*aspect ratio is at most 256:1.*8000x1"):
        model.prepare(tmp_path / "strip.png")
    with pytest.raises(cl.ImageError, match="2048000x256"):
        Preprocessing().picture(strip)
    tall = Image.new("RGB", (1, 200))  # 256 x 51,200 pixels: allowed, then cropped
    assert Preprocessing().picture(tall).size == (224, 224)
    assert MAX_RESIZED_PIXELS >= 256 * 51_200
