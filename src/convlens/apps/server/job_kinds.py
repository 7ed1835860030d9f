"""The explorer's job kinds, one table: each kind declares its parameters once (typed and
bounded, with help), its check (what the parameters must name in the model: layers, classes,
methods) and its run, in one place.

``POST /api/jobs`` reads a kind here, parses the request's ``params`` with the kind's
parameters and runs its check before the job is queued, so a bad job is a 4xx saying what was
expected, not a failed record later; the runner (:class:`~convlens.apps.server.jobs.JobRunner`)
calls :func:`run` on the job's own copy of the model. A new kind is one function here::

    @job_kind("name", "what it does", params=(setting(Setting(...)), ...), check=...)
    def name_job(model, params, job): ...  # -> the result files written into job.folder
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from convlens.core.model import Model
from convlens.core.registry import Registry, Setting

Check = Callable[[Model, dict[str, Any]], None]


@dataclass(frozen=True)
class Param:
    """One parameter of a job kind: its name, a line of help, and ``read``, which turns the
    request's JSON value into the typed value or raises a ``ValueError`` saying what was
    expected. A parameter left out takes ``default``, or is refused when ``required``."""

    name: str
    help: str
    read: Callable[[Any], Any]
    default: Any = None
    required: bool = False


@dataclass(frozen=True)
class Job:
    """What a running job gets besides its model and parameters: the folder its results go
    to, its progress callback (which raises once the job is cancelled) and the uploaded
    pictures by id."""

    folder: Path
    progress: Callable[[int, int], None]
    image: Callable[[str], Any]
    note: Callable[[str], None] = lambda text: None  # the job's message line, e.g. what ran


@dataclass(frozen=True)
class JobKind:
    """One kind of background job: its parameters, its check (on the served model, before
    the job is queued) and its run (on the job's own copy of the model)."""

    name: str
    description: str
    params: tuple[Param, ...]
    check: Check
    run: Run

    def parse(self, given: Any) -> dict[str, Any]:
        """Every parameter of this kind from ``given`` (the request's JSON object), typed and
        checked, defaults filled in; unknown names are refused with the names it takes."""
        if not isinstance(given, dict):
            raise ValueError(f"expected params as a JSON object, got {type(given).__name__}")
        known = {p.name: p for p in self.params}
        extra = sorted(set(given) - set(known))
        if extra:
            raise ValueError(
                f"unknown parameter(s) {extra} for {self.a} job; it takes {sorted(known)}"
            )
        out = {}
        for param in self.params:  # JSON null: not given
            if given.get(param.name) is not None:
                out[param.name] = param.read(given[param.name])
            elif param.required:
                raise ValueError(f"{self.a} job needs params.{param.name} ({param.help})")
            else:
                out[param.name] = param.default
        return out

    @property
    def a(self) -> str:
        """``a tcav`` / ``an explain``: the kind with its article, for messages."""
        return f"{'an' if self.name[:1] in 'aeiou' else 'a'} {self.name}"


Run = Callable[[Model, dict[str, Any], Job], list[Path]]
KINDS: Registry[JobKind] = Registry("job kind")


def job_kind(
    name: str,
    description: str,
    *,
    params: tuple[Param, ...],
    check: Check = lambda _model, _params: None,
) -> Callable[[Run], Run]:
    """Register the decorated function as the run of job kind ``name``: it gets the job's
    copy of the model, the parsed parameters and the :class:`Job`, and returns the files it
    wrote into ``job.folder``."""

    def register(run: Run) -> Run:
        KINDS.add(name, JobKind(name, description, params, check, run))
        return run

    return register


def check(kind: str, params: Any, model: Model) -> dict[str, Any]:
    """The parsed parameters of a job of ``kind`` on ``model``, checked before it is queued:
    an unknown kind, layer, class or method is a :class:`~convlens.core.naming.UnknownNameError`
    (404), a bad value a ``ValueError`` (422), each saying what was expected."""
    entry = KINDS.get(kind)
    parsed = entry.parse(params)
    entry.check(model, parsed)
    return parsed


def run(
    kind: str,
    model: Model,
    params: dict[str, Any],
    folder: Path,
    progress: Callable[[int, int], None],
    image: Callable[[str], Any],
    note: Callable[[str], None] = lambda text: None,
) -> list[str]:
    """Run one job on ``model`` (the job's own copy) and write its results into ``folder``;
    returns the result file names, relative to ``folder``. ``note(text)`` sets the job's
    message line (what ran, what was found)."""
    entry = KINDS.get(kind)
    written = entry.run(model, entry.parse(params), Job(folder, progress, image, note))
    return [p.relative_to(folder).as_posix() for p in written]


# -- parameter readers -----------------------------------------------------------------------
def setting(spec: Setting, *, required: bool = False) -> Param:
    """A typed, bounded scalar (:class:`~convlens.core.registry.Setting`) as a job parameter."""
    return Param(spec.name, spec.help, spec.parse, spec.default, required)


def names(name: str, help: str, most: int, *, default: Any = None, required: bool = False) -> Param:
    """A list of 1 to ``most`` names (text), e.g. methods or image ids."""

    def read(value: Any) -> list[str]:
        if (
            not isinstance(value, list)
            or not 1 <= len(value) <= most
            or not all(isinstance(v, str) for v in value)
        ):
            raise ValueError(
                f"expected params.{name} as a list of 1-{most} names, got {_short(value)}"
            )
        return list(value)

    return Param(name, help, read, default, required)


def _class(value: Any) -> int | str | None:
    """A class name or index; ``None``, ``""`` and ``"top-1"`` mean the top-1 class."""
    if value in (None, "", "top-1"):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a class name or index, got {_short(value)}")
    return value


def _layers(value: Any) -> list[str]:
    """Layer names, as a list or comma-separated text."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ValueError(
            f"expected params.layers as a list or comma-separated text, got {_short(value)}"
        )
    found = [v.strip() for v in items if v.strip()]
    if not found:
        raise ValueError("expected at least one layer name in params.layers")
    return found


MAX_CHANNELS = 256


def _channels(value: Any) -> list[int] | None:
    """Channel indices as a list or text such as ``"0-7, 12"`` (``None``: the first 8); the
    count is checked before any range is expanded."""
    if value is None:
        return None
    if isinstance(value, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
            raise ValueError(f"expected params.channels as whole numbers, got {_short(value)}")
        ranges = [(c, c) for c in value]
    elif isinstance(value, str):
        ranges = []
        for part in value.split(",")[: MAX_CHANNELS + 1]:
            low, _, high = part.strip().partition("-")
            if not low.strip().isdigit() or (high and not high.strip().isdigit()):
                if part.strip():
                    raise ValueError(
                        f"expected params.channels such as '0-7, 12', got {_short(value)}"
                    )
                continue
            ranges.append((int(low), int(high or low)))
    else:
        raise ValueError(
            f"expected params.channels as a list or text such as '0-7', got {_short(value)}"
        )
    count = sum(max(0, high - low + 1) for low, high in ranges)
    if not 1 <= count <= MAX_CHANNELS:
        raise ValueError(f"expected 1-{MAX_CHANNELS} channels, got {count} from {_short(value)}")
    return [c for low, high in ranges for c in range(low, high + 1)]


def _short(value: Any) -> str:
    """A request's value for a message, never more than 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _in_layer(channels: list[int] | None, width: int) -> list[int]:
    if channels is None:
        return list(range(min(8, width)))
    bad = [c for c in channels if not 0 <= c < width]
    if bad:
        raise ValueError(f"expected 1-{MAX_CHANNELS} channels in [0, {width}), got {bad[:8]}")
    return channels


def _layer_width(model: Model, layer: str) -> int | None:
    """The channels of ``layer``'s output, from the layer table (``None``: not known)."""
    try:
        table = model.layers()
    except ValueError:  # no input size to build the table with
        return None
    if layer not in table.names:
        return None
    shape = table.get(layer).output_shape
    return int(shape[1]) if shape is not None and len(shape) > 1 else None


def _check_methods(methods: list[str]) -> None:
    from convlens.techniques.attribution.base import get_method

    for name in methods:
        get_method(name)  # unknown names: 404 with close matches


def _toon_model(model: Model, why: str) -> None:
    from convlens.data import toons

    if list(model.labels or []) != list(toons.CLASSES):
        raise ValueError(f"{why}: they need a model of the toon classes {list(toons.CLASSES)}")


IMAGES = names("images", "uploaded image ids", 64, required=True)
METHODS = names("methods", "explanation method names", 16, default=["gradcam"])


# -- the kinds -------------------------------------------------------------------------------
def _check_featurevis(model: Model, params: dict[str, Any]) -> None:
    from convlens.core.naming import get_layer

    get_layer(model.module, params["layer"])
    width = _layer_width(model, params["layer"])
    if width is not None:
        _in_layer(params["channels"], width)


@job_kind(
    "featurevis",
    "the input pattern each chosen channel of a layer responds to most (gradient ascent)",
    params=(
        setting(Setting("layer", "str", help="a layer name"), required=True),
        Param("channels", "channel indices, e.g. '0-7, 12' (default: the first 8)", _channels),
        setting(Setting("steps", "int", 64, min=1, max=2048, help="optimisation steps")),
        setting(Setting("size", "int", 128, min=16, max=512, help="picture size in pixels")),
    ),
    check=_check_featurevis,
)
def featurevis_job(model: Model, params: dict[str, Any], job: Job) -> list[Path]:
    from convlens.techniques.visualize import featurevis, objectives

    layer = params["layer"]
    width = objectives.channels(layer).bind(model).batch or 1
    result = featurevis(
        model,
        objectives.channel(layer, _in_layer(params["channels"], width)),
        steps=params["steps"],
        size=params["size"],
        progress=job.progress,
    )
    return list(result.save(job.folder))


def _check_tcav(model: Model, params: dict[str, Any]) -> None:
    from convlens.core.naming import get_layer

    if params["target"] is None:
        raise ValueError("a tcav job needs params.target (a class name or index, not top-1)")
    model.class_index(params["target"])
    for name in params["layers"] or []:
        get_layer(model.module, name)


@job_kind(
    "tcav",
    "which of the toon concepts (colours) the model uses for a class, tested against random",
    params=(
        Param("target", "a class name or index", _class, required=True),
        Param("layers", "layer names (default: the model's bottleneck layers)", _layers),
        setting(
            Setting(
                "concepts",
                "choice",
                "toons",
                choices=("toons",),
                help="the explorer's TCAV jobs use the built-in toon concepts",
            )
        ),
        names("images", "uploaded pictures of the target class (default: toons)", 256),
        setting(Setting("n_random", "int", 10, min=2, max=50, help="random sets to test against")),
        setting(
            Setting(
                "test",
                "choice",
                "local",
                choices=("local", "sets", "paper"),
                help="significance test: local (default: a permutation test where the concept "
                "appears), sets (the TCAV score against the random sets'), paper (Kim et al.'s "
                "t-test, for comparison)",
            )
        ),
    ),
    check=_check_tcav,
)
def tcav_job(model: Model, params: dict[str, Any], job: Job) -> list[Path]:
    from convlens.data import toons
    from convlens.techniques.concepts import tcav

    target = params["target"]
    if params["images"]:
        pictures = [job.image(i) for i in params["images"]]
    else:
        name = model.label(model.class_index(target))
        if name not in toons.CLASSES:
            raise ValueError(
                "give params.images (uploaded image ids of the target class): built-in "
                f"target pictures exist only for the toon classes {list(toons.CLASSES)}"
            )
        data = toons.generate(120, split="test", seed=3)
        pictures = [p for p, n in zip(data.pixels, data.label_names, strict=True) if n == name]
    tested = tcav(
        model,
        target,
        pictures[:30],
        "toons",
        layers=params["layers"],
        n_random=params["n_random"],
        test=params["test"],
        progress=job.progress,
    )
    found = [
        f"{r['concept']}@{r['layer']}{r.get('direction', '') if tested.test == 'local' else ''}"
        for r in tested.rows
        if r["significant"]
    ]
    job.note(f"test '{tested.test}'; significant: {', '.join(found) or 'none'}")
    return list(tested.save(job.folder))


MAX_EXPLAIN_MAPS = 128  # pictures x methods of one explain job


def _check_explain(model: Model, params: dict[str, Any]) -> None:
    _check_methods(params["methods"])
    if params["target"] is not None:
        model.class_index(params["target"])
    maps = len(params["images"]) * len(params["methods"])
    if maps > MAX_EXPLAIN_MAPS:
        raise ValueError(
            f"expected at most {MAX_EXPLAIN_MAPS} maps (pictures x methods) in one explain job, "
            f"got {len(params['images'])} x {len(params['methods'])}"
        )


@job_kind(
    "explain",
    "every chosen method on every chosen picture, as overlays and one HTML report",
    params=(
        IMAGES,
        METHODS,
        Param("target", "a class name or index (default: each picture's top-1)", _class),
    ),
    check=_check_explain,
)
def explain_job(model: Model, params: dict[str, Any], job: Job) -> list[Path]:
    from convlens.apps.reports import explanation_report
    from convlens.techniques.attribution.base import Attribution
    from convlens.techniques.attribution.explain import explain

    pictures = [job.image(i) for i in params["images"]]
    target = params["target"]
    target = None if target is None else model.class_index(target)
    methods = params["methods"]
    results = []
    written: list[Path] = []
    for k, method in enumerate(methods):
        attribution = cast(Attribution, explain(model, pictures, method, target))  # classify
        results.append(attribution)
        for i in range(len(pictures)):
            path = job.folder / f"{method}_{i}.png"
            attribution.overlay(i).save(path)
            written.append(path)
        job.progress(k + 1, len(methods))
    prediction = model.predict(pictures)
    report = explanation_report(results, prediction, title="Explanations")
    return [report.save(job.folder / "index.html"), *written]


def _check_evaluate(model: Model, params: dict[str, Any]) -> None:
    _check_methods(params["methods"])
    _toon_model(model, "evaluate jobs score explanations against the toons' masks")


@job_kind(
    "evaluate",
    "how well each chosen method points at the toon characters (their masks as ground truth)",
    params=(
        METHODS,
        setting(Setting("n", "int", 50, min=2, max=1000, help="toon pictures to score on")),
        setting(Setting("steps", "int", 20, min=2, max=100, help="deletion / insertion steps")),
    ),
    check=_check_evaluate,
)
def evaluate_job(model: Model, params: dict[str, Any], job: Job) -> list[Path]:
    from convlens.data import toons
    from convlens.workflows.evaluation import evaluate

    data = toons.generate(params["n"], split="test", seed=11)
    scored = evaluate(model, data, params["methods"], steps=params["steps"], progress=job.progress)
    return [scored.save(job.folder / "evaluation.json")]


def _check_dataset(model: Model, params: dict[str, Any]) -> None:
    _check_methods(params["methods"])
    if not params["images"]:
        _toon_model(model, "dataset jobs without params.images run on built-in toons")


@job_kind(
    "dataset",
    "a data set run: every picture explained and scored (Parquet rows, float16 maps) and the "
    "data set report",
    params=(
        METHODS,
        names("images", "uploaded image ids (default: built-in toons with their masks)", 1024),
        setting(Setting("n", "int", 60, min=2, max=2000, help="built-in toons when no images")),
    ),
    check=_check_dataset,
)
def dataset_job(model: Model, params: dict[str, Any], job: Job) -> list[Path]:
    """``cl.dataset.run_dataset`` into ``job.folder/run``; the report first among the results.
    The serial engine: the explorer is a threaded server, where forking decoding workers is
    not safe; its progress callback stops the run when the job is cancelled (the shards
    written so far stay)."""
    from convlens.data import toons
    from convlens.workflows.datasets import run_dataset

    if params["images"]:
        source = job.folder / "pictures"
        source.mkdir(parents=True, exist_ok=True)
        for k, image_id in enumerate(params["images"]):
            job.image(image_id).convert("RGB").save(source / f"{k:04d}.png")
    else:
        source = toons.write(job.folder / "toons", n=params["n"], seed=7, splits=(0, 0, 1))
    run = run_dataset(
        model, source, params["methods"], job.folder / "run", engine="serial", progress=job.progress
    )
    return [run.report_path, run.folder / "manifest.json", *sorted(run.folder.glob("shards/*"))]
