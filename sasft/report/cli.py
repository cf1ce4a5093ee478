"""The sweep report: the paper's table with intervals, the learning-forgetting plane, Figure 2
and Figure 3, drift during training, what forgetting looks like, from the runs' `results.json`.

    python -m sasft.report outputs/                    # writes outputs/report/
    python -m sasft.report outputs/ --ratio 0.5        # best method counted at mix_ratio 0.5
    python -m sasft.report outputs/ --out /tmp/rep --wandb
    python -m sasft.report outputs/ --where train.learning_rate=1e-4 --where peft.name=lora
    python -m sasft.report outputs/ --fig3-axis steps  # training curves against steps
    python -m sasft.report outputs/ --plan --detect 0.05   # seeds x items to detect 0.05
    sasft-report outputs/                              # the same, as a console script

It reads every `results.json` under the sweep directory (recursively); a run directory with a
`config.yaml` but no `results.json` is listed as missing and never counted. Into one folder it
writes `report.md`, CSV files and PNG figures. If `python -m sasft.analyze` wrote `drift.json`
files into the runs, a "Drift" section follows (see `sasft/analyze.py`).

How the report counts (cells, intervals, paired verdicts, power, did-not-learn), written
once: docs/report.md. `--plan --detect D` prints how many seeds and items would detect D.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .compare import (GENERAL_CHANGE, HEADLINE_METHOD, BASELINE_METHOD, Learning, Scenario,
                      Verdict, averages, breakdown, headline, run_stat, scenario_table,
                      verdict_rows, verdicts)
from .figures import FIG2, FIG3, AXES, DEFAULT_AXIS, figure2, figure3  # noqa: F401 (FIG2, FIG3)
from .runs import (Run, WhereError, family, find_runs, label_variants, ordered, reference_ratio,
                   select, write_csv)
from .equal import equal_lines
from .power import plan_lines
from .sections import (auxiliary_lines, drift_lines, example_lines, figure_md, kl_lines, md_table,
                       not_learned_lines, plane_lines)

log = logging.getLogger(__name__)

# Written only when there is something to show: removed first, so no stale copy outlives it.
OPTIONAL_OUTPUTS = ("*.png", "mix_ratio.csv", "in_domain_steps.csv", "drift.csv", "plane.csv",
                    "kl.csv", "pairs.csv", "equal_learning.csv")


# --- CSV ------------------------------------------------------------------------------------




def headline_pair(sc: Scenario):
    """The scenario's SA-SFT - task-only comparison (the first pair of their variants)."""
    return next((p for p in sc.pairs if family(p.method) == HEADLINE_METHOD
                 and family(p.reference) == BASELINE_METHOD), None)


def table_rows(table: list[Scenario], methods: list[str]) -> tuple[list[str], list[list]]:
    """The scenario table, wide: one row per scenario, ten columns per method, and the
    SA-SFT - task-only paired difference (every pair: pairs.csv)."""
    header = ["model", "task", "benchmark", "kind", "base", "chance"]
    for m in methods:
        header += [f"{m}_{c}" for c in ("final", "final_std", "final_lo", "final_hi", "delta",
                                        "delta_std", "delta_lo", "delta_hi", "seeds", "learned")]
    header += ["sasft_minus_task_only", "diff_lo", "diff_hi", "verdict", "detectable"]
    rows = []
    for sc in table:
        row = [sc.model, sc.task, sc.benchmark, sc.kind, sc.base, sc.chance]
        for m in methods:
            f, d = sc.final.get(m), sc.delta.get(m)
            row += ([f.mean, f.std, *_ends(f), d.mean, d.std, *_ends(d), f.n,
                     m not in sc.not_learned] if f else [None] * 8 + [0, None])
        p = headline_pair(sc)
        row += ([p.diff.mean, *_ends(p.diff), p.verdict, p.diff.detectable]
                if p and p.diff else [None, None, None, p.verdict if p else None, None])
        rows.append(row)
    return header, rows


def _ends(stat) -> tuple:
    return stat.ci if stat.ci is not None else (None, None)


def pair_rows(table: list[Scenario]) -> tuple[list[str], list[list]]:
    header = ["model", "task", "benchmark", "kind", "method", "reference", "difference", "lo",
              "hi", "verdict", "detectable", "design", "note"]
    rows = [[sc.model, sc.task, sc.benchmark, sc.kind, p.method, p.reference,
             *((p.diff.mean, *_ends(p.diff)) if p.diff else (None, None, None)), p.verdict,
             p.diff.detectable if p.diff else None, p.diff.shape if p.diff else "", p.note]
            for sc in table for p in sc.pairs]
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
                         s["final"], *_ends(f), s["delta"], *_ends(d), s.get("chance"),
                         learned.get(r.dir),
                         r.variant, str(r.dir)])
    return write_csv(path, header, rows)


