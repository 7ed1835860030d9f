"""What every command shares: the app, argument types, one-line errors, progress bars and
small parsers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(
    name="convlens",
    help="See what a convolutional network sees, and why it decides.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one line per message, never wrapped


@app.callback()
def _options(
    download: Annotated[
        bool,
        typer.Option(
            "--download",
            help="Download a catalogue model's weights into torch's hub cache when they are "
            "not there (as CONVLENS_DOWNLOAD=1); without it such models are refused.",
        ),
    ] = False,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="Never download weights (as CONVLENS_OFFLINE=1), even with --download or "
            "CONVLENS_DOWNLOAD=1.",
        ),
    ] = False,
) -> None:
    """See what a convolutional network sees, and why it decides."""
    import os

    # read by the catalogues when weights are missing
    if download:
        os.environ["CONVLENS_DOWNLOAD"] = "1"
    if offline:
        os.environ["CONVLENS_OFFLINE"] = "1"


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
    from convlens.core.images import ImageError
    from convlens.core.loading import ModelLoadError
    from convlens.core.naming import UnknownNameError

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


def readable_pictures(handle: Any, images: list[str]) -> tuple[list[str], list[str]]:
    """The picture files among ``images`` (folders expanded) that ``handle`` can read and
    prepare, and one line for each one it cannot (printed here), so that one bad picture in a
    folder does not cost the others; see :func:`skipped_exit`. Nothing readable is an error
    (the one bad picture's own, when there is one)."""
    from convlens.core.images import ImageError, list_images

    good: list[str] = []
    bad: list[str] = []
    for source in images:
        path = Path(source).expanduser()
        files = list_images(path) if path.is_dir() else [path]
        for file in files:
            try:
                handle.prepare([str(file)])
            except (ImageError, FileNotFoundError, ValueError) as err:
                bad.append(str(err))
            else:
                good.append(str(file))
    if not good and len(bad) == 1:
        raise ValueError(bad[0])
    for message in bad:
        errors.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    if not good:
        raise ValueError(f"none of the {len(bad)} pictures could be read (named above)")
    return good, bad


def skipped_exit(skipped: list[str], total: int) -> None:
    """After a command wrote what it could: exit status 2 when pictures were skipped."""
    if skipped:
        errors.print(
            f"[bold red]error:[/] {len(skipped)} of {total} picture(s) could not be read "
            "(named above); the others were done",
            highlight=False,
            markup=True,
        )
        raise typer.Exit(2)


def load_model(
    model: str, factory: str | None, trust_pickle: bool, *, detectors: bool = False
) -> Any:
    """The model a command names; a detector only where the command takes one."""
    from convlens.core.loading import load
    from convlens.core.tasks import load_classifier

    how = load if detectors else load_classifier
    with download_bar() as progress:
        return how(model, factory=factory, trust_pickle=trust_pickle, progress=progress)


@contextmanager
def download_bar() -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done_bytes, total_bytes)`` callback that shows a download bar on stderr from
    its first call (nothing is shown when no weights are downloaded)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    shown: list[Any] = []

    def report(done: int, total: int) -> None:
        if not shown:
            bar = Progress(
                TextColumn("downloading weights"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=errors,
                transient=True,
            )
            bar.start()
            shown.extend([bar, bar.add_task("weights", total=total or None)])
        shown[0].update(shown[1], completed=done, total=total or None)

    try:
        yield report
    finally:
        if shown:
            shown[0].stop()


def progress_bar(description: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    )


def progress_callback(bar: Any, task: Any) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return report


def training_reporter(bar: Any, description: str) -> Any:
    """A training ``progress`` callback: epochs as lines above ``bar``, reading and steps on
    it."""
    task = bar.add_task(description, total=None)

    def report(event: Any) -> None:
        if event.stage == "epoch":
            bar.console.print(event.message, highlight=False)
        elif event.stage in ("load", "step"):
            bar.update(task, completed=event.done, total=event.total, description=event.message)

    return report


def parse_value(text: str) -> object:
    """'16' -> 16, '0.5' -> 0.5, 'true' -> True, '1,2,3' -> (1, 2, 3), else the text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if "," in text:
        return tuple(parse_value(part) for part in text.split(","))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_target(text: str) -> int | str:
    return int(text) if text.strip().lstrip("-").isdigit() else text


def split_list(text: str | None) -> list[str] | None:
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    return items or None


def channel_spec(text: str) -> list[int]:
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


DataArg = Annotated[
    Path,
    typer.Argument(
        help="A toons folder (index.json; see `convlens.data.toons.write`), or your own: "
        "images/<name>.png with masks/<name>.png (white = the object) and optionally "
        'labels.json {"<name>": "<class>"}.'
    ),
]
SplitOpt = Annotated[str, typer.Option(help="Which split of the folder to read.")]
PartsOpt = Annotated[
    str | None,
    typer.Option(
        "--parts", help="Mask parts the mask metrics use, e.g. hair,face (default: the object)."
    ),
]
