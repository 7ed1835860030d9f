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


def _load(model: str, factory: str | None, trust_pickle: bool) -> Any:
    from convlens.loading import load

    return load(model, factory=factory, trust_pickle=trust_pickle)


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
