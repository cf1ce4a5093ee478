"""One experiment, top to bottom: check -> load model -> build the data mix -> train ->
evaluate -> record. Every method runs this same function; a method only changes what its hooks
return (sasft/method.py: the task data, the mix, what is trainable, a loss term). Works with or
without Hydra: pass any config composed from `conf/`.
Under torchrun every rank runs it; the work around training runs once (sasft/dist.py)."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import set_seed

from . import dist, record
from .peft import apply_peft
from .config import resolved, validate
from .errors import ConfigError
from .data import build_mix, read_jsonl, token_length, write_jsonl
from .evaluate import (benchmark_prompts, cached_base_scores, check_nltk_data, evaluate,
                       evaluate_items, forgotten)
from .generation import cached_self_dialogues
from .kl import KL_SEED, KLProbe
from .method import MethodContext
from .model import fingerprint, inspect_model, load_model
from .rundir import identity, identity_hash, short_identity, variant
from .schema import benchmark_spec
from .task import Task, load_task
from .train import EvaluateAtEnd, train

log = logging.getLogger(__name__)

# A task whose training examples are cut by train.max_seq_len in more than this share is
# refused: the model would learn the beginnings of answers.
MAX_TRUNCATED_SHARE = 0.5


@contextmanager
def _timed(timings: dict, stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 2)


def benchmarks_of(cfg: DictConfig, task: Task) -> tuple[dict[str, dict], dict[str, str]]:
    """The in-domain test (named after the task) and the general benchmarks, with kinds."""
    specs = {cfg.task.name: task.benchmark}
    kinds = {cfg.task.name: "in_domain"}
    for name, spec in cfg.eval.general.items():
        if name in specs:
            raise ConfigError(f"eval.general.{name} has the same name as the task")
        specs[name], kinds[name] = benchmark_spec(spec), "general"
    return specs, kinds


def count_truncated(tokenizer, task: Task, max_seq_len: int) -> dict:
    """How many task examples train.max_seq_len cuts; refuses a length that cuts most."""
    lengths = [token_length(tokenizer, d) for d in task.train]
    cut = sum(n > max_seq_len for n in lengths)
    if cut:
        log.warning("train.max_seq_len=%d cuts %d of %d task examples (the longest has %d "
                    "tokens)", max_seq_len, cut, len(lengths), max(lengths))
    if cut > MAX_TRUNCATED_SHARE * len(lengths):
        raise ConfigError(f"train.max_seq_len={max_seq_len} cuts {cut} of {len(lengths)} task "
                          f"examples (the longest has {max(lengths)} tokens); raise it, e.g. "
                          f"train.max_seq_len={-(-max(lengths) // 64) * 64}")
    return {"examples": len(lengths), "cut": cut, "longest": max(lengths)}


def method_context(cfg: DictConfig, model, tokenizer, model_id: str, task: Task) -> MethodContext:
    return MethodContext(model, tokenizer, cfg.generation, model_id, Path(cfg.cache_dir),
                         cfg.seed, task.benchmark, cfg.train.max_seq_len)


def data_mix(cfg: DictConfig, method, task: Task, ctx: MethodContext
             ) -> tuple[list[dict], list, dict]:
    """The training set: the task's dialogues as the method trains on them and its auxiliary
    ones (both made once, on rank 0), shuffled together; the auxiliary dialogues; statistics."""
    n_aux = round(method.mix_ratio * len(task.train)) if method.mixes_data else 0
    train_task, rewrite_stats = dist.on_main(method.rewrite, task.train, ctx)
    auxiliary, stats = dist.on_main(method.auxiliary, n_aux, ctx)
    if rewrite_stats:
        stats = {**stats, "rewrite": rewrite_stats}
    return build_mix(train_task, auxiliary, seed=cfg.seed), auxiliary, stats


def kl_probe(cfg: DictConfig, model, tokenizer, model_id: str, benchmarks: dict) -> KLProbe | None:
    """The fixed sets KL(base || current) is measured on during training (sasft/kl.py), if
    there are periodic evaluations to measure it at."""
    if not cfg.train.eval_every_steps or not (cfg.eval.kl_dialogues or cfg.eval.kl_prompts):
        return None
    dialogues, _ = cached_self_dialogues(model, tokenizer, cfg.eval.kl_dialogues, cfg.generation,
                                         KL_SEED, model_id, cfg.cache_dir)
    general = {n: s for n, s in benchmarks.items() if n != cfg.task.name}
    prompts = [q for qs in benchmark_prompts(general, tokenizer.eos_token,
                                             cfg.eval.kl_prompts).values() for q in qs] \
        if cfg.eval.kl_prompts else []
    return KLProbe(model, tokenizer, dialogues, prompts, cfg.train.max_seq_len)


def general_subset(cfg: DictConfig):
    """The eval settings of the periodic general scores (their first
    eval.periodic_general_items items), or None where they are off or nothing evaluates."""
    k = cfg.eval.periodic_general_items
    if not k or not cfg.train.eval_every_steps:
        return None
    subset = cfg.eval.copy()
    subset.limit = min(k, cfg.eval.limit or k)
    return subset


@dataclass
class Inputs:
    """What step 1 makes of the config without loading weights: the method, the task's data,
    the benchmarks with their kinds, and how much of the task max_seq_len cuts."""

    method: Any
    task: Task
    benchmarks: dict[str, dict]
    kinds: dict[str, str]
    truncation: dict


def check_inputs(cfg: DictConfig) -> Inputs:
    """1. Everything that can be checked without weights, before anything expensive: the
    config's values, the task's and benchmarks' data, the method against the model's shape."""
    validate(cfg)
    check_nltk_data({**cfg.eval.general, cfg.task.name: cfg.task.benchmark})
    method = instantiate(cfg.method)
    task = load_task(cfg.task, Path(cfg.cache_dir) / "tasks")
    benchmarks, kinds = benchmarks_of(cfg, task)
    for spec in benchmarks.values():
        if spec["file"]:
            read_jsonl(spec["file"])
    model_config, tokenizer = inspect_model(cfg.model)
    method.check(model_config, cfg.peft.name)
    truncation = count_truncated(tokenizer, task, cfg.train.max_seq_len)
    return Inputs(method, task, benchmarks, kinds, truncation)


def run_experiment(cfg: DictConfig, run_dir: str | Path, callbacks=(),
                   inputs: Inputs | None = None) -> dict:
    """Run one experiment and write `results.json` into `run_dir`; returns the results.
    `callbacks` are extra Trainer callbacks (experiment trackers, for example); `inputs`, those
    `check_inputs` already made (the command line checks before it claims the directory)."""
    run_dir = Path(run_dir)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    fields = identity(cfg)

    inputs = inputs or check_inputs(cfg)
    method, task, benchmarks, kinds = inputs.method, inputs.task, inputs.benchmarks, inputs.kinds
    truncation = inputs.truncation
    set_seed(cfg.seed)

    # 2. The base model, and its scores (cached per model and benchmark).
    with _timed(timings, "load_model"):
        model, tokenizer = load_model(cfg.model)
        model_id = fingerprint(cfg.model)
    with _timed(timings, "base_eval"):
        base, computed = dist.on_main(cached_base_scores, model, tokenizer, benchmarks, cfg.eval,
                                      model_id, cfg.cache_dir)
    with _timed(timings, "kl_probe"):  # held-out self-dialogues and the base's distributions
        probe = dist.on_main(kl_probe, cfg, model, tokenizer, model_id, benchmarks)
    general = {n: s for n, s in benchmarks.items() if kinds[n] == "general"}
    subset = general_subset(cfg)
    with _timed(timings, "periodic_general_base"):  # the base's scores on the same subset
        general_base = dist.on_main(evaluate, model, tokenizer, general, subset) if subset else {}

    # 3. The data mix: the task data as the method trains on it, plus its auxiliary dialogues.
    ctx = method_context(cfg, model, tokenizer, model_id, task)
    with _timed(timings, "auxiliary_data"):
        mix, auxiliary, aux_stats = data_mix(cfg, method, task, ctx)
    if dist.is_main():
        write_jsonl(run_dir / "auxiliary_sample.jsonl",
                    [{"messages": d} for d in auxiliary[: cfg.generation.sample_size]])
    log.info("mix: %d task + %d %s dialogues", len(task.train), len(auxiliary), method.name)

    # 4. Train: the method decides what is trainable and any loss term; the rest is shared.
    method.select_trainable(model)
    model = apply_peft(model, cfg.peft, method)  # LoRA adapters, if any, where it trains
    with _timed(timings, "penalty"):  # EWC's Fisher: its self-dialogues and gradients
        penalty = method.penalty(model, ctx)
    in_domain = {cfg.task.name: benchmarks[cfg.task.name]}

    def periodic_eval(m) -> dict[str, float]:  # Figure 3's in-domain score, the KL, and
        def measure():                           # the general scores on their subset
            general_now = evaluate(m, tokenizer, general, subset) if subset else {}
            return {"in_domain": evaluate(m, tokenizer, in_domain, cfg.eval)[cfg.task.name],
                    **(probe(m) if probe else {}),
                    **{f"general_{n}": v for n, v in general_now.items()}}
        return dist.on_main(measure)

    with _timed(timings, "train"):  # with general scores, the curve ends at the last step
        history = train(model, tokenizer, mix, cfg.train, run_dir, cfg.seed,
                        periodic_eval=periodic_eval, penalty=penalty,
                        callbacks=[*callbacks, *([EvaluateAtEnd()] if subset else [])])
    if cfg.train.save_model and dist.is_main():
        model.save_pretrained(run_dir / "model")
        tokenizer.save_pretrained(run_dir / "model")

    # 5. Evaluate the fine-tuned model on the same benchmarks, keeping each item's answer.
    with _timed(timings, "final_eval"):
        final = dist.on_main(evaluate_items, model, tokenizer, benchmarks, cfg.eval)

    # 6. Record, last of all: results.json exists only for a complete run.
    timings["total"] = round(time.perf_counter() - start, 2)
    scores = record.score_table(base, final, kinds)
    examples = [{"benchmark": name, **row} for name, kind in kinds.items() if kind == "general"
                for row in forgotten(base[name]["items"], final[name]["items"], cfg.eval.examples)]
    method_params = {k: v for k, v in resolved(cfg.method).items() if k not in ("_target_", "name")}
    results = {
        "run": {**short_identity(cfg), "method_params": method_params,
                "mixes_data": method.mixes_data,
                "identity": identity_hash(fields), "variant": identity_hash(variant(fields))},
        "scores": scores,
        "summary": record.summarize(scores),
        "mix": {"task": len(task.train), "auxiliary": len(auxiliary), "auxiliary_stats": aux_stats,
                "task_truncated": truncation,
                # Auxiliary dialogues longer than train.max_seq_len: trained on their start only.
                "auxiliary_truncated": sum(token_length(tokenizer, d) > cfg.train.max_seq_len
                                           for d in auxiliary),
                "base_scores_computed": computed},
        "items": record.item_scores(base, final),
        "history": [{"step": 0, "epoch": 0.0, "eval_in_domain": base[cfg.task.name]["score"],
                     **({"eval_kl_self": 0.0, "eval_kl_prompts": 0.0} if probe else {}),
                     **{f"eval_general_{n}": v for n, v in general_base.items()}},
                    *history],
        "identity": fields,
        "config": resolved(cfg),
        "timings": timings,
        "versions": record.versions(),
    }
    if dist.is_main():  # under torchrun/accelerate, one writer
        write_jsonl(run_dir / record.EXAMPLES_FILE, examples)
        record.write_results(run_dir, results)
    return results
