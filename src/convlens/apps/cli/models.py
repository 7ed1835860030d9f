"""Commands about models: the layer table, predictions, the attribution methods and the zoo."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from convlens.apps.cli.common import (
    FactoryOpt,
    ModelArg,
    TrustOpt,
    app,
    console,
    load_model,
    readable_pictures,
    skipped_exit,
    user_errors,
)


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
        from convlens.core.layers import layer_table

        handle = load_model(model, factory, trust_pickle)
        size = tuple(int(v) for v in input_size.split(",")) if input_size else None
        table = layer_table(handle, size)
        if kind:
            table = table.filter(kind)
    if as_json:
        typer.echo(json.dumps({"model": handle.name, "layers": table.to_dicts()}, indent=1))
        return
    out = Table(title=f"{handle.name} · input {table.input_shape}", title_justify="left")
    notes = any(row.note for row in table)
    for column in ("layer", "type", "output shape", "params", *(("note",) if notes else ())):
        out.add_column(column, justify="right" if column == "params" else "left")
    for row in table:
        shape = "x".join(map(str, row.output_shape)) if row.output_shape else "-"
        indent = "" if kind else "  " * row.depth  # nesting shows only in the full table
        note = (row.note,) if notes else ()
        out.add_row(indent + row.name, row.type, shape, f"{row.params:,}", *note)
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
    """Top-k class probabilities for each image; for the toon models also how far each picture
    is from what they were trained on (an out-of-distribution score, above 1: far)."""
    with user_errors():
        from convlens.workflows.ood import familiarity, far_message

        handle = load_model(model, factory, trust_pickle)
        pictures, skipped = readable_pictures(handle, images)
        prediction = handle.predict(pictures, top=top)
        known = familiarity(handle, pictures)
    if as_json:
        rows = prediction.to_dicts()
        for row, ood in zip(rows, known or [], strict=False):
            row.update(ood)
        typer.echo(json.dumps(rows, indent=1))
        skipped_exit(skipped, len(pictures) + len(skipped))
        return
    for i, name in enumerate(prediction.names):
        if known is not None and known[i]["far"]:
            console.print(f"{name}: {far_message(known[i]['ood_score'])}", highlight=False)
        table = Table(title=name, title_justify="left")
        table.add_column("probability", justify="right")
        table.add_column("class")
        table.add_column("index", justify="right")
        for index, label, p in prediction.topk(i):
            table.add_row(f"{p:.2%}", label, str(index))
        console.print(table)
    skipped_exit(skipped, len(pictures) + len(skipped))


@app.command()
def methods(
    name: Annotated[
        str | None, typer.Argument(help="One method: its settings, ranges and defaults.")
    ] = None,
    task: Annotated[str, typer.Option(help="classify, detect or segment.")] = "classify",
    as_json: Annotated[bool, typer.Option("--json", help="The method table as JSON.")] = False,
) -> None:
    """The attribution methods convlens knows (or one method's settings)."""
    with user_errors():
        from convlens.techniques.attribution.base import get_method, method_aliases
        from convlens.techniques.attribution.base import methods as registry

        if name is not None:
            _method_settings(get_method(name, task), as_json)
            return
        table_of = registry(task)
        if as_json:
            console.print_json(json.dumps([i.to_dict() for i in table_of.values()]))
            return
        table = Table()
        table.add_column("method", no_wrap=True)
        for column in ("family", "layer", "description", "paper"):
            table.add_column(column)
        aliases: dict[str, list[str]] = {}
        for alias, target in method_aliases(task).items():
            aliases.setdefault(target, []).append(alias)
        for info in table_of.values():
            shown = info.name + (
                f" ({', '.join(aliases[info.name])})" if info.name in aliases else ""
            )
            table.add_row(
                shown, info.family, "yes" if info.needs_layer else "", info.description, info.paper
            )
        console.print(table)


def _method_settings(info: Any, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(info.to_dict()))
        return
    console.print(f"[bold]{info.name}[/] ({info.task}, {info.family}): {info.description}")
    console.print(f"paper: {info.paper}", highlight=False)
    table = Table()
    for column in ("setting", "type", "default", "range or choices", "help"):
        table.add_column(column)
    for s in info.settings:
        if s.choices:
            allowed = ", ".join(s.choices)
        elif s.min is not None or s.max is not None:
            allowed = f"{s.min} .. {s.max}"
        else:
            allowed = ""
        table.add_row(f"--{s.name.replace('_', '-')}", s.type, str(s.default), allowed, s.help)
    console.print(table)


@app.command()
def zoo(
    search: Annotated[
        str | None, typer.Option(help="Only names or descriptions that contain this (timm too).")
    ] = None,
    cached: Annotated[
        bool, typer.Option("--cached", help="Only models whose weights are on this machine.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The models convlens loads by name: its own zoo, torchvision's classifiers, detectors and
    segmenters, and timm's models (with --search); whether their weights are cached."""
    with user_errors():
        rows = _zoo_rows(search, cached)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table()
    for column in ("name", "task", "source", "weights", "description"):
        table.add_column(column, no_wrap=column != "description")
    for row in rows:
        table.add_row(row["name"], row["task"], row["source"], row["weights"], row["description"])
    console.print(table)
    from convlens.core.zoo import is_offline, timm_models, wants_download

    if search is None and not cached:
        if timm_models.available():
            console.print(
                "timm: load any pretrained timm model as timm:NAME; "
                "`convlens zoo --search NAME` lists them"
            )
        else:
            console.print(f"timm models: {timm_models.INSTALL}")
    if is_offline():
        state = "off (CONVLENS_OFFLINE=1 / --offline)"
    else:
        state = "on" if wants_download() else "only when asked (--download / CONVLENS_DOWNLOAD=1)"
    console.print(f"downloads into torch's hub cache: {state}")


def _zoo_rows(search: str | None, cached: bool) -> list[dict[str, Any]]:
    from convlens.core import zoo as registry
    from convlens.core.zoo import catalogue

    wanted = search.lower() if search else None
    rows: list[dict[str, Any]] = []
    for entry in registry.entries():
        if wanted is None or wanted in f"{entry.name} {entry.description}".lower():
            rows.append(
                {
                    "name": entry.name,
                    "task": entry.task,
                    "source": "convlens",
                    "weights": "no download",
                    "description": entry.description,
                }
            )
    own = {row["name"] for row in rows}
    for item in catalogue.entries(search):
        if item.name in own:
            continue
        where = item.cached
        if cached and where is None:
            continue
        size = item.weights.size_mb if item.weights is not None else None
        rows.append(
            {
                "name": item.name,
                "task": item.task,
                "source": item.source,
                "weights": "cached"
                if where is not None
                else (f"download {size:.0f} MB" if size else "download"),
                "description": item.description,
            }
        )
    return rows
