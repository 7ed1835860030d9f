"""Toons: a procedural cartoon data set where we know where the evidence is.

Three characters wear the same uniform and differ only in their hair:

========== ====================================== =====================
class      hair shape                              hair colour
========== ====================================== =====================
``jessie`` long, falling behind the shoulders      red
``james``  short, a cap with a side fringe         blue
``cassidy`` two side buns with hanging curls       yellow
========== ====================================== =====================

Position, scale, a small rotation, skin tone, uniform shade, background (flat, gradient,
smooth noise, clutter of random shapes) and distractor objects (shapes in any colour, red,
blue and yellow included) vary at random, so the hair is the only reliable cue.

Every image comes with exact masks: :attr:`ToonSet.parts` holds one part id per pixel
(:data:`PARTS`: background, body, face, hair, hat, distractor), drawn with the same
polygons as the picture (no anti-aliasing), and :attr:`ToonSet.instances` says which
character (1, 2, ...) a pixel belongs to. Boxes are the visible extent of each character.

Variants (:data:`VARIANTS`):

``clean``
    one character per image; background brightness independent of the class.
``spurious``
    in the ``train`` and ``val`` splits the background brightness agrees with the class
    95 % of the time (dark for jessie, middle for james, bright for cassidy); in ``test``
    it is drawn independently, the camouflaged-tank story. The characters are smaller
    (35-60 % of the frame's height instead of 50-85 %), so the background is most of the
    picture and the shortcut is easier to learn than the hair.
``dyed``
    hair colours swapped round (:data:`DYED`: jessie's hair is blue, james's yellow,
    cassidy's red); labels stay.
``hat``
    the hair is hidden under a hat of random colour; labels stay.
``crowd``
    two or three characters per frame, a box for each (for detection).

Everything is deterministic from ``seed``: image ``i`` of a split is drawn from its own
random stream (seed, variant, split, i), so any subset can be regenerated on its own.

Written to disk (:func:`write`, CLI ``convlens toons make``) as an image-folder layout that
other tools read too::

    ROOT/index.json                      format, classes, parts, one record per image
    ROOT/<split>/<class>/<id>.png        pictures (crowd frames: ROOT/<split>/crowd/<id>.png)
    ROOT/masks/<split>/<id>.png          8-bit part ids
    ROOT/instances/<split>/<id>.png      8-bit character index (0 = none)

Concept sets for TCAV (:func:`write_concepts`): ``ROOT/<concept>/*.png`` for the colours
and textures in :data:`CONCEPTS` and ``ROOT/random_0 .. random_<N-1>`` of background and
clutter crops.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES: tuple[str, ...] = ("cassidy", "james", "jessie")
"""Class names in label order: sorted, as image-folder readers (``convlens train``,
torchvision's ``ImageFolder``) number class folders, so label ``k`` means the same class to
a :class:`ToonSet` and to a model trained on its folders."""

PARTS: dict[str, int] = {
    "background": 0,
    "body": 1,
    "face": 2,
    "hair": 3,
    "hat": 4,
    "distractor": 5,
}
"""Part ids in :attr:`ToonSet.parts` and in the written mask PNGs."""

CHARACTER_PARTS: tuple[str, ...] = ("body", "face", "hair", "hat")
"""The parts that make up a character (its pixels are the object, the rest is context)."""

VARIANTS: tuple[str, ...] = ("clean", "spurious", "dyed", "hat", "crowd")
SPLITS: tuple[str, ...] = ("train", "val", "test")

CONCEPTS: tuple[str, ...] = (
    "red",
    "blue",
    "green",
    "yellow",
    "white",
    "black",
    "stripes",
    "dots",
)
"""Concept sets :func:`concept_images` draws (colour patches and textures)."""

HAIR_HUE = {"jessie": 0.0, "james": 0.62, "cassidy": 0.14}
"""Centre hue (0-1) of each class's hair colour."""

DYED = {"jessie": "james", "james": "cassidy", "cassidy": "jessie"}
"""``dyed``: whose hair colour each class wears (jessie blue, james yellow, cassidy red)."""

SPURIOUS_BRIGHTNESS = {"jessie": 0.22, "james": 0.5, "cassidy": 0.78}
"""Mean background luminance each class's backgrounds get in ``spurious`` train/val."""

SPURIOUS_AGREEMENT = 0.95
_BRIGHTNESS_JITTER = 0.07
_MAX_SIZE = 4096

Point = tuple[float, float]


class ToonsError(ValueError):
    """Bad settings for the generator or a folder that is not a toons data set."""


# -- the in-memory data set ------------------------------------------------------------------
@dataclass
class ToonSet:
    """A batch of toons with their ground truth.

    Attributes:
        pixels: ``(N, H, W, 3)`` uint8 pictures (see :attr:`images` for model input).
        labels: ``(N,)`` int64 class index of the (first) character; in ``crowd`` frames
            see :attr:`boxes` for every character.
        parts: ``(N, H, W)`` uint8 part id per pixel (:data:`PARTS`).
        instances: ``(N, H, W)`` uint8 character index per pixel (0: no character).
        boxes: per image, a list of ``(class index, x0, y0, x1, y1)`` in pixels, ``x1``/``y1``
            exclusive (torchvision's box convention), one per visible character.
        meta: per image, what was drawn (background kind, brightness, variant, ...).
    """

    pixels: np.ndarray
    labels: np.ndarray
    parts: np.ndarray
    instances: np.ndarray
    boxes: list[list[tuple[int, float, float, float, float]]]
    meta: list[dict[str, Any]]
    classes: tuple[str, ...] = CLASSES
    variant: str = "clean"
    split: str = "train"
    seed: int = 0
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [f"{self.split}-{i:05d}" for i in range(len(self.labels))]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> ToonSet:
        if isinstance(index, int):
            index = [index]
        picked = np.arange(len(self))[index]
        return ToonSet(
            pixels=self.pixels[picked],
            labels=self.labels[picked],
            parts=self.parts[picked],
            instances=self.instances[picked],
            boxes=[self.boxes[i] for i in picked],
            meta=[self.meta[i] for i in picked],
            classes=self.classes,
            variant=self.variant,
            split=self.split,
            seed=self.seed,
            names=[self.names[i] for i in picked],
        )

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the pictures."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    @property
    def images(self) -> Any:
        """``(N, 3, H, W)`` float32 torch tensor in ``[0, 1]`` (made on each access)."""
        import torch

        return torch.from_numpy(self.pixels).permute(0, 3, 1, 2).float().div_(255)

    @property
    def label_names(self) -> list[str]:
        """The class name of each image (give these as ``target=``: a model may number its
        classes differently)."""
        return [self.classes[int(k)] for k in self.labels]

    @property
    def targets(self) -> Any:
        """``(N,)`` int64 torch tensor of :attr:`labels`."""
        import torch

        return torch.from_numpy(self.labels)

    def pil(self, i: int) -> Image.Image:
        """Picture ``i`` as a PIL image."""
        return Image.fromarray(self.pixels[i])

    def pictures(self) -> list[Image.Image]:
        return [self.pil(i) for i in range(len(self))]

    def mask(self, *names: str) -> Any:
        """``(N, H, W)`` bool torch tensor: pixels of any of the named parts.

        ``ts.mask("hair", "face")``; ``"object"`` or ``"character"`` means every character
        part (:data:`CHARACTER_PARTS`).
        """
        import torch

        if not names:
            raise ToonsError(f"name at least one part: {sorted(PARTS)} or 'object'")
        ids: set[int] = set()
        for name in names:
            if name in ("object", "character"):
                ids.update(PARTS[p] for p in CHARACTER_PARTS)
            elif name in PARTS:
                ids.add(PARTS[name])
            else:
                from convlens.naming import unknown

                raise unknown("part", name, [*PARTS, "object"])
        out = np.isin(self.parts, sorted(ids))
        return torch.from_numpy(out)

    def object_mask(self) -> Any:
        """``(N, H, W)`` bool: every pixel of every character."""
        return self.mask("object")

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, counts, strict=True)}


