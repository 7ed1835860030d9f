"""Concept sets and random sets from what a user gives: folders, globs, pools, lists of
pictures, arrays, input tensors, or the built-in toon concepts."""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.core.images import IMAGE_SUFFIXES, ImageError, list_images


@dataclass
class ConceptSet:
    """Named pictures: ``images`` is a list of single picture sources (paths, PIL images,
    (H, W, 3) arrays) or an (N, C, H, W) network-input tensor."""

    name: str
    images: list[Any] | torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _has_images(folder: Path) -> bool:
    return any(
        p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        for p in folder.iterdir()
    )


def _subfolders(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and _has_images(p)
    )


def _as_set(name: str, source: Any) -> ConceptSet:
    """One set from a folder, a list of sources, an (N, H, W, 3) array or an input tensor."""
    if isinstance(source, ConceptSet):
        return source
    if isinstance(source, torch.Tensor):
        if source.dim() != 4:
            raise ValueError(
                f"concept {name!r}: expected an (N, C, H, W) input tensor, got "
                f"{tuple(source.shape)}"
            )
        return ConceptSet(name, source)
    if isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise ValueError(
                f"concept {name!r}: expected an (N, H, W, C) picture array, got {source.shape}"
            )
        return ConceptSet(name, list(source))
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.fspath(source)).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{name}: no such file or folder {path}")
        return ConceptSet(name, list(list_images(path)) if path.is_dir() else [path])
    if isinstance(source, (list, tuple)):
        items: list[Any] = []
        for item in source:
            if isinstance(item, (str, os.PathLike)) and Path(os.fspath(item)).is_dir():
                items += list_images(item)
            else:
                items.append(item)
        return ConceptSet(name, items)
    return ConceptSet(name, [source])


def _folder_sets(folder: Path) -> tuple[list[ConceptSet], list[ConceptSet]]:
    """``folder/<concept>/`` sub-folders: (concepts, random sets named ``random*``)."""
    subs = _subfolders(folder)
    if not subs:
        if _has_images(folder):
            return [ConceptSet(folder.name, list(list_images(folder, recursive=False)))], []
        raise ImageError(f"{folder} holds no concept folders (sub-folders with images)")
    concepts = [_as_set(p.name, p) for p in subs if not p.name.startswith("random")]
    randoms = [_as_set(p.name, p) for p in subs if p.name.startswith("random")]
    return concepts, randoms


def _toon_sets(n: int, randoms: int, seed: int) -> tuple[list[ConceptSet], list[ConceptSet]]:
    from convlens.data import toons

    concepts = [ConceptSet(c, list(toons.concept_images(c, n, seed=seed))) for c in toons.CONCEPTS]
    rand = [
        ConceptSet(f"random_{k}", list(toons.concept_images(f"random_{k}", n, seed=seed)))
        for k in range(randoms)
    ]
    return concepts, rand


