"""What every attribution method shares: the result object, targets, the method registry (the
default layer and batching under a memory budget live in ``batching.py``).

Every method is a plain function with one signature (STYLE.md)::

    fn(model, images, target=None, *, layer=None, **options) -> Attribution

registered with ``@register("name", task=..., family=..., paper=..., settings={...})``. The
registry drives the CLI's flags, the explorer's forms, the API's validation and the
parametrised tests. Input-space maps are (N, H, W) (or (N, C, H, W) where channels matter),
layer maps (N, h, w); :meth:`Attribution.upsampled` brings a layer map to the input size.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from convlens.core import render
from convlens.core.model import Batch, Model
from convlens.core.naming import unknown
from convlens.core.registry import (
    Registry,
    Setting,
    Spec,
    parse_settings,
    settings_from_signature,
    spec,
)
from convlens.core.util import jsonable, safe_filename
from convlens.techniques.attribution import display
from convlens.techniques.attribution.batching import (  # noqa: F401 (where methods import them)
    batch_size_for,
    bytes_per_image,
    checked_batch_size,
    chunks,
    default_layer,
    default_layer_choice,
    make_generator,
    memory_budget_bytes,
    no_layer,
)

# -- targets ----------------------------------------------------------------------------------

TargetSpec = Any  # None | int | str | Sequence[int | str] | Tensor | callable | Target


@dataclass
class Target:
    """Which output each image is explained for.

    ``indices`` is a (N,) long tensor of class indices, or ``None`` when ``fn`` (any callable
    ``outputs -> (N,) scores``) decides. :meth:`score` gives the (N,) scalar that gradient
    methods differentiate: the raw output (logit) of the class, not its probability.
    """

    indices: torch.Tensor | None
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    description: str = "top-1"

    def score(self, outputs: torch.Tensor) -> torch.Tensor:
        if self.fn is not None:
            scores = self.fn(outputs)
            if not isinstance(scores, torch.Tensor) or scores.shape != (outputs.shape[0],):
                got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores)
                raise ValueError(f"a target callable must return (N,) scores, got {got}")
            return scores
        assert self.indices is not None
        if outputs.dim() != 2:
            raise ValueError(
                f"class targets need (N, K) outputs, got {tuple(outputs.shape)}; "
                "pass a callable target for other outputs"
            )
        return outputs.gather(1, self.indices.to(outputs.device).view(-1, 1)).squeeze(1)

    def repeat(self, times: int) -> Target:
        """The same target for each image repeated ``times`` times in a row (for batches of
        perturbed copies: image 0 x times, image 1 x times, ...)."""
        if self.indices is None:
            return self
        return replace(self, indices=self.indices.repeat_interleave(times))

    def select(self, index: slice | torch.Tensor) -> Target:
        if self.indices is None:
            return self
        return replace(self, indices=self.indices[index])


def resolve_target(model: Model, inputs: torch.Tensor, target: TargetSpec) -> Target:
    """A :class:`Target` for a batch: ``None`` (each image's top-1 class, one extra forward
    pass), a class index or name (the same for all), one index or name per image, or a
    callable on the output (detectors, multi-label heads)."""
    n = inputs.shape[0]
    if isinstance(target, Target):
        if target.indices is not None and len(target.indices) != n:
            raise ValueError(f"expected one target per image ({n}), got {len(target.indices)}")
        return target
    if callable(target) and not isinstance(target, torch.Tensor):
        name = getattr(target, "__name__", "callable")
        return Target(None, target, description=name)
    if target is None:
        from convlens.core.hooks import preserved

        with preserved(model.module), torch.inference_mode():  # eval mode, flags restored
            outputs = model.forward(inputs)
        if outputs.dim() != 2:
            raise ValueError(
                f"top-1 needs (N, K) outputs, got {tuple(outputs.shape)}; pass a callable target"
            )
        return Target(outputs.argmax(1).cpu(), description="top-1")
    if isinstance(target, (int, np.integer, str)):
        index = model.class_index(target)  # type: ignore[arg-type]
        return Target(torch.full((n,), index, dtype=torch.long), description=model.label(index))
    items = target.tolist() if isinstance(target, torch.Tensor) else list(target)
    if len(items) != n:
        raise ValueError(f"expected one target per image ({n}), got {len(items)}")
    indices = [model.class_index(t) for t in items]
    return Target(torch.tensor(indices, dtype=torch.long), description="per image")


# -- the result -------------------------------------------------------------------------------


class Explanation:
    """What every explanation offers, whatever it explains (a class, for each picture of a
    classifier's batch: :class:`Attribution`; one box of a detector:
    :class:`~convlens.techniques.attribution.detection.BoxExplanation`): the raw ``map``
    (sign kept), ``overlay(i)`` on the picture and ``heatmap(i)`` alone (both
    :class:`~convlens.core.render.Figure`), ``save(folder)``, ``summary()`` (JSON-ready),
    ``numpy()`` / ``np.asarray``, and inline display in notebooks."""

    map: torch.Tensor
    method: str
    settings: dict[str, Any]
    # each kind of result draws itself: overlay(index, ...) and heatmap(index, ...)
    overlay: Callable[..., render.Figure]
    heatmap: Callable[..., render.Figure]
    summary: Callable[[], dict[str, Any]]

    def __len__(self) -> int:
        return int(self.map.shape[0])

    def name(self, index: int) -> str:
        """The name of picture ``index`` (file names, captions)."""
        return f"image{index}"

    def has_pictures(self) -> bool:
        return True

    def arrays(self) -> dict[str, np.ndarray]:
        """What :meth:`save` writes into the ``.npz`` beside the pictures."""
        return {"map": self.map.numpy()}

    def numpy(self) -> np.ndarray:
        """The raw map as a float32 array (a copy)."""
        return self.map.detach().float().cpu().numpy().copy()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self.numpy()
        return out.astype(dtype) if dtype is not None else out

    def to_pil(self, index: int = 0) -> Image.Image:
        """Picture ``index``'s overlay (its heatmap where there is no picture) as a PIL image."""
        return self.figure(index).image

    def figure(self, index: int = 0, **draw: Any) -> render.Figure:
        """The overlay where there is a picture, else the heatmap (``draw``: their options)."""
        return self.overlay(index, **draw) if self.has_pictures() else self.heatmap(index, **draw)

    def save(
        self, folder: str | os.PathLike[str], *, stem: str | None = None, **draw: Any
    ) -> list[Path]:
        """One PNG per picture (``figure(i, **draw)``, with its colour bar) and the raw map(s) in
        ``<stem>.npz`` (written atomically)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        stem = safe_filename(stem or self.method)
        written = [
            self.figure(i, **draw).save(out / f"{safe_filename(self.name(i))}__{stem}.png")
            for i in range(len(self))
        ]
        target = out / f"{stem}.npz"
        partial = target.with_name(target.name + ".partial.npz")
        np.savez(partial, **self.arrays())  # type: ignore[arg-type]
        os.replace(partial, target)
        written.append(target)
        return written

    def _repr_png_(self) -> bytes:
        return self.figure(0)._repr_png_()

    def _repr_html_(self) -> str:
        figures = [self.figure(i)._repr_html_() for i in range(min(len(self), 8))]
        return "<div style='display:flex;flex-wrap:wrap;gap:8px'>" + "".join(figures) + "</div>"


@dataclass(repr=False)
class Attribution(Explanation):
    """An explanation of a batch: one map per image, with everything needed to read it.

    Attributes
    ----------
    map:
        (N, H, W) input-space or (N, h, w) layer-space map (or (N, C, H, W)), float32 on the
        CPU, sign kept (positive = evidence for the target).
    method, settings:
        The registry name and every setting that changed the result.
    targets, target_labels:
        The class index and label explained for each image (``None`` for callable targets).
    scores:
        (N,) the target's raw score (logit) for each unperturbed image.
    layer:
        The layer of a layer map (CAMs), else ``None``.
    input_size:
        (H, W) of the network input, for upsampling.
    extras:
        Method-specific diagnostics, e.g. ``completeness_error`` for Integrated Gradients.
    """

    map: torch.Tensor
    method: str
    settings: dict[str, Any]
    targets: list[int] | None
    target_labels: list[str] | None
    scores: torch.Tensor | None
    layer: str | None
    input_size: tuple[int, int]
    names: list[str] = field(default_factory=list)
    pictures: Sequence[Image.Image] = field(default_factory=list, repr=False)
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.map.shape[0])

    @property
    def is_layer_map(self) -> bool:
        return tuple(self.map.shape[-2:]) != tuple(self.input_size)

    def upsampled(self, size: tuple[int, int] | None = None, mode: str = "bilinear") -> Attribution:
        """The map resized to ``size`` (default: the input size); a separate step, not a flag
        of the methods. Bilinear, ``align_corners=False`` (as pytorch-grad-cam and Captum)."""
        size = size or self.input_size
        if tuple(self.map.shape[-2:]) == tuple(size):
            return self
        x = self.map if self.map.dim() == 4 else self.map.unsqueeze(1)
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        y = torch.nn.functional.interpolate(x.float(), size=size, mode=mode, **kwargs)
        return replace(self, map=y if self.map.dim() == 4 else y.squeeze(1))

    def maps2d(self) -> torch.Tensor:
        """(N, H, W): channel maps summed over channels (signs kept)."""
        return self.map.sum(1) if self.map.dim() == 4 else self.map

    def normalized(
        self,
        mode: str = "per_map",
        *,
        clip_percentile: float | None = None,
        signed: bool = False,
        absolute: bool = False,
    ) -> np.ndarray:
        """(N, H, W) float32 in [0, 1] for display: ``per_map``, ``shared`` or ``absolute``
        scaling (see :func:`convlens.render.normalize`); ``absolute=True`` takes |map| first;
        ``signed=True`` keeps 0 at 0.5 (diverging colour maps)."""
        maps = self.maps2d()
        if absolute:
            maps = maps.abs()
        return render.normalize(maps, mode=mode, clip_percentile=clip_percentile, signed=signed)

    def _display(self, sign: str | None) -> tuple[torch.Tensor, bool]:
        """The (N, H, W) maps to draw and whether to draw them signed.

        ``sign``: ``"signed"`` (diverging, 0 in the middle), ``"absolute"`` (|map|) or
        ``"positive"`` (negative evidence shown as 0). By default signed maps are drawn signed,
        except pixel-level gradient maps, drawn as |map| as Captum's visualiser does: their
        signs flip from pixel to pixel and read as noise."""
        signed_method = bool(self.settings.get("signed", False))
        if sign is None:
            info = _TABLE["classify"].entries.get(self.method)
            pixel_gradients = info is not None and info.family == "gradient"
            sign = (
                "absolute"
                if signed_method and pixel_gradients
                else ("signed" if signed_method else "positive")
            )
        if sign not in ("signed", "absolute", "positive"):
            raise ValueError(f"expected sign 'signed', 'absolute' or 'positive', got {sign!r}")
        maps = self.maps2d()
        if sign == "absolute":
            return maps.abs(), False
        if sign == "positive":
            return maps.clamp(min=0), False
        return maps, True

    def overlay(
        self,
        index: int = 0,
        *,
        alpha: float = 0.5,
        cmap: str | None = None,
        sign: str | None = None,
        clip_percentile: float | None = None,
        scale: str | tuple[float, float] | None = None,
    ) -> render.Figure:
        """Map ``index`` (upsampled) over the picture the network saw, with its colour bar
        and the target's score: jet for unsigned display, a diverging map centred on 0 for
        signed (``sign``: ``"signed"``, ``"absolute"`` or ``"positive"``). Pixel-level maps are
        clipped to their 1st..99th percentile by default; layer maps are not clipped.
        ``scale``: ``None`` the map's own range, ``"shared"`` one range over all maps of this
        result, or ``(vmin, vmax)`` such as :func:`convlens.shared_scale` of several results
        (see :mod:`.display`)."""
        return display.draw_overlay(
            self,
            index,
            alpha=alpha,
            cmap=cmap,
            sign=sign,
            clip_percentile=clip_percentile,
            scale=scale,
        )

    def heatmap(
        self,
        index: int = 0,
        *,
        cmap: str | None = None,
        sign: str | None = None,
        scale: str | tuple[float, float] | None = None,
    ) -> render.Figure:
        """Map ``index`` alone, at its own resolution, with its colour bar (``scale`` as in
        :meth:`overlay`)."""
        return display.draw_heatmap(self, index, cmap=cmap, sign=sign, scale=scale)

    def caption(self, index: int = 0) -> str:
        name = self.names[index] if index < len(self.names) else f"image{index}"
        what = self.target_labels[index] if self.target_labels else "target"
        where = f" @ {self.layer}" if self.layer else ""
        return f"{name} · {self.method}{where} · {what}"

    def name(self, index: int) -> str:
        return self.names[index] if index < len(self.names) else f"image{index}"

    def has_pictures(self) -> bool:
        return bool(self.pictures)

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {"map": self.map.numpy(), "names": np.array(self.names)}
        if self.targets is not None:
            arrays["targets"] = np.array(self.targets)
        return arrays

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no arrays)."""
        return {
            "method": self.method,
            "settings": {k: jsonable(v) for k, v in self.settings.items()},
            "layer": self.layer,
            "targets": self.targets,
            "target_labels": self.target_labels,
            "scores": self.scores.tolist() if self.scores is not None else None,
            "map_shape": list(self.map.shape),
            "extras": {k: jsonable(v) for k, v in self.extras.items()},
        }

    @staticmethod
    def concat(parts: Sequence[Attribution]) -> Attribution:
        """One attribution from the attributions of consecutive chunks of pictures (same
        method and settings): maps, targets, scores, names and pictures in order; per-picture
        extras concatenated, others taken from the first chunk."""
        first = parts[0]
        if len(parts) == 1:
            return first
        counts = [len(p) for p in parts]
        extras: dict[str, Any] = {}
        for key, value in first.extras.items():
            per_picture = isinstance(value, torch.Tensor) and value.dim() > 0
            if per_picture and all(
                isinstance(p.extras.get(key), torch.Tensor) and p.extras[key].shape[:1] == (n,)
                for p, n in zip(parts, counts, strict=True)
            ):
                extras[key] = torch.cat([p.extras[key] for p in parts])
            else:
                extras[key] = value
        return replace(
            first,
            map=torch.cat([p.map for p in parts]),
            targets=None if first.targets is None else [t for p in parts for t in p.targets or []],
            target_labels=None
            if first.target_labels is None
            else [t for p in parts for t in p.target_labels or []],
            scores=None if first.scores is None else torch.cat([p.scores for p in parts]),  # type: ignore[misc]
            names=[n for p in parts for n in p.names],
            pictures=[pic for p in parts for pic in p.pictures],
            extras=extras,
        )

    def __repr__(self) -> str:
        labels = self.target_labels or []
        shown = ", ".join(labels[:3]) + (", ..." if len(labels) > 3 else "")
        where = f" @ {self.layer}" if self.layer else ""
        return (
            f"Attribution({self.method}{where}, {len(self)} map(s) "
            f"{tuple(self.map.shape[1:])}, targets [{shown}])"
        )


