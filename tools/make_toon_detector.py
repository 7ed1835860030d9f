"""Make the shipped toon detector (dev-only) with the project's own commands, and record how.

Runs ``convlens toons make --variant crowd`` (2,400 training, 200 validation, 200 test frames,
seed 0) and ``convlens train --task detect`` (12 epochs, seed 0) in ``--work``; copies the
checkpoint to ``src/convlens/data/models/toon-detector.pt`` and writes ``toon-detector.json``
(the commands, the seed, the training record, the sha256, and mAP / all-found rates on 300
fresh ``crowd`` frames of another seed, which ``tests/test_toon_detector.py`` reproduces).

Usage (from the repository root; about 7 minutes on 2 quiet cores):
``.venv/bin/python tools/make_toon_detector.py --work /tmp/toon-detector``
``--record-only`` records a model already trained in ``--work``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "src" / "convlens" / "data" / "models"
SEED = 0
COMMANDS = (
    "convlens toons make --variant crowd --n 2800 --splits 2400,200,200 --seed 0 -o {work}/crowd",
    "convlens train {work}/crowd --task detect --epochs 12 --seed 0 --no-tensorboard "
    "--out {work}/model",
)
CHECK = {"frames": 300, "seed": 1, "split": "test", "score_threshold": 0.3}


def check(model_path: Path) -> dict[str, float]:
    """mAP@0.5, mAP@0.5:0.95 and the share of frames with every character found, on fresh
    frames (another seed than training)."""
    from convlens.core.architectures import centernet
    from convlens.core.detector import Detector
    from convlens.data import toons
    from convlens.workflows.detection_eval import COCO_IOUS, all_found, mean_average_precision

    module, classes = centernet.load(model_path)
    detector = Detector(module, classes, score_threshold=CHECK["score_threshold"])
    pixels, boxes = toons.crowd_frames(CHECK["frames"], split=CHECK["split"], seed=CHECK["seed"])
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
    commands = [c.format(work=args.work) for c in COMMANDS]
    if not args.record_only:
        shutil.rmtree(args.work / "crowd", ignore_errors=True)
        for command in commands:
            words = command.split()
            subprocess.run([sys.executable, "-m", "convlens.apps.cli", *words[1:]], check=True)
    trained = args.work / "model" / "model.pt"
    target = MODELS / "toon-detector.pt"
    shutil.copyfile(trained, target)
    metrics = json.loads((args.work / "model" / "metrics.json").read_text())
    record = {
        "name": "toon-detector",
        "made_by": "tools/make_toon_detector.py",
        "commands": [c.format(work="WORK") for c in COMMANDS],
        "seed": SEED,
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "training": {k: v for k, v in metrics.items() if k not in ("command", "versions")},
        "check": {**CHECK, **check(target)},
    }
    (MODELS / "toon-detector.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record["check"], indent=1))


if __name__ == "__main__":
    main()
