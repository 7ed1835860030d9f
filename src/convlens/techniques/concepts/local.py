"""The default test (``test="local"``): does the class logit rise where the concept appears in
the target pictures, more than it would for a set of random pictures?

Why not the TCAV score alone (measured on the toon model, see the README): a CAV fitted on
whole activation maps mixes everything that tells concept pictures from random ones (a flat
field of colour against clutter), and the directional derivative sums the gradient over every
position of the target picture, background included. Cassidy's yellow hair raises her logit
by 6 units when painted in (an intervention), yet the derivative along the yellow CAV is
negative for every cassidy picture at every layer: making the *whole picture* more yellow
lowers her logit. And the sign-count score saturates: the target pictures' gradients agree, so
a random direction gives nearly all-or-nothing signs (random sets score 0.01-1.00), and no
test on that score has power.

Why not the gradient at the picture either (the statistic before, ``steps=0``): it is the
slope at the picture, and the network is far from linear between "no concept" and "the
concept as the picture shows it". At the toon model's ``pool1`` the slope along yellow at
cassidy's hair has either sign from picture to picture (yellow found in 11 of 20 draws) while
painting the hair yellow instead of grey moves her logit by +6, and "dark" (blue, black) came
out falsely positive in 17 of 20. Integrated along the path from nothing to the picture, the
gradient measures what the finite change does: yellow +, dark 0 (README, power table).

What this test computes, per layer (``C`` channels, ``P`` positions):

1. **The CAV** is the difference of the mean channel vectors, ``d = mu_concept - mu_random``
   (means over every picture and position; FastCAV's direction, in channel space).
2. **Where the concept appears** in target picture ``t``: positions ``p`` whose activation
   lies on the concept's side of the nearest-mean rule *and* is at least as concept-like as
   90 % of the concept pictures' own positions: ``(a_t[p] - mu_random) . d >= tau`` with
   ``tau = max(|d|^2 / 2, q_0.1)``, ``q_0.1`` the 10 % quantile of the same projection over a
   grid of positions of the concept pictures.
3. **The integrated derivative** of the class logit ``f`` along the CAV at those positions,
   ``S_t = sum_p IG_t[p] . d / sqrt(n_t)`` (``n_t`` positions; 0 where none), with
   ``IG_t = (1 / K) sum_k grad f(alpha_k a_t)``, ``alpha_k = (k + 1/2) / K`` (``K = steps``,
   default :data:`STEPS`): the gradient at the layer integrated along the straight path from
   a zero map (no feature anywhere) to the picture's activation ``a_t`` (integrated gradients,
   Sundararajan et al. 2017, at the layer). ``IG_t[p] . d`` is the derivative along ``d`` at
   ``p`` averaged over the path, i.e. over every strength of the picture's features from none
   to what it has: the logit change a unit of the concept makes there on average, not only at
   the picture's own point (a ReLU unit already on, or not yet on, there no longer decides the
   sign). Scaled by ``sqrt(n_t)`` so that a larger area does not by itself make a larger
   number. The statistic is the mean of ``S_t`` over target pictures; ``score`` is the share
   of the target pictures showing the concept whose ``S_t`` is positive. ``steps=0`` reads the
   gradient at the picture instead (first order, the statistic before).
4. **The null** (a permutation test over concept/random membership): under H0 the concept's
   pictures are exchangeable with the random pictures (the concept is a random set posing as
   one). Every step above is repeated for ``permutations`` random relabellings of the pooled
   pictures (the same number of "concept" pictures each time); the two-sided p-value is
   ``min(1, 2 min(#{null >= s} + 1, #{null <= s} + 1) / (B + 1))``, exact for any sample
   size. The sign of ``s - mean(null)`` is the direction. The path (from zero, along the
   target's own activation) does not depend on the labels, so the integrated gradients are
   computed once and every relabelling costs what it did with the plain gradient: the
   statistic stays linear in ``d`` and the null stays exact. (A step along the CAV itself,
   ``f(a + s d) - f(a)``, would need ``T`` forward passes per relabelling and layer: a
   thousand times the cost.)

Assumptions, stated: the concept pictures and the random pictures are each independent draws
(exchangeable under H0); the test is conditional on the target pictures (it answers for them,
so use enough of them to stand for the class); a zero map is "no feature" at the layer (true
after a ReLU or a pooling of one; for a layer with signed outputs, such as a linear bottleneck,
zero is only a reference point, not a picture the network has seen); the effect is the one
averaged along the path from that zero map, which can differ from the effect of a change that
starts at the picture (check against an intervention where you can).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch

QUANTILE = 0.1  # a position must be as concept-like as 90 % of the concept pictures' positions
GRID = 4  # positions per side sampled from each concept / random picture for that quantile
SIDE = 32  # maps wider than this are read in blocks (mean activation, summed gradient)
STOP = 10  # Besag-Clifford: stop relabelling once this many exceed the observed statistic
POWER = 0.8  # the power "pictures needed" warnings aim at
WARN_BELOW = 10  # warn when an undecided effect would need at most this many times the pictures
MIN_PRESENT = 5  # fewer target pictures showing the concept than this gives a warning
STEPS = 4  # midpoint-rule points of the path from a zero map to the picture (0: the gradient)


def path_text(steps: int) -> str:
    """How the local test read the class logit's gradient, in words (for settings)."""
    if steps == 0:
        return "the gradient at each target picture (first order)"
    return (
        f"the gradient integrated along the path from a zero map to each target picture's "
        f"activation at the layer ({steps} midpoint steps)"
    )


