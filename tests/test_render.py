"""Tests for convlens.render: numbers checked by hand, not only shapes."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.core import render
from convlens.core.render import (
    Figure,
    colorbar,
    colormap,
    data_uri,
    grid,
    heatmap,
    normalize,
    overlay,
    png_bytes,
    save_png,
    to_pil,
)

# --------------------------------------------------------------------------- normalize


def test_normalize_per_map_hand_values() -> None:
    out = normalize(np.array([[0.0, 1.0], [2.0, 4.0]]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.0, 0.25], [0.5, 1.0]])


def test_normalize_per_map_scales_each_map_alone() -> None:
    maps = np.array([[[0.0, 1.0], [2.0, 4.0]], [[10.0, 20.0], [30.0, 50.0]]])
    out = normalize(maps, "per_map")
    np.testing.assert_allclose(out[0], [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(out[1], [[0.0, 0.25], [0.5, 1.0]])


def test_normalize_shared_uses_one_range() -> None:
    maps = np.array([[[0.0, 1.0], [2.0, 4.0]], [[4.0, 6.0], [7.0, 8.0]]])
    out = normalize(maps, "shared")
    np.testing.assert_allclose(out[0], [[0.0, 0.125], [0.25, 0.5]])
    np.testing.assert_allclose(out[1], [[0.5, 0.75], [0.875, 1.0]])


def test_normalize_absolute_and_clipping() -> None:
    out = normalize(np.array([[-1.0, 0.0], [5.0, 20.0]]), "absolute", vmin=0.0, vmax=10.0)
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.5, 1.0]])


def test_normalize_signed_puts_zero_at_half() -> None:
    x = np.array([[-2.0, 0.0], [1.0, 4.0]])
    out = normalize(x, signed=True)
    assert out[0, 1] == 0.5
    np.testing.assert_allclose(out, [[0.25, 0.5], [0.625, 1.0]])
    # shared + signed: one max|x| over both maps
    maps = np.stack([x, x / 4])
    shared = normalize(maps, "shared", signed=True)
    np.testing.assert_allclose(shared[1], [[0.4375, 0.5], [0.53125, 0.625]])
    # absolute + signed: scale = max(|vmin|, |vmax|) = 8
    ab = normalize(x, "absolute", signed=True, vmin=-8, vmax=4)
    np.testing.assert_allclose(ab, [[0.375, 0.5], [0.5625, 0.75]])


def test_normalize_standardize_matches_chollet_formula() -> None:
    x = np.array([[[1.0, 2.0], [3.0, 10.0]], [[0.0, 0.0], [0.0, 1.0]]])
    out = normalize(x, "standardize")
    for i in range(2):
        m = x[i]
        expect = np.clip((m - m.mean()) / m.std() * 64 + 128, 0, 255) / 255
        np.testing.assert_allclose(out[i], expect, rtol=1e-6)
    # hand value for the first pixel: mean 4, std sqrt(12.5)
    assert out[0, 0, 0] == pytest.approx((128 - 3 / math.sqrt(12.5) * 64) / 255, rel=1e-6)


def test_normalize_standardize_clips_outliers() -> None:
    x = np.zeros((10, 10))
    x[0, 0] = 100.0  # z = 9.95 -> 64 * z + 128 > 255
    out = normalize(x, "standardize")
    assert out[0, 0] == 1.0
    assert out[5, 5] == pytest.approx((128 - 64 / math.sqrt(99)) / 255, rel=1e-6)


@pytest.mark.parametrize(
    ("mode", "kwargs", "expected"),
    [
        ("per_map", {}, 0.0),
        ("shared", {}, 0.0),
        ("standardize", {}, 0.5),
        ("per_map", {"signed": True}, 0.5),
        ("shared", {"signed": True}, 0.5),
    ],
)
def test_normalize_constant_maps_give_no_nan(mode: str, kwargs: dict, expected: float) -> None:
    values = (0.0, 3.0, -2.0) if not kwargs else (0.0,)
    for value in values:
        out = normalize(np.full((2, 3, 3), value), mode, **kwargs)
        assert not np.isnan(out).any()
        np.testing.assert_array_equal(out, expected)


def test_normalize_signed_constant_nonzero_keeps_sign() -> None:
    # signed keeps 0 at 0.5, so a constant non-zero map is fully positive / negative
    np.testing.assert_array_equal(normalize(np.full((3, 3), 3.0), signed=True), 1.0)
    np.testing.assert_array_equal(normalize(np.full((3, 3), -2.0), signed=True), 0.0)


def test_normalize_constant_map_beside_varying_map() -> None:
    maps = np.stack([np.full((2, 2), 7.0), np.array([[0.0, 1.0], [2.0, 4.0]])])
    out = normalize(maps, "per_map")
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_allclose(out[1], [[0.0, 0.25], [0.5, 1.0]])


def test_normalize_clip_percentile_exact() -> None:
    x = np.arange(11, dtype=float).reshape(1, 11)  # percentiles 10 and 90 are 1 and 9
    out = normalize(x, clip_percentile=10)
    expect = (np.clip(np.arange(11), 1, 9) - 1) / 8
    np.testing.assert_allclose(out[0], expect, rtol=1e-6)
    # an outlier no longer compresses the rest
    y = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1000.0]])
    clipped = normalize(y, clip_percentile=10)
    assert clipped[0, 5] == pytest.approx(0.5)
    assert clipped[0, 10] == 1.0


def test_normalize_accepts_torch_tensors() -> None:
    t = torch.tensor([[0.0, 1.0], [2.0, 4.0]], requires_grad=True) * 1
    np.testing.assert_array_equal(normalize(t), [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(normalize(t.to(torch.bfloat16)), [[0.0, 0.25], [0.5, 1.0]])


def test_normalize_errors() -> None:
    x = np.zeros((2, 2))
    with pytest.raises(ValueError, match="unknown mode 'bogus'"):
        normalize(x, "bogus")
    with pytest.raises(ValueError, match="needs vmin and vmax"):
        normalize(x, "absolute", vmin=0.0)
    with pytest.raises(ValueError, match="vmax > vmin"):
        normalize(x, "absolute", vmin=1.0, vmax=1.0)
    with pytest.raises(ValueError, match="only used with mode='absolute'"):
        normalize(x, "per_map", vmin=0.0, vmax=1.0)
    with pytest.raises(ValueError, match=r"\(H, W\) or maps \(N, H, W\), got \(2,\)"):
        normalize(np.zeros(2))
    with pytest.raises(ValueError, match="clip_percentile"):
        normalize(x, clip_percentile=50)
    with pytest.raises(ValueError, match="finite"):
        normalize(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="standardize"):
        normalize(x, "standardize", signed=True)


# --------------------------------------------------------------------------- colormap


@pytest.mark.parametrize("name", ["viridis", "magma", "jet", "coolwarm", "gray"])
def test_colormap_matches_matplotlib(name: str) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    lut = colormap(name)
    assert lut.shape == (256, 3)
    assert lut.dtype == np.uint8
    ref = matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255
    assert np.abs(lut.astype(float) - ref).max() <= 1.0


def test_colormap_known_colours() -> None:
    viridis = colormap()
    np.testing.assert_array_equal(viridis[0], [68, 1, 84])  # dark purple
    np.testing.assert_array_equal(viridis[255], [253, 231, 37])  # yellow
    jet = colormap("jet")
    r, g, b = jet[0]
    assert b > 100 and r == 0 and g == 0  # dark blue
    r, g, b = jet[255]
    assert r > 100 and g == 0 and b == 0  # dark red
    gray = colormap("grey")
    np.testing.assert_array_equal(gray[:, 0], np.arange(256))
    mid = colormap("diverging")[128].astype(int)
    assert abs(mid[0] - mid[2]) < 10 and mid.min() > 190  # neutral light grey at 0


def test_colormap_reverse_alias_and_copy() -> None:
    np.testing.assert_array_equal(colormap("magma_r"), colormap("magma")[::-1])
    np.testing.assert_array_equal(colormap("diverging"), colormap("coolwarm"))
    lut = colormap("viridis")
    lut[:] = 0  # callers get a copy, the cached table is untouched
    assert colormap("viridis")[255].max() > 0


def test_colormap_unknown_name_lists_names() -> None:
    with pytest.raises(ValueError, match=r"unknown colormap 'plasma'.*coolwarm.*viridis"):
        colormap("plasma")


# --------------------------------------------------------------------------- heatmap


def test_heatmap_extremes_get_first_and_last_colour() -> None:
    m = np.array([[3.0, 5.0], [7.0, 11.0]])
    for name in ("viridis", "jet", "magma"):
        img = heatmap(m, name)
        assert img.mode == "RGB" and img.size == (2, 2)
        px = np.asarray(img)
        lut = colormap(name)
        np.testing.assert_array_equal(px[0, 0], lut[0])
        np.testing.assert_array_equal(px[1, 1], lut[255])
        np.testing.assert_array_equal(px[0, 1], lut[64])  # (5 - 3) / 8 = 0.25 -> 63.75
        np.testing.assert_array_equal(px[1, 0], lut[128])  # 0.5 -> 127.5 rounds to 128


def test_heatmap_signed_zero_is_middle_colour() -> None:
    m = torch.tensor([[-1.0, 0.0], [0.5, 2.0]])
    px = np.asarray(heatmap(m, "diverging", signed=True))
    lut = colormap("coolwarm")
    np.testing.assert_array_equal(px[0, 1], lut[128])
    np.testing.assert_array_equal(px[1, 1], lut[255])
    np.testing.assert_array_equal(px[0, 0], lut[64])


def test_heatmap_resize_bilinear_and_nearest() -> None:
    m = np.array([[0.0, 1.0], [1.0, 0.0]])
    near = np.asarray(heatmap(m, "gray", size=(4, 4), resample="nearest"))
    np.testing.assert_array_equal(near[:, :, 0], np.kron(m, np.ones((2, 2))) * 255)
    smooth = heatmap(m, "gray", size=(8, 6))
    assert smooth.size == (8, 6)
    values = np.unique(np.asarray(smooth)[:, :, 0])
    assert len(values) > 2  # interpolated in between


def test_heatmap_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match=r"expected a map \(H, W\), got \(1, 2, 2\)"):
        heatmap(np.zeros((1, 2, 2)))


# --------------------------------------------------------------------------- overlay


def _tiny_image() -> np.ndarray:
    return np.array([[[10, 20, 30], [200, 100, 0]], [[255, 255, 255], [0, 0, 0]]], dtype=np.uint8)


def test_overlay_blend_arithmetic() -> None:
    image = _tiny_image()
    m = np.array([[0.0, 1.0], [2.0, 4.0]])
    colours = np.asarray(heatmap(m, "jet")).astype(float)
    np.testing.assert_array_equal(np.asarray(overlay(image, m, alpha=0.0)), image)
    np.testing.assert_array_equal(np.asarray(overlay(image, m, alpha=1.0)), colours)
    out = np.asarray(overlay(image, m, alpha=0.4)).astype(float)
    expect = 0.6 * image + 0.4 * colours
    assert np.abs(out - expect).max() <= 1.0


def test_overlay_resizes_map_to_image() -> None:
    image = np.full((3, 12, 16), 0.5, dtype=np.float32)  # CHW float
    m = torch.zeros(3, 4)
    m[0, 0] = 1.0
    out = overlay(image, m, alpha=1.0, cmap="gray")
    assert out.size == (16, 12)
    px = np.asarray(out)[:, :, 0]
    assert px[0, 0] > px[11, 15]  # the hot cell stays top-left
    assert px[11, 15] == 0


def test_overlay_bad_alpha() -> None:
    with pytest.raises(ValueError, match="alpha"):
        overlay(_tiny_image(), np.zeros((2, 2)), alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        overlay(_tiny_image(), np.zeros((2, 2)), alpha=-0.1)


# --------------------------------------------------------------------------- to_pil


def test_to_pil_layouts_are_equivalent() -> None:
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    ref = np.asarray(to_pil(hwc))
    np.testing.assert_array_equal(ref, hwc)
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    np.testing.assert_array_equal(np.asarray(to_pil(chw)), ref)
    np.testing.assert_array_equal(np.asarray(to_pil(torch.from_numpy(chw))), ref)
    as_float = hwc.astype(np.float32) / 255
    np.testing.assert_array_equal(np.asarray(to_pil(as_float)), ref)
    np.testing.assert_array_equal(np.asarray(to_pil(torch.from_numpy(chw) / 255.0)), ref)
    pil = Image.fromarray(hwc)
    assert to_pil(pil) is pil


def test_to_pil_grey() -> None:
    grey = np.array([[0.0, 0.5], [1.0, 0.25]])
    img = to_pil(grey)
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), [[0, 128], [255, 64]])
    np.testing.assert_array_equal(np.asarray(to_pil(grey[None])), np.asarray(img))
    np.testing.assert_array_equal(np.asarray(to_pil(grey[..., None])), np.asarray(img))


def test_to_pil_bad_inputs() -> None:
    with pytest.raises(ValueError) as err:
        to_pil(np.zeros((2, 5, 5, 5)))
    assert "expected an image (3, H, W), (H, W, 3) or (H, W), got (2, 5, 5, 5)" in str(err.value)
    with pytest.raises(ValueError, match=r"got \(5, 5, 4\)"):
        to_pil(np.zeros((5, 5, 4)))
    with pytest.raises(ValueError, match=r"float pixel values in \[0, 1\]"):
        to_pil(np.full((4, 4, 3), 255.0))


# --------------------------------------------------------------------------- grid


def _solid(colour: tuple[int, int, int], size: tuple[int, int] = (4, 3)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_grid_layout_offsets() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9), (90, 0, 90)]
    tiles = [_solid(c) for c in colours]  # 4 wide, 3 high
    img = grid(tiles, pad=2)
    ncols = 3  # ceil(sqrt(5))
    assert img.size == (2 + ncols * 6, 2 + 2 * 5)
    px = np.asarray(img)
    for i, c in enumerate(colours):
        row, col = divmod(i, ncols)
        x0, y0 = 2 + col * 6, 2 + row * 5
        np.testing.assert_array_equal(px[y0 : y0 + 3, x0 : x0 + 4], np.broadcast_to(c, (3, 4, 3)))
    # padding and the empty sixth cell keep the background
    assert (px[0] == 255).all() and (px[:, 0] == 255).all()
    assert (px[7:10, 14:18] == 255).all()


def test_grid_ncols_respected() -> None:
    tiles = [_solid((0, 0, 0), (2, 2)) for _ in range(5)]
    assert grid(tiles, ncols=5, pad=1).size == (1 + 5 * 3, 1 + 3)
    assert grid(tiles, ncols=1, pad=1).size == (1 + 3, 1 + 5 * 3)
    assert grid(tiles, ncols=2, pad=0).size == (4, 6)


def test_grid_labels_only_change_label_area() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
    tiles = [_solid(c, (40, 20)) for c in colours]
    plain = grid(tiles, ncols=2, pad=2)
    labelled = grid(tiles, ncols=2, pad=2, labels=["a", "b", "c", "ch 17"])
    px = np.asarray(labelled)
    label_h = labelled.height - plain.height
    assert label_h > 0 and label_h % 2 == 0  # one label band per row
    label_h //= 2
    inside_label = np.zeros(px.shape[:2], dtype=bool)
    for i, c in enumerate(colours):
        row, col = divmod(i, 2)
        x0, y0 = 2 + col * 42, 2 + row * (20 + label_h + 2)
        np.testing.assert_array_equal(
            px[y0 : y0 + 20, x0 : x0 + 40], np.broadcast_to(c, (20, 40, 3))
        )
        band = px[y0 + 20 : y0 + 20 + label_h, x0 : x0 + 40]
        assert (band != 255).any()  # some text was drawn
        inside_label[y0 + 20 : y0 + 20 + label_h, x0 : x0 + 40] = True
        inside_label[y0 : y0 + 20, x0 : x0 + 40] = True  # the tile itself
    assert (px[~inside_label] == 255).all()


def test_grid_title_and_tile_size() -> None:
    tiles = [np.eye(3, dtype=np.float32), np.zeros((3, 3), dtype=np.float32)]
    img = grid(tiles, tile_size=(9, 9), title="layer 4", pad=1)
    px = np.asarray(img)
    title_h = img.height - (1 + 9 + 1)
    assert title_h > 0
    assert (px[:title_h] != 255).any()  # the title is drawn
    tile = px[title_h + 1 : title_h + 10, 1:10, 0]
    np.testing.assert_array_equal(tile, np.kron(np.eye(3), np.ones((3, 3))) * 255)  # nearest


def test_grid_many_tiles() -> None:
    tiles = [heatmap(np.full((4, 4), i, dtype=np.float32)) for i in range(1280)]
    img = grid(tiles, pad=1)
    assert img.size == (1 + 36 * 5, 1 + 36 * 5)  # ceil(sqrt(1280)) = 36 columns and rows


def test_grid_errors() -> None:
    with pytest.raises(ValueError, match="at least one tile"):
        grid([])
    with pytest.raises(ValueError, match="expected 2 labels"):
        grid([_solid((0, 0, 0)), _solid((0, 0, 0))], labels=["x"])


# --------------------------------------------------------------------------- colorbar


def test_colorbar_colours_and_text() -> None:
    bar = colorbar("viridis", -1.5, 2.0, width=100, height=30)
    assert bar.size == (100, 30)
    px = np.asarray(bar)
    lut = colormap("viridis")
    np.testing.assert_array_equal(px[0, 0], lut[0])
    np.testing.assert_array_equal(px[0, 99], lut[255])
    assert (px[-12:] < 128).any()  # numbers printed under the bar


# --------------------------------------------------------------------------- output


def test_png_bytes_and_data_uri_roundtrip() -> None:
    img = _tiny_image()
    data = png_bytes(img)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), img)
    assert data_uri(img).startswith("data:image/png;base64,iVBORw0KGgo")


def test_save_png_atomic(tmp_path) -> None:
    target = tmp_path / "deep" / "er" / "map.png"
    out = save_png(_tiny_image(), target)
    assert out == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["map.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(target)), _tiny_image())
    save_png(np.zeros((2, 2), dtype=np.uint8), target)  # replace in place
    assert Image.open(target).mode == "L"
    assert sorted(p.name for p in target.parent.iterdir()) == ["map.png"]


def test_save_png_failure_leaves_nothing(tmp_path, monkeypatch) -> None:
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(render.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_png(_tiny_image(), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_figure_reprs(tmp_path) -> None:
    fig = Figure(_tiny_image(), caption="a <b> cat")
    data = fig._repr_png_()
    assert data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), fig.to_numpy())
    np.testing.assert_array_equal(fig.to_numpy(), _tiny_image())
    html = fig._repr_html_()
    assert 'src="data:image/png;base64,' in html
    assert "a &lt;b&gt; cat" in html and "<b>" not in html
    path = fig.save(tmp_path / "f.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), _tiny_image())
    assert to_pil(fig) is fig.image
