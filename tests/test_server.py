"""The explorer's API: every endpoint, every bad input (a clear 4xx, never a 500, the server
healthy after), jobs that persist across a restart, and the security rules."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient  # needs httpx2 (the dev extra)
from PIL import Image

import convlens as cl
from convlens.apps.server import ServerConfig, ServerState, create_app
from convlens.apps.server.jobs import JobStore
from convlens.core.render import png_bytes
from convlens.data import toons


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = ServerState.start(
        ServerConfig(models=["toon-cnn"], data_dir=tmp_path_factory.mktemp("data"), max_upload_mb=1)
    )
    client = TestClient(
        create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False
    )
    yield state, client
    state.close()


@pytest.fixture(scope="module")
def jessie(server):
    _, client = server
    data = toons.generate(9, split="test", seed=3)
    index = data.label_names.index("jessie")
    reply = client.post(
        "/api/images", files={"file": ("j.png", png_bytes(data.pixels[index]), "image/png")}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["id"]


def test_describes_models_methods_and_samples(server):
    _, client = server
    assert client.get("/api/health").json()["status"] == "ok"
    (model,) = client.get("/api/models").json()
    assert model["name"] == "toon-cnn" and model["labels"] == ["cassidy", "james", "jessie"]
    assert model["task"] == "classify"
    names = [layer["name"] for layer in model["layers"]]
    assert names == ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3"]  # conv/pool only
    assert model["default_layer"] == "pool3"
    assert "relu1" in [layer["name"] for layer in model["explain_layers"]]
    assert all(layer["kind"] in ("conv", "pool") for layer in model["layers"])
    methods = {m["name"]: m for m in client.get("/api/methods").json()}
    occlusion = {s["name"]: s for s in methods["occlusion"]["settings"]}
    assert occlusion["window"]["type"] == "int" and occlusion["window"]["default"] == 16
    assert "blur" in occlusion["fill"]["choices"]
    rise = {s["name"]: s for s in methods["rise"]["settings"]}  # seconds on a CPU, not a minute
    assert (rise["masks"]["default"], rise["masks"]["max"]) == (500, 8000)
    assert methods["gradcam"]["needs_layer"] and not methods["saliency"]["needs_layer"]
    samples = client.get("/api/samples").json()
    assert any(s["name"] == "chelsea" for s in samples)
    assert any(s["kind"] == "toons" for s in samples)  # crowd frames, made in memory
    assert client.get(samples[0]["url"]).headers["content-type"].startswith("image/")
    assert (
        "/api/models/{model}/images/{image_id}/predictions"
        in client.get("/openapi.json").json()["paths"]
    )


def test_scorecam_starts_at_its_fast_approximation(server, jessie):
    """The explorer starts Score-CAM at the 64 strongest channels (seconds at MobileNetV2's
    1,280, not a minute; the library's default stays exact); an empty field (not sent) is the
    exact method, and the map is the library's for the same setting."""
    from convlens.techniques.attribution import cam

    state, client = server
    methods = {m["name"]: m for m in client.get("/api/methods").json()}
    channels = {s["name"]: s for s in methods["scorecam"]["settings"]}["channels"]
    assert (channels["default"], channels["optional"], channels["min"]) == (64, True, 1)
    assert "approximation" in channels["help"]
    base = f"/api/models/toon-cnn/images/{jessie}/explain/scorecam.json"
    inputs = state.forward("toon-cnn", jessie).inputs
    model = state.classifier("toon-cnn")
    for query, k in (("?channels=3", 3), ("", None)):
        body = client.get(base + query).json()
        assert body["settings"]["channels"] == k
        expected = cam.scorecam(model, inputs, channels=k).map[0]
        assert torch.allclose(torch.tensor(body["map"]), expected, atol=1e-6)
    assert client.get(base + "?channels=0").status_code == 422


def test_predictions_activations_and_explanations(server, jessie):
    _, client = server
    base = f"/api/models/toon-cnn/images/{jessie}"
    preds = client.get(f"{base}/predictions?top=3").json()["predictions"]
    assert preds[0]["label"] == "jessie" and preds[0]["probability"] > 0.9
    assert abs(sum(p["probability"] for p in preds) - 1) < 1e-4
    picture = client.get(f"{base}/picture.png")
    assert picture.headers["content-type"] == "image/png"
    first = client.get(f"{base}/activations/conv1.png?channel=0")
    other = client.get(f"{base}/activations/conv1.png?channel=5")
    assert first.status_code == other.status_code == 200
    assert int(first.headers["x-channels"]) > 5 and first.content != other.content
    size = Image.open(io.BytesIO(first.content)).size
    assert size == Image.open(io.BytesIO(picture.content)).size
    assert client.get(f"{base}/activations/pool2.png?grid=1").status_code == 200
    cam = client.get(f"{base}/explain/gradcam.png?layer=conv3")
    assert cam.status_code == 200 and cam.headers["content-type"] == "image/png"
    occ = client.get(f"{base}/explain/occlusion.png?window=16&stride=16&fill=blur&target=james")
    assert occ.status_code == 200
    assert client.get("/api/models/toon-cnn/layers/conv1/filters.png").status_code == 200
    # the same panels as arrays
    one = client.get(f"{base}/activations/conv1.json?channel=5").json()
    assert one["shape"] == [128, 128] and len(one["values"]) == 128
    assert client.get(f"{base}/activations/conv1.json?channel=99").status_code == 422
    cam_map = client.get(f"{base}/explain/gradcam.json?layer=conv3&target=jessie").json()
    assert cam_map["label"] == "jessie" and cam_map["layer"] == "conv3"
    values = np.array(cam_map["map"])
    assert values.shape == tuple(cam_map["shape"]) and values.max() > 0


def test_the_forward_pass_is_cached(server, jessie):
    state, client = server
    base = f"/api/models/toon-cnn/images/{jessie}"
    client.get(f"{base}/predictions")
    cached = state.forwards.get(("toon-cnn", jessie))
    client.get(f"{base}/activations/conv2.png?channel=3")
    assert state.forwards.get(("toon-cnn", jessie)) is cached  # the slider reuses the pass


@pytest.mark.parametrize(
    ("method", "path", "status", "words"),
    [
        ("get", "/api/models/nope/images/{id}/predictions", 404, "unknown model"),
        ("get", "/api/models/toon-cnn/images/0123/predictions", 404, "unknown image"),
        ("get", "/api/models/toon-cnn/images/{id}/predictions?top=0", 422, "top"),
        ("get", "/api/models/toon-cnn/images/{id}/activations/conv9.png", 404, "conv9"),
        (
            "get",
            "/api/models/toon-cnn/images/{id}/activations/conv1.png?channel=999",
            422,
            "channel",
        ),
        ("get", "/api/models/toon-cnn/images/{id}/explain/nomethod.png", 404, "method"),
        ("get", "/api/models/toon-cnn/images/{id}/explain/occlusion.png?windw=3", 422, "windw"),
        ("get", "/api/models/toon-cnn/images/{id}/explain/occlusion.png?window=x", 422, "int"),
        ("get", "/api/models/toon-cnn/images/{id}/explain/occlusion.png?fill=lava", 422, "fill"),
        ("get", "/api/models/toon-cnn/images/{id}/explain/gradcam.png?target=bob", 404, "bob"),
        ("get", "/api/models/toon-cnn/images/{id}/explain/gradcam.png?layer=zz", 404, "zz"),
        ("get", "/api/models/toon-cnn/layers/relu1/filters.png", 422, "weight"),
        ("get", "/api/samples/nothing", 404, "sample"),
        ("get", "/api/samples/..%2F..%2Fpyproject.toml", 404, ""),
        ("get", "/static/../pyproject.toml", 404, ""),
        ("get", "/static/..%2F..%2F__init__.py", 404, ""),
        ("get", "/api/jobs/0123456789abcdef", 404, "unknown job"),
        ("get", "/api/jobs/../../etc/passwd/files/x", 404, ""),
    ],
)
def test_bad_requests_get_clear_4xx(server, jessie, method, path, status, words):
    _, client = server
    reply = getattr(client, method)(path.replace("{id}", jessie))
    assert reply.status_code == status, reply.text
    if words:
        assert words in reply.json()["detail"]
    assert client.get("/api/health").status_code == 200


def test_bad_uploads(server):
    _, client = server
    big = np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)
    replies = {
        "too large": client.post(
            "/api/images", files={"file": ("big.png", png_bytes(big), "image/png")}
        ),
        "corrupt": client.post(
            "/api/images", files={"file": ("c.png", b"\x89PNG\r\n\x1a\nxx", "image/png")}
        ),
        "text": client.post("/api/images", files={"file": ("t.png", b"hello there", "text/plain")}),
        "empty": client.post("/api/images", files={"file": ("e.png", b"", "image/png")}),
        "no file": client.post("/api/images"),
    }
    assert replies["too large"].status_code == 413
    assert replies["corrupt"].status_code == 415
    assert replies["text"].status_code == 415
    assert replies["empty"].status_code == 422
    assert replies["no file"].status_code == 415  # not multipart: refused before it is read
    # a decompression bomb: a tiny file that decodes to 100 megapixels
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")
    reply = client.post("/api/images", files={"file": ("bomb.png", bomb.getvalue(), "image/png")})
    assert reply.status_code == 415 and "pixels" in reply.json()["detail"]
    assert client.get("/api/health").status_code == 200


