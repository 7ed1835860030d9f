"""Turn whatever the user has (files, uploads, arrays, tensors) into RGB images, safely.

Everything funnels into :func:`load_image`, which returns a ``PIL.Image.Image`` of mode
``"RGB"`` with EXIF orientation applied, or raises :class:`ImageError` with a message that
names the source, says what was expected and what came. Encoded images are checked against a
pixel cap (:data:`MAX_PIXELS`) from their header, before any pixel is decoded, so a
decompression bomb costs nothing.

:func:`to_tensor` turns the result into the ``(3, H, W)`` float32 tensor in ``[0, 1]`` that
models take (identical to ``torchvision.transforms.functional.to_tensor``).
"""

from __future__ import annotations

import difflib
import io
import os
import struct
import sys
import warnings
import zlib
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "ImageError",
    "ImageSource",
    "list_images",
    "load_image",
    "load_images",
    "sample",
    "samples",
    "to_tensor",
]

MAX_PIXELS = 50_000_000
"""Default cap on ``width * height`` (about 7000 x 7000); larger images are refused."""

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)
"""File suffixes (lower case) that :func:`list_images` treats as images."""

_WHITE = (255, 255, 255, 255)
_HEAD_BYTES = 16
# What PIL raises on broken data (besides OSError): plugins parse headers with struct and
# raise SyntaxError for malformed chunks; zlib errors can escape from PNG decoding.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    zlib.error,
)


class SupportsRead(Protocol):
    """A binary file-like object (an open file, ``io.BytesIO``, a web upload's stream)."""

    def read(self, size: int = -1, /) -> bytes: ...


ImageSource: TypeAlias = (
    "str | os.PathLike[str] | bytes | bytearray | memoryview | SupportsRead | Image.Image"
    " | np.ndarray | torch.Tensor"
)


class ImageError(ValueError):
    """An input that cannot be turned into an RGB image (corrupt, too large, wrong shape...)."""


# --------------------------------------------------------------------------------- loading


