"""``convlens featurevis``: what a channel, a layer or a class responds to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from convlens.apps.cli.common import (
    FactoryOpt,
    ModelArg,
    TrustOpt,
    app,
    channel_spec,
    console,
    load_model,
    parse_target,
    progress_bar,
    progress_callback,
    user_errors,
)


@app.command()
def featurevis(
    model: ModelArg,
    layer: Annotated[
        str | None,
        typer.Option("--layer", "-l", help="Layer ('features.14') or channel ('features.14:17')."),
    ] = None,
    channels: Annotated[
        str | None,
        typer.Option(help="Channels of --layer, e.g. 0-63 or 0,5,9 (default: the first 64)."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--class", "-c", help="Class label(s) or index(es), comma-separated."),
    ] = None,
    neuron: Annotated[
        bool, typer.Option("--neuron", help="The centre position only, not the channel mean.")
    ] = False,
    preset: Annotated[
        str, typer.Option(help="lucent (Fourier, transforms, Adam), classic (40 steps) or pixels.")
    ] = "lucent",
    steps: Annotated[int | None, typer.Option(help="Optimisation steps (default: preset's).")] = (
        None
    ),
    size: Annotated[int | None, typer.Option(help="Image side (default: the model's).")] = None,
    lr: Annotated[float | None, typer.Option(help="Step size (default: preset's).")] = None,
    l2: Annotated[float, typer.Option(help="Weight of an L2 penalty toward grey.")] = 0.0,
    tv: Annotated[float, typer.Option(help="Weight of a total-variation penalty.")] = 0.0,
    diversity: Annotated[
        float, typer.Option(help="Weight of a diversity term across the batch (same layer).")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seeds the start image and the transforms.")] = 0,
    batch_size: Annotated[
        int | None, typer.Option(help="Images optimised together (default: memory budget).")
    ] = None,
    memory_budget_mb: Annotated[
        float | None, typer.Option(help="Memory for one batch (sizes the batches).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "out/featurevis"
    ),
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """What a channel, neuron or class responds to most, by gradient ascent on the input:
    grid.png, one PNG per image, featurevis.gif (the optimisation) and history.json."""
    with user_errors():
        from convlens.core.naming import parse_layer
        from convlens.techniques.visualize import featurevis as run
        from convlens.techniques.visualize import objectives as obj

        handle = load_model(model, factory, trust_pickle)
        if (layer is None) == (target is None):
            raise ValueError("give --layer (a layer or layer:channel) or --class, one of them")
        objective: Any
        if target is not None:
            if channels is not None or neuron:
                raise ValueError("--channels and --neuron go with --layer, not --class")
            classes = [parse_target(t.strip()) for t in target.split(",") if t.strip()]
            objective = obj.class_logit(classes if len(classes) > 1 else classes[0])
        else:
            assert layer is not None
            ref = parse_layer(layer)
            if ref.channel is not None and channels is not None:
                raise ValueError(f"give the channel in --layer ({layer}) or --channels, not both")
            if ref.channel is not None:
                which: Any = ref.channel
            elif channels is not None:
                which = channel_spec(channels)
            else:
                width = obj.channels(ref.name).bind(handle).batch or 1
                which = list(range(min(64, width)))
            objective = (obj.neuron if neuron else obj.channel)(ref.name, which)
            if diversity:
                objective = objective + diversity * obj.diversity(ref.name)
        if l2:
            objective = objective - l2 * obj.l2()
        if tv:
            objective = objective - tv * obj.total_variation()
        with progress_bar("featurevis") as bar:
            task = bar.add_task("steps", total=None)
            result = run(
                handle,
                objective,
                preset=preset,
                steps=steps,
                size=size,
                lr=lr,
                seed=seed,
                batch_size=batch_size,
                memory_budget_mb=memory_budget_mb,
                progress=progress_callback(bar, task),
            )
        result.save(out)
    first, last = result.history[0].mean().item(), result.history[-1].mean().item()
    console.print(
        f"{result.objective}: {len(result)} image(s), objective {first:.3g} -> {last:.3g} "
        f"(mean over images) in {result.history.shape[0]} steps"
    )
    console.print(f"wrote grid.png, {len(result)} PNG(s), featurevis.gif, history.json to {out}/")
