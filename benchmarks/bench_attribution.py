"""Attribution methods against their peers, in the same process, on the CPU (issue 3's
"Performance" targets). MobileNetV2 with its real weights, torchvision's ResNet-50 randomly
initialised (seed 0; nothing is downloaded), 224x224 photos prepared once by MobileNetV2's
preprocessing; every variant explains the same inputs for the same class (each image's top-1
for that network, computed once up front, so no variant pays for a top-1 pass).

1. Grad-CAM at the last block (MobileNetV2 ``features.18`` = ``features[-1]``, ResNet-50
   ``layer4.2`` = ``layer4[-1]``), batch 1 and 8: convlens vs pytorch-grad-cam's ``GradCAM``
   (built per call in a ``with`` block, as its hooks would otherwise stay on the model; its
   parameter gradients are cleared after each call) vs Captum's ``LayerGradCam``
   (``relu_attributions=True``, as ours), and a plain forward pass in inference mode, the
   floor. Targets: >= 2.5x faster than pytorch-grad-cam (ratio <= 0.4x), no slower than Captum,
   within 1.2x of the plain forward pass.
2. Occlusion on MobileNetV2, 16x16 window, stride 8 (729 windows), zero fill, batch 1:
   convlens (default batch size) vs Captum's ``Occlusion`` with ``perturbations_per_eval`` 8, 16
   and 32, all interleaved; the setting with the lowest median is the baseline. Target: no
   slower; the maps' largest difference and both peak memories are reported.
3. Integrated Gradients (50 steps, Gauss-Legendre, zero baseline) and SmoothGrad (25 noisy
   copies of the saliency map, noise 0.15 of the value range) on MobileNetV2, batch 1: convlens
   (default batch size) vs Captum's ``IntegratedGradients`` and ``NoiseTunnel(Saliency)`` both
   at their defaults (all 50 steps / 25 copies in one batch) and with convlens's chunk size
   (``internal_batch_size`` / ``nt_samples_batch_size``). Targets: no slower than either
   setting; at most half the peak memory of Captum's default.
4. Score-CAM on MobileNetV2 ``features.18`` (1280 channels), batch 1, ``align_corners=True``
   (pytorch-grad-cam's upsampling): convlens vs pytorch-grad-cam's ``ScoreCAM`` with
   ``batch_size`` 16 (its default) and 32, all interleaved; the faster is the baseline. Targets:
   no slower, at most a quarter of its peak memory.

The slow cases (2-4) take ``min(repeats, SLOW_REPEATS)`` timed runs (IG and SmoothGrad after one
warm-up round; occlusion and Score-CAM, 12-20 s a run, without one); Grad-CAM at batch 8 takes
``min(repeats, GRADCAM_B8_REPEATS)``. The whole file takes about 9 minutes on the 2-core VM.
Peak memory is the growth of the resident set (``VmHWM`` after the peak is reset through
``/proc/self/clear_refs``, minus ``VmRSS`` before) over one call in a fresh process that has
loaded the model and run one plain forward pass; one process per variant, run after the timings.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torchvision
from _timing import Quantity, Row, Timing, compare, interleaved

import convlens as cl

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
BENCH = "attribution"
SLOW_REPEATS = 3
GRADCAM_B8_REPEATS = 6
FLOOR_TARGET = 1.2  # Grad-CAM / plain forward
PGC_TARGET = 1 / 2.5  # Grad-CAM / pytorch-grad-cam: at least 2.5x faster
NO_SLOWER = 1.0
IG_MEMORY_TARGET = 0.5
SCORECAM_MEMORY_TARGET = 0.25
WINDOW, STRIDE = 16, 8
OCCLUSION_PPE = (8, 16, 32)
IG_STEPS, SG_SAMPLES, SG_NOISE = 50, 25, 0.15
SCORECAM_BATCHES = (16, 32)
LAYERS = {"mobilenet_v2": "features.18", "resnet50": "layer4.2"}

Variants = dict[str, Callable[[], Any]]


# -- the networks, the inputs and the targets, built once per process ------------------------


@cache
def _model(name: str) -> cl.Model:
    if name == "mobilenet_v2":
        return cl.load("mobilenet_v2")
    torch.manual_seed(0)
    return cl.Model(torchvision.models.resnet50().eval())  # random init: nothing downloaded


@cache
def _inputs(batch: int) -> torch.Tensor:
    """(batch, 3, 224, 224): the sample photos (chelsea first), cycled, prepared once."""
    photos = [cl.sample("chelsea"), *(p for n, p in cl.samples().items() if n != "chelsea")]
    return _model("mobilenet_v2").prepare([photos[i % len(photos)] for i in range(batch)]).inputs


@cache
def _targets(name: str, batch: int) -> tuple[int, ...]:
    with torch.inference_mode():
        return tuple(_model(name).module(_inputs(batch)).argmax(1).tolist())


def _plain(module: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        module(x)


def _default_batch(factor: float = 1.0) -> int:
    """convlens's default copies per forward pass for MobileNetV2 (``batch_size_for``)."""
    from convlens.techniques.attribution.base import batch_size_for

    return batch_size_for(_model("mobilenet_v2"), None, factor=factor)


