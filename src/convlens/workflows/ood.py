"""How far a picture is from what a model was trained on: a simple out-of-distribution score.

A model answers for any picture: the toon CNN calls a photo of an espresso "jessie" with 87 %.
Neither its softmax nor the distance of its penultimate features to the toons' (a Mahalanobis
distance, tried first) tells the bundled photos from toon test pictures: on toon-cnn all four
photos fall inside the toons' 99th percentile. What does tell them apart is how the channels of
the early layers vary together. The score is the **Gram-matrix deviation** of Sastry & Oore
(2020, "Detecting Out-of-Distribution Examples with Gram Matrices", first order only):

- for each layer ``l`` read (default: the first two activation layers), the Gram matrix of its
  channels ``G = A A^T / (h w)`` (``A``: channels x positions), its upper triangle as features;
- on ``n_fit`` freshly generated toon test pictures, each feature's minimum and maximum;
- a picture's deviation at ``l``: the sum over features of how far it lies outside
  ``[min, max]``, relative to the bound (``(min - g) / |min|`` below, ``(g - max) / |max|``
  above), divided by the mean deviation of ``n_held_out`` other toon test pictures;
- the score: the sum over layers, divided by its 99th percentile over those held-out pictures.

So a **score above 1** means the picture's early features vary together in ways that fewer than
1 % of toon test pictures do; its prediction says little. The shipped toon models carry their
calibration beside their weights (``data/models/<name>.ood.json``, made by ``tools/make_ood.py``);
:func:`for_model` finds it, and ``convlens predict`` and the explorer report the score. On
toon-cnn the espresso photo scores 10, the rocket 17 and chelsea 37; the astronaut (a bright,
flat-lit picture) scores 0.3 and passes for a toon: a score below 1 does not prove that a picture
is a toon. Any classifier can be calibrated with :meth:`GramDeviation.fit` on pictures of its
training distribution.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.core.model import Model
from convlens.techniques.activations import activations

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish)


def early_layers(model: Model, count: int = 2) -> list[str]:
    """The first ``count`` activation layers (ReLU and kin) of the model."""
    found = [n for n, m in model.module.named_modules() if n and isinstance(m, ACTIVATIONS)]
    if not found:
        raise ValueError(f"{model.name}: expected activation layers (ReLU, ...) to read")
    return found[:count]


@dataclass
class GramDeviation:
    """A fitted Gram-matrix score (see the module docstring): per layer, the features'
    ``low`` / ``high`` bounds and ``scale`` (the held-out mean deviation); ``threshold`` the
    held-out quantile that a score of 1 stands for; ``about`` how it was fitted."""

    layers: list[str]
    low: dict[str, torch.Tensor]
    high: dict[str, torch.Tensor]
    scale: dict[str, float]
    threshold: float
    about: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        model: Model,
        fit_images: Any,
        held_out_images: Any,
        *,
        layers: list[str] | None = None,
        quantile: float = 0.99,
        batch_size: int = 100,
    ) -> GramDeviation:
        """Bounds from ``fit_images``, scales and threshold from ``held_out_images`` (pictures of
        the training distribution: a list of anything ``Model.prepare`` takes, or a tensor of
        network input (N, C, H, W), already normalised)."""
        layers = layers or early_layers(model)
        grams = _grams(model, fit_images, layers, batch_size)
        low = {k: g.min(0).values for k, g in grams.items()}
        high = {k: g.max(0).values for k, g in grams.items()}
        found = cls(layers, low, high, dict.fromkeys(layers, 1.0), 1.0)
        held = found._deviations(_grams(model, held_out_images, layers, batch_size))
        found.scale = {k: max(float(v.mean()), 1e-12) for k, v in held.items()}
        total = torch.stack([v / found.scale[k] for k, v in held.items()]).sum(0)
        found.threshold = max(float(torch.quantile(total, quantile)), 1e-12)
        found.about = {"n_fit": len(grams[layers[0]]), "n_held_out": len(total)}
        found.about["quantile"] = quantile
        return found

    def _deviations(self, grams: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, g in grams.items():
            low, high = self.low[k], self.high[k]
            below = ((low - g) / low.abs().clamp_min(1e-6)).clamp_min(0)
            above = ((g - high) / high.abs().clamp_min(1e-6)).clamp_min(0)
            out[k] = (below + above).sum(1)
        return out

    def scores(self, model: Model, images: Any, batch_size: int = 100) -> torch.Tensor:
        """(N,) each picture's score: above 1, its early features vary together in ways that
        fewer than ``1 - quantile`` of held-out pictures do."""
        deviations = self._deviations(_grams(model, images, self.layers, batch_size))
        total = torch.stack([v / self.scale[k] for k, v in deviations.items()]).sum(0)
        return (total / self.threshold).float()

    def to_dict(self) -> dict[str, Any]:
        def numbers(t: torch.Tensor) -> list[float]:
            return [float(f"{v:.9g}") for v in t.tolist()]

        return {
            "method": "Gram-matrix deviation of early layers (Sastry & Oore 2020, order 1)",
            "layers": self.layers,
            "threshold": self.threshold,
            "scale": self.scale,
            "about": self.about,
            "low": {k: numbers(v) for k, v in self.low.items()},
            "high": {k: numbers(v) for k, v in self.high.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GramDeviation:
        def tensors(d: dict[str, list[float]]) -> dict[str, torch.Tensor]:
            return {k: torch.tensor(v, dtype=torch.float64) for k, v in d.items()}

        return cls(
            [str(n) for n in data["layers"]],
            tensors(data["low"]),
            tensors(data["high"]),
            {k: float(v) for k, v in data["scale"].items()},
            float(data["threshold"]),
            dict(data.get("about", {})),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        out = Path(path)
        out.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return out


def gram_features(maps: torch.Tensor) -> torch.Tensor:
    """(N, C(C+1)/2): the upper triangle of each picture's channel Gram matrix ``A A^T / hw``
    (maps (N, C, h, w); a flat (N, D) layer is taken as D channels at one position)."""
    flat = maps.double().flatten(2) if maps.dim() > 2 else maps.double().unsqueeze(-1)
    gram = flat @ flat.transpose(1, 2) / flat.shape[-1]
    rows, cols = torch.triu_indices(gram.shape[1], gram.shape[1])
    return gram[:, rows, cols]


def _grams(
    model: Model, images: Any, layers: list[str], batch_size: int
) -> dict[str, torch.Tensor]:
    """Gram features of every layer, computed in batches."""
    chunks: list[Any]
    if isinstance(images, torch.Tensor):
        chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    else:
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    out: dict[str, list[torch.Tensor]] = {k: [] for k in layers}
    for chunk in chunks:
        found = activations(model, chunk, layers)
        for k in layers:
            out[k].append(gram_features(found[k]).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


_SHIPPED: dict[str, GramDeviation | None] = {}


def for_model(model: Model) -> GramDeviation | None:
    """The shipped calibration of a zoo toon model (by its name), or ``None``."""
    name = str(model.name)
    if name not in _SHIPPED:
        found = resources.files("convlens").joinpath("data", "models", f"{name}.ood.json")
        _SHIPPED[name] = (
            GramDeviation.from_dict(json.loads(found.read_text("utf-8")))
            if found.is_file()
            else None
        )
    return _SHIPPED[name]


def familiarity(model: Model, images: Any) -> list[dict[str, Any]] | None:
    """Per picture ``{"ood_score", "far"}`` for a model with a calibration, else ``None``."""
    calibration = for_model(model)
    if calibration is None:
        return None
    return [
        {"ood_score": round(float(s), 3), "far": bool(s > 1)}
        for s in calibration.scores(model, images)
    ]


def far_message(score: float) -> str:
    """What to tell a person about a picture with ``score`` above 1."""
    return (
        f"far from what the model was trained on (out-of-distribution score {score:.1f}, above "
        "1: unlike 99 % of its test pictures): this prediction means little"
    )
