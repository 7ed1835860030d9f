"""Train a small image classifier and watch its filters evolve (systems 1 and 3 of the mission).

:func:`train` reads an image-folder data set into memory, trains a network from
:mod:`convlens.architectures` (or the user's own) with Adam, batched augmentation and early
stopping on the validation loss, and writes an output folder::

    out/model.pt            a convlens checkpoint (``convlens.load("out/model.pt")``)
    out/metrics.json        per-epoch loss and accuracy, best epoch, final accuracies, speed
    out/tensorboard/        scalars, weight histograms, the graph, filter images
    out/filters/conv1.gif   one frame per filter snapshot, labelled with its step
    out/filters/conv1.png   a strip of (up to 8) snapshots side by side

Data layouts (``ROOT`` is what the user passes):

* ``ROOT/train/<class>/*.png`` and ``ROOT/val/<class>/...`` (also ``valid``/``validation``),
  optionally ``ROOT/test/<class>/...``; without a ``val`` folder the training folder is
  split. Other folders (``masks/``) and files (``index.json``) in ``ROOT`` are ignored.
* ``ROOT/<class>/*.png``: one folder of class folders, split into train and validation
  (stratified, seeded; 20 % validation by default).

Every picture is loaded with :mod:`convlens.images`, resized and centre-cropped to the input
size with the checkpoint's own :class:`~convlens.model.Preprocessing` (so training and
inference see the same pixels) and kept as one ``uint8`` tensor ``(N, 3, H, W)``.

Repeatability: all randomness comes from the seed. Shuffling and augmentation draw from
``torch.Generator`` objects made from it; weight initialisation and dropout (which only use
torch's global generator) run inside ``torch.random.fork_rng`` seeded from it, so the global
random state is the same after :func:`train` as before. The same seed gives bit-identical
weights on the CPU.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from convlens import architectures
from convlens.images import ImageError, list_images, load_image
from convlens.model import Model, Preprocessing

__all__ = [
    "Augmentation",
    "DataSplits",
    "ImageSet",
    "TrainEvent",
    "TrainResult",
    "augment",
    "filter_picture",
    "load_folder",
    "train",
]

CHECKPOINT_VERSION = 1
VAL_NAMES = ("val", "valid", "validation")
_SHUFFLE_SEED, _AUGMENT_SEED, _TORCH_SEED, _SPLIT_SEED = 0, 1, 2, 3  # offsets from the seed
_FILLS = {"nearest": "border", "reflect": "reflection", "constant": "zeros"}


# ---------------------------------------------------------------------------------- data


@dataclass
class ImageSet:
    """Pictures and their class indices, in memory.

    ``pixels`` is ``(N, 3, H, W)`` ``uint8`` (RGB, 0-255); ``targets`` ``(N,)`` ``int64``;
    ``names`` one name per picture (the file path relative to the data root).
    """

    pixels: torch.Tensor
    targets: torch.Tensor
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.pixels.dim() != 4 or self.pixels.shape[1] != 3 or self.pixels.dtype != torch.uint8:
            raise ValueError(
                f"expected pixels (N, 3, H, W) uint8, got {tuple(self.pixels.shape)} "
                f"{self.pixels.dtype}"
            )
        if self.targets.shape != (len(self.pixels),):
            raise ValueError(
                f"expected {len(self.pixels)} targets, got shape {tuple(self.targets.shape)}"
            )
        self.targets = self.targets.long()

    def __len__(self) -> int:
        return len(self.pixels)

    def counts(self, classes: int) -> list[int]:
        """Pictures per class."""
        return torch.bincount(self.targets, minlength=classes).tolist()


@dataclass
class DataSplits:
    """Training, validation and (optional) test pictures with their class names."""

    classes: list[str]
    train: ImageSet
    val: ImageSet | None = None
    test: ImageSet | None = None
    layout: str = "in memory"
    root: str | None = None

    def summary(self) -> dict[str, Any]:
        k = len(self.classes)
        return {
            "root": self.root,
            "layout": self.layout,
            "classes": self.classes,
            "input_size": list(self.train.pixels.shape[2:]),
            **{
                f"{name}_per_class": part.counts(k)
                for name, part in (("train", self.train), ("val", self.val), ("test", self.test))
                if part is not None
            },
        }


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_images(folder: Path) -> bool:
    try:
        return bool(list_images(folder))
    except ImageError:
        return False


def _listing(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, class index) for every picture in ``folder/<class>/``."""
    known = {name: i for i, name in enumerate(classes)}
    found: list[tuple[Path, int]] = []
    for sub in _class_folders(folder):
        if not _has_images(sub):
            continue
        if sub.name not in known:
            raise ValueError(
                f"{sub} is a class the training folder does not have; expected classes "
                f"{', '.join(classes)}"
            )
        found.extend((path, known[sub.name]) for path in list_images(sub))
    if not found:
        raise ImageError(f"no class folders with images in {folder}")
    return found


