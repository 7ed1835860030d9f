"""``convlens evaluate`` and ``convlens audit``: explanations scored against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.apps.cli.common import (
    DataArg,
    FactoryOpt,
    ModelArg,
    PartsOpt,
    SplitOpt,
    TrustOpt,
    app,
    console,
    load_model,
    progress_bar,
    progress_callback,
    split_list,
    user_errors,
)


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
    box explanations (drise, gradcam, layercam) by energy in box and pointing. A segmenter on
    toons folders: IoU per class, mean IoU, and its region explanations by energy in the
    explained part's own mask."""
    with user_errors():
        from convlens.core.detector import Detector
        from convlens.techniques.attribution.base import methods as registry
        from convlens.techniques.attribution.detection import box_methods
        from convlens.workflows.detection_eval import evaluate_detector
        from convlens.workflows.evaluation import DEFAULT_METRICS
        from convlens.workflows.evaluation import evaluate as run
        from convlens.workflows.masked import as_masked

        handle = load_model(model, factory, trust_pickle, detectors=True)
        if handle.task == "segment":
            from convlens.apps.cli.segment import evaluate_segmenter_command

            evaluate_segmenter_command(
                handle, data, method, metrics, parts, n, split, batch_size, out
            )
            return
        if isinstance(handle, Detector):
            if metrics is not None or parts is not None:
                raise ValueError(
                    "a detector is scored by mAP and by energy in box / pointing; "
                    "--metrics and --parts are for classifiers"
                )
            chosen = box_methods() if method.strip() == "all" else split_list(method) or []
            with progress_bar("evaluate") as bar:
                task = bar.add_task("frames", total=None)
                scored = evaluate_detector(
                    handle,
                    data,
                    chosen,
                    split=split,
                    n=n,
                    batch_size=batch_size,
                    progress=progress_callback(bar, task),
                )
            out.mkdir(parents=True, exist_ok=True)
            written = scored.save(out / "evaluation.json")
            console.print(str(scored), highlight=False)
            console.print(f"wrote {written.resolve()}")
            return
        names = list(registry()) if method.strip() == "all" else split_list(method) or []
        dataset = as_masked(data, split=split)
        with progress_bar("evaluate") as bar:
            task = bar.add_task("method x batch", total=None)
            result = run(
                handle,
                dataset,
                names,
                split_list(metrics) or DEFAULT_METRICS,
                parts=split_list(parts),
                n=n,
                steps=steps,
                batch_size=batch_size,
                progress=progress_callback(bar, task),
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
        from convlens.workflows.audit import audit as run
        from convlens.workflows.masked import as_masked

        handle = load_model(model, factory, trust_pickle)
        dataset = as_masked(data, split=split)
        with progress_bar("audit") as bar:
            task = bar.add_task("batches", total=None)
            result = run(
                handle,
                dataset,
                method,
                parts=split_list(parts),
                threshold=threshold,
                n=n,
                batch_size=batch_size,
                progress=progress_callback(bar, task),
            )
        out.mkdir(parents=True, exist_ok=True)
        page = result.save(out / "audit.html")
        (out / "audit.json").write_text(result.to_json())
    console.print(f"{handle.name}: {result.verdict}", highlight=False)
    for row in result.classes():
        console.print(f"  {row['class']}: {row['verdict']}", highlight=False)
    console.print(f"report: {page.resolve()}")
