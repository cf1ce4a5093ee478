"""Paired verdicts where the truth is known: several seeds x test items, planted differences
and planted noise. A clear margin is "better"; identical methods are never told apart however
noisy their seeds; a noisy method gains no tie from its noise; the detectable difference
shrinks with seeds and items; a method's learning is judged on its cell."""

from __future__ import annotations

import numpy as np
import pytest

from sasft.report import cli as report, compare, power, stats
from tests.test_report import write_run

N = 200
BASE = {"t": 0.1, "g": 0.6}


def vector(p: float, seed: int, n: int = N, salt: int = 0) -> list[float]:
    """n items, each right with probability p, drawn from (seed, salt): a method's answers."""
    rng = np.random.default_rng(1000 * seed + salt)
    return [float(x) for x in rng.random(n) < p]


def run(root, method: str, seed: int, t: list[float], g: list[float], **kw):
    items = {"t": {"base": [0.0] * len(t), "final": t},
             "g": {"base": vector(BASE["g"], 99, len(g)), "final": g}}
    items["t"]["base"][: round(BASE["t"] * len(t))] = [1.0] * round(BASE["t"] * len(t))
    finals = {b: float(np.mean(items[b]["final"])) for b in items}
    base = {b: float(np.mean(items[b]["base"])) for b in items}
    write_run(root, method, 1.0, seed, finals, base=base, items=items, **kw)


def verdicts(root) -> dict:
    rep = report.build_report(root)
    return {(sc.benchmark, p.method, p.reference): p for sc in rep.table for p in sc.pairs}


def test_a_clear_margin_on_every_item_is_better(tmp_path):
    """sasft is right wherever task_only is, and on 30% more items, at every seed; the seeds
    themselves differ a lot (0.3 to 0.6 for task_only)."""
    for seed, p in enumerate((0.3, 0.45, 0.6)):
        worse = vector(p, seed)
        better = [1.0 if x or i % 3 == 0 else 0.0 for i, x in enumerate(worse)]
        t = vector(0.9, seed, salt=1)
        run(tmp_path, "task_only", seed, t, worse)
        run(tmp_path, "sasft", seed, t, better)
    found = verdicts(tmp_path)
    pair = found[("g", "sasft", "task_only")]
    assert pair.verdict == "better" and pair.diff.ci[0] > 0.1
    assert pair.diff.shape == "3 seeds x 200 items"
    assert found[("t", "sasft", "task_only")].verdict == "not distinguishable"  # identical
    assert found[("general change", "sasft", "task_only")].verdict == "better"


@pytest.mark.parametrize("spread", [0.0, 0.2, 0.45])
def test_identical_methods_with_noisy_seeds_are_not_distinguishable(tmp_path, spread):
    """Two methods whose answers differ by swaps (each right on as many items the other got
    wrong), at seeds whose scores are 0.5 ± spread: their difference is 0 on every seed."""
    for seed, p in enumerate((0.5 - spread, 0.5, 0.5 + spread)):
        a = vector(p, seed)
        b = list(a)
        ones = [i for i, x in enumerate(a) if x][:5]
        zeros = [i for i, x in enumerate(a) if not x][:5]
        for i, j in zip(ones, zeros):  # five items won, five lost
            b[i], b[j] = 0.0, 1.0
        t = vector(0.9, seed, salt=1)
        run(tmp_path, "task_only", seed, t, a)
        run(tmp_path, "sasft", seed, t, b)
    pair = verdicts(tmp_path)[("g", "sasft", "task_only")]
    assert pair.diff.mean == pytest.approx(0.0)
    assert pair.verdict == "not distinguishable"
    assert pair.diff.ci[0] < 0 < pair.diff.ci[1]
    assert "could not have been seen with 3 seeds x 200 items" in pair.text()


