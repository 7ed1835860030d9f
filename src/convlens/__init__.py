"""convlens: see what a convolutional network sees, and why it decides.

The public names below are imported on first use, so ``import convlens`` (and the CLI's
``--help``) does not pay for importing torch.

>>> import convlens as cl
>>> model = cl.load("mobilenet_v2")               # doctest: +SKIP
>>> model.predict(cl.sample("chelsea"))           # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "Activations": "capture",
    "activations": "capture",
    "Attribution": "attribution",
    "explain": "attribution",
    "evaluate": "evaluation",
    "audit": "evaluation",
    "sanity_check": "sanity",
    "methods": "attribution",
    "ImageError": "images",
    "load_image": "images",
    "load_images": "images",
    "sample": "images",
    "samples": "images",
    "LayerTable": "layers",
    "layer_table": "layers",
    "ModelLoadError": "loading",
    "PickleRefusedError": "loading",
    "load": "loading",
    "Batch": "model",
    "Model": "model",
    "Prediction": "model",
    "Preprocessing": "model",
    "UnknownNameError": "naming",
    "parse_layer": "naming",
    "train": "training",
    "FeatureVis": "visualize",
    "featurevis": "visualize",
    "objectives": "visualize",
    "filter_weights": "filters",
    "FilterView": "filters",
    "tcav": "concepts",
    "TCAVResult": "concepts",
    "Detector": "detection",
    "Detections": "detection",
    "detect": "detection",
    "drise": "detection",
}
_MODULES = {
    "attribution",
    "cam",
    "gradients",
    "occlusion",
    "capture",
    "hooks",
    "images",
    "layers",
    "loading",
    "model",
    "naming",
    "render",
    "report",
    "zoo",
    "demo",
    "interop",
    "architectures",
    "metrics",
    "sanity",
    "visualize",
    "filters",
    "concepts",
    "detection",
}

__all__ = [
    "Activations",
    "Attribution",
    "Batch",
    "Detections",
    "Detector",
    "FeatureVis",
    "FilterView",
    "ImageError",
    "LayerTable",
    "Model",
    "ModelLoadError",
    "PickleRefusedError",
    "Prediction",
    "Preprocessing",
    "TCAVResult",
    "UnknownNameError",
    "activations",
    "audit",
    "detect",
    "drise",
    "evaluate",
    "explain",
    "featurevis",
    "filter_weights",
    "layer_table",
    "load",
    "load_image",
    "load_images",
    "methods",
    "objectives",
    "parse_layer",
    "sample",
    "samples",
    "sanity_check",
    "tcav",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"convlens.{_WHERE[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"convlens.{name}")
    else:
        raise AttributeError(f"module 'convlens' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_MODULES, "__version__"])


if TYPE_CHECKING:
    from convlens.attribution import Attribution, explain, methods
    from convlens.capture import Activations, activations
    from convlens.concepts import TCAVResult, tcav
    from convlens.detection import Detections, Detector, detect, drise
    from convlens.evaluation import audit, evaluate
    from convlens.filters import FilterView, filter_weights
    from convlens.images import ImageError, load_image, load_images, sample, samples
    from convlens.layers import LayerTable, layer_table
    from convlens.loading import ModelLoadError, PickleRefusedError, load
    from convlens.model import Batch, Model, Prediction, Preprocessing
    from convlens.naming import UnknownNameError, parse_layer
    from convlens.sanity import sanity_check
    from convlens.training import train
    from convlens.visualize import FeatureVis, featurevis, objectives
