"""Throughput of the ground-truth tools: toons generation, training, and evaluation.

No peer library draws toons or trains our CNN, so the ratios here are against our own
floors measured in the same run:

* generation: images/s in memory and written as a folder (PNG + masks + index);
* training: images/s of ``convlens.train`` (augmentation, Adam, validation included) against
  a bare loop of forward + backward + Adam step on the same network and batches;
* evaluation: seconds per image of ``convlens.evaluate`` with all six metrics, per method,
  against one forward pass per image (the metrics' deletion / insertion curves need
  ``2 x steps`` forward passes per image: that is the floor the ratio shows).

Run: ``python benchmarks/run.py toons``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from _timing import Quantity, Row

import convlens as cl
from convlens.core import architectures
from convlens.data import toons

N_GENERATE = 1000
N_TRAIN = 768
N_EVALUATE = 64
METHODS = ("gradcam", "gradcam++", "saliency", "integrated_gradients", "occlusion")


def _rate(count: int, seconds: float) -> Quantity:
    return Quantity((count / seconds,), "img/s")


def _generation() -> list[Row]:
    start = time.perf_counter()
    toons.generate(N_GENERATE, seed=1)
    memory = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        toons.write(Path(tmp) / "set", n=N_GENERATE, seed=1)
        folder = time.perf_counter() - start
    return [
        Row("toons", f"generate {N_GENERATE} in memory", _rate(N_GENERATE, memory)),
        Row("toons", f"write {N_GENERATE} as a folder", _rate(N_GENERATE, folder)),
    ]


def _training(threads: int) -> list[Row]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = toons.write(Path(tmp) / "set", n=N_TRAIN + 128, splits=(N_TRAIN, 128, 0))
            start = time.perf_counter()
            cl.train(root, epochs=1, seed=0, early_stopping=None, tensorboard=False)
            ours = time.perf_counter() - start
        net = architectures.build("explorer_cnn", num_classes=3)  # what train() builds
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
        images = torch.rand(64, 3, 128, 128)
        labels = torch.randint(0, 3, (64,))
        start = time.perf_counter()
        for _ in range(N_TRAIN // 64):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(net(images), labels).backward()
            optimiser.step()
        floor = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    rate, bare = N_TRAIN / ours, N_TRAIN / floor
    return [
        Row(
            "train",
            f"convlens.train, {threads} thread(s), load+augment+validate included",
            Quantity((rate,), "img/s"),
            baseline="bare forward+backward+Adam",
            ratio=bare / rate,
        ),
        Row("train", f"bare loop, {threads} thread(s)", Quantity((bare,), "img/s")),
    ]


def _evaluation() -> list[Row]:
    model = cl.load("toon-cnn")
    data = toons.generate(N_EVALUATE, split="test", seed=1)
    inputs = model.prepare(data.pictures()).inputs
    start = time.perf_counter()
    with torch.inference_mode():
        model.module(inputs)
    forward = (time.perf_counter() - start) / N_EVALUATE
    rows = []
    for method in METHODS:
        start = time.perf_counter()
        cl.evaluate(model, data, [method], parts=["hair", "face"], steps=20)
        per_image = (time.perf_counter() - start) / N_EVALUATE
        rows.append(
            Row(
                "evaluate",
                f"{method}, 6 metrics, per image ({N_EVALUATE} images)",
                Quantity((per_image,), "s"),
                baseline="one forward pass",
                ratio=per_image / forward,
            )
        )
    return rows


def run(repeats: int) -> list[Row]:
    del repeats  # each measurement is one long run
    return [*_generation(), *_training(1), *_training(2), *_evaluation()]
