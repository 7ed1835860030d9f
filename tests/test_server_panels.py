"""The explorer's tables: job kinds (each declares its parameters, check and run once) and the
panels (each one server module and one page module, in one list)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient  # needs httpx2 (the dev extra)

from convlens.apps.server import ServerConfig, ServerState, create_app
from convlens.apps.server.job_kinds import KINDS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = ServerState.start(
        ServerConfig(models=["toon-cnn", "toon-detector"], data_dir=tmp_path_factory.mktemp("d"))
    )
    client = TestClient(create_app(state), raise_server_exceptions=False)
    yield state, client
    state.close()


def test_job_kinds_declare_their_parameters_once():
    assert KINDS.names() == ["evaluate", "explain", "featurevis", "tcav"]
    featurevis = KINDS.get("featurevis")
    assert [p.name for p in featurevis.params] == ["layer", "channels", "steps", "size"]
    parsed = featurevis.parse({"layer": "conv2", "channels": "0-2, 5"})
    assert parsed == {"layer": "conv2", "channels": [0, 1, 2, 5], "steps": 64, "size": 128}
    assert KINDS.get("evaluate").parse({}) == {"methods": ["gradcam"], "n": 50, "steps": 20}
    tcav = KINDS.get("tcav").parse({"target": 2, "layers": "pool1, pool2"})
    assert tcav["layers"] == ["pool1", "pool2"] and tcav["concepts"] == "toons"


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
