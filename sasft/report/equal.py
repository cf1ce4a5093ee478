"""Forgetting at equal learning: each method's general change read off its learning-forgetting
curve at in-domain levels, from runs that logged the general benchmarks during training
(eval.periodic_general_items). Per seed, linear between the two evaluations around the level's
first crossing; then the seed-level bootstrap, paired against task-only and SA-SFT. A method
whose seeds do not all reach a level is marked there, never extrapolated. Rules: docs/report.md.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .compare import compared
from .figures import color, pyplot, save_figure, slug
from .runs import Run, at_reference, ordered, write_csv
from .sections import md_table
from .stats import CHANGE_RANGE, Stat, bootstrap, decide, difference, sample

PREFIX = "eval_general_"
FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of the way from the base to the level every method reaches

Curve = list[tuple[float, float]]  # (in-domain score, general change) per evaluation, in order


def curve(run: Run) -> Curve | None:
    """The run's (in-domain score, mean general change on the subset) at each periodic
    evaluation that logged both, from step 0 on; None where it logged no general scores."""
    evals = sorted((e for e in run.results.get("history", []) if "eval_in_domain" in e
                    and any(k.startswith(PREFIX) for k in e)), key=lambda e: e["step"])
    if not evals or evals[0]["step"] != 0:
        return None
    keys = sorted(k for k in evals[0] if k.startswith(PREFIX))
    evals = [e for e in evals if all(k in e for k in keys)]
    return [(e["eval_in_domain"], statistics.fmean(e[k] - evals[0][k] for k in keys))
            for e in evals]


def at_level(points: Curve, level: float) -> float | None:
    """The general change where the curve first reaches `level`: linear between the two
    evaluations around the crossing; None where it never does."""
    for i, (y, g) in enumerate(points):
        if y >= level:
            if i == 0:
                return g
            y0, g0 = points[i - 1]
            return g0 + (level - y0) / (y - y0) * (g - g0)
    return None


@dataclass
class Level:
    level: float
    cells: dict[str, Stat] = field(default_factory=dict)  # methods whose seeds all reach it
    short: dict[str, str] = field(default_factory=dict)  # method: "reached by 1 of 3 seeds"
    pairs: list[tuple[str, str, Stat, str]] = field(default_factory=list)  # a, b, a - b, verdict


@dataclass
class Task:
    model: str
    task: str
    base: float
    reach: dict[str, float]  # method: the highest level all its seeds reach
    curves: dict[str, dict[int, Curve]]  # method: {seed: curve}
    levels: list[Level]


def levels_of(base: float, reach: dict[str, float]) -> list[float]:
    """Fractions of the way to the level every method reaches, and the highest any reaches."""
    common, top = min(reach.values()), max(reach.values())
    levels = [base + f * (common - base) for f in FRACTIONS] if common > base else []
    return levels + ([top] if top > common + 1e-9 else [])


def equal_learning(runs: list[Run], ratio: float | None) -> list[Task]:
    by: dict[tuple, dict[str, dict[int, list[Curve]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs:
        points = curve(run) if at_reference(run, ratio) else None
        if points:
            by[(run.model, run.task)][run.label][run.seed].append(points)
    tasks = []
    for (model, task), methods in sorted(by.items()):
        # runs sharing a seed: the first (their curves need not share evaluation points)
        curves = {m: {s: cs[0] for s, cs in sorted(methods[m].items())} for m in ordered(methods)}
        base = statistics.fmean(c[0][0] for seeds in curves.values() for c in seeds.values())
        reach = {m: min(max(y for y, _ in c) for c in seeds.values())
                 for m, seeds in curves.items()}
        levels = [level_cells(curves, lv) for lv in levels_of(base, reach)]
        tasks.append(Task(model, task, base, reach, curves, levels))
    return tasks


def level_cells(curves: dict[str, dict[int, Curve]], level: float) -> Level:
    out, samples = Level(level), {}
    for method, seeds in curves.items():
        values = {s: at_level(c, level) for s, c in seeds.items()}
        reached = {s: v for s, v in values.items() if v is not None}
        if len(reached) < len(values):
            out.short[method] = f"reached by {len(reached)} of {len(values)} seeds"
            continue
        samples[method] = sample({s: [("general change", v, None, 1.0)]
                                  for s, v in reached.items()})
        out.cells[method] = bootstrap(samples[method], CHANGE_RANGE)
    for a, b in compared(samples):  # SA-SFT against each, each against task-only
        diff = difference(samples[a], samples[b])
        if diff is not None:
            stat = bootstrap(diff, CHANGE_RANGE)
            out.pairs.append((a, b, stat, decide(stat)))
    return out


# --- the report's section -------------------------------------------------------------------


FIG_EQUAL = "fig_equal_learning.png"  # fig_equal_learning_<model>_<task>.png with several


def equal_figure(t: Task, out_dir: Path, name: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    for method, seeds in t.curves.items():
        for i, c in enumerate(seeds.values()):
            ax.plot([g for _, g in c], [y for y, _ in c], marker=".", alpha=0.5,
                    color=color(method), label=method if i == 0 else None)
        for lv in t.levels:
            if method in lv.cells:
                s = lv.cells[method]
                ax.errorbar([s.mean], [lv.level], xerr=[[max(0.0, s.mean - s.interval[0])],
                                                        [max(0.0, s.interval[1] - s.mean)]],
                            marker="o", capsize=3, color=color(method), markeredgecolor="black")
    for lv in t.levels:
        ax.axhline(lv.level, color="gray", linewidth=0.6, linestyle=":")
    ax.axvline(0, color="gray", linewidth=0.8)
    ax.set(xlabel="general change on the periodic subset (from step 0)",
           ylabel="in-domain score", title=f"Forgetting at equal learning: {t.model} / {t.task}")
    ax.legend(fontsize="small")
    return save_figure(fig, out_dir / name)


def equal_lines(runs: list[Run], ratio: float | None, out_dir: Path) -> list[str]:
    tasks = equal_learning(runs, ratio)
    if not tasks:
        return ["No run logged the general benchmarks during training: set "
                "eval.periodic_general_items (e.g. 50) with train.eval_every_steps > 0."]
    lines = ["Each run's learning-forgetting curve: at every periodic evaluation, its in-domain "
             "score against its general change on the first eval.periodic_general_items items "
             "of each general benchmark (from step 0, the base). At in-domain levels from the "
             "base to the highest level every method reaches, each method's general change is "
             "read off each seed's curve (linear between the two evaluations around the first "
             "crossing of the level), then bootstrapped over seeds (95%); a method whose seeds "
             "do not all reach a level is marked there, not extrapolated. Verdicts pair the "
             "methods by seed."]
    rows, csv_rows = [], []
    for t in tasks:
        name = FIG_EQUAL if len(tasks) == 1 else \
            f"fig_equal_learning_{slug(t.model)}_{slug(t.task)}.png"
        path = equal_figure(t, out_dir, name)
        for lv in t.levels:
            for m in t.curves:
                s = lv.cells.get(m)
                rows.append([t.model, t.task, f"{lv.level:.3f}", m,
                             f"{s.mean:+.3f} {s.interval_text(2, True)}" if s else
                             f"not reached ({lv.short[m]})"])
                csv_rows.append([t.model, t.task, lv.level, m, *(
                    (s.mean, *s.interval, s.n) if s else (None, None, None, lv.short[m]))])
            for a, b, d, v in lv.pairs:
                rows.append([t.model, t.task, f"{lv.level:.3f}", f"{a} vs {b}",
                             f"{v}: {d.mean:+.3f} {d.interval_text(2, True)}"])
        lines += ["", f"![{path.stem}]({path.name})"]
    write_csv(out_dir / "equal_learning.csv", ["model", "task", "level", "method",
                                               "general_change", "lo", "hi", "seeds"], csv_rows)
    return lines + ["", *md_table(["model", "task", "in-domain level", "method or pair",
                                   "general change at that level"], rows)]
