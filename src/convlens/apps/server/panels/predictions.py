"""The predictions panel: a classifier's top classes for a picture, from the cached forward
pass (:meth:`ServerState.forward`, shared with the activations panel), and for the toon models
how far the picture is from what they were trained on (:mod:`convlens.workflows.ood`)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from convlens.apps.server.state import ServerState
from convlens.apps.server.web import forward as forward_of
from convlens.apps.server.web import work
from convlens.workflows.ood import familiarity, for_model


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
        ood: dict[str, Any] | None = None
        if for_model(handle) is not None:  # a toon model: how far the picture is from toons
            inputs = forward.inputs
            found = await work(state, model, lambda: familiarity(handle, inputs))
            ood = found[0] if found else None
        return {
            "ood": ood,
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
