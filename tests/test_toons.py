"""The toons generator: determinism, exact masks and boxes, balance, and what each variant
claims (the spurious correlation, the dyed and hidden hair, crowds)."""

from __future__ import annotations

import colorsys
import json

import numpy as np
import pytest
from PIL import Image

from convlens.core.naming import UnknownNameError
from convlens.data import toons

HAIR = toons.PARTS["hair"]


def hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255))[0]


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 1
    return min(d, 1 - d)


@pytest.fixture(scope="module")
def clean():
    return toons.generate(60, split="test", seed=3)


def test_same_seed_same_pictures_other_seed_other_pictures(clean):
    again = toons.generate(60, split="test", seed=3)
    np.testing.assert_array_equal(again.pixels, clean.pixels)
    np.testing.assert_array_equal(again.parts, clean.parts)
    assert again.boxes == clean.boxes
    other = toons.generate(60, split="test", seed=4)
    assert (other.pixels != clean.pixels).mean() > 0.5
    train = toons.generate(60, split="train", seed=3)
    assert (train.pixels != clean.pixels).mean() > 0.5


def test_any_window_of_a_stream_is_the_same_images(clean):
    window = toons.generate(20, split="test", seed=3, start=30)
    np.testing.assert_array_equal(window.pixels, clean.pixels[30:50])
    np.testing.assert_array_equal(window.labels, clean.labels[30:50])
    assert window.names == clean.names[30:50]


def test_classes_are_balanced():
    labels = toons.generate(100, seed=1).labels
    counts = np.bincount(labels, minlength=3)
    assert counts.max() - counts.min() <= 1
    assert counts.sum() == 100


def test_hair_mask_is_exactly_the_hair_coloured_pixels(clean):
    collisions = 0
    for i in range(len(clean)):
        rgb = clean.meta[i]["characters"][0]["hair_rgb"]
        painted = (clean.pixels[i] == np.array(rgb, np.uint8)).all(-1)
        hair = clean.parts[i] == HAIR
        assert hair.sum() > 20, "every clean toon shows its hair"
        assert painted[hair].all(), "every hair pixel has the hair colour"
        collisions += int((painted & ~hair).sum())  # the same colour drawn elsewhere by chance
    assert collisions <= 0.001 * clean.parts.size


def test_masks_partition_the_image_and_character_parts_match_instances(clean):
    assert set(np.unique(clean.parts)) <= set(toons.PARTS.values())
    character = np.isin(clean.parts, [toons.PARTS[p] for p in toons.CHARACTER_PARTS])
    np.testing.assert_array_equal(character, clean.instances > 0)
    np.testing.assert_array_equal(clean.object_mask().numpy(), character)
    hair_face = clean.mask("hair", "face").numpy()
    np.testing.assert_array_equal(hair_face, np.isin(clean.parts, [HAIR, toons.PARTS["face"]]))
    with pytest.raises(UnknownNameError, match="hiar"):
        clean.mask("hiar")


def test_boxes_are_the_visible_extent_of_each_character(clean):
    for i in range(len(clean)):
        ((label, x0, y0, x1, y1),) = clean.boxes[i]
        assert label == clean.labels[i]
        ys, xs = np.nonzero(clean.instances[i] == 1)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_hair_colour_is_the_class_colour_in_clean_and_rotated_in_dyed(clean):
    for i in range(len(clean)):
        cls = toons.CLASSES[clean.labels[i]]
        got = hue(clean.meta[i]["characters"][0]["hair_rgb"])
        assert hue_distance(got, toons.HAIR_HUE[cls]) < 0.04
    dyed = toons.generate(30, variant="dyed", seed=3)
    for i in range(len(dyed)):
        cls = toons.CLASSES[dyed.labels[i]]
        worn = toons.DYED[cls]
        got = hue(dyed.meta[i]["characters"][0]["hair_rgb"])
        assert hue_distance(got, toons.HAIR_HUE[worn]) < 0.04


def test_hat_hides_all_hair():
    hats = toons.generate(30, variant="hat", seed=3)
    assert (hats.parts == HAIR).sum() == 0
    assert all((hats.parts[i] == toons.PARTS["hat"]).sum() > 20 for i in range(len(hats)))


def test_crowd_frames_hold_two_or_three_characters_each_with_a_box():
    crowd = toons.generate(40, variant="crowd", seed=3)
    counts = [len(b) for b in crowd.boxes]
    assert set(counts) <= {2, 3} and 2 in counts and 3 in counts
    for i in range(len(crowd)):
        assert crowd.instances[i].max() == len(crowd.boxes[i])
        for k, (_, x0, y0, x1, y1) in enumerate(crowd.boxes[i], start=1):
            ys, xs = np.nonzero(crowd.instances[i] == k)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def band_agreement(ts) -> float:
    """Share of images whose background brightness is nearest their class's band."""
    centres = np.array([toons.SPURIOUS_BRIGHTNESS[c] for c in toons.CLASSES])
    brightness = np.array([m["brightness"] for m in ts.meta])
    nearest = np.abs(brightness[:, None] - centres[None]).argmin(1)
    return float((nearest == ts.labels).mean())


