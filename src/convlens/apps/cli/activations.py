"""Commands that show what layers hold: activations of pictures and filter weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.apps.cli.common import (
    FactoryOpt,
    ModelArg,
    TrustOpt,
    app,
    console,
    load_model,
    progress_bar,
    progress_callback,
    readable_pictures,
    skipped_exit,
    user_errors,
)


@app.command()
def activations(
    model: ModelArg,
    images: Annotated[list[str], typer.Argument(help="Image files or folders.")],
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer",
            "-l",
            help="Layer ('features.3') or channel ('features.3:7'); repeat or comma-separate. "
            "Default: every conv and pool layer.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out"),
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    half: Annotated[bool, typer.Option("--half", help="Store activations as float16.")] = False,
    stream: Annotated[
        bool, typer.Option("--stream", help="Write activations to disk batch by batch.")
    ] = False,
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """One grid PNG per layer and image (each channel standardised), channel heatmaps, and the
    raw activations as activations.npz."""
    with user_errors():
        import torch

        from convlens.techniques.activations import activations as capture

        handle = load_model(model, factory, trust_pickle)
        pictures, skipped = readable_pictures(handle, images)
        specs = [s.strip() for item in (layer or []) for s in item.split(",") if s.strip()]
        if not specs:
            specs = handle.layers().filter(["conv", "pool"], leaves_only=True).spatial().names
        out.mkdir(parents=True, exist_ok=True)
        with progress_bar("activations") as bar:
            task = bar.add_task("forward passes", total=None)
            acts = capture(
                handle,
                pictures,
                specs,
                batch_size=batch_size,
                dtype=torch.float16 if half else None,
                stream_to=out / "activations.npz" if stream else None,
                progress=progress_callback(bar, task),
            )
        with progress_bar("drawing") as bar:
            bar.add_task("drawing grids", total=None)
            written = acts.save(out, npz=not stream)
    pngs = [p for p in written if p.suffix == ".png"]
    console.print(f"wrote {len(pngs)} PNG file(s) and activations.npz to {out}/")
    skipped_exit(skipped, len(pictures) + len(skipped))


@app.command()
def filters(
    model: ModelArg,
    layer: Annotated[
        list[str],
        typer.Option(
            "--layer", "-l", help="Conv layer ('features.0.0'; 'layer:7' for one filter); repeat."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/filters"),
    view: Annotated[
        str, typer.Option(help="auto, rgb (colour patches), channels, mean or norm.")
    ] = "auto",
    scale: Annotated[str, typer.Option(help="shared (one scale) or per_filter.")] = "shared",
    max_filters: Annotated[int, typer.Option(help="Draw the first N filters.")] = 64,
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Draw a conv layer's filter weights: RGB patches for the first layer, per-input-channel
    tiles or reduced views deeper; the scale is written on the picture. One PNG per layer."""
    with user_errors():
        from convlens.techniques.filters import filter_weights

        handle = load_model(model, factory, trust_pickle)
        written = []
        for spec in [s.strip() for item in layer for s in item.split(",") if s.strip()]:
            shown = filter_weights(handle, spec, view=view, scale=scale, max_filters=max_filters)
            written.append(shown.save(out / f"{spec.replace(':', '_')}.png"))
    for path in written:
        console.print(f"wrote {path}")
