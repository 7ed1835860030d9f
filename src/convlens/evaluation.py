"""Explanation quality over a whole data set: :func:`evaluate` (every method x every metric,
mean and 95 % confidence interval) and :func:`audit` (the clever-Hans report: does the model
look at the object or at the background?).

Data come with object masks: a :class:`MaskedImages` (images, masks, labels), anything shaped
like ``convlens.data.toons``'s ``ToonSet`` (``images`` (N, 3, H, W) pixels in [0, 1],
``labels``, ``classes``, ``mask(*parts)``, ``object_mask()``), a toons folder (read with
``toons.read``), or a tuple ``(images, masks)`` / ``(images, masks, labels)`` of tensors.

Intervals are Student-t intervals of the mean over the images (``mean +- t * sd / sqrt(n)``,
see :func:`convlens.metrics.t_interval`); images a metric is undefined for (a map without
positive mass, an empty mask) are left out and counted as ``invalid``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from convlens import metrics as m
from convlens.attribution import Target, get_method
from convlens.model import Model, Preprocessing
from convlens.render import Figure, to_pil
from convlens.report import Report

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
        "% drop of the probability on the masked image (Grad-CAM++)",
    ),
    "increase_in_confidence": (
        "model",
        "higher",
        "% of images whose probability rises on the masked image (Grad-CAM++)",
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


# -- data -----------------------------------------------------------------------------------------


@dataclass
class MaskedImages:
    """Images with ground-truth masks.

    ``images`` (N, C, H, W): pixels in [0, 1] (RGB, normalised through the model's
    :class:`~convlens.model.Preprocessing`), or network input when ``is_input=True``.
    ``masks``: bool (N, H, W) (the object), or a dict ``{part: (N, H, W) bool}`` whose union is
    the object. ``labels`` (N,) class indices (optional), ``classes`` their names.
    """

    images: torch.Tensor
    masks: torch.Tensor | Mapping[str, torch.Tensor]
    labels: torch.Tensor | None = None
    classes: Sequence[str] | None = None
    is_input: bool = False
    object_name: str = "objects"

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dim() != 4:
            got = (
                tuple(self.images.shape)
                if isinstance(self.images, torch.Tensor)
                else type(self.images)
            )
            raise ValueError(f"expected images (N, C, H, W), got {got}")
        n, _, h, w = self.images.shape
        parts = self.masks.values() if isinstance(self.masks, Mapping) else [self.masks]
        for mask in parts:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise ValueError("expected bool mask tensors (N, H, W)")
            if tuple(mask.shape) != (n, h, w):
                raise ValueError(
                    f"expected masks (N, H, W) = {(n, h, w)} like the images, got "
                    f"{tuple(mask.shape)}"
                )
        if self.labels is not None and tuple(self.labels.shape) != (n,):
            raise ValueError(f"expected labels ({n},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def mask(self, *parts: str) -> torch.Tensor:
        """(N, H, W) bool: the union of the named parts (all of them, the object, if none)."""
        if not isinstance(self.masks, Mapping):
            if parts:
                raise ValueError(
                    f"these data have one object mask, not named parts; got parts {parts}"
                )
            return self.masks
        names = parts or tuple(self.masks)
        missing = [p for p in names if p not in self.masks]
        if missing:
            raise ValueError(f"expected parts among {', '.join(self.masks)}, got {missing}")
        out = torch.zeros_like(next(iter(self.masks.values())))
        for name in names:
            out |= self.masks[name]
        return out

    def object_mask(self) -> torch.Tensor:
        return self.mask()

    def __getitem__(self, index: slice) -> MaskedImages:
        masks = (
            {k: v[index] for k, v in self.masks.items()}
            if isinstance(self.masks, Mapping)
            else self.masks[index]
        )
        return MaskedImages(
            self.images[index],
            masks,
            None if self.labels is None else self.labels[index],
            self.classes,
            self.is_input,
            self.object_name,
        )


def as_masked(data: Any, *, split: str = "test") -> Any:
    """Data with masks in one of the accepted forms (see the module docstring); a folder is read
    with ``convlens.data.toons.read(folder, split=split)``."""
    if isinstance(data, (str, os.PathLike)):
        folder = Path(data)
        if not (folder / "index.json").is_file():
            raise FileNotFoundError(f"expected a toons folder with index.json, got {folder}")
        from convlens.data import toons  # type: ignore[attr-defined]

        return toons.read(folder, split=split)
    if isinstance(data, tuple) and 2 <= len(data) <= 3:
        return MaskedImages(data[0], data[1], data[2] if len(data) == 3 else None)
    needed = ("images", "mask", "object_mask")
    if all(hasattr(data, a) for a in needed):
        return data
    raise ValueError(
        "expected data with masks: a MaskedImages, a ToonSet, a toons folder, or a tuple "
        f"(images, masks[, labels]); got {type(data).__name__}"
    )


def _object_name(data: Any) -> str:
    name = getattr(data, "object_name", None)
    if isinstance(name, str):
        return name
    return "characters" if type(data).__name__ == "ToonSet" else "objects"


def network_input(
    model: Model, images: torch.Tensor, masks: torch.Tensor, *, is_input: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels in [0, 1] (N, 3, H, W) and masks (N, H, W) -> network input and masks at the
    input size: normalised by the model's Preprocessing; when its crop fixes another size, both
    are resized to it (pixels bilinear with antialiasing, masks nearest; no crop)."""
    device, dtype = model.device, model.dtype
    if is_input:
        return images.to(device, dtype), masks
    if not isinstance(model.preprocess, Preprocessing):
        raise ValueError(
            "pixel images need the model's Preprocessing to become network input; this model "
            "has a custom preprocess: pass network input (MaskedImages(..., is_input=True))"
        )
    pixels = images.float()
    size = model.preprocess.crop_hw
    if size is not None and tuple(pixels.shape[-2:]) != tuple(size):
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True)
        pixels = pixels.clamp(0, 1)
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return model.preprocess.normalize(pixels).to(device, dtype), masks


