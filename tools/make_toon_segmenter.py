"""Make the shipped toon segmenter (dev-only) and record how.

Trains :func:`convlens.workflows.training.segment.train_segmenter` (network ``toon_segnet``) on
3,000 toons, 1,000 each of the ``clean``, ``hat`` and ``crowd`` variants (split ``train``,
seed 0), with 150 validation toons (split ``val``, seed 0) choosing the best epoch; classes
background / hair / face / body (hat and distractors count as background). Writes the weights
with the shipped name and default layer (:data:`SHIP`) to
``src/convlens/data/models/toon-segmenter.pt`` and writes ``toon-segmenter.json``:
the command, the seed, the recipe, the training record, the sha256, and the check on fresh
toons (split ``test``, seed 1, 100 per variant): IoU per class and mean IoU over hair / face /
body, pooled and per variant, and the energy of Seg-Grad-CAM and Layer-CAM maps of each part's
predicted region inside that part's true mask (first 20 pictures of each variant) at the
default layer ``dec2`` and at every decoder stage and the bottleneck.

Usage (from the repository root; about an hour on 2 quiet cores): ``.venv/bin/python
tools/make_toon_segmenter.py --work /tmp/toon-segmenter``; ``--record-only`` records a model
already trained in ``--work``. ``convlens train DATA --task segment`` trains the same network
from toons folders (``convlens toons make``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "src" / "convlens" / "data" / "models"
SEED = 0
VARIANTS = ("clean", "hat", "crowd")
TRAIN = {"n": 3000, "split": "train", "seed": SEED}
VAL = {"n": 150, "split": "val", "seed": SEED}
RECIPE = {
    "options": {"widths": [8, 16, 32, 64, 64], "decoder": [32, 32, 16, 12]},
    "epochs": 12,
    "batch_size": 32,
    "lr": 3e-3,
    "crop": 96,
    "threads": 2,
}
SHIP = {"name": "toon-segmenter", "layer": "dec2"}
"""What the shipped checkpoint says besides the weights: its name and the default layer of
region CAMs (chosen from the energy by layer that the record holds: ``dec2``, stride 4, is the
coarsest stage whose Seg-Grad-CAM maps sit on the explained part; ``dec0``'s are the class's
logit map read back, near 1 by construction; the bottleneck's sit on the context)."""
LAYERS = ("enc4", "dec3", "dec2", "dec1", "dec0")
"""Layers whose region CAMs the record also scores (bottleneck to the last decoder stage)."""
CHECK = {"per_variant": 100, "split": "test", "seed": 1, "energy_pictures_per_variant": 20}
COMMAND = "python tools/make_toon_segmenter.py --work WORK"


def check(model_path: Path) -> dict:
    """IoU on fresh toons and the explanations' energy in the explained part's true mask."""
    from convlens.core import segmenter as segmenters
    from convlens.data.toons import segmentation_data
    from convlens.workflows.segmentation_eval import region_energy, segmentation_scores

    segmenter = segmenters.load(model_path)
    data = {
        v: segmentation_data(
            CHECK["per_variant"], variants=(v,), split=CHECK["split"], seed=CHECK["seed"]
        )
        for v in VARIANTS
    }
    pixels = torch.cat([d[0] for d in data.values()]).float() / 255
    truth = torch.cat([d[1] for d in data.values()])
    pooled = segmentation_scores(segmenter, pixels, truth)
    per_variant, pixel_counts = {}, {}
    for v, (v_pixels, v_truth) in data.items():
        predicted = segmenter.class_maps(v_pixels.float() / 255)
        scores = segmentation_scores(segmenter, v_pixels, v_truth, predicted=predicted)
        per_variant[v] = scores["iou"]
        pixel_counts[v] = {
            name: {"true": int((v_truth == c).sum()), "predicted": int((predicted == c).sum())}
            for c, name in enumerate(segmenter.labels or [])
        }
    k = CHECK["energy_pictures_per_variant"]
    few = torch.cat([d[0][:k] for d in data.values()]).float() / 255
    few_truth = torch.cat([d[1][:k] for d in data.values()])
    started = time.perf_counter()
    energy = region_energy(segmenter, few, few_truth, ("gradcam", "layercam"))
    seconds = round(time.perf_counter() - started, 1)
    by_layer = {}
    shipped = segmenter.layer
    for layer in LAYERS:
        segmenter.layer = layer
        by_layer[layer] = region_energy(segmenter, few, few_truth, ("gradcam", "layercam"))
    segmenter.layer = shipped
    return {
        **CHECK,
        "variants": list(VARIANTS),
        "pictures": len(pixels),
        "iou": pooled["iou"],
        "miou_foreground": pooled["miou_foreground"],
        "pixel_accuracy": pooled["pixel_accuracy"],
        "iou_per_variant": per_variant,
        "pixels_per_variant": pixel_counts,
        "energy_layer": segmenter.layer,
        "energy": energy,
        "energy_seconds": seconds,
        "energy_by_layer": by_layer,
    }


def main() -> None:
    from convlens.core import segmenter as segmenters
    from convlens.data.toons import SEGMENT_CLASSES, segmentation_data
    from convlens.workflows.training.segment import train_segmenter

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--record-only", action="store_true")
    parser.add_argument("--note", default=None, help="A line on how the weights were made.")
    args = parser.parse_args()
    trained = args.work / "model.pt"
    if not args.record_only:
        train = segmentation_data(
            TRAIN["n"], variants=VARIANTS, split=TRAIN["split"], seed=TRAIN["seed"]
        )
        val = segmentation_data(VAL["n"], variants=VARIANTS, split=VAL["split"], seed=VAL["seed"])

        def progress(event) -> None:  # type: ignore[no-untyped-def]
            if event.stage == "epoch":
                print(time.strftime("%H:%M:%S"), event.message, flush=True)

        train_segmenter(
            *train,
            SEGMENT_CLASSES,
            val=val,
            seed=SEED,
            out=args.work,
            progress=progress,
            command=COMMAND.split(),
            **RECIPE,  # type: ignore[arg-type]
        )
    target = MODELS / "toon-segmenter.pt"
    metrics = json.loads((args.work / "metrics.json").read_text())
    found = segmenters.load(trained)
    assert found.labels is not None
    segmenters.save(
        found.module,
        target,
        architecture=metrics["config"]["architecture"],
        classes=found.labels,
        preprocess=found.preprocess,
        layer=SHIP["layer"],
        background=found.background,
        name=SHIP["name"],
    )
    record = {
        "name": "toon-segmenter",
        "made_by": "tools/make_toon_segmenter.py",
        "command": COMMAND,
        "seed": SEED,
        "data": {"variants": list(VARIANTS), "train": TRAIN, "val": VAL},
        "recipe": RECIPE,
        "shipped": SHIP,
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "size_bytes": target.stat().st_size,
        "training": {k: v for k, v in metrics.items() if k not in ("command", "versions")},
        "check": check(target),
    }
    if args.note:
        record["note"] = args.note
    (MODELS / "toon-segmenter.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record["check"][k] for k in ("iou", "miou_foreground")}, indent=1))


if __name__ == "__main__":
    main()
