"""The report's sections beyond the scenario table, each a function returning markdown lines
(and writing its CSV and figures): runs that did not learn the task, the learning-forgetting
plane, drift during training (KL), what forgetting looks like, and drift after training."""

from __future__ import annotations

import json
from pathlib import Path

from .compare import Learning, Verdict, plane
from .figures import kl_figures, layer_figure, plane_figures, scatter_figure
from ..record import EXAMPLES_FILE
from .runs import DRIFT_FILE, MEASURES, Run, at_reference, ordered, write_csv
from .stats import pearson, seed_stats

EXAMPLES_PER_CELL = 3


def md_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def md_cell(text, limit: int = 160, tail: bool = False) -> str:
    """Text for a markdown table cell: one line (line breaks shown as ⏎), at most `limit`
    characters (the end kept where `tail`: a prompt's question is at its end), `|` escaped."""
    text = " ⏎ ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())
    if len(text) > limit:
        text = "…" + text[-limit:] if tail else text[:limit] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|") or "(empty)"


def figure_md(path: Path | None, note: str = "") -> str:
    """A figure's markdown, and the note that says what it could not do (or why it is not)."""
    if not path:
        return note
    return f"![{path.stem}]({path.name})" + (f"\n\n{note.strip(' ()').capitalize()}." if note
                                            else "")


# --- runs that did not learn the task ------------------------------------------------------


def not_learned_lines(learned: list[Learning], judged: list[Verdict]) -> list[str]:
    """Each method x task judged on its in-domain cell; the runs that, alone, fell short."""
    failed = [l for l in learned if not l.learned]
    short = [v for v in judged if not v.learned]
    no_items = sum(v.final.ci is None for v in judged)
    lines = [f"{len(failed)} of {len(learned)} methods x tasks did not learn the task: the "
             "lower end of the 95% interval of their in-domain change (paired against the base "
             "over seeds and items) is <= 0, or that of their in-domain score is <= the test's "
             "chance score (where it has one). Such a method is marked † in the scenario table "
             "and left out of that task's general comparisons. "
             f"{len(short)} of {len(judged)} runs, judged alone, fell short."]
    if no_items:
        lines[0] += (f" {no_items} runs kept no per-item scores for the in-domain test (a corpus "
                     "metric such as chrF has none; runs before results.json schema 3 kept none): "
                     "a run alone is judged on its point values.")
    rows = [[l.model, l.task, l.method, l.final.n, f"{l.final.mean - l.delta.mean:.3f}",
             f"{l.final.mean:.3f} {l.final.interval_text(3)}",
             f"{l.delta.mean:+.3f} {l.delta.interval_text(3, True)}",
             "–" if l.chance is None else f"{l.chance:.3f}", "yes" if l.learned else "**no**",
             "; ".join(l.reasons) or "–",
             "; ".join(f"seed {v.run.seed}: {', '.join(v.reasons)}" for v in l.short) or "none"]
            for l in learned if not l.learned or l.short]
    if not rows:
        return lines
    return lines + ["", *md_table(["model", "task", "method", "seeds", "base", "final",
                                   "change", "chance", "learned", "why", "seeds that fell short"],
                                  rows)]


# --- the learning-forgetting plane ---------------------------------------------------------


def plane_lines(runs: list[Run], ratio: float | None, failed: set, out_dir: Path) -> list[str]:
    points = plane(runs, ratio)
    if not points:
        return ["No run has both an in-domain and a general score."]
    write_csv(out_dir / "plane.csv", ["scope", "method", "general_change", "general_lo",
                                      "general_hi", "in_domain_change", "in_domain_lo",
                                      "in_domain_hi", "seeds"],
              [[scope, m, x.mean, *x.interval, y.mean, *y.interval, x.n]
               for scope, methods in points.items() for m, (x, y) in methods.items()])
    paths = plane_figures(points, runs, failed, ratio, out_dir)
    rows = [[m, f"{x.mean:+.3f} {x.interval_text()}", f"{y.mean:+.3f} {y.interval_text()}", x.n]
            for m, (x, y) in points["all models"].items()]
    return ["Each run is a point: its general change (mean over the general benchmarks, x) "
            "against its in-domain change (y), at the reference ratio; each method's mean over "
            "its runs carries its 95% interval both ways (the hierarchical bootstrap over seeds "
            "and each task's benchmarks' items, docs/report.md). Up and "
            "right is better: learning without forgetting. Over the whole grid:", "",
            *md_table(["method", "general change", "in-domain change", "seeds"], rows), "",
            *(figure_md(p) + "\n" for p in paths)]