def concept_sets(
    concepts: Any,
    random: Any = None,
    *,
    n_random: int = 10,
    random_size: int | None = None,
    seed: int = 0,
    toon_images: int = 100,
) -> tuple[list[ConceptSet], list[ConceptSet]]:
    """Concept sets and random sets from what a user gives.

    ``concepts``: ``"toons"`` (the built-in toon concepts and random sets, ``toon_images``
    pictures each: 100, so that the local test finds cassidy's yellow hair, the weakest own
    colour, in most draws at pool2 and pool3: see the README's power table), a folder of
    concept folders (``random*`` sub-folders are the random sets unless ``random`` is given),
    one folder per concept (a list), a mapping name -> folder / list of pictures /
    (N, H, W, 3) array / (N, C, H, W) input tensor, or :class:`ConceptSet` objects.

    ``random``: a list of folders or sets, a glob (``"concepts/random_*"``), a folder of
    ``random*`` sub-folders, or a **pool** folder of pictures from which ``n_random`` sets of
    ``random_size`` pictures (default: the concept sets' median size) are drawn with ``seed``
    (each set without repeats; sets may share pictures).
    """
    found_random: list[ConceptSet] = []
    if isinstance(concepts, str) and concepts == "toons":
        sets, found_random = _toon_sets(toon_images, n_random, seed)
    elif isinstance(concepts, ConceptSet):
        sets = [concepts]
    elif isinstance(concepts, Mapping):
        sets = [_as_set(str(k), v) for k, v in concepts.items()]
    elif isinstance(concepts, (str, os.PathLike)):
        folder = Path(os.fspath(concepts)).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"expected a folder of concept folders or 'toons', got {os.fspath(concepts)!r}"
            )
        sets, found_random = _folder_sets(folder)
    elif isinstance(concepts, (list, tuple)):
        sets = []
        for item in concepts:
            if isinstance(item, ConceptSet):
                sets.append(item)
            elif isinstance(item, (str, os.PathLike)):
                sets.append(_as_set(Path(os.fspath(item)).name, item))
            else:
                kind = type(item).__name__
                raise TypeError(f"expected concept folders or ConceptSets in the list, got {kind}")
    else:
        raise TypeError(
            "expected concepts as 'toons', a folder, a list of folders or a mapping "
            f"name -> pictures, got {type(concepts).__name__}"
        )
    if not sets:
        raise ValueError("expected at least one concept set, got none")
    size = random_size or int(np.median([len(s) for s in sets]))
    randoms = _random_sets(random, found_random, n_random, size, seed)
    names = [s.name for s in sets] + [s.name for s in randoms]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"set names must be unique; repeated: {repeated}")
    for s in [*sets, *randoms]:
        if len(s) < 2:
            raise ValueError(f"set {s.name!r} has {len(s)} picture(s); expected at least 2")
    if len(randoms) < 2:
        raise ValueError(
            f"expected at least 2 random sets (10 or more for a meaningful test), got "
            f"{len(randoms)}"
        )
    return sets, randoms


def _random_sets(
    random: Any, found: list[ConceptSet], n_random: int, size: int, seed: int
) -> list[ConceptSet]:
    if random is None:
        if not found:
            raise ValueError(
                "expected random counterexamples: random=[folders] or a pool folder, or "
                "random_* sub-folders next to the concepts"
            )
        return found
    if isinstance(random, Mapping):
        return [_as_set(str(k), v) for k, v in random.items()]
    if isinstance(random, (str, os.PathLike)):
        text = os.fspath(random)
        if _is_glob(text) and not Path(text).exists():
            matches = sorted(p for p in glob.glob(os.path.expanduser(text)) if Path(p).is_dir())
            if not matches:
                raise FileNotFoundError(f"no folders match {text!r}")
            return [_as_set(Path(p).name, p) for p in matches]
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"random: no such folder {folder}")
        subs = [p for p in _subfolders(folder) if p.name.startswith("random")]
        if subs:
            return [_as_set(p.name, p) for p in subs]
        pool = list(list_images(folder))
        if len(pool) < size:
            raise ValueError(
                f"the random pool {folder} has {len(pool)} pictures; expected at least {size} "
                f"(the size of one random set)"
            )
        gen = torch.Generator().manual_seed(seed)
        return [
            ConceptSet(
                f"random_{k}",
                [pool[int(i)] for i in torch.randperm(len(pool), generator=gen)[:size]],
            )
            for k in range(n_random)
        ]
    if isinstance(random, (list, tuple)):
        out = []
        for item in random:
            if isinstance(item, ConceptSet):
                out.append(item)
            elif isinstance(item, (str, os.PathLike)) and _is_glob(os.fspath(item)):
                out += _random_sets(item, [], n_random, size, seed)
            elif isinstance(item, (str, os.PathLike)):
                out.append(_as_set(Path(os.fspath(item)).name, item))
            else:
                raise TypeError(
                    f"expected random folders or ConceptSets in the list, got {type(item).__name__}"
                )
        return out
    raise TypeError(
        f"expected random sets as folders, a glob, a pool folder or a mapping, got "
        f"{type(random).__name__}"
    )
