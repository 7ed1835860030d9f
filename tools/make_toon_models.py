"""Make the shipped toon models with convlens's own commands (dev-only).

For each model: ``convlens toons make`` writes its data set, ``convlens train`` trains it, the
checkpoint is copied to ``src/convlens/data/models/<name>.pt``, and ``<name>.json`` beside it
records the two commands, the seed, the training metrics and the accuracy on a freshly
generated check set (another seed than the training data) that ``tests/test_toon_models.py``
reproduces.

Usage (from the repository root; about 15 minutes on 2 cores, both models in parallel):
``.venv/bin/python tools/make_toon_models.py --work /tmp/toon-models``
``--record-only`` skips data and training and records models already trained in ``--work``.
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
CONVLENS = str(Path(sys.executable).with_name("convlens"))
CHECK = {"n": 500, "seed": 1}  # fresh toons: training data uses seed 0

COMMON = ["--seed", "0", "--threads", "1", "--filters", "conv1,conv2", "--snapshot-every", "50"]
SHIPPED: dict[str, dict] = {
    "toon-cnn": {
        "variant": "clean",
        "folder": "data/toons-clean",
        "train": ["--epochs", "10", *COMMON],
    },
    "toon-cnn-spurious": {
        "variant": "spurious",
        "folder": "data/toons-spurious",
        "train": ["-A", "head=gap", "-A", "dense=64", "--epochs", "15", *COMMON],
    },
}


def commands(name: str) -> tuple[list[str], list[str]]:
    """``convlens toons make ...`` and ``convlens train ...`` for shipped model ``name``."""
    entry = SHIPPED[name]
    folder, variant = entry["folder"], entry["variant"]
    data = ["convlens", "toons", "make", "--variant", variant, "--n", "5000", "--seed", "0"]
    train = ["convlens", "train", folder, "--out", f"models/{name}", *entry["train"]]
    return [*data, "--out", folder], train


def run(command: list[str], work: Path) -> subprocess.Popen:
    return subprocess.Popen([CONVLENS, *command[1:]], cwd=work)


def accuracy(model, ts) -> float:
    import torch

    labels = torch.tensor([model.class_index(name) for name in ts.label_names])
    hits = 0
    for start in range(0, len(ts), 100):
        part = ts[start : start + 100]
        predicted = model.probabilities(part.pictures()).argmax(1)
        hits += int((predicted == labels[start : start + 100]).sum())
    return hits / len(ts)


def record(name: str, work: Path) -> dict:
    import convlens as cl
    from convlens.data import toons

    data_command, train_command = commands(name)
    source = work / "models" / name
    target = MODELS / f"{name}.pt"
    MODELS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "model.pt", target)
    metrics = json.loads((source / "metrics.json").read_text())
    model = cl.load(target)
    variant = SHIPPED[name]["variant"]
    check = dict(CHECK, variant=variant, split="test")
    fresh = toons.generate(CHECK["n"], variant=variant, split="test", seed=CHECK["seed"])
    check["accuracy"] = round(accuracy(model, fresh), 4)
    if variant == "spurious":
        correlated = toons.generate(CHECK["n"], variant=variant, split="val", seed=CHECK["seed"])
        check["accuracy_correlated"] = round(accuracy(model, correlated), 4)
    out = {
        "name": name,
        "data_command": data_command,
        "command": train_command,
        "seed": 0,
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "training": {
            k: metrics[k]
            for k in (
                "best_epoch",
                "epochs_run",
                "val_accuracy",
                "test_accuracy",
                "images_per_second",
            )
        },
        "check": check,
    }
    (MODELS / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for data and runs")
    parser.add_argument("--record-only", action="store_true")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.record_only:
        for name in SHIPPED:
            if run(commands(name)[0], work).wait():
                raise SystemExit(f"making the data for {name} failed")
        jobs = [run(commands(name)[1], work) for name in SHIPPED]
        if any(job.wait() for job in jobs):
            raise SystemExit("training failed")
    for name in SHIPPED:
        print(json.dumps(record(name, work), indent=1))


if __name__ == "__main__":
    main()
