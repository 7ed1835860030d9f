"""Toons on disk: writing and reading data-set folders (``index.json``, class folders, masks),
and the detection views of them (pictures with boxes)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from convlens.data.toons.dataset import CLASSES, PARTS, SPLITS, ToonsError, ToonSet
from convlens.data.toons.scenes import check_settings, generate

# -- folders -----------------------------------------------------------------------------------
FORMAT = "convlens-toons"


def write_folder(root: Path, fill: Callable[[Path], None], *, overwrite: bool) -> Path:
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
        check_settings(count, variant, split, size)

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

    return write_folder(Path(os.fspath(root)), fill, overwrite=overwrite)


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


Frames = tuple[Any, list[list[tuple[int, float, float, float, float]]]]


def _boxed(data: ToonSet) -> Frames:
    """(N, 3, H, W) float pixels in [0, 1] and per-frame boxes ``(class, x0, y0, x1, y1)``."""
    import torch

    pixels = torch.as_tensor(np.asarray(data.pixels)).permute(0, 3, 1, 2).float() / 255
    boxes = [[(int(b[0]), *map(float, b[1:])) for b in frame] for frame in data.boxes]
    return pixels, boxes  # type: ignore[return-value]


def crowd_frames(n: int, *, split: str = "train", seed: int = 0, size: int = 128) -> Frames:
    """``crowd`` toon frames as (N, 3, size, size) pixels in [0, 1] and per-frame boxes."""
    return _boxed(generate(n, variant="crowd", split=split, seed=seed, size=size))


def read_boxes(folder: str | os.PathLike[str], split: str) -> tuple[Any, list, list[str]] | None:
    """Pictures (N, 3, H, W) in [0, 1], boxes and class names of one split of a toons-style
    folder (``index.json`` with boxes, as ``convlens toons make --variant crowd`` writes);
    ``None`` when the folder has no such split."""
    try:
        data = read(folder, split=split)
    except ToonsError as err:
        if "has no images in split" in str(err):
            return None
        raise ValueError(f"expected a detection data folder: {err}") from None
    pixels, boxes = _boxed(data)
    return pixels, boxes, list(data.classes)
