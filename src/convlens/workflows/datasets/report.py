"""The data set report: one self-contained HTML page read from a run folder.

What it shows, per method: the mean map of each class (every map divided by its own peak
``max |map|`` first, so each picture counts alike; the class is the label where the source has
labels, else the prediction), the audit per class where there are masks (the share of positive
attribution on the object against the background, mean and 95 % Student-t interval, with
:class:`~convlens.workflows.audit.Audit`'s verdict), the pictures with the most evidence off
the object and those with the lowest scores for their target, and the metrics' means. Then
top-1 accuracy and a confusion table (labels x predictions; the most frequent confusions when
there are more than 20 classes), and the pictures that could not be read.

Maps are read memory-mapped, one at a time, so the page costs the same memory for a hundred
pictures or a million; only the example pictures are decoded again.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import torch

from convlens.core import render
from convlens.core.model import Preprocessing
from convlens.core.report import Report, Section
from convlens.core.stats import t_interval
from convlens.techniques.attribution.base import get_method
from convlens.workflows import metrics as m
from convlens.workflows.audit import Audit
from convlens.workflows.datasets import store
from convlens.workflows.datasets.inputs import PictureLoader

FULL_CONFUSION = 20
TILE = 128


def _group_column(rows: Any) -> str:
    return "label" if rows["label"].notna().any() else "prediction_label"


def run_audit(run: Any, method: str, *, threshold: float = 0.5) -> Audit | None:
    """The audit of one method from a run's rows (``None`` when no picture had a mask): the
    share of positive attribution on the object per picture, grouped by class."""
    rows = run.table(
        ["id", "status", "label", "prediction_label", "object_area", "energy_in_mask"],
        method=method,
    )
    rows = rows[(rows["status"] == "ok") & rows["object_area"].notna()]
    if rows.empty:
        return None
    column = _group_column(rows)
    names = sorted(rows[column].dropna().unique().tolist())
    index = {name: k for k, name in enumerate(names)}
    groups = torch.tensor([index.get(v, 0) for v in rows[column]], dtype=torch.long)
    inside = torch.tensor(rows["energy_in_mask"].astype(float).to_numpy(), dtype=torch.float64)
    area = torch.tensor(rows["object_area"].astype(float).to_numpy(), dtype=torch.float64)
    parts = run.manifest["identity"]["mask"].get("parts") or []
    return Audit(
        method,
        m.Scores("share_on_object", inside, "higher"),
        area,
        groups,
        names,
        float(threshold),
        "characters" if parts else "objects",
        settings={"parts": parts or "object", "source": "data set run"},
    )


def dataset_report(
    run: Any, *, examples: int = 8, classes: int = 24, title: str | None = None
) -> Report:
    """The report of ``run`` (a :class:`~convlens.workflows.datasets.run.Run`): see the module
    docstring. ``examples`` pictures per list, mean maps of at most ``classes`` classes (the
    most frequent)."""
    manifest = run.manifest
    identity = manifest["identity"]
    page = Report(title or f"convlens data set run · {identity['model']['name']}")
    rows = run.table()
    _overview(page, run, manifest)
    loader = _loader(identity)
    for method in run.methods:
        chosen = rows[rows["method"] == method]
        _method_sections(page, run, method, chosen, loader, examples, classes)
    first = rows[rows["method"] == run.methods[0]]
    _confusion(page, first)
    failed = first[first["status"] == "failed"]
    if len(failed):
        section = page.add_section(
            "Pictures that could not be read",
            text=f"{len(failed)} picture(s) failed; the run went on without them.",
        )
        section.add_table(
            [{"picture": r.id, "reason": r.error} for r in failed.head(50).itertuples()]
        )
    return page


def _loader(identity: dict[str, Any]) -> PictureLoader | None:
    pre = identity["model"]["preprocess"]
    if not isinstance(pre, dict):
        return None
    crop = pre.get("crop")
    return PictureLoader(
        Preprocessing(
            crop=tuple(crop) if isinstance(crop, list) else crop,
            resize=pre.get("resize"),
            mean=tuple(pre["mean"]),
            std=tuple(pre["std"]),
            interpolation=pre.get("interpolation", "bilinear"),
            channels=pre.get("channels", 3),
        )
    )


def _overview(page: Report, run: Any, manifest: dict[str, Any]) -> None:
    identity = manifest["identity"]
    source = manifest.get("input", {})
    counts = run.counts()
    model = identity["model"]
    target = (
        "the true class where the source gives one, else the top-1 class"
        if identity["target"] == "label"
        else "the top-1 class"
    )
    text = (
        f"Model {model['name']} (weights {model['weights'][:12]}), {counts['pictures']} pictures "
        f"from {source.get('root') or 'a list'} ({source.get('kind')}; "
        f"{source.get('labelled', 0)} labelled, {source.get('with_masks', 0)} with masks; labels "
        f"matched by {source.get('label_matching', 'none')}), {counts['failed']} failed. "
        f"Each map explains {target}.\n\n"
        f"Run {manifest.get('status')} on the {manifest.get('engine', {}).get('engine')} "
        f"engine; convlens {identity['convlens']}; seed {identity['seed']}; run identity "
        f"{manifest.get('identity_hash')}."
    )
    section = page.add_section("The run", text=text)
    section.add_table(
        [
            {"method": m_["name"], "settings": _settings_text(m_["settings"])}
            for m_ in identity["methods"]
        ]
    )


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)


def _method_sections(
    page: Report,
    run: Any,
    method: str,
    rows: Any,
    loader: PictureLoader | None,
    examples: int,
    classes: int,
) -> None:
    ok = rows[rows["status"] == "ok"]
    if ok.empty:
        return
    maps = run.maps(method)
    _mean_maps(page, method, ok, maps, classes)
    _metrics(page, method, ok)
    audit = run_audit(run, method)
    if audit is not None:
        low, high = audit.inside.interval()
        section = page.add_section(
            f"{method}: on the object or on the background?",
            text=(
                f"{audit.verdict}. Share of positive attribution on the {audit.object_name}: "
                f"{audit.share_inside:.1%} (95 % CI {low:.1%} … {high:.1%}) over "
                f"{len(audit.inside) - audit.inside.invalid} pictures; the {audit.object_name} "
                f"cover {float(audit.area.mean()):.1%} of the picture on average (what a map "
                "spread evenly would score)."
            ),
        )
        section.add_table(audit.classes())
        worst = ok[ok["energy_in_mask"].notna()].sort_values(["energy_in_mask", "id"])
        _examples(
            page, f"{method}: the most evidence off the object", worst.head(examples), maps,
            loader, method, lambda r: f"{r.id} · {r.energy_in_mask:.0%} on the object",
        )  # fmt: skip
    lowest = ok.sort_values(["target_probability", "id"])
    _examples(
        page, f"{method}: the lowest scores for the target", lowest.head(examples), maps,
        loader, method, lambda r: f"{r.id} · {r.target_label} p={r.target_probability:.2f}",
    )  # fmt: skip


def _mean_maps(page: Report, method: str, ok: Any, maps: store.Maps, classes: int) -> None:
    column = _group_column(ok)
    group = dict(zip(ok["id"], ok[column], strict=True))
    shapes = Counter(tuple(int(v) for v in s) for s in ok["map_shape"])
    shape = shapes.most_common(1)[0][0]
    sums: dict[str, np.ndarray] = {}
    counts: Counter[str] = Counter()
    for name, values in maps:
        if values.shape != shape or name not in group:
            continue
        x = np.asarray(values, dtype=np.float32)
        x = x.sum(0) if x.ndim == 3 else x
        peak = float(np.abs(x).max())
        key = str(group[name])
        sums[key] = sums.get(key, np.zeros(x.shape, np.float64)) + (x / peak if peak > 0 else x)
        counts[key] += 1
    shown = [k for k, _ in counts.most_common(classes)]
    if not shown:
        return
    signed = _signed(method)
    figures = [
        render.heatmap(
            sums[k] / counts[k],
            "coolwarm" if signed else "jet",
            size=TILE,
            signed=signed,
        )
        for k in sorted(shown)
    ]
    what = "label" if column == "label" else "predicted class"
    section = page.add_section(
        f"{method}: mean map per class",
        text=(
            f"Each map divided by its own peak |value|, then averaged over the pictures of each "
            f"{what} (maps of shape {shape}; {len(shown)} of {len(counts)} classes shown, the "
            "most frequent)."
        ),
    )
    section.add_grid(figures, [f"{k} ({counts[k]})" for k in sorted(shown)])


def _signed(method: str) -> bool:
    try:
        info = get_method(method)
    except ValueError:
        return False
    return bool(info.signed and info.family != "cam")


def _metrics(page: Report, method: str, ok: Any) -> None:
    table = []
    for column, better in (
        ("energy_in_mask", "higher"),
        ("pointing_game", "higher"),
        ("deletion_auc", "lower"),
        ("target_probability", "higher"),
    ):
        values = ok[column].dropna().astype(float)
        if values.empty:
            continue
        low, high = t_interval(torch.tensor(values.to_numpy()), 0.95)
        table.append(
            {
                "metric": column,
                "mean": float(values.mean()),
                "low": None if math.isnan(low) else low,
                "high": None if math.isnan(high) else high,
                "pictures": len(values),
                "better": better,
            }
        )
    page.add_section(f"{method}: metrics (mean and 95 % interval)").add_table(table)


def _examples(
    page: Report,
    title: str,
    rows: Any,
    maps: store.Maps,
    loader: PictureLoader | None,
    method: str,
    caption: Any,
) -> None:
    if rows.empty:
        return
    listing = None
    figures, captions = [], []
    for r in rows.itertuples():
        values = np.asarray(maps[r.id], dtype=np.float32)
        values = values.sum(0) if values.ndim == 3 else values
        shown = np.abs(values) if _signed(method) else np.clip(values, 0, None)
        picture = None
        if loader is not None:
            if listing is None:
                listing = store.read_listing(maps.folder)
            try:
                picture = loader(listing[r.id]).picture
            except Exception:  # the picture changed or went away since the run
                picture = None
        if picture is not None:
            clip = None if values.shape[-1] < picture.shape[1] else 1.0
            figures.append(render.overlay(picture, shown, alpha=0.5, clip_percentile=clip))
        else:
            figures.append(render.heatmap(shown, "jet", size=TILE))
        captions.append(caption(r))
    page.add_section(title).add_grid(figures, captions)


def _confusion(page: Report, rows: Any) -> None:
    ok = rows[(rows["status"] == "ok") & rows["label_index"].notna()]
    if ok.empty:
        return
    names = dict(zip(ok["prediction"], ok["prediction_label"], strict=True))
    names |= dict(zip(ok["target"], ok["target_label"], strict=True))
    truth = [int(v) for v in ok["label_index"]]
    pairs = Counter(zip(truth, (int(v) for v in ok["prediction"]), strict=True))
    accuracy = sum(n for (a, b), n in pairs.items() if a == b) / len(ok)
    section: Section = page.add_section(
        "Accuracy and confusions",
        text=f"Top-1 accuracy {accuracy:.1%} over {len(ok)} labelled pictures.",
    )
    labels = sorted(set(truth))
    predicted = sorted({b for _, b in pairs})
    if len(labels) <= FULL_CONFUSION and len(predicted) <= FULL_CONFUSION:
        header = ["label \\ predicted", *(names.get(p, str(p)) for p in predicted)]
        body = [[names.get(a, str(a)), *(pairs.get((a, p), 0) for p in predicted)] for a in labels]
        section.add_table((header, body))
        return
    wrong = [(k, v) for k, v in pairs.most_common() if k[0] != k[1]][:FULL_CONFUSION]
    section.add_text(f"The {len(wrong)} most frequent confusions:")
    section.add_table(
        [
            {"label": names.get(a, str(a)), "predicted": names.get(b, str(b)), "pictures": n}
            for (a, b), n in wrong
        ]
    )
