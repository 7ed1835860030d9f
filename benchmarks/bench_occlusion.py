"""Occlusion against Captum in the same process (issue 16): incremental inference (Krypton,
Nakandala et al., SIGMOD 2019) and its approximate modes.

224x224 input (chelsea, prepared by MobileNetV2's preprocessing), 16x16 window, zero fill,
batch 1, each network's top-1 class (computed once up front): VGG-16 and ResNet-18 at stride 4
(Krypton's setting, 53 x 53 = 2809 windows), MobileNetV2 with its real weights and ResNet-50 at
stride 8 (27 x 27 = 729 windows). VGG-16, ResNet-18 and ResNet-50 are
torchvision's, randomly initialised (seed 0; nothing is downloaded): speed does not depend on
the weights, but their maps (and so the approximate modes' SSIM) are those of random networks.

Variants, all in one process and on one thread on the CPU (``torch.set_num_threads(1)``):

- Captum's ``Occlusion`` at its best ``perturbations_per_eval``: each of ``PPE`` (CPU) or
  ``PPE_CUDA`` is run once on the same case at stride 16 (196 windows); the fastest is then
  timed at the case's stride, as the baseline of every ratio;
- convlens plain (``incremental=False``, today's path, default batch size);
- convlens incremental, exact (the default ``incremental="auto"``);
- convlens ``approximate="drilldown"`` and ``approximate="cap"`` at their defaults, and
  drill-down with ``drill_fraction=0`` ("coarse only": every other row and column of windows,
  the rest interpolated).

On a GPU, convolutions run in float32 (TF32 off, ``--tf32`` keeps PyTorch's default): with TF32
every map, Captum's and plain convlens's too, moves by about 1e-2 of its peak, so the identity
could not be checked. Before timing, every variant runs once at stride 16 (on a GPU at the
case's stride, so that cuDNN has planned its convolutions for those shapes); then each is timed
``repeats`` times (``min(repeats, SLOW_REPEATS)``; one by default, the runs are long), the
variants in a shuffled order each round. Rows: each variant's time and ratio to Captum's best,
with the issue's targets (exact <= 1/3 on VGG-16 and ResNet-18, <= 1/2 on MobileNetV2 and
ResNet-50; approximate <= 1/10); the largest |exact - plain| over the plain map's peak (target
<= 1e-4); the approximate maps' SSIM to the exact one (target >= 0.9, on the signed maps with
the exact map's range as data range, 7x7 window, :func:`convlens.core.stats.ssim`); the share
of windows an oracle drill-down needs for SSIM 0.9 (:func:`_oracle_share`: the bound on every
drill-down's ratio); and how many times fewer floating-point operations one window's boxes
take than a forward pass (the bound on the exact path's lead at equal efficiency per
operation).

    python benchmarks/run.py occlusion                      # every case, CPU, one thread
    PYTHONPATH=src python benchmarks/bench_occlusion.py --device cuda   # the same on a GPU
    PYTHONPATH=src python benchmarks/bench_occlusion.py --cases vgg16 --stride 8
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torchvision
from _timing import Quantity, Row, Timing

import convlens as cl
from convlens.techniques.attribution.occlusion import _ssim, occlusion

BENCH = "occlusion"
WINDOW = 16
CASES = {"mobilenet_v2": 8, "resnet18": 4, "resnet50": 8, "vgg16": 4}
TARGETS = {"vgg16": 1 / 3, "resnet18": 1 / 3, "mobilenet_v2": 1 / 2, "resnet50": 1 / 2}
APPROXIMATE_TARGET = 1 / 10
PPE = (8, 16, 32)
PPE_CUDA = (64, 128, 256, 512)
SELECTION_STRIDE = 16
SLOW_REPEATS = 1
DEVICE = torch.device("cpu")

Variant = Callable[[], Any]


@cache
def _model(name: str) -> cl.Model:
    if name == "mobilenet_v2":
        model = cl.load("mobilenet_v2")
    else:
        torch.manual_seed(0)  # random init: nothing downloaded
        model = cl.Model(getattr(torchvision.models, name)().eval())
    model.module.to(DEVICE)
    return model


@cache
def _input() -> torch.Tensor:
    return _model("mobilenet_v2").prepare(cl.sample("chelsea")).inputs.to(DEVICE)


@cache
def _target(name: str) -> int:
    with torch.inference_mode():
        return int(_model(name).module(_input()).argmax(1))


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Variant) -> tuple[float, Any]:
    _sync()
    start = time.perf_counter()
    result = fn()
    _sync()
    return time.perf_counter() - start, result


def _captum(name: str, stride: int, ppe: int) -> Variant:
    from captum.attr import Occlusion

    captum = Occlusion(_model(name).module)
    x, target = _input(), _target(name)
    return lambda: captum.attribute(
        x,
        sliding_window_shapes=(3, WINDOW, WINDOW),
        strides=(3, stride, stride),
        target=target,
        perturbations_per_eval=ppe,
    )


def _ours(name: str, stride: int, **options: Any) -> Variant:
    model, x, target = _model(name), _input(), _target(name)
    return lambda: occlusion(model, x, target, window=WINDOW, stride=stride, **options)


def _variants(name: str, stride: int, ppe: int) -> dict[str, Variant]:
    return {
        f"Captum Occlusion ppe={ppe}": _captum(name, stride, ppe),
        "convlens plain": _ours(name, stride, incremental=False),
        "convlens incremental exact": _ours(name, stride),
        "convlens approximate drilldown": _ours(name, stride, approximate="drilldown"),
        "convlens approximate drilldown coarse only": _ours(
            name, stride, approximate="drilldown", drill_fraction=0.0
        ),
        "convlens approximate cap": _ours(name, stride, approximate="cap"),
    }


def _best_ppe(name: str) -> int:
    """Captum's fastest ``perturbations_per_eval`` on this case at stride 16 (one run each)."""
    choices = PPE_CUDA if DEVICE.type == "cuda" else PPE
    _timed(_captum(name, SELECTION_STRIDE, choices[0]))  # warm-up
    seconds = {k: _timed(_captum(name, SELECTION_STRIDE, k))[0] for k in choices}
    print(f"  {name}: Captum at stride {SELECTION_STRIDE}: " + ", ".join(
        f"ppe={k} {s:.2f} s" for k, s in seconds.items()), flush=True)  # fmt: skip
    return min(seconds, key=seconds.__getitem__)