def test_a_token_guards_a_public_server(tmp_path):
    config = ServerConfig(models=["toon-cnn"], host="0.0.0.0", data_dir=tmp_path)
    assert config.token  # generated
    state = ServerState.start(config)
    try:
        client = TestClient(
            create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False
        )
        assert client.get("/api/models").status_code == 401
        assert client.get("/health").json() == {"status": "ok"}  # liveness only, no token
        assert client.get("/static/app.js").status_code == 401
        headers = {"Authorization": f"Bearer {config.token}"}
        assert client.get("/api/models", headers=headers).status_code == 200
        entry = client.get(f"/?token={config.token}", follow_redirects=False)
        assert entry.status_code == 303 and "convlens_token" in entry.headers["set-cookie"]
        assert client.get("/api/models").status_code == 200  # the cookie now
    finally:
        state.close()
    assert ServerConfig(host="127.0.0.1").token is None


def _wait(client, job_id, seconds=120):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        record = client.get(f"/api/jobs/{job_id}").json()
        if record["status"] not in ("queued", "running"):
            return record
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {record}")


def test_jobs_run_persist_and_survive_a_restart(tmp_path):
    state = ServerState.start(ServerConfig(models=["toon-cnn"], data_dir=tmp_path))
    client = TestClient(
        create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False
    )
    body = {
        "kind": "featurevis",
        "model": "toon-cnn",
        "params": {"layer": "conv2", "channels": "0-3", "steps": 8, "size": 32},
    }
    reply = client.post("/api/jobs", json=body)
    assert reply.status_code == 201, reply.text
    done = _wait(client, reply.json()["id"])
    assert done["status"] == "done" and done["progress"] == 1.0, done
    names = [r["name"] for r in done["results"]]
    assert "grid.png" in names
    assert client.get(done["results"][0]["url"]).status_code == 200
    assert client.get(f"/api/jobs/{done['id']}/files/..%2Fjobs.sqlite").status_code == 404
    bad = [
        {"kind": "paint", "model": "toon-cnn", "params": {}},
        {"kind": "featurevis", "model": "toon-cnn", "params": {"layer": "nope"}},
        {"kind": "featurevis", "model": "toon-cnn", "params": {"layer": "conv2", "steps": -1}},
        {"kind": "tcav", "model": "toon-cnn", "params": {"target": "bob"}},
        {"kind": "tcav", "model": "toon-cnn", "params": {"target": "jessie", "concepts": "/etc"}},
        {"kind": "featurevis", "model": "other", "params": {"layer": "conv2"}},
    ]
    for wrong in bad:
        assert client.post("/api/jobs", json=wrong).status_code in (404, 422), wrong
    assert client.post("/api/jobs", content=b"not json").status_code == 415  # no JSON type
    not_json = {"Content-Type": "application/json"}
    assert client.post("/api/jobs", content=b"not json", headers=not_json).status_code == 422
    # a long job, cancelled while it runs
    slow = {
        "kind": "featurevis",
        "model": "toon-cnn",
        "params": {"layer": "conv3", "steps": 2000, "size": 64},
    }
    job_id = client.post("/api/jobs", json=slow).json()["id"]
    while client.get(f"/api/jobs/{job_id}").json()["status"] == "queued":
        time.sleep(0.05)
    client.delete(f"/api/jobs/{job_id}")
    assert _wait(client, job_id)["status"] == "cancelled"
    # a record left "running" (the server died) reads back as interrupted
    state.jobs.store.update(job_id, status="running")
    state.close()
    again = ServerState.start(ServerConfig(models=["toon-cnn"], data_dir=tmp_path))
    try:
        client = TestClient(
            create_app(again), base_url="http://127.0.0.1", raise_server_exceptions=False
        )
        records = {r["id"]: r for r in client.get("/api/jobs").json()}
        assert records[done["id"]]["status"] == "done"
        assert client.get(records[done["id"]]["results"][0]["url"]).status_code == 200
        assert records[job_id]["status"] == "interrupted"
    finally:
        again.close()


