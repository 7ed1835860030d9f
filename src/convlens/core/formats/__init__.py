"""Model file formats, one module each, registered in :data:`registry.FORMATS` on import.

A new format is a module here with a reader decorated by ``@register_format(...)`` (suffixes,
the content it must have, a description) and its import line below.
"""

from convlens.core.formats import (  # noqa: F401  (each module registers its format)
    checkpoint,
    keras_model,
    npz_weights,
    onnx_graph,
    plugin,
    safetensors_weights,
)
from convlens.core.formats.registry import FORMATS, LoadRequest, read, sniff, suffixes

__all__ = ["FORMATS", "LoadRequest", "read", "sniff", "suffixes"]