def test_methods_that_agree_on_every_item_claim_no_power(tmp_path):
    """The same answers at every seed (both forgot everything, say): the difference is 0 with
    no spread, which says nothing of what the design could detect, so no detectable difference
    (0.00 would read as perfect power) is printed."""
    for seed in range(3):
        t = vector(0.9, seed, salt=1)
        run(tmp_path, "task_only", seed, t, [0.0] * N)
        run(tmp_path, "sasft", seed, t, [0.0] * N)
    pair = verdicts(tmp_path)[("g", "sasft", "task_only")]
    assert pair.verdict == "not distinguishable" and pair.diff.detectable is None
    assert "no spread to judge power by" in pair.text() and "below" not in pair.text()


def test_a_noisy_method_gains_no_tie_from_its_noise(tmp_path):
    """The seeds scatter ext_mix (0.2, 0.5, 0.8 on g); task_only has its answers and 10% more
    items right at every seed: the wide interval of the noisy cell overlaps task_only's (the
    old rule called that a tie); paired by seed and item, ext_mix is worse."""
    for seed, p in enumerate((0.2, 0.5, 0.8)):
        noisy = vector(p, seed)
        steady = [1.0 if x or i % 10 == 0 else 0.0 for i, x in enumerate(noisy)]
        t = vector(0.9, seed, salt=1)
        run(tmp_path, "task_only", seed, t, steady)
        run(tmp_path, "ext_mix", seed, t, noisy)
    rep = report.build_report(tmp_path)
    g = next(sc for sc in rep.table if sc.benchmark == "g")
    noisy, steady = g.final["ext_mix"].ci, g.final["task_only"].ci
    assert noisy[1] >= steady[0]  # the marginal intervals overlap
    assert noisy[0] >= 0.0 and noisy[1] <= 1.0  # clipped to the score's range
    assert g.find("ext_mix", "task_only").verdict == "worse"


def difference_sample(seeds: int, items: int) -> stats.Sample:
    """A per-seed, per-item difference with a seed effect (evenly spread over +-0.05) and
    item noise (-1, 0 or +1)."""
    rng = np.random.default_rng(7)
    per_seed = {}
    for s, shift in enumerate(np.linspace(-0.05, 0.05, seeds)):
        noise = rng.choice([-1.0, 0.0, 1.0], size=items, p=[0.2, 0.6, 0.2])
        values = list(noise - noise.mean() + shift)  # the seed's mean is its shift exactly
        per_seed[s] = [("g", float(np.mean(values)), values, 1.0)]
    return stats.sample(per_seed)


def test_the_detectable_difference_shrinks_with_seeds_and_items():
    found = {(s, n): stats.bootstrap(difference_sample(s, n)).detectable
             for s in (2, 4, 8) for n in (50, 200, 800)}
    for s, n in found:
        if (2 * s, n) in found:
            assert found[(2 * s, n)] < found[(s, n)]
        if (s, 4 * n) in found:
            assert found[(s, 4 * n)] < found[(s, n)]
    # the plan's formula, from the variance components, agrees in size with the bootstrap
    parts = stats.components(difference_sample(8, 800).parts[0].matrix)
    assert parts.seed > 0 and parts.residual == pytest.approx(0.4, rel=0.1)
    assert parts.detectable(8, 800) == pytest.approx(found[(8, 800)], rel=0.3)
    assert parts.detectable(16, 800) < parts.detectable(8, 800) < parts.detectable(8, 200)


