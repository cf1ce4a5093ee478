"""Benchmarks through lm-eval, on the model held in memory.

A benchmark (`conf/eval/*.yaml`, or a task's `benchmark:`; its options typed in
sasft/schema.py::BenchmarkSchema) is a task or group from lm-eval's registry
(`lm_eval_task`, scored by `metric`, with lm-eval's filter after a comma where a task has
several), or a local JSONL file that this module turns into an lm-eval task: generative, scored
by exact match, ROUGE-L or chrF on the reply or on what `answer_regex` extracts from it, or
multiple choice by log-likelihood (fields "choices" and "label"). Every benchmark runs with the
model's chat template, and every score is in [0, 1] (chrF is divided by 100).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any


from .config import ConfigError
from .schema import benchmark_spec
from .data import read_jsonl
from . import cache

log = logging.getLogger(__name__)

# lm-eval writes a warning per task for choices we make on purpose; keep the run log readable.
for _name in ("lm_eval", "lm-eval", "lm_eval.api.task", "lm_eval.evaluator"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def rougeL(references: list[str], predictions: list[str]) -> float:  # noqa: N802 (its result key)
    """ROUGE-L F-measure of one prediction against its reference, with Google's rouge_score
    (the implementation HF `evaluate` wraps): lowercased, split on non-alphanumerics, no
    stemming. lm-eval names the metric after this function."""
    return _rouge_scorer().score(references[0], predictions[0])["rougeL"].fmeasure


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


# Metrics of a local generative benchmark, as lm-eval metric_list entries. exact_match and chrF
# are lm-eval's own; ROUGE-L is not in its registry, so it is passed as a function.
_GENERATIVE_METRICS = {
    "exact_match": {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True},
    "rougeL": {"metric": rougeL, "aggregation": "mean", "higher_is_better": True},
    "chrf": {"metric": "chrf", "aggregation": "chrf", "higher_is_better": True},
}
_SCALE = {"chrf": 0.01}  # lm-eval reports chrF out of 100


def local_task_config(name: str, spec: dict, eos: str) -> dict:
    """An lm-eval task config over a local JSONL file (validated here, with line numbers)."""
    spec = benchmark_spec(spec)
    read_jsonl(spec["file"])
    config: dict[str, Any] = {
        "task": f"sasft_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(spec["file"])}},
        "test_split": "test",
        "doc_to_text": "{{prompt}}",
        # The chat template already ends the context with the assistant header.
        "target_delimiter": "",
    }
    if spec["output_type"] == "multiple_choice":
        config |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
        return config
    metric = spec["metric"] or "exact_match"
    if metric not in _GENERATIVE_METRICS:
        raise ConfigError(f"benchmark {name}: metric {metric!r} is not one of "
                          f"{', '.join(_GENERATIVE_METRICS)}")
    entry = dict(_GENERATIVE_METRICS[metric])
    if metric == "exact_match":
        entry |= {"ignore_case": spec["ignore_case"], "ignore_punctuation": False}
        if spec["regexes_to_ignore"]:
            # Deleted from prediction and reference alike: "1,000" == "1000", "$5" == "5".
            entry["regexes_to_ignore"] = list(spec["regexes_to_ignore"])
    config |= {
        "output_type": "generate_until",
        "doc_to_target": "{{" + spec["target"] + "}}",
        "generation_kwargs": {
            "until": [eos],
            "max_gen_toks": spec["max_gen_toks"],
            "do_sample": False,
        },
        "metric_list": [entry],
    }
    if spec["answer_regex"]:
        # Score the answer, not the phrasing around it (as GSM8K's flexible-extract does); by
        # default the last match, where a worked solution puts its final answer.
        config["filter_list"] = [
            {
                "name": "extract",
                "filter": [
                    {"function": "regex", "regex_pattern": spec["answer_regex"],
                     "group_select": spec["group_select"]},
                    {"function": "take_first"},
                ],
            }
        ]
    else:
        config["filter_list"] = [
            {"name": "extract", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}
        ]
    return config


def _metric_key(spec: dict) -> str:
    """The key of the reported number in lm-eval's results: "<metric>,<filter>"."""
    spec = benchmark_spec(spec)
    if spec["lm_eval_task"]:
        metric = spec["metric"] or "acc"
        return metric if "," in metric else f"{metric},none"
    if spec["output_type"] == "multiple_choice":
        return "acc,none"
    return f"{spec['metric'] or 'exact_match'},extract"


