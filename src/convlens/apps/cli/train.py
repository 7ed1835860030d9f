"""``convlens train``: a classifier, a detector with ``--task detect``, a segmenter with
``--task segment`` (its options: :mod:`.segment`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from convlens.apps.cli.common import (
    app,
    console,
    parse_value,
    progress_bar,
    user_errors,
)
from convlens.apps.cli.common import training_reporter as _reporter

# -- the options (`--task detect` takes some of them, see _DETECT_TAKES) -------------------------

TrainData = Annotated[
    Path,
    typer.Argument(
        help="Image folder: ROOT/train/<class>/, ROOT/val/<class>/ [, ROOT/test/<class>/], "
        "or ROOT/<class>/ (split 80/20 per class). Other folders and files are ignored."
    ),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
Task = Annotated[
    str,
    typer.Option(
        help="classify (class folders), detect (a folder with boxes, e.g. from "
        "`convlens toons make --variant crowd`; trains a CenterNet) or segment (toons folders' "
        "part masks; trains toon_segnet on random --size crops)."
    ),
]
Arch = Annotated[
    str,
    typer.Option(
        "--arch", help="explorer_cnn, scratch_cnn, or 'package.module:factory' (your own)."
    ),
]
ArchOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--arch-option",
        "-A",
        help="Architecture option as key=value, e.g. widths=16,32,64 or dense=64 (repeatable).",
    ),
]
Size = Annotated[
    str | None,
    typer.Option(help="Input size H or H,W (default: the architecture's, 128 for explorer)."),
]
Channels = Annotated[int, typer.Option(help="3 (RGB) or 1 (grey).")]
Epochs = Annotated[int, typer.Option(help="Passes over the training images.")]
BatchSize = Annotated[int, typer.Option(help="Images per step.")]
LearningRate = Annotated[float, typer.Option(help="Adam learning rate.")]
Seed = Annotated[int, typer.Option(help="Seeds split, weights, order and augmentation.")]
ValFraction = Annotated[
    float, typer.Option(help="Validation share when the data has no val/ folder.")
]
Patience = Annotated[
    int, typer.Option(help="Stop after this many epochs without a lower val loss (0: never).")
]
Augment = Annotated[
    bool, typer.Option("--augment/--no-augment", help="Random augmentation of each batch.")
]
Rotation = Annotated[float, typer.Option(help="Max rotation in degrees (0: off).")]
WidthShift = Annotated[float, typer.Option(help="Max horizontal shift, fraction of the width.")]
HeightShift = Annotated[float, typer.Option(help="Max vertical shift, fraction of the height.")]
Zoom = Annotated[float, typer.Option(help="Zoom range: scale in [1-z, 1+z] (0: off).")]
Flip = Annotated[bool, typer.Option("--flip/--no-flip", help="Random left-right flip.")]
Brightness = Annotated[
    float, typer.Option(help="Brightness jitter: factor in [1-b, 1+b] (0: off).")
]
Fill = Annotated[
    str, typer.Option(help="Fill where content moved away: nearest, reflect, constant.")
]
Filters = Annotated[
    str | None,
    typer.Option(help="Conv layers to watch, e.g. conv1,conv2 (default: first four convs)."),
]
SnapshotEvery = Annotated[
    int, typer.Option(help="Draw the watched filters every N steps (0: never).")
]
TensorBoard = Annotated[
    bool, typer.Option("--tensorboard/--no-tensorboard", help="Write TensorBoard logs.")
]
Device = Annotated[str, typer.Option(help="cpu or cuda.")]
Threads = Annotated[
    int | None,
    typer.Option(help="CPU threads (default: all cores); 1 is faster on a busy machine."),
]


@app.command("train")
def train_command(
    ctx: typer.Context,
    data: TrainData,
    out: Out = Path("out/train"),
    task: Task = "classify",
    arch: Arch = "explorer_cnn",
    arch_option: ArchOptions = None,
    size: Size = None,
    channels: Channels = 3,
    epochs: Epochs = 20,
    batch_size: BatchSize = 64,
    lr: LearningRate = 1e-3,
    seed: Seed = 0,
    val_fraction: ValFraction = 0.2,
    patience: Patience = 5,
    augment: Augment = True,
    rotation: Rotation = 45.0,
    width_shift: WidthShift = 0.2,
    height_shift: HeightShift = 0.2,
    zoom: Zoom = 0.2,
    flip: Flip = True,
    brightness: Brightness = 0.0,
    fill: Fill = "nearest",
    filters: Filters = None,
    snapshot_every: SnapshotEvery = 50,
    tensorboard: TensorBoard = True,
    device: Device = "cpu",
    threads: Threads = None,
) -> None:
    """Train a classifier on an image folder (or with --task detect a detector on a folder with
    boxes): model.pt (load it with any convlens command), metrics.json, tensorboard/ and
    filters/<layer>.gif + .png of the filters evolving."""
    if task not in ("classify", "detect", "segment"):
        with user_errors():
            raise ValueError(f"expected --task classify, detect or segment, got {task!r}")
    if task == "detect":
        _train_detector(ctx, data, out)
        return
    if task == "segment":
        from convlens.apps.cli.segment import train_segmenter_command

        with user_errors():
            train_segmenter_command(ctx, data, out)
        return
    with user_errors():
        from convlens.workflows.training.augment import Augmentation
        from convlens.workflows.training.classify import train

        options = _key_values(arch_option or [], "--arch-option key=value")
        input_size = parse_value(size) if size else None
        if input_size is not None and not isinstance(input_size, int | tuple):
            raise ValueError(f"expected --size H or H,W, got {size!r}")
        augmentation = (
            Augmentation(rotation, width_shift, height_shift, zoom, flip, brightness, fill)
            if augment
            else Augmentation.off()
        )
        command = ["convlens", "train", str(data)] + [
            f"--{key.replace('_', '-')}={value}"
            for key, value in ctx.params.items()
            if key != "data" and value is not None
        ]
        with progress_bar("train") as bar:
            result = train(
                data,
                out,
                architecture=arch,
                options=options,
                input_size=input_size,  # type: ignore[arg-type]
                channels=channels,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                augment=augmentation,
                val_fraction=val_fraction,
                early_stopping=patience or None,
                filters=filters,
                snapshot_every=snapshot_every,
                tensorboard=tensorboard,
                device=device,
                threads=threads,
                progress=_reporter(bar, "reading images"),
                command=command,
            )
    _summary(result.metrics, out)


def _key_values(items: list[str], expected: str) -> dict[str, object]:
    """``["key=value", ...]`` -> ``{key: parsed value}``."""
    options: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected {expected}, got {item!r}")
        options[key.strip()] = parse_value(value)
    return options


def _summary(metrics: dict[str, Any], out: Path) -> None:
    """The classifier's last lines: best epoch, final accuracies, speed, what was written."""
    finals = ", ".join(
        f"{split} accuracy {metrics[f'{split}_accuracy']:.2%}"
        for split in ("val", "test")
        if f"{split}_accuracy" in metrics
    )
    stop = " (stopped early)" if metrics["stopped_early"] else ""
    console.print(
        f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}{stop}; {finals}; "
        f"{metrics['images_per_second']} images/s"
    )
    written = ["model.pt", "metrics.json"] + [
        f"{name}/" for name in ("tensorboard", "filters") if (out / name).is_dir()
    ]
    console.print(f"wrote {', '.join(written)} to {out}/")


