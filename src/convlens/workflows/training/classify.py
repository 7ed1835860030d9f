"""The classifier head of the training loop, and :func:`train`, its front door (``convlens
train``; systems 1 and 3 of the mission: train a small image classifier and watch its filters
evolve).

:func:`train` reads an image-folder data set into memory (:mod:`.data`), and the loop
(:func:`~.loop.fit`) trains a network from :mod:`convlens.core.architectures` (or the user's own)
with Adam and batched augmentation (:mod:`.augment`) on the cross-entropy, keeping the weights
of the lowest validation loss, and writes ``model.pt`` (a convlens checkpoint,
``convlens.load("out/model.pt")``), ``metrics.json`` (per-epoch loss and accuracy, best epoch,
final accuracies, speed), ``tensorboard/`` and ``filters/<layer>.gif`` / ``.png``.

Repeatability: all randomness comes from the seed (:func:`seeds`): shuffling and augmentation
draw from ``torch.Generator`` objects made from it; weight initialisation and dropout run inside
``torch.random.fork_rng`` seeded from it, so the global random state is the same after
:func:`train` as before. The same seed gives bit-identical weights on the CPU.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
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
    DataSplits,
    ImageSet,
    load_folder,
    picture_preprocessing,
    pixel_statistics,
)
from convlens.workflows.training.loop import (
    Head,
    Plan,
    Seeds,
    TrainEvent,
    TrainProgress,
    TrainResult,
    device_of,
    fit,
)

__all__ = ["ClassifierHead", "TrainEvent", "TrainResult", "save_checkpoint", "seeds", "train"]


def seeds(seed: int) -> Seeds:
    """The classifier's streams: order ``seed``, augmentation ``seed + 1``, weights and dropout
    ``seed + 2``, the validation split ``seed + 3``."""
    return Seeds(seed, weights=seed + 2, order=seed, augment=seed + 1, split=seed + 3)


class ClassifierHead(Head):
    """Class scores (N, classes) from pictures: cross-entropy on the class indices, accuracy,
    the weights of the lowest validation loss kept (of the lowest training loss without a
    validation set). Trains channels-last (faster on CPUs, the same values)."""

    task = "classify"
    loss_key = "train_loss"
    higher_is_better = False
    optimizer = "adam"

    def __init__(
        self,
        splits: DataSplits,
        augmentation: Augmentation,
        *,
        architecture: str,
        options: dict[str, Any],
        size: tuple[int, int],
        channels: int,
        batch_size: int,
        val_fraction: float,
    ) -> None:
        self.splits = splits
        self.augmentation = augmentation
        # the pictures are normalised by the training set's statistics
        mean, std = pixel_statistics(splits.train.pixels, channels)
        self.preprocess = picture_preprocessing(size, channels, mean, std)
        self.input_shape = (channels, *size)
        self.architecture = architecture
        self.options, record = _architecture(
            architecture,
            {
                **options,
                "num_classes": len(splits.classes),
                "in_channels": channels,
                "input_size": list(size),
            },
        )
        self.batch_size = batch_size
        self.name = architecture.rsplit(":", 1)[-1]
        self.train_size = len(splits.train)
        self.monitor = "val_loss" if splits.val is not None else "train_loss"
        self.network = {"architecture": record, "input_size": list(size), "channels": channels}
        self.sampling = {"augment": augmentation.to_dict(), "val_fraction": val_fraction}
        self.data = splits.summary()

    def build(self, device: torch.device) -> nn.Module:
        module = architectures.build(self.architecture, **self.options).to(device)
        _check_output(module, self.input_shape, len(self.splits.classes))
        return module.to(memory_format=torch.channels_last)

    def graph_input(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(1, *self.input_shape, device=device)

    def train_step(
        self, module: nn.Module, index: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        device = device_of(module)
        x = self.splits.train.pixels[index].to(device).float().div_(255)
        y = self.splits.train.targets[index].to(device)
        x = self.preprocess.normalize(self.augmentation(x, generator))
        logits = module(x.contiguous(memory_format=torch.channels_last))
        hits = int((logits.detach().argmax(1) == y).sum())
        return F.cross_entropy(logits, y), {"train_accuracy": hits}

    def validate(self, module: nn.Module) -> dict[str, float] | None:
        if self.splits.val is None:
            return None
        loss, accuracy = _evaluate(module, self.splits.val, self.preprocess, self.batch_size)
        return {"val_loss": loss, "val_accuracy": accuracy}

    def describe(self, row: dict[str, Any]) -> str:
        text = f" · acc {row['train_accuracy']:.1%}"
        if "val_loss" in row:
            text += f" · val loss {row['val_loss']:.4f} · val acc {row['val_accuracy']:.1%}"
        return text

    def final(self, module: nn.Module) -> dict[str, Any]:
        final: dict[str, Any] = {}
        for name, part in (("val", self.splits.val), ("test", self.splits.test)):
            if part is not None:
                loss, accuracy = _evaluate(module, part, self.preprocess, self.batch_size)
                final[f"{name}_loss"], final[f"{name}_accuracy"] = loss, accuracy
        return final

    def handle(self, module: nn.Module) -> Model:
        return Model(
            module,
            preprocess=self.preprocess,
            labels=self.splits.classes,
            name=self.name,
            input_size=self.input_shape,
        )

    def save(self, module: nn.Module, path: Path, record: dict[str, Any]) -> Path:
        return save_checkpoint(
            path,
            module,
            architecture=self.network["architecture"],
            labels=self.splits.classes,
            preprocess=self.preprocess,
            name=self.name,
            training=record,
        )


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


def _evaluate(
    module: nn.Module, data: ImageSet, preprocess: Preprocessing, batch_size: int
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``module`` (eval mode) on ``data``."""
    was_training = module.training
    module.eval()
    device = device_of(module)
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
            out = module(torch.zeros(2, *shape, device=device_of(module)))
        except RuntimeError as err:
            raise ValueError(f"the network does not take input (N, {shape}): {err}") from None
        finally:
            module.train(was_training)
    if out.dim() != 2 or out.shape[1] != classes:
        raise ValueError(
            f"expected the network to return (N, {classes}) class scores for {classes} classes, "
            f"got {tuple(out.shape)}"
        )


