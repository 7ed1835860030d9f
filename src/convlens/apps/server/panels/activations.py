"""The activations panel: one conv or pool layer's activation of a picture, a channel at a
time (the slider) or the whole layer as a grid, as a heatmap PNG or as an array.

Every panel layer's activation comes from one cached forward pass per (model, picture)
(:meth:`ServerState.forward`), so a slider move only renders one channel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response

from convlens.apps.server.state import Forward, ServerState
from convlens.apps.server.web import NO_STORE, PNG, layer_dict, work
from convlens.apps.server.web import forward as forward_of


def describe(state: ServerState, key: str) -> dict[str, Any]:
    """The model's entry in ``/api/models``: ``layers``, the conv and pool layers it shows."""
    if state.task(key) != "classify":
        return {"layers": []}
    return {"layers": [layer_dict(row) for row in state.panel_layers(key)]}


def _layer(forward: Forward, layer: str) -> Any:
    if layer not in forward.activations:
        from convlens.core.naming import unknown

        raise unknown("layer with a map", layer, list(forward.activations))
    return forward.activations[layer]


def _render(forward: Forward, act: Any, channel: int, grid: bool) -> bytes:
    """One channel as a heatmap at the picture's size, or every channel (at most 256) as a
    grid of small heatmaps."""
    from convlens.core import render

    channels = int(act.shape[0])
    if grid:
        maps = act.numpy()
        shown = min(channels, 256)
        image = render.grid(
            [render.heatmap(m_, size=(48, 48), resample="nearest") for m_ in maps[:shown]],
            ncols=int(np.ceil(np.sqrt(shown))),
            labels=[str(i) for i in range(shown)],
            font_size=9,
        )
    else:
        if not 0 <= channel < channels:
            raise ValueError(f"expected a channel in [0, {channels}), got {channel}")
        side = forward.picture.size
        image = render.heatmap(act[channel].numpy(), size=side, resample="nearest")
    return render.png_bytes(image)


def router(state: ServerState) -> APIRouter:
    api = APIRouter()

    @api.get("/api/models/{model}/images/{image_id}/activations/{layer}.png")
    async def activation(
        model: str, image_id: str, layer: str, channel: int = 0, grid: bool = False
    ) -> Response:
        state.classifier(model, "activations")
        forward = await forward_of(state, model, image_id)
        act = _layer(forward, layer)
        data = await work(state, None, lambda: _render(forward, act, channel, grid))
        headers = {"X-Channels": str(int(act.shape[0])), **NO_STORE}
        return Response(data, media_type=PNG, headers=headers)

    @api.get("/api/models/{model}/images/{image_id}/activations/{layer}.json")
    async def activation_array(
        model: str, image_id: str, layer: str, channel: int | None = None
    ) -> dict[str, Any]:
        """One channel's activation (or the whole layer's, without ``channel``) as an array."""
        state.classifier(model, "activations")
        forward = await forward_of(state, model, image_id)
        act = _layer(forward, layer)
        if channel is not None and not 0 <= channel < act.shape[0]:
            raise ValueError(f"expected a channel in [0, {act.shape[0]}), got {channel}")
        values = act if channel is None else act[channel]
        return {
            "layer": layer,
            "channel": channel,
            "shape": list(values.shape),
            "values": values.tolist(),
        }

    return api