@functools.lru_cache(maxsize=1)
def _task_manager():
    """lm-eval's task index (a scan of its task YAMLs, seconds): built once per process, not
    at every in-domain evaluation during training."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def build_tasks(benchmarks: dict[str, dict], eos: str) -> tuple[list, dict[str, str]]:
    """lm-eval Task/Group objects for the benchmarks, with each spec's num_fewshot set on every
    task it holds, and the name each benchmark's results are reported under. (lm-eval 0.4.13's
    simple_evaluate takes one num_fewshot for all tasks, and a config dict naming a registered
    task is not merged with the registered config; setting it on the built tasks is what
    simple_evaluate itself does, and it keeps values already set.)"""
    manager = _task_manager()
    objects, result_names = [], {}
    for name, spec in benchmarks.items():
        spec = benchmark_spec(spec)
        if spec["lm_eval_task"]:
            top = spec["lm_eval_task"]
            loaded = manager.load(top)
        else:
            config = local_task_config(name, spec, eos)
            top = config["task"]
            loaded = manager.load(config)
        if spec["num_fewshot"] is not None:
            for task in loaded["tasks"].values():
                task.set_config(key="num_fewshot", value=int(spec["num_fewshot"]))
        if top in loaded["groups"]:
            objects.append(loaded["groups"][top])
        elif top in loaded["tasks"]:
            objects.append(loaded["tasks"][top])
        else:
            raise ConfigError(f"benchmark {name}: lm-eval's {top!r} is a tag, which reports no "
                              "single score; name a task or a group")
        result_names[name] = top
    return objects, result_names


def run_benchmarks(lm, benchmarks: dict[str, dict], cfg, eos: str) -> dict[str, float]:
    """Score an lm-eval LM on each benchmark; returns {benchmark name: score in [0, 1]}."""
    import lm_eval

    objects, result_names = build_tasks(benchmarks, eos)
    seed = cfg.seed
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=objects,
        task_manager=_task_manager(),
        limit=cfg.limit,
        apply_chat_template=True,
        fewshot_as_multiturn=True,  # few-shot examples as earlier chat turns
        log_samples=False,
        bootstrap_iters=0,
        verbosity="ERROR",
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    scores = {}
    for name, top in result_names.items():
        key, result = _metric_key(benchmarks[name]), out["results"][top]
        if key not in result:
            raise ConfigError(f"benchmark {name}: lm-eval reports no {key!r} for {top}; it "
                              f"reports {sorted(k for k in result if ',' in k)}")
        scores[name] = float(result[key]) * _SCALE.get(key.split(",")[0], 1.0)
    return scores


def evaluate(model, tokenizer, benchmarks: dict[str, dict], cfg) -> dict[str, float]:
    """Score `model` on each benchmark; returns {benchmark name: score in [0, 1]}."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=cfg.batch_size,
        max_batch_size=cfg.max_batch_size,
        device=str(model.device),
    )
    was_training = model.training
    try:
        return run_benchmarks(lm, benchmarks, cfg, tokenizer.eos_token)
    finally:
        model.train(was_training)


# Eval settings that change a score; batch sizes do not (beyond numerical noise).
_EVAL_KEYS = ("limit", "seed")


def _base_key(fingerprint: str, name: str, spec: dict, cfg) -> str:
    """Everything a base score depends on: the model, the whole spec (num_fewshot, metric,
    extraction, ...), the eval settings (limit, seed), the bytes of a local test file (an edited
    file is another benchmark) and lm-eval's version (its registry tasks change by release)."""
    spec = benchmark_spec(spec)
    file = spec["file"]
    digest = hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else None
    return cache.key({"model": fingerprint, "name": name, "spec": spec,
                      **{k: cfg[k] for k in _EVAL_KEYS}, "file_digest": digest,
                      "lm_eval": metadata.version("lm_eval")})


def cached_base_scores(model, tokenizer, benchmarks: dict[str, dict], cfg, fingerprint: str,
                       cache_dir: str | Path) -> tuple[dict[str, float], list[str]]:
    """Base-model scores, computed once per (model, benchmark, eval settings) and shared by
    every run of that model. Returns the scores and the names that had to be computed."""
    root = Path(cache_dir) / "base_scores"
    root.mkdir(parents=True, exist_ok=True)
    paths = {n: root / f"{_base_key(fingerprint, n, s, cfg)}.json" for n, s in benchmarks.items()}
    # One lock for the whole set: a second job waits, then finds everything computed.
    with cache.locked(root / fingerprint):
        missing = [n for n, p in paths.items() if not p.is_file()]
        scores = {n: json.loads(paths[n].read_text())["score"]
                  for n in benchmarks if n not in missing}
        if missing:
            fresh = evaluate(model, tokenizer, {n: benchmarks[n] for n in missing}, cfg)
            for name, score in fresh.items():
                cache.publish_json(paths[name], {"benchmark": name, "score": score,
                                                "model": fingerprint})
            scores |= fresh
    return {n: scores[n] for n in benchmarks}, missing