# --- report.md ------------------------------------------------------------------------------


def cell_text(sc: Scenario, m: str) -> str:
    f, d = sc.final[m], sc.delta[m]
    interval = "" if f.ci is None else f" {f.interval_text()}"
    dagger = " †" if m in sc.not_learned else ""
    return f"{f.mean:.3f}{interval} ({d.mean:+.3f}), n={f.n}{dagger}"


def scenario_lines(table: list[Scenario], methods: list[str]) -> list[str]:
    header = ["model", "task", "benchmark", "kind", "base"] + methods + ["SA-SFT vs task-only"]
    rows = [[sc.model, sc.task, sc.benchmark, sc.kind, f"{sc.base:.3f}",
             *(cell_text(sc, m) if m in sc.final else "–" for m in methods),
             headline_pair(sc).text() if headline_pair(sc) else "–"]
            for sc in table if sc.kind != "general_change"]
    return md_table(header, rows)


def verdict_lines(table: list[Scenario]) -> list[str]:
    """The counts per pair of methods, then every pair on each (model, task)'s general change."""
    rows = verdict_rows(table)
    if not rows:
        return ["No two methods share a scenario: nothing to compare."]
    changes = [[sc.model, sc.task, f"{p.method} vs {p.reference}", p.text()]
               for sc in table if sc.kind == "general_change" for p in sc.pairs]
    return ["Each method against SA-SFT and against task-only SFT: the difference of their "
            "scores (first minus second), paired by seed and by test item, and its 95% "
            "interval; better where the interval lies above 0, worse below, else not "
            "distinguishable. Detectable: the smallest difference the design finds with 80% "
            "power (2.80 bootstrap standard errors; median and largest over the general "
            "scenarios). "
            "Every scenario's verdict: pairs.csv.", "",
            *md_table(["pair", "general scenarios", "general change (per task)",
                       "in-domain (per task)", "detectable (general)"], rows), "",
            f"On each task's {GENERAL_CHANGE} (the mean over its general benchmarks of final - "
            "base):", "", *md_table(["model", "task", "pair", "verdict"], changes)]


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
    return ("How it is counted: a scenario is (model, task, benchmark), and each task's mean "
            "general change is one more." + narrowed +
            f" Compared: {'; '.join(labels) or 'nothing'}. Runs that differ in anything but the "
            "seed are never averaged together: a method's variants are separate columns. " +
            mixing + "methods that mix nothing have no ratio, so all their runs count. A cell "
            "is a method's mean final score over seeds (runs sharing a seed averaged first), "
            "in round brackets the change from the base model, in square brackets its 95% "
            "interval: a hierarchical bootstrap (seeds, then test items; at seed level where "
            "runs kept no per-item scores), clipped to [0, 1] ([-1, 1] for changes). Methods "
            "are compared by paired differences, not by overlapping intervals; a method whose "
            "in-domain cell is not clearly above the base (or chance) did not learn the task "
            "and is left out of its general comparisons. The full rules: docs/report.md.")


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
    learned: list[Learning] = field(default_factory=list)


def render(report: Report, sweep_dir: Path, how: str, figures: list[tuple],
           sections: dict[str, list[str]]) -> str:
    methods = ordered({m for sc in report.table for m in sc.final})
    lines = [f"# sasft report: {sweep_dir}", "",
             f"{len(report.runs)} completed runs read; {len(report.missing)} missing or "
             f"unusable (listed at the end, never counted).", "",
             f"**{report.headline}.** {breakdown(report.table, report.learned)}", "",
             counting_note(report.ratio, how, methods, report.where), "",
             "## Paired verdicts", "", *verdict_lines(report.table), "",
             "## Scenarios", "",
             "Final score [95% interval] (change from base), seeds; † the method did not learn "
             "this task; last, SA-SFT minus task-only, paired.", "",
             *scenario_lines(report.table, methods), "",
             "## Methods that did not learn the task", "", *sections["not learned"], "",
             "## Averages per benchmark and overall", "",
             "Mean over scenarios of each method's mean final score (change from base in "
             "brackets); a method is averaged over the scenarios (sc.) where it has runs.", "",
             *average_lines(averages(report.table, methods), methods), "",
             "## Learning against forgetting", "", *sections["plane"], "",
             "## Forgetting at equal learning", "", *sections["equal"], "",
             "## Figure 2: mix ratio", "", figure_md(*figures[0]), "",
             "## Figure 3: in-domain score during training", "", figure_md(*figures[1]), "",
             "## KL from the base during training", "", *sections["kl"], "",
             "## What forgetting looks like", "", *sections["examples"], "",
             "## What the mixing methods trained on", "", *sections["auxiliary"], "",
             "## Drift", "", *sections["drift"], "", "## Missing runs", ""]
    lines += [f"- `{d}`: {why}" for d, why in report.missing] or ["None."]
    return "\n".join(lines) + "\n"


