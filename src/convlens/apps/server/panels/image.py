"""The image panel: the sample pictures, uploads, and the picture as a model sees it.

An upload is checked for size (``Content-Length``, then at most the limit + 1 bytes read)
before :meth:`ServerState.add_image` decodes it (pixel cap first); its id is its content
hash. The only files served are the bundled sample photos, by name (the crowd toon samples are
made in memory at start).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, Response

from convlens.apps.server.state import ServerState
from convlens.apps.server.web import PNG, png, work
from convlens.apps.server.web import forward as forward_of


def router(state: ServerState) -> APIRouter:
    api = APIRouter()

    def sample_file(name: str) -> Path:
        """A bundled photo by name only: no path from the request reaches the disk."""
        from convlens.core.images import samples as bundled

        found = bundled()
        if name not in found:
            from convlens.core.naming import unknown

            raise unknown("sample", name, [*sorted(found), *state.samples])
        return found[name]

    def sample_bytes(name: str) -> bytes:
        """A sample's bytes: a crowd toon frame made in memory at start, or a bundled photo."""
        return state.samples[name] if name in state.samples else sample_file(name).read_bytes()

    @api.get("/api/samples")
    async def samples() -> list[dict[str, str]]:
        """The sample pictures: ``kind`` is ``photo`` (bundled) or ``toons`` (crowd frames
        for the toon detector)."""
        from convlens.core.images import samples as bundled

        photos = [
            {"name": n, "url": f"/api/samples/{n}", "kind": "photo"} for n in sorted(bundled())
        ]
        frames = [{"name": n, "url": f"/api/samples/{n}", "kind": "toons"} for n in state.samples]
        return photos + frames

    @api.get("/api/samples/{name}")
    async def sample(name: str) -> Response:
        if name in state.samples:
            return Response(state.samples[name], media_type=PNG)
        return FileResponse(sample_file(name))

    @api.post("/api/images")
    async def upload(request: Request, file: UploadFile) -> dict[str, Any]:
        limit = state.config.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + 4096:
            raise HTTPException(413, f"upload too large: at most {limit} bytes")
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"upload too large: at most {limit} bytes")
        if not data:
            raise HTTPException(422, "expected an image file, got an empty upload")
        name = file.filename or "upload"
        image_id, image = await work(state, None, lambda: state.add_image(data, name))
        return {"id": image_id, "width": image.width, "height": image.height}

    @api.post("/api/images/sample/{name}")
    async def use_sample(name: str) -> dict[str, Any]:
        data = sample_bytes(name)
        image_id, image = await work(state, None, lambda: state.add_image(data, name))
        return {"id": image_id, "width": image.width, "height": image.height}

    @api.get("/api/models/{model}/images/{image_id}/picture.png")
    async def picture(model: str, image_id: str) -> Response:
        """The picture as the model sees it: a classifier's resized, cropped input, or the
        upload itself for a detector."""
        if state.task(model) == "detect":
            return png(await work(state, None, lambda: state.image(image_id)))
        return png((await forward_of(state, model, image_id)).picture)

    return api
