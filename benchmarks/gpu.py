"""GPU figures on a Qwen2.5-0.5B-sized model: training MFU and generation throughput.

    python benchmarks/gpu.py                          # Qwen2.5-0.5B architecture, random weights
    python benchmarks/gpu.py --seq-len 2048 --batch-size 4
    python benchmarks/gpu.py --layers 2 --vocab 1024  # a seconds-long smoke run, CPU included

No hub access is needed: the model is Qwen2.5-0.5B-Instruct's architecture (`ARCH`, copied from
its config.json) with random weights, beside a byte-level tokenizer of the same vocabulary size
and a ChatML template. Both are written to a temporary directory and loaded the way a run loads
a model, through `sasft.model.load_model` with `model=qwen0.5b` (bf16, sdpa, moved to the GPU).

Training: the project's Trainer (`sasft.train`, `train=full`: bf16 autocast) on random token
sequences of one length (no padding, so every token is a model token), gradient checkpointing
off, then on. MFU = model FLOPs per token (6 x matmul parameters + attention, as in
benchmarks/train.py; recomputation is not counted) x tokens/s, over the GPU's bf16 peak: the
datasheet's dense figure and the best 8192^3 bf16 matmul measured here.

Generation: `sasft.generation.complete`, the hf backend's call, on batches of
`generation.batch_size` prompts against the same prompts one at a time, and the vllm backend on
the same prompts when vLLM is installed. Random weights almost never sample a stop token, so
every row runs to `max_new_tokens`: tokens/s at a fixed length.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections import Counter
from importlib.util import find_spec
from pathlib import Path

import torch
from datasets import Dataset
from omegaconf import open_dict
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from train import Meter, MeteredTrainer, flops_per_token  # benchmarks/train.py, beside this file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
from transformers.trainer_callback import PrinterCallback

from sasft.config import compose_config
from sasft.generation import complete, vllm_sampler
from sasft.model import load_model
from sasft.train import train_collator, training_arguments

# Qwen/Qwen2.5-0.5B-Instruct's config.json (494M parameters, embeddings tied to the output head).
ARCH = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
            max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
            tie_word_embeddings=True, hidden_act="silu")
SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# NVIDIA's dense bf16 tensor-core peaks (datasheets, no sparsity), by device-name substring.
DATASHEET_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "A100": 312.0}


def write_checkpoint(path: Path, layers: int, vocab: int) -> None:
    """A random-weight model of `ARCH` (or fewer layers / a smaller vocabulary, for a smoke
    run) and a byte-level tokenizer of the same vocabulary size: the 256 byte tokens, fillers,
    and Qwen's special tokens at Qwen's ids. It has no merges, so every byte of a prompt is a
    token; `AutoTokenizer` maps a qwen2 checkpoint to Qwen2Tokenizer, which reads it alike."""
    specials = {name: (i if i < vocab else vocab - 3 + k)
                for k, (name, i) in enumerate(SPECIALS.items())}
    words = sorted(pre_tokenizers.ByteLevel.alphabet()) + [f"<w{i}>" for i in range(256, vocab)]
    for name, i in specials.items():
        words[i] = name
    core = Tokenizer(models.BPE({w: i for i, w in enumerate(words)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(name, special=True) for name in specials])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", chat_template=CHATML)
    arch = {**ARCH, "num_hidden_layers": layers, "vocab_size": vocab,
            "bos_token_id": specials["<|endoftext|>"], "eos_token_id": specials["<|im_end|>"]}
    config = AutoConfig.for_model(**arch)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def matmul_peak_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """The best of `repeats` n^3 bf16 matmuls (fp32 on a CPU), in TFLOP/s."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = n if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for i in range(repeats + 3):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        if i >= 3:
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_run(ckpt: Path, checkpointing: bool, args, out_dir: Path) -> dict:
    cfg = compose_config(["model=qwen0.5b", f"model.path={ckpt}", "train=full",
                          f"model.gradient_checkpointing={str(checkpointing).lower()}",
                          *args.overrides])
    model, tokenizer = load_model(cfg.model)
    with open_dict(cfg):
        cfg.train.batch_size = args.batch_size
        cfg.train.gradient_accumulation_steps = 1
        cfg.train.save_steps = 0
    n = (args.warmup + args.steps) * args.batch_size
    ids = torch.randint(0, model.config.vocab_size, (n, args.seq_len), generator=torch.Generator()
                        .manual_seed(0)).tolist()
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * args.seq_len] * n,
                                 "labels": ids})
    train_args = training_arguments(cfg.train, out_dir, seed=0, use_cpu=model.device.type != "cuda",
                                    evaluate=False)
    train_args.max_steps = args.warmup + args.steps
    train_args.logging_strategy = "no"
    meter = Meter(args.warmup)
    trainer = MeteredTrainer(model=model, args=train_args, train_dataset=dataset,
                             data_collator=train_collator(tokenizer, cfg.train), meter=meter)
    trainer.remove_callback(PrinterCallback)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    trainer.train()
    seconds = meter.end - meter.start
    dense, attention = flops_per_token(model, [args.seq_len])
    memory = torch.cuda.max_memory_allocated(model.device) / 2**30 if model.device.type == "cuda" else 0
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"checkpointing": checkpointing, "tokens_per_s": meter.tokens["real"] / seconds,
            "step_s": seconds / args.steps, "dense": dense, "attention": attention,
            "memory_gib": memory}


