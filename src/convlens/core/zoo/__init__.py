"""The zoo: named models that load offline, classifiers and detectors in one table
(:data:`registry.ZOO`). Each module here registers its entries when this package is imported."""

from convlens.core.zoo import faces, imagenet, toons  # noqa: F401  (registration)
from convlens.core.zoo.registry import (
    ZOO,
    MissingWeightsError,
    ZooEntry,
    entries,
    find_weights,
    imagenet_classes,
    load,
    names,
    register,
)
from convlens.core.zoo.toons import shipped_record

__all__ = [
    "ZOO",
    "MissingWeightsError",
    "ZooEntry",
    "entries",
    "find_weights",
    "imagenet_classes",
    "load",
    "names",
    "register",
    "shipped_record",
]
