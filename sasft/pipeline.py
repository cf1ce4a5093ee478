"""One experiment, top to bottom: check -> load model -> build the data mix -> train ->
evaluate -> record. Every method runs this same function; a method only changes the mix or
what is trainable. Works with or without Hydra: pass any config composed from `conf/`."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import set_seed

from . import record
from .config import ConfigError, resolved, validate
from .adapters import apply_peft
from .data import build_mix, read_jsonl, write_jsonl
from .evaluate import cached_base_scores, evaluate
from .method import MixContext
from .model import fingerprint, load_config, load_model
from .task import load_task
from .train import train

log = logging.getLogger(__name__)


@contextmanager
def _timed(timings: dict, stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 2)


def benchmarks_of(cfg: DictConfig) -> tuple[dict[str, dict], dict[str, str]]:
    """The in-domain test (named after the task) and the general benchmarks, with kinds."""
    specs = {cfg.task.name: dict(cfg.task.benchmark)}
    kinds = {cfg.task.name: "in_domain"}
    for name, spec in cfg.eval.general.items():
        if name in specs:
            raise ConfigError(f"eval.general.{name} has the same name as the task")
        specs[name], kinds[name] = dict(spec), "general"
    return specs, kinds


def run_experiment(cfg: DictConfig, run_dir: str | Path, callbacks=()) -> dict:
    """Run one experiment and write `results.json` into `run_dir`; returns the results.
    `callbacks` are extra Trainer callbacks (experiment trackers, for example)."""
    run_dir = Path(run_dir)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    # 1. Everything that can be checked without weights, before anything expensive.
    validate(cfg)
    method = instantiate(cfg.method)
    task_data = load_task(cfg.task)
    benchmarks, kinds = benchmarks_of(cfg)
    for spec in benchmarks.values():
        if spec.get("file"):
            read_jsonl(spec["file"])
    method.check(load_config(cfg.model))
    set_seed(cfg.seed)

    # 2. The base model, and its scores (cached per model and benchmark).
    with _timed(timings, "load_model"):
        model, tokenizer = load_model(cfg.model)
        model_id = fingerprint(cfg.model)
    with _timed(timings, "base_eval"):
        base, computed = cached_base_scores(model, tokenizer, benchmarks, cfg.eval, model_id,
                                            cfg.cache_dir)

    # 3. The data mix: task data plus the method's auxiliary dialogues.
    n_aux = round(cfg.mix_ratio * len(task_data)) if method.mixes_data else 0
    with _timed(timings, "auxiliary_data"):
        ctx = MixContext(model, tokenizer, cfg.generation, model_id, Path(cfg.cache_dir), cfg.seed)
        auxiliary, aux_stats = method.auxiliary(n_aux, ctx)
    mix = build_mix(task_data, auxiliary, seed=cfg.seed)
    write_jsonl(run_dir / "auxiliary_sample.jsonl",
                [{"messages": d} for d in auxiliary[: cfg.generation.sample_size]])
    log.info("mix: %d task + %d %s dialogues", len(task_data), len(auxiliary), method.name)

    # 4. Train: the method decides what is trainable; everything else is shared.
    method.select_trainable(model)
    model = apply_peft(model, cfg.get("peft"), method)  # LoRA adapters, if any, where it trains

    def in_domain_eval(m) -> float:  # the paper's Figure 3: in-domain score during training
        return evaluate(m, tokenizer, {cfg.task.name: benchmarks[cfg.task.name]}, cfg.eval)[cfg.task.name]

    with _timed(timings, "train"):
        history = train(model, tokenizer, mix, cfg.train, run_dir, cfg.seed,
                        in_domain_eval=in_domain_eval, callbacks=callbacks)
    if cfg.train.get("save_model"):
        model.save_pretrained(run_dir / "model")
        tokenizer.save_pretrained(run_dir / "model")

    # 5. Evaluate the fine-tuned model on the same benchmarks.
    with _timed(timings, "final_eval"):
        final = evaluate(model, tokenizer, benchmarks, cfg.eval)

    # 6. Record, last of all: results.json exists only for a complete run.
    timings["total"] = round(time.perf_counter() - start, 2)
    scores = record.score_table(base, final, kinds)
    results = {
        "run": {"model": cfg.model.name, "task": cfg.task.name, "method": method.name,
                "mix_ratio": cfg.mix_ratio, "seed": cfg.seed, "mixes_data": method.mixes_data,
                "peft": cfg.peft.name if cfg.get("peft") else "full"},
        "scores": scores,
        "summary": record.summarize(scores),
        "mix": {"task": len(task_data), "auxiliary": len(auxiliary), "auxiliary_stats": aux_stats,
                "base_scores_computed": computed},
        "history": [{"step": 0, "eval_in_domain": base[cfg.task.name]}, *history],
        "config": resolved(cfg),
        "timings": timings,
        "versions": record.versions(),
    }
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun/accelerate, one writer
        record.write_results(run_dir, results)
    return results
