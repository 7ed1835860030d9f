"""Attribution methods against Captum on CUDA, in one process (issue 16's GPU table).

MobileNetV2 and ResNet-50 randomly initialised (seed 0; nothing is downloaded, so this runs on
a machine without the weight packages), one 224x224 input (batch 1; Grad-CAM also at batch 8),
the same target class for every variant. Cases, each convlens at its defaults against Captum's
settings (the fastest of them is the baseline):

- Grad-CAM at the last block vs ``LayerGradCam`` (``relu_attributions=True``);
- Integrated Gradients, 50 Gauss-Legendre steps, zero baseline, vs ``IntegratedGradients``
  (all 50 at once, its default);
- SmoothGrad, 25 noisy copies (noise 0.15 of the value range), vs ``NoiseTunnel(Saliency)``
  (25 at once, its default);
- occlusion, 16x16 window, stride 8, zero fill, vs ``Occlusion`` with ``perturbations_per_eval``
  64, 256 and 729 (all windows in one batch).

Timing: CUDA synchronised around each call, variants interleaved, 3 warm-up rounds, the median
of ``--repeats`` rounds. Memory: the growth of ``torch.cuda.max_memory_allocated`` over one call.
Run where a GPU is: ``python benchmarks/gpu_attribution.py [--repeats 15] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torchvision

import convlens as cl

LAYERS = {"mobilenet_v2": "features.18", "resnet50": "layer4.2"}


DEVICE = "cuda"


def _model(name: str) -> cl.Model:
    torch.manual_seed(0)
    module = getattr(torchvision.models, name)().eval().to(DEVICE)
    return cl.Model(module)


def _variants(name: str) -> dict[str, dict[str, Callable[[], Any]]]:
    from captum.attr import (
        IntegratedGradients,
        LayerGradCam,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )

    model = _model(name)
    module = model.module
    x1 = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    x8 = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    with torch.no_grad():
        t1 = int(module(x1).argmax(1)[0])
        t8 = [int(k) for k in module(x8).argmax(1)]
    layer = dict(module.named_modules())[LAYERS[name]]
    gradcam = LayerGradCam(module, layer)
    ig = IntegratedGradients(module)
    tunnel = NoiseTunnel(Saliency(module))
    occlusion = Occlusion(module)
    std = float(0.15 * (x1.max() - x1.min()))

    def smooth() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tunnel.attribute(x1, nt_type="smoothgrad", nt_samples=25, stdevs=std, target=t1)

    def occlude(ppe: int) -> Callable[[], Any]:
        return lambda: occlusion.attribute(
            x1,
            sliding_window_shapes=(3, 16, 16),
            strides=(3, 8, 8),
            baselines=0.0,
            target=t1,
            perturbations_per_eval=ppe,
        )

    cases: dict[str, dict[str, Callable[[], Any]]] = {
        "Grad-CAM b1": {
            "convlens": lambda: cl.explain(model, x1, "gradcam", t1, layer=LAYERS[name]),
            "Captum LayerGradCam": lambda: gradcam.attribute(x1, target=t1, relu_attributions=True),
        },
        "Grad-CAM b8": {
            "convlens": lambda: cl.explain(model, x8, "gradcam", t8, layer=LAYERS[name]),
            "Captum LayerGradCam": lambda: gradcam.attribute(x8, target=t8, relu_attributions=True),
        },
        "IG 50": {
            "convlens": lambda: cl.explain(
                model, x1, "ig", t1, steps=50, rule="gausslegendre", baseline="zero"
            ),
            "Captum (50 at once)": lambda: ig.attribute(
                x1, target=t1, n_steps=50, method="gausslegendre"
            ),
        },
        "SmoothGrad 25": {
            "convlens": lambda: cl.explain(model, x1, "smoothgrad", t1, samples=25, noise=0.15),
            "Captum (25 at once)": smooth,
        },
        "occlusion 16/8": {
            "convlens": lambda: cl.explain(
                model, x1, "occlusion", t1, window=16, stride=8, fill="zero"
            ),
            **{f"Captum ppe={k}": occlude(k) for k in (64, 256, 729)},
        },
    }
    return cases


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def _peak_mib(fn: Callable[[], Any]) -> float:
    if DEVICE != "cuda":
        fn()
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--models", nargs="*", default=list(LAYERS))
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--cpu", action="store_true", help="a smoke run on the CPU")
    args = parser.parse_args()
    global DEVICE
    if args.cpu:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    else:
        torch.backends.cudnn.benchmark = True
        print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    rows = []
    for name in args.models:
        for case, variants in _variants(name).items():
            for _ in range(3):
                for fn in variants.values():
                    fn()
            samples: dict[str, list[float]] = {v: [] for v in variants}
            for _ in range(args.repeats):
                for label, fn in variants.items():
                    samples[label].append(_timed(fn))
            medians = {v: statistics.median(s) * 1e3 for v, s in samples.items()}
            peaks = {v: _peak_mib(fn) for v, fn in variants.items()}
            peer = min((v for v in variants if v != "convlens"), key=lambda v: medians[v])
            row = {
                "model": name,
                "case": case,
                "convlens_ms": medians["convlens"],
                "peer": peer,
                "peer_ms": medians[peer],
                "ratio": medians["convlens"] / medians[peer],
                "convlens_mib": peaks["convlens"],
                "peer_mib": peaks[peer],
                "memory_ratio": (
                    peaks["convlens"] / peaks[peer] if peaks[peer] > 0 else float("nan")
                ),
                "all_ms": medians,
            }
            rows.append(row)
            print(
                f"{name:13s} {case:15s} convlens {row['convlens_ms']:8.2f} ms  {peer:22s} "
                f"{row['peer_ms']:8.2f} ms  ratio {row['ratio']:.2f}x  memory "
                f"{row['convlens_mib']:.0f} / {row['peer_mib']:.0f} MiB "
                f"({row['memory_ratio']:.2f}x)",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
