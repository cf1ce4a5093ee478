"""The sweep report: the paper's table with intervals, the learning-forgetting plane, Figure 2
and Figure 3, drift during training, what forgetting looks like, from the runs' `results.json`.

    python -m sasft.report outputs/                    # writes outputs/report/
    python -m sasft.report outputs/ --ratio 0.5        # best method counted at mix_ratio 0.5
    python -m sasft.report outputs/ --out /tmp/rep --wandb
    python -m sasft.report outputs/ --where train.learning_rate=1e-4 --where peft.name=lora
    python -m sasft.report outputs/ --fig3-axis steps  # training curves against steps
    sasft-report outputs/                              # the same, as a console script

It reads every `results.json` under the sweep directory (recursively); a run directory with a
`config.yaml` but no `results.json` is listed as missing and never counted. Into one folder it
writes `report.md`, CSV files and PNG figures. If `python -m sasft.analyze` wrote `drift.json`
files into the runs, a "Drift" section follows (see `sasft/analyze.py`).

How it counts (scenarios, variants, intervals, ties, runs that did not learn the task):
docs/report.md, written once there; the rules are code in sasft/report/compare.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .compare import (Scenario, Verdict, averages, best_counts, breakdown, headline, run_stat,
                      scenario_table, verdicts)
from .figures import FIG2, FIG3, AXES, DEFAULT_AXIS, figure2, figure3  # noqa: F401 (FIG2, FIG3)
from .runs import (Run, WhereError, find_runs, label_variants, ordered, reference_ratio, select,
                   write_csv)
from .sections import (drift_lines, example_lines, figure_md, kl_lines, md_table,
                       not_learned_lines, plane_lines)

log = logging.getLogger(__name__)

# Written only when there is something to show: removed first, so no stale copy outlives it.
OPTIONAL_OUTPUTS = ("*.png", "mix_ratio.csv", "in_domain_steps.csv", "drift.csv", "plane.csv",
                    "kl.csv")


# --- CSV ------------------------------------------------------------------------------------




def table_rows(table: list[Scenario], methods: list[str]) -> tuple[list[str], list[list]]:
    """The scenario table, wide: one row per scenario, ten columns per method."""
    header = ["model", "task", "benchmark", "kind", "base", "chance"]
    for m in methods:
        header += [f"{m}_{c}" for c in ("final", "final_std", "final_lo", "final_hi", "delta",
                                        "delta_std", "delta_lo", "delta_hi", "seeds", "learned")]
    header += ["best", "alone"]
    rows = []
    for sc in table:
        row = [sc.model, sc.task, sc.benchmark, sc.kind, sc.base, sc.chance]
        for m in methods:
            f, d = sc.final.get(m), sc.delta.get(m)
            row += ([f.mean, f.std, *f.interval, d.mean, d.std, *d.interval, f.n,
                     m not in sc.not_learned] if f else [None] * 8 + [0, None])
        rows.append(row + ["+".join(sc.best), len(sc.best) == 1])
    return header, rows


def write_run_csv(path: Path, runs: list[Run], judged: list[Verdict]) -> Path:
    """One row per run and benchmark, with the item bootstrap's interval of that run."""
    learned = {v.run.dir: v.learned for v in judged}
    header = ["model", "task", "method", "mix_ratio", "seed", "benchmark", "kind", "base",
              "final", "final_lo", "final_hi", "delta", "delta_lo", "delta_hi", "chance",
              "learned", "variant", "run_dir"]
    rows = []
    for r in runs:
        for bench, s in sorted(r.results["scores"].items()):
            f, d = run_stat(r, bench, "final"), run_stat(r, bench, "delta")
            rows.append([r.model, r.task, r.label, r.ratio, r.seed, bench, s["kind"], s["base"],
                         s["final"], *(f.items or (None, None)), s["delta"],
                         *(d.items or (None, None)), s.get("chance"), learned.get(r.dir),
                         r.variant, str(r.dir)])
    return write_csv(path, header, rows)


# --- report.md ------------------------------------------------------------------------------


def cell_text(sc: Scenario, m: str) -> str:
    f, d = sc.final[m], sc.delta[m]
    interval = "" if f.seeds is None and f.items is None else f" {f.interval_text()}"
    dagger = " †" if m in sc.not_learned else ""
    return f"{f.mean:.3f}{interval} ({d.mean:+.3f}), n={f.n}{dagger}"


def scenario_lines(table: list[Scenario], methods: list[str]) -> list[str]:
    header = ["model", "task", "benchmark", "kind", "base"] + methods + ["best or tied"]
    rows = [[sc.model, sc.task, sc.benchmark, sc.kind, f"{sc.base:.3f}",
             *(cell_text(sc, m) if m in sc.final else "–" for m in methods),
             ", ".join(sc.best) or "none (no method learned the task)"] for sc in table]
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
            "methods that mix nothing have no ratio, so all their runs count. A method's score "
            "is its mean final score over seeds (runs sharing a seed are averaged first), in "
            "round brackets the change from the base model.\n\n"
            "Intervals (95%, in square brackets): the span of two intervals, so that a "
            "difference counts only if it survives both: over seeds (2 or more), Student's "
            "t-interval of the mean, mean ± t(0.975, n-1) · std / sqrt(n); over test items, "
            "always where the runs kept per-item scores, a paired percentile bootstrap (1000 "
            "resamples of the test items with a fixed seed, the same items for base and final "
            "scores and for every seed, whose per-item scores are averaged first). With one "
            "seed and no per-item scores a cell has no interval, and only equal scores tie.\n\n"
            "Tie rule: the best method of a scenario is the highest mean; it and every method "
            "whose interval overlaps the best one's share the win (\"best or tied\"); \"alone "
            "best\" counts the scenarios where no interval overlaps the best one's.\n\n"
            "Did not learn the task: a run whose in-domain change is not clearly above 0 (its "
            "interval's lower end <= 0), or whose in-domain score is not clearly above the "
            "test's chance score where it has one, did not learn the task (listed below). A "
            "method with such a run in a (model, task) is marked † and left out of that task's "
            "general scenarios (neither winning nor setting the best): a run that did not move "
            "has not forgotten either, and that is no defence.")


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
    verdicts: list[Verdict] = field(default_factory=list)


