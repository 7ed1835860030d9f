"""``convlens detect``: a detector's boxes, and one explanation per box."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from convlens.apps.cli.common import (
    FactoryOpt,
    app,
    console,
    load_model,
    progress_bar,
    progress_callback,
    user_errors,
)


@app.command()
def detect(
    detector: Annotated[
        str,
        typer.Argument(
            help="A zoo detector (toon-detector, mtcnn-faces), a detector checkpoint (.pt) or a "
            "plugin .py defining one."
        ),
    ],
    image: Annotated[Path, typer.Argument(help="The picture.")],
    score_threshold: Annotated[
        float | None,
        typer.Option(help="Keep boxes scoring at least this (default: the detector's)."),
    ] = None,
    iou_threshold: Annotated[float, typer.Option(help="NMS: drop boxes overlapping more.")] = 0.5,
    max_detections: Annotated[int, typer.Option(help="Keep at most this many boxes.")] = 20,
    explain: Annotated[
        str | None, typer.Option(help="Explain every box: drise, gradcam or layercam.")
    ] = None,
    masks: Annotated[int, typer.Option(help="D-RISE masks.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seeds the D-RISE masks.")] = 0,
    layer: Annotated[
        str | None, typer.Option(help="Layer the gradient CAMs read (default: the backbone's).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/detect"),
    factory: FactoryOpt = None,
) -> None:
    """Boxes, labels and scores drawn (detections.png) and listed (detections.json); with
    --explain, one saliency overlay per box (box_<i>_<method>.png) and its energy in the box."""
    with user_errors():
        from convlens.core.detector import Detector
        from convlens.core.tasks import detect as run
        from convlens.techniques.attribution.detection import box_methods, explain_box

        if explain is not None and explain not in box_methods():
            raise ValueError(
                f"expected --explain one of {', '.join(box_methods())}, got {explain!r}"
            )
        handle = load_model(detector, factory, False, detectors=True)
        if not isinstance(handle, Detector):
            raise ValueError(
                f"{detector!r} is a classifier; convlens detect takes a detector "
                "(try convlens predict or convlens explain)"
            )
        found = run(
            handle,
            image,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )
        written = found.save(out)
        shares: list[str] = []
        if explain and len(found):
            options: dict[str, Any] = (
                {"masks": masks, "seed": seed} if explain == "drise" else {"layer": layer}
            )
            with progress_bar(explain) as bar:
                task = bar.add_task("boxes" if explain != "drise" else "masks", total=None)
                for i in range(len(found)):
                    if explain == "drise":
                        options["progress"] = progress_callback(bar, task)
                    result = explain_box(handle, image, found[i], explain, **options)
                    path = out / f"box_{i}_{explain}.png"
                    result.overlay().save(path)
                    written.append(path)
                    shares.append(f"  energy in box {result.energy_in_box():.2f}")
    for i, d in enumerate(found):
        share = shares[i] if shares else ""
        console.print(f"{d.name:>12} {d.score:.3f}  box {tuple(round(v, 1) for v in d.box)}{share}")
    console.print(
        f"{len(found)} detection(s); wrote {', '.join(p.name for p in written)} to {out}/"
    )
