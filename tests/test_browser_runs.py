"""Every explorer panel that runs long work shows its progress and can cancel it (issue 18), as
the explanation panel does (tests/test_browser_faces.py): the detection panel's D-RISE and the
segmentation panel's RISE. While new settings compute, the map on show is marked stale (its
frame dimmed); Cancel stops the work on the server (the model is free at once for the next
request); the box map carries its colour bar. While they run, their first maps (D-RISE's and
RISE's estimates from the first 128, 256, ... masks; issue 16) take the frame, named as
previews. Debian's chromium, headless, against a server on a free loopback port."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ARTIFACTS = Path(__file__).resolve().parent.parent / "out" / "test-artifacts"

import live  # noqa: E402

if not live.CHROMIUM.exists():  # `make test` installs it (Makefile: browser)
    pytest.skip("Debian's chromium is not installed: make browser", allow_module_level=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    models = ["toon-detector", "toon-segmenter"]
    with live.served(models, tmp_path_factory.mktemp("d")) as (state, port):
        base = f"http://127.0.0.1:{port}"
        with live.chromium_tab(f"{base}/") as tab:
            yield tab, base, state


def _text(page, selector: str) -> str:
    return str(page.locator(selector).inner_text())


def _progress_then_cancel(page, state, prefix: str, base: str, energy: str) -> None:
    """The panel's time shows ``running… N %`` from the server's run, the map on show stays
    under it marked stale, then the run's first map (from its first masks) takes the frame,
    named ``preview from N % of masks``, and is drawn by the panel's own route (its ``energy``
    header); Cancel stops the run: the panel says ``cancelled``, no preview is left and the
    server's run is gone."""
    page.wait_for_function(
        f"/running… \\d+ %/.test(document.querySelector('#{prefix}-time').innerText)",
        timeout=60_000,
    )
    page.wait_for_function(
        f"/preview from \\d+ % of masks · running… \\d+ %/"
        f".test(document.querySelector('#{prefix}-time').innerText)",
        timeout=60_000,
    )
    frame = page.locator(f"#{prefix}-overlay-frame")
    assert 0 < float(frame.get_attribute("data-preview")) < 1  # a share of the masks
    end = time.monotonic() + 10
    while len(state.runs) != 1 and time.monotonic() < end:  # a run given up for new settings
        time.sleep(0.05)  # stops at its next batch
    ((run_id, run),) = state.runs.items()
    assert run_id.startswith(prefix)
    assert run.status == "running" and 0 < run.done < run.total and run.previews >= 1
    with urllib.request.urlopen(f"{base}/api/runs/{run_id}/preview.png", timeout=30) as reply:
        assert reply.read().startswith(b"\x89PNG")
        assert reply.headers["X-Preview-Of"] == "masks" and energy in reply.headers
        assert 0 < float(reply.headers["X-Preview"]) < 1 and "X-Ms" not in reply.headers
    assert frame.get_attribute("data-state") == "loading"  # the old map, dimmed: stale
    assert "loading" in (frame.get_attribute("class") or "")
    assert page.locator(f"#{prefix}-overlay").get_attribute("src")  # ... but still shown
    assert page.locator(f"#{prefix}-cancel").is_visible()
    page.click(f"#{prefix}-cancel")
    page.wait_for_function(
        f"document.querySelector('#{prefix}-time').innerText === 'cancelled'", timeout=30_000
    )
    assert not page.locator(f"#{prefix}-cancel").is_visible()
    assert frame.get_attribute("data-preview") is None
    end = time.monotonic() + 10
    while state.runs and time.monotonic() < end:  # the request has ended on the server
        time.sleep(0.05)
    assert state.runs == {}
    assert run.cancelled.is_set() and run.done < run.total  # it stopped part way


def _seconds(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as reply:
        assert reply.status == 200
    return time.perf_counter() - start


def test_a_long_box_explanation_shows_progress_and_can_be_cancelled(served):
    page, base, state = served
    page.wait_for_selector("#model-select option[value='toon-detector']", state="attached")
    page.select_option("#model-select", "toon-detector")
    page.wait_for_selector("#detect-panel", state="visible", timeout=30_000)
    page.click("#samples .sample[data-sample='crowd-1']")
    page.wait_for_function(
        "document.querySelector('#detect-list').dataset.state === 'ready'", timeout=60_000
    )
    # a quick map first (Layer-CAM of box 0): the one left on show while D-RISE computes
    page.select_option("#box-method", "layercam")
    page.click("#detect-list .det-row[data-index='0']")
    page.wait_for_selector("#box-overlay[data-state='ready'][data-method='layercam']")
    # its colour bar is drawn below the map (the picture is enlarged 3x to 384 x 384)
    size = page.evaluate(
        "[document.querySelector('#box-overlay').naturalWidth,"
        " document.querySelector('#box-overlay').naturalHeight]"
    )
    assert size[0] == 384 and size[1] > 384 + 20, size
    assert "scale" not in _text(page, "#box-time")  # the scale is the bar, not text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#detect-panel").screenshot(path=str(ARTIFACTS / "9-box-colour-bar.png"))

    # D-RISE with 4,000 masks takes about 20 s on two cores
    page.select_option("#box-method", "drise")
    page.fill("#box-setting-masks", "4000")
    page.press("#box-setting-masks", "Tab")  # its change event (once: Cancel's click does not
    # fire it again)
    _progress_then_cancel(page, state, "box", base, "X-Energy-In-Box")
    assert "cancelled" in _text(page, "#box-energy")
    # the model is free at once: another box's Grad-CAM does not wait for D-RISE
    image_id = page.evaluate("document.querySelector('#detect-picture').dataset.image")
    path = f"/api/models/toon-detector/images/{image_id}/detections/1/explain/gradcam.png"
    assert _seconds(base + path) < 3


def test_a_long_region_explanation_shows_progress_and_can_be_cancelled(served):
    page, base, state = served
    page.select_option("#model-select", "toon-segmenter")
    page.wait_for_selector("#segment-panel", state="visible", timeout=30_000)
    page.click("#samples .sample[data-sample='crowd-1']")
    page.wait_for_function(
        "Number(document.querySelector('#segment-summary').dataset.count) > 0", timeout=60_000
    )
    page.select_option("#region-method", "gradcam")
    page.click("#segment-list .det-row >> nth=0")
    page.wait_for_selector("#region-overlay[data-state='ready'][data-method='gradcam']")
    assert page.locator("#region-cancel").is_hidden()

    # RISE with 8,000 masks takes minutes on two cores
    page.select_option("#region-method", "rise")
    page.fill("#region-setting-masks", "8000")
    page.press("#region-setting-masks", "Tab")
    _progress_then_cancel(page, state, "region", base, "X-Energy-In-Region")
    page.locator("#segment-panel").screenshot(path=str(ARTIFACTS / "10-region-cancelled.png"))
    image_id = page.evaluate("document.querySelector('#segment-picture').dataset.image")
    path = f"/api/models/toon-segmenter/images/{image_id}/segmentation/explain/layercam.png"
    assert _seconds(f"{base}{path}?target=1") < 3
