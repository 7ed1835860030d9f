"""The clever-Hans audit: does the model look at the object or at the background? The share of
an explanation's positive attribution on the object, per image, per class and overall, with a
verdict and an HTML report."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convlens.core.model import Model
from convlens.core.render import Figure, to_pil
from convlens.core.report import Report
from convlens.techniques.attribution.base import get_method
from convlens.workflows import metrics as m
from convlens.workflows.masked import (
    _batches,
    _check_count,
    _model_labels,
    _object_name,
    _targets,
    as_masked,
    describe_data,
    network_input,
)

Progress = Callable[[int, int], None]


# -- audit --------------------------------------------------------------------------------------


@dataclass
class Audit:
    """Where the positive attribution falls: on the object or on the background.

    ``inside`` (N,) is each image's share of positive attribution on the object (NaN for maps
    without positive mass), ``area`` (N,) the object's share of the image, ``classes`` the
    per-class rows; ``verdict`` the sentence; ``examples`` (figure, caption) pairs for the
    report.
    """

    method: str
    inside: m.Scores
    area: torch.Tensor
    groups: torch.Tensor
    class_names: list[str]
    threshold: float
    object_name: str
    examples: dict[str, list[tuple[Any, str]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""  # the model audited, and the data it was shown
    data_name: str = ""

    @property
    def share_inside(self) -> float:
        return self.inside.mean

    @property
    def share_outside(self) -> float:
        return 1 - self.inside.mean

    @property
    def relies_on_background(self) -> bool:
        return self.share_outside > self.threshold

    def _sentence(self, outside: float) -> str:
        if math.isnan(outside):
            return "no verdict: no map had positive attribution"
        if outside > self.threshold:
            return (
                f"relies on the background: {outside * 100:.0f} % of attribution is outside "
                f"the {self.object_name}"
            )
        return (
            f"looks at the {self.object_name}: {(1 - outside) * 100:.0f} % of attribution is on "
            f"the {self.object_name}"
        )

    @property
    def verdict(self) -> str:
        return self._sentence(self.share_outside)

    def classes(self) -> list[dict[str, Any]]:
        """One row per class (by the explained class): images, share on the object (mean and
        95 % t-interval), the object's mean area share, and the class's verdict."""
        rows = []
        for k, name in enumerate(self.class_names):
            chosen = self.groups == k
            if not bool(chosen.any()):
                continue
            scores = m.Scores("inside", self.inside.values[chosen])
            low, high = scores.interval()
            rows.append(
                {
                    "class": name,
                    "images": int(chosen.sum()),
                    "on object": _num(scores.mean),
                    "low": _num(low),
                    "high": _num(high),
                    "object area": float(self.area[chosen].double().mean()),
                    "verdict": self._sentence(1 - scores.mean),
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        low, high = self.inside.interval()
        return {
            "model": self.model_name,
            "data": self.data_name,
            "method": self.method,
            "verdict": self.verdict,
            "relies_on_background": self.relies_on_background,
            "threshold": self.threshold,
            "share_on_object": _num(self.share_inside),
            "share_on_object_low": _num(low),
            "share_on_object_high": _num(high),
            "object_area": float(self.area.double().mean()),
            "images": len(self.inside),
            "invalid": self.inside.invalid,
            "classes": self.classes(),
            "settings": self.settings,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **({"indent": 1} | kwargs))

    def report(self, title: str | None = None) -> Report:
        page = Report(title or f"convlens audit · {self.model_name or 'model'} · {self.method}")
        low, high = self.inside.interval()
        verdict = page.add_section(
            "Verdict",
            text=(
                f"Model {self.model_name or '(unnamed)'} on {self.data_name or 'the data'}, "
                f"explained with {self.method}: {self.verdict}.\n\n"
                f"Share of positive attribution on the {self.object_name}: "
                f"{self.share_inside:.1%} (95 % CI {low:.1%} … {high:.1%}, Student t) over "
                f"{len(self.inside) - self.inside.invalid} images; the {self.object_name} cover "
                f"{float(self.area.double().mean()):.1%} of the image on average (what a map "
                f"spread evenly would score). Verdict rule: the model relies on the background "
                f"when more than {self.threshold:.0%} of the positive attribution lies outside "
                f"the {self.object_name}."
            ),
        )
        verdict.add_table(self.classes())
        for title_, key in (
            ("Images that rely most on the background", "background"),
            (f"Images that look most at the {self.object_name}", "object"),
        ):
            items = self.examples.get(key, [])
            if items:
                section = page.add_section(title_)
                per = 2 if items[1][1] == "mask" else 3  # picture, map, mask (or map, mask)
                for start in range(0, len(items), per):  # one row each: a triplet never wraps
                    row = items[start : start + per]
                    section.add_grid([f for f, _ in row], [c for _, c in row], columns=per)
        return page

    def save(self, path: str | os.PathLike[str]) -> Path:
        return self.report().save(path)

    def _repr_html_(self) -> str:
        return self.report().html()

    def __str__(self) -> str:
        return f"{self.method}: {self.verdict}"


def _num(value: float) -> float | None:
    return None if math.isnan(value) else value


def audit(
    model: Any,
    data: Any,
    method: str = "integrated_gradients",
    *,
    target: Any = None,
    parts: Sequence[str] | None = None,
    threshold: float = 0.5,
    n: int | None = None,
    batch_size: int = 32,
    examples: int = 4,
    options: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> Audit:
    """The clever-Hans audit: the share of ``method``'s positive attribution that falls on the
    object (the mask, or the named ``parts``) versus the background, per image, per class and
    overall (mean over images, 95 % Student-t interval). Verdict: *relies on the background*
    when more than ``threshold`` (default 50 %) of the positive attribution is outside the
    object. ``examples`` images of each extreme (the most background- and most object-focused)
    are shown as overlays in :meth:`Audit.report`. ``target`` as :func:`evaluate`.

    The default method is Integrated Gradients (Sundararajan et al. 2017, black baseline)
    because a share of attribution only means something when the attribution is complete:
    IG's map sums to the score's change from the baseline, so "x % of the evidence lies on the
    background" is a statement about the score. CAM maps are not complete: they are coarse,
    non-negative by construction and include evidence every class shares; on the shipped toon
    models Grad-CAM's background share barely separates the model that learned the
    background from the one that did not, while IG's does (see the README)."""
    from convlens.core.tasks import as_model

    handle = as_model(model)
    source = os.fspath(data) if isinstance(data, (str, os.PathLike)) else None
    data = as_masked(data)
    info = get_method(method)
    _check_count(batch_size, "batch_size")
    if n is not None:
        _check_count(n, "n")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"expected a threshold in [0, 1], got {threshold!r}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"expected a threshold in [0, 1], got {threshold!r}")
    opts = dict(options or {})
    total_images = len(data) if n is None else min(n, len(data))
    if total_images == 0:
        raise ValueError("the data set is empty")
    shares, areas, groups = [], [], []
    total = math.ceil(total_images / batch_size)
    for done, (_, inputs, masks, labels) in enumerate(
        _batches(handle, data, parts, batch_size, n), start=1
    ):
        explained = _targets(handle, inputs, labels, target)
        attribution = info.fn(handle, inputs, explained, **opts)
        maps = m.input_maps(attribution, tuple(inputs.shape[-2:]))  # type: ignore[arg-type]
        shares.append(m.energy_in_mask(maps, masks, empty="nan").values)
        areas.append(masks.flatten(1).double().mean(1).cpu())
        group = labels if labels is not None else explained.indices
        groups.append(
            group.cpu() if group is not None else torch.zeros(len(inputs), dtype=torch.long)
        )
        if progress is not None:
            progress(done, total)
    inside = m.Scores("share_on_object", torch.cat(shares), "higher")
    group_all = torch.cat(groups)
    names = list(handle.labels or getattr(data, "classes", None) or [])
    top = int(group_all.max()) + 1 if len(group_all) else 0
    class_names = [
        names[k] if k < len(names) else handle.label(k) for k in range(max(top, len(names)))
    ]
    result = Audit(
        info.name,
        inside,
        torch.cat(areas),
        group_all,
        class_names,
        float(threshold),
        _object_name(data),
        settings={
            "parts": list(parts) if parts else "object",
            "target": "label"
            if target is None and getattr(data, "labels", None) is not None
            else str(target or "top-1"),
            "options": {k: v for k, v in opts.items() if isinstance(v, (str, int, float, bool))},
        },
        model_name=handle.name,
        data_name=describe_data(data, source),
    )
    if examples > 0:
        result.examples = _examples(handle, data, info.name, result, parts, target, examples, opts)
    return result