def test_the_plan_of_a_mean_over_benchmarks_pools_their_items():
    """The general change is a weighted mean over benchmarks: its pooled matrix has that mean
    for every seed, and its detectable difference is about the bootstrap's, and smaller than
    one benchmark's alone."""
    rng = np.random.default_rng(11)
    shifts = np.linspace(-0.05, 0.05, 8)  # a seed effect, and independent item noise
    parts = {"g1": (400, 1.0), "g2": (100, 3.0)}
    per_seed = {}
    for seed, shift in enumerate(shifts):
        per_seed[seed] = []
        for name, (n, weight) in parts.items():
            values = shift + rng.choice([-1.0, 0.0, 1.0], size=n, p=[0.2, 0.6, 0.2])
            per_seed[seed].append((name, float(values.mean()), list(values), weight))
    both = stats.sample(per_seed)
    pooled = stats.pooled_matrix(both)
    assert pooled.shape == (8, 500)
    assert pooled.mean(axis=1) == pytest.approx(both.points)
    planned = stats.components(pooled)
    # The truth: the weights are 1/4 and 3/4, the noise's variance 0.4 an item.
    truth = 2.80 * np.sqrt((np.var(shifts, ddof=1) + (0.25 ** 2 * 0.4 / 400 + 0.75 ** 2 * 0.4 / 100)) / 8)
    assert planned.detectable(8, 500) == pytest.approx(truth, rel=0.3)
    alone = stats.components(both.parts[1].matrix)  # g2 alone: its 100 items
    assert planned.detectable(8, 500) < alone.detectable(8, 100)


def test_plan_answers_the_design_question(tmp_path, capsys):
    for seed, p in enumerate((0.3, 0.4, 0.5)):
        a = vector(p, seed)
        run(tmp_path, "task_only", seed, vector(0.9, seed, salt=1), a)
        run(tmp_path, "sasft", seed, vector(0.9, seed, salt=1), vector(p + 0.05, seed, salt=2))
    report.main([str(tmp_path), "--plan", "--detect", "0.05"])
    out = capsys.readouterr().out
    assert "## general scenarios" in out and "the runs have 3 seeds x 200 items" in out
    assert "## general change" in out
    assert "| seeds | 200 items | 400 items | 1000 items |" in out
    assert "To detect 0.05:" in out
    assert not (tmp_path / "report").exists()  # the plan writes nothing
    runs, _, ratio, _ = report.read_sweep(tmp_path, None, [])
    table, _ = compare.scenario_table(runs, ratio)
    c = power.pooled_components(table, "general")
    fewest = power.fewest(c, 0.05, items=200)
    assert c.detectable(fewest, 200) <= 0.05 < c.detectable(fewest - 1, 200)
    with pytest.raises(SystemExit):
        report.main([str(tmp_path), "--plan", "--detect", "0"])


def test_did_not_learn_is_judged_on_the_cell(tmp_path):
    """freeze's seed 2 alone learns nothing, its seeds 0-1 learn: the cell learned, and the
    report names seed 2. sdft learns on no seed: out of the general comparisons."""
    for seed in range(3):
        g = vector(0.5, seed)
        run(tmp_path, "task_only", seed, vector(0.9, seed, salt=1), g)
        t_base = [1.0] * 20 + [0.0] * 180
        run(tmp_path, "freeze", seed, t_base if seed == 2 else vector(0.6, seed, salt=3), g)
        run(tmp_path, "sdft", seed, t_base, vector(0.6, seed, salt=4))
    rep = report.build_report(tmp_path)
    by = {l.method: l for l in rep.learned}
    assert by["freeze"].learned and [v.run.seed for v in by["freeze"].short] == [2]
    assert not by["sdft"].learned and [v.run.seed for v in by["sdft"].short] == [0, 1, 2]
    g = next(sc for sc in rep.table if sc.benchmark == "g")
    assert g.not_learned == {"sdft"}
    assert g.find("sdft", "task_only").verdict == compare.LEFT_OUT
    assert g.find("freeze", "task_only").verdict != compare.LEFT_OUT
    md = (rep.out_dir / "report.md").read_text()
    assert "| m | t | freeze | 3 |" in md and "seed 2: change +0.000" in md


def test_schema_2_runs_pair_at_seed_level(tmp_path):
    """No per-item scores: the seeds alone are resampled, and every verdict says so."""
    for seed, (a, b) in enumerate(((0.3, 0.5), (0.2, 0.45), (0.4, 0.6))):
        write_run(tmp_path, "task_only", 1.0, seed, {"t": 0.9, "g": a}, schema=2, base=BASE)
        write_run(tmp_path, "sasft", 1.0, seed, {"t": 0.9, "g": b}, schema=2, base=BASE)
    pair = verdicts(tmp_path)[("g", "sasft", "task_only")]
    assert pair.verdict == "better" and pair.diff.shape == "3 seeds"
    assert "seed level: no per-item scores" in pair.text()
    assert pair.diff.ci == pytest.approx((0.2, 0.25))


