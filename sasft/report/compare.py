"""How the report compares methods: each cell's score with its interval, whether a method learned
its task (judged on its cell), and the paired verdicts between methods behind the headline.
The rules, written once: docs/report.md ("How the report counts"); the statistics: stats.py.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from .runs import Run, at_reference, family, ordered
from .stats import (CHANGE_RANGE, SCORE_RANGE, Components, Sample, Stat, bootstrap, components,
                    decide, difference, pooled_matrix, sample)

HEADLINE_METHOD, HEADLINE_NAME = "sasft", "SA-SFT"
BASELINE_METHOD, BASELINE_NAME = "task_only", "task-only"
GENERAL_CHANGE = "general change"  # the scenario of a (model, task)'s mean over general benchmarks
LEFT_OUT = "left out"  # a general comparison where a method did not learn the task


# --- a cell's sample ------------------------------------------------------------------------


def _mean_items(vectors: list[list[float] | None]) -> list[float] | None:
    if any(v is None for v in vectors) or len({len(v) for v in vectors}) > 1:
        return None
    return list(np.mean(np.asarray(vectors, dtype=float), axis=0))


def seed_parts(rows: list[tuple[Run, dict]], benches: list[str], which: str
               ) -> dict[int, list[tuple]]:
    """{seed: [(benchmark, recorded value, per-item values or None, weight)]} for the runs of one
    cell; runs sharing a seed are averaged first (their values and their per-item values)."""
    by_seed: dict[int, list[Run]] = defaultdict(list)
    for run, _ in rows:
        by_seed[run.seed].append(run)
    item_kind = "delta" if which == "delta" else "final"
    return {seed: [(bench, statistics.fmean(r.results["scores"][bench][which] for r in runs),
                    _mean_items([r.items(bench, item_kind) for r in runs]), 1.0)
                   for bench in benches] for seed, runs in by_seed.items()}


def cell_sample(rows: list[tuple[Run, dict]], bench: str, which: str) -> Sample:
    return sample(seed_parts(rows, [bench], which))


def cell_stat(smp: Sample, which: str) -> Stat:
    return bootstrap(smp, CHANGE_RANGE if which == "delta" else SCORE_RANGE)


# --- runs that did not learn the task ------------------------------------------------------


@dataclass
class Verdict:
    """Whether one run learned its task, judged on its in-domain benchmark (its item
    bootstrap, or its point values without per-item scores): which seeds fell short."""
    run: Run
    benchmark: str
    final: Stat
    delta: Stat
    chance: float | None
    reasons: list[str]

    @property
    def learned(self) -> bool:
        return not self.reasons


def learning_reasons(final: Stat, delta: Stat, chance: float | None) -> list[str]:
    """Why a cell (or one run) did not learn its task: its in-domain change is not clearly
    above 0, or its final score not clearly above chance (the interval's lower end, or the
    point value where there is no interval)."""
    how = "" if final.ci is not None else " (no interval: point value)"
    reasons = []
    if delta.interval[0] <= 0:
        reasons.append(f"change {delta.mean:+.3f} {delta.interval_text(3, True)} not clearly "
                       f"above 0{how}")
    if chance is not None and final.interval[0] <= chance:
        reasons.append(f"final {final.mean:.3f} {final.interval_text(3)} not clearly above "
                       f"chance {chance:.3f}{how}")
    return reasons


def run_stat(run: Run, bench: str, which: str) -> Stat:
    """One run's final score or change on `bench`, with its item bootstrap's interval."""
    return cell_stat(cell_sample([(run, {})], bench, which), which)


def verdict(run: Run) -> Verdict | None:
    bench = run.in_domain
    if bench is None:
        return None
    final, delta, chance = run_stat(run, bench, "final"), run_stat(run, bench, "delta"), \
        run.chance(bench)
    return Verdict(run, bench, final, delta, chance, learning_reasons(final, delta, chance))


def verdicts(runs: list[Run]) -> list[Verdict]:
    return [v for v in map(verdict, runs) if v is not None]


# --- paired differences ---------------------------------------------------------------------


@dataclass
class Pair:
    """`method` - `reference` in one scenario, paired by seed and test item."""
    method: str
    reference: str
    diff: Stat | None  # None: no common seed
    verdict: str  # better, worse, not distinguishable, or LEFT_OUT
    note: str = ""
    components: Components | None = None  # of the difference's items (power.py's plan)

    def text(self) -> str:
        if self.diff is None:
            return f"{self.verdict} ({self.note})"
        d = self.diff
        shown = f"{d.mean:+.3f} {d.interval_text(2, True)}"
        if d.detectable is None:
            why = ("the same difference at every seed and item: no spread to judge power by"
                   if d.se == 0 else "nothing to resample")
            return f"{self.verdict}: {shown}, {self.note or why}"
        power = (f"a difference below {d.detectable:.2f} could not have been seen with {d.shape}"
                 if self.verdict == "not distinguishable" else
                 f"detectable {d.detectable:.2f} with {d.shape}")
        return f"{self.verdict}: {shown}; {power}" + (f" ({self.note})" if self.note else "")


def compared(labels) -> list[tuple[str, str]]:
    """The pairs of a scenario: SA-SFT against every other method, and every other method
    against task-only SFT (each variant of either reference with every label)."""
    labels = ordered(labels)
    pairs = []
    for ref_family, first in ((HEADLINE_METHOD, True), (BASELINE_METHOD, False)):
        for ref in (l for l in labels if family(l) == ref_family):
            for other in labels:
                if family(other) == ref_family:
                    continue
                pair = (ref, other) if first else (other, ref)
                if pair not in pairs:
                    pairs.append(pair)
    return pairs


def pair(method: str, reference: str, a: Sample, b: Sample, left_out: set[str]) -> Pair:
    smp = difference(a, b)
    if smp is None:
        return Pair(method, reference, None, "not distinguishable", "no seed in common")
    notes = []
    if len(smp.seeds) < max(len(a.seeds), len(b.seeds)):
        notes.append(f"on their common seeds {', '.join(map(str, smp.seeds))}")
    if not smp.items:
        notes.append("seed level: no per-item scores")
    if not smp.replicated:
        notes = ["one seed, no per-item scores: nothing to resample"]
    diff = bootstrap(smp, CHANGE_RANGE)
    parts = components(smp.parts[0].matrix if len(smp.parts) == 1 else pooled_matrix(smp)) \
        if smp.items or len(smp.parts) == 1 else None
    skipped = sorted(left_out & {method, reference})
    if skipped:
        return Pair(method, reference, diff, LEFT_OUT, f"{', '.join(skipped)} did not learn",
                    parts)
    return Pair(method, reference, diff, decide(diff), "; ".join(notes), parts)


# --- the scenario table --------------------------------------------------------------------


@dataclass
class Scenario:
    model: str
    task: str
    benchmark: str  # GENERAL_CHANGE for a (model, task)'s mean over its general benchmarks
    kind: str  # in_domain, general, or general_change
    base: float
    chance: float | None = None
    final: dict[str, Stat] = field(default_factory=dict)
    delta: dict[str, Stat] = field(default_factory=dict)
    not_learned: set[str] = field(default_factory=set)  # methods whose cell did not learn
    pairs: list[Pair] = field(default_factory=list)

    def find(self, method: str, reference: str) -> Pair | None:
        return next((p for p in self.pairs if (p.method, p.reference) == (method, reference)),
                    None)


@dataclass
class Learning:
    """Whether a method learned a (model, task): judged on its in-domain cell (paired against
    the base over seeds and items); the runs that fell short are listed beside it."""
    model: str
    task: str
    method: str
    final: Stat
    delta: Stat
    chance: float | None
    reasons: list[str]
    short: list[Verdict]  # runs of this cell that, alone, did not learn

    @property
    def learned(self) -> bool:
        return not self.reasons


def _cells(runs: list[Run], ratio: float | None):
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
    for key, by_label in cells.items():
        for label, rows in by_label.items():
            if len({run.variant for run, _ in rows}) > 1:  # label_variants names every difference
                raise AssertionError(f"{key} {label}: runs of different variants in one cell")
    return base, first, cells


def learning(table: list[Scenario], cells: dict, judged: list[Verdict]) -> list[Learning]:
    out = []
    for sc in table:
        if sc.kind != "in_domain":
            continue
        for label in sc.final:
            dirs = {run.dir for run, _ in cells[(sc.model, sc.task, sc.benchmark)][label]}
            short = [v for v in judged if not v.learned and v.run.dir in dirs]
            reasons = learning_reasons(sc.final[label], sc.delta[label], sc.chance)
            out.append(Learning(sc.model, sc.task, label, sc.final[label], sc.delta[label],
                                sc.chance, reasons, sorted(short, key=lambda v: v.run.seed)))
    return out


def scenario_table(runs: list[Run], ratio: float | None, judged: list[Verdict] | None = None
                   ) -> tuple[list[Scenario], list[Learning]]:
    """One Scenario per (model, task, benchmark) with a counted run, then one per (model, task)
    for the general change; and whether each method learned each task. The base score is the
    mean over every run of the scenario (the same cached number in all of them)."""
    judged = verdicts(runs) if judged is None else judged
    base, first, cells = _cells(runs, ratio)
    kind = lambda k: first[k]["kind"]  # noqa: E731
    table, samples = [], {}
    for key in sorted(cells, key=lambda k: (k[0], k[1], kind(k) != "in_domain", k[2])):
        sc = Scenario(*key, kind(key), statistics.fmean(base[key]), first[key].get("chance"))
        for label in ordered(cells[key]):
            rows = cells[key][label]
            samples[(*key, label)] = smp = cell_sample(rows, key[2], "final")
            sc.final[label] = cell_stat(smp, "final")
            sc.delta[label] = cell_stat(cell_sample(rows, key[2], "delta"), "delta")
        table.append(sc)
    learned = learning(table, cells, judged)
    failed = {(l.model, l.task, l.method) for l in learned if not l.learned}
    for sc in table:
        sc.not_learned = {m for m in sc.final if (sc.model, sc.task, m) in failed}
        left_out = sc.not_learned if sc.kind == "general" else set()
        sc.pairs = [pair(a, b, samples[(sc.model, sc.task, sc.benchmark, a)],
                         samples[(sc.model, sc.task, sc.benchmark, b)], left_out)
                    for a, b in compared(sc.final)]
    return table + general_changes(table, cells), learned


def general_changes(table: list[Scenario], cells: dict) -> list[Scenario]:
    """Per (model, task), each method's general change: the mean over the general benchmarks
    every method of it was scored on, of final - base, paired per item."""
    out = []
    for model, task in dict.fromkeys((sc.model, sc.task) for sc in table):
        general = [sc for sc in table if (sc.model, sc.task) == (model, task)
                   and sc.kind == "general"]
        labels = ordered(set.intersection(*(set(sc.final) for sc in general))) if general else []
        if not labels:
            continue
        benches = [sc.benchmark for sc in general]
        sc = Scenario(model, task, GENERAL_CHANGE, "general_change",
                      statistics.fmean(s.base for s in general),
                      not_learned=general[0].not_learned & set(labels))
        samples = {}
        for label in labels:
            rows = [row for b in benches for row in cells[(model, task, b)][label]]
            runs = [(run, {}) for run in {run.dir: run for run, _ in rows}.values()
                    if set(benches) <= set(run.results["scores"])]
            samples[label] = sample(seed_parts(runs, benches, "delta"))
            sc.delta[label] = cell_stat(samples[label], "delta")
            sc.final[label] = cell_stat(sample(seed_parts(runs, benches, "final")), "final")
        sc.pairs = [pair(a, b, samples[a], samples[b], sc.not_learned) for a, b in compared(labels)]
        out.append(sc)
    return out


# --- counting -------------------------------------------------------------------------------


WORDS = {"general": ("forgets less", "forgets more"), "general_change": ("forgets less",
         "forgets more"), "in_domain": ("learns more", "learns less")}


def tally(table: list[Scenario], method: str, reference: str, kind: str) -> Counter:
    """Verdicts of `method` against `reference` (families: their variants count too) in the
    scenarios of `kind`."""
    found = Counter()
    for sc in table:
        if sc.kind == kind:
            for p in sc.pairs:
                if family(p.method) == method and family(p.reference) == reference:
                    found[p.verdict] += 1
    return found


def counted(c: Counter, kind: str, what: str = "scenarios") -> str:
    """"forgets less in N of M <what>, more in K, not distinguishable in the rest"."""
    judged = c["better"] + c["worse"] + c["not distinguishable"]
    more, less = WORDS[kind]
    text = (f"{more} in {c['better']} of {judged} {what}, {less.split()[1]} in {c['worse']}, "
            f"not distinguishable in the rest")
    return text + (f" (left out in {c[LEFT_OUT]}: a method did not learn the task)"
                   if c[LEFT_OUT] else "")


def headline(table: list[Scenario]) -> str:
    """"SA-SFT forgets less than task-only in N of M general scenarios, more in K, not
    distinguishable in the rest"."""
    c = tally(table, HEADLINE_METHOD, BASELINE_METHOD, "general")
    if not sum(c.values()):
        n = sum(sc.kind == "general" for sc in table)
        return (f"No general scenario has both {HEADLINE_NAME} and {BASELINE_NAME} runs "
                f"({n} general scenarios): the paired verdicts of each method are below")
    return f"{HEADLINE_NAME} {counted(c, 'general', 'general scenarios')}".replace(
        "forgets less in", f"forgets less than {BASELINE_NAME} in", 1)


