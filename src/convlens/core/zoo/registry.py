"""The zoo's table: named models that load offline, classifiers, detectors and segmenters alike.

Weights are never downloaded. Each entry finds its file in torch's hub cache or in a package
that ships it, checks the file's hash, and otherwise says what to install. Entries register
themselves in the modules of this package (:mod:`.imagenet`, :mod:`.toons`, :mod:`.faces`).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from convlens.core.registry import Registry


class MissingWeightsError(FileNotFoundError):
    """A zoo model whose weights are not on this machine; the message says what to install."""


@dataclass(frozen=True)
class ZooEntry:
    """A named model that loads offline: ``task`` is ``classify`` (``build`` returns a
    :class:`~convlens.core.model.Model`), ``detect`` (a
    :class:`~convlens.core.detector.Detector`) or ``segment`` (a
    :class:`~convlens.core.segmenter.Segmenter`)."""

    name: str
    description: str
    build: Callable[[], Any]
    task: str = "classify"
    install: str | None = None  # what to install when the build needs a missing package


ZOO: Registry[ZooEntry] = Registry("zoo model")
TASKS = ("classify", "detect", "segment")


def register(
    name: str, description: str, *, task: str = "classify", install: str | None = None
) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Add a zoo entry: ``@register("name", "what it is", task=...)`` on a function returning
    the model's handle."""
    if task not in TASKS:
        raise ValueError(f"expected a task in {TASKS}, got {task!r}")

    def add(build: Callable[[], Any]) -> Callable[[], Any]:
        ZOO.add(name, ZooEntry(name, description, build, task, install))
        return build

    return add


def names(task: str | None = None) -> list[str]:
    """Zoo names, of one task or all."""
    return [n for n, e in ZOO.items() if task is None or e.task == task]


def entries(task: str | None = None) -> list[ZooEntry]:
    return [ZOO.entries[n] for n in names(task)]


def load(name: str) -> Any:
    """A fresh handle for zoo entry ``name`` (weights read from disk each call); a missing
    package is named with what to install."""
    entry = ZOO.get(name)
    try:
        return entry.build()
    except ImportError as err:
        if entry.install is None:
            raise
        raise ImportError(
            f"{name} needs a package that is missing: {entry.install} ({err})"
        ) from None


@cache
def imagenet_classes() -> tuple[tuple[str, ...], ...]:
    """The 1000 ImageNet-1k classes in index order, each as (display name, *synonyms)."""
    text = resources.files("convlens").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    rows = [line.split("\t", 1)[1] for line in text.splitlines() if not line.startswith("#")]
    return tuple(tuple(row.split(" | ")) for row in rows)


def verified(path: Path, sha256_prefix: str) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(sha256_prefix):
        raise ValueError(
            f"{path} is not the expected weights file (sha256 {digest[:12]}..., expected "
            f"{sha256_prefix}...); it may be truncated or replaced"
        )
    return path


def find_weights(filename: str, package_paths: list[tuple[str, str]], install: str) -> Path:
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
