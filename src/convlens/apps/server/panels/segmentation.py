"""The segmentation panel: a segmenter's classes drawn over the picture (JSON, or a PNG), and
one region explained (Seg-Grad-CAM, Layer-CAM, occlusion, RISE of the class's score summed
over the region) where the page was clicked.

A click at (x, y), in the upload's pixels, picks the connected region of the class found
there (:func:`~convlens.techniques.attribution.segmentation.region_mask`); ``target`` without a
point explains every pixel of that class. Segmentations are cached per (model, picture) and
region explanations per (model, picture, method, class, region, options). A region explanation
is a :class:`~convlens.apps.server.web.Run`, as the explanation panel's: occlusion and RISE
report their progress at ``/api/runs/<run>`` and stop at their next batch once cancelled there
or once the page closes the connection.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from convlens.apps.server.forms import MethodForm, method_form
from convlens.apps.server.state import (
    _LRU,
    MB,
    ServerState,
    explanation_bytes,
    picture_bytes,
)
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
from convlens.core.registry import Setting
from convlens.core.util import jsonable

REGION = ("x", "y", "target")  # the query parameters that choose the region, not the method


def _segmenter(state: ServerState, key: str) -> Any:
    """The segmenter ``key``; another task is refused, naming the segmenters served."""
    from convlens.core.errors import WrongTaskError

    handle = state.model(key)
    if handle.task != "segment":
        served = [k for k in state.models if state.task(k) == "segment"]
        raise WrongTaskError(
            f"{key!r} is a {'detector' if handle.task == 'detect' else 'classifier'}: expected a "
            f"segmenter for segmentation (served: {', '.join(served) or 'none'})"
        )
    return handle


def _layers(state: ServerState, key: str, locked: bool = False) -> tuple[list[str], str | None]:
    """The layers a region CAM can read and the default one (none when the segmenter names
    none and has no backbone); ``locked``: the caller holds the model's lock."""
    from convlens.techniques.attribution.segmentation import default_segment_layer, map_layers

    segmenter = _segmenter(state, key)
    try:
        default = default_segment_layer(segmenter)
    except ValueError:
        default = None
    try:
        layers = (
            map_layers(segmenter)
            if locked
            else state.run_locked(key, lambda: map_layers(segmenter))
        )
    except Exception:  # a network the blank picture does not suit: its default only
        layers = []
    if default is not None and default not in layers:
        layers.append(default)
    return layers, default


def region_forms(layers: list[str], default: str | None) -> list[MethodForm]:
    """Every ``segment`` method as a form; the CAMs get a ``layer`` choice among ``layers``
    (only when there is one to read)."""
    from convlens.techniques.attribution.base import methods

    forms = []
    for info in methods("segment").values():
        chosen = method_form(info)
        if chosen.needs_layer:
            if not layers:
                continue
            start = default if default in layers else layers[-1]
            layer = Setting("layer", "choice", start, choices=tuple(layers), help="layer read")
            chosen = replace(chosen, settings=(layer, *chosen.settings))
        forms.append(chosen)
    return forms


def describe(state: ServerState, key: str) -> dict[str, Any]:
    """The model's entry in ``/api/models``: for a segmenter, its class colours, background
    class, the region explanation forms and the layers a region CAM can read."""
    if state.task(key) != "segment":
        return {}
    from convlens.core.render import PALETTE

    segmenter = _segmenter(state, key)
    layers, default = _layers(state, key)
    count = max(len(segmenter.labels or []), 1)
    return {
        "colors": ["#{:02x}{:02x}{:02x}".format(*PALETTE[i % len(PALETTE)]) for i in range(count)],
        "background": segmenter.background,
        "region_methods": [f.to_dict() for f in region_forms(layers, default)],
        "region_layers": layers,
        "default_region_layer": default,
        "max_pixels": state.config.max_detect_pixels,
    }


def segmentation_bytes(found: Any) -> int:
    """What a segmentation holds: its class map, its probabilities and its picture."""
    size = sum(t.numel() * t.element_size() for t in (found.class_map, found.probabilities))
    if found.picture is not None:
        size += picture_bytes(found.picture)
    return int(size) + 4096


