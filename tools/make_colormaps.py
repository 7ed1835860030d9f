"""Generate ``src/convlens/data/colormaps.json`` from matplotlib (developer tool).

matplotlib is a dev dependency only: convlens reads the generated lookup tables at run
time and never imports matplotlib. Each table has 256 RGB entries (uint8), sampled as
``cmap(np.linspace(0, 1, 256))`` and rounded to the nearest integer.

Usage::

    .venv/bin/python tools/make_colormaps.py          # (re)write the JSON
    .venv/bin/python tools/make_colormaps.py --check  # exit 1 if the JSON is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

# convlens name -> matplotlib name. Aliases ("diverging", "grey") live in render.py.
MAPS = {
    "viridis": "viridis",  # perceptually uniform, the default for heatmaps
    "magma": "magma",  # perceptually uniform, dark to light
    "jet": "jet",  # the classic Grad-CAM look
    "coolwarm": "coolwarm",  # diverging, for signed maps (0 -> middle grey)
    "gray": "gray",
}

OUT = Path(__file__).resolve().parents[1] / "src" / "convlens" / "data" / "colormaps.json"


def build() -> dict[str, object]:
    """Sample every map in MAPS at 256 points; returns the JSON document as a dict."""
    tables: dict[str, list[list[int]]] = {}
    for name, mpl_name in MAPS.items():
        rgba = matplotlib.colormaps[mpl_name](np.linspace(0.0, 1.0, 256))
        rgb = np.rint(np.asarray(rgba)[:, :3] * 255).astype(np.uint8)
        tables[name] = rgb.tolist()
    return {
        "source": f"matplotlib {matplotlib.__version__}, cmap(np.linspace(0, 1, 256))",
        "n": 256,
        "maps": tables,
    }


def dumps(doc: dict[str, object]) -> str:
    """Compact but diffable JSON: eight RGB triples per line."""
    maps = doc["maps"]
    assert isinstance(maps, dict)
    lines = ["{"]
    lines.append(f'  "source": {json.dumps(doc["source"])},')
    lines.append(f'  "n": {doc["n"]},')
    lines.append('  "maps": {')
    names = list(maps)
    for i, name in enumerate(names):
        rows = maps[name]
        chunks = [
            ", ".join(json.dumps(rgb, separators=(",", ":")) for rgb in rows[j : j + 8])
            for j in range(0, len(rows), 8)
        ]
        body = ",\n      ".join(chunks)
        comma = "," if i < len(names) - 1 else ""
        lines.append(f"    {json.dumps(name)}: [\n      {body}\n    ]{comma}")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = dumps(build())
    json.loads(text)  # always emit valid JSON
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date; run tools/make_colormaps.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
