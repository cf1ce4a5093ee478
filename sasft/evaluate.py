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


from .errors import ConfigError, SasftError
from .schema import benchmark_spec
from .data import DataError, read_jsonl, read_records
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


def check_test_file(key: str, spec: dict) -> None:
    """Every record of a local benchmark's file has the fields its lm-eval task reads (the
    prompt, and the target or the choices), so a missing one is refused naming the file, the
    line and the field before anything loads, not met inside lm-eval's templates. `key` names
    the benchmark's spec in the config (task.benchmark, eval.general.<name>)."""
    spec = benchmark_spec(spec)
    if spec["output_type"] == "multiple_choice":
        needed = {"prompt": "the question", "choices": "the answers to choose from",
                  "label": "the index of the right one"}
    else:
        needed = {"prompt": "the question", spec["target"]: f"what {key}.target scores against"}
    for where, record in read_records(spec["file"]):
        for field, role in needed.items():
            if field not in record:
                raise DataError(f"{where}: no field {field!r} ({role}), which {key} reads; "
                                f"fields found: {sorted(record)}")


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


# lm-eval's IFEval checkers count sentences and words with NLTK's punkt_tab tokenizer, which its
# module downloads when imported: on a compute node without internet that download fails quietly
# and the first prompt with a sentence count crashes the evaluation. A task a config ships
# (`lm_eval_include`) is not lm-eval's: smol's IFEval subset holds no such instruction.
NLTK_FIX = ("python -m nltk.downloader punkt_tab  (once, where there is internet; it writes "
            "~/nltk_data, or the directory NLTK_DATA names: one every node sees)")


def needs_nltk_data(benchmarks: dict[str, dict]) -> bool:
    """Whether a benchmark is lm-eval's IFEval (or a task built on it), scored with punkt_tab."""
    specs = [benchmark_spec(s) for s in benchmarks.values()]
    return any("ifeval" in (s["lm_eval_task"] or "") and not s["lm_eval_include"] for s in specs)


def missing_nltk_data() -> str | None:
    """None when NLTK's punkt_tab data is installed, else the one line that installs it."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return None
    except LookupError:
        return f"IFEval needs NLTK's punkt_tab data, which is not installed: run {NLTK_FIX}"


def check_nltk_data(benchmarks: dict[str, dict]) -> None:
    """Refuse, before anything loads, benchmarks that would need NLTK data that is missing."""
    fix = missing_nltk_data() if needs_nltk_data(benchmarks) else None
    if fix:
        raise SasftError(fix)


def _metric_key(spec: dict) -> str:
    """The key of the reported number in lm-eval's results: "<metric>,<filter>"."""
    spec = benchmark_spec(spec)
    if spec["lm_eval_task"]:
        metric = spec["metric"] or "acc"
        return metric if "," in metric else f"{metric},none"
    if spec["output_type"] == "multiple_choice":
        return "acc,none"
    return f"{spec['metric'] or 'exact_match'},extract"


