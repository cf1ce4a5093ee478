"""Build the toy world: its data files and its pretrained base chat models.

    python -m sasft.toy.build                  # data files and the default model (tiny)
    python -m sasft.toy.build model=tiny_qwen  # another toy model, composed from conf/model/
    python -m sasft.toy.build force=true       # rebuild even if the checkpoint exists

Deterministic for a seed. The pipeline calls `ensure_built` (the toy models' `builder`) on first use, so a user never
needs to run this by hand; the committed checkpoints make even that a no-op.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

from ..data import collator, tokenize, write_jsonl
from . import world
from .tokenizer import build_tokenizer

log = logging.getLogger(__name__)

TOY_DIR = Path(__file__).resolve().parent
DATA_DIR = TOY_DIR / "data"


def write_data(data_dir: Path = DATA_DIR, seed: int = 0, n_train: int = 500, n_test: int = 100,
               n_benchmark: int = 100, n_external: int = 5000, n_replay: int = 5000) -> None:
    """Task splits, general-skill benchmarks, the external chat corpus and the replay corpus
    (the first pretraining dialogues of the toy models, whose conf/model pretrain.seed is 0),
    as JSONL."""
    for i, (name, skill) in enumerate(world.TASKS.items()):
        train, test = world.split_examples(skill, n_train, n_test, seed=seed + 100 + i)
        write_jsonl(data_dir / "tasks" / name / "train.jsonl", train)
        write_jsonl(data_dir / "tasks" / name / "test.jsonl", test)
    for i, (name, skill) in enumerate(world.GENERAL_SKILLS.items()):
        items = world.benchmark_examples(skill, n_benchmark, seed=seed + 200 + i)
        write_jsonl(data_dir / "general" / f"{name}.jsonl", items)
    write_jsonl(data_dir / "external_chat.jsonl", world.external_dialogues(n_external, seed + 300))
    write_jsonl(data_dir / "pretraining_chat.jsonl",
                [{"messages": d} for d in world.pretraining_dialogues(n_replay, seed=0)])


def pretrain(model_cfg, out_dir: Path) -> Path:
    """Pretrain a toy base model on whole dialogues (loss on user and assistant tokens) and
    save it with its tokenizer, ready for `from_pretrained`."""
    spec, pre = model_cfg.toy, model_cfg.toy.pretrain
    set_seed(pre.seed)
    tokenizer = build_tokenizer()
    config = AutoConfig.for_model(
        spec.architecture,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **spec.config,
    )
    model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("pretraining toy model %s (%s, %.2fM parameters)", model_cfg.name,
             spec.architecture, n_params / 1e6)

    dialogues = world.pretraining_dialogues(pre.dialogues, seed=pre.seed)
    rows = [tokenize(tokenizer, d, config.max_position_embeddings, assistant_only=False)
            for d in dialogues]
    tmp_dir = out_dir.with_name(out_dir.name + ".building")
    args = TrainingArguments(
        output_dir=str(tmp_dir),
        max_steps=pre.steps,
        per_device_train_batch_size=pre.batch_size,
        learning_rate=pre.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=pre.warmup_steps,
        weight_decay=0.01,
        logging_steps=max(1, pre.steps // 10),
        save_strategy="no",
        report_to=[],
        seed=pre.seed,
        train_sampling_strategy="group_by_length",
        disable_tqdm=not sys.stderr.isatty(),
    )
    Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
            data_collator=collator(tokenizer)).train()

    # Save beside the target, then rename: a crash never leaves a half-written checkpoint.
    model.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    for leftover in tmp_dir.glob("runs"):
        shutil.rmtree(leftover)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)
    return out_dir


def describe(model_cfg):
    """The architecture and tokenizer of a toy model, from its spec, without building it."""
    return AutoConfig.for_model(model_cfg.toy.architecture, **model_cfg.toy.config), build_tokenizer()


def ensure_built(model_cfg, force: bool = False) -> Path:
    """The toy checkpoint at `model_cfg.path`, built first if it is missing."""
    out_dir = Path(model_cfg.path)
    if (out_dir / "config.json").is_file() and not force:
        return out_dir
    if not (DATA_DIR / "external_chat.jsonl").is_file():
        write_data()
    start = time.time()
    pretrain(model_cfg, out_dir)
    log.info("built toy model %s in %.0f s at %s", model_cfg.name, time.time() - start, out_dir)
    return out_dir


def main(argv: list[str]) -> None:
    from ..config import compose_config

    force = any(a in ("force=true", "force=True") for a in argv)
    cfg = compose_config([a for a in argv if not a.startswith("force=")])
    if cfg.model.toy is None:
        raise SystemExit(f"model={cfg.model.name} is not a toy model (no 'toy:' block to build)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_data()
    ensure_built(cfg.model, force=force)


if __name__ == "__main__":
    main(sys.argv[1:])
