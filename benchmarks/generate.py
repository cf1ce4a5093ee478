"""Self-dialogue generation throughput: the batched path against one dialogue at a time.

    python benchmarks/generate.py                       # toy model, conf/generation/default.yaml
    python benchmarks/generate.py --batched 256 --serial 32 generation.temperature=0.7

Both runs go through `sasft.generation.generate_self_dialogues`, the function a run calls
(prompts rendered through the chat template, filters, dedup), on the same model in the same
process; only `generation.batch_size` differs. Throughput is generated tokens per second: every
token sampled up to each turn's stop token, truncated turns included, padding excluded. The
two runs sample different dialogues (the RNG is consumed in another order), so they are
compared per token, not per dialogue. Each path runs `--repeats` times, alternating, and the
fastest run of each counts (as `timeit` does: a slower repeat measures whatever else the machine
was doing); all repeats are printed. Extra arguments are config overrides, as for run.py.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from omegaconf import open_dict

from sasft.config import compose_config
from sasft.generation import generate_self_dialogues
from sasft.model import load_model


def measure(model, tokenizer, cfg, count: int, batch_size: int, seed: int) -> dict:
    with open_dict(cfg):
        cfg.batch_size = batch_size
    start = time.perf_counter()
    dialogues, stats = generate_self_dialogues(model, tokenizer, count, cfg, seed)
    seconds = time.perf_counter() - start
    return {"batch_size": batch_size, "dialogues": len(dialogues), "tokens": stats["tokens"],
            "seconds": seconds, "tokens_per_s": stats["tokens"] / seconds, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batched", type=int, default=256,
                        help="dialogues to generate on the batched path (default 256)")
    parser.add_argument("--serial", type=int, default=32,
                        help="dialogues to generate one at a time (default 32; it is slow)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each path, alternating; the fastest counts (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=tiny_qwen")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cfg = compose_config(args.overrides)
    model, tokenizer = load_model(cfg.model)
    gen = cfg.generation
    batch_size = gen.batch_size
    print(f"model {cfg.model.name} on {model.device} ({torch.get_num_threads()} threads), "
          f"backend hf, temperature {gen.temperature}, max_new_tokens {gen.max_new_tokens}, "
          f"{gen.num_turns} turns")

    # One short pass first, so that neither timed run pays for lazy initialization.
    measure(model, tokenizer, gen, 2, 2, args.seed)
    repeats = [[measure(model, tokenizer, gen, args.batched, batch_size, args.seed),
                measure(model, tokenizer, gen, args.serial, 1, args.seed)]
               for _ in range(args.repeats)]
    paths = list(zip(*repeats))  # (batched repeats, one-at-a-time repeats)
    runs = [max(path, key=lambda r: r["tokens_per_s"]) for path in paths]
    for r, path in zip(runs, paths):
        drops = {k: r["stats"].get(k, 0) for k in ("truncated", "empty", "duplicate")}
        every = ", ".join(f"{p['tokens_per_s']:.0f}" for p in path)
        print(f"batch_size {r['batch_size']:>4}: {r['dialogues']:>4} dialogues, "
              f"{r['tokens']:>6} tokens in {r['seconds']:7.1f} s = "
              f"{r['tokens_per_s']:8.0f} tokens/s   (dropped {drops}; all repeats: {every})")
    ratios = ", ".join(f"{b['tokens_per_s'] / o['tokens_per_s']:.1f}x" for b, o in repeats)
    print(f"batched / one at a time: {runs[0]['tokens_per_s'] / runs[1]['tokens_per_s']:.1f}x "
          f"(repeat by repeat: {ratios})")


if __name__ == "__main__":
    main()
