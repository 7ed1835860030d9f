"""The explorer's detection panel over HTTP: a detector served beside a classifier, its boxes
and box explanations equal to the library's on the same picture, and every bad request a clear
4xx (the server healthy after)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient  # needs httpx2 (the dev extra)
from PIL import Image

from convlens.apps.server import ServerConfig, ServerState, create_app
from convlens.core.loading import load
from convlens.core.render import png_bytes
from convlens.core.tasks import detect
from convlens.data import toons
from convlens.techniques.attribution.detection import box_methods, explain_box

MASKS = 200  # D-RISE masks: enough for a stable map, quick on two cores


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = ServerState.start(
        ServerConfig(models=["toon-detector", "toon-cnn"], data_dir=tmp_path_factory.mktemp("d"))
    )
    client = TestClient(
        create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False
    )
    yield state, client
    state.close()


@pytest.fixture(scope="module")
def crowd() -> np.ndarray:
    """A crowd frame with two james and a jessie (Grad-CAM cannot tell the two james apart)."""
    return toons.generate(4, variant="crowd", split="test", seed=5).pixels[3]


@pytest.fixture(scope="module")
def detector():
    return load("toon-detector")


@pytest.fixture(scope="module")
def crowd_id(server, crowd) -> str:
    _, client = server
    reply = client.post("/api/images", files={"file": ("crowd.png", png_bytes(crowd), "image/png")})
    assert reply.status_code == 200, reply.text
    assert (reply.json()["width"], reply.json()["height"]) == (128, 128)
    return reply.json()["id"]


def test_models_say_their_task(server):
    _, client = server
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert models["toon-cnn"]["task"] == "classify"
    found = models["toon-detector"]
    assert found["task"] == "detect"
    assert found["labels"] == ["cassidy", "james", "jessie"] and len(found["colors"]) == 3
    assert (found["score_threshold"], found["iou_threshold"]) == (0.3, 0.5)
    methods = {m["name"]: m for m in found["box_methods"]}
    assert list(methods) == box_methods() == ["drise", "gradcam", "layercam"]
    masks = {s["name"]: s for s in methods["drise"]["settings"]}["masks"]
    assert (masks["default"], masks["max"]) == (500, 4000)
    layer = {s["name"]: s for s in methods["layercam"]["settings"]}["layer"]
    assert layer["default"] == found["default_box_layer"] == "backbone"
    assert "backbone.2" in layer["choices"]
    assert "cannot tell two characters" in methods["gradcam"]["description"]
    paths = client.get("/openapi.json").json()["paths"]
    base = "/api/models/{model}/images/{image_id}/detections"
    for path in (base, f"{base}.png", f"{base}/{{index}}/explain/{{method}}.png"):
        assert path in paths
    samples = {s["name"]: s for s in client.get("/api/samples").json()}
    assert samples["crowd-1"]["kind"] == "toons"
    picture = client.get(samples["crowd-1"]["url"])
    assert picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).size == (128, 128)
    chosen = client.post("/api/images/sample/crowd-1", json={}).json()
    dets = client.get(f"/api/models/toon-detector/images/{chosen['id']}/detections").json()
    assert len(dets["detections"]) >= 2  # the sample shows the panel something


def test_detections_equal_the_library(server, crowd, crowd_id, detector):
    _, client = server
    base = f"/api/models/toon-detector/images/{crowd_id}"
    reply = client.get(f"{base}/detections")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    expected = detect(detector, crowd)
    assert len(expected) == 3
    assert (body["width"], body["height"]) == (128, 128)
    assert body["settings"] == {"score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 100}
    assert len(body["detections"]) == len(expected)
    for got, want in zip(body["detections"], expected, strict=True):
        assert got["index"] == want.index and got["label"] == want.label
        assert got["name"] == want.name and got["score"] == pytest.approx(want.score, abs=1e-6)
        assert got["box"] == pytest.approx(list(want.box), abs=1e-4)
    # thresholds reach the detector; the answer is cached per (model, picture, thresholds)
    strict = client.get(f"{base}/detections?score_threshold=0.86&max_detections=1").json()
    want = detect(detector, crowd, score_threshold=0.86, max_detections=1)
    assert [d["score"] for d in strict["detections"]] == pytest.approx([d.score for d in want])
    assert client.get(f"{base}/detections").json()["cached"] is True
    png = client.get(f"{base}/detections.png?highlight=1")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    drawn = Image.open(io.BytesIO(png.content))
    assert drawn.size == (128, 128)
    library = np.asarray(expected.draw(highlight=1))
    assert np.array_equal(np.asarray(drawn.convert("RGB")), library)
    # the picture a detector sees is the upload itself
    seen = Image.open(io.BytesIO(client.get(f"{base}/picture.png").content)).convert("RGB")
    assert np.array_equal(np.asarray(seen), crowd)


@pytest.mark.parametrize(
    ("method", "index", "options"),
    [
        ("drise", 2, {"masks": MASKS}),
        ("gradcam", 2, {}),  # jessie: her class appears once, so Grad-CAM finds her
        ("layercam", 1, {}),  # the second james: Layer-CAM tells the two apart
        ("layercam", 0, {"layer": "backbone.3", "min_iou": 0.6}),
    ],
)
def test_box_explanations_equal_the_library(
    server, crowd, crowd_id, detector, method, index, options
):
    _, client = server
    query = "&".join(f"{k}={v}" for k, v in options.items())
    url = f"/api/models/toon-detector/images/{crowd_id}/detections/{index}/explain/{method}"
    png = client.get(f"{url}.png?{query}")
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png" and png.headers["x-cache"] == "miss"
    drawn = Image.open(io.BytesIO(png.content)).convert("RGB")
    assert drawn.width == 384 and drawn.height > 384 + 20  # enlarged 3x, the colour bar below
    body = client.get(f"{url}.json?{query}").json()
    assert body["cached"] is True  # the PNG's explanation, not a second run
    want = explain_box(detector, crowd, index, method, **options)
    # the library's figure with its colour bar (Figure.framed, as the explanation panel's)
    assert np.array_equal(np.asarray(drawn), np.asarray(want.overlay().framed().convert("RGB")))
    assert body["method"] == method and body["target"]["index"] == index
    assert body["energy_in_box"] == pytest.approx(want.energy_in_box(), abs=1e-6)
    assert float(png.headers["x-energy-in-box"]) == pytest.approx(want.energy_in_box(), abs=1e-5)
    values = np.array(body["map"], dtype=np.float32)
    assert values.shape == (128, 128) == tuple(body["shape"])
    assert np.allclose(values, want.map.numpy(), atol=1e-6)
    assert tuple(body["peak"]) == want.peak()
    assert png.headers["x-peak"] == "{},{}".format(*want.peak())
    for name, value in want.settings.items():
        assert body["settings"][name] == pytest.approx(value)
    if method != "drise":
        x, y = body["peak"]
        x0, y0, x1, y1 = body["target"]["box"]
        assert x0 <= x <= x1 and y0 <= y <= y1 and body["peak_in_box"]
    else:
        assert body["settings"]["masks"] == MASKS and body["settings"]["batch_size"] == 32
    assert body["seconds"] > 0


def test_an_explanation_is_reused_when_thresholds_keep_its_box(server, crowd_id):
    _, client = server
    base = f"/api/models/toon-detector/images/{crowd_id}"
    first = client.get(f"{base}/detections/1/explain/gradcam.json?min_iou=0.7").json()
    # at a stricter score threshold the second james is still found: his map is reused
    strict = "score_threshold=0.85&iou_threshold=0.4"
    dets = client.get(f"{base}/detections?{strict}").json()["detections"]
    assert len(dets) == 2 and dets[1]["box"] == first["target"]["box"]
    again = client.get(f"{base}/detections/1/explain/gradcam.json?min_iou=0.7&{strict}").json()
    assert again["cached"] is True and again["energy_in_box"] == first["energy_in_box"]


BAD = [
    ("/detections/3/explain/gradcam.png", 404, "no detection 3"),
    ("/detections/0/explain/gradcam.png?score_threshold=0.95", 404, "nothing was detected"),
    ("/detections/-1/explain/gradcam.json", 404, "no detection -1"),
    ("/detections/x/explain/gradcam.png", 422, "index"),
    ("/detections/0/explain/rise.png", 404, "drise"),
    ("/detections/0/explain/drise.png?mask=30", 422, "it takes ['cell', 'masks', 'p', 'seed']"),
    ("/detections/0/explain/drise.json?masks=5000", 422, "masks"),
    ("/detections/0/explain/drise.png?masks=many", 422, "expected int"),
    ("/detections/0/explain/gradcam.png?layer=neck", 422, "layer"),
    ("/detections/0/explain/gradcam.png?min_iou=0", 422, "min_iou"),
    ("/detections?score_threshold=1.5", 422, "score_threshold in [0, 1]"),
    ("/detections?iou_threshold=0", 422, "iou_threshold in (0, 1]"),
    ("/detections?max_detections=0", 422, "max_detections"),
    ("/detections?max_detections=5000", 422, "max_detections in [1, 1000]"),
    ("/detections?score_threshold=nan", 422, "score_threshold"),
    ("/detections?score_threshold=high", 422, "score_threshold"),
    ("/detections.png?highlight=7", 404, "no detection 7"),
    ("/detections/0/explain/drise.png?iou_threshold=2", 422, "iou_threshold"),
    # a detector where a classifier is expected
    ("/predictions", 422, "expected a classifier"),
    ("/activations/backbone.png", 422, "expected a classifier"),
    ("/explain/gradcam.png", 422, "expected a classifier"),
    ("/explain/gradcam.json", 422, "expected a classifier"),
]


@pytest.mark.parametrize(("path", "status", "words"), BAD)
def test_bad_detection_requests_get_clear_4xx(server, crowd_id, path, status, words):
    _, client = server
    reply = client.get(f"/api/models/toon-detector/images/{crowd_id}{path}")
    assert reply.status_code == status, reply.text
    assert words in str(reply.json()["detail"])
    assert client.get("/api/health").json()["status"] == "ok"


def test_the_wrong_kind_of_model_gets_a_clear_4xx(server, crowd_id):
    _, client = server
    replies = {
        "classifier": client.get(f"/api/models/toon-cnn/images/{crowd_id}/detections"),
        "classifier png": client.get(f"/api/models/toon-cnn/images/{crowd_id}/detections.png"),
        "classifier box": client.get(
            f"/api/models/toon-cnn/images/{crowd_id}/detections/0/explain/drise.json"
        ),
        "filters": client.get("/api/models/toon-detector/layers/backbone.0.0/filters.png"),
        "job": client.post(
            "/api/jobs",
            json={"kind": "featurevis", "model": "toon-detector", "params": {"layer": "backbone"}},
        ),
        "unknown model": client.get(f"/api/models/nope/images/{crowd_id}/detections"),
        "unknown picture": client.get("/api/models/toon-detector/images/0123/detections"),
    }
    for what, reply in replies.items():
        assert 400 <= reply.status_code < 500, (what, reply.text)
        assert reply.json()["detail"], what
    for what in ("classifier", "classifier png", "classifier box"):
        assert (
            "expected a detector for detections (served: toon-detector)"
            in replies[what].json()["detail"]
        )
    assert "expected a classifier for jobs" in replies["job"].json()["detail"]
    assert replies["unknown model"].status_code == 404
    assert replies["unknown picture"].status_code == 404
    # the classifier still works on the same upload
    preds = client.get(f"/api/models/toon-cnn/images/{crowd_id}/predictions").json()
    assert preds["predictions"]
    assert client.get("/api/health").json()["status"] == "ok"


def test_a_picture_too_large_for_a_detector(tmp_path):
    state = ServerState.start(
        ServerConfig(models=["toon-detector"], data_dir=tmp_path, max_detect_pixels=64 * 64)
    )
    try:
        client = TestClient(
            create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False
        )
        big = np.zeros((80, 80, 3), np.uint8)
        image_id = client.post(
            "/api/images", files={"file": ("big.png", png_bytes(big), "image/png")}
        ).json()["id"]
        reply = client.get(f"/api/models/toon-detector/images/{image_id}/detections")
        assert reply.status_code == 422 and "scale it down" in reply.json()["detail"]
        assert client.get("/api/health").json()["status"] == "ok"
    finally:
        state.close()


def test_a_dropped_drise_request_frees_the_model(tmp_path):
    """A page that stops waiting (another box chosen) closes its connection; D-RISE stops at
    its next batch, so the next request does not wait for 4000 masks."""
    import socket
    import time
    import urllib.request

    import live

    with live.served(["toon-detector"], tmp_path) as (state, port):
        image_id = (
            TestClient(create_app(state), base_url="http://127.0.0.1")
            .post("/api/images/sample/crowd-1", json={})
            .json()["id"]
        )
        path = f"/api/models/toon-detector/images/{image_id}/detections/0/explain"
        with socket.create_connection(("127.0.0.1", port)) as dropped:
            dropped.sendall(
                f"GET {path}/drise.png?masks=4000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            )
            time.sleep(0.5)  # D-RISE is running
        start = time.perf_counter()
        url = f"http://127.0.0.1:{port}{path}/layercam.json"
        with urllib.request.urlopen(url, timeout=60) as reply:
            assert reply.status == 200
        assert time.perf_counter() - start < 8  # 4000 masks take ~20 s on two cores


def test_a_detector_without_gradients_offers_drise_only(tmp_path):
    """MTCNN's cascade leaves torch: its boxes are served, explained by D-RISE only."""
    pytest.importorskip("facenet_pytorch")
    state = ServerState.start(ServerConfig(models=["mtcnn-faces"], data_dir=tmp_path))
    try:
        client = TestClient(
            create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False
        )
        (model,) = client.get("/api/models").json()
        assert model["task"] == "detect" and model["labels"] == ["face"]
        assert [m["name"] for m in model["box_methods"]] == ["drise"]
        image_id = client.post("/api/images/sample/astronaut", json={}).json()["id"]
        base = f"/api/models/mtcnn-faces/images/{image_id}/detections"
        faces = client.get(base).json()["detections"]
        assert [d["name"] for d in faces] == ["face"]
        reply = client.get(f"{base}/0/explain/gradcam.png")
        assert reply.status_code == 422 and "use drise" in reply.json()["detail"]
        assert client.get("/api/health").json()["status"] == "ok"
    finally:
        state.close()


def test_a_missing_detector_package_fails_at_start_with_the_hint(monkeypatch, tmp_path):
    from dataclasses import replace

    from convlens.core import zoo

    def missing() -> None:
        raise ImportError("No module named 'facenet_pytorch'")

    entry = replace(zoo.ZOO.get("mtcnn-faces"), build=missing)
    monkeypatch.setitem(zoo.ZOO.entries, "mtcnn-faces", entry)
    with pytest.raises(ImportError, match=r"cannot serve 'mtcnn-faces'.*pip install"):
        ServerState.start(ServerConfig(models=["toon-cnn", "mtcnn-faces"], data_dir=tmp_path))
    # asked only for other models, the server starts without it
    state = ServerState.start(ServerConfig(models=["toon-detector"], data_dir=tmp_path))
    state.close()
