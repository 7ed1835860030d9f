"""Foundation overheads: capturing activations and building the layer table, against a plain
forward pass of the same network in the same process (CPU, default thread count).

1. MobileNetV2 (real weights), one 224x224 picture: plain forward vs ``cl.activations`` of
   every layer (target <= 1.3x) and of a handful of layers.
2. The same at batch 8: plain forward vs capturing every layer.
3. ResNet-50 (random init): plain forward of a zero image vs ``cl.layer_table`` on a fresh
   ``cl.Model`` each time, so nothing is cached (target < 2x).
"""

from __future__ import annotations

import torch
import torchvision
from _timing import Row, compare, interleaved

import convlens as cl

CAPTURE_ALL_TARGET = 1.3
LAYER_TABLE_TARGET = 2.0
FEW_LAYERS = ["features.2", "features.6", "features.10", "features.14", "features.18"]


def _plain(module: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        module(x)


def _keep_references(module: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The floor for returning every layer's output: a forward pass that only keeps a
    reference to each 4-D output (no copies, no checks, wrong where a later in-place operation
    overwrites one). What it costs beyond a plain forward is the memory of the results, which
    can no longer be reused within the pass."""
    kept: dict[str, torch.Tensor] = {}

    def keep(name: str, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            kept[name] = output

    handles = [
        m.register_forward_hook(lambda _m, _i, o, n=n: keep(n, o))
        for n, m in module.named_modules()
        if n
    ]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for handle in handles:
            handle.remove()
    return kept


def _capture(model: cl.Model, x: torch.Tensor, label: str, repeats: int, *, few: bool) -> list[Row]:
    plain, everything = f"{label} plain forward", f"{label} capture all layers"
    variants = {
        plain: lambda: _plain(model.module, x),
        f"{label} floor: keep references only": lambda: _keep_references(model.module, x),
        everything: lambda: cl.activations(model, x),
    }
    if few:
        variants[f"{label} capture {len(FEW_LAYERS)} layers"] = lambda: cl.activations(
            model, x, layers=FEW_LAYERS
        )
    timings = interleaved(variants, repeats=repeats)
    return compare("foundation", timings, plain, {everything: (CAPTURE_ALL_TARGET, False)})


def run(repeats: int = 25) -> list[Row]:
    """Every measurement of this file, as table rows (times are medians of ``repeats``)."""
    model = cl.load("mobilenet_v2")
    x1 = model.prepare(cl.sample("chelsea")).inputs  # (1, 3, 224, 224), prepared once
    photos = list(cl.samples().values())
    x8 = model.prepare([photos[i % len(photos)] for i in range(8)]).inputs
    rows = _capture(model, x1, "mobilenet_v2 b1", repeats, few=True)
    rows += _capture(model, x8, "mobilenet_v2 b8", repeats, few=False)

    resnet = torchvision.models.resnet50().eval()  # random init: no weights are downloaded
    zeros = torch.zeros(1, 3, 224, 224)
    variants = {
        "resnet50 plain forward": lambda: _plain(resnet, zeros),
        "resnet50 layer_table": lambda: cl.layer_table(cl.Model(resnet)),
    }
    timings = interleaved(variants, repeats=repeats)
    rows += compare(
        "foundation",
        timings,
        "resnet50 plain forward",
        {"resnet50 layer_table": (LAYER_TABLE_TARGET, True)},
    )
    return rows
