"""Multi-label classifiers (sigmoid heads): every registered method explains one label at a
time, and the answer for each label is known.

The net sees two objects, A (channel 0, top-left 3x3) and B (channel 1, bottom-right 3x3), on
an 8x8 picture; a 1x1 convolution copies channel k to feature k, ReLU, global average pooling,
and logit k = 16 mean(feature k) - 1.5: label A depends on A's pixels only, label B on B's.
Both labels are present (logit 0.75, sigmoid 0.68 each: a softmax would make them compete).
Whatever a method draws for label A must sit on A, for label B on B.
"""

from __future__ import annotations

import pytest
import torch
from conftest import model_state
from torch import nn

import convlens as cl
from convlens.core.hooks import has_hooks

A = (slice(0, 3), slice(0, 3))
B = (slice(5, 8), slice(5, 8))
FAST = {
    "occlusion": {"window": 2, "stride": 1},
    "rise": {"masks": 1000, "cell": 4},
    "scorecam": {},
    "smoothgrad": {"samples": 8},
    "integrated_gradients": {"steps": 16},
}


class TwoObjects(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
            self.conv.weight[1, 1] = 1.0
            self.fc.weight.copy_(16 * torch.eye(2))
            self.fc.bias.fill_(-1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.fixture
def multilabel() -> cl.Model:
    return cl.Model(
        TwoObjects().eval(),
        preprocess=cl.Preprocessing(crop=None, resize=None, mean=(0, 0, 0), std=(1, 1, 1)),
        postprocess="sigmoid",
        labels=["A", "B"],
        input_size=(3, 8, 8),
    )


@pytest.fixture
def picture() -> torch.Tensor:
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0][A] = 1.0
    x[0, 1][B] = 1.0
    return x


def test_both_labels_are_present(multilabel, picture):
    probabilities = multilabel.probabilities(picture)[0]
    expected = torch.sigmoid(torch.tensor(16 * 9 / 64 - 1.5))
    torch.testing.assert_close(probabilities, torch.stack([expected, expected]))
    assert multilabel.predict(picture, top=2).labels == ["A"]  # ties: the first


@pytest.mark.parametrize("method", sorted(cl.methods()))
def test_every_method_explains_each_label_on_its_own_object(method, multilabel, picture):
    before = model_state(multilabel.module)
    options = dict(FAST.get(method, {}))
    if cl.attribution.get_method(method).needs_layer:
        options["layer"] = "conv"
    maps = {}
    for label in ("A", "B"):
        result = cl.explain(multilabel, picture, method, target=label, **options)
        assert result.target_labels == [label]
        found = result.upsampled((8, 8)).maps2d()[0]
        assert torch.isfinite(found).all()
        maps[label] = found
    if method == "eigencam":  # class-agnostic by design: the same map for both labels
        torch.testing.assert_close(maps["A"], maps["B"])
    else:
        for label, own, other in (("A", A, B), ("B", B, A)):
            assert maps[label][own].mean() > maps[label][other].mean() + 1e-6, (method, label)
    assert has_hooks(multilabel.module) == []
    assert model_state(multilabel.module) == before


def test_per_image_labels_and_callable_targets(multilabel, picture):
    both = torch.cat([picture, picture])
    per_image = cl.explain(multilabel, both, "gradcam", target=["A", "B"], layer="conv")
    assert per_image.target_labels == ["A", "B"]
    assert per_image.map[0][A].mean() > 0 and per_image.map[0][B].abs().max() == 0
    assert per_image.map[1][B].mean() > 0 and per_image.map[1][A].abs().max() == 0

    def both_labels(logits: torch.Tensor) -> torch.Tensor:
        return logits.sum(1)  # "everything present": the sum of the label logits

    joint = cl.explain(multilabel, picture, "gradcam", target=both_labels, layer="conv")
    assert joint.map[0][A].mean() > 0 and joint.map[0][B].mean() > 0


def test_integrated_gradients_is_complete_per_label(multilabel, picture):
    for label in (0, 1):
        result = cl.explain(multilabel, picture, "integrated_gradients", target=label, steps=64)
        assert float(result.extras["completeness_error"][0]) < 1e-4
        # f(x) - f(black) = 16 * 9 / 64: all of it on the label's own object
        assert float(result.map.sum()) == pytest.approx(16 * 9 / 64, abs=1e-4)


def test_class_probability_objective_follows_the_postprocess(multilabel):
    """Feature visualization's class probability is the model's own: a sigmoid for a
    multi-label model (a softmax over labels would push the other label down)."""
    logits = torch.tensor([[0.3, 2.0]])
    for target in ("A", 0):
        objective = cl.objectives.class_probability(target).bind(multilabel)
        value = objective({cl.objectives.OUTPUT: logits})
        torch.testing.assert_close(value, torch.sigmoid(torch.tensor([0.3])))
    unbound = cl.objectives.class_probability(0)({cl.objectives.OUTPUT: logits})
    torch.testing.assert_close(unbound, logits.softmax(1)[:, 0])