def _batches(
    model: Model,
    data: Any,
    parts: Sequence[str] | None,
    batch_size: int,
    limit: int | None,
) -> Any:
    """(start, inputs, masks, labels) per chunk of ``batch_size`` images."""
    total = len(data) if limit is None else min(limit, len(data))
    images = data.images
    masks_all = data.mask(*parts) if parts else data.object_mask()
    labels = _model_labels(model, data)
    is_input = bool(getattr(data, "is_input", False))
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        inputs, masks = network_input(
            model, images[start:stop], masks_all[start:stop], is_input=is_input
        )
        yield (
            start,
            inputs,
            masks.to(torch.bool),
            None if labels is None else torch.as_tensor(labels[start:stop]).long(),
        )


def _model_labels(model: Model, data: Any) -> torch.Tensor | None:
    """The data's labels in the model's class numbering. When the model knows every class
    name of the data, by name (a model trained on image folders numbers its classes
    alphabetically, a data set may not); when it knows none of them, the indices as they
    are; a partial match is an error, since either reading would be a guess."""
    from convlens.naming import UnknownNameError

    labels = getattr(data, "labels", None)
    if labels is None:
        return None
    labels = torch.as_tensor(labels).long()
    names = [str(name) for name in getattr(data, "classes", None) or []]
    if not names or model.labels is None:
        return labels
    indices: list[int] = []
    for name in names:
        with contextlib.suppress(UnknownNameError, ValueError):
            indices.append(model.class_index(name))
    if not indices:
        return labels
    if len(indices) < len(names):
        raise ValueError(
            f"the model knows only some of the data's classes ({', '.join(names)}); its "
            f"classes are {', '.join(model.labels)}: rename them so they match, or give "
            "target= explicitly"
        )
    return torch.tensor(indices)[labels]


