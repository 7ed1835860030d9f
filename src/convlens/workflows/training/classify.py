"""Train a small image classifier and watch its filters evolve (systems 1 and 3 of the mission).

:func:`train` reads an image-folder data set into memory (:mod:`.data`), trains a network from
:mod:`convlens.core.architectures` (or the user's own) with Adam, batched augmentation
(:mod:`.augment`) and early stopping on the validation loss, and writes an output folder::

    out/model.pt            a convlens checkpoint (``convlens.load("out/model.pt")``)
    out/metrics.json        per-epoch loss and accuracy, best epoch, final accuracies, speed
    out/tensorboard/        scalars, weight histograms, the graph, filter images
    out/filters/conv1.gif   one frame per filter snapshot, labelled with its step
    out/filters/conv1.png   a strip of (up to 8) snapshots side by side

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlens.core import architectures
from convlens.core.architectures import cnns
from convlens.core.formats.checkpoint import CHECKPOINT_VERSION
from convlens.core.model import Model, Preprocessing
from convlens.workflows.training.augment import Augmentation
from convlens.workflows.training.data import (
    _AUGMENT_SEED,
    _SHUFFLE_SEED,
    _SPLIT_SEED,
    _TORCH_SEED,
    DataSplits,
    ImageSet,
    _picture_preprocessing,
    _statistics,
    load_folder,
)
from convlens.workflows.training.logs import (
    _log_epoch,
    _log_graph,
    _output_folder,
    _Snapshots,
    _write_animation,
)

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
            from convlens.core.naming import unknown

            raise unknown("layer", name, convs or list(modules))
        weight = getattr(modules[name], "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
            raise ValueError(
                f"layer {name!r} ({type(modules[name]).__name__}) has no conv weights "
                f"(out, in, kh, kw); conv layers: {', '.join(convs)}"
            )
    return wanted


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
    return cnns.pair(input_size, "input_size")


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
