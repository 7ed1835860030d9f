"""The explanation report: one self-contained HTML page, images x methods.

Used by ``convlens explain`` and by the demo page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convlens.core.model import Prediction
from convlens.core.report import Report, Section
from convlens.techniques.attribution.base import Attribution, get_method

LEGEND = (
    "How to read the maps: each is drawn over the picture the network saw, with its colour bar "
    "below (the values at its two ends, in the method's own units) and the target's score (its "
    "logit). Jet (blue, green, yellow, red) runs from the bar's low end to its high end: red is "
    "the strongest evidence for the target. Signed methods use blue (against) to red (for), "
    "centred on zero. {scale}"
)
SCALE_TEXT = {
    None: "Each map is scaled to its own range, so a weak map glows as hot as a strong one: "
    "read its bar and score.",
    "shared": "Each method's maps share one range over all pictures, so equal values get "
    "equal colours within a column.",
}


def add_explanations(
    section: Section,
    attributions: Sequence[Attribution],
    prediction: Prediction | None = None,
    *,
    scales: Sequence[Any] | None = None,
) -> Section:
    """A table of overlays: one row per image (with its top prediction), one column per
    method, each map with its colour bar; then each method's settings. ``scales``: each
    attribution's ``scale`` (see :meth:`Attribution.overlay`; default: own ranges)."""
    if not attributions:
        raise ValueError("expected at least one attribution to show")
    scales = list(scales) if scales is not None else [None] * len(attributions)
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
        for attribution, scale in zip(attributions, scales, strict=True):
            images.append(attribution.figure(i, scale=scale))
            what = attribution.target_labels[i] if attribution.target_labels else "target"
            where = f" @ {attribution.layer}" if attribution.layer else ""
            captions.append(f"{attribution.method}{where} · {what}")
        section.add_grid(images, captions, columns=len(images))
    rows = []
    for attribution in attributions:
        info = get_method(attribution.method)
        settings = ", ".join(
            f"{k}={readable(v)}"
            for k, v in attribution.summary()["settings"].items()
            if k != "signed"
        )
        extras = ", ".join(f"{k}={readable(v)}" for k, v in attribution.summary()["extras"].items())
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


def readable(value: Any, most: int = 6) -> str:
    """A setting or diagnostic as a person reads it: numbers to 4 significant digits, lists
    shortened after ``most`` items (a tensor or array first becomes a list)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        shown = [readable(v, most) for v in value[:most]]
        more = f", ... ({len(value)} in all)" if len(value) > most else ""
        return "[" + ", ".join(shown) + more + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {readable(v, most)}" for k, v in value.items()) + "}"
    return str(value)


def explanation_report(
    attributions: Sequence[Attribution],
    prediction: Prediction | None = None,
    *,
    title: str,
    scales: Sequence[Any] | None = None,
    scale_text: str | None = None,
) -> Report:
    """The page of ``convlens explain``: a legend, then :func:`add_explanations`."""
    report = Report(title)
    section = report.add_section(
        "Explanations", text=LEGEND.format(scale=scale_text or SCALE_TEXT[None])
    )
    add_explanations(section, attributions, prediction, scales=scales)
    return report
