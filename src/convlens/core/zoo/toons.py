"""The toon models that ship with convlens (trained by ``convlens train``; the commands, seeds and
accuracies are recorded beside the weights in ``data/models/*.json``): two classifiers, a
detector and a segmenter."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from convlens.core import segmenter
from convlens.core.architectures import centernet
from convlens.core.detector import Detector
from convlens.core.formats import checkpoint
from convlens.core.formats.registry import LoadRequest
from convlens.core.model import Model
from convlens.core.zoo.registry import MissingWeightsError, register


def _shipped(name: str) -> Model:
    """A model trained by ``convlens train`` and committed under ``data/models/``; its
    training command, seed and measured accuracy are in ``data/models/<name>.json``."""
    folder = resources.files("convlens").joinpath("data", "models")
    path = Path(str(folder.joinpath(f"{name}.pt")))
    if not path.is_file():
        raise MissingWeightsError(f"{name}'s weights ({path}) are missing from this install")
    model = checkpoint.from_convlens_checkpoint(
        path, checkpoint.read_checkpoint(path), LoadRequest(options={"name": name})
    )
    model.name = name
    return model


def _recorded(name: str) -> Path:
    """``data/models/<name>.pt``, checked against the sha256 its record holds."""
    folder = resources.files("convlens").joinpath("data", "models")
    path = Path(str(folder.joinpath(f"{name}.pt")))
    if not path.is_file():
        raise MissingWeightsError(f"{name}'s weights ({path}) are missing from this install")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != shipped_record(name)["sha256"]:
        raise ValueError(f"{path} does not match its record (sha256 {digest[:12]}...)")
    return path


def shipped_record(name: str) -> dict:
    """What ``data/models/<name>.json`` records: the command and seed that trained the
    shipped model, and the accuracy it reached on a freshly generated test set."""
    import json

    text = resources.files("convlens").joinpath("data", "models", f"{name}.json").read_text("utf-8")
    return json.loads(text)


@register(
    "toon-cnn",
    "the explorer's small CNN trained on clean toons (jessie, james, cassidy); ships with convlens",
)
def toon_cnn() -> Model:
    return _shipped("toon-cnn")


@register(
    "toon-cnn-spurious",
    "the same CNN trained on spurious toons (background brightness follows the class); "
    "ships with convlens",
)
def toon_cnn_spurious() -> Model:
    return _shipped("toon-cnn-spurious")


@register(
    "toon-detector",
    "CenterNet on crowd toons, trained by tools/make_toon_detector.py (shipped)",
    task="detect",
)
def toon_detector() -> Detector:
    module, classes = centernet.load(_recorded("toon-detector"))
    return Detector(
        module,
        classes,
        name="toon-detector",
        score_threshold=0.3,
        to_input=lambda x: x,
        layer="backbone",
        # trained at 128 x 128: pictures of another size are resized to it
        input_size=tuple(shipped_record("toon-detector")["training"]["data"]["size"]),
    )


@register(
    "toon-segmenter",
    "a small encoder-decoder labelling hair, face and body of toons, trained by "
    "tools/make_toon_segmenter.py (shipped)",
    task="segment",
)
def toon_segmenter() -> segmenter.Segmenter:
    path = _recorded("toon-segmenter")
    found = segmenter.load(path)
    found.name = "toon-segmenter"
    return found
