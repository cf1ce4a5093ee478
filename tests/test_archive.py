"""A sweep's finished runs packed without weights, and unpacked elsewhere: the same report, and
a relaunched sweep that finds them finished instead of running them again."""

from __future__ import annotations

import shutil
import tarfile

import pytest

from sasft.report import archive
from sasft.report import cli as report
from tests.test_identity import results_under, run_cli


@pytest.mark.slow  # two toy runs and a relaunch: about two minutes
def test_a_packed_sweep_reports_the_same_and_is_not_rerun_where_it_is_unpacked(tmp_path):
    sweep = ["-m", "method=task_only", "seed=0,1", "train.save_model=true",
             "hydra.sweep.dir=multirun/packed"]
    run_cli(tmp_path, *sweep)
    sweep_dir = tmp_path / "multirun" / "packed"
    runs = [p.parent for p in results_under(sweep_dir)]
    assert len(runs) == 2 and all((r / "model").is_dir() for r in runs)
    unfinished = sweep_dir / "tiny" / "parity" / "task_only" / "full_seed9-00000000"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("seed: 9\n")

    packed = tmp_path / "packed.tar.xz"
    archive.main(["pack", str(sweep_dir), str(packed)])
    names = tarfile.open(packed).getnames()
    assert not any("/model/" in n or "/checkpoints/" in n or "owner" in n for n in names)
    assert not any("seed9" in n for n in names)  # an unfinished run is not a result
    assert sum(n.endswith("/results.json") for n in names) == 2
    again = tmp_path / "again.tar.xz"
    archive.main(["pack", str(sweep_dir), str(again)])
    assert again.read_bytes() == packed.read_bytes()  # deterministic: no times, no owners

    elsewhere = tmp_path / "elsewhere"
    archive.main(["unpack", str(packed), str(elsewhere / "multirun" / "packed")])
    for where, out in ((sweep_dir, "r1"), (elsewhere / "multirun" / "packed", "r2")):
        report.main([str(where), "--out", str(tmp_path / out)])
    table = [(tmp_path / out / "table.csv").read_text() for out in ("r1", "r2")]
    assert table[0] == table[1] and "task_only" in table[0]

    # The same sweep, launched where the runs were unpacked, trains nothing.
    shutil.rmtree(sweep_dir)
    (elsewhere / "cache").symlink_to(tmp_path / "cache")
    out = run_cli(elsewhere, *sweep)
    assert out.count("already complete, not rerun") == 2, out
    assert not any((r / "model").exists() for r in (elsewhere / "multirun" / "packed").rglob("full_seed*"))
