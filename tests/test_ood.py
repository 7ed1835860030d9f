"""A toon model shown a photo says so: the out-of-distribution score (issue 18)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import convlens as cl
from convlens.apps.cli import app
from convlens.apps.server import ServerConfig, ServerState, create_app
from convlens.core.model import Preprocessing
from convlens.data import toons
from convlens.workflows.ood import GramDeviation, early_layers, familiarity, for_model

PLAIN = Preprocessing(crop=None, resize=None, mean=(0.0,) * 3, std=(1.0,) * 3)


def test_the_score_is_the_gram_deviation_computed_by_hand():
    """One ReLU on 3-channel 2 x 2 pictures: each picture's Gram features are the upper
    triangle of sum_i a_ci a_di / 4; the score follows the formula of the docstring."""
    module = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    model = cl.Model(module, preprocess=PLAIN, input_size=(3, 2, 2))
    assert early_layers(model) == ["0"]
    rng = np.random.default_rng(0)
    fit = torch.tensor(rng.uniform(0.5, 1.5, size=(50, 3, 2, 2)), dtype=torch.float32)
    held = torch.tensor(rng.uniform(0.4, 1.6, size=(40, 3, 2, 2)), dtype=torch.float32)
    found = GramDeviation.fit(model, fit, held, quantile=0.9)

    def grams(x: torch.Tensor) -> np.ndarray:
        a = np.maximum(x.double().numpy().reshape(len(x), 3, 4), 0)
        gram = np.einsum("nci,ndi->ncd", a, a) / 4
        rows, cols = np.triu_indices(3)
        return gram[:, rows, cols]

    low, high = grams(fit).min(0), grams(fit).max(0)

    def deviation(x: torch.Tensor) -> np.ndarray:
        g = grams(x)
        return (np.maximum(low - g, 0) / np.abs(low) + np.maximum(g - high, 0) / np.abs(high)).sum(
            1
        )

    scale = deviation(held).mean()
    threshold = np.quantile(deviation(held) / scale, 0.9)
    assert found.threshold == pytest.approx(threshold)
    far = torch.full((2, 3, 2, 2), 3.0)
    expected = deviation(far) / scale / threshold
    assert expected[0] > 1
    assert found.scores(model, far).numpy() == pytest.approx(expected, rel=1e-5)
    assert float(found.scores(model, fit[:5]).max()) == 0  # inside the bounds it was fitted on
    again = GramDeviation.from_dict(json.loads(json.dumps(found.to_dict())))
    assert again.scores(model, far).numpy() == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def toon_cnn() -> cl.Model:
    return cl.load("toon-cnn")


def test_toon_cnn_knows_toons_from_photos(toon_cnn):
    calibration = for_model(toon_cnn)
    assert calibration is not None and calibration.layers == ["relu1", "relu2"]
    pictures = list(toons.generate(200, split="test", seed=303).pixels)
    toon_scores = calibration.scores(toon_cnn, pictures)
    assert float((toon_scores > 1).float().mean()) <= 0.04  # about 1 % by construction
    photos = {
        name: float(calibration.scores(toon_cnn, path)[0]) for name, path in cl.samples().items()
    }
    # the espresso toon-cnn calls "jessie", the cat and the rocket: far; the astronaut passes
    assert {n for n, score in photos.items() if score > 1} == {"coffee", "chelsea", "rocket"}
    assert photos["coffee"] > 5
    assert for_model(cl.Model(nn.Linear(2, 2), name="other")) is None


def test_predict_says_when_a_picture_is_far(tmp_path):
    toon = tmp_path / "toon.png"
    Image.fromarray(toons.generate(1, split="test", seed=3).pixels[0]).save(toon)
    runner = CliRunner()
    shown = runner.invoke(app, ["predict", "toon-cnn", str(cl.sample("coffee")), str(toon)])
    assert shown.exit_code == 0, shown.output
    flagged = [line for line in shown.output.splitlines() if "far from what the model" in line]
    assert len(flagged) == 1 and flagged[0].startswith("coffee:")
    rows = json.loads(
        runner.invoke(app, ["predict", "toon-cnn", str(cl.sample("coffee")), "--json"]).output
    )
    assert rows[0]["far"] is True and rows[0]["ood_score"] > 5
    plain = json.loads(
        runner.invoke(app, ["predict", "toon-cnn-spurious", str(toon), "--json"]).output
    )
    assert plain[0]["far"] is False


def test_the_explorer_reports_it(tmp_path, toon_cnn):
    state = ServerState.start(ServerConfig(models=["toon-cnn"], data_dir=tmp_path))
    try:
        client = TestClient(create_app(state), base_url="http://127.0.0.1")
        coffee = client.post("/api/images/sample/coffee", json={}).json()["id"]
        reply = client.get(f"/api/models/toon-cnn/images/{coffee}/predictions").json()
        assert reply["ood"]["far"] is True
        expected = familiarity(toon_cnn, cl.sample("coffee"))
        assert reply["ood"]["ood_score"] == pytest.approx(expected[0]["ood_score"], rel=0.05)
    finally:
        state.close()