# --- drift during training -----------------------------------------------------------------


def last_logged(run: Run, key: str) -> float | None:
    values = [e[key] for e in run.results.get("history", []) if key in e]
    return values[-1] if values else None


def kl_lines(runs: list[Run], ratio: float | None, out_dir: Path, axis: str) -> list[str]:
    paths, note = kl_figures(runs, ratio, out_dir, axis)
    if not paths:
        return [note]
    chosen = [r for r in runs if at_reference(r, ratio)]
    rows, csv_rows = [], []
    for method in ordered({r.label for r in chosen}):
        mine = [r for r in chosen if r.label == method]
        cells = []
        for key in ("eval_kl_self", "eval_kl_prompts"):
            pairs = [(r.seed, last_logged(r, key)) for r in mine if last_logged(r, key) is not None]
            cells.append(seed_stats(pairs).text() if pairs else "–")
        rows.append([method, *cells, len(mine)])
    for r in chosen:
        csv_rows.append([r.model, r.task, r.label, r.seed, last_logged(r, "eval_kl_self"),
                         last_logged(r, "eval_kl_prompts"),
                         r.results["summary"].get("general_delta")])
    write_csv(out_dir / "kl.csv", ["model", "task", "method", "seed", "kl_self_final",
                                   "kl_prompts_final", "general_delta"], csv_rows)
    corr = []
    for i, name in ((4, "self-dialogues"), (5, "benchmark prompts")):
        pts = [(row[i], row[6]) for row in csv_rows if row[i] is not None and row[6] is not None]
        r = pearson([x for x, _ in pts], [y for _, y in pts])
        corr.append(f"{name} r = {r:.2f} ({len(pts)} runs)" if r is not None else
                    f"{name} r = n/a")
    return ["At every periodic evaluation the run logs KL(base ‖ current), the mean token KL of "
            "the model being trained from its base, on held-out self-dialogues of the base and "
            "on the general benchmarks' prompts, next to the in-domain score. At the end of "
            "training, per method at the reference ratio (mean ± std over seeds, every model "
            "and task):", "",
            *md_table(["method", "KL self-dialogues", "KL benchmark prompts", "runs"], rows), "",
            "Pearson correlation of the final KL with the general-score change: "
            + "; ".join(corr) + "." + (f" Axis: {note.strip(' ()')}." if note else ""), "",
            *(figure_md(p) + "\n" for p in paths)]


# --- what the mixing methods trained on ----------------------------------------------------

SAMPLE_FILE = "auxiliary_sample.jsonl"  # sasft/pipeline.py: the first dialogues of a run's mix


def _turns(stats: dict, role: str, key: str) -> tuple[float, float] | None:
    """(median, q90) tokens of a role's turns in a run's auxiliary stats, or None."""
    turns = (stats.get(f"{role}_turns") or {}).get(key)
    return (turns["median"], turns["q90"]) if turns else None


def _mean_pair(pairs: list[tuple[float, float]]) -> str:
    if not pairs:
        return "–"
    return " / ".join(f"{sum(p[i] for p in pairs) / len(pairs):.0f}" for i in (0, 1))


def _mean_share(values: list[float]) -> str:
    return f"{sum(values) / len(values):.1%}" if values else "–"


