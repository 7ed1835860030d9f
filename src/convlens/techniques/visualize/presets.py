"""Named recipes: every setting of a feature visualization that is not the objective.

- ``"lucent"`` (the default): Fourier parameterisation with decorrelated colour and a sigmoid,
  Lucent's standard transforms, Adam at 0.05, 256 steps.
- ``"classic"``: the recipe of Chollet's *Deep Learning with Python* (5.4), which many people
  know: start from grey noise, 40 steps of gradient ascent with the gradient divided by its
  RMS (step 1 in 0..255 pixel units), no transforms, then deprocess each image to mean 0.5
  and standard deviation 0.1, clipped to [0, 1].
- ``"pixels"``: like ``"lucent"`` but one parameter per pixel (no Fourier basis), for
  comparison.

:func:`convlens.featurevis` takes a preset name and lets any argument override it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from convlens.core.naming import unknown

__all__ = ["PRESETS", "Preset", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """Settings of a run: ``param`` (``"fourier"``, ``"pixels"`` or ``"grey_noise"``),
    ``decorrelate``/``sigmoid`` (colour basis and squashing), ``sd`` (initial spread),
    ``transforms`` (``"standard"`` or ``"none"``), ``optimizer`` (``"adam"`` or ``"rms"``:
    step ``lr * g / rms(g)`` per image), ``lr``, ``steps``, ``deprocess`` (``None`` or
    ``"classic"``: ``0.5 + 0.1 * (x - mean) / std``, clipped)."""

    param: str = "fourier"
    decorrelate: bool = True
    sigmoid: bool = True
    sd: float = 0.01
    decay_power: float = 1.0
    transforms: str = "standard"
    optimizer: str = "adam"
    lr: float = 0.05
    steps: int = 256
    deprocess: str | None = None

    def with_options(self, **options: Any) -> Preset:
        given = {k: v for k, v in options.items() if v is not None}
        unknown_keys = sorted(set(given) - set(self.__dataclass_fields__))
        if unknown_keys:
            raise ValueError(f"unknown preset settings {unknown_keys}")
        return replace(self, **given)


PRESETS: dict[str, Preset] = {
    "lucent": Preset(),
    "pixels": Preset(param="pixels"),
    "classic": Preset(
        param="grey_noise",
        decorrelate=False,
        sigmoid=False,
        transforms="none",
        optimizer="rms",
        lr=1 / 255,
        steps=40,
        deprocess="classic",
    ),
}


def get_preset(name: str | Preset) -> Preset:
    """A preset by name (``"lucent"``, ``"classic"``, ``"pixels"``) or as given."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise unknown("preset", name, PRESETS)
    return PRESETS[name]