def clear_outputs(out_dir: Path) -> None:
    for pattern in OPTIONAL_OUTPUTS:
        for path in out_dir.glob(pattern):
            path.unlink()


def read_sweep(sweep_dir: Path, ratio: float | None, where, skip: Path | None = None):
    """The sweep's runs (labelled, narrowed by `where`), the missing ones, the reference ratio
    and how it was chosen."""
    if not Path(sweep_dir).is_dir():
        raise FileNotFoundError(f"sweep directory not found: {sweep_dir}")
    runs, missing = find_runs(Path(sweep_dir), skip=skip)
    runs = select(runs, list(where))
    label_variants(runs)
    return (runs, missing, *reference_ratio(runs, ratio))


def plan(sweep_dir: str | Path, detect: float, ratio: float | None = None,
         where: list[str] = ()) -> str:
    """How many seeds and test items detect a difference of `detect` (power.py), from the
    variance of the sweep's paired comparisons; writes nothing."""
    runs, _, ratio, _ = read_sweep(Path(sweep_dir), ratio, where,
                                   skip=Path(sweep_dir) / "report")
    table, _ = scenario_table(runs, ratio)
    return "\n".join(plan_lines(table, detect)) + "\n"


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
    runs, missing, ratio, how = read_sweep(sweep_dir, ratio, where, skip=out_dir)
    judged = verdicts(runs)
    table, learned = scenario_table(runs, ratio, judged)
    methods = ordered({m for sc in table for m in sc.final})
    write_csv(out_dir / "table.csv", *table_rows(table, methods))
    if any(sc.pairs for sc in table):
        write_csv(out_dir / "pairs.csv", *pair_rows(table))
    write_run_csv(out_dir / "runs.csv", runs, judged)
    avg = averages(table, methods)
    write_csv(out_dir / "averages.csv",
              ["benchmark", "base", "method", "final", "delta", "scenarios"],
              [[name, base, m, *v] for name, base, per in avg for m, v in per.items()])
    figures = [figure2(runs, out_dir), figure3(runs, ratio, out_dir, axis)]
    failed = {v.run.dir for v in judged if not v.learned}
    sections = {"not learned": not_learned_lines(learned, judged),
                "plane": plane_lines(runs, ratio, failed, out_dir),
                "equal": equal_lines(runs, ratio, out_dir),
                "kl": kl_lines(runs, ratio, out_dir, axis),
                "examples": example_lines(runs, ratio),
                "auxiliary": auxiliary_lines(runs),
                "drift": drift_lines(runs, ratio, out_dir)}
    report = Report(out_dir, table, runs, missing, ratio, headline(table),
                    sorted(out_dir.glob("*.png")), list(where), judged, learned)
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
    parser.add_argument("--plan", action="store_true", help="print how many seeds and test "
                        "items detect a difference of --detect, from these runs' variance; "
                        "writes no report")
    parser.add_argument("--detect", type=float, default=0.05, metavar="D",
                        help="the difference --plan sizes the design for (default 0.05)")
    parser.add_argument("--fig3-axis", choices=sorted(AXES), default=DEFAULT_AXIS,
                        help="x axis of Figure 3 and the KL curves (default: epochs, since a "
                        "mixing method takes more steps per epoch)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not 0 < args.detect <= 1:
        parser.error(f"--detect {args.detect}: a difference of scores, in (0, 1]")
    try:
        if args.plan:
            print(plan(args.sweep_dir, args.detect, args.ratio, args.where), end="")
            return
        report = build_report(args.sweep_dir, args.out, args.ratio, args.wandb, args.where,
                              args.fig3_axis)
    except (WhereError, FileNotFoundError) as e:
        parser.error(str(e))
    print(report.headline)
    print(f"{len(report.runs)} runs, {len(report.missing)} missing -> "
          f"{report.out_dir / 'report.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
