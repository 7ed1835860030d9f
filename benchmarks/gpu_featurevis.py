"""Feature visualization on CUDA: one channel against 32 channels as one batch, with the
settings of ``bench_featurevis.py`` (MobileNetV2, ``features.14``, 128x128 Fourier image,
Lucent's transforms, 128 steps). Run where a GPU is: ``python benchmarks/gpu_featurevis.py``.

Measured 2026-11-29 on an NVIDIA H200 (torch 2.11): one channel 1.01 s; 32 channels batched
0.036 s per channel: 0.035x, 28x faster per channel (the CPU VM: 0.52x).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_featurevis import BATCH, CHANNEL, _ours

import convlens as cl


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    model = cl.load("mobilenet_v2")
    model.module.cuda()
    print("device:", torch.cuda.get_device_name())

    def timed(fn: object) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(lambda: _ours(model, CHANNEL))  # warm-up
    one = sorted(timed(lambda: _ours(model, CHANNEL)) for _ in range(3))[1]
    batched = min(
        timed(lambda: _ours(model, list(range(BATCH)), batch_size=BATCH)) / BATCH for _ in range(2)
    )
    print(
        f"one channel {one:.3f} s; {BATCH} channels batched {batched:.4f} s per channel: "
        f"{batched / one:.3f}x ({one / batched:.1f}x faster)"
    )


if __name__ == "__main__":
    main()
