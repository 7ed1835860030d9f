"""Plugin files: a ``.py`` file that defines the model with its own hooks.

The file defines ``model`` (a :class:`~convlens.core.model.Model`, a
:class:`~convlens.core.detector.Detector` or an ``nn.Module``), or a function ``model()``
returning one, or exactly one Model at top level. Plugin files are code: load only your own.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from torch import nn

from convlens.core.detector import Detector
from convlens.core.errors import ModelLoadError
from convlens.core.formats.registry import LoadRequest, register_format
from convlens.core.model import Model


@register_format(
    "plugin",
    suffixes=(".py",),
    content=("python", "unknown", "onnx"),  # source text; imported, not parsed here
    description="a Python file that defines `model` (a convlens Model or Detector, or a module)",
)
def read_plugin(path: Path, request: LoadRequest) -> Any:
    """Run a plugin file and take the model it defines."""
    spec = importlib.util.spec_from_file_location(f"convlens_plugin_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import plugin {path}")
    namespace = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(namespace)
    except Exception as err:
        raise ModelLoadError(
            f"plugin {path.name} raised {type(err).__name__} while loading: {err}"
        ) from err
    found: Any = getattr(namespace, "model", None)
    if callable(found) and not isinstance(found, (Model, nn.Module, Detector)):
        found = found()
    if found is None:
        models = [v for v in vars(namespace).values() if isinstance(v, Model)]
        if len(models) != 1:
            raise ModelLoadError(
                f"plugin {path.name} must define `model` (a convlens.Model, an nn.Module, or a "
                f"function returning one); found {len(models)} Model objects"
            )
        found = models[0]
    if not isinstance(found, (Model, Detector, nn.Module)):
        raise ModelLoadError(
            f"plugin {path.name}: `model` is a {type(found).__name__}, expected a convlens.Model "
            "or an nn.Module"
        )
    named = isinstance(found, Detector) or (
        isinstance(found, Model) and found.name != type(found.module).__name__
    )
    if named and request.options.get("name") == path.stem:
        request.options.pop("name")  # the plugin named its model
    return found
