"""One training loop; what is trained plugs in as a head (the classifier, the detector, ...).

:func:`fit` owns everything a training run does the same way whatever the network learns:

* **seeds** (:class:`Seeds`): the initial weights, the order of the pictures and the
  augmentation each come from a seeded stream. Building the network and training it (dropout)
  run inside ``torch.random.fork_rng`` seeded with ``seeds.weights``, so the caller's global
  random state is the same afterwards. The same seed gives bit-identical weights on the CPU
  (with the same number of threads);
* **epochs, shuffling and batching**: every epoch a ``torch.randperm`` of the training pictures
  from the order stream, cut into batches of ``batch_size`` in that order;
* **the optimiser**: Adam at ``lr`` with ``weight_decay`` (0 unless the front door sets it) and
  the head's learning-rate schedule, if it has one, stepped after every optimiser step;
* **validation** after every epoch, the weights of the best epoch kept and restored at the end,
  **early stopping** after ``early_stopping`` epochs without a better one (only with a
  validation set);
* **progress** (:class:`TrainEvent` to a callback), **TensorBoard** (every number of the history
  row, weight histograms, the graph, filter pictures), **filter snapshots**, CPU **threads** and
  the **device**, and the output folder::

    out/model.pt             the head's checkpoint (read with ``torch.load(weights_only=True)``)
    out/metrics.json         history, best epoch, final metrics, data, settings, command, speed
    out/tensorboard/         scalars, weight histograms, the graph, filter images
    out/filters/<layer>.gif  one frame per filter snapshot, labelled with its step
    out/filters/<layer>.png  a strip of (up to 8) snapshots side by side

What a head provides (:class:`Head`; :class:`~.classify.ClassifierHead`,
:class:`~.detect.DetectorHead` and :class:`~.segment.SegmenterHead` are the three there are):

* ``build(device)``: the network on ``device``, ready to train (it runs under the weights seed);
* ``train_step(module, index, generator)``: the loss of the training pictures at ``index`` (a 1-D
  tensor of positions in the training set, ``train_size`` of them): the head reads those
  pictures and their targets, augments them with draws from ``generator`` and runs the network
  (in training mode); with it, sums over the batch's pictures of anything else it tracks
  (``{"train_accuracy": hits}``), which the history reports as means per picture;
* ``validate(module)``: validation metrics of the network in eval mode (``{"val_loss": ...}``),
  or ``None`` without a validation set; ``monitor`` names the history entry whose best epoch is
  kept, ``higher_is_better`` says which way is better;
* ``final(module)``: metrics of the trained network (best weights, eval mode) on held-out
  pictures (``{"test_accuracy": ...}``);
* ``save(module, path, record)``: write its checkpoint (``record``: the run's settings and
  outcome, for checkpoints that keep it); ``handle(module)``: what the front door hands out;
* for the record: ``task``, ``loss_key`` (the history's name for the training loss),
  ``optimizer``, ``network`` and ``sampling`` (its settings, recorded in ``config``), ``data``
  (what it was trained on), ``describe(row)`` (its part of an epoch's one-line summary); and
  optionally ``graph_input(device)`` (an input for TensorBoard's graph) and
  ``schedule(optimizer, total_steps)``.

Nothing here assumes class labels, boxes or masks: the segmentation head builds a network
that returns class scores per pixel (N, K, H, W), warps pictures and masks with the same draws
in ``train_step`` (masks with nearest-neighbour sampling) and returns the mean per-pixel
cross-entropy with ``{"train_pixel_accuracy": ...}``; ``validate`` gives ``{"val_miou": ...}``
with ``monitor = "val_miou"`` and ``higher_is_better = True``; ``final`` the test mean IoU;
``save`` its own checkpoint.
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
from typing import Any, Protocol

import torch
from torch import nn

from convlens.workflows.training.logs import (
    Snapshots,
    log_epoch,
    log_graph,
    output_folder,
    write_animation,
)


@dataclass(frozen=True)
class TrainEvent:
    """What training reports to its ``progress`` callback.

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
    """What training made: the trained ``model`` as its head hands it out (a
    :class:`~convlens.core.model.Model` for the classifier; best weights, eval mode), the
    per-epoch ``history``, the ``metrics`` written to ``metrics.json`` and the written files
    (``checkpoint``, ``metrics_file``, ``tensorboard``, ``filters`` per layer)."""

    model: Any
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


