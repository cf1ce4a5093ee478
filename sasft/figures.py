"""The report's figures: Figure 2 (scores against the mix ratio), Figure 3 (in-domain score
during training) and the drift figures (weight change per layer; drift against forgetting).
matplotlib draws into files only (Agg): a cluster node has no display."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from .runs import (MEASURES, METHOD_ORDER, Run, Stat, at_reference, ordered, pearson,
                   seed_stats, write_csv)

FIG2, FIG3 = "fig2_mix_ratio.png", "fig3_in_domain_steps.png"


FIG_LAYERS, FIG_SCATTER = "fig_drift_layers.png", "fig_drift_scatter.png"


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
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
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
    fig.suptitle("Figure 2: score against mix ratio (mean ± std over seeds)")
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
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False,
                             layout="constrained")  # no title over the row above's labels
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
    fig.suptitle("Figure 3: in-domain score during training (mean ± std over seeds)")
    return save_figure(fig, out_dir / FIG3), ""


# --- drift ----------------------------------------------------------------------------------


def layer_figure(records: list[tuple[Run, dict]], ratio: float | None, out_dir: Path) -> Path:
    """Relative weight change per decoder layer and module type: one panel per (model,
    method), methods side by side; embeddings left of layer 0, lm_head right of the last."""
    chosen = [(r, d) for r, d in records if at_reference(r, ratio)]
    models = sorted({r.model for r, _ in chosen})
    methods = ordered({r.label for r, _ in chosen})
    plt = pyplot()
    fig, axes = plt.subplots(len(models), len(methods), figsize=(4 * len(methods),
                             3.2 * len(models)), squeeze=False, sharey=True,
                             layout="constrained")
    for row, model in enumerate(models):
        for col, method in enumerate(methods):
            drifts = [d["weights"] for r, d in chosen if (r.model, r.label) == (model, method)]
            _layer_panel(axes[row][col], drifts)
            axes[row][col].set_title(f"{model} / {method} ({len(drifts)} runs)")
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Relative weight change ||W_ft - W_base|| / ||W_base|| per layer")
    return save_figure(fig, out_dir / FIG_LAYERS)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _layer_panel(ax, drifts: list[dict]) -> None:
    if not drifts:
        ax.set_visible(False)
        return
    n = min(len(w["layers"]) for w in drifts)
    kinds = [k for k in ("q", "k", "v", "o", "gate", "up", "down", "norm", "other", "all")
             if all(k in w["layers"][i] for w in drifts for i in range(n))]
    for kind in kinds:
        ys = [_mean(w["layers"][i][kind] for w in drifts) for i in range(n)]
        style = {"color": "black", "linewidth": 2} if kind == "all" else {}
        ax.plot(range(n), ys, marker=".", label=kind, **style)
    for x, part, marker in ((-1, "embeddings", "s"), (n, "lm_head", "^")):
        y = _mean(w.get(part) for w in drifts)
        if y is not None:
            ax.plot([x], [y], marker=marker, color="gray", linestyle="none", label=part)
    ax.set_xticks(range(-1, n + 1), ["emb", *map(str, range(n)), "head"])
    ax.set(xlabel="decoder layer", ylabel="relative change")


def scatter_figure(records: list[tuple[Run, dict]], out_dir: Path) -> tuple[Path, list]:
    """Each drift measure against the general-score change, one point per run; returns the
    figure and (measure, Pearson r, points) rows."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4 * len(MEASURES), 3.5), squeeze=False,
                             sharey=True, layout="constrained")
    stats = []
    for ax, (name, read) in zip(axes[0], MEASURES.values()):
        points = [(read(d), r.results["summary"]["general_delta"], r.label) for r, d in records
                  if read(d) is not None and "general_delta" in r.results.get("summary", {})]
        for method in ordered({m for _, _, m in points}):
            ax.scatter([x for x, _, m in points if m == method],
                       [y for _, y, m in points if m == method], label=method, s=18,
                       color=color(method))
        r = pearson([x for x, _, _ in points], [y for _, y, _ in points])
        stats.append((name, r, len(points)))
        ax.set(title=f"r = {r:.2f}" if r is not None else "r = n/a", xlabel=name)
    axes[0][0].set_ylabel("general-score change")
    axes[0][0].legend(fontsize="small")
    fig.suptitle("Drift against forgetting (one point per run, every ratio)")
    return save_figure(fig, out_dir / FIG_SCATTER), stats
