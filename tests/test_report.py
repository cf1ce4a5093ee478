"""The sweep report on a synthetic sweep whose numbers are known: table values, the paired
verdicts' counts, missing runs, figures, and W&B logging that can never fail the report.
Intervals, paired verdicts, power, did-not-learn and the new sections: test_report_compare.py
and test_report_paired.py."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sasft.report import cli as report
from sasft.record import summarize
from sasft.rundir import identity_hash, variant

BASE = {"t": 0.1, "g1": 0.55, "g2": 0.5}  # "t" is the in-domain test of task "t"

# (method, mix_ratio, seed): final scores. task_only has two runs of seed 0 (swept at two
# ratios, which it ignores: one experiment, run twice): they are averaged into one seed before
# the mean over seeds.
RUNS = {
    ("task_only", 1.0, 0): {"t": 0.9, "g1": 0.5, "g2": 0.4},
    ("task_only", 0.5, 0): {"t": 0.7, "g1": 0.5, "g2": 0.4},
    ("task_only", 1.0, 1): {"t": 0.8, "g1": 0.3, "g2": 0.4},
    ("freeze", 1.0, 0): {"t": 0.7, "g1": 0.6 - 1e-12, "g2": 0.4},  # ties sasft on g1
    ("sasft", 1.0, 0): {"t": 0.85, "g1": 0.6, "g2": 0.5},
    ("sasft", 1.0, 1): {"t": 0.85, "g1": 0.6, "g2": 0.7},
    ("sasft", 0.5, 0): {"t": 0.95, "g1": 0.99, "g2": 0.99},
    ("ext_mix", 1.0, 0): {"t": 0.95, "g1": 0.2, "g2": 0.3},
    ("ext_mix", 0.5, 0): {"t": 0.9, "g1": 0.4, "g2": 0.45},
}


MIXING = ("sasft", "ext_mix")


def write_run(root: Path, method: str, ratio: float, seed: int, finals: dict,
              model: str = "m", task: str = "t", base: dict = BASE, items: dict | None = None,
              chance: dict | None = None, history: list | None = None,
              examples: list | None = None, schema: int = 3, **fields) -> Path:
    """A finished run's directory with its results.json (schema 3: `items` {benchmark:
    {"base": [...], "final": [...]}}, `chance` {benchmark: score}; schema 2 has neither);
    `examples` are rows of forgetting_examples.jsonl; `fields` are more identity fields (a
    learning rate: "train.learning_rate")."""
    mixes = method in MIXING
    ident = {"model.name": model, "task.name": task, "method.name": method, "seed": seed,
             **({"method.mix_ratio": ratio} if mixes else {}), **fields}
    run_dir = root / model / task / method / f"ratio{ratio}_seed{seed}-{identity_hash(ident)}"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("hydra's copy: not a run\n")
    (run_dir / "config.yaml").write_text(f"seed: {seed}\n")
    scores = {b: {"base": base[b], "final": f, "delta": f - base[b],
                  "kind": "in_domain" if b == task else "general"} for b, f in finals.items()}
    if schema >= 3:
        for b in scores:
            scores[b]["chance"] = (chance or {}).get(b)
    # A mixing method takes (1 + ratio) times the steps of task_only for the same epochs.
    steps = round(10 * (1 + ratio)) if mixes else 10
    history = history if history is not None else [
        {"step": 0, "epoch": 0.0, "eval_in_domain": base[task]},
        {"loss": 1.0, "step": steps // 2, "epoch": 1.0},
        {"step": steps, "epoch": 2.0, "eval_in_domain": finals[task]}]
    if schema < 3:
        history = [{k: v for k, v in e.items() if k == "step" or not k.startswith(("epoch",
                    "eval_kl"))} for e in history]
    results = {"schema": schema,
               "run": {"model": model, "task": task, "method": method,
                       "mix_ratio": ratio if mixes else None, "mixes_data": mixes, "seed": seed,
                       "identity": identity_hash(ident), "variant": identity_hash(variant(ident))},
               "scores": scores, "summary": summarize(scores), "history": history,
               "identity": ident, "config": {}, **({"items": items} if items else {})}
    (run_dir / "results.json").write_text(json.dumps(results))
    if examples:
        (run_dir / "forgetting_examples.jsonl").write_text(
            "".join(json.dumps(row) + "\n" for row in examples))
    return run_dir


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for (method, ratio, seed), finals in RUNS.items():
        write_run(root, method, ratio, seed, finals)
    unfinished = root / "m" / "t" / "sasft" / "ratio2.0_seed0-00000000"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("seed: 0\n")
    return root


def rows_of(path: Path) -> dict[str, dict]:
    with path.open() as f:
        return {row["benchmark"]: row for row in csv.DictReader(f)}


HEADLINE = ("SA-SFT forgets less than task-only in 2 of 2 general scenarios, more in 0, "
            "not distinguishable in the rest")


def test_table_values_and_paired_verdicts(sweep):
    rep = report.build_report(sweep)
    assert rep.ratio == 1.0
    # No run kept per-item scores: cells and differences are bootstrapped over seeds only.
    # sasft - task_only per seed: g1 0.6 - 0.5 and 0.6 - 0.3, g2 0.5 - 0.4 and 0.7 - 0.4:
    # every seed in SA-SFT's favour.
    assert rep.headline == HEADLINE
    by_bench = {sc.benchmark: sc for sc in rep.table}
    assert list(by_bench) == ["t", "g1", "g2", "general change"]  # in-domain first
    t, g1, g2, change = by_bench["t"], by_bench["g1"], by_bench["g2"], by_bench["general change"]
    # seed 0 of task_only is (0.9 + 0.7) / 2 = 0.8, seed 1 is 0.8: mean 0.8, std 0, two seeds
    assert t.final["task_only"].mean == pytest.approx(0.8)
    assert t.final["task_only"].std == pytest.approx(0.0)
    assert t.final["task_only"].n == 2
    # two seeds, seed level: the interval spans the two seeds (no t = 12.7), inside [0, 1]
    assert g1.final["task_only"].ci == pytest.approx((0.3, 0.5))
    assert g1.final["freeze"].ci is None  # one seed, no items: nothing to resample
    assert g2.final["sasft"].mean == pytest.approx(0.6)
    assert g2.final["sasft"].std == pytest.approx(0.1414213562)  # stdev(0.5, 0.7)
    assert g2.delta["sasft"].mean == pytest.approx(0.1)
    assert g2.base == pytest.approx(0.5)
    verdicts = {(sc.benchmark, p.method, p.reference): p for sc in rep.table for p in sc.pairs}
    assert verdicts[("g1", "sasft", "task_only")].verdict == "better"
    assert verdicts[("g1", "sasft", "task_only")].diff.ci == pytest.approx((0.1, 0.3))
    assert verdicts[("g2", "sasft", "task_only")].verdict == "better"
    # freeze has seed 0 only, no items: on one common seed there is nothing to test against
    free = verdicts[("g1", "sasft", "freeze")]
    assert free.verdict == "not distinguishable" and "nothing to resample" in free.note
    assert verdicts[("t", "sasft", "task_only")].verdict == "better"  # 0.85 vs 0.8, both seeds
    assert verdicts[("g1", "ext_mix", "task_only")].diff.shape == "1 seed"
    # the mean general change: sasft +0.025 / +0.125, task_only -0.075 / -0.175 per seed
    assert change.delta["sasft"].mean == pytest.approx(0.075)
    assert change.find("sasft", "task_only").diff.ci == pytest.approx((0.1, 0.3))
    assert change.find("sasft", "task_only").verdict == "better"

    md = (rep.out_dir / "report.md").read_text()
    assert f"\n**{HEADLINE}.**" in md
    assert "0.600 [0.50, 0.70] (+0.100), n=2" in md
    assert "0.950 (+0.850), n=1 |" in md  # ext_mix on t: one seed, no items: no interval
    assert "## Paired verdicts" in md and "docs/report.md" in md
    assert "| sasft vs task_only | forgets less in 2 of 2 scenarios, more in 0" in md
    table = rows_of(rep.out_dir / "table.csv")
    assert float(table["g2"]["sasft_final"]) == pytest.approx(0.6)
    assert float(table["g1"]["task_only_final_std"]) == pytest.approx(0.1414213562)
    assert table["g1"]["verdict"] == "better"
    assert float(table["g1"]["task_only_final_lo"]) == pytest.approx(0.3)
    assert table["t"]["sasft_seeds"] == "2"
    pairs = list(csv.DictReader((rep.out_dir / "pairs.csv").open()))
    assert {(r["benchmark"], r["method"], r["reference"]) for r in pairs} >= {
        ("general change", "sasft", "freeze"), ("g2", "ext_mix", "task_only")}


def test_averages_per_benchmark_and_overall(sweep):
    rep = report.build_report(sweep)
    avg = {name: (base, per) for name, base, per in
           report.averages(rep.table, ["task_only", "freeze", "ext_mix", "sasft"])}
    base, per = avg["all scenarios"]
    assert base == pytest.approx((0.1 + 0.55 + 0.5) / 3)
    assert per["sasft"][0] == pytest.approx((0.85 + 0.6 + 0.6) / 3)
    assert per["sasft"][2] == 3
    base, per = avg["general (all benchmarks)"]
    assert per["task_only"][0] == pytest.approx((0.4 + 0.4) / 2)
    assert per["ext_mix"][1] == pytest.approx(((0.2 - 0.55) + (0.3 - 0.5)) / 2)
    assert "in-domain (all tasks)" in avg and "g1" in avg
    assert (rep.out_dir / "averages.csv").stat().st_size > 0


def test_a_method_absent_from_a_scenario(sweep):
    write_run(sweep, "task_only", 1.0, 0, {"u": 0.5, "g1": 0.5}, task="u",
              base={"u": 0.2, "g1": 0.55})
    rep = report.build_report(sweep)
    assert rep.headline == HEADLINE  # task u's scenarios have task_only only: no pair
    header, rows = report.table_rows(rep.table, ["task_only", "sasft"])
    u_row = next(r for r in rows if r[1] == "u" and r[2] == "u")
    assert u_row[header.index("sasft_final")] is None  # None, not "": W&B tables need one type
    assert u_row[header.index("verdict")] is None


def test_reference_ratio_changes_the_count(sweep, tmp_path):
    rep = report.build_report(sweep, out_dir=tmp_path / "at_half", ratio=0.5)
    # sasft at 0.5 has one seed: against task_only on that one seed, without items, nothing
    # can be told apart
    assert rep.headline == ("SA-SFT forgets less than task-only in 0 of 2 general scenarios, "
                            "more in 0, not distinguishable in the rest")
    assert (tmp_path / "at_half" / "report.md").is_file()


def test_missing_runs_are_listed_never_counted(sweep):
    rep = report.build_report(sweep)
    assert len(rep.runs) == len(RUNS)
    assert [d.name for d, _ in rep.missing] == ["ratio2.0_seed0-00000000"]
    md = (rep.out_dir / "report.md").read_text()
    assert "ratio2.0_seed0-00000000" in md.split("## Missing runs")[1]
    assert ".hydra" not in md
    # A second report finds its own output folder inside the sweep and ignores it.
    again = report.build_report(sweep)
    assert len(again.runs) == len(RUNS) and len(again.missing) == 1


def test_figures_are_written_and_in_domain_steps_end_at_the_last_epoch(sweep):
    rep = report.build_report(sweep)
    for name in (report.FIG2, report.FIG3):
        path = rep.out_dir / name
        assert path.is_file() and path.stat().st_size > 1000
        assert f"]({name})" in (rep.out_dir / "report.md").read_text()
    steps = list(csv.DictReader((rep.out_dir / "in_domain_steps.csv").open()))
    # at ratio 1.0 sasft takes 20 steps for task_only's 10; both end at epoch 2
    sasft_end = [r for r in steps if r["method"] == "sasft" and r["step"] == "20"]
    assert float(sasft_end[0]["mean"]) == pytest.approx(0.85)  # ratio 1.0 only
    assert float(sasft_end[0]["epoch"]) == 2.0


def test_figure2_skipped_with_one_ratio(tmp_path):
    root = tmp_path / "one_ratio"
    for (method, ratio, seed), finals in RUNS.items():
        if ratio == 1.0:
            write_run(root, method, ratio, seed, finals)
    (root / "report").mkdir(parents=True)
    (root / "report" / report.FIG2).write_bytes(b"a stale figure from an earlier report")
    rep = report.build_report(root)
    assert not (rep.out_dir / report.FIG2).exists()
    assert "Figure 2 skipped" in (rep.out_dir / "report.md").read_text()
    assert "No run has a drift.json yet" in (rep.out_dir / "report.md").read_text()


def test_the_report_command_prints_the_headline_at_the_chosen_ratio(sweep, capsys):
    report.main([str(sweep), "--ratio", "1.0"])
    assert HEADLINE in capsys.readouterr().out


class FakeWandb(SimpleNamespace):
    """Records what the report logs, without starting W&B's service process."""

    def __init__(self, fail: bool = False):
        super().__init__(logged={}, init_kwargs=None, finished=False, summary={}, fail=fail)

    def init(self, **kwargs):
        if self.fail:
            raise RuntimeError("no network")
        self.init_kwargs = kwargs
        return self

    def log(self, payload):
        self.logged.update(payload)

    def finish(self):
        self.finished = True

    Table = staticmethod(lambda columns, data: ("table", columns, data))
    Image = staticmethod(lambda path: ("image", path))


