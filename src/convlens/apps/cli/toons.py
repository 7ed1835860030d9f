"""``convlens toons``: the synthetic toons data set and its concept sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.apps.cli.common import (
    app,
    console,
    progress_bar,
    progress_callback,
    user_errors,
)

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
        with progress_bar(f"toons {variant}") as bar:
            task = bar.add_task(f"toons {variant}", total=n)
            root = toons.write(
                out,
                n=n,
                variant=variant,
                seed=seed,
                size=size,
                splits=fractions,
                overwrite=overwrite,
                progress=progress_callback(bar, task),
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