# -- colour helpers --------------------------------------------------------------------------
def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def hair_colour(rng: np.random.Generator, cls: str) -> tuple[int, int, int]:
    """A natural variation of class ``cls``'s hair colour."""
    hue = HAIR_HUE[cls] + rng.uniform(-0.025, 0.025)
    return _rgb(hue, rng.uniform(0.65, 0.95), rng.uniform(0.7, 0.98))


def _skin(rng: np.random.Generator) -> tuple[int, int, int]:
    tone = rng.uniform(0, 1)
    light, dark = np.array([250, 222, 196]), np.array([112, 72, 48])
    base = light * (1 - tone) + dark * tone + rng.normal(0, 6, 3)
    return tuple(int(c) for c in np.clip(base, 0, 255))  # type: ignore[return-value]


def _uniform(rng: np.random.Generator) -> tuple[int, int, int]:
    grey = rng.uniform(205, 250)
    tint = rng.normal(0, 4, 3)
    return tuple(int(c) for c in np.clip(grey + tint, 0, 255))  # type: ignore[return-value]


def _any_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return _rgb(rng.uniform(0, 1), rng.uniform(0.2, 1.0), rng.uniform(0.25, 1.0))


def _luminance(img: np.ndarray) -> np.ndarray:
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


# -- geometry ----------------------------------------------------------------------------------
def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> list[Point]:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return list(zip((cx + rx * np.cos(t)).tolist(), (cy + ry * np.sin(t)).tolist(), strict=True))


