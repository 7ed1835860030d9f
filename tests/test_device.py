"""The device comes from the model: the same numbers on CUDA as on the CPU (skipped without
a GPU; run it where one is available)."""

from __future__ import annotations

import threading

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


@cuda
def test_tcav_featurevis_and_the_explorer_on_cuda():
    """What this project added on top: TCAV, feature visualization and the explorer's cached
    pass take the device from the model, and TCAV's numbers match the CPU's."""
    import numpy as np

    from convlens.data import toons

    cpu = cl.load("toon-cnn")
    gpu = cl.load("toon-cnn")
    gpu.module.cuda()
    data = toons.generate(30, split="test", seed=3)
    targets = [p for p, n in zip(data.pixels, data.label_names, strict=True) if n == "jessie"]
    sets = {"red": toons.concept_images("red", 12, seed=0)}
    randoms = {f"random_{k}": toons.concept_images(f"random_{k}", 12, seed=0) for k in range(3)}
    kw = dict(random=randoms, layers="pool1,pool2", n_random=3, test="sets")  # CAV vectors
    on_cpu = cl.tcav(cpu, "jessie", targets, sets, **kw)
    on_gpu = cl.tcav(gpu, "jessie", targets, sets, **kw)
    for layer in ("pool1", "pool2"):
        a, b = on_cpu.runs[("red", layer)], on_gpu.runs[("red", layer)]
        cos = (a.vectors * b.vectors).sum(1)
        assert float(cos.min()) > 0.999, cos
        assert np.abs((a.sign_count - b.sign_count).numpy()).max() <= 1 / len(targets)
    objective = cl.objectives.channel("conv2", [0, 1, 2])
    fv = cl.featurevis(gpu, objective, steps=64, frames=0)
    fv_cpu = cl.featurevis(cpu, objective, steps=64, frames=0)  # same seed, same transforms
    assert (fv.history[-1] > fv.history[0]).all()
    torch.testing.assert_close(fv.history[:4], fv_cpu.history[:4], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(fv.scores, fv_cpu.scores, atol=0.02, rtol=0.05)
    assert next(gpu.module.parameters()).device.type == "cuda"

    from convlens.apps.server.state import ServerConfig, ServerState

    state = ServerState(ServerConfig(models=[]))
    state.models["toon-cnn"] = gpu
    state.model_locks["toon-cnn"] = threading.Lock()
    image_id, _ = state.add_image(cl.sample("chelsea").read_bytes(), "cat")
    forward = state.forward("toon-cnn", image_id)
    assert forward.activations["conv1"].device.type == "cpu"
    expected = cpu.probabilities(cl.sample("chelsea"))[0]
    torch.testing.assert_close(forward.probabilities, expected, atol=1e-4, rtol=0)
    state.close()


@cuda
@pytest.mark.slow
def test_detectors_and_drise_on_cuda():
    from convlens.data import toons
    from convlens.techniques.attribution import detection as DM

    frames, _ = toons.crowd_frames(2, split="test", seed=5)
    cpu = cl.load("toon-detector")
    gpu = cl.load("toon-detector")
    gpu.module.cuda()
    assert gpu.device.type == "cuda"
    on_cpu, on_gpu = cpu(frames), gpu(frames)
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert a.labels.tolist() == b.labels.tolist()
        torch.testing.assert_close(b.boxes, a.boxes, atol=0.05, rtol=0)
    m_cpu = DM.drise(cpu, frames[0], on_cpu[0][0], masks=200, seed=0)
    m_gpu = DM.drise(gpu, frames[0], on_gpu[0][0], masks=200, seed=0)
    torch.testing.assert_close(
        m_gpu.map, m_cpu.map, atol=1e-3 * float(m_cpu.map.abs().max()), rtol=0
    )
    for method in ("gradcam", "layercam"):  # box CAMs: the same map on either device
        c_cpu = DM.box_cam(cpu, frames[0], on_cpu[0][0], method=method)
        c_gpu = DM.box_cam(gpu, frames[0], on_gpu[0][0], method=method)
        assert c_gpu.map.device.type == "cpu"
        torch.testing.assert_close(
            c_gpu.map, c_cpu.map, atol=1e-3 * float(c_cpu.map.abs().max()), rtol=0
        )
    faces = cl.load("mtcnn-faces")
    faces.module.cuda()
    from skimage import data

    found = cl.detect(faces, data.astronaut())
    assert len(found) == 1 and found[0].score > 0.99
