"""What a new user reads (issue 18, "Reports" and "Python face"): reports that name the model
and the data, rows that do not wrap, a legend, readable numbers, whole labels, detection
pictures large enough for their tags, and evaluation on one's own pictures with masks."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import convlens as cl
from convlens.apps.cli import app
from convlens.apps.reports import explanation_report, readable
from convlens.core import render
from convlens.core.detector import Detections
from convlens.data import toons
from convlens.workflows.audit import audit
from convlens.workflows.evaluation import evaluate
from convlens.workflows.masked import read_mask_folder


@pytest.fixture(scope="module")
def toon_cnn() -> cl.Model:
    return cl.load("toon-cnn")


@pytest.fixture(scope="module")
def toon_set():
    return toons.generate(6, split="test", seed=11)


def test_the_audit_names_its_model_and_data_and_keeps_triplets_together(toon_cnn, tmp_path):
    folder = toons.write(tmp_path / "toons", n=24, size=64, splits=(0.5, 0.25, 0.25))
    result = audit(toon_cnn, folder, "saliency", n=6, examples=2)
    saved = result.to_dict()
    assert saved["model"] == "toon-cnn"
    assert saved["data"] == f"{folder}, test split, 6 images"
    page = result.save(tmp_path / "audit.html").read_text()
    assert "toon-cnn" in page and f"{folder}, test split, 6 images" in page
    rows = re.findall(r'<div class="grid row">(.*?)</div>', page)
    assert len(rows) == 2 * 2  # two examples of each extreme, one row each
    assert all(row.count("<img") == 3 for row in rows)  # picture, map, mask


def test_the_explanation_report_legend_rows_and_readable_numbers(toon_cnn, toon_set):
    ig = cl.explain(toon_cnn, toon_set.images[:2], "integrated_gradients", steps=8)
    cam = cl.explain(toon_cnn, toon_set.images[:2], "gradcam")
    page = explanation_report([ig, cam], title="t").html()
    assert "How to read the maps" in page and "colour bar" in page
    rows = re.findall(r'<div class="grid row">(.*?)</div>', page)
    assert [row.count("<img") for row in rows] == [3, 3]  # picture + 2 maps, never wrapped
    assert "tensor(" not in page
    error = re.search(r"completeness_error=\[([^\]]*)\]", page)
    assert error is not None
    shown = [float(n) for n in error.group(1).split(", ")]
    digits = [re.sub(r"\D", "", n.split("e")[0]).lstrip("0") for n in error.group(1).split(", ")]
    assert all(len(d) <= 4 for d in digits)  # 4 significant digits, not 16
    expected = ig.extras["completeness_error"].reshape(-1).tolist()
    assert shown == pytest.approx(expected, rel=1e-3, abs=1e-12)
    assert readable(0.123456789) == "0.1235"
    assert readable(torch.arange(10.0)) == "[0, 1, 2, 3, 4, 5, ... (10 in all)]"


def test_grid_labels_are_never_cut():
    tiles = [np.zeros((8, 8), np.float32)] * 3
    labels = ["features.14:15", "features.14:16", "x"]
    font = render._font(11)
    picture = render.grid(tiles, ncols=3, pad=2, labels=labels)
    need = max(font.getlength(t) for t in labels)
    assert picture.width >= 2 + 3 * (need + 2)  # every label has its whole width


def test_detect_pictures_are_large_enough_and_boxes_stay_inside(tmp_path):
    picture = Image.new("RGB", (128, 96), (255, 255, 255))
    found = Detections(
        torch.tensor([[-20.0, 10.0, 60.0, 200.0], [100.0, 40.0, 127.0, 90.0]]),
        torch.tensor([0, 1]),
        torch.tensor([0.9, 0.8]),
        ["jessie", "james"],
        picture,
    )
    written = found.save(tmp_path)
    drawn = Image.open(written[0])
    assert min(drawn.size) >= 384 and drawn.size == (128 * 4, 96 * 4)
    pixels = np.asarray(drawn)
    # the first box runs off the left and bottom edges: its sides are drawn on those edges
    assert (pixels[200, 0] != 255).any() and (pixels[-1, 100] != 255).any()
    assert found.draw().size == (128, 96)  # drawing alone keeps the picture's size


def test_evaluate_on_your_own_pictures_with_masks(toon_cnn, toon_set, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    labels = {}
    for i in range(len(toon_set)):
        pixels = (toon_set.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / f"pic{i}.png")
        mask = toon_set.object_mask()[i].numpy().astype(np.uint8) * 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"pic{i}.png")
        labels[f"pic{i}"] = toon_set.classes[int(toon_set.labels[i])]
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    mine = read_mask_folder(tmp_path)
    assert mine.images.shape == toon_set.images.shape
    assert torch.equal(mine.object_mask(), toon_set.object_mask())
    assert [mine.classes[k] for k in mine.labels] == list(labels.values())
    ours = evaluate(toon_cnn, tmp_path, ["gradcam"], ["pointing_game", "energy_in_mask"])
    theirs = evaluate(toon_cnn, toon_set, ["gradcam"], ["pointing_game", "energy_in_mask"])
    for key, scores in theirs.scores.items():
        assert ours.scores[key].mean == pytest.approx(scores.mean, abs=1e-3)
    (tmp_path / "masks" / "pic0.png").unlink()
    with pytest.raises(FileNotFoundError, match="no mask for pic0.png"):
        read_mask_folder(tmp_path)


def test_cli_explain_with_a_scale_over_targets(tmp_path):
    picture = tmp_path / "toon.png"
    pixels = toons.generate(1, split="test", seed=3).pixels[0]
    Image.fromarray(pixels).save(picture)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            *("explain", "toon-cnn", str(picture), "-m", "gradcam", "--target", "jessie,james"),
            *("--scale", "targets", "--out", str(out)),
        ],
    )
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert "share one range over all pictures and target classes" in page
    for name in ("toon__gradcam__jessie.png", "toon__gradcam__james.png"):
        assert Image.open(out / name).height > pixels.shape[0] + 20  # with its colour bar
    bad = CliRunner().invoke(app, ["explain", "toon-cnn", str(picture), "--scale", "all"])
    assert bad.exit_code == 2 and "--scale own, pictures or targets" in bad.output
