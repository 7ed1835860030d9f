"""The explanation panel: any registered attribution method on the picture, as an overlay
(PNG) or as the raw map (JSON).

The method forms come from the method table (:mod:`convlens.apps.server.forms`: each
method's registered settings, narrowed to what one request of the explorer may cost), so a
new method shows up here with no change; ``/api/methods`` lists them for the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from convlens.apps.server.forms import method_forms
from convlens.apps.server.state import ServerState
from convlens.apps.server.web import (
    NO_STORE,
    PNG,
    Run,
    cancellable,
    lane,
    layer_dict,
    options,
    run_extras,
    work,
)
from convlens.apps.server.web import forward as forward_of
from convlens.core.render import png_bytes
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

    run_routes(api, state)

    async def attribution_of(
        model: str, image_id: str, method: str, request: Request
    ) -> tuple[Any, Run | None]:
        """Run ``method`` on the cached picture with the query's target, layer and settings
        (cached per model, picture, method, target, layer and settings); ``None`` for the run
        when the answer came from the cache."""
        from convlens.techniques.attribution.base import get_method
        from convlens.techniques.attribution.explain import explain as run_method

        handle = state.classifier(
            model, "explain (a box's explanation is .../detections/<index>/explain/<method>)"
        )
        info = get_method(method)  # unknown names: 404 with close matches
        target_raw = request.query_params.get("target")
        layer = request.query_params.get("layer")
        settings = method_forms()[info.name].parse(options(request, "target", "layer", "scale"))
        target: Any = None
        if target_raw is not None and target_raw not in ("", "top1", "top-1"):
            target = handle.class_index(int(target_raw) if target_raw.isdigit() else target_raw)
        if layer:
            from convlens.core.naming import get_layer

            get_layer(handle.module, layer)
            settings["layer"] = layer
        key = (model, image_id, info.name, target, tuple(sorted(settings.items(), key=str)))
        found = state.explained.get(key)
        if found is not None:
            return found[0], None
        forward = await forward_of(state, model, image_id)
        runner, lock = await lane(state, model, info.fn)

        def compute(run: Run) -> Any:
            extra = run_extras(info.fn, settings, run)
            result = run_method(runner, forward.inputs, info.name, target, **settings, **extra)
            state.explained.put(key, (result, 0.0))
            return result

        what = f"{info.name} on {image_id}"
        return await cancellable(state, request, model, what, compute, lock)

    @api.get("/api/models/{model}/images/{image_id}/explain/{method}.png")
    async def explain(model: str, image_id: str, method: str, request: Request) -> Response:
        """The explanation as an overlay on the picture, its colour bar below with the
        target's score (PNG). ``scale=vmin,vmax`` draws it on a given range (to compare maps),
        else on its own. Headers: ``X-Ms`` the compute time (not the wait for the model:
        ``X-Wait-Ms``), ``X-Cached``, ``X-Target`` / ``X-Label`` and ``X-Score`` (the target's
        logit), ``X-Scale-Min`` / ``X-Scale-Max`` / ``X-Colormap`` (the colour bar), and
        method diagnostics (``X-Completeness-Error`` for Integrated Gradients)."""
        scale = scale_of(request.query_params.get("scale"))
        attribution, run = await attribution_of(model, image_id, method, request)
        figure = await work(state, None, lambda: attribution.overlay(scale=scale))
        data = await work(state, None, lambda: png_bytes(figure.framed()))
        headers = {**explanation_headers(attribution, run, figure.scale), **NO_STORE}
        return Response(data, media_type=PNG, headers=headers)

    @api.get("/api/models/{model}/images/{image_id}/explain/{method}.json")
    async def explain_array(
        model: str, image_id: str, method: str, request: Request
    ) -> dict[str, Any]:
        """The raw explanation map (sign kept, at the method's own resolution) as an array."""
        attribution, _ = await attribution_of(model, image_id, method, request)
        return {
            "method": attribution.method,
            "target": int(attribution.targets[0]) if attribution.targets is not None else None,
            "label": attribution.target_labels[0] if attribution.target_labels else None,
            "score": float(attribution.scores[0]) if attribution.scores is not None else None,
            "layer": attribution.layer,
            "settings": {k: jsonable(v) for k, v in attribution.settings.items()},
            "extras": {k: jsonable(v) for k, v in attribution.extras.items()},
            "shape": list(attribution.map.shape[1:]),
            "map": attribution.map[0].tolist(),
        }

    return api


def run_routes(api: APIRouter, state: ServerState) -> None:
    """A long request's model work while it goes (an explanation, a box's or a region's):
    its progress, its first map and its cancel."""

    @api.get("/api/runs/{run_id}")
    async def run_progress(run_id: str) -> dict[str, Any]:
        """A request's model work while it goes (an explanation, a box's or a region's):
        waiting or running, ``done`` of ``total``."""
        if run_id not in state.runs:
            raise LookupError(f"no run {run_id[:64]!r} in progress")
        return dict(state.runs[run_id].to_dict())

    @api.get("/api/runs/{run_id}/preview.png")
    async def run_preview(run_id: str, request: Request) -> Response:
        """The latest first map of a run still going (occlusion's coarse passes, RISE from
        the masks drawn so far), drawn as the finished map will be (``scale=vmin,vmax`` as
        there); ``X-Preview`` the share of the work it holds, ``X-Preview-Of`` of what."""
        run = state.runs.get(run_id)
        if run is None or run.preview is None:
            raise LookupError(f"no preview of a run {run_id[:64]!r} in progress")
        first, draw = run.preview, run.draw or preview_png  # a box's or a region's: their own
        data, headers = await work(state, None, lambda: draw(first, request.query_params))
        headers.update(NO_STORE)
        headers["X-Preview"] = f"{float(first.extras.get('preview', 1.0)):.3f}"
        headers["X-Preview-Of"] = str(first.extras.get("preview_of", "the work"))
        return Response(data, media_type=PNG, headers=headers)

    @api.delete("/api/runs/{run_id}")
    async def cancel_run(run_id: str) -> dict[str, Any]:
        """Stop a request's model work at its next progress report (its request gets 499)."""
        if run_id not in state.runs:
            raise LookupError(f"no run {run_id[:64]!r} in progress")
        state.runs[run_id].cancelled.set()
        return dict(state.runs[run_id].to_dict())


def preview_png(first: Any, query: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    """A run's first map drawn as the finished one will be (``scale=vmin,vmax`` as there),
    with the headers the page shows beside it."""
    figure = first.overlay(scale=scale_of(query.get("scale")))
    headers = explanation_headers(first, None, figure.scale)
    for told in ("X-Cached", "X-Approximate"):  # of the finished map, not of this one
        headers.pop(told, None)
    return png_bytes(figure.framed()), headers


def scale_of(text: str | None) -> tuple[float, float] | None:
    """``(vmin, vmax)`` from a query's ``scale=vmin,vmax`` (``None`` when absent or empty)."""
    if not text:
        return None
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(
            f"expected scale as two numbers vmin,vmax with vmax > vmin, got {text[:40]!r}"
        )
    return low, high


def explanation_headers(attribution: Any, run: Run | None, scale: Any = None) -> dict[str, str]:
    """What the page shows beside a map: times, target, score, colour scale and diagnostics."""
    headers = {"X-Cached": "0" if run is not None else "1"}
    if scale is not None:
        headers["X-Scale-Min"] = f"{scale.vmin:.4g}"
        headers["X-Scale-Max"] = f"{scale.vmax:.4g}"
        headers["X-Colormap"] = scale.cmap
    if run is not None:
        headers["X-Ms"] = f"{run.computed * 1000:.0f}"
        headers["X-Wait-Ms"] = f"{run.waited * 1000:.0f}"
    if attribution.targets is not None:
        headers["X-Target"] = str(int(attribution.targets[0]))
    if attribution.target_labels:
        headers["X-Label"] = quote(str(attribution.target_labels[0]))
    if attribution.scores is not None:
        headers["X-Score"] = f"{float(attribution.scores[0]):.4g}"
    error = attribution.extras.get("completeness_error")
    if error is not None:
        headers["X-Completeness-Error"] = f"{float(np.asarray(error).reshape(-1)[0]):.3g}"
    mode = attribution.settings.get("approximate")
    if mode is not None:  # occlusion's approximate modes: the share computed, SSIM when asked
        ssim = attribution.extras.get("ssim")
        told = f"{mode}, {attribution.extras.get('evaluated', 1.0):.0%} of windows computed"
        headers["X-Approximate"] = told + (f", SSIM {ssim[0]:.3f} to the exact map" if ssim else "")
    return headers
