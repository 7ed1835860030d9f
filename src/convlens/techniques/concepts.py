"""Testing with Concept Activation Vectors (TCAV; Kim et al., ICML 2018): does the model use a
human concept ("striped", "red") for a class, layer by layer, and is that more than chance?

The method, step by step, as this module does it:

1. **Activations.** Every picture of every concept set, of every random set and of the target
   class goes through the network once per batch; all requested layers are read from that one
   pass (the pass stops after the deepest one; concept pictures need no gradient). With
   ``cache_dir`` each picture's activations are stored under a key made of the model's
   weights, the layers and the picture's network input, never of a folder name, so a changed
   folder is never served stale numbers.
2. **CAVs.** Per layer, one linear classifier per (concept, random set): concept pictures
   against random ones, equal numbers of each, a held-out third for the CAV's accuracy. All
   of a layer's classifiers are fitted together in torch: logistic regression or a linear SVM
   (squared hinge) with an L2 penalty, solved by Newton's method in the span of the training
   activations (the representer theorem: ``n`` unknowns per CAV instead of one per feature),
   or the difference of the two means (``classifier="mean"``, FastCAV) for very wide layers.
   The CAV is the classifier's normal, unit length, pointing **toward the concept**.
3. **Scores.** The gradient of the target class **logit** (not of the loss, as the reference
   TensorFlow code used; the sign convention here needs no flipping) with respect to each
   layer, once per target picture, reused for every CAV. The directional derivative along a
   CAV is ``S = grad . v``; per CAV, ``sign_count`` is the share of target pictures with
   ``S > 0`` (the paper's TCAV score) and ``magnitude`` ``sum(S+) / sum(|S|)``.
4. **Significance.** Random-vs-random CAVs give the null: every random set takes the
   concept's place against every other one, and its TCAV score is the mean over those
   partners. The concept's score (its mean over its random partners) is tested against that
   distribution with a two-sided Student t prediction test (``test="sets"``); the paper's
   two-sample t-test of per-partner scores is there as ``test="paper"`` (it ignores that a
   concept's runs share one concept set, and its false-positive rate is far above ``alpha``:
   see :func:`tcav`). p-values are Bonferroni-corrected over every (concept, layer) tested. A
   CAV whose held-out accuracy is near chance gives a warning: its direction means little.
   Relative TCAV (``relative=[("red", "blue")]``) fits concept-vs-concept CAVs, one per
   resampled split, and is tested against the same random null.

Entry points: :func:`tcav` (and ``convlens tcav``), :func:`fit_cavs` for CAVs from your own
activations, :func:`scores` for scores from given gradients and CAVs. Results come as a
:class:`TCAVResult` (table, JSON, CSV, a bar chart with error bars and stars, the CAVs).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from convlens.core.hooks import (
    StopForward,
    call_fast,
    first_tensor,
    folded_batchnorm,
    forward_hooks,
    preserved,
    recorder,
)
from convlens.core.images import IMAGE_SUFFIXES, ImageError, list_images
from convlens.core.model import Model
from convlens.core.render import PALETTE, Figure, _font, _text_height, write_atomic
from convlens.core.stats import ttest_ind
from convlens.core.util import jsonable

Progress = Callable[[int, int], None]

CLASSIFIERS = ("logistic", "svm", "mean")
TESTS = {
    "sets": "the concept's TCAV score against those of the random sets, each in a concept's "
    "place against the others (two-sided Student t prediction test, R - 1 df)",
    "paper": "Student's two-sided two-sample t-test, the concept's scores against its random "
    "partners vs the random-vs-random scores (Kim et al. 2018)",
}
NULL = "random (null)"
NEAR_CHANCE = 0.6  # mean held-out CAV accuracy below this gives a warning
_CACHE_VERSION = "convlens-tcav-activations-1"


# -- concept sets ------------------------------------------------------------------------------


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
    toon_images: int = 30,
) -> tuple[list[ConceptSet], list[ConceptSet]]:
    """Concept sets and random sets from what a user gives.

    ``concepts``: ``"toons"`` (the built-in toon concepts and random sets, ``toon_images``
    pictures each), a folder of concept folders (``random*`` sub-folders are the random sets
    unless ``random`` is given), one folder per concept (a list), a mapping name -> folder /
    list of pictures / (N, H, W, 3) array / (N, C, H, W) input tensor, or
    :class:`ConceptSet` objects.

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


# -- activations and gradients ----------------------------------------------------------------


