"""``convlens serve`` (the explorer) and ``convlens demo``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from convlens.apps.cli.common import (
    FactoryOpt,
    app,
    console,
    errors,
    progress_bar,
    user_errors,
)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/demo"),
    model: Annotated[str, typer.Option(help="The model to run.")] = "mobilenet_v2",
) -> None:
    """The main job: the bundled photos through a zoo model (MobileNetV2 by default), as one
    self-contained HTML page (OUT/index.html, with its PNGs beside it): top-5 predictions,
    activation grids of five layers, why each decision (Grad-CAM, Grad-CAM++, LayerCAM,
    Integrated Gradients, SmoothGrad and occlusion, each map with its colour bar), first-layer
    filters and feature visualizations, and the toon model's classes. Minutes on a CPU; each
    step is printed as it starts when the output is not a terminal."""
    with user_errors():
        from convlens.apps.demo import run

        if not errors.is_terminal:  # a log or a pipe: one line per step, not a silent bar
            start = time.perf_counter()

            def say(done: int, total: int, what: str = "") -> None:
                took = f"{time.perf_counter() - start:.0f} s"
                step = min(done + 1, total)
                errors.print(f"demo: step {step}/{total} {what} ({took})", highlight=False)

            page = run(out, model=model, progress=say)
            console.print(f"report: {page.resolve()}")
            return
        with progress_bar("demo") as bar:
            task = bar.add_task("demo", total=None)

            def report(done: int, total: int, what: str = "") -> None:
                bar.update(task, completed=done, total=total, description=what or "demo")

            page = run(out, model=model, progress=report)
    console.print(f"report: {page.resolve()}")


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

            from convlens.apps.server import ServerConfig, ServerState, create_app
        except ImportError as err:
            raise ImportError(
                f"convlens serve needs the 'serve' extra ({err.name} is missing): "
                "pip install 'convlens[serve]'"
            ) from None
        from convlens.apps.server.state import DEFAULT_MODELS

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