def make_attribution(
    attribution_map: torch.Tensor,
    *,
    method: str,
    settings: dict[str, Any],
    model: Model,
    batch: Batch,
    target: Target,
    scores: torch.Tensor | None,
    layer: str | None = None,
    extras: dict[str, Any] | None = None,
) -> Attribution:
    """Assemble an :class:`Attribution` (maps moved to the CPU as float32)."""
    indices = target.indices.tolist() if target.indices is not None else None
    return Attribution(
        map=attribution_map.detach().float().cpu(),
        method=method,
        settings=settings,
        targets=indices,
        target_labels=[model.label(i) for i in indices] if indices is not None else None,
        scores=scores.detach().float().cpu() if scores is not None else None,
        layer=layer,
        input_size=(int(batch.inputs.shape[-2]), int(batch.inputs.shape[-1])),
        names=list(batch.names),
        pictures=batch.pictures,
        extras=extras or {},
    )


# -- the registry -----------------------------------------------------------------------------

Method = Callable[..., Any]
TASKS = ("classify", "detect", "segment")
FAMILIES = ("gradient", "cam", "perturbation")

# settings many methods share: what they mean and their ranges, said once
COMMON: dict[str, Spec] = {
    "seed": spec("the same seed gives the same map", min=0, max=2**31 - 1, type="int"),
    "batch_size": spec(
        "copies per forward pass (default: what fits the memory budget)",
        min=1,
        max=4096,
        type="int",
        form=False,
    ),
    "memory_budget_mb": spec(
        "memory for one batch of copies, MB (default: 1024 on a CPU, half the free memory "
        "on a GPU)",
        min=16,
        max=1_000_000,
        type="float",
        form=False,
    ),
    "relu": spec("keep positive evidence only"),
    "channels": spec("keep one map per input channel"),
    "blur_sigma": spec("blur of the 'blur' reference, pixels", min=0.5, max=50.0, step=0.5),
}
NOT_SETTINGS = ("layer", "generator", "progress")


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its function and everything the faces need to offer it.

    ``task`` is what it explains (``classify``: a class of a classifier; ``detect``: one box of
    a detector; ``segment``: a class over a region of a segmenter); ``family`` is
    ``gradient``, ``cam`` or ``perturbation``; ``settings`` are its options with their types,
    ranges and help (the CLI's flags, the explorer's forms and the API's validation read
    them)."""

    name: str
    fn: Method
    task: str
    family: str
    needs_layer: bool
    signed: bool  # whether maps carry a meaningful sign
    paper: str
    description: str
    settings: tuple[Setting, ...] = ()
    open_options: bool = False  # passes further options on (a wrapper such as SmoothGrad)

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        raise unknown(f"setting of {self.name}", name, [s.name for s in self.settings])

    def parse(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` (name -> text or JSON value) checked against the settings."""
        return parse_settings(self.settings, given, self.name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``convlens methods --json``, the explorer's method list)."""
        return {
            "name": self.name,
            "task": self.task,
            "family": self.family,
            "paper": self.paper,
            "description": self.description,
            "needs_layer": self.needs_layer,
            "signed": self.signed,
            "settings": [s.to_dict() for s in self.settings],
        }


_TABLE: dict[str, Registry[MethodInfo]] = {
    task: Registry(f"{task} attribution method") for task in TASKS
}

# Short names people type, accepted wherever a method is named.
ALIASES = {
    "ig": "integrated_gradients",
    "grad-cam": "gradcam",
    "gradcampp": "gradcam++",
    "score-cam": "scorecam",
    "layer-cam": "layercam",
    "eigen-cam": "eigencam",
    "xgrad-cam": "xgradcam",
    "gxi": "gradient_x_input",
    "input_x_gradient": "gradient_x_input",
    "d-rise": "drise",
}


def register(
    name: str,
    *,
    family: str,
    paper: str,
    description: str,
    task: str = "classify",
    needs_layer: bool = False,
    signed: bool = False,
    settings: Mapping[str, Spec] | None = None,
    aliases: tuple[str, ...] = (),
) -> Callable[[Method], Method]:
    """Add an attribution method to the registry of its ``task`` (``aliases``: other names
    for it in that task alone, besides :data:`ALIASES`).

    ``settings`` gives each option's range or choices and help
    (:func:`convlens.core.registry.spec`);
    options in :data:`COMMON` need none. The types and defaults come from the function's
    keyword-only parameters."""
    if task not in TASKS or family not in FAMILIES:
        raise ValueError(f"expected a task in {TASKS} and a family in {FAMILIES}")

    def add(fn: Method) -> Method:
        params = inspect.signature(fn).parameters
        specs = {k: v for k, v in COMMON.items() if k in params} | dict(settings or {})
        info = MethodInfo(
            name,
            fn,
            task,
            family,
            needs_layer,
            signed,
            paper,
            description,
            settings_from_signature(fn, specs, skip=NOT_SETTINGS),
            any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()),
        )
        shared = tuple(a for a, target in ALIASES.items() if target == name)
        _TABLE[task].add(name, info, shared + aliases)
        return fn

    return add


def unregister(name: str, task: str = "classify") -> None:
    """Take a method out of the table (a plugin's or a test's own)."""
    _TABLE[task].remove(name)


def methods(task: str = "classify") -> dict[str, MethodInfo]:
    """Every registered method of ``task`` (``classify``, ``detect`` or ``segment``), by name."""
    if task not in TASKS:
        raise ValueError(f"expected a task in {TASKS}, got {task!r}")
    return dict(_TABLE[task].items())


def method_aliases(task: str = "classify") -> dict[str, str]:
    """The other names of ``task``'s methods: ``{alias: method name}``."""
    methods(task)  # the task checked
    return dict(_TABLE[task].aliases)


def get_method(name: str, task: str = "classify") -> MethodInfo:
    """A registered method of ``task`` by name or alias (``ig``); unknown names list close
    ones."""
    if task not in TASKS:
        raise ValueError(f"expected a task in {TASKS}, got {task!r}")
    return _TABLE[task].get(name)


def method_options(name: str, task: str = "classify") -> list[str] | None:
    """The keyword options a method accepts (from its signature); ``None`` when it passes
    any option on (a wrapper such as SmoothGrad)."""
    info = get_method(name, task)
    if info.open_options:
        return None
    parameters = inspect.signature(info.fn).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