def case_rows(name: str, repeats: int) -> list[Row]:
    stride = CASES[name]
    label = f"{name} {DEVICE.type} {WINDOW}/{stride}:"
    ppe = _best_ppe(name)
    warm = SELECTION_STRIDE if DEVICE.type == "cpu" else stride  # on a GPU: plans for the shapes
    for fn in _variants(name, warm, ppe).values():
        fn()
    variants = _variants(name, stride, ppe)
    samples: dict[str, list[float]] = {k: [] for k in variants}
    results: dict[str, Any] = {}
    order = random.Random(0)
    for _ in range(max(1, min(repeats, SLOW_REPEATS))):
        for case in order.sample(list(variants), len(variants)):
            seconds, results[case] = _timed(variants[case])
            samples[case].append(seconds)
            print(f"  {label} {case}: {seconds:.2f} s", flush=True)
    baseline = next(iter(variants))
    base = Timing(tuple(samples[baseline])).median
    rows = []
    for case, times in samples.items():
        target = TARGETS[name] if case.endswith("exact") else None
        target = APPROXIMATE_TARGET if "approximate" in case else target
        ratio = None if case == baseline else Timing(tuple(times)).median / base
        rows.append(
            Row(BENCH, f"{label} {case}", Timing(tuple(times)),
                None if case == baseline else f"{label} {baseline}", ratio, target)
        )  # fmt: skip
    exact, plain = (results[k].map for k in ("convlens incremental exact", "convlens plain"))
    peak = float(plain.abs().max())
    diff = float((exact - plain).abs().max()) / peak
    rows.append(Row(BENCH, f"{label} max |exact - plain| / peak (<= 1e-4)", Quantity((diff,), "")))
    for mode in ("drilldown", "drilldown coarse only", "cap"):
        approximate = results[f"convlens approximate {mode}"].map
        ssim = _ssim(approximate[0].double(), exact[0].double())
        rows.append(Row(BENCH, f"{label} {mode} SSIM to exact (>= 0.9)", Quantity((ssim,), "")))
    rows += _drill_curve(label, results["convlens incremental exact"], stride)
    share = _oracle_share(results["convlens incremental exact"], stride)
    exact_ratio = Timing(tuple(samples["convlens incremental exact"])).median / base
    rows += [
        Row(BENCH, f"{label} oracle drill-down: share of windows for SSIM 0.9",
            Quantity((share,), "")),
        Row(BENCH, f"{label} oracle drill-down: best ratio (share x exact's)",
            Quantity((share * exact_ratio,), "x")),
    ]  # fmt: skip
    bound = Quantity((_flop_ratio(name),), "x")
    rows.append(Row(BENCH, f"{label} FLOPs of a forward pass / of one window's boxes", bound))
    return rows


DRILL_CURVE = ((2, 0.5), (2, 0.25), (2, 0.0), (3, 0.25), (4, 0.25))


