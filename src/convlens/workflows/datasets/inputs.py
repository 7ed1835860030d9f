"""What a data set run reads: sources listed into items (sorted by id), and each item loaded
into the picture the network sees (and its object mask, where there is one).

Sources (:func:`list_items`):

- a folder whose pictures all sit in sub-folders one level down: class folders, the label of
  a picture is its folder's name (torchvision's ``ImageFolder`` layout, ImageNet's val set);
- any other folder: every picture in it and below, no labels;
- a toons folder (``index.json``, see :func:`convlens.data.toons.write`): labels, part masks
  and boxes from its index (``split=`` picks one split);
- a ``.csv`` list (columns ``path`` and optionally ``label`` and ``mask``, with a header
  naming them, or in that order without one) or a ``.txt`` list (one path per line); relative
  paths are read from the list's folder; a mask is a picture whose non-zero pixels are the
  object;
- an uncompressed ``.tar`` of pictures, WebDataset style: the members ``KEY.jpg`` (or another
  picture suffix) and optionally ``KEY.cls`` / ``KEY.label`` (the label as text) or
  ``KEY.json`` (``{"label": ...}``) make one sample ``KEY``; members are read by offset, so
  the tar is never unpacked.

Items are only described here (a path, an offset, a label); nothing is decoded until an
engine's worker calls :class:`PictureLoader` on an item. A picture that cannot be read fails
there, alone, with the reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from convlens.core.images import IMAGE_SUFFIXES, MAX_PIXELS, ImageError, list_images, load_image
from convlens.core.model import Preprocessing

KINDS = ("class-folders", "folder", "toons", "list", "tar")
LIST_SUFFIXES = (".csv", ".txt", ".lst")
_LABEL_SUFFIXES = ("cls", "label", "class")


@dataclass(frozen=True)
class Item:
    """One picture of a data set, described, not read.

    ``id`` is unique and orders the run (a path relative to the folder, a tar key, a path as
    the list wrote it); ``path`` is the file to read, from ``offset`` for ``size`` bytes when
    it is a tar member (``offset`` -1: the whole file); ``label`` the class name (or index as
    text) the source gives; ``mask`` a mask picture (``mask_ids``: the pixel values that are
    the object, empty for "any non-zero value"); ``boxes`` the source's boxes as JSON;
    ``stamp`` the file's size and modification time (the run's listing identity).
    """

    id: str
    source: str
    path: str
    offset: int = -1
    size: int = -1
    label: str | None = None
    mask: str | None = None
    boxes: str | None = None
    stamp: str = ""


@dataclass
class Listing:
    """The items of a source, sorted by id, and what the source says about them."""

    kind: str
    root: str
    items: list[Item]
    classes: list[str] | None = None
    parts: dict[str, int] | None = None
    object_parts: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.items)

    def digest(self) -> str:
        """A hash of every item (id, source, label, mask, stamp): the input listing's identity."""
        h = hashlib.blake2b(digest_size=16)
        for item in self.items:
            h.update(_item_key(item).encode())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        labelled = sum(item.label is not None for item in self.items)
        return {
            "kind": self.kind,
            "root": self.root,
            "pictures": len(self.items),
            "labelled": labelled,
            "with_masks": sum(item.mask is not None for item in self.items),
            "classes": self.classes,
            "parts": self.parts,
            "object_parts": list(self.object_parts),
            "digest": self.digest(),
        }


def _item_key(item: Item) -> str:
    return f"{item.id}\0{item.source}\0{item.label}\0{item.mask}\0{item.stamp}\n"


