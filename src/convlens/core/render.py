"""Rendering kit: colour maps, normalisation, heatmaps, overlays, grids and PNG output.

Every visual result in convlens is drawn with these functions. Conventions:

- Maps are 2-D ``(H, W)`` arrays (or ``(N, H, W)`` stacks for :func:`normalize`), given
  as numpy arrays or torch tensors on any device (tensors are detached and copied to the
  CPU here; torch itself is never imported by this module).
- Images are PIL images, or arrays/tensors shaped ``(3, H, W)``, ``(H, W, 3)`` or
  ``(H, W)`` holding floats in ``[0, 1]`` or ``uint8`` in ``[0, 255]``.
- Sizes are PIL-style ``(width, height)``.

The colour tables in ``data/colormaps.json`` were sampled once from matplotlib by
``tools/make_colormaps.py``; matplotlib is not needed at run time.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from typing import TypeAlias

    import torch

    MapLike: TypeAlias = np.ndarray | torch.Tensor
    ImageLike: TypeAlias = Image.Image | np.ndarray | torch.Tensor | "Figure"
    Font: TypeAlias = ImageFont.FreeTypeFont | ImageFont.ImageFont

__all__ = [
    "COLORMAP_ALIASES",
    "NORMALIZE_MODES",
    "Figure",
    "Scale",
    "available_colormaps",
    "colorbar",
    "colormap",
    "data_uri",
    "grid",
    "heatmap",
    "normalize",
    "overlay",
    "png_bytes",
    "save_png",
    "to_pil",
    "write_atomic",
]

NormalizeMode = Literal["per_map", "shared", "absolute", "standardize"]
NORMALIZE_MODES: tuple[str, ...] = ("per_map", "shared", "absolute", "standardize")

#: Extra names accepted by :func:`colormap`.
COLORMAP_ALIASES: dict[str, str] = {"diverging": "coolwarm", "grey": "gray"}

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}

# --------------------------------------------------------------------------- inputs


def _to_numpy(x: Any) -> np.ndarray:
    """Array view of a numpy array, torch tensor (any device) or nested sequence."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        t = x.detach().cpu()
        if str(t.dtype) in ("torch.float16", "torch.bfloat16"):
            t = t.float()
        return np.asarray(t.numpy())
    return np.asarray(x)


def _size_arg(size: int | tuple[int, int] | None, what: str = "size") -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"expected {what} as (width, height) of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _resample_arg(resample: str | int) -> Image.Resampling:
    if isinstance(resample, str):
        try:
            return _RESAMPLE[resample]
        except KeyError:
            raise ValueError(
                f"unknown resample {resample!r}; expected one of {sorted(_RESAMPLE)}"
            ) from None
    return Image.Resampling(resample)


# --------------------------------------------------------------------------- colour maps


@functools.cache
def _luts() -> dict[str, np.ndarray]:
    """Load every lookup table from ``data/colormaps.json`` once (read-only arrays)."""
    text = resources.files("convlens").joinpath("data/colormaps.json").read_text("utf-8")
    doc = json.loads(text)
    tables: dict[str, np.ndarray] = {}
    for name, rows in doc["maps"].items():
        lut = np.asarray(rows, dtype=np.uint8)
        if lut.shape != (256, 3):
            raise ValueError(f"colormap {name!r}: expected shape (256, 3), got {lut.shape}")
        lut.setflags(write=False)
        tables[name] = lut
    return tables


def available_colormaps() -> list[str]:
    """Names accepted by :func:`colormap` (tables and aliases), sorted."""
    return sorted([*_luts(), *COLORMAP_ALIASES])