def _arc(
    cx: float, cy: float, rx: float, ry: float, start: float, stop: float, n: int = 16
) -> list[Point]:
    t = np.linspace(math.radians(start), math.radians(stop), n)
    return list(zip((cx + rx * np.cos(t)).tolist(), (cy + ry * np.sin(t)).tolist(), strict=True))


def _placer(cx: float, cy: float, scale: float, angle: float) -> Callable[[list[Point]], list]:
    """Local character coordinates (height 1, origin at the centre, y down) -> pixels."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))

    def place(points: list[Point]) -> list[tuple[float, float]]:
        return [(cx + scale * (x * c - y * s), cy + scale * (x * s + y * c)) for x, y in points]

    return place


# -- drawing a character ---------------------------------------------------------------------
_HEAD = (0.0, -0.17)
_FACE_R = (0.17, 0.19)  # big cartoon heads: the hair frames the face


def _hair_shapes(cls: str, flip: bool) -> tuple[list[list[Point]], list[list[Point]]]:
    """(behind-the-body shapes, in-front-of-the-face shapes) of class ``cls``'s hair."""
    hx, hy = _HEAD
    rx, ry = _FACE_R
    back: list[list[Point]] = []
    front: list[list[Point]] = []
    if cls == "jessie":  # long hair falling behind the head to the shoulders
        back.append(
            [
                *_arc(hx, hy, rx + 0.06, ry + 0.07, 180, 360),
                (hx + rx + 0.08, hy + 0.12),
                (hx + rx + 0.1, hy + 0.3),
                (hx + rx + 0.02, hy + 0.37),
                (hx + rx - 0.03, hy + 0.28),
                (hx - rx + 0.03, hy + 0.28),
                (hx - rx - 0.02, hy + 0.37),
                (hx - rx - 0.1, hy + 0.3),
                (hx - rx - 0.08, hy + 0.12),
            ]
        )
        front.append(
            [*_arc(hx, hy, rx + 0.015, ry + 0.02, 195, 345), (hx + 0.04, hy - 0.07), (hx, hy - 0.1)]
        )
    elif cls == "james":  # short: a cap over the skull and one fringe falling to the side
        front.append(
            [
                *_arc(hx, hy, rx + 0.03, ry + 0.04, 175, 365),
                (hx + rx + 0.02, hy - 0.02),
                (hx + 0.05, hy - 0.09),
                (hx - 0.04, hy - 0.05),
                (hx - rx + 0.01, hy + 0.02),
            ]
        )
    elif cls == "cassidy":  # two buns on the sides with curls hanging down
        for side in (-1, 1):
            back.append(_ellipse(hx + side * (rx + 0.04), hy - 0.12, 0.08, 0.08, 20))
            back.append(_ellipse(hx + side * (rx + 0.04), hy + 0.03, 0.04, 0.07, 16))
            back.append(_ellipse(hx + side * (rx + 0.03), hy + 0.15, 0.035, 0.05, 16))
        front.append([*_arc(hx, hy, rx + 0.02, ry + 0.03, 180, 360), (hx, hy - 0.06)])
    else:
        raise ToonsError(f"unknown class {cls!r}; expected one of {CLASSES}")
    if flip:
        back = [[(-x, y) for x, y in shape] for shape in back]
        front = [[(-x, y) for x, y in shape] for shape in front]
    return back, front


def _hat_shapes() -> list[list[Point]]:
    hx, hy = _HEAD
    rx, ry = _FACE_R
    crown = [*_arc(hx, hy - 0.03, rx + 0.02, ry + 0.09, 180, 360), (hx + rx + 0.02, hy - 0.03)]
    brim = [
        (hx - rx - 0.09, hy - 0.05),
        (hx + rx + 0.09, hy - 0.05),
        (hx + rx + 0.09, hy - 0.01),
        (hx - rx - 0.09, hy - 0.01),
    ]
    return [crown, brim]


