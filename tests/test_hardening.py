"""The explorer against a hostile page and a careless user (issue 18, findings 2, 3, 5 and 6).

Each test states the finding it covers; findings 1 and 4 are in test_cli.py / test_model.py
(aspect ratios) and test_train_mode.py (a train-mode model)."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
import urllib.error
import urllib.request

import live
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from convlens.apps.server import ServerConfig, ServerState, create_app
from convlens.apps.server.jobs import JobRunner, JobStore, QueueFull
from convlens.apps.server.state import _LRU, picture_bytes
from convlens.core.render import png_bytes
from convlens.data import toons

LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = ServerState.start(
        ServerConfig(
            models=["toon-cnn"],
            data_dir=tmp_path_factory.mktemp("h"),
            max_upload_mb=1,
            images_mb=2,  # about six 340 x 340 pictures
            max_pixels=600_000,
        )
    )
    client = TestClient(create_app(state), base_url=LOCAL, raise_server_exceptions=False)
    yield state, client
    state.close()


def upload(client: TestClient, pixels: np.ndarray) -> str:
    reply = client.post("/api/images", files={"file": ("p.png", png_bytes(pixels), "image/png")})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


# -- finding 2: job parameters checked before they are expanded; a queue cap --------------------
def test_a_huge_channel_range_is_refused_before_it_is_expanded(server):
    _, client = server
    body = {"kind": "featurevis", "model": "toon-cnn"}
    start = time.perf_counter()
    reply = client.post(
        "/api/jobs", json={**body, "params": {"layer": "conv2", "channels": "0-1000000000"}}
    )
    assert reply.status_code == 422
    assert "1000000001" in reply.json()["detail"]  # counted, never expanded
    assert time.perf_counter() - start < 5
    # channels the layer does not have: refused now, not a failed job later
    reply = client.post(
        "/api/jobs", json={**body, "params": {"layer": "conv2", "channels": "0-3, 200"}}
    )
    assert reply.status_code == 422 and "200" in reply.json()["detail"]
    assert client.get("/api/jobs").json() == []  # nothing was queued


def test_the_job_queue_is_capped(tmp_path):
    release = threading.Event()

    def run(kind, model, params, folder, progress, note):
        release.wait(30)
        return []

    runner = JobRunner(JobStore(tmp_path), run, max_queued=2)
    try:
        runner.submit("featurevis", "toon-cnn", {})
        runner.submit("featurevis", "toon-cnn", {})
        with pytest.raises(QueueFull, match="2 jobs are already waiting or running"):
            runner.submit("featurevis", "toon-cnn", {})
    finally:
        release.set()
        runner.close()


def test_a_full_queue_answers_429(tmp_path):
    state = ServerState.start(
        ServerConfig(models=["toon-cnn"], data_dir=tmp_path, max_queued_jobs=1)
    )
    try:
        client = TestClient(create_app(state), base_url=LOCAL, raise_server_exceptions=False)
        slow = {
            "kind": "featurevis",
            "model": "toon-cnn",
            "params": {"layer": "conv3", "steps": 2000, "size": 64},
        }
        first = client.post("/api/jobs", json=slow)
        assert first.status_code == 201
        second = client.post("/api/jobs", json=slow)
        assert second.status_code == 429 and "at most 1" in second.json()["detail"]
        client.delete(f"/api/jobs/{first.json()['id']}")
    finally:
        state.close()


# -- finding 3: caches bounded in bytes ------------------------------------------------------
def test_the_lru_is_bounded_in_bytes():
    cache = _LRU(100, len)
    for key in "abcde":
        cache.put(key, "x" * 30)
    assert cache.used == 90 and list(cache.items) == ["c", "d", "e"]
    cache.put("big", "x" * 101)  # larger than the whole budget: not kept, nothing evicted
    assert cache.get("big") is None and cache.used == 90


def test_decoded_uploads_are_bounded_in_bytes(server):
    state, client = server
    rng = np.random.default_rng(0)
    ids = [upload(client, rng.integers(0, 255, (340, 340, 3), np.uint8)) for _ in range(10)]
    one = picture_bytes(state.image(ids[-1]))
    assert one > 340 * 340 * 3
    assert state.images.used <= 2 * 2**20  # images_mb=2, ten pictures would be 3.4 MB
    assert state.images.get(ids[0]) is None  # the oldest went first
    assert client.get(f"/api/images/{ids[0]}").status_code == 404


# -- finding 5: only the bound host names, no cross-site requests, abandoned work stopped ------
def test_hosts_origins_and_content_types(server):
    _, client = server
    assert client.get("/api/models").status_code == 200
    rebound = client.get("/api/models", headers={"Host": "evil.example:8000"})
    assert rebound.status_code == 400 and "evil.example" in rebound.json()["detail"]
    assert client.get("/api/models", headers={"Host": "localhost:8000"}).status_code == 200
    cross = client.get("/api/models", headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    job = {"kind": "featurevis", "model": "toon-cnn", "params": {"layer": "conv2"}}
    other = client.post("/api/jobs", json=job, headers={"Origin": "http://evil.example"})
    assert other.status_code == 403
    plain = client.post(
        "/api/jobs", content=str(job).encode(), headers={"Content-Type": "text/plain"}
    )
    assert plain.status_code == 415
    assert client.get("/api/jobs").json() == []


@contextlib.contextmanager
def _live(tmp_path):
    """A real toon-cnn server on a free loopback port: (base URL, port, a test client)."""
    with live.served(["toon-cnn"], tmp_path) as (state, port):
        yield f"http://127.0.0.1:{port}", port, TestClient(create_app(state), base_url=LOCAL)


def _running(base: str, run_id: str) -> dict:
    """The run's progress once it has done some of its work (60 s at most)."""
    progress: dict = {}
    end = time.monotonic() + 60
    while not progress.get("done") and time.monotonic() < end:
        time.sleep(0.1)
        try:
            with urllib.request.urlopen(f"{base}/api/runs/{run_id}", timeout=10) as reply:
                progress = __import__("json").loads(reply.read())
        except urllib.error.HTTPError:
            pass
    return progress


