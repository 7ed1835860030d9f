"""Make the shipped toon detector (dev-only): train ``convlens.centernet`` on ``crowd`` toons
and record how it was made.

Writes ``src/convlens/data/models/toon-detector.pt`` and ``toon-detector.json`` (the call, the
seed, the training history, the sha256, and mAP / all-found rates on 300 fresh ``crowd``
frames of another seed, which ``tests/test_toon_detector.py`` reproduces).

Usage (from the repository root; about 20 minutes on 2 cores):
``.venv/bin/python tools/make_toon_detector.py --work /tmp/toon-detector``
``--record-only`` records a model already trained in ``--work``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "src" / "convlens" / "data" / "models"
CLASSES = ["cassidy", "james", "jessie"]
TRAIN = {"frames": 2400, "val_frames": 200, "epochs": 12, "seed": 0, "width": 48}
CHECK = {"frames": 300, "seed": 1, "split": "test", "score_threshold": 0.3}


def check(model_path: Path) -> dict[str, float]:
    """mAP@0.5, mAP@0.5:0.95 and the share of frames with every character found, on fresh
    frames (another seed than training)."""
    from convlens import centernet
    from convlens.detection import COCO_IOUS, Detector, all_found, mean_average_precision

    module, classes = centernet.load(model_path)
    detector = Detector(module, classes, score_threshold=CHECK["score_threshold"])
    pixels, boxes = centernet.toon_frames(CHECK["frames"], split=CHECK["split"], seed=CHECK["seed"])
    found = []
    for start in range(0, len(pixels), 64):
        found += detector(pixels[start : start + 64])
    truths = [([b[1:] for b in frame], [b[0] for b in frame]) for frame in boxes]
    coco = mean_average_precision(found, truths, iou_thresholds=COCO_IOUS)
    return {
        "map50": coco["per_iou"][0.5],
        "map50_95": coco["map"],
        "all_found": all_found(found, truths),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--record-only", action="store_true")
    args = parser.parse_args()
    from convlens import centernet

    if not args.record_only:
        pixels, boxes = centernet.toon_frames(TRAIN["frames"], split="train", seed=TRAIN["seed"])
        val = centernet.toon_frames(TRAIN["val_frames"], split="val", seed=TRAIN["seed"])
        centernet.train_detector(
            pixels,
            boxes,
            CLASSES,
            val=val,
            epochs=TRAIN["epochs"],
            width=TRAIN["width"],
            seed=TRAIN["seed"],
            out=args.work,
            progress=print,
        )
    trained = args.work / "model.pt"
    target = MODELS / "toon-detector.pt"
    shutil.copyfile(trained, target)
    metrics = json.loads((args.work / "metrics.json").read_text())
    record = {
        "name": "toon-detector",
        "made_by": "tools/make_toon_detector.py",
        "train": TRAIN,
        "seed": TRAIN["seed"],
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "training": metrics,
        "check": {**CHECK, **check(target)},
    }
    (MODELS / "toon-detector.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record["check"], indent=1))


if __name__ == "__main__":
    main()
