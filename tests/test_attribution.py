"""The shared attribution core: targets, the result object, the registry, batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import convlens as cl
from convlens.techniques.attribution.base import (
    Attribution,
    batch_size_for,
    bytes_per_image,
    chunks,
    default_layer,
    get_method,
    resolve_target,
)

X = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) * 0.01


def test_targets(tiny):
    x = torch.cat([X, -X])  # logits (a, 0, a) and (0, b, -b): top-1 is 0 (first of a tie), 1
    top = resolve_target(tiny, x, None)
    assert top.indices.tolist() == [0, 1]
    outputs = tiny(x)
    torch.testing.assert_close(top.score(outputs), torch.stack([outputs[0, 0], outputs[1, 1]]))
    by_label = resolve_target(tiny, x, "third")
    assert by_label.indices.tolist() == [2, 2] and by_label.description == "gamma"
    per_image = resolve_target(tiny, x, ["beta", 2])
    torch.testing.assert_close(
        per_image.score(outputs), torch.stack([outputs[0, 1], outputs[1, 2]])
    )
    assert per_image.repeat(2).indices.tolist() == [1, 1, 2, 2]
    custom = resolve_target(tiny, x, lambda out: out[:, 0] - out[:, 2])
    torch.testing.assert_close(custom.score(outputs), outputs[:, 0] - outputs[:, 2])
    with pytest.raises(ValueError, match=r"one target per image \(2\), got 3"):
        resolve_target(tiny, x, [0, 1, 2])
    with pytest.raises(cl.UnknownNameError, match="'gamma'"):
        resolve_target(tiny, x, "gama")
    bad = resolve_target(tiny, x, lambda out: out)
    with pytest.raises(ValueError, match=r"must return \(N,\) scores"):
        bad.score(outputs)


def _attribution(values: torch.Tensor) -> Attribution:
    return Attribution(
        map=values,
        method="test",
        settings={"signed": True},
        targets=[0] * len(values),
        target_labels=["alpha"] * len(values),
        scores=torch.zeros(len(values)),
        layer="pool",
        input_size=(4, 4),
        names=[f"image{i}" for i in range(len(values))],
    )


def test_upsampling_is_a_separate_bilinear_step():
    layer_map = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    up = _attribution(layer_map).upsampled()
    expected = torch.nn.functional.interpolate(
        layer_map[None], size=(4, 4), mode="bilinear", align_corners=False
    )[0]
    torch.testing.assert_close(up.map, expected)
    # half-pixel centres: the corners keep the corner values, the rest interpolates
    assert up.map[0, 0, 0] == 0.0 and up.map[0, 3, 3] == 3.0
    assert up.map[0, 0, 1] == pytest.approx(0.25)
    assert _attribution(layer_map).is_layer_map and not up.is_layer_map


def test_normalized_never_nan_and_keeps_sign():
    flat = _attribution(torch.zeros(1, 2, 2))
    assert not np.isnan(flat.normalized()).any()
    signed = _attribution(torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]]))
    np.testing.assert_allclose(signed.normalized(signed=True)[0], [[0.0, 0.5], [0.75, 1.0]])
    np.testing.assert_allclose(signed.normalized(absolute=True)[0], [[1.0, 0.0], [0.5, 1.0]])


def test_save_and_summary(tmp_path):
    attribution = _attribution(torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]]))
    written = attribution.save(tmp_path, stem="m")
    assert sorted(p.name for p in written) == ["image0__m.png", "m.npz"]
    with np.load(tmp_path / "m.npz") as npz:
        np.testing.assert_array_equal(npz["map"], attribution.map.numpy())
        assert npz["targets"].tolist() == [0]
    summary = attribution.summary()
    assert json.loads(json.dumps(summary))["layer"] == "pool"


def test_registry_and_aliases():
    table = cl.methods()
    assert table, "no attribution method is registered"
    for name, info in table.items():
        assert info.family in ("gradient", "cam", "perturbation"), name
        assert info.paper and info.description, name
    with pytest.raises(cl.UnknownNameError, match="did you mean 'gradcam'"):
        get_method("gradcma")


def test_default_layer_and_batch_sizes(tiny):
    assert default_layer(tiny) == "pool"
    # leaf outputs per image: conv 32 + relu 32 + pool 8 + gap 2 + flatten 2 + fc 3 floats
    assert bytes_per_image(tiny) == (32 + 32 + 8 + 2 + 2 + 3) * 4
    assert batch_size_for(tiny, 1, cap=10_000) == 2**20 // (79 * 4)
    assert batch_size_for(tiny, 1e-9) == 1
    assert [(s.start, s.stop) for s in chunks(7, 3)] == [(0, 3), (3, 6), (6, 7)]


@pytest.mark.parametrize("method", ["gradcam", "saliency", "occlusion"])
def test_several_classes_at_once_equal_separate_calls(tiny, method):
    options = {"window": 2, "stride": 1} if method == "occlusion" else {}
    x = torch.cat([X, -X])
    both = cl.explain(tiny, x, method, classes=["alpha", "beta"], **options)
    assert both.names == ["image0:alpha", "image0:beta", "image1:alpha", "image1:beta"]
    assert both.targets == [0, 1, 0, 1]
    for k, label in enumerate(["alpha", "beta"]):
        alone = cl.explain(tiny, x, method, label, **options)
        torch.testing.assert_close(both.map[k::2], alone.map)
    with pytest.raises(ValueError, match="either target= or classes="):
        cl.explain(tiny, x, method, "alpha", classes=["beta"], **options)


@pytest.mark.parametrize("method", ["gradcam", "saliency", "layercam", "gradient_x_input"])
def test_many_pictures_are_explained_in_chunks_with_the_same_numbers(tiny, method, monkeypatch):
    from convlens.techniques.attribution import batching
    from convlens.techniques.attribution.explain import picture_chunk

    options: dict = {}
    torch.manual_seed(0)
    x = torch.randn(7, *X.shape[1:])
    targets = ["alpha", "beta", "alpha", "gamma", "beta", "alpha", "gamma"]
    whole = get_method(method).fn(tiny, x, targets, **options)
    # a budget of 3 pictures per call: chunks of 3, 3 and 1
    monkeypatch.setattr(batching, "DEFAULT_MEMORY_BUDGET_MB", 3 * 2 * 79 * 4 / 2**20)
    assert picture_chunk(tiny, get_method(method), {}) == 3
    chunked = cl.explain(tiny, x, method, targets, **options)
    torch.testing.assert_close(chunked.map, whole.map)
    torch.testing.assert_close(chunked.scores, whole.scores)
    assert chunked.targets == whole.targets == [0, 1, 0, 2, 1, 0, 2]
    assert chunked.names == whole.names == [f"image{i}" for i in range(7)]
    for key, value in whole.extras.items():
        if isinstance(value, torch.Tensor) and value.dim():
            torch.testing.assert_close(chunked.extras[key], value)
    with pytest.raises(ValueError, match="one target per image"):
        cl.explain(tiny, x, method, targets[:5], **options)


def test_methods_that_batch_their_copies_get_every_picture_at_once(tiny):
    from convlens.techniques.attribution.explain import picture_chunk

    for method in ("rise", "smoothgrad", "integrated_gradients", "occlusion", "scorecam"):
        assert picture_chunk(tiny, get_method(method), {}) is None


def test_display_sign_modes():
    attribution = _attribution(torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]]))
    maps, signed = attribution._display("signed")
    assert signed and torch.equal(maps, attribution.map)
    maps, signed = attribution._display("absolute")
    assert not signed and maps.tolist() == [[[2.0, 0.0], [1.0, 2.0]]]
    maps, signed = attribution._display("positive")
    assert not signed and maps.tolist() == [[[0.0, 0.0], [1.0, 2.0]]]
    assert attribution._display(None)[1]  # "test" is no gradient method: signed stays signed
    with pytest.raises(ValueError, match="expected sign"):
        attribution._display("both")
