"""``convlens tcav``: concept tests."""

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
    load_model,
    parse_target,
    progress_bar,
    progress_callback,
    user_errors,
)

ClassifierOpt = Annotated[
    str,
    typer.Option(
        help="CAVs of the set tests (sets, paper): logistic, svm or mean (FastCAV); the local "
        "test always takes the difference of channel means."
    ),
]
TestOpt = Annotated[
    str,
    typer.Option(
        help="local (the default: where the concept appears in each target picture, the logit's "
        "derivative along the CAV, integrated along the path from a zero map to the picture, "
        "against random pictures relabelled as the concept, a permutation test), sets (the "
        "concept's TCAV score against the random sets' scores) or paper (Kim et al.'s t-test, "
        "kept for comparison: it flags noise)."
    ),
]


def _pairs(relative: str | None) -> list[tuple[str, str]]:
    """``"red:blue,stripes:dots"`` -> ``[("red", "blue"), ("stripes", "dots")]``."""
    pairs = []
    for item in (relative or "").split(","):
        if item.strip():
            a, sep, b = item.partition(":")
            if not sep:
                raise ValueError(f"expected --relative pairs as a:b, got {item!r}")
            pairs.append((a.strip(), b.strip()))
    return pairs


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
    classifier: ClassifierOpt = "logistic",
    alpha: Annotated[float, typer.Option(help="Significance level (after Bonferroni).")] = 0.05,
    test: TestOpt = "local",
    steps: Annotated[
        int,
        typer.Option(
            help="Points on the local test's path from a zero map to each target picture's "
            "activation (0: the gradient at the picture, first order)."
        ),
    ] = 4,
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
    """Concept testing (TCAV, Kim et al. 2018): which concepts raise (+) or lower (-) the target
    class's logit, per layer, against random pictures. The default test is 'local' (a
    permutation test where the concept appears); --test sets|paper run the set tests. Prints
    the table (headed by the test that ran) and writes tcav.json (with "test"), tcav.csv and
    tcav.png."""
    with user_errors():
        from convlens.techniques.concepts import tcav as run

        for name, value in (("--target", target), ("--images", images), ("--concepts", concepts)):
            if not value:
                raise ValueError(f"{name} is required")
        randoms: Any = random
        if more_random:
            if random is None:
                raise ValueError(f"unexpected arguments {more_random}: only --random takes several")
            randoms = [random, *more_random]
        handle = load_model(model, factory, trust_pickle)
        with progress_bar("tcav") as bar:
            task = bar.add_task("pictures", total=None)
            result = run(
                handle,
                parse_target(target),
                images,
                concepts,
                random=randoms,
                layers=layers,
                n_random=n_random,
                relative=_pairs(relative),
                classifier=classifier,
                alpha=alpha,
                test=test,
                steps=steps,
                seed=seed,
                batch_size=batch_size,
                cache_dir=cache,
                progress=progress_callback(bar, task),
            )
        result.save(out)
    console.print(str(result), highlight=False, markup=False)
    console.print(f"test: {result.test}; wrote tcav.json, tcav.csv and tcav.png to {out}/")
