"""Calibrate the out-of-distribution score of the shipped toon models (``data/models/<name>.ood
.json``; see ``convlens.workflows.ood``): 1,000 toon test pictures (seed 101) give the features'
ranges of the early layers' Gram
matrices, 500 others (seed 202) the scales and the 99th percentile that a score of 1 stands for.

    .venv/bin/python tools/make_ood.py      # about a minute on a CPU
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import convlens as cl
from convlens.data import toons
from convlens.workflows.ood import GramDeviation

FIT = {"n": 1000, "seed": 101}
HELD_OUT = {"n": 500, "seed": 202}


def main() -> None:
    folder = Path(str(resources.files("convlens").joinpath("data", "models")))
    fit = toons.generate(FIT["n"], split="test", seed=FIT["seed"])
    held = toons.generate(HELD_OUT["n"], split="test", seed=HELD_OUT["seed"])
    for name in ("toon-cnn", "toon-cnn-spurious"):
        model = cl.load(name)
        found = GramDeviation.fit(model, list(fit.pixels), list(held.pixels))  # as pictures
        found.about.update({"fit": FIT, "held_out": HELD_OUT, "data": "toons test split"})
        path = found.save(folder / f"{name}.ood.json")
        photos = {n: float(found.scores(model, p)[0]) for n, p in cl.samples().items()}
        print(f"{path}: layers {found.layers}, threshold {found.threshold:.3f}, photos {photos}")


if __name__ == "__main__":
    main()