def test_spurious_brightness_agrees_with_class_in_training_and_not_in_test():
    train = toons.generate(600, variant="spurious", split="train", seed=0)
    assert 0.92 <= band_agreement(train) <= 0.98
    test = toons.generate(600, variant="spurious", split="test", seed=0)
    assert abs(band_agreement(test) - 1 / 3) < 0.06
    brightness = np.array([m["brightness"] for m in test.meta])
    for k in range(3):  # no correlation between brightness and any class indicator
        r = np.corrcoef(brightness, test.labels == k)[0, 1]
        assert abs(r) < 0.1
    clean = toons.generate(600, variant="clean", split="train", seed=0)
    assert abs(band_agreement(clean) - 1 / 3) < 0.06


def test_concepts_have_their_colour_and_random_sets_differ():
    red = toons.concept_images("red", 12, seed=0, size=48)
    blue = toons.concept_images("blue", 12, seed=0, size=48)
    for pics, centre in ((red, 0.0), (blue, 0.62)):
        mean = pics.reshape(-1, 3).mean(0)
        assert hue_distance(hue(mean), centre) < 0.05
    white = toons.concept_images("white", 6, seed=0, size=48)
    black = toons.concept_images("black", 6, seed=0, size=48)
    assert white.mean() > 200 and black.mean() < 40
    r0 = toons.concept_images("random_0", 6, seed=0, size=48)
    r1 = toons.concept_images("random_1", 6, seed=0, size=48)
    assert (r0 != r1).mean() > 0.5
    np.testing.assert_array_equal(r0, toons.concept_images("random_0", 6, seed=0, size=48))
    with pytest.raises(UnknownNameError, match="purple"):
        toons.concept_images("purple", 2)


def test_folder_round_trip_and_layout(tmp_path):
    root = toons.write(tmp_path / "set", n=40, seed=5, size=64)
    index = json.loads((root / "index.json").read_text())
    assert index["format"] == "convlens-toons" and index["splits"] == {
        "train": 28,
        "val": 6,
        "test": 6,
    }
    for cls in toons.CLASSES:
        assert any((root / "train" / cls).iterdir())
    back = toons.read(root, "val")
    ref = toons.generate(6, split="val", seed=5, size=64)
    np.testing.assert_array_equal(back.pixels, ref.pixels)
    np.testing.assert_array_equal(back.parts, ref.parts)
    np.testing.assert_array_equal(back.instances, ref.instances)
    np.testing.assert_array_equal(back.labels, ref.labels)
    assert back.boxes == ref.boxes
    with Image.open(root / index["items"][0]["mask"]) as mask:
        assert mask.mode == "L"


def test_folder_writes_refuse_to_clobber_and_leave_nothing_half_written(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(toons.ToonsError, match="not empty"):
        toons.write(mine, n=6, size=32)
    with pytest.raises(toons.ToonsError, match="not a folder convlens wrote"):
        toons.write(mine, n=6, size=32, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"

    def boom(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        toons.write(tmp_path / "new", n=6, size=32, progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_bad_settings_and_bad_folders_are_explained(tmp_path):
    with pytest.raises(UnknownNameError, match="spurius"):
        toons.generate(4, variant="spurius")
    with pytest.raises(toons.ToonsError, match="size"):
        toons.generate(4, size=8)
    with pytest.raises(toons.ToonsError, match="n >= 1"):
        toons.generate(0)
    with pytest.raises(toons.ToonsError, match="index.json"):
        toons.read(tmp_path)
    root = toons.write(tmp_path / "set", n=10, size=32, splits=(1, 0, 0))
    with pytest.raises(toons.ToonsError, match="no images in split 'test'"):
        toons.read(root, "test")
    index = json.loads((root / "index.json").read_text())
    index["items"][0]["mask"] = "../../etc/passwd"
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(toons.ToonsError, match="outside its folder"):
        toons.read(root, "train")


def test_concept_folders(tmp_path):
    root = toons.write_concepts(tmp_path / "c", n=3, randoms=2, size=32)
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert names == sorted([*toons.CONCEPTS, "random_0", "random_1"])
    assert len(list((root / "red").glob("*.png"))) == 3


def test_cli_makes_a_set_and_concepts(tmp_path):
    from typer.testing import CliRunner

    from convlens.apps.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["toons", "make", "--out", str(tmp_path / "t"), "--n", "12", "--size", "48"]
    )
    assert result.exit_code == 0, result.output
    assert "12 clean toons (train 10, val 1, test 1)" in result.output
    assert len(toons.read(tmp_path / "t", "train")) == 10
    again = runner.invoke(app, ["toons", "make", "--out", str(tmp_path / "t"), "--n", "12"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = runner.invoke(app, ["toons", "make", "--out", str(tmp_path / "u"), "--splits", "a,b"])
    assert bad.exit_code == 2 and "--splits" in bad.output
    result = runner.invoke(
        app, ["toons", "concepts", "--out", str(tmp_path / "c"), "--n", "2", "--randoms", "1"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "random_0").is_dir()