def test_tcav_job_on_the_toon_model(tmp_path):
    state = ServerState.start(ServerConfig(models=["toon-cnn"], data_dir=tmp_path))
    try:
        client = TestClient(
            create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False
        )
        body = {
            "kind": "tcav",
            "model": "toon-cnn",
            "params": {"target": "jessie", "layers": "pool1", "n_random": 3},
        }
        record = _wait(client, client.post("/api/jobs", json=body).json()["id"], seconds=300)
        assert record["status"] == "done", record
        assert {r["name"] for r in record["results"]} == {"tcav.json", "tcav.csv", "tcav.png"}
        assert record["message"].startswith("test 'local'; significant: "), record
        found = client.get(next(r["url"] for r in record["results"] if r["name"] == "tcav.json"))
        assert found.json()["test"] == "local"
    finally:
        state.close()


def test_job_store_marks_interrupted_on_open(tmp_path):
    store = JobStore(tmp_path)
    job = store.create("featurevis", "m", {})
    store.update(job, status="running")
    store.close()
    assert JobStore(tmp_path).get(job)["status"] == "interrupted"


def test_explain_and_evaluate_jobs(tmp_path):
    state = ServerState.start(ServerConfig(models=["toon-cnn"], data_dir=tmp_path))
    try:
        client = TestClient(
            create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False
        )
        data = toons.generate(3, split="test", seed=4)
        ids = [
            client.post(
                "/api/images", files={"file": (f"{i}.png", png_bytes(p), "image/png")}
            ).json()["id"]
            for i, p in enumerate(data.pixels)
        ]
        body = {
            "kind": "explain",
            "model": "toon-cnn",
            "params": {"images": ids, "methods": ["gradcam", "saliency"]},
        }
        record = _wait(client, client.post("/api/jobs", json=body).json()["id"])
        assert record["status"] == "done", record
        names = {r["name"] for r in record["results"]}
        assert "index.html" in names and {"gradcam_0.png", "saliency_2.png"} <= names
        body = {
            "kind": "evaluate",
            "model": "toon-cnn",
            "params": {"methods": ["gradcam"], "n": 4, "steps": 4},
        }
        record = _wait(client, client.post("/api/jobs", json=body).json()["id"])
        assert record["status"] == "done", record
        summary = client.get(record["results"][0]["url"]).json()
        assert "gradcam" in str(summary)
        wrong = [
            {"kind": "explain", "model": "toon-cnn", "params": {"images": ["nope"]}},
            {"kind": "explain", "model": "toon-cnn", "params": {"images": ids, "methods": ["x"]}},
            {"kind": "evaluate", "model": "toon-cnn", "params": {"n": 0}},
        ]
        for body in wrong:
            assert client.post("/api/jobs", json=body).status_code in (404, 422), body
    finally:
        state.close()


