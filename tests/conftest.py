"""Tiny models with hand-set weights, shared by the tests."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from torch import nn

import convlens as cl
from convlens.core.model import Preprocessing

# No test ever downloads weights: a catalogue model whose file is not in the hub cache is
# refused (tests that need one save a state dict there first, see tests/test_zoo.py).
os.environ["CONVLENS_OFFLINE"] = "1"


class TinyNet(nn.Module):
    """conv(1->2, 3x3) -> ReLU -> maxpool 2 -> global average pool -> linear(2->3).

    Weights are set by hand so every activation can be computed on paper:
    channel 0 sums its 3x3 window, channel 1 takes minus the centre pixel, bias 0;
    the linear layer maps the two pooled values (a, b) to logits (a, b, a - b).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
            self.conv.weight[1, 0, 1, 1] = -1.0
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.gap(self.pool(self.relu(self.conv(x))))))


class InplaceNet(nn.Module):
    """conv -> BatchNorm -> ReLU(inplace=True): the BN output is overwritten by the ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.bn(self.conv(x))))


class Exploding(nn.Module):
    """A network whose forward raises halfway, after some hooks have fired."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 2, 3, padding=1)
        self.second = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.first(x)
        raise RuntimeError("boom halfway")


GREY = Preprocessing(crop=None, resize=None, mean=(0.0,), std=(1.0,), channels=1)


def tiny_model() -> cl.Model:
    return cl.Model(
        TinyNet(),
        preprocess=GREY,
        labels=["alpha", "beta", ["gamma", "third"]],
        input_size=(1, 4, 4),
    )


@pytest.fixture
def tiny() -> cl.Model:
    return tiny_model()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (2 CPUs, no dashboard, no usage
    statistics, nothing reached over a network), started by the first test that asks for it
    and stopped at the end; skipped where Ray is not installed (``convlens[ray]``)."""
    ray = pytest.importorskip("ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def image4() -> torch.Tensor:
    """A (1, 1, 4, 4) input with values 0..15 row by row."""
    return torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)


def weight_hash(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_state(module: nn.Module) -> tuple:
    """Everything about a module that convlens must leave as it found it."""
    return (
        weight_hash(module),
        tuple((n, m.training) for n, m in module.named_modules()),
        tuple((n, p.requires_grad) for n, p in module.named_parameters()),
        tuple((n, m.inplace) for n, m in module.named_modules() if hasattr(m, "inplace")),
    )
