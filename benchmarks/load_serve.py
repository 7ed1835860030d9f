"""The explorer under mixed load with abandoned requests (issue 18's check; not in ``run.py``).

A real server (``convlens serve``) in its own process on a free loopback port; ``--clients``
threads for ``--seconds`` each pick, at random (seeded), what a person at the page does:

- upload a picture (a bundled photo or a toon, one pixel changed so nothing is cached),
- predictions, an activation heatmap, a Grad-CAM overlay of a picture uploaded before,
- an occlusion (window 16, stride 4) or a RISE (4,000 masks) that the client **abandons**:
  it sends the request, waits 0.2 to 1 s and closes the connection (another method chosen),
- a small feature-visualization job (a 429 when the queue is full is an answer, not an error).

Printed: requests answered, abandoned, the median / p95 / max latency of the answered ones, the
5xx count and the other non-2xx statuses, and the server's resident memory (``VmRSS``) after
warm-up and at the end, with its peak (``VmHWM``). Targets (issue 18): p95 under 2 s, no 5xx,
memory flat (bounded by the caches, see the README's "Memory bounds").

    .venv/bin/python benchmarks/load_serve.py                         # 8 clients x 60 s
    .venv/bin/python benchmarks/load_serve.py --clients 4 --seconds 20
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

import convlens as cl
from convlens.data import toons


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    abandoned: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int, seconds: float) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.latencies.append(seconds)
            self.by_kind.setdefault(kind, []).append(seconds)


def pictures(count: int, seed: int) -> list[bytes]:
    """PNG/JPEG bytes: the bundled photos and toons, each with one pixel changed."""
    bases = [np.asarray(cl.load_image(p)) for p in cl.samples().values()]
    bases += list(toons.generate(4, split="test", seed=seed).pixels)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        pixels = bases[i % len(bases)].copy()
        pixels[0, 0] = rng.integers(0, 256, 3)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def request(base: str, method: str, path: str, body: bytes | None = None, kind: str = "") -> int:
    headers = {"Content-Type": kind} if kind else {}
    req = urllib.request.Request(base + path, body, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as reply:
            reply.read()
            return int(reply.status)
    except urllib.error.HTTPError as err:
        err.read()
        return int(err.code)


def upload(base: str, data: bytes) -> tuple[int, str | None]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        base + "/api/images",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as reply:
            return int(reply.status), str(json.loads(reply.read())["id"])
    except urllib.error.HTTPError as err:
        err.read()
        return int(err.code), None


def abandon(port: int, path: str, rng: random.Random) -> None:
    """Send a GET and close the connection before the answer comes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        time.sleep(rng.uniform(0.2, 1.0))


def client(base: str, port: int, model: str, seconds: float, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    data = pictures(64, seed)
    images: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        action = rng.choices(
            ["upload", "predict", "heatmap", "gradcam", "abandon", "job"],
            [3, 3, 2, 2, 2, 1],
        )[0]
        if action == "upload" or not images:
            start = time.perf_counter()
            status, image_id = upload(base, data[rng.randrange(len(data))])
            tally.add("upload", status, time.perf_counter() - start)
            if image_id:
                images.append(image_id)
            continue
        picture = f"/api/models/{model}/images/{rng.choice(images)}"
        if action == "abandon":
            slow = rng.choice(["occlusion.png?window=16&stride=4", "rise.png?masks=4000"])
            abandon(port, f"{picture}/explain/{slow}", rng)
            with tally.lock:
                tally.abandoned += 1
            continue
        if action == "job":
            body = {"kind": "featurevis", "model": model, "params": {"layer": "conv2", "steps": 16}}
            method, path, payload = "POST", "/api/jobs", json.dumps(body).encode()
        else:
            path = {
                "predict": f"{picture}/predictions",
                "heatmap": f"{picture}/activations/conv1.png?channel={rng.randrange(16)}",
                "gradcam": f"{picture}/explain/gradcam.png",
            }[action]
            method, payload = "GET", None
        start = time.perf_counter()
        status = request(base, method, path, payload, "application/json" if payload else "")
        tally.add(action, status, time.perf_counter() - start)


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--model", default="toon-cnn")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    data_dir = tempfile.mkdtemp(prefix="convlens-load-")
    command = [sys.executable, "-c", "from convlens.apps.cli import app; app()", "serve"]
    command += [args.model, "--port", str(port), "--data-dir", data_dir]
    log = open(Path(data_dir) / "server.log", "wb")  # noqa: SIM115 (closed with the server)
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if request(base, "GET", "/health") == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit("the server did not start")
        warm = Tally()  # one flow so that the first requests do not count model loading
        client(base, port, args.model, 1.0, 999, warm)
        before = memory_mb(server.pid)
        tally = Tally()
        threads = [
            threading.Thread(
                target=client, args=(base, port, args.model, args.seconds, args.seed + i, tally)
            )
            for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(2)  # abandoned work winds down
        after = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    answered = sorted(tally.latencies)
    p95 = answered[min(len(answered) - 1, int(0.95 * len(answered)))] if answered else float("nan")
    errors = sum(n for status, n in tally.statuses.items() if status >= 500)
    others = {s: n for s, n in sorted(tally.statuses.items()) if not 200 <= s < 300}
    print(f"{args.clients} clients x {args.seconds:g} s on {args.model}, seed {args.seed}")
    print(f"answered {len(answered)} requests, abandoned {tally.abandoned}")
    if answered:
        print(
            f"latency of the answered: median {statistics.median(answered) * 1000:.0f} ms, "
            f"p95 {p95 * 1000:.0f} ms, max {answered[-1] * 1000:.0f} ms"
        )
    for kind, seconds in sorted(tally.by_kind.items()):
        ranked = sorted(seconds)
        worst = ranked[min(len(ranked) - 1, int(0.95 * len(ranked)))]
        print(f"  {kind:8} {len(ranked):4} requests, p95 {worst * 1000:.0f} ms")
    print(f"5xx: {errors}; other non-2xx: {others or 'none'}")
    print(
        f"server memory (RSS): {before['VmRSS']:.0f} MB after warm-up, {after['VmRSS']:.0f} MB "
        f"at the end, peak {after['VmHWM']:.0f} MB"
    )


if __name__ == "__main__":
    main()
