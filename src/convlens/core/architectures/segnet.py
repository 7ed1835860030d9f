"""The toon segmentation network, registered as ``toon_segnet``: a small encoder-decoder that
labels every pixel and answers in torchvision's segmentation convention, ``{"out": (N, K, H,
W)}`` logits (plus ``"aux"`` with ``aux=True``). Training is in
:mod:`convlens.workflows.training.segment`; the handle is
:class:`~convlens.core.segmenter.Segmenter`."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from convlens.core.architectures.cnns import _check_common
from convlens.core.architectures.registry import register

__all__ = ["ToonSegNet", "toon_segnet"]


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(
                cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
            ),
            bn=nn.BatchNorm2d(cout),
            relu=nn.ReLU(inplace=True),
        )
    )


class _Fuse(nn.Module):
    """One decoder stage: the coarser map reduced (1x1) and upsampled bilinearly to the skip's
    size, added to the skip projected (1x1), then conv 3x3 + BN + ReLU."""

    def __init__(self, coarse: int, skip: int, out: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(coarse, out, 1, bias=False)
        self.lateral = nn.Conv2d(skip, out, 1, bias=False)
        self.block = _conv_bn_relu(out, out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(
            self.reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.block(up + self.lateral(skip))


class ToonSegNet(nn.Module):
    """A small encoder-decoder for per-pixel classes (a U-Net with additive skips, Ronneberger
    et al. 2015, with the feature-pyramid decoder of Lin et al. 2017, sized for a CPU).

    Encoder ``enc0`` .. ``enc4`` at strides 1, 2, 4, 8, 16 (``widths``; ``enc4``'s second
    convolution is dilated by 2 for context); decoder ``dec3`` .. ``dec0`` back to strides
    8, 4, 2, 1 (``decoder`` widths), each adding the encoder map of its stride; ``classifier``
    (1x1) gives the logits at the input's resolution. Any input size works (the decoder
    upsamples to each skip's size).

    ``forward`` returns ``{"out": (N, num_classes, H, W)}`` logits (torchvision's segmentation
    convention) and, with ``aux=True``, ``"aux"``: a 1x1 classifier on ``enc4`` upsampled to
    (H, W), for an auxiliary loss as torchvision's FCN and DeepLabV3 have.
    """

    task = "segment"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int, int, int] = (12, 24, 48, 64, 64),
        decoder: tuple[int, int, int, int] = (48, 32, 24, 16),
        aux: bool = False,
    ) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        d3, d2, d1, d0 = decoder
        self.enc0 = _conv_bn_relu(in_channels, w0)
        self.enc1 = nn.Sequential(_conv_bn_relu(w0, w1, 2), _conv_bn_relu(w1, w1))
        self.enc2 = nn.Sequential(_conv_bn_relu(w1, w2, 2), _conv_bn_relu(w2, w2))
        self.enc3 = nn.Sequential(_conv_bn_relu(w2, w3, 2), _conv_bn_relu(w3, w3))
        self.enc4 = nn.Sequential(_conv_bn_relu(w3, w4, 2), _conv_bn_relu(w4, w4, dilation=2))
        self.dec3 = _Fuse(w4, w3, d3)
        self.dec2 = _Fuse(d3, w2, d2)
        self.dec1 = _Fuse(d2, w1, d1)
        self.dec0 = _Fuse(d1, w0, d0)
        self.classifier = nn.Conv2d(d0, num_classes, 1)
        self.aux_classifier = nn.Conv2d(w4, num_classes, 1) if aux else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f0 = self.enc0(x)
        f1 = self.enc1(f0)
        f2 = self.enc2(f1)
        f3 = self.enc3(f2)
        f4 = self.enc4(f3)
        y = self.dec0(self.dec1(self.dec2(self.dec3(f4, f3), f2), f1), f0)
        result = {"out": self.classifier(y)}
        if self.aux_classifier is not None:
            result["aux"] = F.interpolate(
                self.aux_classifier(f4), size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        return result


@register("toon_segnet")
def toon_segnet(
    num_classes: int = 4,
    in_channels: int = 3,
    widths: tuple[int, int, int, int, int] = (12, 24, 48, 64, 64),
    decoder: tuple[int, int, int, int] = (48, 32, 24, 16),
    aux: bool = False,
) -> nn.Module:
    """The toon segmentation network: encoder-decoder with skips, {"out": (N, K, H, W)}."""
    _check_common(num_classes, in_channels, 0.0)
    for name, values, count in (("widths", widths, 5), ("decoder", decoder, 4)):
        if len(values) != count or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
        ):
            raise ValueError(f"expected {count} positive {name}, got {values!r}")
    if not isinstance(aux, bool):
        raise ValueError(f"expected aux=True or False, got {aux!r}")
    return ToonSegNet(num_classes, in_channels, tuple(widths), tuple(decoder), aux)  # type: ignore[arg-type]
