"""Data set runs (issue 15): the local and Ray engines against the floor, and memory over a
long run. MobileNetV2 with its real weights, Grad-CAM at its default layer (``features.18``),
top-1 targets, batches of 16, on the CPU.

Pictures: 256x256 JPEG crops (quality 90) of the sample photos (convlens's four, scikit-image's
textures and scikit-learn's two when those are installed) and of 256 px toons, each crop a
different window, no augmentation; written once to ``$TMPDIR/convlens-bench-dataset/<n>``.

1. Throughput over ``N`` pictures (default 2,000): the floor is Grad-CAM called in this
   process on tensors decoded beforehand (``cl.explain(model, x, "gradcam")`` per batch of 16;
   the decoding is not timed); the local engine is ``cl.dataset.explain`` on the JPEG folder
   (listing, decoding in worker processes, Grad-CAM, top-5, Parquet shards of 512; no report);
   the Ray engine the same with two actors on a local cluster of 2 CPUs (started once, before
   timing; the actors are started in each run and timed). The variants alternate (floor,
   local, Ray, floor, ...). Targets: local >= 0.85x the floor's pictures/s (time ratio
   <= 1.18x), Ray >= 0.7x the local engine's (time ratio <= 1.43x).
2. Memory: the local engine over ``M`` pictures (default 10,000; shards of 500) in a fresh
   process; the resident set of the process and of its decoding workers is read after each
   shard. Target: after the last shard within 10 % of after the first.

    python benchmarks/run.py dataset
    python benchmarks/bench_dataset.py --n 2000 --memory 10000 --repeats 2

On a shared 2-core VM the absolute numbers move with the other jobs; the variants alternate so
the ratios are fair, but say how busy the machine was (the table prints the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _timing import Quantity, Row, Timing

import convlens as cl

BENCH = "dataset"
N = 2000
MEMORY_N = 10_000
BATCH = 16
LOCAL_TARGET = 1.18  # time ratio to the floor: throughput >= 0.85x
RAY_TARGET = 1.43  # time ratio to the local engine: throughput >= 0.7x
MEMORY_TARGET = 1.10


def _photos() -> list[Any]:
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in cl.samples().values()]
    try:
        from skimage import data as sk

        for name in ("brick", "grass", "gravel", "coffee", "chelsea", "astronaut"):
            photos.append(Image.fromarray(getattr(sk, name)()).convert("RGB"))
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_image

        photos += [Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    except ImportError:
        pass
    from convlens.data import toons

    drawn = toons.generate(12, variant="clean", split="test", seed=0, size=256)
    photos += [Image.fromarray(p) for p in drawn.pixels]
    return [p.resize((max(p.width, 320), max(p.height, 320))) for p in photos]


def pictures(n: int) -> Path:
    """A folder of ``n`` JPEG crops (made once, then reused)."""
    folder = Path(tempfile.gettempdir()) / "convlens-bench-dataset" / str(n)
    if (folder / ".complete").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    photos = _photos()
    for i in range(n):
        photo = photos[i % len(photos)]
        k = i // len(photos)
        x = (k * 37) % (photo.width - 255)
        y = (k * 53) % (photo.height - 255)
        photo.crop((x, y, x + 256, y + 256)).save(folder / f"{i:06d}.jpg", quality=90)
    (folder / ".complete").write_text("")
    return folder


def _floor(model: cl.Model, folder: Path) -> Callable[[], Any]:
    files = sorted(folder.glob("*.jpg"))
    decoded = [model.prepare(files[i : i + BATCH]).inputs for i in range(0, len(files), BATCH)]

    def floor() -> None:
        for x in decoded:
            cl.explain(model, x, "gradcam")

    return floor


def _engine(model: cl.Model, folder: Path, out: Path, engine: Any) -> Callable[[], Any]:
    def run() -> None:
        cl.dataset.explain(
            model, folder, "gradcam", out=out, engine=engine, batch_size=BATCH, report=False,
            overwrite=True,
        )  # fmt: skip

    return run


def throughput(n: int, repeats: int, *, ray: bool = True) -> list[Row]:
    torch.manual_seed(0)
    model = cl.load("mobilenet_v2")
    folder = pictures(n)
    work = Path(tempfile.mkdtemp(prefix="convlens-bench-runs-"))
    variants = {
        "floor: Grad-CAM in one process, decoded beforehand": _floor(model, folder),
        "local engine (cl.dataset.explain)": _engine(model, folder, work / "local", "local"),
    }
    started_ray = False
    if ray:
        try:
            import ray as ray_mod
        except ImportError:
            print("  Ray is not installed: the Ray row is skipped")
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if not ray_mod.is_initialized():
                ray_mod.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                started_ray = True
            engine = cl.dataset.engine("ray", workers=2)
            variants["Ray engine, 2 actors"] = _engine(model, folder, work / "ray", engine)
    samples: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for name, fn in variants.items():  # warm-up: page cache, allocator, worker start
            if name.startswith("floor"):
                fn()
        for _ in range(repeats):
            for name, fn in variants.items():  # alternating A/B/C
                start, used = time.perf_counter(), _cpu_seconds()
                fn()
                samples[name].append(time.perf_counter() - start)
                cpu[name].append((_cpu_seconds() - used) / n * 1e3)
                print(
                    f"  {name}: {n / samples[name][-1]:.1f} pictures/s, "
                    f"{cpu[name][-1]:.0f} ms of CPU per picture (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if started_ray:
            import ray as ray_mod

            ray_mod.shutdown()
    timings = {k: Timing(tuple(v)) for k, v in samples.items()}
    floor, local = list(timings)[:2]
    rows = [
        Row(BENCH, f"{floor} ({n} pictures)", timings[floor]),
        Row(BENCH, f"{local} vs floor", timings[local], floor,
            timings[local].median / timings[floor].median, LOCAL_TARGET),
    ]  # fmt: skip
    for name in list(timings)[2:]:
        rows.append(
            Row(BENCH, f"{name} vs local engine", timings[name], local,
                timings[name].median / timings[local].median, RAY_TARGET)
        )  # fmt: skip
    used = {k: Quantity(tuple(cpu[k]), "ms") for k in (floor, local)}
    rows += [
        Row(BENCH, "CPU per picture, floor (this process)", used[floor]),
        Row(BENCH, "CPU per picture, local engine (this process + its workers)", used[local],
            floor, used[local].median / used[floor].median, LOCAL_TARGET),
    ]  # fmt: skip
    return rows


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the local engine's
    decoding workers end with each run; Ray's actors are not children: not counted)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _rss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def memory_child(n: int, shard: int, out: str) -> None:
    """In a fresh process: the local engine over ``n`` pictures; the resident set (this process
    plus its workers, MiB) after each shard, as JSON on stdout."""
    model = cl.load("mobilenet_v2")
    folder = pictures(n)
    seen: list[dict[str, float]] = []

    def progress(done: int, total: int) -> None:
        if (done and done % shard == 0) or done == total:
            me = os.getpid()
            workers = sum(_rss_kib(c) for c in _children(me))
            seen.append({"pictures": done, "main": _rss_kib(me) / 1024, "workers": workers / 1024})

    cl.dataset.explain(
        model, folder, "gradcam", out=out, batch_size=BATCH, shard_size=shard, report=False,
        overwrite=True, progress=progress,
    )  # fmt: skip
    print(json.dumps(seen))


def memory(n: int, shard: int = 500) -> list[Row]:
    pictures(n)
    out = tempfile.mkdtemp(prefix="convlens-bench-memory-")
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(n), str(shard), out],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")},
        )  # fmt: skip
    finally:
        shutil.rmtree(out, ignore_errors=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    first, last = seen[0], seen[-1]
    for s in seen:
        main, workers = s["main"], s["workers"]
        print(f"  after {s['pictures']:>6} pictures: {main:.0f} MiB, workers {workers:.0f} MiB")
    growth = last["main"] / first["main"]
    total = (last["main"] + last["workers"]) / (first["main"] + first["workers"])
    return [
        Row(BENCH, f"memory after shard 1 ({first['pictures']} pictures), main process",
            Quantity((first["main"],), "MiB")),
        Row(BENCH, f"memory after {last['pictures']} pictures vs after shard 1, main process",
            Quantity((last["main"],), "MiB"), "shard 1", growth, MEMORY_TARGET),
        Row(BENCH, "the same, main process + decoding workers",
            Quantity((last["main"] + last["workers"],), "MiB"), "shard 1", total, MEMORY_TARGET),
    ]  # fmt: skip


def run(repeats: int) -> list[Row]:
    n = int(os.environ.get("CONVLENS_BENCH_DATASET_N", N))
    memory_n = int(os.environ.get("CONVLENS_BENCH_DATASET_MEMORY", MEMORY_N))
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    rows = throughput(n, max(2, min(repeats, 3)))
    rows += memory(memory_n, shard=max(1, min(500, memory_n // 10)))
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=N)
    parser.add_argument("--memory", type=int, default=MEMORY_N)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--memory-child", nargs=3, metavar=("N", "SHARD", "OUT"))
    args = parser.parse_args()
    if args.memory_child:
        n, shard, out = args.memory_child
        memory_child(int(n), int(shard), out)
        return
    from run import table

    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    rows = throughput(args.n, args.repeats, ray=not args.no_ray)
    if args.memory:
        rows += memory(args.memory, shard=max(1, min(500, args.memory // 10)))
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