# the classifier options --task detect also takes, and its own defaults for some of them
_DETECT_TAKES = {
    "epochs": 12,
    "batch_size": 32,
    "lr": 2e-3,
    "seed": None,
    "val_fraction": 0.1,
    "patience": 0,
    "augment": None,
    "width_shift": 0.15,  # a detector shifts by up to this share of the side, both ways
    "zoom": 0.2,
    "flip": None,
    "filters": None,
    "snapshot_every": 0,
    "tensorboard": None,
    "device": None,
    "threads": None,
    "arch_option": None,
    "task": None,
}


def _train_detector(ctx: typer.Context, data: Path, out: Path) -> None:
    """``convlens train DATA --task detect``: :func:`~.training.detect.train_folder` with the
    classifier command's options that apply to a detector (the rest are refused). Its own
    defaults: 12 epochs, batch 32, lr 2e-3, no early stopping, shifts of up to 0.15 of the
    side in both directions (--width-shift), a 10 % validation share when there is no val/."""
    with user_errors():
        from convlens.workflows.training.detect import BoxAugmentation, train_folder

        given = {
            name
            for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
        }
        refused = sorted(given - set(_DETECT_TAKES) - {"data", "out"})
        if refused:
            flags = ", ".join("--" + name.replace("_", "-") for name in refused)
            raise ValueError(f"--task detect does not take {flags}")
        p: dict[str, Any] = {
            name: ctx.params[name] if name in given or default is None else default
            for name, default in _DETECT_TAKES.items()
        }
        arch: dict[str, object] = {}
        for item in p["arch_option"] or []:
            key, sep, value = item.partition("=")
            if not sep or key.strip() != "width":
                raise ValueError(f"--task detect takes --arch-option width=N, got {item!r}")
            arch["width"] = parse_value(value)
        command = ["convlens", "train", str(data)] + [
            f"--{key.replace('_', '-')}={ctx.params[key]}" for key in sorted(given - {"data"})
        ]
        augmentation: BoxAugmentation | bool = (
            BoxAugmentation(flip=p["flip"], zoom=p["zoom"], shift=p["width_shift"])
            if p["augment"]
            else False
        )
        with progress_bar("train --task detect") as bar:
            _, metrics = train_folder(
                data,
                out,
                val_fraction=p["val_fraction"],
                seed=p["seed"],
                epochs=p["epochs"],
                batch_size=p["batch_size"],
                lr=p["lr"],
                augment=augmentation,
                early_stopping=p["patience"] or None,
                filters=p["filters"],
                snapshot_every=p["snapshot_every"],
                tensorboard=p["tensorboard"],
                device=p["device"],
                threads=p["threads"],
                progress=_reporter(bar, "steps"),
                command=command,
                **arch,  # type: ignore[arg-type]
            )
    stop = " (stopped early)" if metrics["stopped_early"] else ""
    line = f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}{stop}"
    if metrics.get("best_val_map50") is not None:
        line += f"; val mAP@0.5 {metrics['best_val_map50']:.3f}"
    if "test_map50" in metrics:
        line += (
            f"; test mAP@0.5 {metrics['test_map50']:.3f}, mAP@0.5:0.95 "
            f"{metrics['test_map50_95']:.3f}, every object found in "
            f"{metrics['test_all_found']:.1%} of frames"
        )
    console.print(line)
    console.print(f"wrote model.pt, metrics.json to {out}/ (load it with convlens detect)")
