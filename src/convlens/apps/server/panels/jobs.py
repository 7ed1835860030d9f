"""The jobs panel: long work in the background (the kinds of :mod:`..job_kinds`), its records
and its result files.

A job is checked before it is queued (an unknown kind, a bad parameter or an unknown upload is
a 4xx saying what was expected), recorded in ``<data_dir>/jobs.sqlite`` and run one at a time
on a copy of the model; its result files are served only under the names recorded for it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from convlens.apps.server.job_kinds import check
from convlens.apps.server.jobs import JobRunner
from convlens.apps.server.state import ServerState


def router(state: ServerState) -> APIRouter:
    api = APIRouter()

    def runner() -> JobRunner:
        if state.jobs is None:  # a state built by hand, not by ServerState.start
            raise HTTPException(404, "this server runs no jobs")
        return state.jobs

    @api.get("/api/jobs")
    async def jobs() -> list[dict[str, Any]]:
        return runner().store.all()

    @api.post("/api/jobs", status_code=201)
    async def start_job(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(422, "expected a JSON body {kind, model, params}") from None
        if not isinstance(body, dict) or not isinstance(body.get("params", {}), dict):
            raise HTTPException(422, "expected a JSON body {kind, model, params: {...}}")
        kind, key, params = body.get("kind"), body.get("model"), body.get("params", {})
        if not isinstance(kind, str) or not isinstance(key, str):
            raise HTTPException(422, "expected kind and model as strings")
        parsed = check(kind, params, state.classifier(key, "jobs"))
        for image_id in parsed.get("images") or []:
            state.image(image_id)  # unknown uploads: 404 now, not a failed job later
        return runner().store.get(runner().submit(kind, key, params))

    @api.get("/api/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, Any]:
        return runner().store.get(job_id)

    @api.delete("/api/jobs/{job_id}")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        return runner().cancel(job_id)

    @api.get("/api/jobs/{job_id}/files/{name:path}")
    async def job_file(job_id: str, name: str) -> FileResponse:
        record = runner().store.get(job_id)
        if name not in [r["name"] for r in record["results"]]:  # recorded names only
            raise HTTPException(404, f"job {job_id} has no result {name!r}")
        return FileResponse(runner().store.folder(job_id) / name)

    return api
