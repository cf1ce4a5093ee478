"""The design question, answered from a sweep's own runs: how many seeds and test items a
paired comparison needs to detect a difference D (`python -m sasft.report <sweep> --plan
--detect 0.05`). The variance components of every paired difference of one kind of scenario
(seed, item, residual: stats.components) are averaged; the detectable difference at S seeds
and n items is 2.80 * sqrt(seed / S + item / n + residual / (S n)). Rules: docs/report.md."""

from __future__ import annotations

import statistics

from .compare import Scenario
from .stats import POWER_FACTOR, Components

SEEDS = (1, 2, 3, 5, 10, 20)
MAX_SEEDS, MAX_ITEMS = 1000, 10 ** 7


def pooled_components(table: list[Scenario], kind: str) -> Components | None:
    found = [p.components for sc in table if sc.kind == kind for p in sc.pairs
             if p.components is not None]
    if not found:
        return None
    mean = lambda f: statistics.fmean(getattr(c, f) for c in found)  # noqa: E731
    return Components(mean("seed"), mean("item"), mean("residual"),
                      round(statistics.median(c.seeds for c in found)),
                      round(statistics.median(c.items for c in found)))


def fewest(c: Components, detect: float, seeds: int | None = None, items: int | None = None
           ) -> int | None:
    """The fewest seeds (at `items`) or items (at `seeds`) that detect `detect`, or None."""
    fits = (lambda s: c.detectable(s, items) <= detect) if items else \
        (lambda n: c.detectable(seeds, n) <= detect)
    limit = MAX_SEEDS if items else MAX_ITEMS
    if not fits(limit):
        return None
    lo, hi = 1, limit  # fits is monotone: bisect for the first that fits
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo


def seed_count(n: int) -> str:
    return f"{n} seed" + "s" * (n != 1)


def plan_lines(table: list[Scenario], detect: float) -> list[str]:
    lines = [f"# Design plan: the seeds and test items that detect a difference of {detect:g}",
             "", f"The smallest difference found with 80% power by a two-sided test at alpha "
             f"0.05 is {POWER_FACTOR:.2f} standard errors of the paired difference; its "
             "variance, from this sweep's paired comparisons (every pair of methods, each kind "
             "of scenario averaged), is seed / S + item / n + residual / (S n)."]
    for kind, name in (("in_domain", "in-domain scenarios"), ("general", "general scenarios"),
                       ("general_change", "general change (a model and task's mean over its "
                        "general benchmarks; items: all of theirs, each benchmark's scaled to "
                        "its weight)")):
        c = pooled_components(table, kind)
        if c is None:
            lines += ["", f"## {name}", "", "No paired comparison to learn from."]
            continue
        sizes = sorted({c.items, 2 * c.items, 5 * c.items}) if c.items > 1 else [1]
        rows = [[s, *(f"{c.detectable(s, n):.3f}" for n in sizes)] for s in SEEDS]
        lines += ["", f"## {name}", "",
                  f"Variance components (mean over the comparisons): seed {c.seed:.2e}, item "
                  f"{c.item:.2e}, residual {c.residual:.2e}; the runs have "
                  f"{seed_count(c.seeds)} x {c.items} items (medians)."]
        if c.seeds == 1:
            lines.append("With one seed, the seeds' share is unknown (counted as 0) and the "
                         "items' cannot be told from the residual (all counted as the items', "
                         "which more seeds do not shrink): run 2 or more seeds before trusting "
                         "this plan.")
        if c.items == 1:
            lines.append("No per-item scores (results.json schema 2): items are not counted.")
        lines += ["", "| seeds | " + " | ".join(f"{n} items" for n in sizes) + " |",
                  "|---|" + "---|" * len(sizes),
                  *("| " + " | ".join(map(str, r)) + " |" for r in rows), ""]
        by_seeds = fewest(c, detect, items=c.items)
        by_items = fewest(c, detect, seeds=c.seeds) if c.items > 1 else None
        lines.append(f"To detect {detect:g}: " + (
            f"{seed_count(by_seeds)} at {c.items} items" if by_seeds else
            f"no number of seeds at {c.items} items (the items' variance alone is too large)")
            + "; " + (f"{by_items} items at {seed_count(c.seeds)}." if by_items else
                      f"no number of items at {seed_count(c.seeds)} (the seeds' variance "
                      "alone is too large)." if c.items > 1 else "items unknown."))
    return lines
