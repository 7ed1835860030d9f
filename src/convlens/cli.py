"""The ``convlens`` command line: a thin layer over the library.

torch and the library are imported inside the commands, so ``convlens --help`` is instant.
Errors the user can fix (a bad file, an unknown layer or class) print one line, not a trace.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="convlens",
    help="See what a convolutional network sees, and why it decides.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

ModelArg = Annotated[
    str,
    typer.Argument(
        help="A zoo name (mobilenet_v2), a model file (.pt, .onnx, .keras, plugin .py) "
        "or 'package.module:factory'."
    ),
]
FactoryOpt = Annotated[
    str | None,
    typer.Option("--factory", help="'package.module:fn' that builds the network for a state_dict."),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="Allow files that hold pickled Python objects (runs code)."
    ),
]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors into one red line and exit status 2."""
    from convlens.images import ImageError
    from convlens.loading import ModelLoadError
    from convlens.naming import UnknownNameError

    try:
        yield
    except (
        ImageError,
        ModelLoadError,
        UnknownNameError,
        FileNotFoundError,
        ValueError,
        ImportError,
    ) as err:
        errors.print(f"[bold red]error:[/] {err}", highlight=False, markup=True)
        raise typer.Exit(2) from None


def _load(model: str, factory: str | None, trust_pickle: bool, *, detectors: bool = False) -> Any:
    """The model a command names; a detector only where the command takes one."""
    from convlens.loading import load, load_classifier

    how = load if detectors else load_classifier
    return how(model, factory=factory, trust_pickle=trust_pickle)


def _progress_bar(description: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    )


def _callback(bar: Any, task: Any) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return report


