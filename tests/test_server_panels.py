"""The explorer's tables: job kinds (each declares its parameters, check and run once) and the
panels (each one server module and one page module, in one list)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient  # needs httpx2 (the dev extra)

from convlens.apps.server import ServerConfig, ServerState, create_app
from convlens.apps.server.job_kinds import KINDS
from convlens.apps.server.panels import PANELS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = ServerState.start(
        ServerConfig(models=["toon-cnn", "toon-detector"], data_dir=tmp_path_factory.mktemp("d"))
    )
    client = TestClient(
        create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False
    )
    yield state, client
    state.close()


def test_job_kinds_declare_their_parameters_once():
    assert KINDS.names() == ["dataset", "evaluate", "explain", "featurevis", "tcav"]
    featurevis = KINDS.get("featurevis")
    assert [p.name for p in featurevis.params] == ["layer", "channels", "steps", "size"]
    parsed = featurevis.parse({"layer": "conv2", "channels": "0-2, 5"})
    assert parsed == {"layer": "conv2", "channels": [0, 1, 2, 5], "steps": 64, "size": 128}
    assert KINDS.get("evaluate").parse({}) == {"methods": ["gradcam"], "n": 50, "steps": 20}
    assert KINDS.get("dataset").parse({}) == {"methods": ["gradcam"], "images": None, "n": 60}
    tcav = KINDS.get("tcav").parse({"target": 2, "layers": "pool1, pool2"})
    assert tcav["layers"] == ["pool1", "pool2"] and tcav["concepts"] == "toons"
    assert tcav["test"] == "local"  # the default test, as in cl.tcav and convlens tcav
    assert KINDS.get("tcav").parse({"target": 2, "test": "paper"})["test"] == "paper"


def post(client, kind, params, model="toon-cnn"):
    return client.post("/api/jobs", json={"kind": kind, "model": model, "params": params})


def test_an_unknown_job_kind_lists_the_kinds(server):
    _, client = server
    reply = post(client, "featurevs", {"layer": "conv2"})
    assert reply.status_code == 404
    detail = reply.json()["detail"]
    assert "unknown job kind 'featurevs'" in detail and "featurevis" in detail


@pytest.mark.parametrize(
    ("kind", "params", "status", "words"),
    [
        (
            "featurevis",
            {"layer": "conv2", "steps": -1},
            422,
            "'steps': expected a value in [1, 2048]",
        ),
        (
            "featurevis",
            {"layer": "conv2", "steps": "many"},
            422,
            "'steps': expected int in [1, 2048]",
        ),
        ("featurevis", {"layer": "conv2", "size": 8}, 422, "[16, 512]"),
        ("featurevis", {"layer": "conv2", "channels": "0-x"}, 422, "such as '0-7, 12'"),
        ("featurevis", {"layer": "conv2", "colour": 1}, 422, "it takes ['channels', 'layer'"),
        ("featurevis", {"steps": 8}, 422, "a featurevis job needs params.layer"),
        ("featurevis", {"layer": "conv9"}, 404, "conv9"),
        (
            "tcav",
            {"target": "jessie", "n_random": 99},
            422,
            "'n_random': expected a value in [2, 50]",
        ),
        ("tcav", {"target": "jessie", "concepts": "/etc"}, 422, "expected one of toons"),
        ("tcav", {"target": [1]}, 422, "expected a class name or index"),
        ("tcav", {}, 422, "a tcav job needs params.target"),
        ("tcav", {"target": "bob"}, 404, "bob"),
        ("explain", {"methods": ["gradcam"]}, 422, "an explain job needs params.images"),
        ("explain", {"images": "abc"}, 422, "params.images as a list of 1-64 names"),
        ("explain", {"images": ["0123"]}, 404, "unknown image id"),
        ("evaluate", {"methods": ["gradcan"]}, 404, "gradcam"),
        ("evaluate", {"n": 1}, 422, "'n': expected a value in [2, 1000]"),
    ],
)
def test_a_bad_job_parameter_says_what_was_expected(server, kind, params, status, words):
    _, client = server
    reply = post(client, kind, params)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["detail"]
    assert client.get("/api/jobs").json() == []  # nothing was queued


def test_a_job_takes_a_classifier(server):
    _, client = server
    reply = post(client, "featurevis", {"layer": "backbone"}, model="toon-detector")
    assert reply.status_code == 422 and "expected a classifier for jobs" in reply.json()["detail"]


# every operation of the API before the explorer became panels, and the layer table's
OPERATIONS = {
    ("get", "/api/health"),
    ("get", "/api/models"),
    ("get", "/api/methods"),
    ("get", "/api/samples"),
    ("get", "/api/samples/{name}"),
    ("post", "/api/images"),
    ("post", "/api/images/sample/{name}"),
    ("get", "/api/models/{model}/images/{image_id}/picture.png"),
    ("get", "/api/models/{model}/images/{image_id}/predictions"),
    ("get", "/api/models/{model}/images/{image_id}/activations/{layer}.png"),
    ("get", "/api/models/{model}/images/{image_id}/activations/{layer}.json"),
    ("get", "/api/models/{model}/images/{image_id}/explain/{method}.png"),
    ("get", "/api/models/{model}/images/{image_id}/explain/{method}.json"),
    ("get", "/api/models/{model}/layers/{layer}/filters.png"),
    ("get", "/api/models/{model}/images/{image_id}/detections"),
    ("get", "/api/models/{model}/images/{image_id}/detections.png"),
    ("get", "/api/models/{model}/images/{image_id}/detections/{index}/explain/{method}.png"),
    ("get", "/api/models/{model}/images/{image_id}/detections/{index}/explain/{method}.json"),
    ("get", "/api/jobs"),
    ("post", "/api/jobs"),
    ("get", "/api/jobs/{job_id}"),
    ("delete", "/api/jobs/{job_id}"),
    ("get", "/api/jobs/{job_id}/files/{name}"),
    ("get", "/api/models/{model}/layers"),  # the layer table panel
    ("get", "/api/runs/{run_id}"),  # a long request's progress (issue 18)
    ("delete", "/api/runs/{run_id}"),  # ... and its cancel
    ("get", "/api/runs/{run_id}/preview.png"),  # ... and its first map (occlusion, issue 16)
    # the segmentation panel
    ("get", "/api/models/{model}/images/{image_id}/segmentation"),
    ("get", "/api/models/{model}/images/{image_id}/segmentation.png"),
    ("get", "/api/models/{model}/images/{image_id}/segmentation/region"),
    ("get", "/api/models/{model}/images/{image_id}/segmentation/explain/{method}.png"),
    ("get", "/api/models/{model}/images/{image_id}/segmentation/explain/{method}.json"),
}


def test_the_panels_serve_the_same_operations(server):
    _, client = server
    paths = client.get("/openapi.json").json()["paths"]
    assert {(m, p) for p, ops in paths.items() for m in ops} == OPERATIONS
    listed = client.get("/api/panels").json()
    assert [p["name"] for p in listed] == list(PANELS)
    for panel in listed:  # each panel's page module is served beside the shell
        module = client.get(panel["module"])
        assert module.status_code == 200 and "export function mount" in module.text


def test_the_layer_table_panel(server):
    state, client = server
    body = client.get("/api/models/toon-cnn/layers").json()
    table = state.classifier("toon-cnn").layers()
    rows = {r["name"]: r for r in body["layers"]}
    assert list(rows) == table.names and body["input_shape"] == [3, 128, 128]
    module = state.classifier("toon-cnn").module
    conv1 = module.get_submodule("conv1")
    assert rows["conv1"]["type"] == "Conv2d" and rows["conv1"]["kind"] == "conv"
    assert rows["conv1"]["shape"] == [conv1.out_channels, 128, 128]  # padded 'same'
    assert rows["conv1"]["params"] == conv1.weight.numel() + conv1.bias.numel()
    assert rows["pool1"]["shape"] == [conv1.out_channels, 64, 64] and rows["pool1"]["params"] == 0
    assert body["total_params"] == sum(p.numel() for p in module.parameters())
    assert body["kinds"]["conv"] == 3 and sum(body["kinds"].values()) == len(rows)
    convs = client.get("/api/models/toon-cnn/layers?kind=conv").json()["layers"]
    assert [r["name"] for r in convs] == ["conv1", "conv2", "conv3"]
    maps = client.get("/api/models/toon-cnn/layers?kind=conv,pool").json()["layers"]
    panel = client.get("/api/models").json()[0]["layers"]  # the activations panel's menu
    assert [r["name"] for r in maps] == [r["name"] for r in panel]


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/api/models/toon-cnn/layers?kind=lava", 422, "expected layer kinds among conv, pool"),
        ("/api/models/toon-detector/layers", 422, "expected a classifier for the layer table"),
        ("/api/models/nope/layers", 404, "unknown model"),
    ],
)
def test_the_layer_table_refuses_clearly(server, path, status, words):
    _, client = server
    reply = client.get(path)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["detail"]
