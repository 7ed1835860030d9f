"""What the perturbation methods (occlusion, RISE) share: the fills and scores they take, and
scoring batches of perturbed copies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from convlens.core.model import Model
from convlens.core.references import reference_input, reference_setting
from convlens.techniques.attribution.base import (
    Target,
    chunks,
)

FILLS = ("zero", "black", "mean", "blur")
Fill = str | float | Sequence[float] | torch.Tensor
Progress = Callable[[int, int], None]
SCORES = ("logit", "probability")


def check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"expected score {' or '.join(map(repr, SCORES))}, got {score!r}")


def pair(value: Any, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else value
    if (
        isinstance(value, bool)
        or not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair)
    ):
        raise ValueError(f"expected {name} >= 1, an int or (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def score_of(model: Model, inputs: torch.Tensor, target: Target, kind: str) -> torch.Tensor:
    """(B,) the target's score (``kind``) for a batch, forward only."""
    with torch.inference_mode():
        return scored(model, model.forward(inputs), target, kind)


def scored(model: Model, outputs: Any, target: Target, kind: str) -> torch.Tensor:
    """(B,) the target's score (``kind``) from a batch's raw outputs."""
    with torch.inference_mode():
        if kind == "probability":
            outputs = model.postprocess(outputs)
        return target.score(outputs).float()


def scores_in_chunks(
    model: Model, inputs: torch.Tensor, target: Target, kind: str, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) raw logits and (N,) ``kind`` scores of the unperturbed images, ``size`` at a time."""
    logits, scores = [], []
    for part in chunks(len(inputs), size):
        with torch.inference_mode():
            outputs = model.forward(inputs[part])
            chosen = target.select(part)
            logits.append(chosen.score(outputs).float())
            if kind == "probability":
                scores.append(chosen.score(model.postprocess(outputs)).float())
    raw = torch.cat(logits).clone()
    return raw, (torch.cat(scores).clone() if scores else raw)


def fill_for(model: Model, inputs: torch.Tensor, fill: Any, blur_sigma: float) -> torch.Tensor:
    """What perturbed pixels become, in input space, broadcastable to ``inputs``."""
    return reference_input(model, inputs, fill, what="fill", names=FILLS, blur_sigma=blur_sigma)


def fill_settings(fill: Any, blur_sigma: float) -> dict[str, Any]:
    """The ``fill`` setting as a result records it, with ``blur_sigma`` where it is used."""
    blurred = isinstance(fill, str) and fill == "blur"
    return {"fill": reference_setting(fill), **({"blur_sigma": blur_sigma} if blurred else {})}


def preview_extras(share: float, of: str) -> dict[str, Any]:
    """A preview's extras: the share of the work it holds, and of what (windows, masks)."""
    return {"preview": float(share), "preview_of": of}
