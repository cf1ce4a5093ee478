"""How the report compares methods: each cell's score with its intervals, the runs that did not
learn the task, and the tie rule behind "best or tied in N of M".

The rules, in words, are written once in docs/report.md ("How it counts").
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from .runs import Run, at_reference, family, ordered
from .stats import Stat, item_interval, overlap, pooled, seed_stats

HEADLINE_METHOD, HEADLINE_NAME = "sasft", "SA-SFT"


# --- runs that did not learn the task ------------------------------------------------------


@dataclass
class Verdict:
    """Whether one run learned its task, judged on its in-domain benchmark."""
    run: Run
    benchmark: str
    final: Stat
    delta: Stat
    chance: float | None
    reasons: list[str]

    @property
    def learned(self) -> bool:
        return not self.reasons


def run_stat(run: Run, bench: str, which: str) -> Stat:
    """One run's final score or delta on `bench`, with the item bootstrap's interval."""
    point = run.results["scores"][bench][which]
    vector = run.items(bench, "delta" if which == "delta" else "final")
    return Stat(point, 0.0, 1, None, item_interval([(bench, vector)], point))


def verdict(run: Run) -> Verdict | None:
    bench = run.in_domain
    if bench is None:
        return None
    final, delta, chance = run_stat(run, bench, "final"), run_stat(run, bench, "delta"), \
        run.chance(bench)
    how = "" if final.items else " (no per-item scores: point value)"
    reasons = []
    if delta.interval[0] <= 0:
        reasons.append(f"delta {delta.mean:+.3f} {delta.interval_text(3)} not clearly above 0"
                       + how)
    if chance is not None and final.interval[0] <= chance:
        reasons.append(f"final {final.mean:.3f} {final.interval_text(3)} not clearly above "
                       f"chance {chance:.3f}" + how)
    return Verdict(run, bench, final, delta, chance, reasons)


def verdicts(runs: list[Run]) -> list[Verdict]:
    return [v for v in map(verdict, runs) if v is not None]


# --- the scenario table --------------------------------------------------------------------


@dataclass
class Scenario:
    model: str
    task: str
    benchmark: str
    kind: str
    base: float
    chance: float | None = None
    final: dict[str, Stat] = field(default_factory=dict)
    delta: dict[str, Stat] = field(default_factory=dict)
    not_learned: set[str] = field(default_factory=set)  # methods with a run that did not learn

    @property
    def contenders(self) -> list[str]:
        return [m for m in self.final if self.kind != "general" or m not in self.not_learned]

    @property
    def top(self) -> str | None:
        return max(self.contenders, key=lambda m: self.final[m].mean, default=None)

    @property
    def best(self) -> list[str]:
        """The top cell and every contender whose interval overlaps the top's."""
        if self.top is None:
            return []
        top = self.final[self.top].interval
        return [m for m in self.contenders if overlap(self.final[m].interval, top)]


def cell_stat(rows: list[tuple[Run, dict]], bench: str, which: str) -> Stat:
    """A cell's final score or delta: mean over seeds, t-interval over seeds, and the item
    bootstrap of the per-item means pooled over the seeds' runs."""
    values = [(run.seed, score[which]) for run, score in rows]
    stat = seed_stats(values)
    vector = pooled([(run.seed, run.items(bench, "delta" if which == "delta" else "final"))
                     for run, _ in rows])
    return seed_stats(values, item_interval([(bench, vector)], stat.mean))


def scenario_table(runs: list[Run], ratio: float | None,
                   judged: list[Verdict] | None = None) -> list[Scenario]:
    """One Scenario per (model, task, benchmark) with a counted run; the base score is the mean
    over every run of the scenario (it is the same cached number in all of them)."""
    judged = verdicts(runs) if judged is None else judged
    failed = {(v.run.model, v.run.task, v.run.label) for v in judged
              if not v.learned and at_reference(v.run, ratio)}
    base: dict[tuple, list[float]] = defaultdict(list)
    first: dict[tuple, dict] = {}
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for bench, score in run.results["scores"].items():
            key = (run.model, run.task, bench)
            base[key].append(score["base"])
            first.setdefault(key, score)
            if at_reference(run, ratio):
                cells[key][run.label].append((run, score))
    table = []
    kind = lambda k: first[k]["kind"]  # noqa: E731
    for key in sorted(cells, key=lambda k: (k[0], k[1], kind(k) != "in_domain", k[2])):
        sc = Scenario(*key, kind(key), statistics.fmean(base[key]), first[key].get("chance"))
        for label in ordered(cells[key]):
            rows = cells[key][label]
            if len({run.variant for run, _ in rows}) > 1:  # label_variants names every difference
                raise AssertionError(f"{key} {label}: runs of different variants in one cell")
            sc.final[label] = cell_stat(rows, key[2], "final")
            sc.delta[label] = cell_stat(rows, key[2], "delta")
            if (key[0], key[1], label) in failed:
                sc.not_learned.add(label)
        table.append(sc)
    return table


# --- counting -------------------------------------------------------------------------------


