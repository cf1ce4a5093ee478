"""The report's statistics: mean and std over seeds with a t-interval, a bootstrap over test
items, and Pearson's r. numpy and the standard library only (no torch, no scipy).

Two intervals, both at 95%:
  - over seeds (n >= 2): mean ± t(0.975, n - 1) · std / sqrt(n), Student's t;
  - over test items: a percentile bootstrap, 1000 resamples of the test items with replacement.
    The indices drawn depend only on the benchmark's name and its number of items, so every run
    of a benchmark (base and final, every seed, every method) is resampled on the same items:
    deltas are paired, and a cell pooled over seeds resamples the items once for all its seeds.
    A mean over several benchmarks resamples each benchmark independently.
"""

from __future__ import annotations

import math
import statistics
import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
# Student's t, 0.975 quantile, for 1..30 degrees of freedom; 1.96 (the normal) beyond.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
TOLERANCE = 1e-9  # point values this close are equal (a degenerate interval still overlaps)

Interval = tuple[float, float]


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int  # seeds
    seeds: Interval | None = None  # t-interval over seeds (n >= 2)
    items: Interval | None = None  # bootstrap over test items (where runs kept their items)

    def text(self, signed: bool = False) -> str:
        return f"{self.mean:{'+' if signed else ''}.3f} ± {self.std:.3f}"

    @property
    def interval(self) -> Interval:
        """The span of both intervals (either alone where the other is missing; the point
        itself where neither is known): a difference counts only if it survives both."""
        known = [i for i in (self.seeds, self.items) if i is not None]
        if not known:
            return self.mean, self.mean
        return min(lo for lo, _ in known), max(hi for _, hi in known)

    def interval_text(self, digits: int = 2) -> str:
        if self.seeds is None and self.items is None:
            return "[no interval]"
        lo, hi = self.interval
        return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def t_interval(values: list[float]) -> Interval | None:
    if len(values) < 2:
        return None
    t = _T975[len(values) - 2] if len(values) - 1 <= len(_T975) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    mean = statistics.fmean(values)
    return mean - half, mean + half


def seed_stats(values: list[tuple[int, float]], items: Interval | None = None) -> Stat:
    """Mean, std and t-interval over seeds of (seed, value) pairs; values sharing a seed are
    averaged first. `items` is the item bootstrap's interval, where known."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for seed, value in values:
        by_seed[seed].append(value)
    means = [statistics.fmean(v) for v in by_seed.values()]
    std = statistics.stdev(means) if len(means) > 1 else 0.0
    return Stat(statistics.fmean(means), std, len(means), t_interval(means), items)


def overlap(a: Interval, b: Interval) -> bool:
    return a[0] <= b[1] + TOLERANCE and b[0] <= a[1] + TOLERANCE


def resampled_means(values, name: str, resamples: int = RESAMPLES) -> np.ndarray:
    """The means of `resamples` bootstrap resamples of `values`. The generator is seeded by
    `name` and the number of items: the same name and size draw the same items."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    rng = np.random.default_rng(zlib.crc32(f"{name}/{n}".encode()))
    out = np.empty(resamples)
    chunk = max(1, 2 ** 22 // n)  # index arrays of at most 4M entries (MMLU has 14k items)
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        out[start:start + k] = values[rng.integers(0, n, size=(k, n))].mean(axis=1)
    return out


def item_interval(parts: list[tuple[str, list[float]]], point: float | None = None
                  ) -> Interval | None:
    """95% percentile bootstrap interval of the mean over `parts` (benchmark name, per-item
    values) of each part's item mean; each part is resampled on its own. Where `point` (the
    recorded score) differs from the items' mean (a corpus-level metric such as chrF), the
    interval is moved by the difference so that it stays around the recorded score."""
    parts = [(name, v) for name, v in parts if v is not None and len(v)]
    if not parts:
        return None
    boot = sum(resampled_means(v, name) for name, v in parts) / len(parts)
    center = statistics.fmean(float(np.mean(v)) for _, v in parts)
    shift = 0.0 if point is None else point - center
    lo, hi = np.percentile(boot, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(lo) + shift, float(hi) + shift


def pooled(vectors: list[tuple[int, list[float]]]) -> list[float] | None:
    """Per-item mean over seeds of (seed, per-item values) (vectors sharing a seed averaged
    first), or None where the vectors are missing or of different lengths."""
    if not vectors or any(v is None for _, v in vectors) or len({len(v) for _, v in vectors}) > 1:
        return None
    by_seed: dict[int, list] = defaultdict(list)
    for seed, v in vectors:
        by_seed[seed].append(np.asarray(v, dtype=float))
    return list(np.mean([np.mean(vs, axis=0) for vs in by_seed.values()], axis=0))


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r, or None where it means nothing (fewer than 3 points, or a constant)."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return statistics.correlation(xs, ys)
