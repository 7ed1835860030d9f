"""``convlens dataset``: explanation runs over whole data sets (resumable, local or on Ray),
the audit with masks, and the report of a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from convlens.apps.cli.common import (
    FactoryOpt,
    ModelArg,
    TrustOpt,
    app,
    console,
    errors,
    load_model,
    progress_bar,
    progress_callback,
    split_list,
    user_errors,
)

dataset_app = typer.Typer(
    help="Whole data sets: resumable explanation runs (local or Ray), audits, reports.",
    no_args_is_help=True,
)
app.add_typer(dataset_app, name="dataset")

SETTING_HELP = (
    "Any setting of the chosen methods as --name value (--steps 32, --relu false, --seed 1); "
    "`convlens methods NAME` lists them. Re-running the same command resumes; a different "
    "model or settings in the same --out is refused."
)
SourceArg = Annotated[
    str,
    typer.Argument(
        help="A folder (class sub-folders give labels), a toons folder, a .csv/.txt list of "
        "paths (csv columns path,label,mask) or an uncompressed .tar (WebDataset style)."
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="The run folder (created, or resumed).")]
EngineOpt = Annotated[str, typer.Option(help="local (worker processes), ray, or serial.")]
WorkersOpt = Annotated[
    int | None,
    typer.Option(help="Decoding processes (local) or actors (ray); default: from the cores."),
]
AddressOpt = Annotated[
    str | None, typer.Option(help="Ray cluster to join (auto, ray://host:10001); --engine ray.")
]
TargetOpt = Annotated[
    str, typer.Option(help="label (the true class where known, else top-1) or predicted.")
]
SplitOpt = Annotated[str | None, typer.Option(help="One split of a toons folder (default all).")]
PartsOpt = Annotated[
    str | None, typer.Option(help="Toons mask parts that make the object, e.g. hair,face.")
]
LayerOpt = Annotated[str | None, typer.Option("--layer", "-l", help="Layer of the CAM methods.")]
OptionOpt = Annotated[
    list[str] | None,
    typer.Option("--option", "-O", help="A method setting as key=value (repeatable)."),
]


def _flags(args: list[str], options: list[str]) -> dict[str, str]:
    """``--name value`` / ``--name=value`` flags and ``-O name=value`` as raw text settings
    (each is parsed and checked by the method table)."""
    given: dict[str, str] = {}
    rest = list(args)
    while rest:
        flag = rest.pop(0)
        if not flag.startswith("--"):
            raise ValueError(f"expected a setting as --name value, got {flag!r}")
        name, sep, value = flag[2:].partition("=")
        if not sep:
            if not rest or rest[0].startswith("--"):
                raise ValueError(f"expected a value after {flag}")
            value = rest.pop(0)
        given[name.strip().replace("-", "_")] = value
    for item in options:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected --option key=value, got {item!r}")
        given[name.strip().replace("-", "_")] = value
    return given


def _run(kind: str, ctx: typer.Context, model: str, source: str, **kw: Any) -> None:
    from convlens.workflows import datasets

    settings: dict[str, Any] = _flags(list(ctx.args), kw.pop("option") or [])
    if kw.get("layer") is not None:
        settings["layer"] = kw["layer"]
    handle = load_model(model, kw.pop("factory"), kw.pop("trust_pickle"))
    how = datasets.audit if kind == "audit" else datasets.explain
    with progress_bar(f"dataset {kind}") as bar:
        task = bar.add_task(f"{kind} {handle.name}", total=None)
        run = how(
            handle,
            source,
            kw["method"],
            out=kw["out"],
            engine=kw["engine"],
            workers=kw["workers"],
            address=kw["address"],
            settings=settings,
            target=kw["target"],
            top_k=kw["top_k"],
            deletion=kw["deletion_steps"] if kw["deletion"] else False,
            seed=kw["seed"],
            split=kw["split"],
            parts=split_list(kw["parts"]),
            shard_size=kw["shard_size"],
            batch_size=kw["batch_size"],
            overwrite=kw["overwrite"],
            report=False,
            progress=progress_callback(bar, task),
        )
        bar.update(task, description="report")
        page = run.report()
    counts = run.counts()
    console.print(
        f"{counts['pictures']} pictures ({counts['failed']} failed) x {len(run.methods)} "
        f"method(s) in {run.folder.resolve()}/"
    )
    if kind == "audit":
        for method in run.methods:
            found = run.audit(method)
            if found is not None:
                console.print(f"{method}: {found.verdict}")
    console.print(f"report: {page.resolve()}")


def _command(kind: str, default_method: str, doc: str) -> Any:
    def command(
        ctx: typer.Context,
        model: ModelArg,
        source: SourceArg,
        out: OutOpt,
        method: Annotated[
            str, typer.Option("--method", "-m", help="Comma-separated methods.")
        ] = default_method,
        engine: EngineOpt = "local",
        workers: WorkersOpt = None,
        address: AddressOpt = None,
        target: TargetOpt = "label",
        top_k: Annotated[int, typer.Option(help="Classes kept per picture.")] = 5,
        deletion: Annotated[
            bool, typer.Option("--deletion", help="Also score each map by its deletion AUC.")
        ] = False,
        deletion_steps: Annotated[int, typer.Option(help="Steps of the deletion curve.")] = 50,
        seed: Annotated[int, typer.Option(help="Seed of the methods that draw noise.")] = 0,
        split: SplitOpt = None,
        parts: PartsOpt = None,
        layer: LayerOpt = None,
        batch_size: Annotated[int, typer.Option(help="Pictures per model call.")] = 16,
        shard_size: Annotated[int, typer.Option(help="Pictures per shard file.")] = 512,
        overwrite: Annotated[
            bool, typer.Option("--overwrite", help="Start the run in --out again.")
        ] = False,
        option: OptionOpt = None,
        factory: FactoryOpt = None,
        trust_pickle: TrustOpt = False,
    ) -> None:
        given = dict(
            out=out, method=method, engine=engine, workers=workers, address=address,
            target=target, top_k=top_k, deletion=deletion, deletion_steps=deletion_steps,
            seed=seed, split=split, parts=parts, layer=layer, batch_size=batch_size,
            shard_size=shard_size, overwrite=overwrite, option=option, factory=factory,
            trust_pickle=trust_pickle,
        )  # fmt: skip
        with user_errors():
            _run(kind, ctx, model, source, **given)

    command.__doc__ = doc
    return command


dataset_app.command(
    "explain",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=SETTING_HELP,
)(
    _command(
        "explain",
        "gradcam",
        "Explain every picture of a data set; one row per picture x method (Parquet), maps "
        "(float16), metrics, and report.html in --out.",
    )
)
dataset_app.command(
    "audit",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=SETTING_HELP,
)(
    _command(
        "audit",
        "integrated_gradients",
        "Per class: how much of the attribution lies on the object (masks) vs the background.",
    )
)


@dataset_app.command("report")
def report(
    run: Annotated[Path, typer.Argument(help="A run folder (convlens dataset explain --out).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write (default RUN/report.html).")
    ] = None,
    examples: Annotated[int, typer.Option(help="Pictures per list of examples.")] = 8,
) -> None:
    """Write the report of a run folder (one self-contained HTML page)."""
    with user_errors():
        from convlens.workflows.datasets import Run

        found = Run(run)
        if found.manifest.get("status") != "complete":
            errors.print(f"note: the run is {found.manifest.get('status')}; reporting its rows")
        path = found.report(out, examples=examples)
    console.print(f"report: {path.resolve()}")