def fingerprint(model: Model) -> str:
    """A content key for a model: its class, every parameter and buffer (names, shapes, dtypes,
    bytes) and its preprocessing. Two models with equal weights share it."""
    h = hashlib.blake2b(digest_size=16)
    module = model.module
    h.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    h.update(repr(getattr(model, "preprocess", None)).encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Cache:
    """Per-picture activations on disk (``cache_dir/<key>.pt``, ``torch.load(weights_only=True)``)
    keyed by model, layers, pass kind and the picture's network input."""

    def __init__(
        self, folder: str | os.PathLike[str] | None, model_key: str, layers: Sequence[str]
    ):
        self.folder = None if folder is None else Path(os.fspath(folder)).expanduser()
        self.prefix = f"{_CACHE_VERSION}|{model_key}|{','.join(layers)}".encode()
        self.hits = 0
        self.misses = 0

    def keys(self, inputs: torch.Tensor, kind: str) -> list[str] | None:
        if self.folder is None:
            return None
        out = []
        for x in inputs.detach().cpu().contiguous():
            h = hashlib.blake2b(self.prefix + kind.encode(), digest_size=20)
            h.update(f"{x.dtype}:{tuple(x.shape)}".encode())
            h.update(x.numpy().tobytes())
            out.append(h.hexdigest())
        return out

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        assert self.folder is not None
        path = self.folder / f"{key}.pt"
        if not path.is_file():
            self.misses += 1
            return None
        try:
            found = torch.load(path, weights_only=True, map_location="cpu")
        except Exception:  # a damaged entry is recomputed (and rewritten)
            self.misses += 1
            return None
        self.hits += 1
        return found

    def put(self, key: str, value: dict[str, torch.Tensor]) -> None:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({k: v.clone() for k, v in value.items()}, buffer)  # not the whole batch
        write_atomic(self.folder / f"{key}.pt", buffer.getvalue())


def _input_batches(
    model: Model, images: list[Any] | torch.Tensor, batch_size: int
) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        for start in range(0, len(images), batch_size):
            yield model.prepare(images[start : start + batch_size]).inputs
        return
    for start in range(0, len(images), batch_size):
        yield model.prepare(list(images[start : start + batch_size])).inputs


def _run_layers(
    model: Model,
    inputs: torch.Tensor,
    layers: Sequence[str],
    target: int | None,
) -> dict[str, torch.Tensor]:
    """Flattened (B, F) activations of ``layers`` (``target`` None: no gradient, the pass
    stops after the last layer) or the gradients of logit ``target`` with respect to them."""
    module = model.module
    acts: dict[str, torch.Tensor] = {}
    keep = recorder(acts, layers if target is None else None)  # no gradient: stop early

    def run(x: torch.Tensor) -> torch.Tensor | None:
        acts.clear()
        with forward_hooks(module, layers, keep):
            if target is None:
                with torch.inference_mode(), contextlib.suppress(StopForward):
                    module(x)
                return None
            x = x.detach().requires_grad_(True)  # a graph from the layers to the logit
            return first_tensor(module(x))

    out = call_fast(module, inputs, run)
    missing = [n for n in layers if n not in acts]
    if missing:
        raise ValueError(f"layer(s) {missing} did not run in the forward pass")
    if target is None:
        return {n: acts[n].flatten(1).float().cpu() for n in layers}
    if out is None or out.dim() != 2:
        shape = None if out is None else tuple(out.shape)
        raise ValueError(f"expected the network to return (N, classes) logits, got {shape}")
    if not 0 <= target < out.shape[1]:
        raise ValueError(f"target class {target} is outside the {out.shape[1]} outputs")
    grads = torch.autograd.grad(out[:, target].sum(), [acts[n] for n in layers])
    return {n: g.flatten(1).float().cpu() for n, g in zip(layers, grads, strict=True)}


def _collect(
    model: Model,
    images: list[Any] | torch.Tensor,
    layers: Sequence[str],
    target: int | None,
    batch_size: int,
    cache: _Cache,
    tick: Callable[[int], None],
) -> dict[str, torch.Tensor]:
    kind = "activations" if target is None else f"gradients:{target}"
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    for inputs in _input_batches(model, images, batch_size):
        keys = cache.keys(inputs, kind)
        found: list[dict[str, torch.Tensor] | None] = (
            [cache.get(k) for k in keys] if keys is not None else [None] * len(inputs)
        )
        todo = [i for i, f in enumerate(found) if f is None]
        if todo:
            fresh = _run_layers(model, inputs[todo], layers, target)
            for j, i in enumerate(todo):
                entry = {n: fresh[n][j] for n in layers}
                found[i] = entry
                if keys is not None:
                    cache.put(keys[i], entry)
        for n in layers:
            parts[n].append(torch.stack([f[n] for f in found]))  # type: ignore[index]
        tick(len(inputs))
    return {n: torch.cat(v) for n, v in parts.items()}


def _layer_shapes(
    model: Model, layers: Sequence[str], example: torch.Tensor
) -> dict[str, tuple[int, ...]]:
    """Each layer's output shape (C, h, w) for one picture (a pass that stops at the last)."""
    kept: dict[str, torch.Tensor] = {}
    with (
        forward_hooks(model.module, layers, recorder(kept, layers)),
        torch.inference_mode(),
        contextlib.suppress(StopForward),
    ):
        model.module(example[:1])
    return {name: tuple(t.shape[1:]) for name, t in kept.items()}


# -- CAVs -------------------------------------------------------------------------------------


@dataclass
class CAVs:
    """Fitted CAVs, one per problem: ``vectors`` (P, F) unit length, pointing toward the
    positive (concept) set; ``accuracy`` (P,) on the held-out pictures; ``bias`` (P,) of the
    classifier in the scaled feature space (``scale`` times the activations)."""

    vectors: torch.Tensor
    accuracy: torch.Tensor
    bias: torch.Tensor
    scale: float


def _loss_terms(z: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss of margin ``z = y f`` and its first and second derivatives."""
    if kind == "logistic":
        value = torch.nn.functional.softplus(-z)
        p = torch.sigmoid(-z)
        return value, -p, p * (1 - p)
    hinge = (1 - z).clamp_min(0)
    return hinge**2, -2 * hinge, 2.0 * (hinge > 0).to(z.dtype)


def _newton(
    K: torch.Tensor, y: torch.Tensor, w: torch.Tensor, kind: str, lam: float, iterations: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``sum(w * loss(y * f)) / sum(w) + lam / 2 * a' K a`` over ``f = K a + b`` for a
    batch of problems: K (P, n, n), y (P, n) in {-1, +1}, w (P, n) in {0, 1}. Newton steps in
    function space (the system divided by K on the left) with backtracking."""
    P, n = y.shape
    a = torch.zeros(P, n, dtype=K.dtype, device=K.device)
    b = torch.zeros(P, dtype=K.dtype, device=K.device)
    total = w.sum(1)
    eye = torch.eye(n, dtype=K.dtype, device=K.device)

    def objective(a_: torch.Tensor, b_: torch.Tensor) -> torch.Tensor:
        Ka = (K @ a_.unsqueeze(-1)).squeeze(-1)
        value, _, _ = _loss_terms(y * (Ka + b_.unsqueeze(-1)), kind)
        return (w * value).sum(-1) / total + 0.5 * lam * (a_ * Ka).sum(-1)

    steps = 0.5 ** torch.arange(12, dtype=K.dtype, device=K.device)
    current = objective(a, b)
    for _ in range(iterations):
        Ka = (K @ a.unsqueeze(-1)).squeeze(-1)
        _, d1, d2 = _loss_terms(y * (Ka + b.unsqueeze(-1)), kind)
        g = w * y * d1 / total.unsqueeze(-1)
        h = w * d2 / total.unsqueeze(-1)
        system = torch.zeros(P, n + 1, n + 1, dtype=K.dtype, device=K.device)
        system[:, :n, :n] = h.unsqueeze(-1) * K + lam * eye
        system[:, :n, n] = h
        system[:, n, :n] = (h.unsqueeze(-1) * K).sum(1)
        system[:, n, n] = h.sum(-1) + 1e-12
        rhs = torch.cat([-(g + lam * a), -g.sum(-1, keepdim=True)], dim=-1)
        delta = torch.linalg.solve(system, rhs)
        da, db = delta[:, :n], delta[:, n]
        # backtracking: the largest step 2^-k that lowers the objective (none: stay)
        tried = torch.stack([objective(a + t * da, b + t * db) for t in steps.tolist()], dim=1)
        better = tried < current.unsqueeze(1) - 1e-15
        first = torch.where(better.any(1), better.float().argmax(1), torch.full_like(b, -1).long())
        moved = first >= 0
        if not bool(moved.any()):
            break
        s = torch.where(moved, steps[first.clamp_min(0)], torch.zeros_like(b))
        a = a + s.unsqueeze(-1) * da
        b = b + s * db
        new = tried.gather(1, first.clamp_min(0).unsqueeze(1)).squeeze(1)
        gain = torch.where(moved, current - new, torch.zeros_like(b))
        current = torch.where(moved, new, current)
        if bool((gain <= 1e-12 * current.abs().clamp_min(1e-12)).all()):
            break
    return a, b


def _split(
    n_pos: int, n_neg: int, test_fraction: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced train/test indices: ``k = min(n_pos, n_neg)`` of each, a ``test_fraction`` of
    them held out (at least one of each when k >= 3 and the fraction is not 0)."""
    k = min(n_pos, n_neg)
    n_test = (
        0 if test_fraction == 0 else min(k - 1, max(1 if k >= 3 else 0, round(k * test_fraction)))
    )
    pos = torch.randperm(n_pos, generator=gen)[:k]
    neg = torch.randperm(n_neg, generator=gen)[:k]
    return pos[n_test:], neg[n_test:], pos[:n_test], neg[:n_test]


def fit_cavs(
    activations: torch.Tensor,
    problems: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    classifier: str = "logistic",
    regularization: float = 0.01,
    test_fraction: float = 1 / 3,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> CAVs:
    """Fit one CAV per problem, all at once.

    ``activations`` (N, F): every picture's flattened layer activation; ``problems``: for each
    CAV, (rows of the positive / concept pictures, rows of the negative pictures). Each
    problem uses equal numbers of both (the larger set subsampled), ``test_fraction`` of them
    held out for the accuracy. Features are scaled by one number per call (mean squared norm
    1), so ``regularization`` (the L2 weight) means the same at every layer.
    """
    if classifier not in CLASSIFIERS:
        from convlens.core.naming import unknown

        raise unknown("CAV classifier", classifier, CLASSIFIERS)
    if not 0 <= test_fraction < 1:
        raise ValueError(f"expected test_fraction in [0, 1), got {test_fraction}")
    if regularization <= 0 and classifier != "mean":
        raise ValueError(f"expected regularization > 0, got {regularization}")
    if activations.dim() != 2:
        raise ValueError(f"expected (N, F) activations, got {tuple(activations.shape)}")
    if not problems:
        raise ValueError("expected at least one (positive, negative) problem")
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    acts = activations.float()
    N = acts.shape[0]
    gram = (acts @ acts.T).double()
    mean_sq = float(gram.diagonal().mean())
    scale2 = 1.0 / mean_sq if mean_sq > 0 else 1.0
    gram = gram * scale2
    train_rows, train_y, test_rows, test_y = [], [], [], []
    for pos, neg in problems:
        pos_t = torch.as_tensor(list(pos), dtype=torch.long)
        neg_t = torch.as_tensor(list(neg), dtype=torch.long)
        if min(len(pos_t), len(neg_t)) < 2:
            raise ValueError(
                f"each CAV needs at least 2 pictures per side, got {len(pos_t)} and {len(neg_t)}"
            )
        if int(torch.cat([pos_t, neg_t]).max()) >= N or int(torch.cat([pos_t, neg_t]).min()) < 0:
            raise ValueError(f"problem rows must lie in [0, {N})")
        tr_p, tr_n, te_p, te_n = _split(len(pos_t), len(neg_t), test_fraction, gen)
        train_rows.append(torch.cat([pos_t[tr_p], neg_t[tr_n]]))
        train_y.append(torch.cat([torch.ones(len(tr_p)), -torch.ones(len(tr_n))]))
        test_rows.append(torch.cat([pos_t[te_p], neg_t[te_n]]))
        test_y.append(torch.cat([torch.ones(len(te_p)), -torch.ones(len(te_n))]))

    def padded(rows: list[torch.Tensor], ys: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        width = max(1, max(len(r) for r in rows))
        idx = torch.zeros(len(rows), width, dtype=torch.long)
        lab = torch.zeros(len(rows), width, dtype=torch.float64)
        mask = torch.zeros(len(rows), width, dtype=torch.float64)
        for i, (r, y_) in enumerate(zip(rows, ys, strict=True)):
            idx[i, : len(r)] = r
            lab[i, : len(r)] = y_.double()
            mask[i, : len(r)] = 1
        return idx, lab, mask

    idx, y, w = padded(train_rows, train_y)
    K = gram[idx.unsqueeze(-1), idx.unsqueeze(-2)] * (w.unsqueeze(-1) * w.unsqueeze(-2))
    if classifier == "mean":
        pos_w = w * (y > 0)
        neg_w = w * (y < 0)
        a = pos_w / pos_w.sum(1, keepdim=True) - neg_w / neg_w.sum(1, keepdim=True)
        f = (K @ a.unsqueeze(-1)).squeeze(-1)
        b = -0.5 * ((f * pos_w).sum(1) / pos_w.sum(1) + (f * neg_w).sum(1) / neg_w.sum(1))
    else:
        a, b = _newton(K, y, w, classifier, regularization)
    a = a * w
    t_idx, t_y, t_w = padded(test_rows, test_y)
    if t_w.sum() > 0:
        f_test = (gram[t_idx.unsqueeze(-1), idx.unsqueeze(-2)] @ a.unsqueeze(-1)).squeeze(-1)
        f_test = f_test + b.unsqueeze(-1)
        right = ((f_test > 0) == (t_y > 0)).double() * t_w
        accuracy = (right.sum(1) / t_w.sum(1).clamp_min(1)).float()
        accuracy[t_w.sum(1) == 0] = float("nan")
    else:
        accuracy = torch.full((len(problems),), float("nan"))
    coef = torch.zeros(len(problems), N, dtype=torch.float64)
    coef.scatter_add_(1, idx, a)
    vectors = coef.to(acts.dtype) @ acts
    norms = vectors.norm(dim=1, keepdim=True)
    vectors = vectors / norms.clamp_min(1e-30)
    return CAVs(vectors, accuracy, b.float(), math.sqrt(scale2))


# -- scores -----------------------------------------------------------------------------------


def directional_derivatives(gradients: torch.Tensor, cavs: torch.Tensor) -> torch.Tensor:
    """(P, T): ``grad_t . v_p`` for target gradients (T, F) and CAVs (P, F)."""
    if gradients.dim() != 2 or cavs.dim() != 2 or gradients.shape[1] != cavs.shape[1]:
        raise ValueError(
            f"expected gradients (T, F) and CAVs (P, F) with the same F, got "
            f"{tuple(gradients.shape)} and {tuple(cavs.shape)}"
        )
    return cavs.float() @ gradients.float().T


def scores(derivatives: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per CAV (row of (P, T) directional derivatives): ``sign_count`` = share of ``S > 0``
    (the paper's TCAV score), ``magnitude`` = ``sum(S+) / sum(|S|)`` (0.5 when all are 0) and
    ``mean`` = the mean derivative (what Captum's code returns as "magnitude")."""
    s = derivatives.float()
    positive = s.clamp_min(0).sum(-1)
    total = s.abs().sum(-1)
    return {
        "sign_count": (s > 0).float().mean(-1),
        "magnitude": torch.where(total > 0, positive / total.clamp_min(1e-30), 0.5),
        "mean": s.mean(-1),
    }


# -- results ------------------------------------------------------------------------------------


@dataclass
class Run:
    """Every CAV of one (concept, layer): per random partner (or resample), its scores."""

    concept: str
    layer: str
    partners: list[str]
    sign_count: torch.Tensor
    magnitude: torch.Tensor
    mean: torch.Tensor
    accuracy: torch.Tensor
    vectors: torch.Tensor  # (R, F)


@dataclass
class TCAVResult:
    """What :func:`tcav` found. ``rows`` is the table (one dict per concept x layer);
    ``runs[(concept, layer)]`` and ``null[layer]`` hold every CAV's scores."""

    target: str
    target_index: int
    layers: list[str]
    concepts: list[str]
    randoms: list[str]
    rows: list[dict[str, Any]]
    runs: dict[tuple[str, str], Run]
    null: dict[str, Run]
    shapes: dict[str, tuple[int, ...]]
    settings: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    COLUMNS = (
        "concept",
        "layer",
        "score",
        "score_std",
        "magnitude",
        "cav_accuracy",
        "random_score",
        "random_std",
        "p",
        "p_corrected",
        "significant",
    )

    def row(self, concept: str, layer: str) -> dict[str, Any]:
        for r in self.rows:
            if r["concept"] == concept and r["layer"] == layer:
                return r
        from convlens.core.naming import unknown

        raise unknown(
            "(concept, layer)",
            f"{concept}@{layer}",
            [f"{r['concept']}@{r['layer']}" for r in self.rows],
        )

    def cav(self, concept: str, layer: str) -> torch.Tensor:
        """The concept's mean CAV (unit length) over its random partners, shaped like the
        layer's activation (C, H, W)."""
        run = self._run(concept, layer)
        v = run.vectors.mean(0)
        return (v / v.norm().clamp_min(1e-30)).view(self.shapes[layer])

    def channel_direction(self, concept: str, layer: str) -> torch.Tensor:
        """(C,) the CAV summed over positions: for ``convlens.objectives.direction(layer, v)``
        (feature visualization of the concept as the model holds it)."""
        v = self.cav(concept, layer)
        return v.flatten(1).sum(1) if v.dim() > 1 else v

    def _run(self, concept: str, layer: str) -> Run:
        if (concept, layer) not in self.runs:
            from convlens.core.naming import unknown

            raise unknown(
                "(concept, layer)", f"{concept}@{layer}", [f"{c}@{name}" for c, name in self.runs]
            )
        return self.runs[(concept, layer)]

    def table(self) -> str:
        """The table as aligned text."""
        head = [
            "concept",
            "layer",
            "TCAV",
            "±std",
            "magn.",
            "CAV acc",
            "random",
            "p",
            "p corr",
            "sig",
        ]
        lines = [head]
        for r in self.rows:
            lines.append(
                [
                    r["concept"],
                    r["layer"],
                    f"{r['score']:.3f}",
                    f"{r['score_std']:.3f}",
                    f"{r['magnitude']:.3f}",
                    f"{r['cav_accuracy']:.2f}",
                    f"{r['random_score']:.3f}",
                    _p(r["p"]),
                    _p(r["p_corrected"]),
                    ("yes " + _stars(r["p_corrected"])) if r["significant"] else "no",
                ]
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
        return "\n".join(out)

    def __str__(self) -> str:
        note = (
            f"TCAV for class {self.target!r} (index {self.target_index}); scores are the share of "
        )
        note += "target pictures whose class logit rises along the CAV"
        extra = "".join(f"\nwarning: {w}" for w in self.warnings)
        return f"{note}\n{self.table()}{extra}"

    def __repr__(self) -> str:
        sig = [f"{r['concept']}@{r['layer']}" for r in self.rows if r["significant"]]
        return (
            f"TCAVResult(target={self.target!r}, {len(self.concepts)} concepts x "
            f"{len(self.layers)} layers, {len(self.randoms)} random sets, significant={sig})"
        )

    def to_dict(self) -> dict[str, Any]:
        def listed(run: Run) -> dict[str, Any]:
            return {
                "partners": run.partners,
                "sign_count": run.sign_count.tolist(),
                "magnitude": run.magnitude.tolist(),
                "mean_derivative": run.mean.tolist(),
                "cav_accuracy": [None if math.isnan(a) else a for a in run.accuracy.tolist()],
            }

        return {
            "format": "convlens-tcav",
            "version": 1,
            "target": self.target,
            "target_index": self.target_index,
            "score": "share of target pictures with a positive directional derivative of the "
            "target class logit along the CAV (Kim et al. 2018, TCAV_Q)",
            "layers": self.layers,
            "concepts": self.concepts,
            "random_sets": self.randoms,
            "settings": self.settings,
            "rows": [{k: jsonable(v) for k, v in r.items()} for r in self.rows],
            "runs": {f"{c}@{name}": listed(run) for (c, name), run in self.runs.items()},
            "random_null": {layer: listed(run) for layer, run in self.null.items()},
            "warnings": self.warnings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.COLUMNS), lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: r[k] for k in self.COLUMNS})
        return buffer.getvalue()

    def save(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write ``tcav.json``, ``tcav.csv`` and ``tcav.png`` (the bar chart) to ``out_dir``."""
        folder = Path(os.fspath(out_dir)).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        return [
            write_atomic(folder / "tcav.json", self.to_json().encode()),
            write_atomic(folder / "tcav.csv", self.to_csv().encode()),
            self.plot().save(folder / "tcav.png"),
        ]

    def plot(self, *, bar_width: int = 26) -> Figure:
        """Bars of the mean TCAV score per concept, grouped by layer, with ±1 std error bars,
        the random null as a grey bar with its std, and stars for significance after
        correction (``*`` p < 0.05, ``**`` < 0.01, ``***`` < 0.001); ``n.s.`` bars are faded."""
        return _plot(self, bar_width)

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.plot().image.save(buffer, format="PNG")
        return buffer.getvalue()


def _p(value: float) -> str:
    if value != value:
        return "-"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _stars(p: float) -> str:
    return "***" if p < 1e-3 else "**" if p < 1e-2 else "*" if p < 0.05 else ""


def _plot(result: TCAVResult, bar: int) -> Figure:
    concepts = result.concepts
    layers = result.layers
    font, small = _font(14), _font(11)
    th = _text_height(font)
    left, top, bottom, right = 58, 34 + th, 44 + 2 * th, 16
    gap = bar
    group = (len(concepts) + 1) * bar + gap
    legend_w = max(int(font.getlength(c)) for c in [*concepts, NULL]) + 40
    plot_w = max(group * len(layers), 160)
    plot_h = 240
    width = left + plot_w + right + legend_w
    height = top + plot_h + bottom
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    title = f"TCAV scores for class '{result.target}'"
    d.text((left, 8), title, fill=(20, 20, 20), font=font)

    def y_of(v: float) -> float:
        return top + plot_h * (1 - v)

    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(tick)
        d.line([(left, y), (left + plot_w, y)], fill=(225, 225, 225) if tick else (90, 90, 90))
        label = f"{tick:.2f}"
        d.text((left - 8 - small.getlength(label), y - 6), label, fill=(60, 60, 60), font=small)
    d.line([(left, top), (left, top + plot_h)], fill=(90, 90, 90))
    for li, layer in enumerate(layers):
        x0 = left + li * group + gap // 2
        null = result.null[layer]
        for ci, r in enumerate(result.row(c, layer) for c in concepts):
            colour: tuple[int, ...] = PALETTE[ci % len(PALETTE)]
            if not r["significant"]:
                colour = tuple(int(c + (255 - c) * 0.65) for c in colour)
            xa = x0 + ci * bar
            _bar(d, xa, bar, r["score"], r["score_std"], colour, y_of)
            mark = _stars(r["p_corrected"]) if r["significant"] else "n.s."
            mw = small.getlength(mark)
            ytop = y_of(min(1.0, r["score"] + r["score_std"])) - 14
            d.text((xa + (bar - mw) / 2, max(top - 14, ytop)), mark, fill=(30, 30, 30), font=small)
        xa = x0 + len(concepts) * bar
        per_set = null_scores(null, result.randoms)
        mean_null = float(per_set.mean())
        std_null = float(per_set.std()) if len(per_set) > 1 else 0.0
        _bar(d, xa, bar, mean_null, std_null, (170, 170, 170), y_of)
        label = layer
        lw = font.getlength(label)
        d.text(
            (x0 + ((len(concepts) + 1) * bar - lw) / 2, top + plot_h + 8),
            label,
            fill=(20, 20, 20),
            font=font,
        )
    d.text((8, top + plot_h + 12 + th), "layer", fill=(120, 120, 120), font=small)
    lx = left + plot_w + right
    for i, name in enumerate([*concepts, NULL]):
        colour = PALETTE[i % len(PALETTE)] if i < len(concepts) else (170, 170, 170)
        y = top + i * (th + 8)
        d.rectangle([lx, y + 2, lx + 14, y + 16], fill=colour)
        d.text((lx + 22, y), name, fill=(20, 20, 20), font=font)
    note = "bars: mean ± std over random partners; faded: not significant (Bonferroni)"
    d.text((left, height - th - 6), note, fill=(110, 110, 110), font=small)
    return Figure(img, caption=title)


def _bar(
    d: ImageDraw.ImageDraw,
    x: float,
    width: int,
    value: float,
    std: float,
    colour: tuple[int, ...],
    y_of: Callable[[float], float],
) -> None:
    inner = max(2, width - 6)
    xa = x + (width - inner) / 2
    d.rectangle([xa, y_of(max(value, 0.0)), xa + inner, y_of(0.0)], fill=tuple(colour))
    if std > 0:
        cx = x + width / 2
        lo, hi = y_of(max(0.0, value - std)), y_of(min(1.0, value + std))
        d.line([(cx, lo), (cx, hi)], fill=(30, 30, 30), width=1)
        d.line([(cx - 4, lo), (cx + 4, lo)], fill=(30, 30, 30), width=1)
        d.line([(cx - 4, hi), (cx + 4, hi)], fill=(30, 30, 30), width=1)


# -- the test -----------------------------------------------------------------------------------


def tcav(
    model: Any,
    target: int | str,
    images: Any,
    concepts: Any,
    *,
    random: Any = None,
    layers: str | Sequence[str] | None = None,
    n_random: int = 10,
    random_size: int | None = None,
    relative: Sequence[tuple[str, str]] = (),
    classifier: str = "logistic",
    regularization: float = 0.01,
    test_fraction: float = 1 / 3,
    alpha: float = 0.05,
    test: str = "sets",
    seed: int = 0,
    batch_size: int = 32,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> TCAVResult:
    """Test which concepts the model uses for class ``target`` (TCAV, Kim et al. 2018).

    Parameters
    ----------
    model:
        A :class:`~convlens.Model` or anything :func:`convlens.load` takes.
    target:
        Class index or name; scores use the gradient of this class's logit.
    images:
        Pictures of the target class (folder, list, (N, C, H, W) input tensor).
    concepts, random, n_random, random_size:
        See :func:`concept_sets` (``"toons"`` for the built-in toon concepts).
    layers:
        Layer name(s) (a comma-separated string too); default: the last layer with a spatial
        output.
    relative:
        Pairs of concept names for relative TCAV (concept vs concept CAVs).
    classifier, regularization, test_fraction:
        How CAVs are fitted (:func:`fit_cavs`): ``"logistic"``, ``"svm"`` or ``"mean"``.
    alpha:
        Significance level after the Bonferroni correction.
    test:
        ``"sets"`` (default): is the concept's score a plausible draw from the scores random
        sets get in its place? ``"paper"``: the paper's two-sample t-test of the concept's
        per-partner scores against random-vs-random scores. The paper's test treats the
        concept's runs as independent although they share one concept set, so a random set
        posing as a concept comes out "significant" far more often than ``alpha`` (measured
        on toons: 16 of 40 trials); ``"sets"`` keeps the false-positive rate at ``alpha``.
    seed:
        Every random choice (pool draws, splits) comes from it: the same seed, the same result.
    batch_size:
        Pictures per forward pass.
    cache_dir:
        A folder for per-picture activations and gradients, keyed by content (model weights,
        layers, network input); ``None``: nothing is stored.
    progress:
        ``progress(done, total)`` over the pictures run and the CAV fits.
    """
    from convlens.core.naming import get_layer
    from convlens.core.tasks import as_model
    from convlens.techniques.attribution.base import default_layer

    handle = as_model(model)
    target_index = handle.class_index(target)
    target_name = handle.label(target_index) if handle.labels is not None else str(target_index)
    if layers is None:
        names = [default_layer(handle)]
    elif isinstance(layers, str):
        names = [n.strip() for n in layers.split(",") if n.strip()]
    else:
        names = list(layers)
    if not names:
        raise ValueError("expected at least one layer name")
    if len(set(names)) != len(names):
        raise ValueError(f"layer names repeat: {names}")
    for name in names:
        get_layer(handle.module, name)  # unknown names fail here, with suggestions
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"expected alpha in (0, 1), got {alpha}")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 2:
        raise ValueError(f"expected n_random >= 2, got {n_random!r}")
    if classifier not in CLASSIFIERS:
        from convlens.core.naming import unknown

        raise unknown("CAV classifier", classifier, CLASSIFIERS)
    if test not in TESTS:
        from convlens.core.naming import unknown

        raise unknown("significance test", test, TESTS)
    sets, randoms = concept_sets(
        concepts, random, n_random=n_random, random_size=random_size, seed=seed
    )
    concept_names = [s.name for s in sets]
    for a, b in relative:
        for c in (a, b):
            if c not in concept_names:
                from convlens.core.naming import unknown

                raise unknown("concept", c, concept_names)
        if a == b:
            raise ValueError(f"relative TCAV needs two different concepts, got {a!r} twice")
    target_set = _as_set("target images", images)
    if len(target_set) < 2:
        raise ValueError(f"expected at least 2 target pictures, got {len(target_set)}")

    total = sum(len(s) for s in [*sets, *randoms]) + len(target_set) + len(names)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    module = handle.module
    cache = _Cache(cache_dir, fingerprint(handle) if cache_dir is not None else "", names)
    with preserved(module, out_of_place=True):
        for p in module.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
        with folded_batchnorm(module, keep=names):
            started = time.perf_counter()
            acts = {
                s.name: _collect(handle, s.images, names, None, batch_size, cache, tick)
                for s in [*sets, *randoms]
            }
            timings = {"activations_s": time.perf_counter() - started}
            started = time.perf_counter()
            grads = _collect(
                handle, target_set.images, names, target_index, batch_size, cache, tick
            )
            timings["gradients_s"] = time.perf_counter() - started
            example = next(_input_batches(handle, target_set.images[:1], 1))
            shapes = _layer_shapes(handle, names, example)
    started = time.perf_counter()
    result = _analyse(
        acts,
        grads,
        shapes,
        concept_names,
        [s.name for s in randoms],
        names,
        relative=relative,
        classifier=classifier,
        regularization=regularization,
        test_fraction=test_fraction,
        alpha=alpha,
        test=test,
        seed=seed,
        tick=tick,
    )
    timings["cavs_and_scores_s"] = time.perf_counter() - started
    result.target = target_name
    result.target_index = target_index
    result.timings = timings
    result.settings.update(
        {
            "target_images": len(target_set),
            "set_sizes": {s.name: len(s) for s in [*sets, *randoms]},
            "batch_size": batch_size,
            "cache": None
            if cache_dir is None
            else {"dir": os.fspath(cache_dir), "hits": cache.hits, "misses": cache.misses},
        }
    )
    return result


def _analyse(
    acts: Mapping[str, Mapping[str, torch.Tensor]],
    grads: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, ...]],
    concepts: Sequence[str],
    randoms: Sequence[str],
    layers: Sequence[str],
    *,
    relative: Sequence[tuple[str, str]] = (),
    classifier: str = "logistic",
    regularization: float = 0.01,
    test_fraction: float = 1 / 3,
    alpha: float = 0.05,
    test: str = "sets",
    seed: int = 0,
    tick: Callable[[int], None] = lambda n: None,
) -> TCAVResult:
    """CAVs, scores and the significance test from activations already taken: ``acts[set][layer]``
    (n, F) and ``grads[layer]`` (T, F)."""
    if test not in TESTS:
        from convlens.core.naming import unknown

        raise unknown("significance test", test, TESTS)
    order = [*concepts, *randoms]
    R = len(randoms)
    runs: dict[tuple[str, str], Run] = {}
    null: dict[str, Run] = {}
    gen = torch.Generator().manual_seed(seed)
    tested = [*concepts, *(f"{a}/{b}" for a, b in relative)]
    for layer in layers:
        stacked = torch.cat([acts[name][layer] for name in order])
        starts: dict[str, range] = {}
        offset = 0
        for name in order:
            n = len(acts[name][layer])
            starts[name] = range(offset, offset + n)
            offset += n
        problems: list[tuple[range, range]] = []
        labels: list[tuple[str, str, str]] = []  # (row key, positive, negative)
        for c in concepts:
            for r in randoms:
                problems.append((starts[c], starts[r]))
                labels.append((c, c, r))
        for a in randoms:  # every random set in the concept's place, against every other
            for b in randoms:
                if a != b:
                    problems.append((starts[a], starts[b]))
                    labels.append((NULL, a, b))
        for a, b in relative:
            for _ in range(R):  # resampled splits of the same two sets
                problems.append((starts[a], starts[b]))
                labels.append((f"{a}/{b}", a, b))
        fitted = fit_cavs(
            stacked,
            problems,
            classifier=classifier,
            regularization=regularization,
            test_fraction=test_fraction,
            generator=gen,
        )
        derivs = directional_derivatives(grads[layer], fitted.vectors)
        s = scores(derivs)
        for key in [*tested, NULL]:
            rows = [i for i, (k, _, _) in enumerate(labels) if k == key]
            run = Run(
                concept=key,
                layer=layer,
                partners=[
                    labels[i][2] if key != NULL else f"{labels[i][1]}/{labels[i][2]}" for i in rows
                ],
                sign_count=s["sign_count"][rows],
                magnitude=s["magnitude"][rows],
                mean=s["mean"][rows],
                accuracy=fitted.accuracy[rows],
                vectors=fitted.vectors[rows] if key != NULL else fitted.vectors[:0],
            )
            if key == NULL:
                null[layer] = run
            else:
                runs[(key, layer)] = run
        tick(1)
    tests = len(tested) * len(layers)
    rows_out: list[dict[str, Any]] = []
    notes: list[str] = []
    for key in tested:
        for layer in layers:
            run = runs[(key, layer)]
            per_set = null_scores(null[layer], randoms)
            score = float(run.sign_count.mean())
            if test == "sets":
                p = _prediction_p(score, per_set)
            else:
                p = ttest_ind(run.sign_count, null[layer].sign_count)[1]
            corrected = min(1.0, p * tests)
            accuracy = float(torch.nanmean(run.accuracy)) if run.accuracy.numel() else math.nan
            rows_out.append(
                {
                    "concept": key,
                    "layer": layer,
                    "score": score,
                    "score_std": float(run.sign_count.std()) if len(run.sign_count) > 1 else 0.0,
                    "magnitude": float(run.magnitude.mean()),
                    "mean_derivative": float(run.mean.mean()),
                    "cav_accuracy": accuracy,
                    "random_score": float(per_set.mean()),
                    "random_std": float(per_set.std()),
                    "p": p,
                    "p_corrected": corrected,
                    "significant": bool(corrected < alpha),
                    "runs": len(run.sign_count),
                }
            )
            if accuracy < NEAR_CHANCE:  # NaN (nothing held out) compares False
                notes.append(
                    f"CAVs of {key!r} at {layer} are near chance (held-out accuracy "
                    f"{accuracy:.2f} < {NEAR_CHANCE}): the concept is not linearly separable "
                    "from random pictures there, so its scores mean little"
                )
    for note in notes:
        warnings.warn(note, stacklevel=3)
    settings = {
        "classifier": classifier,
        "regularization": regularization,
        "test_fraction": test_fraction,
        "alpha": alpha,
        "correction": f"Bonferroni over {tests} tests (concepts x layers)",
        "test": TESTS[test],
        "seed": seed,
        "relative": [list(p) for p in relative],
    }
    return TCAVResult(
        target="",
        target_index=-1,
        layers=list(layers),
        concepts=list(tested),
        randoms=list(randoms),
        rows=rows_out,
        runs=runs,
        null=null,
        shapes=dict(shapes),
        settings=settings,
        warnings=notes,
    )


def null_scores(null: Run, randoms: Sequence[str]) -> torch.Tensor:
    """(R,) each random set's TCAV score in a concept's place: its mean over the other sets."""
    firsts = [p.split("/", 1)[0] for p in null.partners]
    return torch.stack(
        [null.sign_count[[i for i, f in enumerate(firsts) if f == r]].mean() for r in randoms]
    )


def _prediction_p(score: float, null: torch.Tensor) -> float:
    """Two-sided p of a new draw ``score`` from the distribution the ``null`` sample (R,) came
    from: ``t = (score - mean) / (sd * sqrt(1 + 1 / R))`` with R - 1 degrees of freedom."""
    from convlens.core.stats import t_sf

    values = null.double()
    R = values.numel()
    mean, sd = float(values.mean()), float(values.std(unbiased=True))
    if sd == 0:
        return 1.0 if score == mean else 0.0
    t = (score - mean) / (sd * math.sqrt(1 + 1 / R))
    return min(1.0, 2 * t_sf(abs(t), R - 1))
