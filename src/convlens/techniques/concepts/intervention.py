"""Ground truth by intervention: does the model use colour X for class Y?

Paint one part of each target picture (the toons' hair, by default) in a concept's colour and
measure how the class logit moves, against the same part painted in a neutral colour. That
measured effect, not an assumption about how the data were made, is what a concept test has
to agree with (issue 17).

The effect of colour ``X`` on picture ``i`` of class ``Y`` is
``logit_Y(part := X) - logit_Y(part := baseline)``, where the baseline (``"grey"``) paints the
part in the grey of its own mean luminance (hue removed, brightness kept); ``"original"``
compares with the picture as it is. ``X`` is drawn per picture the way the toons' concept
sets draw that colour (:func:`convlens.data.toons.concept_images`), or given as RGB. The
result is the mean effect over pictures with a Student t interval, and a verdict: the model
*uses* X for Y (``"+"``) when the whole interval lies above ``min_effect`` logits, X works
*against* Y (``"-"``) when it lies below ``-min_effect``, and neither (``"0"``) otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MIN_EFFECT = 1.0  # logits: smaller effects count as "not used" (odds change below e)
LUMA = np.array([0.299, 0.587, 0.114])
Colour = str | Sequence[int] | np.ndarray | Callable[[np.random.Generator], Sequence[int]]


def recolour(pictures: np.ndarray, masks: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 pictures with the pixels of ``masks`` (N, H, W) bool painted in
    ``colours`` ((N, 3) or (3,) uint8), or filled from ``colours`` (N, H, W, 3) (a texture
    put in the part's place), as a copy."""
    pictures = np.asarray(pictures)
    masks = np.asarray(masks, bool)
    if pictures.ndim != 4 or pictures.shape[-1] != 3 or pictures.dtype != np.uint8:
        raise ValueError(
            f"expected (N, H, W, 3) uint8 pictures, got {pictures.shape} {pictures.dtype}"
        )
    if masks.shape != pictures.shape[:3]:
        raise ValueError(f"expected (N, H, W) masks {pictures.shape[:3]}, got {masks.shape}")
    out = pictures.copy()
    fills = np.asarray(colours, np.uint8)
    if fills.shape == pictures.shape:
        out[masks] = fills[masks]
        return out
    fills = np.broadcast_to(fills, (len(pictures), 3))
    for i in range(len(out)):
        out[i][masks[i]] = fills[i]
    return out