def _split(
    listing: list[tuple[Path, int]], fraction: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Stratified split: ``round(fraction * n)`` pictures of every class go to validation
    (at least one when the class has two or more), chosen by a generator seeded with ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"expected a validation fraction in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    train: list[tuple[Path, int]] = []
    val: list[tuple[Path, int]] = []
    for k in sorted({label for _, label in listing}):
        members = [item for item in listing if item[1] == k]
        order = torch.randperm(len(members), generator=generator).tolist()
        n_val = round(fraction * len(members))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        chosen = set(order[:n_val])
        for i, item in enumerate(members):
            (val if i in chosen else train).append(item)
    return train, val


def _read(
    listing: list[tuple[Path, int]],
    root: Path,
    preprocess: Preprocessing,
    progress: Callable[[int, int], None] | None,
) -> ImageSet:
    height, width = preprocess.input_shape()[1:]
    pixels = torch.empty((len(listing), 3, height, width), dtype=torch.uint8)

    def one(path: Path) -> np.ndarray:
        picture = preprocess.picture(load_image(path))
        array = np.array(picture, dtype=np.uint8)  # a writable copy
        if array.shape != (height, width, 3):
            raise ImageError(f"{path}: expected {height}x{width} after resizing, got {array.shape}")
        return array

    # PIL releases the GIL while decoding and resizing, so a few threads overlap the files.
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, array in enumerate(pool.map(one, [path for path, _ in listing])):
            pixels[i] = torch.from_numpy(array).permute(2, 0, 1)
            if progress is not None and (i + 1) % 64 == 0:
                progress(i + 1, len(listing))
    if progress is not None:
        progress(len(listing), len(listing))
    targets = torch.tensor([label for _, label in listing], dtype=torch.long)
    names = [str(path.relative_to(root)) for path, _ in listing]
    return ImageSet(pixels, targets, names)


def load_folder(
    root: str | os.PathLike[str],
    *,
    input_size: int | tuple[int, int] = 128,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> DataSplits:
    """Read an image-folder data set (see the module docstring for the layouts) into memory.

    Pictures are resized (shorter side) and centre-cropped to ``input_size`` (H or (H, W))
    with bilinear resampling. The split of a single folder is stratified and seeded.
    ``progress(done, total)`` is called while files are read.
    """
    base = Path(os.fspath(root)).expanduser()
    if not base.exists():
        raise FileNotFoundError(f"data folder {str(base)!r} does not exist")
    if not base.is_dir():
        raise ValueError(f"{base} is not a folder; expected ROOT/train/<class>/ or ROOT/<class>/")
    height, width = architectures._pair(input_size, "input_size")
    preprocess = _picture_preprocessing((height, width))
    train_dir = base / "train"
    val_dir = next((base / n for n in VAL_NAMES if (base / n).is_dir()), None)
    test_dir = base / "test"
    if train_dir.is_dir():
        classes = [p.name for p in _class_folders(train_dir)]
        if len(classes) < 2:
            raise ValueError(f"expected at least 2 class folders in {train_dir}, got {classes}")
        train_list = _listing(train_dir, classes)
        if val_dir is not None:
            val_list = _listing(val_dir, classes)
            layout = f"train/ and {val_dir.name}/ folders"
        else:
            train_list, val_list = _split(train_list, val_fraction, seed)
            layout = f"train/ folder split {1 - val_fraction:.0%}/{val_fraction:.0%}"
        test_list = _listing(test_dir, classes) if test_dir.is_dir() else []
    else:
        classes = [p.name for p in _class_folders(base) if _has_images(p)]
        if len(classes) < 2:
            raise ValueError(
                f"expected ROOT/train/<class>/ or at least 2 class folders in {base}, got {classes}"
            )
        train_list, val_list = _split(_listing(base, classes), val_fraction, seed)
        test_list = []
        layout = f"class folders split {1 - val_fraction:.0%}/{val_fraction:.0%}"
    total = len(train_list) + len(val_list) + len(test_list)
    offset = 0

    def part(listing: list[tuple[Path, int]]) -> ImageSet:
        nonlocal offset
        start = offset

        def report(done: int, _count: int) -> None:
            if progress is not None:
                progress(start + done, total)

        offset += len(listing)
        return _read(listing, base, preprocess, report)

    return DataSplits(
        classes=classes,
        train=part(train_list),
        val=part(val_list) if val_list else None,
        test=part(test_list) if test_list else None,
        layout=layout,
        root=str(base),
    )


def _picture_preprocessing(
    size: tuple[int, int],
    channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Preprocessing:
    height, width = size
    return Preprocessing(
        crop=(height, width),
        resize=min(height, width),
        mean=tuple(mean) if mean is not None else (0.0,) * channels,
        std=tuple(std) if std is not None else (1.0,) * channels,
        channels=channels,
    )


def _statistics(pixels: torch.Tensor, channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of pictures in [0, 1] (luma when grey),
    rounded to 4 decimals, computed in chunks so no float copy of the whole set exists."""
    plain = _picture_preprocessing(tuple(pixels.shape[2:]), channels)  # type: ignore[arg-type]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(pixels), 256):
        x = plain.normalize(pixels[start : start + 256].float() / 255).double()
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    count = len(pixels) * pixels.shape[2] * pixels.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


# -------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augmentation:
    """Random geometric changes applied to every training batch (like Keras'
    ``ImageDataGenerator`` in the explorer system). A range of 0 (or ``flip=False``) switches
    that change off.

    * ``rotation``: angle in degrees, uniform in ``[-rotation, rotation]``, positive turns
      the content counter-clockwise;
    * ``width_shift`` / ``height_shift``: shift as a fraction of the width / height, uniform
      in ``[-s, s]``, positive moves the content right / down;
    * ``zoom``: scale uniform in ``[1 - zoom, 1 + zoom]``, above 1 enlarges the content;
    * ``flip``: mirror left-right with probability 1/2;
    * ``brightness``: multiply the pixels by a factor uniform in ``[1 - b, 1 + b]`` (off by
      default: no colour jitter unless asked);
    * ``fill``: what appears where the content moved away: ``"nearest"`` (the edge pixels,
      Keras' default), ``"reflect"`` or ``"constant"`` (black).

    Rotation, shift and zoom form one affine map per picture, applied to the whole batch with
    one ``affine_grid`` + ``grid_sample`` (bilinear).
    """

    rotation: float = 45.0
    width_shift: float = 0.2
    height_shift: float = 0.2
    zoom: float = 0.2
    flip: bool = True
    brightness: float = 0.0
    fill: str = "nearest"

    def __post_init__(self) -> None:
        for name in ("rotation", "width_shift", "height_shift", "zoom", "brightness"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
                raise ValueError(f"expected augmentation {name} >= 0, got {value!r}")
        if self.zoom >= 1 or self.brightness >= 1:
            raise ValueError(
                f"expected zoom and brightness below 1, got {self.zoom} and {self.brightness}"
            )
        if self.fill not in _FILLS:
            raise ValueError(f"expected fill among {sorted(_FILLS)}, got {self.fill!r}")

    @classmethod
    def off(cls) -> Augmentation:
        """No augmentation at all (the identity)."""
        return cls(0.0, 0.0, 0.0, 0.0, False, 0.0)

    @property
    def enabled(self) -> bool:
        return self.geometric or self.flip or self.brightness > 0

    @property
    def geometric(self) -> bool:
        return any(v > 0 for v in (self.rotation, self.width_shift, self.height_shift, self.zoom))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch ``(N, C, H, W)`` of pixels in [0, 1] with random draws from
        ``generator`` (a CPU generator); returns a new tensor, or ``pixels`` itself when off."""
        if not self.enabled:
            return pixels
        n = len(pixels)

        def uniform(limit: float) -> torch.Tensor:
            return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * limit

        angle = uniform(self.rotation) if self.rotation > 0 else None
        shift = (
            torch.stack([uniform(self.width_shift), uniform(self.height_shift)], 1)
            if self.width_shift > 0 or self.height_shift > 0
            else None
        )
        zoom = 1 + uniform(self.zoom) if self.zoom > 0 else None
        flip = torch.rand(n, generator=generator) < 0.5 if self.flip else None
        brightness = 1 + uniform(self.brightness) if self.brightness > 0 else None
        return augment(
            pixels,
            angle=angle,
            shift=shift,
            zoom=zoom,
            flip=flip,
            brightness=brightness,
            fill=self.fill,
        )


def _per_image(value: Any, n: int, width: int | None = None) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float64)
    shape = (n,) if width is None else (n, width)
    if tensor.dim() == 0 or (width is not None and tensor.dim() == 1):
        tensor = tensor.expand(shape)
    if tuple(tensor.shape) != shape:
        raise ValueError(
            f"expected a number or a tensor of shape {shape}, got {tuple(tensor.shape)}"
        )
    return tensor


def augment(
    pixels: torch.Tensor,
    *,
    angle: float | torch.Tensor | None = None,
    shift: Sequence[float] | torch.Tensor | None = None,
    zoom: float | torch.Tensor | None = None,
    flip: bool | torch.Tensor | None = None,
    brightness: float | torch.Tensor | None = None,
    fill: str = "nearest",
) -> torch.Tensor:
    """Apply given transforms to a batch ``(N, C, H, W)`` of pixels in [0, 1].

    Each transform is one number for every picture or a tensor with one value per picture
    (``shift``: ``(dx, dy)`` or ``(N, 2)``, fractions of the width and height). Conventions as
    in :class:`Augmentation`: the content is zoomed by ``zoom`` and turned counter-clockwise
    by ``angle`` degrees about the centre, then shifted right by ``dx * W`` and down by
    ``dy * H`` pixels, then mirrored left-right where ``flip`` is true, then scaled by
    ``brightness`` and clipped to [0, 1]. ``None`` leaves that transform out; with no
    geometric transform no resampling happens (the pixels come back exactly).
    """
    if pixels.dim() != 4:
        raise ValueError(f"expected an image batch (N, C, H, W), got {tuple(pixels.shape)}")
    if fill not in _FILLS:
        raise ValueError(f"expected fill among {sorted(_FILLS)}, got {fill!r}")
    n, _, height, width = pixels.shape
    out = pixels
    if angle is not None or shift is not None or zoom is not None:
        radians = torch.deg2rad(_per_image(0.0 if angle is None else angle, n))
        dxy = _per_image((0.0, 0.0) if shift is None else shift, n, 2)
        scale = _per_image(1.0 if zoom is None else zoom, n)
        if (scale <= 0).any():
            raise ValueError("expected zoom > 0")
        # Output pixel p (centred pixel units, y down) shows input pixel R^-1 (p - s) / z.
        # In affine_grid's normalised coordinates (x * 2/W, y * 2/H, align_corners=False):
        cos, sin = torch.cos(radians) / scale, torch.sin(radians) / scale
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = -sin * height / width
        theta[:, 1, 0] = sin * width / height
        theta[:, 1, 1] = cos
        offset = 2 * dxy  # the shift in normalised units
        theta[:, :, 2] = -(theta[:, :, :2] @ offset.unsqueeze(-1)).squeeze(-1)
        theta = theta.to(pixels.device, pixels.dtype)
        grid = F.affine_grid(theta, [n, pixels.shape[1], height, width], align_corners=False)
        out = F.grid_sample(
            pixels, grid, mode="bilinear", padding_mode=_FILLS[fill], align_corners=False
        )
    if flip is not None:
        mask = torch.as_tensor(flip, dtype=torch.bool, device=pixels.device).expand(n)
        out = torch.where(mask.view(n, 1, 1, 1), out.flip(-1), out)
    if brightness is not None:
        factor = _per_image(brightness, n).to(pixels.device, pixels.dtype)
        out = (out * factor.view(n, 1, 1, 1)).clamp(0, 1)
    return out


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
    from convlens import render

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


def _write_animation(frames: list[Image.Image], gif: Path, strip: Path) -> None:
    """``gif``: every frame, 0.4 s each, looping; ``strip``: up to 8 frames evenly spaced."""
    from convlens import render

    frames = _same_size(frames)
    first, *rest = frames
    first.save(gif, save_all=True, append_images=rest, duration=400, loop=0, optimize=False)
    count = min(8, len(frames))
    picks = sorted({round(i * (len(frames) - 1) / max(1, count - 1)) for i in range(count)})
    render.save_png(render.grid([frames[i] for i in picks], ncols=len(picks), pad=4), strip)


# ------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class TrainEvent:
    """What :func:`train` reports to its ``progress`` callback.

    ``stage`` is ``"load"`` (reading pictures: ``done``/``total`` files), ``"step"`` (after
    every optimiser step: ``done``/``total`` steps, ``metrics`` has the batch ``loss``),
    ``"epoch"`` (an epoch ended: ``metrics`` holds its row of the history) or ``"done"``.
    ``message`` is a one-line summary for people.
    """

    stage: str
    done: int
    total: int
    epoch: int = 0
    epochs: int = 0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


TrainProgress = Callable[[TrainEvent], None]


@dataclass
class TrainResult:
    """What :func:`train` made: the trained :class:`~convlens.model.Model` (best weights,
    eval mode), the per-epoch ``history``, the ``metrics`` written to ``metrics.json`` and the
    written files (``checkpoint``, ``metrics_file``, ``tensorboard``, ``filters`` per layer)."""

    model: Model
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    out: Path | None = None
    checkpoint: Path | None = None
    metrics_file: Path | None = None
    tensorboard: Path | None = None
    filters: dict[str, dict[str, Path]] = field(default_factory=dict)
    snapshots: list[int] = field(default_factory=list)

    @property
    def best_epoch(self) -> int:
        return int(self.metrics["best_epoch"])

    @property
    def stopped_early(self) -> bool:
        return bool(self.metrics["stopped_early"])


def _augmentation(augment: bool | Augmentation | dict[str, Any] | None) -> Augmentation:
    if augment is None or augment is False:
        return Augmentation.off()
    if augment is True:
        return Augmentation()
    if isinstance(augment, Augmentation):
        return augment
    if isinstance(augment, dict):
        return Augmentation(**augment)
    raise TypeError(f"expected augment as a bool, an Augmentation or a dict, got {augment!r}")


def _conv_layers(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]


def _filter_layers(module: nn.Module, filters: str | Sequence[str] | None) -> list[str]:
    convs = _conv_layers(module)
    if filters is None:
        return convs[:4]
    given = filters.split(",") if isinstance(filters, str) else list(filters)
    wanted = [name.strip() for name in given if name.strip()]
    modules = dict(module.named_modules())
    for name in wanted:
        if name not in modules:
            from convlens.naming import unknown

            raise unknown("layer", name, convs or list(modules))
        weight = getattr(modules[name], "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
            raise ValueError(
                f"layer {name!r} ({type(modules[name]).__name__}) has no conv weights "
                f"(out, in, kh, kw); conv layers: {', '.join(convs)}"
            )
    return wanted


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            "TensorBoard logs need the tensorboard package: pip install 'convlens[train]' "
            "(or train with tensorboard=False / --no-tensorboard)"
        ) from err
    return SummaryWriter(log_dir=str(folder))


def _output_folder(
    out: str | os.PathLike[str] | None, tensorboard: bool
) -> tuple[Path | None, Any]:
    """The run's output folder (created) and its TensorBoard writer (``None`` when off or when
    nothing is written)."""
    if out is None:
        return None, None
    folder = Path(os.fspath(out)).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder, _tensorboard_writer(folder / "tensorboard") if tensorboard else None


def _evaluate(
    module: nn.Module,
    data: ImageSet,
    preprocess: Preprocessing,
    device: torch.device,
    batch_size: int,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``module`` (eval mode) on ``data``."""
    was_training = module.training
    module.eval()
    loss_sum, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            x = data.pixels[start : start + batch_size].to(device).float().div_(255)
            y = data.targets[start : start + batch_size].to(device)
            logits = module(preprocess.normalize(x))
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    module.train(was_training)
    return loss_sum / max(1, len(data)), correct / max(1, len(data))


def _check_output(module: nn.Module, shape: tuple[int, int, int], classes: int) -> None:
    with torch.no_grad():
        was_training = module.training
        module.eval()
        try:
            out = module(torch.zeros(2, *shape, device=next(module.parameters()).device))
        except RuntimeError as err:
            raise ValueError(f"the network does not take input (N, {shape}): {err}") from None
        finally:
            module.train(was_training)
    if out.dim() != 2 or out.shape[1] != classes:
        raise ValueError(
            f"expected the network to return (N, {classes}) class scores for {classes} classes, "
            f"got {tuple(out.shape)}"
        )


class _Snapshots:
    """Filter pictures of some conv layers, taken at chosen steps, for TensorBoard and the
    animations."""

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


@dataclass
class _Fit:
    """How the loop went: one history row per epoch, the best epoch and its weights."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False
    steps: int = 0
    seconds: float = 0.0
    pictures: int = 0


def _fit(
    module: nn.Module,
    splits: DataSplits,
    preprocess: Preprocessing,
    augmentation: Augmentation,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    early_stopping: int | None,
    snapshots: _Snapshots,
    snapshot_every: int,
    writer: Any,
    device: torch.device,
    report: TrainProgress,
) -> _Fit:
    """The training loop: Adam on cross-entropy, evaluation after every epoch, early stopping
    on the validation loss (the training loss when there is no validation set)."""
    shuffle = torch.Generator().manual_seed(seed + _SHUFFLE_SEED)
    randomness = torch.Generator().manual_seed(seed + _AUGMENT_SEED)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    data = splits.train
    total_steps = epochs * math.ceil(len(data) / batch_size)
    fit = _Fit()
    snapshots.take(0)
    module.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(data), generator=shuffle)
        loss_sum, correct, seen = 0.0, 0, 0
        started = time.perf_counter()
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            x = data.pixels[index].to(device).float().div_(255)
            y = data.targets[index].to(device)
            x = preprocess.normalize(augmentation(x, randomness))
            logits = module(x.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            fit.steps += 1
            batch_loss = float(loss.detach())
            loss_sum += batch_loss * len(index)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(index)
            if snapshot_every and fit.steps % snapshot_every == 0:
                snapshots.take(fit.steps)
            report(
                TrainEvent(
                    "step",
                    fit.steps,
                    total_steps,
                    epoch,
                    epochs,
                    f"epoch {epoch}/{epochs} · loss {batch_loss:.4f}",
                    {"loss": batch_loss},
                )
            )
        seconds = time.perf_counter() - started
        fit.seconds += seconds
        fit.pictures += seen
        row: dict[str, float] = {
            "epoch": epoch,
            "step": fit.steps,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "seconds": round(seconds, 3),
            "images_per_second": round(seen / seconds, 1),
        }
        if splits.val is not None:
            val_loss, val_accuracy = _evaluate(module, splits.val, preprocess, device, batch_size)
            row.update(val_loss=val_loss, val_accuracy=val_accuracy)
        fit.history.append(row)
        monitored = row.get("val_loss", row["train_loss"])
        if monitored < fit.best_loss:
            fit.best_loss, fit.best_epoch = monitored, epoch
            fit.best_state = copy.deepcopy(module.state_dict())
        if writer is not None:
            _log_epoch(writer, module, row, fit.steps)
        message = (
            f"epoch {epoch}/{epochs} · loss {row['train_loss']:.4f} · "
            f"acc {row['train_accuracy']:.1%}"
        )
        if "val_loss" in row:
            message += f" · val loss {row['val_loss']:.4f} · val acc {row['val_accuracy']:.1%}"
        report(TrainEvent("epoch", fit.steps, total_steps, epoch, epochs, message, dict(row)))
        if early_stopping and epoch - fit.best_epoch >= early_stopping and epoch < epochs:
            fit.stopped_early = True
            break
    snapshots.take(fit.steps)
    return fit


@contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block, the previous setting after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _resolve_size(
    architecture: str, options: dict[str, Any], input_size: int | tuple[int, int] | None
) -> tuple[int, int]:
    if input_size is None:
        default = None
        if not architectures.is_factory(architecture):
            default = architectures.config(architecture).get("input_size")
        input_size = options.get("input_size", default) or 128
    return architectures._pair(input_size, "input_size")


def train(
    data: str | os.PathLike[str] | DataSplits,
    out: str | os.PathLike[str] | None = None,
    *,
    architecture: str = "explorer_cnn",
    options: dict[str, Any] | None = None,
    input_size: int | tuple[int, int] | None = None,
    channels: int = 3,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    augment: bool | Augmentation | dict[str, Any] = True,
    val_fraction: float = 0.2,
    early_stopping: int | None = 5,
    filters: str | Sequence[str] | None = None,
    snapshot_every: int = 50,
    tensorboard: bool = True,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    progress: TrainProgress | None = None,
    command: Sequence[str] | None = None,
) -> TrainResult:
    """Train a classifier on an image folder and return the trained model.

    Parameters
    ----------
    data:
        An image folder (``ROOT/train/<class>/``, ``ROOT/val/...``, ``ROOT/test/...``, or
        ``ROOT/<class>/``; see the module docstring) or a :class:`DataSplits` in memory.
    out:
        Output folder for ``model.pt``, ``metrics.json``, ``tensorboard/`` and ``filters/``;
        ``None`` writes nothing.
    architecture:
        A registered name (``explorer_cnn``, ``scratch_cnn``; see
        :func:`convlens.architectures.names`) or ``"package.module:factory"``.
    options:
        Architecture options (``widths``, ``dense``, ``dropout``, ...). ``num_classes``,
        ``in_channels`` and ``input_size`` are filled in from the data.
    input_size:
        Picture size H or (H, W); default: the architecture's (128 for ``explorer_cnn``).
    channels:
        3 (RGB) or 1 (grey: the luma of the RGB picture).
    epochs, batch_size, lr:
        Passes over the training pictures, pictures per step, Adam's learning rate.
    seed:
        Seeds the split, the initial weights, the shuffling, the augmentation and dropout.
    augment:
        ``True`` (the defaults of :class:`Augmentation`), ``False``, an
        :class:`Augmentation` or a dict of its fields.
    val_fraction:
        Share of the training pictures held out for validation when the data has no
        validation folder.
    early_stopping:
        Stop after this many epochs without a lower validation loss (``None``/0: never).
        The weights of the epoch with the lowest validation loss are kept either way.
    filters, snapshot_every:
        Conv layers (names or one comma-separated string) whose filters are drawn every
        ``snapshot_every`` steps, before the first step and after the last, into
        TensorBoard and ``filters/<layer>.gif``/``.png`` (see :func:`filter_picture`).
        Default: the first four conv layers. ``snapshot_every=0`` switches snapshots off.
    tensorboard:
        Write TensorBoard logs (needs ``pip install 'convlens[train]'``).
    device:
        Where to train (``"cpu"``, ``"cuda"``). Only the CPU promises bit-identical repeats
        (with the same number of threads).
    threads:
        CPU threads for the run (``torch.set_num_threads``, restored afterwards); default:
        torch's setting. When other jobs share the cores, 1 is often several times faster
        than oversubscribing them.
    progress:
        Called with a :class:`TrainEvent` while loading and after every step and epoch.
    command:
        The command line that asked for this run, recorded in ``metrics.json``.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(
            f"expected epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}"
        )
    if channels not in (1, 3):
        raise ValueError(f"expected channels 1 or 3, got {channels}")
    if snapshot_every < 0:
        raise ValueError(f"expected snapshot_every >= 0, got {snapshot_every}")
    if threads is not None and threads < 1:
        raise ValueError(f"expected threads >= 1, got {threads}")
    augmentation = _augmentation(augment)
    arch_options = dict(options or {})
    size = _resolve_size(architecture, arch_options, input_size)
    target = torch.device(device)
    started = time.perf_counter()

    def report(event: TrainEvent) -> None:
        if progress is not None:
            progress(event)

    # -- data: pictures in memory, normalised by the training set's statistics --------------
    if isinstance(data, DataSplits):
        splits = data
        if tuple(splits.train.pixels.shape[2:]) != size:
            raise ValueError(
                f"expected pictures of {size[0]}x{size[1]} (input_size), got "
                f"{tuple(splits.train.pixels.shape[2:])}"
            )
    else:
        splits = load_folder(
            data,
            input_size=size,
            val_fraction=val_fraction,
            seed=seed + _SPLIT_SEED,
            progress=lambda done, total: report(
                TrainEvent("load", done, total, message=f"reading pictures {done}/{total}")
            ),
        )
    classes = splits.classes
    mean, std = _statistics(splits.train.pixels, channels)
    preprocess = _picture_preprocessing(size, channels, mean, std)
    input_shape = (channels, *size)

    # -- network: everything that draws from torch's global generator runs in fork_rng ----
    arch_options.update(num_classes=len(classes), in_channels=channels, input_size=list(size))
    arch_record: dict[str, Any]
    if architectures.is_factory(architecture):
        arch_record = {"factory": architecture, "options": arch_options}
    else:
        arch_options = architectures.config(architecture, **arch_options)
        arch_record = {"name": architecture, "options": arch_options}
    out_dir, writer = _output_folder(out, tensorboard)
    fork_devices = [target.index or 0] if target.type == "cuda" else []
    try:
        with _cpu_threads(threads), torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed + _TORCH_SEED)
            module = architectures.build(architecture, **arch_options).to(target)
            _check_output(module, input_shape, len(classes))
            layers = _filter_layers(module, filters)
            # channels-last convolutions are faster on CPUs (oneDNN); the values are the same
            module = module.to(memory_format=torch.channels_last)
            if writer is not None:
                _log_graph(writer, module, torch.zeros(1, *input_shape, device=target))
            snapshots = _Snapshots(
                module,
                layers,
                writer,
                enabled=snapshot_every > 0 and (out_dir is not None or filters is not None),
            )
            fit = _fit(
                module,
                splits,
                preprocess,
                augmentation,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                early_stopping=early_stopping if splits.val is not None else None,
                snapshots=snapshots,
                snapshot_every=snapshot_every,
                writer=writer,
                device=target,
                report=report,
            )
            if fit.best_state is not None:
                module.load_state_dict(fit.best_state)
            module = module.to(memory_format=torch.contiguous_format).eval()
            final: dict[str, float] = {}
            for name, part in (("val", splits.val), ("test", splits.test)):
                if part is not None:
                    loss, accuracy = _evaluate(module, part, preprocess, target, batch_size)
                    final[f"{name}_loss"], final[f"{name}_accuracy"] = loss, accuracy
                    if writer is not None:
                        writer.add_scalar(f"final/{name}_accuracy", accuracy, fit.steps)
    finally:
        if writer is not None:
            writer.close()

    settings = {
        "architecture": arch_record,
        "input_size": list(size),
        "channels": channels,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": "adam",
        "seed": seed,
        "augment": augmentation.to_dict(),
        "val_fraction": val_fraction,
        "early_stopping": early_stopping,
        "filters": layers,
        "snapshot_every": snapshot_every,
        "device": str(target),
        "threads": threads if threads is not None else torch.get_num_threads(),
    }
    metrics: dict[str, Any] = {
        "history": fit.history,
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history),
        "stopped_early": fit.stopped_early,
        "steps": fit.steps,
        **final,
        "images_per_second": round(fit.pictures / fit.seconds, 1) if fit.seconds else None,
        "seconds": round(time.perf_counter() - started, 2),
        "seed": seed,
        "data": splits.summary(),
        "config": settings,
        "command": list(command) if command is not None else None,
        "snapshots": snapshots.steps,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
    }
    name = architecture.rsplit(":", 1)[-1]
    model = Model(module, preprocess=preprocess, labels=classes, name=name, input_size=input_shape)
    result = TrainResult(model, fit.history, metrics, snapshots=snapshots.steps)
    if out_dir is None:
        report(TrainEvent("done", fit.steps, fit.steps, len(fit.history), epochs, "done", final))
        return result

    result.out = out_dir
    training = {**settings, "best_epoch": fit.best_epoch, "epochs_run": len(fit.history), **final}
    result.checkpoint = save_checkpoint(
        out_dir / "model.pt",
        module,
        architecture=arch_record,
        labels=classes,
        preprocess=preprocess,
        name=name,
        training=training,
    )
    for layer, pictures in snapshots.frames.items():
        folder = out_dir / "filters"
        folder.mkdir(exist_ok=True)
        gif, strip = folder / f"{layer}.gif", folder / f"{layer}.png"
        _write_animation(pictures, gif, strip)
        result.filters[layer] = {"gif": gif, "png": strip}
    if writer is not None:
        result.tensorboard = out_dir / "tensorboard"
    metrics["files"] = {
        "checkpoint": "model.pt",
        "tensorboard": "tensorboard" if writer is not None else None,
        "filters": {
            layer: {kind: str(path.relative_to(out_dir)) for kind, path in paths.items()}
            for layer, paths in result.filters.items()
        },
    }
    result.metrics_file = out_dir / "metrics.json"
    result.metrics_file.write_text(json.dumps(metrics, indent=1))
    report(TrainEvent("done", fit.steps, fit.steps, len(fit.history), epochs, "done", final))
    return result


def _log_graph(writer: Any, module: nn.Module, example: torch.Tensor) -> None:
    import warnings

    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            writer.add_graph(module, example)
    finally:
        module.train()


def _log_epoch(writer: Any, module: nn.Module, row: dict[str, float], step: int) -> None:
    writer.add_scalar("loss/train", row["train_loss"], step)
    writer.add_scalar("accuracy/train", row["train_accuracy"], step)
    if "val_loss" in row:
        writer.add_scalar("loss/val", row["val_loss"], step)
        writer.add_scalar("accuracy/val", row["val_accuracy"], step)
    writer.add_scalar("speed/images_per_second", row["images_per_second"], step)
    for name, parameter in module.named_parameters():
        writer.add_histogram(f"weights/{name}", parameter.detach().cpu(), step)


def save_checkpoint(
    path: Path,
    module: nn.Module,
    *,
    architecture: dict[str, Any],
    labels: Sequence[str],
    preprocess: Preprocessing,
    name: str,
    training: dict[str, Any],
) -> Path:
    """Write a convlens checkpoint: plain data and tensors only, so that
    ``torch.load(weights_only=True)`` reads it and :func:`convlens.load` rebuilds the Model."""
    record = preprocess.to_dict()
    record["crop"] = list(preprocess.crop_hw) if preprocess.crop_hw else None
    content = {
        "convlens_checkpoint": CHECKPOINT_VERSION,
        "architecture": architecture,
        "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        "labels": list(labels),
        "preprocess": record,
        "input_size": list(preprocess.input_shape()[1:]),
        "name": name,
        "training": json.loads(json.dumps(training)),  # plain types only
    }
    torch.save(content, path)
    return path
