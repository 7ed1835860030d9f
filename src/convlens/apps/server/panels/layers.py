"""The layer table panel: every named layer of a classifier in forward order (dotted name,
type, kind, output shape, parameter count), from one dry forward pass (:meth:`Model.layers`,
:func:`convlens.core.layers.layer_table`), with a kind filter."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter

from convlens.apps.server.state import ServerState
from convlens.apps.server.web import work


def router(state: ServerState) -> APIRouter:
    api = APIRouter()

    @api.get("/api/models/{model}/layers")
    async def layers(model: str, kind: str | None = None) -> dict[str, Any]:
        """The layer table: ``layers`` in forward order, each with its ``name`` (the dotted
        path every panel uses), ``type``, ``kind`` (conv, pool, act, norm, linear, dropout,
        block, other), output ``shape`` without the batch (null for a layer the forward pass
        never calls), ``params`` and ``depth``; ``kind`` (comma-separated, e.g. ``conv,pool``)
        keeps only those kinds. ``kinds`` counts the whole table's layers by kind."""
        handle = state.classifier(model, "the layer table")
        table = await work(state, model, handle.layers)  # one dry pass, kept by the handle
        wanted = [k.strip() for k in (kind or "").split(",") if k.strip()]
        shown = table.filter(wanted) if wanted else table
        return {
            "model": model,
            "input_shape": list(table.input_shape),
            "total_params": table.total_params,
            "kinds": dict(Counter(row.kind for row in table)),
            "layers": [
                {
                    "name": row.name,
                    "type": row.type,
                    "kind": row.kind,
                    "shape": list(row.output_shape[1:]) if row.output_shape else None,
                    "params": row.params,
                    "depth": row.depth,
                }
                for row in shown
            ],
        }

    return api
