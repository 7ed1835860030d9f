"""The main job (``convlens demo``, ``make demo``): the bundled photos through a zoo model.

It writes one self-contained HTML page plus the PNGs it embeds under the output folder.
Later features add their panels as functions in :data:`PANELS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from convlens.core.images import samples
from convlens.core.model import Model
from convlens.core.report import Report
from convlens.core.tasks import load_classifier as load
from convlens.techniques.activations import activations

DemoProgress = Callable[[int, int, str], None]

# Layers shown for MobileNetV2: early edges and colours, mid-level parts, late object parts.
MOBILENET_LAYERS = ["features.1", "features.3", "features.6", "features.13", "features.17"]


def _layers_for(model: Model) -> list[str]:
    table = model.layers()
    if all(name in table.names for name in MOBILENET_LAYERS):
        return MOBILENET_LAYERS
    spatial = table.filter(["conv", "pool"], leaves_only=True).spatial().names
    step = max(1, len(spatial) // 5)
    return spatial[::step][:5]


def predictions_panel(report: Report, model: Model, out: Path, pictures: dict[str, Path]) -> None:
    prediction = model.predict(list(pictures.values()), top=5)
    section = report.add_section(
        "Predictions",
        text=f"Top-5 classes of {model.name} for each bundled photo (softmax probabilities).",
    )
    batch = model.prepare(list(pictures.values()))
    for i, name in enumerate(prediction.names):
        section.add_image(batch.pictures[i], caption=f"{name}: what the network sees (224 crop)")
        section.add_table(
            [
                {"class": label, "index": k, "probability": f"{p:.2%}"}
                for k, label, p in prediction.topk(i)
            ]
        )


def activations_panel(report: Report, model: Model, out: Path, pictures: dict[str, Path]) -> None:
    layers = _layers_for(model)
    first = next(iter(pictures.values()))
    acts = activations(model, first, layers)
    section = report.add_section(
        "Activations",
        text="Every channel of a few layers for the first photo, each channel standardised "
        "for display (mean 0.5 grey, one standard deviation = 64 grey levels).",
    )
    folder = out / "activations"
    for layer in layers:
        figure = acts.grid(layer, max_channels=64)
        figure.save(folder / f"{layer}.png")
        section.add_image(
            figure, caption=f"{layer}: first {min(64, acts[layer].shape[1])} channels"
        )
    strongest = int(acts[layers[1]][0].float().mean(dim=(1, 2)).argmax())
    spec = f"{layers[1]}:{strongest}"
    heat = acts.heatmap(spec, overlay=True)
    heat.save(folder / f"{spec.replace(':', '_')}.png")
    section.add_image(heat, caption=f"{spec}, the most active channel, over the photo")


# Methods shown on the demo page, with settings that keep `make demo` quick on a CPU.
DEMO_METHODS: dict[str, dict[str, object]] = {
    "gradcam": {},
    "gradcam++": {},
    "layercam": {},
    "ig": {"steps": 32},
    "smoothgrad": {"samples": 16, "seed": 0},
    "occlusion": {"window": 32, "stride": 16},
}


def explanations_panel(report: Report, model: Model, out: Path, pictures: dict[str, Path]) -> None:
    from convlens.apps.reports import LEGEND, SCALE_TEXT, add_explanations
    from convlens.techniques.attribution.base import get_method

    batch = model.prepare(list(pictures.values()))
    prediction = model.predict(batch, top=1)
    results = []
    for name, options in DEMO_METHODS.items():
        result = get_method(name).fn(model, batch, None, **options)
        result.save(out / "explanations", stem=result.method)
        results.append(result)
    section = report.add_section(
        "Why this decision",
        text="Where the evidence for each photo's top-1 class lies, by several methods: one "
        "row per photo (the photo, then one map per method), one column per method.\n\n"
        + LEGEND.format(scale=SCALE_TEXT[None]),
    )
    add_explanations(section, results, prediction)


# Feature visualization settings that keep `make demo` to about a minute on a 2-core CPU.
DEMO_FEATUREVIS = {"channels": 16, "size": 96, "steps": 64, "toon_steps": 128}


def featurevis_panel(report: Report, model: Model, out: Path, pictures: dict[str, Path]) -> None:
    from convlens.techniques.filters import filter_weights
    from convlens.techniques.visualize import featurevis
    from convlens.techniques.visualize import objectives as obj

    section = report.add_section(
        "What the filters respond to",
        text="First-layer filter weights as colour patches, then the input pattern that "
        "maximises each of the first channels of a mid-level layer (feature visualization: "
        "Fourier image, decorrelated colour, Lucent's transforms, Adam; all channels optimised "
        "as one batch), and what the toon model's classes look like to it.",
    )
    folder = out / "featurevis"
    first_conv = model.layers().filter(["conv"], leaves_only=True).names[0]
    filters = filter_weights(model, first_conv)
    filters.save(folder / f"filters_{first_conv}.png")
    section.add_image(filters.figure, caption=filters.figure.caption)

    layers = _layers_for(model)
    layer = "features.14" if layers == MOBILENET_LAYERS else layers[len(layers) // 2]
    width = obj.channels(layer).bind(model).batch or 1
    channels = list(range(min(DEMO_FEATUREVIS["channels"], width)))
    fv = featurevis(
        model,
        obj.channel(layer, channels),
        size=DEMO_FEATUREVIS["size"],
        steps=DEMO_FEATUREVIS["steps"],
        seed=0,
        frames=0,
    )
    grid = fv.grid(ncols=8)
    grid.save(folder / f"{layer}.png")
    section.add_image(
        grid,
        caption=f"{model.name} {layer}: channels 0-{channels[-1]}, {fv.history.shape[0]} steps",
    )

    toon = load("toon-cnn")
    labels = toon.labels or []
    classes = featurevis(
        toon, obj.class_probability(labels), steps=DEMO_FEATUREVIS["toon_steps"], seed=0, frames=0
    )
    picture = classes.grid(ncols=len(labels))
    picture.save(folder / "toon-cnn_classes.png")
    section.add_image(
        picture,
        caption="toon-cnn: the input that maximises each class's probability "
        f"({', '.join(labels)}; hair yellow, blue, red)",
    )


PANELS: list[Callable[[Report, Model, Path, dict[str, Path]], None]] = [
    predictions_panel,
    activations_panel,
    explanations_panel,
    featurevis_panel,
]


def run(
    out: str | os.PathLike[str] = "out/demo",
    *,
    model: str | Model = "mobilenet_v2",
    progress: DemoProgress | None = None,
) -> Path:
    """Run every panel and write ``index.html``; returns its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    handle = load(model)
    pictures = dict(sorted(samples().items(), key=lambda kv: kv[0] != "chelsea"))
    report = Report(f"convlens demo · {handle.name}")
    for i, panel in enumerate(PANELS):
        if progress is not None:
            progress(i, len(PANELS), panel.__name__.replace("_panel", ""))
        panel(report, handle, out, pictures)
    if progress is not None:
        progress(len(PANELS), len(PANELS), "done")
    return report.save(out / "index.html")
