"""Write the bundled sample photos to ``src/convlens/data/samples/`` (dev-only, run once).

The photos come from scikit-image's ``skimage.data`` (installed in the dev environment; not
a runtime dependency of convlens). Each is saved as a JPEG of quality 90; a photo whose JPEG
would exceed ``MAX_BYTES`` is downscaled (Lanczos) until its shorter side is between 256 and
300 pixels and the file fits, never below 224 pixels.

Usage: ``.venv/bin/python tools/make_samples.py``
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "convlens" / "data" / "samples"
NAMES = ("chelsea", "coffee", "astronaut", "rocket")
MAX_BYTES = 60_000
QUALITY = 90
SHORT_SIDES = (300, 288, 272, 256, 240, 224)


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=QUALITY, optimize=True)
    return buffer.getvalue()


def resized(image: Image.Image, short_side: int) -> Image.Image:
    width, height = image.size
    scale = short_side / min(width, height)
    size = (round(width * scale), round(height * scale))
    return image.resize(size, Image.Resampling.LANCZOS)


def fit(image: Image.Image) -> bytes:
    """JPEG bytes of ``image``, downscaled only as far as needed to fit ``MAX_BYTES``."""
    encoded = encode(image)
    if len(encoded) <= MAX_BYTES:
        return encoded
    for short_side in SHORT_SIDES:
        if short_side < min(image.size):
            encoded = encode(resized(image, short_side))
            if len(encoded) <= MAX_BYTES:
                return encoded
    raise SystemExit(f"cannot fit the image under {MAX_BYTES} bytes at >= 224 px")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        encoded = fit(image)
        (OUT / f"{name}.jpg").write_bytes(encoded)
        size = Image.open(io.BytesIO(encoded)).size
        print(f"{name}.jpg: {size[0]}x{size[1]}, {len(encoded):,} bytes")


if __name__ == "__main__":
    main()
