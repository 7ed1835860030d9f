"""The device comes from the model: the same numbers on CUDA as on the CPU (skipped without
a GPU; run it where one is available)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

import convlens as cl

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cpu_handle_reports_cpu():
    assert tiny_model().device == torch.device("cpu")


@cuda
def test_tiny_model_on_cuda_matches_cpu():
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    cpu = tiny_model()
    gpu = tiny_model()
    gpu.module.cuda()
    assert gpu.device.type == "cuda"
    assert gpu.prepare(x).inputs.device.type == "cuda"
    torch.testing.assert_close(gpu.probabilities(x), cpu.probabilities(x))
    acts_gpu = cl.activations(gpu, x, ["conv", "pool"])
    acts_cpu = cl.activations(cpu, x, ["conv", "pool"])
    assert acts_gpu["conv"].device.type == "cpu"  # results always come back to the CPU
    torch.testing.assert_close(acts_gpu["conv"], acts_cpu["conv"])
    assert cl.layer_table(gpu).get("pool").output_shape == (1, 2, 2, 2)


@cuda
@pytest.mark.slow
def test_mobilenet_on_cuda_matches_cpu():
    cpu = cl.load("mobilenet_v2")
    gpu = cl.load("mobilenet_v2")
    gpu.module.cuda()
    photo = cl.sample("chelsea")
    torch.testing.assert_close(
        gpu.probabilities(photo), cpu.probabilities(photo), atol=1e-4, rtol=0
    )