def verdict_rows(table: list[Scenario]) -> list[list]:
    """Per pair of methods (families), the counts of its verdicts per kind of scenario, and the
    median and largest detectable difference over its general scenarios."""
    pairs = ordered_pairs(table)
    rows = []
    for a, b in pairs:
        cells = []
        for kind, what in (("general", "scenarios"), ("general_change", "tasks"),
                           ("in_domain", "tasks")):
            c = tally(table, a, b, kind)
            cells.append(counted(c, kind, what) if sum(c.values()) else "–")
        mdd = [p.diff.detectable for sc in table if sc.kind == "general" for p in sc.pairs
               if (family(p.method), family(p.reference)) == (a, b) and p.diff is not None
               and p.diff.detectable is not None]
        cells.append(f"{statistics.median(mdd):.3f} (at most {max(mdd):.3f})" if mdd else "–")
        rows.append([f"{a} vs {b}", *cells])
    return rows


def ordered_pairs(table: list[Scenario]) -> list[tuple[str, str]]:
    seen = {(family(p.method), family(p.reference)) for sc in table for p in sc.pairs}
    return [pr for pr in compared({f for pr in seen for f in pr}) if pr in seen]


def breakdown(table: list[Scenario], learned: list[Learning]) -> str:
    """The headline pair's other counts, and how many methods did not learn a task."""
    parts = []
    for kind, what in (("general_change", "(model, task) general changes"),
                       ("in_domain", "in-domain tests")):
        c = tally(table, HEADLINE_METHOD, BASELINE_METHOD, kind)
        if sum(c.values()):
            parts.append(f"on the {what}: {counted(c, kind, 'tasks')}")
    failed = [l for l in learned if not l.learned]
    notes = f"{HEADLINE_NAME} against {BASELINE_NAME} " + "; ".join(parts) + ". " if parts else ""
    return notes + (f"{len(failed)} of {len(learned)} methods x tasks did not learn the task: "
                    "left out of that task's general comparisons." if failed else
                    "Every method learned every task it was run on.")


