"""The explorer's faces agree with the README (issue 18): each map's scale and the target's score
beside it, Integrated Gradients' completeness error, a kept scale, and the README's explain and
evaluate jobs started from the page, the jobs table naming model and parameters. Debian's
chromium, headless, against a toon-cnn server on a free loopback port."""

from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

import live  # noqa: E402

if not live.CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed: make browser", allow_module_level=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with (
        live.served(["toon-cnn"], tmp_path_factory.mktemp("d")) as (_, port),
        live.chromium_tab(f"http://127.0.0.1:{port}/") as tab,
    ):
        yield tab


def _scale_text(page, pattern: str) -> str:
    page.wait_for_function(
        f"/{pattern}/.test(document.querySelector('#explain-scale').innerText)", timeout=60_000
    )
    return str(page.locator("#explain-scale").inner_text())


def test_scales_scores_completeness_and_jobs(page, tmp_path):
    from PIL import Image

    from convlens.data import toons

    picture = tmp_path / "toon.png"
    Image.fromarray(toons.generate(1, split="test", seed=3).pixels[0]).save(picture)
    page.set_input_files("#file-input", str(picture))
    page.wait_for_selector("#predictions .prediction", timeout=60_000)

    page.select_option("#method-select", "gradcam")
    page.click("#run-button")
    text = _scale_text(page, "target score")
    low, high = (float(v) for v in re.search(r"scale (\S+) … (\S+)", text).groups())
    assert 0 <= low < high

    page.select_option("#method-select", "integrated_gradients")  # its seed may stay empty
    text = _scale_text(page, "completeness error")
    assert float(re.search(r"completeness error (\S+)", text).group(1)) >= 0

    page.check("#hold-scale")  # the next maps are drawn on this map's range
    page.select_option("#method-select", "saliency")
    text = _scale_text(page, "kept")

    page.select_option("#job-kind", "explain")
    page.fill("#job-explain-methods", "gradcam, saliency")
    page.click("#job-start")
    page.select_option("#job-kind", "evaluate")
    page.fill("#job-eval-methods", "gradcam")
    page.fill("#job-eval-n", "4")
    page.fill("#job-eval-steps", "4")
    page.click("#job-start")
    page.select_option("#job-kind", "dataset")  # a data set run on toons, its report first
    page.fill("#job-dataset-methods", "gradcam")
    page.fill("#job-dataset-n", "6")
    page.click("#job-start")
    page.wait_for_function(
        "document.querySelectorAll('#jobs-table tr[data-status=\"done\"]').length === 3",
        timeout=180_000,
    )
    rows = page.locator("#jobs-table tbody tr").all_inner_texts()
    explain_row = next(r for r in rows if "explain" in r)
    evaluate_row = next(r for r in rows if "evaluate" in r)
    assert "toon-cnn" in explain_row and "methods gradcam, saliency" in explain_row
    assert "1 picture" in explain_row
    assert "n 4" in evaluate_row and "steps 4" in evaluate_row
    dataset = page.locator("#jobs-table tbody tr", has_text="dataset")
    assert "n 6" in dataset.inner_text()
    report = dataset.locator(".job-results a").first.get_attribute("href")
    assert report is not None and report.endswith(".html")


def test_a_long_explanation_shows_progress_and_can_be_cancelled(page):
    """RISE with 8,000 masks: the panel shows how far it is, and Cancel stops it (the server's
    run is gone: its progress endpoint answers 404)."""
    page.select_option("#method-select", "rise")
    page.fill("#setting-masks", "8000")
    page.click("#run-button")
    page.wait_for_function(
        "/running… \\d+ %/.test(document.querySelector('#explain-time').innerText)",
        timeout=60_000,
    )
    assert page.locator("#explain-cancel").is_visible()
    page.click("#explain-cancel")
    page.wait_for_function(
        "document.querySelector('#explain-time').innerText === 'cancelled'", timeout=30_000
    )
    assert not page.locator("#explain-cancel").is_visible()


def test_occlusion_approximate_modes_from_the_form(page):
    """The approximate modes are form controls: "none" (exact) first and not sent; a chosen
    mode says beside the map how much it computed and its SSIM to the exact map."""
    page.select_option("#method-select", "occlusion")
    options = page.locator("#setting-approximate option").all_inner_texts()
    assert options == ["none", "drilldown", "cap"]
    page.select_option("#setting-approximate", "drilldown")
    page.check("#setting-exact_ssim")
    page.click("#run-button")
    text = _scale_text(page, "approximate")
    share, ssim = re.search(r"drilldown, (\d+)% of windows computed, SSIM (\S+)", text).groups()
    assert 25 <= int(share) < 100 and 0 < float(ssim) <= 1


def test_occlusion_shows_its_coarse_passes_first(page):
    """Issue 16: the occlusion panel answers before the map is done. While an exact occlusion
    runs, its coarse passes (every 4th, then every 2nd row and column of windows) take the
    frame, undimmed and named as a preview; the exact map replaces them."""
    page.select_option("#method-select", "occlusion")
    page.select_option("#setting-approximate", "none")
    page.uncheck("#setting-exact_ssim")
    page.fill("#setting-window", "4")
    page.fill("#setting-stride", "1")  # 125 x 125 windows on the 128-px toon: seconds
    page.evaluate(
        """() => {
          window.previews = [];
          const frame = document.querySelector('#overlay-frame');
          new MutationObserver(() => {
            const status = document.querySelector('#explain-time').innerText;
            if (frame.dataset.preview) window.previews.push([frame.dataset.preview, status,
              frame.classList.contains('loading'), document.querySelector('#overlay').src]);
          }).observe(frame, {attributes: true, attributeFilter: ['data-preview']});
        }"""
    )
    page.click("#run-button")
    page.wait_for_function(
        "/preview from \\d+ % of windows · running… \\d+ %/"
        ".test(document.querySelector('#explain-time').innerText)",
        timeout=60_000,
    )
    # a run given up for a new one (Run again) leaves its preview on show, dimmed, and what
    # is on show can still be opened at full size (its object URL is not let go yet)
    kept, opens = page.evaluate(
        """async () => {
          const before = document.querySelector('#overlay').src;
          document.querySelector('#run-button').click();
          const now = document.querySelector('#overlay').src;
          return [before === now, await fetch(now).then((r) => r.ok).catch(() => false)];
        }"""
    )
    assert kept and opens
    page.wait_for_selector("#overlay[data-state='ready'][data-method='occlusion']", timeout=60_000)
    previews = page.evaluate("window.previews")
    assert previews, "no preview was shown"
    shares = sorted({float(p[0]) for p in previews})
    assert all(0 < s < 0.5 for s in shares), shares  # 7 % then 25 % of the windows
    assert all(p[2] for p in previews)  # shown while the run goes on
    assert page.locator("#overlay-frame").get_attribute("data-preview") is None
    assert page.locator("#overlay").get_attribute("src") not in {p[3] for p in previews}
    assert "preview" not in page.locator("#explain-time").inner_text()  # the compute time
    # a run that is over has no preview to give
    reply = page.request.get(page.url.split("#")[0] + "api/runs/nothing-here/preview.png")
    assert reply.status == 404 and "no preview" in reply.text()
