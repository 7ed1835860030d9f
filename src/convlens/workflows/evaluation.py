"""Explanation quality over a whole data set: :func:`evaluate` (every method x every metric,
mean and 95 % confidence interval); the clever-Hans audit is :mod:`.audit`.

Data come with object masks (:mod:`.masked`): a :class:`~.masked.MaskedImages` (images, masks,
labels), anything shaped like ``convlens.data.toons``'s ``ToonSet``, a toons folder, a folder of
your own pictures with their masks (:func:`~.masked.read_mask_folder`), or a tuple
``(images, masks)`` / ``(images, masks, labels)`` of tensors. A detector is scored by
:func:`convlens.workflows.detection_eval.evaluate_detector` instead.

Intervals are Student-t intervals of the mean over the images (``mean +- t * sd / sqrt(n)``,
see :func:`convlens.metrics.t_interval`); images a metric is undefined for (a map without
positive mass, an empty mask) are left out and counted as ``invalid``.
"""

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
from convlens.core.tasks import as_detector, as_handle
from convlens.techniques.attribution.base import Target, get_method
from convlens.workflows import metrics as m
from convlens.workflows.detection_eval import evaluate_detector
from convlens.workflows.masked import _batches, _check_count, _targets, as_masked, describe_data

Progress = Callable[[int, int], None]

# name: (needs the model (faithfulness) or only the masks, which values are better, what it is)
METRICS: dict[str, tuple[str, str, str]] = {
    "pointing_game": (
        "mask",
        "higher",
        "share of images whose map maximum lies on the object (Zhang et al. 2016)",
    ),
    "energy_in_mask": (
        "mask",
        "higher",
        "share of positive attribution on the object (Wang et al. 2020, Score-CAM)",
    ),
    "deletion": ("model", "lower", "AUC of the probability as top pixels are removed (RISE)"),
    "insertion": ("model", "higher", "AUC of the probability as top pixels are restored (RISE)"),
    "average_drop": (
        "model",
        "lower",
        "relative drop of the probability on the masked image (Grad-CAM++; 0-1)",
    ),
    "increase_in_confidence": (
        "model",
        "higher",
        "share of images whose probability rises on the masked image (Grad-CAM++; 0-1)",
    ),
}
DEFAULT_METRICS = tuple(METRICS)
# column headers of the printed table (the JSON keeps the names above)
SHORT = {
    "pointing_game": "pointing",
    "energy_in_mask": "energy",
    "deletion": "deletion",
    "insertion": "insert",
    "average_drop": "avg drop",
    "increase_in_confidence": "conf. up",
}


