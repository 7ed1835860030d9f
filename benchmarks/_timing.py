"""Shared timing helpers for the benchmarks: interleaved runs, medians and IQRs, result rows.

Variants are timed in interleaved rounds (a, b, c, b, a, c, ...), so machine noise hits all of
them alike; each round is shuffled (seeded) so no variant always runs right after another. That
matters on CPU: a variant that frees a lot of memory makes the next one fault pages back in.
A timed call ends when the variant returns its result; freeing that result is not timed.
Objects alive before timing are frozen out of the garbage collector (``gc.freeze``), so a
collection that happens to fall inside a timed call does not walk torch's whole object graph.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Wall times of one variant, in seconds."""

    samples: tuple[float, ...]

    def _quartiles(self) -> list[float]:
        return statistics.quantiles(self.samples, n=4, method="inclusive")

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1e3

    @property
    def iqr_ms(self) -> float:
        """The interquartile range (NaN for a single run)."""
        if len(self.samples) < 2:
            return float("nan")
        q1, _, q3 = self._quartiles()
        return (q3 - q1) * 1e3

    unit = "ms"

    @property
    def median(self) -> float:
        return self.median_ms

    @property
    def iqr(self) -> float:
        return self.iqr_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_ms": self.median_ms,
            "iqr_ms": self.iqr_ms,
            "repeats": len(self.samples),
            "samples_ms": [t * 1e3 for t in self.samples],
        }


@dataclass(frozen=True)
class Quantity:
    """Measurements of something other than wall time, in ``unit``: peak memory growth in MiB
    (one sample per fresh process), a difference between two maps (unit ``""``), ..."""

    samples: tuple[float, ...]
    unit: str

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        if len(self.samples) < 2:
            return float("nan")
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q3 - q1

    def to_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "iqr": self.iqr,
            "unit": self.unit,
            "repeats": len(self.samples),
            "samples": list(self.samples),
        }


def interleaved(
    variants: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 3
) -> dict[str, Timing]:
    """Time every variant ``repeats`` times (after ``warmup`` untimed rounds), interleaved."""
    if repeats < 2:
        raise ValueError(f"expected repeats >= 2, got {repeats}")
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(0)
    gc.collect()
    gc.freeze()
    try:
        for _ in range(repeats):
            for name in order.sample(names, len(names)):
                fn = variants[name]
                start = time.perf_counter()
                result = fn()
                samples[name].append(time.perf_counter() - start)
                del result
    finally:
        gc.unfreeze()
    return {name: Timing(tuple(times)) for name, times in samples.items()}


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    ``ratio`` is this row's median over the median of the row named ``baseline``;
    ``target`` is the largest ratio that passes (``strict``: the ratio must stay below it).
    ``timing`` is a :class:`Timing`, or a :class:`Quantity` for rows that measure something
    else (peak memory, a difference between maps).
    """

    benchmark: str
    case: str
    timing: Timing | Quantity
    baseline: str | None = None
    ratio: float | None = None
    target: float | None = None
    strict: bool = False

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio < self.target if self.strict else self.ratio <= self.target

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        return f"{'<' if self.strict else '<='} {self.target:g}x"

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "case": self.case,
            **self.timing.to_dict(),
            "baseline": self.baseline,
            "ratio": self.ratio,
            "target": self.target_text or None,
            "met": self.met,
        }


def compare(
    benchmark: str,
    timings: Mapping[str, Timing | Quantity],
    baseline: str,
    targets: Mapping[str, tuple[float, bool]] | None = None,
) -> list[Row]:
    """Rows for ``timings``, each with its ratio to ``baseline``; ``targets`` maps a case to
    ``(largest ratio, strict)``."""
    base = timings[baseline].median
    rows = []
    for case, timing in timings.items():
        target, strict = (targets or {}).get(case, (None, False))
        rows.append(
            Row(
                benchmark,
                case,
                timing,
                baseline=None if case == baseline else baseline,
                ratio=None if case == baseline else timing.median / base,
                target=target,
                strict=strict,
            )
        )
    return rows