def colormap(name: str = "viridis") -> np.ndarray:
    """Colour lookup table ``(256, 3)`` uint8; entry ``i`` colours the value ``i / 255``.

    Names: ``"viridis"`` (default, perceptually uniform), ``"magma"``, ``"jet"`` (the
    classic Grad-CAM look), ``"coolwarm"`` (alias ``"diverging"``; for signed maps
    normalised with ``signed=True`` so that 0 is the neutral middle), ``"gray"``
    (alias ``"grey"``). Append ``"_r"`` for the reversed table. Unknown names raise
    ``ValueError`` listing the available ones.
    """
    base, reverse = (name[:-2], True) if name.endswith("_r") else (name, False)
    base = COLORMAP_ALIASES.get(base, base)
    tables = _luts()
    if base not in tables:
        raise ValueError(
            f"unknown colormap {name!r}; available: {', '.join(available_colormaps())}"
            " (add '_r' to reverse)"
        )
    lut = tables[base]
    return (lut[::-1] if reverse else lut).copy()


def _lut(cmap: str | np.ndarray) -> np.ndarray:
    if isinstance(cmap, str):
        return colormap(cmap)
    lut = np.asarray(cmap)
    if lut.shape != (256, 3) or lut.dtype != np.uint8:
        raise ValueError(
            f"expected a colormap name or a (256, 3) uint8 table, got {lut.shape} {lut.dtype}"
        )
    return lut


def _apply_lut(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Colour values in ``[0, 1]`` (any shape S) -> uint8 ``S + (3,)``."""
    idx = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.intp)
    return lut[idx]


# --------------------------------------------------------------------------- normalise


def normalize(
    maps: MapLike,
    mode: NormalizeMode | str = "per_map",
    *,
    clip_percentile: float | None = None,
    signed: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Scale one map ``(H, W)`` or a stack ``(N, H, W)`` to float32 in ``[0, 1]``.

    Modes:

    - ``"per_map"``: each map by its own min/max, ``(x - min) / (max - min)``.
    - ``"shared"``: one min/max over all maps, so maps stay comparable.
    - ``"absolute"``: the given ``vmin``/``vmax`` (both required); values outside clip.
    - ``"standardize"``: the recipe used to show activation channels in Chollet's
      *Deep Learning with Python* (5.4): per map ``z = (x - mean) / std``, then
      ``clip(z * 64 + 128, 0, 255) / 255`` (population std). A constant map gives 0.5.

    ``signed=True`` keeps 0 at exactly 0.5 by scaling with ``max|x|`` (per map, over all
    maps for ``"shared"``, ``max(|vmin|, |vmax|)`` for ``"absolute"``): ``0.5 + 0.5 *
    x / max|x|``. Use it with a diverging colour map. Not allowed with ``"standardize"``,
    which already centres each map on its mean.

    ``clip_percentile=p`` (off by default) first clips values to the ``[p, 100 - p]``
    percentiles (per map for ``"per_map"``/``"standardize"``, over all maps otherwise),
    so a few extreme pixels do not wash out the rest.

    Constant maps never produce NaN: they give 0 (0.5 when ``signed``). Input must be
    finite. Returns a new float32 array of the input's shape.
    """
    x = _to_numpy(maps)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected a map (H, W) or maps (N, H, W), got {tuple(x.shape)}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("expected finite values, got NaN or inf in the map")
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(NORMALIZE_MODES)}")
    if mode != "absolute" and (vmin is not None or vmax is not None):
        raise ValueError(f"vmin/vmax are only used with mode='absolute', got mode={mode!r}")
    if mode == "standardize" and signed:
        raise ValueError("signed=True cannot be combined with mode='standardize'")

    axes: tuple[int, int] | None = (-2, -1) if mode in ("per_map", "standardize") else None
    if clip_percentile is not None:
        p = float(clip_percentile)
        if not 0.0 <= p < 50.0:
            raise ValueError(f"expected clip_percentile in [0, 50), got {clip_percentile!r}")
        lo = np.percentile(x, p, axis=axes, keepdims=True)
        hi = np.percentile(x, 100.0 - p, axis=axes, keepdims=True)
        x = np.clip(x, lo, hi)

    if mode == "standardize":
        mean = x.mean(axis=axes, keepdims=True)
        std = x.std(axis=axes, keepdims=True)
        z = (x - mean) / np.where(std > 0, std, 1.0)
        out = np.where(std > 0, np.clip(z * 64.0 + 128.0, 0.0, 255.0) / 255.0, 0.5)
    elif mode == "absolute":
        if vmin is None or vmax is None:
            raise ValueError(f"mode='absolute' needs vmin and vmax, got {vmin=}, {vmax=}")
        if signed:
            scale = max(abs(float(vmin)), abs(float(vmax)))
            if scale == 0:
                raise ValueError("signed mode='absolute' needs max(|vmin|, |vmax|) > 0")
            out = np.clip(0.5 + 0.5 * x / scale, 0.0, 1.0)
        else:
            if not float(vmax) > float(vmin):
                raise ValueError(f"expected vmax > vmin, got {vmin=}, {vmax=}")
            out = np.clip((x - vmin) / (float(vmax) - float(vmin)), 0.0, 1.0)
    elif signed:
        scale = np.abs(x).max(axis=axes, keepdims=True)
        out = np.where(scale > 0, 0.5 + 0.5 * x / np.where(scale > 0, scale, 1.0), 0.5)
    else:
        lo = x.min(axis=axes, keepdims=True)
        span = x.max(axis=axes, keepdims=True) - lo
        out = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0)
    return np.asarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- images