def load_image(source: ImageSource, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Load one image as a ``PIL.Image.Image`` of mode ``"RGB"``.

    Args:
        source: one of

            * a path (``str`` or ``os.PathLike``) to an image file;
            * encoded image data: ``bytes`` or a binary file-like object (web uploads);
            * a ``PIL.Image.Image`` of any mode (it is not modified; a new image is returned);
            * a numpy array of shape ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
              ``(H, W, 4)`` (channels last): ``uint8`` (or any integer type with values in
              ``[0, 255]``), or floating point with values in ``[0, 1]``;
            * a torch tensor of shape ``(H, W)``, ``(1, H, W)``, ``(3, H, W)`` or
              ``(4, H, W)`` (channels first), with the same dtype rules.

        max_pixels: refuse images with more than this many pixels (``width * height``). For
            files and encoded data the size is read from the header, before decoding. PIL's
            own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million
            pixels by default) also applies to encoded data and is reported as ImageError.

    Conversions: EXIF orientation is applied (``PIL.ImageOps.exif_transpose``); grey,
    black-and-white, palette, CMYK and YCbCr images are converted to RGB; 16-bit grey
    (modes ``"I;16*"`` and ``"I"``, taken as 0-65535) is scaled to 8 bits (``v / 257``,
    rounded); images with transparency (RGBA, LA, palette with a transparent colour, 4-channel
    arrays) are composited on a **white** background; animated images (GIF, APNG, WebP)
    give their first frame. Floats are mapped to ``uint8`` as ``round(v * 255)``.

    Returns:
        A new ``PIL.Image.Image`` of mode ``"RGB"``, size ``(W, H)``, values 0-255.

    Raises:
        ImageError: corrupt, truncated, empty or non-image data, a directory, too many pixels,
            zero-size images, wrong shapes or dtypes, NaN/inf or out-of-range values.
        FileNotFoundError: the path does not exist.
    """
    _check_max_pixels(max_pixels)
    return _load(source, None, max_pixels)


def _load(source: Any, name: str | None, max_pixels: int) -> Image.Image:
    """Dispatch on the type of ``source``; ``name`` (if given) labels in-memory sources."""
    torch_mod = sys.modules.get("torch")
    if isinstance(source, Image.Image):
        return _from_pil(source, name or "PIL image", max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, name or "array", max_pixels)
    if torch_mod is not None and isinstance(source, torch_mod.Tensor):
        return _from_tensor(source, name or "tensor", max_pixels)
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise ImageError(f"{source}: URLs are not fetched; download the image and pass its path")
    if isinstance(source, str | os.PathLike):
        return _from_path(Path(os.fspath(source)), max_pixels)
    if isinstance(source, bytes | bytearray | memoryview):
        return _from_bytes(bytes(source), name or "<bytes>", max_pixels)
    if hasattr(source, "read"):
        label = getattr(source, "name", None)
        label = str(label) if isinstance(label, str | os.PathLike) else "<file-like object>"
        data = source.read()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ImageError(
                f"{label}: expected a binary file-like object whose read() returns bytes, got "
                f"{type(data).__name__} (open the file in binary mode, 'rb')"
            )
        return _from_bytes(bytes(data), label, max_pixels)
    raise ImageError(
        "expected a path, bytes, a binary file-like object, a PIL image, a numpy array or a "
        f"torch tensor, got {type(source).__module__}.{type(source).__qualname__}"
    )


def _check_max_pixels(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")


def _check_size(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name} has zero size ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageError(
            f"{name} is {width}x{height} = {width * height:,} pixels, more than "
            f"max_pixels={max_pixels:,}; refused before decoding (possible decompression "
            "bomb). Pass a larger max_pixels= to allow it."
        )


def _from_path(path: Path, max_pixels: int) -> Image.Image:
    path = path.expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageError(
            f"{path} is a directory, expected an image file (use load_images() for folders)"
        )
    if not path.is_file():
        raise ImageError(f"{path} is not a regular file, expected an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes), expected an image file")
    with open(path, "rb") as fp:
        return _decode(fp, str(path), max_pixels)


def _from_bytes(data: bytes, name: str, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError(f"{name} is empty (0 bytes), expected encoded image data")
    return _decode(io.BytesIO(data), name, max_pixels)


def _first_bytes(fp: Any) -> bytes:
    try:
        fp.seek(0)
        return bytes(fp.read(_HEAD_BYTES))
    except (OSError, ValueError):
        return b""


def _not_readable_message(name: str, head: bytes) -> str:
    message = f"{name} is not an image PIL can read, or its header is corrupt"
    if b"ftypheic" in head or b"ftypheix" in head or b"ftypmif1" in head:
        message += " (it looks like HEIC/HEIF, which needs the pillow-heif plugin)"
    elif head.lstrip().startswith((b"<svg", b"<?xml")):
        message += " (it looks like SVG/XML; rasterise vector images first)"
    return f"{message} (first bytes: {head!r})"


def _decode(fp: Any, name: str, max_pixels: int) -> Image.Image:
    """Open encoded data, check its declared size, then decode it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{name} was refused by PIL's decompression-bomb check ({exc}); "
            "raise PIL.Image.MAX_IMAGE_PIXELS if you trust this file"
        ) from exc
    except UnidentifiedImageError:
        raise ImageError(_not_readable_message(name, _first_bytes(fp))) from None
    except _DECODE_ERRORS as exc:
        raise ImageError(
            f"{name} could not be opened as an image (corrupt or truncated header?): {exc}"
        ) from exc
    with image:
        _check_size(image.size, name, max_pixels)
        _load_pixels(image, name)
        rgb = _finish(image, name)
        # ``image`` is closed on leaving this block, so never hand it out.
        return image.copy() if rgb is image else rgb


