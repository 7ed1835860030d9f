"""Background jobs of the explorer (feature visualization of a layer, TCAV): run one at a time
in their own thread so the page stays responsive, report progress, can be cancelled, and
persist in SQLite plus result files under the data folder.

A restart loses nothing finished: records are read back, and jobs that were queued or running
when the server stopped are marked ``interrupted``. Result files are served only by the name
recorded for their job, never by a path taken from the request.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

KINDS = ("featurevis", "tcav", "explain", "evaluate")
ACTIVE = ("queued", "running")


class Cancelled(Exception):
    """Raised inside a job's progress callback once it was cancelled."""


class JobStore:
    """Job records in ``data_dir/jobs.sqlite``; result files in ``data_dir/jobs/<id>/``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.root / "jobs.sqlite", check_same_thread=False)
        with self.lock, self.db:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, kind TEXT, model TEXT, "
                "params TEXT, status TEXT, progress REAL, message TEXT, created REAL, "
                "finished REAL, results TEXT)"
            )
            self.db.execute(
                "UPDATE jobs SET status = 'interrupted', message = 'the server stopped while "
                "it ran' WHERE status IN ('queued', 'running')"
            )

    def create(self, kind: str, model: str, params: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex[:16]
        with self.lock, self.db:
            self.db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, 'queued', 0, '', ?, NULL, '[]')",
                (job_id, kind, model, json.dumps(params), time.time()),
            )
        return job_id

    def update(self, job_id: str, **fields: Any) -> None:
        if "results" in fields:
            fields["results"] = json.dumps(fields["results"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.lock, self.db:
            self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def get(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise LookupError(f"unknown job {job_id!r}")
        return self._record(row)

    def all(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT * FROM jobs ORDER BY created DESC").fetchall()
        return [self._record(r) for r in rows]

    def folder(self, job_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{16}", job_id):
            raise LookupError(f"unknown job {job_id!r}")
        return self.root / "jobs" / job_id

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @staticmethod
    def _record(row: tuple[Any, ...]) -> dict[str, Any]:
        job_id, kind, model, params, status, progress, message, created, finished, results = row
        return {
            "id": job_id,
            "kind": kind,
            "model": model,
            "params": json.loads(params),
            "status": status,
            "progress": progress,
            "message": message,
            "created": created,
            "finished": finished,
            "results": [
                {"name": name, "url": f"/api/jobs/{job_id}/files/{name}"}
                for name in json.loads(results)
            ],
        }


class JobRunner:
    """Runs jobs one at a time in a background thread; ``submit`` returns at once."""

    def __init__(self, store: JobStore, run: Callable[..., list[str]]) -> None:
        self.store = store
        self.run = run  # (kind, model, params, folder, progress) -> result file names
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="convlens-job")
        self.cancelled: dict[str, threading.Event] = {}

    def submit(self, kind: str, model: str, params: dict[str, Any]) -> str:
        job_id = self.store.create(kind, model, params)
        self.cancelled[job_id] = threading.Event()
        self.pool.submit(self._execute, job_id, kind, model, params)
        return job_id

    def cancel(self, job_id: str) -> dict[str, Any]:
        record = self.store.get(job_id)
        if record["status"] in ACTIVE:
            event = self.cancelled.get(job_id)
            if event is not None:
                event.set()
            if record["status"] == "queued":
                self.store.update(job_id, status="cancelled", finished=time.time())
        return self.store.get(job_id)

    def _execute(self, job_id: str, kind: str, model: str, params: dict[str, Any]) -> None:
        event = self.cancelled[job_id]
        if event.is_set():
            return
        self.store.update(job_id, status="running", message="")
        folder = self.store.folder(job_id)
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if event.is_set():
                raise Cancelled
            now = time.monotonic()
            if now - last[0] > 0.2 or done >= total:
                last[0] = now
                self.store.update(job_id, progress=min(1.0, done / max(total, 1)))

        try:
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            names = self.run(kind, model, params, tmp, progress)
            tmp.replace(folder)  # results appear whole or not at all
            self.store.update(
                job_id, status="done", progress=1.0, finished=time.time(), results=names
            )
        except Cancelled:
            self.store.update(job_id, status="cancelled", finished=time.time())
        except Exception as err:  # a job's failure is its record, not the server's
            self.store.update(
                job_id,
                status="failed",
                message=f"{type(err).__name__}: {err}",
                finished=time.time(),
            )
        finally:
            self.cancelled.pop(job_id, None)
            shutil.rmtree(folder.with_name(folder.name + ".tmp"), ignore_errors=True)

    def close(self) -> None:
        for event in self.cancelled.values():
            event.set()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _channels(spec: Any, width: int) -> list[int]:
    if spec is None:
        return list(range(min(8, width)))
    if isinstance(spec, list):
        items = [int(c) for c in spec]
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                items += list(range(int(a), int(b) + 1))
            elif part:
                items.append(int(part))
    bad = [c for c in items if not 0 <= c < width]
    if bad or not items or len(items) > 256:
        raise ValueError(f"expected 1-256 channels in [0, {width}), got {spec!r}")
    return items


def _int(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"expected {name} an integer in [{low}, {high}], got {value!r}")
    return value


def check(kind: str, params: dict[str, Any], model: Any) -> None:
    """Refuse a job's parameters before it is queued (clear 4xx instead of a failed job)."""
    from convlens.core.naming import get_layer, unknown

    if kind not in KINDS:
        raise unknown("job kind", kind, KINDS)
    allowed = {
        "featurevis": {"layer", "channels", "steps", "size"},
        "tcav": {"target", "layers", "concepts", "images", "n_random"},
        "explain": {"images", "methods", "target"},
        "evaluate": {"methods", "n", "steps"},
    }[kind]
    extra = sorted(set(params) - allowed)
    if extra:
        raise ValueError(
            f"unknown parameter(s) {extra} for a {kind} job; it takes {sorted(allowed)}"
        )
    if kind == "featurevis":
        if not isinstance(params.get("layer"), str):
            raise ValueError("a featurevis job needs params.layer (a layer name)")
        get_layer(model.module, params["layer"])
        _int(params, "steps", 64, 1, 2048)
        _int(params, "size", 128, 16, 512)
    elif kind in ("explain", "evaluate"):
        from convlens.techniques.attribution.base import get_method

        methods = params.get("methods", ["gradcam"])
        if not isinstance(methods, list) or not methods or len(methods) > 16:
            raise ValueError(f"expected params.methods as a list of 1-16 names, got {methods!r}")
        for name in methods:
            get_method(str(name))
        if kind == "explain":
            ids = params.get("images")
            if not isinstance(ids, list) or not 1 <= len(ids) <= 64:
                raise ValueError("an explain job needs params.images: 1-64 uploaded image ids")
            if params.get("target") not in (None, "", "top-1"):
                model.class_index(params["target"])
        else:
            from convlens.data import toons

            if list(model.labels or []) != list(toons.CLASSES):
                raise ValueError(
                    "evaluate jobs score explanations against the toons' masks: they need a "
                    f"model of the toon classes {list(toons.CLASSES)}"
                )
            _int(params, "n", 50, 2, 1000)
            _int(params, "steps", 20, 2, 100)
    else:
        if "target" not in params:
            raise ValueError("a tcav job needs params.target (a class name or index)")
        model.class_index(params["target"])
        if params.get("concepts", "toons") != "toons":
            raise ValueError("the explorer's TCAV jobs use the built-in toon concepts: 'toons'")
        layers = params.get("layers")
        if layers is not None:
            for name in layers.split(",") if isinstance(layers, str) else layers:
                get_layer(model.module, str(name).strip())
        _int(params, "n_random", 10, 2, 50)


