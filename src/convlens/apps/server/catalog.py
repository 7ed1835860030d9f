"""What the server offers: its health and its models, each model's entry made of what every
panel needs to know of it (``describe`` in each panel's module)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from convlens.apps.server import panels
from convlens.apps.server.state import ServerState
from convlens.apps.server.web import work


def describe(state: ServerState, key: str) -> dict[str, Any]:
    """Model ``key`` as the page's model menu and its panels see it."""
    task = state.task(key)
    labels = [str(label) for label in state.model(key).labels or []]
    entry = {
        "name": key,
        "task": task,
        "description": state.specs[key],
        "classes": len(labels),
        "labels": labels,
        "input_size": list(state.classifier(key).input_shape) if task == "classify" else None,
    }
    return {**entry, **panels.describe(state, key)}


def router(state: ServerState) -> APIRouter:
    api = APIRouter()

    @api.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(state.models)}

    @api.get("/api/models")
    async def models() -> list[dict[str, Any]]:
        return await work(state, None, lambda: [describe(state, key) for key in state.models])

    return api
