"""The explorer's segmentation panel over HTTP: a segmenter served beside a classifier, its
classes and region explanations equal to the library's on the same picture (a click picks the
connected region there), and every bad request a clear 4xx."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient  # needs httpx2 (the dev extra)

from convlens.apps.server import ServerConfig, ServerState, create_app
from convlens.core.loading import load
from convlens.core.render import png_bytes
from convlens.data import toons
from convlens.techniques.attribution.segmentation import explain_region


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = ServerState.start(
        ServerConfig(models=["toon-segmenter", "toon-cnn"], data_dir=tmp_path_factory.mktemp("d"))
    )
    client = TestClient(
        create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False
    )
    yield state, client
    state.close()


@pytest.fixture(scope="module")
def crowd() -> np.ndarray:
    return toons.generate(4, variant="crowd", split="test", seed=5).pixels[3]


@pytest.fixture(scope="module")
def crowd_id(server, crowd) -> str:
    _, client = server
    reply = client.post("/api/images", files={"file": ("crowd.png", png_bytes(crowd), "image/png")})
    assert reply.status_code == 200, reply.text
    return reply.json()["id"]


@pytest.fixture(scope="module")
def segmenter():
    return load("toon-segmenter")


def test_the_segmenter_says_its_task_and_forms(server):
    _, client = server
    models = {m["name"]: m for m in client.get("/api/models").json()}
    found = models["toon-segmenter"]
    assert found["task"] == "segment" and found["labels"] == ["background", "hair", "face", "body"]
    assert found["background"] == 0 and len(found["colors"]) == 4
    forms = {f["name"]: f for f in found["region_methods"]}
    assert set(forms) == {"gradcam", "layercam", "occlusion", "rise"}
    layer = forms["gradcam"]["settings"][0]
    assert layer["name"] == "layer" and layer["default"] == "dec2" and "dec2" in layer["choices"]
    assert "region_methods" not in models["toon-cnn"]
    # RISE starts at 250 masks, seconds on a CPU (the library's 1000 take 14 s on one thread)
    masks = {s["name"]: s for s in forms["rise"]["settings"]}["masks"]
    assert (masks["default"], masks["max"]) == (250, 8000)


def test_segmentation_and_a_clicked_region_equal_the_library(server, crowd, crowd_id, segmenter):
    _, client = server
    reply = client.get(f"/api/models/toon-segmenter/images/{crowd_id}/segmentation")
    assert reply.status_code == 200, reply.text
    expected = segmenter(crowd)[0]
    pixels = {c["name"]: c["pixels"] for c in reply.json()["classes"]}
    assert pixels == {expected.name(k): int((expected.class_map == k).sum()) for k in range(4)}
    drawn = client.get(f"/api/models/toon-segmenter/images/{crowd_id}/segmentation.png")
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png"
    # a click on a hair pixel: that character's hair only (a crowd has several)
    ys, xs = torch.nonzero(expected.mask("hair"), as_tuple=True)
    x, y = int(xs[0]), int(ys[0])
    index, region = expected.region_at(x, y)
    assert index == 1 and int(region.sum()) < int(expected.mask("hair").sum())
    where = client.get(
        f"/api/models/toon-segmenter/images/{crowd_id}/segmentation/region", params={"x": x, "y": y}
    ).json()
    assert where["name"] == "hair" and where["pixels"] == int(region.sum())
    reply = client.get(
        f"/api/models/toon-segmenter/images/{crowd_id}/segmentation/explain/gradcam.json",
        params={"x": x, "y": y},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    library = explain_region(segmenter, crowd, 1, "gradcam", region=region)
    assert body["region_pixels"] == int(region.sum()) and body["label"] == "hair"
    assert np.allclose(np.array(body["map"]), library.map.numpy(), atol=1e-5)
    assert body["energy_in_region"] == pytest.approx(library.energy_in_region(), abs=1e-6)
    image = client.get(
        f"/api/models/toon-segmenter/images/{crowd_id}/segmentation/explain/gradcam.png",
        params={"x": x, "y": y},
    )
    assert image.status_code == 200 and image.headers["X-Cache"] == "hit"
    assert float(image.headers["X-Energy-In-Region"]) == pytest.approx(
        library.energy_in_region(), abs=1e-5
    )
    assert image.headers["X-Class"] == "hair"


def test_bad_requests_are_clear_4xx(server, crowd_id):
    _, client = server
    base = f"/api/models/toon-segmenter/images/{crowd_id}/segmentation"
    for url, params, status, words in [
        (f"{base}/explain/gradcam.png", {}, 422, "x= and y="),
        (f"{base}/explain/gradcam.png", {"x": 500, "y": 3}, 422, "inside the 128x128"),
        (f"{base}/explain/gradcam.png", {"target": "hat"}, 404, "hat"),
        (f"{base}/explain/nope.png", {"x": 3, "y": 3}, 404, "nope"),
        (f"{base}/explain/gradcam.png", {"x": 3, "y": 3, "layer": "enc9"}, 422, "layer"),
        (f"{base}/explain/occlusion.png", {"x": 3, "y": 3, "window": 9999}, 422, "window"),
        (f"/api/models/toon-cnn/images/{crowd_id}/segmentation", {}, 422, "classifier"),
        (f"/api/models/toon-segmenter/images/{crowd_id}/predictions", {}, 422, "is a segmenter"),
    ]:
        reply = client.get(url, params=params)
        assert reply.status_code == status, (url, params, reply.status_code, reply.text)
        assert words in reply.json()["detail"], (url, reply.json())
    assert client.get("/api/health").json()["status"] == "ok"
