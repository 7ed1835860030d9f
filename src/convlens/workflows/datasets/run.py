"""A data set run: list the source, split it into shards, run the work on an engine, write each
shard as it completes, then the report; and :class:`Run`, what a finished (or partial) run
folder reads back as.

Resuming is re-running: shards whose Parquet file records this run's identity and the same
items are skipped, the others are (re)done, and results of another model or other settings
are refused (:class:`~convlens.workflows.datasets.manifest.RunMismatchError`). Since a shard is
committed by one rename, a run killed at any moment leaves every picture either in a finished
shard or in none; the next run adds the missing ones, each exactly once.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import convlens
from convlens.core.engine import Engine, Failed
from convlens.core.model import Model, Preprocessing
from convlens.core.naming import unknown
from convlens.core.util import jsonable
from convlens.techniques.attribution.base import MethodInfo, get_method
from convlens.workflows.datasets import manifest as mf
from convlens.workflows.datasets import store
from convlens.workflows.datasets.engines import engine as make_engine
from convlens.workflows.datasets.inputs import (
    Item,
    Listing,
    PictureLoader,
    items_digest,
    label_indices,
    list_items,
    object_ids,
)
from convlens.workflows.datasets.work import ExplainWork, PictureResult

Progress = Callable[[int, int], None]
MethodsSpec = str | Sequence[str] | Mapping[str, Mapping[str, Any] | None]
EXECUTION_SETTINGS = ("batch_size", "memory_budget_mb")  # change no number, only speed


# -- methods and their settings --------------------------------------------------------------


def _method_list(methods: MethodsSpec) -> list[tuple[MethodInfo, dict[str, Any]]]:
    if isinstance(methods, str):
        pairs: list[tuple[str, Mapping[str, Any]]] = [
            (m.strip(), {}) for m in methods.split(",") if m.strip()
        ]
    elif isinstance(methods, Mapping):
        pairs = [(str(k), dict(v or {})) for k, v in methods.items()]
    else:
        pairs = [(str(m), {}) for m in methods]
    if not pairs:
        raise ValueError("expected at least one method (e.g. 'gradcam'), got none")
    chosen: list[tuple[MethodInfo, dict[str, Any]]] = []
    for name, options in pairs:
        info = get_method(name)
        if any(info.name == c.name for c, _ in chosen):
            raise ValueError(f"method {info.name!r} is named twice")
        chosen.append((info, dict(options)))
    return chosen


def method_settings(
    model: Model,
    methods: MethodsSpec,
    settings: Mapping[str, Any] | None,
    seed: int,
) -> list[tuple[str, dict[str, Any]]]:
    """``(name, options)`` per method: its own options and the shared ``settings`` each
    parsed by the method table's :class:`~convlens.core.registry.Setting` (text from a CLI
    flag or a Python value); a shared setting no chosen method has is refused with the close
    ones. Methods with a ``seed`` get the run's; CAMs get their layer resolved."""
    from convlens.techniques.attribution.base import default_layer

    chosen = _method_list(methods)
    known = {s.name for info, _ in chosen for s in info.settings} | {"layer"}
    for name in settings or {}:
        if name not in known:
            methods_named = ", ".join(info.name for info, _ in chosen)
            raise unknown(f"setting of {methods_named}", name, sorted(known))
    out = []
    for info, own in chosen:
        names = {s.name for s in info.settings}
        given = {k: v for k, v in (settings or {}).items() if k in names}
        given |= {k: v for k, v in own.items() if k != "layer"}
        options = info.parse(given) if given else {}
        layer = own.get("layer", (settings or {}).get("layer"))
        if info.needs_layer:
            options["layer"] = layer if layer is not None else default_layer(model)
        elif layer is not None and "layer" in own:
            raise ValueError(f"{info.name} explains the input and takes no layer")
        if "seed" in names and options.get("seed") is None:
            options["seed"] = seed
        out.append((info.name, options))
    return out


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """The shards of a run: ``items[i]`` by shard, each shard's identity, and which are done."""

    shards: list[list[Item]]
    identity: list[dict[str, Any]]
    done: set[int] = field(default_factory=set)

    @property
    def todo(self) -> list[int]:
        return [i for i in range(len(self.shards)) if i not in self.done]