@functools.lru_cache(maxsize=4)
def task_manager(include: tuple[str, ...] = ()):
    """lm-eval's task index (a scan of its task YAMLs, seconds), with the folders of tasks a
    config ships (a benchmark's `lm_eval_include`): built once per process and set of folders,
    not at every in-domain evaluation during training."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include) or None)


def included_task_dirs(benchmarks: dict[str, dict]) -> tuple[str, ...]:
    paths = {str(p) for spec in benchmarks.values() for p in benchmark_spec(spec)["lm_eval_include"]}
    return tuple(sorted(p for p in paths if Path(p).is_dir()))


def _include_digest(paths: list[str]) -> str:
    """The bytes of a shipped lm-eval task (its YAML, code and data): an edited one is another
    benchmark, whose cached base scores must not be reused."""
    digest = hashlib.sha256()
    for root in map(Path, paths):
        for f in sorted(root.rglob("*.*")) if root.is_dir() else [root]:
            if f.suffix != ".pyc":
                digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()


def build_tasks(benchmarks: dict[str, dict], eos: str) -> tuple[list, dict[str, tuple]]:
    """lm-eval Task/Group objects for the benchmarks, with each spec's num_fewshot set on every
    task it holds, and for each benchmark the name its results are reported under and the
    tasks it holds, by name (a group's per-item samples are its tasks'). (lm-eval 0.4.13's
    simple_evaluate takes one num_fewshot for all tasks, and a config dict naming a registered
    task is not merged with the registered config; setting it on the built tasks is what
    simple_evaluate itself does, and it keeps values already set.)"""
    manager = task_manager(included_task_dirs(benchmarks))
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
        result_names[name] = (top, dict(sorted(loaded["tasks"].items())))
    return objects, result_names


def _item(sample: dict, metric: str, multiple_choice: bool) -> dict:
    """One test item as a run keeps it: the end of the prompt (where the question is), the
    target, the model's answer and its score (None where the metric has no per-item score:
    chrF is a corpus statistic)."""
    args = sample["arguments"]
    if multiple_choice:  # one request per choice: (context, continuation); answer = argmax
        choices = [a[1] for a in args]
        lls = [r[0] for r in sample["filtered_resps"]]
        answer = choices[max(range(len(lls)), key=lls.__getitem__)]
        target = sample["target"]
        target = choices[target] if isinstance(target, int) and target < len(choices) else target
    else:
        answer = sample["resps"][0][0]
        target = sample["target"]
    value = sample.get(metric)
    score = float(value) if isinstance(value, (int, float)) else None
    return {"doc_id": sample["doc_id"], "prompt": str(args[0][0])[-PROMPT_CHARS:],
            "target": str(target), "answer": str(answer)[:ANSWER_CHARS], "score": score,
            "choices": len(args) if multiple_choice else None}


PROMPT_CHARS, ANSWER_CHARS = 600, 600  # what a run keeps of each item's prompt and answer


def _result(out: dict, spec: dict, top: str, leaves: dict, key: str) -> dict:
    """A benchmark's score, chance level and per-item records from lm-eval's output."""
    metric, filter_name = key.split(",")
    items = []
    for leaf, task in leaves.items():
        samples = [s for s in out["samples"].get(leaf, []) if s.get("filter") == filter_name]
        for sample in sorted(samples, key=lambda s: s["doc_id"]):
            items.append({"task": leaf,
                          **_item(sample, metric, task.OUTPUT_TYPE == "multiple_choice")})
    if items and all(i["choices"] for i in items):  # guessing: one in the number of choices
        chance = sum(1 / i["choices"] for i in items) / len(items)
    else:
        chance = spec["chance"]
    if any(i["score"] is None for i in items):
        items = None
    score = float(out["results"][top][key]) * _SCALE.get(metric, 1.0)
    # The few-shot count lm-eval used, as evidence in results.json (one value for a group's
    # tasks, as build_tasks sets it).
    shots = sorted({out["n-shot"].get(leaf) for leaf in leaves} - {None})
    return {"score": score, "chance": chance, "items": items,
            "num_fewshot": shots[0] if len(shots) == 1 else shots or None}


def run_benchmarks(lm, benchmarks: dict[str, dict], cfg, eos: str) -> dict[str, dict]:
    """Score an lm-eval LM on each benchmark; returns {benchmark name: {"score" in [0, 1],
    "chance", "items": per-item records or None}}."""
    import lm_eval

    objects, result_names = build_tasks(benchmarks, eos)
    seed = cfg.seed
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=objects,
        task_manager=task_manager(included_task_dirs(benchmarks)),
        limit=cfg.limit,
        apply_chat_template=True,
        fewshot_as_multiturn=True,  # few-shot examples as earlier chat turns
        log_samples=True,  # per-item scores: intervals and forgetting examples in the report
        bootstrap_iters=0,
        verbosity="ERROR",
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    results = {}
    for name, (top, leaves) in result_names.items():
        key, reported = _metric_key(benchmarks[name]), out["results"][top]
        if key not in reported:
            raise ConfigError(f"benchmark {name}: lm-eval reports no {key!r} for {top}; it "
                              f"reports {sorted(k for k in reported if ',' in k)}")
        results[name] = _result(out, benchmark_spec(benchmarks[name]), top, leaves, key)
    return results


def evaluate_items(model, tokenizer, benchmarks: dict[str, dict], cfg) -> dict[str, dict]:
    """Score `model` on each benchmark, keeping each item (see `run_benchmarks`)."""
    if cfg.drop_finished:
        from .eval_lm import ShrinkingBatchHFLM as HFLM
    else:
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


def evaluate(model, tokenizer, benchmarks: dict[str, dict], cfg) -> dict[str, float]:
    """Score `model` on each benchmark; returns {benchmark name: score in [0, 1]}."""
    return {n: r["score"] for n, r in evaluate_items(model, tokenizer, benchmarks, cfg).items()}


# Eval settings that change a score; batch sizes do not (beyond numerical noise).
_EVAL_KEYS = ("limit", "seed")
_CACHE_FORMAT = 2  # base results with chance and items (format 1 held the score alone)


def _base_key(fingerprint: str, name: str, spec: dict, cfg) -> str:
    """Everything a base score depends on: the model, the whole spec (num_fewshot, metric,
    extraction, ...), the eval settings (limit, seed), the bytes of a local test file (an edited
    file is another benchmark) and lm-eval's version (its registry tasks change by release).
    Files count by their bytes, not their paths: a frozen install elsewhere reuses the scores."""
    spec = benchmark_spec(spec)
    file = spec["file"]
    if file:
        digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()
    else:  # a registry task: lm-eval's version names it, or the bytes of one the config ships
        digest = _include_digest(spec["lm_eval_include"]) if spec["lm_eval_include"] else None
    spec = {**spec, "file": bool(file), "lm_eval_include": bool(spec["lm_eval_include"])}
    return cache.key({"model": fingerprint, "name": name, "spec": spec,
                      **{k: cfg[k] for k in _EVAL_KEYS}, "file_digest": digest,
                      "lm_eval": metadata.version("lm_eval"), "format": _CACHE_FORMAT})


def cached_base_scores(model, tokenizer, benchmarks: dict[str, dict], cfg, fingerprint: str,
                       cache_dir: str | Path) -> tuple[dict[str, dict], list[str]]:
    """Base-model results (score, chance, items; see `run_benchmarks`), computed once per
    (model, benchmark, eval settings) and shared by every run of that model. Returns them and
    the names that had to be computed."""
    root = Path(cache_dir) / "base_scores"
    root.mkdir(parents=True, exist_ok=True)
    paths = {n: root / f"{_base_key(fingerprint, n, s, cfg)}.json" for n, s in benchmarks.items()}
    # One lock for the whole set: a second job waits, then finds everything computed.
    with cache.locked(root / fingerprint):
        missing = [n for n, p in paths.items() if not p.is_file()]
        found = {n: json.loads(paths[n].read_text()) for n in benchmarks if n not in missing}
        if missing:
            fresh = evaluate_items(model, tokenizer, {n: benchmarks[n] for n in missing}, cfg)
            for name, result in fresh.items():
                cache.publish_json(paths[name], {"benchmark": name, "model": fingerprint,
                                                **result})
            found |= fresh
    return {n: found[n] for n in benchmarks}, missing


def forgotten(base: list[dict] | None, final: list[dict] | None, limit: int) -> list[dict]:
    """Up to `limit` items the base model got right and the fine-tuned one wrong, in test
    order: what forgetting looks like, both answers side by side."""
    if not base or not final:
        return []
    after = {(i["task"], i["doc_id"]): i for i in final}
    rows = []
    for item in base:
        late = after.get((item["task"], item["doc_id"]))
        if late is not None and item["score"] >= 0.5 > late["score"]:
            rows.append({"task": item["task"], "doc_id": item["doc_id"], "prompt": item["prompt"],
                         "target": item["target"], "base_answer": item["answer"],
                         "final_answer": late["answer"], "base_score": item["score"],
                         "final_score": late["score"]})
            if len(rows) == limit:
                break
    return rows


def benchmark_prompts(benchmarks: dict[str, dict], eos: str, per_benchmark: int
                      ) -> dict[str, list[str]]:
    """{benchmark: its first `per_benchmark` questions as lm-eval poses them (zero-shot, without
    the chat template)}, drawn in turn from each task a group holds: for a local file and a
    registry task alike. The KL probe (sasft/kl.py) and the drift analysis (sasft/analyze.py)
    both ask here."""
    prompts = {}
    for name, (_, leaves) in build_tasks(benchmarks, eos)[1].items():
        docs = {leaf: iter(task.eval_docs) for leaf, task in leaves.items()}
        picked: list[str] = []
        while docs and len(picked) < per_benchmark:
            for leaf, it in list(docs.items()):
                doc = next(it, None)
                if doc is None:
                    del docs[leaf]
                elif len(picked) < per_benchmark:
                    picked.append(str(leaves[leaf].doc_to_text(doc)))
        prompts[name] = picked
    return prompts
