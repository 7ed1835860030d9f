"""What the attribution methods share beyond their result and their table: the default layer,
batching under a memory budget (sized from the device: a CPU's cache, half a GPU's free memory),
random generators and slices."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from convlens.core.model import Model


def default_layer(model: Model) -> str:
    """The last layer with a spatial output, from the layer table: a layer called once, or
    one call of a reused module (``_swish#2``); see :func:`default_layer_choice`."""
    return default_layer_choice(model)[0]


def default_layer_choice(model: Model) -> tuple[str, str]:
    """The default layer of the layer-map methods and why it was chosen (a sentence, kept in
    ``Attribution.extras["layer_choice"]``)."""
    table = model.layers()
    row = table.last_spatial()
    return str(row.name), table.why_default(row)


def bytes_per_image(model: Model) -> int:
    """A rough bound on the memory one image needs in a forward pass: the sum of every leaf
    layer's output (bytes), from the layer table. Used to size batches of perturbed copies."""
    table = model.layers()
    element = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 4
    total = sum(
        math.prod(r.output_shape[1:])
        for r in table
        if r.output_shape is not None and r.kind != "block"
    )
    return max(1, total * element)


DEFAULT_MEMORY_BUDGET_MB = 1024  # on the CPU, where the working set should stay in cache
CUDA_BUDGET_SHARE = 0.5  # on a GPU, this share of the device's free memory


def memory_budget_bytes(model: Model, memory_budget_mb: float | None) -> float:
    """The memory one batch of copies may take: ``memory_budget_mb`` when given; on a CUDA
    device, half its free memory (batches sized for the GPU, not for a CPU's cache); else
    :data:`DEFAULT_MEMORY_BUDGET_MB`."""
    if memory_budget_mb is not None:
        return float(memory_budget_mb) * 2**20
    device = model.device
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return free * CUDA_BUDGET_SHARE
    return DEFAULT_MEMORY_BUDGET_MB * 2**20


def batch_size_for(
    model: Model, memory_budget_mb: float | None, *, factor: float = 1.0, cap: int | None = None
) -> int:
    """How many images fit one forward pass under the memory budget (``factor`` > 1 when a
    backward pass also keeps activations); at most ``cap`` (256 on the CPU, 4096 on a GPU)."""
    if cap is None:
        cap = 4096 if model.device.type == "cuda" else 256
    budget = memory_budget_bytes(model, memory_budget_mb)
    return int(max(1, min(cap, budget // (bytes_per_image(model) * factor))))


def checked_batch_size(
    model: Model, batch_size: int | None, memory_budget_mb: float | None, *, factor: float = 1.0
) -> int:
    """``batch_size`` if given (checked), else what fits ``memory_budget_mb``."""
    if batch_size is None:
        return batch_size_for(model, memory_budget_mb, factor=factor)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"expected batch_size >= 1 (copies per forward pass), got {batch_size!r}")
    return batch_size


def make_generator(
    seed: int | None, generator: torch.Generator | None, device: torch.device | str = "cpu"
) -> tuple[torch.Generator, int | str]:
    """The generator a random method draws from (``seed`` 0 when neither is given), and what
    to record in its settings."""
    if seed is not None and generator is not None:
        raise ValueError("expected a seed or a generator, got both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"expected a torch.Generator, got {type(generator).__name__}")
        return generator, "generator"
    seed = 0 if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"expected an int seed, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed), seed


def no_layer(method: str, layer: Any) -> None:
    """Input-space methods take no layer."""
    if layer is not None:
        raise ValueError(f"{method} explains the input and takes no layer, got layer={layer!r}")


def chunks(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(total)``."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))
