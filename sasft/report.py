"""The sweep report: the paper's table, Figure 2 and Figure 3, from the runs' `results.json`.

    python -m sasft.report outputs/                    # writes outputs/report/
    python -m sasft.report outputs/ --ratio 0.5        # best method counted at mix_ratio 0.5
    python -m sasft.report outputs/ --out /tmp/rep --wandb
    python -m sasft.report outputs/ --where train.learning_rate=1e-4 --where peft.name=lora
    sasft-report outputs/                              # the same, as a console script

It reads every `results.json` under the sweep directory (recursively); a run directory with a
`config.yaml` but no `results.json` is listed as missing and never counted. Into one folder it
writes `report.md`, CSV files and PNG figures. If `python -m sasft.analyze` wrote `drift.json`
files into the runs, a "Drift" section follows (see `sasft/analyze.py`).

How scenarios are counted (as the paper counts "best in 40 of 50 scenarios"):
  - a scenario is (model, task, benchmark);
  - runs are compared like with like: runs that differ in anything but the seed are never
    averaged together. Where a sweep holds several variants of a method (two learning rates,
    freeze with two layer counts), each is its own column, labelled by the identity fields that
    tell them apart ("sasft [train.learning_rate=0.0001]"); `--where field=value` narrows the
    runs read (`--where train.learning_rate=1e-4`);
  - a method's score in a scenario is its mean final score over seeds: runs sharing a seed are
    averaged first, so a seed run twice does not weigh twice; std is over seeds (n - 1), 0 for
    one seed;
  - methods that mix data (sasft, ext_mix) are compared at one reference mix ratio; task_only
    and freeze have no ratio, so all their runs count;
  - the best methods are those within 1e-9 of the highest mean: a tie counts for every tied
    method, and "SA-SFT best in N of M" counts the scenarios where sasft is among them.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .record import RESULTS_FILE, SCHEMA_VERSION

log = logging.getLogger(__name__)

METHOD_ORDER = ("task_only", "freeze", "freeze_half", "ext_mix", "ext_mix_ultrachat", "sasft")
# Identity fields that never name a variant: the seed (repeats), and the mix ratio, which the
# comparison fixes at one reference ratio and Figure 2 puts on its x axis.
NOT_VARIANT = ("seed", "method.mix_ratio")
HEADLINE_METHOD, HEADLINE_NAME = "sasft", "SA-SFT"
TIE_TOLERANCE = 1e-9
DEFAULT_RATIO = 1.0  # conf/config.yaml's mix_ratio: the ratio a plain `python run.py` uses
FIG2, FIG3 = "fig2_mix_ratio.png", "fig3_in_domain_steps.png"
DRIFT_FILE = "drift.json"  # written by sasft.analyze into each run directory
FIG_LAYERS, FIG_SCATTER = "fig_drift_layers.png", "fig_drift_scatter.png"
# Written only when there is something to show: removed first, so no stale copy outlives it.
OPTIONAL_OUTPUTS = (FIG2, FIG3, FIG_LAYERS, FIG_SCATTER, "mix_ratio.csv", "in_domain_steps.csv",
                    "drift.csv")


# --- reading runs ---------------------------------------------------------------------------


@dataclass
class Run:
    dir: Path
    results: dict
    label: str = ""  # the method, and the fields that tell its variants apart (label_variants)

    @property
    def model(self) -> str:
        return self.results["run"]["model"]

    @property
    def task(self) -> str:
        return self.results["run"]["task"]

    @property
    def method(self) -> str:
        return self.results["run"]["method"]

    @property
    def ratio(self) -> float | None:
        ratio = self.results["run"]["mix_ratio"]
        return None if ratio is None else float(ratio)

    @property
    def seed(self) -> int:
        return self.results["run"]["seed"]

    @property
    def mixes_data(self) -> bool:
        return self.results["run"]["mixes_data"]

    @property
    def identity(self) -> dict:
        return self.results["identity"]

    @property
    def variant(self) -> str:
        return self.results["run"]["variant"]


def _not_a_run(path: Path, root: Path) -> bool:
    # Hydra keeps a copy of the config in `.hydra/config.yaml`, and W&B one in
    # `wandb/<run>/files/config.yaml`: neither marks a run directory.
    return any(part.startswith(".") or part == "wandb" for part in path.relative_to(root).parts)


def find_runs(root: Path, skip: Path | None = None) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Completed runs under `root`, and (run dir, reason) for those that are not usable."""
    root = Path(root)
    skip = Path(skip).resolve() if skip else None
    # The report folder may sit inside the sweep; whatever is written there is not a run.
    inside_skip = lambda p: skip is not None and skip in p.resolve().parents  # noqa: E731
    runs, missing = [], []
    for path in sorted(root.rglob(RESULTS_FILE)):
        if _not_a_run(path, root) or inside_skip(path):
            continue
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            missing.append((path.parent, f"unreadable {RESULTS_FILE}: {e}"))
            continue
        if results.get("schema") != SCHEMA_VERSION:
            missing.append((path.parent, f"schema {results.get('schema')!r}, "
                                         f"expected {SCHEMA_VERSION}"))
            continue
        runs.append(Run(path.parent, results))
    for path in sorted(root.rglob("config.yaml")):
        if not _not_a_run(path, root) and not inside_skip(path) \
                and not (path.parent / RESULTS_FILE).is_file():
            missing.append((path.parent, f"no {RESULTS_FILE} (not finished, or failed)"))
    return runs, missing


