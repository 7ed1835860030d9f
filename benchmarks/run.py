"""Run the benchmarks in this folder and print one table.

    python benchmarks/run.py                 # every bench_*.py here
    python benchmarks/run.py foundation      # only bench_foundation.py
    python benchmarks/run.py dataset         # data set runs: engines vs the floor, memory
    python benchmarks/run.py --json out.json --repeats 40

Each ``bench_NAME.py`` defines ``run(repeats) -> list[Row]`` (see ``_timing.py``). Benchmarks
run on demand (``make bench``), never in the test suite, and nothing here fails on a time:
targets are printed with whether they were met.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"  # measure this checkout, whatever the venv's editable install names


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def environment() -> dict[str, object]:
    import torch

    import convlens

    return {
        "convlens": str(Path(convlens.__file__).parent),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "glibc_malloc": " ".join(
            f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")
        )
        or "default",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _value(value: float, unit: str) -> str:
    """A median or IQR with its unit: ``12.34 ms``, ``512 MiB``, ``1.9e-06`` (no unit)."""
    if value != value:  # NaN: a single sample has no IQR
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if unit == "img/s":
        return f"{value:.0f} img/s"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:.2g}" + (f" {unit}" if unit else "")


def table(rows: list) -> str:
    header = ("benchmark", "case", "median", "IQR", "ratio", "target", "met")
    lines = [
        (
            r.benchmark,
            r.case,
            _value(r.timing.median, r.timing.unit),
            _value(r.timing.iqr, r.timing.unit),
            f"{r.ratio:.2f}x" if r.ratio is not None else "-",
            r.target_text or "-",
            {True: "yes", False: "NO", None: "-"}[r.met],
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    right = {2, 3, 4}
    fmt = "  ".join(f"{{:{'>' if i in right else '<'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {available()})")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--repeats", type=int, default=25, help="timed runs per variant")
    args = parser.parse_args(argv)

    names = [n.removeprefix("bench_").removesuffix(".py") for n in args.names] or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; available: {available()}")

    sys.path[:0] = [str(HERE), str(SRC)]
    env = environment()
    print(" · ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    rows = []
    for name in names:
        print(f"running {name} ...", flush=True)
        rows += importlib.import_module(f"bench_{name}").run(repeats=args.repeats)
    print()
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"environment": env, "results": [r.to_dict() for r in rows]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
