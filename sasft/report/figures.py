"""The report's figures: Figure 2 (scores against the mix ratio), Figure 3 (in-domain score
during training) and the drift figures (weight change per layer; drift against forgetting).
matplotlib draws into files only (Agg): a cluster node has no display."""

from __future__ import annotations

import math
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path

from .runs import MEASURES, METHOD_ORDER, Run, at_reference, ordered, write_csv
from .stats import Stat, pearson, seed_stats

FIG2, FIG3 = "fig2_mix_ratio.png", "fig3_in_domain_steps.png"


FIG_LAYERS, FIG_SCATTER = "fig_drift_layers.png", "fig_drift_scatter.png"
FIG_PLANE = "fig_plane.png"  # and fig_plane_<model>.png; fig_kl_<method>.png per method


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    return plt


# Baselines in blue, orange and green (lighter for their second variant), the defences in
# purple, brown, pink and olive, SA-SFT in red; gray is the base model's.
COLORS = dict(zip(METHOD_ORDER, ("tab:blue", "tab:orange", "#ffbb78", "tab:green", "#98df8a",
                                 "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:red")))


def color(label: str) -> str:
    """One colour per method in every figure; a variant of a method gets a shade of tab20."""
    if label in COLORS:
        return COLORS[label]
    return pyplot().get_cmap("tab20")(sum(map(ord, label)) % 20)


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


AXES = {"steps": ("step", "training step"),
        "epochs": ("epoch", "epoch (passes over the task data)")}
# Epochs by default: every method passes over the task data the same number of times, while a
# mixing method at ratio r takes (1 + r) times the optimizer steps; on a steps axis its curve is
# stretched and it looks slower to learn than it is.
DEFAULT_AXIS = "epochs"


def curve(runs: list[Run], key: str = "eval_in_domain") -> list[tuple[int, float | None, Stat]]:
    """(step, epoch or None, Stat over seeds) of a quantity logged during training."""
    by_step: dict[int, list[tuple[int, float]]] = defaultdict(list)
    epochs: dict[int, float] = {}
    for run in runs:
        for entry in logged(run, key):
            if key in entry and "step" in entry:
                by_step[int(entry["step"])].append((run.seed, entry[key]))
                if "epoch" in entry or int(entry["step"]) == 0:  # step 0 is epoch 0
                    epochs[int(entry["step"])] = float(entry.get("epoch", 0.0))
    return [(step, epochs.get(step), seed_stats(by_step[step])) for step in sorted(by_step)]


def logged(run: Run, key: str) -> list[dict]:
    """The run's history; the in-domain curve ends at the final score, at the last step, where
    no periodic evaluation fell there (a run without them would otherwise show step 0 alone)."""
    history = [e for e in run.results.get("history", []) if "step" in e]
    if key != "eval_in_domain" or not history or run.in_domain is None:
        return history
    last = max(history, key=lambda e: e["step"])
    if any(key in e and e["step"] == last["step"] for e in history):
        return history
    final = {"step": last["step"], key: run.results["scores"][run.in_domain]["final"]}
    return history + [final | ({"epoch": last["epoch"]} if "epoch" in last else {})]


def _axis(curves, axis: str) -> tuple[str, str]:
    """The x axis actually used: epochs fall back to steps where a run logged no epoch."""
    if axis == "epochs" and any(e is None for c in curves for _, e, _ in c):
        return "steps", " (epochs requested, but some runs logged no epoch: steps)"
    return axis, ""


def _plot_curve(ax, points, axis: str, lines: int = 1, **style) -> None:
    """A mean curve with a ± std band, fainter where the panel has many `lines`."""
    xs = [step if axis == "steps" else epoch for step, epoch, _ in points]
    mean = [st.mean for _, _, st in points]
    std = [st.std for _, _, st in points]
    ax.plot(xs, mean, marker=".", **style)
    ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                    alpha=0.2 if lines <= 4 else 0.07, color=style.get("color"))


def figure3(runs: list[Run], ratio: float | None, out_dir: Path,
            axis: str = DEFAULT_AXIS) -> tuple[Path | None, str]:
    panels: dict[tuple[str, str], dict[str, list]] = defaultdict(dict)
    for model, task in sorted({(r.model, r.task) for r in runs}):
        chosen = [r for r in runs if (r.model, r.task) == (model, task) and at_reference(r, ratio)]
        for method in ordered({r.label for r in chosen}):
            points = curve([r for r in chosen if r.label == method])
            if points:
                panels[(model, task)][method] = points
    if not panels:
        return None, "Figure 3 skipped: no run logged in-domain scores during training."
    write_csv(out_dir / "in_domain_steps.csv",
              ["model", "task", "method", "step", "epoch", "mean", "std", "seeds"],
              [[mt[0], mt[1], m, step, epoch, s.mean, s.std, s.n]
               for mt, curves in panels.items() for m, points in curves.items()
               for step, epoch, s in points])
    axis, note = _axis([c for curves in panels.values() for c in curves.values()], axis)
    plt = pyplot()
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False,
                             layout="constrained")  # no title over the row above's labels
    for ax, ((model, task), curves) in zip(axes.flat, panels.items()):
        for method, points in curves.items():
            _plot_curve(ax, points, axis, len(curves), label=method, color=color(method))
        ax.set(title=f"{model} / {task}", xlabel=AXES[axis][1], ylabel="in-domain score")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    _legend_below(fig, axes)
    fig.suptitle(f"Figure 3: in-domain score during training, against {axis} "
                 "(mean ± std over seeds)")
    return save_figure(fig, out_dir / FIG3), note


