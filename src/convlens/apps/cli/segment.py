"""``convlens segment``: a segmenter's masks over a picture, and explanations of its regions;
and the segmenter's part of ``convlens train --task segment`` and ``convlens evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from convlens.apps.cli.common import (
    FactoryOpt,
    app,
    console,
    load_model,
    parse_value,
    progress_bar,
    progress_callback,
    split_list,
    training_reporter,
    user_errors,
)

SETTING_HELP = (
    "Any setting of the chosen method as --name value or -O name=value (e.g. --window 16 "
    "--stride 8 --fill blur, --masks 500, --relu false); `convlens methods NAME --task "
    "segment` lists a method's settings, their ranges and defaults."
)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=SETTING_HELP,
)
def segment(
    ctx: typer.Context,
    segmenter: Annotated[
        str,
        typer.Argument(
            help="A zoo segmenter (toon-segmenter), a torchvision segmentation name "
            "(deeplabv3_mobilenet_v3_large), a segmenter checkpoint (.pt) or a plugin .py."
        ),
    ],
    image: Annotated[Path, typer.Argument(help="The picture.")],
    explain: Annotated[
        str | None,
        typer.Option(help="Explain regions: gradcam (Seg-Grad-CAM), layercam, occlusion or rise."),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            "--class",
            "-c",
            help="Classes to explain, comma-separated names or indices (default: every "
            "class the picture holds but the background).",
        ),
    ] = None,
    each: Annotated[
        bool,
        typer.Option(
            "--each/--whole",
            help="Explain each connected region of a class on its own (one character's hair "
            "in a crowd) rather than all its pixels at once.",
        ),
    ] = False,
    at: Annotated[
        str | None,
        typer.Option(
            help="Explain only the region at pixel X,Y (of the picture as the segmenter sees "
            "it): the connected pixels of the class found there, as a click in the explorer."
        ),
    ] = None,
    layer: Annotated[
        str | None, typer.Option(help="Layer the CAMs read (default: the segmenter's).")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-O", help="A method setting as key=value (repeatable)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/segment"),
    factory: FactoryOpt = None,
) -> None:
    """The classes of every pixel drawn over the picture with a legend (segmentation.png), the
    class map (segmentation.classes.png) and JSON (segmentation.json); with --explain, one
    overlay per explained region (<class>__<method>.png) with its energy in the region (the
    share of the positive attribution inside it), listed in the JSON too."""
    with user_errors():
        from convlens.core.segmenter import Segmenter
        from convlens.core.tasks import segment as run
        from convlens.techniques.attribution.base import get_method

        info = get_method(explain, "segment") if explain is not None else None
        handle = load_model(segmenter, factory, False, detectors=True)
        if not isinstance(handle, Segmenter):
            raise ValueError(
                f"{segmenter!r} is a {'detector' if handle.task == 'detect' else 'classifier'}; "
                "convlens segment takes a segmenter (try convlens detect or convlens explain)"
            )
        found = run(handle, image)
        written = found.save(out)
        explained = []
        if info is not None:
            from convlens.apps.cli.explain import _settings_given

            settings = _settings_given(list(ctx.args), option or [], [info])
            if layer is not None:
                settings["layer"] = layer
            if at is not None:
                explained = _explain_regions(handle, found, info, None, False, settings, out, at)
            else:
                explained = _explain_regions(handle, found, info, classes, each, settings, out)
        elif ctx.args or option:
            raise ValueError(
                f"method settings ({' '.join(ctx.args or option or [])}) need --explain"
            )
        record = {"segmenter": handle.name, **found.to_dict(), "explanations": explained}
        (out / "segmentation.json").write_text(json.dumps(record, indent=1))
    for row in found.to_dict()["classes"]:
        if row["pixels"]:
            console.print(f"{row['name']:>14} {row['share']:7.2%}  {row['pixels']} pixels")
    for row in explained:
        console.print(
            f"{row['method']} of {row['class']} ({row['region_pixels']} px): energy in region "
            f"{_share(row['energy_in_region'])}  -> {row['file']}"
        )
    files = [p.name for p in written] + [row["file"] for row in explained]
    console.print(f"wrote {', '.join(files)} to {out}/")


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _explain_regions(
    handle: Any,
    found: Any,
    info: Any,
    classes: str | None,
    each: bool,
    settings: dict[str, Any],
    out: Path,
    at: str | None = None,
) -> list[dict[str, Any]]:
    """One explanation per chosen class (or per connected region of it, or of the one region
    at ``at`` = "X,Y"): its overlay and raw map written, a JSON row returned."""

    if at is not None:
        point = parse_value(at)
        if not (
            isinstance(point, tuple) and len(point) == 2 and all(isinstance(v, int) for v in point)
        ):
            raise ValueError(f"expected --at X,Y (two whole pixel numbers), got {at!r}")
        k, region = found.region_at(*point)
        jobs = [(k, region, "_at_{}_{}".format(*point))]
        return _run_regions(handle, found, info, jobs, settings, out)

    wanted = (
        [found.class_index(c if not c.isdigit() else int(c)) for c in split_list(classes) or []]
        if classes
        else [k for k in found.present() if k != handle.background]
    )
    jobs = []
    for k in wanted:
        mask = found.class_map == k
        if not bool(mask.any()):
            raise ValueError(f"no pixel of {found.name(k)!r} in this picture; it holds "
                             f"{', '.join(found.name(c) for c in found.present())}")  # fmt: skip
        regions = _components(found, mask) if each else [mask]
        suffixes = [f"_{i + 1}" for i in range(len(regions))] if len(regions) > 1 else [""]
        jobs += [(k, region, suffix) for region, suffix in zip(regions, suffixes, strict=True)]
    return _run_regions(handle, found, info, jobs, settings, out)


def _run_regions(
    handle: Any, found: Any, info: Any, jobs: list[Any], settings: dict[str, Any], out: Path
) -> list[dict[str, Any]]:
    """Each (class, region, file suffix) of ``jobs`` explained: overlays, ``<method>.npz`` and
    the JSON rows."""
    import numpy as np

    from convlens.core.util import jsonable, safe_filename

    rows, maps = [], {}
    with progress_bar(info.name) as bar:
        task = bar.add_task("regions", total=len(jobs))
        for k, region, suffix in jobs:
            result = info.fn(handle, found.picture, k, region=region, **settings)
            stem = safe_filename(f"{found.name(k)}{suffix}__{info.name}")
            path = result.overlay().save(out / f"{stem}.png")
            maps[stem] = result.map.numpy()
            energy = result.energy_in_region()
            rows.append(
                {
                    "method": info.name,
                    "class": found.name(k),
                    "index": k,
                    "region_pixels": int(region.sum()),
                    "energy_in_region": jsonable(energy),
                    "peak": list(result.peak()),
                    "settings": jsonable(result.settings),
                    "file": path.name,
                }
            )
            bar.advance(task)
    if maps:
        np.savez(out / f"{info.name}.npz", **maps)  # type: ignore[arg-type]
    return rows


def _components(found: Any, mask: Any, min_pixels: int = 16) -> list[Any]:
    """The connected regions of ``mask`` (4-neighbours) of at least ``min_pixels``, largest
    first."""
    left = mask.clone()
    regions = []
    while bool(left.any()):
        y, x = (int(v) for v in left.nonzero()[0])
        _, region = found.region_at(x, y)
        region &= mask
        left &= ~region
        if int(region.sum()) >= min_pixels:
            regions.append(region)
    return sorted(regions, key=lambda r: -int(r.sum())) or [mask]


# -- convlens train --task segment ---------------------------------------------------------------

# the classifier command's options --task segment takes, and its own defaults for some of them
SEGMENT_TAKES = {
    "epochs": 12,
    "batch_size": 32,
    "lr": 3e-3,
    "seed": None,
    "val_fraction": 0.1,
    "patience": 0,
    "augment": None,
    "rotation": 0.0,
    "width_shift": 0.15,  # the segmenter shifts by up to this share of the side, both ways
    "zoom": 0.2,
    "flip": None,
    "size": "96",  # the side of the random training crops
    "arch": "toon_segnet",
    "arch_option": None,
    "filters": None,
    "snapshot_every": 0,
    "tensorboard": None,
    "device": None,
    "threads": None,
    "task": None,
}


def train_segmenter_command(ctx: typer.Context, data: Path, out: Path) -> None:
    """``convlens train DATA --task segment``: :func:`~.training.segment.train_folder` with the
    classifier command's options that apply (the rest are refused). DATA is a toons folder, or
    a folder of toons folders read in name order (one per variant); the part masks become the
    classes background, hair, face, body. Its own defaults: the ``toon_segnet`` network, 12
    epochs, batch 32, lr 3e-3, random 96 x 96 crops (--size), shifts of up to 0.15 of the side
    (--width-shift), zoom 0.2, flips, no rotation, no early stopping, a 10 % validation share
    when there is no val/."""
    from convlens.workflows.training.segment import MaskAugmentation, train_folder

    given = {
        name
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }
    refused = sorted(given - set(SEGMENT_TAKES) - {"data", "out"})
    if refused:
        flags = ", ".join("--" + name.replace("_", "-") for name in refused)
        raise ValueError(f"--task segment does not take {flags}")
    p: dict[str, Any] = {
        name: ctx.params[name] if name in given or default is None else default
        for name, default in SEGMENT_TAKES.items()
    }
    options: dict[str, Any] = {}
    for item in p["arch_option"] or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected --arch-option key=value, got {item!r}")
        found = parse_value(value)
        options[key.strip()] = list(found) if isinstance(found, tuple) else found
    crop = parse_value(str(p["size"]))
    if isinstance(crop, bool) or not isinstance(crop, int):
        raise ValueError(f"--task segment takes --size N (the training crops' side), got {crop!r}")
    augmentation: MaskAugmentation | bool = (
        MaskAugmentation(p["flip"], p["zoom"], p["width_shift"], p["rotation"])
        if p["augment"]
        else False
    )
    command = ["convlens", "train", str(data)] + [
        f"--{key.replace('_', '-')}={ctx.params[key]}" for key in sorted(given - {"data"})
    ]
    with progress_bar("train --task segment") as bar:
        result = train_folder(
            data, out, val_fraction=p["val_fraction"], seed=p["seed"], architecture=p["arch"],
            options=options, epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"],
            augment=augmentation, crop=crop, early_stopping=p["patience"] or None,
            filters=p["filters"], snapshot_every=p["snapshot_every"],
            tensorboard=p["tensorboard"], device=p["device"], threads=p["threads"],
            progress=training_reporter(bar, "steps"), command=command,
        )  # fmt: skip
    metrics = result.metrics
    stop = " (stopped early)" if metrics["stopped_early"] else ""
    line = f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}{stop}"
    if metrics.get("best_val_miou") is not None:
        line += f"; val mean IoU {metrics['best_val_miou']:.3f}"
    if "test_miou" in metrics:
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in metrics["test_iou"].items())
        line += f"; test mean IoU {metrics['test_miou']:.3f} ({per_class})"
    console.print(line)
    console.print(f"wrote model.pt, metrics.json to {out}/ (load it with convlens segment)")


# -- convlens evaluate, for a segmenter -----------------------------------------------------------


def evaluate_segmenter_command(
    handle: Any,
    data: Path,
    method: str,
    metrics: str | None,
    parts: str | None,
    n: int | None,
    split: str,
    batch_size: int,
    out: Path,
) -> None:
    """``convlens evaluate SEGMENTER DATA``: IoU per class and mean IoU on a toons folder (or a
    folder of them), and each region explanation method's energy in the explained part's own
    true mask (``--method gradcam,layercam``; ``all``: every segment method)."""
    from convlens.techniques.attribution.segmentation import region_methods
    from convlens.workflows.segmentation_eval import evaluate_segmenter

    if metrics is not None or parts is not None:
        raise ValueError(
            "a segmenter is scored by IoU and by energy in the explained part; --metrics and "
            "--parts are for classifiers"
        )
    chosen = region_methods() if method.strip() == "all" else split_list(method) or []
    with progress_bar("evaluate") as bar:
        task = bar.add_task("pictures", total=None)
        scored = evaluate_segmenter(
            handle, data, chosen, split=split, n=n, batch_size=batch_size,
            progress=progress_callback(bar, task),
        )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    written = scored.save(out / "evaluation.json")
    console.print(str(scored), highlight=False)
    console.print(f"wrote {written.resolve()}")
