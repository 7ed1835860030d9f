"""Two small helpers every layer uses: safe file names and JSON-ready values."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def safe_filename(name: str) -> str:
    """``name`` with every character but letters, digits and ``._-+`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "._-+" else "_" for c in str(name))


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON: small tensors and arrays as lists (large ones described),
    NumPy scalars as numbers, NaN and infinities as ``None``, tuples as lists, anything else
    as its ``repr``."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.size == 0 if isinstance(value, np.ndarray) else value.numel() == 0:
            return []
        count = value.size if isinstance(value, np.ndarray) else value.numel()
        return jsonable(value.tolist()) if count <= 16 else f"tensor{tuple(value.shape)}"
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return repr(value)