def to_pil(image: ImageLike) -> Image.Image:
    """Convert an image to PIL.

    Accepts a PIL image (returned unchanged), a :class:`Figure` (its picture with its colour
    bar, :meth:`Figure.framed`), or an
    array/tensor shaped ``(3, H, W)`` / ``(1, H, W)`` (channels first), ``(H, W, 3)`` /
    ``(H, W, 1)`` (channels last) or ``(H, W)`` (grey). Values are floats in ``[0, 1]``
    or integers in ``[0, 255]``. When both layouts fit (e.g. ``(3, 5, 3)``), tensors are
    read channels-first and numpy arrays channels-last. Returns mode ``"RGB"`` or ``"L"``.
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, Figure):
        return image.framed()
    from_torch = not isinstance(image, np.ndarray) and hasattr(image, "detach")
    x = _to_numpy(image)
    shape = tuple(x.shape)
    expected = "expected an image (3, H, W), (H, W, 3) or (H, W)"
    if x.ndim == 3:
        chw = x.shape[0] in (1, 3) and (x.shape[-1] not in (1, 3) or from_torch)
        if chw:
            x = np.moveaxis(x, 0, -1)
        elif x.shape[-1] not in (1, 3):
            raise ValueError(f"{expected}, got {shape}")
        if x.shape[-1] == 1:
            x = x[..., 0]
    elif x.ndim != 2:
        raise ValueError(f"{expected}, got {shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{expected} with H, W >= 1, got {shape}")

    if x.dtype == np.uint8:
        pixels = x
    elif x.dtype == np.bool_:
        pixels = x.astype(np.uint8) * 255
    elif np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise ValueError(
                f"expected integer pixel values in [0, 255], got [{x.min()}, {x.max()}]"
            )
        pixels = x.astype(np.uint8)
    elif np.issubdtype(x.dtype, np.floating):
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"expected float pixel values in [0, 1], got [{lo:.4g}, {hi:.4g}]"
                " (normalise the image, or pass uint8)"
            )
        pixels = np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"expected a float or uint8 image, got dtype {x.dtype}")
    return Image.fromarray(np.ascontiguousarray(pixels))


def heatmap(
    map2d: MapLike,
    cmap: str | np.ndarray = "viridis",
    *,
    norm: NormalizeMode | str = "per_map",
    size: int | tuple[int, int] | None = None,
    resample: str | int = "bilinear",
    **normalize_kwargs: Any,
) -> Image.Image:
    """Colour a 2-D map ``(H, W)`` into an RGB PIL image.

    The map is normalised with :func:`normalize` (``mode=norm`` plus
    ``normalize_kwargs`` such as ``signed``, ``clip_percentile``, ``vmin``/``vmax``),
    then, if ``size=(W, H)`` is given, resized in value space (``resample="bilinear"``
    by default, smooth for display; pass ``resample="nearest"`` to keep the map's cells
    visible), then coloured with ``cmap`` (a name, see :func:`colormap`, or a (256, 3)
    uint8 table). Value 0 gets ``lut[0]``, value 1 gets ``lut[255]``.
    """
    m = _to_numpy(map2d)
    if m.ndim != 2:
        raise ValueError(f"expected a map (H, W), got {tuple(m.shape)}")
    lut = _lut(cmap)
    values = normalize(m, norm, **normalize_kwargs)
    target = _size_arg(size)
    if target is not None and target != (values.shape[1], values.shape[0]):
        resized = Image.fromarray(values).resize(target, _resample_arg(resample))
        values = np.asarray(resized, dtype=np.float32)
    return Image.fromarray(_apply_lut(values, lut))


def overlay(
    image: ImageLike,
    map2d: MapLike,
    *,
    alpha: float = 0.4,
    cmap: str | np.ndarray = "jet",
    norm: NormalizeMode | str = "per_map",
    resample: str | int = "bilinear",
    **normalize_kwargs: Any,
) -> Image.Image:
    """Blend a coloured map over an image: ``out = (1 - alpha) * image + alpha * colours``.

    ``image`` is anything :func:`to_pil` accepts (grey images are shown as RGB).
    ``map2d`` ``(h, w)`` is normalised (``norm``, ``normalize_kwargs``), resized to the
    image size in value space (bilinear by default; ``resample="nearest"`` keeps cells),
    coloured with ``cmap`` (jet by default, the Grad-CAM look of Selvaraju et al., 2017)
    and blended with ``alpha`` in ``[0, 1]`` (0 returns the image, 1 the coloured map).
    Returns an RGB PIL image of the image's size.
    """
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"expected alpha in [0, 1], got {alpha!r}")
    base = to_pil(image).convert("RGB")
    colours = heatmap(map2d, cmap, norm=norm, size=base.size, resample=resample, **normalize_kwargs)
    img = np.asarray(base, dtype=np.float64)
    col = np.asarray(colours, dtype=np.float64)
    out = np.rint((1.0 - a) * img + a * col)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- text and grids


# Distinct colours for categories (classes, concepts): tab10's order.
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
    (188, 189, 34),
    (127, 127, 127),
]


def _font(size: int) -> Font:
    """PIL's built-in font at ``size`` pixels (bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _text_height(font: Font) -> int:
    return math.ceil(font.getbbox("Ag|")[3])