def items_digest(items: Sequence[Item]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for item in items:
        h.update(_item_key(item).encode())
    return h.hexdigest()


def _stamp(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


# -- listing ------------------------------------------------------------------------------------


def list_items(
    source: Any, *, split: str | None = None, parts: Sequence[str] | None = None
) -> Listing:
    """The items of ``source`` (see the module docstring), sorted by id.

    ``split`` picks one split of a toons folder (default: all of them); ``parts`` the mask
    parts of a toons folder that make the object (default: the character, every part but
    background and distractor). Raises ``ValueError`` / ``FileNotFoundError`` saying what was
    expected when the source is none of the accepted kinds; single pictures that cannot be
    read are not an error here (they fail when loaded)."""
    if isinstance(source, Listing):
        return source
    if isinstance(source, (list, tuple)):
        return _from_paths([Path(os.fspath(p)) for p in source])
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            "expected a data set as a folder, a toons folder, a .csv/.txt list, a .tar or a "
            f"list of picture paths; got {type(source).__name__}"
        )
    path = Path(os.fspath(source)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data set not found: {path}")
    if split is not None and not (path / "index.json").is_file():
        raise ValueError(f"split={split!r} needs a toons folder (index.json); {path} is not one")
    if parts is not None and not (path / "index.json").is_file():
        raise ValueError(f"parts={list(parts)} needs a toons folder (part masks); {path} has none")
    if path.is_dir():
        if (path / "index.json").is_file():
            return _toons(path, split, parts)
        return _folder(path)
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")):
        raise ValueError(
            f"expected an uncompressed .tar (WebDataset shards are plain tars, read by offset), "
            f"got the compressed {path.name}; decompress it first"
        )
    if path.suffix.lower() == ".tar":
        return _tar(path)
    if path.suffix.lower() in LIST_SUFFIXES:
        return _list_file(path)
    raise ValueError(
        f"expected a folder of pictures, a toons folder, a {'/'.join(LIST_SUFFIXES)} list or a "
        f".tar; got the file {path.name}"
    )


def _checked_unique(items: list[Item], where: str) -> list[Item]:
    items = sorted(items, key=lambda item: item.id)
    repeated = [a.id for a, b in itertools.pairwise(items) if a.id == b.id]
    if repeated:
        shown = ", ".join(repr(r) for r in repeated[:5])
        raise ValueError(f"{where} names the same picture more than once: {shown}")
    if not items:
        raise ValueError(f"{where} holds no pictures")
    return items


def _folder(root: Path) -> Listing:
    files = list_images(root, recursive=True)
    rel = [p.relative_to(root) for p in files]
    class_folders = all(len(r.parts) == 2 for r in rel)
    items = [
        Item(
            id=r.as_posix(),
            source=str(p),
            path=str(p),
            label=r.parts[0] if class_folders else None,
            stamp=_stamp(p),
        )
        for p, r in zip(files, rel, strict=True)
    ]
    classes = sorted({r.parts[0] for r in rel}) if class_folders else None
    kind = "class-folders" if class_folders else "folder"
    return Listing(kind, str(root), _checked_unique(items, str(root)), classes)


def _from_paths(paths: list[Path]) -> Listing:
    items = [
        Item(id=str(p), source=str(p), path=str(p.expanduser()), stamp=_stamp(p.expanduser()))
        for p in paths
    ]
    return Listing("list", "", _checked_unique(items, "the list of paths"))


def _toons(root: Path, split: str | None, parts: Sequence[str] | None) -> Listing:
    from convlens.data.toons import CHARACTER_PARTS, FORMAT

    index_path = root / "index.json"
    try:
        index = json.loads(index_path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{index_path} is not readable JSON: {err}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{index_path} is not a {FORMAT} index (format={index.get('format')!r})")
    records = [r for r in index["items"] if split is None or r["split"] == split]
    if not records:
        available = sorted({r["split"] for r in index["items"]})
        raise ValueError(f"{root} has no pictures in split {split!r}; it has {available}")
    part_ids = {str(k): int(v) for k, v in index.get("parts", {}).items()}
    chosen = tuple(parts) if parts else tuple(p for p in CHARACTER_PARTS if p in part_ids)
    unknown = [p for p in chosen if p not in part_ids]
    if unknown:
        raise ValueError(f"expected parts among {', '.join(part_ids)}, got {unknown}")
    resolved = root.resolve()
    items = []
    for r in records:
        picture = root / r["image"]
        mask = root / r["mask"] if r.get("mask") else None
        for p in (picture, mask):
            if p is not None and not p.resolve().is_relative_to(resolved):
                raise ValueError(f"{index_path} points outside its folder: {p}")
        items.append(
            Item(
                id=str(r["image"]),
                source=str(picture),
                path=str(picture),
                label=r.get("label"),
                mask=str(mask) if mask is not None else None,
                boxes=json.dumps(r.get("boxes", [])),
                stamp=_stamp(picture),
            )
        )
    return Listing(
        "toons",
        str(root),
        _checked_unique(items, str(root)),
        [str(c) for c in index.get("classes", [])],
        part_ids,
        chosen,
    )


def _list_file(path: Path) -> Listing:
    base = path.parent
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable text list: {err}") from None
    rows: list[dict[str, str | None]] = []
    if path.suffix.lower() == ".csv":
        table = [
            row for row in csv.reader(io.StringIO(text)) if row and any(c.strip() for c in row)
        ]
        header = [c.strip().lower() for c in table[0]] if table else []
        if "path" in header:
            columns = header
            table = table[1:]
        else:
            columns = ["path", "label", "mask"][: max(len(r) for r in table)] if table else []
        if len(columns) > 3 and "path" not in header:
            raise ValueError(f"{path}: expected columns path[,label[,mask]], got {len(columns)}")
        for number, cells in enumerate(table, start=2 if "path" in header else 1):
            entry = {
                c: (cells[i].strip() or None) if i < len(cells) else None
                for i, c in enumerate(columns)
            }
            if not entry.get("path"):
                raise ValueError(f"{path}, line {number}: expected a picture path, got {cells}")
            rows.append(entry)
    else:
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append({"path": line})
    items = []
    for row in rows:
        written = str(row["path"])
        picture = Path(written).expanduser()
        picture = picture if picture.is_absolute() else base / picture
        mask = row.get("mask")
        mask_path = None
        if mask:
            mask_path = Path(mask).expanduser()
            mask_path = mask_path if mask_path.is_absolute() else base / mask_path
        items.append(
            Item(
                id=written,
                source=str(picture),
                path=str(picture),
                label=row.get("label"),
                mask=str(mask_path) if mask_path is not None else None,
                stamp=_stamp(picture),
            )
        )
    labels = sorted({i.label for i in items if i.label is not None})
    return Listing("list", str(path), _checked_unique(items, str(path)), labels or None)


def _tar(path: Path) -> Listing:
    try:
        archive = tarfile.open(path, "r:")  # noqa: SIM115  (closed by the with below)
    except tarfile.ReadError as err:
        raise ValueError(f"{path} is not an uncompressed tar archive: {err}") from None
    pictures: dict[str, tarfile.TarInfo] = {}
    labels: dict[str, str] = {}
    with archive:
        for member in archive:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            if not dot:
                continue
            key = f"{folder}/{stem}" if folder else stem
            ext = ext.lower()
            if "." + ext in IMAGE_SUFFIXES:
                if key in pictures:
                    raise ValueError(f"{path}: sample {key!r} has more than one picture")
                pictures[key] = member
            elif ext in _LABEL_SUFFIXES or ext == "json":
                labels[key] = _tar_label(archive, member, ext)
    items = [
        Item(
            id=key,
            source=f"{path}::{info.name}",
            path=str(path),
            offset=info.offset_data,
            size=info.size,
            label=labels.get(key) or None,
            stamp=f"{info.size}:{info.mtime}",
        )
        for key, info in pictures.items()
    ]
    classes = sorted({i.label for i in items if i.label is not None})
    return Listing("tar", str(path), _checked_unique(items, str(path)), classes or None)


def _tar_label(archive: tarfile.TarFile, member: tarfile.TarInfo, ext: str) -> str:
    handle = archive.extractfile(member)
    text = handle.read(1 << 16).decode("utf-8", "replace").strip() if handle else ""
    if ext != "json":
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return ""
    label = value.get("label") if isinstance(value, dict) else None
    return "" if label is None else str(label)


# -- labels in the model's numbering ------------------------------------------------------------


def label_indices(model: Any, listing: Listing) -> tuple[dict[str, int] | None, str]:
    """Each label of the listing as a class index of ``model``, and how they were matched:

    ``"names"`` when the model knows every label (any synonym, any case; or labels that are
    class indices written as numbers); ``"folder order"`` when it knows none of them and there
    are as many class folders as the model has classes (or the model has no names): the k-th
    label in sorted order is class k, as torchvision's ``ImageFolder`` numbers them (ImageNet's
    ``n01440764``-style folders); ``"none"`` when there are no labels, or they cannot be matched
    (targets then fall back to the top-1 class). A partial match is an error: either reading
    would be a guess."""
    names = sorted({i.label for i in listing.items if i.label is not None})
    if not names:
        return None, "none"
    if all(n.strip().lstrip("-").isdigit() for n in names):
        found = {n: model.class_index(int(n)) for n in names}
        return found, "names"
    labels = getattr(model, "labels", None)
    if labels is None:
        return {n: k for k, n in enumerate(names)}, "folder order"
    known: dict[str, int] = {}
    for name in names:
        try:
            known[name] = model.class_index(name)
        except ValueError:  # UnknownNameError and ambiguous names alike
            continue
    if len(known) == len(names):
        return known, "names"
    if not known:
        if listing.classes is not None and len(listing.classes) == len(labels):
            return {n: k for k, n in enumerate(sorted(listing.classes))}, "folder order"
        return None, "none"
    missing = [n for n in names if n not in known]
    shown = ", ".join(repr(n) for n in missing[:8]) + (" ..." if len(missing) > 8 else "")
    raise ValueError(
        f"the model knows only some of the data set's labels; unknown: {shown}. Rename them to "
        "the model's class names (or indices), or run without labels"
    )


# -- loading one item -------------------------------------------------------------------------


@dataclass
class Loaded:
    """One item as the model side needs it: ``picture`` (H, W, 3) uint8 as the network sees
    it (resized and cropped by the model's :class:`Preprocessing`; as decoded for a custom
    preprocess) and ``mask`` (H, W) bool (True on the object) at the same size, or ``None``."""

    item: Item
    picture: np.ndarray
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class PictureLoader:
    """Reads an :class:`Item` into a :class:`Loaded` (the engines' ``work.loader``).

    ``preprocess`` is the model's :class:`Preprocessing` (``None`` for a custom preprocess: the
    picture is kept as decoded, and masks cannot be aligned with it, so they are dropped);
    ``object_ids`` the part ids of a toons mask that are the object."""

    preprocess: Preprocessing | None
    object_ids: tuple[int, ...] = ()
    max_pixels: int = MAX_PIXELS

    def __call__(self, item: Item) -> Loaded:
        image = self.image(item)
        decoded_size = image.size
        if self.preprocess is not None:
            image = self.preprocess.picture(image)
        picture = np.asarray(image, dtype=np.uint8)
        mask = None
        if item.mask is not None and self.preprocess is not None:
            mask = self._mask(item, decoded_size)
        return Loaded(item, picture, mask)

    def image(self, item: Item) -> Image.Image:
        """The picture as decoded (RGB, EXIF applied), before resizing."""
        if item.offset < 0:
            return load_image(item.path, max_pixels=self.max_pixels)
        with open(item.path, "rb") as f:
            f.seek(item.offset)
            data = f.read(item.size)
        if len(data) != item.size:
            raise ImageError(
                f"{item.source}: the tar ends early ({len(data)} of {item.size} bytes)"
            )
        try:
            return load_image(data, max_pixels=self.max_pixels)
        except ImageError as err:
            raise ImageError(f"{item.source}: {err}") from None

    def _mask(self, item: Item, decoded_size: tuple[int, int]) -> np.ndarray:
        """The mask through the picture's resize and crop (nearest neighbour, so part ids
        stay part ids), as bool."""
        assert item.mask is not None and self.preprocess is not None
        with Image.open(item.mask) as raw:
            values = raw.convert("L")
        if values.size != decoded_size:
            raise ImageError(
                f"{item.mask}: expected a mask of its picture's size {decoded_size}, got "
                f"{values.size}"
            )
        nearest = replace(self.preprocess, interpolation="nearest")
        shaped = np.asarray(nearest.picture(values.convert("RGB")))[..., 0]
        return np.isin(shaped, self.object_ids) if self.object_ids else shaped > 0


def object_ids(listing: Listing) -> tuple[int, ...]:
    """The mask values that make the object: the chosen parts' ids for a toons folder, none
    (any non-zero value) otherwise."""
    if listing.parts is None:
        return ()
    return tuple(sorted(listing.parts[p] for p in listing.object_parts))
