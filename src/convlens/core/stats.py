"""Small statistics convlens needs without SciPy: Student's t distribution (tail, quantile,
two-sample test, interval) and the similarity of two maps (Pearson, Spearman, SSIM)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def _t_log_density_constant(df: float) -> float:
    return math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)


def t_sf(t: float, df: float) -> float:
    """``P(T > t)`` for Student's t with ``df`` (> 0, not necessarily whole) degrees of
    freedom: the density integrated with Simpson's rule after ``x = tan(u)``, which keeps the
    integrand smooth up to the tail (accurate to about 1e-10, also far in the tail)."""
    if not df > 0:
        raise ValueError(f"expected df > 0, got {df!r}")
    if math.isnan(t):
        return math.nan
    if t < 0:
        return 1.0 - t_sf(-t, df)
    log_c = _t_log_density_constant(df)
    lower, upper = math.atan(t), math.pi / 2
    intervals = 2000
    h = (upper - lower) / intervals
    total = 0.0
    for i in range(intervals + 1):
        u = lower + i * h
        cos = math.cos(u)
        if cos <= 1e-300:  # u = pi / 2: the integrand's limit is 0 (df > 1) or c (df = 1)
            f = math.exp(log_c) * df if df == 1 else 0.0
        else:
            x = math.tan(u)
            f = math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df)) / cos**2
        total += f * (1 if i in (0, intervals) else (4 if i % 2 else 2))
    return min(0.5, total * h / 3)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on
    :func:`t_sf`; accurate to about 1e-9)."""
    if not 0 < p < 1:
        raise ValueError(f"expected a probability in (0, 1), got {p!r}")
    if df < 1:
        raise ValueError(f"expected df >= 1, got {df!r}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while 1 - t_sf(high, df) < p:
        low, high = high, high * 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if 1 - t_sf(mid, df) < p else (low, mid)
    return (low + high) / 2


def ttest_ind(a: Any, b: Any) -> tuple[float, float]:
    """Student's two-sample t-test with pooled variance (as ``scipy.stats.ttest_ind``):
    ``(t, two-sided p)``. Two samples that are constant and equal give ``(nan, 1.0)``; constant
    and different, ``(+-inf, 0.0)``."""
    x = torch.as_tensor(a, dtype=torch.float64).flatten()
    y = torch.as_tensor(b, dtype=torch.float64).flatten()
    n, m_ = x.numel(), y.numel()
    if n < 2 or m_ < 2:
        raise ValueError(f"expected at least 2 values in each sample, got {n} and {m_}")
    df = n + m_ - 2
    diff = float(x.mean() - y.mean())
    pooled = (float(x.var(unbiased=True)) * (n - 1) + float(y.var(unbiased=True)) * (m_ - 1)) / df
    se = math.sqrt(pooled * (1 / n + 1 / m_))
    if se == 0:
        return (math.nan, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    t = diff / se
    return t, min(1.0, 2 * t_sf(abs(t), df))


def t_interval(values: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """``mean -+ t_{(1 + level) / 2, n - 1} * sd / sqrt(n)`` of a 1-D sample (sample sd)."""
    values = values.double().flatten()
    n = values.numel()
    if n < 2:
        return math.nan, math.nan
    mean = float(values.mean())
    half = t_quantile((1 + level) / 2, n - 1) * float(values.std(unbiased=True)) / math.sqrt(n)
    return mean - half, mean + half


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """(N, P) float64 ranks (1 ... P) of each row, ties given their average rank (as
    ``scipy.stats.rankdata(method="average")``)."""
    values = values.double()
    n = values.shape[0]
    ranks = torch.empty_like(values)
    for i in range(n):
        sorted_values, order = torch.sort(values[i], stable=True)
        _, inverse, counts = torch.unique_consecutive(
            sorted_values, return_inverse=True, return_counts=True
        )
        ends = counts.cumsum(0).double()
        mean_rank = ends - (counts.double() - 1) / 2  # average of start+1 ... end
        ranks[i, order] = mean_rank[inverse]
    return ranks


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) Pearson correlation of matching rows of (N, P) tensors; a constant row carries no
    order, so its correlation is 0 (1 when both rows are constant)."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    flat_a, flat_b = norm_a <= 1e-12 * (1 + norm_a), norm_b <= 1e-12 * (1 + norm_b)
    r = (a * b).sum(1) / torch.where(flat_a | flat_b, 1.0, norm_a * norm_b)
    r = torch.where(flat_a | flat_b, 0.0, r.clamp(-1, 1))
    return torch.where(flat_a & flat_b, 1.0, r)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) Spearman rank correlation of matching maps (N, H, W): the Pearson correlation of
    their average ranks (``scipy.stats.spearmanr``); 0 against a constant map (1 if both are)."""
    if a.shape != b.shape:
        raise ValueError(f"expected maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    n = a.shape[0]
    return pearson(average_ranks(a.reshape(n, -1)), average_ranks(b.reshape(n, -1)))


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    data_range: float = 1.0,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """(N,) mean structural similarity (Wang et al. 2004) of matching grey images (N, H, W),
    computed as ``skimage.metrics.structural_similarity(a, b, data_range=data_range)``: a
    ``win_size`` uniform window, sample covariances, the mean over the positions where the
    window fits inside the image."""
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(
            f"expected two (N, H, W) batches of one shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if win_size % 2 != 1 or win_size < 3 or win_size > min(a.shape[-2:]):
        raise ValueError(
            f"expected an odd win_size in [3, {min(a.shape[-2:])}] (the smaller image side), "
            f"got {win_size}"
        )
    x, y = a.double()[:, None], b.double()[:, None]

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, win_size, stride=1)

    points = win_size * win_size
    cov_norm = points / (points - 1)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)