def averages(table: list[Scenario], methods: list[str]) -> list[tuple[str, float, dict]]:
    """(row name, mean base, {method: (mean final, mean delta, scenarios)}) per benchmark, then
    per kind and overall, and the general average over the methods that learned their task. A
    method is averaged over the scenarios where it has runs."""
    table = [sc for sc in table if sc.kind != "general_change"]
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
    tasks): per seed the mean over its (model, task) of the mean over benchmarks, the
    hierarchical bootstrap over seeds and every (model, task, benchmark)'s items; at seed
    level where the seeds did not all run the same (model, task)s."""
    runs = [r for r in runs if {"general_delta", "in_domain_delta"} <= set(r.results["summary"])]
    if not runs:
        return None
    point = []
    for kind in ("general", "in_domain"):
        by_seed: dict[int, dict[tuple, list[Run]]] = defaultdict(lambda: defaultdict(list))
        for r in runs:
            by_seed[r.seed][(r.model, r.task)].append(r)
        per_seed = {}
        for seed, groups in by_seed.items():
            per_seed[seed] = []
            for (model, task), group in sorted(groups.items()):
                benches = sorted(b for b, s in group[0].results["scores"].items()
                                 if s["kind"] == kind)
                parts = seed_parts([(r, {}) for r in group], benches, "delta")[seed]
                per_seed[seed] += [(f"{model}/{task}/{b}", v, items, 1 / len(benches))
                                   for b, v, items, _ in parts]
        try:
            smp = sample(per_seed)
        except ValueError:  # unbalanced: one value per seed
            smp = sample({s: [("summary", statistics.fmean(
                r.results["summary"][f"{kind}_delta"] for g in groups.values() for r in g),
                None, 1.0)] for s, groups in by_seed.items()})
        point.append(cell_stat(smp, "delta"))
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
