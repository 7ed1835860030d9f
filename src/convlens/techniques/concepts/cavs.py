"""CAVs (linear classifiers concept vs random, fitted together in torch) and the scores of
directional derivatives along them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

CLASSIFIERS = ("logistic", "svm", "mean")


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
