"""lm-eval batch sizes on the loaded model: `eval.batch_size` fixed against "auto".

    python benchmarks/eval_batch.py                          # toy model, eval.limit=40
    python benchmarks/eval_batch.py --batch-sizes auto 64 16 --limit 100

Scores every benchmark of the default run (its task's test and conf/eval's general skills)
through `sasft.evaluate.evaluate`, the function a run uses, once per batch size, and prints
the wall time and the scores, which must not depend on the batch size. "auto" makes lm-eval
probe the largest batch that fits: it runs forward passes at `max_batch_size` x the model's
maximum length and shrinks on an out-of-memory error, before each request type of every
evaluate call.
"""

from __future__ import annotations

import argparse
import logging
import time

from omegaconf import open_dict

from sasft.config import compose_config
from sasft.evaluate import evaluate
from sasft.model import load_model
from sasft.pipeline import benchmarks_of
from sasft.task import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", nargs="+", default=["auto", "64"])
    parser.add_argument("--limit", type=int, default=40, help="items per benchmark (default 40)")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for run.py")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cfg = compose_config(args.overrides)
    model, tokenizer = load_model(cfg.model)
    benchmarks, _ = benchmarks_of(cfg, load_task(cfg.task))
    rows = []
    for size in args.batch_sizes:
        with open_dict(cfg.eval):
            cfg.eval.batch_size = size if size.startswith("auto") else int(size)
            cfg.eval.limit = args.limit
        start = time.perf_counter()
        scores = evaluate(model, tokenizer, benchmarks, cfg.eval)
        rows.append((size, time.perf_counter() - start, scores))
    print(f"{cfg.model.name} on {model.device}, {len(benchmarks)} benchmarks x {args.limit} items, "
          f"max_batch_size {cfg.eval.get('max_batch_size')}")
    for size, seconds, scores in rows:
        print(f"batch_size {size:>5}: {seconds:6.1f} s  "
              + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    same = all(r[2] == rows[0][2] for r in rows)
    print(f"scores identical across batch sizes: {same}")


if __name__ == "__main__":
    main()