def _legend_below(fig, axes) -> None:
    """One legend for the figure, below the panels (no panel's curves hidden under it)."""
    handles = {}
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(l, h)
    entry = 0.5 + 0.075 * max(map(len, handles), default=1)  # inches per column, small font
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", fontsize="small",
               ncols=max(1, min(len(handles), int(fig.get_figwidth() // entry))))


# --- the learning-forgetting plane ---------------------------------------------------------


def plane_figures(points: dict, runs: list[Run], failed: set, ratio: float | None,
                  out_dir: Path) -> list[Path]:
    """General change (x) against in-domain change (y): one small point per run (hollow if it
    did not learn the task), each method's mean with its interval both ways; one figure per
    scope of `points` ({scope: {method: (x Stat, y Stat)}}, from compare.plane)."""
    plt = pyplot()
    paths = []
    for scope, methods in points.items():
        fig, ax = plt.subplots(figsize=(7, 5.5), layout="constrained")
        scoped = [r for r in runs if at_reference(r, ratio)
                  and (scope == "all models" or r.model == scope)]
        for method, (x, y) in methods.items():
            mine = [r for r in scoped if r.label == method]
            for hollow in (False, True):
                pts = [(r.results["summary"]["general_delta"],
                        r.results["summary"]["in_domain_delta"]) for r in mine
                       if (r.dir in failed) == hollow and "general_delta" in r.results["summary"]]
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, alpha=0.5,
                           facecolors="none" if hollow else color(method),
                           edgecolors=color(method))
            (xlo, xhi), (ylo, yhi) = x.interval, y.interval
            bar = lambda lo, mid, hi: [[max(0.0, mid - lo)], [max(0.0, hi - mid)]]  # noqa: E731
            ax.errorbar([x.mean], [y.mean], xerr=bar(xlo, x.mean, xhi),
                        yerr=bar(ylo, y.mean, yhi), marker="o", markersize=9,
                        capsize=4, color=color(method), markeredgecolor="black", label=method)
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.axvline(0, color="gray", linewidth=0.8)
        ax.set(xlabel="general change (final - base, mean over general benchmarks)",
               ylabel="in-domain change (final - base)",
               title=f"Learning against forgetting: {scope}")
        fig.legend(fontsize="small", loc="outside right upper")
        bare = [m for m, (x, y) in methods.items() if x.ci is None]
        caption = ("small dots: runs (hollow: did not learn the task); large: method mean, "
                   "bars: 95% interval" + (" (none without seeds or per-item scores: "
                                           f"{', '.join(bare)})" if bare else ""))
        fig.supxlabel(textwrap.fill(caption, 110), fontsize="x-small", color="gray")
        name = FIG_PLANE if scope == "all models" else f"fig_plane_{slug(scope)}.png"
        paths.append(save_figure(fig, out_dir / name))
    return paths


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


# --- drift during training -----------------------------------------------------------------


KL_KEYS = {"eval_in_domain": "in-domain score",
           "eval_kl_self": "KL(base ‖ current), self-dialogues",
           "eval_kl_prompts": "KL(base ‖ current), benchmark prompts"}


def kl_figures(runs: list[Run], ratio: float | None, out_dir: Path,
               axis: str = DEFAULT_AXIS) -> tuple[list[Path], str]:
    """Per method, the in-domain score and the two KLs logged during training: one line per
    (model, task), mean ± std over seeds; one figure per method."""
    chosen = [r for r in runs if at_reference(r, ratio) and any(
        k in e for e in r.results.get("history", []) for k in ("eval_kl_self", "eval_kl_prompts"))]
    if not chosen:
        return [], "No run logged KL during training (eval_kl_self / eval_kl_prompts)."
    plt = pyplot()
    paths, notes = [], set()
    for method in ordered({r.label for r in chosen}):
        mine = [r for r in chosen if r.label == method]
        pairs = sorted({(r.model, r.task) for r in mine})
        curves = {(k, mt): curve([r for r in mine if (r.model, r.task) == mt], k)
                  for k in KL_KEYS for mt in pairs}
        used, note = _axis(curves.values(), axis)
        notes.add(note)
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), squeeze=False, layout="constrained")
        for ax, (key, title) in zip(axes[0], KL_KEYS.items()):
            for i, mt in enumerate(pairs):
                if curves[(key, mt)]:
                    _plot_curve(ax, curves[(key, mt)], used, len(pairs), label=f"{mt[0]} / {mt[1]}",
                                color=f"C{i % 10}", linestyle=("-", "--", ":")[i // 10 % 3])
            ax.set(title=title, xlabel=AXES[used][1])
        _legend_below(fig, axes)
        fig.suptitle(f"Drift during training: {method} (mean ± std over seeds)")
        paths.append(save_figure(fig, out_dir / f"fig_kl_{slug(method)}.png"))
    return paths, "".join(sorted(notes))


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
    step = max(1, math.ceil(n / 8))  # a 30-layer model's labels would run into each other
    first, last = -step, n - 1 + step
    for x, part, marker in ((first, "embeddings", "s"), (last, "lm_head", "^")):
        y = _mean(w.get(part) for w in drifts)
        if y is not None:
            ax.plot([x], [y], marker=marker, color="gray", linestyle="none", label=part)
    layers = range(0, n, step)
    ax.set_xticks([first, *layers, last], ["emb", *map(str, layers), "head"])
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