class _Panel:
    """The panel's work over the state: segmentations and region explanations, cached."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.found = _LRU(state.config.cache_mb * MB / 4, lambda v: segmentation_bytes(v[0]))
        self.explained = _LRU(state.config.explain_cache_mb * MB, lambda v: explanation_bytes(v[0]))

    def segmentation(
        self, key: str, image_id: str, *, locked: bool = False
    ) -> tuple[Any, float, bool]:
        """(Segmentation, seconds, cached) of an upload, computed under the model's lock
        (``locked``: the caller holds it)."""
        segmenter = _segmenter(self.state, key)
        image = self.state.image(image_id)
        limit = self.state.config.max_detect_pixels
        if image.width * image.height > limit:
            raise ValueError(
                f"expected a picture of at most {limit} pixels for a segmenter, got "
                f"{image.width}x{image.height}: scale it down"
            )
        cached = self.found.get((key, image_id))
        if cached is not None:
            return (*cached, True)

        def compute() -> tuple[Any, float]:
            again = self.found.get((key, image_id))
            if again is not None:
                return again  # type: ignore[no-any-return]
            start = time.perf_counter()
            entry = (segmenter(image)[0], time.perf_counter() - start)
            self.found.put((key, image_id), entry)
            return entry

        return (*(compute() if locked else self.state.run_locked(key, compute)), False)

    def region(
        self, key: str, image_id: str, query: dict[str, str], *, locked: bool = False
    ) -> tuple[int, Any]:
        """The class and region (H, W, bool) a request asks for: the connected region at the
        point ``x``, ``y`` (upload pixels), or every pixel of class ``target``."""
        from convlens.techniques.attribution.segmentation import region_mask

        found, _, _ = self.segmentation(key, image_id, locked=locked)
        image = self.state.image(image_id)
        height, width = found.size
        if "x" in query or "y" in query:
            try:
                x, y = float(query["x"]), float(query["y"])
            except (KeyError, ValueError):
                raise ValueError("expected a point as x= and y= (pixels of the picture)") from None
            point = (int(x * width / image.width), int(y * height / image.height))
            if not (0 <= point[0] < width and 0 <= point[1] < height):
                raise ValueError(
                    f"expected a point inside the {image.width}x{image.height} picture, got "
                    f"({x:g}, {y:g})"
                )
            index = int(found.class_map[point[1], point[0]])
            region = region_mask(point, found.class_map, index, found.name(index))
        elif "target" in query:
            index = found.class_index(query["target"])
            region = region_mask(None, found.class_map, index, found.name(index))
        else:
            raise ValueError("expected x= and y= (a point of the region) or target= (a class)")
        return index, region

    def _request(
        self, key: str, image_id: str, method: str, query: dict[str, str], locked: bool
    ) -> tuple[Any, dict[str, Any], int, Any, tuple[Any, ...]]:
        """What a request asks for: the method's entry, its settings (checked against its
        form), the class and region, and the cache key."""
        from convlens.techniques.attribution.base import get_method

        forms = {f.name: f for f in region_forms(*_layers(self.state, key, locked))}
        if method not in forms:
            from convlens.core.naming import unknown

            raise unknown("region explanation method", method, list(forms))
        settings = forms[method].parse({k: v for k, v in query.items() if k not in REGION})
        index, region = self.region(key, image_id, query, locked=locked)
        digest = hashlib.sha256(region.numpy().tobytes()).hexdigest()[:16]
        cache_key = (key, image_id, method, index, digest, repr(sorted(settings.items())))
        return get_method(method, "segment"), settings, index, region, cache_key

    def cached(
        self, key: str, image_id: str, method: str, query: dict[str, str]
    ) -> tuple[Any, float, bool] | None:
        """The cached explanation a request asks for (see :meth:`explain`), or ``None``; the
        request is checked (a bad one raises) either way."""
        *_, cache_key = self._request(key, image_id, method, query, False)
        found = self.explained.get(cache_key)
        return None if found is None else (*found, True)

    def explain(
        self,
        key: str,
        image_id: str,
        method: str,
        query: dict[str, str],
        run: Run | None = None,
        *,
        locked: bool = False,
    ) -> tuple[Any, float, bool]:
        """One region explained (``query``: the region and the method's settings, checked
        against its form): (RegionExplanation, seconds, cached). With the explorer's ``run``,
        occlusion and RISE report their progress to it (and stop there once it is
        cancelled); ``locked``: the caller holds the model's lock."""
        info, settings, index, region, cache_key = self._request(
            key, image_id, method, query, locked
        )
        cached = self.explained.get(cache_key)
        if cached is not None:
            return (*cached, True)
        found, _, _ = self.segmentation(key, image_id, locked=locked)
        segmenter = _segmenter(self.state, key)
        picture = found.picture
        extra = run_extras(info.fn, settings, run) if run is not None else {}

        def compute() -> tuple[Any, float]:
            from convlens.techniques.attribution.segmentation import explain_region

            start = time.perf_counter()
            result = explain_region(
                segmenter, picture, index, method, region=region, **settings, **extra
            )
            entry = (result, time.perf_counter() - start)
            self.explained.put(cache_key, entry)
            return entry

        return (*(compute() if locked else self.state.run_locked(key, compute)), False)


