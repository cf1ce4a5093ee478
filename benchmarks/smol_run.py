"""The stages of a SmolLM2 run (model=smol) at the old settings and the new, interleaved.

    python benchmarks/smol_run.py                                     # a whole run's sizes
    python benchmarks/smol_run.py --limit 32 --dialogues 32 --train-examples 32 --repeats 2

"old" is the config with `--old` overrides applied (default: the settings before issue 22),
"new" the config as composed. Each repeat runs every stage at old, then at new, in one process
on one loaded model, so both meet the same machine; the fastest repeat of each counts (a slower
one measures whatever else the machine was doing), and all are printed, with the CPU seconds
(all threads) each took: on a shared machine the steadier measure of the work. A short pass of
each stage first pays for lazy initialisation (lm-eval's task index, IFEval's tokenizer data)
outside the timings. Stages:
  eval      every benchmark of the run (the task's test and eval.general) on the base model,
            the base_eval stage of a run; the replies, item by item, must be identical
  generate  `generate_self_dialogues` at each setting's generation config (sampling: the two
            draw other dialogues; their lengths and truncation share are printed)
  train     `sasft.train.train` from a fresh copy of the base model on the task examples plus
            that setting's self-dialogues (mix_ratio 1; none without the generate stage), at
            each setting's train config
Extra arguments are config overrides, as for run.py (default model=smol task=smol_gsm).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import open_dict

from sasft.config import compose_config
from sasft.data import build_mix
from sasft.evaluate import evaluate_items
from sasft.generation import generate_self_dialogues
from sasft.model import load_model
from sasft.pipeline import benchmarks_of
from sasft.task import load_task
from sasft.train import train

OLD = ["eval.drop_finished=false", "eval.batch_size=32", "generation.drop_finished=false",
       "generation.max_new_tokens=128", "generation.batch_size=50", "train.max_seq_len=384"]


def _set(cfg, overrides: dict) -> None:
    with open_dict(cfg):
        for key, value in overrides.items():
            node = cfg
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value


def turn_lengths(tokenizer, dialogues) -> list[int]:
    return sorted(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])
                  for d in dialogues for m in d if m["role"] == "assistant")


def quantiles(values: list[int]) -> str:
    if not values:
        return "-"
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
    return f"median {q[4]:.0f}, q90 {q[8]:.0f}, max {max(values)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", nargs="*", default=OLD, help=f"overrides of 'old' ({' '.join(OLD)})")
    parser.add_argument("--stages", nargs="+", default=["eval", "generate", "train"])
    parser.add_argument("--limit", type=int, default=None, help="items per benchmark (default all)")
    parser.add_argument("--dialogues", type=int, default=100, help="self-dialogues (default 100)")
    parser.add_argument("--train-examples", type=int, default=None,
                        help="task examples trained on (default the task's max_train_examples)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", default=["model=smol", "task=smol_gsm"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cfgs = {"old": compose_config(args.overrides + args.old), "new": compose_config(args.overrides)}
    for cfg in cfgs.values():
        _set(cfg, {"eval.limit": args.limit, "task.max_train_examples":
                   args.train_examples or cfgs["new"].task.max_train_examples})
    model, tokenizer = load_model(cfgs["new"].model)
    model.eval()
    task = load_task(cfgs["new"].task)
    benchmarks, _ = benchmarks_of(cfgs["new"], task)
    print(f"{cfgs['new'].model.name}, {torch.get_num_threads()} threads; old = {' '.join(args.old)}")
    print(f"eval: {len(benchmarks)} benchmarks, limit {args.limit}; generate: {args.dialogues} "
          f"dialogues; train: {len(task.train)} task examples + the dialogues")

    if "eval" in args.stages:
        warm = cfgs["new"].eval.copy()
        _set(warm, {"limit": 1})
        evaluate_items(model, tokenizer, benchmarks, warm)
    if "generate" in args.stages:
        generate_self_dialogues(model, tokenizer, 2, cfgs["new"].generation, args.seed)

    times: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    evals, dialogues = {}, {}
    for repeat in range(args.repeats):
        for name, cfg in cfgs.items():
            def timed(stage, fn):
                start, start_cpu = time.perf_counter(), time.process_time()
                out = fn()
                times.setdefault((stage, name), []).append(time.perf_counter() - start)
                cpu.setdefault((stage, name), []).append(time.process_time() - start_cpu)
                print(f"  repeat {repeat} {name:>3} {stage:>8}: {times[stage, name][-1]:7.1f} s "
                      f"({cpu[stage, name][-1]:.1f} CPU s)", flush=True)
                return out

            if "eval" in args.stages:
                evals[name] = timed("eval", lambda: evaluate_items(model, tokenizer, benchmarks,
                                                                   cfg.eval))
            if "generate" in args.stages:
                dialogues[name], stats = timed("generate", lambda: generate_self_dialogues(
                    model, tokenizer, args.dialogues, cfg.generation, args.seed))
                dialogues[name + "_stats"] = stats
            if "train" in args.stages:
                fresh, _ = load_model(cfg.model)
                mix = build_mix(task.train, dialogues.get(name, []), seed=args.seed)
                with tempfile.TemporaryDirectory() as out:
                    timed("train", lambda: train(fresh, tokenizer, mix, cfg.train, Path(out),
                                                 args.seed))
                del fresh

    for label, table in (("wall s", times), ("CPU s", cpu)):
        print(f"\n{label:<9} {'old':>8}  {'new':>8}   old/new   (fastest repeat; all repeats)")
        total = {"old": 0.0, "new": 0.0}
        for stage in dict.fromkeys(s for s, _ in table):
            best = {n: min(table[stage, n]) for n in cfgs}
            for n in cfgs:
                total[n] += best[n]
            every = "; ".join(f"{n} " + ", ".join(f"{t:.1f}" for t in table[stage, n]) for n in cfgs)
            print(f"{stage:<9} {best['old']:8.1f}  {best['new']:8.1f}   "
                  f"{best['old'] / best['new']:5.2f}x   ({every})")
        print(f"{'sum':<9} {total['old']:8.1f}  {total['new']:8.1f}   "
              f"{total['old'] / total['new']:5.2f}x")
    if evals:
        same = evals["old"] == evals["new"]
        print("eval scores: " + "  ".join(f"{b} {evals['old'][b]['score']:.3f}/"
                                          f"{evals['new'][b]['score']:.3f}" for b in benchmarks))
        print(f"every reply identical, old and new: {same}")
    for n in cfgs:
        if n in dialogues:
            s = dialogues[n + "_stats"]
            print(f"self-dialogues {n}: {s.get('tokens')} tokens, truncation rate "
                  f"{s.get('truncation_rate')}, assistant turns {quantiles(turn_lengths(tokenizer, dialogues[n]))}")


if __name__ == "__main__":
    main()