def best_counts(table: list[Scenario]) -> dict[str, tuple[int, int]]:
    """{method: (scenarios where it is best or tied, scenarios where it is alone best)}."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for sc in table:
        for method in sc.best:
            counts[method][0] += 1
            counts[method][1] += len(sc.best) == 1
    return {m: tuple(c) for m, c in counts.items()}


def _wins(scs: list[Scenario]) -> tuple[int, int]:
    """Scenarios where a variant of the headline method is best or tied, and where only
    variants of it are."""
    mine = [[family(m) == HEADLINE_METHOD for m in sc.best] for sc in scs]
    return sum(any(m) for m in mine), sum(bool(m) and all(m) for m in mine)


def headline(table: list[Scenario]) -> str:
    """"SA-SFT best or tied in N of M scenarios, alone best in K"; with several variants of
    sasft, the line names them."""
    n, alone = _wins(table)
    variants = ordered({l for sc in table for l in sc.final if family(l) == HEADLINE_METHOD})
    if not variants:
        return f"No {HEADLINE_NAME} runs in these {len(table)} scenarios: each method's count is below"
    which = f" (any of: {'; '.join(variants)})" if len(variants) > 1 else ""
    return (f"{HEADLINE_NAME} best or tied in {n} of {len(table)} scenarios, alone best in "
            f"{alone}{which}")


def breakdown(table: list[Scenario]) -> str:
    """The headline per kind of scenario, and how many scenarios involve a run that did not
    learn the task."""
    parts = []
    for kind, name in (("in_domain", "in-domain"), ("general", "general")):
        scs = [sc for sc in table if sc.kind == kind]
        if scs:
            n, alone = _wins(scs)
            parts.append(f"{name}: best or tied in {n} of {len(scs)}, alone best in {alone}")
    involved = [sc for sc in table if sc.not_learned]
    general = [sc for sc in involved if sc.kind == "general"]
    learned = (f"{len(involved)} of {len(table)} scenarios involve a method with a run that did "
               f"not learn the task; in {len(general)} general scenarios such methods were left "
               f"out of the comparison" if involved else
               "Every counted run learned its task")
    cells = [s for sc in table for s in sc.final.values()]
    bare = sum(s.seeds is None and s.items is None for s in cells)
    bare = (f" {bare} of {len(cells)} cells have no interval (one seed and no per-item scores): "
            "there only equal scores tie, and a win may be noise." if bare else "")
    has_headline = any(family(l) == HEADLINE_METHOD for sc in table for l in sc.final)
    per_kind = f"{HEADLINE_NAME} per kind of scenario: " + "; ".join(parts) + ". " \
        if has_headline else ""
    return f"{per_kind}{learned}.{bare}"


def averages(table: list[Scenario], methods: list[str]) -> list[tuple[str, float, dict]]:
    """(row name, mean base, {method: (mean final, mean delta, scenarios)}) per benchmark, then
    per kind and overall, and the general average over the runs that learned their task. A
    method is averaged over the scenarios where it has runs."""
    groups: dict[str, list[Scenario]] = defaultdict(list)
    for sc in table:
        groups[sc.benchmark].append(sc)
    groups["in-domain (all tasks)"] = [sc for sc in table if sc.kind == "in_domain"]
    groups["general (all benchmarks)"] = [sc for sc in table if sc.kind == "general"]
    groups["all scenarios"] = table
    rows = []
    for name, scs in groups.items():
        if scs:
            rows.append((name, statistics.fmean(sc.base for sc in scs),
                         _per_method(scs, methods, lambda sc, m: True)))
    general = groups["general (all benchmarks)"]
    if any(sc.not_learned for sc in general):
        rows.append(("general, where the method learned the task",
                     statistics.fmean(sc.base for sc in general),
                     _per_method(general, methods, lambda sc, m: m not in sc.not_learned)))
    return rows


def _per_method(scs: list[Scenario], methods: list[str], keep) -> dict:
    per_method = {}
    for m in methods:
        have = [sc for sc in scs if m in sc.final and keep(sc, m)]
        if have:
            per_method[m] = (statistics.fmean(sc.final[m].mean for sc in have),
                             statistics.fmean(sc.delta[m].mean for sc in have), len(have))
    return per_method


# --- the learning-forgetting plane ---------------------------------------------------------


def plane_point(runs: list[Run]) -> tuple[Stat, Stat] | None:
    """A method's (general change, in-domain change) over `runs` (one label; any models and
    tasks): mean over seeds of each seed's mean over its runs, t-interval over seeds, and the
    item bootstrap over every (task, benchmark) the runs cover (items pooled over seeds)."""
    runs = [r for r in runs if {"general_delta", "in_domain_delta"} <= set(r.results["summary"])]
    if not runs:
        return None
    point = []
    for kind in ("general", "in_domain"):
        values = [(r.seed, r.results["summary"][f"{kind}_delta"]) for r in runs]
        by_cell: dict[tuple, list] = defaultdict(list)
        for r in runs:
            for bench, score in r.results["scores"].items():
                if score["kind"] == kind:
                    by_cell[(r.model, r.task, bench)].append((r.seed, r.items(bench, "delta")))
        parts = [(key[2], pooled(vectors)) for key, vectors in sorted(by_cell.items())]
        complete = all(v is not None for _, v in parts)
        stat = seed_stats(values)
        point.append(seed_stats(values, item_interval(parts, stat.mean) if complete else None))
    return point[0], point[1]


def plane(runs: list[Run], ratio: float | None) -> dict[str, dict[str, tuple[Stat, Stat]]]:
    """{scope: {method: (general change, in-domain change)}}, scope a model or "all models"."""
    chosen = [r for r in runs if at_reference(r, ratio)]
    scopes = {"all models": chosen} | {m: [r for r in chosen if r.model == m]
                                       for m in sorted({r.model for r in chosen})}
    out: dict[str, dict] = {}
    for scope, scoped in scopes.items():
        for label in ordered({r.label for r in scoped}):
            found = plane_point([r for r in scoped if r.label == label])
            if found:
                out.setdefault(scope, {})[label] = found
    return out