def test_wandb_logs_table_and_figures_offline_without_key(sweep, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    report.build_report(sweep, use_wandb=True)
    assert fake.init_kwargs["job_type"] == "report"
    assert fake.init_kwargs["mode"] == "offline"
    kind, columns, data = fake.logged["scenarios"]
    assert kind == "table" and "sasft_final" in columns and len(data) == 4
    assert fake.logged["fig2_mix_ratio"][0] == "image"
    assert fake.logged["fig3_in_domain_steps"][0] == "image"
    assert fake.finished and fake.summary["headline"] == report.headline(report.build_report(
        sweep).table)


def test_wandb_failure_does_not_fail_the_report(sweep, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail=True))
    rep = report.build_report(sweep, use_wandb=True)
    assert (rep.out_dir / "report.md").is_file()


def test_rendering_a_report_imports_neither_torch_nor_the_analysis():
    code = ("import sys, sasft.report.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'sasft.analyze') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_report_says_what_the_mixing_methods_trained_on(tmp_path):
    def turns(cut, median, q90):
        quantiles = {"q10": 1, "q25": 2, "median": median, "q75": median, "q90": q90, "max": q90,
                     "mean": median}
        return {"turns": 10, "cut_share": cut, "tokens": quantiles, "tokens_written": quantiles}

    sweep = tmp_path / "sweep"
    finals = {"t": 0.9, "g1": 0.5, "g2": 0.4}
    for seed, cut in ((0, 0.1), (1, 0.3)):
        run = write_run(sweep, "sasft", 1.0, seed, finals)
        results = json.loads((run / "results.json").read_text())
        results["mix"] = {"task": 10, "auxiliary": 10, "auxiliary_stats": {
            "user_turns": turns(0.0, 30, 120), "assistant_turns": turns(cut, 300 + seed * 100, 1000)}}
        (run / "results.json").write_text(json.dumps(results))
        (run / "auxiliary_sample.jsonl").write_text(json.dumps({"messages": [
            {"role": "user", "content": f"Tell me about owls ({seed})."},
            {"role": "assistant", "content": "Owls hunt at night."}]}) + "\n")
    run = write_run(sweep, "ext_mix", 1.0, 0, finals)
    results = json.loads((run / "results.json").read_text())
    results["mix"] = {"task": 10, "auxiliary": 10, "auxiliary_stats": {"corpus": "/x/chats.jsonl"}}
    (run / "results.json").write_text(json.dumps(results))
    write_run(sweep, "task_only", 1.0, 0, finals)

    report.build_report(sweep)
    text = (sweep / "report" / "report.md").read_text()
    section = text.split("## What the mixing methods trained on")[1].split("\n## ")[0]
    rows = {line.split(" | ")[1]: line for line in section.splitlines()
            if line.startswith("| m | ")}
    assert set(rows) == {"sasft", "ext_mix"}  # task_only mixes nothing
    # Two runs: the cut share and lengths are their means; the first run's first dialogue.
    assert "| 2 | 10 | self-dialogues | 0.0% | 20.0% | 30 / 120 | 350 / 1000 | 350 / 1000 |" \
        in rows["sasft"]
    assert "| 1 | 10 | chats.jsonl | – | – | – | – | – |" in rows["ext_mix"]
    assert "| sasft | Tell me about owls (0). | Owls hunt at night. |" in section
