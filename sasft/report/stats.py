"""The report's statistics: one hierarchical bootstrap over seeds and test items, for a cell's
interval and for the paired difference between two methods; the detectable difference (power)
and the design plan; Pearson's r. numpy and the standard library only (no torch, no scipy).
What they mean for the report, written once: docs/report.md ("How the report counts").
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
# The smallest true difference a two-sided test at alpha 0.05 finds with 80% power is
# (z(0.975) + z(0.80)) standard errors: 1.96 + 0.84 = 2.80 (normal approximation).
POWER_FACTOR = 2.80
TOLERANCE = 1e-9  # an interval end this close to 0 touches it
SCORE_RANGE, CHANGE_RANGE = (0.0, 1.0), (-1.0, 1.0)  # every score is in [0, 1] (evaluate.py)

Interval = tuple[float, float]


@dataclass(frozen=True)
class Part:
    """One benchmark's scores in a sample: a matrix of seeds x test items (one column, the
    recorded score, where the runs kept no per-item scores), weighted in the sample's mean."""
    name: str
    matrix: np.ndarray
    recorded: np.ndarray  # the recorded score per seed
    weight: float = 1.0


@dataclass(frozen=True)
class Sample:
    """What one quantity was measured on: its seeds (sorted), per seed the recorded value
    (`points`), and the parts the bootstrap resamples; `items` tells whether they are
    per-item scores (else one column per seed: a seed-level bootstrap)."""
    seeds: tuple[int, ...]
    points: np.ndarray
    parts: tuple[Part, ...]
    items: bool

    @property
    def shape(self) -> str:
        """"3 seeds x 100 items" (the items of one benchmark, or a range), or "3 seeds"."""
        sizes = sorted({p.matrix.shape[1] for p in self.parts})
        seeds = f"{len(self.seeds)} seed{'s' * (len(self.seeds) != 1)}"
        if not self.items:
            return seeds
        items = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
        return f"{seeds} x {items} items"

    @property
    def replicated(self) -> bool:
        """Whether there is anything to resample: 2 or more seeds, or per-item scores."""
        return len(self.seeds) > 1 or self.items


def sample(per_seed: dict[int, list[tuple[str, float, list[float] | None, float]]]) -> Sample:
    """A Sample from {seed: [(part name, recorded value, per-item scores or None, weight)]}.
    Per-item scores are used where every seed has them for every part with equal lengths;
    otherwise the sample is seed-level (each part's recorded value per seed)."""
    seeds = tuple(sorted(per_seed))
    names = [name for name, *_ in per_seed[seeds[0]]]
    rows = {s: {name: (value, items, weight) for name, value, items, weight in per_seed[s]}
            for s in seeds}
    if any(set(rows[s]) != set(names) for s in seeds):
        raise ValueError(f"seeds {seeds} measured different parts")
    lengths = {(name, None if rows[s][name][1] is None else len(rows[s][name][1]))
               for s in seeds for name in names}
    items = all(n for _, n in lengths) and len(lengths) == len(names)
    parts = []
    for name in names:
        matrix = [rows[s][name][1] if items else [rows[s][name][0]] for s in seeds]
        recorded = np.array([rows[s][name][0] for s in seeds], dtype=float)
        parts.append(Part(name, np.asarray(matrix, dtype=float), recorded,
                          rows[seeds[0]][name][2]))
    total = sum(p.weight for p in parts)
    points = np.array([sum(rows[s][n][0] * rows[s][n][2] for n in names) / total for s in seeds])
    return Sample(seeds, points, tuple(parts), items)


def restrict(smp: Sample, seeds: tuple[int, ...]) -> Sample:
    keep = [smp.seeds.index(s) for s in seeds]
    return Sample(seeds, smp.points[keep], tuple(Part(p.name, p.matrix[keep], p.recorded[keep],
                                                      p.weight) for p in smp.parts), smp.items)


def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(key.encode()))


