"""The explorer in a real browser: Debian's chromium, headless, driven by Playwright against a
server started here on a free loopback port. Screenshots go to ``out/test-artifacts/``."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ARTIFACTS = Path(__file__).resolve().parent.parent / "out" / "test-artifacts"

import live  # noqa: E402

if not live.CHROMIUM.exists():  # `make test` installs it (Makefile: browser)
    pytest.skip("Debian's chromium is not installed: make browser", allow_module_level=True)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    models = ["mobilenet_v2", "toon-cnn", "toon-detector"]
    with live.served(models, tmp_path_factory.mktemp("d")) as (_, port):
        yield f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def page(url):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with live.chromium_tab(url) as tab:
        yield tab


def _ready(page, selector: str, timeout: float = 60_000) -> None:
    page.wait_for_selector(f"{selector}[data-state='ready']", timeout=timeout)


def test_upload_predict_slide_explain_and_run_a_job(page, tmp_path):
    import convlens as cl

    photo = tmp_path / "cat.jpg"
    shutil.copy(cl.sample("chelsea"), photo)
    page.select_option("#model-select", "mobilenet_v2")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#predictions .prediction", timeout=60_000)
    page.wait_for_function(
        "document.querySelector('#predictions .prediction') &&"
        " /cat/i.test(document.querySelector('#predictions').innerText)",
        timeout=60_000,
    )
    _ready(page, "#picture")
    _ready(page, "#heatmap")
    before = page.locator("#heatmap").get_attribute("src")
    page.screenshot(path=str(ARTIFACTS / "1-predictions.png"), full_page=True)

    page.locator("#channel-slider").fill("7")
    page.wait_for_selector("#heatmap[data-channel='7'][data-state='ready']", timeout=30_000)
    assert page.locator("#channel-value").inner_text().strip().startswith("7")
    assert page.locator("#heatmap").get_attribute("src") != before
    page.screenshot(path=str(ARTIFACTS / "2-slider.png"), full_page=True)

    page.select_option("#method-select", "gradcam")
    page.click("#run-button")
    _ready(page, "#overlay")
    assert page.locator("#overlay").get_attribute("src")
    page.screenshot(path=str(ARTIFACTS / "3-gradcam.png"), full_page=True)

    page.select_option("#model-select", "toon-cnn")
    page.wait_for_selector("#jobs-panel", state="visible", timeout=30_000)
    page.select_option("#job-kind", "featurevis")
    page.wait_for_selector("#job-layer option[value='conv2']", state="attached", timeout=30_000)
    page.select_option("#job-layer", "conv2")
    page.fill("#job-channels", "0-3")
    page.fill("#job-steps", "8")
    page.click("#job-start")
    page.wait_for_function(
        "/done/i.test(document.querySelector('#jobs-table').innerText)", timeout=120_000
    )
    page.screenshot(path=str(ARTIFACTS / "4-job.png"), full_page=True)
    page.select_option("#job-kind", "tcav")  # the TCAV form offers the tests, local first
    assert page.locator("#job-test").input_value() == "local"
    assert page.locator("#job-test option").all_inner_texts()[0] == "local (default)"


def _api(url: str, path: str, method: str = "GET") -> object:
    body, headers = (
        (b"{}", {"Content-Type": "application/json"}) if method == "POST" else (None, {})
    )
    request = urllib.request.Request(url.rstrip("/") + path, body, headers, method=method)
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


def _boxes_sit_on_the_picture(page, detections: list[dict], width: int, height: int) -> None:
    """Each box element covers its box's pixels of the displayed picture (within a pixel)."""
    shown = page.locator("#detect-picture").bounding_box()
    assert shown and shown["width"] > 2 * width  # a 128 px frame is shown enlarged
    scale_x, scale_y = shown["width"] / width, shown["height"] / height
    assert abs(scale_x - scale_y) < 0.01  # the picture keeps its aspect ratio
    for d in detections:
        rect = page.locator(f"#detect-boxes .det-box[data-index='{d['index']}']").bounding_box()
        x0, y0, x1, y1 = d["box"]
        assert rect is not None
        assert abs(rect["x"] - (shown["x"] + x0 * scale_x)) < 1.5, (d, rect, shown)
        assert abs(rect["y"] - (shown["y"] + y0 * scale_y)) < 1.5, (d, rect, shown)
        assert abs(rect["width"] - (x1 - x0) * scale_x) < 1.5, (d, rect, shown)
        assert abs(rect["height"] - (y1 - y0) * scale_y) < 1.5, (d, rect, shown)


