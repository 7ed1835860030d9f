"""Generating toon pictures: one character (or a crowd) on a background, with exact part masks
and boxes, seeded per picture."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from convlens.data.toons.dataset import (
    BRIGHTNESS_JITTER,
    CLASSES,
    DYED,
    MAX_SIZE,
    PARTS,
    SPLITS,
    SPURIOUS_AGREEMENT,
    SPURIOUS_BRIGHTNESS,
    VARIANTS,
    ToonsError,
    ToonSet,
)
from convlens.data.toons.draw import (
    BACKGROUNDS,
    CHARACTER_EXTENT,
    Canvas,
    any_colour,
    background,
    draw_character,
    luminance,
    random_shape,
)


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
    return float(SPURIOUS_BRIGHTNESS[cls] + rng.uniform(-BRIGHTNESS_JITTER, BRIGHTNESS_JITTER))


def one_picture(
    seed: int, variant: str, split: str, index: int, label: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list, dict]:
    rng = _stream(seed, variant, split, index)
    cls = CLASSES[label]
    kind = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
    brightness = _brightness(rng, variant, split, cls)
    backdrop = background(rng, size, kind, brightness)
    image = Image.fromarray((backdrop * 255 + 0.5).astype(np.uint8))
    canvas = Canvas(image, Image.new("L", (size, size), 0), Image.new("L", (size, size), 0))
    n_distractors = int(rng.integers(0, 4))
    for _ in range(n_distractors):
        random_shape(
            canvas.draw_image,
            rng,
            size,
            any_colour(rng),
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
            draw_character(
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
        "brightness": round(float(luminance(backdrop).mean()), 4),
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


def check_settings(n: int, variant: str, split: str, size: int) -> None:
    if variant not in VARIANTS:
        from convlens.core.naming import unknown

        raise unknown("toons variant", variant, VARIANTS)
    if split not in SPLITS:
        from convlens.core.naming import unknown

        raise unknown("split", split, SPLITS)
    if not isinstance(n, int) or n < 1:
        raise ToonsError(f"expected n >= 1 images, got {n!r}")
    if not isinstance(size, int) or not 32 <= size <= MAX_SIZE:
        raise ToonsError(f"expected size between 32 and {MAX_SIZE} pixels, got {size!r}")


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
    check_settings(n, variant, split, size)
    labels = _labels(start, n, seed, variant, split, len(CLASSES))
    pixels = np.empty((n, size, size, 3), np.uint8)
    parts = np.empty((n, size, size), np.uint8)
    instances = np.empty((n, size, size), np.uint8)
    boxes, meta = [], []
    for j, label in enumerate(labels):
        i = start + j
        p, m, inst, b, info = one_picture(seed, variant, split, i, int(label), size)
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
