"""Training throughput and padding waste of the default run's mix, batching strategy by strategy.

    python benchmarks/train.py                      # the default run: sasft on parity, toy model
    python benchmarks/train.py method=ext_mix       # any run's mix: same overrides as run.py
    python benchmarks/train.py --steps 60 --no-packing

The mix is the one `run.py` with the same overrides trains on, built by the same code: the
task data plus the method's auxiliary dialogues. For sasft these are the self-dialogues from
the cache (`cache_dir`), generated first if the cache lacks them (a run would generate the same
ones), so a second call costs no generation. Each strategy then:
  - walks one epoch of the Trainer's own data loader (its sampler and collator) and counts the
    share of non-padding tokens in the batches;
  - trains `--steps` optimizer steps from the same base weights after `--warmup` untimed ones,
    and reports tokens/s (non-padding tokens; "computed" counts padding too) and the mean
    training loss of those steps (random and packed see the same batches: equal losses).
Strategies: `random` (shuffled batches: before), `grouped` (train.group_by_length: after) and
`packed` (train.packing: padding-free rows, one per batch; sampled at random, since there is no
padding for grouping to save).
It also times a large fp32 matmul, this machine's practical peak, and reports each strategy's
model FLOPs (6 x matmul parameters x tokens/s, plus attention) as a share of it.
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from sasft.config import compose_config
from sasft.model import fingerprint, load_model
from sasft.pipeline import data_mix, method_context, load_task
from sasft.train import SFTTrainer, tokenized_dataset, train_collator, training_arguments

STRATEGIES = {  # name: (train.group_by_length, train.packing)
    "random": (False, False),
    "grouped": (True, False),
    "packed": (False, True),
}


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of the best of `repeats` n x n fp32 matmuls: the most this CPU gives torch."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def flops_per_token(model, lengths: list[int]) -> tuple[float, float]:
    """Training FLOPs per token: 6 x the parameters that take part in matmuls (every Linear,
    the output head included; an embedding lookup is not a matmul), and attention's
    12 x layers x hidden x sequence length (PaLM's count), averaged over tokens."""
    matmul_params = sum(m.weight.numel() for m in model.modules()
                        if isinstance(m, torch.nn.Linear))
    c = model.config
    width = c.num_attention_heads * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)
    mean_len = sum(n * n for n in lengths) / sum(lengths)  # the length a token sees, on average
    return 6 * matmul_params, 12 * c.num_hidden_layers * width * mean_len


def batch_tokens(batch) -> tuple[int, int]:
    """(non-padding tokens, tokens computed) of a collated batch."""
    computed = batch["input_ids"].numel()
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else computed
    return real, computed


class Meter(TrainerCallback):
    """Times the steps after warmup and counts the tokens they trained on."""

    def __init__(self, warmup: int):
        self.warmup, self.tokens, self.start, self.end = warmup, Counter(), None, None

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():  # a step's kernels run asynchronously: wait for them
            torch.cuda.synchronize()
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        elif state.global_step > self.warmup:
            self.end = time.perf_counter()


class MeteredTrainer(SFTTrainer):
    def __init__(self, *args, meter: Meter, **kwargs):
        super().__init__(*args, callbacks=[meter], **kwargs)
        self.meter = meter

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.state.global_step >= self.meter.warmup:  # the step being computed, 0-based
            real, computed = batch_tokens(inputs)
            self.meter.tokens["real"] += real
            self.meter.tokens["computed"] += computed
        return super().training_step(model, inputs, num_items_in_batch)


def run_mix(cfg, model, tokenizer) -> tuple[list[dict], dict]:
    """The training mix of the run `cfg` describes, built by the pipeline's own step, and the
    auxiliary data's statistics (cached or not)."""
    method = instantiate(cfg.method)
    method.check(model.config, cfg.peft.name)
    task = load_task(cfg.task)
    ctx = method_context(cfg, model, tokenizer, fingerprint(cfg.model), task)
    mix, auxiliary, stats = data_mix(cfg, method, task, ctx)
    return mix, {"method": method.name, "task": len(task.train), "auxiliary": len(auxiliary),
                 **stats}


