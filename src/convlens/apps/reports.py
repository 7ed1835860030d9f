"""The explanation report: one self-contained HTML page, images x methods.

Used by ``convlens explain`` and by the demo page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convlens.core.model import Prediction
from convlens.core.report import Report, Section
from convlens.techniques.attribution.base import Attribution, get_method


def add_explanations(
    section: Section, attributions: Sequence[Attribution], prediction: Prediction | None = None
) -> Section:
    """A table of overlays: one row per image (with its top prediction), one column per
    method; then each method's settings."""
    if not attributions:
        raise ValueError("expected at least one attribution to show")
    names = attributions[0].names
    for i, name in enumerate(names):
        images: list[Any] = []
        captions: list[str] = []
        if attributions[0].pictures:
            images.append(attributions[0].pictures[i])
            top = ""
            if prediction is not None:
                _, label, p = prediction.topk(i)[0]
                top = f" · top-1 {label} ({p:.1%})"
            captions.append(f"{name}{top}")
        for attribution in attributions:
            figure = attribution.overlay(i) if attribution.pictures else attribution.heatmap(i)
            images.append(figure)
            what = attribution.target_labels[i] if attribution.target_labels else "target"
            where = f" @ {attribution.layer}" if attribution.layer else ""
            captions.append(f"{attribution.method}{where} · {what}")
        section.add_grid(images, captions)
    rows = []
    for attribution in attributions:
        info = get_method(attribution.method)
        settings = ", ".join(
            f"{k}={v}" for k, v in attribution.summary()["settings"].items() if k != "signed"
        )
        extras = ", ".join(f"{k}={v}" for k, v in attribution.summary()["extras"].items())
        rows.append(
            {
                "method": attribution.method,
                "family": info.family,
                "layer": attribution.layer or "input",
                "settings": settings,
                "diagnostics": extras,
                "paper": info.paper,
            }
        )
    section.add_table(rows)
    return section


def explanation_report(
    attributions: Sequence[Attribution], prediction: Prediction | None = None, *, title: str
) -> Report:
    report = Report(title)
    section = report.add_section(
        "Explanations",
        text="Red/warm = evidence for the target class (jet colour map, each map scaled to its "
        "own range); signed methods use blue (against) to red (for), centred on zero.",
    )
    add_explanations(section, attributions, prediction)
    return report
