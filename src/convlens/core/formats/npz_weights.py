"""NumPy ``.npz`` weights: one array per ``state_dict`` key (as JAX, Keras or NumPy code
exports them), read with ``allow_pickle=False``; the user's ``factory=`` builds the network."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.core import architectures
from convlens.core.errors import ModelLoadError
from convlens.core.formats.registry import LoadRequest, register_format, with_factory


@register_format(
    "npz",
    suffixes=(".npz",),
    content=("zip",),
    description="NumPy .npz weights (one array per state_dict key) + factory=",
)
def read_npz(path: Path, request: LoadRequest) -> Any:
    try:
        with np.load(path, allow_pickle=False) as archive:
            state = {key: torch.from_numpy(np.array(archive[key])) for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ModelLoadError(
            f"{path.name} is not a NumPy .npz of plain arrays (object arrays are refused: they "
            f"need pickle): {err}"
        ) from None
    return with_factory(path, state, request, architectures.resolve_factory)