def family(label: str) -> str:
    """The method a variant's label names ("sasft [train.learning_rate=0.001]" -> "sasft")."""
    return label.split(" [", 1)[0]


def ordered(labels) -> list[str]:
    """Labels in the project's method order, variants of one method together."""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(set(labels), key=lambda l: (rank.get(family(l), len(rank)), family(l), l))


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def label_variants(runs: list[Run]) -> None:
    """Label each run by its method plus the identity fields in which runs of that method
    differ within one (model, task) (the seed and mix ratio aside), so that each label holds
    repeats of one experiment only."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.model, run.task, run.method)].append(run)
    varying: dict[str, set[str]] = defaultdict(set)
    for (_, _, method), group in groups.items():
        for key in set().union(*(r.identity for r in group)) - set(NOT_VARIANT):
            if len({_value(r.identity.get(key)) for r in group}) > 1:
                varying[method].add(key)
    for run in runs:
        keys = sorted(varying[run.method])
        run.label = run.method + (" [" + ", ".join(f"{k}={_value(run.identity.get(k))}"
                                                   for k in keys) + "]" if keys else "")


class WhereError(ValueError):
    """A --where filter that names no identity field of any run."""


def select(runs: list[Run], where: list[str]) -> list[Run]:
    """The runs whose identity has every `field=value` of `where` (values compared as YAML)."""
    import yaml

    for condition in where:
        field_name, sep, text = condition.partition("=")
        if not sep:
            raise WhereError(f"--where {condition!r}: expected field=value")
        if runs and not any(field_name in r.identity for r in runs):
            raise WhereError(f"--where {condition!r}: no run has the field {field_name!r} "
                             f"(fields look like train.learning_rate, method.name, model.name)")
        wanted = yaml.safe_load(text)
        if isinstance(wanted, str):  # YAML reads 1e-4 as a string: try it as a number too
            try:
                wanted = float(wanted)
            except ValueError:
                pass
        runs = [r for r in runs if r.identity.get(field_name) == wanted
                or _value(r.identity.get(field_name)) == text]
    return runs


def reference_ratio(runs: list[Run], requested: float | None) -> tuple[float | None, str]:
    """The mix ratio at which mixing methods are compared, and how it was chosen."""
    counts: dict[float, int] = defaultdict(int)
    for run in runs:
        if run.mixes_data:
            counts[run.ratio] += 1
    if requested is not None:
        found = any(math.isclose(r, requested) for r in counts)
        return requested, "given with --ratio" + ("" if found else " (no mixing run has it)")
    if not counts:
        return None, "no mixing runs"
    if any(math.isclose(r, DEFAULT_RATIO) for r in counts):
        return DEFAULT_RATIO, "the default mix_ratio; --ratio changes it"
    ratio = min(counts, key=lambda r: (-counts[r], r))
    return ratio, "the ratio with the most mixing runs (no run at the default 1.0)"


def at_reference(run: Run, ratio: float | None) -> bool:
    return not run.mixes_data or (ratio is not None and math.isclose(run.ratio, ratio))


# --- statistics -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int  # seeds

    def text(self, signed: bool = False) -> str:
        return f"{self.mean:{'+' if signed else ''}.3f} ± {self.std:.3f}"


def seed_stats(values: list[tuple[int, float]]) -> Stat:
    """Mean and std over seeds of (seed, value) pairs; values sharing a seed are averaged first."""
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


# --- the scenario table ---------------------------------------------------------------------


@dataclass
class Scenario:
    model: str
    task: str
    benchmark: str
    kind: str
    base: float
    final: dict[str, Stat] = field(default_factory=dict)
    delta: dict[str, Stat] = field(default_factory=dict)

    @property
    def best(self) -> list[str]:
        if not self.final:
            return []
        top = max(s.mean for s in self.final.values())
        return [m for m, s in self.final.items() if s.mean >= top - TIE_TOLERANCE]


def scenario_table(runs: list[Run], ratio: float | None) -> list[Scenario]:
    """One Scenario per (model, task, benchmark) with a counted run; the base score is the mean
    over every run of the scenario (it is the same cached number in all of them)."""
    base: dict[tuple, list[float]] = defaultdict(list)
    kinds: dict[tuple, str] = {}
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for bench, score in run.results["scores"].items():
            key = (run.model, run.task, bench)
            base[key].append(score["base"])
            kinds[key] = score["kind"]
            if at_reference(run, ratio):
                cells[key][run.label].append((run.seed, score["final"], score["delta"],
                                              run.variant))
    table = []
    for key in sorted(cells, key=lambda k: (k[0], k[1], kinds[k] != "in_domain", k[2])):
        sc = Scenario(*key, kinds[key], statistics.fmean(base[key]))
        for label in ordered(cells[key]):
            rows = cells[key][label]
            if len({v for *_, v in rows}) > 1:  # label_variants names every difference
                raise AssertionError(f"{key} {label}: runs of different variants in one cell")
            sc.final[label] = seed_stats([(s, f) for s, f, _, _ in rows])
            sc.delta[label] = seed_stats([(s, d) for s, _, d, _ in rows])
        table.append(sc)
    return table


def best_counts(table: list[Scenario]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for sc in table:
        for method in sc.best:
            counts[method] += 1
    return counts


def headline(table: list[Scenario]) -> str:
    """"SA-SFT best in N of M scenarios": a scenario counts where a variant of sasft is among
    the best; with several variants, the line names them."""
    n = sum(any(family(label) == HEADLINE_METHOD for label in sc.best) for sc in table)
    variants = ordered({l for sc in table for l in sc.final if family(l) == HEADLINE_METHOD})
    which = f" (any of: {'; '.join(variants)})" if len(variants) > 1 else ""
    return f"{HEADLINE_NAME} best in {n} of {len(table)} scenarios{which}"


def averages(table: list[Scenario], methods: list[str]) -> list[tuple[str, float, dict]]:
    """(row name, mean base, {method: (mean final, mean delta, scenarios)}) per benchmark, then
    per kind and overall. A method is averaged over the scenarios where it has runs."""
    groups: dict[str, list[Scenario]] = defaultdict(list)
    for sc in table:
        groups[sc.benchmark].append(sc)
    groups["in-domain (all tasks)"] = [sc for sc in table if sc.kind == "in_domain"]
    groups["general (all benchmarks)"] = [sc for sc in table if sc.kind == "general"]
    groups["all scenarios"] = table
    rows = []
    for name, scs in groups.items():
        if not scs:
            continue
        per_method = {}
        for m in methods:
            have = [sc for sc in scs if m in sc.final]
            if have:
                per_method[m] = (statistics.fmean(sc.final[m].mean for sc in have),
                                 statistics.fmean(sc.delta[m].mean for sc in have), len(have))
        rows.append((name, statistics.fmean(sc.base for sc in scs), per_method))
    return rows


# --- CSV ------------------------------------------------------------------------------------


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def table_rows(table: list[Scenario], methods: list[str]) -> tuple[list[str], list[list]]:
    """The scenario table, wide: one row per scenario, five columns per method."""
    header = ["model", "task", "benchmark", "kind", "base"]
    for m in methods:
        header += [f"{m}_final", f"{m}_final_std", f"{m}_delta", f"{m}_delta_std", f"{m}_seeds"]
    header.append("best")
    rows = []
    for sc in table:
        row = [sc.model, sc.task, sc.benchmark, sc.kind, sc.base]
        for m in methods:
            f, d = sc.final.get(m), sc.delta.get(m)
            row += [f.mean, f.std, d.mean, d.std, f.n] if f else [None, None, None, None, 0]
        rows.append(row + ["+".join(sc.best)])
    return header, rows


def write_run_csv(path: Path, runs: list[Run]) -> Path:
    header = ["model", "task", "method", "mix_ratio", "seed", "benchmark", "kind", "base",
              "final", "delta", "variant", "run_dir"]
    rows = [[r.model, r.task, r.label, r.ratio, r.seed, bench, s["kind"], s["base"],
             s["final"], s["delta"], r.variant, str(r.dir)]
            for r in runs for bench, s in sorted(r.results["scores"].items())]
    return write_csv(path, header, rows)


# --- figures --------------------------------------------------------------------------------


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    return plt


def color(label: str) -> str:
    """One colour per method (and variant) in every figure."""
    known = {m: f"C{i}" for i, m in enumerate(METHOD_ORDER)}
    return known.get(label, f"C{(len(METHOD_ORDER) + sum(map(ord, label))) % 10}")


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


def _summary_stats(runs: list[Run], field_name: str) -> Stat | None:
    pairs = [(r.seed, r.results["summary"][field_name]) for r in runs
             if field_name in r.results.get("summary", {})]
    return seed_stats(pairs) if pairs else None


def mix_ratio_points(runs: list[Run]) -> dict[str, dict[float, dict[str, Stat]]]:
    """{method: {ratio: {"general_final"|"in_domain_final": Stat}}} for the mixing methods;
    per seed the value is the mean over models and tasks."""
    by: dict[str, dict[float, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.mixes_data:
            by[run.label][run.ratio].append(run)
    points: dict = {}
    for method in ordered(by):
        for ratio in sorted(by[method]):
            stats = {f: _summary_stats(by[method][ratio], f)
                     for f in ("general_final", "in_domain_final")}
            points.setdefault(method, {})[ratio] = {f: s for f, s in stats.items() if s}
    return points


def figure2(runs: list[Run], out_dir: Path) -> tuple[Path | None, str]:
    points = mix_ratio_points(runs)
    ratios = {r for by_ratio in points.values() for r in by_ratio}
    if len(ratios) < 2:
        return None, (f"Figure 2 skipped: it needs at least 2 mix ratios among the mixing "
                      f"methods, found {len(ratios)}.")
    rows = [[m, r, f, s.mean, s.std, s.n] for m, by_ratio in points.items()
            for r, stats in by_ratio.items() for f, s in stats.items()]
    write_csv(out_dir / "mix_ratio.csv", ["method", "mix_ratio", "measure", "mean", "std", "seeds"],
              rows)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (("general_final", "general-skill average"), ("in_domain_final", "in-domain score"))
    flat = ordered({r.label for r in runs if r.method == "task_only"})
    for ax, (measure, title) in zip(axes, panels):
        for method, by_ratio in points.items():
            xs = [r for r in sorted(by_ratio) if measure in by_ratio[r]]
            ax.errorbar(xs, [by_ratio[r][measure].mean for r in xs],
                        yerr=[by_ratio[r][measure].std for r in xs], marker="o", capsize=3,
                        label=method, color=color(method))
        for label in flat:  # task_only ignores the ratio: a dashed line per variant
            task_only = _summary_stats([r for r in runs if r.label == label], measure)
            if task_only:
                ax.axhline(task_only.mean, linestyle="--", color=color(label), label=label)
        base = _summary_stats(runs, measure.replace("_final", "_base"))
        if base:
            ax.axhline(base.mean, linestyle=":", color="gray", label="base model")
        ax.set(title=title, xlabel="mix ratio (auxiliary per task example)", ylabel="score")
        ax.legend()
    fig.suptitle("Figure 2: score against mix ratio (mean ± std over seeds)", y=1.02)
    return save_figure(fig, out_dir / FIG2), ""


def in_domain_curve(runs: list[Run]) -> list[tuple[int, Stat]]:
    """(step, Stat over seeds) of the in-domain score logged during training."""
    by_step: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for run in runs:
        for entry in run.results.get("history", []):
            if "eval_in_domain" in entry and "step" in entry:
                by_step[int(entry["step"])].append((run.seed, entry["eval_in_domain"]))
    return [(step, seed_stats(by_step[step])) for step in sorted(by_step)]


def figure3(runs: list[Run], ratio: float | None, out_dir: Path) -> tuple[Path | None, str]:
    panels: dict[tuple[str, str], dict[str, list]] = defaultdict(dict)
    for model, task in sorted({(r.model, r.task) for r in runs}):
        chosen = [r for r in runs if (r.model, r.task) == (model, task) and at_reference(r, ratio)]
        for method in ordered({r.label for r in chosen}):
            curve = in_domain_curve([r for r in chosen if r.label == method])
            if curve:
                panels[(model, task)][method] = curve
    if not panels:
        return None, "Figure 3 skipped: no run logged in-domain scores during training."
    write_csv(out_dir / "in_domain_steps.csv",
              ["model", "task", "method", "step", "mean", "std", "seeds"],
              [[mt[0], mt[1], m, step, s.mean, s.std, s.n] for mt, curves in panels.items()
               for m, curve in curves.items() for step, s in curve])
    plt = pyplot()
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
    for ax, ((model, task), curves) in zip(axes.flat, panels.items()):
        for method, curve in curves.items():
            steps = [s for s, _ in curve]
            mean = [st.mean for _, st in curve]
            std = [st.std for _, st in curve]
            ax.plot(steps, mean, marker=".", label=method, color=color(method))
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)],
                            [m + s for m, s in zip(mean, std)], alpha=0.2, color=color(method))
        ax.set(title=f"{model} / {task}", xlabel="training step", ylabel="in-domain score")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Figure 3: in-domain score during training (mean ± std over seeds)", y=1.02)
    return save_figure(fig, out_dir / FIG3), ""


# --- report.md ------------------------------------------------------------------------------


def md_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def scenario_lines(table: list[Scenario], methods: list[str]) -> list[str]:
    header = ["model", "task", "benchmark", "kind", "base"] + methods + ["best"]
    rows = []
    for sc in table:
        cells = [f"{sc.final[m].text()} ({sc.delta[m].text(signed=True)}), n={sc.final[m].n}"
                 if m in sc.final else "–" for m in methods]
        rows.append([sc.model, sc.task, sc.benchmark, sc.kind, f"{sc.base:.3f}", *cells,
                     ", ".join(sc.best)])
    return md_table(header, rows)


def average_lines(avg: list, methods: list[str]) -> list[str]:
    rows = []
    for name, base, per_method in avg:
        cells = [f"{per_method[m][0]:.3f} ({per_method[m][1]:+.3f}), {per_method[m][2]} sc."
                 if m in per_method else "–" for m in methods]
        rows.append([name, f"{base:.3f}", *cells])
    return md_table(["benchmark", "base"] + methods, rows)


def counting_note(ratio: float | None, how: str, labels: list[str], where: list[str]) -> str:
    mixing = (f"Mixing methods are compared at the reference mix_ratio {ratio:g} ({how}); "
              if ratio is not None else "There are no mixing runs; ")
    narrowed = f" Runs read: only those with {', '.join(where)} (--where)." if where else ""
    return ("How it is counted: a scenario is (model, task, benchmark)." + narrowed +
            f" Compared: {'; '.join(labels) or 'nothing'}. Runs that differ in anything but the "
            "seed are never averaged together: a method's variants are separate columns, "
            "labelled by the fields that tell them apart. " + mixing +
            "methods that mix nothing have no ratio, so all their runs count. A method's score is "
            "its mean final score over seeds (runs sharing a seed are averaged first); ± is the "
            "std over seeds (n - 1; 0 with one seed), in brackets the change from the base "
            "model. Best = highest mean; methods within 1e-9 of it tie, and a tie counts for "
            "every tied method.")


def drift_lines(runs: list[Run], ratio: float | None, out_dir: Path) -> list[str]:
    with_drift = [r for r in runs if (r.dir / DRIFT_FILE).is_file()]
    if not with_drift:
        return ["No run has a drift.json yet: `python -m sasft.analyze <sweep dir>` writes them."]
    from .analyze import drift_section  # only now: it brings torch and transformers

    return drift_section(with_drift, ratio, out_dir)


@dataclass
class Report:
    out_dir: Path
    table: list[Scenario]
    runs: list[Run]
    missing: list[tuple[Path, str]]
    ratio: float | None
    headline: str
    figures: list[Path]
    where: list[str] = field(default_factory=list)


def figure_md(path: Path | None, note: str) -> str:
    return f"![{path.stem}]({path.name})" if path else note


def render(report: Report, sweep_dir: Path, how: str, figures: list[tuple],
           drift: list[str]) -> str:
    methods = ordered({m for sc in report.table for m in sc.final})
    counts = best_counts(report.table)
    lines = [f"# sasft report: {sweep_dir}", "",
             f"{len(report.runs)} completed runs read; {len(report.missing)} missing or "
             f"unusable (listed at the end, never counted).", "",
             report.headline, "", counting_note(report.ratio, how, methods, report.where), "",
             "Best-method counts (ties count for each tied method): "
             + (", ".join(f"{m} {counts.get(m, 0)}" for m in methods) or "none"), "",
             "## Scenarios", "", *scenario_lines(report.table, methods), "",
             "## Averages per benchmark and overall", "",
             "Mean over scenarios of each method's mean final score (change from base in "
             "brackets); a method is averaged over the scenarios (sc.) where it has runs.", "",
             *average_lines(averages(report.table, methods), methods), "",
             "## Figure 2: mix ratio", "", figure_md(*figures[0]), "",
             "## Figure 3: in-domain score during training", "", figure_md(*figures[1]), "",
             "## Drift", "", *drift, "", "## Missing runs", ""]
    lines += [f"- `{d}`: {why}" for d, why in report.missing] or ["None."]
    return "\n".join(lines) + "\n"


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None,
                 ratio: float | None = None, use_wandb: bool = False,
                 where: list[str] = ()) -> Report:
    """Read the sweep, write report.md, CSV files and figures into `out_dir`; returns them."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory not found: {sweep_dir}")
    out_dir = Path(out_dir) if out_dir else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OPTIONAL_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    runs, missing = find_runs(sweep_dir, skip=out_dir)
    runs = select(runs, list(where))
    label_variants(runs)
    ratio, how = reference_ratio(runs, ratio)
    table = scenario_table(runs, ratio)
    methods = ordered({m for sc in table for m in sc.final})
    write_csv(out_dir / "table.csv", *table_rows(table, methods))
    write_run_csv(out_dir / "runs.csv", runs)
    avg = averages(table, methods)
    write_csv(out_dir / "averages.csv",
              ["benchmark", "base", "method", "final", "delta", "scenarios"],
              [[name, base, m, *v] for name, base, per in avg for m, v in per.items()])
    figures = [figure2(runs, out_dir), figure3(runs, ratio, out_dir)]
    drift = drift_lines(runs, ratio, out_dir)
    report = Report(out_dir, table, runs, missing, ratio, headline(table),
                    [out_dir / n for n in OPTIONAL_OUTPUTS
                     if n.endswith(".png") and (out_dir / n).is_file()], list(where))
    (out_dir / "report.md").write_text(render(report, sweep_dir, how, figures, drift))
    if use_wandb:
        log_to_wandb(report, sweep_dir)
    return report