@dataclass(frozen=True)
class Seeds:
    """How the one ``seed`` a user gives becomes the run's random streams: ``weights`` seeds
    torch's global generator while the network is built and trained (initial weights, dropout),
    ``order`` the shuffling, ``augment`` the augmentation, ``split`` the held-out validation
    share of a data set that has no validation split (read by the front doors, not the loop).
    Where ``augment == order`` one generator serves both, its draws interleaved (an epoch's
    order, then the augmentation of its batches)."""

    seed: int
    weights: int
    order: int
    augment: int
    split: int

    def generators(self) -> tuple[torch.Generator, torch.Generator]:
        """The order and augmentation generators (one object when their seeds are equal)."""
        order = torch.Generator().manual_seed(self.order)
        if self.augment == self.order:
            return order, order
        return order, torch.Generator().manual_seed(self.augment)


@dataclass(frozen=True)
class Plan:
    """How to train, whatever the head: passes, batch size, Adam's learning rate, the seeds,
    early stopping (epochs without a better validation metric; ``None``/0: never), the conv
    layers whose filters are drawn every ``snapshot_every`` steps (0: never; ``None``: the first
    four), TensorBoard, the device, CPU threads (``None``: torch's setting) and Adam's
    ``weight_decay`` (L2, as ``torch.optim.Adam`` applies it)."""

    epochs: int
    batch_size: int
    lr: float
    seeds: Seeds
    early_stopping: int | None = None
    filters: str | Sequence[str] | None = None
    snapshot_every: int = 0
    tensorboard: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    threads: int | None = None
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(
                f"expected epochs >= 1, batch_size >= 1 and lr > 0, got {self.epochs}, "
                f"{self.batch_size}, {self.lr}"
            )
        if self.snapshot_every < 0:
            raise ValueError(f"expected snapshot_every >= 0, got {self.snapshot_every}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"expected threads >= 1, got {self.threads}")
        if not self.weight_decay >= 0:
            raise ValueError(f"expected weight_decay >= 0, got {self.weight_decay}")


class Head(Protocol):
    """What a task tells the loop (see the module docstring). Subclass it to inherit the
    defaults of the optional members (``graph_input``, ``schedule``, ``describe``,
    ``handle``)."""

    task: str
    train_size: int
    loss_key: str
    monitor: str
    higher_is_better: bool
    optimizer: str
    network: dict[str, Any]
    sampling: dict[str, Any]
    data: dict[str, Any]

    def build(self, device: torch.device) -> nn.Module: ...

    def train_step(
        self, module: nn.Module, index: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def validate(self, module: nn.Module) -> dict[str, float] | None: ...

    def final(self, module: nn.Module) -> dict[str, Any]: ...

    def save(self, module: nn.Module, path: Path, record: dict[str, Any]) -> Path: ...

    def graph_input(self, device: torch.device) -> torch.Tensor | None:
        return None

    def schedule(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        return None

    def describe(self, row: dict[str, Any]) -> str:
        return ""

    def handle(self, module: nn.Module) -> Any:
        return module


# -- helpers the heads share ----------------------------------------------------------------------


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block, the previous setting after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def conv_layers(module: nn.Module) -> list[str]:
    """The names of ``module``'s ``Conv2d`` layers, in order."""
    return [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]


def filter_layers(module: nn.Module, filters: str | Sequence[str] | None) -> list[str]:
    """The layers whose filters are drawn: names or one comma-separated string, checked to
    have conv weights (out, in, kh, kw); ``None``: the first four conv layers."""
    convs = conv_layers(module)
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


def device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s parameters are (the CPU when it has none)."""
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")


# -- the loop -------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    """How the epochs went: one history row per epoch, the best epoch and its weights."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False
    steps: int = 0
    seconds: float = 0.0
    pictures: int = 0


def fit(
    head: Head,
    plan: Plan,
    out: str | os.PathLike[str] | None = None,
    *,
    progress: TrainProgress | None = None,
    command: Sequence[str] | None = None,
    started: float | None = None,
) -> TrainResult:
    """Train ``head``'s network as ``plan`` says; write ``out`` (``None``: nothing) and return
    what was made. ``command``: the command line recorded in ``metrics.json``; ``started``:
    the ``time.perf_counter()`` the run's ``seconds`` count from (default: now)."""
    started = time.perf_counter() if started is None else started

    def report(event: TrainEvent) -> None:
        if progress is not None:
            progress(event)

    out_dir, writer = output_folder(out, plan.tensorboard)
    forked = [plan.device.index or 0] if plan.device.type == "cuda" else []
    try:
        with cpu_threads(plan.threads), torch.random.fork_rng(devices=forked):
            torch.manual_seed(plan.seeds.weights)
            module = head.build(plan.device)
            layers = filter_layers(module, plan.filters)
            example = head.graph_input(plan.device)
            if writer is not None and example is not None:
                log_graph(writer, module, example)
            drawn = plan.snapshot_every > 0 and (out_dir is not None or plan.filters is not None)
            snapshots = Snapshots(module, layers, writer, enabled=drawn)
            outcome = _epochs(head, plan, module, snapshots, writer, report)
            if outcome.best_state is not None:
                module.load_state_dict(outcome.best_state)
            # a head may train channels-last; the network comes back in the usual layout
            module = module.to(memory_format=torch.contiguous_format).eval()
            final = head.final(module)
            for key, value in final.items():
                if writer is not None and isinstance(value, int | float):
                    writer.add_scalar(f"final/{key}", value, outcome.steps)
    finally:
        if writer is not None:
            writer.close()
    config = _config(head, plan, layers)
    metrics = _metrics(head, outcome, final, config, snapshots.steps, command, started)
    result = TrainResult(head.handle(module), outcome.history, metrics, snapshots=snapshots.steps)
    if out_dir is not None:
        record = {**config, "best_epoch": metrics["best_epoch"], "epochs_run": len(outcome.history)}
        _write(result, head, module, out_dir, {**record, **final}, snapshots, writer is not None)
    epochs_run = len(outcome.history)
    report(TrainEvent("done", outcome.steps, outcome.steps, epochs_run, plan.epochs, "done", final))
    return result


def _epochs(
    head: Head,
    plan: Plan,
    module: nn.Module,
    snapshots: Snapshots,
    writer: Any,
    report: TrainProgress,
) -> _Outcome:
    """The epochs: shuffle, one optimiser step per batch, validate, keep the best weights, log,
    stop early."""
    order_generator, augment_generator = plan.seeds.generators()
    optimizer = torch.optim.Adam(module.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    total_steps = plan.epochs * math.ceil(head.train_size / plan.batch_size)
    schedule = head.schedule(optimizer, total_steps)
    outcome = _Outcome()
    best = -math.inf if head.higher_is_better else math.inf
    snapshots.take(0)
    for epoch in range(1, plan.epochs + 1):
        module.train()
        order = torch.randperm(head.train_size, generator=order_generator)
        loss_sum, seen = 0.0, 0
        sums: dict[str, float] = {}
        started = time.perf_counter()
        for start in range(0, len(order), plan.batch_size):
            index = order[start : start + plan.batch_size]
            loss, tracked = head.train_step(module, index, augment_generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            outcome.steps += 1
            batch_loss = float(loss.detach())
            loss_sum += batch_loss * len(index)
            for key, value in tracked.items():
                sums[key] = sums.get(key, 0) + value
            seen += len(index)
            if plan.snapshot_every and outcome.steps % plan.snapshot_every == 0:
                snapshots.take(outcome.steps)
            message = f"epoch {epoch}/{plan.epochs} · loss {batch_loss:.4f}"
            at = (outcome.steps, total_steps, epoch, plan.epochs)
            report(TrainEvent("step", *at, message, {"loss": batch_loss}))
        seconds = time.perf_counter() - started
        outcome.seconds += seconds
        outcome.pictures += seen
        row: dict[str, Any] = {
            "epoch": epoch,
            "step": outcome.steps,
            head.loss_key: loss_sum / seen,
            **{key: value / seen for key, value in sums.items()},
            "seconds": round(seconds, 3),
            "images_per_second": round(seen / seconds, 1),
        }
        module.eval()
        validation = head.validate(module)
        row.update(validation or {})
        outcome.history.append(row)
        monitored = row.get(head.monitor)
        if monitored is not None and (
            monitored > best if head.higher_is_better else monitored < best
        ):
            best = outcome.best_value = float(monitored)
            outcome.best_epoch = epoch
            outcome.best_state = copy.deepcopy(module.state_dict())
        if writer is not None:
            log_epoch(writer, module, row, outcome.steps, head.loss_key)
        message = f"epoch {epoch}/{plan.epochs} · loss {row[head.loss_key]:.4f}"
        at = (outcome.steps, total_steps, epoch, plan.epochs)
        report(TrainEvent("epoch", *at, message + head.describe(row), dict(row)))
        patience = plan.early_stopping if validation is not None else None
        if patience and epoch - outcome.best_epoch >= patience and epoch < plan.epochs:
            outcome.stopped_early = True
            break
    snapshots.take(outcome.steps)
    return outcome


def _config(head: Head, plan: Plan, layers: list[str]) -> dict[str, Any]:
    """The run's settings as ``metrics.json`` records them."""
    return {
        **head.network,
        "epochs": plan.epochs,
        "batch_size": plan.batch_size,
        "lr": plan.lr,
        **({"weight_decay": plan.weight_decay} if plan.weight_decay else {}),
        "optimizer": head.optimizer,
        "seed": plan.seeds.seed,
        **head.sampling,
        "early_stopping": plan.early_stopping,
        "filters": layers,
        "snapshot_every": plan.snapshot_every,
        "device": str(plan.device),
        "threads": plan.threads if plan.threads is not None else torch.get_num_threads(),
    }


def _metrics(
    head: Head,
    outcome: _Outcome,
    final: dict[str, Any],
    config: dict[str, Any],
    snapshots: list[int],
    command: Sequence[str] | None,
    started: float,
) -> dict[str, Any]:
    """What ``metrics.json`` holds (without ``files``)."""
    epochs_run = len(outcome.history)
    return {
        "task": head.task,
        "history": outcome.history,
        # without a monitored value (no validation set) the last epoch's weights are kept
        "best_epoch": outcome.best_epoch if outcome.best_state is not None else epochs_run,
        "epochs_run": epochs_run,
        "stopped_early": outcome.stopped_early,
        "steps": outcome.steps,
        f"best_{head.monitor}": outcome.best_value,
        **final,
        "images_per_second": (
            round(outcome.pictures / outcome.seconds, 1) if outcome.seconds else None
        ),
        "seconds": round(time.perf_counter() - started, 2),
        "seed": config["seed"],
        "data": head.data,
        "config": config,
        "command": list(command) if command is not None else None,
        "snapshots": snapshots,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
    }


def _write(
    result: TrainResult,
    head: Head,
    module: nn.Module,
    out: Path,
    record: dict[str, Any],
    snapshots: Snapshots,
    tensorboard: bool,
) -> None:
    """The checkpoint, the filter animations and ``metrics.json``, noted in ``result``."""
    result.out = out
    result.checkpoint = head.save(module, out / "model.pt", record)
    for layer, pictures in snapshots.frames.items():
        folder = out / "filters"
        folder.mkdir(exist_ok=True)
        gif, strip = folder / f"{layer}.gif", folder / f"{layer}.png"
        write_animation(pictures, gif, strip)
        result.filters[layer] = {"gif": gif, "png": strip}
    if tensorboard:
        result.tensorboard = out / "tensorboard"
    result.metrics["files"] = {
        "checkpoint": result.checkpoint.name,
        "tensorboard": "tensorboard" if tensorboard else None,
        "filters": {
            layer: {kind: str(path.relative_to(out)) for kind, path in paths.items()}
            for layer, paths in result.filters.items()
        },
    }
    result.metrics_file = out / "metrics.json"
    result.metrics_file.write_text(json.dumps(result.metrics, indent=1))
