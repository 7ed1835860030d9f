"""The segmentation panel in a real browser (Debian's chromium, headless, Playwright): choose
the toon segmenter, upload a crowd frame, click one character's hair, and the region explained
is the one the library explains at that point. Screenshots go to ``out/test-artifacts/``."""

from __future__ import annotations

import json
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
    with live.served(["toon-cnn", "toon-segmenter"], tmp_path_factory.mktemp("d")) as (_, port):
        yield f"http://127.0.0.1:{port}/"


def test_click_a_region_and_see_it_explained(url, tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    import convlens as cl
    from convlens.data import toons

    crowd = toons.generate(4, variant="crowd", split="test", seed=5).pixels[3]
    path = tmp_path / "crowd.png"
    Image.fromarray(crowd).save(path)
    segmenter = cl.load("toon-segmenter")
    found = cl.segment(segmenter, crowd)
    ys, xs = torch.nonzero(found.mask("hair"), as_tuple=True)
    middle = len(xs) // 2
    x, y = int(xs[middle]), int(ys[middle])
    _, region = found.region_at(x, y)
    expected = cl.explain(segmenter, crowd, "gradcam", region=(x, y))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with live.chromium_tab(url) as page:
        page.wait_for_selector("#model-select option[value='toon-segmenter']", state="attached")
        page.select_option("#model-select", "toon-segmenter")
        page.wait_for_selector("#segment-panel", state="visible", timeout=30_000)
        assert not page.locator(
            "#explain-panel"
        ).is_visible()  # the classifier's panels stand aside
        page.set_input_files("#file-input", str(path))
        page.wait_for_function(
            "document.querySelector('#segment-summary').dataset.count === '3'", timeout=60_000
        )
        page.wait_for_selector("#segment-picture[data-state='ready']", timeout=60_000)
        box = page.locator("#segment-picture").bounding_box()
        assert box is not None
        page.mouse.click(
            box["x"] + (x + 0.5) * box["width"] / 128, box["y"] + (y + 0.5) * box["height"] / 128
        )
        page.wait_for_selector("#region-overlay[data-state='ready']", timeout=60_000)
        page.wait_for_selector("#region-energy-value", timeout=30_000)
        shown = float(page.locator("#region-energy-value").get_attribute("data-value"))
        assert shown == pytest.approx(expected.energy_in_region(), abs=1e-5)
        assert f"{int(region.sum())} px" in page.locator("#region-target").inner_text()
        page.screenshot(path=str(ARTIFACTS / "8-segmenter-region.png"), full_page=True)
    with urllib.request.urlopen(url + "api/models") as reply:
        models = {m["name"]: m for m in json.loads(reply.read())}
    assert models["toon-segmenter"]["task"] == "segment"
    assert np.isfinite(expected.energy_in_region())