def picture_stats(activations: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the local test keeps of concept and random pictures' activations (B, C, ...):
    ``mean`` (B, C) over positions and ``grid`` (B, C, G) at up to ``GRID x GRID`` evenly spaced
    positions (all of them for a layer without space)."""
    x = activations.detach().float()
    if x.dim() == 2:
        return {"mean": x.cpu(), "grid": x.unsqueeze(-1).cpu()}
    if x.dim() == 4:
        x = _blocks(x)
    if x.dim() >= 4:
        rows = torch.linspace(0, x.shape[2] - 1, min(GRID, x.shape[2])).round().long()
        cols = torch.linspace(0, x.shape[3] - 1, min(GRID, x.shape[3])).round().long()
        grid = x[:, :, rows][:, :, :, cols].flatten(2)
        return {"mean": x.flatten(2).mean(2).cpu(), "grid": grid.cpu()}
    flat = x.flatten(2)
    idx = torch.linspace(0, flat.shape[2] - 1, min(GRID * GRID, flat.shape[2])).round().long()
    return {"mean": flat.mean(2).cpu(), "grid": flat[:, :, idx].cpu()}


def _blocks(x: torch.Tensor, total: bool = False) -> torch.Tensor:
    """An (N, C, H, W) map in blocks of at most ``SIDE x SIDE`` (adaptive average pooling; the
    block sum with ``total``, for gradients: the derivative of a change spread over a block)."""
    h, w = x.shape[2], x.shape[3]
    if h <= SIDE and w <= SIDE:
        return x
    size = (min(h, SIDE), min(w, SIDE))
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, size)
    return pooled * (h * w / (size[0] * size[1])) if total else pooled


def positions(tensor: torch.Tensor, gradient: bool = False) -> torch.Tensor:
    """(T, C, P): a target batch's activations (or, with ``gradient``, gradients) (T, C, ...) by
    channel and position (P = 1 for a layer without space), maps wider than ``SIDE`` in
    blocks."""
    if tensor.dim() == 2:
        return tensor.unsqueeze(-1)
    if tensor.dim() == 4:
        tensor = _blocks(tensor, total=gradient)
    return tensor.flatten(2)


@dataclass
class _Flat:
    """The inputs of :func:`local_statistic` laid out once for many labellings."""

    means: torch.Tensor  # (N, C) float64
    total: torch.Tensor  # (C,) their sum
    grid: torch.Tensor  # (N G, C)
    acts: torch.Tensor  # (T P, C)
    grads: torch.Tensor  # (T P, C)
    G: int
    T: int
    P: int


def _flat(
    means: torch.Tensor, grid: torch.Tensor, target_acts: torch.Tensor, target_grads: torch.Tensor
) -> _Flat:
    N, C, G = grid.shape
    T, _, P = target_acts.shape
    return _Flat(
        means=means,
        total=means.sum(0),
        grid=grid.permute(0, 2, 1).reshape(N * G, C).contiguous(),
        acts=target_acts.permute(0, 2, 1).reshape(T * P, C).contiguous(),
        grads=target_grads.permute(0, 2, 1).reshape(T * P, C).contiguous(),
        G=G,
        T=T,
        P=P,
    )


def local_statistic(
    means: torch.Tensor,
    grid: torch.Tensor,
    concept: torch.Tensor,
    target_acts: torch.Tensor,
    target_grads: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The test's statistic for ``L`` labellings at once.

    ``means`` (N, C) and ``grid`` (N, C, G): the pooled concept and random pictures;
    ``concept`` (L, K) long: which K of them are the concept in each labelling;
    ``target_acts`` / ``target_grads`` (T, C, P) (float32 is fast and enough: the set
    statistics are averaged in float64); the gradients integrated along the path from a zero
    map (:func:`~.collect._integrated`) or taken at the picture. Returns ``statistic`` (L,),
    ``per_target`` (L, T) the local derivatives ``S_t``, ``present`` (L, T) positions showing
    the concept, and ``direction`` (L, C) the CAV ``d``.
    """
    return _statistic(_flat(means, grid, target_acts, target_grads), concept)


def _statistic(flat: _Flat, concept: torch.Tensor) -> dict[str, torch.Tensor]:
    N, K, G = len(flat.means), concept.shape[1], flat.G
    chosen = flat.means[concept].sum(1)  # (L, C)
    mu_c = chosen / K
    mu_r = (flat.total - chosen) / (N - K)
    d = mu_c - mu_r
    offset = (mu_r * d).sum(1)  # projection of mu_random on d
    # tau: at least the nearest-mean midpoint, at least the concept positions' QUANTILE
    projected = (flat.grid @ d.to(flat.grid.dtype).T).double()
    own = projected.view(N, G, -1).permute(2, 0, 1)  # (L, N, G)
    own = own.gather(1, concept.unsqueeze(-1).expand(-1, -1, G)).flatten(1) - offset[:, None]
    k = max(1, math.ceil(QUANTILE * own.shape[1]))
    tau = torch.maximum((d * d).sum(1) / 2, own.kthvalue(k, dim=1).values)
    dt = d.to(flat.acts.dtype).T
    present = (flat.acts @ dt).sub_((offset + tau).to(flat.acts.dtype)).ge_(0)  # (T P, L)
    deriv = (flat.grads @ dt).mul_(present)
    count = present.view(flat.T, flat.P, -1).sum(1).double()  # (T, L)
    total = deriv.view(flat.T, flat.P, -1).sum(1).double()
    per_target = total / count.clamp_min(1).sqrt()
    return {
        "statistic": per_target.mean(0),
        "per_target": per_target.T,
        "present": count.T.round().long(),
        "direction": d,
    }


def _chunk(target_positions: int) -> int:
    """Labellings per batch: about 2^22 values per (positions x labellings) matrix."""
    return max(1, min(256, (1 << 22) // max(1, target_positions)))


@dataclass
class LocalRun:
    """One (concept, layer) of the local test: ``per_target`` (T,) local derivatives ``S_t``,
    ``present`` (T,) positions showing the concept, ``direction`` (C,) the CAV ``d`` (not unit
    length: it is the mean difference), ``null`` (B,) the statistic under relabellings,
    ``null_score`` (B,) their scores, ``accuracy`` the held-out accuracy of the CAV's
    nearest-mean rule on whole pictures, ``p`` the two-sided permutation p-value (relabelling
    stops early, after ``STOP`` exceedances, when the answer is clearly "no")."""

    concept: str
    layer: str
    per_target: torch.Tensor
    present: torch.Tensor
    direction: torch.Tensor
    null: torch.Tensor
    null_score: torch.Tensor
    accuracy: float
    p: float = math.nan
    negatives: str = "random"

    @property
    def statistic(self) -> float:
        return float(self.per_target.mean())

    @property
    def logit_change(self) -> float:
        """The mean over target pictures of ``sum_p g_t[p] . d`` where the concept appears
        (``g`` the gradient integrated along the path from a zero map, or at the picture): the
        change of the class logit if the concept got as much stronger again there, at the rate
        the path averages (logits)."""
        return float((self.per_target.double() * self.present.double().sqrt()).mean())

    @property
    def score(self) -> float:
        """Share of the target pictures showing the concept whose logit rises there (NaN when
        it appears in none)."""
        shown = self.present > 0
        if not bool(shown.any()):
            return math.nan
        return float((self.per_target[shown] > 0).float().mean())


def _score(per_target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(L,) the score of each labelling (0.5 where the concept appears in no target)."""
    shown = (present > 0).to(per_target.dtype)
    rises = ((per_target > 0).to(per_target.dtype) * shown).sum(1)
    n = shown.sum(1)
    return torch.where(n > 0, rises / n.clamp_min(1), torch.full_like(n, 0.5))


def nearest_mean_accuracy(
    means: torch.Tensor, n_concept: int, generator: torch.Generator, test_fraction: float = 1 / 3
) -> float:
    """Held-out accuracy of the rule "closer to the concept's mean than to the random mean" on
    whole pictures (channel means): equal numbers of each side, ``test_fraction`` held out."""
    pos = torch.randperm(n_concept, generator=generator)
    neg = n_concept + torch.randperm(len(means) - n_concept, generator=generator)
    k = min(len(pos), len(neg))
    n_test = min(k - 1, max(1, round(k * test_fraction))) if k >= 3 else 0
    if n_test == 0:
        return math.nan
    train_p, test_p = pos[n_test:k], pos[:n_test]
    train_n, test_n = neg[n_test:k], neg[:n_test]
    mu_c, mu_r = means[train_p].mean(0), means[train_n].mean(0)
    d = mu_c - mu_r
    mid = (mu_c + mu_r) / 2
    right = ((means[test_p] - mid) @ d > 0).sum() + ((means[test_n] - mid) @ d <= 0).sum()
    return float(right) / (2 * n_test)


def local_run(
    concept: str,
    layer: str,
    sets: Sequence[Mapping[str, torch.Tensor]],
    others: Sequence[Mapping[str, torch.Tensor]],
    target_acts: torch.Tensor,
    target_grads: torch.Tensor,
    *,
    permutations: int,
    generator: torch.Generator,
    negatives: str = "random",
) -> LocalRun:
    """The local test of one concept at one layer: ``sets`` the concept's picture stats
    (:func:`picture_stats`, one mapping per batch or set), ``others`` the random pictures' (or
    the other concept's, for relative TCAV), ``target_acts`` / ``target_grads`` (T, C, P)."""
    means = torch.cat([s["mean"] for s in [*sets, *others]]).double()
    grid = torch.cat([s["grid"] for s in [*sets, *others]]).float()
    n_c = sum(len(s["mean"]) for s in sets)
    n = len(means)
    flat = _flat(means, grid, target_acts, target_grads)
    found = _statistic(flat, torch.arange(n_c).unsqueeze(0))
    statistic = float(found["statistic"][0])
    chunk = _chunk(target_acts.shape[0] * target_acts.shape[2])
    null, null_score = [], []
    done = above = below = 0
    while done < permutations and min(above, below) < STOP:
        size = min(chunk, permutations - done, max(16, done))  # small first: most stop early
        labels = torch.rand(size, n, generator=generator).argsort(1)[:, :n_c]
        got = _statistic(flat, labels)
        null.append(got["statistic"])
        null_score.append(_score(got["per_target"], got["present"]))
        above += int((got["statistic"] >= statistic).sum())
        below += int((got["statistic"] <= statistic).sum())
        done += size
    return LocalRun(
        concept=concept,
        layer=layer,
        per_target=found["per_target"][0].float(),
        present=found["present"][0],
        direction=found["direction"][0].float(),
        null=torch.cat(null).float() if null else torch.zeros(0),
        null_score=torch.cat(null_score).float() if null_score else torch.zeros(0),
        accuracy=nearest_mean_accuracy(means.float(), n_c, generator),
        p=sequential_p(above, below, done, stopped=min(above, below) >= STOP),
        negatives=negatives,
    )


def sequential_p(above: int, below: int, done: int, *, stopped: bool) -> float:
    """Two-sided Monte Carlo p-value from ``done`` relabellings, ``above`` / ``below`` of them
    at least / at most the observed statistic: Besag & Clifford (1991) when relabelling
    stopped at ``STOP`` exceedances (``2 STOP / done``), otherwise the observed labelling
    counted among them, ``2 (min + 1) / (done + 1)``; never above 1."""
    least = min(above, below)
    if stopped:
        return min(1.0, 2 * least / done)
    return min(1.0, 2 * (least + 1) / (done + 1))


def permutation_p(statistic: float, null: torch.Tensor) -> float:
    """Two-sided Monte Carlo permutation p-value (the observed labelling counted among the
    ``B`` relabellings, so it is never 0): ``min(1, 2 min(#>= + 1, #<= + 1) / (B + 1))``."""
    B = null.numel()
    above = int((null >= statistic).sum()) + 1
    below = int((null <= statistic).sum()) + 1
    return min(1.0, 2 * min(above, below) / (B + 1))


def pictures_needed(z: float, alpha: float, tests: int, power: float = POWER) -> float:
    """How many times the present numbers of concept and random pictures an effect of ``z``
    null standard deviations would need to be found with ``power`` at ``alpha`` (two-sided,
    Bonferroni over ``tests``): ``((z_{1 - alpha / 2m} + z_power) / |z|)^2``, the usual
    normal sample-size rule (the null's spread falls as one over the square root of the
    number of pictures). ``inf`` for ``z = 0``."""
    if z == 0 or not math.isfinite(z):
        return math.inf if z == 0 else 1.0
    normal = NormalDist()
    need = normal.inv_cdf(1 - alpha / (2 * tests)) + normal.inv_cdf(power)
    return (need / abs(z)) ** 2


def local_row(
    run: LocalRun, *, alpha: float, tests: int, n_concept: int, n_negative: int
) -> tuple[dict[str, Any], list[str]]:
    """The table row of one local run, and the warnings it raises."""
    statistic = run.statistic
    null = run.null.double()
    mean, sd = float(null.mean()), float(null.std()) if null.numel() > 1 else 0.0
    z = (statistic - mean) / sd if sd > 0 else (0.0 if statistic == mean else math.inf)
    p = run.p if not math.isnan(run.p) else permutation_p(statistic, run.null)
    corrected = min(1.0, p * tests)
    significant = corrected < alpha
    shown = int((run.present > 0).sum())
    targets = int(run.present.numel())
    notes: list[str] = []
    where = f"{run.concept!r} at {run.layer}"
    needed: dict[str, int] | None = None
    if not significant and shown > 0:
        factor = pictures_needed(z, alpha, tests)
        if factor <= 100:
            needed = {
                "concept": math.ceil(n_concept * max(factor, 1.0)),
                "random": math.ceil(n_negative * max(factor, 1.0)),
            }
        if factor <= WARN_BELOW:
            assert needed is not None
            notes.append(
                f"{where}: not significant, but undecided rather than absent: an effect of "
                f"this size ({z:+.1f} null sd) would need about {needed['concept']} concept "
                f"and {needed['random']} {run.negatives} pictures (now {n_concept} and "
                f"{n_negative}) to be found with {POWER:.0%} power"
            )
    distinct = math.comb(n_concept + n_negative, n_concept)
    if n_negative > 0 and 2 / distinct >= alpha / tests:
        enough = n_concept + 1
        while 2 / math.comb(enough + n_negative, enough) >= alpha / tests:
            enough += 1
        notes.append(
            f"{where}: {n_concept} concept and {n_negative} {run.negatives} pictures allow only "
            f"{distinct} distinct relabellings, so no p-value can fall below {alpha} after the "
            f"correction over {tests} tests: about {enough} concept pictures would be needed"
        )
    if shown < MIN_PRESENT:
        more = "many more" if shown == 0 else f"about {math.ceil(MIN_PRESENT * targets / shown)}"
        notes.append(
            f"{where}: the concept appears in {shown} of {targets} target pictures, so the "
            f"test can say little about the class; {more} target pictures would show it in "
            f"{MIN_PRESENT}"
        )
    row = {
        "concept": run.concept,
        "layer": run.layer,
        "score": run.score,
        "score_std": math.nan,
        "effect": statistic,
        "magnitude": math.nan,  # the set tests' sum(S+) / sum(|S|): no meaning here
        "mean_derivative": run.logit_change,
        "z": z,
        "direction": "+" if z > 0 else "-" if z < 0 else "0",
        "present": shown / targets if targets else math.nan,
        "cav_accuracy": run.accuracy,
        "random_score": float(run.null_score.mean()) if run.null_score.numel() else math.nan,
        "random_std": float(run.null_score.std()) if run.null_score.numel() > 1 else 0.0,
        "p": p,
        "p_corrected": corrected,
        "significant": bool(significant),
        "runs": int(run.null.numel()),
        "needed": needed,
    }
    return row, notes