def test_an_abandoned_explanation_stops_and_frees_the_model(tmp_path):
    """RISE with 8000 masks takes minutes on two cores; once its client leaves, it stops at its
    next batch, and the next request does not wait for it."""
    with _live(tmp_path) as (base, port, client):
        image_id = upload(client, toons.generate(1, split="test", seed=3).pixels[0])
        path = f"/api/models/toon-cnn/images/{image_id}/explain/rise.png?masks=8000&run=r1"
        with socket.create_connection(("127.0.0.1", port)) as dropped:
            dropped.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            progress = _running(base, "r1")
            assert progress["status"] == "running" and 0 < progress["done"] < 8000
        left = time.perf_counter()
        gone = False
        while not gone and time.perf_counter() - left < 20:
            try:
                urllib.request.urlopen(f"{base}/api/runs/r1", timeout=10).close()
                time.sleep(0.1)
            except urllib.error.HTTPError as err:
                gone = err.code == 404
        assert gone, "the abandoned RISE still runs 20 s after its client left"
        start = time.perf_counter()
        url = f"{base}/api/models/toon-cnn/images/{image_id}/explain/gradcam.png"
        with urllib.request.urlopen(url, timeout=60) as reply:
            assert reply.status == 200 and int(reply.headers["X-Wait-Ms"]) < 5000
        assert time.perf_counter() - start < 10


def test_a_long_explanation_leaves_the_model_to_the_quick_panels(tmp_path):
    """Many-pass methods run on the model's long lane (its own copy and lock): while a RISE of
    8000 masks runs, predictions and a Grad-CAM of another picture wait for nothing."""
    with _live(tmp_path) as (base, port, client):
        first, second = (
            upload(client, toons.generate(2, split="test", seed=4).pixels[i]) for i in (0, 1)
        )
        path = f"/api/models/toon-cnn/images/{first}/explain/rise.png?masks=8000&run=r2"
        with socket.create_connection(("127.0.0.1", port)) as waiting:
            waiting.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            assert _running(base, "r2")["status"] == "running"
            url = f"{base}/api/models/toon-cnn/images/{second}/explain/gradcam.png"
            with urllib.request.urlopen(url, timeout=60) as reply:
                assert reply.status == 200 and int(reply.headers["X-Wait-Ms"]) < 1000
            predictions = f"{base}/api/models/toon-cnn/images/{second}/predictions"
            with urllib.request.urlopen(predictions, timeout=60) as reply:
                assert reply.status == 200
            still = _running(base, "r2")  # the RISE went on meanwhile
            assert still["status"] == "running" and still["done"] < 8000


# -- finding 6: bodies, targets, results, tokens, echoes --------------------------------------
def test_bodies_are_cut_at_the_limit_declared_or_chunked(server):
    _, client = server
    multipart = {"Content-Type": "multipart/form-data; boundary=x"}
    declared = client.post(
        "/api/images", content=b"", headers={**multipart, "Content-Length": str(100 * 2**20)}
    )
    assert declared.status_code == 413 and "at most" in declared.json()["detail"]
    sent = 0

    def chunks():
        nonlocal sent
        for _ in range(300):  # 300 MB if it were all read
            sent += 1
            yield b"x" * 2**20

    chunked = client.post("/api/images", content=chunks(), headers=multipart)
    assert chunked.status_code == 413
    big_json = client.post(
        "/api/jobs",
        content=b"[" + b"1," * 40_000 + b"1]",
        headers={"Content-Type": "application/json"},
    )
    assert big_json.status_code == 413  # a job's parameters never need 64 KB


@pytest.mark.parametrize("target", [[1, 2], {"a": 1}, True])
def test_a_job_target_of_the_wrong_type_is_a_422(server, target):
    _, client = server
    image_id = upload(client, toons.generate(1, split="test", seed=5).pixels[0])
    body = {
        "kind": "explain",
        "model": "toon-cnn",
        "params": {"images": [image_id], "methods": ["gradcam"], "target": target},
    }
    reply = client.post("/api/jobs", json=body)
    assert reply.status_code == 422, reply.text
    assert "class name or index" in reply.json()["detail"]


