"""The entry point, :func:`tcav`.

The tests (``test=``). ``"local"`` (the default; :mod:`.local`, assumptions there): where the
concept appears in each target picture, does the class logit rise along the CAV (its gradient
integrated along the path from a zero map to the picture's activation: a finite change, not
only the slope at the picture) more than for random pictures relabelled as the concept (exact
permutation test, two-sided, with the direction)? ``"sets"``: is the concept's TCAV score a
plausible draw from the scores random sets get in its place (valid, but the sign-count score
saturates and it rarely finds anything)? ``"paper"``: the paper's two-sample t-test, whose
false-positive rate is far above ``alpha`` (its runs share one concept set). Measured: README.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from convlens.core.engine import Engine
from convlens.core.hooks import folded_batchnorm, preserved
from convlens.core.model import Model
from convlens.techniques.activations import layer_batches
from convlens.techniques.concepts.cavs import CLASSIFIERS
from convlens.techniques.concepts.collect import (
    _Cache,
    _collect,
    _input_batches,
    _layer_shapes,
    _reduce,
    fingerprint,
)
from convlens.techniques.concepts.local import STEPS, path_text
from convlens.techniques.concepts.result import TCAVResult
from convlens.techniques.concepts.sets import ConceptSet, _as_set, concept_sets
from convlens.techniques.concepts.significance import _analyse, _analyse_local, _check_test

Progress = Callable[[int, int], None]


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
    test: str = "local",
    permutations: int | None = None,
    steps: int = STEPS,
    seed: int = 0,
    batch_size: int = 32,
    cache_dir: str | os.PathLike[str] | None = None,
    engine: Engine | None = None,
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
        See :func:`concept_sets` (``"toons"`` for the built-in toon concepts). The local test
        pools the random sets: the number of random pictures matters, not their split.
    layers, relative:
        Layer name(s) (comma-separated too; default: the last spatial layer); pairs of concept
        names for relative TCAV (concept vs concept).
    classifier, regularization, test_fraction:
        How the set tests fit CAVs (:func:`fit_cavs`): ``"logistic"``, ``"svm"`` or ``"mean"``.
        The local test always uses the difference of channel means.
    alpha:
        Significance level after the Bonferroni correction over concepts x layers.
    test:
        ``"local"`` (default), ``"sets"`` or ``"paper"``: see this module's docstring.
    permutations:
        Relabellings for the local test; default ``max(999, 5 m / alpha - 1)`` for ``m``
        concepts x layers, so that p can fall well below the corrected level.
    steps:
        The local test's gradient is integrated along the path from a zero map to each target
        picture's activation at the layer in this many points; ``0``: taken at the picture.
    seed:
        Every random choice (pool draws, splits, permutations) comes from it.
    batch_size, cache_dir:
        Pictures per forward pass; a folder for per-picture numbers keyed by content (model
        weights, layers, network input), or ``None``.
    engine:
        Run the activation pass over concept and random pictures given as files or folders on
        this engine (``cl.dataset.engine("local")``: decoding in worker processes; ``"ray"``:
        actors), without the cache; tensors and the target pictures' gradients run here.
    progress:
        ``progress(done, total)`` over the pictures run and the layers analysed.
    """
    handle, target_index, target_name, names = _checked(
        model, target, layers, batch_size, alpha, n_random, classifier, test, steps
    )
    sets, randoms = concept_sets(
        concepts, random, n_random=n_random, random_size=random_size, seed=seed
    )
    concept_names = [s.name for s in sets]
    target_set = _check_inputs(relative, concept_names, images)
    total = sum(len(s) for s in [*sets, *randoms]) + len(target_set) + len(names)
    counter = _Counter(progress, total)
    cache = _Cache(cache_dir, fingerprint(handle) if cache_dir is not None else "", names)
    passes = _passes(
        handle, [*sets, *randoms], target_set, names, target_index, test, batch_size, cache,
        counter, engine, steps if test == "local" else 0,
    )  # fmt: skip
    started = time.perf_counter()
    options: dict[str, Any] = dict(
        relative=relative, classifier=classifier, regularization=regularization, seed=seed,
        test_fraction=test_fraction, alpha=alpha, test=test, permutations=permutations,
        steps=steps,
    )  # fmt: skip
    result = _analysis(passes, concept_names, [s.name for s in randoms], names, options, counter)
    result.target, result.target_index = target_name, target_index
    result.timings = {**passes.timings, "cavs_and_scores_s": time.perf_counter() - started}
    result.settings.update(
        target_images=len(target_set),
        set_sizes={s.name: len(s) for s in [*sets, *randoms]},
        batch_size=batch_size,
        cache=None if cache_dir is None else {"dir": os.fspath(cache_dir), **cache.counts()},
    )
    return result