def _input_size(
    architecture: str,
    options: dict[str, Any],
    input_size: int | tuple[int, int] | None,
    channels: int,
) -> tuple[int, int]:
    """The pictures' (H, W): ``input_size``, else the architecture's (128 when it has none)."""
    if channels not in (1, 3):
        raise ValueError(f"expected channels 1 or 3, got {channels}")
    if input_size is None:
        default = None
        if not architectures.is_factory(architecture):
            default = architectures.config(architecture).get("input_size")
        input_size = options.get("input_size", default) or 128
    return cnns.pair(input_size, "input_size")


def _splits(
    data: str | os.PathLike[str] | DataSplits,
    size: tuple[int, int],
    val_fraction: float,
    seed: int,
    progress: TrainProgress | None,
) -> DataSplits:
    """The data in memory: ``data`` itself, or the image folder it names read at ``size``."""
    if isinstance(data, DataSplits):
        if tuple(data.train.pixels.shape[2:]) != size:
            raise ValueError(
                f"expected pictures of {size[0]}x{size[1]} (input_size), got "
                f"{tuple(data.train.pixels.shape[2:])}"
            )
        return data

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(TrainEvent("load", done, total, message=f"reading pictures {done}/{total}"))

    return load_folder(data, input_size=size, val_fraction=val_fraction, seed=seed, progress=report)


def _architecture(
    architecture: str, options: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options the network is built with (a registered architecture's full config) and
    the checkpoint's record of it (rebuilt by name, or by the factory the caller names)."""
    if architectures.is_factory(architecture):
        return options, {"factory": architecture, "options": options}
    options = architectures.config(architecture, **options)
    return options, {"name": architecture, "options": options}


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
        Output folder (``model.pt``, ``metrics.json``, ``tensorboard/``, ``filters/``; see
        :mod:`.loop`); ``None`` writes nothing.
    architecture:
        A registered name (``explorer_cnn``, ``scratch_cnn``; see
        :func:`convlens.core.architectures.names`) or ``"package.module:factory"``.
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
        Conv layers (names or one comma-separated string; default: the first four) whose
        filters are drawn every ``snapshot_every`` steps (0: never), before the first step and
        after the last, into TensorBoard and ``filters/<layer>.gif``/``.png``.
    tensorboard:
        Write TensorBoard logs (needs ``pip install 'convlens[train]'``).
    device:
        Where to train (``"cpu"``, ``"cuda"``). Only the CPU promises bit-identical repeats
        (with the same number of threads).
    threads:
        CPU threads (``torch.set_num_threads``, restored afterwards; default: torch's setting).
        When other jobs share the cores, 1 is often several times faster.
    progress:
        Called with a :class:`TrainEvent` while loading and after every step and epoch.
    command:
        The command line that asked for this run, recorded in ``metrics.json``.
    """
    plan = Plan(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seeds=seeds(seed),
        early_stopping=early_stopping,
        filters=filters,
        snapshot_every=snapshot_every,
        tensorboard=tensorboard,
        device=torch.device(device),
        threads=threads,
    )
    size = _input_size(architecture, options or {}, input_size, channels)
    augmentation = _augmentation(augment)
    started = time.perf_counter()
    splits = _splits(data, size, val_fraction, plan.seeds.split, progress)
    head = ClassifierHead(
        splits,
        augmentation,
        architecture=architecture,
        options=options or {},
        size=size,
        channels=channels,
        batch_size=batch_size,
        val_fraction=val_fraction,
    )
    return fit(head, plan, out, progress=progress, command=command, started=started)


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
