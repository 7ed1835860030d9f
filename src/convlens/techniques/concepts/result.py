"""What :func:`tcav` found: the table, JSON, CSV and a bar chart."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from convlens.core.render import PALETTE, Figure, _font, _text_height, write_atomic
from convlens.core.util import jsonable
from convlens.techniques.concepts.local import LocalRun

NULL = "random (null)"


@dataclass
class Run:
    """Every CAV of one (concept, layer): per random partner (or resample), its scores."""

    concept: str
    layer: str
    partners: list[str]
    sign_count: torch.Tensor
    magnitude: torch.Tensor
    mean: torch.Tensor
    accuracy: torch.Tensor
    vectors: torch.Tensor  # (R, F)


@dataclass
class TCAVResult:
    """What :func:`tcav` found. ``rows`` is the table (one dict per concept x layer);
    ``test`` names the significance test that ran (:data:`TESTS`).
    ``runs[(concept, layer)]`` holds every CAV's scores: a :class:`Run` per concept for the
    set tests (``"sets"``, ``"paper"``, whose ``null[layer]`` holds the random-vs-random
    CAVs), a :class:`.local.LocalRun` for ``"local"`` (its null is inside
    it, ``null`` is empty)."""

    target: str
    target_index: int
    layers: list[str]
    concepts: list[str]
    randoms: list[str]
    rows: list[dict[str, Any]]
    runs: dict[tuple[str, str], Run | LocalRun]
    null: dict[str, Run]
    shapes: dict[str, tuple[int, ...]]
    settings: dict[str, Any]
    test: str = "local"
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    COLUMNS = (
        "concept",
        "layer",
        "score",
        "score_std",
        "magnitude",
        "cav_accuracy",
        "random_score",
        "random_std",
        "p",
        "p_corrected",
        "significant",
        "test",
        "z",
        "direction",
        "present",
    )

    def row(self, concept: str, layer: str) -> dict[str, Any]:
        for r in self.rows:
            if r["concept"] == concept and r["layer"] == layer:
                return r
        from convlens.core.naming import unknown

        raise unknown(
            "(concept, layer)",
            f"{concept}@{layer}",
            [f"{r['concept']}@{r['layer']}" for r in self.rows],
        )

    def cav(self, concept: str, layer: str) -> torch.Tensor:
        """The concept's CAV (unit length) shaped like the layer's activation (C, H, W): the
        mean over its random partners (set tests), or the local test's channel direction,
        the same at every position."""
        run = self._run(concept, layer)
        shape = self.shapes[layer]
        if isinstance(run, LocalRun):
            v = run.direction.view(-1, *([1] * (len(shape) - 1))).expand(shape).reshape(-1)
        else:
            v = run.vectors.mean(0)
        v = v.double()
        return (v / v.norm().clamp_min(1e-30)).float().view(shape)

    def channel_direction(self, concept: str, layer: str) -> torch.Tensor:
        """(C,) the CAV summed over positions: for ``convlens.objectives.direction(layer, v)``
        (feature visualization of the concept as the model holds it)."""
        v = self.cav(concept, layer)
        return v.flatten(1).sum(1) if v.dim() > 1 else v

    def _run(self, concept: str, layer: str) -> Run | LocalRun:
        if (concept, layer) not in self.runs:
            from convlens.core.naming import unknown

            raise unknown(
                "(concept, layer)", f"{concept}@{layer}", [f"{c}@{name}" for c, name in self.runs]
            )
        return self.runs[(concept, layer)]

    def table(self) -> str:
        """The table as aligned text."""
        if self.test == "local":
            head = ["concept", "layer", "score", "shown", "effect", "CAV acc", "random", "p"]
            head += ["p corr", "sig"]
        else:
            head = ["concept", "layer", "TCAV", "±std", "magn.", "CAV acc", "random", "p"]
            head += ["p corr", "sig"]
        lines = [head]
        for r in self.rows:
            if self.test == "local":
                middle = [_f(r["score"], 3), _f(r["present"], 2), f"{r['z']:+.1f} sd"]
            else:
                middle = [_f(r["score"], 3), _f(r["score_std"], 3), _f(r["magnitude"], 3)]
            lines.append(
                [
                    r["concept"],
                    r["layer"],
                    *middle,
                    _f(r["cav_accuracy"], 2),
                    _f(r["random_score"], 3),
                    _p(r["p"]),
                    _p(r["p_corrected"]),
                    _verdict(r, self.test),
                ]
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
        return "\n".join(out)

    def __str__(self) -> str:
        head = f"TCAV for class {self.target!r} (index {self.target_index}); test {self.test!r}: "
        head += self.settings.get("test", "")
        if self.test == "local":
            head += (
                "\nscore: share of the target pictures showing the concept whose class logit "
                "rises where it is; shown: share of target pictures showing it; effect: the "
                "local derivative in null standard deviations; sig: + raises, - lowers the logit"
            )
            if "path" in self.settings:
                head += f"\nderivative: {self.settings['path']}"
        else:
            head += (
                "\nscores are the share of target pictures whose class logit rises along the CAV"
            )
        extra = "".join(f"\nwarning: {w}" for w in self.warnings)
        return f"{head}\n{self.table()}{extra}"

    def __repr__(self) -> str:
        sig = [
            f"{r['concept']}@{r['layer']}{r.get('direction', '')}"
            for r in self.rows
            if r["significant"]
        ]
        return (
            f"TCAVResult(target={self.target!r}, test={self.test!r}, {len(self.concepts)} "
            f"concepts x {len(self.layers)} layers, {len(self.randoms)} random sets, "
            f"significant={sig})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready values (``format`` convlens-tcav, ``version`` 2)."""
        return {
            "format": "convlens-tcav",
            "version": 2,
            "target": self.target,
            "target_index": self.target_index,
            "test": self.test,
            "test_description": self.settings.get("test", ""),
            "score": SCORES["local" if self.test == "local" else "sets"],
            "layers": self.layers,
            "concepts": self.concepts,
            "random_sets": self.randoms,
            "settings": self.settings,
            "rows": [{k: jsonable(v) for k, v in r.items()} for r in self.rows],
            "runs": {f"{c}@{name}": _listed(run) for (c, name), run in self.runs.items()},
            "random_null": {layer: _listed(run) for layer, run in self.null.items()},
            "warnings": self.warnings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.COLUMNS), lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: r.get(k, "") for k in self.COLUMNS})
        return buffer.getvalue()

    def save(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write ``tcav.json``, ``tcav.csv`` and ``tcav.png`` (the bar chart) to ``out_dir``."""
        folder = Path(os.fspath(out_dir)).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        return [
            write_atomic(folder / "tcav.json", self.to_json().encode()),
            write_atomic(folder / "tcav.csv", self.to_csv().encode()),
            self.plot().save(folder / "tcav.png"),
        ]

    def plot(self, *, bar_width: int = 26) -> Figure:
        """Bars of the mean TCAV score per concept, grouped by layer, with ±1 std error bars,
        the random null as a grey bar with its std, and stars for significance after
        correction (``*`` p < 0.05, ``**`` < 0.01, ``***`` < 0.001); ``n.s.`` bars are faded."""
        return _plot(self, bar_width)

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.plot().image.save(buffer, format="PNG")
        return buffer.getvalue()


def _p(value: float) -> str:
    if value != value:
        return "-"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _stars(p: float) -> str:
    return "***" if p < 1e-3 else "**" if p < 1e-2 else "*" if p < 0.05 else ""


def _f(value: float, digits: int) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def _verdict(row: dict[str, Any], test: str) -> str:
    if not row["significant"]:
        return "no"
    sign = f"{row['direction']} " if test == "local" else ""
    return f"yes {sign}{_stars(row['p_corrected'])}"


SCORES = {
    "sets": "share of target pictures with a positive directional derivative of the target "
    "class logit along the CAV (Kim et al. 2018, TCAV_Q)",
    "local": "share of the target pictures showing the concept (positions on the concept's side "
    "of the CAV's nearest-mean rule) whose class logit rises along the CAV there",
}


def _listed(run: Run | LocalRun) -> dict[str, Any]:
    if isinstance(run, LocalRun):
        return {
            "local_derivative": run.per_target.tolist(),
            "positions_shown": run.present.tolist(),
            "direction": run.direction.tolist(),
            "negatives": run.negatives,
            "permutations": int(run.null.numel()),
            "null_quantiles": {
                str(q): float(run.null.quantile(q)) if run.null.numel() else None
                for q in (0.005, 0.025, 0.5, 0.975, 0.995)
            },
            "cav_accuracy": jsonable(run.accuracy),
        }
    return {
        "partners": run.partners,
        "sign_count": run.sign_count.tolist(),
        "magnitude": run.magnitude.tolist(),
        "mean_derivative": run.mean.tolist(),
        "cav_accuracy": [None if math.isnan(a) else a for a in run.accuracy.tolist()],
    }


def _plot(result: TCAVResult, bar: int) -> Figure:
    concepts = result.concepts
    layers = result.layers
    font, small = _font(14), _font(11)
    th = _text_height(font)
    left, top, bottom, right = 58, 34 + th, 44 + 2 * th, 16
    gap = bar
    group = (len(concepts) + 1) * bar + gap
    legend_w = max(int(font.getlength(c)) for c in [*concepts, NULL]) + 40
    plot_w = max(group * len(layers), 160)
    plot_h = 240
    width = left + plot_w + right + legend_w
    height = top + plot_h + bottom
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    title = f"TCAV scores for class '{result.target}' (test: {result.test})"
    d.text((left, 8), title, fill=(20, 20, 20), font=font)

    def y_of(v: float) -> float:
        return top + plot_h * (1 - v)

    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(tick)
        d.line([(left, y), (left + plot_w, y)], fill=(225, 225, 225) if tick else (90, 90, 90))
        label = f"{tick:.2f}"
        d.text((left - 8 - small.getlength(label), y - 6), label, fill=(60, 60, 60), font=small)
    d.line([(left, top), (left, top + plot_h)], fill=(90, 90, 90))
    for li, layer in enumerate(layers):
        x0 = left + li * group + gap // 2
        for ci, r in enumerate(result.row(c, layer) for c in concepts):
            colour: tuple[int, ...] = PALETTE[ci % len(PALETTE)]
            if not r["significant"]:
                colour = tuple(int(c + (255 - c) * 0.65) for c in colour)
            xa = x0 + ci * bar
            score = 0.0 if r["score"] != r["score"] else r["score"]
            spread = 0.0 if r["score_std"] != r["score_std"] else r["score_std"]
            _bar(d, xa, bar, score, spread, colour, y_of)
            mark = _verdict(r, result.test)[4:] if r["significant"] else "n.s."
            mw = small.getlength(mark)
            ytop = y_of(min(1.0, score + spread)) - 14
            d.text((xa + (bar - mw) / 2, max(top - 14, ytop)), mark, fill=(30, 30, 30), font=small)
        xa = x0 + len(concepts) * bar
        here = [result.row(c, layer) for c in concepts]
        mean_null = sum(r["random_score"] for r in here) / len(here)
        std_null = sum(r["random_std"] for r in here) / len(here)
        _bar(d, xa, bar, mean_null, std_null, (170, 170, 170), y_of)
        label = layer
        lw = font.getlength(label)
        d.text(
            (x0 + ((len(concepts) + 1) * bar - lw) / 2, top + plot_h + 8),
            label,
            fill=(20, 20, 20),
            font=font,
        )
    d.text((8, top + plot_h + 12 + th), "layer", fill=(120, 120, 120), font=small)
    lx = left + plot_w + right
    for i, name in enumerate([*concepts, NULL]):
        colour = PALETTE[i % len(PALETTE)] if i < len(concepts) else (170, 170, 170)
        y = top + i * (th + 8)
        d.rectangle([lx, y + 2, lx + 14, y + 16], fill=colour)
        d.text((lx + 22, y), name, fill=(20, 20, 20), font=font)
    if result.test == "local":
        note = "grey: under relabelling; faded: not significant; + / -: direction"
    else:
        note = "bars: mean ± std over random partners; faded: not significant (Bonferroni)"
    d.text((left, height - th - 6), note, fill=(110, 110, 110), font=small)
    return Figure(img, caption=title)


def _bar(
    d: ImageDraw.ImageDraw,
    x: float,
    width: int,
    value: float,
    std: float,
    colour: tuple[int, ...],
    y_of: Callable[[float], float],
) -> None:
    inner = max(2, width - 6)
    xa = x + (width - inner) / 2
    d.rectangle([xa, y_of(max(value, 0.0)), xa + inner, y_of(0.0)], fill=tuple(colour))
    if std > 0:
        cx = x + width / 2
        lo, hi = y_of(max(0.0, value - std)), y_of(min(1.0, value + std))
        d.line([(cx, lo), (cx, hi)], fill=(30, 30, 30), width=1)
        d.line([(cx - 4, lo), (cx + 4, lo)], fill=(30, 30, 30), width=1)
        d.line([(cx - 4, hi), (cx + 4, hi)], fill=(30, 30, 30), width=1)
