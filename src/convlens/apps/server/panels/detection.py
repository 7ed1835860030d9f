"""The detection panel: a detector's boxes on the picture (JSON, or drawn as a PNG) under the
request's thresholds, and one box explained (D-RISE, box Grad-CAM, box Layer-CAM).

Detections are cached per (model, picture, thresholds) and box explanations per (model,
picture, box, method, options) in the state, so a threshold change that keeps a box reuses its
map. A box explanation is a :class:`~convlens.apps.server.web.Run`, as the explanation panel's:
its progress is read at ``/api/runs/<run>`` and it stops at D-RISE's next batch once cancelled
there or once the page closes the connection (it asked for another box), which frees the model
for the next request.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from convlens.apps.server.forms import MAX_DETECTIONS, THRESHOLDS, box_form
from convlens.apps.server.state import ServerState
from convlens.apps.server.web import (
    NO_STORE,
    PNG,
    Run,
    cancellable,
    options,
    png,
    run_extras,
    work,
)
from convlens.core.util import jsonable

Thresholds = tuple[float | None, float | None, int | None]


def describe(state: ServerState, key: str) -> dict[str, Any]:
    """The model's entry in ``/api/models``: for a detector, its class colours, thresholds
    and limits, the box explanation forms and the layers a box CAM can read."""
    if state.task(key) != "detect":
        return {}
    from convlens.core.render import PALETTE
    from convlens.techniques.attribution.detection import default_box_layer

    detector = state.detector(key)
    labels = [str(label) for label in detector.labels or []]
    layers = state.box_layers.get(key, [])
    default = default_box_layer(detector) if layers else None
    return {
        "colors": [
            "#{:02x}{:02x}{:02x}".format(*PALETTE[i % len(PALETTE)])
            for i in range(max(len(labels), 1))
        ],
        "score_threshold": detector.score_threshold,
        "iou_threshold": detector.iou_threshold,
        "max_detections": detector.max_detections,
        "max_detections_limit": MAX_DETECTIONS,
        "max_pixels": state.config.max_detect_pixels,
        "box_methods": [box_form(m, layers, default).to_dict() for m in state.box_methods(key)],
        "box_layers": layers,
        "default_box_layer": default,
    }


def box(found: Any, index: int) -> Any:
    """Detection ``index`` of ``found``; a missing one says which there are."""
    if not 0 <= index < len(found):
        settings = found.settings
        raise LookupError(
            f"no detection {index}: there are {len(found)} (indices 0 to {len(found) - 1}) at "
            f"score_threshold {settings['score_threshold']}, iou_threshold "
            f"{settings['iou_threshold']}, max_detections {settings['max_detections']}"
            if len(found)
            else f"no detection {index}: nothing was detected at these thresholds"
        )
    return found[index]


def detection_dict(d: Any) -> dict[str, Any]:
    return {
        "index": d.index,
        "box": [float(v) for v in d.box],
        "label": d.label,
        "name": d.name,
        "score": float(d.score),
    }


def _box_options(state: ServerState, model: str, method: str, request: Request) -> dict[str, Any]:
    """The method's options from the query (the thresholds choose the detections), checked
    against its form; a method the detector cannot give is refused with the ones it can."""
    from convlens.techniques.attribution.detection import default_box_layer

    detector = state.detector(model)
    layers = state.box_layers.get(model, [])
    chosen = box_form(method, layers, default_box_layer(detector) if layers else None)
    if method not in state.box_methods(model):
        raise ValueError(
            f"{model} gives no gradients to read at a layer, so {method} cannot explain its "
            f"boxes; use {', '.join(state.box_methods(model))}"
        )
    query = options(request, *THRESHOLDS)
    accepted = sorted(s.name for s in chosen.settings)
    extra = sorted(set(query) - set(accepted))
    if extra:
        raise ValueError(
            f"unknown option(s) {extra} for {method}; it takes {accepted or 'none'}, and "
            f"{', '.join(THRESHOLDS)} to choose the detections"
        )
    return chosen.parse(query)


async def detections_of(
    state: ServerState, model: str, image_id: str, thresholds: Thresholds
) -> tuple[Any, float, bool]:
    """The cached detections of a picture under a request's thresholds (the detector's
    own where not given): (Detections, seconds, whether they came from the cache)."""
    checked = state.thresholds(model, *thresholds)
    state.image(image_id)  # unknown pictures: 404 before any work
    cached = state.found.get((model, image_id, *checked)) is not None
    found, seconds = await work(state, None, lambda: state.detections(model, image_id, checked))
    return found, seconds, cached


async def box_explanation_of(
    state: ServerState,
    model: str,
    image_id: str,
    index: int,
    method: str,
    thresholds: Thresholds,
    request: Request,
) -> tuple[Any, float, bool]:
    """Check the method and its options, find the box, explain it (cached)."""
    settings = _box_options(state, model, method, request)
    found, _, _ = await detections_of(state, model, image_id, thresholds)
    target = box(found, index)
    hit = state.cached_box(model, image_id, target, method, settings)
    if hit is not None:
        return hit
    # D-RISE can hold the model for seconds: it is a Run (its progress at /api/runs/<run>,
    # cancelled there, or when the page gives up and the connection closes), stopping at
    # its next batch, which frees the model for the next request

    def compute(run: Run) -> tuple[Any, float, bool]:
        run.draw = lambda first, _query: box_png(first)  # D-RISE's first maps
        from convlens.techniques.attribution.base import get_method

        extra = run_extras(get_method(method, "detect").fn, settings, run)
        return state.explain_box(model, image_id, target, method, settings, extra, locked=True)

    what = f"{method} of box {index} on {image_id}"
    result, _ = await cancellable(state, request, model, what, compute)
    return result


def box_png(explanation: Any) -> tuple[bytes, dict[str, str]]:
    """A box's map over the picture with the box drawn and its colour bar below (as the
    explanation panel's: :meth:`~convlens.core.render.Figure.framed`), and the headers the
    page shows beside it: the colour bar's range, the energy in the box, the peak."""
    from convlens.core.render import png_bytes

    figure = explanation.overlay()
    energy = explanation.energy_in_box()
    x, y = explanation.peak()
    headers = {
        "X-Scale-Min": f"{figure.scale.vmin:.4g}" if figure.scale else "",
        "X-Scale-Max": f"{figure.scale.vmax:.4g}" if figure.scale else "",
        "X-Energy-In-Box": "nan" if math.isnan(energy) else f"{energy:.6f}",
        "X-Peak": f"{x},{y}",
    }
    return png_bytes(figure.framed()), headers