def _drill_curve(label: str, exact: Any, stride: int) -> list[Row]:
    """Drill-down's trade-off on this case without running the network again: each setting of
    ``DRILL_CURVE`` (factor, fraction) replayed on the exact map's window drops, giving the
    share of windows it would compute and its map's SSIM to the exact one."""
    from convlens.techniques.attribution.occlusion import _cover, _spread, drill_down

    drops = exact.extras["window_drops"].double().cpu()
    cover = _cover(exact.map.shape[-1], WINDOW, stride, torch.device("cpu"))
    reference = exact.map[0].double().cpu()
    rows = []
    for factor, fraction in DRILL_CURVE:
        values, done = drill_down(lambda jobs: drops.flatten()[jobs], tuple(drops.shape),
                                  factor, fraction)  # fmt: skip
        ssim = _ssim(_spread(values, cover, cover)[0], reference)
        case = f"{label} drill-down {factor}/{fraction} replayed:"
        share = float(done.double().mean())
        rows.append(Row(BENCH, f"{case} share of windows computed", Quantity((share,), "")))
        rows.append(Row(BENCH, f"{case} SSIM to exact", Quantity((ssim,), "")))
    return rows


def _oracle_share(exact: Any, stride: int, goal: float = 0.9) -> float:
    """The least share of windows with which any drill-down can reach SSIM ``goal`` to the
    exact map: an oracle that knows every window's true drop runs the coarse grid (every 2nd
    row and column), then the windows its interpolation misses most, in that order, until the
    map's SSIM reaches ``goal`` (1 when it never does). Windows cost about the same, so the
    share times the exact path's ratio bounds every approximate drill-down's ratio."""
    from convlens.techniques.attribution.occlusion import _cover, _spread, drill_down

    drops = exact.extras["window_drops"].double().cpu()
    cover = _cover(exact.map.shape[-1], WINDOW, stride, torch.device("cpu"))
    reference = exact.map[0].double().cpu()
    coarse, done = drill_down(lambda jobs: drops.flatten()[jobs], tuple(drops.shape), 2, 0.0)
    misses = (coarse - drops).abs().masked_fill(done, -1.0).flatten()
    order = misses.argsort(descending=True)[: int((~done).sum())]
    step = max(1, drops.numel() // 100)
    for count in range(0, len(order) + step, step):
        values = coarse.flatten().clone()
        values[order[:count]] = drops.flatten()[order[:count]]
        if _ssim(_spread(values.view(drops.shape), cover, cover)[0], reference) >= goal:
            return (int(done.sum()) + min(count, len(order))) / drops.numel()
    return 1.0


def _flop_ratio(name: str) -> float:
    """How many times fewer floating-point operations the exact incremental path runs for one
    window (16 x 16, in the middle of the picture) than a whole forward pass
    (``torch.utils.flop_counter``): the speed-up over a peer's forward passes that recomputing
    only the changed boxes can give, at equal efficiency per operation."""
    from torch.utils.flop_counter import FlopCounterMode

    from convlens.techniques.attribution.incremental import Incremental
    from convlens.techniques.attribution.occlusion import occluded_patches

    module, x = _model(name).module, _input()
    engine = Incremental(module, x)
    zero = torch.zeros(1, dtype=torch.long, device=x.device)
    corner = torch.tensor([[104, 104]], device=x.device)
    box = occluded_patches(x, torch.zeros_like(x), zero, corner, (WINDOW, WINDOW))
    with FlopCounterMode(display=False) as whole, torch.inference_mode():
        module(x)
    with FlopCounterMode(display=False) as boxes:
        engine(zero, *box)
    return whole.get_total_flops() / boxes.get_total_flops()


def run(repeats: int, cases: list[str] | None = None) -> list[Row]:
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)
    rows = []
    for name in cases or list(CASES):
        rows += case_rows(name, repeats)
    return rows


def main(argv: list[str] | None = None) -> int:
    global DEVICE, SLOW_REPEATS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tf32", action="store_true", help="keep cuDNN's TF32 convolutions")
    parser.add_argument("--stride", type=int, help="one stride for every case (a slow machine)")
    args = parser.parse_args(argv)
    DEVICE = torch.device(args.device)
    SLOW_REPEATS = max(1, args.repeats)
    if args.stride:
        CASES.update({name: args.stride for name in CASES})
    if DEVICE.type == "cuda" and not args.tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    sys.path[:0] = [str(Path(__file__).resolve().parent)]
    from run import table

    if DEVICE.type == "cpu":
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {name}")
    rows = run(args.repeats, args.cases)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