def generation_runs(ckpt: Path, args) -> list[dict]:
    # Batches of 64, the figure docs/performance.md reports (generation=chat, which a real model
    # gets, batches 32 to leave room for 7-8B models with 1024-token turns).
    cfg = compose_config(["model=qwen0.5b", f"model.path={ckpt}", "generation.batch_size=64",
                          "model.gradient_checkpointing=false", *args.overrides])
    model, tokenizer = load_model(cfg.model)
    gen = cfg.generation
    with open_dict(gen):
        gen.max_new_tokens = args.new_tokens
    letters = torch.randint(0, 26, (gen.batch_size, args.prompt_len),
                            generator=torch.Generator().manual_seed(0)).tolist()
    prompts = ["".join(chr(ord("a") + i) for i in row) for row in letters]  # a token a letter
    device = model.device
    torch.manual_seed(0)
    complete(model, tokenizer, prompts[:2], gen)  # warm-up: lazy initialization, kernels

    def timed(name: str, batch_size: int, call) -> dict:
        stats = Counter()
        sync(device)
        start = time.perf_counter()
        call(stats)
        sync(device)
        seconds = time.perf_counter() - start
        return {"name": name, "batch_size": batch_size, "tokens": stats["tokens"],
                "seconds": seconds, "tokens_per_s": stats["tokens"] / seconds}

    runs = [
        timed("hf, batched", gen.batch_size, lambda s: complete(model, tokenizer, prompts, gen, s)),
        timed("hf, one at a time", 1,
              lambda s: [complete(model, tokenizer, [p], gen, s) for p in prompts[:args.serial]]),
    ]
    if find_spec("vllm") is not None:
        sample = vllm_sampler(model, tokenizer, gen, seed=0)
        sample(prompts[:2], Counter())  # warm-up: the first requests pay for lazy initialization
        runs.append(timed("vllm", len(prompts), lambda s: sample(prompts, s)))
    else:
        print("vllm: not installed (pip install -e '.[vllm]' on a CUDA machine): not measured")
    return runs


def report_training(ckpt: Path, args, peak: float, datasheet: float | None, tmp: Path) -> None:
    rows = [train_run(ckpt, checkpointing, args, tmp) for checkpointing in (False, True)]
    print(f"\ntraining: batch {args.batch_size} x {args.seq_len} tokens, {args.steps} timed "
          f"steps after {args.warmup}, train=full (bf16 autocast, AdamW) "
          f"{' '.join(args.overrides)}")
    print(f"{'grad ckpt':<10} {'tokens/s':>9} {'s/step':>7} {'peak GiB':>9} "
          f"{'MFU vs measured':>16} {'MFU vs datasheet':>17}")
    for r in rows:
        flops = r["tokens_per_s"] * (r["dense"] + r["attention"]) / 1e12
        print(f"{'on' if r['checkpointing'] else 'off':<10} {r['tokens_per_s']:>9.0f} "
              f"{r['step_s']:>7.3f} {r['memory_gib']:>9.1f} {flops / peak:>16.1%} "
              + (f"{flops / datasheet:>17.1%}" if datasheet else f"{'-':>17}"))


def report_generation(ckpt: Path, args) -> None:
    runs = generation_runs(ckpt, args)
    print(f"\ngeneration: {args.prompt_len}-token prompts, {args.new_tokens} new tokens each")
    for r in runs:
        print(f"{r['name']:<18} batch {r['batch_size']:>4}: {r['tokens']:>6} tokens in "
              f"{r['seconds']:6.1f} s = {r['tokens_per_s']:8.0f} tokens/s")
    by_name = {r["name"]: r["tokens_per_s"] for r in runs}
    print(f"hf batched / hf one at a time: "
          f"{by_name['hf, batched'] / by_name['hf, one at a time']:.1f}x"
          + (f"; vllm / hf batched: {by_name['vllm'] / by_name['hf, batched']:.1f}x"
             if "vllm" in by_name else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8, help="training sequences per step")
    parser.add_argument("--seq-len", type=int, default=1024, help="training sequence length")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per prompt")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt length in tokens")
    parser.add_argument("--serial", type=int, default=8,
                        help="prompts generated one at a time (default 8; it is slow)")
    parser.add_argument("--layers", type=int, default=ARCH["num_hidden_layers"],
                        help="fewer layers for a smoke run (default: the real 24)")
    parser.add_argument("--vocab", type=int, default=ARCH["vocab_size"],
                        help="a smaller vocabulary for a smoke run (default: the real 151936)")
    parser.add_argument("--part", choices=("all", "train", "generate"), default="all",
                        help="measure training, generation, or both (default)")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides, as for run.py: train.use_liger_kernel=true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    datasheet = next((v for k, v in DATASHEET_TFLOPS.items() if k in name), None)
    peak = matmul_peak_tflops(device)
    print(f"device {name}; torch {torch.__version__}; measured matmul peak {peak:.1f} TFLOP/s"
          + (f"; datasheet bf16 dense {datasheet:.0f} TFLOP/s" if datasheet else ""))

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "qwen0.5b-random"
        write_checkpoint(ckpt, args.layers, args.vocab)
        print(f"model: Qwen2.5-0.5B architecture, {args.layers} layers, vocabulary {args.vocab}, "
              "random weights, bf16")

        if args.part != "generate":
            report_training(ckpt, args, peak, datasheet, Path(tmp))
        if args.part != "train":
            report_generation(ckpt, args)


if __name__ == "__main__":
    main()
