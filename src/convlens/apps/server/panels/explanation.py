"""The explanation panel: any registered attribution method on the picture, as an overlay
(PNG) or as the raw map (JSON).

The method forms come from the method table (:mod:`convlens.apps.server.forms`: each
method's registered settings, narrowed to what one request of the explorer may cost), so a
new method shows up here with no change; ``/api/methods`` lists them for the page.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from convlens.apps.server.forms import method_forms
from convlens.apps.server.state import ServerState
from convlens.apps.server.web import NO_STORE, PNG, layer_dict, options, work
from convlens.core.util import jsonable


def describe(state: ServerState, key: str) -> dict[str, Any]:
    """The model's entry in ``/api/models``: the layers a CAM can read (blocks too, every layer
    with a map called once) and the default one."""
    if state.task(key) != "classify":
        return {"explain_layers": [], "default_layer": None}
    from convlens.techniques.attribution.base import default_layer

    model = state.classifier(key)
    default: str | None
    try:
        default = default_layer(model)
    except ValueError:
        shown = state.panel_layers(key)
        default = shown[-1].name if shown else None
    return {
        "explain_layers": [
            layer_dict(row) for row in model.layers() if row.spatial and row.calls == 1
        ],
        "default_layer": default,
    }


def router(state: ServerState) -> APIRouter:
    api = APIRouter()

    @api.get("/api/methods")
    async def methods() -> list[dict[str, Any]]:
        return [form.to_dict() for form in method_forms().values()]

    async def attribution_of(model: str, image_id: str, method: str, request: Request) -> Any:
        """Run ``method`` on the cached picture with the query's target, layer and settings."""
        from convlens.techniques.attribution.base import get_method
        from convlens.techniques.attribution.explain import explain as run_method

        handle = state.classifier(
            model, "explain (a box's explanation is .../detections/<index>/explain/<method>)"
        )
        info = get_method(method)  # unknown names: 404 with close matches
        target_raw = request.query_params.get("target")
        layer = request.query_params.get("layer")
        settings = method_forms()[info.name].parse(options(request, "target", "layer"))
        target: Any = None
        if target_raw is not None and target_raw not in ("", "top1", "top-1"):
            target = handle.class_index(int(target_raw) if target_raw.isdigit() else target_raw)
        if layer:
            from convlens.core.naming import get_layer

            get_layer(handle.module, layer)
            settings["layer"] = layer
        forward = await work(state, None, lambda: state.forward(model, image_id))
        return await work(
            state, model, lambda: run_method(handle, forward.inputs, info.name, target, **settings)
        )

    @api.get("/api/models/{model}/images/{image_id}/explain/{method}.png")
    async def explain(model: str, image_id: str, method: str, request: Request) -> Response:
        """The explanation as an overlay on the picture (PNG); ``X-Ms``: compute time."""
        from convlens.core.render import png_bytes

        start = time.perf_counter()
        attribution = await attribution_of(model, image_id, method, request)
        data = await work(state, None, lambda: png_bytes(attribution.overlay().image))
        headers = {"X-Ms": f"{(time.perf_counter() - start) * 1000:.0f}", **NO_STORE}
        return Response(data, media_type=PNG, headers=headers)

    @api.get("/api/models/{model}/images/{image_id}/explain/{method}.json")
    async def explain_array(
        model: str, image_id: str, method: str, request: Request
    ) -> dict[str, Any]:
        """The raw explanation map (sign kept, at the method's own resolution) as an array."""
        attribution = await attribution_of(model, image_id, method, request)
        return {
            "method": attribution.method,
            "target": int(attribution.targets[0]) if attribution.targets is not None else None,
            "label": attribution.target_labels[0] if attribution.target_labels else None,
            "layer": attribution.layer,
            "settings": {k: jsonable(v) for k, v in attribution.settings.items()},
            "shape": list(attribution.map.shape[1:]),
            "map": attribution.map[0].tolist(),
        }

    return api
