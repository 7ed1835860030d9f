"""The significance tests: ``"local"`` (the default, :mod:`.local`), the
paper's two-sample t-test (``"paper"``) and the prediction test of a concept's TCAV score among
the random sets' scores (``"sets"``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import torch

from convlens.core.stats import ttest_ind
from convlens.techniques.concepts.cavs import directional_derivatives, fit_cavs, scores
from convlens.techniques.concepts.local import LocalRun, local_row, local_run, positions
from convlens.techniques.concepts.result import NULL, Run, TCAVResult

NEAR_CHANCE = 0.6  # mean held-out CAV accuracy below this gives a warning
TESTS = {
    "local": "where the concept appears in each target picture, the class logit's derivative "
    "along the CAV (integrated along the path from a zero map to the picture's activation, or "
    "at the picture with steps=0), against relabellings of concept and random pictures "
    "(two-sided permutation test)",
    "sets": "the concept's TCAV score against those of the random sets, each in a concept's "
    "place against the others (two-sided Student t prediction test, R - 1 df)",
    "paper": "Student's two-sided two-sample t-test, the concept's scores against its random "
    "partners vs the random-vs-random scores (Kim et al. 2018)",
}


def _check_test(test: str) -> None:
    if test not in TESTS:
        from convlens.core.naming import unknown

        raise unknown("significance test", test, TESTS)


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
    """CAVs, scores and a set test (``"sets"`` or ``"paper"``) from activations already taken:
    ``acts[set][layer]`` (n, F) flattened and ``grads[layer]`` (T, F)."""
    _check_test(test)
    if test == "local":
        raise ValueError("the local test reads picture statistics: use _analyse_local")
    gen = torch.Generator().manual_seed(seed)
    tested = [*concepts, *(f"{a}/{b}" for a, b in relative)]
    runs: dict[tuple[str, str], Run | LocalRun] = {}
    null: dict[str, Run] = {}
    for layer in layers:
        fitted, labels = _layer_cavs(
            acts, layer, concepts, randoms, relative, classifier, regularization, test_fraction, gen
        )
        s = scores(directional_derivatives(grads[layer], fitted.vectors))
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
    rows_out, notes = _set_rows(runs, null, tested, randoms, layers, test, alpha)
    for note in notes:
        warnings.warn(note, stacklevel=3)
    settings = {
        "classifier": classifier,
        "regularization": regularization,
        "test_fraction": test_fraction,
        "alpha": alpha,
        "correction": f"Bonferroni over {len(rows_out)} tests (concepts x layers)",
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
        test=test,
    )


def _layer_cavs(
    acts: Mapping[str, Mapping[str, torch.Tensor]],
    layer: str,
    concepts: Sequence[str],
    randoms: Sequence[str],
    relative: Sequence[tuple[str, str]],
    classifier: str,
    regularization: float,
    test_fraction: float,
    gen: torch.Generator,
) -> tuple[Any, list[tuple[str, str, str]]]:
    """All of one layer's CAVs for the set tests: every concept against every random set,
    every random set against every other, ``R`` resampled splits per relative pair."""
    order = [*concepts, *randoms]
    R = len(randoms)
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
    return fitted, labels


def _set_rows(
    runs: Mapping[tuple[str, str], Run | LocalRun],
    null: Mapping[str, Run],
    tested: Sequence[str],
    randoms: Sequence[str],
    layers: Sequence[str],
    test: str,
    alpha: float,
) -> tuple[list[dict[str, Any]], list[str]]:
    tests = len(tested) * len(layers)
    rows_out: list[dict[str, Any]] = []
    notes: list[str] = []
    for key in tested:
        for layer in layers:
            run = runs[(key, layer)]
            assert isinstance(run, Run)
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
                    "test": test,
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
                notes.append(_near_chance(key, layer, accuracy))
    if test == "sets":
        for layer in layers:
            note = _sets_power(null_scores(null[layer], randoms), layer, alpha, tests)
            if note:
                notes.append(note)
    return rows_out, notes


def _sets_power(per_set: torch.Tensor, layer: str, alpha: float, tests: int) -> str | None:
    """A warning when the ``"sets"`` test cannot find anything at ``layer``: not even a score
    of 0 or 1 (the extremes of a share) would be significant against the random sets' scores
    ``per_set`` (R,). It says how many random sets would make the extreme score significant
    (their scores' mean and spread kept), or that no number would."""
    R = per_set.numel()
    mean, sd = float(per_set.double().mean()), float(per_set.double().std())
    extreme = 1.0 if mean <= 0.5 else 0.0
    level = alpha / tests
    if sd == 0 or _prediction_p(extreme, per_set) < level:
        return None
    where = f"test 'sets' at {layer}"
    spread = f"the {R} random sets' own scores spread {mean:.2f} +- {sd:.2f}"
    # R -> infinity: the t prediction test becomes a normal one
    if 2 * (1 - NormalDist().cdf(abs(extreme - mean) / sd)) >= level:
        return (
            f"{where}: {spread}, so no concept can be significant there with any number of "
            f"random sets (even a score of {extreme:.0f}); use test='local'"
        )
    needed = R
    from convlens.core.stats import t_sf

    while needed < 100_000:
        needed = math.ceil(needed * 1.25) + 1
        t = abs(extreme - mean) / (sd * math.sqrt(1 + 1 / needed))
        if 2 * t_sf(t, needed - 1) < level:
            break
    return (
        f"{where}: {spread}, so with {R} random sets no concept can be significant (not even "
        f"a score of {extreme:.0f}): about {needed} random sets would be needed"
    )


def _near_chance(key: str, layer: str, accuracy: float) -> str:
    return (
        f"CAVs of {key!r} at {layer} are near chance (held-out accuracy {accuracy:.2f} < "
        f"{NEAR_CHANCE}): the concept is not linearly separable from random pictures there, so "
        "its scores mean little"
    )


def _analyse_local(
    stats: Mapping[str, Mapping[str, torch.Tensor]],
    targets: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, ...]],
    concepts: Sequence[str],
    randoms: Sequence[str],
    layers: Sequence[str],
    *,
    relative: Sequence[tuple[str, str]] = (),
    alpha: float = 0.05,
    permutations: int | None = None,
    seed: int = 0,
    tick: Callable[[int], None] = lambda n: None,
) -> TCAVResult:
    """The local test (:mod:`.local`) from picture statistics already taken:
    ``stats[set]["<layer>:mean"]`` (n, C) and ``["<layer>:grid"]`` (n, C, G), and the target
    pictures' flattened ``targets["<layer>"]`` gradients (integrated along the path, as
    :func:`~.collect._collect` gives them with ``steps``, or at the picture) and
    ``["<layer>:act"]`` activations."""
    tested = [*concepts, *(f"{a}/{b}" for a, b in relative)]
    m = len(tested) * len(layers)
    B = permutations if permutations is not None else default_permutations(m, alpha)
    if isinstance(B, bool) or not isinstance(B, int) or B < 1:
        raise ValueError(f"expected permutations >= 1, got {permutations!r}")
    gen = torch.Generator().manual_seed(seed)
    runs: dict[tuple[str, str], Run | LocalRun] = {}
    rows_out: list[dict[str, Any]] = []
    notes: list[str] = []
    if 2 / (B + 1) * m >= alpha:
        notes.append(
            f"{B} permutations cannot give p < {alpha} after the correction over {m} tests; "
            f"use at least {math.ceil(2 * m / alpha)}"
        )
    for layer in layers:
        shape = (-1, shapes[layer][0], *shapes[layer][1:]) if shapes[layer] else (-1, 1)
        t_acts = positions(targets[f"{layer}:act"].view(shape)).float()
        t_grads = positions(targets[layer].view(shape), gradient=True).float()

        def picked(name: str, layer: str = layer) -> dict[str, torch.Tensor]:
            return {k: stats[name][f"{layer}:{k}"] for k in ("mean", "grid")}

        pool = [picked(r) for r in randoms]
        pairs = [(c, [picked(c)], pool, "random") for c in concepts]
        pairs += [(f"{a}/{b}", [picked(a)], [picked(b)], repr(b)) for a, b in relative]
        for key, positive, negative, label in pairs:
            run = local_run(
                key,
                layer,
                positive,
                negative,
                t_acts,
                t_grads,
                permutations=B,
                generator=gen,
                negatives=label,
            )
            runs[(key, layer)] = run
            n_pos = sum(len(s["mean"]) for s in positive)
            n_neg = sum(len(s["mean"]) for s in negative)
            row, found = local_row(run, alpha=alpha, tests=m, n_concept=n_pos, n_negative=n_neg)
            row["test"] = "local"
            rows_out.append(row)
            notes += found
            if run.accuracy < NEAR_CHANCE:
                notes.append(_near_chance(key, layer, run.accuracy))
        tick(1)
    order = {key: i for i, key in enumerate(tested)}
    rows_out.sort(key=lambda r: order[r["concept"]])  # concept by concept, as the set tests
    for note in notes:
        warnings.warn(note, stacklevel=3)
    settings = {
        "classifier": "mean (difference of channel means, nearest-mean presence)",
        "alpha": alpha,
        "correction": f"Bonferroni over {m} tests (concepts x layers)",
        "test": TESTS["local"],
        "permutations": B,
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
        null={},
        shapes=dict(shapes),
        settings=settings,
        warnings=notes,
        test="local",
    )


def default_permutations(tests: int, alpha: float) -> int:
    """Enough relabellings that a p-value can fall below ``alpha / tests`` (the Bonferroni
    level) with a margin: ``5 tests / alpha - 1`` (p can reach a fifth of that level), at
    least 999."""
    return max(999, math.ceil(5 * tests / alpha) - 1)


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