def _plan(folder: Path, listing: Listing, run_hash: str, shard_size: int) -> Plan:
    items = listing.items
    shards = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    identity = [
        {"run": run_hash, "index": i, "pictures": len(s), "items": items_digest(s)}
        for i, s in enumerate(shards)
    ]
    plan = Plan(shards, identity)
    store.remove_stale(folder)
    for path in store.finished_shards(folder):
        meta = store.shard_meta(path)
        index = int(path.stem) if path.stem.isdigit() else -1
        if meta is not None and meta.get("run") not in (None, run_hash):
            raise mf.RunMismatchError(
                f"{path} was written by another run (identity {meta.get('run')}, this run "
                f"{run_hash}); use another --out folder, or overwrite=True to start again"
            )
        if 0 <= index < len(shards) and meta == identity[index]:
            plan.done.add(index)
        else:  # its pictures changed (or are gone): redone, or dropped, never half-mixed
            store.remove_shard(folder, index)
    return plan


def _batches(plan: Plan, batch_size: int) -> Iterator[tuple[int, list[Item]]]:
    for index in plan.todo:
        items = plan.shards[index]
        for start in range(0, len(items), batch_size):
            yield index, items[start : start + batch_size]


def _rows(
    model: Model,
    folder: Path,
    shard: int,
    items: Sequence[Item],
    outputs: Sequence[PictureResult | Failed],
    methods: Sequence[str],
    labels: Mapping[str, int] | None,
) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    """One row per picture x method, and each method's maps in row order."""
    rows: list[dict[str, Any]] = []
    maps: dict[str, list[Any]] = {name: [] for name in methods}
    offsets = dict.fromkeys(methods, 0)
    for item, output in zip(items, outputs, strict=True):
        label_index = labels.get(item.label) if labels is not None and item.label else None
        base = {
            "id": item.id,
            "source": item.source,
            "shard": shard,
            "label": item.label,
            "label_index": label_index,
            "boxes": item.boxes,
        }
        for name in methods:
            if isinstance(output, Failed):
                rows.append(base | {"method": name, "status": "failed", "error": output.reason})
                continue
            result = output.methods[name]
            prediction = output.top_k[0]
            rows.append(
                base
                | {
                    "method": name,
                    "status": "ok",
                    "target": result.target,
                    "target_label": model.label(result.target),
                    "target_score": result.target_score,
                    "target_probability": result.target_probability,
                    "prediction": prediction,
                    "prediction_label": model.label(prediction),
                    "probability": output.top_k_probability[0],
                    "top_k": output.top_k,
                    "top_k_probability": output.top_k_probability,
                    "correct": None if label_index is None else prediction == label_index,
                    "object_area": output.object_area,
                    "energy_in_mask": result.energy_in_mask,
                    "pointing_game": result.pointing_game,
                    "deletion_auc": result.deletion_auc,
                    "layer": result.layer,
                    "map_file": mf.relative(folder, store.map_path(folder, shard, name)),
                    "map_offset": offsets[name],
                    "map_shape": list(result.map.shape),
                }
            )
            maps[name].append(result.map)
            offsets[name] += int(result.map.size)
    return rows, maps


@dataclass
class RunSpec:
    """Everything a run needs, checked: what ``explain`` hands to ``execute``."""

    model: Model
    listing: Listing
    methods: list[tuple[str, dict[str, Any]]]
    labels: Mapping[str, int] | None
    label_matching: str
    identity: dict[str, Any]
    work: ExplainWork
    shard_size: int
    batch_size: int