def test_job_results_have_a_quota_pruning_and_delete(tmp_path):
    def run(kind, model, params, folder, progress, note):
        (folder / "out.bin").write_bytes(b"x" * params["size"])
        return ["out.bin"]

    runner = JobRunner(JobStore(tmp_path), run, max_bytes=10_000, max_kept=3)
    try:

        def finished(size: int) -> dict:
            job_id = runner.submit("featurevis", "m", {"size": size})
            end = time.monotonic() + 30
            while runner.store.get(job_id)["status"] in ("queued", "running"):
                assert time.monotonic() < end
                time.sleep(0.02)
            return runner.store.get(job_id)

        too_big = finished(20_000)
        assert too_big["status"] == "failed" and "more than the" in too_big["message"]
        kept = [finished(3_000)["id"] for _ in range(4)]
        end = time.monotonic() + 10  # pruning follows a job's last record
        while (len(runner.store.all()) > 3 or (tmp_path / "jobs" / kept[0]).exists()) and (
            time.monotonic() < end
        ):
            time.sleep(0.02)
        ids = {r["id"] for r in runner.store.all()}
        assert ids == set(kept[1:])  # three records and 9,000 bytes: the oldest pruned
        assert not (tmp_path / "jobs" / kept[0]).exists()
        assert runner.cancel(kept[1])["status"] == "deleted"
        assert not (tmp_path / "jobs" / kept[1]).exists()
        with pytest.raises(LookupError):
            runner.store.get(kept[1])
    finally:
        runner.close()


def test_leftover_folders_are_removed_when_the_store_opens(tmp_path):
    JobStore(tmp_path)
    left = tmp_path / "jobs" / "0123456789abcdef.tmp"
    left.mkdir(parents=True)
    (left / "half.png").write_bytes(b"x" * 100)
    JobStore(tmp_path)
    assert not left.exists()


def test_a_short_token_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 16 characters, got 1"):
        ServerConfig(models=["toon-cnn"], data_dir=tmp_path, token="x")
    assert ServerConfig(models=["toon-cnn"], data_dir=tmp_path, token="y" * 16).token == "y" * 16


def test_a_422_does_not_echo_what_it_refuses(server):
    _, client = server
    image_id = upload(client, toons.generate(1, split="test", seed=6).pixels[0])
    query = "&".join(f"unknown_setting_{i}=1" for i in range(400))  # a 7 KB query
    assert len(query) > 7000
    reply = client.get(f"/api/models/toon-cnn/images/{image_id}/explain/gradcam.png?{query}")
    assert reply.status_code == 422
    assert len(reply.content) < 1000


def test_an_upload_over_the_pixel_cap_costs_nothing(server):
    state, client = server
    bomb = io.BytesIO()
    Image.new("1", (5000, 5000)).save(bomb, format="PNG")  # a few KB, 25 megapixels
    used = state.images.used
    reply = client.post("/api/images", files={"file": ("b.png", bomb.getvalue(), "image/png")})
    assert reply.status_code == 415 and "pixels" in reply.json()["detail"]
    assert state.images.used == used


def test_rise_reports_progress_after_every_batch(tiny, image4):
    """A cancelled RISE stops at its next progress report: one after every forward pass of
    ``batch_size`` copies, not only after each block of 128 masks (issue 18, finding 5)."""
    import convlens as cl

    seen: list[tuple[int, int]] = []
    cl.explain(
        tiny,
        image4[:1],
        "rise",
        masks=256,
        cell=2,
        batch_size=32,
        seed=0,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert [done for done, _ in seen] == list(range(32, 257, 32))
    assert {total for _, total in seen} == {256}
    same = cl.explain(tiny, image4[:1], "rise", masks=256, cell=2, batch_size=256, seed=0)
    again = cl.explain(tiny, image4[:1], "rise", masks=256, cell=2, batch_size=32, seed=0)
    assert torch.allclose(same.map, again.map, atol=1e-6)  # batches change nothing else


def test_cli_messages_are_one_clean_line(tmp_path):
    """A missing picture names itself without ``[Errno 2]``; a pickled model is refused before
    torch can print its own warnings (issue 18, finding 6). Run as a real process, so that
    anything torch writes to stderr is seen."""
    import subprocess
    import sys

    from conftest import TinyNet

    pickled = tmp_path / "whole.pt"
    torch.save(TinyNet(), pickled)
    cli = [sys.executable, "-c", "from convlens.apps.cli import app; app()"]
    for args, expected in (
        (["predict", "toon-cnn", str(tmp_path / "missing.png")], "missing.png"),
        (["layers", str(pickled)], "--trust-pickle"),
    ):
        done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), lines
        assert expected in lines[0] and "Errno" not in lines[0] and "Warning" not in lines[0]
