"""Explanation panels: every registered attribution method becomes a panel whose settings the
page turns into form controls (the Picasso idea, on convlens's method registry).

A panel's schema comes from its method's keyword arguments and their defaults; ``BOUNDS``
gives numbers their ranges and strings their choices. A new method registered with
``@attribution.register`` shows up here with no change; a setting that needs a range or a
list of choices gets one line in ``BOUNDS``. Settings that are not form material (generators,
batch sizes, memory budgets, callbacks, array baselines) are left out.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from convlens.attribution import MethodInfo, methods
from convlens.gradients import BASELINES, KINDS, RULES
from convlens.occlusion import FILLS

HIDDEN = {"layer", "generator", "batch_size", "memory_budget_mb", "progress", "seed"}

# setting -> (min, max, step) for numbers, or the list of choices for strings
BOUNDS: dict[str, tuple[float, float, float] | list[str]] = {
    "steps": (2, 300, 1),
    "window": (2, 128, 1),
    "stride": (1, 128, 1),
    "masks": (50, 8000, 50),
    "cell": (2, 32, 1),
    "p": (0.05, 0.95, 0.05),
    "samples": (2, 200, 1),
    "noise": (0.0, 1.0, 0.01),
    "blur_sigma": (0.5, 50.0, 0.5),
    "fill": list(FILLS),
    "score": ["logit", "probability"],
    "rule": list(RULES),
    "baseline": list(BASELINES),
    "base": ["saliency", "gradient_x_input", "integrated_gradients", "guided_backprop"],
    "kind": list(KINDS),
    "sign": ["activation", "numpy"],
    "interpolation": ["bilinear", "nearest"],
}

HELP = {
    "steps": "integration steps",
    "window": "occluding square, pixels",
    "stride": "step of the window, pixels",
    "fill": "what covers the occluded pixels",
    "masks": "random masks",
    "cell": "mask grid cells per side",
    "p": "share of cells kept",
    "samples": "noisy copies averaged",
    "noise": "noise std as a share of the input range",
    "relu": "keep positive evidence only",
    "absolute": "magnitude of the gradient",
    "channels": "keep one map per input channel",
    "score": "what the perturbation changes",
}


@dataclass(frozen=True)
class Setting:
    name: str
    type: str  # "int", "float", "bool", "choice"
    default: Any
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: list[str] | None = None
    help: str = ""

    def parse(self, raw: str) -> Any:
        """A query-string value -> the typed setting; ``ValueError`` names what was expected."""
        try:
            if self.type == "bool":
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if self.type == "int":
                value: Any = int(raw)
            elif self.type == "float":
                value = float(raw)
            else:
                value = raw
        except ValueError:
            raise ValueError(f"setting {self.name!r}: expected {self.type}, got {raw!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"setting {self.name!r}: expected one of {self.choices}, got {raw!r}")
        if (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        ):
            raise ValueError(
                f"setting {self.name!r}: expected a value in [{self.min}, {self.max}], got {raw}"
            )
        return value


@dataclass(frozen=True)
class Panel:
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
            "settings": [s.__dict__ for s in self.settings],
        }

    def parse(self, query: dict[str, str]) -> dict[str, Any]:
        """The method's options from query parameters; unknown names are refused."""
        known = {s.name: s for s in self.settings}
        unknown = sorted(set(query) - set(known))
        if unknown:
            raise ValueError(
                f"unknown setting(s) {unknown} for {self.name}; it takes {sorted(known) or 'none'}"
            )
        return {name: known[name].parse(raw) for name, raw in query.items()}


def _setting(param: inspect.Parameter) -> Setting | None:
    default = param.default
    if param.name in HIDDEN or default is inspect.Parameter.empty:
        return None
    bounds = BOUNDS.get(param.name)
    hint = HELP.get(param.name, "")
    if isinstance(default, bool):
        return Setting(param.name, "bool", default, help=hint)
    if isinstance(default, (int, float)):
        kind = "int" if isinstance(default, int) else "float"
        if isinstance(bounds, tuple):
            return Setting(param.name, kind, default, *bounds, help=hint)
        return Setting(param.name, kind, default, help=hint)
    if isinstance(default, str):
        choices = list(bounds) if isinstance(bounds, list) else [default]
        if default not in choices:
            choices.insert(0, default)
        return Setting(param.name, "choice", default, choices=choices, help=hint)
    return None  # None defaults and objects: not form material