_TORSO = [(-0.16, 0.04), (0.16, 0.04), (0.22, 0.5), (-0.22, 0.5)]
_COLLAR = [(-0.07, 0.04), (0.07, 0.04), (0.0, 0.14)]
_BELT = [(-0.2, 0.35), (0.2, 0.35), (0.206, 0.39), (-0.206, 0.39)]
_NECK = [(-0.045, -0.02), (0.045, -0.02), (0.05, 0.06), (-0.05, 0.06)]
CHARACTER_EXTENT = (-0.3, -0.45, 0.3, 0.5)
"""Local bounding box (x0, y0, x1, y1) of any character at height 1."""


@dataclass
class _Canvas:
    image: Image.Image
    parts: Image.Image
    instances: Image.Image

    def __post_init__(self) -> None:
        self.draw_image = ImageDraw.Draw(self.image)
        self.draw_parts = ImageDraw.Draw(self.parts)
        self.draw_instances = ImageDraw.Draw(self.instances)

    def polygon(self, points: list, colour: tuple[int, int, int], part: int, instance: int) -> None:
        self.draw_image.polygon(points, fill=colour)
        self.draw_parts.polygon(points, fill=part)
        self.draw_instances.polygon(points, fill=instance)


def _draw_character(
    canvas: _Canvas,
    rng: np.random.Generator,
    *,
    cls: str,
    hair_cls: str,
    hat: bool,
    cx: float,
    cy: float,
    scale: float,
    instance: int,
) -> dict[str, Any]:
    angle = rng.uniform(-15, 15)
    place = _placer(cx, cy, scale, angle)
    flip = bool(rng.integers(0, 2))
    hair = hair_colour(rng, hair_cls)
    skin = _skin(rng)
    suit = _uniform(rng)
    dark = (int(rng.integers(20, 60)),) * 3
    back, front = _hair_shapes(cls, flip)
    hair_id, body_id, face_id = PARTS["hair"], PARTS["body"], PARTS["face"]
    if not hat:
        for shape in back:
            canvas.polygon(place(shape), hair, hair_id, instance)
    canvas.polygon(place(_TORSO), suit, body_id, instance)
    canvas.polygon(place(_COLLAR), dark, body_id, instance)
    canvas.polygon(place(_BELT), dark, body_id, instance)
    canvas.polygon(place(_NECK), skin, face_id, instance)
    hx, hy = _HEAD
    canvas.polygon(place(_ellipse(hx, hy, *_FACE_R)), skin, face_id, instance)
    for side in (-1, 1):
        eye = _ellipse(hx + side * 0.065, hy + 0.01, 0.024, 0.032, 12)
        canvas.polygon(place(eye), (25, 25, 35), face_id, instance)
    mouth = [(hx - 0.045, hy + 0.1), (hx + 0.045, hy + 0.1), (hx, hy + 0.125)]
    canvas.polygon(place(mouth), (150, 40, 50), face_id, instance)
    if hat:
        hat_colour = _any_colour(rng)
        for shape in _hat_shapes():
            canvas.polygon(place(shape), hat_colour, PARTS["hat"], instance)
    else:
        for shape in front:
            canvas.polygon(place(shape), hair, hair_id, instance)
    return {
        "class": cls,
        "hair_colour_of": hair_cls,
        "hat": hat,
        "angle": round(float(angle), 2),
        "scale": round(float(scale), 2),
        "centre": [round(float(cx), 2), round(float(cy), 2)],
        "hair_rgb": list(hair),
    }


# -- backgrounds and distractors ---------------------------------------------------------------
BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "noise", "clutter")


