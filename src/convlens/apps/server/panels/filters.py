"""The filters panel: the weights of a layer's filters as a picture (first-layer RGB filters
as colour patches, deeper ones per input channel or reduced: :mod:`convlens.techniques.filters`).
A layer without weights is a 422 that says so."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from convlens.apps.server.state import ServerState
from convlens.apps.server.web import PNG, work


def router(state: ServerState) -> APIRouter:
    api = APIRouter()

    @api.get("/api/models/{model}/layers/{layer}/filters.png")
    async def filters(model: str, layer: str) -> Response:
        handle = state.classifier(model, "filters")

        def run() -> bytes:
            from convlens.core.render import png_bytes
            from convlens.techniques.filters import filter_weights

            return png_bytes(filter_weights(handle, layer).image)

        return Response(await work(state, model, run), media_type=PNG)

    return api
