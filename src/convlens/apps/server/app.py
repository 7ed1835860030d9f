"""The explorer's FastAPI app: ``create_app(state)`` builds it around an explicit
:class:`~convlens.server.state.ServerState`.

Every panel of the page is a JSON or PNG endpoint under ``/api`` (described in the generated
OpenAPI document at ``/openapi.json``): a classifier's predictions, activations and
explanations, a detector's detections and box explanations. Model work runs in the state's
bounded worker pool, off the event loop. Bad input gets a 4xx with ``{"detail": "..."}``
saying what was expected (a classifier's panel asked of a detector too, and the reverse); the
only files served are the page's own (``static/``) and the bundled sample photos, by name (the
crowd toon samples are made in memory at start).
"""

from __future__ import annotations

import asyncio
import hmac
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from convlens.apps.server.panels import MAX_DETECTIONS, THRESHOLDS, box_panel, panels
from convlens.apps.server.state import Cancelled, ServerState
from convlens.core.util import jsonable

T = TypeVar("T")
STATIC = Path(__file__).resolve().parent / "static"
PNG = "image/png"
TOKEN_COOKIE = "convlens_token"


def _png(image: Any) -> Response:
    from convlens.core.render import png_bytes

    return Response(png_bytes(image), media_type=PNG, headers={"Cache-Control": "no-store"})


