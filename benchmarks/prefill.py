"""The prompt pass of a self-dialogue's answer turn (sasft/decode.py: prefill), in length groups
against one left-padded pass: CPU seconds for SmolLM2-135M-Instruct (model=smol, converted once
by a smol run) on a batch of 50 answer prompts whose user turns have the lengths the model
writes (benchmarks/results/smol_turns_2048.json) plus one runaway user turn of 1280 tokens, as
a batch of 50 meets with one chance in two; and how far the two passes' logits are apart.

    python benchmarks/prefill.py
"""

import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from sasft import decode as D
from sasft.config import compose_config
from sasft.model import model_source

TURNS = Path(__file__).parent / "results" / "smol_turns_2048.json"
TEMPLATE = 30  # system prompt and turn headers around the user turn, in tokens


def batch(rows: int = 50, runaway: int = 1280) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [t["tokens"] for t in json.loads(TURNS.read_text())["turns"]
               if t["role"] == "user" and t["ended"]]
    rng = random.Random(0)
    sizes = [TEMPLATE + rng.choice(lengths) for _ in range(rows - 1)] + [TEMPLATE + runaway]
    width = max(sizes)
    torch.manual_seed(0)
    ids = torch.zeros(rows, width, dtype=torch.long)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for row, size in enumerate(sizes):  # left-padded, as complete() pads
        ids[row, width - size:] = torch.randint(100, 49000, (size,))
        mask[row, width - size:] = 1
    return ids, mask


@torch.inference_mode()
def main() -> None:
    source = model_source(compose_config(["model=smol"]).model)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    ids, mask = batch()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    print(f"{ids.shape[0]} rows, {int(mask.sum())} prompt tokens, padded to {ids.numel()}")
    logits = {}
    for name, grouped in (("one pass", False), ("length groups", True)):
        cpu, wall = time.process_time(), time.time()
        logits[name], _ = D.prefill(model, ids, mask, positions, grouped)
        print(f"{name}: {time.process_time() - cpu:.1f} CPU s, {time.time() - wall:.1f} s wall")
    a, b = logits["one pass"], logits["length groups"]
    print(f"groups: {len(D.length_groups(mask.sum(-1).tolist()))}; logits max |diff| "
          f"{(a - b).abs().max():.2e}; same argmax in {int((a.argmax(-1) == b.argmax(-1)).sum())}"
          f" of {len(a)} rows")


if __name__ == "__main__":
    main()
