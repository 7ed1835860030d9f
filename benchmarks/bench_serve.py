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
        ServerConfig(models=["mobilenet_v2"], port=port, data_dir=tempfile.mkdtemp())
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
    }
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
