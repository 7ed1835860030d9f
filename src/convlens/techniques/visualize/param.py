"""How the image being optimised is parameterised: each function returns ``(params, image_fn)``
(the Lucent shape): the tensors the optimiser changes, and a function that turns them into
a ``(B, 3, H, W)`` image.

- :func:`pixels`: one number per pixel and colour.
- :func:`fourier`: the image's 2-D spectrum, scaled by ``1 / frequency ** decay_power`` so
  that every frequency moves the image about equally (Olah et al., 2017, Distill,
  "Feature Visualization", section "Preconditioning and Parameterization").
- ``decorrelate=True`` treats the three channels as the decorrelated colour basis of ImageNet
  (the square root of the colour covariance, Lucid's ``color_correlation_svd_sqrt``), and
  ``sigmoid=True`` maps the result into ``(0, 1)``, so every parameter value is a valid image.
- :func:`grey_noise`: the classic recipe's start (pixels near grey, small uniform noise; no
  sigmoid, values are deprocessed at the end; Chollet, *Deep Learning with Python*, 5.4).

Every random draw comes from the ``generator`` given; tensors live on ``device``. Each
parameterisation also has an inverse (``*_params_for``) that gives the parameters of a given
image, so it can start from a picture and so its round trip can be tested.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = [
    "COLOR_CORRELATION_SVD_SQRT",
    "Param",
    "decorrelate_colors",
    "fourier",
    "fourier_params_for",
    "frequency_scale",
    "grey_noise",
    "pixels",
    "pixels_params_for",
    "recorrelate_colors",
]

ImageFn = Callable[[], torch.Tensor]
Param = tuple[list[torch.Tensor], ImageFn]

#: Square root of ImageNet's RGB colour covariance (Lucid / Lucent), rows R, G, B.
COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)
_MAX_NORM = float(COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max())
_COLOR = (COLOR_CORRELATION_SVD_SQRT / _MAX_NORM).float()


def decorrelate_colors(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in the decorrelated basis -> RGB: ``rgb[c] = sum_k M[c, k] x[k]`` with
    ``M = COLOR_CORRELATION_SVD_SQRT / max column norm``."""
    m = _COLOR.to(x.device, x.dtype)
    # contiguous: a permuted result would send every convolution down a slow path
    return torch.einsum("ck,bkhw->bchw", m, x).contiguous()


def recorrelate_colors(rgb: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`decorrelate_colors`."""
    m = torch.linalg.inv(_COLOR.double()).to(rgb.device, rgb.dtype)
    return torch.einsum("ck,bkhw->bchw", m, rgb).contiguous()


def _to_valid_rgb(x: torch.Tensor, decorrelate: bool, sigmoid: bool) -> torch.Tensor:
    if decorrelate:
        x = decorrelate_colors(x)
    return torch.sigmoid(x) if sigmoid else x


def _from_valid_rgb(image: torch.Tensor, decorrelate: bool, sigmoid: bool) -> torch.Tensor:
    x = image
    if sigmoid:
        x = torch.logit(x.clamp(1e-6, 1 - 1e-6))
    return recorrelate_colors(x) if decorrelate else x


def _shape(shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    if len(shape) != 4 or any(int(s) < 1 for s in shape):
        raise ValueError(f"expected an image shape (B, C, H, W) of positive sizes, got {shape}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def pixels(
    shape: tuple[int, int, int, int],
    *,
    sd: float = 0.01,
    decorrelate: bool = True,
    sigmoid: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Param:
    """One parameter per pixel and channel, drawn from ``N(0, sd^2)`` (mid-grey after the
    sigmoid). Image = ``sigmoid(decorrelate(params))``."""
    b, c, h, w = _shape(shape)
    init = torch.randn((b, c, h, w), generator=generator) * sd
    params = init.to(device).requires_grad_(True)
    return [params], lambda: _to_valid_rgb(params, decorrelate, sigmoid)


def pixels_params_for(
    image: torch.Tensor, *, decorrelate: bool = True, sigmoid: bool = True
) -> torch.Tensor:
    """The :func:`pixels` parameters whose image is ``image`` (values in (0, 1))."""
    return _from_valid_rgb(image, decorrelate, sigmoid)


def grey_noise(
    shape: tuple[int, int, int, int],
    *,
    low: float = 128 / 255,
    high: float = 148 / 255,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Param:
    """The classic start: pixels uniform in ``[low, high)`` (Chollet's ``random() * 20 + 128``
    in 0..255 units), optimised directly, no colour basis, no sigmoid."""
    b, c, h, w = _shape(shape)
    init = low + (high - low) * torch.rand((b, c, h, w), generator=generator)
    params = init.to(device).requires_grad_(True)
    return [params], lambda: params


def _freqs(h: int, w: int) -> np.ndarray:
    """|frequency| of each entry of a real 2-D FFT of an (h, w) image: (h, w // 2 + 1)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def frequency_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """(h, w // 2 + 1): ``1 / max(|f|, 1 / max(h, w)) ** decay_power``."""
    freqs = _freqs(h, w)
    return torch.tensor(1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power).float()


_MAGIC = 4.0  # Lucid's: keeps the initial image's spread small before the sigmoid


def _spectrum_to_image(spectrum: torch.Tensor, scale: torch.Tensor, h: int, w: int) -> torch.Tensor:
    scaled = torch.view_as_complex(spectrum) * scale
    return torch.fft.irfft2(scaled, s=(h, w), norm="ortho") / _MAGIC


def fourier(
    shape: tuple[int, int, int, int],
    *,
    sd: float = 0.01,
    decay_power: float = 1.0,
    decorrelate: bool = True,
    sigmoid: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Param:
    """The image as its real 2-D spectrum: params ``(B, C, H, W // 2 + 1, 2)`` (real,
    imaginary) from ``N(0, sd^2)``; image = ``sigmoid(decorrelate(irfft2(params * scale) /
    4))`` with :func:`frequency_scale` and the orthonormal FFT (Lucid's ``fft_image``)."""
    b, c, h, w = _shape(shape)
    scale = frequency_scale(h, w, decay_power).to(device)
    init = torch.randn((b, c, h, w // 2 + 1, 2), generator=generator) * sd
    spectrum = init.to(device).requires_grad_(True)

    def image() -> torch.Tensor:
        return _to_valid_rgb(_spectrum_to_image(spectrum, scale, h, w), decorrelate, sigmoid)

    return [spectrum], image


def fourier_params_for(
    image: torch.Tensor,
    *,
    decay_power: float = 1.0,
    decorrelate: bool = True,
    sigmoid: bool = True,
) -> torch.Tensor:
    """The :func:`fourier` parameters ``(B, C, H, W // 2 + 1, 2)`` whose image is ``image``
    ``(B, C, H, W)`` (values in (0, 1) when ``sigmoid``): the exact inverse."""
    if image.dim() != 4:
        raise ValueError(f"expected an image batch (B, C, H, W), got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    x = _from_valid_rgb(image, decorrelate, sigmoid) * _MAGIC
    spectrum = torch.fft.rfft2(x, norm="ortho") / frequency_scale(h, w, decay_power).to(x.device)
    return torch.view_as_real(spectrum).contiguous()
