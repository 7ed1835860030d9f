"""The predictions panel: a classifier's top classes for a picture, from the cached forward
pass (:meth:`ServerState.forward`, shared with the activations panel)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from convlens.apps.server.state import ServerState
from convlens.apps.server.web import forward as forward_of


def router(state: ServerState) -> APIRouter:
    api = APIRouter()

    @api.get("/api/models/{model}/images/{image_id}/predictions")
    async def predictions(model: str, image_id: str, top: int = 5) -> dict[str, Any]:
        handle = state.classifier(model, "predictions")
        if not 1 <= top <= 100:
            raise ValueError(f"expected top in [1, 100], got {top}")
        start = time.perf_counter()
        forward = await forward_of(state, model, image_id)
        probs = forward.probabilities
        values, indices = probs.topk(min(top, probs.numel()))
        return {
            "predictions": [
                {
                    "index": int(i),
                    "label": handle.label(int(i)) if handle.labels else str(int(i)),
                    "probability": float(v),
                }
                for v, i in zip(values, indices, strict=True)
            ],
            "ms": (time.perf_counter() - start) * 1000,
        }

    return api