def _analysis(
    passes: _Passes,
    concepts: list[str],
    randoms: list[str],
    layers: list[str],
    options: dict[str, Any],
    counter: _Counter,
) -> TCAVResult:
    if options["test"] == "local":
        found = _analyse_local(
            passes.acts,
            passes.grads,
            passes.shapes,
            concepts,
            randoms,
            layers,
            relative=options["relative"],
            alpha=options["alpha"],
            permutations=options["permutations"],
            seed=options["seed"],
            tick=counter.tick,
        )
        found.settings["steps"] = options["steps"]
        found.settings["path"] = path_text(options["steps"])
        return found
    options = {k: v for k, v in options.items() if k not in ("permutations", "steps")}
    return _analyse(
        passes.acts,
        passes.grads,
        passes.shapes,
        concepts,
        randoms,
        layers,
        **options,
        tick=counter.tick,
    )


def _checked(
    model: Any,
    target: int | str,
    layers: str | Sequence[str] | None,
    batch_size: int,
    alpha: float,
    n_random: int,
    classifier: str,
    test: str,
    steps: int,
) -> tuple[Model, int, str, list[str]]:
    """The model handle, the target's index and name, and the layer names, after checking
    every argument that can be checked before a picture is read."""
    from convlens.core.naming import get_layer, unknown
    from convlens.core.tasks import as_model as _as_model
    from convlens.techniques.attribution.base import default_layer

    handle = _as_model(model)
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
        raise unknown("CAV classifier", classifier, CLASSIFIERS)
    _check_test(test)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"expected steps >= 0 (0: the gradient at the picture), got {steps!r}")
    return handle, target_index, target_name, names


def _check_inputs(
    relative: Sequence[tuple[str, str]], concept_names: list[str], images: Any
) -> ConceptSet:
    """The target pictures as a set, after checking them and the relative pairs."""
    from convlens.core.naming import unknown

    for a, b in relative:
        for c in (a, b):
            if c not in concept_names:
                raise unknown("concept", c, concept_names)
        if a == b:
            raise ValueError(f"relative TCAV needs two different concepts, got {a!r} twice")
    target_set = _as_set("target images", images)
    if len(target_set) < 2:
        raise ValueError(f"expected at least 2 target pictures, got {len(target_set)}")
    return target_set


class _Counter:
    """Progress over pictures run and layers analysed."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress = progress
        self.total = total
        self.done = 0

    def tick(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


@dataclass
class _Passes:
    acts: dict[str, dict[str, torch.Tensor]]
    grads: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    timings: dict[str, float]


def _collect_on(
    engine: Engine,
    handle: Model,
    images: list[Any],
    names: list[str],
    batch_size: int,
    counter: _Counter,
    reduce: str,
) -> dict[str, torch.Tensor]:
    """What :func:`_collect` gives without a target, from passes run on ``engine``."""
    parts: dict[str, list[torch.Tensor]] = {}
    for _names, outputs in layer_batches(
        handle, images, names, engine=engine, batch_size=batch_size
    ):
        for key, value in _reduce(outputs, names, None, reduce).items():
            parts.setdefault(key, []).append(value)
        counter.tick(len(_names))
    return {key: torch.cat(values) for key, values in parts.items()}


def _passes(
    handle: Model,
    sets: Sequence[ConceptSet],
    target_set: ConceptSet,
    names: list[str],
    target_index: int,
    test: str,
    batch_size: int,
    cache: _Cache,
    counter: _Counter,
    engine: Engine | None = None,
    steps: int = 0,
) -> _Passes:
    """Every network pass the test needs, with the user's model left as it was: activations
    of the concept and random pictures (flattened for the set tests, channel statistics for
    the local one), and the target pictures' gradients (integrated along the path from a zero
    map in ``steps`` points, when more than 0) and activations."""
    module = handle.module
    reduce = "stats" if test == "local" else "flat"
    with preserved(module, out_of_place=True):
        for p in module.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
        with folded_batchnorm(module, keep=names):
            started = time.perf_counter()
            acts = {
                s.name: (
                    _collect(handle, s.images, names, None, batch_size, cache, counter.tick, reduce)
                    if engine is None or isinstance(s.images, torch.Tensor)
                    else _collect_on(engine, handle, s.images, names, batch_size, counter, reduce)
                )
                for s in sets
            }
            timings = {"activations_s": time.perf_counter() - started}
            started = time.perf_counter()
            grads = _collect(
                handle,
                target_set.images,
                names,
                target_index,
                batch_size,
                cache,
                counter.tick,
                steps=steps,
            )
            timings["gradients_s"] = time.perf_counter() - started
            example = next(_input_batches(handle, target_set.images[:1], 1))
            shapes = _layer_shapes(handle, names, example)
    return _Passes(acts, grads, shapes, timings)
