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
    "Activations": "techniques.activations",
    "activations": "techniques.activations",
    "Attribution": "techniques.attribution",
    "explain": "techniques.attribution",
    "methods": "techniques.attribution",
    "shared_scale": "techniques.attribution",
    "evaluate": "workflows.evaluation",
    "audit": "workflows.audit",
    "sanity_check": "workflows.sanity",
    "ImageError": "core.images",
    "load_image": "core.images",
    "load_images": "core.images",
    "sample": "core.images",
    "samples": "core.images",
    "LayerTable": "core.layers",
    "layer_table": "core.layers",
    "ModelLoadError": "core.errors",
    "PickleRefusedError": "core.errors",
    "load": "core.loading",
    "Batch": "core.model",
    "Model": "core.model",
    "Prediction": "core.model",
    "Preprocessing": "core.model",
    "UnknownNameError": "core.naming",
    "parse_layer": "core.naming",
    "train": "workflows.training",
    "FeatureVis": "techniques.visualize",
    "featurevis": "techniques.visualize",
    "objectives": "techniques.visualize",
    "filter_weights": "techniques.filters",
    "FilterView": "techniques.filters",
    "tcav": "techniques.concepts",
    "TCAVResult": "techniques.concepts",
    "Detector": "core.detector",
    "Detections": "core.detector",
    "detect": "core.tasks",
    "Segmenter": "core.segmenter",
    "Segmentation": "core.segmenter",
    "segment": "core.tasks",
    "drise": "techniques.attribution.detection",
}
# modules reachable as ``cl.<name>`` (``cl.metrics.pointing_game``, ``cl.render.colormap``)
_MODULES = {
    "attribution": "techniques.attribution",
    "cam": "techniques.attribution.cam",
    "gradients": "techniques.attribution.gradients",
    "occlusion": "techniques.attribution.occlusion",
    "capture": "techniques.activations",
    "hooks": "core.hooks",
    "images": "core.images",
    "layers": "core.layers",
    "loading": "core.loading",
    "model": "core.model",
    "naming": "core.naming",
    "render": "core.render",
    "report": "core.report",
    "zoo": "core.zoo",
    "architectures": "core.architectures",
    "formats": "core.formats",
    "demo": "apps.demo",
    "metrics": "workflows.metrics",
    "sanity": "workflows.sanity",
    "visualize": "techniques.visualize",
    "filters": "techniques.filters",
    "concepts": "techniques.concepts",
    "detection": "core.detector",
    "dataset": "workflows.datasets",
    "segmenter": "core.segmenter",
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
    "Segmentation",
    "Segmenter",
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
    "segment",
    "shared_scale",
    "tcav",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"convlens.{_WHERE[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"convlens.{_MODULES[name]}")
    else:
        raise AttributeError(f"module 'convlens' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_MODULES, "__version__"])


if TYPE_CHECKING:
    from convlens.core.detector import Detections, Detector
    from convlens.core.errors import ModelLoadError, PickleRefusedError
    from convlens.core.images import ImageError, load_image, load_images, sample, samples
    from convlens.core.layers import LayerTable, layer_table
    from convlens.core.loading import load
    from convlens.core.model import Batch, Model, Prediction, Preprocessing
    from convlens.core.naming import UnknownNameError, parse_layer
    from convlens.core.segmenter import Segmentation, Segmenter
    from convlens.core.tasks import detect, segment
    from convlens.techniques.activations import Activations, activations
    from convlens.techniques.attribution import Attribution, explain, methods
    from convlens.techniques.attribution.detection import drise
    from convlens.techniques.concepts import TCAVResult, tcav
    from convlens.techniques.filters import FilterView, filter_weights
    from convlens.techniques.visualize import FeatureVis, featurevis, objectives
    from convlens.workflows.audit import audit
    from convlens.workflows.evaluation import evaluate
    from convlens.workflows.sanity import sanity_check
    from convlens.workflows.training import train