def measure(cfg, model, base_state, tokenizer, dataset, strategy: str, warmup: int, steps: int,
            out_dir: Path) -> dict:
    group, packing = STRATEGIES[strategy]
    train_cfg = copy.deepcopy(cfg.train)
    with open_dict(train_cfg):
        train_cfg.group_by_length, train_cfg.packing = group, packing
    args = training_arguments(train_cfg, out_dir / strategy, cfg.seed,
                              use_cpu=not torch.cuda.is_available(), evaluate=False)
    args.max_steps = warmup + steps
    args.logging_strategy = "no"
    model.load_state_dict(base_state)  # every strategy starts from the same weights
    meter = Meter(warmup)
    trainer = MeteredTrainer(model=model, args=args, train_dataset=dataset,
                             data_collator=train_collator(tokenizer, train_cfg), meter=meter)
    trainer.remove_callback(PrinterCallback)  # the table below says it all

    epoch = Counter()
    for batch in trainer.get_train_dataloader():
        real, computed = batch_tokens(batch)
        epoch["real"] += real
        epoch["computed"] += computed
        epoch["batches"] += 1
    loss = trainer.train().training_loss
    seconds = meter.end - meter.start
    return {"strategy": strategy, "non_pad_share": epoch["real"] / epoch["computed"],
            "batches": epoch["batches"], "tokens_per_s": meter.tokens["real"] / seconds,
            "computed_per_s": meter.tokens["computed"] / seconds, "step_s": seconds / steps,
            "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--no-packing", action="store_true", help="skip the packed strategy")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for run.py")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cfg = compose_config(args.overrides)
    model, tokenizer = load_model(cfg.model)
    start = time.perf_counter()
    mix, info = run_mix(cfg, model, tokenizer)
    dataset = tokenized_dataset(tokenizer, mix, cfg.train.max_seq_len)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    aux = ("self-dialogues from the cache" if info.get("cached") else
           "self-dialogues, generated now and cached" if "cached" in info else "auxiliary data")
    print(f"mix of {cfg.model.name}/{cfg.task.name}/{info['method']} (mix_ratio {cfg.mix_ratio}): "
          f"{info['task']} task + {info['auxiliary']} {aux}, built in "
          f"{time.perf_counter() - start:.0f} s; {len(dataset)} examples of {min(lengths)}.."
          f"{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}); batch size "
          f"{cfg.train.batch_size}; {torch.get_num_threads()} threads on "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}")

    peak = matmul_peak()
    dense, attention = flops_per_token(model, lengths)
    print(f"matmul peak (2048^3 fp32, best of 10): {peak:.1f} GFLOP/s; model FLOPs per token: "
          f"{dense / 1e6:.2f} M (6N) + {attention / 1e6:.2f} M (attention)")

    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    strategies = [s for s in STRATEGIES if not (args.no_packing and s == "packed")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in strategies:
            rows.append(measure(cfg, model, base_state, tokenizer, dataset, strategy,
                                args.warmup, args.steps, Path(tmp)))
    model.load_state_dict(base_state)

    print(f"{'strategy':<9} {'non-pad share':>13} {'tokens/s':>9} {'computed/s':>11} "
          f"{'s/step':>7} {'MFU (6N)':>9} {'MFU (+attn)':>12} {'loss':>7}")
    for r in rows:
        mfu = r["tokens_per_s"] * dense / 1e9 / peak
        mfu_attn = r["tokens_per_s"] * (dense + attention) / 1e9 / peak
        print(f"{r['strategy']:<9} {r['non_pad_share']:>13.3f} {r['tokens_per_s']:>9.0f} "
              f"{r['computed_per_s']:>11.0f} {r['step_s']:>7.3f} {mfu:>9.1%} {mfu_attn:>12.1%} "
              f"{r['loss']:>7.4f}")
    by_name = {r["strategy"]: r for r in rows}
    print(f"grouped / random tokens/s: "
          f"{by_name['grouped']['tokens_per_s'] / by_name['random']['tokens_per_s']:.2f}x"
          + (f"; packed / random: {by_name['packed']['tokens_per_s'] / by_name['random']['tokens_per_s']:.2f}x"
             if "packed" in by_name else ""))


if __name__ == "__main__":
    main()
