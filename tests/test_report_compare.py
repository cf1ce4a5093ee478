"""The comparison on synthetic one-seed sweeps with known numbers: the bootstrap's interval over
test items, paired verdicts on items, methods that did not learn the task, and the report's
sections. Paired verdicts over seeds and items, power and equal learning: test_report_paired.py."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from sasft.report import cli as report, compare, stats
from tests.test_report import write_run

N = 200  # items per test: a proportion's 95% interval is about ± 0.065 at 0.5, ± 0.03 at 0.95


def ones(k: int, n: int = N) -> list[float]:
    """k correct items of n, the first k."""
    return [1.0] * k + [0.0] * (n - k)


BASE = {"t": 0.0, "g": 0.8, "g2": 0.9}
CHANCE = {"t": 0.5}  # a binary task: chance 0.5; the general tests declare none
# method: correct items of N on t (in-domain), g, g2
COUNTS = {
    "task_only": (190, 60, 40),    # learns, forgets
    "freeze": (104, 180, 190),     # at chance on t (0.52): did not learn; forgets nothing
    "ext_mix": (184, 132, 100),    # g: 0.66 against sasft's 0.70, intervals overlap
    "sasft": (186, 140, 176),      # t: 0.93 within task_only's reach; g2: far ahead (0.88)
}


def plane_sweep(root, examples: bool = True):
    for method, (t, g, g2) in COUNTS.items():
        finals = {"t": t / N, "g": g / N, "g2": g2 / N}
        items = {b: {"base": ones(round(BASE[b] * N)), "final": ones(c)}
                 for b, c in zip(("t", "g", "g2"), (t, g, g2))}
        history = [{"step": 0, "epoch": 0.0, "eval_in_domain": 0.0, "eval_kl_self": 0.0,
                    "eval_kl_prompts": 0.0},
                   {"loss": 1.0, "step": 5, "epoch": 1.0},
                   {"step": 10, "epoch": 2.0, "eval_in_domain": t / N, "eval_kl_self": 0.3,
                    "eval_kl_prompts": 0.1 if method == "sasft" else 0.5}]
        rows = [{"benchmark": "g", "doc_id": i, "prompt": "Q" * 500 + " | which colour?",
                 "target": "red", "base_answer": "Sure! It is red.\nDone.",
                 "final_answer": "x" * 400} for i in range(5)] if examples else None
        write_run(root, method, 1.0, 0, finals, base=BASE, items=items, chance=CHANCE,
                  history=history, examples=rows)
    return root


def one_seed(values, name="b", point=None) -> stats.Sample:
    return stats.sample({0: [(name, float(np.mean(values)) if point is None else point,
                              values, 1.0)]})


def test_item_bootstrap():
    s = stats.bootstrap(one_seed(ones(100, 200)))
    lo, hi = s.ci
    assert 0.42 < lo < 0.46 and 0.54 < hi < 0.58  # 0.5 ± 1.96 * sqrt(0.25 / 200) = ± 0.069
    assert stats.bootstrap(one_seed(ones(100, 200))).ci == (lo, hi)  # a fixed seed
    assert stats.bootstrap(one_seed([0.0] * 50)).ci == (0.0, 0.0)  # no change: no spread
    # moved to the recorded score where a corpus-level metric differs from the items' mean
    assert stats.bootstrap(one_seed(ones(100, 200), point=0.6)).ci == pytest.approx(
        (lo + 0.1, hi + 0.1))
    # ... and clipped to the score's range
    assert stats.bootstrap(one_seed(ones(190, 200), point=0.99), stats.SCORE_RANGE).ci[1] == 1.0
    assert stats.bootstrap(one_seed(ones(100, 200))).detectable == pytest.approx(
        2.8 * 0.5 / 200 ** 0.5, rel=0.1)
    # the same benchmark name and size draw the same items: a difference is paired
    a, b = one_seed(ones(120), "g"), one_seed(ones(100), "g")
    d = stats.difference(a, b)
    assert stats.resampled_means(d) == pytest.approx(stats.resampled_means(a)
                                                     - stats.resampled_means(b))


def test_paired_verdicts_and_did_not_learn(tmp_path):
    rep = report.build_report(plane_sweep(tmp_path / "sweep"))
    by = {sc.benchmark: sc for sc in rep.table}
    t, g, g2 = by["t"], by["g"], by["g2"]
    # freeze did not learn t (0.52, chance 0.5): left out of the general comparisons, though it
    # forgot least (g 0.90, g2 0.95)
    assert g.not_learned == {"freeze"} and t.not_learned == {"freeze"}
    assert g.find("freeze", "task_only").verdict == compare.LEFT_OUT
    assert g.find("sasft", "freeze").verdict == compare.LEFT_OUT
    assert t.find("sasft", "freeze").verdict == "better"  # in-domain: no one is left out
    # sasft 0.70 against ext_mix 0.66 on g: the marginal intervals overlap (the old rule tied
    # them), but paired, sasft has the 132 items ext_mix has and 8 more: better
    assert g.final["ext_mix"].ci[1] > g.final["sasft"].ci[0]
    assert g.find("sasft", "ext_mix").verdict == "better"
    assert g2.find("sasft", "task_only").verdict == "better"
    assert rep.headline == ("SA-SFT forgets less than task-only in 2 of 2 general scenarios, "
                            "more in 0, not distinguishable in the rest")
    lo, hi = g.final["sasft"].ci
    assert lo < 0.70 < hi and hi - lo == pytest.approx(0.13, abs=0.02)
    assert g.final["sasft"].shape == "1 seed x 200 items"

    flagged = [l for l in rep.learned if not l.learned]
    assert [(l.method, [v.run.seed for v in l.short]) for l in flagged] == [("freeze", [0])]
    assert "chance 0.500" in flagged[0].reasons[0]
    md = (rep.out_dir / "report.md").read_text()
    assert "1 of 4 methods x tasks did not learn the task" in md
    assert "1 of 4 runs, judged alone, fell short" in md
    assert "seed 0: final 0.520" in md
    assert "(+0.520), n=1 †" in md
    assert "general, where the method learned the task" in md


def test_did_not_learn_on_delta_and_a_learned_run(tmp_path):
    root = tmp_path / "sweep"
    base = {"u": 0.2, "g": 0.5}
    # sasft: the same items right as the base (delta exactly 0); no chance score for u
    write_run(root, "sasft", 1.0, 0, {"u": 0.2, "g": 0.5}, task="u", base=base,
              items={"u": {"base": ones(40), "final": ones(40)}})
    # freeze: +0.03 on 200 items, 10 items lost and 16 gained: the paired interval reaches 0
    churn = [0.0] * 10 + [1.0] * 46 + [0.0] * 144
    write_run(root, "freeze", 1.0, 0, {"u": 0.23, "g": 0.5}, task="u", base=base,
              items={"u": {"base": ones(40), "final": churn}})
    # ext_mix: also +0.03, but 6 items gained and none lost: paired, that is clearly above 0
    write_run(root, "ext_mix", 1.0, 0, {"u": 0.23, "g": 0.4}, task="u", base=base,
              items={"u": {"base": ones(40), "final": ones(46)}})
    write_run(root, "task_only", 1.0, 0, {"u": 0.9, "g": 0.1}, task="u", base=base,
              items={"u": {"base": ones(40), "final": ones(180)}})
    judged = {v.run.method: v for v in compare.verdicts(report.find_runs(root)[0])}
    assert judged["sasft"].delta.interval == (0.0, 0.0)
    assert not judged["sasft"].learned and "not clearly above 0" in judged["sasft"].reasons[0]
    assert not judged["freeze"].learned and judged["freeze"].delta.interval[0] <= 0
    assert judged["ext_mix"].learned and judged["ext_mix"].delta.interval[0] > 0
    assert judged["task_only"].learned and judged["task_only"].delta.interval[0] > 0.6
    rep = report.build_report(root)
    g = next(sc for sc in rep.table if sc.benchmark == "g")
    assert g.not_learned == {"freeze", "sasft"}
    # g kept no items and there is one seed: ext_mix (0.4) against task_only (0.1) is a point
    # difference with nothing to resample, not a verdict
    pair = g.find("ext_mix", "task_only")
    assert pair.verdict == "not distinguishable" and pair.diff.mean == pytest.approx(0.3)
    assert pair.diff.ci is None and "nothing to resample" in pair.text()


def test_report_has_learning_kl_and_forgetting_sections_with_their_figures(tmp_path):
    rep = report.build_report(plane_sweep(tmp_path / "sweep"))
    md = (rep.out_dir / "report.md").read_text()
    for name in ("fig_plane.png", "fig_plane_m.png", "fig_kl_sasft.png", "fig_kl_freeze.png",
                 report.FIG3):
        assert (rep.out_dir / name).stat().st_size > 1000 and f"]({name})" in md
    for section in ("## Methods that did not learn the task", "## Learning against forgetting",
                    "## KL from the base during training", "## What forgetting looks like"):
        assert section in md
    plane = list(csv.DictReader((rep.out_dir / "plane.csv").open()))
    sasft = next(r for r in plane if r["scope"] == "all models" and r["method"] == "sasft")
    assert float(sasft["in_domain_change"]) == pytest.approx(0.93)
    assert float(sasft["general_change"]) == pytest.approx((0.70 - 0.8 + 0.88 - 0.9) / 2)
    assert float(sasft["general_lo"]) < float(sasft["general_change"]) < float(sasft["general_hi"])
    kl = md.split("## KL from the base during training")[1].split("## What forgetting")[0]
    assert "| sasft | 0.300 ± 0.000 | 0.100 ± 0.000 | 1 |" in kl
    examples = md.split("## What forgetting looks like")[1].split("## Drift")[0]
    assert "### g" in examples and "### t" not in examples
    assert examples.count("| sasft |") == 3  # 5 rows in the file, 3 shown
    assert "\\| which colour?" in examples  # `|` escaped; the prompt keeps its end
    assert "Sure! It is red. ⏎ Done." in examples
    assert "x" * 160 + "…" in examples and "x" * 161 not in examples
    runs_csv = list(csv.DictReader((rep.out_dir / "runs.csv").open()))
    row = next(r for r in runs_csv if r["method"] == "freeze" and r["benchmark"] == "t")
    assert row["learned"] == "False" and float(row["final_lo"]) < 0.5


def test_fig3_axis_steps_draws_the_figure_and_an_unknown_axis_is_refused(tmp_path, capsys):
    root = plane_sweep(tmp_path / "sweep", examples=False)
    report.main([str(root), "--fig3-axis", "steps", "--out", str(tmp_path / "steps")])
    assert "forgets less than task-only in 2 of 2" in capsys.readouterr().out
    assert (tmp_path / "steps" / report.FIG3).is_file()
    with pytest.raises(SystemExit):
        report.main([str(root), "--fig3-axis", "tokens"])


def test_schema_2_runs_without_items_or_kl_are_reported_saying_what_they_lack(tmp_path):
    """Schema 2 runs: no items, no chance, no epochs, no KL, no examples: no interval, judged
    on point values, every section says what it lacks; nothing crashes."""
    root = tmp_path / "old"
    write_run(root, "task_only", 1.0, 0, {"t": 0.9, "g1": 0.3}, schema=2,
              base={"t": 0.1, "g1": 0.5})
    write_run(root, "sasft", 1.0, 0, {"t": 0.1, "g1": 0.5}, schema=2,
              base={"t": 0.1, "g1": 0.5})
    rep = report.build_report(root)
    md = (rep.out_dir / "report.md").read_text()
    assert "2 runs kept no per-item scores" in md
    assert "point value" in md and "1 of 2 methods x tasks did not learn the task" in md
    assert "No run logged KL during training" in md
    assert "No run wrote forgetting_examples.jsonl" in md
    assert "some runs logged no epoch" in md  # Figure 3 falls back to steps
    assert (rep.out_dir / "fig_plane.png").is_file()
    g1 = next(sc for sc in rep.table if sc.benchmark == "g1")
    assert g1.not_learned == {"sasft"}  # delta 0 on t: out of g1's comparisons
    assert g1.find("sasft", "task_only").verdict == compare.LEFT_OUT
    assert "left out in 1: a method did not learn the task" in rep.headline
    results = json.loads(next(root.rglob("results.json")).read_text())
    assert results["schema"] == 2


def test_fig3_ends_at_the_final_score_without_periodic_evaluations(tmp_path):
    """A run with eval_every_steps 0 logs step 0 only; its curve still reaches the final score,
    at the last step and epoch. A run whose last evaluation fell on the last step gains nothing."""
    root = tmp_path / "sweep"
    write_run(root, "task_only", 1.0, 0, {"t": 0.6, "g": 0.5}, base={"t": 0.1, "g": 0.8},
              history=[{"step": 0, "epoch": 0.0, "eval_in_domain": 0.1},
                       {"loss": 1.0, "step": 20, "epoch": 0.8},
                       {"train_runtime": 9.0, "step": 25, "epoch": 1.0}])
    write_run(root, "sasft", 1.0, 0, {"t": 0.4, "g": 0.8}, base={"t": 0.1, "g": 0.8})
    rep = report.build_report(root)
    rows = list(csv.DictReader((rep.out_dir / "in_domain_steps.csv").open()))
    points = {(r["method"], int(r["step"])): (float(r["epoch"]), float(r["mean"])) for r in rows}
    assert points == {("task_only", 0): (0.0, 0.1), ("task_only", 25): (1.0, 0.6),
                      ("sasft", 0): (0.0, 0.1), ("sasft", 20): (2.0, 0.4)}


def test_runs_that_forgot_nothing_and_a_corpus_metric_are_named_as_such(tmp_path):
    """Schema 3 runs whose in-domain test is scored by chrF (no per-item scores) and which
    forgot no item (an empty forgetting_examples.jsonl, as the rehearsal's runs write): the
    report names those causes, not runs from before schema 3."""
    root = tmp_path / "new"
    for method, final in (("task_only", 0.9), ("sasft", 0.8)):
        run_dir = write_run(root, method, 1.0, 0, {"t": final, "g1": 0.5},
                            base={"t": 0.1, "g1": 0.5},
                            items={"g1": {"base": ones(5, 10), "final": ones(5, 10)}})
        (run_dir / "forgetting_examples.jsonl").write_text("")
    md = (report.build_report(root).out_dir / "report.md").read_text()
    assert "2 runs kept no per-item scores for the in-domain test (a corpus metric such as chrF" in md
    assert "answered wrong after fine-tuning, in any run" in md
    assert "runs before results.json schema 3)." not in md
