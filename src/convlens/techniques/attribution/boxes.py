"""The geometry of incremental inference (:mod:`.incremental`): a changed box of one node's
output for a batch of windows, and the sliding-window operations (convolution, pooling) that
turn the input region a box needs into the box of their output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn


@dataclass
class Box:
    """The changed part of one node's output, for a batch of B windows.

    ``values`` (B, C, h, w): the output inside each window's box, one size for the batch;
    ``starts`` (B, 2) long: each box's top-left corner (row, column) in the node's full
    (N, C, H, W) output; ``images`` (B,) long: which of the N clean pictures each window changes;
    ``centres`` (B, 2) float or None: where each window's own centre lands in this node's map
    (tracked only under a cap, which keeps the part of a box around it).
    """

    values: torch.Tensor
    starts: torch.Tensor
    images: torch.Tensor
    centres: torch.Tensor | None = None


@dataclass(frozen=True)
class Window:
    """A sliding-window operation (``kind`` conv, max or avg) and how it maps input rows and
    columns to output ones, per axis (height, width): output ``o`` reads the padded input
    ``[o * stride, o * stride + reach]``; ``before`` / ``after`` pad the clean input so that
    every output's window fits; ``options`` are the operation's own (weight, groups, ...)."""

    kind: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    before: tuple[int, int]
    after: tuple[int, int]
    out: tuple[int, int]
    options: dict[str, Any] = field(default_factory=dict)

    def reach(self, axis: int) -> int:
        return self.dilation[axis] * (self.kernel[axis] - 1)

    def centres(self, centres: torch.Tensor) -> torch.Tensor:
        """(B, 2) where input positions ``centres`` (B, 2) land in the output: the output
        whose window is centred on them (fractional)."""
        device, dtype = centres.device, centres.dtype
        before = torch.tensor(self.before, device=device, dtype=dtype)
        half = torch.tensor([self.reach(0), self.reach(1)], device=device, dtype=dtype) / 2
        return (centres + before - half) / torch.tensor(self.stride, device=device, dtype=dtype)

    def run(self, region: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
        """The operation on an unpadded ``region`` (B, C, h, w) whose outputs start at
        ``corners`` (B, 2) (average pooling divides by the full op's divisors there)."""
        o = self.options
        if self.kind == "conv":
            return F.conv2d(region, o["weight"], o["bias"], self.stride, 0, self.dilation,
                            o["groups"])  # fmt: skip
        if self.kind == "max":
            return F.max_pool2d(region, self.kernel, self.stride, 0, self.dilation)
        sums = F.avg_pool2d(region, self.kernel, self.stride, 0, divisor_override=1)
        rows = corners[:, :1] + torch.arange(sums.shape[-2], device=corners.device)
        cols = corners[:, 1:] + torch.arange(sums.shape[-1], device=corners.device)
        return sums / o["divisor"][rows[:, :, None], cols[:, None, :]][:, None]


def region(
    source: torch.Tensor,
    offset: tuple[int, int],
    box: Box,
    corners: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """(B, C, h, w) (channels-last memory) the region of ``size`` at ``corners`` (B, 2) of a
    padded clean map ``source`` (N, H', W', C), with ``box`` pasted in; ``offset`` is the
    padding above / left of ``source``, so the box's row r sits at row r + offset[0].

    Two row copies: the region's (h * w) channel vectors gathered from the clean map, then
    the box's vectors written over it (those outside the region go to a spare last row)."""
    _, height, width, channels = source.shape
    device, count = source.device, len(box.images) * size[0] * size[1]
    rows = corners[:, :1] + torch.arange(size[0], device=device)  # (B, h)
    cols = corners[:, 1:] + torch.arange(size[1], device=device)  # (B, w)
    flat = (box.images[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
    region = torch.empty(count + 1, channels, dtype=source.dtype, device=device)
    torch.index_select(source.view(-1, channels), 0, flat.view(-1), out=region[:count])
    box_h, box_w = box.values.shape[-2:]
    to_rows = box.starts[:, :1] + offset[0] - corners[:, :1] + torch.arange(box_h, device=device)
    to_cols = box.starts[:, 1:] + offset[1] - corners[:, 1:] + torch.arange(box_w, device=device)
    inside = ((to_rows >= 0) & (to_rows < size[0]))[:, :, None] & (
        (to_cols >= 0) & (to_cols < size[1])
    )[:, None, :]
    batch = torch.arange(len(box.images), device=device)[:, None, None]
    to = ((batch * size[0] + to_rows[:, :, None]) * size[1] + to_cols[:, None, :]).where(
        inside, count
    )
    values = box.values.permute(0, 2, 3, 1).reshape(-1, channels)
    region.index_copy_(0, to.view(-1), values)
    return region[:count].view(len(box.images), size[0], size[1], channels).permute(0, 3, 1, 2)


def geometry(
    kind: str,
    options: dict[str, Any],
    size: tuple[int, int],
    out: tuple[int, int],
    device: torch.device,
) -> Window:
    """The :class:`Window` of a conv / pooling op with these options on a ``size`` input."""
    kernel = pair(tuple(options["weight"].shape[-2:]) if kind == "conv" else options["kernel_size"])
    stride = pair(options["stride"] or (1 if kind == "conv" else kernel))
    dilation = (1, 1) if kind == "avg" else pair(options["dilation"])
    padding = options["padding"]
    if padding == "same":
        before = (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
    else:
        before = (0, 0) if padding == "valid" else pair(padding)
    after = tuple(
        max(0, (out[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 - size[i] - before[i])
        for i in (0, 1)
    )
    window = Window(kind, kernel, stride, dilation, before, pair(after), out, dict(options))
    if kind == "avg":
        window.options["divisor"] = divisor(window, size, options, device)
    return window


def divisor(
    window: Window, size: tuple[int, int], options: dict[str, Any], device: torch.device
) -> torch.Tensor:
    """Average pooling's divisor of each output (H_out, W_out), as the full op counts it: the
    window's positions inside the picture (``count_include_pad=False``), or inside the padded
    picture (not the extra rows ``ceil_mode`` adds), or ``divisor_override``."""
    if options["divisor_override"]:
        return torch.full(window.out, float(options["divisor_override"]), device=device)
    total = [n + b + a for n, b, a in zip(size, window.before, window.after, strict=True)]
    counted = torch.zeros(1, 1, *total, device=device)
    top, left = window.before
    if options["count_include_pad"]:
        counted[..., : size[0] + 2 * top, : size[1] + 2 * left] = 1
    else:
        counted[..., top : top + size[0], left : left + size[1]] = 1
    divisor = F.avg_pool2d(counted, window.kernel, window.stride, 0, divisor_override=1)[0, 0]
    return divisor[: window.out[0], : window.out[1]]


def ceil_div(numerator: torch.Tensor, denominator: int) -> torch.Tensor:
    return -torch.div(-numerator, denominator, rounding_mode="floor")


def pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def spatial(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 4


def broadcasts(value: Any) -> bool:
    """A constant that an element-wise op may broadcast over a box: not a tensor, one number,
    or a tensor whose last two dimensions are 1 (per channel)."""
    if not isinstance(value, torch.Tensor) or value.numel() == 1:
        return True
    return value.dim() >= 3 and value.shape[-1] == 1 and value.shape[-2] == 1


def pointwise_module(module: nn.Module) -> bool:
    """Batch norm and dropout are element-wise only in eval mode (batch norm with statistics)."""
    if isinstance(module, nn.BatchNorm2d):
        return not module.training and module.running_mean is not None
    if isinstance(module, (nn.Dropout, nn.Dropout2d, nn.AlphaDropout)):
        return not module.training
    return True


def arg(node: fx.Node, index: int, default: Any = None) -> Any:
    return node.args[index] if len(node.args) > index else default
