"""Drawing the toons: colours, shapes, a character with its part masks, backgrounds and
distractors."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from convlens.data.toons.dataset import CLASSES, HAIR_HUE, PARTS, Point, ToonsError


# -- colour helpers --------------------------------------------------------------------------
def rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def hair_colour(rng: np.random.Generator, cls: str) -> tuple[int, int, int]:
    """A natural variation of class ``cls``'s hair colour."""
    hue = HAIR_HUE[cls] + rng.uniform(-0.025, 0.025)
    return rgb(hue, rng.uniform(0.65, 0.95), rng.uniform(0.7, 0.98))


def _skin(rng: np.random.Generator) -> tuple[int, int, int]:
    tone = rng.uniform(0, 1)
    light, dark = np.array([250, 222, 196]), np.array([112, 72, 48])
    base = light * (1 - tone) + dark * tone + rng.normal(0, 6, 3)
    return tuple(int(c) for c in np.clip(base, 0, 255))  # type: ignore[return-value]


def _uniform(rng: np.random.Generator) -> tuple[int, int, int]:
    grey = rng.uniform(205, 250)
    tint = rng.normal(0, 4, 3)
    return tuple(int(c) for c in np.clip(grey + tint, 0, 255))  # type: ignore[return-value]


def any_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return rgb(rng.uniform(0, 1), rng.uniform(0.2, 1.0), rng.uniform(0.25, 1.0))


def luminance(img: np.ndarray) -> np.ndarray:
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
class Canvas:
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


def draw_character(
    canvas: Canvas,
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
        hat_colour = any_colour(rng)
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


def background(rng: np.random.Generator, size: int, kind: str, brightness: float) -> np.ndarray:
    """``(size, size, 3)`` float in [0, 1] with mean luminance close to ``brightness``."""
    if kind == "flat":
        img = np.broadcast_to(np.array(any_colour(rng), np.float32) / 255, (size, size, 3))
    elif kind == "gradient":
        a = np.array(any_colour(rng), np.float32) / 255
        b = np.array(any_colour(rng), np.float32) / 255
        theta = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
        t = (xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == "noise":
        cells = int(rng.integers(3, 9))
        coarse = rng.uniform(0, 1, (cells, cells, 3)).astype(np.float32)
        base = np.array(any_colour(rng), np.float32) / 255
        pic = Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BICUBIC
        )
        smooth = np.asarray(pic, np.float32) / 255
        img = 0.55 * base + 0.45 * smooth + rng.normal(0, 0.03, (size, size, 3))
    elif kind == "clutter":
        base = np.array(any_colour(rng), np.float32) / 255
        pic = Image.new("RGB", (size, size), tuple(int(c * 255) for c in base))
        draw = ImageDraw.Draw(pic)
        for _ in range(int(rng.integers(8, 20))):
            random_shape(draw, rng, size, any_colour(rng), rng.uniform(0.05, 0.22))
        img = np.asarray(pic, np.float32) / 255
    else:
        raise ToonsError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    img = np.asarray(img, np.float32)
    img = img + (brightness - float(luminance(img).mean()))
    return np.clip(img, 0, 1)


def random_shape(
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