def render(report: Report, sweep_dir: Path, how: str, figures: list[tuple],
           sections: dict[str, list[str]]) -> str:
    methods = ordered({m for sc in report.table for m in sc.final})
    counts = best_counts(report.table)
    lines = [f"# sasft report: {sweep_dir}", "",
             f"{len(report.runs)} completed runs read; {len(report.missing)} missing or "
             f"unusable (listed at the end, never counted).", "",
             f"**{report.headline}.** {breakdown(report.table)}", "",
             counting_note(report.ratio, how, methods, report.where), "",
             "Best or tied (alone best) per method: "
             + (", ".join(f"{m} {counts.get(m, (0, 0))[0]} ({counts.get(m, (0, 0))[1]})"
                          for m in methods) or "none"), "",
             "## Scenarios", "",
             "Final score [95% interval] (change from base), seeds; † the method has a run "
             "that did not learn this task.", "",
             *scenario_lines(report.table, methods), "",
             "## Runs that did not learn the task", "", *sections["not learned"], "",
             "## Averages per benchmark and overall", "",
             "Mean over scenarios of each method's mean final score (change from base in "
             "brackets); a method is averaged over the scenarios (sc.) where it has runs.", "",
             *average_lines(averages(report.table, methods), methods), "",
             "## Learning against forgetting", "", *sections["plane"], "",
             "## Figure 2: mix ratio", "", figure_md(*figures[0]), "",
             "## Figure 3: in-domain score during training", "", figure_md(*figures[1]), "",
             "## KL from the base during training", "", *sections["kl"], "",
             "## What forgetting looks like", "", *sections["examples"], "",
             "## Drift", "", *sections["drift"], "", "## Missing runs", ""]
    lines += [f"- `{d}`: {why}" for d, why in report.missing] or ["None."]
    return "\n".join(lines) + "\n"


def clear_outputs(out_dir: Path) -> None:
    for pattern in OPTIONAL_OUTPUTS:
        for path in out_dir.glob(pattern):
            path.unlink()


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None,
                 ratio: float | None = None, use_wandb: bool = False,
                 where: list[str] = (), axis: str = DEFAULT_AXIS) -> Report:
    """Read the sweep, write report.md, CSV files and figures into `out_dir`; returns them.
    `axis` ("steps" or "epochs") is the x axis of the training curves (Figure 3, KL)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory not found: {sweep_dir}")
    out_dir = Path(out_dir) if out_dir else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_outputs(out_dir)
    runs, missing = find_runs(sweep_dir, skip=out_dir)
    runs = select(runs, list(where))
    label_variants(runs)
    ratio, how = reference_ratio(runs, ratio)
    judged = verdicts(runs)
    table = scenario_table(runs, ratio, judged)
    methods = ordered({m for sc in table for m in sc.final})
    write_csv(out_dir / "table.csv", *table_rows(table, methods))
    write_run_csv(out_dir / "runs.csv", runs, judged)
    avg = averages(table, methods)
    write_csv(out_dir / "averages.csv",
              ["benchmark", "base", "method", "final", "delta", "scenarios"],
              [[name, base, m, *v] for name, base, per in avg for m, v in per.items()])
    figures = [figure2(runs, out_dir), figure3(runs, ratio, out_dir, axis)]
    failed = {v.run.dir for v in judged if not v.learned}
    sections = {"not learned": not_learned_lines(judged, ratio),
                "plane": plane_lines(runs, ratio, failed, out_dir),
                "kl": kl_lines(runs, ratio, out_dir, axis),
                "examples": example_lines(runs, ratio),
                "drift": drift_lines(runs, ratio, out_dir)}
    report = Report(out_dir, table, runs, missing, ratio, headline(table),
                    sorted(out_dir.glob("*.png")), list(where), judged)
    (out_dir / "report.md").write_text(render(report, sweep_dir, how, figures, sections))
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
    parser.add_argument("--fig3-axis", choices=sorted(AXES), default=DEFAULT_AXIS,
                        help="x axis of Figure 3 and the KL curves (default: epochs, since a "
                        "mixing method takes more steps per epoch)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = build_report(args.sweep_dir, args.out, args.ratio, args.wandb, args.where,
                              args.fig3_axis)
    except (WhereError, FileNotFoundError) as e:
        parser.error(str(e))
    print(report.headline)
    print(f"{len(report.runs)} runs, {len(report.missing)} missing -> "
          f"{report.out_dir / 'report.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