def execute(
    spec: RunSpec,
    folder: Path,
    engine: Engine,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Run:
    """Run ``spec`` into ``folder`` on ``engine``, resuming what is there (see the module
    docstring); ``progress(done, total)`` counts pictures (finished shards included)."""
    existing = mf.check_folder(folder, overwrite)
    run_hash = mf.identity_hash(spec.identity)
    if existing is not None:
        mf.check_same_run(folder, existing, spec.identity)
    folder.mkdir(parents=True, exist_ok=True)
    plan = _plan(folder, spec.listing, run_hash, spec.shard_size)
    shard_of = [i for i, s in enumerate(plan.shards) for _ in s]
    store.write_listing(folder, spec.listing.items, shard_of)
    manifest: dict[str, Any] = {
        "format": mf.FORMAT,
        "version": 1,
        "identity": spec.identity,
        "identity_hash": run_hash,
        "created": (existing or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "status": "running",
        "input": spec.listing.summary() | {"label_matching": spec.label_matching},
        "engine": engine.describe(),
        "batch_size": spec.batch_size,
        "shards": len(plan.shards),
    }
    mf.write_manifest(folder, manifest)
    total = len(spec.listing)
    done = sum(len(plan.shards[i]) for i in plan.done)
    if progress is not None:
        progress(done, total)
    names = [name for name, _ in spec.methods]
    pending: dict[int, tuple[list[Item], list[Any]]] = {}
    started = time.perf_counter()
    try:
        batches = list(_batches(plan, spec.batch_size))
        outputs = engine.map(spec.model, spec.work, (b for _, b in batches), cancelled=cancelled)
        with contextlib.closing(outputs):  # type: ignore[type-var]
            for (index, items), out in zip(batches, outputs, strict=True):
                got_items, got = pending.setdefault(index, ([], []))
                got_items += items
                got += out
                if len(got_items) == len(plan.shards[index]):
                    rows, maps = _rows(
                        spec.model, folder, index, got_items, got, names, spec.labels
                    )
                    store.write_shard(folder, index, rows, maps, plan.identity[index])
                    del pending[index]
                done += len(items)
                if progress is not None:
                    progress(done, total)
    except BaseException:
        manifest["status"] = "incomplete"
        with contextlib.suppress(Exception):
            mf.write_manifest(folder, manifest)
        raise
    run = Run(folder)
    counts = run.counts()
    manifest |= {
        "status": "complete",
        "engine": engine.describe(),
        "counts": counts,
        "seconds": round(time.perf_counter() - started, 3),
    }
    mf.write_manifest(folder, manifest)
    return run


def prepare(
    model: Any,
    source: Any,
    methods: MethodsSpec = "gradcam",
    *,
    settings: Mapping[str, Any] | None = None,
    target: str = "label",
    top_k: int = 5,
    deletion: bool | int = False,
    seed: int = 0,
    split: str | None = None,
    parts: Sequence[str] | None = None,
    shard_size: int = 512,
    batch_size: int = 16,
) -> RunSpec:
    """Check everything and build the :class:`RunSpec` (nothing is read or written yet)."""
    from convlens.core.tasks import as_model

    handle = as_model(model)
    for value, what in ((shard_size, "shard_size"), (batch_size, "batch_size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"expected {what} >= 1 (pictures), got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"expected an int seed, got {seed!r}")
    steps = 50 if deletion is True else (None if deletion is False else deletion)
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(
            f"expected deletion True, False or a number of steps >= 1, got {deletion!r}"
        )
    listing = list_items(source, split=split, parts=parts)
    chosen = method_settings(handle, methods, settings, seed)
    labels, matching = label_indices(handle, listing)
    preprocess = handle.preprocess if isinstance(handle.preprocess, Preprocessing) else None
    loader = PictureLoader(preprocess, object_ids(listing))
    work = ExplainWork(loader, chosen, labels, target, top_k, steps)
    identity = {
        "convlens": convlens.__version__,
        "model": mf.model_identity(handle),
        "methods": [
            {
                "name": name,
                "settings": {
                    k: v
                    for k, v in mf.settings_of(get_method(name), options, handle).items()
                    if k not in EXECUTION_SETTINGS
                },
            }
            for name, options in chosen
        ],
        "target": target,
        "labels": labels,
        "top_k": top_k,
        "deletion_steps": steps,
        "seed": seed,
        "mask": {"object_ids": list(loader.object_ids), "parts": list(listing.object_parts)},
        "shard_size": shard_size,
    }
    return RunSpec(
        handle, listing, chosen, labels, matching, jsonable(identity), work, shard_size, batch_size
    )


def explain(
    model: Any,
    source: Any,
    methods: MethodsSpec = "gradcam",
    *,
    out: str | os.PathLike[str],
    engine: str | Engine = "local",
    workers: int | None = None,
    address: str | None = None,
    settings: Mapping[str, Any] | None = None,
    target: str = "label",
    top_k: int = 5,
    deletion: bool | int = False,
    seed: int = 0,
    split: str | None = None,
    parts: Sequence[str] | None = None,
    shard_size: int = 512,
    batch_size: int = 16,
    overwrite: bool = False,
    report: bool = True,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Run:
    """Explain every picture of a data set with ``methods`` and score each map; resumable.

    ``source``: a class-folder tree, a flat folder, a toons folder (masks and boxes picked up;
    ``split``, ``parts``), a ``.csv``/``.txt`` list of paths or an uncompressed ``.tar`` (see
    :mod:`convlens.workflows.datasets.inputs`). ``methods``: names (``"gradcam,ig"``, a list) or
    ``{name: {setting: value}}``; ``settings`` go to every chosen method that has them (checked
    by the method table). ``target="label"`` explains the true class where the source has
    labels (else top-1), ``"predicted"`` always the top-1 class. Each row holds the top-``top_k``
    classes, the target's score and probability, energy in the mask and the pointing game where
    there are masks, and the deletion AUC with ``deletion=True`` (50 steps) or a step count.
    ``seed`` goes to every method with a seed.

    Results go to ``out`` (see :mod:`convlens.workflows.datasets.store`); re-running resumes.
    ``engine``: ``"local"`` (``workers`` decoding processes), ``"ray"`` (``workers`` actors,
    ``address`` of a cluster) or an engine object. ``report`` writes ``out/report.html`` at the
    end. ``progress(done, total)`` counts pictures; ``cancelled()`` is asked between batches
    (raises :class:`~convlens.core.engine.Cancelled`; finished shards stay)."""
    spec = prepare(
        model, source, methods, settings=settings, target=target, top_k=top_k,
        deletion=deletion, seed=seed, split=split, parts=parts, shard_size=shard_size,
        batch_size=batch_size,
    )  # fmt: skip
    options: dict[str, Any] = {}
    if workers is not None:
        options["workers"] = workers
    if address is not None:
        if engine != "ray":
            raise ValueError("address= joins a Ray cluster: use it with engine='ray'")
        options["address"] = address
    chosen = make_engine(engine, **options)
    run = execute(
        spec, Path(os.fspath(out)).expanduser(), chosen, overwrite=overwrite,
        progress=progress, cancelled=cancelled,
    )  # fmt: skip
    if report:
        run.report()
    return run


# -- reading a run back ------------------------------------------------------------------------


class Run:
    """A run folder, read back (finished or not): :meth:`table` (pandas, one row per picture
    x method), :meth:`maps` (memory-mapped), :meth:`failed`, :meth:`report`, :attr:`manifest`."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(os.fspath(folder)).expanduser()
        found = mf.read_manifest(self.folder)
        if found is None:
            raise FileNotFoundError(f"{self.folder} holds no convlens run (no {mf.MANIFEST})")

    @property
    def manifest(self) -> dict[str, Any]:
        found = mf.read_manifest(self.folder)
        assert found is not None
        return found

    @property
    def methods(self) -> list[str]:
        return [m["name"] for m in self.manifest["identity"]["methods"]]

    @property
    def report_path(self) -> Path:
        return self.folder / "report.html"

    def table(self, columns: Sequence[str] | None = None, *, method: str | None = None) -> Any:
        """The rows of every finished shard as a pandas DataFrame (``columns`` only; one
        ``method`` only)."""
        if method is not None and method not in self.methods:
            raise unknown("method of this run", method, self.methods)
        return store.read_rows(self.folder, columns, method=method)

    def maps(self, method: str | None = None) -> store.Maps:
        """One method's maps, memory-mapped (default: the run's first method)."""
        chosen = method or self.methods[0]
        if chosen not in self.methods:
            chosen = get_method(chosen).name
            if chosen not in self.methods:
                raise unknown("method of this run", method or "", self.methods)
        return store.Maps(self.folder, chosen)

    def failed(self) -> Any:
        rows = self.table(["id", "source", "method", "status", "error"])
        rows = rows[rows["status"] == "failed"]
        return rows[rows["method"] == self.methods[0]][["id", "source", "error"]]

    def counts(self) -> dict[str, int]:
        rows = self.table(["id", "method", "status"])
        first = rows[rows["method"] == self.methods[0]]
        return {
            "pictures": len(first),
            "failed": int((first["status"] == "failed").sum()),
            "rows": len(rows),
        }

    def report(self, path: str | os.PathLike[str] | None = None, **options: Any) -> Path:
        """Write the data set report (default ``<run>/report.html``); see
        :func:`convlens.workflows.datasets.report.dataset_report`."""
        from convlens.workflows.datasets.report import dataset_report

        page = dataset_report(self, **options)
        return page.save(path or self.report_path)

    def audit(self, method: str | None = None, *, threshold: float = 0.5) -> Any:
        from convlens.workflows.datasets.report import run_audit

        return run_audit(self, method or self.methods[0], threshold=threshold)

    def __repr__(self) -> str:
        manifest = self.manifest
        counts = manifest.get("counts") or {}
        return (
            f"Run({str(self.folder)!r}, {manifest['identity']['model']['name']}, "
            f"{', '.join(self.methods)}, {counts.get('pictures', '?')} pictures, "
            f"{manifest.get('status')})"
        )


def open_run(folder: str | os.PathLike[str]) -> Run:
    """A run folder written before."""
    return Run(folder)


def audit(
    model: Any,
    source: Any,
    methods: MethodsSpec = "integrated_gradients",
    *,
    out: str | os.PathLike[str],
    **options: Any,
) -> Run:
    """:func:`explain` over a data set with object masks (a toons folder, or a CSV list with a
    ``mask`` column), the report leading with the audit per class: the share of positive
    attribution on the object against the background (see :mod:`convlens.workflows.audit`
    for why Integrated Gradients is the default). ``run.audit()`` gives the
    :class:`~convlens.workflows.audit.Audit`. Options as :func:`explain`."""
    listing = list_items(source, split=options.get("split"), parts=options.get("parts"))
    if not any(item.mask is not None for item in listing.items):
        raise ValueError(
            f"the audit needs object masks: a toons folder, or a .csv list with a mask column; "
            f"{listing.root or 'the source'} ({listing.kind}) has none"
        )
    options.pop("split", None)
    options.pop("parts", None)
    return explain(model, listing, methods, out=out, **options)


def run_dataset(
    model: Any,
    source: Any,
    methods: MethodsSpec,
    out: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
    **options: Any,
) -> Run:
    """The explorer's "dataset run" job: :func:`explain` on the local engine (unless
    ``engine=`` says otherwise) with ``progress(done, total)`` in pictures and ``cancelled()``
    asked between batches (a cancelled run raises :class:`~convlens.core.engine.Cancelled` and
    keeps its finished shards: the same job again resumes). Ends with ``out/report.html``
    (``run.report_path``); returns the :class:`Run`."""
    return explain(
        model, source, methods, out=out, progress=progress, cancelled=cancelled, **options
    )
