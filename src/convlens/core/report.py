"""Self-contained HTML reports: one file, images embedded as data URIs, inline CSS.

A report is a title plus sections; each section holds blocks (paragraphs, images, image
grids, tables) in the order they were added. Everything user-provided (titles, text,
captions, table cells) is HTML-escaped; the page references no URL of any kind and
needs no JavaScript, so it can be mailed or archived as a single file.

Example::

    report = Report("Grad-CAM on chelsea")
    sec = report.add_section("Overlay", text="Class 281 (tabby cat).")
    sec.add_image(overlay(photo, cam), caption="alpha 0.4, jet")
    sec.add_table([{"class": "tabby", "p": 0.71}, {"class": "tiger cat", "p": 0.18}])
    report.save("out/report.html")
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .render import Figure, data_uri, to_pil, write_atomic

if TYPE_CHECKING:
    from .render import ImageLike

__all__ = ["CSS", "Report", "Section"]

CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1d2330;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.6em; }
h2 { font-size: 1.25em; margin: 0 0 0.6em; padding-bottom: 0.25em;
  border-bottom: 1px solid #e1e4ea; }
section { background: #fff; border: 1px solid #e1e4ea; border-radius: 8px;
  padding: 16px 20px; margin: 0 0 20px; }
nav ol { margin: 0 0 20px; padding-left: 1.4em; }
nav a, nav a:visited { color: #2b5fb3; text-decoration: none; }
p { margin: 0 0 0.8em; }
figure { margin: 0 0 1em; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eef0f3; }
figcaption { font-size: 0.88em; color: #5a6272; margin-top: 4px; }
.grid { display: grid; gap: 12px; margin: 0 0 1em;
  grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); }
.grid.row { grid-template-columns: none; grid-auto-flow: column;
  grid-auto-columns: minmax(150px, 1fr); overflow-x: auto; }
.grid figure { margin: 0; }
.grid img { width: 100%; }
table { border-collapse: collapse; margin: 0 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #dde1e7; padding: 4px 10px; text-align: left; }
th { background: #f1f3f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> tuple[str, bool]:
    """Escaped text of a table cell and whether it is a number (right-aligned)."""
    if isinstance(value, bool) or value is None:
        return ("" if value is None else str(value)), False
    if isinstance(value, float):
        return f"{value:.4g}", True
    if isinstance(value, int):
        return str(value), True
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy / torch scalar
        return _cell(value.item())
    return _esc(value), False


def _figure(image: ImageLike, caption: str | None) -> str:
    if isinstance(image, Figure) and caption is None:
        caption = image.caption
    uri = data_uri(to_pil(image))
    alt = _esc(caption or "")
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{alt}">{cap}</figure>'


class Section:
    """One titled part of a :class:`Report`; add blocks with the ``add_*`` methods.

    Each ``add_*`` method returns the section, so calls can be chained.
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self._blocks: list[str] = []

    def __repr__(self) -> str:
        return f"Section({self.title!r}, {len(self._blocks)} blocks)"

    def add_text(self, text: str) -> Section:
        """A paragraph of plain text (escaped); blank lines start new paragraphs."""
        for para in str(text).split("\n\n"):
            if para.strip():
                body = "<br>".join(_esc(line) for line in para.strip().split("\n"))
                self._blocks.append(f"<p>{body}</p>")
        return self

    def add_image(self, image: ImageLike, caption: str | None = None) -> Section:
        """An image (PIL, array/tensor, or :class:`~convlens.render.Figure`, whose caption
        is used when ``caption`` is None), embedded as a PNG data URI."""
        self._blocks.append(_figure(image, caption))
        return self

    def add_grid(
        self,
        images: Sequence[ImageLike],
        captions: Sequence[str] | None = None,
        *,
        columns: int | None = None,
    ) -> Section:
        """Several images side by side in a responsive grid, each with its caption; with
        ``columns``, one row that never wraps (a picture and its maps stay together; it
        scrolls sideways when the page is narrow)."""
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"expected {len(images)} captions, got {len(captions)}")
        figs = [
            _figure(img, None if captions is None else captions[i]) for i, img in enumerate(images)
        ]
        kind = "grid row" if columns is not None and len(figs) <= columns else "grid"
        self._blocks.append(f'<div class="{kind}">{"".join(figs)}</div>')
        return self

    def add_table(
        self,
        rows: Sequence[Mapping[str, Any]] | tuple[Sequence[Any], Sequence[Sequence[Any]]],
    ) -> Section:
        """A table, from a list of dicts (columns: keys in order of first appearance;
        missing cells are empty) or from ``(header, rows)`` with rows as sequences.
        Cells are escaped; floats are shown with 4 significant digits."""
        header: list[Any]
        body: list[list[Any]]
        if isinstance(rows, tuple) and len(rows) == 2 and not isinstance(rows[0], Mapping):
            header = list(rows[0])
            body = [list(r) for r in rows[1]]
            for r in body:
                if len(r) != len(header):
                    raise ValueError(
                        f"expected rows of {len(header)} cells (the header), got {len(r)}"
                    )
        else:
            dict_rows: list[Mapping[str, Any]] = []
            for row in rows:
                if not isinstance(row, Mapping):
                    raise ValueError(
                        f"expected a list of dicts or a (header, rows) tuple, got a row {row!r}"
                    )
                dict_rows.append(row)
            header = []
            for d in dict_rows:
                header.extend(k for k in d if k not in header)
            body = [[d.get(k) for k in header] for d in dict_rows]
        head = "".join(f"<th>{_esc(h)}</th>" for h in header)
        lines = []
        for cells_in in body:
            cells = []
            for value in cells_in:
                text, numeric = _cell(value)
                cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
            lines.append(f"<tr>{''.join(cells)}</tr>")
        self._blocks.append(
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"
        )
        return self

    def html(self, anchor: str | None = None) -> str:
        """The ``<section>`` element (``anchor`` becomes its id)."""
        ident = f' id="{_esc(anchor)}"' if anchor else ""
        inner = "\n".join(self._blocks)
        return f"<section{ident}>\n<h2>{_esc(self.title)}</h2>\n{inner}\n</section>"


class Report:
    """A single self-contained HTML page made of sections.

    ``Report(title)``; ``add_section(title, text=None)`` returns the new
    :class:`Section`; ``html()`` renders the page; ``save(path)`` writes it atomically.
    With more than one section the page starts with a table of contents (in-page links).
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.sections: list[Section] = []

    def __repr__(self) -> str:
        return f"Report({self.title!r}, {len(self.sections)} sections)"

    def add_section(self, title: str, *, text: str | None = None) -> Section:
        """Append a section (optionally starting with a paragraph) and return it."""
        section = Section(title)
        if text:
            section.add_text(text)
        self.sections.append(section)
        return section

    def html(self) -> str:
        """The whole page as a string (UTF-8, no external references)."""
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_esc(self.title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            "<main>",
            f"<h1>{_esc(self.title)}</h1>",
        ]
        if len(self.sections) > 1:
            items = "".join(
                f'<li><a href="#section-{i}">{_esc(s.title)}</a></li>'
                for i, s in enumerate(self.sections, start=1)
            )
            parts.append(f"<nav><ol>{items}</ol></nav>")
        parts.extend(s.html(f"section-{i}") for i, s in enumerate(self.sections, start=1))
        parts += ["</main>", "</body>", "</html>", ""]
        return "\n".join(parts)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the page to ``path`` (UTF-8, atomic, parent folders created)."""
        return write_atomic(path, self.html().encode("utf-8"))
