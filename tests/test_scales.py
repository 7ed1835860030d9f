"""Every map is drawn on a stated scale: its colour bar and the target's score beside it, its
own range, one shared over a result's pictures, or one given (issue 18, "Scales")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import convlens as cl
from convlens.core import render
from convlens.techniques.attribution.base import Attribution
from convlens.techniques.attribution.display import value_range


def attribution(values: list, scores: list[float], signed: bool = False) -> Attribution:
    maps = torch.tensor(values, dtype=torch.float32)
    return Attribution(
        map=maps,
        method="gradcam",
        settings={"signed": signed},
        targets=[0] * len(maps),
        target_labels=["cat"] * len(maps),
        scores=torch.tensor(scores),
        layer="pool",
        input_size=(8, 8),
        names=[f"image{i}" for i in range(len(maps))],
        pictures=[Image.new("RGB", (8, 8), (128, 128, 128)) for _ in range(len(maps))],
    )


# the cat glows with values up to 4; the espresso, explained for "cat", reaches only 1
CAT_AND_ESPRESSO = [[[0.0, 1.0], [2.0, 4.0]], [[0.0, 0.25], [0.5, 1.0]]]


def test_a_map_carries_its_range_and_the_targets_score():
    result = attribution(CAT_AND_ESPRESSO, [9.5, -0.57])
    cat, espresso = result.overlay(0), result.overlay(1)
    assert (cat.scale.vmin, cat.scale.vmax) == (0.0, 4.0)
    assert (espresso.scale.vmin, espresso.scale.vmax) == (0.0, 1.0)
    assert espresso.scale.note == "score -0.57" and espresso.scale.cmap == "jet"
    framed = espresso.framed()
    assert framed.height > espresso.image.height + 20  # the bar below the picture
    assert framed.width >= 160  # wide enough for its numbers
    # the bar's first and last columns are the colour map's ends
    bar = np.asarray(framed)[espresso.image.height + 6]
    lut = render.colormap("jet")
    offset = (framed.width - 160) // 2
    assert tuple(bar[offset]) == tuple(lut[0]) and tuple(bar[offset + 159]) == tuple(lut[255])


def test_a_shared_scale_keeps_weak_evidence_weak():
    result = attribution(CAT_AND_ESPRESSO, [9.5, -0.57])
    own = np.asarray(result.overlay(1, alpha=1.0).image)
    shared = result.overlay(1, alpha=1.0, scale="shared")
    assert (shared.scale.vmin, shared.scale.vmax) == (0.0, 4.0)
    lut = render.colormap("jet")
    corner = (7, 7)  # the espresso map's largest value, 1.0
    assert tuple(own[corner]) == tuple(lut[255])  # on its own range: as hot as the cat
    assert tuple(np.asarray(shared.image)[corner]) == tuple(lut[64])  # 1 of 4: a quarter up


def test_shared_scale_across_results_and_a_given_one():
    weak = attribution([[[0.0, 0.5], [0.5, 1.0]]], [1.0])
    strong = attribution([[[0.0, 2.0], [3.0, 8.0]]], [7.0])
    assert cl.shared_scale(weak, strong) == (0.0, 8.0)
    figure = weak.heatmap(0, scale=cl.shared_scale(weak, strong))
    assert (figure.scale.vmin, figure.scale.vmax) == (0.0, 8.0)
    assert np.asarray(figure.image)[1, 1].tolist() == render.colormap("jet")[32].tolist()
    with pytest.raises(ValueError, match="vmax > vmin"):
        weak.overlay(0, scale=(1.0, 1.0))
    with pytest.raises(ValueError, match="expected scale"):
        weak.overlay(0, scale="global")


def test_signed_maps_get_a_symmetric_scale():
    signed = attribution([[[-3.0, 0.0], [1.0, 2.0]]], [0.0], signed=True)
    figure = signed.overlay(0)
    assert (figure.scale.vmin, figure.scale.vmax) == (-3.0, 3.0)
    assert figure.scale.cmap == "coolwarm"
    assert value_range([np.zeros((2, 2))], signed=False) == (0.0, 1.0)  # constant: no NaN
    assert value_range([np.zeros((2, 2))], signed=True) == (-1.0, 1.0)


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_the_default_drawing_is_unchanged(tiny, image4, method):
    """Drawing on the map's own range gives the pixels the per-map normalisation gave."""
    result = cl.explain(tiny, image4, method)
    maps, signed = result._display(None)
    for i in range(len(result)):
        size = result.pictures[i].size[::-1]
        up = Attribution.upsampled(
            result.__class__(**{**result.__dict__, "map": maps[i : i + 1]}), size
        ).map[0]
        expected = render.overlay(
            result.pictures[i],
            up,
            alpha=0.5,
            cmap="coolwarm" if signed else "jet",
            signed=signed,
            clip_percentile=None if result.is_layer_map else 1.0,
        )
        drawn = np.asarray(result.overlay(i).image, np.int16)
        assert np.abs(drawn - np.asarray(expected, np.int16)).max() <= 1


def test_saved_pictures_and_reports_carry_the_bar(tmp_path):
    result = attribution(CAT_AND_ESPRESSO, [9.5, -0.57])
    written = result.save(tmp_path)
    picture = Image.open(written[0])
    assert picture.height > 8 + 20  # the 8 x 8 overlay and its colour bar
    html = result._repr_html_()
    assert html.count("<img") == 2


def test_the_explorer_draws_the_bar_and_keeps_a_scale(tmp_path):
    from fastapi.testclient import TestClient

    from convlens.apps.server import ServerConfig, ServerState, create_app
    from convlens.core.render import png_bytes
    from convlens.data import toons

    state = ServerState.start(ServerConfig(models=["toon-cnn"], data_dir=tmp_path))
    try:
        client = TestClient(create_app(state), base_url="http://127.0.0.1")
        pixels = toons.generate(1, split="test", seed=4).pixels[0]
        upload = client.post("/api/images", files={"file": ("t.png", png_bytes(pixels))})
        base = f"/api/models/toon-cnn/images/{upload.json()['id']}/explain/gradcam.png"
        own = client.get(base)
        assert own.status_code == 200
        low, high = float(own.headers["X-Scale-Min"]), float(own.headers["X-Scale-Max"])
        assert 0 <= low < high and own.headers["X-Colormap"] == "jet"
        assert float(own.headers["X-Score"]) != 0
        picture = Image.open(__import__("io").BytesIO(own.content))
        assert picture.height > pixels.shape[0] + 20  # the colour bar under the picture
        kept = client.get(f"{base}?scale=0,{high * 4}")
        assert float(kept.headers["X-Scale-Max"]) == pytest.approx(high * 4, rel=1e-3)
        assert kept.headers["X-Cached"] == "1"  # the same map, drawn on another scale
        assert client.get(f"{base}?scale=2,1").status_code == 422
        assert client.get(f"{base}?scale=a,b").status_code == 422
    finally:
        state.close()