def _background(rng: np.random.Generator, size: int, kind: str, brightness: float) -> np.ndarray:
    """``(size, size, 3)`` float in [0, 1] with mean luminance close to ``brightness``."""
    if kind == "flat":
        img = np.broadcast_to(np.array(_any_colour(rng), np.float32) / 255, (size, size, 3))
    elif kind == "gradient":
        a = np.array(_any_colour(rng), np.float32) / 255
        b = np.array(_any_colour(rng), np.float32) / 255
        theta = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
        t = (xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == "noise":
        cells = int(rng.integers(3, 9))
        coarse = rng.uniform(0, 1, (cells, cells, 3)).astype(np.float32)
        base = np.array(_any_colour(rng), np.float32) / 255
        pic = Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BICUBIC
        )
        smooth = np.asarray(pic, np.float32) / 255
        img = 0.55 * base + 0.45 * smooth + rng.normal(0, 0.03, (size, size, 3))
    elif kind == "clutter":
        base = np.array(_any_colour(rng), np.float32) / 255
        pic = Image.new("RGB", (size, size), tuple(int(c * 255) for c in base))
        draw = ImageDraw.Draw(pic)
        for _ in range(int(rng.integers(8, 20))):
            _random_shape(draw, rng, size, _any_colour(rng), rng.uniform(0.05, 0.22))
        img = np.asarray(pic, np.float32) / 255
    else:
        raise ToonsError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    img = np.asarray(img, np.float32)
    img = img + (brightness - float(_luminance(img).mean()))
    return np.clip(img, 0, 1)


def _random_shape(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    size: int,
    colour: tuple[int, int, int],
    rel: float,
    mask: ImageDraw.ImageDraw | None = None,
    mask_value: int = 0,
) -> None:
    r = rel * size / 2
    cx, cy = rng.uniform(0, size), rng.uniform(0, size)
    kind = int(rng.integers(0, 4))
    angle = rng.uniform(0, 2 * math.pi)
    if kind == 0:  # circle / ellipse
        points = _ellipse(cx, cy, r, r * rng.uniform(0.5, 1.0), 20)
    elif kind == 1:  # rectangle
        w, h = r, r * rng.uniform(0.4, 1.0)
        corners = [(-w, -h), (w, -h), (w, h), (-w, h)]
        points = [
            (
                cx + x * math.cos(angle) - y * math.sin(angle),
                cy + x * math.sin(angle) + y * math.cos(angle),
            )
            for x, y in corners
        ]
    elif kind == 2:  # triangle
        points = [
            (
                cx + r * math.cos(angle + k * 2 * math.pi / 3),
                cy + r * math.sin(angle + k * 2 * math.pi / 3),
            )
            for k in range(3)
        ]
    else:  # star
        points = [
            (
                cx + (r if k % 2 == 0 else r * 0.45) * math.cos(angle + k * math.pi / 5),
                cy + (r if k % 2 == 0 else r * 0.45) * math.sin(angle + k * math.pi / 5),
            )
            for k in range(10)
        ]
    draw.polygon(points, fill=colour)
    if mask is not None:
        mask.polygon(points, fill=mask_value)