def _targets(
    model: Model, inputs: torch.Tensor, labels: torch.Tensor | None, target: Any
) -> Target:
    """``target=None``: the true labels when the data have them, else top-1; ``"predicted"``:
    top-1; anything else as :func:`~convlens.attribution.resolve_target`."""
    from convlens.attribution import resolve_target

    if target is None and labels is not None:
        return Target(labels.cpu(), description="label")
    if target == "predicted" or target is None:
        return resolve_target(model, inputs, None)
    return resolve_target(model, inputs, target)


def _check_count(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected {what} >= 1 (an int), got {value!r}")


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
        from convlens.render import write_atomic

        return write_atomic(path, self.to_json().encode("utf-8"))

    def _header(self) -> list[str]:
        arrows = {"higher": "↑", "lower": "↓"}
        return ["method", *(f"{SHORT[k]} {arrows[METRICS[k][1]]}" for k in self.metrics)]

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(
            title=f"{self.images} images · mean ± {self.level:.0%} CI (t) · ↑/↓ better",
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
        from convlens.report import Section

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
    from convlens.capture import _as_model
    from convlens.detection import Detector, evaluate_detector

    if isinstance(model, str | os.PathLike):
        from convlens.loading import load

        model = load(model)
    if isinstance(model, Detector):
        if parts is not None or target is not None or list(metrics) != list(DEFAULT_METRICS):
            raise ValueError(
                "a detector is scored by mAP and its box explanations by energy in box and "
                "pointing; metrics=, parts= and target= are for classifiers"
            )
        return evaluate_detector(  # type: ignore[return-value]
            model,
            data,
            methods,
            n=n,
            batch_size=batch_size,
            options=options,
            level=level,
            progress=progress,
        )
    handle = _as_model(model)
    data = as_masked(data)
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
    options = dict(options or {})
    for key in options:
        get_method(key)
    options = {get_method(k).name: v for k, v in options.items()}
    total_images = len(data) if n is None else min(n, len(data))
    if total_images == 0:
        raise ValueError("the data set is empty")
    values: dict[tuple[str, str], list[torch.Tensor]] = {(a, b): [] for a in chosen for b in wanted}
    batches = math.ceil(total_images / batch_size)
    done, total = 0, batches * len(chosen)
    for _, inputs, masks, labels in _batches(handle, data, parts, batch_size, n):
        explained = _targets(handle, inputs, labels, target)
        for name in chosen:
            info = get_method(name)
            attribution = info.fn(handle, inputs, explained, **dict(options.get(name, {})))
            maps = m.input_maps(attribution, tuple(inputs.shape[-2:]))  # type: ignore[arg-type]
            cc = None
            for metric in wanted:
                if metric == "pointing_game":
                    scores = m.pointing_game(maps, masks, tolerance=tolerance, empty="nan")
                elif metric == "energy_in_mask":
                    scores = m.energy_in_mask(maps, masks, empty="nan")
                elif metric in ("deletion", "insertion"):
                    curve = m.deletion if metric == "deletion" else m.insertion
                    scores = curve(
                        handle, inputs, maps, explained, steps=steps,
                        memory_budget_mb=memory_budget_mb,
                    ).auc  # fmt: skip
                else:
                    if cc is None:
                        cc = m.confidence_change(
                            handle, inputs, maps, explained, empty="nan",
                            memory_budget_mb=memory_budget_mb,
                        )  # fmt: skip
                    scores = getattr(cc, metric)
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
    )


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
        page = Report(title or f"convlens audit · {self.method}")
        low, high = self.inside.interval()
        verdict = page.add_section(
            "Verdict",
            text=(
                f"{self.method}: {self.verdict}.\n\n"
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
                page.add_section(title_).add_grid(
                    [fig for fig, _ in items], [cap for _, cap in items]
                )
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
    from convlens.capture import _as_model

    handle = _as_model(model)
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
