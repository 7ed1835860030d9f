"""Batched augmentation for training: rotation, shifts, flips and zoom as one affine warp per
picture, drawn from a seeded generator (no colour jitter: in toons colour is the signal)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

# -------------------------------------------------------------------------- augmentation

_FILLS = {"nearest": "border", "reflect": "reflection", "constant": "zeros"}


@dataclass(frozen=True)
class Augmentation:
    """Random geometric changes applied to every training batch (like Keras'
    ``ImageDataGenerator`` in the explorer system). A range of 0 (or ``flip=False``) switches
    that change off.

    * ``rotation``: angle in degrees, uniform in ``[-rotation, rotation]``, positive turns
      the content counter-clockwise;
    * ``width_shift`` / ``height_shift``: shift as a fraction of the width / height, uniform
      in ``[-s, s]``, positive moves the content right / down;
    * ``zoom``: scale uniform in ``[1 - zoom, 1 + zoom]``, above 1 enlarges the content;
    * ``flip``: mirror left-right with probability 1/2;
    * ``brightness``: multiply the pixels by a factor uniform in ``[1 - b, 1 + b]`` (off by
      default: no colour jitter unless asked);
    * ``fill``: what appears where the content moved away: ``"nearest"`` (the edge pixels,
      Keras' default), ``"reflect"`` or ``"constant"`` (black).

    Rotation, shift and zoom form one affine map per picture, applied to the whole batch with
    one ``affine_grid`` + ``grid_sample`` (bilinear).
    """

    rotation: float = 45.0
    width_shift: float = 0.2
    height_shift: float = 0.2
    zoom: float = 0.2
    flip: bool = True
    brightness: float = 0.0
    fill: str = "nearest"

    def __post_init__(self) -> None:
        for name in ("rotation", "width_shift", "height_shift", "zoom", "brightness"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
                raise ValueError(f"expected augmentation {name} >= 0, got {value!r}")
        if self.zoom >= 1 or self.brightness >= 1:
            raise ValueError(
                f"expected zoom and brightness below 1, got {self.zoom} and {self.brightness}"
            )
        if self.fill not in _FILLS:
            raise ValueError(f"expected fill among {sorted(_FILLS)}, got {self.fill!r}")

    @classmethod
    def off(cls) -> Augmentation:
        """No augmentation at all (the identity)."""
        return cls(0.0, 0.0, 0.0, 0.0, False, 0.0)

    @property
    def enabled(self) -> bool:
        return self.geometric or self.flip or self.brightness > 0

    @property
    def geometric(self) -> bool:
        return any(v > 0 for v in (self.rotation, self.width_shift, self.height_shift, self.zoom))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch ``(N, C, H, W)`` of pixels in [0, 1] with random draws from
        ``generator`` (a CPU generator); returns a new tensor, or ``pixels`` itself when off."""
        if not self.enabled:
            return pixels
        n = len(pixels)

        def uniform(limit: float) -> torch.Tensor:
            return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * limit

        angle = uniform(self.rotation) if self.rotation > 0 else None
        shift = (
            torch.stack([uniform(self.width_shift), uniform(self.height_shift)], 1)
            if self.width_shift > 0 or self.height_shift > 0
            else None
        )
        zoom = 1 + uniform(self.zoom) if self.zoom > 0 else None
        flip = torch.rand(n, generator=generator) < 0.5 if self.flip else None
        brightness = 1 + uniform(self.brightness) if self.brightness > 0 else None
        return augment(
            pixels,
            angle=angle,
            shift=shift,
            zoom=zoom,
            flip=flip,
            brightness=brightness,
            fill=self.fill,
        )


def _per_image(value: Any, n: int, width: int | None = None) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float64)
    shape = (n,) if width is None else (n, width)
    if tensor.dim() == 0 or (width is not None and tensor.dim() == 1):
        tensor = tensor.expand(shape)
    if tuple(tensor.shape) != shape:
        raise ValueError(
            f"expected a number or a tensor of shape {shape}, got {tuple(tensor.shape)}"
        )
    return tensor


def augment(
    pixels: torch.Tensor,
    *,
    angle: float | torch.Tensor | None = None,
    shift: Sequence[float] | torch.Tensor | None = None,
    zoom: float | torch.Tensor | None = None,
    flip: bool | torch.Tensor | None = None,
    brightness: float | torch.Tensor | None = None,
    fill: str = "nearest",
) -> torch.Tensor:
    """Apply given transforms to a batch ``(N, C, H, W)`` of pixels in [0, 1].

    Each transform is one number for every picture or a tensor with one value per picture
    (``shift``: ``(dx, dy)`` or ``(N, 2)``, fractions of the width and height). Conventions as
    in :class:`Augmentation`: the content is zoomed by ``zoom`` and turned counter-clockwise
    by ``angle`` degrees about the centre, then shifted right by ``dx * W`` and down by
    ``dy * H`` pixels, then mirrored left-right where ``flip`` is true, then scaled by
    ``brightness`` and clipped to [0, 1]. ``None`` leaves that transform out; with no
    geometric transform no resampling happens (the pixels come back exactly).
    """
    if pixels.dim() != 4:
        raise ValueError(f"expected an image batch (N, C, H, W), got {tuple(pixels.shape)}")
    if fill not in _FILLS:
        raise ValueError(f"expected fill among {sorted(_FILLS)}, got {fill!r}")
    n, _, height, width = pixels.shape
    out = pixels
    if angle is not None or shift is not None or zoom is not None:
        radians = torch.deg2rad(_per_image(0.0 if angle is None else angle, n))
        dxy = _per_image((0.0, 0.0) if shift is None else shift, n, 2)
        scale = _per_image(1.0 if zoom is None else zoom, n)
        if (scale <= 0).any():
            raise ValueError("expected zoom > 0")
        # Output pixel p (centred pixel units, y down) shows input pixel R^-1 (p - s) / z.
        # In affine_grid's normalised coordinates (x * 2/W, y * 2/H, align_corners=False):
        cos, sin = torch.cos(radians) / scale, torch.sin(radians) / scale
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = -sin * height / width
        theta[:, 1, 0] = sin * width / height
        theta[:, 1, 1] = cos
        offset = 2 * dxy  # the shift in normalised units
        theta[:, :, 2] = -(theta[:, :, :2] @ offset.unsqueeze(-1)).squeeze(-1)
        theta = theta.to(pixels.device, pixels.dtype)
        grid = F.affine_grid(theta, [n, pixels.shape[1], height, width], align_corners=False)
        out = F.grid_sample(
            pixels, grid, mode="bilinear", padding_mode=_FILLS[fill], align_corners=False
        )
    if flip is not None:
        mask = torch.as_tensor(flip, dtype=torch.bool, device=pixels.device).expand(n)
        out = torch.where(mask.view(n, 1, 1, 1), out.flip(-1), out)
    if brightness is not None:
        factor = _per_image(brightness, n).to(pixels.device, pixels.dtype)
        out = (out * factor.view(n, 1, 1, 1)).clamp(0, 1)
    return out