def grey_colours(pictures: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, 3) uint8: for each picture the grey of its masked pixels' mean luminance (Rec. 601
    weights; mid grey where the mask is empty)."""
    out = np.empty((len(pictures), 3), np.uint8)
    for i, (picture, mask) in enumerate(zip(pictures, masks, strict=True)):
        pixels = picture[np.asarray(mask, bool)].astype(np.float64)
        level = float((pixels @ LUMA).mean()) if len(pixels) else 128.0
        out[i] = round(level)
    return out


def concept_colours(colour: Colour, n: int, *, seed: int = 0) -> np.ndarray:
    """(n, 3) uint8 colours: a toon colour concept's name (drawn per picture as its concept
    set draws it), one RGB triple, an (n, 3) array, or ``colour(rng)`` for each picture; or
    (n, H, W, 3) fills (textures) passed through."""
    if isinstance(colour, str):
        from convlens.data.toons import concepts as toon_concepts

        if colour not in toon_concepts._CONCEPT_HSV:
            from convlens.core.naming import unknown

            raise unknown("colour concept", colour, list(toon_concepts._CONCEPT_HSV))
        draws = [
            toon_concepts._concept_colour(np.random.default_rng([seed, 17, i]), colour)
            for i in range(n)
        ]
        return (np.clip(np.stack(draws), 0, 1) * 255 + 0.5).astype(np.uint8)
    if callable(colour):
        return np.stack(
            [np.asarray(colour(np.random.default_rng([seed, 17, i])), np.uint8) for i in range(n)]
        )
    array = np.asarray(colour)
    if array.ndim == 4 and len(array) == n and array.shape[-1] == 3:
        return array.astype(np.uint8)  # fills: textures in the part's place
    if array.shape == (3,):
        return np.broadcast_to(array.astype(np.uint8), (n, 3)).copy()
    if array.shape == (n, 3):
        return array.astype(np.uint8)
    raise ValueError(
        f"expected a colour name, an RGB triple or ({n}, 3) colours, got {array.shape}"
    )


@dataclass
class Intervention:
    """The measured effect of painting ``part`` in ``concept`` on class ``target``'s logit:
    ``effects`` (N,) one per picture (logits, against the ``baseline``)."""

    target: str
    concept: str
    part: str
    baseline: str
    effects: torch.Tensor
    level: float = 0.95

    @property
    def mean(self) -> float:
        return float(self.effects.double().mean())

    @property
    def interval(self) -> tuple[float, float]:
        """The Student t interval of the mean effect at ``level``."""
        from convlens.core.stats import t_interval

        return t_interval(self.effects, self.level)

    def verdict(self, min_effect: float = MIN_EFFECT) -> str:
        """``"+"`` the model uses the concept for the class (interval above ``min_effect``),
        ``"-"`` it works against it (below ``-min_effect``), ``"0"`` neither."""
        low, high = self.interval
        return "+" if low > min_effect else "-" if high < -min_effect else "0"

    def __repr__(self) -> str:
        low, high = self.interval
        return (
            f"Intervention({self.target!r}, {self.part} := {self.concept}: {self.mean:+.2f} "
            f"[{low:+.2f}, {high:+.2f}] logits over {len(self.effects)} pictures vs "
            f"{self.baseline})"
        )


def _logits(model: Any, pictures: np.ndarray, index: int, batch_size: int) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for start in range(0, len(pictures), batch_size):
            batch = model.prepare(list(pictures[start : start + batch_size])).inputs
            out.append(model(batch)[:, index].float().cpu())
    return torch.cat(out)


def intervention_effect(
    model: Any,
    target: int | str,
    pictures: np.ndarray,
    masks: np.ndarray,
    colour: Colour,
    *,
    baseline: str = "grey",
    part: str = "hair",
    name: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    level: float = 0.95,
) -> Intervention:
    """Paint ``masks`` (N, H, W) of ``pictures`` (N, H, W, 3 uint8) in ``colour`` (see
    :func:`concept_colours`; (N, H, W, 3) fills put a texture there) and measure the change of
    class ``target``'s logit against ``baseline`` (``"grey"``: the part in its
    own luminance's grey; ``"original"``: the pictures as they are). ``part`` and ``name``
    (default: the colour's name) only label the result."""
    from convlens.core.tasks import as_model as _as_model

    if baseline not in ("grey", "original"):
        raise ValueError(f"expected baseline 'grey' or 'original', got {baseline!r}")
    handle = _as_model(model)
    index = handle.class_index(target)
    target_name = handle.label(index) if handle.labels is not None else str(index)
    pictures = np.asarray(pictures)
    masks = np.asarray(masks, bool)
    if len(pictures) < 2:
        raise ValueError(f"expected at least 2 pictures, got {len(pictures)}")
    fills = concept_colours(colour, len(pictures), seed=seed)
    painted = recolour(pictures, masks, fills)
    reference = (
        recolour(pictures, masks, grey_colours(pictures, masks)) if baseline == "grey" else pictures
    )
    effects = _logits(handle, painted, index, batch_size) - _logits(
        handle, reference, index, batch_size
    )
    if name is None:
        name = colour if isinstance(colour, str) else "fill" if fills.ndim == 4 else "colour"
    return Intervention(target_name, name, part, baseline, effects, level)


@dataclass
class InterventionTable:
    """Class x colour effects (:class:`Intervention`), from :func:`intervention_table`."""

    rows: list[Intervention]
    min_effect: float = MIN_EFFECT

    def effect(self, target: str, concept: str) -> Intervention:
        for row in self.rows:
            if row.target == target and row.concept == concept:
                return row
        from convlens.core.naming import unknown

        raise unknown(
            "(class, colour)", f"{target}/{concept}", [f"{r.target}/{r.concept}" for r in self.rows]
        )

    def verdicts(self) -> dict[tuple[str, str], str]:
        """(class, colour) -> ``"+"``, ``"-"`` or ``"0"`` (see :meth:`Intervention.verdict`)."""
        return {(r.target, r.concept): r.verdict(self.min_effect) for r in self.rows}

    def table(self) -> str:
        """Markdown: one row per class, one column per colour, ``mean [low, high] verdict``."""
        classes = list(dict.fromkeys(r.target for r in self.rows))
        colours = list(dict.fromkeys(r.concept for r in self.rows))
        lines = ["| class | " + " | ".join(colours) + " |", "|---" * (len(colours) + 1) + "|"]
        for c in classes:
            cells = []
            for colour in colours:
                row = self.effect(c, colour)
                low, high = row.interval
                cells.append(
                    f"{row.mean:+.2f} [{low:+.2f}, {high:+.2f}] {row.verdict(self.min_effect)}"
                )
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        if not self.rows:
            return "no interventions"
        first = self.rows[0]
        return (
            f"class logit change when the {first.part} is painted in each colour (or filled with "
            f"each texture), against "
            f"{first.baseline} ({first.level:.0%} t interval; + / - beyond {self.min_effect} "
            f"logit)\n{self.table()}"
        )


def intervention_table(
    model: Any,
    data: Any,
    concepts: Sequence[str] = ("red", "blue", "green", "yellow", "white", "black"),
    *,
    part: str = "hair",
    baseline: str = "grey",
    classes: Sequence[str] | None = None,
    min_effect: float = MIN_EFFECT,
    seed: int = 0,
    batch_size: int = 64,
    level: float = 0.95,
) -> InterventionTable:
    """Every class x colour effect on toons (:class:`convlens.data.toons.ToonSet`): for each
    class, its pictures in ``data`` with ``part`` (a :data:`convlens.data.toons.PARTS` name)
    painted in each colour of ``concepts``, the class's own logit measured."""
    from convlens.data import toons

    if part not in toons.PARTS:
        from convlens.core.naming import unknown

        raise unknown("toon part", part, list(toons.PARTS))
    names = list(classes) if classes is not None else list(data.classes)
    rows = []
    for name in names:
        keep = np.asarray(data.labels) == list(data.classes).index(name)
        if int(keep.sum()) < 2:
            raise ValueError(f"expected at least 2 pictures of {name!r}, got {int(keep.sum())}")
        masks = np.asarray(data.parts)[keep] == toons.PARTS[part]
        for concept in concepts:
            rows.append(
                intervention_effect(
                    model,
                    name,
                    np.asarray(data.pixels)[keep],
                    masks,
                    concept,
                    baseline=baseline,
                    part=part,
                    seed=seed,
                    batch_size=batch_size,
                    level=level,
                )
            )
    if math.isnan(min_effect) or min_effect < 0:
        raise ValueError(f"expected min_effect >= 0, got {min_effect}")
    return InterventionTable(rows, min_effect)
