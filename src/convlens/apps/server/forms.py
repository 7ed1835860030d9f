"""The explanation forms: every registered attribution method becomes a form whose settings the
page turns into controls (the Picasso idea, on convlens's method table).

A form's settings are its method's registered settings (type, default, range or choices,
help: :mod:`convlens.techniques.attribution.base`), so a new method shows up here with no
change. The explorer is a shared, interactive server, so it narrows a few ranges to what one
request may cost (:data:`EXPLORER_LIMITS`) and starts the slow perturbation methods at
smaller defaults (:data:`EXPLORER_DEFAULTS`); expert settings (batch sizes, memory budgets)
stay out of the forms.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from convlens.core.naming import unknown
from convlens.core.registry import Setting, parse_settings
from convlens.techniques.attribution.base import MethodInfo, methods

# what one request of the explorer may ask for (the library itself takes more); a
# detector's D-RISE runs the whole detector per mask, so it gets fewer
EXPLORER_LIMITS: dict[str, float] = {
    "steps": 300,
    "samples": 200,
    "masks": 8000,
    "window": 128,
    "stride": 128,
    "cell": 64,
}
EXPLORER_TASK_LIMITS: dict[tuple[str, str], float] = {("detect", "masks"): 4000}
# the explorer's starting values where the library's default is slow on a CPU, by (task,
# method): RISE on MobileNetV2, 2 cores: 500 masks 9 s, the library's 2000 36 s; Score-CAM at
# MobileNetV2's default layer (1,280 channels), one thread on a shared 2-core machine: every
# channel 71 s, the 64 strongest 3-5 s on the four sample photos (an approximation the form
# names; an empty field is the exact method, the library's default); a region's RISE on the
# toon segmenter, one thread: the library's 1000 masks 14 s, 250 masks 3.4 s
EXPLORER_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("detect", "drise"): {"masks": 500},
    ("classify", "rise"): {"masks": 500},
    ("classify", "scorecam"): {"channels": 64},
    ("segment", "rise"): {"masks": 250},
}

THRESHOLDS = ("score_threshold", "iou_threshold", "max_detections")
MAX_DETECTIONS = 1000
# D-RISE runs the detector once per mask on the whole picture: masks x pixels is bounded so
# that one request cannot hold a model for many minutes (4000 masks on 256 x 256 pixels)
DRISE_BUDGET = 4000 * 256 * 256


@dataclass(frozen=True)
class MethodForm:
    name: str
    family: str
    paper: str
    description: str
    needs_layer: bool
    settings: tuple[Setting, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "paper": self.paper,
            "description": self.description,
            "needs_layer": self.needs_layer,
            "settings": [s.to_dict() for s in self.settings],
        }

    def parse(self, query: dict[str, str]) -> dict[str, Any]:
        """The method's options from query parameters; unknown names are refused."""
        return parse_settings(self.settings, query, self.name)

    def setting(self, name: str) -> Setting:
        return next(s for s in self.settings if s.name == name)


def _for_explorer(info: MethodInfo, setting: Setting) -> Setting:
    limit = EXPLORER_TASK_LIMITS.get((info.task, setting.name), EXPLORER_LIMITS.get(setting.name))
    if limit is not None and (setting.max is None or setting.max > limit):
        setting = replace(setting, max=limit)
    defaults = EXPLORER_DEFAULTS.get((info.task, info.name), {})
    if setting.name in defaults:
        setting = replace(setting, default=defaults[setting.name])
    return setting


def method_form(info: MethodInfo) -> MethodForm:
    settings = tuple(_for_explorer(info, s) for s in info.settings if s.form)
    return MethodForm(
        info.name, info.family, info.paper, info.description, info.needs_layer, settings
    )


def method_forms() -> dict[str, MethodForm]:
    """Every registered classifier method as a form, by name."""
    return {name: method_form(info) for name, info in methods().items()}


def box_form(
    method: str, layers: list[str] | None = None, default_layer: str | None = None
) -> MethodForm:
    """The form of one box explanation method; gradient CAMs get a ``layer`` choice among
    ``layers`` (the detector's layers with a map), defaulting to ``default_layer``."""
    table = methods("detect")
    if method not in table:
        raise unknown("box explanation method", method, list(table))
    chosen = method_form(table[method])
    if not chosen.needs_layer or not layers:
        return chosen
    default = default_layer if default_layer in layers else layers[-1]
    layer = Setting("layer", "choice", default, choices=tuple(layers), help="layer the CAM reads")
    return replace(chosen, settings=(layer, *chosen.settings))


def box_methods() -> list[str]:
    """The box explanation methods, by name."""
    return list(methods("detect"))
