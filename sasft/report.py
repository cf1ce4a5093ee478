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
import json
import logging
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .figures import (FIG2, FIG3, FIG_LAYERS, FIG_SCATTER, figure2, figure3, layer_figure,
                      scatter_figure)
from .runs import (DRIFT_FILE, MEASURES, Run, Stat, WhereError, at_reference, family, find_runs,
                   label_variants, ordered, reference_ratio, seed_stats, select, write_csv)

log = logging.getLogger(__name__)

HEADLINE_METHOD, HEADLINE_NAME = "sasft", "SA-SFT"
TIE_TOLERANCE = 1e-9
# Written only when there is something to show: removed first, so no stale copy outlives it.
OPTIONAL_OUTPUTS = (FIG2, FIG3, FIG_LAYERS, FIG_SCATTER, "mix_ratio.csv", "in_domain_steps.csv",
                    "drift.csv")


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


def drift_rows(records: list[tuple[Run, dict]]) -> tuple[list[str], list[list]]:
    header = ["model", "task", "method", "mix_ratio", "seed", "general_delta",
              "in_domain_delta", "weight_global", *MEASURES, "leakage_rule"]
    rows = [[r.model, r.task, r.label, r.ratio, r.seed,
             r.results["summary"].get("general_delta"), r.results["summary"].get("in_domain_delta"),
             d["weights"]["global"], *(read(d) for _, read in MEASURES.values()),
             d["style_leakage"]["rule"]] for r, d in records]
    return header, rows


def method_lines(records: list[tuple[Run, dict]], ratio: float | None) -> list[str]:
    chosen = [(r, d) for r, d in records if at_reference(r, ratio)]
    rows = []
    for method in ordered({r.label for r, _ in chosen}):
        cells = []
        for _, read in MEASURES.values():
            pairs = [(r.seed, read(d)) for r, d in chosen if r.label == method
                     and read(d) is not None]
            cells.append(seed_stats(pairs).text() if pairs else "–")
        rows.append([method, *cells])
    return md_table(["method", *(label for label, _ in MEASURES.values())], rows)


def drift_section(runs: list[Run], ratio: float | None, out_dir: Path) -> list[str]:
    """The "Drift" lines, from the runs' drift.json; writes drift.csv and the figures."""
    records = [(r, json.loads((r.dir / DRIFT_FILE).read_text())) for r in runs]
    write_csv(out_dir / "drift.csv", *drift_rows(records))
    layers = layer_figure(records, ratio, out_dir)
    scatter, stats = scatter_figure(records, out_dir)
    rules = {d["style_leakage"]["note"] for _, d in records}
    lines = [f"{len(records)} runs analyzed by `python -m sasft.analyze` (per run: drift.csv). "
             "Per method at the reference ratio, mean ± std over seeds:", "",
             *method_lines(records, ratio), "",
             f"![{layers.stem}]({layers.name})", "",
             "Pearson correlation of each drift measure with the general-score change "
             "(every analyzed run, every ratio):", "",
             *md_table(["measure", "Pearson r", "runs"],
                       [[n, f"{r:.3f}" if r is not None else "n/a (fewer than 3 runs or "
                         "constant)", k] for n, r, k in stats]), "",
             f"![{scatter.stem}]({scatter.name})", ""]
    return lines + [f"Style leakage rule: {note}." for note in sorted(rules)]


def drift_lines(runs: list[Run], ratio: float | None, out_dir: Path) -> list[str]:
    with_drift = [r for r in runs if (r.dir / DRIFT_FILE).is_file()]
    if not with_drift:
        return ["No run has a drift.json yet: `python -m sasft.analyze <sweep dir>` writes them."]
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
