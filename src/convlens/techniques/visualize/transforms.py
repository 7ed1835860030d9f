"""Random transforms applied to the image at every step, so that the pattern found is robust
and not a high-frequency trick that works at one exact alignment (Mordvintsev et al., 2015;
Olah et al., 2017, "Transformation robustness").

A transform is a callable ``(image (B, C, H, W), generator) -> image``; every random draw comes
from the ``torch.Generator`` given, and one draw is shared by the whole batch. :func:`compose`
chains them; :func:`standard` is Lucent's ``standard_transforms``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "Transform",
    "compose",
    "jitter",
    "pad",
    "random_rotate",
    "random_scale",
    "rotate",
    "scale",
    "standard",
]

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _pick(options: Sequence[float], generator: torch.Generator) -> float:
    index = int(torch.randint(len(options), (1,), generator=generator))
    return float(options[index])


def pad(width: int, *, mode: str = "constant", value: float = 0.5) -> Transform:
    """Pad ``width`` pixels on every side (``mode`` "constant" with ``value``, "reflect" or
    "replicate"); the borders then move with the jitter instead of sitting still."""
    if width < 0:
        raise ValueError(f"expected a padding >= 0, got {width}")

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if mode == "constant":
            return F.pad(x, (width,) * 4, mode="constant", value=value)
        return F.pad(x, (width,) * 4, mode=mode)

    return apply


def jitter(d: int) -> Transform:
    """A random crop ``d - 1`` pixels smaller in each direction: output ``(H - d + 1, W - d
    + 1)``, offsets ``dy, dx`` uniform in ``0 .. d - 1`` (Lucid's jitter)."""
    if d < 1:
        raise ValueError(f"expected a jitter of at least 1 pixel, got {d}")

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if d == 1:
            return x
        dy, dx = (int(v) for v in torch.randint(d, (2,), generator=generator))
        h, w = x.shape[-2] - d + 1, x.shape[-1] - d + 1
        return x[..., dy : dy + h, dx : dx + w]

    return apply


def scale(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Resize by ``factor`` (bilinear, ``align_corners=False``): size ``round(H * factor)``."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        if factor == 1:
            return x
        h, w = (max(1, round(s * factor)) for s in x.shape[-2:])
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)

    return apply


def random_scale(factors: Sequence[float]) -> Transform:
    """Resize by a factor drawn from ``factors`` (Lucent: ``1 + (i - 5) / 50``, i = 0..10)."""
    if not factors:
        raise ValueError("expected at least one scale factor")

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return scale(_pick(factors, generator))(x)

    return apply


def rotate(degrees: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Rotate about the centre by ``degrees`` counter-clockwise (as shown, y down), bilinear,
    zeros outside, same size. 90 degrees on a square image equals ``torch.rot90``."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        if degrees == 0:
            return x
        theta = math.radians(degrees)
        cos, sin = math.cos(theta), math.sin(theta)
        h, w = x.shape[-2:]
        # grid_sample maps output coordinates to input ones, in [-1, 1] units per axis.
        matrix = torch.tensor(
            [[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype, device=x.device
        )
        grid = F.affine_grid(matrix.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    return apply


def random_rotate(angles: Sequence[float]) -> Transform:
    """Rotate by an angle (degrees) drawn from ``angles``."""
    if not angles:
        raise ValueError("expected at least one angle")

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return rotate(_pick(angles, generator))(x)

    return apply


def compose(transforms: Sequence[Transform]) -> Transform:
    """Apply ``transforms`` in order."""
    items = list(transforms)

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for t in items:
            x = t(x, generator)
        return x

    return apply


def standard() -> list[Transform]:
    """Lucent's ``standard_transforms``: pad 12 (grey 0.5), jitter 8, random scale 0.9..1.1,
    random rotation -10..10 degrees (0 five times more likely), jitter 4."""
    return [
        pad(12, mode="constant", value=0.5),
        jitter(8),
        random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
        random_rotate([*range(-10, 11), *([0] * 5)]),
        jitter(4),
    ]
