"""The KV cache decode() grows in place (sasft/decode.py: GrowingLayer) against transformers'
DynamicCache, which concatenates the whole cache at every step: CPU seconds to decode N tokens
for 4 rows of SmolLM2-135M-Instruct (model=smol, converted once by a smol run), and whether the
tokens are the same.

    python benchmarks/kv_cache.py 1500
"""

import sys
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from sasft import decode as D
from sasft.config import compose_config
from sasft.model import model_source


def main(n: int) -> None:
    source = model_source(compose_config(["model=smol"]).model)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    torch.manual_seed(0)
    ids = torch.randint(100, 49000, (4, 40))
    growing, tokens = D.growing_cache, {}
    for name in ("dynamic", "growing"):
        D.growing_cache = (lambda c: DynamicCache(config=c)) if name == "dynamic" else growing
        cpu, wall = time.process_time(), time.time()
        tokens[name] = D.decode(model, ids, torch.ones_like(ids), n, [-1], 0)  # never stops
        print(f"{name}: {time.process_time() - cpu:.1f} CPU s, {time.time() - wall:.1f} s wall")
    D.growing_cache = growing
    print("same tokens:", torch.equal(tokens["dynamic"], tokens["growing"]))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1500)
