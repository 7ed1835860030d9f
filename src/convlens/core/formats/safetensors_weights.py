"""``.safetensors`` weights (no code, no pickle): the user's ``factory=`` builds the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convlens.core import architectures
from convlens.core.errors import ModelLoadError
from convlens.core.formats.registry import LoadRequest, register_format, with_factory


@register_format(
    "safetensors",
    suffixes=(".safetensors",),
    content=("safetensors",),
    description="safetensors weights + factory= (needs `pip install safetensors`)",
)
def read_safetensors(path: Path, request: LoadRequest) -> Any:
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise ModelLoadError("reading .safetensors needs `pip install safetensors`") from err
    return with_factory(path, load_file(str(path)), request, architectures.resolve_factory)
