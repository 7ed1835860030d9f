"""The explorer in a real browser: Debian's chromium, headless, driven by Playwright against a
server started here on a free loopback port. Screenshots go to ``out/test-artifacts/``."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "out" / "test-artifacts"

import playwright.sync_api as playwright_api  # noqa: E402
import uvicorn  # noqa: E402

if not CHROMIUM.exists():  # `make test` installs it (Makefile: browser)
    pytest.skip("Debian's chromium is not installed: make browser", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from convlens.server import ServerConfig, ServerState, create_app

    port = _free_port()
    state = ServerState.start(
        ServerConfig(
            models=["mobilenet_v2", "toon-cnn"], port=port, data_dir=tmp_path_factory.mktemp("d")
        )
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > end:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)
    state.close()


@pytest.fixture(scope="module")
def page(url):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        # bypass_csp: the page forbids eval, which Playwright's wait_for_function needs
        context = browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        yield page
        browser.close()
        assert errors == [], errors


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
