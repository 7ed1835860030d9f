"""Concept sets for TCAV: colour and texture concept pictures and random counter-examples."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from convlens.data.toons.dataset import CONCEPTS, ToonsError
from convlens.data.toons.draw import BACKGROUNDS, any_colour, background, random_shape, rgb
from convlens.data.toons.folders import write_folder
from convlens.data.toons.scenes import one_picture

# -- concept sets for TCAV ---------------------------------------------------------------------
_CONCEPT_HSV = {
    "red": (0.0, (0.65, 1.0), (0.55, 1.0)),
    "blue": (0.62, (0.6, 1.0), (0.45, 1.0)),
    "green": (0.33, (0.55, 1.0), (0.4, 0.95)),
    "yellow": (0.14, (0.65, 1.0), (0.8, 1.0)),
    "white": (None, (0.0, 0.06), (0.88, 1.0)),
    "black": (None, (0.0, 0.3), (0.0, 0.14)),
}


def _concept_colour(rng: np.random.Generator, name: str) -> np.ndarray:
    hue, (s0, s1), (v0, v1) = _CONCEPT_HSV[name]
    h = rng.uniform(0, 1) if hue is None else hue + rng.uniform(-0.03, 0.03)
    return np.array(rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1)), np.float32) / 255


def concept_image(name: str, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 picture of concept ``name`` (:data:`CONCEPTS`).

    Colours: a field of the colour with natural variation (shade, a soft gradient, blotches
    of a nearby shade, fine noise). ``stripes``: parallel bands of two random colours at a
    random angle and period. ``dots``: a jittered grid of discs on a random ground.
    """
    if name in _CONCEPT_HSV:
        base = _concept_colour(rng, name)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        theta = rng.uniform(0, 2 * math.pi)
        ramp = (xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta)
        img = base + ramp[..., None] * rng.uniform(0.0, 0.15)
        pic = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
        draw = ImageDraw.Draw(pic)
        for _ in range(int(rng.integers(2, 7))):
            red, green, blue = (int(c * 255) for c in _concept_colour(rng, name))
            random_shape(draw, rng, size, (red, green, blue), rng.uniform(0.1, 0.5))
        pic = pic.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
        out = np.asarray(pic, np.float32) / 255 + rng.normal(0, 0.02, (size, size, 3))
    elif name == "stripes":
        a, b = np.array(any_colour(rng)) / 255, np.array(any_colour(rng)) / 255
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(6, 20)
        t = (xx * math.cos(theta) + yy * math.sin(theta)) / period
        band = (np.floor(t) % 2)[..., None]
        out = a * band + b * (1 - band) + rng.normal(0, 0.02, (size, size, 3))
    elif name == "dots":
        ground = any_colour(rng)
        pic = Image.new("RGB", (size, size), ground)
        draw = ImageDraw.Draw(pic)
        step = rng.uniform(10, 22)
        radius = step * rng.uniform(0.18, 0.35)
        colour = any_colour(rng)
        for gy in np.arange(step / 2, size, step):
            for gx in np.arange(step / 2, size, step):
                x, y = gx + rng.normal(0, step * 0.08), gy + rng.normal(0, step * 0.08)
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        out = np.asarray(pic, np.float32) / 255 + rng.normal(0, 0.02, (size, size, 3))
    else:
        from convlens.core.naming import unknown

        raise unknown("concept", name, CONCEPTS)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def random_image(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A random counterexample: a background of any kind with clutter and distractors,
    and sometimes a crop of a toon (so random sets are not character-free)."""
    if rng.uniform() < 0.25:
        index = int(rng.integers(0, 1_000_000))
        pixels, *_ = one_picture(
            int(rng.integers(0, 2**31)), "clean", "train", index, index % 3, size
        )
        scale = rng.uniform(1.5, 3.0)
        crop = int(size / scale)
        x, y = (int(v) for v in rng.integers(0, size - crop + 1, 2))
        pic = Image.fromarray(pixels).crop((x, y, x + crop, y + crop)).resize((size, size))
        return np.asarray(pic, np.uint8).copy()
    kind = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
    img = background(rng, size, kind, float(rng.uniform(0.1, 0.9)))
    pic = Image.fromarray((img * 255 + 0.5).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for _ in range(int(rng.integers(0, 5))):
        random_shape(draw, rng, size, any_colour(rng), rng.uniform(0.08, 0.3))
    return np.asarray(pic, np.uint8).copy()


def concept_images(name: str, n: int, *, seed: int = 0, size: int = 128) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 pictures of concept ``name``, or of a random set when
    ``name`` is ``"random_<k>"`` (each ``k`` its own seeded stream)."""
    if n < 1:
        raise ToonsError(f"expected n >= 1 concept images, got {n}")
    if name.startswith("random_") and name[7:].isdigit():
        key = [int(seed), 101, int(name[7:])]
        return np.stack([random_image(np.random.default_rng([*key, i]), size) for i in range(n)])
    if name not in CONCEPTS:
        from convlens.core.naming import unknown

        raise unknown("concept", name, [*CONCEPTS, "random_<k>"])
    key = [int(seed), 100, CONCEPTS.index(name)]
    return np.stack([concept_image(name, np.random.default_rng([*key, i]), size) for i in range(n)])


def write_concepts(
    root: str | os.PathLike[str],
    *,
    n: int = 30,
    randoms: int = 10,
    concepts: Iterable[str] = CONCEPTS,
    seed: int = 0,
    size: int = 128,
    overwrite: bool = False,
) -> Path:
    """Write concept folders ``ROOT/<concept>/<i>.png`` and ``ROOT/random_0..randoms-1`` in
    the layout TCAV tools read; returns ``ROOT``. Written to a temporary folder first and
    moved into place, so an interrupted run leaves nothing half-written."""
    names = [*concepts, *(f"random_{k}" for k in range(randoms))]

    def fill(tmp: Path) -> None:
        for name in names:
            folder = tmp / name
            folder.mkdir(parents=True)
            for i, pixels in enumerate(concept_images(name, n, seed=seed, size=size)):
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        info = {"format": "convlens-concepts", "version": 1, "seed": seed, "size": size, "n": n}
        (tmp / "concepts.json").write_text(json.dumps({**info, "sets": names}, indent=1))

    return write_folder(Path(os.fspath(root)), fill, overwrite=overwrite)