def learning_history(ys: list[float], forget_per_unit: float, base: float = 0.1,
                     shift: float = 0.0) -> list[dict]:
    """Periodic evaluations at in-domain scores `ys` (from the base), each general benchmark
    losing `forget_per_unit` per unit of in-domain gain (+ a seed's `shift` after step 0)."""
    out = []
    for i, y in enumerate(ys):
        g = -forget_per_unit * (y - base) + (shift if i else 0.0)
        out.append({"step": 10 * i, "epoch": float(i), "eval_in_domain": y,
                    "eval_general_g": 0.6 + g, "eval_general_g2": 0.8 + g})
    return out


def test_forgetting_at_equal_learning_recovers_a_planted_difference(tmp_path):
    """task_only learns fast (to 0.9) and forgets 0.25 per unit learned; sasft learns slowly
    (to 0.5) and forgets 0.5 per unit: both end 0.2 down, so their final general changes tie,
    but at equal learning sasft forgets twice as much. ext_mix logs no general scores."""
    from sasft.report import equal

    finals = {"t": 0.5, "g": 0.4, "g2": 0.6}
    base = {"t": 0.1, "g": 0.6, "g2": 0.8}
    for seed, shift in enumerate((-0.01, 0.0, 0.01)):
        write_run(tmp_path, "task_only", 1.0, seed, {**finals, "t": 0.9}, base=base,
                  history=learning_history([0.1, 0.5, 0.7, 0.9], 0.25, shift=shift))
        write_run(tmp_path, "sasft", 1.0, seed, finals, base=base,
                  history=learning_history([0.1, 0.2, 0.35, 0.5], 0.5, shift=shift))
        write_run(tmp_path, "ext_mix", 1.0, seed, finals, base=base)
    rep = report.build_report(tmp_path)
    change = next(sc for sc in rep.table if sc.benchmark == "general change")
    assert change.find("sasft", "task_only").verdict == "not distinguishable"  # both -0.2

    runs, _, ratio, _ = report.read_sweep(tmp_path, None, [])
    [task] = equal.equal_learning(runs, ratio)
    assert set(task.curves) == {"task_only", "sasft"}  # ext_mix has no curve
    assert task.reach == pytest.approx({"task_only": 0.9, "sasft": 0.5})
    levels = {round(lv.level, 3): lv for lv in task.levels}
    assert list(levels) == [0.2, 0.3, 0.4, 0.5, 0.9]  # a quarter of the way to 0.5, ... , 0.9
    for level in (0.3, 0.5):  # between evaluations of both methods: linear interpolation
        lv = levels[level]
        assert lv.cells["task_only"].mean == pytest.approx(-0.25 * (level - 0.1))
        assert lv.cells["sasft"].mean == pytest.approx(-0.5 * (level - 0.1))
        [(a, b, diff, verdict)] = lv.pairs
        assert (a, b, verdict) == ("sasft", "task_only", "worse")
        assert diff.mean == pytest.approx(-0.25 * (level - 0.1))
    top = levels[0.9]
    assert "sasft" not in top.cells and top.short["sasft"] == "reached by 0 of 3 seeds"
    assert top.cells["task_only"].mean == pytest.approx(-0.2)
    md = (rep.out_dir / "report.md").read_text()
    section = md.split("## Forgetting at equal learning")[1].split("## Figure 2")[0]
    assert "](fig_equal_learning.png)" in section
    assert "| m | t | 0.900 | sasft | not reached (reached by 0 of 3 seeds) |" in section
    assert "| m | t | 0.500 | sasft vs task_only | worse: -0.100" in section
    assert (rep.out_dir / "equal_learning.csv").is_file()
