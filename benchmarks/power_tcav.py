"""Power and false positives of the TCAV tests (issue 17), against ground truth by intervention.

Every draw is independent: fresh target pictures, fresh concept pictures and fresh random
pictures, from seeds no other part of the project uses (``SEED + draw``). Per draw and class,
one ``convlens.tcav`` call as a user would make it, at every layer, with the toons' colour
concept sets at the built-in size (6 colours of 100 pictures, 10 random sets of 100 = 1000
random pictures) plus one more set of 100 *random* pictures posing as a concept ("posing");
30 target pictures per class; Bonferroni over all of them (7 concepts x 3 layers).

Printed: the intervention table (class x colour: how the class logit moves when the hair is
painted in that colour, against grey), then per test, class and layer the share of draws where
the concept the intervention says the class uses was found significant *in the positive
direction* (target >= 90 %), where the posing random set was found (corrected, as the tool
reports it; and uncorrected p < 0.05, the calibration: target <= 5 %), and where the colour no
character wears (green) was found. The same on MobileNetV2 (real ImageNet weights) with
textures from scikit-image: target class "stone wall" (its prediction for gravel), target
pictures crops of one half of the gravel photo, concepts gravel (the other half), brick and
grass, random pictures crops of other bundled photos.

Usage (each part stays under ~10 minutes on one core; results go to JSON lines)::

    PYTHONPATH=src python benchmarks/power_tcav.py toons --draws 0:10 --out power.jsonl
    PYTHONPATH=src python benchmarks/power_tcav.py toons --draws 10:20 --out power.jsonl
    PYTHONPATH=src python benchmarks/power_tcav.py mobilenet --draws 0:20 --out power.jsonl
    PYTHONPATH=src python benchmarks/power_tcav.py table power.jsonl
    PYTHONPATH=src python benchmarks/power_tcav.py intervention   # the ground truth
    PYTHONPATH=src python benchmarks/power_tcav.py diagnose       # why the set tests fail
    PYTHONPATH=src python benchmarks/power_tcav.py calibration    # the level, --trials 300 a cell
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

SEED = 31_000  # draws use SEED + k: no test, example or other benchmark uses these
LAYERS = ["pool1", "pool2", "pool3"]
N = 100  # pictures per concept set and per random set (the built-in toon sets' size)
TARGETS = 30  # target pictures per class
RANDOM_SETS = 10
OWN = {"jessie": "red", "james": "blue", "cassidy": "yellow"}
COLOURS = ("red", "blue", "green", "yellow", "white", "black")  # the toons' colour concepts
MOBILE_LAYERS = ["features.14", "features.17"]
MOBILE_TARGET = "stone wall"
MOBILE_CONCEPTS = ("gravel", "brick", "grass")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "horse", "moon", "page")


def _rows(result: Any, draw: int, model: str, target: str, test: str) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "draw": draw,
            "target": target,
            "test": test,
            "concept": r["concept"],
            "layer": r["layer"],
            "p": r["p"],
            "p_corrected": r["p_corrected"],
            "significant": r["significant"],
            "direction": r.get("direction", "+" if r["score"] > r["random_score"] else "-"),
            "score": r["score"],
        }
        for r in result.rows
    ]


def toons_draw(model: Any, draw: int, tests: list[str]) -> list[dict[str, Any]]:
    import convlens as cl
    from convlens.data import toons

    seed = SEED + draw
    concepts = {c: list(toons.concept_images(c, N, seed=seed)) for c in COLOURS}
    concepts["posing"] = list(toons.concept_images(f"random_{RANDOM_SETS}", N, seed=seed))
    randoms = {
        f"random_{k}": list(toons.concept_images(f"random_{k}", N, seed=seed))
        for k in range(RANDOM_SETS)
    }
    data = toons.generate(3 * TARGETS, split="test", seed=seed)
    out = []
    for cls in toons.CLASSES:
        targets = [p for p, n in zip(data.pixels, data.label_names, strict=True) if n == cls]
        for test in tests:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = cl.tcav(
                    model,
                    cls,
                    targets,
                    concepts,
                    random=randoms,
                    layers=LAYERS,
                    test=test,
                    seed=seed,
                )
            out += _rows(result, draw, "toon-cnn", cls, test)
    return out


def _grey(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 3 else np.stack([img] * 3, -1)


def _crops(img: np.ndarray, n: int, rng: np.random.Generator, half: str = "") -> list[np.ndarray]:
    """``n`` square crops (30-60 % of the short side), 224 px, of the whole photo or one half."""
    from PIL import Image

    img = _grey(np.asarray(img))[..., :3]
    if img.dtype != np.uint8:  # skimage's horse is boolean, some others float
        f = img.astype(np.float64)
        img = (255 * (f - f.min()) / max(1e-9, float(f.max() - f.min()))).astype(np.uint8)
    h, w = img.shape[:2]
    x0, x1 = {"": (0, w), "left": (0, w // 2), "right": (w // 2, w)}[half]
    out = []
    for _ in range(n):
        side = int(min(h, x1 - x0) * rng.uniform(0.3, 0.6))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(x0, x1 - side + 1))
        crop = Image.fromarray(img[y : y + side, x : x + side]).resize((224, 224))
        out.append(np.asarray(crop, np.uint8))
    return out


def mobilenet_sets(draw: int) -> tuple[dict[str, Any], dict[str, Any], list[np.ndarray]]:
    import skimage.data as sd

    rng = np.random.default_rng([SEED, 7, draw])
    concepts = {"gravel": _crops(sd.gravel(), N, rng, "right")}
    concepts |= {name: _crops(getattr(sd, name)(), N, rng) for name in ("brick", "grass")}
    photos = [getattr(sd, name)() for name in PHOTOS]
    pool = [c for p in photos for c in _crops(p, (RANDOM_SETS + 1) * N // len(photos) + 1, rng)]
    order = rng.permutation(len(pool))
    concepts["posing"] = [pool[i] for i in order[:N]]
    randoms = {
        f"random_{k}": [pool[i] for i in order[N * (k + 1) : N * (k + 2)]]
        for k in range(RANDOM_SETS)
    }
    targets = _crops(sd.gravel(), TARGETS, rng, "left")
    return concepts, randoms, targets


def mobilenet_draw(model: Any, draw: int, tests: list[str]) -> list[dict[str, Any]]:
    import convlens as cl

    concepts, randoms, targets = mobilenet_sets(draw)
    out = []
    for test in tests:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = cl.tcav(
                model,
                MOBILE_TARGET,
                targets,
                concepts,
                random=randoms,
                layers=MOBILE_LAYERS,
                test=test,
                seed=SEED + draw,
            )
        out += _rows(result, draw, "mobilenet_v2", MOBILE_TARGET, test)
    return out


def toons_intervention(model: Any) -> str:
    from convlens.data import toons
    from convlens.techniques.concepts import intervention_table

    data = toons.generate(180, split="test", seed=SEED - 1)
    return str(intervention_table(model, data, seed=SEED - 1))


def mobilenet_intervention(model: Any) -> str:
    """Target pictures (gravel crops) with their central square (half the side) replaced by
    a crop of each texture, against the same square in the grey of its own luminance."""
    import skimage.data as sd

    from convlens.techniques.concepts import InterventionTable, intervention_effect

    rng = np.random.default_rng([SEED, 8])
    targets = np.stack(_crops(sd.gravel(), 60, rng, "left"))
    masks = np.zeros(targets.shape[:3], bool)
    masks[:, 56:168, 56:168] = True
    rows = []
    for name in MOBILE_CONCEPTS:
        half = "right" if name == "gravel" else ""
        fills = np.stack(_crops(getattr(sd, name)(), len(targets), rng, half))
        rows.append(
            intervention_effect(
                model, MOBILE_TARGET, targets, masks, fills, part="centre", name=name
            )
        )
    return str(InterventionTable(rows))


def diagnose(model: Any) -> str:
    """Why the set tests fail, measured on fresh toons (30 pictures per set, as before): the
    own colour's TCAV score (logistic CAV on whole maps) against the random sets' scores in a
    concept's place (their range: the sign-count score saturates), the p-values of "sets" and
    "paper", and where the directional derivative along the colour's channel-mean CAV is
    positive: summed over all positions, over the hair only, over everything but the hair."""
    import torch.nn.functional as F

    import convlens as cl
    from convlens.data import toons
    from convlens.techniques.concepts import collect, null_scores

    seed = SEED - 2
    data = toons.generate(90, split="test", seed=seed)
    concepts = {c: list(toons.concept_images(c, 30, seed=seed)) for c in OWN.values()}
    randoms = {
        f"random_{k}": list(toons.concept_images(f"random_{k}", 30, seed=seed)) for k in range(10)
    }
    nothing = collect._Cache(None, "", [])
    lines = [
        "| class | layer | own colour's TCAV score | random sets' scores | sets p | paper p | "
        "derivative > 0: all positions / hair / elsewhere |",
        "|---|---|---|---|---|---|---|",
    ]
    for cls, colour in OWN.items():
        keep = [i for i, n in enumerate(data.label_names) if n == cls]
        pictures = [data.pixels[i] for i in keep]
        hair = torch.as_tensor(data.parts[keep] == toons.PARTS["hair"]).float().unsqueeze(1)
        found = {}
        for test in ("sets", "paper"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found[test] = cl.tcav(
                    model,
                    cls,
                    pictures,
                    concepts,
                    random=randoms,
                    layers=LAYERS,
                    test=test,
                    seed=seed,
                )
        index = model.class_index(cls)
        grads = collect._collect(model, pictures, LAYERS, index, 64, nothing, lambda n: None)
        means = {}
        for name, pics in [(colour, concepts[colour]), *randoms.items()]:
            got = collect._collect(model, pics, LAYERS, None, 64, nothing, lambda n: None, "stats")
            means[name] = got
        for layer in LAYERS:
            shape = found["sets"].shapes[layer]
            g = grads[layer].view(-1, *shape)
            mask = F.adaptive_max_pool2d(hair, shape[1:])
            mu_r = torch.cat([means[r][f"{layer}:mean"] for r in randoms]).mean(0)
            d = means[colour][f"{layer}:mean"].mean(0) - mu_r
            deriv = torch.einsum("tchw,c->thw", g, d)
            shares = [
                float(((deriv * m[:, 0]).sum((1, 2)) > 0).float().mean())
                for m in (torch.ones_like(mask), mask, 1 - mask)
            ]
            null = null_scores(found["sets"].null[layer], found["sets"].randoms)
            row = found["sets"].row(colour, layer)
            lines.append(
                f"| {cls} | {layer} | {row['score']:.2f} | {float(null.min()):.2f}-"
                f"{float(null.max()):.2f} | {row['p']:.3f} | "
                f"{found['paper'].row(colour, layer)['p']:.1e} | "
                + " / ".join(f"{v:.2f}" for v in shares)
                + " |"
            )
    return "\n".join(lines)


def calibration(model: Any, trials: int = 300) -> str:
    """The level of the local test, precisely: per class and layer, ``trials`` fresh splits of
    1100 random toon pictures into 100 posing as a concept and 1000 random (fixed targets, as
    the test conditions on them, with the default path's integrated gradients), p-values from
    999 relabellings. Under H0 the share of
    p < 0.05 is at most 5 %; the binomial 95 % interval is printed."""
    from convlens.core.stats import t_interval
    from convlens.data import toons
    from convlens.techniques.concepts import collect, local, significance

    seed = SEED - 3
    nothing = collect._Cache(None, "", [])
    pool = list(toons.concept_images("random_0", 1100, seed=seed))
    stats = collect._collect(model, pool, LAYERS, None, 64, nothing, lambda n: None, "stats")
    data = toons.generate(3 * TARGETS, split="test", seed=seed)
    lines = [
        "| class | layer | trials | p < 0.05 | p < 0.01 | mean p |",
        "|---|---|---|---|---|---|",
    ]
    shapes = {"pool1": (16, 64, 64), "pool2": (32, 32, 32), "pool3": (64, 16, 16)}
    for cls in toons.CLASSES:
        pictures = [p for p, n in zip(data.pixels, data.label_names, strict=True) if n == cls]
        index = model.class_index(cls)
        found = collect._collect(
            model, pictures, LAYERS, index, 64, nothing, lambda n: None, steps=local.STEPS
        )
        for layer in LAYERS:
            ps = []
            for trial in range(trials):
                order = torch.randperm(1100, generator=torch.Generator().manual_seed(trial))
                sets = {"posing": {k: v[order[:100]] for k, v in stats.items()}}
                sets |= {"random": {k: v[order[100:]] for k, v in stats.items()}}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = significance._analyse_local(
                        sets, found, shapes, ["posing"], ["random"], [layer], seed=trial
                    )
                ps.append(res.rows[0]["p"])
            p = torch.tensor(ps)
            low05 = (p < 0.05).double()
            lo, hi = t_interval(low05)
            lines.append(
                f"| {cls} | {layer} | {trials} | {float(low05.mean()):.3f} [{max(lo, 0):.3f}, "
                f"{hi:.3f}] | {float((p < 0.01).double().mean()):.3f} | {float(p.mean()):.2f} |"
            )
    return "\n".join(lines)


def _share(values: list[bool]) -> str:
    return f"{sum(values)}/{len(values)} ({100 * sum(values) / max(1, len(values)):.0f} %)"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown tables: per model, test, class and layer."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["test"], r["target"], r["layer"])].append(r)
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        own = OWN if model == "toon-cnn" else {MOBILE_TARGET: "gravel"}
        other = "green" if model == "toon-cnn" else "grass"
        lines += [
            "",
            f"**{model}**",
            "",
            f"| test | class | layer | draws | own concept found (+) | posing random found "
            f"(corrected) | posing p < 0.05 (uncorrected) | {other} found (either sign) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for (m, test, target, layer), group in groups.items():
            if m != model:
                continue
            by = defaultdict(list)
            for r in group:
                by[r["concept"]].append(r)
            found = [r["significant"] and r["direction"] == "+" for r in by[own[target]]]
            posing = [r["significant"] for r in by["posing"]]
            raw = [r["p"] < 0.05 for r in by["posing"]]
            unused = [r["significant"] for r in by.get(other, [])]
            lines.append(
                f"| {test} | {target} | {layer} | {len(found)} | {_share(found)} | "
                f"{_share(posing)} | {_share(raw)} | {_share(unused)} |"
            )
    return "\n".join(lines)


def all_concepts(rows: list[dict[str, Any]], test: str = "local") -> str:
    """Share of draws each concept is found, with its direction, per class and layer."""
    groups: dict[tuple[str, str, str], dict[str, list[str]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in rows:
        if r["test"] == test:
            mark = r["direction"] if r["significant"] else "0"
            groups[(r["model"], r["target"], r["layer"])][r["concept"]].append(mark)
    lines = []
    for (model, target, layer), concepts in groups.items():
        cells = []
        for name, marks in concepts.items():
            n = len(marks)
            cells.append(f"{name} +{marks.count('+')}/-{marks.count('-')} of {n}")
        lines.append(f"{model} {target} {layer}: " + ", ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parts = ["toons", "mobilenet", "table", "intervention", "diagnose", "calibration"]
    parser.add_argument("part", choices=parts)
    parser.add_argument("files", nargs="*", help="JSON lines to tabulate (part 'table')")
    parser.add_argument("--draws", default="0:20", help="a:b, the draws to run")
    parser.add_argument("--tests", default="local", help="comma-separated: local,sets,paper")
    parser.add_argument("--out", default="power_tcav.jsonl")
    parser.add_argument("--trials", type=int, default=300, help="per cell (part 'calibration')")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import convlens as cl

    if args.part == "table":
        rows = [json.loads(line) for f in args.files for line in Path(f).read_text().splitlines()]
        print(table(rows))
        print()
        print(all_concepts(rows))
        return
    if args.part == "calibration":
        print(calibration(cl.load("toon-cnn"), args.trials))
        return
    if args.part == "diagnose":
        print(diagnose(cl.load("toon-cnn")))
        return
    if args.part == "intervention":
        print(toons_intervention(cl.load("toon-cnn")))
        print()
        print(mobilenet_intervention(cl.load("mobilenet_v2")))
        return
    model = cl.load("toon-cnn" if args.part == "toons" else "mobilenet_v2")
    start, stop = (int(v) for v in args.draws.split(":"))
    run = toons_draw if args.part == "toons" else mobilenet_draw
    tests = args.tests.split(",")
    with open(args.out, "a") as out:
        for draw in range(start, stop):
            began = time.perf_counter()
            rows = run(model, draw, tests)
            out.write("".join(json.dumps(r) + "\n" for r in rows))
            out.flush()
            print(f"draw {draw}: {time.perf_counter() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
