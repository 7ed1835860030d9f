"""convlens: see what a convolutional network sees, and why it decides.

>>> import convlens as cl
>>> model = cl.load("mobilenet_v2")
>>> model.predict(cl.sample("chelsea"))           # doctest: +SKIP
"""

from convlens.activations import Activations, activations
from convlens.images import ImageError, load_image, load_images, sample, samples
from convlens.layers import LayerTable, layer_table
from convlens.loading import ModelLoadError, PickleRefusedError, load
from convlens.model import Batch, Model, Prediction, Preprocessing
from convlens.naming import UnknownNameError, parse_layer

__version__ = "0.1.0"

__all__ = [
    "Activations",
    "Batch",
    "ImageError",
    "LayerTable",
    "Model",
    "ModelLoadError",
    "PickleRefusedError",
    "Prediction",
    "Preprocessing",
    "UnknownNameError",
    "activations",
    "layer_table",
    "load",
    "load_image",
    "load_images",
    "parse_layer",
    "sample",
    "samples",
]
