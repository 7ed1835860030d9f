"""Training the toon detector (:class:`~convlens.core.architectures.centernet.CenterNet`):
heat-map targets and focal loss, box-aware augmentation (horizontal flips; shifts and zooms that
move the boxes with the picture), and :func:`train_detector` with the classifier trainer's
habits (seeds, progress events, TensorBoard, filter snapshots, best-validation weights, early
stopping); :func:`train_folder` is ``convlens train DATA --task detect``."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from convlens.core.architectures.centernet import STRIDE, CenterNet, save
from convlens.data import toons

# -- targets and loss ----------------------------------------------------------------------------


def _radius(w: float, h: float) -> float:
    """A Gaussian radius (in cells) that grows with the box, as CenterNet's (simplified)."""
    return max(0.5, 0.15 * math.sqrt(w * h) / STRIDE)


def targets(
    boxes: Sequence[Sequence[tuple[int, float, float, float, float]]],
    num_classes: int,
    size: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """Training targets on the stride-8 grid from per-picture (class, x0, y0, x1, y1) boxes."""
    h, w = size[0] // STRIDE, size[1] // STRIDE
    n = len(boxes)
    heat = torch.zeros(n, num_classes, h, w)
    wh = torch.zeros(n, 2, h, w)
    off = torch.zeros(n, 2, h, w)
    mask = torch.zeros(n, h, w)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    for i, picture in enumerate(boxes):
        for cls, x0, y0, x1, y1 in picture:
            bw, bh = x1 - x0, y1 - y0
            if bw <= 1 or bh <= 1:
                continue
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
            sigma = _radius(bw, bh)
            g = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
            heat[i, int(cls)] = torch.maximum(heat[i, int(cls)], g)
            wh[i, :, iy, ix] = torch.tensor([bw / 64.0, bh / 64.0])
            off[i, :, iy, ix] = torch.tensor([cx - ix, cy - iy])
            mask[i, iy, ix] = 1
    return {"heatmap": heat, "size": wh, "offset": off, "mask": mask}


def loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the heat maps plus L1 on size and offset at
    the centres (size weighted 1, offset 1), each normalised by the number of objects."""
    pred = torch.sigmoid(out["heatmap"]).clamp(1e-4, 1 - 1e-4)
    gt = target["heatmap"]
    pos = gt.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - gt) ** 4 * neg
    count = pos.sum().clamp_min(1)
    focal = -(pos_loss.sum() + neg_loss.sum()) / count
    m = target["mask"].unsqueeze(1)
    size_l1 = (F.l1_loss(out["size"] * m, target["size"] * m, reduction="sum")) / count
    off_l1 = (F.l1_loss(out["offset"] * m, target["offset"] * m, reduction="sum")) / count
    return focal + size_l1 + off_l1


# -- augmentation -------------------------------------------------------------------------------

Boxes = list[list[tuple[int, float, float, float, float]]]


@dataclass(frozen=True)
class BoxAugmentation:
    """Box-aware augmentation: a horizontal ``flip`` (half the pictures), a zoom by a factor
    in [1 - ``zoom``, 1 + ``zoom``] and a shift of up to ``shift`` of the picture's size each
    way, applied to the picture and its boxes together."""

    flip: bool = True
    zoom: float = 0.2
    shift: float = 0.15

    def __post_init__(self) -> None:
        if not 0 <= self.zoom < 1 or not 0 <= self.shift < 1:
            raise ValueError(
                f"expected zoom and shift in [0, 1), got zoom={self.zoom}, shift={self.shift}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"flip": self.flip, "zoom": self.zoom, "shift": self.shift}


def augment_batch(
    pixels: torch.Tensor,
    boxes: Boxes,
    gen: torch.Generator,
    settings: BoxAugmentation | None = None,
) -> tuple[torch.Tensor, Boxes]:
    """Box-aware augmentation of a batch (N, 3, H, W) (see :class:`BoxAugmentation`; boxes
    are clipped to the picture and ones left under 4 pixels dropped). The same draws are
    made whatever the settings, so a seed gives the same stream."""
    settings = settings or BoxAugmentation()
    n, _, h, w = pixels.shape
    flip = (torch.rand(n, generator=gen) < 0.5) & settings.flip
    zoom = (1 - settings.zoom) + (2 * settings.zoom) * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * (2 * settings.shift)  # of the size
    out = pixels.clone()
    out[flip] = out[flip].flip(-1)
    # output pixel u maps to input (u - c - shift) / zoom + c in normalised coordinates
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / zoom
    theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = -shift * 2 / zoom.unsqueeze(1)
    grid = F.affine_grid(theta, list(out.shape), align_corners=False).to(out.device)
    out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    moved = []
    for i, picture in enumerate(boxes):
        kept = []
        for cls, x0, y0, x1, y1 in picture:
            if flip[i]:
                x0, x1 = w - x1, w - x0
            z, sx, sy = float(zoom[i]), float(shift[i, 0]) * w, float(shift[i, 1]) * h
            nx0, nx1 = (x0 - w / 2) * z + w / 2 + sx, (x1 - w / 2) * z + w / 2 + sx
            ny0, ny1 = (y0 - h / 2) * z + h / 2 + sy, (y1 - h / 2) * z + h / 2 + sy
            nx0, nx1 = max(0.0, nx0), min(float(w), nx1)
            ny0, ny1 = max(0.0, ny0), min(float(h), ny1)
            if nx1 - nx0 >= 4 and ny1 - ny0 >= 4:
                kept.append((cls, nx0, ny0, nx1, ny1))
        moved.append(kept)
    return out, moved


# -- training -------------------------------------------------------------------------------------


def _check_boxes(pixels: torch.Tensor, boxes: Boxes, classes: Sequence[str], what: str) -> None:
    if pixels.dim() != 4 or pixels.shape[1] != 3 or len(pixels) != len(boxes):
        raise ValueError(
            f"expected {what} pictures (N, 3, H, W) and one box list each, got "
            f"{tuple(pixels.shape)} and {len(boxes)} lists"
        )
    if pixels.shape[2] % STRIDE or pixels.shape[3] % STRIDE:
        raise ValueError(
            f"expected picture sides divisible by {STRIDE}, got {tuple(pixels.shape[2:])}"
        )
    for frame in boxes:
        for cls, *_ in frame:
            if not 0 <= int(cls) < len(classes):
                raise ValueError(f"a {what} box has class {cls}, expected 0..{len(classes) - 1}")


def train_detector(
    pixels: torch.Tensor,
    boxes: Boxes,
    classes: Sequence[str],
    *,
    val: tuple[torch.Tensor, Boxes] | None = None,
    test: tuple[torch.Tensor, Boxes] | None = None,
    epochs: int = 12,
    batch_size: int = 32,
    lr: float = 2e-3,
    width: int = 48,
    seed: int = 0,
    augment: bool | BoxAugmentation = True,
    early_stopping: int | None = None,
    filters: str | Sequence[str] | None = None,
    snapshot_every: int = 0,
    tensorboard: bool = False,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: Callable[[Any], None] | None = None,
    command: Sequence[str] | None = None,
) -> tuple[CenterNet, dict[str, Any]]:
    """Fit a :class:`CenterNet` on pictures (N, 3, H, W) in [0, 1] with per-picture boxes
    ``(class, x0, y0, x1, y1)``, with the classifier trainer's habits
    (:func:`convlens.training.train`): Adam with a one-cycle schedule, seeded weights, order
    and augmentation (box-aware, :class:`BoxAugmentation`), after every epoch the validation
    mAP@0.5 and mAP@0.5:0.95, the weights of the best validation mAP@0.5 kept, early stopping
    after ``early_stopping`` epochs without a better one, :class:`~convlens.training.TrainEvent`
    progress, TensorBoard scalars and filter snapshots (``filters``, ``snapshot_every``).

    With ``out``: ``out/model.pt`` (a ``convlens-centernet`` checkpoint that
    ``convlens.load`` reads with ``weights_only=True``), ``out/metrics.json`` (history,
    settings, the command, and with ``test`` the final test mAP and all-found rate),
    ``out/tensorboard/`` and ``out/filters/<layer>.gif``. Returns the network (eval mode,
    best weights) and the metrics.
    """
    import sys

    from convlens.core.detector import Detector
    from convlens.workflows.detection_eval import detection_scores
    from convlens.workflows.training.classify import TrainEvent, _cpu_threads, _filter_layers
    from convlens.workflows.training.logs import _output_folder, _Snapshots, _write_animation

    _check_boxes(pixels, boxes, classes, "training")
    for part, what in ((val, "validation"), (test, "test")):
        if part is not None:
            _check_boxes(part[0], part[1], classes, what)
    if epochs < 1 or batch_size < 1 or not lr > 0 or width < 2:
        raise ValueError(
            f"expected epochs >= 1, batch_size >= 1, lr > 0 and width >= 2, got {epochs}, "
            f"{batch_size}, {lr}, {width}"
        )
    if snapshot_every < 0:
        raise ValueError(f"expected snapshot_every >= 0, got {snapshot_every}")
    augmentation = augment if isinstance(augment, BoxAugmentation) else BoxAugmentation()
    target = torch.device(device)
    started_all = time.perf_counter()
    out_dir, writer = _output_folder(out, tensorboard)

    def report(event: Any) -> None:
        if progress is not None:
            progress(event)

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = CenterNet(len(classes), width=width)
    torch.random.set_rng_state(state)
    model = model.to(target)
    layers = _filter_layers(model, filters)
    snapshots = _Snapshots(model, layers, writer, enabled=snapshot_every > 0)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(pixels) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    stopped_early = False
    size = (pixels.shape[2], pixels.shape[3])
    step = 0
    final: dict[str, Any] = {}
    try:
        with _cpu_threads(threads):
            snapshots.take(0)
            for epoch in range(1, epochs + 1):
                model.train()
                order = torch.randperm(len(pixels), generator=gen)
                total, count, start = 0.0, 0, time.perf_counter()
                for s in range(0, len(order), batch_size):
                    idx = order[s : s + batch_size]
                    x, b = pixels[idx], [boxes[int(i)] for i in idx]
                    if augment is not False:
                        x, b = augment_batch(x, b, gen, augmentation)
                    goal = {k: v.to(target) for k, v in targets(b, len(classes), size).items()}
                    value = loss(model.heads(x.to(target)), goal)
                    optimiser.zero_grad()
                    value.backward()
                    optimiser.step()
                    schedule.step()
                    step += 1
                    batch_loss = float(value.detach())
                    total += batch_loss * len(idx)
                    count += len(idx)
                    if snapshot_every and step % snapshot_every == 0:
                        snapshots.take(step)
                    report(
                        TrainEvent(
                            "step",
                            step,
                            steps,
                            epoch,
                            epochs,
                            f"epoch {epoch}/{epochs} · loss {batch_loss:.4f}",
                            {"loss": batch_loss},
                        )
                    )
                seconds = time.perf_counter() - start
                record: dict[str, Any] = {
                    "epoch": epoch,
                    "loss": total / count,
                    "seconds": seconds,
                    "images_per_second": round(count / seconds, 1),
                }
                message = f"epoch {epoch}/{epochs} · loss {record['loss']:.4f}"
                if val is not None:
                    model.eval()
                    scores = detection_scores(
                        Detector(model, list(classes), score_threshold=0.3), *val
                    )
                    record["val_map50"] = scores["map50"]
                    record["val_map50_95"] = scores["map50_95"]
                    message += (
                        f" · val mAP@0.5 {scores['map50']:.3f} · "
                        f"mAP@0.5:0.95 {scores['map50_95']:.3f}"
                    )
                    if best is None or record["val_map50"] > best[0]:
                        weights = {k: v.clone() for k, v in model.state_dict().items()}
                        best = (record["val_map50"], epoch, weights)
                history.append(record)
                if writer is not None:
                    for key, value_ in record.items():
                        if key != "epoch":
                            writer.add_scalar(f"train/{key}", value_, step)
                report(TrainEvent("epoch", step, steps, epoch, epochs, message, dict(record)))
                if (
                    early_stopping
                    and best is not None
                    and epoch - best[1] >= early_stopping
                    and epoch < epochs
                ):
                    stopped_early = True
                    break
            snapshots.take(step)
            if best is not None:
                model.load_state_dict(best[2])
            model.eval()
            if test is not None:
                final = detection_scores(Detector(model, list(classes), score_threshold=0.3), *test)
                if writer is not None:
                    writer.add_scalar("final/test_map50", final["map50"], step)
    finally:
        if writer is not None:
            writer.close()
    metrics: dict[str, Any] = {
        "task": "detect",
        "history": history,
        "best_epoch": best[1] if best else len(history),
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "best_val_map50": best[0] if best else None,
        **{f"test_{k}": v for k, v in final.items()},
        "seed": seed,
        "data": {
            "classes": list(classes),
            "train": len(pixels),
            "val": len(val[0]) if val is not None else 0,
            "test": len(test[0]) if test is not None else 0,
            "size": list(size),
        },
        "config": {
            "architecture": {"name": "centernet", "width": width, "top_k": model.top_k},
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "optimizer": "adam, one-cycle",
            "augment": augmentation.to_dict() if augment is not False else None,
            "early_stopping": early_stopping,
            "filters": layers if snapshot_every else [],
            "snapshot_every": snapshot_every,
            "device": str(target),
            "threads": threads if threads is not None else torch.get_num_threads(),
        },
        "command": list(command) if command is not None else None,
        "seconds": round(time.perf_counter() - started_all, 2),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
    }
    model = model.cpu()
    if out_dir is not None:
        save(model, classes, out_dir / "model.pt")
        for layer, frames in snapshots.frames.items():
            folder = out_dir / "filters"
            folder.mkdir(exist_ok=True)
            _write_animation(frames, folder / f"{layer}.gif", folder / f"{layer}.png")
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    report(TrainEvent("done", step, step, len(history), epochs, "done", final))
    return model, metrics


def train_folder(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    **options: Any,
) -> tuple[CenterNet, dict[str, Any]]:
    """:func:`train_detector` on a folder with boxes (``convlens train DATA --task detect``):
    its ``train`` split, its ``val`` split (or a seeded ``val_fraction`` of train when it has
    none) and its ``test`` split for the final scores."""
    train = toons.read_boxes(data, "train")
    if train is None:
        raise ValueError(f"{data} has no train split; expected train/ (and val/, test/) frames")
    pixels, boxes, classes = train
    if not any(boxes):
        raise ValueError(f"{data}: the training pictures have no boxes; is it a crowd folder?")
    val_part = toons.read_boxes(data, "val")
    if val_part is None:
        if not 0 < val_fraction < 1:
            raise ValueError(f"expected val_fraction in (0, 1), got {val_fraction}")
        order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(seed + 17))
        cut = max(1, round(len(pixels) * val_fraction))
        held, kept = order[:cut], order[cut:]
        val = (pixels[held], [boxes[int(i)] for i in held])
        pixels, boxes = pixels[kept], [boxes[int(i)] for i in kept]
    else:
        val = val_part[:2]
    test_part = toons.read_boxes(data, "test")
    test = test_part[:2] if test_part is not None else None
    return train_detector(pixels, boxes, classes, val=val, test=test, seed=seed, out=out, **options)
