"""convlens.images: loading whatever the user has as RGB images, and refusing bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from convlens.core import images
from convlens.core.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageError,
    list_images,
    load_image,
    load_images,
    sample,
    samples,
    to_tensor,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def quadrants(width: int = 40, height: int = 20) -> np.ndarray:
    """(H, W, 3) uint8: red top-left, green top-right, blue bottom-left, white bottom-right."""
    array = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    array[:h, :w] = RED
    array[:h, w:] = GREEN
    array[h:, :w] = BLUE
    array[h:, w:] = WHITE
    return array


def png_declaring(width: int, height: int) -> bytes:
    """A tiny real 8x8 grey PNG whose IHDR is patched to declare ``width`` x ``height``."""
    data = bytearray(encoded(Image.new("L", (8, 8), 128), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def assert_close(image: Image.Image, xy: tuple[int, int], colour: tuple[int, ...], tol: int = 8):
    got = np.array(image.getpixel(xy), dtype=int)
    assert np.abs(got - np.array(colour)).max() <= tol, (xy, tuple(got), colour)


# ------------------------------------------------------------------------ decoding sources


def test_path_bytes_filelike_pil_all_give_the_same_pixels(tmp_path: Path):
    array = quadrants()
    path = tmp_path / "q.png"
    Image.fromarray(array).save(path)
    data = path.read_bytes()
    for source in (
        path,
        str(path),
        data,
        bytearray(data),
        io.BytesIO(data),
        Image.open(io.BytesIO(data)),
    ):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (40, 20)
        np.testing.assert_array_equal(np.asarray(image), array)
    with open(path, "rb") as fp:
        np.testing.assert_array_equal(np.asarray(load_image(fp)), array)


def test_user_pil_image_is_not_modified():
    original = Image.fromarray(quadrants()).convert("RGBA")
    before = original.tobytes()
    out = load_image(original)
    assert out is not original and original.mode == "RGBA" and original.tobytes() == before
    rgb = Image.fromarray(quadrants())
    assert load_image(rgb) is not rgb


def test_exif_orientation_6_rotates_clockwise(tmp_path: Path):
    stored = quadrants(40, 20)  # wide, red top-left, green top-right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(path.read_bytes())).size == (40, 20)
    image = load_image(path)
    assert image.size == (20, 40)  # tall now
    # Clockwise: the stored top-left (red) goes to the top-right, top-right (green) to the
    # bottom-right, bottom-left (blue) to the top-left.
    assert_close(image, (17, 2), RED)
    assert_close(image, (17, 37), GREEN)
    assert_close(image, (2, 2), BLUE)
    assert_close(image, (2, 37), WHITE)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = (255, 0, 0)
    rgba[:, :2, 3] = 255  # opaque red
    rgba[:, 2:4, 3] = 128  # half red over white
    rgba[:, 4:, 3] = 0  # fully transparent -> white
    for source in (rgba, Image.fromarray(rgba), encoded(Image.fromarray(rgba), "PNG")):
        out = np.asarray(load_image(source)).astype(int)
        np.testing.assert_array_equal(out[:, :2], np.broadcast_to(RED, (4, 2, 3)))
        np.testing.assert_allclose(out[:, 2:4], np.broadcast_to((255, 127, 127), (4, 2, 3)), atol=1)
        np.testing.assert_array_equal(out[:, 4:], np.broadcast_to(WHITE, (4, 2, 3)))


def test_la_and_transparent_palette_on_white():
    la = Image.fromarray(np.stack([np.full((3, 3), 0, np.uint8), np.zeros((3, 3), np.uint8)], -1))
    assert la.mode == "LA"
    np.testing.assert_array_equal(np.asarray(load_image(la)), np.full((3, 3, 3), 255))
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    gif = encoded(palette, "GIF", transparency=1)
    out = np.asarray(load_image(gif))
    assert tuple(out[0, 0]) == (0, 0, 0)  # opaque black
    assert tuple(out[3, 3]) == WHITE  # transparent red -> white


def test_grey_and_palette_to_rgb():
    grey = np.arange(0, 240, 20, dtype=np.uint8).reshape(3, 4)
    expected = np.repeat(grey[..., None], 3, axis=-1)
    for source in (
        grey,
        grey[..., None],
        Image.fromarray(grey),
        encoded(Image.fromarray(grey), "PNG"),
    ):
        np.testing.assert_array_equal(np.asarray(load_image(source)), expected)
    palette = Image.fromarray(quadrants()).quantize(colors=4)
    assert palette.mode == "P"
    np.testing.assert_array_equal(np.asarray(load_image(encoded(palette, "PNG"))), quadrants())
    bilevel = Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1")
    np.testing.assert_array_equal(np.asarray(load_image(bilevel)), [[[0, 0, 0], WHITE]])


def test_16bit_grey_png_scaled_to_8_bits():
    values = np.array([[0, 257 * 128, 65535], [257 * 10, 257 * 200 + 100, 1000]], np.uint16)
    data = encoded(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(load_image(data))
    expected = np.rint(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, -1))
    assert out[0].tolist() == [[0] * 3, [128] * 3, [255] * 3]
    wide = Image.fromarray(values.astype(np.int32))  # mode "I", as older Pillow reads 16-bit
    assert wide.mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(wide)), out)


def test_cmyk_jpeg_to_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in CMYK
    out = load_image(encoded(cmyk, "JPEG", quality=95))
    assert out.mode == "RGB"
    assert_close(out, (8, 8), RED)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE, GREEN)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    np.testing.assert_array_equal(np.asarray(load_image(data)), np.full((8, 8, 3), RED))


def test_float_array_matches_uint8_and_tensor_chw_matches_hwc():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    reference = np.asarray(load_image(u8))
    np.testing.assert_array_equal(reference, u8)
    as_float = u8.astype(np.float32) / 255
    np.testing.assert_array_equal(np.asarray(load_image(as_float)), u8)  # exact round trip
    noisy = np.clip(as_float + rng.uniform(-0.4, 0.4, u8.shape) / 255, 0, 1)
    assert np.abs(np.asarray(load_image(noisy)).astype(int) - u8).max() <= 1
    chw = torch.from_numpy(as_float).permute(2, 0, 1)
    np.testing.assert_array_equal(np.asarray(load_image(chw)), u8)
    np.testing.assert_array_equal(np.asarray(load_image(torch.from_numpy(u8).permute(2, 0, 1))), u8)
    np.testing.assert_array_equal(np.asarray(load_image(chw.double().requires_grad_())), u8)
    np.testing.assert_array_equal(np.asarray(load_image(chw.to(torch.bfloat16))).shape, u8.shape)
    grey = torch.from_numpy(as_float[..., 0])
    for source in (grey, grey[None]):
        np.testing.assert_array_equal(np.asarray(load_image(source))[..., 1], u8[..., 0])
    ints = u8.astype(np.int64)  # integer arrays in [0, 255] are accepted as is
    np.testing.assert_array_equal(np.asarray(load_image(ints)), u8)


def test_to_tensor_equals_torchvision_bit_for_bit():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    rng = np.random.default_rng(1)
    for image in (
        Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)),
        Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).convert("RGB"),
        load_image(sample("chelsea")),
    ):
        ours = to_tensor(image)
        theirs = tvf.to_tensor(image)
        assert ours.dtype == torch.float32 and ours.shape == (3, image.height, image.width)
        assert ours.is_contiguous()
        assert torch.equal(ours, theirs)
    expected = torch.tensor([1.0, 0.0, 0.2]).view(3, 1, 1)
    assert torch.equal(to_tensor(Image.new("RGB", (1, 1), (255, 0, 51))), expected)
    assert torch.equal(to_tensor(Image.new("L", (2, 2), 255)), torch.ones(3, 2, 2))
    with pytest.raises(ImageError, match="expected a PIL image"):
        to_tensor(np.zeros((2, 2, 3), np.uint8))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- bad inputs


def test_decompression_bomb_refused_before_decoding(tmp_path: Path, monkeypatch):
    decoded: list[object] = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self):
        decoded.append(self)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(8000, 8000))  # 64 M pixels > MAX_PIXELS, < PIL's limits
    assert Image.open(io.BytesIO(path.read_bytes())).size == (8000, 8000)
    with pytest.raises(ImageError, match=r"bomb\.png is 8000x8000 = 64,000,000 pixels.*max_pixels"):
        load_image(path)
    assert decoded == []
    with pytest.raises(ImageError, match="max_pixels=1,000"):
        load_image(path, max_pixels=1000)
    assert decoded == []
    # 20000 x 20000 = 400 M pixels: PIL's own bomb error, turned into ImageError.
    huge = png_declaring(20000, 20000)
    for cap in (MAX_PIXELS, 10**10):
        with pytest.raises(ImageError, match="decompression"):
            load_image(huge, max_pixels=cap)
    assert decoded == []
    load_image(encoded(Image.new("L", (8, 8)), "PNG"))
    assert decoded  # the spy does see decoding


def test_max_pixels_can_raise_and_lower_the_cap():
    data = encoded(Image.fromarray(quadrants(300, 200)), "PNG")
    assert load_image(data).size == (300, 200)
    with pytest.raises(ImageError, match="60,000 pixels, more than max_pixels=59,999"):
        load_image(data, max_pixels=59_999)
    assert load_image(data, max_pixels=60_000).size == (300, 200)
    with pytest.raises(ImageError, match="max_pixels"):
        load_image(np.zeros((300, 200), np.uint8), max_pixels=1000)
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        load_image(data, max_pixels=0)
    # Raising the cap lets a big declared size through to decoding (this one is truncated).
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(png_declaring(300, 400), max_pixels=200_000)


def test_pil_decompression_bomb_warning_becomes_image_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encoded(Image.new("RGB", (40, 40)), "PNG")  # 1600 > 1000: PIL warns
    with pytest.raises(ImageError, match="decompression-bomb"):
        load_image(data)


def test_truncated_and_corrupt_files(tmp_path: Path):
    rng = np.random.default_rng(2)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png")):
        data = encoded(noise, fmt)
        path = tmp_path / f"cut.{suffix}"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageError, match=rf"cut\.{suffix} is corrupt or truncated"):
            load_image(path)
    png = bytearray(encoded(noise, "PNG"))
    png[60:200] = bytes(140)  # wreck the compressed data
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(bytes(png))
    header_only = encoded(noise, "PNG")[:20]
    with pytest.raises(ImageError, match="could not be opened as an image"):
        load_image(header_only)


def test_empty_text_missing_and_directory(tmp_path: Path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg is empty \(0 bytes\)"):
        load_image(empty)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("hello, this is not a photo")
    with pytest.raises(ImageError, match=r"notes\.jpg is not an image PIL can read.*b'hello, this"):
        load_image(text)
    with pytest.raises(ImageError, match="<bytes> is not an image"):
        load_image(b"GIF89a-nope")
    with pytest.raises(ImageError, match="SVG"):
        load_image(b'<svg xmlns="http://www.w3.org/2000/svg"></svg>')
    with pytest.raises(FileNotFoundError, match=r"image file not found.*nothere\.png"):
        load_image(tmp_path / "nothere.png")
    with pytest.raises(ImageError, match="is a directory, expected an image file"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="URLs are not fetched"):
        load_image("https://example.com/cat.jpg")
    with pytest.raises(ImageError, match="binary mode"):
        load_image(io.StringIO("text"))  # type: ignore[arg-type]
    with pytest.raises(ImageError, match=r"expected a path, bytes.*got builtins\.int"):
        load_image(3)  # type: ignore[arg-type]


def test_bad_arrays_and_tensors():
    cases = [
        (np.zeros((2, 3, 4, 5)), r"expected an image of shape \(H, W\).*got \(2, 3, 4, 5\)"),
        (np.zeros((4, 4, 2)), r"got \(4, 4, 2\)"),
        (np.zeros((3, 8, 8)), r"channels first\? use array\.transpose"),
        (np.zeros(5), r"got \(5,\)"),
        (np.zeros((0, 5, 3)), "zero size"),
        (np.full((2, 2), 1.5), r"expected float values in \[0, 1\], found \[1\.5, 1\.5\]"),
        (np.full((2, 2), -0.25), r"found \[-0\.25, -0\.25\]"),
        (np.array([[0.0, np.nan]]), "NaN or infinite"),
        (np.array([[0.0, np.inf]]), "NaN or infinite"),
        (np.array([[0, 300]], np.uint16), r"integer values in \[0, 255\].*found \[0, 300\]"),
        (np.array([[True, False]]), "expected dtype uint8"),
        (torch.zeros(2, 3, 4, 5), r"got \(2, 3, 4, 5\).*load_images\(\) splits"),
        (torch.zeros(8, 8, 3), r"channels last\? use tensor\.permute"),
        (torch.full((3, 2, 2), 2.0), r"found \[2, 2\]"),
        (torch.tensor([[0.5, float("nan")]]), "NaN"),
        (torch.zeros(3, 0, 4), "zero size"),
    ]
    for source, pattern in cases:
        with pytest.raises(ImageError, match=pattern):
            load_image(source)
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 4)))


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


# ------------------------------------------------------------------------ folders, batches


def test_list_images_and_load_images_on_a_folder(tmp_path: Path):
    sub = tmp_path / "sub"
    sub.mkdir()
    hidden = tmp_path / ".cache"
    hidden.mkdir()
    Image.new("RGB", (5, 4), RED).save(tmp_path / "b.png")
    Image.new("RGB", (5, 4), GREEN).save(tmp_path / "A.JPG", quality=95)
    Image.new("L", (3, 3), 7).save(sub / "c.bmp")
    Image.new("RGB", (2, 2)).save(hidden / "skip.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "._apple_double.png")
    (tmp_path / "readme.txt").write_text("not an image")
    (tmp_path / "data.npy").write_bytes(b"\x93NUMPY")

    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == [
        "A.JPG",
        "b.png",
        "sub/c.bmp",
    ]
    assert [p.name for p in list_images(str(tmp_path), recursive=False)] == ["A.JPG", "b.png"]

    loaded = load_images(tmp_path)
    assert [name for name, _ in loaded] == ["A", "b", "c"]
    assert all(image.mode == "RGB" for _, image in loaded)
    assert_close(loaded[0][1], (2, 2), GREEN)
    assert loaded[1][1].getpixel((0, 0)) == RED
    assert loaded[2][1].getpixel((1, 1)) == (7, 7, 7)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match=r"no image files \(\.jpg, .*\) in .*empty"):
        list_images(empty)
    with pytest.raises(ImageError, match="not a folder"):
        list_images(tmp_path / "b.png")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_images(tmp_path / "missing")


def test_load_images_names_and_batches(tmp_path: Path):
    Image.new("RGB", (4, 4), BLUE).save(tmp_path / "cat.png")
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (4, 4), RED).save(other / "cat.png")
    rng = np.random.default_rng(3)
    batch_hwc = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    batch_chw = torch.rand(3, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    single = Image.new("RGB", (3, 3), GREEN)

    loaded = load_images(
        [tmp_path / "cat.png", batch_hwc, single, str(other / "cat.png"), batch_chw]
    )
    names = [name for name, _ in loaded]
    assert names == ["cat", "image0", "image1", "image2", "cat_2", "image3", "image4", "image5"]
    for k in range(2):
        np.testing.assert_array_equal(np.asarray(loaded[1 + k][1]), batch_hwc[k])
    assert loaded[3][1].getpixel((0, 0)) == GREEN
    assert loaded[4][1].getpixel((0, 0)) == RED
    for k in range(3):
        expected = np.rint(batch_chw[k].permute(1, 2, 0).double().numpy() * 255).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(loaded[5 + k][1]), expected)

    [(name, image)] = load_images(single)
    assert name == "image0" and image.getpixel((1, 1)) == GREEN
    with open(tmp_path / "cat.png", "rb") as fp:
        assert load_images(fp)[0][0] == "cat"
    assert [n for n, _ in load_images(rng.random((2, 3, 3)))] == ["image0"]  # (H, W, 3) = one image
    with pytest.raises(ImageError, match="at least one"):
        load_images([])
    with pytest.raises(ImageError, match="image1: expected float values"):
        load_images([single, np.full((2, 2), 3.0)])
    with pytest.raises(ImageError, match="empty batch"):
        load_images(np.zeros((0, 4, 4, 3), np.uint8))


# ------------------------------------------------------------------------- sample photos


def test_samples_are_real_rgb_photos():
    found = samples()
    assert sorted(found) == ["astronaut", "chelsea", "coffee", "rocket"]
    for name, path in found.items():
        assert path.suffix == ".jpg" and path.stat().st_size < 62_000
        assert sample(name) == path
        image = load_image(path)
        assert image.mode == "RGB" and min(image.size) >= 224
        pixels = np.asarray(image).astype(float)
        assert pixels.std() > 30  # a photo, not a flat placeholder
        assert np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 5  # in colour
    assert (found["chelsea"].parent / "SOURCES.txt").is_file()


def test_unknown_sample_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown sample image 'chelsa'.*astronaut, chelsea"):
        sample("chelsa")
    with pytest.raises(ValueError, match="Did you mean 'chelsea'"):
        sample("chelsa")


def test_suffixes_and_defaults():
    assert set(IMAGE_SUFFIXES) == {
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
    }
    assert MAX_PIXELS == images.MAX_PIXELS == 50_000_000
