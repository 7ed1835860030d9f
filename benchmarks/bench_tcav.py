"""TCAV against Captum, in the same process, on the CPU (issue 6's targets).

The job, the same for every variant: MobileNetV2 (real weights), layers ``features.14`` and
``features.17``, 3 concepts x 30 pictures (toons' stripes, dots and red, 224x224), 10 random
sets x 30 pictures (toons' random sets), 30 target pictures (crops of the bundled photos),
target class "tabby", nothing cached on disk. Every variant gets the same network-input
tensors, so no variant pays for decoding or resizing pictures.

Variants:

1. Captum 0.9's ``TCAV`` as shipped (its default SGD classifier), experimental sets as in its
   tutorial: each concept against each random set, and random set 0 against the others.
   Its activation cache is never hit: ``TCAV.load_cavs`` calls ``AV.exists(path, model_id,
   layer, identifier)`` against the signature ``(path, model_id, identifier, layer)``, so
   every experimental set re-runs both of its concepts' forward passes.
2. Captum with only that argument order fixed (patched here, for this run only).
3. ``convlens.tcav`` with its default test (``"local"``: a channel-mean CAV per concept and a
   permutation test, ``max(999, 5 m / alpha - 1)`` relabellings, here 1199 for 3 concepts x 2
   layers; it reads the target pictures' activations as well as their gradients).
3b. ``convlens.tcav`` with ``test="sets"`` (fits more CAVs: every random set against every
   other, 90 per layer, besides the 30 concept CAVs), for comparison.
4. The physical floor: one forward pass over every picture (420, in batches of 32) plus one
   backward pass, from the target logit to ``features.14``, over the 30 target pictures; the
   network called as it comes (NCHW input), and again with channels-last input. convlens can
   beat it: its pass stops after ``features.17``, runs batch norm folded into the
   convolutions, and feeds oneDNN channels-last input.

Targets: convlens at least 8x faster than Captum as shipped (ratio <= 0.125x), at least 2x
faster than Captum with the cache fixed (<= 0.5x), within 1.3x of the floor; the same
``sign_count`` for the same CAVs (tested in tests/test_tcav.py); true CAV accuracies (Captum
reports about 0.5 for two-concept sets: the argmax over its single output column).
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
import warnings
from typing import Any

import numpy as np
import torch
from _timing import Quantity, Row, Timing, compare

import convlens as cl
from convlens.data import toons

LAYERS = ["features.14", "features.17"]
CONCEPTS = ["stripes", "dots", "red"]
N = 30
RANDOM_SETS = 10
TARGET = "tabby"


def _inputs(
    model: cl.Model, n: int = N, random_sets: int = RANDOM_SETS
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    concepts = {
        c: model.prepare(list(toons.concept_images(c, n, seed=0, size=224))).inputs
        for c in CONCEPTS
    }
    randoms = {
        f"random_{k}": model.prepare(
            list(toons.concept_images(f"random_{k}", n, seed=0, size=224))
        ).inputs
        for k in range(random_sets)
    }
    photos = [cl.load_image(p) for p in cl.samples().values()]
    rng = np.random.default_rng(0)
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crops.append(photo.crop((x, y, x + side, y + side)))
    return concepts, randoms, model.prepare(crops).inputs


def captum_missing() -> str | None:
    if importlib.util.find_spec("captum") is None:
        return "captum is not installed (the dev extra)"
    return None


def _captum(model: cl.Model, concepts, randoms, targets, fixed: bool) -> dict[str, Any]:
    from captum.concept import TCAV, Concept
    from captum.concept._core import tcav as captum_tcav

    index = model.class_index(TARGET)
    made = [Concept(i, name, [x]) for i, (name, x) in enumerate(concepts.items())]
    rand = [Concept(len(made) + k, name, [x]) for k, (name, x) in enumerate(randoms.items())]
    sets = [[c, r] for c in made for r in rand] + [[rand[0], r] for r in rand[1:]]
    original = captum_tcav.AV
    if fixed:

        class FixedAV(original):  # type: ignore[misc, valid-type]
            @staticmethod
            def exists(path, model_id, identifier=None, layer=None, num_id=None):  # type: ignore[override]
                # load_cavs passes (layer, identifier); the signature is (identifier, layer)
                return original.exists(path, model_id, layer, identifier, num_id)

        captum_tcav.AV = FixedAV
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tcav = TCAV(model.module.eval(), LAYERS, save_path=tmp)
            start = time.perf_counter()
            tcav.compute_cavs(sets)
            cavs_s = time.perf_counter() - start
            start = time.perf_counter()
            scores = tcav.interpret(targets, sets, target=index)
            interpret_s = time.perf_counter() - start
            accs = [
                float(tcav.cavs[key][layer].stats["accs"])
                for key in tcav.cavs
                for layer in LAYERS
                if tcav.cavs[key][layer] is not None
            ]
    finally:
        captum_tcav.AV = original
    return {
        "cavs_s": cavs_s,
        "interpret_s": interpret_s,
        "total_s": cavs_s + interpret_s,
        "accs": accs,
        "scores": scores,
    }


def _ours(model: cl.Model, concepts, randoms, targets, test: str = "local") -> dict[str, Any]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = cl.tcav(model, TARGET, targets, concepts, random=randoms, layers=LAYERS, test=test)
    total = time.perf_counter() - start
    return {"total_s": total, **result.timings, "result": result}


def _floor(model: cl.Model, concepts, randoms, targets, channels_last: bool = False) -> float:
    module = model.module.eval()
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    layer = module.get_submodule(LAYERS[0])
    kept: list[torch.Tensor] = []

    def leaf(_m, _i, out):
        out = out.detach().requires_grad_(True)
        kept.append(out)
        return out

    index = model.class_index(TARGET)
    try:
        start = time.perf_counter()
        with torch.no_grad():
            for x in [*concepts.values(), *randoms.values(), targets]:
                for batch in x.split(32):
                    module(_layout(batch, channels_last))
        handle = layer.register_forward_hook(leaf)
        try:
            for batch in targets.split(32):
                kept.clear()
                out = module(_layout(batch, channels_last))
                torch.autograd.grad(out[:, index].sum(), kept)
        finally:
            handle.remove()
        return time.perf_counter() - start
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def run(repeats: int = 3) -> list[Row]:
    model = cl.load("mobilenet_v2")
    concepts, randoms, targets = _inputs(model)
    rows: list[Row] = []
    missing = captum_missing()
    n = max(1, min(repeats, 3))
    _ours(model, concepts, randoms, targets)  # warm-up: oneDNN builds its kernels once
    floor = [_floor(model, concepts, randoms, targets) for _ in range(n)]
    floor_cl = [_floor(model, concepts, randoms, targets, channels_last=True) for _ in range(n)]
    ours = [_ours(model, concepts, randoms, targets) for _ in range(n)]
    sets = [_ours(model, concepts, randoms, targets, "sets") for _ in range(n)]
    timings: dict[str, Timing] = {
        "physical floor (forward all + backward targets)": Timing(tuple(floor)),
        "the same floor, channels-last input": Timing(tuple(floor_cl)),
        "convlens tcav": Timing(tuple(o["total_s"] for o in ours)),
        "convlens tcav, test=sets": Timing(tuple(o["total_s"] for o in sets)),
    }
    best = min(ours, key=lambda o: o["total_s"])
    for phase in ("activations_s", "gradients_s", "cavs_and_scores_s"):
        print(f"  convlens {phase}: {best[phase]:.2f} s", flush=True)
    result = best["result"]
    accuracy = [r["cav_accuracy"] for r in result.rows]
    print(f"  convlens CAV accuracy (held-out) {min(accuracy):.2f}-{max(accuracy):.2f}", flush=True)
    if missing is None:
        for fixed, label in ((False, "captum TCAV as shipped"), (True, "captum TCAV, cache fixed")):
            got = _captum(model, concepts, randoms, targets, fixed)
            timings[label] = Timing((got["total_s"],))
            accs = got["accs"]
            print(
                f"  {label}: compute_cavs {got['cavs_s']:.1f} s, "
                f"interpret {got['interpret_s']:.1f} s, "
                f"reported CAV accuracy {min(accs):.2f}-{max(accs):.2f}",
                flush=True,
            )
        shipped = timings["captum TCAV as shipped"].median
        fixed_t = timings["captum TCAV, cache fixed"].median
        ours_t = timings["convlens tcav"].median
        print(
            f"  convlens / captum shipped: {ours_t / shipped:.3f}x (target <= 0.125x)", flush=True
        )
        print(f"  convlens / captum fixed:   {ours_t / fixed_t:.3f}x (target <= 0.5x)", flush=True)
        sets_t = timings["convlens tcav, test=sets"].median
        print(f"  convlens sets / captum fixed: {sets_t / fixed_t:.3f}x", flush=True)
    else:
        print(f"  captum rows skipped: {missing}", flush=True)
    rows += compare(
        "tcav",
        timings,
        "physical floor (forward all + backward targets)",
        {"convlens tcav": (1.3, False)},
    )
    for phase in ("activations_s", "gradients_s", "cavs_and_scores_s"):
        rows.append(
            Row("tcav", f"convlens phase: {phase[:-2]}", Quantity((best[phase] * 1000,), "ms"))
        )
    return rows


def small(repeats: int = 2, n: int = 20, random_sets: int = RANDOM_SETS) -> dict[str, float]:
    """The small configuration: convlens's default test against Captum with its cache fixed
    only (the same concepts, the same number of random sets, ``n`` pictures per set and as
    many targets), the two alternated ``repeats`` times after one warm-up of each, so that load
    from other work falls on both alike. Prints and returns the ratios of the medians of wall
    and CPU time (this process's, all threads)."""
    missing = captum_missing()
    if missing is not None:
        raise SystemExit(missing)
    model = cl.load("mobilenet_v2")
    concepts, randoms, targets = _inputs(model, n, random_sets)
    wall: dict[str, list[float]] = {"convlens": [], "captum": []}
    cpu: dict[str, list[float]] = {"convlens": [], "captum": []}
    for round_ in range(repeats + 1):
        for name in ("convlens", "captum"):
            w0, c0 = time.perf_counter(), time.process_time()
            if name == "convlens":
                _ours(model, concepts, randoms, targets)
            else:
                _captum(model, concepts, randoms, targets, fixed=True)
            w, c = time.perf_counter() - w0, time.process_time() - c0
            print(f"  round {round_} {name}: {w:.1f} s wall, {c:.1f} s CPU", flush=True)
            if round_:  # round 0 warms both up (oneDNN kernels, Captum's first pass)
                wall[name].append(w)
                cpu[name].append(c)
    out = {
        "wall_ratio": float(np.median(wall["convlens"]) / np.median(wall["captum"])),
        "cpu_ratio": float(np.median(cpu["convlens"]) / np.median(cpu["captum"])),
    }
    print(
        f"tcav small ({len(CONCEPTS)} concepts, {random_sets} random sets of {n}, {n} targets, "
        f"{', '.join(LAYERS)}; {torch.get_num_threads()} threads): convlens (test 'local') / "
        f"captum with its cache fixed = {out['wall_ratio']:.2f}x wall "
        f"({1 / out['wall_ratio']:.1f}x faster), {out['cpu_ratio']:.2f}x CPU "
        f"({1 / out['cpu_ratio']:.1f}x faster); target <= 0.5x",
        flush=True,
    )
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="convlens vs Captum fixed only")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--pictures", type=int, default=20, help="per set (--small)")
    args = parser.parse_args()
    if args.small:
        small(args.repeats or 2, args.pictures)
    else:
        from run import table

        print(table(run(args.repeats or 3)))
