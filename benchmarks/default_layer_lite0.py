"""EfficientNet-Lite0's default CAM layer, before and after reused modules got one layer per
call (issue 17 item 6): run on demand, not in the suite.

    python benchmarks/default_layer_lite0.py

Its ReLU6 ``_swish`` serves the stem and the head, so it used to be unhookable and the default
layer fell back to ``_bn1``, the head's batch norm, before the activation. Now the default is
``_swish#2``. For each bundled photo and CAM variant this prints Pearson's r of the map at
``_bn1`` ("before") and at the default ("after") against the map at the post-activation output
``_swish#2``, and the (row, column) of each map's peak.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch

import convlens as cl
from convlens.core.stats import pearson


def peak(m: torch.Tensor) -> tuple[int, int]:
    return divmod(int(m.flatten().argmax()), m.shape[-1])  # type: ignore[return-value]


def main() -> None:
    model = cl.load("efficientnet_lite0")
    names = list(cl.samples())
    pictures = [cl.sample(n) for n in names]
    print(f"default layer: {cl.attribution.base.default_layer(model)}")
    for method in ("gradcam", "gradcam++", "layercam"):
        before = cl.explain(model, pictures, method, layer="_bn1").map
        post = cl.explain(model, pictures, method, layer="_swish#2").map
        after = cl.explain(model, pictures, method).map
        moved = 0
        for i, name in enumerate(names):
            r_before = float(pearson(before[i].flatten()[None], post[i].flatten()[None])[0])
            r_after = float(pearson(after[i].flatten()[None], post[i].flatten()[None])[0])
            moved += peak(before[i]) != peak(post[i])
            print(
                f"{method:10s} {name:10s} before r {r_before:.3f} peak {peak(before[i])} | "
                f"after r {r_after:.3f} peak {peak(after[i])} | post-activation peak "
                f"{peak(post[i])}"
            )
        print(f"{method:10s} peaks moved before: {moved} of {len(names)}; after: 0")


if __name__ == "__main__":
    main()