def create_app(state: ServerState) -> FastAPI:
    """The app over ``state`` (models already loaded)."""
    from convlens.core.images import ImageError
    from convlens.core.naming import UnknownNameError

    app = FastAPI(
        title="convlens explorer",
        description="What a convolutional network sees, and why it decides: every panel of "
        "the explorer as a JSON or PNG endpoint.",
        version="1",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: nothing here fetches the internet
        redoc_url=None,
    )
    app.state.convlens = state
    token = state.config.token

    @app.exception_handler(UnknownNameError)
    async def _unknown(_request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(LookupError)
    async def _missing(_request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(err).strip("'\"")}, status_code=404)

    @app.exception_handler(ImageError)
    async def _image(_request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=415)

    @app.exception_handler(ValueError)
    async def _value(_request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(Cancelled)
    async def _cancelled(_request: Request, err: Exception) -> JSONResponse:
        # the client went away: nobody reads this answer (499: nginx's "client closed request")
        return JSONResponse({"detail": str(err)}, status_code=499)

    @app.exception_handler(RuntimeError)
    async def _runtime(_request: Request, err: Exception) -> JSONResponse:
        # torch raises RuntimeError for inputs a network cannot take (shapes, sizes)
        return JSONResponse(
            {"detail": f"the model could not run this request: {err}"}, status_code=422
        )

    @app.middleware("http")
    async def _guard(request: Request, call_next: Callable[[Request], Any]) -> Any:
        if token is not None and request.url.path != "/health":
            given = (
                request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                or request.cookies.get(TOKEN_COOKIE, "")
                or request.query_params.get("token", "")
            )
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse(
                    {"detail": "this server needs its token: open the address it printed"},
                    status_code=401,
                )
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'"
        )
        return response

    async def work(key: str | None, fn: Callable[[], T]) -> T:
        """``fn`` in the worker pool (holding the model's lock when ``key`` is a model)."""
        loop = asyncio.get_running_loop()
        call = (lambda: state.run_locked(key, fn)) if key is not None else fn
        return await loop.run_in_executor(state.executor, call)

    # -- the page --------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        if token is not None and request.query_params.get("token"):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", include_in_schema=False)
    async def alive() -> dict[str, str]:  # open to all: says nothing about the models
        return {"status": "ok"}

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(state.models)}

    # -- what there is ---------------------------------------------------------------------------
    @app.get("/api/models")
    async def models() -> list[dict[str, Any]]:
        def describe() -> list[dict[str, Any]]:
            from convlens.techniques.attribution.base import default_layer

            out = []
            for key in state.models:
                if state.task(key) == "detect":
                    out.append(describe_detector(key))
                    continue
                model = state.classifier(key)
                labels = model.labels or []
                layers = [
                    {
                        "name": row.name,
                        "kind": row.kind,
                        "channels": int(row.output_shape[1]),
                        "shape": list(row.output_shape[1:]),
                    }
                    for row in state.panel_layers(key)
                ]
                explain_layers = [
                    {
                        "name": row.name,
                        "kind": row.kind,
                        "channels": int(row.output_shape[1]),
                        "shape": list(row.output_shape[1:]),
                    }
                    for row in model.layers()
                    if row.spatial and row.calls == 1
                ]
                default: str | None
                try:
                    default = default_layer(model)
                except ValueError:
                    default = layers[-1]["name"] if layers else None
                out.append(
                    {
                        "name": key,
                        "task": "classify",
                        "description": state.specs[key],
                        "classes": len(labels),
                        "labels": [str(label) for label in labels],
                        "input_size": list(model.input_shape),
                        "layers": layers,
                        "explain_layers": explain_layers,
                        "default_layer": default,
                    }
                )
            return out

        return await work(None, describe)

    def describe_detector(key: str) -> dict[str, Any]:
        from convlens.core.render import PALETTE
        from convlens.techniques.attribution.detection import default_box_layer

        detector = state.detector(key)
        labels = [str(label) for label in detector.labels or []]
        layers = state.box_layers.get(key, [])
        default = default_box_layer(detector) if layers else None
        return {
            "name": key,
            "task": "detect",
            "description": state.specs[key],
            "classes": len(labels),
            "labels": labels,
            "colors": [
                "#{:02x}{:02x}{:02x}".format(*PALETTE[i % len(PALETTE)])
                for i in range(max(len(labels), 1))
            ],
            "score_threshold": detector.score_threshold,
            "iou_threshold": detector.iou_threshold,
            "max_detections": detector.max_detections,
            "max_detections_limit": MAX_DETECTIONS,
            "max_pixels": state.config.max_detect_pixels,
            "box_methods": [
                box_panel(m, layers, default).to_dict() for m in state.box_methods(key)
            ],
            "box_layers": layers,
            "default_box_layer": default,
            "input_size": None,  # the picture as uploaded
            "layers": [],
            "explain_layers": [],
            "default_layer": None,
        }

    @app.get("/api/methods")
    async def methods() -> list[dict[str, Any]]:
        return [p.to_dict() for p in panels().values()]

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

    @app.get("/api/samples")
    async def samples() -> list[dict[str, str]]:
        """The sample pictures: ``kind`` is ``photo`` (bundled) or ``toons`` (crowd frames
        for the toon detector)."""
        from convlens.core.images import samples as bundled

        photos = [
            {"name": n, "url": f"/api/samples/{n}", "kind": "photo"} for n in sorted(bundled())
        ]
        frames = [{"name": n, "url": f"/api/samples/{n}", "kind": "toons"} for n in state.samples]
        return photos + frames

    @app.get("/api/samples/{name}")
    async def sample(name: str) -> Response:
        if name in state.samples:
            return Response(state.samples[name], media_type=PNG)
        return FileResponse(sample_file(name))

    # -- pictures --------------------------------------------------------------------------------
    @app.post("/api/images")
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
        image_id, image = await work(None, lambda: state.add_image(data, file.filename or "upload"))
        return {"id": image_id, "width": image.width, "height": image.height}

    @app.post("/api/images/sample/{name}")
    async def use_sample(name: str) -> dict[str, Any]:
        data = sample_bytes(name)
        image_id, image = await work(None, lambda: state.add_image(data, name))
        return {"id": image_id, "width": image.width, "height": image.height}

    # -- panels ----------------------------------------------------------------------------------
    @app.get("/api/models/{model}/images/{image_id}/picture.png")
    async def picture(model: str, image_id: str) -> Response:
        """The picture as the model sees it: a classifier's resized, cropped input, or the
        upload itself for a detector."""
        return _png(await work(None, lambda: state.picture(model, image_id)))

    @app.get("/api/models/{model}/images/{image_id}/predictions")
    async def predictions(model: str, image_id: str, top: int = 5) -> dict[str, Any]:
        handle = state.classifier(model, "predictions")
        if not 1 <= top <= 100:
            raise ValueError(f"expected top in [1, 100], got {top}")
        start = time.perf_counter()
        forward = await work(None, lambda: state.forward(model, image_id))
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

    @app.get("/api/models/{model}/images/{image_id}/activations/{layer}.png")
    async def activation(
        model: str, image_id: str, layer: str, channel: int = 0, grid: bool = False
    ) -> Response:
        state.classifier(model, "activations")
        forward = await work(None, lambda: state.forward(model, image_id))
        if layer not in forward.activations:
            from convlens.core.naming import unknown

            raise unknown("layer with a map", layer, list(forward.activations))
        act = forward.activations[layer]
        channels = int(act.shape[0])

        def render_png() -> bytes:
            from convlens.core import render

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

        data = await work(None, render_png)
        return Response(
            data, media_type=PNG, headers={"X-Channels": str(channels), "Cache-Control": "no-store"}
        )

    async def attribution_of(model: str, image_id: str, method: str, request: Request) -> Any:
        """Run ``method`` on the cached picture with the query's target, layer and settings."""
        from convlens.techniques.attribution.base import get_method
        from convlens.techniques.attribution.explain import explain as run_method

        handle = state.classifier(
            model, "explain (a box's explanation is .../detections/<index>/explain/<method>)"
        )
        info = get_method(method)  # unknown names: 404 with close matches
        chosen = panels()[info.name]
        query = dict(request.query_params)
        query.pop("token", None)
        target_raw = query.pop("target", None)
        layer = query.pop("layer", None)
        options = chosen.parse(query)
        target: Any = None
        if target_raw not in (None, "", "top1", "top-1"):
            assert target_raw is not None
            target = handle.class_index(int(target_raw) if target_raw.isdigit() else target_raw)
        if layer:
            from convlens.core.naming import get_layer

            get_layer(handle.module, layer)
            options["layer"] = layer
        forward = await work(None, lambda: state.forward(model, image_id))
        return await work(
            model, lambda: run_method(handle, forward.inputs, info.name, target, **options)
        )

    @app.get("/api/models/{model}/images/{image_id}/explain/{method}.png")
    async def explain(model: str, image_id: str, method: str, request: Request) -> Response:
        """The explanation as an overlay on the picture (PNG); ``X-Ms``: compute time."""
        from convlens.core.render import png_bytes

        start = time.perf_counter()
        attribution = await attribution_of(model, image_id, method, request)
        data = await work(None, lambda: png_bytes(attribution.overlay().image))
        return Response(
            data,
            media_type=PNG,
            headers={
                "X-Ms": f"{(time.perf_counter() - start) * 1000:.0f}",
                "Cache-Control": "no-store",
            },
        )

    @app.get("/api/models/{model}/images/{image_id}/explain/{method}.json")
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

    @app.get("/api/models/{model}/images/{image_id}/activations/{layer}.json")
    async def activation_array(
        model: str, image_id: str, layer: str, channel: int | None = None
    ) -> dict[str, Any]:
        """One channel's activation (or the whole layer's, without ``channel``) as an array."""
        state.classifier(model, "activations")
        forward = await work(None, lambda: state.forward(model, image_id))
        if layer not in forward.activations:
            from convlens.core.naming import unknown

            raise unknown("layer with a map", layer, list(forward.activations))
        act = forward.activations[layer]
        if channel is not None and not 0 <= channel < act.shape[0]:
            raise ValueError(f"expected a channel in [0, {act.shape[0]}), got {channel}")
        values = act if channel is None else act[channel]
        return {
            "layer": layer,
            "channel": channel,
            "shape": list(values.shape),
            "values": values.tolist(),
        }

    @app.get("/api/models/{model}/layers/{layer}/filters.png")
    async def filters(model: str, layer: str) -> Response:
        handle = state.classifier(model, "filters")

        def run() -> bytes:
            from convlens.core.render import png_bytes
            from convlens.techniques.filters import filter_weights

            return png_bytes(filter_weights(handle, layer).image)

        return Response(await work(model, run), media_type=PNG)

    # -- detectors -------------------------------------------------------------------------------
    async def detections_of(
        model: str,
        image_id: str,
        score_threshold: float | None,
        iou_threshold: float | None,
        max_detections: int | None,
    ) -> tuple[Any, float, bool]:
        """The cached detections of a picture under a request's thresholds (the detector's
        own where not given): (Detections, seconds, whether they came from the cache)."""
        thresholds = state.thresholds(model, score_threshold, iou_threshold, max_detections)
        state.image(image_id)  # unknown pictures: 404 before any work
        cached = state.found.get((model, image_id, *thresholds)) is not None
        found, seconds = await work(None, lambda: state.detections(model, image_id, thresholds))
        return found, seconds, cached

    def box(found: Any, index: int) -> Any:
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

    @app.get("/api/models/{model}/images/{image_id}/detections")
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
            model, image_id, score_threshold, iou_threshold, max_detections
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

    @app.get("/api/models/{model}/images/{image_id}/detections.png")
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
            model, image_id, score_threshold, iou_threshold, max_detections
        )
        if highlight is not None:
            box(found, highlight)
        return _png(await work(None, lambda: found.draw(highlight=highlight)))

    async def box_explanation_of(
        model: str,
        image_id: str,
        index: int,
        method: str,
        thresholds: tuple[float | None, float | None, int | None],
        request: Request,
    ) -> tuple[Any, float, bool]:
        """Check the method and its options, find the box, explain it (cached)."""
        from convlens.techniques.attribution.detection import default_box_layer

        detector = state.detector(model)
        layers = state.box_layers.get(model, [])
        chosen = box_panel(method, layers, default_box_layer(detector) if layers else None)
        if method not in state.box_methods(model):
            raise ValueError(
                f"{model} gives no gradients to read at a layer, so {method} cannot explain its "
                f"boxes; use {', '.join(state.box_methods(model))}"
            )
        query = {k: v for k, v in request.query_params.items() if k not in (*THRESHOLDS, "token")}
        accepted = sorted(s.name for s in chosen.settings)
        extra = sorted(set(query) - set(accepted))
        if extra:
            raise ValueError(
                f"unknown option(s) {extra} for {method}; it takes {accepted or 'none'}, and "
                f"{', '.join(THRESHOLDS)} to choose the detections"
            )
        options = chosen.parse(query)
        found, _, _ = await detections_of(model, image_id, *thresholds)
        target = box(found, index)
        # D-RISE can hold the model for seconds: when the page gives up (another box, other
        # settings), the connection closes and D-RISE stops at its next batch
        cancelled = threading.Event()

        async def watch() -> None:  # (Request.is_disconnected misses it behind a middleware)
            while (await request.receive())["type"] != "http.disconnect":
                pass
            cancelled.set()

        watcher = asyncio.ensure_future(watch())
        try:
            return await work(
                None,
                lambda: state.explain_box(model, image_id, target, method, options, cancelled),
            )
        finally:
            watcher.cancel()

    @app.get("/api/models/{model}/images/{image_id}/detections/{index}/explain/{method}.png")
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
        map over the picture with the box drawn. Headers: ``X-Energy-In-Box`` (share of the
        positive attribution inside the box), ``X-Peak`` (x,y), ``X-Ms`` (compute time),
        ``X-Cache`` (hit or miss)."""
        from convlens.core.render import png_bytes

        explanation, seconds, cached = await box_explanation_of(
            model,
            image_id,
            index,
            method,
            (score_threshold, iou_threshold, max_detections),
            request,
        )
        data = await work(None, lambda: png_bytes(explanation.overlay()))
        energy = explanation.energy_in_box()
        x, y = explanation.peak()
        return Response(
            data,
            media_type=PNG,
            headers={
                "X-Energy-In-Box": "nan" if math.isnan(energy) else f"{energy:.6f}",
                "X-Peak": f"{x},{y}",
                "X-Ms": f"{seconds * 1000:.0f}",
                "X-Cache": "hit" if cached else "miss",
                "Cache-Control": "no-store",
            },
        )

    @app.get("/api/models/{model}/images/{image_id}/detections/{index}/explain/{method}.json")
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
        explanation, seconds, cached = await box_explanation_of(
            model,
            image_id,
            index,
            method,
            (score_threshold, iou_threshold, max_detections),
            request,
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

    # -- jobs ------------------------------------------------------------------------------------
    def runner() -> Any:
        assert state.jobs is not None
        return state.jobs

    @app.get("/api/jobs")
    async def jobs() -> list[dict[str, Any]]:
        return runner().store.all()

    @app.post("/api/jobs", status_code=201)
    async def start_job(request: Request) -> dict[str, Any]:
        from convlens.apps.server.job_kinds import check

        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(422, "expected a JSON body {kind, model, params}") from None
        if not isinstance(body, dict) or not isinstance(body.get("params", {}), dict):
            raise HTTPException(422, "expected a JSON body {kind, model, params: {...}}")
        kind, key, params = body.get("kind"), body.get("model"), body.get("params", {})
        if not isinstance(kind, str) or not isinstance(key, str):
            raise HTTPException(422, "expected kind and model as strings")
        parsed = check(kind, params, state.classifier(key, "jobs"))
        for image_id in parsed.get("images") or []:
            state.image(image_id)  # unknown uploads: 404 now, not a failed job later
        return runner().store.get(runner().submit(kind, key, params))

    @app.get("/api/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, Any]:
        return runner().store.get(job_id)

    @app.delete("/api/jobs/{job_id}")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        return runner().cancel(job_id)

    @app.get("/api/jobs/{job_id}/files/{name:path}")
    async def job_file(job_id: str, name: str) -> FileResponse:
        record = runner().store.get(job_id)
        if name not in [r["name"] for r in record["results"]]:  # recorded names only
            raise HTTPException(404, f"job {job_id} has no result {name!r}")
        return FileResponse(runner().store.folder(job_id) / name)

    return app