# -- the variants of each case -----------------------------------------------------------------


def _gradcam(name: str, batch: int) -> Variants:
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, targets = _model(name), _inputs(batch), list(_targets(name, batch))
    module, layer = model.module, LAYERS[name]
    layer_module = module.get_submodule(layer)
    captum = LayerGradCam(module, layer_module)

    def pytorch_grad_cam() -> Any:
        with GradCAM(module, [layer_module]) as method:
            out = method(x, [ClassifierOutputTarget(t) for t in targets])
        module.zero_grad(set_to_none=True)  # it calls .backward(): drop the parameter grads
        return out

    return {
        "plain forward": lambda: _plain(module, x),
        "pytorch-grad-cam GradCAM": pytorch_grad_cam,
        "Captum LayerGradCam": lambda: captum.attribute(x, target=targets, relu_attributions=True),
        "convlens gradcam": lambda: cl.explain(model, x, "gradcam", targets, layer=layer),
    }


def _occlusion() -> Variants:
    from captum.attr import Occlusion

    model, x, (target,) = _model("mobilenet_v2"), _inputs(1), _targets("mobilenet_v2", 1)
    captum = Occlusion(model.module)

    def captum_at(k: int) -> Callable[[], Any]:
        return lambda: captum.attribute(
            x,
            sliding_window_shapes=(3, WINDOW, WINDOW),
            strides=(3, STRIDE, STRIDE),
            target=target,
            perturbations_per_eval=k,
        )

    variants: Variants = {
        "convlens occlusion": lambda: cl.explain(
            model, x, "occlusion", target, window=WINDOW, stride=STRIDE
        )
    }
    variants.update({f"Captum Occlusion ppe={k}": captum_at(k) for k in OCCLUSION_PPE})
    return variants


def _integrated_gradients() -> Variants:
    from captum.attr import IntegratedGradients

    model, x, (target,) = _model("mobilenet_v2"), _inputs(1), _targets("mobilenet_v2", 1)
    captum = IntegratedGradients(model.module)
    chunk = _default_batch(factor=2.0)

    def captum_at(size: int | None) -> Callable[[], Any]:
        return lambda: captum.attribute(
            x, target=target, n_steps=IG_STEPS, method="gausslegendre", internal_batch_size=size
        )

    return {
        "convlens integrated_gradients": lambda: cl.explain(
            model, x, "ig", target, steps=IG_STEPS, rule="gausslegendre", baseline="zero"
        ),
        "Captum IntegratedGradients (default: 50 at once)": captum_at(None),
        f"Captum IntegratedGradients internal_batch_size={chunk}": captum_at(chunk),
    }


def _smoothgrad() -> Variants:
    from captum.attr import NoiseTunnel, Saliency

    model, x, (target,) = _model("mobilenet_v2"), _inputs(1), _targets("mobilenet_v2", 1)
    captum = NoiseTunnel(Saliency(model.module))
    std = float(SG_NOISE * (x.max() - x.min()))  # convlens's noise level, per image
    chunk = _default_batch(factor=2.0)

    def captum_at(size: int | None) -> Callable[[], Any]:
        def call() -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return captum.attribute(
                    x,
                    nt_type="smoothgrad",
                    nt_samples=SG_SAMPLES,
                    nt_samples_batch_size=size,
                    stdevs=std,
                    target=target,
                )

        return call

    return {
        "convlens smoothgrad": lambda: cl.explain(
            model, x, "smoothgrad", target, samples=SG_SAMPLES, noise=SG_NOISE
        ),
        "Captum NoiseTunnel(Saliency) (default: 25 at once)": captum_at(None),
        f"Captum NoiseTunnel(Saliency) nt_samples_batch_size={chunk}": captum_at(chunk),
    }


