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
        handle = load_model(model, factory, trust_pickle)
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
def methods(
    name: Annotated[
        str | None, typer.Argument(help="One method: its settings, ranges and defaults.")
    ] = None,
    task: Annotated[str, typer.Option(help="classify or detect.")] = "classify",
    as_json: Annotated[bool, typer.Option("--json", help="The method table as JSON.")] = False,
) -> None:
    """The attribution methods convlens knows (or one method's settings)."""
    with user_errors():
        from convlens.techniques.attribution.base import ALIASES, get_method
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
        for alias, target in ALIASES.items():
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
        str | None, typer.Option(help="Only names or descriptions that contain this.")
    ] = None,
) -> None:
    """The named models that load offline: classifiers and detectors."""
    from convlens.core import zoo as registry

    table = Table()
    for column in ("name", "task", "description"):
        table.add_column(column)
    for entry in registry.entries():
        text = f"{entry.name} {entry.description}".lower()
        if search is None or search.lower() in text:
            table.add_row(entry.name, entry.task, entry.description)
    console.print(table)
