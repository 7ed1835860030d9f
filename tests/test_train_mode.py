"""convlens never changes your model, even one left in train mode (issue 18, finding 4).

A model in train mode with batch norm and dropout is the hard case: any forward pass outside
the guard updates the batch-norm buffers and draws dropout masks. Every public entry point is
run on such a model; its weights and buffers (hashed), every module's training flag and every
parameter's ``requires_grad`` must be as they were, and ``target=None`` must pick the class
the model gives in eval mode.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import model_state
from torch import nn

import convlens as cl
from convlens.core.model import Preprocessing
from convlens.data import toons
from convlens.techniques.attribution.base import methods

# small settings so that every method runs in well under a second on a 32 x 32 input
FAST = {
    "integrated_gradients": {"steps": 4},
    "occlusion": {"window": 8, "stride": 8},
    "rise": {"masks": 16, "seed": 0},
    "smoothgrad": {"samples": 3, "seed": 0},
}


class BatchNormDropoutNet(nn.Module):
    """conv-BN-ReLU-pool, conv-BN-ReLU, dropout, global average pool, linear: a network whose
    train-mode forward pass changes its buffers and whose output is random in train mode."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        self.drop = nn.Dropout(0.5)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 3)
        with torch.no_grad():  # running statistics far from what a batch gives
            for bn in (self.features[1], self.features[5]):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.drop(self.features(x))).flatten(1))


def train_mode_model() -> cl.Model:
    module = BatchNormDropoutNet()
    module.train()
    module.features[4].weight.requires_grad_(False)  # a frozen layer stays frozen
    return cl.Model(
        module,
        preprocess=Preprocessing(crop=32, resize=32),
        labels=list(toons.CLASSES),
        name="bn-dropout",
    )


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    return list(toons.generate(4, split="test", seed=2).pixels)


def eval_top1(model: cl.Model, pictures) -> list[int]:
    twin = copy.deepcopy(model.module).eval()
    with torch.no_grad():
        return twin(model.prepare(pictures).inputs).argmax(1).tolist()


def check_untouched(model: cl.Model, run) -> object:
    """``run(model)`` changes nothing, and no forward pass it makes runs in train mode (a
    pre-hook on every batch norm and dropout layer sees each call's mode)."""
    before = model_state(model.module)
    assert any(m.training for m in model.module.modules())
    seen: list[str] = []
    watched = [m for m in model.module.modules() if isinstance(m, (nn.BatchNorm2d, nn.Dropout))]
    handles = [
        m.register_forward_pre_hook(
            lambda m, _i: seen.append(type(m).__name__) if m.training else None
        )
        for m in watched
    ]
    try:
        result = run(model)
    finally:
        for handle in handles:
            handle.remove()
    assert model_state(model.module) == before
    assert not seen, f"forward passes in train mode through {sorted(set(seen))}"
    return result


@pytest.mark.parametrize("method", sorted(methods()))
def test_explain_with_every_method_leaves_a_train_mode_model_alone(method, pictures):
    model = train_mode_model()
    top1 = eval_top1(model, pictures)
    result = check_untouched(
        model, lambda m: cl.explain(m, pictures, method, None, **FAST.get(method, {}))
    )
    assert [int(t) for t in result.targets] == top1  # the class the model gives in eval mode


@pytest.mark.parametrize(
    "name",
    [
        "predict",
        "probabilities",
        "layers",
        "layer_table",
        "accepts_size",
        "activations",
        "filter_weights",
        "featurevis",
        "sanity_check",
        "evaluate",
        "audit",
        "tcav",
        "metrics",
    ],
)
def test_every_entry_point_leaves_a_train_mode_model_alone(name, pictures):
    model = train_mode_model()
    top1 = eval_top1(model, pictures)
    data = toons.generate(6, split="test", seed=5)
    runs = {
        "predict": lambda m: m.predict(pictures),
        "probabilities": lambda m: m.probabilities(pictures),
        "layers": lambda m: m.layers(),
        "layer_table": lambda m: cl.layer_table(m),
        "accepts_size": lambda m: m.accepts_size((48, 48)),
        "activations": lambda m: cl.activations(m, pictures, ["features.2", "drop"]),
        "filter_weights": lambda m: cl.filter_weights(m, "features.0"),
        "featurevis": lambda m: cl.featurevis(
            m, cl.objectives.channel("features.4", 0), size=32, steps=2, seed=0
        ),
        "sanity_check": lambda m: cl.sanity_check(m, pictures[:2], "gradcam"),
        "evaluate": lambda m: cl.evaluate(m, data, ["gradcam"], steps=3),
        "audit": lambda m: cl.audit(m, data, "saliency"),
        "tcav": lambda m: cl.tcav(
            m, "jessie", pictures, "toons", layers=["features.4"], n_random=2, random_size=6
        ),
        "metrics": lambda m: cl.metrics.deletion(
            m, pictures, cl.explain(m, pictures, "saliency"), steps=3
        ),
    }
    result = check_untouched(model, runs[name])
    if name == "predict":
        assert result.classes == top1


def test_a_train_mode_detector_is_left_alone():
    detector = cl.load("toon-detector")
    detector.module.train()
    frames, _ = toons.crowd_frames(1, split="test", seed=5)
    twin = copy.deepcopy(detector)
    twin.module.eval()
    expected = cl.detect(twin, frames[0])
    before = model_state(detector.module)
    found = cl.detect(detector, frames[0])
    assert [d.box for d in found] == [d.box for d in expected]
    for method, options in {"drise": {"masks": 8, "seed": 0}, "layercam": {}}.items():
        cl.explain(detector, frames[0], method, target=0, **options)
    assert model_state(detector.module) == before
