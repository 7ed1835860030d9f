"""What training writes beside the weights: TensorBoard scalars, histograms and the graph, and
filter snapshots turned into an animation of the filters evolving."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

# ------------------------------------------------------------------------ filter pictures


def filter_picture(
    weight: torch.Tensor, *, title: str | None = None, max_filters: int = 64
) -> Image.Image:
    """A grid of a conv layer's filters, ``weight`` shaped ``(out, in, k, k)``.

    Three input channels (a first layer on RGB): each filter is shown as a colour patch,
    ``0.5 + 0.5 * w / max|w|`` per channel. Otherwise each filter's mean over its input
    channels, coloured with the diverging ``coolwarm`` map, white = 0. One scale, ``max|w|``
    over the filters shown, for the whole picture, so filters are comparable (and frames of
    an animation do not flicker). Every tap is drawn as a square of about 8 pixels; at most
    ``max_filters`` filters (the first ones) are shown.
    """
    from convlens.core import render

    if weight.dim() != 4:
        raise ValueError(f"expected conv weights (out, in, kh, kw), got {tuple(weight.shape)}")
    w = weight.detach().float().cpu()[:max_filters]
    kh, kw = w.shape[2:]
    zoom = max(1, round(24 / max(kh, kw)))
    size = (kw * zoom, kh * zoom)
    tiles: list[Image.Image] = []
    if w.shape[1] == 3:
        scale = float(w.abs().max()) or 1.0
        patches = (0.5 + 0.5 * w / scale).clamp(0, 1)
        tiles = [render.to_pil(p).resize(size, Image.Resampling.NEAREST) for p in patches]
    else:
        means = w.mean(1)
        scale = float(means.abs().max()) or 1.0
        tiles = [
            render.heatmap(
                m.numpy(),
                "coolwarm",
                norm="absolute",
                vmin=-scale,
                vmax=scale,
                size=size,
                resample="nearest",
            )
            for m in means
        ]
    return render.grid(tiles, ncols=math.ceil(math.sqrt(len(tiles))), pad=2, title=title)


def _same_size(frames: list[Image.Image]) -> list[Image.Image]:
    width = max(f.width for f in frames)
    height = max(f.height for f in frames)
    padded = []
    for frame in frames:
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        canvas.paste(frame, ((width - frame.width) // 2, 0))
        padded.append(canvas)
    return padded


def write_animation(frames: list[Image.Image], gif: Path, strip: Path) -> None:
    """``gif``: every frame, 0.4 s each, looping; ``strip``: up to 8 frames evenly spaced."""
    from convlens.core import render

    frames = _same_size(frames)
    first, *rest = frames
    first.save(gif, save_all=True, append_images=rest, duration=400, loop=0, optimize=False)
    count = min(8, len(frames))
    picks = sorted({round(i * (len(frames) - 1) / max(1, count - 1)) for i in range(count)})
    render.save_png(render.grid([frames[i] for i in picks], ncols=len(picks), pad=4), strip)


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            "TensorBoard logs need the tensorboard package: pip install 'convlens[train]' "
            "(or train with tensorboard=False / --no-tensorboard)"
        ) from err
    return SummaryWriter(log_dir=str(folder))


def output_folder(out: str | os.PathLike[str] | None, tensorboard: bool) -> tuple[Path | None, Any]:
    """The run's output folder (created) and its TensorBoard writer (``None`` when off or when
    nothing is written)."""
    if out is None:
        return None, None
    folder = Path(os.fspath(out)).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder, _tensorboard_writer(folder / "tensorboard") if tensorboard else None


class Snapshots:
    """Filter pictures of some conv layers, taken at chosen steps, for TensorBoard and the
    animations; ``take`` does nothing when not ``enabled`` or when that step is taken."""

    def __init__(self, module: nn.Module, layers: list[str], writer: Any, enabled: bool) -> None:
        self.modules = dict(module.named_modules())
        self.layers = layers if enabled else []
        self.writer = writer
        self.steps: list[int] = []
        self.frames: dict[str, list[Image.Image]] = {name: [] for name in self.layers}

    def take(self, step: int) -> None:
        if not self.layers or (self.steps and self.steps[-1] == step):
            return
        self.steps.append(step)
        for name in self.layers:
            picture = filter_picture(self.modules[name].weight, title=f"{name} · step {step}")
            self.frames[name].append(picture)
            if self.writer is not None:
                self.writer.add_image(
                    f"filters/{name}", np.asarray(picture), step, dataformats="HWC"
                )


def log_graph(writer: Any, module: nn.Module, example: torch.Tensor) -> None:
    import warnings

    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            writer.add_graph(module, example)
    finally:
        module.train()


def scalar_tag(key: str, loss_key: str) -> str | None:
    """The TensorBoard tag of a history entry: the training loss ``loss/train``, ``train_X``
    ``X/train``, ``val_X`` ``X/val``, the speed ``speed/images_per_second``; ``None`` for the
    epoch, step and seconds."""
    if key == loss_key:
        return "loss/train"
    for split in ("train", "val"):
        if key.startswith(f"{split}_"):
            return f"{key[len(split) + 1 :]}/{split}"
    if key == "images_per_second":
        return "speed/images_per_second"
    return None


def log_epoch(
    writer: Any, module: nn.Module, row: dict[str, Any], step: int, loss_key: str
) -> None:
    """One epoch's history row as scalars (see :func:`scalar_tag`) and the weights as
    histograms, at ``step``."""
    for key, value in row.items():
        tag = scalar_tag(key, loss_key)
        if tag is not None:
            writer.add_scalar(tag, value, step)
    for name, parameter in module.named_parameters():
        writer.add_histogram(f"weights/{name}", parameter.detach().cpu(), step)