@app.command()
def layers(
    model: ModelArg,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind", "-k", help="Only these kinds: conv, pool, act, norm, linear, block."
        ),
    ] = None,
    input_size: Annotated[
        str | None, typer.Option(help="C,H,W of the dry-run input (default: the model's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Table of every layer: dotted name, type, output shape, parameters."""
    with user_errors():
        from convlens.layers import layer_table

        handle = _load(model, factory, trust_pickle)
        size = tuple(int(v) for v in input_size.split(",")) if input_size else None
        table = layer_table(handle, size)
        if kind:
            table = table.filter(kind)
    if as_json:
        typer.echo(json.dumps({"model": handle.name, "layers": table.to_dicts()}, indent=1))
        return
    out = Table(title=f"{handle.name} · input {table.input_shape}", title_justify="left")
    for column in ("layer", "type", "output shape", "params"):
        out.add_column(column, justify="right" if column == "params" else "left")
    for row in table:
        shape = "x".join(map(str, row.output_shape)) if row.output_shape else "-"
        indent = "" if kind else "  " * row.depth  # nesting shows only in the full table
        out.add_row(indent + row.name, row.type, shape, f"{row.params:,}")
    console.print(out)
    console.print(f"total parameters: {table.total_params:,}")


@app.command()
def predict(
    model: ModelArg,
    images: Annotated[list[str], typer.Argument(help="Image files or folders.")],
    top: Annotated[int, typer.Option("--top", "-t", help="Classes shown per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Top-k class probabilities for each image."""
    with user_errors():
        handle = _load(model, factory, trust_pickle)
        prediction = handle.predict(images, top=top)
    if as_json:
        typer.echo(json.dumps(prediction.to_dicts(), indent=1))
        return
    for i, name in enumerate(prediction.names):
        table = Table(title=name, title_justify="left")
        table.add_column("probability", justify="right")
        table.add_column("class")
        table.add_column("index", justify="right")
        for index, label, p in prediction.topk(i):
            table.add_row(f"{p:.2%}", label, str(index))
        console.print(table)


@app.command()
def activations(
    model: ModelArg,
    images: Annotated[list[str], typer.Argument(help="Image files or folders.")],
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer",
            "-l",
            help="Layer ('features.3') or channel ('features.3:7'); repeat or comma-separate. "
            "Default: every conv and pool layer.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out"),
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    half: Annotated[bool, typer.Option("--half", help="Store activations as float16.")] = False,
    stream: Annotated[
        bool, typer.Option("--stream", help="Write activations to disk batch by batch.")
    ] = False,
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """One grid PNG per layer and image (each channel standardised), channel heatmaps, and the
    raw activations as activations.npz."""
    with user_errors():
        import torch

        from convlens.capture import activations as capture

        handle = _load(model, factory, trust_pickle)
        specs = [s.strip() for item in (layer or []) for s in item.split(",") if s.strip()]
        if not specs:
            specs = handle.layers().filter(["conv", "pool"], leaves_only=True).spatial().names
        out.mkdir(parents=True, exist_ok=True)
        with _progress_bar("activations") as bar:
            task = bar.add_task("forward passes", total=None)
            acts = capture(
                handle,
                images,
                specs,
                batch_size=batch_size,
                dtype=torch.float16 if half else None,
                stream_to=out / "activations.npz" if stream else None,
                progress=_callback(bar, task),
            )
        with _progress_bar("drawing") as bar:
            bar.add_task("drawing grids", total=None)
            written = acts.save(out, npz=not stream)
    pngs = [p for p in written if p.suffix == ".png"]
    console.print(f"wrote {len(pngs)} PNG file(s) and activations.npz to {out}/")


def _parse_value(text: str) -> object:
    """'16' -> 16, '0.5' -> 0.5, 'true' -> True, '1,2,3' -> (1, 2, 3), else the text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if "," in text:
        return tuple(_parse_value(part) for part in text.split(","))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@app.command()
def explain(
    model: ModelArg,
    images: Annotated[list[str], typer.Argument(help="Image files or folders.")],
    method: Annotated[
        str,
        typer.Option("--method", "-m", help="Comma-separated methods (see `convlens methods`)."),
    ] = "gradcam",
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            help="Class index or label, or several comma-separated (default: each image's top-1).",
        ),
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option("--layer", "-l", help="Layer of the CAM methods (default: last map)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/explain"),
    window: Annotated[int | None, typer.Option(help="Occlusion window (pixels).")] = None,
    stride: Annotated[int | None, typer.Option(help="Occlusion stride (pixels).")] = None,
    fill: Annotated[
        str | None, typer.Option(help="Occlusion fill: zero, black, mean, blur or R,G,B.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Integrated Gradients steps.")] = None,
    samples: Annotated[int | None, typer.Option(help="SmoothGrad samples.")] = None,
    masks: Annotated[int | None, typer.Option(help="RISE masks.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of random methods.")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Perturbed copies per forward pass.")
    ] = None,
    memory_budget_mb: Annotated[
        float | None, typer.Option(help="Memory for perturbed copies (sizes the batches).")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-O", help="Any method option as key=value (repeatable)."),
    ] = None,
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Explain the model's decisions: PNG overlays, raw maps (.npz), summary.json, index.html."""
    with user_errors():
        from convlens.attribution import get_method, method_options
        from convlens.explain_report import explanation_report

        handle = _load(model, factory, trust_pickle)
        chosen = [get_method(m.strip()).name for m in method.split(",") if m.strip()]
        given: dict[str, object] = {
            k: v
            for k, v in {
                "layer": layer,
                "window": window,
                "stride": stride,
                "fill": _parse_value(fill) if fill else None,
                "steps": steps,
                "samples": samples,
                "masks": masks,
                "seed": seed,
                "batch_size": batch_size,
                "memory_budget_mb": memory_budget_mb,
            }.items()
            if v is not None
        }
        for item in option or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"expected --option key=value, got {item!r}")
            given[key.strip()] = _parse_value(value)
        batch = handle.prepare(images)
        prediction = handle.predict(batch, top=1)
        wanted = [_target(t) for t in target.split(",")] if target else [None]
        out.mkdir(parents=True, exist_ok=True)
        results = []
        with _progress_bar("explain") as bar:
            task = bar.add_task("methods", total=len(chosen) * len(wanted))
            for name in chosen:
                info = get_method(name)
                accepted = method_options(name)
                options = {k: v for k, v in given.items() if accepted is None or k in accepted}
                if not info.needs_layer:
                    options.pop("layer", None)
                for one in wanted:
                    bar.update(task, description=name)
                    result = info.fn(handle, batch, one, **options)
                    stem = name if one is None else f"{name}__{one}"
                    result.save(out, stem=stem)
                    results.append(result)
                    bar.advance(task)
        summary = {
            "model": handle.name,
            "images": batch.names,
            "predictions": prediction.to_dicts(),
            "explanations": [r.summary() for r in results],
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        page = explanation_report(results, prediction, title=f"convlens explain · {handle.name}")
        page.save(out / "index.html")
    console.print(f"wrote {len(results)} method(s) x {len(batch)} image(s) to {out.resolve()}/")
    console.print(f"report: {(out / 'index.html').resolve()}")


def _target(text: str) -> int | str:
    return int(text) if text.strip().lstrip("-").isdigit() else text


@app.command()
def methods() -> None:
    """The attribution methods convlens knows."""
    from convlens.attribution import ALIASES
    from convlens.attribution import methods as registry

    table = Table()
    table.add_column("method", no_wrap=True)
    for column in ("family", "layer", "description", "paper"):
        table.add_column(column)
    aliases: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        aliases.setdefault(name, []).append(alias)
    for info in registry().values():
        name = info.name + (f" ({', '.join(aliases[info.name])})" if info.name in aliases else "")
        table.add_row(
            name, info.family, "yes" if info.needs_layer else "", info.description, info.paper
        )
    console.print(table)


@app.command()
def zoo() -> None:
    """The named models that load offline."""
    from convlens import zoo as registry

    table = Table()
    table.add_column("name")
    table.add_column("description")
    for entry in registry.entries():
        table.add_row(entry.name, entry.description)
    console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/demo"),
    model: Annotated[str, typer.Option(help="The model to run.")] = "mobilenet_v2",
) -> None:
    """The main job on the bundled photos: predictions and activation grids, as one HTML page."""
    with user_errors():
        from convlens.demo import run

        with _progress_bar("demo") as bar:
            task = bar.add_task("demo", total=None)

            def report(done: int, total: int, what: str = "") -> None:
                bar.update(task, completed=done, total=total, description=what or "demo")

            page = run(out, model=model, progress=report)
    console.print(f"report: {page.resolve()}")


@app.command()
def detect(
    detector: Annotated[
        str,
        typer.Argument(
            help="A zoo detector (toon-detector, mtcnn-faces), a detector checkpoint (.pt) or a "
            "plugin .py defining one."
        ),
    ],
    image: Annotated[Path, typer.Argument(help="The picture.")],
    score_threshold: Annotated[
        float | None,
        typer.Option(help="Keep boxes scoring at least this (default: the detector's)."),
    ] = None,
    iou_threshold: Annotated[float, typer.Option(help="NMS: drop boxes overlapping more.")] = 0.5,
    max_detections: Annotated[int, typer.Option(help="Keep at most this many boxes.")] = 20,
    explain: Annotated[
        str | None, typer.Option(help="Explain every box: drise, gradcam or layercam.")
    ] = None,
    masks: Annotated[int, typer.Option(help="D-RISE masks.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seeds the D-RISE masks.")] = 0,
    layer: Annotated[
        str | None, typer.Option(help="Layer the gradient CAMs read (default: the backbone's).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/detect"),
    factory: FactoryOpt = None,
) -> None:
    """Boxes, labels and scores drawn (detections.png) and listed (detections.json); with
    --explain, one saliency overlay per box (box_<i>_<method>.png) and its energy in the box."""
    with user_errors():
        from convlens.detection import BOX_METHODS, Detector, explain_box
        from convlens.detection import detect as run

        if explain is not None and explain not in BOX_METHODS:
            raise ValueError(f"expected --explain one of {', '.join(BOX_METHODS)}, got {explain!r}")
        handle = _load(detector, factory, False, detectors=True)
        if not isinstance(handle, Detector):
            raise ValueError(
                f"{detector!r} is a classifier; convlens detect takes a detector "
                "(try convlens predict or convlens explain)"
            )
        found = run(
            handle,
            image,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )
        written = found.save(out)
        shares: list[str] = []
        if explain and len(found):
            options: dict[str, Any] = (
                {"masks": masks, "seed": seed} if explain == "drise" else {"layer": layer}
            )
            with _progress_bar(explain) as bar:
                task = bar.add_task("boxes" if explain != "drise" else "masks", total=None)
                for i in range(len(found)):
                    if explain == "drise":
                        options["progress"] = _callback(bar, task)
                    result = explain_box(handle, image, found[i], explain, **options)
                    path = out / f"box_{i}_{explain}.png"
                    result.overlay().save(path)
                    written.append(path)
                    shares.append(f"  energy in box {result.energy_in_box():.2f}")
    for i, d in enumerate(found):
        share = shares[i] if shares else ""
        console.print(f"{d.name:>12} {d.score:.3f}  box {tuple(round(v, 1) for v in d.box)}{share}")
    console.print(
        f"{len(found)} detection(s); wrote {', '.join(p.name for p in written)} to {out}/"
    )


@app.command()
def serve(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to serve: zoo names, checkpoint/ONNX/Keras files or plugin .py files, "
            "classifiers or detectors (default: mobilenet_v2, toon-cnn and toon-detector).",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback requires a token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(help="Access token (generated and printed when binding beyond loopback)."),
    ] = None,
    data_dir: Annotated[
        Path, typer.Option(help="Folder for jobs and their results (kept across restarts).")
    ] = Path("convlens-data"),
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted.")] = 10.0,
    workers: Annotated[int, typer.Option(help="Worker threads for model work.")] = 2,
    factory: FactoryOpt = None,
) -> None:
    """The explorer: a local web app over the whole library (upload, predictions, activation
    sliders, every explanation method, filters, jobs), with a JSON/PNG API at /api."""
    with user_errors():
        try:
            import uvicorn

            from convlens.server import ServerConfig, ServerState, create_app
        except ImportError as err:
            raise ImportError(
                f"convlens serve needs the 'serve' extra ({err.name} is missing): "
                "pip install 'convlens[serve]'"
            ) from None
        from convlens.server.state import DEFAULT_MODELS

        config = ServerConfig(
            models=list(models or DEFAULT_MODELS),
            host=host,
            port=port,
            token=token,
            data_dir=data_dir,
            max_upload_mb=max_upload_mb,
            workers=workers,
            factory=factory,
        )
        state = ServerState.start(config)
    address = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    if config.token:
        address += f"?token={config.token}"
    console.print(f"convlens explorer: {address}  ({', '.join(state.models)})")
    try:
        uvicorn.run(create_app(state), host=host, port=port, log_level="warning")
    finally:
        state.close()


@app.command("train")
def train_command(
    ctx: typer.Context,
    data: Annotated[
        Path,
        typer.Argument(
            help="Image folder: ROOT/train/<class>/, ROOT/val/<class>/ [, ROOT/test/<class>/], "
            "or ROOT/<class>/ (split 80/20 per class). Other folders and files are ignored."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/train"),
    task: Annotated[
        str,
        typer.Option(
            help="classify (class folders) or detect (a folder with boxes, e.g. from "
            "`convlens toons make --variant crowd`; trains a CenterNet)."
        ),
    ] = "classify",
    arch: Annotated[
        str,
        typer.Option(
            "--arch", help="explorer_cnn, scratch_cnn, or 'package.module:factory' (your own)."
        ),
    ] = "explorer_cnn",
    arch_option: Annotated[
        list[str] | None,
        typer.Option(
            "--arch-option",
            "-A",
            help="Architecture option as key=value, e.g. widths=16,32,64 or dense=64 (repeatable).",
        ),
    ] = None,
    size: Annotated[
        str | None,
        typer.Option(help="Input size H or H,W (default: the architecture's, 128 for explorer)."),
    ] = None,
    channels: Annotated[int, typer.Option(help="3 (RGB) or 1 (grey).")] = 3,
    epochs: Annotated[int, typer.Option(help="Passes over the training images.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seeds split, weights, order and augmentation.")] = 0,
    val_fraction: Annotated[
        float, typer.Option(help="Validation share when the data has no val/ folder.")
    ] = 0.2,
    patience: Annotated[
        int,
        typer.Option(help="Stop after this many epochs without a lower val loss (0: never)."),
    ] = 5,
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help="Random augmentation of each batch.")
    ] = True,
    rotation: Annotated[float, typer.Option(help="Max rotation in degrees (0: off).")] = 45.0,
    width_shift: Annotated[
        float, typer.Option(help="Max horizontal shift, fraction of the width.")
    ] = 0.2,
    height_shift: Annotated[
        float, typer.Option(help="Max vertical shift, fraction of the height.")
    ] = 0.2,
    zoom: Annotated[float, typer.Option(help="Zoom range: scale in [1-z, 1+z] (0: off).")] = 0.2,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random left-right flip.")] = True,
    brightness: Annotated[
        float, typer.Option(help="Brightness jitter: factor in [1-b, 1+b] (0: off).")
    ] = 0.0,
    fill: Annotated[
        str, typer.Option(help="Fill where content moved away: nearest, reflect, constant.")
    ] = "nearest",
    filters: Annotated[
        str | None,
        typer.Option(help="Conv layers to watch, e.g. conv1,conv2 (default: first four convs)."),
    ] = None,
    snapshot_every: Annotated[
        int, typer.Option(help="Draw the watched filters every N steps (0: never).")
    ] = 50,
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard/--no-tensorboard", help="Write TensorBoard logs.")
    ] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads (default: all cores); 1 is faster on a busy machine."),
    ] = None,
) -> None:
    """Train a classifier on an image folder (or with --task detect a detector on a folder with
    boxes): model.pt (load it with any convlens command), metrics.json, tensorboard/ and
    filters/<layer>.gif + .png of the filters evolving."""
    if task not in ("classify", "detect"):
        with user_errors():
            raise ValueError(f"expected --task classify or detect, got {task!r}")
    if task == "detect":
        _train_detector(ctx, data, out)
        return
    with user_errors():
        from convlens.training import Augmentation, train

        options: dict[str, object] = {}
        for item in arch_option or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"expected --arch-option key=value, got {item!r}")
            options[key.strip()] = _parse_value(value)
        input_size = _parse_value(size) if size else None
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
        with _progress_bar("train") as bar:
            task = bar.add_task("reading images", total=None)

            def report(event: Any) -> None:
                if event.stage == "epoch":
                    bar.console.print(event.message, highlight=False)
                elif event.stage in ("load", "step"):
                    bar.update(
                        task, completed=event.done, total=event.total, description=event.message
                    )

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
                progress=report,
                command=command,
            )
    metrics = result.metrics
    finals = ", ".join(
        f"{split} accuracy {metrics[f'{split}_accuracy']:.2%}"
        for split in ("val", "test")
        if f"{split}_accuracy" in metrics
    )
    stop = " (stopped early)" if result.stopped_early else ""
    console.print(
        f"best epoch {result.best_epoch} of {metrics['epochs_run']}{stop}; {finals}; "
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
    """``convlens train DATA --task detect``: :func:`convlens.centernet.train_folder` with the
    classifier command's options that apply to a detector (the rest are refused). Its own
    defaults: 12 epochs, batch 32, lr 2e-3, no early stopping, shifts of up to 0.15 of the
    side in both directions (--width-shift), a 10 % validation share when there is no val/."""
    with user_errors():
        from convlens.centernet import BoxAugmentation, train_folder

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
            arch["width"] = _parse_value(value)
        command = ["convlens", "train", str(data)] + [
            f"--{key.replace('_', '-')}={ctx.params[key]}" for key in sorted(given - {"data"})
        ]
        augmentation: BoxAugmentation | bool = (
            BoxAugmentation(flip=p["flip"], zoom=p["zoom"], shift=p["width_shift"])
            if p["augment"]
            else False
        )
        with _progress_bar("train --task detect") as bar:
            task = bar.add_task("steps", total=None)

            def report(event: Any) -> None:
                if event.stage == "epoch":
                    bar.console.print(event.message, highlight=False)
                elif event.stage == "step":
                    bar.update(
                        task, completed=event.done, total=event.total, description=event.message
                    )

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
                progress=report,
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


@app.command()
def filters(
    model: ModelArg,
    layer: Annotated[
        list[str],
        typer.Option(
            "--layer", "-l", help="Conv layer ('features.0.0'; 'layer:7' for one filter); repeat."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/filters"),
    view: Annotated[
        str, typer.Option(help="auto, rgb (colour patches), channels, mean or norm.")
    ] = "auto",
    scale: Annotated[str, typer.Option(help="shared (one scale) or per_filter.")] = "shared",
    max_filters: Annotated[int, typer.Option(help="Draw the first N filters.")] = 64,
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Draw a conv layer's filter weights: RGB patches for the first layer, per-input-channel
    tiles or reduced views deeper; the scale is written on the picture. One PNG per layer."""
    with user_errors():
        from convlens.filters import filter_weights

        handle = _load(model, factory, trust_pickle)
        written = []
        for spec in [s.strip() for item in layer for s in item.split(",") if s.strip()]:
            shown = filter_weights(handle, spec, view=view, scale=scale, max_filters=max_filters)
            written.append(shown.save(out / f"{spec.replace(':', '_')}.png"))
    for path in written:
        console.print(f"wrote {path}")


def _channel_spec(text: str) -> list[int]:
    """'0-63' -> [0..63], '0,5,9' -> [0, 5, 9], '0-3,8' -> [0, 1, 2, 3, 8]."""
    items: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, sep, last = part.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise ValueError(f"expected channels like 0-63 or 0,5,9, got {text!r}")
        items += list(range(int(first), int(last) + 1)) if sep else [int(first)]
    if not items:
        raise ValueError(f"expected channels like 0-63 or 0,5,9, got {text!r}")
    return items


@app.command()
def featurevis(
    model: ModelArg,
    layer: Annotated[
        str | None,
        typer.Option("--layer", "-l", help="Layer ('features.14') or channel ('features.14:17')."),
    ] = None,
    channels: Annotated[
        str | None,
        typer.Option(help="Channels of --layer, e.g. 0-63 or 0,5,9 (default: the first 64)."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--class", "-c", help="Class label(s) or index(es), comma-separated."),
    ] = None,
    neuron: Annotated[
        bool, typer.Option("--neuron", help="The centre position only, not the channel mean.")
    ] = False,
    preset: Annotated[
        str, typer.Option(help="lucent (Fourier, transforms, Adam), classic (40 steps) or pixels.")
    ] = "lucent",
    steps: Annotated[int | None, typer.Option(help="Optimisation steps (default: preset's).")] = (
        None
    ),
    size: Annotated[int | None, typer.Option(help="Image side (default: the model's).")] = None,
    lr: Annotated[float | None, typer.Option(help="Step size (default: preset's).")] = None,
    l2: Annotated[float, typer.Option(help="Weight of an L2 penalty toward grey.")] = 0.0,
    tv: Annotated[float, typer.Option(help="Weight of a total-variation penalty.")] = 0.0,
    diversity: Annotated[
        float, typer.Option(help="Weight of a diversity term across the batch (same layer).")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seeds the start image and the transforms.")] = 0,
    batch_size: Annotated[
        int | None, typer.Option(help="Images optimised together (default: memory budget).")
    ] = None,
    memory_budget_mb: Annotated[
        float | None, typer.Option(help="Memory for one batch (sizes the batches).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "out/featurevis"
    ),
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """What a channel, neuron or class responds to most, by gradient ascent on the input:
    grid.png, one PNG per image, featurevis.gif (the optimisation) and history.json."""
    with user_errors():
        from convlens.naming import parse_layer
        from convlens.visualize import featurevis as run
        from convlens.visualize import objectives as obj

        handle = _load(model, factory, trust_pickle)
        if (layer is None) == (target is None):
            raise ValueError("give --layer (a layer or layer:channel) or --class, one of them")
        objective: Any
        if target is not None:
            if channels is not None or neuron:
                raise ValueError("--channels and --neuron go with --layer, not --class")
            classes = [_target(t.strip()) for t in target.split(",") if t.strip()]
            objective = obj.class_logit(classes if len(classes) > 1 else classes[0])
        else:
            assert layer is not None
            ref = parse_layer(layer)
            if ref.channel is not None and channels is not None:
                raise ValueError(f"give the channel in --layer ({layer}) or --channels, not both")
            if ref.channel is not None:
                which: Any = ref.channel
            elif channels is not None:
                which = _channel_spec(channels)
            else:
                width = obj.channels(ref.name).bind(handle).batch or 1
                which = list(range(min(64, width)))
            objective = (obj.neuron if neuron else obj.channel)(ref.name, which)
            if diversity:
                objective = objective + diversity * obj.diversity(ref.name)
        if l2:
            objective = objective - l2 * obj.l2()
        if tv:
            objective = objective - tv * obj.total_variation()
        with _progress_bar("featurevis") as bar:
            task = bar.add_task("steps", total=None)
            result = run(
                handle,
                objective,
                preset=preset,
                steps=steps,
                size=size,
                lr=lr,
                seed=seed,
                batch_size=batch_size,
                memory_budget_mb=memory_budget_mb,
                progress=_callback(bar, task),
            )
        result.save(out)
    first, last = result.history[0].mean().item(), result.history[-1].mean().item()
    console.print(
        f"{result.objective}: {len(result)} image(s), objective {first:.3g} -> {last:.3g} "
        f"(mean over images) in {result.history.shape[0]} steps"
    )
    console.print(f"wrote grid.png, {len(result)} PNG(s), featurevis.gif, history.json to {out}/")


@app.command()
def tcav(
    model: ModelArg,
    more_random: Annotated[
        list[str] | None,
        typer.Argument(
            help="More random folders (what the shell makes of --random concepts/random_*).",
            show_default=False,
        ),
    ] = None,
    target: Annotated[str, typer.Option("--target", "-t", help="Class label or index.")] = "",
    images: Annotated[
        str, typer.Option(help="Pictures of the target class (a folder or one file).")
    ] = "",
    concepts: Annotated[
        str,
        typer.Option(
            help="A folder of concept folders (random_* sub-folders are the random sets unless "
            "--random is given), or 'toons' for the built-in toon concepts."
        ),
    ] = "",
    random: Annotated[
        str | None,
        typer.Option(
            help="Random sets: folders (the shell may expand a glob), a quoted glob, a folder "
            "of random_* folders, or a pool folder to draw --n-random sets from."
        ),
    ] = None,
    layers: Annotated[
        str | None, typer.Option(help="Comma-separated layers (default: the last spatial one).")
    ] = None,
    n_random: Annotated[int, typer.Option(help="Random sets drawn from a pool / toons.")] = 10,
    relative: Annotated[
        str | None, typer.Option(help="Relative TCAV pairs, e.g. red:blue,stripes:dots.")
    ] = None,
    classifier: Annotated[str, typer.Option(help="logistic, svm or mean (FastCAV).")] = (
        "logistic"
    ),
    alpha: Annotated[float, typer.Option(help="Significance level (after Bonferroni).")] = 0.05,
    test: Annotated[
        str,
        typer.Option(help="sets (concept vs random sets' scores) or paper (Kim et al.'s t-test)."),
    ] = "sets",
    seed: Annotated[int, typer.Option(help="Seeds pool draws and train/test splits.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Pictures per forward pass.")] = 32,
    cache: Annotated[
        Path | None,
        typer.Option(help="Folder for activations keyed by content (reused across runs)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/tcav"),
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Concept testing (TCAV, Kim et al. 2018): which concepts raise the target class's logit,
    per layer, against random sets, with the paper's t-test. Prints the table and writes
    tcav.json, tcav.csv and tcav.png (bars with error bars and stars)."""
    with user_errors():
        from convlens.concepts import tcav as run

        for name, value in (("--target", target), ("--images", images), ("--concepts", concepts)):
            if not value:
                raise ValueError(f"{name} is required")
        randoms: Any = random
        if more_random:
            if random is None:
                raise ValueError(f"unexpected arguments {more_random}: only --random takes several")
            randoms = [random, *more_random]
        pairs = []
        for item in (relative or "").split(","):
            if item.strip():
                a, sep, b = item.partition(":")
                if not sep:
                    raise ValueError(f"expected --relative pairs as a:b, got {item!r}")
                pairs.append((a.strip(), b.strip()))
        handle = _load(model, factory, trust_pickle)
        with _progress_bar("tcav") as bar:
            task = bar.add_task("pictures", total=None)
            result = run(
                handle,
                _target(target),
                images,
                concepts,
                random=randoms,
                layers=layers,
                n_random=n_random,
                relative=pairs,
                classifier=classifier,
                alpha=alpha,
                test=test,
                seed=seed,
                batch_size=batch_size,
                cache_dir=cache,
                progress=_callback(bar, task),
            )
        result.save(out)
    console.print(str(result), highlight=False, markup=False)
    console.print(f"wrote tcav.json, tcav.csv and tcav.png to {out}/")


toons_app = typer.Typer(
    help="The synthetic toons data set (known masks) and its TCAV concept sets.",
    no_args_is_help=True,
)
app.add_typer(toons_app, name="toons")


@toons_app.command("make")
def toons_make(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")],
    variant: Annotated[
        str, typer.Option(help="clean, spurious, dyed, hat or crowd (see the docs).")
    ] = "clean",
    n: Annotated[int, typer.Option("--n", help="Images in all splits together.")] = 5000,
    seed: Annotated[int, typer.Option(help="Everything follows from the seed.")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 128,
    splits: Annotated[
        str, typer.Option(help="train,val,test fractions (0 drops a split).")
    ] = "0.7,0.15,0.15",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a toons folder written before.")
    ] = False,
) -> None:
    """Write a toons data set: <split>/<class>/*.png, masks/, instances/ and index.json."""
    with user_errors():
        from convlens.data import toons

        try:
            fractions = [float(v) for v in splits.split(",")]
        except ValueError:
            raise ValueError(f"expected --splits like 0.7,0.15,0.15, got {splits!r}") from None
        with _progress_bar(f"toons {variant}") as bar:
            task = bar.add_task(f"toons {variant}", total=n)
            root = toons.write(
                out,
                n=n,
                variant=variant,
                seed=seed,
                size=size,
                splits=fractions,
                overwrite=overwrite,
                progress=_callback(bar, task),
            )
        counts = ", ".join(f"{k} {v}" for k, v in toons.split_counts(n, fractions).items())
        console.print(f"{n} {variant} toons ({counts}) in {root}")


@toons_app.command("concepts")
def toons_concepts(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")],
    n: Annotated[int, typer.Option("--n", help="Images per concept and random set.")] = 30,
    randoms: Annotated[int, typer.Option(help="Random sets random_0 .. random_<N-1>.")] = 10,
    seed: Annotated[int, typer.Option(help="Everything follows from the seed.")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 128,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a concept folder written before.")
    ] = False,
) -> None:
    """Write TCAV concept folders (red, blue, ..., stripes, dots) and random_0..N sets."""
    with user_errors():
        from convlens.data import toons

        root = toons.write_concepts(
            out, n=n, randoms=randoms, seed=seed, size=size, overwrite=overwrite
        )
        console.print(
            f"{len(toons.CONCEPTS)} concepts and {randoms} random sets of {n} images in {root}"
        )


DataArg = Annotated[
    Path, typer.Argument(help="A toons folder (index.json; see `convlens.data.toons.write`).")
]
SplitOpt = Annotated[str, typer.Option(help="Which split of the folder to read.")]
PartsOpt = Annotated[
    str | None,
    typer.Option(
        "--parts", help="Mask parts the mask metrics use, e.g. hair,face (default: the object)."
    ),
]


def _split_list(text: str | None) -> list[str] | None:
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    return items or None


@app.command()
def evaluate(
    model: ModelArg,
    data: DataArg,
    method: Annotated[
        str, typer.Option("--method", "-m", help="Comma-separated methods, or 'all'.")
    ] = "gradcam",
    metrics: Annotated[
        str | None,
        typer.Option("--metrics", help="Comma-separated metrics (default: all of them)."),
    ] = None,
    n: Annotated[int | None, typer.Option("--n", help="Use the first N images.")] = 500,
    parts: PartsOpt = None,
    split: SplitOpt = "test",
    steps: Annotated[int, typer.Option(help="Deletion / insertion steps.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/evaluate"),
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Score explanation methods on a data set with masks: pointing game, energy in the mask,
    deletion / insertion AUC, Average Drop, Increase in Confidence (mean ± 95 % CI). A detector
    is scored on a folder with boxes: mAP@0.5, mAP@0.5:0.95, every-object-found rate, and its
    box explanations (drise, gradcam, layercam) by energy in box and pointing."""
    with user_errors():
        from convlens.attribution import methods as registry
        from convlens.detection import BOX_METHODS, Detector, evaluate_detector
        from convlens.evaluation import DEFAULT_METRICS, as_masked
        from convlens.evaluation import evaluate as run

        handle = _load(model, factory, trust_pickle, detectors=True)
        if isinstance(handle, Detector):
            if metrics is not None or parts is not None:
                raise ValueError(
                    "a detector is scored by mAP and by energy in box / pointing; "
                    "--metrics and --parts are for classifiers"
                )
            chosen = list(BOX_METHODS) if method.strip() == "all" else _split_list(method) or []
            with _progress_bar("evaluate") as bar:
                task = bar.add_task("frames", total=None)
                scored = evaluate_detector(
                    handle,
                    data,
                    chosen,
                    split=split,
                    n=n,
                    batch_size=batch_size,
                    progress=_callback(bar, task),
                )
            out.mkdir(parents=True, exist_ok=True)
            written = scored.save(out / "evaluation.json")
            console.print(str(scored), highlight=False)
            console.print(f"wrote {written.resolve()}")
            return
        names = list(registry()) if method.strip() == "all" else _split_list(method) or []
        dataset = as_masked(data, split=split)
        with _progress_bar("evaluate") as bar:
            task = bar.add_task("method x batch", total=None)
            result = run(
                handle,
                dataset,
                names,
                _split_list(metrics) or DEFAULT_METRICS,
                parts=_split_list(parts),
                n=n,
                steps=steps,
                batch_size=batch_size,
                progress=_callback(bar, task),
            )
        out.mkdir(parents=True, exist_ok=True)
        written = result.save(out / "evaluation.json")
    console.print(result)
    console.print(f"wrote {written.resolve()}")


@app.command()
def audit(
    model: ModelArg,
    data: DataArg,
    method: Annotated[
        str, typer.Option("--method", "-m", help="The method to audit with (see `audit` docs).")
    ] = "integrated_gradients",
    n: Annotated[int | None, typer.Option("--n", help="Use the first N images.")] = 500,
    parts: PartsOpt = None,
    split: SplitOpt = "test",
    threshold: Annotated[
        float, typer.Option(help="Background share above which the model 'relies on it'.")
    ] = 0.5,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/audit"),
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Does the model look at the object or at the background? A verdict and an HTML report."""
    with user_errors():
        from convlens.evaluation import as_masked
        from convlens.evaluation import audit as run

        handle = _load(model, factory, trust_pickle)
        dataset = as_masked(data, split=split)
        with _progress_bar("audit") as bar:
            task = bar.add_task("batches", total=None)
            result = run(
                handle,
                dataset,
                method,
                parts=_split_list(parts),
                threshold=threshold,
                n=n,
                batch_size=batch_size,
                progress=_callback(bar, task),
            )
        out.mkdir(parents=True, exist_ok=True)
        page = result.save(out / "audit.html")
        (out / "audit.json").write_text(result.to_json())
    console.print(f"{handle.name}: {result.verdict}", highlight=False)
    for row in result.classes():
        console.print(f"  {row['class']}: {row['verdict']}", highlight=False)
    console.print(f"report: {page.resolve()}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
