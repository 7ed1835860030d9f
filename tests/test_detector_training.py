"""Training and evaluating detectors from the command line: ``convlens train --task detect`` on a
``crowd`` toons folder (seeded, logged, checkpointed like the classifier trainer) and
``convlens evaluate`` on a detector (mAP, and its box explanations scored)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import convlens as cl
from convlens.apps.cli import app
from convlens.core import detector as D
from convlens.data import toons
from convlens.workflows import detection_eval as DE
from convlens.workflows.training import detect as CT


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    root = tmp_path_factory.mktemp("crowd") / "toons"
    return toons.write(root, n=120, variant="crowd", seed=3, size=64, splits=(80, 20, 20))


def _train(folder, out, *extra: str):
    return CliRunner().invoke(
        app,
        ["train", str(folder), "--task", "detect", "--epochs", "2", "--width-shift", "0.1",
         "--snapshot-every", "2", "--out", str(out), *extra],
    )  # fmt: skip


def test_train_task_detect_writes_a_detector_with_its_record(crowd, tmp_path):
    result = _train(crowd, tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "test mAP@0.5" in result.output
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["task"] == "detect" and metrics["epochs_run"] == 2
    assert "--task=detect" in metrics["command"] and "--width-shift=0.1" in metrics["command"]
    assert metrics["config"]["augment"] == {"flip": True, "zoom": 0.2, "shift": 0.1}
    assert metrics["data"] == {
        "classes": ["cassidy", "james", "jessie"],
        "train": 80,
        "val": 20,
        "test": 20,
        "size": [64, 64],
    }
    assert all({"loss", "val_map50", "val_map50_95"} <= set(row) for row in metrics["history"])
    assert (tmp_path / "a" / "tensorboard").is_dir()
    assert {p.suffix for p in (tmp_path / "a" / "filters").iterdir()} == {".gif", ".png"}
    # the checkpoint loads as a detector and scores on the test split what the record says
    det = cl.load(tmp_path / "a" / "model.pt", score_threshold=0.3)
    assert isinstance(det, D.Detector) and det.labels == ["cassidy", "james", "jessie"]
    pixels, boxes, _ = toons.read_boxes(crowd, "test")
    scores = DE.detection_scores(det, pixels, boxes)
    assert scores["map50"] == metrics["test_map50"]
    assert scores["all_found"] == metrics["test_all_found"]
    # the same seed gives the same weights; another seed other weights
    assert _train(crowd, tmp_path / "b", "--no-tensorboard").exit_code == 0
    assert _train(crowd, tmp_path / "c", "--no-tensorboard", "--seed", "1").exit_code == 0
    a, b, c = (
        torch.load(tmp_path / k / "model.pt", weights_only=True)["state_dict"] for k in "abc"
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_train_task_detect_refuses_what_does_not_apply(crowd, tmp_path):
    runner = CliRunner()
    refused = _train(crowd, tmp_path / "x", "--rotation", "10", "--size", "32")
    assert refused.exit_code == 2 and "--rotation, --size" in refused.output
    bad_task = runner.invoke(app, ["train", str(crowd), "--task", "regress"])
    assert bad_task.exit_code == 2 and "classify, detect or segment" in bad_task.output
    (tmp_path / "empty").mkdir()
    empty = _train(tmp_path / "empty", tmp_path / "y")
    assert empty.exit_code == 2 and "index.json" in empty.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_train_folder_holds_out_validation_when_there_is_none(tmp_path):
    folder = toons.write(tmp_path / "t", n=60, variant="crowd", seed=4, size=64, splits=(50, 0, 10))
    _, metrics = CT.train_folder(folder, epochs=1, val_fraction=0.2, width=8)
    assert metrics["data"]["train"] == 40 and metrics["data"]["val"] == 10
    assert metrics["best_epoch"] == 1 and "test_map50" in metrics


def test_evaluate_takes_a_detector(crowd, tmp_path):
    out = tmp_path / "ev"
    result = CliRunner().invoke(
        app,
        ["evaluate", "toon-detector", str(crowd), "--method", "gradcam,layercam", "--n", "6",
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "evaluation.json").read_text())
    det = cl.load("toon-detector")
    pixels, boxes, _ = toons.read_boxes(crowd, "test")
    expected = DE.detection_scores(det, pixels[:6], boxes[:6])
    assert data["frames"] == 6 and data["detection"]["map50"] == expected["map50"]
    assert data["detection"]["map50_95"] == expected["map50_95"]
    rows = {(r["method"], r["metric"]): r for r in data["explanations"]}
    assert set(rows) == {
        (m, k) for m in ("gradcam", "layercam") for k in ("energy_in_box", "pointing")
    }
    assert data["boxes_explained"] >= 6
    assert all(0 <= r["mean"] <= 1 for r in rows.values())
    # the same through the API
    api = cl.evaluate(det, crowd, ["layercam"], n=6)
    assert isinstance(api, DE.DetectorEvaluation) and "mAP@0.5" in str(api)
    assert api.explanations["layercam"]["pointing"].mean == rows[("layercam", "pointing")]["mean"]
    refused = CliRunner().invoke(
        app, ["evaluate", "toon-detector", str(crowd), "--metrics", "deletion"]
    )
    assert refused.exit_code == 2 and "--metrics" in refused.output


def test_detect_explains_every_box_with_a_gradient_cam(crowd, tmp_path):
    frame = next((crowd / "test" / "crowd").glob("*.png"))
    out = tmp_path / "det"
    result = CliRunner().invoke(
        app, ["detect", "toon-detector", str(frame), "--explain", "gradcam", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    found = json.loads((out / "detections.json").read_text())["detections"]
    assert len(found) >= 1 and result.output.count("energy in box") == len(found)
    assert {f"box_{i}_gradcam.png" for i in range(len(found))} <= {p.name for p in out.iterdir()}
    classifier = CliRunner().invoke(app, ["detect", "toon-cnn", str(frame)])
    assert classifier.exit_code == 2 and "classifier" in classifier.output
    refused = CliRunner().invoke(app, ["explain", "toon-detector", str(frame)])
    assert refused.exit_code == 2 and "convlens detect" in refused.output