def _load_pixels(image: Image.Image, name: str) -> None:
    """Decode ``image`` (the first frame for animations), turning failures into ImageError."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} was refused by PIL's decompression-bomb check ({exc})") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{name} is corrupt or truncated ({type(exc).__name__}: {exc})") from exc


def _finish(image: Image.Image, name: str) -> Image.Image:
    """Apply EXIF orientation, then convert to RGB. May return ``image`` itself."""
    try:
        oriented = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as exc:
        warnings.warn(
            f"{name}: could not apply its EXIF orientation ({exc}); using the stored one",
            RuntimeWarning,
            stacklevel=4,
        )
        oriented = image
    return _to_rgb(oriented, name)


def _from_pil(image: Image.Image, name: str, max_pixels: int) -> Image.Image:
    _check_size(image.size, name, max_pixels)
    _load_pixels(image, name)
    rgb = _finish(image, name)
    return image.copy() if rgb is image else rgb


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Convert a decoded PIL image of any mode to RGB (transparency on white)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        grey16 = np.asarray(image).astype(np.float64)
        lo, hi = float(grey16.min()), float(grey16.max())
        if lo < 0 or hi > 65535:
            raise ImageError(
                f"{name}: expected 16-bit values in [0, 65535] for a mode {mode!r} image, "
                f"found [{lo:g}, {hi:g}]"
            )
        grey8 = np.rint(grey16 / 257.0).astype(np.uint8)
        return Image.fromarray(grey8).convert("RGB")
    if mode == "F":
        return _array_to_rgb(np.asarray(image), name)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    try:
        if has_alpha:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, _WHITE)
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"{name}: cannot convert a mode {mode!r} image to RGB ({exc})") from exc


# ------------------------------------------------------------------------- arrays, tensors


def _from_array(array: np.ndarray, name: str, max_pixels: int) -> Image.Image:
    shape = tuple(array.shape)
    if array.ndim == 3 and shape[-1] not in (1, 3, 4) and shape[0] in (1, 3, 4):
        hint = "; channels first? use array.transpose(1, 2, 0)"
    elif array.ndim == 4:
        hint = "; a batch? load_images() splits (N, H, W, C) arrays"
    else:
        hint = ""
    if array.ndim not in (2, 3) or (array.ndim == 3 and shape[-1] not in (1, 3, 4)):
        raise ImageError(
            f"{name}: expected an image of shape (H, W) or (H, W, 1|3|4) (channels last), "
            f"got {shape}{hint}"
        )
    _check_size((shape[1], shape[0]), f"{name} of shape {shape}", max_pixels)
    return _array_to_rgb(array, name)


def _from_tensor(tensor: torch.Tensor, name: str, max_pixels: int) -> Image.Image:
    shape = tuple(tensor.shape)
    if tensor.ndim == 3 and shape[0] not in (1, 3, 4) and shape[-1] in (1, 3, 4):
        hint = "; channels last? use tensor.permute(2, 0, 1)"
    elif tensor.ndim == 4:
        hint = "; a batch? load_images() splits (N, C, H, W) tensors"
    else:
        hint = ""
    if tensor.ndim not in (2, 3) or (tensor.ndim == 3 and shape[0] not in (1, 3, 4)):
        raise ImageError(
            f"{name}: expected an image of shape (H, W) or (1|3|4, H, W) (channels first), "
            f"got {shape}{hint}"
        )
    _check_size((shape[-1], shape[-2]), f"{name} of shape {shape}", max_pixels)
    tensor = tensor.detach().cpu()
    if tensor.is_complex():
        raise ImageError(f"{name}: expected a real-valued tensor, got dtype {tensor.dtype}")
    if tensor.is_floating_point():
        tensor = tensor.double()  # bfloat16 has no numpy equivalent
    array = tensor.numpy()
    if array.ndim == 3:
        array = array.transpose(1, 2, 0)
    return _array_to_rgb(array, name)


def _array_to_rgb(array: np.ndarray, name: str) -> Image.Image:
    """``(H, W)`` or ``(H, W, 1|3|4)`` uint8 / int in [0, 255] / float in [0, 1] -> RGB."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.size == 0:
        raise ImageError(f"{name} has zero size (shape {tuple(array.shape)})")
    kind = array.dtype.kind
    if kind == "f":
        if not np.isfinite(array).all():
            raise ImageError(f"{name} contains NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageError(
                f"{name}: expected float values in [0, 1], found [{lo:.4g}, {hi:.4g}]"
                + ("; divide by 255 first?" if hi <= 255.0 and lo >= 0.0 else "")
            )
        array = np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    elif kind in "ui" and array.dtype != np.uint8:
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            raise ImageError(
                f"{name}: expected integer values in [0, 255] (dtype {array.dtype}), "
                f"found [{lo}, {hi}]; convert 16-bit data to uint8 or to floats in [0, 1]"
            )
        array = array.astype(np.uint8)
    elif kind != "u":
        raise ImageError(
            f"{name}: expected dtype uint8 or a floating type in [0, 1], got {array.dtype}"
        )
    image = Image.fromarray(np.ascontiguousarray(array))
    return _to_rgb(image, name)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a ``(3, H, W)`` float32 tensor with values in ``[0, 1]``.

    Computed as ``np.asarray(image, float32) / 255`` moved to channels first, which equals
    ``torchvision.transforms.functional.to_tensor`` bit for bit. Images that are not mode
    ``"RGB"`` go through :func:`load_image` first.
    """
    import torch

    if not isinstance(image, Image.Image):
        raise ImageError(
            f"expected a PIL image (see load_image), got {type(image).__module__}."
            f"{type(image).__qualname__}"
        )
    if image.mode != "RGB":
        image = load_image(image)
    array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


# ----------------------------------------------------------------------- folders, batches


def list_images(folder: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """Image files in ``folder``, sorted by path.

    Files are recognised by suffix (:data:`IMAGE_SUFFIXES`, case-insensitive); hidden files
    and folders (names starting with ``.``) are skipped. With ``recursive`` sub-folders are
    searched too.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ImageError: ``folder`` is not a directory, or holds no image files.
    """
    root = Path(os.fspath(folder)).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ImageError(f"{root} is not a folder, expected a folder of images")
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = sorted(
        path
        for path in candidates
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.is_file()
    )
    if not found:
        where = "or its sub-folders " if recursive else ""
        raise ImageError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {root} {where}".rstrip())
    return found


def load_images(
    sources: ImageSource | Sequence[ImageSource],
    *,
    max_pixels: int = MAX_PIXELS,
    recursive: bool = True,
) -> list[tuple[str, Image.Image]]:
    """Load one or many images, each with a display name.

    Args:
        sources: a single source (anything :func:`load_image` takes, or a folder), or a
            list/tuple of them. Folders are expanded with :func:`list_images` (``recursive``
            as given). A numpy array ``(N, H, W, C)`` or a torch tensor ``(N, C, H, W)``
            is split into ``N`` images.
        max_pixels: per-image pixel cap, as in :func:`load_image`.

    Returns:
        ``[(name, image), ...]`` in input order, images of mode ``"RGB"``. A file's name is its
        stem (a named file-like object's too); other sources are called ``"image0"``,
        ``"image1"``, ... in order. Repeated names get ``"_2"``, ``"_3"``, ... appended.

    Raises:
        ImageError: no sources, or any source that :func:`load_image` refuses (the message
            names it).
    """
    _check_max_pixels(max_pixels)
    items: list[Any] = list(sources) if isinstance(sources, list | tuple) else [sources]
    if not items:
        raise ImageError("expected at least one image source, got an empty list")
    torch_mod = sys.modules.get("torch")
    loaded: list[tuple[str, Image.Image]] = []
    unnamed = 0

    def next_name() -> str:
        nonlocal unnamed
        unnamed += 1
        return f"image{unnamed - 1}"

    for item in items:
        if isinstance(item, str | os.PathLike):
            path = Path(os.fspath(item)).expanduser()
            paths = list_images(path, recursive=recursive) if path.is_dir() else [path]
            loaded.extend((p.stem, load_image(p, max_pixels=max_pixels)) for p in paths)
        elif isinstance(item, np.ndarray) and item.ndim == 4:
            for member in _split_batch(item):
                name = next_name()
                loaded.append((name, _from_array(member, name, max_pixels)))
        elif torch_mod is not None and isinstance(item, torch_mod.Tensor) and item.ndim == 4:
            for member in _split_batch(item):
                name = next_name()
                loaded.append((name, _from_tensor(member, name, max_pixels)))
        else:
            label = getattr(item, "name", None) if hasattr(item, "read") else None
            stem = Path(os.fspath(label)).stem if isinstance(label, str | os.PathLike) else ""
            name = stem or next_name()
            loaded.append((name, _load(item, name, max_pixels)))
    return _unique_names(loaded)


def _split_batch(batch: Any) -> Iterable[Any]:
    if batch.shape[0] == 0:
        raise ImageError(f"got an empty batch of shape {tuple(batch.shape)}")
    return (batch[i] for i in range(batch.shape[0]))


def _unique_names(loaded: list[tuple[str, Image.Image]]) -> list[tuple[str, Image.Image]]:
    taken: set[str] = set()
    out: list[tuple[str, Image.Image]] = []
    for name, image in loaded:
        unique, count = name, 1
        while unique in taken:
            count += 1
            unique = f"{name}_{count}"
        taken.add(unique)
        out.append((unique, image))
    return out


# --------------------------------------------------------------------------- sample photos


def samples() -> dict[str, Path]:
    """The bundled sample photos, ``{name: path}`` sorted by name.

    Public-domain photos from scikit-image's ``skimage.data`` (see ``SOURCES.txt`` next to
    them): ``astronaut``, ``chelsea`` (a cat), ``coffee``, ``rocket``.
    """
    root = resources.files("convlens").joinpath("data", "samples")
    if not isinstance(root, Path):
        raise RuntimeError(
            "convlens sample photos need convlens installed as regular files (not zipped)"
        )
    return {
        path.stem: path
        for path in sorted(root.iterdir())
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    }


def sample(name: str) -> Path:
    """Path of the bundled sample photo ``name`` (see :func:`samples`).

    Raises:
        ValueError: unknown name; the message lists the names and suggests close matches.
    """
    available = samples()
    if name in available:
        return available[name]
    close = difflib.get_close_matches(str(name), list(available), n=3)
    suggestion = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown sample image {name!r}; available: {', '.join(available)}.{suggestion}"
    )
