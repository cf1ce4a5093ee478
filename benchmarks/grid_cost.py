"""What the shared cache saves a sweep: a small toy grid run twice, on a cold cache, then warm.

    python benchmarks/grid_cost.py                           # 2 methods x 2 seeds, toy settings
    python benchmarks/grid_cost.py --methods sasft ext_mix --seeds 0 1 2

Each grid point is `sasft.pipeline.run_experiment` (the function run.py calls) on a config
composed from `conf/` and shrunk as the tests shrink it (task.max_train_examples=48,
train.epochs=1, eval.limit=20, no saved weights). The first pass starts from an empty cache
directory; the second reruns the same grid, in fresh run directories, on the cache the first
one filled. From each results.json it counts the self-dialogue generation passes
(`mix.auxiliary_stats.cached` false) and the base-model evaluation passes (a non-empty
`mix.base_scores_computed`), and it reports both passes' wall time.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
import time
from pathlib import Path

from omegaconf import open_dict

from sasft.config import compose_config
from sasft.pipeline import run_experiment

SHRINK = {"task.max_train_examples": 48, "train.epochs": 1, "eval.limit": 20,
          "train.save_model": False}


def grid_config(method: str, seed: int, cache_dir: Path, overrides: list[str]):
    cfg = compose_config([f"method={method}", f"seed={seed}", *overrides])
    with open_dict(cfg):
        cfg.cache_dir = str(cache_dir)
        for key, value in SHRINK.items():
            group, name = key.split(".")
            cfg[group][name] = value
    return cfg


def run_grid(points, cache_dir: Path, runs_dir: Path, overrides: list[str]) -> dict:
    generated = evaluated = 0
    start = time.perf_counter()
    for method, seed in points:
        cfg = grid_config(method, seed, cache_dir, overrides)
        results = run_experiment(cfg, runs_dir / f"{method}_seed{seed}")
        # ext_mix and the baselines have no `cached` entry: they generate nothing.
        generated += results["mix"]["auxiliary_stats"].get("cached") is False
        evaluated += bool(results["mix"]["base_scores_computed"])
    return {"seconds": time.perf_counter() - start, "generation_passes": generated,
            "base_eval_passes": evaluated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["sasft", "task_only"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("overrides", nargs="*", help="config overrides for every grid point")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    points = list(itertools.product(args.methods, args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cold = run_grid(points, tmp / "cache", tmp / "cold", args.overrides)
        warm = run_grid(points, tmp / "cache", tmp / "warm", args.overrides)
    print(f"grid: {len(points)} runs ({' x '.join(args.methods)} x seeds {args.seeds}), "
          f"{', '.join(f'{k}={v}' for k, v in SHRINK.items())}")
    for name, p in (("cold cache", cold), ("warm cache", warm)):
        print(f"{name}: {p['seconds']:6.1f} s, {p['generation_passes']} self-dialogue generation "
              f"passes, {p['base_eval_passes']} base-model evaluation passes")
    print(f"wall time cold / warm: {cold['seconds'] / warm['seconds']:.2f}x")


if __name__ == "__main__":
    main()