def _fit(text: str, font: Font, width: float) -> str:
    """Shorten ``text`` with an ellipsis so that it fits in ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…" if text else ""


def _rgb(colour: tuple[int, int, int] | Sequence[int]) -> tuple[int, int, int]:
    if len(colour) != 3:
        raise ValueError(f"expected an RGB colour (r, g, b), got {colour!r}")
    return int(colour[0]), int(colour[1]), int(colour[2])


def grid(
    tiles: Sequence[ImageLike],
    *,
    ncols: int | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    pad: int = 2,
    tile_size: int | tuple[int, int] | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    font_size: int = 11,
    text_color: tuple[int, int, int] = (0, 0, 0),
    resample: str | int | None = None,
) -> Image.Image:
    """Tile images into one RGB picture, row by row.

    ``tiles`` are PIL images (or anything :func:`to_pil` accepts). With ``tile_size=(W,
    H)`` every tile is resized to it (``resample=None`` picks nearest when enlarging, so
    small maps stay crisp, and bilinear when shrinking). Each cell is as big as the
    largest tile (and at least as wide as the longest label, so no label is cut); smaller
    tiles are centred. ``ncols`` defaults to ``ceil(sqrt(n))``
    and is kept as given (empty cells stay background).

    Layout (pixels): ``title_h = text height + 2 * pad`` when ``title`` is given, else 0;
    ``label_h = text height + 2`` when ``labels`` are given, else 0. Tile ``i`` sits in
    cell ``(row, col) = divmod(i, ncols)`` whose top-left corner is
    ``(pad + col * (cell_w + pad), title_h + pad + row * (cell_h + label_h + pad))``;
    its label is centred in the ``label_h`` band right under the cell (shortened with
    "…" to the cell width). The title is centred at the top.
    """
    n = len(tiles)
    if n == 0:
        raise ValueError("expected at least one tile, got 0")
    if labels is not None and len(labels) != n:
        raise ValueError(f"expected {n} labels (one per tile), got {len(labels)}")
    cols = math.ceil(math.sqrt(n)) if ncols is None else int(ncols)
    if cols < 1:
        raise ValueError(f"expected ncols >= 1, got {ncols!r}")
    if pad < 0:
        raise ValueError(f"expected pad >= 0, got {pad!r}")
    bg = _rgb(background)
    fg = _rgb(text_color)
    target = _size_arg(tile_size, "tile_size")

    images: list[Image.Image] = []
    for tile in tiles:
        img = to_pil(tile)
        if img.mode != "RGB":
            img = img.convert("RGB")
        if target is not None and img.size != target:
            if resample is not None:
                method = _resample_arg(resample)
            elif target[0] >= img.width and target[1] >= img.height:
                method = Image.Resampling.NEAREST
            else:
                method = Image.Resampling.BILINEAR
            img = img.resize(target, method)
        images.append(img)

    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    rows = math.ceil(n / cols)
    font = _font(font_size) if labels is not None else None
    if labels is not None and font is not None:  # cells as wide as their labels: none is cut
        cell_w = max(cell_w, *(math.ceil(font.getlength(str(t))) + 2 for t in labels))
    title_font = _font(round(font_size * 1.4)) if title else None
    label_h = _text_height(font) + 2 if font is not None else 0
    title_h = _text_height(title_font) + 2 * pad if title_font is not None else 0

    width = pad + cols * (cell_w + pad)
    if title_font is not None and title:
        width = max(width, math.ceil(title_font.getlength(title)) + 2 * pad)
    height = title_h + pad + rows * (cell_h + label_h + pad)
    canvas = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(canvas)

    for i, img in enumerate(images):
        row, col = divmod(i, cols)
        x0 = pad + col * (cell_w + pad)
        y0 = title_h + pad + row * (cell_h + label_h + pad)
        canvas.paste(img, (x0 + (cell_w - img.width) // 2, y0 + (cell_h - img.height) // 2))
        if labels is not None and font is not None:
            text = _fit(str(labels[i]), font, cell_w)
            if text:
                tx = x0 + (cell_w - font.getlength(text)) / 2
                draw.text((tx, y0 + cell_h + 1), text, fill=fg, font=font)
    if title_font is not None and title:
        tx = (width - title_font.getlength(title)) / 2
        draw.text((tx, pad), title, fill=fg, font=title_font)
    return canvas


def colorbar(
    cmap: str | np.ndarray,
    vmin: float,
    vmax: float,
    *,
    width: int = 256,
    height: int = 36,
    label: str | None = None,
    font_size: int = 11,
    background: tuple[int, int, int] = (255, 255, 255),
    text_color: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """A horizontal colour bar ``width x height`` (RGB) stating the scale of a picture.

    The bar fills the top rows (column ``j`` has colour ``lut[round(j * 255 / (width -
    1))]``, so the first column is the colour of ``vmin``, the last that of ``vmax``);
    below it ``vmin`` is printed at the left, ``vmax`` at the right and ``label`` (if
    any) in the middle, numbers formatted with ``.3g``.
    """
    if width < 2:
        raise ValueError(f"expected width >= 2, got {width!r}")
    lut = _lut(cmap)
    font = _font(font_size)
    text_h = _text_height(font)
    bar_h = height - text_h - 2
    if bar_h < 2:
        raise ValueError(f"expected height >= {text_h + 4} to fit the numbers, got {height!r}")
    idx = np.rint(np.linspace(0, 255, width)).astype(np.intp)
    bar = np.broadcast_to(lut[idx][None], (bar_h, width, 3))
    canvas = Image.new("RGB", (width, height), _rgb(background))
    canvas.paste(Image.fromarray(np.ascontiguousarray(bar)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    fg = _rgb(text_color)
    y = bar_h + 1
    lo, hi = f"{vmin:.3g}", f"{vmax:.3g}"
    draw.text((0, y), lo, fill=fg, font=font)
    draw.text((width - font.getlength(hi), y), hi, fill=fg, font=font)
    if label:
        room = width - font.getlength(lo) - font.getlength(hi) - 8
        text = _fit(label, font, max(room, 0))
        if text:
            draw.text(((width - font.getlength(text)) / 2, y), text, fill=fg, font=font)
    return canvas


# --------------------------------------------------------------------------- output


def png_bytes(img: ImageLike) -> bytes:
    """PNG-encoded bytes of an image (anything :func:`to_pil` accepts)."""
    buf = io.BytesIO()
    to_pil(img).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(img: ImageLike) -> str:
    """``"data:image/png;base64,..."`` for embedding an image in HTML without a file."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")