def _scorecam() -> Variants:
    import pytorch_grad_cam.score_cam as peer_module
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # no progress bar on the console (its module's own name for tqdm, nothing else changes)
    peer_module.tqdm = SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)  # type: ignore[assignment]

    model, x, (target,) = _model("mobilenet_v2"), _inputs(1), _targets("mobilenet_v2", 1)
    layer = LAYERS["mobilenet_v2"]
    layer_module = model.module.get_submodule(layer)

    def peer_at(size: int) -> Callable[[], Any]:
        def call() -> Any:
            with ScoreCAM(model.module, [layer_module]) as method:
                method.batch_size = size
                return method(x, [ClassifierOutputTarget(target)])

        return call

    variants: Variants = {
        "convlens scorecam": lambda: cl.explain(
            model, x, "scorecam", target, layer=layer, align_corners=True
        )
    }
    variants.update({f"pytorch-grad-cam ScoreCAM batch_size={k}": peer_at(k) for k in (16, 32)})
    return variants


SECTIONS: dict[str, Callable[[], Variants]] = {
    "occlusion": _occlusion,
    "ig": _integrated_gradients,
    "smoothgrad": _smoothgrad,
    "scorecam": _scorecam,
}


# -- peak memory, one fresh process per variant ---------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_child(section: str, case: str) -> None:
    """Run in a fresh process: print the growth of the resident set's peak (MiB) over one call
    of ``case``, after loading the model and one plain forward pass of the same input."""
    variants = SECTIONS[section]()
    fn = variants[case]
    _plain(_model("mobilenet_v2").module, _inputs(1))
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        exact = True
    except OSError:
        exact = False
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (peak - before) / 1024, "exact": exact, "seconds": seconds}))


