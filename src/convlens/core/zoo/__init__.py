"""The zoo: named models, classifiers and detectors in one table (:data:`registry.ZOO`; each
module here registers its entries when this package is imported), and the catalogues
(:mod:`.catalogue`): every torchvision and timm model by name, weights from torch's hub cache.
"""

from convlens.core.zoo import catalogue, faces, imagenet, toons  # noqa: F401  (registration)
from convlens.core.zoo.parts import CatalogueEntry, ModelParts
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
from convlens.core.zoo.weights import (
    DOWNLOAD_ENV,
    OFFLINE_ENV,
    OfflineError,
    WeightsFile,
    is_offline,
    wants_download,
)

__all__ = [
    "DOWNLOAD_ENV",
    "OFFLINE_ENV",
    "ZOO",
    "CatalogueEntry",
    "MissingWeightsError",
    "ModelParts",
    "OfflineError",
    "WeightsFile",
    "ZooEntry",
    "catalogue",
    "entries",
    "find_weights",
    "imagenet_classes",
    "is_offline",
    "load",
    "names",
    "register",
    "shipped_record",
    "wants_download",
]
