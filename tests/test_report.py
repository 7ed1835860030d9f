"""Tests for convlens.report: self-contained, escaped HTML."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from convlens.core.render import Figure, heatmap
from convlens.core.report import Report


def _build() -> Report:
    report = Report("Report <one> & two")
    sec = report.add_section("Overlay <i>", text="first para\n\n<script>alert(1)</script>")
    sec.add_image(heatmap(np.arange(12.0).reshape(3, 4)), caption="cap <b>")
    sec.add_image(Figure(np.zeros((2, 2), dtype=np.uint8), caption="from figure"))
    sec.add_grid(
        [np.ones((3, 3), dtype=np.float32), np.zeros((3, 3), dtype=np.float32)],
        ["ch 0", "ch <1>"],
    )
    tables = report.add_section("Tables")
    tables.add_table([{"class": "tabby", "p": 0.712345}, {"class": "<cat>", "rank": 2}])
    tables.add_table((["a", "b"], [[1, "x&y"], [np.float32(0.5), None]]))
    return report


def test_report_is_self_contained() -> None:
    page = _build().html()
    assert "http://" not in page and "https://" not in page
    assert 'src="/' not in page and "url(" not in page
    assert "<script" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 4
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "PNG"


def test_report_escapes_user_text() -> None:
    page = _build().html()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>Report &lt;one&gt; &amp; two</title>" in page
    assert "Overlay &lt;i&gt;" in page
    assert "<figcaption>cap &lt;b&gt;</figcaption>" in page
    assert "<figcaption>from figure</figcaption>" in page
    assert "<figcaption>ch &lt;1&gt;</figcaption>" in page
    assert "<p>first para</p>" in page


def test_report_tables() -> None:
    page = _build().html()
    assert "<tr><th>class</th><th>p</th><th>rank</th></tr>" in page
    assert '<td>tabby</td><td class="num">0.7123</td><td></td>' in page
    assert '<td>&lt;cat&gt;</td><td></td><td class="num">2</td>' in page
    assert "<tr><th>a</th><th>b</th></tr>" in page
    assert '<td class="num">1</td><td>x&amp;y</td>' in page
    assert '<td class="num">0.5</td><td></td>' in page


def test_report_toc_and_save(tmp_path) -> None:
    report = _build()
    page = report.html()
    assert '<a href="#section-1">Overlay &lt;i&gt;</a>' in page
    assert '<section id="section-2">' in page
    path = report.save(tmp_path / "out" / "report.html")
    assert path.read_text(encoding="utf-8") == page
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_add_table_rejects_ragged_rows() -> None:
    sec = Report("t").add_section("s")
    try:
        sec.add_table((["a", "b"], [[1]]))
    except ValueError as err:
        assert "expected rows of 2 cells" in str(err)
    else:  # pragma: no cover
        raise AssertionError("ragged row accepted")