def _peak_mib(section: str, case: str) -> float:
    code = (
        f"import sys; sys.path[:0] = [{str(HERE)!r}, {str(SRC)!r}]; "
        f"import bench_attribution as b; b.peak_child({section!r}, {case!r})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"peak memory of {case!r} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["exact"]:
        print(f"  ({case}: VmHWM could not be reset; ru_maxrss growth is an upper bound)")
    return float(result["peak_mib"])


def _peaks(section: str, cases: list[str]) -> dict[str, Quantity]:
    return {case: Quantity((_peak_mib(section, case),), "MiB") for case in cases}


# -- rows -----------------------------------------------------------------------------------------


def _versus(
    label: str,
    measures: Mapping[str, Timing | Quantity],
    ours: str,
    peer: str,
    target: float | None,
    what: str = "",
) -> Row:
    """``ours`` over ``peer`` as its own row (the median column shows ours)."""
    return Row(
        BENCH,
        f"{label} {ours} / {peer}{what}",
        measures[ours],
        baseline=peer,
        ratio=measures[ours].median / measures[peer].median,
        target=target,
    )


def _labelled(label: str, rows: list[Row]) -> list[Row]:
    out = []
    for r in rows:
        baseline = f"{label} {r.baseline}" if r.baseline else None
        out.append(
            Row(r.benchmark, f"{label} {r.case}", r.timing, baseline, r.ratio, r.target, r.strict)
        )
    return out


def _kept(variants: Variants, results: dict[str, Any]) -> Variants:
    """The variants, each keeping its last result in ``results`` (to compare the maps)."""

    def keeping(name: str, fn: Callable[[], Any]) -> Callable[[], None]:
        return lambda: results.__setitem__(name, fn())

    return {name: keeping(name, fn) for name, fn in variants.items()}


def _map(result: Any) -> torch.Tensor:
    return (result.map if isinstance(result, cl.Attribution) else result).detach().float()


# -- the cases ----------------------------------------------------------------------------------


def gradcam_rows(repeats: int) -> list[Row]:
    rows = []
    for name in ("mobilenet_v2", "resnet50"):
        for batch in (1, 8):
            label = f"{name} b{batch} gradcam:"
            variants = _gradcam(name, batch)
            n = repeats if batch == 1 else min(repeats, GRADCAM_B8_REPEATS)
            timings = interleaved(variants, repeats=n, warmup=2 if batch == 1 else 1)
            ours = "convlens gradcam"
            rows += _labelled(
                label,
                compare(BENCH, timings, "plain forward", {ours: (FLOOR_TARGET, False)}),
            )
            rows.append(_versus(label, timings, ours, "pytorch-grad-cam GradCAM", PGC_TARGET))
            rows.append(_versus(label, timings, ours, "Captum LayerGradCam", NO_SLOWER))
    return rows


def _against_best(
    label: str, variants: Variants, ours: str, repeats: int, results: dict[str, Any] | None = None
) -> tuple[list[Row], str]:
    """Every variant interleaved (no warm-up round: the runs are long); the peer's setting with
    the lowest median is the baseline of every ratio. Returns the rows and that setting."""
    if results is not None:
        variants = _kept(variants, results)
    timings = interleaved(variants, repeats=min(repeats, SLOW_REPEATS), warmup=0)
    best = min((k for k in timings if k != ours), key=lambda k: timings[k].median)
    return _labelled(label, compare(BENCH, timings, best, {ours: (NO_SLOWER, False)})), best


def occlusion_rows(repeats: int) -> list[Row]:
    label = f"mobilenet_v2 b1 occlusion {WINDOW}/{STRIDE}:"
    ours = "convlens occlusion"
    results: dict[str, Any] = {}
    rows, best = _against_best(label, _occlusion(), ours, repeats, results)
    ours_map, theirs = _map(results[ours]), _map(results[best])[:, 0]
    diff = float((ours_map - theirs).abs().max())
    peak = float(theirs.abs().max())
    case = f"{label} max |convlens - {best}| (peak |map| {peak:.3g})"
    rows.append(Row(BENCH, case, Quantity((diff,), "")))
    memory = _peaks("occlusion", [ours, best])
    rows += _labelled(f"{label} peak memory:", compare(BENCH, memory, best))
    return rows


def _gradient_rows(section: str, label: str, ours: str, repeats: int) -> list[Row]:
    variants = SECTIONS[section]()
    default, matched = (k for k in variants if k != ours)
    timings = interleaved(variants, repeats=min(repeats, SLOW_REPEATS), warmup=1)
    rows = _labelled(label, compare(BENCH, timings, default, {ours: (NO_SLOWER, False)}))
    rows.append(_versus(label, timings, ours, matched, NO_SLOWER))
    memory = _peaks(section, list(variants))
    rows += _labelled(
        f"{label} peak memory:", compare(BENCH, memory, default, {ours: (IG_MEMORY_TARGET, False)})
    )
    return rows


def scorecam_rows(repeats: int) -> list[Row]:
    label = "mobilenet_v2 b1 scorecam features.18:"
    ours = "convlens scorecam"
    rows, best = _against_best(label, _scorecam(), ours, repeats)
    memory = _peaks("scorecam", [ours, best])
    rows += _labelled(
        f"{label} peak memory:",
        compare(BENCH, memory, best, {ours: (SCORECAM_MEMORY_TARGET, False)}),
    )
    return rows


def run(repeats: int = 25) -> list[Row]:
    """Every measurement of this file, as table rows (the slow cases take fewer repeats)."""
    rows: list[Row] = []
    parts: list[tuple[str, Callable[[], list[Row]]]] = [
        ("gradcam", lambda: gradcam_rows(repeats)),
        ("occlusion", lambda: occlusion_rows(repeats)),
        (
            "ig",
            lambda: _gradient_rows(
                "ig", "mobilenet_v2 b1 ig 50 steps:", "convlens integrated_gradients", repeats
            ),
        ),
        (
            "smoothgrad",
            lambda: _gradient_rows(
                "smoothgrad", "mobilenet_v2 b1 smoothgrad 25:", "convlens smoothgrad", repeats
            ),
        ),
        ("scorecam", lambda: scorecam_rows(repeats)),
    ]
    selected = os.environ.get("BENCH_ATTRIBUTION_ONLY")  # e.g. "gradcam,scorecam"
    for name, part in parts:
        if selected and name not in selected.split(","):
            continue
        start = time.perf_counter()
        rows += part()
        print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows
