"""Background jobs of the explorer: run one at a time in their own thread so the page stays
responsive, report progress, can be cancelled, and persist in SQLite plus result files under
the data folder. What each kind of job takes and does is in :mod:`.job_kinds`.

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

ACTIVE = ("queued", "running")


class Cancelled(Exception):
    """Model work stopped because whoever wanted it went away: raised inside a job's progress
    callback once the job is cancelled, and inside a box explanation once the page that asked
    for it closed the connection."""


class QueueFull(Exception):
    """A job refused because as many as the server takes are already waiting or running."""


class JobStore:
    """Job records in ``data_dir/jobs.sqlite``; result files in ``data_dir/jobs/<id>/``.

    On open, records of jobs that were queued or running are marked ``interrupted``, and
    folders that no finished job owns (``<id>.tmp`` left by a kill, results of removed
    records) are deleted."""

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
        owned = {
            job_id for (job_id,) in self.db.execute("SELECT id FROM jobs WHERE status = 'done'")
        }
        for path in (self.root / "jobs").iterdir():
            if path.name not in owned:  # a killed job's <id>.tmp, a removed job's results
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

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

    def remove(self, job_id: str) -> None:
        """Delete a job's record and its result files."""
        folder = self.folder(job_id)
        with self.lock, self.db:
            self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(folder, ignore_errors=True)

    def active(self) -> int:
        """How many jobs are queued or running."""
        with self.lock:
            (count,) = self.db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
            ).fetchone()
        return int(count)

    def prune(self, most_bytes: float, most_jobs: int) -> list[str]:
        """Remove the oldest finished jobs (records and files) until at most ``most_jobs``
        finished records and ``most_bytes`` of result files are left; returns their ids."""
        with self.lock:
            rows = self.db.execute(
                "SELECT id FROM jobs WHERE status NOT IN ('queued', 'running') "
                "ORDER BY created DESC"
            ).fetchall()
        kept_bytes, removed = 0, []
        for rank, (job_id,) in enumerate(rows):
            size = folder_bytes(self.folder(job_id))
            if rank >= most_jobs or kept_bytes + size > most_bytes:
                self.remove(job_id)
                removed.append(job_id)
            else:
                kept_bytes += size
        return removed

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


def folder_bytes(folder: Path) -> int:
    """The size of the files under ``folder`` (0 when there is none)."""
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


class JobRunner:
    """Runs jobs one at a time in a background thread; ``submit`` returns at once.

    At most ``max_queued`` jobs wait or run (:class:`QueueFull` beyond); a job whose results
    pass ``max_bytes`` fails, and after each job the oldest finished jobs are removed until
    ``max_bytes`` of results and ``max_kept`` records are left."""

    def __init__(
        self,
        store: JobStore,
        run: Callable[..., list[str]],
        *,
        max_queued: int = 8,
        max_bytes: float = 1024**3,
        max_kept: int = 200,
    ) -> None:
        self.store = store
        self.run = run  # (kind, model, params, folder, progress, note) -> result file names
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="convlens-job")
        self.cancelled: dict[str, threading.Event] = {}
        self.max_queued, self.max_bytes, self.max_kept = max_queued, max_bytes, max_kept
        self.submitting = threading.Lock()

    def submit(self, kind: str, model: str, params: dict[str, Any]) -> str:
        with self.submitting:
            waiting = self.store.active()
            if waiting >= self.max_queued:
                raise QueueFull(
                    f"{waiting} jobs are already waiting or running (at most {self.max_queued}):"
                    " wait for one to finish or cancel one"
                )
            job_id = self.store.create(kind, model, params)
            self.cancelled[job_id] = threading.Event()
        self.pool.submit(self._execute, job_id, kind, model, params)
        return job_id

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; a finished one is removed with its results
        (``status`` ``"deleted"``)."""
        record = self.store.get(job_id)
        if record["status"] not in ACTIVE:
            self.store.remove(job_id)
            return {**record, "status": "deleted", "results": []}
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

            def note(text: str) -> None:
                self.store.update(job_id, message=text)

            names = self.run(kind, model, params, tmp, progress, note)
            size = folder_bytes(tmp)
            if size > self.max_bytes:
                raise ValueError(
                    f"its results take {size / 2**20:.0f} MB, more than the "
                    f"{self.max_bytes / 2**20:.0f} MB kept for jobs: ask for less"
                )
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
            self.store.prune(self.max_bytes, self.max_kept)

    def close(self) -> None:
        for event in self.cancelled.values():
            event.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