def panel(info: MethodInfo) -> Panel:
    params = list(inspect.signature(info.fn).parameters.values())[3:]
    settings = tuple(s for s in (_setting(p) for p in params) if s is not None)
    return Panel(info.name, info.family, info.paper, info.description, info.needs_layer, settings)


def panels() -> dict[str, Panel]:
    """Every registered method as a panel, by name."""
    return {name: panel(info) for name, info in methods().items()}


# -- the detection panel's box explanations ---------------------------------------------------

THRESHOLDS = ("score_threshold", "iou_threshold", "max_detections")
MAX_DETECTIONS = 1000
# D-RISE runs the detector once per mask on the whole picture: masks x pixels is bounded so
# that one request cannot hold a model for many minutes (4000 masks on 256 x 256 pixels)
DRISE_BUDGET = 4000 * 256 * 256

BOX_PANELS: dict[str, Panel] = {
    "drise": Panel(
        "drise",
        "perturbation",
        "Petsiuk et al. 2021, Black-box Explanation of Object Detectors via Saliency Maps "
        "(D-RISE), CVPR, arXiv:2006.03204",
        "Random masks; each weighted by how well the detector still finds this box. Needs no "
        "gradients (works for any detector); one detector pass per mask.",
        False,
        (
            Setting(
                "masks", "int", 500, 10, 4000, 10, help="random masks (more: smoother, slower)"
            ),
            Setting("cell", "int", 16, 2, 64, 1, help="mask grid cells per side"),
            Setting("p", "float", 0.5, 0.05, 0.95, 0.05, help="share of cells kept"),
            Setting("seed", "int", 0, 0, 2**31 - 1, 1, help="the same seed gives the same map"),
        ),
    ),
    "gradcam": Panel(
        "gradcam",
        "cam",
        "Selvaraju et al. 2017, Grad-CAM, arXiv:1610.02391",
        "Gradient of the box's score at a layer, averaged over positions into channel weights. "
        "Fast, but it lights every object of the box's class: it cannot tell two characters of "
        "the same class apart (use Layer-CAM for that).",
        True,
        (
            Setting(
                "min_iou", "float", 0.5, 0.05, 1.0, 0.05, help="how closely the box is re-found"
            ),
        ),
    ),
    "layercam": Panel(
        "layercam",
        "cam",
        "Jiang et al. 2021, LayerCAM, IEEE TIP 30, doi:10.1109/TIP.2021.3089943",
        "The positive gradient of the box's score, position by position, weights the layer's "
        "activations: it keeps where the box is, so it separates two characters of the same "
        "class. Fast.",
        True,
        (
            Setting(
                "min_iou", "float", 0.5, 0.05, 1.0, 0.05, help="how closely the box is re-found"
            ),
        ),
    ),
}


def box_panel(
    method: str, layers: list[str] | None = None, default_layer: str | None = None
) -> Panel:
    """The panel of one box explanation method; gradient CAMs get a ``layer`` choice among
    ``layers`` (the detector's layers with a map), defaulting to ``default_layer``."""
    if method not in BOX_PANELS:
        from convlens.naming import unknown

        raise unknown("box explanation method", method, list(BOX_PANELS))
    chosen = BOX_PANELS[method]
    if not chosen.needs_layer or not layers:
        return chosen
    default = default_layer if default_layer in layers else layers[-1]
    layer = Setting("layer", "choice", default, choices=list(layers), help="layer the CAM reads")
    return Panel(
        chosen.name,
        chosen.family,
        chosen.paper,
        chosen.description,
        chosen.needs_layer,
        (layer, *chosen.settings),
    )