def resampled_means(smp: Sample, resamples: int = RESAMPLES) -> np.ndarray:
    """The sample's weighted mean over parts, under `resamples` hierarchical bootstrap draws:
    the seeds are drawn with replacement, then each part's test items, once for all the drawn
    seeds (every seed and method is scored on the same items). The draws depend only on the
    number of seeds and on each part's name and size: two samples of the same shape are
    resampled alike, so that a difference of their resampled means is a paired bootstrap."""
    n_seeds = len(smp.seeds)
    seed_draws = _rng(f"seeds/{n_seeds}").integers(0, n_seeds, size=(resamples, n_seeds))
    counts = np.zeros((resamples, n_seeds))
    np.add.at(counts, (np.arange(resamples)[:, None], seed_draws), 1.0)
    counts /= n_seeds
    total = np.zeros(resamples)
    for part in smp.parts:
        n = part.matrix.shape[1]
        rng = _rng(f"items/{part.name}/{n}")
        chunk = max(1, 2 ** 22 // n)  # at most 4M drawn indices at once (MMLU has 14k items)
        for start in range(0, resamples, chunk):
            stop = min(resamples, start + chunk)
            by_seed = counts[start:stop] @ part.matrix  # each draw's seed-weighted item scores
            drawn = rng.integers(0, n, size=(stop - start, n))
            total[start:stop] += part.weight * np.take_along_axis(by_seed, drawn, 1).mean(1)
    return total / sum(p.weight for p in smp.parts)


def center(smp: Sample) -> float:
    """The sample's mean as the bootstrap sees it (the mean of its item scores)."""
    return sum(p.weight * float(p.matrix.mean()) for p in smp.parts) / \
        sum(p.weight for p in smp.parts)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # over seeds
    n: int  # seeds
    ci: Interval | None = None  # 95% hierarchical bootstrap interval (None: nothing to resample)
    se: float | None = None  # the bootstrap's standard error
    shape: str = ""  # what was resampled: "3 seeds x 100 items", or "3 seeds" (seed level)

    @property
    def interval(self) -> Interval:
        """The interval, or the point itself where there is none."""
        return self.ci if self.ci is not None else (self.mean, self.mean)

    def text(self, signed: bool = False) -> str:
        return f"{self.mean:{'+' if signed else ''}.3f} ± {self.std:.3f}"

    def interval_text(self, digits: int = 2, signed: bool = False) -> str:
        if self.ci is None:
            return "[no interval]"
        sign = "+" if signed else ""
        return f"[{self.ci[0]:{sign}.{digits}f}, {self.ci[1]:{sign}.{digits}f}]"

    @property
    def detectable(self) -> float | None:
        """The smallest difference this design finds with 80% power (alpha 0.05, two-sided);
        None without resampling, or where every resample agrees (no spread: nothing to judge
        the design's power by, not a power to detect any difference)."""
        return None if not self.se else POWER_FACTOR * self.se


def bootstrap(smp: Sample, bounds: Interval | None = None) -> Stat:
    """Mean over seeds of the recorded values, std over seeds, and the 95% percentile interval
    of the hierarchical bootstrap, moved by the difference between the recorded mean and the
    items' mean (a corpus-level metric such as chrF) and clipped to `bounds`."""
    mean = float(smp.points.mean())
    std = float(np.std(smp.points, ddof=1)) if len(smp.points) > 1 else 0.0
    if not smp.replicated:
        return Stat(mean, std, len(smp.seeds), shape=smp.shape)
    boot = resampled_means(smp)
    shift = mean - center(smp)
    lo, hi = (float(x) + shift for x in np.percentile(boot, [100 * (1 - LEVEL) / 2,
                                                                100 * (1 + LEVEL) / 2]))
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return Stat(mean, std, len(smp.seeds), (lo, hi), float(np.std(boot)), smp.shape)


def difference(a: Sample, b: Sample) -> Sample | None:
    """a - b, paired by seed and by test item, on the seeds both have (None if they share
    none). Where either lacks per-item scores of a part, both are compared at seed level."""
    seeds = tuple(s for s in a.seeds if s in b.seeds)
    if not seeds:
        return None
    a, b = restrict(a, seeds), restrict(b, seeds)
    if [(p.name, p.matrix.shape) for p in a.parts] == [(p.name, p.matrix.shape) for p in b.parts]:
        parts = tuple(Part(p.name, p.matrix - q.matrix, p.recorded - q.recorded, p.weight)
                      for p, q in zip(a.parts, b.parts))
        return Sample(seeds, a.points - b.points, parts, a.items)
    if [p.name for p in a.parts] != [p.name for p in b.parts]:
        raise ValueError(f"parts differ: {[p.name for p in a.parts]}, {[p.name for p in b.parts]}")
    parts = tuple(Part(p.name, (p.recorded - q.recorded)[:, None], p.recorded - q.recorded,
                       p.weight) for p, q in zip(a.parts, b.parts))
    return Sample(seeds, a.points - b.points, parts, False)


def decide(diff: Stat) -> str:
    """"better" where the paired interval lies above 0, "worse" below, else "not
    distinguishable" (also where there was nothing to resample)."""
    if diff.ci is None:
        return "not distinguishable"
    if diff.ci[0] > TOLERANCE:
        return "better"
    if diff.ci[1] < -TOLERANCE:
        return "worse"
    return "not distinguishable"


# --- the design plan: variance components of a paired difference ---------------------------


@dataclass(frozen=True)
class Components:
    """Variance components of a per-seed, per-item difference (seeds crossed with items, one
    score per cell): the seed's, the item's, and what is left (seed-by-item and noise)."""
    seed: float
    item: float
    residual: float
    seeds: int
    items: int

    def se(self, seeds: int, items: int) -> float:
        return math.sqrt(self.seed / seeds + self.item / items + self.residual / (seeds * items))

    def detectable(self, seeds: int, items: int) -> float:
        return POWER_FACTOR * self.se(seeds, items)


def pooled_matrix(smp: Sample) -> np.ndarray:
    """A per-item sample's parts side by side, each column scaled so that the mean over all
    columns is the sample's weighted mean over parts (a part of n of N items, weight w of W:
    x (w / W) (N / n)): the seeds x items matrix of a mean over benchmarks, for `components`."""
    total_items = sum(p.matrix.shape[1] for p in smp.parts)
    total_weight = sum(p.weight for p in smp.parts)
    return np.concatenate([p.matrix * (p.weight / total_weight) * (total_items / p.matrix.shape[1])
                           for p in smp.parts], axis=1)


def components(matrix: np.ndarray) -> Components:
    """Two-way random-effects ANOVA (expected mean squares) of a seeds x items matrix; a
    negative estimate is set to 0. With one seed, the seed's share is unknown (0); with one
    item (seed-level), the item's and the residual's are."""
    m = np.asarray(matrix, dtype=float)
    s, n = m.shape
    grand = m.mean()
    ms_seed = n * ((m.mean(1) - grand) ** 2).sum() / (s - 1) if s > 1 else 0.0
    ms_item = s * ((m.mean(0) - grand) ** 2).sum() / (n - 1) if n > 1 else 0.0
    if s > 1 and n > 1:
        resid = m - m.mean(1, keepdims=True) - m.mean(0, keepdims=True) + grand
        ms_res = (resid ** 2).sum() / ((s - 1) * (n - 1))
    else:
        ms_res = ms_item if s == 1 else 0.0  # one seed: item and residual cannot be told apart
    if n == 1:
        return Components(ms_seed, 0.0, 0.0, s, n)
    if s == 1:  # counted as the item's: more seeds would not shrink it (the cautious side)
        return Components(0.0, ms_res, 0.0, s, n)
    return Components(max(0.0, (ms_seed - ms_res) / n), max(0.0, (ms_item - ms_res) / s),
                      ms_res, s, n)


# --- small summaries ------------------------------------------------------------------------


def seed_stats(values: list[tuple[int, float]]) -> Stat:
    """Mean and std over seeds of (seed, value) pairs (values sharing a seed averaged first);
    no interval: for the report's mean ± std lines."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for seed, value in values:
        by_seed[seed].append(value)
    means = [statistics.fmean(v) for v in by_seed.values()]
    std = statistics.stdev(means) if len(means) > 1 else 0.0
    return Stat(statistics.fmean(means), std, len(means))


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r, or None where it means nothing (fewer than 3 points, or a constant)."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return statistics.correlation(xs, ys)