def run_task(
    kind: str,
    model: Any,
    params: dict[str, Any],
    folder: Path,
    progress: Callable[[int, int], None],
    images: Callable[[str], Any],
) -> list[str]:
    """Run one job on ``model`` (the job's own copy) and write its results into ``folder``;
    returns the result file names. ``images(id)`` gives an uploaded picture."""
    if kind == "featurevis":
        from convlens.techniques.visualize import featurevis, objectives

        layer = params["layer"]
        width = objectives.channels(layer).bind(model).batch or 1
        chosen = _channels(params.get("channels"), width)
        result = featurevis(
            model,
            objectives.channel(layer, chosen),
            steps=_int(params, "steps", 64, 1, 2048),
            size=_int(params, "size", 128, 16, 512),
            progress=progress,
        )
        written = result.save(folder)
    elif kind == "explain":
        from convlens.apps.reports import explanation_report
        from convlens.techniques.attribution.explain import explain

        pictures = [images(str(i)) for i in params["images"]]
        target = params.get("target")
        target = None if target in (None, "", "top-1") else model.class_index(target)
        methods = [str(m) for m in params.get("methods", ["gradcam"])]
        results = []
        written = []
        for k, method in enumerate(methods):
            attribution = explain(model, pictures, method, target)
            results.append(attribution)
            for i in range(len(pictures)):
                path = folder / f"{method}_{i}.png"
                attribution.overlay(i).save(path)
                written.append(path)
            progress(k + 1, len(methods))
        prediction = model.predict(pictures)
        written.insert(
            0,
            explanation_report(results, prediction, title="Explanations").save(
                folder / "index.html"
            ),
        )
    elif kind == "evaluate":
        from convlens.data import toons
        from convlens.workflows.evaluation import evaluate

        data = toons.generate(_int(params, "n", 50, 2, 1000), split="test", seed=11)
        scored = evaluate(
            model,
            data,
            [str(m) for m in params.get("methods", ["gradcam"])],
            steps=_int(params, "steps", 20, 2, 100),
            progress=progress,
        )
        written = [scored.save(folder / "evaluation.json")]
    else:
        from convlens.data import toons
        from convlens.techniques.concepts import tcav

        target = params["target"]
        ids = params.get("images")
        if ids:
            pictures = [images(str(i)) for i in ids]
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
            layers=params.get("layers"),
            n_random=_int(params, "n_random", 10, 2, 50),
            progress=progress,
        )
        written = tested.save(folder)
    return [p.relative_to(folder).as_posix() for p in written]
