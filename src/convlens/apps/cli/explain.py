"""``convlens explain``: any registered method over pictures; its settings are flags read from
the method table (``--window 32 --fill blur``, ``--steps 64``, ``--relu false``: any setting
that ``convlens methods NAME`` lists)."""

from __future__ import annotations

import json
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
    readable_pictures,
    skipped_exit,
    user_errors,
)

SETTING_HELP = (
    "Any setting of the chosen methods as --name value (e.g. --window 32 --stride 16 --fill "
    "blur, --steps 64, --samples 50, --masks 4000, --seed 1, --batch-size 16); "
    "`convlens methods NAME` lists a method's settings, their ranges and defaults."
)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=SETTING_HELP,
)
def explain(
    ctx: typer.Context,
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
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-O", help="A method setting as key=value (repeatable)."),
    ] = None,
    scale: Annotated[
        str,
        typer.Option(
            "--scale",
            help="Colour scale of the maps: 'own' (each map its own range), 'pictures' (one "
            "range per method over all pictures) or 'targets' (one range per method over all "
            "pictures and --target classes, to compare classes).",
        ),
    ] = "own",
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Explain the model's decisions: PNG overlays with colour bars, raw maps (.npz),
    summary.json, index.html."""
    with user_errors():
        from convlens.apps.reports import explanation_report
        from convlens.techniques.attribution.base import get_method

        if scale not in SCALES:
            raise ValueError(f"expected --scale own, pictures or targets, got {scale!r}")
        handle = load_model(model, factory, trust_pickle)
        chosen = [get_method(m.strip()) for m in method.split(",") if m.strip()]
        pictures, flags = _pictures_and_flags([*images, *ctx.args])
        given = _settings_given(flags, option or [], chosen)
        pictures, skipped = readable_pictures(handle, pictures)
        batch = handle.prepare(pictures)
        prediction = handle.predict(batch, top=1)
        wanted = [parse_target(t) for t in target.split(",")] if target else [None]
        out.mkdir(parents=True, exist_ok=True)
        results = []
        with progress_bar("explain") as bar:
            task = bar.add_task("methods", total=len(chosen) * len(wanted))
            for info in chosen:
                names = {s.name for s in info.settings}
                options = {k: v for k, v in given.items() if k in names or info.open_options}
                if layer is not None and info.needs_layer:
                    options["layer"] = layer
                for one in wanted:
                    bar.update(task, description=info.name)
                    results.append(info.fn(handle, batch, one, **options))
                    bar.advance(task)
        scales = _scales(results, scale)
        targets = [one for _ in chosen for one in wanted]
        for result, one, shown in zip(results, targets, scales, strict=True):
            result.save(
                out, stem=result.method if one is None else f"{result.method}__{one}", scale=shown
            )
        summary = {
            "model": handle.name,
            "images": batch.names,
            "predictions": prediction.to_dicts(),
            "explanations": [r.summary() for r in results],
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        page = explanation_report(
            results,
            prediction,
            title=f"convlens explain · {handle.name}",
            scales=scales,
            scale_text=SCALES[scale],
        )
        page.save(out / "index.html")
    console.print(f"wrote {len(results)} method(s) x {len(batch)} image(s) to {out.resolve()}/")
    console.print(f"report: {(out / 'index.html').resolve()}")
    skipped_exit(skipped, len(pictures) + len(skipped))


SCALES = {
    "own": None,
    "pictures": "Each method's maps share one range over all pictures, so equal values get "
    "equal colours within a column.",
    "targets": "Each method's maps share one range over all pictures and target classes, so a "
    "class the model does not see glows weakly.",
}


def _scales(results: list[Any], kind: str) -> list[Any]:
    """Each result's ``scale`` for drawing (see ``Attribution.overlay``)."""
    if kind == "own":
        return [None] * len(results)
    if kind == "pictures":
        return ["shared"] * len(results)
    from convlens.techniques.attribution.display import shared_scale

    by_method: dict[str, list[Any]] = {}
    for result in results:
        by_method.setdefault(result.method, []).append(result)
    ranges = {name: shared_scale(*group) for name, group in by_method.items()}
    return [ranges[result.method] for result in results]


def _pictures_and_flags(words: list[str]) -> tuple[list[str], list[str]]:
    """Click hands setting flags it does not know (``--window 32``) to the pictures argument:
    every ``--name value`` (or ``--name=value``) pair is a setting, the rest are pictures."""
    pictures: list[str] = []
    flags: list[str] = []
    rest = list(words)
    while rest:
        word = rest.pop(0)
        if not word.startswith("--"):
            pictures.append(word)
            continue
        flags.append(word)
        if "=" not in word and rest:
            flags.append(rest.pop(0))
    if not pictures:
        raise ValueError("expected at least one image file or folder")
    return pictures, flags


def _settings_given(args: list[str], options: list[str], chosen: list[Any]) -> dict[str, Any]:
    """``--name value`` flags and ``-O name=value`` options, each parsed and checked by the
    setting of that name in the chosen methods' table; a name none of them has is refused with
    the close ones."""
    pairs: list[tuple[str, str]] = []
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
        pairs.append((name, value))
    for item in options:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected --option key=value, got {item!r}")
        pairs.append((name, value))
    settings = {s.name: s for info in chosen for s in reversed(info.settings)}
    wrappers = [info for info in chosen if info.open_options]
    given: dict[str, Any] = {}
    for raw_name, value in pairs:
        name = raw_name.strip().replace("-", "_")
        if name in settings:
            given[name] = settings[name].parse(value)
        elif wrappers:
            base = get_base_setting(name)
            given[name] = base.parse(value) if base is not None else value
        else:
            from convlens.core.naming import unknown

            names = ", ".join(info.name for info in chosen)
            raise unknown(f"setting of {names}", raw_name, list(settings))
    return given


def get_base_setting(name: str) -> Any:
    """The setting ``name`` of any gradient method (what a wrapper such as SmoothGrad passes
    on to its base), or ``None``."""
    from convlens.techniques.attribution.base import methods

    for info in methods().values():
        for setting in info.settings:
            if setting.name == name and info.family == "gradient":
                return setting
    return None
