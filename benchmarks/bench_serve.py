"""The explorer over HTTP (issue 7's targets), against the same work done in-process.

A real uvicorn server on a free loopback port serving MobileNetV2; a client (httpx2) does what
the page does after an upload: POST the picture, then GET the predictions, the first
activation heatmap and the Grad-CAM overlay. Every upload is a different picture (one pixel
changed), so no request is served from the cache of an earlier one.

1. Upload -> predictions + first heatmap + Grad-CAM, sequential: median and p95. Target: < 1 s.
2. A slider move (another channel of the same layer, served from the cached forward pass):
   median and p95. Target: < 50 ms.
3. Four clients at once, each doing case 1 five times: the median flow. Target: < 2 s.
4. The floor: the same work in-process, without HTTP (decode, predict, one layer's activation
   rendered to PNG, Grad-CAM overlay to PNG).
5. Occlusion 16/8 (issue 16: the panel answers in under 1 s): after an upload and its
   predictions, the explanation request with a run id; the client polls the run as the page
   does (every 250 ms) and fetches the first map (the coarse pass) once the run has one. Times
   to that first map on the client and to the exact map.
6. The same for the detection and segmentation panels (toon detector and segmenter, served
   beside MobileNetV2, on a crowd frame not seen before): D-RISE of the first box at the
   explorer's default (500 masks; its first map after 128), and the region occlusion 16/8 and
   region RISE (the explorer's 250 masks) of the frame's largest class.
"""

from __future__ import annotations

import io
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from _timing import Quantity, Row, Timing
from PIL import Image

import convlens as cl

FLOWS = 20
SLIDES = 40
CLIENTS = 4
PER_CLIENT = 5
OCCLUSIONS = 5
PAGE_POLL_S = 0.25  # static/lib/runs.js: POLL_MS
MODELS = ("mobilenet_v2", "toon-detector", "toon-segmenter")


def _pictures(n: int, seed: int) -> list[bytes]:
    base = np.asarray(cl.load_image(cl.sample("chelsea")))
    out = []
    for i in range(n):
        pixels = base.copy()
        pixels[0, 0] = (seed * 7 + i) % 256, i % 256, seed % 256
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
        out.append(buffer.getvalue())
    return out