def auxiliary_lines(runs: list[Run]) -> list[str]:
    """What each mixing method trained on besides the task (mix.auxiliary_stats): how many
    dialogues, the share of turns cut at the token limit, their lengths, and one example."""
    mixing = [r for r in runs if r.results.get("mix", {}).get("auxiliary")]
    if not mixing:
        return ["No run mixed auxiliary dialogues into its training data."]
    rows, examples = [], []
    for key in sorted({(r.model, r.label, r.ratio) for r in mixing}, key=str):
        mine = sorted((r for r in mixing if (r.model, r.label, r.ratio) == key),
                      key=lambda r: (r.task, r.seed))
        stats = [r.results["mix"].get("auxiliary_stats") or {} for r in mine]
        source = next((s["corpus"] for s in stats if "corpus" in s), "self-dialogues")
        cut = {role: [s[f"{role}_turns"]["cut_share"] for s in stats if s.get(f"{role}_turns")]
               for role in ("user", "assistant")}
        rows.append([*map(str, key), len(mine),
                     f"{sum(r.results['mix']['auxiliary'] for r in mine) / len(mine):.0f}",
                     md_cell(Path(source).name if "/" in source else source, 40),
                     _mean_share(cut["user"]), _mean_share(cut["assistant"]),
                     _mean_pair([p for s in stats if (p := _turns(s, "user", "tokens"))]),
                     _mean_pair([p for s in stats if (p := _turns(s, "assistant", "tokens"))]),
                     _mean_pair([p for s in stats
                                 if (p := _turns(s, "assistant", "tokens_written"))])])
        sample = mine[0].dir / SAMPLE_FILE
        if sample.is_file() and (line := sample.read_text().partition("\n")[0]):
            turns = json.loads(line)["messages"]
            examples.append([key[1], *(md_cell(m["content"], 240) for m in turns[:2])])
    lines = ["Per model, method and mix ratio: the auxiliary dialogues each run trained on (mean "
             "over its runs). A turn is cut when it reached the generation limit and was kept up "
             "to its last sentence; tokens are median / q90 per run, as trained, and for the "
             "answers as the model wrote them (a cut answer counts the limit: at least that "
             "long), where the run recorded it (a mix drawn in blocks keeps that per block, "
             "mix.auxiliary_stats.blocks). External corpora record no turn statistics.", "",
             *md_table(["model", "method", "ratio", "runs", "dialogues", "source",
                        "user turns cut", "answers cut", "user tokens", "answer tokens",
                        "answer tokens as written"], rows)]
    if examples:
        lines += ["", "The first dialogue of each method's first run (`auxiliary_sample.jsonl`; "
                  "long turns cut here at 240 characters):", "",
                  *md_table(["method", "user", "assistant"], examples)]
    return lines


# --- what forgetting looks like ------------------------------------------------------------


def read_examples(run: Run) -> list[dict]:
    path = run.dir / EXAMPLES_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a damaged line loses one example, not the report
    return rows


def item_name(row: dict) -> str:
    """The item's doc id, after its subtask where a group's task names it (mmlu_anatomy #3)."""
    task = row.get("task")
    return f"{task} #{row.get('doc_id')}" if task and task != row.get("benchmark") \
        else f"#{row.get('doc_id')}"


def example_lines(runs: list[Run], ratio: float | None) -> list[str]:
    chosen = sorted((r for r in runs if at_reference(r, ratio)),
                    key=lambda r: (r.model, r.task, r.seed, str(r.dir)))
    cells: dict[tuple[str, str], list] = {}
    for run in chosen:
        for row in read_examples(run):
            bench = row.get("benchmark")
            kind = run.results["scores"].get(bench, {}).get("kind")
            mine = cells.setdefault((bench, run.label), [])
            if kind != "in_domain" and len(mine) < EXAMPLES_PER_CELL:
                mine.append((run, row))
    if not cells and any((r.dir / EXAMPLES_FILE).is_file() for r in chosen):
        return ["No general test item that the base model answered right was answered wrong "
                f"after fine-tuning, in any run ({EXAMPLES_FILE} files are empty)."]
    if not cells:
        return [f"No run wrote {EXAMPLES_FILE} (runs before results.json schema 3)."]
    lines = [f"Per general benchmark and method, up to {EXAMPLES_PER_CELL} test items the base "
             "model answered right and the fine-tuned model wrong (the first runs in model, "
             "task, seed order), the two answers side by side: does the model lose the fact, or "
             "only the way it answers? Long texts are cut (…); a prompt keeps its end."]
    for bench in sorted({b for b, _ in cells}):
        rows = [[label, f"{run.model} / {run.task} / seed {run.seed}",
                 md_cell(item_name(row), 40), md_cell(row.get("prompt", ""), 200, tail=True),
                 md_cell(row.get("target", ""), 80), md_cell(row.get("base_answer", "")),
                 md_cell(row.get("final_answer", ""))]
                for label in ordered(l for b, l in cells if b == bench)
                for run, row in cells[(bench, label)]]
        lines += ["", f"### {bench}", "", *md_table(
            ["method", "run", "item", "prompt", "target", "base answer", "fine-tuned answer"],
            rows)]
    return lines


# --- drift after training (sasft.analyze) --------------------------------------------------


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