@functools.cache
def _umask() -> int:
    """The process's umask (read once: setting it is the only way to read it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: parent folders are created, the bytes go to
    a temporary file in the same folder which then replaces ``path`` (``os.replace``),
    so readers never see a half-written file and no temporary file is left behind.
    Returns the path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: give the usual file mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def save_png(img: ImageLike, path: str | os.PathLike[str]) -> Path:
    """Save an image as PNG at ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, png_bytes(img))


@dataclass(frozen=True)
class Scale:
    """How a map's values became colours: ``cmap`` runs from ``vmin`` to ``vmax`` (the map's
    own units; values outside are clipped); ``note`` says what else to read beside it, such as
    the target's score."""

    cmap: str
    vmin: float
    vmax: float
    note: str = ""

    def bar(self, width: int) -> Image.Image:
        """The colour bar (:func:`colorbar`), at least 160 pixels wide so the numbers fit."""
        return colorbar(self.cmap, self.vmin, self.vmax, width=max(width, 160), label=self.note)


class Figure:
    """A rendered picture with an optional caption and colour scale; displays inline in
    notebooks.

    ``image`` is an RGB or grey PIL image, the picture alone; ``framed()`` adds the colour bar
    of ``scale`` below it (what ``save``, the notebook display and the reports show).
    ``to_numpy()`` returns ``image`` as ``(H, W, 3)`` (or ``(H, W)``) uint8.
    """

    def __init__(
        self, image: ImageLike, caption: str | None = None, scale: Scale | None = None
    ) -> None:
        self.image: Image.Image = to_pil(image)
        self.caption = caption
        self.scale = scale

    def framed(self) -> Image.Image:
        """The picture with its colour bar centred below it (the picture alone without a
        scale)."""
        if self.scale is None:
            return self.image
        bar = self.scale.bar(self.image.width)
        (w, h), width = self.image.size, max(self.image.width, bar.width)
        canvas = Image.new("RGB", (width, h + 4 + bar.height), (255, 255, 255))
        canvas.paste(self.image.convert("RGB"), ((width - w) // 2, 0))
        canvas.paste(bar, ((width - bar.width) // 2, h + 4))
        return canvas

    def __repr__(self) -> str:
        w, h = self.image.size
        cap = f", caption={self.caption!r}" if self.caption else ""
        return f"Figure({w}x{h} {self.image.mode}{cap})"

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.image.size

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save as PNG, with the colour bar (atomic write, parent folders created); returns
        the path."""
        return save_png(self.framed(), path)

    def to_numpy(self) -> np.ndarray:
        """Pixels as a new uint8 array ``(H, W, 3)`` (``(H, W)`` for grey images)."""
        return np.array(self.image)

    def to_pil(self) -> Image.Image:
        """The PIL image."""
        return self.image

    def _repr_png_(self) -> bytes:
        return png_bytes(self.framed())

    def _repr_html_(self) -> str:
        cap = html.escape(self.caption or "")
        img = f'<img src="{data_uri(self.framed())}" alt="{cap}" style="max-width:100%">'
        if not self.caption:
            return img
        return f"<figure>{img}<figcaption>{cap}</figcaption></figure>"
