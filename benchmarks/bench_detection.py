"""D-RISE on the shipped toon detector (issue 8's benchmark): 1,000 masks on a 256x256 crowd
frame, in masks per second, against the floor of one plain forward pass of the detector per
masked frame (the same batches, nothing else). Batched, the ratio should approach 1x.
"""

from __future__ import annotations

import time

import torch
from _timing import Quantity, Row, Timing, compare

from convlens import centernet
from convlens import detection as D

MASKS = 1000
BATCH = 100
SIZE = 256


def run(repeats: int = 3) -> list[Row]:
    detector = D.load_detector("toon-detector")
    pixels, _ = centernet.toon_frames(1, split="test", seed=5, size=SIZE)
    frame = pixels[0]
    found = D.detect(detector, frame)
    if not len(found):
        raise RuntimeError("the toon detector found nothing in the benchmark frame")
    target = found[0]
    module = detector.module.eval()
    masked = frame.expand(BATCH, -1, -1, -1).clone() * 0.5

    def drise() -> None:
        D.drise(detector, frame, target, masks=MASKS, batch_size=BATCH, seed=0)

    def floor() -> None:
        with torch.inference_mode():
            for _ in range(MASKS // BATCH):
                module(masked)

    drise()
    floor()  # warm-up
    times = {"D-RISE, 1000 masks": [], "forward passes only (floor)": []}
    for _ in range(max(1, min(repeats, 3))):
        for name, fn in (("D-RISE, 1000 masks", drise), ("forward passes only (floor)", floor)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    timings = {k: Timing(tuple(v)) for k, v in times.items()}
    rows = compare(
        "detection", timings, "forward passes only (floor)", {"D-RISE, 1000 masks": (1.5, False)}
    )
    per_second = MASKS / (timings["D-RISE, 1000 masks"].median / 1000)
    print(f"  D-RISE: {per_second:.0f} masks/s on a {SIZE}x{SIZE} frame", flush=True)
    rows.append(Row("detection", "D-RISE masks per second", Quantity((per_second,), "masks/s")))
    return rows


if __name__ == "__main__":
    from run import table

    print(table(run()))
