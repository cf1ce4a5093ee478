"""How long SmolLM2-135M-Instruct's own self-dialogue turns run, and whether a turn that reaches
a token limit would ever have ended: the evidence for conf/generation/smol.yaml's turn rule.

    python -m sasft.smol.turns [--dialogues 64] [--limit 2048] [--out turns.json] [overrides]

It samples self-dialogues as a run does (sasft/generation.py, the config's settings) but with
a high limit, and prints, for each candidate limit L below it, the share of turns that reach L
(cut there), how many of those still ended before the high limit (whole answers a limit of L
would cut: what dropping cut turns would bias against), and how many of the turns that never
ended repeat themselves (a loop: a 16-token window seen 3 times in the last 256 tokens).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from omegaconf import open_dict

from ..config import compose_config
from ..generation import Truncated, generate_batch, held_out_seed, hf_sampler
from ..model import load_model

CANDIDATES = (256, 512, 768, 1024, 1280, 1536, 2048, 3072)
WINDOW, REPEATS, TAIL = 16, 3, 256


def loops(ids: list[int]) -> bool:
    """Whether the last TAIL tokens hold one WINDOW-token sequence REPEATS times or more."""
    tail = ids[-TAIL:]
    windows = Counter(tuple(tail[i:i + WINDOW]) for i in range(len(tail) - WINDOW + 1))
    return bool(windows) and max(windows.values()) >= REPEATS


def sample_turns(cfg, dialogues: int, seed: int) -> list[dict]:
    """One record per turn: role, tokens written, whether it ended before the limit, a loop."""
    model, tokenizer = load_model(cfg.model)
    model.eval()
    sample = hf_sampler(model, tokenizer, cfg.generation)
    turns, roles = [], itertools.cycle(("user", "assistant"))  # generate_batch's call order

    def recording(prompts, stats):
        role = next(roles)
        out = sample(prompts, stats)
        for text in out:
            ids = tokenizer(str(text or ""), add_special_tokens=False)["input_ids"]
            ended = text is not None and not isinstance(text, Truncated)
            turns.append({"role": role, "tokens": len(ids), "ended": ended,
                          "loops": (not ended) and loops(ids)})
        return out

    torch.manual_seed(seed)
    batch = cfg.generation.batch_size
    for start in range(0, dialogues, batch):
        generate_batch(recording, tokenizer, min(batch, dialogues - start), cfg.generation)
    return turns


def summary(turns: list[dict], limit: int) -> list[str]:
    lines = []
    for role in ("user", "assistant"):
        mine = [t for t in turns if t["role"] == role]
        if not mine:
            continue
        never = [t for t in mine if not t["ended"]]
        lines += ["", f"{role} turns: {len(mine)}; never ended within {limit} tokens: "
                      f"{len(never)} ({len(never) / len(mine):.1%}), of them looping "
                      f"{sum(t['loops'] for t in never)}",
                  f"{'limit':>7} {'reach it':>9} {'share':>7} {'of them end later':>18}"]
        for cap in (c for c in CANDIDATES if c < limit):
            reach = [t for t in mine if t["tokens"] >= cap or not t["ended"]]
            later = [t for t in reach if t["ended"]]
            lines.append(f"{cap:>7} {len(reach):>9} {len(reach) / len(mine):>7.1%} "
                         f"{len(later):>18}")
    return lines


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m sasft.smol.turns",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--dialogues", type=int, default=64)
    parser.add_argument("--limit", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=held_out_seed("turns"))
    parser.add_argument("--out", type=Path, help="also write every turn's record here (JSON)")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for run.py")
    args = parser.parse_args(argv)
    cfg = compose_config(["model=smol", *args.overrides])
    with open_dict(cfg):
        cfg.generation.max_new_tokens = args.limit
    turns = sample_turns(cfg, args.dialogues, args.seed)
    print("\n".join([f"{args.dialogues} self-dialogues of {cfg.model.name}, seed {args.seed}, "
                     f"temperature {cfg.generation.temperature}, limit {args.limit}",
                     *summary(turns, args.limit)]))
    if args.out:
        args.out.write_text(json.dumps({"limit": args.limit, "turns": turns}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
