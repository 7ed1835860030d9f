"""Reference inputs: what an image becomes where a method removes information.

Integrated Gradients integrates from a *baseline*, occlusion and RISE replace pixels with a
*fill*; both speak the same vocabulary, defined once here:

``"zero"`` (or ``"zeros"``)
    the zero input tensor (Captum's default; after ImageNet normalisation, a mid-grey picture);
``"black"``
    a black picture through the model's :class:`~convlens.model.Preprocessing`;
``"mean"``
    each image's per-channel mean;
``"blur"``
    the image blurred by a Gaussian of ``blur_sigma`` pixels;
``"noise"``
    a picture of uniform [0, 1] pixel noise (drawn from ``generator``);
``(r, g, b)``
    a colour in [0, 1] through the preprocessing; a number: that value in input space;
    a tensor broadcastable to the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from convlens.core.model import Model, Preprocessing

Reference = str | float | Sequence[float] | torch.Tensor
NAMES = ("zero", "black", "mean", "blur", "noise")


def reference_input(
    model: Model,
    inputs: torch.Tensor,
    spec: Reference,
    *,
    what: str = "baseline",
    names: Sequence[str] = NAMES,
    blur_sigma: float = 10.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The reference for ``inputs`` (N, C, H, W) in input space, broadcastable to ``inputs``
    ((1, C, 1, 1) for constants, full size for ``mean`` / ``blur`` / ``noise`` per image).

    ``what`` names the option in error messages (``baseline``, ``fill``); ``names`` are the
    named references the caller accepts.
    """
    n, channels, height, width = inputs.shape
    expected = (
        f"expected {what} among {', '.join(map(repr, names))}, an (r, g, b) colour in [0, 1], "
        "a number or a tensor broadcastable to the input"
    )
    if isinstance(spec, str):
        name = "zero" if spec == "zeros" else spec
        if name not in names:
            raise ValueError(f"{expected}, got {spec!r}")
        if name == "zero":
            return torch.zeros(1, channels, 1, 1, dtype=inputs.dtype, device=inputs.device)
        if name == "black":
            return _through_preprocessing(model, inputs, torch.zeros(1, 3, 1, 1), what)
        if name == "mean":
            return inputs.mean(dim=(2, 3), keepdim=True)
        if name == "blur":
            if isinstance(blur_sigma, bool) or not isinstance(blur_sigma, (int, float)):
                raise ValueError(f"expected blur_sigma > 0 (pixels), got {blur_sigma!r}")
            if not blur_sigma > 0:
                raise ValueError(f"expected blur_sigma > 0 (pixels), got {blur_sigma!r}")
            return gaussian_blur(inputs, float(blur_sigma))
        gen = generator or torch.Generator(device=inputs.device).manual_seed(0)
        pixels = torch.rand((n, 3, height, width), generator=gen, device=gen.device)
        return _through_preprocessing(model, inputs, pixels, what)
    if isinstance(spec, torch.Tensor):
        values = spec.to(inputs.device, inputs.dtype)
        try:
            fits = torch.broadcast_shapes(values.shape, inputs.shape) == inputs.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"{expected}; a {what} tensor of shape {tuple(spec.shape)} does not broadcast "
                f"to the input {tuple(inputs.shape)}"
            )
        return values
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return torch.full(
            (1, channels, 1, 1), float(spec), dtype=inputs.dtype, device=inputs.device
        )
    if isinstance(spec, (tuple, list)):
        if len(spec) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in spec
        ):
            raise ValueError(
                f"{expected}; a colour is three values in [0, 1] (divide 0-255 values by 255), "
                f"got {spec!r}"
            )
        rgb = torch.tensor([float(v) for v in spec]).view(1, 3, 1, 1)
        return _through_preprocessing(model, inputs, rgb, what)
    raise ValueError(f"{expected}, got {type(spec).__name__}")


def reference_setting(spec: Reference) -> Any:
    """How a reference is recorded in an Attribution's settings (JSON-friendly)."""
    if isinstance(spec, torch.Tensor):
        return f"tensor{tuple(spec.shape)}"
    if isinstance(spec, str):
        return "zero" if spec == "zeros" else spec
    return list(spec) if isinstance(spec, (tuple, list)) else spec


def _through_preprocessing(
    model: Model, inputs: torch.Tensor, pixels: torch.Tensor, what: str
) -> torch.Tensor:
    """RGB pixels in [0, 1] as network input, through the model's normalisation."""
    if not isinstance(model.preprocess, Preprocessing):
        raise ValueError(
            f"a picture {what} ('black', 'noise' or a colour) needs the model's Preprocessing "
            f"to normalise it; this model has a custom preprocess: use {what}='zero', a number "
            "or a tensor"
        )
    values = model.preprocess.normalize(pixels.to(inputs.device, inputs.dtype))
    if values.shape[1] != inputs.shape[1]:
        raise ValueError(
            f"the model's Preprocessing gives {values.shape[1]} channels, the input has "
            f"{inputs.shape[1]}"
        )
    return values


def gaussian_blur(inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) blurred per channel by a Gaussian of ``sigma`` pixels, truncated at radius
    ``int(3 * sigma + 0.5)``, edges replicated (``scipy.ndimage.gaussian_filter(mode="nearest",
    truncate=3)``). Works for any image size (a kernel wider than the image is fine)."""
    radius = int(3 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(inputs.device, inputs.dtype)
    channels = inputs.shape[1]
    rows = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    cols = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    out = F.conv2d(F.pad(inputs, (0, 0, radius, radius), mode="replicate"), rows, groups=channels)
    return F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="replicate"), cols, groups=channels)
