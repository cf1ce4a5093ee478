"""Benchmarks through lm-eval, on the model held in memory.

A benchmark spec (from `conf/eval/*.yaml` or a task's `benchmark:` block) is one of
  - a task from lm-eval's own registry:   {lm_eval_task: mmlu, metric: acc, num_fewshot: 5}
  - a local JSONL file, which this module turns into an lm-eval task config:
        {file: test.jsonl, output_type: generate_until, target: answer, answer_regex: "..."}
        {file: test.jsonl, output_type: multiple_choice}   (fields "choices" and "label")
Every benchmark is run with the model's chat template, as the model is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from filelock import FileLock

from .data import read_jsonl
from .record import write_json_atomic

log = logging.getLogger(__name__)

# lm-eval writes a warning per task for choices we make on purpose; keep the run log readable.
for _name in ("lm_eval", "lm-eval", "lm_eval.api.task", "lm_eval.evaluator"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def local_task_config(name: str, spec: dict, eos: str) -> dict:
    """An lm-eval task config over a local JSONL file (validated here, with line numbers)."""
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
    if spec.get("output_type", "generate_until") == "multiple_choice":
        config |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
        return config
    config |= {
        "output_type": "generate_until",
        "doc_to_target": "{{" + spec.get("target", "response") + "}}",
        "generation_kwargs": {
            "until": [eos],
            "max_gen_toks": spec.get("max_gen_toks", 64),
            "do_sample": False,
        },
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": spec.get("ignore_case", False),
                "ignore_punctuation": False,
            }
        ],
    }
    if spec.get("answer_regex"):
        # Score the answer, not the phrasing around it (as GSM8K's flexible-extract does).
        config["filter_list"] = [
            {
                "name": "extract",
                "filter": [
                    {"function": "regex", "regex_pattern": spec["answer_regex"], "group_select": -1},
                    {"function": "take_first"},
                ],
            }
        ]
    else:
        config["filter_list"] = [
            {"name": "extract", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}
        ]
    return config


def _metric_key(spec: dict, config: dict | str) -> str:
    if "metric" in spec:
        return spec["metric"]
    if isinstance(config, dict) and config["output_type"] == "multiple_choice":
        return "acc,none"
    return "exact_match,extract"


def evaluate(model, tokenizer, benchmarks: dict[str, dict], cfg) -> dict[str, float]:
    """Score `model` on each benchmark; returns {benchmark name: score in [0, 1]}."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    configs = {}
    for name, spec in benchmarks.items():
        if spec.get("lm_eval_task"):
            configs[name] = spec["lm_eval_task"]
        else:
            configs[name] = local_task_config(name, spec, tokenizer.eos_token)

    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=cfg.batch_size,
        max_batch_size=cfg.get("max_batch_size", 64),
        device=str(model.device),
    )
    was_training = model.training
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(configs.values()),
        limit=cfg.get("limit"),
        apply_chat_template=True,
        log_samples=False,
        bootstrap_iters=0,
        verbosity="ERROR",
        random_seed=cfg.get("seed", 0),
        numpy_random_seed=cfg.get("seed", 0),
        torch_random_seed=cfg.get("seed", 0),
        fewshot_random_seed=cfg.get("seed", 0),
    )
    model.train(was_training)
    scores = {}
    for name, config in configs.items():
        task_name = config["task"] if isinstance(config, dict) else config
        result = out["results"][task_name]
        scores[name] = float(result[_metric_key(benchmarks[name], config)])
    return scores


def _base_key(fingerprint: str, name: str, spec: dict, cfg) -> str:
    blob = json.dumps({"model": fingerprint, "name": name, "spec": spec,
                       "limit": cfg.get("limit"), "seed": cfg.get("seed", 0)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_base_scores(model, tokenizer, benchmarks: dict[str, dict], cfg, fingerprint: str,
                       cache_dir: str | Path) -> tuple[dict[str, float], list[str]]:
    """Base-model scores, computed once per (model, benchmark, eval settings) and shared by
    every run of that model. Returns the scores and the names that had to be computed."""
    root = Path(cache_dir) / "base_scores"
    root.mkdir(parents=True, exist_ok=True)
    paths = {n: root / f"{_base_key(fingerprint, n, s, cfg)}.json" for n, s in benchmarks.items()}
    # One lock for the whole set: a second job waits, then finds everything computed.
    with FileLock(str(root / f"{fingerprint}.lock")):
        missing = [n for n, p in paths.items() if not p.is_file()]
        scores = {n: json.loads(paths[n].read_text())["score"]
                  for n in benchmarks if n not in missing}
        if missing:
            fresh = evaluate(model, tokenizer, {n: benchmarks[n] for n in missing}, cfg)
            for name, score in fresh.items():
                write_json_atomic(paths[name], {"benchmark": name, "score": score,
                                                "model": fingerprint})
            scores |= fresh
    return {n: scores[n] for n in benchmarks}, missing