def _examples(
    model: Model,
    data: Any,
    method: str,
    result: Audit,
    parts: Sequence[str] | None,
    target: Any,
    count: int,
    options: Mapping[str, Any],
) -> dict[str, list[tuple[Any, str]]]:
    """Overlays of the ``count`` images with the lowest and highest share on the object."""
    values = result.inside.values
    valid = (~torch.isnan(values)).nonzero().flatten()
    if not len(valid):
        return {}
    order = valid[torch.argsort(values[valid], stable=True)]
    picks = {"background": order[:count].tolist(), "object": order.flip(0)[:count].tolist()}
    out: dict[str, list[tuple[Any, str]]] = {}
    info = get_method(method)
    masks_all = data.mask(*parts) if parts else data.object_mask()
    labels = _model_labels(model, data)
    for key, indices in picks.items():
        index = torch.tensor(indices)
        inputs, masks = network_input(
            model,
            data.images[index],
            masks_all[index],
            is_input=bool(getattr(data, "is_input", False)),
        )
        lab = None if labels is None else labels[index]
        explained = _targets(model, inputs, lab, target)
        attribution = info.fn(model, inputs, explained, **dict(options))
        items: list[tuple[Any, str]] = []
        for j, i in enumerate(indices):
            group = result.class_names[int(result.groups[i])]
            share = float(values[i])
            if attribution.pictures:
                items.append((attribution.pictures[j], f"#{i} · {group}"))
                items.append(
                    (attribution.overlay(j), f"{method}: {share:.0%} on the {result.object_name}")
                )
            else:
                items.append((attribution.heatmap(j), f"#{i} {method}: {share:.0%} on the object"))
            mask_picture = to_pil((masks[j].float() * 255).to(torch.uint8).cpu().numpy())
            items.append((Figure(mask_picture), "mask"))
        out[key] = items
    return out