async def _explained(
    state: ServerState, panel: _Panel, model: str, image_id: str, method: str, request: Request
) -> tuple[Any, float, bool]:
    """The explanation a request asks for: from the cache, or computed as a :class:`Run`
    (its progress at ``/api/runs/<run>``; cancelled there or when the client leaves)."""
    query = options(request)
    hit = await work(state, None, lambda: panel.cached(model, image_id, method, query))
    if hit is not None:
        return hit

    def compute(run: Run) -> tuple[Any, float, bool]:
        run.draw = lambda first, _query: region_png(first)  # occlusion's and RISE's first maps
        return panel.explain(model, image_id, method, query, run, locked=True)

    what = f"{method} of a region of {image_id}"
    result, _ = await cancellable(state, request, model, what, compute)
    return result


def region_png(result: Any) -> tuple[bytes, dict[str, str]]:
    """A region's map over the picture with its outline, and the headers the page shows
    beside it: the energy in the region, the class, the region's pixels, the peak."""
    from convlens.core.render import png_bytes

    energy = result.energy_in_region()
    x, y = result.peak()
    headers = {
        "X-Energy-In-Region": "nan" if math.isnan(energy) else f"{energy:.6f}",
        "X-Class": result.label,
        "X-Region-Pixels": str(int(result.region.sum())),
        "X-Peak": f"{x},{y}",
    }
    return png_bytes(result.overlay(min_side=0)), headers


def router(state: ServerState) -> APIRouter:
    api = APIRouter()
    panel = _Panel(state)
    base = "/api/models/{model}/images/{image_id}/segmentation"

    @api.get(base)
    async def segmentation(model: str, image_id: str) -> dict[str, Any]:
        """The classes of the picture's pixels: each class's pixels, share and mean
        probability; the segmentation's size (it may differ from the upload's, by the
        segmenter's preprocessing); ``ms`` and ``cached``."""
        found, seconds, cached = await work(
            state, None, lambda: panel.segmentation(model, image_id)
        )
        picture = state.image(image_id)
        return {
            "model": model,
            **found.to_dict(),
            "width": picture.width,
            "height": picture.height,
            "ms": seconds * 1000,
            "cached": cached,
        }

    @api.get(base + ".png")
    async def segmentation_png(model: str, image_id: str, highlight: int | None = None) -> Response:
        """The classes drawn over the picture (the segmentation's size, no legend);
        ``highlight``: only that class painted."""
        found, _, _ = await work(state, None, lambda: panel.segmentation(model, image_id))
        if highlight is not None:
            found.class_index(highlight)
        drawn = await work(
            state, None, lambda: found.draw(min_side=0, legend=False, highlight=highlight)
        )
        return png(drawn)

    @api.get(base + "/region")
    async def region(model: str, image_id: str, request: Request) -> dict[str, Any]:
        """The region a point (``x``, ``y``) or a class (``target``) stands for: its class,
        pixel count and bounding box (pixels of the segmentation)."""
        query = options(request)
        index, mask = await work(state, None, lambda: panel.region(model, image_id, query))
        found, _, _ = await work(state, None, lambda: panel.segmentation(model, image_id))
        ys, xs = mask.nonzero(as_tuple=True)
        return {
            "index": index,
            "name": found.name(index),
            "pixels": int(mask.sum()),
            "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
            "size": list(found.size),
        }

    @api.get(base + "/explain/{method}.png")
    async def explain_png(model: str, image_id: str, method: str, request: Request) -> Response:
        """The region at ``x``, ``y`` (or every pixel of class ``target``) explained by
        ``method`` (its settings as query parameters, see ``/api/models``): the map over the
        picture with the region's outline. Headers: ``X-Energy-In-Region`` (share of the
        positive attribution inside the region), ``X-Class``, ``X-Region-Pixels``,
        ``X-Peak`` (x,y), ``X-Ms``, ``X-Cache``."""
        result, seconds, cached = await _explained(state, panel, model, image_id, method, request)
        data, drawn = await work(state, None, lambda: region_png(result))
        headers = {
            **drawn,
            "X-Ms": f"{seconds * 1000:.0f}",
            "X-Cache": "hit" if cached else "miss",
            **NO_STORE,
        }
        return Response(data, media_type=PNG, headers=headers)

    @api.get(base + "/explain/{method}.json")
    async def explain_json(
        model: str, image_id: str, method: str, request: Request
    ) -> dict[str, Any]:
        """The raw map (H, W) at the segmentation's size, sign kept, as a nested list, with
        the region's class, pixels, energy in the region (null when nothing is positive), the
        settings used and the seconds it took."""
        result, seconds, cached = await _explained(state, panel, model, image_id, method, request)
        return {
            **result.summary(),
            "settings": {k: jsonable(v) for k, v in result.settings.items()},
            "map": result.map.tolist(),
            "seconds": seconds,
            "cached": cached,
        }

    return api