# --- W&B ------------------------------------------------------------------------------------


def log_to_wandb(report: Report, sweep_dir: Path) -> bool:
    """Log the table and figures to a W&B run (job_type "report"); offline without an API key.
    A W&B failure is logged and reported as False: the report on disk is already complete."""
    try:
        import wandb

        mode = None if os.environ.get("WANDB_API_KEY") else "offline"
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sasft"), job_type="report",
                         name=f"report-{sweep_dir.resolve().name}", mode=mode,
                         dir=str(report.out_dir),
                         config={"sweep_dir": str(sweep_dir), "ratio": report.ratio})
        try:
            methods = ordered({m for sc in report.table for m in sc.final})
            header, rows = table_rows(report.table, methods)
            payload = {"scenarios": wandb.Table(columns=header, data=rows)}
            payload |= {p.stem: wandb.Image(str(p)) for p in report.figures}
            run.log(payload)
            run.summary["headline"] = report.headline
        finally:
            run.finish()
        return True
    except Exception as e:  # noqa: BLE001  (any wandb problem, import included)
        log.warning("W&B logging failed, the report on disk is complete: %s", e)
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sasft-report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="directory holding the runs (recursively)")
    parser.add_argument("--out", type=Path, help="output folder (default: <sweep_dir>/report)")
    parser.add_argument("--ratio", type=float, help="reference mix ratio for the best-method "
                        "count (default: 1.0 if present, else the most common)")
    parser.add_argument("--wandb", action="store_true", help="also log to W&B (offline "
                        "without WANDB_API_KEY)")
    parser.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                        help="only runs whose config has this value (repeatable), e.g. "
                        "train.learning_rate=1e-4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = build_report(args.sweep_dir, args.out, args.ratio, args.wandb, args.where)
    except (WhereError, FileNotFoundError) as e:
        parser.error(str(e))
    print(report.headline)
    print(f"{len(report.runs)} runs, {len(report.missing)} missing -> "
          f"{report.out_dir / 'report.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