# -- evaluate -----------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Every method x metric over a data set. ``scores[(method, metric)]`` holds the per-image
    :class:`~convlens.metrics.Scores`; :meth:`rows` the summaries (mean, 95 % t-interval)."""

    methods: list[str]
    metrics: list[str]
    scores: dict[tuple[str, str], m.Scores]
    images: int
    level: float = 0.95
    settings: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""  # the model evaluated, and the data it was shown
    data_name: str = ""

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for method in self.methods:
            for metric in self.metrics:
                row = {"method": method, **self.scores[(method, metric)].summary(self.level)}
                out.append(row)
        return out

    def cell(self, method: str, metric: str) -> str:
        """``mean ± half-width`` of the interval, as shown in the table."""
        scores = self.scores[(method, metric)]
        low, high = scores.interval(self.level)
        if math.isnan(scores.mean):
            return "n/a"
        if math.isnan(low):
            return f"{scores.mean:.3f}"
        return f"{scores.mean:.3f} ± {(high - low) / 2:.3f}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "data": self.data_name,
            "images": self.images,
            "level": self.level,
            "interval": "Student-t interval of the mean over images",
            "methods": self.methods,
            "metrics": {k: {"better": METRICS[k][1], "what": METRICS[k][2]} for k in self.metrics},
            "results": self.rows(),
            "settings": self.settings,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **({"indent": 1} | kwargs))

    def save(self, path: str | os.PathLike[str]) -> Path:
        from convlens.core.render import write_atomic

        return write_atomic(path, self.to_json().encode("utf-8"))

    def _header(self) -> list[str]:
        arrows = {"higher": "↑", "lower": "↓"}
        return ["method", *(f"{SHORT[k]} {arrows[METRICS[k][1]]}" for k in self.metrics)]

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(
            title=f"{self.model_name or 'model'} on {self.data_name or 'the data'}: "
            f"{self.images} images · mean ± {self.level:.0%} CI (t) · ↑/↓ better",
            title_justify="left",
        )
        for i, name in enumerate(self._header()):
            table.add_column(name, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for method in self.methods:
            table.add_row(method, *(self.cell(method, k) for k in self.metrics))
        return table

    def __str__(self) -> str:
        header = self._header()
        body = [[mth, *(self.cell(mth, k) for k in self.metrics)] for mth in self.methods]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *body]
        ]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from convlens.core.report import Section

        section = Section(f"{self.images} images, mean ± {self.level:.0%} CI")
        section.add_table(
            (
                self._header(),
                [[mth, *(self.cell(mth, k) for k in self.metrics)] for mth in self.methods],
            )
        )
        return section.html()


def evaluate(
    model: Any,
    data: Any,
    methods: Sequence[str] = ("gradcam",),
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    parts: Sequence[str] | None = None,
    target: Any = None,
    n: int | None = None,
    batch_size: int = 32,
    steps: int = 20,
    tolerance: float = 0.0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    memory_budget_mb: float | None = None,
    level: float = 0.95,
    progress: Progress | None = None,
) -> Evaluation:
    """Score every registered ``method`` on every ``metric`` (see :data:`METRICS`) over
    ``data`` (images with masks, see the module docstring).

    ``parts`` names the mask parts the mask metrics use (``("hair", "face")``; default the
    whole object). ``target``: ``None`` explains the true label when the data have labels
    (else top-1), ``"predicted"`` the top-1 class. ``n`` takes the first ``n`` images.
    Images go through the methods ``batch_size`` at a time; deletion/insertion use ``steps``
    chunks and batch every perturbed copy (``memory_budget_mb``). ``options`` gives per-method
    options (``{"rise": {"masks": 500}}``). ``progress(done, total)`` counts method x image
    batches. Scores: the target's probability; intervals: Student-t at ``level``.

    A detector (a :class:`~convlens.detection.Detector` or a name that loads as one) goes to
    :func:`convlens.detection.evaluate_detector` (mAP@0.5 and 0.5:0.95 on a folder with
    boxes; ``methods`` among ``drise``, ``gradcam``, ``layercam`` scored by energy in box and
    pointing) and returns its :class:`~convlens.detection.DetectorEvaluation`.
    """
    handle = as_handle(model)
    if handle.task == "detect":
        if parts is not None or target is not None or list(metrics) != list(DEFAULT_METRICS):
            raise ValueError(
                "a detector is scored by mAP and its box explanations by energy in box and "
                "pointing; metrics=, parts= and target= are for classifiers"
            )
        return evaluate_detector(  # type: ignore[return-value]
            as_detector(handle),
            data,
            methods,
            n=n,
            batch_size=batch_size,
            options=options,
            level=level,
            progress=progress,
        )
    assert isinstance(handle, Model)
    source = os.fspath(data) if isinstance(data, (str, os.PathLike)) else None
    data = as_masked(data)
    chosen, wanted, options = _checked(methods, metrics, options, batch_size, n)
    total_images = len(data) if n is None else min(n, len(data))
    if total_images == 0:
        raise ValueError("the data set is empty")
    values: dict[tuple[str, str], list[torch.Tensor]] = {(a, b): [] for a in chosen for b in wanted}
    done, total = 0, math.ceil(total_images / batch_size) * len(chosen)
    for _, inputs, masks, labels in _batches(handle, data, parts, batch_size, n):
        explained = _targets(handle, inputs, labels, target)
        for name in chosen:
            attribution = get_method(name).fn(
                handle, inputs, explained, **dict(options.get(name, {}))
            )
            maps = m.input_maps(attribution, tuple(inputs.shape[-2:]))  # type: ignore[arg-type]
            scored = _score(
                handle, inputs, maps, masks, explained, wanted, steps, tolerance, memory_budget_mb
            )
            for metric, scores in scored.items():
                values[(name, metric)].append(scores.values)
            done += 1
            if progress is not None:
                progress(done, total)
    table = {
        key: m.Scores(key[1], torch.cat(parts_), METRICS[key[1]][1])
        for key, parts_ in values.items()
    }
    return Evaluation(
        chosen,
        wanted,
        table,
        total_images,
        level,
        {
            "parts": list(parts) if parts else "object",
            "target": "label"
            if target is None and getattr(data, "labels", None) is not None
            else str(target or "top-1"),
            "score": "probability",
            "steps": steps,
            "tolerance": tolerance,
            "options": {k: dict(v) for k, v in options.items()},
        },
        model_name=handle.name,
        data_name=describe_data(data, source),
    )


def _checked(
    methods: Sequence[str],
    metrics: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None,
    batch_size: int,
    n: int | None,
) -> tuple[list[str], list[str], dict[str, Mapping[str, Any]]]:
    """The methods' registered names, the metrics, per-method options by registered name."""
    chosen = [get_method(name).name for name in methods]
    if not chosen:
        raise ValueError("expected at least one method")
    wanted = list(metrics)
    unknown = [k for k in wanted if k not in METRICS]
    if unknown or not wanted:
        raise ValueError(f"expected metrics among {', '.join(METRICS)}, got {unknown or wanted}")
    _check_count(batch_size, "batch_size")
    if n is not None:
        _check_count(n, "n")
    return chosen, wanted, {get_method(k).name: v for k, v in (options or {}).items()}


def _score(
    handle: Model,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    masks: torch.Tensor,
    explained: Target,
    wanted: list[str],
    steps: int,
    tolerance: float,
    memory_budget_mb: float | None,
) -> dict[str, m.Scores]:
    """Every wanted metric of one batch of maps."""
    out: dict[str, m.Scores] = {}
    change = None
    for metric in wanted:
        if metric == "pointing_game":
            out[metric] = m.pointing_game(maps, masks, tolerance=tolerance, empty="nan")
        elif metric == "energy_in_mask":
            out[metric] = m.energy_in_mask(maps, masks, empty="nan")
        elif metric in ("deletion", "insertion"):
            curve = m.deletion if metric == "deletion" else m.insertion
            out[metric] = curve(
                handle, inputs, maps, explained, steps=steps, memory_budget_mb=memory_budget_mb
            ).auc
        else:
            if change is None:
                change = m.confidence_change(
                    handle, inputs, maps, explained, empty="nan", memory_budget_mb=memory_budget_mb
                )
            out[metric] = getattr(change, metric)
    return out
