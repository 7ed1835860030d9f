"""Explaining one box.

D-RISE on the shipped toon detector (issue 8's benchmark): 1,000 masks on a 256x256 crowd
frame, in masks per second, against the floor of one plain forward pass of the detector per
masked frame at the network's input size (the toon detector's 128x128: the handle resizes
frames to it), in the same batches, nothing else. Batched, the ratio should approach 1x.

Box Grad-CAM on torchvision's Faster R-CNN (MobileNetV3-320 FPN, seeded random weights, a
320x240 picture): ``convlens.explain(..., method="gradcam", target=box)`` against
pytorch-grad-cam's ``GradCAM`` with its ``FasterRCNNBoxScoreTarget`` on the same layer and
box, and against the floor of one forward and one backward pass to that layer.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _timing import Quantity, Row, Timing, compare

import convlens as cl
from convlens.data import toons
from convlens.techniques.attribution import detection as DM

MASKS = 1000
BATCH = 100
SIZE = 256


def run(repeats: int = 3) -> list[Row]:
    detector = cl.load("toon-detector")
    pixels, _ = toons.crowd_frames(1, split="test", seed=5, size=SIZE)
    frame = pixels[0]
    found = cl.detect(detector, frame)
    if not len(found):
        raise RuntimeError("the toon detector found nothing in the benchmark frame")
    target = found[0]
    module = detector.module.eval()
    masked = frame.expand(BATCH, -1, -1, -1).clone() * 0.5
    if detector.input_size is not None:  # the network sees frames at its own input size
        masked = torch.nn.functional.interpolate(
            masked, size=tuple(detector.input_size), mode="bilinear", antialias=True
        )

    def drise() -> None:
        DM.drise(detector, frame, target, masks=MASKS, batch_size=BATCH, seed=0)

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
    return rows + run_box_cam(max(repeats, 5))


def run_box_cam(repeats: int = 5) -> list[Row]:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    import convlens as cl

    torch.manual_seed(0)
    net = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, box_score_thresh=0.0
    ).eval()
    detector = cl.load(net, labels=["background", "a", "b"], score_threshold=0.0)
    picture = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(1))
    target = cl.detect(detector, picture)[0]
    name = DM.default_box_layer(detector)
    layer = dict(net.named_modules())[name]

    def ours() -> None:
        cl.explain(detector, picture, method="gradcam", target=target, layer=name)

    box_target = FasterRCNNBoxScoreTarget([target.label], np.asarray([target.box], np.float32))
    theirs_cam = GradCAM(model=net, target_layers=[layer])

    def theirs() -> None:
        theirs_cam(picture[None], targets=[box_target])

    def floor() -> None:
        kept = []
        handle = layer.register_forward_hook(lambda _m, _i, out: kept.append(out))
        try:
            out = net([picture])[0]
        finally:
            handle.remove()
        torch.autograd.grad(out["scores"][0], kept[0])

    cases = {
        "convlens box Grad-CAM (Faster R-CNN)": ours,
        "pytorch-grad-cam GradCAM + FasterRCNNBoxScoreTarget": theirs,
        "forward + backward to the layer (floor)": floor,
    }
    for fn in cases.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(max(1, repeats)):
        for case, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[case].append(time.perf_counter() - start)
    timings = {k: Timing(tuple(v)) for k, v in times.items()}
    return (
        compare(
            "box CAM",
            timings,
            "pytorch-grad-cam GradCAM + FasterRCNNBoxScoreTarget",
            {"convlens box Grad-CAM (Faster R-CNN)": (1.0, False)},
        )
        + compare(
            "box CAM",
            {k: timings[k] for k in list(timings)[::2]},
            "forward + backward to the layer (floor)",
            {"convlens box Grad-CAM (Faster R-CNN)": (1.3, False)},
        )[:1]
    )


if __name__ == "__main__":
    from run import table

    print(table(run()))