def _serve(port: int):
    import tempfile

    import uvicorn

    from convlens.apps.server import ServerConfig, ServerState, create_app

    state = ServerState.start(
        ServerConfig(models=[*MODELS], port=port, data_dir=tempfile.mkdtemp())
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return state, server, thread


def _flow(client, data: bytes, layer: str) -> float:
    start = time.perf_counter()
    reply = client.post("/api/images", files={"file": ("p.jpg", data, "image/jpeg")})
    reply.raise_for_status()
    base = f"/api/models/mobilenet_v2/images/{reply.json()['id']}"
    for path in (
        f"{base}/predictions",
        f"{base}/activations/{layer}.png?channel=0",
        f"{base}/explain/gradcam.png",
    ):
        client.get(path).raise_for_status()
    return time.perf_counter() - start


def _occlusion_flow(client, data: bytes, run: str) -> tuple[float, float, float]:
    """(seconds to the first map, to the exact map, share of windows in the first map)."""
    reply = client.post("/api/images", files={"file": ("p.jpg", data, "image/jpeg")})
    reply.raise_for_status()
    base = f"/api/models/mobilenet_v2/images/{reply.json()['id']}"
    client.get(f"{base}/predictions").raise_for_status()
    return _first_map(client, f"{base}/explain/occlusion.png?window=16&stride=8", run)


def _first_map(client, path: str, run: str) -> tuple[float, float, float]:
    """GET ``path`` as run ``run`` while polling the run as the page does: (seconds to its
    first map on the client, to the finished map, the first map's share of the work)."""
    done: list[float] = []

    def exact() -> None:
        client.get(f"{path}&run={run}").raise_for_status()
        done.append(time.perf_counter())

    start = time.perf_counter()
    thread = threading.Thread(target=exact)
    thread.start()
    first, share = float("nan"), float("nan")
    while not done:
        time.sleep(PAGE_POLL_S)
        state = client.get(f"/api/runs/{run}")
        if state.status_code == 200 and state.json()["preview"]:
            preview = client.get(f"/api/runs/{run}/preview.png")
            preview.raise_for_status()
            first, share = time.perf_counter() - start, float(preview.headers["X-Preview"])
            break
    thread.join()
    return first, done[0] - start, share


def _toon_flows(client, data: bytes, run: str) -> dict[str, tuple[float, float, float]]:
    """Case 6 on one crowd frame: D-RISE of its first box, and the region occlusion and RISE
    of its largest class (each after the detections or the segmentation are cached)."""
    out = {}
    for model in ("toon-detector", "toon-segmenter"):
        reply = client.post("/api/images", files={"file": ("c.png", data, "image/png")})
        reply.raise_for_status()
        base = f"/api/models/{model}/images/{reply.json()['id']}"
        if model == "toon-detector":
            client.get(f"{base}/detections").raise_for_status()
            path = f"{base}/detections/0/explain/drise.png?masks=500"
            out["D-RISE"] = _first_map(client, path, f"{run}-box")
            continue
        classes = client.get(f"{base}/segmentation").json()["classes"]
        largest = max((c for c in classes if c["index"] != 0), key=lambda c: c["pixels"])
        for method, query in (("occlusion", "window=16&stride=8"), ("rise", "masks=250")):
            path = f"{base}/segmentation/explain/{method}.png?target={largest['index']}&{query}"
            out[f"region {method}"] = _first_map(client, path, f"{run}-{method}")
    return out


def _toon_frames(n: int) -> list[bytes]:
    from convlens.core.render import png_bytes
    from convlens.data import toons

    frames = toons.generate(n, variant="crowd", split="test", seed=21, size=128)
    return [png_bytes(pixels) for pixels in frames.pixels]


def _floor(model: cl.Model, data: bytes, layer: str) -> float:
    from convlens.core import render

    start = time.perf_counter()
    image = cl.load_image(io.BytesIO(data))
    model.predict(image)
    act = cl.activations(model, image, [layer])
    render.png_bytes(render.heatmap(act[layer][0, 0].numpy(), size=(224, 224)))
    render.png_bytes(cl.explain(model, image, "gradcam").overlay().image)
    return time.perf_counter() - start


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def run(repeats: int = 1) -> list[Row]:
    import httpx2 as httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    state, server, thread = _serve(port)
    try:
        model = state.models["mobilenet_v2"]
        layer = state.panel_layers("mobilenet_v2")[0].name
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as client:
            _flow(client, _pictures(1, 99)[0], layer)  # warm-up
            flows = [_flow(client, data, layer) for data in _pictures(FLOWS, 1)]
            reply = client.post(
                "/api/images", files={"file": ("p.jpg", _pictures(1, 98)[0], "image/jpeg")}
            )
            base = f"/api/models/mobilenet_v2/images/{reply.json()['id']}"
            client.get(f"{base}/activations/{layer}.png?channel=0").raise_for_status()
            slides = []
            for k in range(SLIDES):
                start = time.perf_counter()
                client.get(f"{base}/activations/{layer}.png?channel={(k % 31) + 1}")
                slides.append(time.perf_counter() - start)

            # occlusion: the first of these also makes the long lane (not counted)
            occluded = [
                _occlusion_flow(client, data, f"bench-{k}")
                for k, data in enumerate(_pictures(OCCLUSIONS + 1, 7))
            ][1:]
            toon = [
                _toon_flows(client, data, f"toon-{k}") for k, data in enumerate(_toon_frames(4))
            ]
            toon = toon[1:]  # the first makes the long lanes

        def one_client(seed: int) -> list[float]:
            with httpx.Client(base_url=url, timeout=120) as c:
                return [_flow(c, data, layer) for data in _pictures(PER_CLIENT, 10 + seed)]

        with ThreadPoolExecutor(CLIENTS) as pool:
            concurrent = [t for got in pool.map(one_client, range(CLIENTS)) for t in got]
        floors = [_floor(model, data, layer) for data in _pictures(10, 50)]
    finally:
        server.should_exit = True
        thread.join(10)
        state.close()

    summary = {
        "upload -> predictions + heatmap + Grad-CAM, median": (statistics.median(flows), 1.0),
        "the same, p95": (_p95(flows), 1.0),
        "slider move (cached pass), median": (statistics.median(slides), 0.05),
        "slider move, p95": (_p95(slides), 0.05),
        f"{CLIENTS} clients at once, median flow": (statistics.median(concurrent), 2.0),
        f"{CLIENTS} clients at once, p95 flow": (_p95(concurrent), None),
        "in-process floor (no HTTP), median": (statistics.median(floors), None),
        "occlusion 16/8: first map (coarse pass), median": (
            statistics.median(o[0] for o in occluded),
            1.0,
        ),
        "occlusion 16/8: the exact map, median": (statistics.median(o[1] for o in occluded), None),
    }
    for case in toon[0]:
        summary[f"{case}: first map, median"] = (statistics.median(t[case][0] for t in toon), None)
        summary[f"{case}: finished map, median"] = (
            statistics.median(t[case][1] for t in toon),
            None,
        )
    print(f"  occlusion's first map holds {occluded[0][2]:.0%} of the windows", flush=True)
    for case, (seconds, target) in summary.items():
        met = "" if target is None else f" (target < {target * 1000:.0f} ms: "
        met += "" if target is None else ("met)" if seconds < target else "NOT met)")
        print(f"  {case}: {seconds * 1000:.1f} ms{met}", flush=True)
    floor = statistics.median(floors)
    rows = [
        Row("serve", case, Timing((seconds,)), target=None)
        for case, (seconds, _target) in summary.items()
    ]
    rows.append(
        Row(
            "serve",
            "HTTP flow / in-process floor (median)",
            Quantity((statistics.median(flows) / floor,), "x"),
        )
    )
    return rows


if __name__ == "__main__":
    from run import table

    print(table(run()))