def router(state: ServerState) -> APIRouter:
    api = APIRouter()
    _boxes(api, state)
    _box_explanations(api, state)
    return api


def _boxes(api: APIRouter, state: ServerState) -> None:
    """The detections as JSON, and drawn on the picture."""

    @api.get("/api/models/{model}/images/{image_id}/detections")
    async def detections(
        model: str,
        image_id: str,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> dict[str, Any]:
        """A detector's boxes on the picture (pixels of the upload, highest score first) with
        the thresholds used; ``ms``: compute time, ``cached``: served from the cache."""
        found, seconds, cached = await detections_of(
            state, model, image_id, (score_threshold, iou_threshold, max_detections)
        )
        picture = state.image(image_id)
        return {
            "model": model,
            "detections": [detection_dict(d) for d in found],
            "settings": found.settings,
            "width": picture.width,
            "height": picture.height,
            "ms": seconds * 1000,
            "cached": cached,
        }

    @api.get("/api/models/{model}/images/{image_id}/detections.png")
    async def detections_png(
        model: str,
        image_id: str,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        highlight: int | None = None,
    ) -> Response:
        """The boxes drawn on the picture (its own size); ``highlight``: that box thicker, the
        others dimmed."""
        found, _, _ = await detections_of(
            state, model, image_id, (score_threshold, iou_threshold, max_detections)
        )
        if highlight is not None:
            box(found, highlight)
        return png(await work(state, None, lambda: found.draw(highlight=highlight)))


def _box_explanations(api: APIRouter, state: ServerState) -> None:
    """One box explained, as an overlay with its numbers in headers, or as the raw map."""

    @api.get("/api/models/{model}/images/{image_id}/detections/{index}/explain/{method}.png")
    async def explain_box_png(
        model: str,
        image_id: str,
        index: int,
        method: str,
        request: Request,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> Response:
        """Box ``index`` (among the detections at these thresholds) explained by ``method``
        (drise, gradcam, layercam; its options as query parameters, see ``/api/models``): the
        map over the picture with the box drawn, its colour bar below (as the explanation
        panel's: :meth:`~convlens.core.render.Figure.framed`). Headers: ``X-Energy-In-Box``
        (share of the positive attribution inside the box), ``X-Peak`` (x,y), ``X-Ms``
        (compute time), ``X-Cache`` (hit or miss), ``X-Scale-Min`` / ``X-Scale-Max`` (the jet
        map's range)."""
        thresholds = (score_threshold, iou_threshold, max_detections)
        explanation, seconds, cached = await box_explanation_of(
            state, model, image_id, index, method, thresholds, request
        )
        data, drawn = await work(state, None, lambda: box_png(explanation))
        headers = {
            **drawn,
            "X-Ms": f"{seconds * 1000:.0f}",
            "X-Cache": "hit" if cached else "miss",
            **NO_STORE,
        }
        return Response(data, media_type=PNG, headers=headers)

    @api.get("/api/models/{model}/images/{image_id}/detections/{index}/explain/{method}.json")
    async def explain_box_json(
        model: str,
        image_id: str,
        index: int,
        method: str,
        request: Request,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> dict[str, Any]:
        """The raw box map (H, W) at the picture's size, sign kept, as a nested list; its
        energy in the box (null when nothing is positive), peak (x, y), the settings used and
        the seconds it took."""
        thresholds = (score_threshold, iou_threshold, max_detections)
        explanation, seconds, cached = await box_explanation_of(
            state, model, image_id, index, method, thresholds, request
        )
        x, y = explanation.peak()
        x0, y0, x1, y1 = explanation.target.box
        return {
            "method": explanation.method,
            "target": detection_dict(explanation.target),
            "settings": {k: jsonable(v) for k, v in explanation.settings.items()},
            "shape": list(explanation.map.shape),
            "map": explanation.map.tolist(),
            "energy_in_box": jsonable(explanation.energy_in_box()),
            "peak": [x, y],
            "peak_in_box": bool(x0 <= x <= x1 and y0 <= y <= y1),
            "seconds": seconds,
            "cached": cached,
        }
