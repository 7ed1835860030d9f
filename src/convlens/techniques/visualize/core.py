"""Feature visualization by gradient ascent on the input: :func:`featurevis` and its result.

The image lives in [0, 1] pixel space (a parameterisation from :mod:`.param`); each step
draws it, applies the random robustness transforms (:mod:`.transforms`), resizes it to the
network's input when the network needs a fixed size, applies the model's own normalisation
(``model.preprocess.normalize``), runs the network only as far as the deepest layer the
objective reads (a hook raises once every needed output is in), and takes
``torch.autograd.grad`` of the objective with respect to the image parameters only: the
weights are frozen for the run (their ``requires_grad`` comes back afterwards) and no weight
gradient is ever computed. Every image of an objective's batch (a channel list, a whole layer)
is optimised together, in chunks that fit ``memory_budget_mb``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from convlens.core import render
from convlens.core.model import Model, Preprocessing
from convlens.core.tasks import as_model
from convlens.core.util import safe_filename
from convlens.techniques.visualize import param as params_mod
from convlens.techniques.visualize import transforms as tf
from convlens.techniques.visualize.ascent import Ascent, ParamFn, Plan
from convlens.techniques.visualize.objectives import Objective, as_objective
from convlens.techniques.visualize.presets import Preset, get_preset

__all__ = ["FeatureVis", "featurevis"]

Progress = Callable[[int, int], None]


@dataclass
class FeatureVis:
    """The images a feature visualization found, and how it got there.

    Attributes
    ----------
    pixels:
        (B, 3, H, W) float32 in [0, 1], on the CPU: one image per objective image (channel,
        class, ...), as displayed (after the ``classic`` deprocessing when used).
    history:
        (steps, B) the objective of each image at each step (on the transformed image).
    scores:
        (B,) the objective of each final image, evaluated without transforms.
    labels:
        One label per image (``"features.14:17"``, ``"jessie"``, ...).
    frames:
        (F, B, 3, H, W) uint8 snapshots during the run, for :meth:`gif`.
    """

    pixels: torch.Tensor
    history: torch.Tensor
    scores: torch.Tensor
    labels: list[str]
    objective: str
    settings: dict[str, Any]
    frames: torch.Tensor = field(repr=False)

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def images(self) -> list[Image.Image]:
        """One RGB PIL image per objective image."""
        return [render.to_pil(p) for p in self.pixels]

    @property
    def image(self) -> Image.Image:
        """The first (for a single objective, the only) image, as PIL."""
        return render.to_pil(self.pixels[0])

    def grid(
        self, *, ncols: int | None = None, labels: bool = True, tile_size: int | None = None
    ) -> render.Figure:
        """All images in one labelled grid (8 columns for 64 images)."""
        size = (tile_size, tile_size) if tile_size else None
        picture = render.grid(
            self.images,
            ncols=ncols,
            labels=self.labels if labels else None,
            tile_size=size,
        )
        return render.Figure(picture, caption=self.objective)

    def gif(self, path: str | os.PathLike[str] | None = None, *, duration_ms: int = 100) -> bytes:
        """The optimisation as an animated GIF (the grid of all images for a batch); written
        to ``path`` when given. Returns the GIF bytes."""
        pictures = []
        for frame in self.frames:
            tiles = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frame]
            pictures.append(tiles[0] if len(tiles) == 1 else render.grid(tiles))
        if not pictures:
            raise ValueError("this run kept no frames (frames=0)")
        buf = io.BytesIO()
        pictures[0].save(
            buf,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=duration_ms,
            loop=0,
        )
        data = buf.getvalue()
        if path is not None:
            render.write_atomic(path, data)
        return data

    def save(self, path: str | os.PathLike[str]) -> list[Path]:
        """``path`` ending in .png: the image (the grid for a batch). Otherwise a folder:
        ``grid.png``, one PNG per image, ``featurevis.gif``, ``history.json``."""
        target = Path(path)
        if target.suffix.lower() == ".png":
            picture = self.image if len(self) == 1 else self.grid().image
            return [render.save_png(picture, target)]
        target.mkdir(parents=True, exist_ok=True)
        written = [self.grid().save(target / "grid.png")]
        unique = len(set(self.labels)) == len(self.labels)
        for i, (label, picture) in enumerate(zip(self.labels, self.images, strict=True)):
            stem = safe_filename(label) if unique else f"{i:03d}_{safe_filename(label)}"
            written.append(render.save_png(picture, target / f"{stem}.png"))
        if len(self.frames):
            gif = target / "featurevis.gif"
            self.gif(gif)
            written.append(gif)
        summary = target / "history.json"
        render.write_atomic(summary, json.dumps(self.summary(), indent=1).encode())
        written.append(summary)
        return written

    def summary(self) -> dict[str, Any]:
        """JSON-ready: objective, settings, labels, final scores and the history."""
        return {
            "objective": self.objective,
            "settings": self.settings,
            "labels": self.labels,
            "scores": [round(float(v), 6) for v in self.scores],
            "history": [[round(float(v), 6) for v in row] for row in self.history.t()],
        }

    def _repr_png_(self) -> bytes:
        return render.png_bytes(self.image if len(self) == 1 else self.grid().image)

    def __repr__(self) -> str:
        h, w = self.pixels.shape[-2:]
        return (
            f"FeatureVis({self.objective!r}, {len(self)} image(s) {h}x{w}, "
            f"{self.history.shape[0]} steps)"
        )


def _make_param(preset: Preset, param: ParamFn | str | None) -> ParamFn:
    if callable(param):
        return param
    name = param or preset.param
    common: dict[str, Any] = {
        "sd": preset.sd,
        "decorrelate": preset.decorrelate,
        "sigmoid": preset.sigmoid,
    }
    if name == "fourier":
        return lambda shape, generator, device: params_mod.fourier(
            shape, decay_power=preset.decay_power, generator=generator, device=device, **common
        )
    if name == "pixels":
        return lambda shape, generator, device: params_mod.pixels(
            shape, generator=generator, device=device, **common
        )
    if name == "grey_noise":
        return lambda shape, generator, device: params_mod.grey_noise(
            shape, generator=generator, device=device
        )
    raise ValueError(
        f"expected param 'fourier', 'pixels', 'grey_noise' or a callable, got {name!r}"
    )


def _make_transform(
    preset: Preset, transforms: Sequence[tf.Transform] | str | None
) -> tf.Transform:
    chosen: Any = preset.transforms if transforms is None else transforms
    if isinstance(chosen, str):
        if chosen == "standard":
            return tf.compose(tf.standard())
        if chosen == "none":
            return tf.compose([])
        raise ValueError(f"expected transforms 'standard', 'none' or a list, got {chosen!r}")
    return tf.compose(list(chosen))


def _chunk_size(model: Model, size: tuple[int, int], budget_mb: float | None, total: int) -> int:
    """Images per chunk under the memory budget, from the layer table's output sizes."""
    from convlens.techniques.attribution.base import bytes_per_image, memory_budget_bytes

    if total == 1:
        return 1
    try:
        _c, h0, w0 = model.input_shape
        per_image = bytes_per_image(model) * (size[0] * size[1]) / (h0 * w0)
    except Exception:
        per_image = 3 * size[0] * size[1] * 4 * 200  # a generous guess
    budget = memory_budget_bytes(model, budget_mb)
    # forward activations kept for the backward pass, their gradients, and the image's own
    return int(max(1, min(256, budget // (per_image * 2.5))))


def featurevis(
    model: Model | torch.nn.Module,
    objective: Objective | str,
    *,
    size: int | tuple[int, int] | None = None,
    steps: int | None = None,
    preset: str | Preset = "lucent",
    param: ParamFn | str | None = None,
    transforms: Sequence[tf.Transform] | str | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    frames: int = 16,
    progress: Progress | None = None,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    resize: bool | None = None,
) -> FeatureVis:
    """Find input patterns that maximise ``objective`` (activation maximisation).

    Parameters
    ----------
    model:
        A :class:`~convlens.Model` (or anything :func:`convlens.load` takes).
    objective:
        An objective from :mod:`convlens.objectives` (``channel("features.14", 17) - 0.1 *
        l2()``) or a name: ``"features.14:17"`` (one channel), ``"features.14"`` (every
        channel, one image each). An objective that defines a batch (a channel list, a whole
        layer, several classes) gives one image per entry, all optimised together.
    size:
        Side (or (H, W)) of the optimised image; default: the model's input size (224 for
        ImageNet models). Networks that need a fixed size see the transformed image resized
        to it.
    steps, param, transforms, optimizer, lr:
        Override the ``preset`` (``"lucent"``, ``"classic"``, ``"pixels"``; see
        :mod:`convlens.visualize.presets`). ``param`` is ``"fourier"``, ``"pixels"``,
        ``"grey_noise"`` or a callable ``(shape, generator, device) -> (params, image_fn)``;
        ``transforms`` is ``"standard"``, ``"none"`` or a list of transforms.
    seed, generator:
        Every random draw (initial image, transforms) comes from one ``torch.Generator``
        (``seed`` 0 by default). Results depend on the seed and the chunk size.
    batch_size, memory_budget_mb:
        Images optimised together; by default as many as fit the budget (1024 MB).
    frames:
        Snapshots kept for :meth:`FeatureVis.gif` (0: none).
    progress:
        ``progress(done_steps, total_steps)`` after each step (over all chunks).
    normalize:
        Pixels [0, 1] -> network input; default ``model.preprocess.normalize``.
    resize:
        Resize each transformed image to the model's input size: ``True``, ``False``, or
        ``None`` (default) to find out with one inference pass at about 1.5x the size (as far
        as the objective reads): networks that end in a global pool, and objectives on conv
        layers, need no resize (as in Lucent).

    Returns a :class:`FeatureVis`. The model comes back as it was (training flags,
    ``requires_grad``, no hooks), whatever happens inside.
    """
    handle = as_model(model)
    plan = _plan(
        handle, objective, size, steps, preset, param, transforms, optimizer, lr, seed,
        generator, batch_size, memory_budget_mb, frames, normalize, resize,
    )  # fmt: skip
    parts = [slice(s, min(s + plan.chunk, plan.total)) for s in range(0, plan.total, plan.chunk)]
    with Ascent(handle, plan) as ascent:
        results = [ascent.optimise(part, progress, len(parts)) for part in parts]
    settings: dict[str, Any] = {
        "preset": preset if isinstance(preset, str) else "custom",
        **plan.preset.__dict__,
        "param": (param or plan.preset.param) if isinstance(param, str) or param is None
        else "custom",
        "transforms": transforms if transforms is None or isinstance(transforms, str) else "custom",
        "size": list(plan.hw),
        "seed": plan.seed,
        "batch_size": plan.chunk,
    }  # fmt: skip
    if settings["transforms"] is None:
        settings["transforms"] = plan.preset.transforms
    return FeatureVis(
        pixels=torch.cat([r.pixels for r in results]),
        history=torch.cat([r.history for r in results], dim=1),
        scores=torch.cat([r.scores for r in results]),
        labels=list(plan.objective.labels or [plan.objective.name] * plan.total),
        objective=plan.objective.name,
        settings=settings,
        frames=torch.cat([r.frames for r in results], dim=1),
    )


def _plan(
    handle: Model,
    objective: Objective | str,
    size: int | tuple[int, int] | None,
    steps: int | None,
    preset: str | Preset,
    param: ParamFn | str | None,
    transforms: Sequence[tf.Transform] | str | None,
    optimizer: str | None,
    lr: float | None,
    seed: int | None,
    generator: torch.Generator | None,
    batch_size: int | None,
    memory_budget_mb: float | None,
    frames: int,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None,
    resize: bool | None,
) -> Plan:
    """Every setting of a run checked and resolved (see :func:`featurevis`)."""
    from convlens.techniques.attribution.base import make_generator

    chosen = get_preset(preset).with_options(steps=steps, optimizer=optimizer, lr=lr)
    if chosen.steps < 1:
        raise ValueError(f"expected steps >= 1, got {chosen.steps}")
    if chosen.optimizer not in ("adam", "rms"):
        raise ValueError(f"expected optimizer 'adam' or 'rms', got {chosen.optimizer!r}")
    if frames < 0:
        raise ValueError(f"expected frames >= 0, got {frames}")
    obj = as_objective(objective).bind(handle)
    if normalize is None:
        if not isinstance(handle.preprocess, Preprocessing):
            raise ValueError(
                "featurevis needs the model's normalisation as a function of pixels: give "
                "normalize=(pixels (B, 3, H, W) in [0, 1] -> network input)"
            )
        normalize = handle.preprocess.normalize
    try:
        input_hw: tuple[int, int] | None = tuple(handle.input_shape[1:])  # type: ignore[assignment]
    except ValueError:
        input_hw = None
    if size is None:
        hw = input_hw or (128, 128)
    elif isinstance(size, int):
        hw = (size, size)
    else:
        hw = (int(size[0]), int(size[1]))
    if min(hw) < 8:
        raise ValueError(f"expected an image of at least 8x8 pixels, got {hw}")
    if resize not in (None, True, False):
        raise ValueError(f"expected resize None (probe), True or False, got {resize!r}")
    gen, seed_used = make_generator(seed, generator)
    total = obj.batch or 1
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size!r}")
        chunk = batch_size
    else:
        chunk = _chunk_size(handle, hw, memory_budget_mb, total)
    keep = {round(i * (chosen.steps - 1) / max(frames - 1, 1)) for i in range(frames)}
    return Plan(
        chosen, obj, normalize, hw, input_hw, resize, gen, seed_used, total, chunk,
        _make_param(chosen, param), _make_transform(chosen, transforms), keep,
    )  # fmt: skip
