"""The classifiers ``convlens train`` builds by name: ``explorer_cnn`` (system 1) and
``scratch_cnn`` (system 3); see :mod:`convlens.core.architectures.registry`."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from convlens.core.architectures.registry import register


def pair(size: Any, what: str) -> tuple[int, int]:
    values = (size, size) if isinstance(size, int) else tuple(size)
    if len(values) != 2 or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f"expected {what} as H or (H, W) of positive ints, got {size!r}")
    return int(values[0]), int(values[1])


def _check_common(num_classes: int, in_channels: int, dropout: float) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"expected num_classes >= 2, got {num_classes!r}")
    if in_channels not in (1, 3):
        raise ValueError(f"expected in_channels 1 or 3, got {in_channels!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"expected dropout in [0, 1), got {dropout!r}")


@register("explorer_cnn")
def explorer_cnn(
    num_classes: int = 2,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = (128, 128),
    widths: tuple[int, ...] = (16, 32, 64),
    dense: int = 32,
    dropout: float = 0.5,
    head: str = "flatten",
) -> nn.Module:
    """The explorer's small CNN: (conv 3x3 + ReLU + max-pool 2) per width, dropout, dense.

    ``head="flatten"`` (the original) feeds every position of the last pooled map to the
    dense layer, so the network can learn where things are; ``head="gap"`` averages each
    channel over the image first (global average pooling, Lin et al. 2014), which makes the
    classifier blind to position and its class evidence local: CAM-style maps of such a
    network point at the object (Zhou et al. 2016), and it has far fewer weights.
    """
    _check_common(num_classes, in_channels, dropout)
    if head not in ("flatten", "gap"):
        raise ValueError(f"expected head 'flatten' or 'gap', got {head!r}")
    height, width = pair(input_size, "input_size")
    if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"expected widths as positive ints, got {widths!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for i, out in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(channels, out, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        channels = out
        height, width = height // 2, width // 2
    if height < 1 or width < 1:
        raise ValueError(f"input_size {input_size!r} is too small for {len(widths)} poolings")
    if head == "gap":
        layers["gap"] = nn.AdaptiveAvgPool2d(1)
        height = width = 1
    layers["flatten"] = nn.Flatten()
    layers["dropout"] = nn.Dropout(dropout)
    layers["dense1"] = nn.Linear(channels * height * width, dense)
    layers[f"relu{len(widths) + 1}"] = nn.ReLU()
    layers["logits"] = nn.Linear(dense, num_classes)
    return nn.Sequential(layers)


@register("scratch_cnn")
def scratch_cnn(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = (32, 32),
    widths: tuple[int, int, int, int] = (32, 32, 64, 64),
    dense: int = 128,
    dropout: float = 0.25,
    dense_dropout: float = 0.5,
) -> nn.Module:
    """The from-scratch CNN: 2 x (conv, conv, max-pool, dropout), dense, dropout, dense."""
    _check_common(num_classes, in_channels, dropout)
    _check_common(num_classes, in_channels, dense_dropout)
    height, width = pair(input_size, "input_size")
    if len(widths) != 4 or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"expected 4 positive conv widths, got {widths!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for i, out in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(channels, out, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        channels = out
        if i % 2 == 0:
            layers[f"pool{i // 2}"] = nn.MaxPool2d(2)
            layers[f"dropout{i // 2}"] = nn.Dropout(dropout)
            height, width = height // 2, width // 2
    if height < 1 or width < 1:
        raise ValueError(f"input_size {input_size!r} is too small for 2 poolings")
    layers["flatten"] = nn.Flatten()
    layers["dense1"] = nn.Linear(channels * height * width, dense)
    layers["relu5"] = nn.ReLU()
    layers["dropout3"] = nn.Dropout(dense_dropout)
    layers["logits"] = nn.Linear(dense, num_classes)
    return nn.Sequential(layers)