def test_detector_boxes_and_a_box_explanation(page, url):
    page.select_option("#model-select", "toon-detector")
    page.wait_for_selector("#detect-panel", state="visible", timeout=30_000)
    assert not page.locator("#activations-panel").is_visible()
    assert not page.locator("#predictions").is_visible()
    page.click("#samples .sample[data-sample='crowd-1']")
    page.wait_for_function(
        "document.querySelector('#image-info').textContent.includes('crowd-1') &&"
        " document.querySelector('#detect-list').dataset.state === 'ready'",
        timeout=60_000,
    )
    _ready(page, "#detect-picture")
    # the boxes are the API's, drawn where the API puts them
    image_id = _api(url, "/api/images/sample/crowd-1", "POST")["id"]
    found = _api(url, f"/api/models/toon-detector/images/{image_id}/detections")
    detections = found["detections"]
    assert len(detections) == 3
    assert page.locator("#detect-boxes .det-box").count() == len(detections)
    assert page.locator("#detect-list .det-row").count() == len(detections)
    assert page.locator("#detect-summary").get_attribute("data-count") == "3"
    _boxes_sit_on_the_picture(page, detections, found["width"], found["height"])

    # Layer-CAM of the second james, chosen with the keyboard
    page.select_option("#box-method", "layercam")
    page.focus("#detect-boxes .det-box[data-index='0']")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    page.wait_for_selector(
        "#box-overlay[data-state='ready'][data-method='layercam'][data-box='1']", timeout=60_000
    )
    assert page.locator(".det-box[data-index='1']").get_attribute("aria-pressed") == "true"
    energy = float(page.locator("#box-energy-value").get_attribute("data-value"))
    assert 0.9 < energy <= 1.0  # Layer-CAM keeps to this james
    assert "%" in page.locator("#box-energy-value").inner_text()
    page.screenshot(path=str(ARTIFACTS / "5-detector-layercam.png"), full_page=True)

    # D-RISE of jessie, picked from the list, with fewer masks
    page.select_option("#box-method", "drise")
    page.fill("#box-setting-masks", "100")
    page.locator("#box-setting-masks").dispatch_event("change")
    page.click("#detect-list .det-row[data-index='2']")
    page.wait_for_selector(
        "#box-overlay[data-state='ready'][data-method='drise'][data-box='2']", timeout=60_000
    )
    page.wait_for_function(
        "/%/.test(document.querySelector('#box-energy-value')?.textContent || '')",
        timeout=30_000,
    )
    natural = page.evaluate("document.querySelector('#box-overlay').naturalWidth")
    # the overlay loaded: the picture enlarged by a whole factor to at least 384 pixels
    assert natural == found["width"] * 3
    timing = page.locator("#box-time").inner_text()
    assert "running" not in timing and "total" in timing, timing
    page.screenshot(path=str(ARTIFACTS / "6-detector-drise.png"), full_page=True)

    # a stricter score threshold keeps the two best boxes, still on the characters
    page.locator("#score-threshold").fill("0.85")
    page.wait_for_function(
        "document.querySelectorAll('#detect-boxes .det-box').length === 2", timeout=30_000
    )
    strict = _api(
        url, f"/api/models/toon-detector/images/{image_id}/detections?score_threshold=0.85"
    )
    _boxes_sit_on_the_picture(page, strict["detections"], found["width"], found["height"])
    # a narrow window: the picture shrinks and the boxes follow it
    page.set_viewport_size({"width": 700, "height": 900})
    page.wait_for_timeout(200)
    _boxes_sit_on_the_picture(page, strict["detections"], found["width"], found["height"])
    page.screenshot(path=str(ARTIFACTS / "7-detector-narrow.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 860})


def test_the_layer_table_panel_under_the_pages_own_csp(page, url):
    """The layer table of the chosen classifier, filtered by kind, in a browser that keeps
    the page's Content-Security-Policy (the panels are ES modules loaded from /static)."""
    context = page.context.browser.new_context(viewport={"width": 1280, "height": 860})
    strict = context.new_page()
    problems: list[str] = []
    strict.on("pageerror", lambda err: problems.append(str(err)))
    strict.on(
        "console",
        lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
    )
    try:
        strict.goto(url)
        strict.select_option("#model-select", "toon-cnn")
        strict.wait_for_selector(
            "#layers-table[data-state='ready'][data-model='toon-cnn'][data-kind='all']",
            timeout=60_000,
        )
        expected = _api(url, "/api/models/toon-cnn/layers")["layers"]
        shown = strict.locator("#layers-table tbody tr")
        assert shown.count() == len(expected)
        conv1 = strict.locator("#layers-table tr[data-name='conv1'] td").all_inner_texts()
        first = expected[0]
        assert conv1 == [
            "conv1",
            first["type"],
            "conv",
            "×".join(map(str, first["shape"])),
            f"{first['params']:,}",
        ]
        strict.select_option("#layers-kind", "conv")
        strict.wait_for_selector("#layers-table[data-state='ready'][data-kind='conv']")
        names = [row.get_attribute("data-name") for row in shown.all()]
        assert names == ["conv1", "conv2", "conv3"]
        strict.screenshot(path=str(ARTIFACTS / "8-layer-table.png"), full_page=True)
        strict.select_option("#model-select", "toon-detector")  # no layer table for a detector
        strict.wait_for_selector("#detect-panel", state="visible", timeout=30_000)
        assert not strict.locator("#layers-panel").is_visible()
    finally:
        context.close()
    assert problems == []
