"""The shipped toon models against the ground truth the toons give: they still reach the
accuracy recorded next to their weights, Grad-CAM points at the hair and face, the sanity
check tells a real explanation from an edge detector, and the audit tells the model that
looks at the characters from the one that learned the background."""

from __future__ import annotations

import pytest
import torch
from test_sanity import sobel_edges

import convlens as cl
from convlens.core import zoo
from convlens.data import toons


def accuracy(model: cl.Model, ts: toons.ToonSet) -> float:
    labels = torch.tensor([model.class_index(name) for name in ts.label_names])
    predicted = torch.cat([model.probabilities(b).argmax(1) for b in _chunks(ts)])
    return float((predicted == labels).double().mean())


def _chunks(ts: toons.ToonSet, size: int = 100):
    for start in range(0, len(ts), size):
        yield ts[start : start + size].pictures()


@pytest.fixture(scope="module")
def toon():
    return cl.load("toon-cnn")


@pytest.fixture(scope="module")
def spurious():
    return cl.load("toon-cnn-spurious")


@pytest.fixture(scope="module")
def fresh():
    """500 clean toons the models never saw (another seed than their training data)."""
    record = zoo.shipped_record("toon-cnn")["check"]
    return toons.generate(record["n"], split="test", seed=record["seed"])


def test_shipped_models_are_what_the_record_says():
    for name in ("toon-cnn", "toon-cnn-spurious"):
        record = zoo.shipped_record(name)
        assert record["command"][:2] == ["convlens", "train"]
        assert record["data_command"][:3] == ["convlens", "toons", "make"]
        model = cl.load(name)
        assert model.name == name and model.labels == list(toons.CLASSES)
        assert sum(p.numel() for p in model.module.parameters()) < 1_000_000


def test_toon_cnn_reaches_its_recorded_accuracy_on_fresh_toons(toon, fresh):
    record = zoo.shipped_record("toon-cnn")["check"]
    got = accuracy(toon, fresh)
    assert got >= 0.97
    assert got == pytest.approx(record["accuracy"], abs=1 / record["n"])


def test_spurious_model_is_fine_in_training_conditions_and_worse_without_the_shortcut(spurious):
    record = zoo.shipped_record("toon-cnn-spurious")["check"]
    correlated = toons.generate(record["n"], variant="spurious", split="val", seed=record["seed"])
    decorrelated = toons.generate(
        record["n"], variant="spurious", split="test", seed=record["seed"]
    )
    with_shortcut, without = accuracy(spurious, correlated), accuracy(spurious, decorrelated)
    assert with_shortcut == pytest.approx(record["accuracy_correlated"], abs=1 / record["n"])
    assert without == pytest.approx(record["accuracy"], abs=1 / record["n"])
    assert with_shortcut >= 0.9 and with_shortcut - without >= 0.15


# Zhang et al.'s pointing game counts a hit within 15 pixels of the mask on 224-pixel images;
# the same tolerance on our 128-pixel toons is 15 * 128 / 224 = 8.6 pixels.
TOLERANCE = 15 * 128 / 224


def test_gradcam_points_at_hair_and_face(toon, fresh):
    cams = cl.explain(toon, fresh.pictures(), "gradcam", target=fresh.label_names)
    hair_face = fresh.mask("hair", "face")
    hits = cl.metrics.pointing_game(cams, hair_face, tolerance=TOLERANCE)
    assert hits.mean >= 0.8
    assert cl.metrics.pointing_game(cams, fresh.object_mask()).mean >= 0.8  # no tolerance
    plus = cl.explain(toon, fresh.pictures(), "gradcam++", target=fresh.label_names)
    assert cl.metrics.pointing_game(plus, hair_face).mean >= 0.8  # no tolerance


@pytest.mark.slow
def test_every_registered_method_is_evaluated(toon, fresh):
    small = fresh[:12]
    result = cl.evaluate(
        toon,
        small,
        cl.methods(),
        ["pointing_game", "energy_in_mask"],
        parts=["hair", "face"],
        options={"rise": {"masks": 500}},
    )
    rows = result.to_dict()["results"]
    assert {r["method"] for r in rows} == set(cl.methods())
    assert len(rows) == 2 * len(cl.methods())
    assert all(0 <= r["mean"] <= 1 for r in rows)  # every method gave a number


def test_sanity_check_flags_an_edge_detector_and_passes_gradcam(toon, fresh):
    images = fresh[:6].pictures()
    assert cl.sanity_check(toon, images, sobel_edges).flagged
    assert not cl.sanity_check(toon, images, "gradcam").flagged


@pytest.mark.slow
def test_audit_says_which_model_relies_on_the_background(toon, spurious):
    # each model on the test split of the data it was trained for
    clean = toons.generate(48, variant="clean", split="test", seed=11)
    spurious_test = toons.generate(48, variant="spurious", split="test", seed=11)
    honest = cl.audit(toon, clean, examples=0)  # Integrated Gradients
    cheat = cl.audit(spurious, spurious_test, examples=0)
    assert not honest.relies_on_background
    assert cheat.relies_on_background
    assert "background" in cheat.verdict