def test_dataset_job_runs_the_toons_or_uploads_and_opens_the_report(tmp_path):
    """The explorer's "dataset run": rows, maps and the report of ``cl.dataset.run_dataset``;
    the report is the first result; the rows equal the library call's."""
    import pandas as pd

    state = ServerState.start(ServerConfig(models=["toon-cnn"], data_dir=tmp_path / "d"))
    try:
        client = TestClient(
            create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False
        )
        body = {"kind": "dataset", "model": "toon-cnn", "params": {"methods": ["gradcam"], "n": 6}}
        record = _wait(client, client.post("/api/jobs", json=body).json()["id"])
        assert record["status"] == "done", record
        first = record["results"][0]
        assert first["name"] == "run/report.html"
        page = client.get(first["url"])
        assert page.status_code == 200 and "<html" in page.text.lower()
        folder = next((tmp_path / "d").rglob("run/manifest.json")).parent
        rows = cl.dataset.Run(folder).table()
        assert len(rows) == 6 and rows["energy_in_mask"].notna().all()
        again = cl.dataset.explain(
            "toon-cnn", folder.parent / "toons", "gradcam", out=tmp_path / "lib", engine="serial",
            report=False,
        )  # fmt: skip
        # the job ran in its temporary folder (renamed when done): all but the paths agree
        pd.testing.assert_frame_equal(
            rows.drop(columns="source"), again.table().drop(columns="source")
        )

        data = toons.generate(2, split="test", seed=4)
        ids = [
            client.post(
                "/api/images", files={"file": (f"{i}.png", png_bytes(p), "image/png")}
            ).json()["id"]
            for i, p in enumerate(data.pixels)
        ]
        body["params"] = {"images": ids, "methods": ["saliency"]}
        record = _wait(client, client.post("/api/jobs", json=body).json()["id"])
        assert record["status"] == "done", record
        wrong = [
            ({"methods": ["gradcan"]}, 404),
            ({"images": ["nope"]}, 404),
            ({"n": 1}, 422),
        ]
        for params, code in wrong:
            got = client.post("/api/jobs", json={**body, "params": params})
            assert got.status_code == code, (params, got.text)
    finally:
        state.close()


def test_serve_command_prints_the_address_and_token(monkeypatch, tmp_path):
    import uvicorn
    from typer.testing import CliRunner

    from convlens.apps.cli import app

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: calls.append(kw))
    args = ["serve", "toon-cnn", "--host", "0.0.0.0", "--port", "8123", "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "http://0.0.0.0:8123/?token=" in result.output
    assert calls == [{"host": "0.0.0.0", "port": 8123, "log_level": "warning"}]
    bad = CliRunner().invoke(app, ["serve", "no-such-model", "--data-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "no-such-model" in bad.output