# -- generation --------------------------------------------------------------------------------
def _stream(seed: int, variant: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(
        [int(seed), VARIANTS.index(variant), SPLITS.index(split), int(index)]
    )


def _labels(start: int, n: int, seed: int, variant: str, split: str, k: int) -> np.ndarray:
    """Labels of images ``start .. start + n - 1``: each block of ``k`` consecutive images
    holds every class once, in a seeded order, so any prefix is balanced (counts differ by
    at most one) and an image's label does not depend on how many are drawn."""
    first, last = start // k, (start + n - 1) // k
    blocks = [
        np.random.default_rng(
            [int(seed), VARIANTS.index(variant), SPLITS.index(split), 2**31, b]
        ).permutation(k)
        for b in range(first, last + 1)
    ]
    flat = np.concatenate(blocks).astype(np.int64)
    offset = start - first * k
    return flat[offset : offset + n]


def _brightness(rng: np.random.Generator, variant: str, split: str, cls: str) -> float:
    if variant != "spurious":
        return float(rng.uniform(0.12, 0.88))
    if split == "test" or rng.uniform() >= SPURIOUS_AGREEMENT:
        # test: independent of the class; train/val: the 5 % that disagree take another band
        others = list(CLASSES) if split == "test" else [c for c in CLASSES if c != cls]
        cls = others[int(rng.integers(0, len(others)))]
    return float(SPURIOUS_BRIGHTNESS[cls] + rng.uniform(-_BRIGHTNESS_JITTER, _BRIGHTNESS_JITTER))


def _one(
    seed: int, variant: str, split: str, index: int, label: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list, dict]:
    rng = _stream(seed, variant, split, index)
    cls = CLASSES[label]
    kind = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
    brightness = _brightness(rng, variant, split, cls)
    background = _background(rng, size, kind, brightness)
    image = Image.fromarray((background * 255 + 0.5).astype(np.uint8))
    canvas = _Canvas(image, Image.new("L", (size, size), 0), Image.new("L", (size, size), 0))
    n_distractors = int(rng.integers(0, 4))
    for _ in range(n_distractors):
        _random_shape(
            canvas.draw_image,
            rng,
            size,
            _any_colour(rng),
            rng.uniform(0.08, 0.2),
            mask=canvas.draw_parts,
            mask_value=PARTS["distractor"],
        )
    if variant == "crowd":
        count = int(rng.integers(2, 4))
        classes = [cls] + [CLASSES[int(rng.integers(0, len(CLASSES)))] for _ in range(count - 1)]
        placements = _crowd_places(rng, size, count)
    else:
        classes = [cls]
        low, high = (0.35, 0.6) if variant == "spurious" else (0.5, 0.85)
        scale = rng.uniform(low, high) * size
        x0, y0, x1, y1 = CHARACTER_EXTENT
        cx = rng.uniform(-x0 * scale, size - x1 * scale)
        cy = rng.uniform(-y0 * scale, max(size - y1 * scale, -y0 * scale))
        placements = [(cx, cy, scale)]
    characters = []
    for k, (c, (cx, cy, scale)) in enumerate(zip(classes, placements, strict=True), start=1):
        hair_cls = c
        if variant == "dyed":
            hair_cls = DYED[c]
        characters.append(
            _draw_character(
                canvas,
                rng,
                cls=c,
                hair_cls=hair_cls,
                hat=variant == "hat",
                cx=cx,
                cy=cy,
                scale=scale,
                instance=k,
            )
        )
    pixels = np.asarray(canvas.image, np.uint8).copy()
    parts = np.asarray(canvas.parts, np.uint8).copy()
    instances = np.asarray(canvas.instances, np.uint8).copy()
    boxes = []
    for k, c in enumerate(classes, start=1):
        ys, xs = np.nonzero(instances == k)
        if len(xs):
            boxes.append(
                (
                    CLASSES.index(c),
                    float(xs.min()),
                    float(ys.min()),
                    float(xs.max() + 1),
                    float(ys.max() + 1),
                )
            )
    meta = {
        "background": kind,
        "brightness": round(float(_luminance(background).mean()), 4),
        "distractors": n_distractors,
        "characters": characters,
    }
    return pixels, parts, instances, boxes, meta


def _crowd_places(
    rng: np.random.Generator, size: int, count: int
) -> list[tuple[float, float, float]]:
    """Up to ``count`` (cx, cy, scale) with little overlap between the characters' extents."""
    x0, y0, x1, y1 = CHARACTER_EXTENT
    places: list[tuple[float, float, float]] = []
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(count):
        for _attempt in range(60):
            scale = rng.uniform(0.3, 0.5) * size
            cx = rng.uniform(-x0 * scale, size - x1 * scale)
            cy = rng.uniform(-y0 * scale, max(size - y1 * scale, -y0 * scale))
            box = (cx + x0 * scale, cy + y0 * scale, cx + x1 * scale, cy + y1 * scale)
            if all(_iou(box, other) < 0.05 for other in boxes):
                break
        places.append((cx, cy, scale))
        boxes.append(box)
    return places


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _check(n: int, variant: str, split: str, size: int) -> None:
    if variant not in VARIANTS:
        from convlens.naming import unknown

        raise unknown("toons variant", variant, VARIANTS)
    if split not in SPLITS:
        from convlens.naming import unknown

        raise unknown("split", split, SPLITS)
    if not isinstance(n, int) or n < 1:
        raise ToonsError(f"expected n >= 1 images, got {n!r}")
    if not isinstance(size, int) or not 32 <= size <= _MAX_SIZE:
        raise ToonsError(f"expected size between 32 and {_MAX_SIZE} pixels, got {size!r}")


def generate(
    n: int,
    *,
    variant: str = "clean",
    split: str = "train",
    seed: int = 0,
    size: int = 128,
    start: int = 0,
) -> ToonSet:
    """Draw ``n`` toons of ``variant`` for ``split`` (see the module docstring).

    Images ``start .. start + n - 1`` of the split's stream: ``generate(10, start=5)`` equals
    ``generate(15)[5:]``. Labels are balanced: each run of three consecutive images of a
    stream holds each class once.
    """
    _check(n, variant, split, size)
    labels = _labels(start, n, seed, variant, split, len(CLASSES))
    pixels = np.empty((n, size, size, 3), np.uint8)
    parts = np.empty((n, size, size), np.uint8)
    instances = np.empty((n, size, size), np.uint8)
    boxes, meta = [], []
    for j, label in enumerate(labels):
        i = start + j
        p, m, inst, b, info = _one(seed, variant, split, i, int(label), size)
        pixels[j], parts[j], instances[j] = p, m, inst
        boxes.append(b)
        meta.append(info)
    return ToonSet(
        pixels=pixels,
        labels=labels,
        parts=parts,
        instances=instances,
        boxes=boxes,
        meta=meta,
        variant=variant,
        split=split,
        seed=seed,
        names=[f"{split}-{start + j:05d}" for j in range(n)],
    )


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
    return np.array(_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1)), np.float32) / 255


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
            _random_shape(draw, rng, size, (red, green, blue), rng.uniform(0.1, 0.5))
        pic = pic.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
        out = np.asarray(pic, np.float32) / 255 + rng.normal(0, 0.02, (size, size, 3))
    elif name == "stripes":
        a, b = np.array(_any_colour(rng)) / 255, np.array(_any_colour(rng)) / 255
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(6, 20)
        t = (xx * math.cos(theta) + yy * math.sin(theta)) / period
        band = (np.floor(t) % 2)[..., None]
        out = a * band + b * (1 - band) + rng.normal(0, 0.02, (size, size, 3))
    elif name == "dots":
        ground = _any_colour(rng)
        pic = Image.new("RGB", (size, size), ground)
        draw = ImageDraw.Draw(pic)
        step = rng.uniform(10, 22)
        radius = step * rng.uniform(0.18, 0.35)
        colour = _any_colour(rng)
        for gy in np.arange(step / 2, size, step):
            for gx in np.arange(step / 2, size, step):
                x, y = gx + rng.normal(0, step * 0.08), gy + rng.normal(0, step * 0.08)
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        out = np.asarray(pic, np.float32) / 255 + rng.normal(0, 0.02, (size, size, 3))
    else:
        from convlens.naming import unknown

        raise unknown("concept", name, CONCEPTS)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def random_image(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A random counterexample: a background of any kind with clutter and distractors,
    and sometimes a crop of a toon (so random sets are not character-free)."""
    if rng.uniform() < 0.25:
        index = int(rng.integers(0, 1_000_000))
        pixels, *_ = _one(int(rng.integers(0, 2**31)), "clean", "train", index, index % 3, size)
        scale = rng.uniform(1.5, 3.0)
        crop = int(size / scale)
        x, y = (int(v) for v in rng.integers(0, size - crop + 1, 2))
        pic = Image.fromarray(pixels).crop((x, y, x + crop, y + crop)).resize((size, size))
        return np.asarray(pic, np.uint8).copy()
    kind = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
    img = _background(rng, size, kind, float(rng.uniform(0.1, 0.9)))
    pic = Image.fromarray((img * 255 + 0.5).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for _ in range(int(rng.integers(0, 5))):
        _random_shape(draw, rng, size, _any_colour(rng), rng.uniform(0.08, 0.3))
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
        from convlens.naming import unknown

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

    return _write_folder(Path(os.fspath(root)), fill, overwrite=overwrite)


# -- folders -----------------------------------------------------------------------------------
FORMAT = "convlens-toons"


def _write_folder(root: Path, fill: Callable[[Path], None], *, overwrite: bool) -> Path:
    root = root.expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if not overwrite:
            raise ToonsError(
                f"{root} exists and is not empty; choose another folder or overwrite it "
                "(overwrite=True, CLI --overwrite)"
            )
        if (
            root.is_dir()
            and not (root / "index.json").exists()
            and not (root / "concepts.json").exists()
        ):
            raise ToonsError(f"{root} is not a folder convlens wrote; refusing to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        fill(tmp)
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
            os.replace(root, old / root.name)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def split_counts(n: int, fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> dict[str, int]:
    """``n`` images shared among train/val/test by ``fractions`` (zeros drop a split)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ToonsError(f"expected three non-negative split fractions, got {list(fractions)}")
    total = sum(fractions)
    counts = [int(n * f / total) for f in fractions]
    counts[0] += n - sum(counts)
    return {s: c for s, c in zip(SPLITS, counts, strict=True) if c > 0}


def write(
    root: str | os.PathLike[str],
    *,
    n: int = 5000,
    variant: str = "clean",
    seed: int = 0,
    size: int = 128,
    splits: Sequence[float] = (0.7, 0.15, 0.15),
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Generate ``n`` toons shared among the splits and write the folder layout described in
    the module docstring; returns ``ROOT``. ``progress(done, total)`` is called as images are
    written. The folder appears only when complete (written aside, then moved)."""
    counts = split_counts(n, splits)
    for split, count in counts.items():
        _check(count, variant, split, size)

    def fill(tmp: Path) -> None:
        records: list[dict[str, Any]] = []
        done = 0
        for split, count in counts.items():
            for start in range(0, count, 256):
                chunk = generate(
                    min(256, count - start),
                    variant=variant,
                    split=split,
                    seed=seed,
                    size=size,
                    start=start,
                )
                for j in range(len(chunk)):
                    i = start + j
                    cls = "crowd" if variant == "crowd" else CLASSES[int(chunk.labels[j])]
                    image = f"{split}/{cls}/{i:05d}.png"
                    mask = f"masks/{split}/{i:05d}.png"
                    instances = f"instances/{split}/{i:05d}.png"
                    for rel, array in (
                        (image, chunk.pixels[j]),
                        (mask, chunk.parts[j]),
                        (instances, chunk.instances[j]),
                    ):
                        path = tmp / rel
                        path.parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(array).save(path, compress_level=1)
                    records.append(
                        {
                            "image": image,
                            "mask": mask,
                            "instances": instances,
                            "split": split,
                            "index": i,
                            "label": CLASSES[int(chunk.labels[j])],
                            "boxes": [
                                {"label": CLASSES[b[0]], "box": list(b[1:])} for b in chunk.boxes[j]
                            ],
                            **chunk.meta[j],
                        }
                    )
                done += len(chunk)
                if progress is not None:
                    progress(done, n)
        index = {
            "format": FORMAT,
            "version": 1,
            "variant": variant,
            "seed": seed,
            "size": size,
            "classes": list(CLASSES),
            "parts": PARTS,
            "splits": counts,
            "items": records,
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=None))

    return _write_folder(Path(os.fspath(root)), fill, overwrite=overwrite)


def _box(values: Sequence[Any]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in values)
    return x0, y0, x1, y1


def read(
    root: str | os.PathLike[str], split: str | None = "test", *, limit: int | None = None
) -> ToonSet:
    """Read a folder written by :func:`write` back into a :class:`ToonSet` (pictures, masks,
    instances, boxes). ``split=None`` reads every split."""
    root = Path(os.fspath(root)).expanduser()
    index_path = root / "index.json"
    if not index_path.is_file():
        raise ToonsError(f"{root} is not a toons folder: expected {index_path.name} in it")
    try:
        index = json.loads(index_path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise ToonsError(f"{index_path} is not readable JSON: {err}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ToonsError(f"{index_path} is not a {FORMAT} index (format={index.get('format')!r})")
    classes = tuple(index["classes"])
    items = [r for r in index["items"] if split is None or r["split"] == split]
    if not items:
        available = sorted({r["split"] for r in index["items"]})
        raise ToonsError(f"{root} has no images in split {split!r}; it has {available}")
    items = items[:limit] if limit else items
    size = int(index["size"])
    n = len(items)
    pixels = np.empty((n, size, size, 3), np.uint8)
    parts = np.empty((n, size, size), np.uint8)
    instances = np.empty((n, size, size), np.uint8)
    for j, record in enumerate(items):
        for target, key, mode in (
            (pixels, "image", "RGB"),
            (parts, "mask", "L"),
            (instances, "instances", "L"),
        ):
            path = root / record[key]
            if not path.resolve().is_relative_to(root.resolve()):
                raise ToonsError(f"{index_path} points outside its folder: {record[key]!r}")
            with Image.open(path) as pic:
                array = np.asarray(pic.convert(mode))
            if array.shape[:2] != (size, size):
                raise ToonsError(
                    f"{path} is {array.shape[1]}x{array.shape[0]}, expected {size}x{size}"
                )
            target[j] = array
    return ToonSet(
        pixels=pixels,
        labels=np.array([classes.index(r["label"]) for r in items], np.int64),
        parts=parts,
        instances=instances,
        boxes=[[(classes.index(b["label"]), *_box(b["box"])) for b in r["boxes"]] for r in items],
        meta=[
            {k: v for k, v in r.items() if k not in ("image", "mask", "instances", "boxes")}
            for r in items
        ],
        classes=classes,
        variant=str(index.get("variant", "clean")),
        split=split or "all",
        seed=int(index.get("seed", 0)),
        names=[r["image"] for r in items],
    )
